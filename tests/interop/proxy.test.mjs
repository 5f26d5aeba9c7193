// The backend's proxy (connect, rpc, subscribe, publish) with the unmodified `centrifuge`
// JS SDK. The backend below is plain Node `http`, written from Centrifugo's documented
// proxy format (POST JSON; answers `{"result": {...}}`, `{"error": {code, message}}` or
// `{"disconnect": {code, reason}}`), not from Switchboard's code.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test proxy.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Centrifuge } from 'centrifuge';
import { io } from 'socket.io-client';
import { WebSocket, startServer, withTimeout, binaryPath } from './lib/harness.mjs';
import { once } from './lib/centrifuge_helpers.mjs';

const SECRET = 'proxy-test-secret';

/**
 * A WebSocket class for the SDK that sends `cookie` with the upgrade request; every frame
 * the server sends is appended to `frames` when given.
 */
function cookieSocket(cookie, frames) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, cookie ? { headers: { Cookie: cookie } } : {});
      if (frames) this.on('message', (m) => frames.push(String(m)));
    }
  };
}

/** The session cookie → user table of the test backend. */
const SESSIONS = { 'sess-alice': 'alice', 'sess-bob': 'bob', 'sess-dave': 'dave' };

/** The meta the backend attaches to dave's connections (Centrifugo's ConnectResult `meta`). */
const DAVE_META = { tenant: 'acme-secret-tenant', plan: 7 };

function cookieUser(header) {
  const m = /(?:^|;\s*)session=([^;]+)/.exec(header || '');
  return m ? SESSIONS[m[1]] : undefined;
}

/**
 * The application's backend: one handler per proxy kind, as Centrifugo's docs describe
 * them. `mode` switches it to misbehave: 'slow' (answers after 3 s) or 'garbage'.
 */
function startBackend() {
  const state = { mode: 'ok', calls: { connect: 0, rpc: 0, subscribe: 0, publish: 0, sub_refresh: 0 }, last: {}, subExpired: false };
  const handlers = {
    connect(req, headers) {
      if ((headers.cookie || '').includes('session=blocked')) return { error: { code: 1403, message: 'account blocked' } };
      const user = cookieUser(headers.cookie);
      if (!user) return { disconnect: { code: 4501, reason: 'no session' } };
      const result = { user, info: { name: user.toUpperCase() }, data: { hello: user, sdk: req.data ?? null } };
      if (user === 'dave') result.meta = DAVE_META;
      return { result };
    },
    rpc(req) {
      if (req.method === 'sum') {
        // Centrifugo sends the client's data; Socket.IO clients send their arguments.
        const sum = Array.isArray(req.data) ? req.data.reduce((x, y) => x + y, 0) : req.data.a + req.data.b;
        return { result: { data: { sum } } };
      }
      if (req.method === 'whoami') return { result: { data: { user: req.user } } };
      return { error: { code: 1404, message: `no method ${req.method}` } };
    },
    subscribe(req) {
      if (req.channel === 'news:secret') return { error: { code: 1403, message: 'not for you' } };
      if (req.channel === 'news:welcome') return { result: { data: { welcome: req.user } } };
      // Expires in a second: Centrifugo then asks the sub_refresh proxy.
      if (req.channel === 'news:short') return { result: { expire_at: Math.floor(Date.now() / 1000) + 1 } };
      // Per-subscription overrides of the namespace's options (each a BoolValue).
      if (req.channel === 'feed:recover') return { result: { override: { force_recovery: { value: true } } } };
      if (req.channel === 'feed:position') return { result: { override: { force_positioning: { value: true } } } };
      return { result: {} };
    },
    sub_refresh(req) {
      if (state.subExpired) return { result: { expired: true } };
      return { result: { expire_at: Math.floor(Date.now() / 1000) + 1 } };
    },
    publish(req) {
      // Centrifugo clients publish an object; a Socket.IO broadcast sends its arguments
      // (an array); a raw room message that is not JSON arrives as a string.
      const d = Array.isArray(req.data) ? req.data[0] : req.data;
      const text = String(typeof d === 'string' ? d : d?.text ?? '');
      if (text.includes('banned')) return { error: { code: 1400, message: 'banned word' } };
      if (text.includes('ephemeral')) return { result: { skip_history: true } };
      if (text.includes('shout')) return { result: { data: { text: text.toUpperCase(), by: req.user } } };
      return { result: {} };
    },
  };
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const kind = req.url.replace(/^\/proxy\//, '');
      const handler = handlers[kind];
      if (req.method !== 'POST' || !handler) {
        res.writeHead(404).end();
        return;
      }
      state.calls[kind] += 1;
      const parsed = JSON.parse(body);
      state.last[kind] = { body: parsed, headers: req.headers };
      const answer = () => {
        if (state.mode === 'garbage') {
          res.writeHead(200, { 'content-type': 'text/html' }).end('<html>oops</html>');
          return;
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(handler(parsed, req.headers)));
      };
      if (state.mode === 'slow') setTimeout(answer, 3000).unref();
      else answer();
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, state, port: server.address().port }));
  });
}

describe('the backend proxy with the centrifuge SDK', () => {
  let server;
  let backend;
  let dir;
  const clients = [];

  function client({ cookie, frames, ...opts } = {}) {
    const c = new Centrifuge(server.wsUrl('/connection/websocket'), {
      websocket: cookieSocket(cookie, frames),
      minReconnectDelay: 50,
      maxReconnectDelay: 200,
      ...opts,
    });
    clients.push(c);
    return c;
  }

  async function connected(opts) {
    const c = client(opts);
    const p = once(c, 'connected');
    c.connect();
    return { c, ctx: await p };
  }

  before(async () => {
    backend = await startBackend();
    const url = (kind) => `http://127.0.0.1:${backend.port}/proxy/${kind}`;
    dir = mkdtempSync(path.join(tmpdir(), 'sb-proxy-'));
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(
      file,
      `
token_hmac_secret = "${SECRET}"
[proxy]
http_headers = ["Cookie"]
[proxy.connect]
endpoint = "${url('connect')}"
timeout = "1s"
[proxy.rpc]
endpoint = "${url('rpc')}"
timeout = "500ms"
[proxy.subscribe]
endpoint = "${url('subscribe')}"
timeout = "1s"
[proxy.publish]
endpoint = "${url('publish')}"
timeout = "1s"
[proxy.sub_refresh]
endpoint = "${url('sub_refresh')}"
timeout = "1s"
[channel.default]
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true
[channel.namespaces.news]
proxy_subscribe = true
proxy_publish = true
proxy_sub_refresh = true
[channel.namespaces.feed]
history_size = 10
history_ttl = 60
allow_history_for_subscriber = true
proxy_subscribe = true
proxy_publish = true
`,
    );
    server = await startServer(['--config', file]);
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    const { code } = await server.stop();
    assert.equal(code, 0, server.stderr());
    backend.server.closeAllConnections();
    backend.server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('connects with a session cookie and no token: the backend names the user', async () => {
    const { c, ctx } = await connected({ cookie: 'session=sess-alice', data: { theme: 'dark' } });
    assert.deepEqual(ctx.data, { hello: 'alice', sdk: { theme: 'dark' } });
    const seen = backend.state.last.connect;
    assert.equal(seen.headers.cookie, 'session=sess-alice');
    assert.equal(seen.body.protocol, 'json');
    assert.equal(seen.body.client_protocol, 'centrifugo-json');
    const who = await c.rpc('whoami', {});
    assert.deepEqual(who.data, { user: 'alice' });
  });

  it('refuses a connection without the cookie with the backend disconnect code', async () => {
    const c = client();
    const down = once(c, 'disconnected');
    c.connect();
    const ctx = await down;
    assert.equal(ctx.code, 4501);
    assert.equal(ctx.reason, 'no session');
  });

  it('does not call the backend for a connection with a valid token', async () => {
    const before = backend.state.calls.connect;
    const token = execFileSync(binaryPath(), ['token', '--secret', SECRET, '--user', 'carol'], { encoding: 'utf8' }).trim();
    const { c } = await connected({ token });
    assert.equal(backend.state.calls.connect, before);
    const who = await c.rpc('whoami', {});
    assert.deepEqual(who.data, { user: 'carol' });
  });

  it('answers rpc from the backend: result and error', async () => {
    const { c } = await connected({ cookie: 'session=sess-bob' });
    assert.deepEqual((await c.rpc('sum', { a: 2, b: 40 })).data, { sum: 42 });
    await assert.rejects(c.rpc('nope', {}), (e) => e.code === 1404 && e.message === 'no method nope');
  });

  it('subscribe proxy allows, refuses and adds data', async () => {
    const { c } = await connected({ cookie: 'session=sess-alice' });
    const open = c.newSubscription('news:open');
    const ok = once(open, 'subscribed');
    open.subscribe();
    await ok;
    const welcome = c.newSubscription('news:welcome');
    const w = once(welcome, 'subscribed');
    welcome.subscribe();
    assert.deepEqual((await w).data, { welcome: 'alice' });
    const secret = c.newSubscription('news:secret');
    const refused = once(secret, 'unsubscribed');
    secret.subscribe();
    const ctx = await refused;
    assert.equal(ctx.code, 1403);
    assert.equal(backend.state.last.subscribe.body.user, 'alice');
  });

  it('publish proxy accepts, rejects and rewrites; nothing refused goes out', async () => {
    const reader = await connected({ cookie: 'session=sess-bob' });
    const sub = reader.c.newSubscription('news:chat');
    const got = [];
    sub.on('publication', (ctx) => got.push(ctx.data));
    const ok = once(sub, 'subscribed');
    sub.subscribe();
    await ok;
    const { c } = await connected({ cookie: 'session=sess-alice' });
    await c.publish('news:chat', { text: 'hello' });
    await assert.rejects(c.publish('news:chat', { text: 'a banned word' }), (e) => e.code === 1400);
    await c.publish('news:chat', { text: 'shout it' });
    await withTimeout(
      new Promise((resolve) => {
        const t = setInterval(() => got.length >= 2 && (clearInterval(t), resolve()), 20);
      }),
      'two publications',
    );
    // A marker after the refused one: had it gone out, it would be in between.
    assert.deepEqual(got, [{ text: 'hello' }, { text: 'SHOUT IT', by: 'alice' }]);
  });

  async function subscribed(c, channel) {
    const sub = c.newSubscription(channel);
    const ok = once(sub, 'subscribed', () => true, `subscribed to ${channel}`);
    sub.subscribe();
    return { sub, ctx: await ok };
  }

  it('publish proxy skip_history: the publication is delivered but not kept in history', async () => {
    const reader = await connected({ cookie: 'session=sess-bob' });
    const { sub } = await subscribed(reader.c, 'feed:chat');
    const got = [];
    sub.on('publication', (ctx) => got.push(ctx));
    const { c } = await connected({ cookie: 'session=sess-alice' });
    await c.publish('feed:chat', { text: 'kept' });
    await c.publish('feed:chat', { text: 'ephemeral typing' });
    await c.publish('feed:chat', { text: 'kept too' });
    await withTimeout(
      new Promise((resolve) => {
        const t = setInterval(() => got.length >= 3 && (clearInterval(t), resolve()), 20);
      }),
      'three publications',
    );
    assert.deepEqual(got.map((p) => p.data.text), ['kept', 'ephemeral typing', 'kept too']);
    const history = await sub.history({ limit: 10 });
    assert.deepEqual(history.publications.map((p) => p.data.text), ['kept', 'kept too']);
    // The stream goes on without a gap: the skipped publication took no offset.
    assert.deepEqual(history.publications.map((p) => p.offset), [1, 2]);
    assert.equal(history.offset, 2);
  });

  it('subscribe proxy override: force_recovery and force_positioning for that subscription only', async () => {
    const { c } = await connected({ cookie: 'session=sess-alice' });
    const plain = await subscribed(c, 'feed:plain');
    assert.equal(plain.ctx.recoverable, false);
    assert.equal(plain.ctx.positioned, false);
    const recover = await subscribed(c, 'feed:recover');
    assert.equal(recover.ctx.recoverable, true);
    assert.equal(recover.ctx.positioned, true);
    const position = await subscribed(c, 'feed:position');
    assert.equal(position.ctx.recoverable, false);
    assert.equal(position.ctx.positioned, true);
  });

  it('connect proxy meta: sent back with later proxy requests, never to the client', async () => {
    const frames = [];
    const { c, ctx } = await connected({ cookie: 'session=sess-dave', frames });
    assert.deepEqual(ctx.data, { hello: 'dave', sdk: null });
    assert.deepEqual((await c.rpc('whoami', {})).data, { user: 'dave' });
    assert.deepEqual(backend.state.last.rpc.body.meta, DAVE_META);
    await subscribed(c, 'news:open');
    assert.deepEqual(backend.state.last.subscribe.body.meta, DAVE_META);
    await c.publish('news:open', { text: 'hi' });
    assert.deepEqual(backend.state.last.publish.body.meta, DAVE_META);
    assert.ok(frames.length > 0);
    for (const f of frames) assert.ok(!f.includes('acme-secret-tenant'), `meta leaked to the client: ${f}`);
    // Another connection's calls carry no meta of dave's (and none of their own).
    const other = await connected({ cookie: 'session=sess-bob' });
    await other.c.rpc('whoami', {});
    assert.equal(backend.state.last.rpc.body.user, 'bob');
    assert.equal(backend.state.last.rpc.body.meta, undefined);
  });

  /** The upgrade's answer: the WebSocket, or the HTTP status of the refusal and its body. */
  function rawUpgrade(pathname, cookie) {
    return withTimeout(
      new Promise((resolve) => {
        const ws = new WebSocket(server.wsUrl(pathname), cookie ? { headers: { Cookie: cookie } } : {});
        ws.on('open', () => resolve({ ws }));
        ws.on('unexpected-response', (_req, res) => {
          let body = '';
          res.on('data', (d) => (body += d));
          res.on('end', () => resolve({ status: res.statusCode, body }));
        });
        ws.on('error', () => {});
      }),
      `upgrade of ${pathname}`,
    );
  }

  it('sub_refresh proxy: an expiring subscription is renewed by the backend, and ends when it says expired', async () => {
    const { c } = await connected({ cookie: 'session=sess-alice' });
    const sub = c.newSubscription('news:short');
    const ok = once(sub, 'subscribed');
    sub.subscribe();
    await ok;
    const before = backend.state.calls.sub_refresh;
    await withTimeout(
      new Promise((resolve) => {
        const t = setInterval(() => backend.state.calls.sub_refresh >= before + 1 && (clearInterval(t), resolve()), 50);
      }),
      'a sub_refresh call',
    );
    const seen = backend.state.last.sub_refresh.body;
    assert.equal(seen.channel, 'news:short');
    assert.equal(seen.user, 'alice');
    // Renewed: still subscribed, publications still arrive.
    assert.equal(sub.state, 'subscribed');
    const pub = once(sub, 'publication');
    await c.publish('news:short', { text: 'still here' });
    assert.deepEqual((await pub).data, { text: 'still here' });
    // Expired by the backend: unsubscribe push 2501 (the SDK then subscribes again).
    backend.state.subExpired = true;
    try {
      const ctx = await once(sub, 'subscribing', () => true, 'subscribing after expiry');
      assert.equal(ctx.code, 2501);
    } finally {
      backend.state.subExpired = false;
    }
    sub.unsubscribe();
  });

  it('raw rooms: the connect proxy accepts a cookie, refuses without (401) or blocked (403)', async () => {
    const a = await rawUpgrade('/proxyroom?x=1', 'session=sess-alice');
    assert.ok(a.ws, 'accepted with the cookie');
    const seen = backend.state.last.connect.body;
    assert.equal(seen.client_protocol, 'raw');
    assert.deepEqual(seen.meta, { path: '/proxyroom', query: 'x=1' });
    const b = await rawUpgrade('/proxyroom', 'session=sess-bob');
    const got = new Promise((resolve) => b.ws.once('message', (m) => resolve(String(m))));
    a.ws.send('hi from alice');
    assert.equal(await withTimeout(got, 'raw message'), 'hi from alice');
    a.ws.close();
    b.ws.close();
    const none = await rawUpgrade('/proxyroom');
    assert.equal(none.status, 401);
    assert.equal(none.body, 'no session');
    const blocked = await rawUpgrade('/proxyroom', 'session=blocked');
    assert.equal(blocked.status, 403);
    assert.equal(blocked.body, 'account blocked');
  });

  /** A Socket.IO client with `cookie` and `auth`; resolves once connected or refused. */
  function sio(cookie, auth) {
    const s = io(server.httpUrl, {
      forceNew: true,
      reconnection: false,
      transports: ['websocket'],
      auth,
      extraHeaders: cookie ? { Cookie: cookie } : {},
    });
    return withTimeout(
      new Promise((resolve) => {
        s.on('connect', () => resolve({ s }));
        s.on('connect_error', (err) => resolve({ s, err }));
      }),
      'socket.io connect',
    );
  }

  it('socket.io: CONNECT goes to the connect proxy with auth and cookie; refusal is connect_error', async () => {
    const { s, err } = await sio('session=sess-alice', { room: 'kitchen' });
    assert.equal(err, undefined);
    const seen = backend.state.last.connect;
    assert.equal(seen.body.client_protocol, 'socket.io');
    assert.deepEqual(seen.body.data, { room: 'kitchen' });
    assert.equal(seen.headers.cookie, 'session=sess-alice');
    // An event with an ack goes to the rpc proxy: method = event name, data = arguments.
    assert.deepEqual(await s.timeout(5000).emitWithAck('sum', 2, 40), { sum: 42 });
    assert.deepEqual(backend.state.last.rpc.body.data, [2, 40]);
    assert.equal(backend.state.last.rpc.body.user, 'alice');
    assert.deepEqual(await s.timeout(5000).emitWithAck('nope', 1), { error: 'no method nope', code: 1404 });
    s.disconnect();
    const refused = await sio(undefined, {});
    assert.equal(refused.err?.message, 'no session');
    refused.s.close();
    const blocked = await sio('session=blocked', {});
    assert.equal(blocked.err?.message, 'account blocked');
    blocked.s.close();
  });

  it('a slow backend: rpc error 100 temporary within the timeout, the connection carries on meanwhile', async () => {
    const { c } = await connected({ cookie: 'session=sess-alice' });
    const sub = c.newSubscription('plain');
    const ok = once(sub, 'subscribed');
    sub.subscribe();
    await ok;
    const other = await connected({ cookie: 'session=sess-bob' });
    backend.state.mode = 'slow';
    try {
      const started = Date.now();
      const pending = c.rpc('sum', { a: 1, b: 1 }).then(
        () => null,
        (e) => ({ e, at: Date.now() }),
      );
      // While the call waits, publications still reach the client.
      const pub = once(sub, 'publication');
      const oth = other.c.newSubscription('plain');
      const oo = once(oth, 'subscribed');
      oth.subscribe();
      await oo;
      await oth.publish({ n: 1 });
      const p = await pub;
      assert.deepEqual(p.data, { n: 1 });
      const r = await pending;
      assert.ok(r, 'the rpc must fail');
      assert.equal(r.e.code, 100);
      assert.equal(r.e.temporary, true);
      assert.ok(r.at - started < 2000, `answered after ${r.at - started} ms`);
    } finally {
      backend.state.mode = 'ok';
    }
  });

  it('garbage from the backend: error 100 temporary, nothing published', async () => {
    const { c } = await connected({ cookie: 'session=sess-alice' });
    backend.state.mode = 'garbage';
    try {
      await assert.rejects(c.rpc('sum', { a: 1, b: 2 }), (e) => e.code === 100 && e.temporary === true);
      await assert.rejects(c.publish('news:chat', { text: 'x' }), (e) => e.code === 100 && e.temporary === true);
    } finally {
      backend.state.mode = 'ok';
    }
    assert.deepEqual((await c.rpc('sum', { a: 1, b: 2 })).data, { sum: 3 });
  });

  it('a stopped backend: temporary errors, connected clients carry on', async () => {
    const { c } = await connected({ cookie: 'session=sess-alice' });
    const sub = c.newSubscription('plain2');
    const ok = once(sub, 'subscribed');
    sub.subscribe();
    await ok;
    backend.server.closeAllConnections();
    await new Promise((resolve) => backend.server.close(resolve));
    await assert.rejects(c.rpc('sum', { a: 1, b: 2 }), (e) => e.code === 100 && e.temporary === true);
    // A new client without a token gets a temporary connect error (the SDK retries).
    const fresh = client({ cookie: 'session=sess-bob' });
    const err = once(fresh, 'error', (ctx) => ctx.type === 'connect');
    fresh.connect();
    const e = await err;
    assert.equal(e.error.code, 100);
    assert.equal(e.error.temporary, true);
    fresh.disconnect();
    // A raw upgrade is answered 503 before the 101.
    const raw = await rawUpgrade('/proxyroom', 'session=sess-alice');
    assert.equal(raw.status, 503);
    // The connected client still publishes and receives (no proxy on this namespace).
    const pub = once(sub, 'publication');
    await sub.publish({ still: 'here' });
    assert.deepEqual((await pub).data, { still: 'here' });
    // Counted in /metrics.
    const metrics = await (await fetch(`${server.httpUrl}/metrics`)).text();
    assert.match(metrics, /switchboard_proxy_calls_total\{kind="rpc",result="unreachable"\} [1-9]/);
    assert.match(metrics, /switchboard_proxy_calls_total\{kind="rpc",result="timeout"\} [1-9]/);
    assert.match(metrics, /switchboard_proxy_call_duration_seconds_count\{kind="connect"\} [1-9]/);
  });
});

describe('the publish proxy for Socket.IO broadcasts and raw rooms', () => {
  let server;
  let backend;
  let dir;

  before(async () => {
    backend = await startBackend();
    dir = mkdtempSync(path.join(tmpdir(), 'sb-proxy-pub-'));
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(
      file,
      `
allow_anonymous = true
[proxy]
http_headers = ["Cookie"]
[proxy.publish]
endpoint = "http://127.0.0.1:${backend.port}/proxy/publish"
timeout = "500ms"
[channel.default]
proxy_publish = true
`,
    );
    server = await startServer(['--config', file]);
  });

  after(async () => {
    const { code } = await server.stop();
    assert.equal(code, 0, server.stderr());
    backend.server.closeAllConnections();
    backend.server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function sioClient() {
    const s = io(server.httpUrl, { forceNew: true, reconnection: false, transports: ['websocket'] });
    return withTimeout(
      new Promise((resolve, reject) => {
        s.on('connect', () => resolve(s));
        s.on('connect_error', reject);
      }),
      'socket.io connect',
    );
  }

  /** The next `event` on `s`. */
  function next(s, event) {
    return withTimeout(new Promise((resolve) => s.once(event, (...args) => resolve(args))), event);
  }

  function raw(pathname) {
    return withTimeout(
      new Promise((resolve, reject) => {
        const ws = new WebSocket(server.wsUrl(pathname), { headers: { Cookie: 'session=sess-alice' } });
        ws.on('open', () => resolve(ws));
        ws.on('error', reject);
      }),
      `raw ${pathname}`,
    );
  }

  function closed(ws) {
    return withTimeout(new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: String(reason) }))), 'close');
  }

  it('socket.io: broadcasts pass the publish proxy; rejected ones never go out, rewritten ones go out rewritten', async () => {
    const a = await sioClient();
    const b = await sioClient();
    try {
      const before = backend.state.calls.publish;
      let got = next(b, 'chat');
      a.emit('chat', { text: 'hello' });
      assert.deepEqual(await got, [{ text: 'hello' }]);
      assert.equal(backend.state.calls.publish, before + 1);
      const seen = backend.state.last.publish;
      assert.equal(seen.body.client_protocol, 'socket.io');
      assert.deepEqual(seen.body.data, [{ text: 'hello' }]);
      assert.equal(seen.body.method, 'chat');
      assert.equal(seen.body.channel, 'socket.io/');
      // Rejected: the ack carries the backend's error; b sees the next accepted event only.
      got = next(b, 'chat');
      assert.deepEqual(await a.timeout(5000).emitWithAck('chat', { text: 'a banned word' }), {
        error: 'banned word',
        code: 1400,
      });
      a.emit('chat', { text: 'no ack, banned too' });
      a.emit('chat', { text: 'shout it' });
      // Rewritten: the backend's data (not an array) becomes the only argument.
      assert.deepEqual(await got, [{ text: 'SHOUT IT' }]);
      // An accepted broadcast with an ack is acknowledged without arguments.
      got = next(b, 'chat');
      assert.deepEqual(await a.timeout(5000).emitWithAck('chat', { text: 'fine' }), undefined);
      assert.deepEqual(await got, [{ text: 'fine' }]);
    } finally {
      a.disconnect();
      b.disconnect();
    }
  });

  it('raw rooms: messages pass the publish proxy; a rejected one closes the sender with 1008 and is not delivered', async () => {
    const a = await raw('/checked');
    const b = await raw('/checked');
    try {
      const messages = [];
      b.on('message', (m) => messages.push(String(m)));
      const firstTwo = withTimeout(
        new Promise((resolve) => {
          const t = setInterval(() => messages.length >= 2 && (clearInterval(t), resolve()), 10);
        }),
        'two raw messages',
      );
      a.send('hello room');
      a.send('shout this');
      await firstTwo;
      assert.equal(messages[0], 'hello room');
      assert.deepEqual(JSON.parse(messages[1]), { text: 'SHOUT THIS' });
      assert.equal(backend.state.last.publish.body.channel, 'checked');
      assert.equal(backend.state.last.publish.headers.cookie, 'session=sess-alice');
      const aClosed = closed(a);
      a.send('a banned word');
      assert.deepEqual(await aClosed, { code: 1008, reason: 'banned word' });
      // b sends afterwards and gets its own message back (echo): the refused one is not
      // before it.
      b.send('after');
      await withTimeout(
        new Promise((resolve) => {
          const t = setInterval(() => messages.length >= 3 && (clearInterval(t), resolve()), 10);
        }),
        'echo',
      );
      assert.deepEqual(messages, ['hello room', messages[1], 'after']);
    } finally {
      a.close();
      b.close();
    }
  });

  it('a slow backend: raw closes 1013 within the timeout, socket.io acks a temporary error; nothing goes out', async () => {
    const a = await raw('/slow');
    const b = await raw('/slow');
    const s1 = await sioClient();
    const s2 = await sioClient();
    const leaked = [];
    b.on('message', (m) => leaked.push(String(m)));
    s2.on('chat', (x) => leaked.push(x));
    backend.state.mode = 'slow';
    try {
      const started = Date.now();
      const aClosed = closed(a);
      a.send('while slow');
      const c = await aClosed;
      assert.equal(c.code, 1013);
      assert.ok(Date.now() - started < 2000, `closed after ${Date.now() - started} ms`);
      const ack = await s1.timeout(5000).emitWithAck('chat', { text: 'while slow' });
      assert.equal(ack.temporary, true);
      assert.match(ack.error, /timed out/);
    } finally {
      backend.state.mode = 'ok';
    }
    // Past the backend's late answers: nothing was delivered.
    await new Promise((r) => setTimeout(r, 3200));
    assert.deepEqual(leaked, []);
    const metrics = await (await fetch(`${server.httpUrl}/metrics`)).text();
    assert.match(metrics, /switchboard_proxy_calls_total\{kind="publish",result="timeout"\} [1-9]/);
    assert.match(metrics, /switchboard_proxy_calls_total\{kind="publish",result="rejected"\} [1-9]/);
    b.close();
    s1.disconnect();
    s2.disconnect();
  });
});
