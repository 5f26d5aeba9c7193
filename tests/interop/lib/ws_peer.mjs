// A Node `ws` client driven over stdin/stdout, so tests in other languages can
// put a Node peer in the same room as their own client.
//
//   node ws_peer.mjs URL [--no-deflate]
//
// stdout, one JSON object per line:
//   {"event":"ready","extensions":"..."}   connected and known to be in the room
//   {"event":"message","binary":false,"data":"text"}
//   {"event":"message","binary":true,"data":"<base64>"}
//   {"event":"close","code":1000,"reason":""}
// stdin, one JSON object per line:
//   {"text":"..."} | {"binary":"<base64>"} | {"close":true}

import { createInterface } from 'node:readline';
import { WebSocket, Inbox, opened, ready } from './harness.mjs';

const [url, ...flags] = process.argv.slice(2);
if (!url) {
  console.error('usage: ws_peer.mjs URL [--no-deflate]');
  process.exit(2);
}

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const ws = new WebSocket(url, { perMessageDeflate: !flags.includes('--no-deflate') });
ws.on('error', (err) => console.error(`ws_peer: ${err.message}`));
const inbox = new Inbox(ws);

try {
  await opened(ws);
  await ready(inbox);
} catch (err) {
  console.error(`ws_peer: could not join ${url}: ${err.message}`);
  process.exit(1);
}
emit({ event: 'ready', extensions: ws.extensions });

// Forward messages as they arrive (the inbox already hides readiness probes).
(async () => {
  for (;;) {
    let m;
    try {
      m = await inbox.next();
    } catch {
      // Closed, or nothing for a while: keep waiting until the socket closes.
      if (inbox.closed) break;
      continue;
    }
    emit({ event: 'message', binary: m.isBinary, data: m.isBinary ? m.data.toString('base64') : m.text });
  }
  emit({ event: 'close', code: inbox.closed.code, reason: inbox.closed.reason });
  process.exit(0);
})();

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  if (typeof cmd.text === 'string') ws.send(cmd.text);
  else if (typeof cmd.binary === 'string') ws.send(Buffer.from(cmd.binary, 'base64'));
  else if (cmd.close) ws.close(1000);
});
rl.on('close', () => ws.close(1000));
