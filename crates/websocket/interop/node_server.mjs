// A `ws` echo server for testing the switchboard-websocket client.
// Usage: node node_server.mjs off|default|nct10
// Prints `LISTENING <port>`, then `CLOSE <code> <reason>` for each closed connection.
// Text commands: `cmd:fragmented` → "frag-ment-ed" in three fragments;
// `cmd:invalid-utf8` → a text frame that is not UTF-8. Anything else is echoed with its type.
import { WebSocketServer } from 'ws';
import { deflateOptions } from './common.mjs';

const mode = process.argv[2];
const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  perMessageDeflate: deflateOptions(mode),
  maxPayload: 64 * 1024 * 1024,
});

wss.on('listening', () => console.log(`LISTENING ${wss.address().port}`));
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (!isBinary && data.toString() === 'cmd:fragmented') {
      ws.send('frag-', { fin: false });
      ws.send('ment-', { fin: false });
      ws.send('ed', { fin: true });
    } else if (!isBinary && data.toString() === 'cmd:invalid-utf8') {
      // `ws` does not validate what it sends, so a Buffer sent as text goes out as-is.
      ws.send(Buffer.from([0x68, 0x69, 0xc0, 0xaf]), { binary: false });
    } else {
      ws.send(data, { binary: isBinary });
    }
  });
  ws.on('close', (code, reason) => console.log(`CLOSE ${code} ${reason.toString()}`));
  ws.on('error', (e) => console.log(`ERROR ${e.message}`));
});
