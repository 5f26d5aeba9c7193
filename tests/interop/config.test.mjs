// Server settings observed from the outside with real clients: allowed origins,
// connection / room / message-size limits, heartbeat, slow consumers, TLS, and
// the precedence flag > environment > config file.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test config.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { WebSocket, Inbox, startServer, join, opened, withTimeout } from './lib/harness.mjs';

/** Try to open a WebSocket; resolve { ok: true, ws } or { ok: false, status }. */
function attempt(url, options = {}) {
  return withTimeout(
    new Promise((resolve) => {
      const ws = new WebSocket(url, options);
      ws.once('open', () => resolve({ ok: true, ws }));
      ws.once('error', (err) => {
        const m = /Unexpected server response: (\d+)/.exec(err.message);
        resolve({ ok: false, status: m ? Number(m[1]) : null, error: err.message });
      });
    }),
    `handshake with ${url}`,
  );
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe('--allowed-origins', () => {
  let server;
  before(async () => {
    server = await startServer(['--allowed-origins', 'https://*.example.com,http://localhost:3000']);
  });
  after(() => server.stop());

  for (const origin of ['https://chat.example.com', 'https://a.b.example.com', 'http://localhost:3000']) {
    it(`accepts Origin ${origin}`, async () => {
      const r = await attempt(server.wsUrl('/'), { origin });
      assert.equal(r.ok, true, `rejected: ${r.error}`);
      r.ws.terminate();
    });
  }

  for (const origin of ['https://evil.test', 'https://example.com.evil.test', 'http://chat.example.com', 'http://localhost:3001']) {
    it(`rejects Origin ${origin} with 403`, async () => {
      const r = await attempt(server.wsUrl('/'), { origin });
      if (r.ok) r.ws.terminate();
      assert.equal(r.ok, false, `Origin ${origin} was accepted`);
      assert.equal(r.status, 403);
    });
  }

  it('accepts clients that send no Origin (non-browser clients)', async () => {
    const r = await attempt(server.wsUrl('/'));
    assert.equal(r.ok, true, `rejected: ${r.error}`);
    r.ws.terminate();
  });
});

describe('limits', () => {
  it('--max-connections 2 refuses a third upgrade with 503 and frees the slot on close', async () => {
    const server = await startServer(['--max-connections', '2']);
    try {
      const a = await join(server.wsUrl('/'));
      const b = await join(server.wsUrl('/other'));
      const third = await attempt(server.wsUrl('/'));
      if (third.ok) third.ws.terminate();
      assert.equal(third.ok, false, 'third connection was accepted');
      assert.equal(third.status, 503);

      a.ws.close(1000);
      await a.close();
      // The server releases the slot once it has finished with the connection;
      // poll a bounded number of times rather than guessing a delay.
      let again;
      for (let i = 0; i < 50; i++) {
        again = await attempt(server.wsUrl('/'));
        if (again.ok) break;
        await sleep(100);
      }
      assert.equal(again.ok, true, `slot was not released: ${again.error}`);
      again.ws.terminate();
      b.ws.terminate();
    } finally {
      await server.stop();
    }
  });

  it('--max-room-members 1 closes a second member of the same room with 1008', async () => {
    const server = await startServer(['--max-room-members', '1']);
    try {
      const first = await join(server.wsUrl('/small'));
      const ws = new WebSocket(server.wsUrl('/small'));
      ws.on('error', () => {});
      const inbox = new Inbox(ws);
      const { code } = await inbox.close('the second member to be refused');
      assert.equal(code, 1008);
      // Another room is not affected, and the first member is still fine.
      const elsewhere = await join(server.wsUrl('/big'));
      first.ws.send('still here');
      assert.equal((await first.next()).text, 'still here');
      first.ws.terminate();
      elsewhere.ws.terminate();
    } finally {
      await server.stop();
    }
  });

  it('--max-message-size 100 accepts 100 bytes and closes 101 with 1009', async () => {
    const server = await startServer(['--max-message-size', '100']);
    try {
      const a = await join(server.wsUrl('/'), { perMessageDeflate: false });
      a.ws.send('a'.repeat(100));
      assert.equal((await a.next()).text, 'a'.repeat(100));
      a.ws.send('a'.repeat(101));
      assert.equal((await a.close()).code, 1009);
    } finally {
      await server.stop();
    }
  });
});

describe('heartbeat', () => {
  it('pings clients and drops one that never answers', async () => {
    const server = await startServer(['--ping-interval', '0.5', '--ping-timeout', '1']);
    try {
      // A well-behaved client: ws answers pings by itself.
      const good = await join(server.wsUrl('/hb'));
      const pinged = withTimeout(new Promise((r) => good.ws.once('ping', r)), 'a ping from the server');

      // A client that completes the handshake and then never answers a ping.
      const mute = net.connect(server.port, '127.0.0.1');
      const key = randomBytes(16).toString('base64');
      mute.write(
        `GET /hb HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
      let head = '';
      mute.on('data', (d) => {
        head += d.toString('latin1');
      });
      const ended = withTimeout(
        new Promise((resolve) => {
          mute.on('close', resolve);
          mute.on('error', () => {});
        }),
        'the server to drop the unresponsive client',
      );
      await pinged;
      await ended;
      assert.match(head, /^HTTP\/1\.1 101/, 'the mute client did get its handshake');
      assert.ok(head.includes('\x89'), 'the mute client was pinged before being dropped');

      // The good client is unaffected.
      good.ws.send('alive');
      assert.equal((await good.next()).text, 'alive');
      good.ws.terminate();
    } finally {
      await server.stop();
    }
  });
});

describe('slow consumers', () => {
  const COUNT = 1500;
  const SIZE = 16 * 1024;

  async function flood(server, room) {
    const reader = await join(server.wsUrl(room), { perMessageDeflate: false });
    const slow = await join(server.wsUrl(room), { perMessageDeflate: false });
    const writer = new WebSocket(server.wsUrl(`${room}?echo=false`), { perMessageDeflate: false });
    writer.on('error', () => {});
    await opened(writer);
    // The slow member stops reading from its socket; kernel buffers fill up,
    // then the server's per-connection outbox.
    slow.ws._socket.pause();
    // The writer keeps at most WINDOW messages ahead of the healthy reader, so
    // the reader's own outbox never fills: it is a fast consumer, the paused
    // one is not.
    const WINDOW = 4;
    let sent = 0;
    const sendNext = () => {
      const msg = Buffer.alloc(SIZE, sent % 251);
      msg.writeUInt32BE(sent, 0);
      writer.send(msg);
      sent += 1;
    };
    while (sent < WINDOW) sendNext();
    // A healthy member gets every message, in order.
    for (let i = 0; i < COUNT; i++) {
      const m = await reader.next(`message ${i} at the healthy reader`);
      assert.equal(m.data.readUInt32BE(0), i, 'healthy reader lost or reordered messages');
      if (sent < COUNT) sendNext();
    }
    return { reader, slow, writer };
  }

  it('--slow-consumer close disconnects the stalled client with 1008, others get everything', async () => {
    const server = await startServer(['--outbox-max-bytes', '262144', '--slow-consumer', 'close']);
    try {
      const { reader, slow, writer } = await flood(server, '/slow-close');
      slow.ws._socket.resume();
      const got = [];
      let closed;
      for (;;) {
        try {
          got.push((await slow.next()).data.readUInt32BE(0));
        } catch {
          closed = await slow.close();
          break;
        }
      }
      assert.ok(got.length < COUNT, `the stalled client got all ${COUNT} messages: nothing was bounded`);
      assert.equal(closed.code, 1008, `expected 1008 (slow consumer), got ${closed.code}`);
      reader.ws.terminate();
      writer.terminate();
    } finally {
      await server.stop();
    }
  });

  it('--slow-consumer drop-oldest keeps the stalled client and the newest messages', async () => {
    const server = await startServer(['--outbox-max-bytes', '262144', '--slow-consumer', 'drop-oldest']);
    try {
      const { reader, slow, writer } = await flood(server, '/slow-drop');
      slow.ws._socket.resume();
      const got = [];
      for (;;) {
        const m = await slow.next('messages at the stalled client');
        const n = m.data.readUInt32BE(0);
        got.push(n);
        if (n === COUNT - 1) break;
      }
      assert.ok(got.length < COUNT, `the stalled client got all ${COUNT} messages: nothing was dropped`);
      for (let i = 1; i < got.length; i++) assert.ok(got[i] > got[i - 1], 'messages out of order after drops');
      // Still connected and still a member.
      slow.ws.send('I am still here');
      assert.equal((await reader.next()).text, 'I am still here');
      reader.ws.terminate();
      slow.ws.terminate();
      writer.terminate();
    } finally {
      await server.stop();
    }
  });
});

describe('TLS', () => {
  let dir;
  let server;
  let cert;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'switchboard-tls-'));
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'),
    ], { stdio: 'ignore' });
    cert = readFileSync(path.join(dir, 'cert.pem'));
    server = await startServer(['--tls-cert', path.join(dir, 'cert.pem'), '--tls-key', path.join(dir, 'key.pem')]);
  });
  after(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('announces https and relays over wss with a verified certificate', async () => {
    assert.match(server.httpUrl, /^https:/);
    const a = await join(server.wsUrl('/secure'), { ca: cert });
    const b = await join(server.wsUrl('/secure'), { ca: cert });
    a.ws.send('over tls');
    assert.equal((await b.next()).text, 'over tls');
    a.ws.terminate();
    b.ws.terminate();
  });

  it('serves /health over https', async () => {
    const body = await withTimeout(
      new Promise((resolve, reject) => {
        https.get(`${server.httpUrl}/health`, { ca: cert }, (res) => {
          let data = '';
          res.on('data', (d) => (data += d));
          res.on('end', () => resolve({ status: res.statusCode, data }));
        }).on('error', reject);
      }),
      'GET /health over https',
    );
    assert.equal(body.status, 200);
    assert.equal(JSON.parse(body.data).status, 'ok');
  });
});

describe('configuration precedence: flag > env > file > default', () => {
  let dir;
  let file;
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'switchboard-config-'));
    file = path.join(dir, 'switchboard.toml');
    writeFileSync(file, 'welcome = "from file"\nmax_message_size = 2000\n');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  async function welcomeAndLimit(args, env) {
    const server = await startServer(args, { env });
    try {
      const ws = new WebSocket(server.wsUrl('/'), { perMessageDeflate: false });
      ws.on('error', () => {});
      const inbox = new Inbox(ws);
      await opened(ws);
      const welcome = (await inbox.next('welcome')).text;
      ws.send('x'.repeat(2001));
      const { code } = await inbox.close('close after a 2001-byte message');
      return { welcome, code };
    } finally {
      await server.stop();
    }
  }

  it('the file applies', async () => {
    const r = await welcomeAndLimit(['--config', file], {});
    assert.equal(r.welcome, 'from file');
    assert.equal(r.code, 1009, 'max_message_size = 2000 from the file');
  });

  it('the environment beats the file', async () => {
    const r = await welcomeAndLimit(['--config', file], { SWITCHBOARD_WELCOME: 'from env' });
    assert.equal(r.welcome, 'from env');
    assert.equal(r.code, 1009);
  });

  it('a flag beats the environment', async () => {
    const r = await welcomeAndLimit(['--config', file, '--welcome', 'from flag'], { SWITCHBOARD_WELCOME: 'from env' });
    assert.equal(r.welcome, 'from flag');
  });

  it('SWITCHBOARD_CONFIG names the file too', async () => {
    const r = await welcomeAndLimit([], { SWITCHBOARD_CONFIG: file });
    assert.equal(r.welcome, 'from file');
  });
});

describe('the server\'s own origin and demo mode', () => {
  /** One Centrifugo JSON command over a plain `ws` socket; resolves with the reply of `id`. */
  function command(inbox, id, body) {
    inbox.ws.send(JSON.stringify({ id, ...body }));
    return inbox.next(`reply ${id}`).then((m) => JSON.parse(m.text));
  }

  it('allows the page\'s own origin whatever allowed_origins says, and refuses others', async () => {
    const server = await startServer(['--allowed-origins', 'https://*.example.com']);
    try {
      const own = new WebSocket(server.wsUrl('/lobby'), { origin: server.httpUrl });
      await opened(own);
      own.close();
      const other = new WebSocket(server.wsUrl('/lobby'), { origin: 'http://evil.test' });
      const status = await withTimeout(new Promise((resolve) => {
        other.on('unexpected-response', (_req, res) => resolve(res.statusCode));
        other.on('error', () => {});
      }), 'the refusal');
      assert.equal(status, 403);
    } finally {
      await server.stop();
    }
  });

  it('--demo lets anonymous clients use channels with recovery; without it they need a token', async () => {
    for (const demo of [true, false]) {
      const server = await startServer(demo ? ['--demo'] : []);
      try {
        const ws = new WebSocket(server.wsUrl('/connection/websocket'));
        ws.on('error', () => {});
        const inbox = new Inbox(ws);
        await opened(ws);
        if (!demo) {
          ws.send(JSON.stringify({ id: 1, connect: {} }));
          await inbox.close('the refusal');
          assert.ok(inbox.closed.code >= 3500 && inbox.closed.code < 4000, `closed with ${inbox.closed.code}`);
          continue;
        }
        const connected = await command(inbox, 1, { connect: {} });
        assert.ok(connected.connect && connected.connect.client, JSON.stringify(connected));
        const sub = await command(inbox, 2, { subscribe: { channel: 'demo-room', recover: false } });
        assert.equal(sub.subscribe.recoverable, true, JSON.stringify(sub));
        assert.ok(server.stderr().includes('DEMO MODE'), 'demo mode is logged');
        ws.close();
      } finally {
        await server.stop();
      }
    }
  });
});
