// The `ws` client against a switchboard-websocket echo server.
// Usage: node node_client.mjs ws://127.0.0.1:PORT/ off|default|nct10
import net from 'node:net';
import crypto from 'node:crypto';
import WebSocket from 'ws';
import { assert, bigPayload, deflateOptions, runChecks } from './common.mjs';

const [url, mode] = process.argv.slice(2);
const perMessageDeflate = deflateOptions(mode);

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate, maxPayload: 64 * 1024 * 1024 });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

function nextMessage(ws) {
  return new Promise((resolve, reject) => {
    ws.once('message', (data, isBinary) => resolve({ data, isBinary }));
    ws.once('error', reject);
  });
}

async function echo(payload, options = {}) {
  const ws = await open();
  const reply = nextMessage(ws);
  ws.send(payload, options);
  const msg = await reply;
  ws.close(1000);
  return msg;
}

const checks = [
  ['negotiated extension matches the mode', async () => {
    const ws = await open();
    const agreed = ws.extensions.includes('permessage-deflate');
    ws.close(1000);
    assert(agreed === (mode !== 'off'), `extensions header was "${ws.extensions}"`);
  }],
  ['text echo', async () => {
    const { data, isBinary } = await echo('hello switchboard');
    assert(!isBinary, 'type is text');
    assert(data.toString() === 'hello switchboard', 'same text');
  }],
  ['binary echo', async () => {
    const payload = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const { data, isBinary } = await echo(payload);
    assert(isBinary, 'type is binary');
    assert(Buffer.compare(data, payload) === 0, 'same bytes');
  }],
  ['multibyte UTF-8 echo', async () => {
    const text = 'żółć € 𝄞 日本語 ✓ '.repeat(100);
    const { data, isBinary } = await echo(text);
    assert(!isBinary && data.toString() === text, 'same text');
  }],
  ['fragmented message is reassembled', async () => {
    const ws = await open();
    const reply = nextMessage(ws);
    ws.send('frag-', { fin: false });
    ws.send('ment-', { fin: false });
    ws.send('ed', { fin: true });
    const { data, isBinary } = await reply;
    ws.close(1000);
    assert(!isBinary && data.toString() === 'frag-ment-ed', `got "${data}"`);
  }],
  ['16 MiB binary echo', async () => {
    const payload = bigPayload();
    const { data, isBinary } = await echo(payload);
    assert(isBinary && data.length === payload.length, `length ${data.length}`);
    assert(Buffer.compare(data, payload) === 0, 'same bytes');
  }],
  ['1000 pipelined messages keep their order', async () => {
    const ws = await open();
    const got = [];
    const done = new Promise((resolve, reject) => {
      ws.on('message', (d) => { got.push(d.toString()); if (got.length === 1000) resolve(); });
      ws.once('error', reject);
    });
    for (let i = 0; i < 1000; i++) ws.send(`m${i}`);
    await done;
    ws.close(1000);
    for (let i = 0; i < 1000; i++) assert(got[i] === `m${i}`, `message ${i} was ${got[i]}`);
  }],
  ['ping is answered with the same payload', async () => {
    const ws = await open();
    const pong = new Promise((resolve) => ws.once('pong', resolve));
    ws.ping('are you there');
    const data = await pong;
    ws.close(1000);
    assert(data.toString() === 'are you there', `pong payload ${data}`);
  }],
  ['close 4000 "bye" is echoed', async () => {
    const ws = await open();
    const closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason })));
    ws.close(4000, 'bye');
    const { code } = await closed;
    assert(code === 4000, `close code ${code}`);
  }],
  ['invalid UTF-8 from a raw socket gets close 1007', async () => {
    const u = new URL(url);
    const sock = net.connect(Number(u.port), u.hostname);
    const key = crypto.randomBytes(16).toString('base64');
    sock.write(`GET ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\n\r\n`);
    let buf = Buffer.alloc(0);
    let sentFrame = false;
    const code = await new Promise((resolve, reject) => {
      sock.on('error', reject);
      sock.on('data', (chunk) => {
        buf = Buffer.concat([buf, chunk]);
        if (!sentFrame) {
          const end = buf.indexOf('\r\n\r\n');
          if (end < 0) return;
          if (!buf.subarray(0, end).toString().startsWith('HTTP/1.1 101')) {
            reject(new Error(`no 101: ${buf.subarray(0, end)}`));
            return;
          }
          buf = buf.subarray(end + 4);
          // A masked, final text frame whose payload is not UTF-8 (0xC0 0xAF: overlong '/').
          const mask = crypto.randomBytes(4);
          const payload = Buffer.from([0x68, 0x69, 0xc0, 0xaf]);
          const masked = payload.map((b, i) => b ^ mask[i % 4]);
          sock.write(Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]));
          sentFrame = true;
        }
        if (buf.length >= 4) {
          assert(buf[0] === 0x88, `expected a close frame, first byte ${buf[0]}`);
          resolve(buf.readUInt16BE(2));
        }
      });
    });
    sock.destroy();
    assert(code === 1007, `close code ${code}`);
  }],
];

await runChecks(checks);
