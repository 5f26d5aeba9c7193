// Server memory per idle Centrifugo HTTP stream connection: opens N streams of one kind
// (uni_http_stream or uni_sse, each with a server-side subscription from its token), waits,
// and prints the server's RSS growth per connection as JSON. Loopback only; bounded by N.
//
//   node bench/streams_mem.mjs --url http://127.0.0.1:PORT --pid PID --token JWT \
//        [--n 2000] [--kind uni_http_stream|uni_sse] [--hold 3]
// (run from tests/interop or with NODE_PATH pointing at its node_modules: needs nothing but Node 20)
import { readFileSync } from 'node:fs';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const n = Number(args.n || 2000);
const kind = args.kind || 'uni_http_stream';
const hold = Number(args.hold || 3);
if (!args.url || !args.pid || !args.token || n > 20000) {
  console.error('usage: --url http://127.0.0.1:PORT --pid PID --token JWT [--n ≤ 20000] [--kind] [--hold s]');
  process.exit(2);
}
if (!/^http:\/\/(127\.0\.0\.1|localhost)[:/]/.test(args.url)) {
  console.error('loopback only');
  process.exit(2);
}
const rssKb = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${args.pid}/status`, 'utf8'))[1]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function open() {
  const controller = new AbortController();
  const connect = JSON.stringify({ token: args.token });
  const res = kind === 'uni_sse'
    ? await fetch(`${args.url}/connection/uni_sse?cf_connect=${encodeURIComponent(connect)}`, { signal: controller.signal })
    : await fetch(`${args.url}/connection/${kind}`, { method: 'POST', body: connect, signal: controller.signal });
  if (res.status !== 200) throw new Error(`status ${res.status}`);
  const reader = res.body.getReader();
  // Read until the connect push arrived, then keep reading (pings) in the background.
  let text = '';
  while (!text.includes('connect')) {
    const { value, done } = await reader.read();
    if (done) throw new Error('stream ended');
    text += new TextDecoder().decode(value);
  }
  (async () => { try { for (;;) { const { done } = await reader.read(); if (done) break; } } catch {} })();
  return controller;
}

await sleep(500);
const before = rssKb();
const open_ = [];
for (let i = 0; i < n; i += 100) {
  open_.push(...(await Promise.all(Array.from({ length: Math.min(100, n - i) }, open))));
}
await sleep(hold * 1000);
const during = rssKb();
for (const c of open_) c.abort();
console.log(JSON.stringify({ kind, n, server_rss_before_kb: before, server_rss_during_kb: during, server_rss_per_conn_kb: +((during - before) / n).toFixed(2) }));
process.exit(0);
