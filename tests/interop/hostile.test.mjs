// Hostile input against the release binary, replayed while two canary clients keep
// exchanging numbered messages in a room of their own. After every attack the suite checks
// that the process is alive, that the canaries lost nothing and were not closed, that the
// attacker got the documented answer (status or close code), and that the server's resident
// memory (VmRSS from /proc/<pid>/status) stays under RSS_LIMIT_MIB.
//
// docs/security.md lists the limits and what each attack gets.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test hostile.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { WebSocket, Inbox, startServer, join, opened, withTimeout } from './lib/harness.mjs';

/** Resident memory the server may reach at any check during the suite. */
const RSS_LIMIT_MIB = 128;
const API_KEY = 'hostile-key';
/** The server's verification key; tokens are RS256 (the alg-confusion attacks need one). */
const { publicKey, privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const PUBLIC_PEM = publicKey.export({ type: 'spki', format: 'pem' });

const CONFIG = `
api_key = "${API_KEY}"
allow_anonymous = true
token_rsa_public_key = """${PUBLIC_PEM}"""

[channel.default]
history_size = 10
history_ttl = 300
allow_subscribe_for_anonymous = true
`;

// Bounds the attacks below are measured against (see docs/security.md).
const ARGS = [
  '--ping-timeout', '3', // the write stall limit
  '--handshake-timeout', '2',
  '--body-timeout', '2',
  '--max-message-size', '1048576',
  '--outbox-max-bytes', '262144',
];

// ---------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** VmRSS of `pid` in MiB. */
function rssMib(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = Number(/^VmRSS:\s+(\d+)/m.exec(status)[1]);
  return kib / 1024;
}

/** The `/health` document. */
async function health(server) {
  const res = await fetch(`${server.httpUrl}/health`);
  assert.equal(res.status, 200);
  return res.json();
}

/** Polls `/health` until `pred` holds for it (bounded); returns it. */
async function healthUntil(server, pred, what) {
  return withTimeout(
    (async () => {
      for (;;) {
        const h = await health(server);
        if (pred(h)) return h;
        await sleep(100);
      }
    })(),
    what,
  );
}

/**
 * Two clients in room `/canary` that each send a numbered message every 20 ms and check that
 * the other's numbers arrive complete and in order.
 */
class Canaries {
  static async start(server) {
    const c = new Canaries();
    c.sides = [];
    for (const name of ['a', 'b']) {
      const inbox = await join(server.wsUrl('/canary'));
      const side = { name, inbox, sent: 0, expect: 0, gaps: [] };
      inbox.ws.on('message', (data, isBinary) => {
        if (isBinary) return;
        const m = /^canary:(\w):(\d+)$/.exec(data.toString());
        if (!m || m[1] === name) return;
        const n = Number(m[2]);
        if (n !== side.expect) side.gaps.push(`${name} expected ${side.expect}, got ${n}`);
        side.expect = n + 1;
      });
      c.sides.push(side);
    }
    c.timer = setInterval(() => {
      for (const s of c.sides) {
        if (s.inbox.ws.readyState === WebSocket.OPEN) s.inbox.ws.send(`canary:${s.name}:${s.sent++}`);
      }
    }, 20);
    return c;
  }

  /** Messages each side received from the other so far. */
  received() {
    return this.sides.map((s) => s.expect);
  }

  /** Neither side closed nor missed a number, and each has what the other sent so far. */
  async check(what) {
    const want = this.sides.map((s) => s.sent);
    await withTimeout(
      (async () => {
        for (;;) {
          for (const s of this.sides) {
            assert.equal(s.inbox.closed, null, `canary ${s.name} was closed after ${what}: ${JSON.stringify(s.inbox.closed)}`);
            assert.deepEqual(s.gaps, [], `canary ${s.name} lost messages during ${what}`);
          }
          // a receives b's numbers and b receives a's.
          if (this.sides[0].expect >= want[1] && this.sides[1].expect >= want[0]) return;
          await sleep(20);
        }
      })(),
      `the canaries to catch up after ${what}`,
    );
  }

  stop() {
    clearInterval(this.timer);
    for (const s of this.sides) s.inbox.ws.terminate();
  }
}

/** Highest VmRSS seen by `survived`, reported at the end. */
let peakRss = 0;

/** Alive, canaries intact, memory bounded. */
async function survived(server, canaries, what) {
  assert.equal(server.proc.exitCode, null, `the server exited during ${what}`);
  assert.equal(server.proc.signalCode, null, `the server was killed during ${what}`);
  await canaries.check(what);
  const rss = rssMib(server.proc.pid);
  peakRss = Math.max(peakRss, rss);
  assert.ok(rss < RSS_LIMIT_MIB, `RSS ${rss.toFixed(1)} MiB after ${what} (bound ${RSS_LIMIT_MIB} MiB)\n`);
  const h = await health(server);
  assert.equal(h.server.closed_panic, 0, `a connection panicked during ${what}`);
  assert.equal(h.server.http_panics, 0, `a request panicked during ${what}`);
}

/**
 * Sends `chunks` over a fresh TCP connection (waiting `gapMs` between them) and reads until
 * the server closes. Resolves with { status (0 without an answer), text, ms }.
 */
function rawHttp(port, chunks, { gapMs = 0, limitMs = 10_000 } = {}) {
  const started = Date.now();
  return withTimeout(
    new Promise((resolve) => {
      const sock = net.connect(port, '127.0.0.1');
      let got = '';
      let stopped = false;
      const done = () => {
        if (stopped) return;
        stopped = true;
        const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(got)?.[1] ?? 0);
        resolve({ status, text: got, ms: Date.now() - started });
      };
      sock.setEncoding('latin1');
      sock.on('data', (d) => {
        got += d;
      });
      sock.on('error', done);
      sock.on('close', done);
      sock.on('connect', async () => {
        for (const c of chunks) {
          if (stopped) return;
          sock.write(c);
          if (gapMs) await sleep(gapMs);
        }
      });
    }),
    'the server to answer or close',
    limitMs,
  );
}

/** A WebSocket handshake done by hand; resolves with { sock, rest } after the 101. */
function rawWs(port, p, extra = []) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const sock = net.connect(port, '127.0.0.1');
      let buf = Buffer.alloc(0);
      sock.on('error', reject);
      sock.on('connect', () => {
        sock.write(
          `GET ${p} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
            extra.map((h) => `${h}\r\n`).join('') +
            '\r\n',
        );
      });
      const onData = (d) => {
        buf = Buffer.concat([buf, d]);
        const i = buf.indexOf('\r\n\r\n');
        if (i < 0) return;
        sock.off('data', onData);
        const head = buf.subarray(0, i).toString();
        if (!head.startsWith('HTTP/1.1 101')) reject(new Error(`no upgrade: ${head}`));
        else resolve({ sock, rest: buf.subarray(i + 4) });
      };
      sock.on('data', onData);
    }),
    `the handshake for ${p}`,
  );
}

/** One WebSocket frame as a client would send it (masked unless `mask` is false). */
function frame(opcode, payload, { mask = true } = {}) {
  const len = payload.length;
  const head = [0x80 | opcode];
  let ext = Buffer.alloc(0);
  if (len < 126) head.push((mask ? 0x80 : 0) | len);
  else if (len < 65536) {
    head.push((mask ? 0x80 : 0) | 126);
    ext = Buffer.alloc(2);
    ext.writeUInt16BE(len);
  } else {
    head.push((mask ? 0x80 : 0) | 127);
    ext = Buffer.alloc(8);
    ext.writeBigUInt64BE(BigInt(len));
  }
  if (!mask) return Buffer.concat([Buffer.from(head), ext, payload]);
  const key = crypto.randomBytes(4);
  const masked = Buffer.from(payload.map((b, i) => b ^ key[i % 4]));
  return Buffer.concat([Buffer.from(head), ext, key, masked]);
}

/** Reads server frames until a close frame; resolves with its code (null on EOF without one). */
function closeCode(sock, rest = Buffer.alloc(0)) {
  return withTimeout(
    new Promise((resolve) => {
      let buf = rest;
      const parse = () => {
        for (;;) {
          if (buf.length < 2) return;
          const opcode = buf[0] & 0x0f;
          let len = buf[1] & 0x7f;
          let off = 2;
          if (len === 126) {
            if (buf.length < 4) return;
            len = buf.readUInt16BE(2);
            off = 4;
          } else if (len === 127) {
            if (buf.length < 10) return;
            len = Number(buf.readBigUInt64BE(2));
            off = 10;
          }
          if (buf.length < off + len) return;
          const payload = buf.subarray(off, off + len);
          buf = buf.subarray(off + len);
          if (opcode === 8) {
            resolve(payload.length >= 2 ? payload.readUInt16BE(0) : null);
            return;
          }
        }
      };
      sock.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        parse();
      });
      sock.on('close', () => resolve(null));
      sock.on('error', () => resolve(null));
      parse();
    }),
    'a close frame',
  );
}

/** A `ws` client with an inbox (no readiness probe: for endpoints that are not raw rooms). */
async function client(url, options = {}) {
  const ws = new WebSocket(url, options);
  ws.on('error', () => {});
  const inbox = new Inbox(ws);
  await opened(ws);
  return inbox;
}

/** Sends a Centrifugo command and resolves with the reply carrying its id. */
async function command(inbox, cmd) {
  inbox.ws.send(JSON.stringify(cmd));
  for (;;) {
    const m = await inbox.next(`the reply to command ${cmd.id}`);
    for (const line of m.text.split('\n')) {
      const v = JSON.parse(line);
      if (v.id === cmd.id) return v;
    }
  }
}

const b64u = (s) => Buffer.from(s).toString('base64url');

/** A JWT over the exact `header` and `claims` text, signed by `sign(data)` (or unsigned). */
function jwt(header, claims, sign) {
  const data = `${b64u(header)}.${b64u(claims)}`;
  return `${data}.${sign ? sign(data) : ''}`;
}

const rs256 = (data) => crypto.sign('sha256', Buffer.from(data), privateKey).toString('base64url');

/** The close code a Centrifugo connect with `token` gets, or 'open' if it was accepted. */
async function connectWith(server, token) {
  const c = await client(server.wsUrl('/connection/websocket'));
  c.ws.send(JSON.stringify({ id: 1, connect: { token } }));
  const first = await withTimeout(
    new Promise((resolve) => {
      c.ws.once('message', (d) => resolve(d.toString()));
      c.ws.once('close', (code) => resolve(code));
    }),
    'the answer to connect',
  );
  if (typeof first === 'number') return first;
  if (!first.includes('"error"')) {
    c.ws.terminate();
    return 'open';
  }
  return (await c.close()).code;
}

// ---------------------------------------------------------------------------------------
// The suite.
// ---------------------------------------------------------------------------------------

describe('hostile input', () => {
  let server;
  let canaries;
  let dir;
  const port = () => server.port;

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'hostile-'));
    const config = path.join(dir, 'switchboard.toml');
    writeFileSync(config, CONFIG);
    server = await startServer(['--config', config, ...ARGS]);
    canaries = await Canaries.start(server);
  });

  after(async () => {
    canaries?.stop();
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('JSON nested past the parser limit in history: /api/history still answers 200', async () => {
    const room = await join(server.wsUrl('/deep'));
    const nested = '['.repeat(130) + ']'.repeat(130);
    room.ws.send(nested);
    assert.equal((await room.next('the echo')).text, nested);
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${server.httpUrl}/api/history`, {
        method: 'POST',
        headers: { 'X-API-Key': API_KEY, 'Content-Type': 'application/json' },
        body: JSON.stringify({ channel: 'deep', limit: -1 }),
      });
      assert.equal(res.status, 200);
      assert.ok((await res.text()).includes(nested), 'the publication is embedded verbatim');
    }
    room.ws.terminate();
    await survived(server, canaries, 'history poisoning');
  });

  it('token exp of 1e19 and u64::MAX: accepted as far future', async () => {
    for (const exp of ['10000000000000000000', '18446744073709551615', '1e300']) {
      const token = jwt('{"alg":"RS256","typ":"JWT"}', `{"sub":"42","exp":${exp}}`, rs256);
      const c = await client(server.wsUrl('/connection/websocket'));
      const reply = await command(c, { id: 1, connect: { token } });
      assert.equal(reply.error, undefined, JSON.stringify(reply));
      assert.equal(reply.connect.expires, true);
      const again = await command(c, { id: 2, presence_stats: { channel: 'x' } });
      assert.equal(again.id, 2);
      assert.equal(c.closed, null);
      c.ws.terminate();
    }
    await survived(server, canaries, 'huge token expiry');
  });

  it('JWT alg confusion: alg none, HS256 keyed with the RSA public key, a foreign RSA key → 3500', async () => {
    const claims = '{"sub":"42"}';
    const none = jwt('{"alg":"none","typ":"JWT"}', claims);
    const hs = jwt('{"alg":"HS256","typ":"JWT"}', claims, (d) =>
      crypto.createHmac('sha256', PUBLIC_PEM).update(d).digest('base64url'),
    );
    const other = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    const foreign = jwt('{"alg":"RS256","typ":"JWT"}', claims, (d) =>
      crypto.sign('sha256', Buffer.from(d), other).toString('base64url'),
    );
    for (const [name, token] of [['alg none', none], ['HS256 with the public key', hs], ['foreign key', foreign]]) {
      assert.equal(await connectWith(server, token), 3500, name);
    }
    // The genuine token still works.
    assert.equal(await connectWith(server, jwt('{"alg":"RS256","typ":"JWT"}', claims, rs256)), 'open');
    await survived(server, canaries, 'JWT alg confusion');
  });

  it('Socket.IO event announcing 64 attachments: close 1002, nothing buffered', async () => {
    const sio = await client(server.wsUrl('/socket.io/?EIO=4&transport=websocket'));
    assert.match((await sio.next('open packet')).text, /^0\{/);
    sio.ws.send('40');
    assert.match((await sio.next('namespace connect')).text, /^40\{/);
    const placeholders = Array.from({ length: 64 }, (_, i) => `{"_placeholder":true,"num":${i}}`);
    sio.ws.send(`4564-7["up",${placeholders.join(',')}]`);
    assert.equal((await sio.close()).code, 1002);
    assert.equal((await health(server)).server.socketio_attachment_bytes, 0);
    await survived(server, canaries, '64 attachments');
  });

  it('truncated polling POST body: 408 after the body timeout', async () => {
    const open = await fetch(`${server.httpUrl}/socket.io/?EIO=4&transport=polling`);
    assert.equal(open.status, 200);
    const sid = JSON.parse((await open.text()).slice(1)).sid;
    const r = await rawHttp(port(), [
      `POST /socket.io/?EIO=4&transport=polling&sid=${sid} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n40`,
    ]);
    assert.equal(r.status, 408, r.text);
    await survived(server, canaries, 'truncated polling body');
  });

  it('malformed HTTP request lines and headers: 4xx or closed at once', async () => {
    const attacks = [
      'GARBAGE\r\n\r\n',
      'GET / HTTP/9.9\r\nHost: x\r\n\r\n',
      'GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello',
      'POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n',
      'POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
      `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(512 * 1024)}\r\n\r\n`,
      `GET / HTTP/1.1\r\n${Array.from({ length: 200 }, (_, i) => `X-H${i}: v`).join('\r\n')}\r\n\r\n`,
    ];
    for (const a of attacks) {
      const r = await rawHttp(port(), [a], { limitMs: 5000 });
      assert.ok(r.status === 0 || (r.status >= 400 && r.status < 500), `${JSON.stringify(a.slice(0, 60))} → ${r.text.slice(0, 80)}`);
    }
    await survived(server, canaries, 'malformed HTTP');
  });

  it('slowloris (headers trickled): dropped after the handshake timeout', async () => {
    const before = (await health(server)).server.handshake_timeouts;
    const trickle = ['GET / HTTP/1.1\r\n', ...Array.from({ length: 40 }, (_, i) => `X-${i}: ${i}\r\n`)];
    const results = await Promise.all(
      Array.from({ length: 20 }, () => rawHttp(port(), trickle, { gapMs: 250, limitMs: 10_000 })),
    );
    for (const r of results) {
      assert.ok(r.status === 0 || r.status === 408, r.text);
      assert.ok(r.ms < 8000, `cut off after ${r.ms} ms (handshake timeout 2 s)`);
    }
    const after = (await health(server)).server.handshake_timeouts;
    assert.ok(after - before >= 20, `${after - before} handshake timeouts counted`);
    await survived(server, canaries, 'slowloris');
  });

  it('WebSocket frame violations: unmasked frame, reserved opcode, oversized control frame → 1002', async () => {
    const cases = [
      ['unmasked text frame', frame(0x1, Buffer.from('hello'), { mask: false })],
      ['reserved opcode 0x3', frame(0x3, Buffer.from('x'))],
      ['reserved control opcode 0xB', frame(0xb, Buffer.alloc(0))],
      ['ping with 126 bytes', frame(0x9, Buffer.alloc(126, 1))],
    ];
    for (const [name, bytes] of cases) {
      const { sock, rest } = await rawWs(port(), '/frames');
      sock.write(bytes);
      assert.equal(await closeCode(sock, rest), 1002, name);
      sock.destroy();
    }
    await survived(server, canaries, 'frame violations');
  });

  it('permessage-deflate bomb: a small frame inflating past max_message_size → 1009', async () => {
    const bomb = await client(server.wsUrl('/bomb'), { perMessageDeflate: { threshold: 0 } });
    assert.match(bomb.ws.extensions, /permessage-deflate/);
    const before = bomb.ws._socket.bytesWritten;
    bomb.ws.send(Buffer.alloc(16 << 20, 'a').toString());
    assert.equal((await bomb.close()).code, 1009);
    const sent = bomb.ws._socket.bytesWritten - before;
    assert.ok(sent < 256 * 1024, `${sent} bytes on the wire for 16 MiB`);
    await survived(server, canaries, 'deflate bomb');
  });

  it('a Centrifugo subscriber that stops reading while its channel is flooded is let go', async () => {
    const healthy = await client(server.wsUrl('/connection/websocket'));
    assert.equal((await command(healthy, { id: 1, connect: {} })).error, undefined);
    assert.equal((await command(healthy, { id: 2, subscribe: { channel: 'cf-flood' } })).error, undefined);
    // Without compression, so what it does not read really piles up.
    const stalled = await client(server.wsUrl('/connection/websocket'), { perMessageDeflate: false });
    assert.equal((await command(stalled, { id: 1, connect: {} })).error, undefined);
    assert.equal((await command(stalled, { id: 2, subscribe: { channel: 'cf-flood' } })).error, undefined);
    const base = await health(server);
    stalled.ws._socket.pause();

    // 24 MiB through a raw room of the same name, at most 8 messages ahead of the reader.
    const publisher = await client(server.wsUrl('/cf-flood?echo=false'));
    const pad = 'z'.repeat(16 * 1024);
    let got = 0;
    const take = async () => {
      const m = await healthy.next('a publication');
      for (const line of m.text.split('\n')) {
        const n = JSON.parse(line).push?.pub?.data?.n;
        if (n === undefined) continue;
        assert.equal(n, got, 'the reading subscriber gets every message in order');
        got++;
      }
    };
    for (let i = 0; i < 1500; i++) {
      publisher.ws.send(`{"n":${i},"pad":"${pad}"}`);
      while (i - got > 8) await take();
    }
    while (got < 1500) await take();

    const h = await healthUntil(
      server,
      // The publisher came, the stalled subscriber went.
      (x) => x.connections === base.connections && x.server.closed_slow_consumer > base.server.closed_slow_consumer,
      'the stalled subscriber to be let go',
    );
    assert.ok(h.server.closed_slow_consumer > base.server.closed_slow_consumer);
    stalled.ws._socket.resume();
    const closed = await stalled.close();
    assert.ok([3008, 1006].includes(closed.code), `closed with ${closed.code}`);
    publisher.ws.terminate();
    healthy.ws.terminate();
    await survived(server, canaries, 'non-reading Centrifugo client');
  });

  it('a room flood: other rooms keep their pace, non-reading members of the flooded room are cut off', async () => {
    const base = await health(server);
    // A member of the flooded room that never reads.
    const stalled = await join(server.wsUrl('/flooded'), { perMessageDeflate: false });
    stalled.ws._socket.pause();
    const flooder = await client(server.wsUrl('/flooded?echo=false'));
    const frameText = 'f'.repeat(512);
    let flooding = true;
    let sent = 0;
    const deadline = Date.now() + 10_000;
    const flood = (async () => {
      while (flooding && Date.now() < deadline) {
        // Flat out, limited only by what the socket takes; a turn of the event loop every
        // 1024 frames so the canaries (same process) keep their timers.
        for (let i = 0; i < 1024 && flooder.ws.bufferedAmount < 1 << 20; i++) {
          flooder.ws.send(frameText);
          sent++;
        }
        await new Promise((r) => setImmediate(r));
      }
    })();
    // While the flood goes on, the canaries in their own room complete 50 more exchanges.
    const start = canaries.received();
    await withTimeout(
      (async () => {
        while (canaries.received().some((n, i) => n - start[i] < 50)) await sleep(20);
      })(),
      'the canaries to progress during the flood',
    );
    assert.ok(flooding && Date.now() < deadline, 'the flood was still going on');
    // Keep flooding until the stalled member is cut off (slow-consumer policy: close).
    await healthUntil(
      server,
      (x) => x.hub.slow_consumer_closes > base.hub.slow_consumer_closes,
      'the non-reading member of the flooded room to be cut off',
    );
    flooding = false;
    await flood;
    assert.ok(sent > 1000, `${sent} frames flooded`);
    stalled.ws._socket.resume();
    const closed = await stalled.close();
    assert.ok([1008, 1006].includes(closed.code), `closed with ${closed.code}`);
    assert.equal(flooder.closed, null, 'the flooder itself is not a slow consumer');
    flooder.ws.terminate();
    await survived(server, canaries, 'room flood');
  });
});

describe('polling session flood', () => {
  let server;
  let canaries;

  before(async () => {
    server = await startServer([
      '--ping-interval', '1',
      '--ping-timeout', '1',
      '--max-connections', '400',
      '--allow-anonymous', 'true',
    ]);
    canaries = await Canaries.start(server);
  });

  after(async () => {
    canaries?.stop();
    await server?.stop();
    process.stderr.write(`peak server RSS in the suite: ${peakRss.toFixed(1)} MiB (bound ${RSS_LIMIT_MIB} MiB)\n`);
  });

  it('many handshakes without follow-up: bounded by max_connections, expired by the heartbeat', async () => {
    const statuses = [];
    for (let batch = 0; batch < 10; batch++) {
      const answers = await Promise.all(
        Array.from({ length: 60 }, () =>
          fetch(`${server.httpUrl}/socket.io/?EIO=4&transport=polling`).then(async (r) => {
            await r.arrayBuffer();
            return r.status;
          }),
        ),
      );
      statuses.push(...answers);
    }
    const ok = statuses.filter((s) => s === 200).length;
    const refused = statuses.filter((s) => s === 503).length;
    assert.equal(ok + refused, 600, `statuses: ${[...new Set(statuses)]}`);
    // 400 slots, two held by the canaries.
    assert.ok(ok <= 398 && refused >= 202, `${ok} sessions opened, ${refused} refused`);
    await survived(server, canaries, 'polling flood');
    // Sessions that never poll are closed by the heartbeat (1 s + 1 s here); then the slots
    // are free again.
    await healthUntil(server, (h) => h.connections === 2, 'the idle sessions to expire');
    const again = await fetch(`${server.httpUrl}/socket.io/?EIO=4&transport=polling`);
    assert.equal(again.status, 200);
    await again.arrayBuffer();
    await survived(server, canaries, 'polling flood expiry');
  });
});
