// RPC round trips per second through the backend's rpc proxy (and connects per second
// through the connect proxy's backend), on loopback.
//
// Starts a Node `http` backend in a child process answering Centrifugo's proxy format
// (`connect`: user from the `session` cookie; `rpc`: echoes `data`), then opens CONNS
// WebSocket connections speaking the Centrifugo JSON protocol and keeps WINDOW rpc calls in
// flight on each for SECS seconds. Prints one JSON line.
//
// Usage: node bench/proxy_rpc.mjs backend PORT            (the backend alone)
//        node bench/proxy_rpc.mjs client WS_URL [CONNS] [WINDOW] [SECS]
// Needs `ws` (tests/interop/node_modules): run with NODE_PATH=tests/interop/node_modules.
import http from 'node:http';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const [, , mode, arg, connsArg = '8', windowArg = '16', secsArg = '5'] = process.argv;

if (mode === 'backend') {
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const r = JSON.parse(body);
      const answer = req.url.endsWith('/connect')
        ? { result: { user: /session=(\w+)/.exec(req.headers.cookie || '')?.[1] || 'bench' } }
        : { result: { data: r.data ?? null } };
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(Number(arg), '127.0.0.1', () => console.log(`backend on ${server.address().port}`));
} else if (mode === 'client') {
  const WebSocket = require('ws');
  const conns = Number(connsArg);
  const window = Number(windowArg);
  const secs = Number(secsArg);
  let done = 0;
  let errors = 0;
  let stop = false;
  const open = [];
  for (let i = 0; i < conns; i++) {
    open.push(
      new Promise((resolve, reject) => {
        const ws = new WebSocket(arg, { headers: { Cookie: `session=bench${i}` } });
        let id = 1;
        const send = () => ws.send(JSON.stringify({ id: ++id, rpc: { method: 'echo', data: { n: id } } }));
        ws.on('open', () => ws.send(JSON.stringify({ id: 1, connect: {} })));
        ws.on('message', (m) => {
          for (const line of String(m).split('\n')) {
            if (!line || line === '{}') {
              if (line === '{}') ws.send('{}');
              continue;
            }
            const r = JSON.parse(line);
            if (r.id === 1) {
              if (r.error) return reject(new Error(JSON.stringify(r.error)));
              resolve(ws);
              continue;
            }
            if (r.error) errors++;
            else done++;
            if (!stop) send();
          }
        });
        ws.on('error', reject);
        ws.start = () => {
          for (let k = 0; k < window; k++) send();
        };
      }),
    );
  }
  const sockets = await Promise.all(open);
  const started = process.hrtime.bigint();
  sockets.forEach((ws) => ws.start());
  await new Promise((r) => setTimeout(r, secs * 1000));
  stop = true;
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(JSON.stringify({ conns, window, secs: elapsed, rpcs: done, errors, rpc_per_sec: Math.round(done / elapsed) }));
  sockets.forEach((ws) => ws.terminate());
} else {
  console.error('usage: proxy_rpc.mjs backend PORT | client WS_URL [CONNS] [WINDOW] [SECS]');
  process.exit(2);
}
