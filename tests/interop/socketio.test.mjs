// Socket.IO v5 / Engine.IO v4 at /socket.io/, exercised with the unmodified
// `socket.io-client` (4.x) against the real binary: the WebSocket transport, long-polling
// and the upgrade, events and acks both ways, Buffers both ways, namespaces, JWT auth,
// broadcasts (with and without the sender), connection state recovery, the Engine.IO HTTP
// errors (raw fetch), the heartbeat, and one channel shared by socket.io-client, the
// centrifuge SDK, a raw `ws` client and the HTTP API.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test socketio.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { io } from 'socket.io-client';
import { Centrifuge } from 'centrifuge';
import { WebSocket, Inbox, startServer, join, withTimeout, binaryPath, collectEvents as collect } from './lib/harness.mjs';

const SECRET = 'socketio-test-secret';
const API_KEY = 'socketio-api-key';

const CONFIG = `
token_hmac_secret = "${SECRET}"
allow_anonymous = true
api_key = "${API_KEY}"

[channel.default]
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true

[socketio]
recovery = true
max_disconnection_duration = 60
exclude_sender = ["/others"]
max_payload = 100000
`;

// Small outboxes, for the slow-consumer test.
const TIGHT_CONFIG = `
allow_anonymous = true
api_key = "${API_KEY}"
outbox_max_messages = 16
outbox_max_bytes = 1048576

[channel.default]
allow_subscribe_for_anonymous = true
`;

// No anonymous clients, one allowed origin, a fast heartbeat.
const STRICT_CONFIG = `
token_hmac_secret = "${SECRET}"
allow_anonymous = false
allowed_origins = ["http://good.example"]
ping_interval = 1
ping_timeout = 1

[channel.default]
allow_publish_for_subscriber = true
`;

function mint(args) {
  return execFileSync(binaryPath(), ['token', '--secret', SECRET, ...args], { encoding: 'utf8' }).trim();
}

/** Resolves with the args of the first `event` on `emitter`. */
function once(emitter, event, what = event) {
  return withTimeout(new Promise((resolve) => emitter.once(event, (...args) => resolve(args))), what);
}

describe('socket.io-client against /socket.io/', () => {
  let server;
  let strict;
  let tight;
  let dir;
  const sockets = [];

  /** A connected socket (resolves on `connect`, rejects on `connect_error`). */
  async function connect(nsp = '/', opts = {}, srv = server) {
    const s = io(`${srv.httpUrl}${nsp}`, {
      forceNew: opts.forceNew ?? true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
      ...opts,
    });
    sockets.push(s);
    await withTimeout(
      new Promise((resolve, reject) => {
        s.once('connect', resolve);
        s.once('connect_error', reject);
      }),
      `connect to ${nsp}`,
    );
    return s;
  }

  async function apiPublish(channel, data, srv = server) {
    const r = await fetch(`${srv.httpUrl}/api/publish`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
      body: JSON.stringify({ channel, data }),
    });
    assert.equal(r.status, 200);
    const body = await r.json();
    assert.ok(!body.error, JSON.stringify(body));
  }

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'sb-sio-'));
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(file, CONFIG);
    server = await startServer(['--config', file]);
    const strictFile = path.join(dir, 'strict.toml');
    writeFileSync(strictFile, STRICT_CONFIG);
    strict = await startServer(['--config', strictFile]);
    const tightFile = path.join(dir, 'tight.toml');
    writeFileSync(tightFile, TIGHT_CONFIG);
    tight = await startServer(['--config', tightFile]);
  });

  after(async () => {
    for (const s of sockets) s.disconnect();
    const { code } = await server.stop();
    assert.equal(code, 0, 'clean exit on SIGTERM');
    await strict.stop();
    await tight.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('websocket transport: subscribe, publish and receive channel messages with acks', async () => {
    const s = await connect('/', { transports: ['websocket'] });
    assert.equal(s.io.engine.transport.name, 'websocket');
    assert.ok(s.id, 'the CONNECT answer gives a socket id');
    const messages = collect(s, 'message');
    assert.deepEqual(await s.emitWithAck('subscribe', 'ws-news'), { ok: true });
    assert.deepEqual(await s.emitWithAck('publish', 'ws-news', { a: 1 }), { ok: true });
    await apiPublish('ws-news', 'from the API');
    const got = await messages.until(2);
    assert.equal(got[0][0], 'ws-news');
    assert.deepEqual(got[0][1], { a: 1 });
    assert.equal(typeof got[0][2], 'string', 'with recovery on, the offset comes last');
    assert.deepEqual(got[1].slice(0, 2), ['ws-news', 'from the API']);
    assert.notEqual(got[0][2], got[1][2], 'each publication has its own offset');
    assert.deepEqual(await s.emitWithAck('unsubscribe', 'ws-news'), { ok: true });
  });

  it('publications reach idle websocket sockets while they are parked, without resuming them', async () => {
    const srv = await startServer(['--config', path.join(dir, 'switchboard.toml')]);
    /** One sample of the server's /metrics. */
    const metric = async (name) => {
      const text = await (await fetch(`${srv.httpUrl}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${name} `));
      assert.ok(line, `no ${name} in /metrics`);
      return Number(line.split(' ')[1]);
    };
    const SUBS = 8;
    const subs = [];
    try {
      for (let i = 0; i < SUBS; i++) {
        const s = await connect('/', { transports: ['websocket'] }, srv);
        assert.deepEqual(await s.emitWithAck('subscribe', 'parked-news'), { ok: true });
        subs.push({ s, messages: collect(s, 'message') });
      }
      await withTimeout(
        (async () => {
          while ((await metric('switchboard_connections_parked')) !== SUBS) {
            await new Promise((r) => setTimeout(r, 20));
          }
        })(),
        'every idle socket parked',
      );
      const before = await metric('switchboard_connections_resumed_total');
      for (let i = 0; i < 5; i++) await apiPublish('parked-news', i, srv);
      for (const { messages } of subs) {
        const got = await messages.until(5);
        assert.deepEqual(got.map((m) => m[1]), [0, 1, 2, 3, 4]);
      }
      // Published over HTTP, so nothing had bytes to read: the deliveries alone woke them.
      const resumed = (await metric('switchboard_connections_resumed_total')) - before;
      assert.ok(resumed < SUBS / 2, `${resumed} resumes for ${SUBS} parked sockets`);
    } finally {
      for (const { s } of subs) s.disconnect();
      await srv.stop();
    }
  });

  it('starts with long-polling and upgrades to a websocket', async () => {
    const s = io(server.httpUrl, { forceNew: true, autoConnect: false });
    sockets.push(s);
    const transports = [];
    const upgraded = new Promise((resolve) => {
      s.io.on('open', () => {
        transports.push(s.io.engine.transport.name);
        s.io.engine.on('upgrade', (t) => {
          transports.push(t.name);
          resolve();
        });
      });
    });
    s.connect();
    await once(s, 'connect');
    await withTimeout(upgraded, 'the upgrade to websocket');
    assert.deepEqual(transports, ['polling', 'websocket']);
    const messages = collect(s, 'message');
    assert.deepEqual(await s.timeout(5000).emitWithAck('subscribe', 'upgraded'), { ok: true });
    await apiPublish('upgraded', { n: 1 });
    const [[channel, data]] = await messages.until(1);
    assert.deepEqual([channel, data], ['upgraded', { n: 1 }]);
  });

  it('long-polling only: events, acks and Buffers (base64 in the payload)', async () => {
    const s = await connect('/', { transports: ['polling'] });
    const other = await connect('/', { transports: ['websocket'] });
    assert.equal(s.io.engine.transport.name, 'polling');
    const messages = collect(s, 'message');
    const files = collect(other, 'file');
    assert.deepEqual(await s.emitWithAck('subscribe', 'polled'), { ok: true });
    assert.deepEqual(await s.emitWithAck('publish', 'polled', Buffer.from([0, 1, 254, 255])), {
      ok: true,
    });
    const [[channel, data]] = await messages.until(1);
    assert.equal(channel, 'polled');
    assert.ok(Buffer.isBuffer(data), 'binary arrives as a Buffer');
    assert.deepEqual([...data], [0, 1, 254, 255]);
    s.emit('file', { name: 'a.bin', body: Buffer.from('xyz') }, Buffer.from([7]));
    const [[meta, extra]] = await files.until(1);
    assert.equal(meta.name, 'a.bin');
    assert.equal(Buffer.from(meta.body).toString(), 'xyz');
    assert.deepEqual([...extra], [7]);
  });

  it('acks with a callback, with a timeout, and refusals', async () => {
    const s = await connect('/', { transports: ['websocket'] });
    const viaCallback = await withTimeout(
      new Promise((resolve) => s.emit('subscribe', 'acked', resolve)),
      'callback ack',
    );
    assert.deepEqual(viaCallback, { ok: true });
    assert.deepEqual(await s.timeout(5000).emitWithAck('publish', 'acked', 'x'), { ok: true });
    assert.deepEqual(await s.timeout(5000).emitWithAck('subscribe', 'nope:x'), {
      error: 'unknown channel',
    });
    assert.deepEqual(await s.timeout(5000).emitWithAck('subscribe', 'socket.io/'), {
      error: 'unknown channel',
    }, 'namespace broadcast channels are not for direct use');
    assert.deepEqual(await s.timeout(5000).emitWithAck('publish', 'not-subscribed', 1), {
      error: 'permission denied',
    });
    // A broadcast event is acknowledged, without arguments, once published.
    assert.equal(await s.timeout(5000).emitWithAck('shout', 'hi'), undefined);
  });

  it('Buffers both ways between socket.io and a raw WebSocket client', async () => {
    // The raw client joins first: its join probe is a message in the room.
    const rawInbox = await join(server.wsUrl('/bin-room'));
    const raw = rawInbox.ws;
    const s = await connect('/', { transports: ['websocket'] });
    const messages = collect(s, 'message');
    assert.deepEqual(await s.emitWithAck('subscribe', 'bin-room'), { ok: true });
    await s.emitWithAck('publish', 'bin-room', Buffer.from([1, 2, 3]));
    const fromSio = await rawInbox.next();
    assert.equal(fromSio.isBinary, true);
    assert.deepEqual([...fromSio.data], [1, 2, 3]);
    raw.send(Buffer.from([4, 5]));
    const got = await messages.until(2);
    assert.deepEqual([...got[0][1]], [1, 2, 3]);
    assert.ok(Buffer.isBuffer(got[1][1]));
    assert.deepEqual([...got[1][1]], [4, 5]);
    raw.close();
  });

  it('namespaces are separate; a channel joined in two namespaces reaches each once', async () => {
    const a = await connect('/a', { forceNew: false, transports: ['websocket'] });
    const b = await connect('/b', { forceNew: false, transports: ['websocket'] });
    assert.equal(a.io, b.io, 'both namespaces share one connection');
    const c = await connect('/a', { transports: ['websocket'] });
    const aHello = collect(a, 'hello');
    const bHello = collect(b, 'hello');
    const cHello = collect(c, 'hello');
    a.emit('hello', 'from a');
    await cHello.until(1, 'the /a broadcast at another /a socket');
    await aHello.until(1, 'the /a broadcast back at its sender');
    b.emit('hello', 'from b');
    await bHello.until(1);
    assert.deepEqual(bHello.got.map((args) => args[0]), ['from b'], '/b never saw the /a event');
    assert.deepEqual(cHello.got.map((args) => args[0]), ['from a']);

    const aMsg = collect(a, 'message');
    const bMsg = collect(b, 'message');
    assert.deepEqual(await a.emitWithAck('subscribe', 'shared'), { ok: true });
    assert.deepEqual(await b.emitWithAck('subscribe', 'shared'), { ok: true });
    await apiPublish('shared', 1);
    await apiPublish('shared', 2);
    await aMsg.until(2);
    await bMsg.until(2);
    assert.deepEqual(aMsg.got.map((m) => m[1]), [1, 2]);
    assert.deepEqual(bMsg.got.map((m) => m[1]), [1, 2]);
  });

  it('exclude_sender: a namespace broadcast goes to the others only', async () => {
    const x1 = await connect('/others', { transports: ['websocket'] });
    const x2 = await connect('/others', { transports: ['websocket'] });
    const x1Note = collect(x1, 'note');
    const x1Reply = collect(x1, 'reply');
    const x2Note = collect(x2, 'note');
    x1.emit('note', 'one');
    const [[text]] = await x2Note.until(1);
    assert.equal(text, 'one');
    x2.emit('reply', 'two');
    await x1Reply.until(1);
    // Same channel, so had x1 received its own note it would have come before the reply.
    assert.equal(x1Note.got.length, 0, 'the sender did not get its own broadcast');
  });

  it('auth.token: a valid JWT connects (its channels are joined), others are refused', async () => {
    await assert.rejects(
      connect('/', { transports: ['websocket'] }, strict),
      (err) => err.message === 'invalid token',
    );
    await assert.rejects(
      connect('/', { transports: ['websocket'], auth: { token: 'not.a.jwt' } }, strict),
      (err) => err.message === 'invalid token',
    );
    const wrongKey = execFileSync(binaryPath(), ['token', '--secret', 'other', '--user', 'eve'], {
      encoding: 'utf8',
    }).trim();
    await assert.rejects(
      connect('/', { transports: ['websocket'], auth: { token: wrongKey } }, strict),
      (err) => err.message === 'invalid token',
    );
    const s = await connect(
      '/',
      { transports: ['websocket'], auth: { token: mint(['--user', 'alice', '--subscribe', 'alice-feed']) } },
      strict,
    );
    const messages = collect(s, 'message');
    // An authenticated user may subscribe (anonymous ones may not on this server).
    assert.deepEqual(await s.emitWithAck('subscribe', 'members'), { ok: true });
    assert.deepEqual(await s.emitWithAck('publish', 'alice-feed', 'hello alice'), { ok: true });
    const [[channel, data, ...rest]] = await messages.until(1);
    assert.deepEqual([channel, data], ['alice-feed', 'hello alice']);
    assert.deepEqual(rest, [], 'no offset argument when recovery is off');
  });

  it('an expired token is refused with "token expired"', async () => {
    const token = mint(['--user', 'late', '--ttl', '1s']);
    await new Promise((r) => setTimeout(r, 2100));
    await assert.rejects(
      connect('/', { transports: ['websocket'], auth: { token } }, strict),
      (err) => err.message === 'token expired',
    );
  });

  it('a socket whose token expires is disconnected by the server', async () => {
    // Two seconds: with whole-second expiry times, one could be over before the connect.
    const token = mint(['--user', 'brief', '--ttl', '2s']);
    const s = await connect('/', { transports: ['websocket'], auth: { token } }, strict);
    const [reason] = await once(s, 'disconnect', 'the disconnect at token expiry');
    assert.equal(reason, 'io server disconnect');
    assert.equal(s.active, false, 'the client does not reconnect by itself with the stale token');
  });

  it('connection state recovery: missed events arrive exactly once, socket.recovered is true', async () => {
    for (const transports of [['websocket'], ['polling']]) {
      const channel = `rec-${transports[0]}`;
      const s = await connect('/', { transports, reconnectionDelay: 500, reconnectionDelayMax: 500 });
      assert.equal(s.recovered, false, 'a first connection is not a recovery');
      const firstId = s.id;
      const messages = collect(s, 'message');
      assert.deepEqual(await s.emitWithAck('subscribe', channel), { ok: true });
      await apiPublish(channel, 'm1');
      await messages.until(1);

      const reconnected = once(s, 'connect', 'the reconnect');
      const dropped = once(s, 'disconnect');
      s.io.engine.close(); // the transport drops; the manager reconnects
      await dropped;
      await apiPublish(channel, 'm2');
      await apiPublish(channel, 'm3');
      await reconnected;
      assert.equal(s.recovered, true, `recovered over ${transports[0]}`);
      assert.equal(s.id, firstId, 'the recovered socket keeps its id');
      await apiPublish(channel, 'm4');
      await messages.until(4);
      // Anything delivered twice would have come before m4.
      assert.deepEqual(messages.got.map((m) => m[1]), ['m1', 'm2', 'm3', 'm4']);
      const offsets = messages.got.map((m) => m[2]);
      assert.equal(new Set(offsets).size, 4);
      s.disconnect();
    }
  });

  it('a client that never connected before gets a fresh session (recovered is false)', async () => {
    const s = await connect('/', { transports: ['websocket'], auth: { pid: 'unknown', offset: 'x' } });
    assert.equal(s.recovered, false);
  });

  it('Engine.IO HTTP errors: status and JSON body as the reference server', async () => {
    const base = `${server.httpUrl}/socket.io/`;
    const check = async (url, init, status, code, message) => {
      const r = await fetch(url, init);
      assert.equal(r.status, status, url);
      assert.deepEqual(await r.json(), { code, message }, url);
    };
    await check(`${base}?EIO=4&transport=tobi`, {}, 400, 0, 'Transport unknown');
    await check(`${base}?EIO=4`, {}, 400, 0, 'Transport unknown');
    await check(`${base}?EIO=4&transport=polling&sid=nope`, {}, 400, 1, 'Session ID unknown');
    await check(`${base}?EIO=4&transport=polling`, { method: 'POST', body: '40' }, 400, 2, 'Bad handshake method');
    await check(`${base}?EIO=4&transport=websocket`, {}, 400, 3, 'Bad request');
    await check(`${base}?EIO=3&transport=polling`, {}, 400, 5, 'Unsupported protocol version');
    await check(`${base}?transport=polling`, {}, 400, 5, 'Unsupported protocol version');
    await check(
      `${strict.httpUrl}/socket.io/?EIO=4&transport=polling`,
      { headers: { Origin: 'http://evil.example' } },
      403,
      4,
      'Forbidden',
    );
  });

  it('polling sessions: handshake, CORS, packets, one GET at a time, payload limit', async () => {
    const base = `${server.httpUrl}/socket.io/?EIO=4&transport=polling`;
    const open = await fetch(base, { headers: { Origin: 'http://app.example' } });
    assert.equal(open.status, 200);
    assert.equal(open.headers.get('access-control-allow-origin'), 'http://app.example');
    assert.equal(open.headers.get('access-control-allow-credentials'), 'true');
    const body = await open.text();
    assert.equal(body[0], '0');
    const hs = JSON.parse(body.slice(1));
    assert.deepEqual(hs.upgrades, ['websocket']);
    assert.equal(hs.pingInterval, 25000);
    assert.equal(hs.pingTimeout, 20000);
    assert.equal(hs.maxPayload, 100000);
    const url = `${base}&sid=${hs.sid}`;

    // CONNECT, an event with an ack, then both answers in one GET (\x1e between them).
    const post = await fetch(url, { method: 'POST', body: '40\x1e421["subscribe","raw-poll"]' });
    assert.equal(post.status, 200);
    assert.equal(await post.text(), 'ok');
    let got = '';
    while (!got.includes('431')) got += `\x1e${await (await fetch(url)).text()}`;
    const packets = got.split('\x1e').filter(Boolean);
    assert.ok(packets.some((p) => p.startsWith('40{"') && p.includes('"sid"')), got);
    assert.ok(packets.includes('431[{"ok":true}]'), got);

    const pre = await fetch(url, {
      method: 'OPTIONS',
      headers: { Origin: 'http://app.example', 'Access-Control-Request-Headers': 'content-type' },
    });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers.get('access-control-allow-origin'), 'http://app.example');
    assert.match(pre.headers.get('access-control-allow-methods'), /POST/);

    // A second GET while one is pending is a protocol error that ends the session.
    const first = fetch(url);
    await new Promise((r) => setTimeout(r, 100));
    const second = await fetch(url);
    assert.equal(second.status, 400);
    const firstBody = await (await first).text();
    assert.ok(firstBody.endsWith('1') || firstBody === '6', `the pending GET ends: ${firstBody}`);
    const after = await fetch(url);
    assert.equal(after.status, 400);
    assert.equal((await after.json()).code, 1, 'the session is gone');

    // A body over maxPayload: 413, and the session is closed.
    const hs2 = JSON.parse((await (await fetch(base)).text()).slice(1));
    const url2 = `${base}&sid=${hs2.sid}`;
    const big = await fetch(url2, { method: 'POST', body: `4${'x'.repeat(100001)}` });
    assert.equal(big.status, 413);
    const gone = await fetch(url2);
    assert.equal(gone.status, 400);

    // A malformed payload: 400 Bad request, and the session is closed.
    const hs3 = JSON.parse((await (await fetch(base)).text()).slice(1));
    const url3 = `${base}&sid=${hs3.sid}`;
    const bad = await fetch(url3, { method: 'POST', body: '9nonsense' });
    assert.equal(bad.status, 400);
    assert.equal((await bad.json()).code, 3);
  });

  it('heartbeat: the server pings, and closes a client that does not answer', async () => {
    const ws = new WebSocket(`${strict.wsUrl('/socket.io/')}?EIO=4&transport=websocket`);
    const inbox = new Inbox(ws);
    const open = await inbox.next();
    const hs = JSON.parse(open.text.slice(1));
    assert.equal(open.text[0], '0');
    assert.deepEqual(hs.upgrades, []);
    assert.equal(hs.pingInterval, 1000);
    const ping = await inbox.next();
    assert.equal(ping.text, '2');
    // We do not answer: the server gives up after the ping timeout.
    await withTimeout(
      new Promise((resolve) => (ws.readyState === WebSocket.CLOSED ? resolve() : ws.once('close', resolve))),
      'the close after a missed pong',
    );

    // A client that answers stays connected through several pings.
    const ok = new WebSocket(`${strict.wsUrl('/socket.io/')}?EIO=4&transport=websocket`);
    const okInbox = new Inbox(ok);
    await okInbox.next();
    for (let i = 0; i < 3; i++) {
      assert.equal((await okInbox.next()).text, '2');
      ok.send('3');
    }
    assert.equal(ok.readyState, WebSocket.OPEN);
    ok.close();
  });

  it('a client that stops reading is closed as a slow consumer (1008)', async () => {
    // Without compression, so the bytes on the wire are as large as the messages.
    const ws = new WebSocket(`${tight.wsUrl('/socket.io/')}?EIO=4&transport=websocket`, {
      perMessageDeflate: false,
    });
    const inbox = new Inbox(ws);
    assert.equal((await inbox.next()).text[0], '0');
    ws.send('40');
    assert.match((await inbox.next()).text, /^40\{"sid":"/);
    ws.send('421["subscribe","flood"]');
    assert.equal((await inbox.next()).text, '431[{"ok":true}]');
    // Stop reading: the socket buffers fill, then the bounded outbox overflows.
    ws._socket.pause();
    // 50 MB: more than the loopback socket buffers hold, so the server's writes stall.
    const big = 'x'.repeat(256 * 1024);
    for (let i = 0; i < 200; i++) await apiPublish('flood', big, tight);
    ws._socket.resume();
    const { code, reason } = await inbox.close();
    assert.equal(code, 1008);
    assert.equal(reason, 'slow consumer');
    assert.ok(inbox.items.length < 200, `not everything was delivered (${inbox.items.length})`);
  });

  it('server shutdown: clients see a transport close (so they reconnect), the server exits 0', async () => {
    const srv = await startServer(['--config', path.join(dir, 'switchboard.toml')]);
    const ws = await connect('/', { transports: ['websocket'], reconnection: false }, srv);
    const polling = await connect('/', { transports: ['polling'], reconnection: false }, srv);
    const dropped = [once(ws, 'disconnect'), once(polling, 'disconnect')];
    const exit = srv.stop();
    const [[wsReason], [pollingReason]] = await Promise.all(dropped);
    assert.equal(wsReason, 'transport close');
    // The pending GET ends with a close packet, or fails if the process is gone first:
    // either way the client reconnects, unlike after "io server disconnect".
    assert.ok(['transport close', 'transport error'].includes(pollingReason), pollingReason);
    assert.equal((await exit).code, 0);
  });

  it('one channel for socket.io, centrifuge, raw WebSocket and the HTTP API', async () => {
    const channel = 'crossroads';
    // The raw client joins first: its join probe is a message in the channel.
    const rawInbox = await join(server.wsUrl(`/${channel}`));
    const raw = rawInbox.ws;
    const s = await connect('/', { transports: ['websocket'] });
    const sio = collect(s, 'message');
    assert.deepEqual(await s.emitWithAck('subscribe', channel), { ok: true });

    const cf = new Centrifuge(server.wsUrl('/connection/websocket'), { websocket: WebSocket });
    const cfGot = [];
    const cfWaiters = [];
    const sub = cf.newSubscription(channel);
    sub.on('publication', (ctx) => {
      cfGot.push(ctx.data);
      for (const w of cfWaiters.splice(0)) w();
    });
    const subscribed = once(sub, 'subscribed');
    cf.connect();
    sub.subscribe();
    await subscribed;


    await s.emitWithAck('publish', channel, { from: 'socket.io' });
    await sub.publish({ from: 'centrifuge' });
    raw.send(JSON.stringify({ from: 'raw' }));
    await apiPublish(channel, { from: 'api' });

    const expected = ['socket.io', 'centrifuge', 'raw', 'api'].sort();
    const sioGot = await sio.until(4, 'four messages at socket.io');
    assert.deepEqual(sioGot.map((m) => m[1].from).sort(), expected);
    await withTimeout(
      new Promise((resolve) => {
        const check = () => (cfGot.length >= 4 ? resolve() : cfWaiters.push(check));
        check();
      }),
      'four publications at centrifuge',
    );
    assert.deepEqual(cfGot.map((d) => d.from).sort(), expected);
    const rawGot = [];
    for (let i = 0; i < 4; i++) rawGot.push(JSON.parse((await rawInbox.next()).text).from);
    assert.deepEqual(rawGot.sort(), expected);
    cf.disconnect();
    raw.close();
  });
});
