// The comparison peer for `switchboard bench`: a WebSocket server written the way the `ws`
// README and most tutorials write one, so the comparison is with idiomatic Node.js code.
//
//   node server.mjs [--port 9001] [--host 127.0.0.1] [--mode echo|rooms] [--deflate false|true]
//
// echo:  every message is sent back to its sender, whatever the path.
// rooms: same URL semantics as a Switchboard raw room — the path names the room (`/` is
//        `lobby`), every message goes to every member with its type preserved, the sender
//        included unless it connected with `?echo=false`.
//
// Prints `listening on PORT` once the socket is bound (port 0 picks a free one).
import { WebSocketServer, WebSocket } from 'ws';

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const port = Number(option('port', '9001'));
const host = option('host', '127.0.0.1');
const mode = option('mode', 'rooms');
const deflate = option('deflate', 'false') === 'true';
if (mode !== 'echo' && mode !== 'rooms') {
  console.error(`unknown --mode ${mode} (expected echo or rooms)`);
  process.exit(2);
}

const wss = new WebSocketServer({
  host,
  port,
  perMessageDeflate: deflate,
  maxPayload: 1024 * 1024,
});

/** room name -> Set of sockets */
const rooms = new Map();

function roomOf(url) {
  const q = url.indexOf('?');
  const path = q >= 0 ? url.slice(0, q) : url;
  const query = new URLSearchParams(q >= 0 ? url.slice(q + 1) : '');
  const name = decodeURIComponent(path.replace(/^\/+/, '')) || 'lobby';
  const echo = !['false', '0', 'no', 'off'].includes((query.get('echo') || '').toLowerCase());
  return { name, echo };
}

wss.on('connection', (ws, req) => {
  ws.on('error', () => {});
  if (mode === 'echo') {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    return;
  }
  const { name, echo } = roomOf(req.url || '/');
  let members = rooms.get(name);
  if (!members) {
    members = new Set();
    rooms.set(name, members);
  }
  members.add(ws);
  ws.on('message', (data, isBinary) => {
    for (const client of members) {
      if ((echo || client !== ws) && client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    }
  });
  ws.on('close', () => {
    members.delete(ws);
    if (members.size === 0) rooms.delete(name);
  });
});

wss.on('listening', () => {
  console.log(`listening on ${wss.address().port}`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    for (const client of wss.clients) client.terminate();
    wss.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 500).unref();
  });
}
