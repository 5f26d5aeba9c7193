// Centrifugo's non-WebSocket transports against the real binary, with clients that
// know nothing of Switchboard: Node's own `fetch` on the unidirectional HTTP stream and
// SSE endpoints (read as the documented formats), and the unmodified `centrifuge` SDK
// falling back to its `http_stream` and `sse` transports (commands through
// `/emulation`; SSE through the npm `eventsource` package), chatting with a WebSocket
// SDK client. Publications come from the HTTP API and from a raw `ws` room client.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test centrifugo_streams.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Centrifuge } from 'centrifuge';
import { EventSource } from 'eventsource';
import { WebSocket, startServer, opened, withTimeout, binaryPath } from './lib/harness.mjs';
import { lineStream, eventStream } from './lib/streams.mjs';
import { once, mintToken } from './lib/centrifuge_helpers.mjs';

const SECRET = 'streams-test-secret';
const mint = (args) => mintToken(SECRET, args);
const KEY = 'streams-test-key';

const CONFIG = `
token_hmac_secret = "${SECRET}"
allow_anonymous = true

[channel.default]
history_size = 100
history_ttl = 300
force_recovery = true
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true
allow_history_for_subscriber = true
`;

describe('Centrifugo HTTP stream transports', () => {
  let server;
  let dir;
  const cleanups = [];

  async function api(method, body) {
    const res = await fetch(`${server.httpUrl}/api/${method}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': KEY },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 200, `${method}: ${await res.clone().text()}`);
    return res.json();
  }

  /** A raw-room client of `/room`, which is the Centrifugo channel `room`. */
  async function rawClient(room) {
    const ws = new WebSocket(`${server.wsUrl(`/${room}`)}`);
    await opened(ws);
    cleanups.push(() => ws.close());
    return ws;
  }

  function sdk(transports, opts = {}) {
    const c = new Centrifuge(transports, {
      emulationEndpoint: `${server.httpUrl}/emulation`,
      eventsource: EventSource,
      websocket: WebSocket,
      minReconnectDelay: 100,
      maxReconnectDelay: 500,
      ...opts,
    });
    cleanups.push(() => c.disconnect());
    return c;
  }

  const pubOf = (channel, pred = () => true) => (m) => m && m.channel === channel && m.pub && pred(m.pub);

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'sb-streams-'));
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(file, CONFIG);
    server = await startServer(['--config', file, '--api-key', KEY, '--ping-interval', '2', '--ping-timeout', '2']);
  });

  after(async () => {
    for (const f of cleanups) f();
    const { code } = await server.stop();
    assert.equal(code, 0, 'clean exit on SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  });

  it('uni_http_stream: the token channels, API and raw-room publications, null pings', async () => {
    const token = mint(['--user', 'ada', '--subscribe', 'uni-news']);
    const s = await lineStream(`${server.httpUrl}/connection/uni_http_stream`, { token });
    cleanups.push(s.abort);
    assert.equal(s.status, 200);
    assert.match(s.response.headers.get('content-type'), /application\/json/);
    const connect = await s.feed.wait((m) => m && m.connect, 'connect push');
    assert.ok(connect.connect.client, 'client id');
    assert.ok('uni-news' in connect.connect.subs, 'server-side subscription reported');

    await api('publish', { channel: 'uni-news', data: { from: 'api' } });
    const fromApi = await s.feed.wait(pubOf('uni-news', (p) => p.data?.from === 'api'), 'API publication');
    assert.ok(fromApi.pub.offset >= 1);

    const ws = await rawClient('uni-news');
    ws.send(JSON.stringify({ from: 'ws' }));
    await s.feed.wait(pubOf('uni-news', (p) => p.data?.from === 'ws'), 'raw-room publication');

    // The server pings every 2 s; a unidirectional HTTP stream's ping is `null`.
    await s.feed.wait((m) => m === null, 'a null ping');
    // Nothing but pushes and pings on the stream: no replies with ids.
    assert.ok(s.feed.items.every((m) => m === null || !('id' in m)));
    s.abort();
  });

  it('uni_http_stream: a reconnect with the last position recovers what was missed', async () => {
    const token = mint(['--user', 'bo', '--subscribe', 'uni-rec']);
    const url = `${server.httpUrl}/connection/uni_http_stream`;
    const first = await lineStream(url, { token });
    const connect = await first.feed.wait((m) => m && m.connect, 'connect push');
    const epoch = connect.connect.subs['uni-rec'].epoch;
    await api('publish', { channel: 'uni-rec', data: { n: 1 } });
    const seen = await first.feed.wait(pubOf('uni-rec', (p) => p.data?.n === 1), 'n=1');
    first.abort();
    await first.feed.closed();

    for (const n of [2, 3]) await api('publish', { channel: 'uni-rec', data: { n } });
    const again = await lineStream(url, {
      token,
      subs: { 'uni-rec': { recover: true, offset: seen.pub.offset, epoch } },
    });
    cleanups.push(again.abort);
    const back = await again.feed.wait((m) => m && m.connect, 'connect push after the cut');
    const sub = back.connect.subs['uni-rec'];
    assert.equal(sub.recovered, true);
    assert.deepEqual((sub.publications || []).map((p) => p.data.n), [2, 3]);
    await api('publish', { channel: 'uni-rec', data: { n: 4 } });
    await again.feed.wait(pubOf('uni-rec', (p) => p.data?.n === 4), 'live after recovery');
    again.abort();
  });

  it('uni_sse: data events with position ids; Last-Event-ID recovers after a cut', async () => {
    const token = mint(['--user', 'cy', '--subscribe', 'sse-news']);
    const url = `${server.httpUrl}/connection/uni_sse?cf_connect=${encodeURIComponent(JSON.stringify({ token }))}`;
    const s = await eventStream(url);
    assert.equal(s.status, 200);
    assert.match(s.response.headers.get('content-type'), /text\/event-stream/);
    await s.feed.wait((e) => e.data && e.data.connect, 'connect event');
    await api('publish', { channel: 'sse-news', data: { n: 1 } });
    const ev = await s.feed.wait((e) => pubOf('sse-news', (p) => p.data?.n === 1)(e.data), 'n=1 event');
    const ids = JSON.parse(ev.id);
    assert.equal(ids['sse-news'].offset, ev.data.pub.offset, 'the event id holds the position');
    s.abort();
    await s.feed.closed();

    for (const n of [2, 3]) await api('publish', { channel: 'sse-news', data: { n } });
    const again = await eventStream(url, { 'last-event-id': ev.id });
    cleanups.push(again.abort);
    const back = await again.feed.wait((e) => e.data && e.data.connect, 'connect after the cut');
    const sub = back.data.connect.subs['sse-news'];
    assert.equal(sub.recovered, true);
    assert.deepEqual(sub.publications.map((p) => p.data.n), [2, 3]);
    again.abort();
  });

  it('uni_http_stream: an API disconnect ends the stream with a disconnect push', async () => {
    const token = mint(['--user', 'dee', '--subscribe', 'uni-kick']);
    const s = await lineStream(`${server.httpUrl}/connection/uni_http_stream`, { token });
    await s.feed.wait((m) => m && m.connect, 'connect push');
    await api('disconnect', { user: 'dee' });
    const d = await s.feed.wait((m) => m && m.disconnect, 'disconnect push');
    assert.ok(d.disconnect.code >= 3000);
    await s.feed.closed();
  });

  it('uni_websocket: connect as the first message or cf_connect; pushes, pings answered by the WebSocket pong', async () => {
    const token = mint(['--user', 'fay', '--subscribe', 'uniws']);
    const collect = (ws) => {
      const got = [];
      ws.on('message', (data) => {
        for (const line of data.toString().split('\n')) if (line) got.push(JSON.parse(line));
      });
      return got;
    };
    const waitFor = (got, pred, what) => withTimeout(
      (async () => { for (;;) { const m = got.find(pred); if (m) return m; await new Promise((r) => setTimeout(r, 20)); } })(),
      what,
    );

    const first = new WebSocket(server.wsUrl('/connection/uni_websocket'));
    cleanups.push(() => first.close());
    const firstGot = collect(first);
    await opened(first);
    first.send(JSON.stringify({ token }));
    const c = await waitFor(firstGot, (m) => m.connect, 'connect push');
    assert.ok('uniws' in c.connect.subs);

    const viaQuery = new WebSocket(server.wsUrl(`/connection/uni_websocket?cf_connect=${encodeURIComponent(JSON.stringify({ token }))}`));
    cleanups.push(() => viaQuery.close());
    const queryGot = collect(viaQuery);
    await waitFor(queryGot, (m) => m.connect, 'connect push (cf_connect)');

    await api('publish', { channel: 'uniws', data: { n: 1 } });
    for (const got of [firstGot, queryGot]) {
      await waitFor(got, pubOf('uniws', (p) => p.data?.n === 1), 'publication');
    }
    // Ping interval and timeout are 2 s: alive after 5 s only because `ws` answers the
    // server's WebSocket pings (the client itself sends nothing).
    await new Promise((r) => setTimeout(r, 5000));
    assert.ok(firstGot.some((m) => Object.keys(m).length === 0), 'the {} ping arrived');
    await api('publish', { channel: 'uniws', data: { n: 2 } });
    await waitFor(firstGot, pubOf('uniws', (p) => p.data?.n === 2), 'publication after 5 s');
    assert.equal(first.readyState, WebSocket.OPEN);

    // A kick: the disconnect push, then the close frame with the same code.
    const closed = new Promise((resolve) => first.once('close', (code) => resolve(code)));
    await api('disconnect', { user: 'fay' });
    const code = await withTimeout(closed, 'close after the kick');
    const d = await waitFor(firstGot, (m) => m.disconnect, 'disconnect push');
    assert.equal(d.disconnect.code, code);

    // A first message that is not a connect request: 3501 bad request.
    const bad = new WebSocket(server.wsUrl('/connection/uni_websocket'));
    await opened(bad);
    const badClosed = new Promise((resolve) => bad.once('close', (code) => resolve(code)));
    bad.send('not json');
    assert.equal(await withTimeout(badClosed, 'bad request close'), 3501);
    viaQuery.close();
  });

  it('bad input gets its documented status and disturbs nothing else', async () => {
    // A canary: a unidirectional stream that must keep receiving throughout.
    const token = mint(['--user', 'canary', '--subscribe', 'canary']);
    const canary = await lineStream(`${server.httpUrl}/connection/uni_http_stream`, { token });
    cleanups.push(canary.abort);
    await canary.feed.wait((m) => m && m.connect, 'canary connected');
    const refusals = async () => {
      const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
      const m = /handshake_refusals_total\{reason="bad_handshake"\} (\d+)/.exec(text);
      assert.ok(m, 'the refusal counter is exported');
      return Number(m[1]);
    };
    const before = await refusals();
    const post = (p, body, headers = {}) => fetch(`${server.httpUrl}${p}`, {
      method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body,
    });

    // /emulation: malformed JSON, no data, an unknown session, a body over
    // max_message_size, a wrong method.
    assert.equal((await post('/emulation', '{"session":')).status, 400);
    assert.equal((await post('/emulation', '[1,2]')).status, 400);
    assert.equal((await post('/emulation', JSON.stringify({ session: 'x', node: 'y' }))).status, 400);
    const unknown = await post('/emulation', JSON.stringify({ session: 'no-such-session', node: '', data: '{"id":2,"ping":{}}' }));
    assert.equal(unknown.status, 204);
    const huge = JSON.stringify({ session: 'x', node: '', data: 'x'.repeat(2 * 1024 * 1024) });
    assert.equal((await post('/emulation', huge)).status, 413);
    assert.equal((await fetch(`${server.httpUrl}/emulation`)).status, 405);

    // Connect requests: not JSON, a bidirectional stream without a connect command.
    const badSse = await fetch(`${server.httpUrl}/connection/uni_sse?cf_connect=${encodeURIComponent('{"token":')}`);
    assert.equal(badSse.status, 400);
    assert.equal((await post('/connection/uni_http_stream', 'not json')).status, 400);
    assert.equal((await post('/connection/http_stream', '{"id":1,"subscribe":{"channel":"x"}}')).status, 400);
    assert.equal((await fetch(`${server.httpUrl}/connection/sse`)).status, 400);
    assert.equal((await fetch(`${server.httpUrl}/connection/uni_http_stream`)).status, 405);
    const badUpgrade = new WebSocket(server.wsUrl(`/connection/uni_websocket?cf_connect=${encodeURIComponent('{')}`));
    const refused = await withTimeout(new Promise((resolve) => {
      badUpgrade.once('unexpected-response', (_req, res) => resolve(res.statusCode));
      badUpgrade.once('error', () => {});
    }), 'uni_websocket refusal');
    assert.equal(refused, 400);
    // An invalid token: the stream opens and ends with the documented disconnect (3500).
    const bad = await lineStream(`${server.httpUrl}/connection/uni_http_stream`, { token: 'garbage' });
    const d = await bad.feed.wait((m) => m && m.disconnect, 'disconnect for a bad token');
    assert.equal(d.disconnect.code, 3500);
    await bad.feed.closed();

    // Each refusal (not the 204, the 405s or the bad token) is counted in /metrics.
    assert.equal((await refusals()) - before, 9);
    // The canary still receives.
    await api('publish', { channel: 'canary', data: { alive: true } });
    await canary.feed.wait(pubOf('canary', (p) => p.data?.alive), 'canary publication after the garbage');
    assert.equal(canary.feed.ended, false);
    canary.abort();
  });

  for (const transport of ['http_stream', 'sse']) {
    it(`centrifuge-js over ${transport} chats with a WebSocket client and recovers after a cut`, async () => {
      const channel = `chat-${transport}`;
      const fallback = sdk([{ transport, endpoint: `${server.httpUrl}/connection/${transport}` }]);
      const connected = once(fallback, 'connected', () => true, `${transport} connected`);
      fallback.connect();
      const ctx = await connected;
      assert.equal(ctx.transport, transport);

      const sub = fallback.newSubscription(channel);
      const got = [];
      sub.on('publication', (p) => got.push(p));
      const subscribed = once(sub, 'subscribed', () => true, 'subscribed');
      sub.subscribe();
      await subscribed;

      const wsClient = sdk(server.wsUrl('/connection/websocket'));
      wsClient.connect();
      const wsSub = wsClient.newSubscription(channel);
      const wsGot = [];
      wsSub.on('publication', (p) => wsGot.push(p));
      const wsSubscribed = once(wsSub, 'subscribed', () => true, 'ws subscribed');
      wsSub.subscribe();
      await wsSubscribed;

      // Emulated client → WebSocket client, through /emulation.
      await sub.publish({ from: transport });
      await withTimeout(
        (async () => { while (!wsGot.some((p) => p.data.from === transport)) await new Promise((r) => setTimeout(r, 20)); })(),
        'the WebSocket client receiving the emulated client',
      );
      // WebSocket client → emulated client, over the stream.
      await wsSub.publish({ from: 'ws' });
      await withTimeout(
        (async () => { while (!got.some((p) => p.data.from === 'ws')) await new Promise((r) => setTimeout(r, 20)); })(),
        'the emulated client receiving the WebSocket client',
      );

      // A cut: the client goes away, misses two publications, comes back and recovers.
      const down = once(fallback, 'disconnected');
      fallback.disconnect();
      await down;
      for (const n of [1, 2]) await wsSub.publish({ n });
      const back = once(sub, 'subscribed', () => true, 'resubscribed');
      fallback.connect();
      const again = await back;
      assert.equal(again.recovered, true);
      await withTimeout(
        (async () => { while (got.filter((p) => p.data.n).length < 2) await new Promise((r) => setTimeout(r, 20)); })(),
        'the recovered publications',
      );
      assert.deepEqual(got.filter((p) => p.data.n).map((p) => p.data.n), [1, 2]);
      // Still answering pings through /emulation: alive after several ping intervals.
      await new Promise((r) => setTimeout(r, 5000));
      assert.equal(fallback.state, 'connected');
      await wsSub.publish({ late: true });
      await withTimeout(
        (async () => { while (!got.some((p) => p.data.late)) await new Promise((r) => setTimeout(r, 20)); })(),
        'a publication after several pings',
      );
      fallback.disconnect();
      wsClient.disconnect();
    });
  }
});

describe('Centrifugo unidirectional streams: connect proxy, slow consumer, shutdown', () => {
  let server;
  let dir;
  let backend;
  const cleanups = [];

  async function api(method, body) {
    const res = await fetch(`${server.httpUrl}/api/${method}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': KEY },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 200, `${method}: ${await res.clone().text()}`);
  }

  async function metric(re) {
    const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
    const m = re.exec(text);
    return m ? Number(m[1]) : 0;
  }

  before(async () => {
    // A backend answering connect calls in Centrifugo's documented proxy format: the user
    // from the session cookie, and the channels the connection gets.
    backend = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => (body += d));
      req.on('end', () => {
        const cookie = req.headers.cookie || '';
        const answer = cookie.includes('session=zed')
          ? { result: { user: 'zed', channels: ['proxied'] } }
          : { disconnect: { code: 4501, reason: 'who are you' } };
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
      });
    });
    await new Promise((resolve) => backend.listen(0, '127.0.0.1', resolve));
    dir = mkdtempSync(path.join(tmpdir(), 'sb-streams-proxy-'));
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(file, `${CONFIG}
[proxy]
http_headers = ["Cookie"]
[proxy.connect]
endpoint = "http://127.0.0.1:${backend.address().port}/connect"
timeout = "1s"
`);
    server = await startServer(['--config', file, '--api-key', KEY, '--ping-interval', '2', '--ping-timeout', '2']);
  });

  after(async () => {
    for (const f of cleanups) f();
    await server?.stop('SIGKILL');
    backend?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a connect without a token goes to the connect proxy, whose channels the stream receives', async () => {
    const s = await lineStream(`${server.httpUrl}/connection/uni_http_stream`, {}, { cookie: 'session=zed' });
    cleanups.push(s.abort);
    const c = await s.feed.wait((m) => m && m.connect, 'connect push');
    assert.ok('proxied' in c.connect.subs);
    await api('publish', { channel: 'proxied', data: { via: 'proxy' } });
    await s.feed.wait((m) => m && m.channel === 'proxied' && m.pub?.data?.via === 'proxy', 'publication');
    // The backend refusing: the stream carries its disconnect and ends.
    const refused = await lineStream(`${server.httpUrl}/connection/uni_http_stream`, {});
    const d = await refused.feed.wait((m) => m && m.disconnect, 'the backend\'s disconnect');
    assert.equal(d.disconnect.code, 4501);
    await refused.feed.closed();
    s.abort();
  });

  it('a client that stops reading is closed as a slow consumer; a reading one is not disturbed', async () => {
    const token = mint(['--user', 'slow', '--subscribe', 'firehose']);
    const canaryToken = mint(['--user', 'canary2', '--subscribe', 'firehose']);
    const canary = await lineStream(`${server.httpUrl}/connection/uni_http_stream`, { token: canaryToken });
    cleanups.push(canary.abort);
    await canary.feed.wait((m) => m && m.connect, 'canary connected');
    const re = /connections_closed_total\{protocol="centrifugo-json",reason="slow_consumer"\} (\d+)/;
    const before = await metric(re);

    // A raw HTTP client that sends its request and never reads the response.
    const body = JSON.stringify({ token });
    const sock = net.connect(server.port, '127.0.0.1');
    cleanups.push(() => sock.destroy());
    await new Promise((resolve) => sock.once('connect', resolve));
    sock.pause();
    sock.write(`POST /connection/uni_http_stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    await new Promise((r) => setTimeout(r, 300));

    const chunk = 'x'.repeat(60_000);
    const N = 300; // ≈ 18 MB: more than the socket buffers and the outbox hold
    for (let i = 0; i < N; i++) await api('publish', { channel: 'firehose', data: { i, chunk } });
    await withTimeout(
      (async () => { while ((await metric(re)) <= before) await new Promise((r) => setTimeout(r, 100)); })(),
      'the slow client closed as a slow consumer',
    );
    // The canary read everything, in order.
    const last = await canary.feed.wait((m) => m && m.pub?.data?.i === N - 1, 'the canary\'s last publication');
    assert.ok(last);
    const seen = canary.feed.items.filter((m) => m && m.pub).map((m) => m.pub.data.i);
    assert.deepEqual(seen, Array.from({ length: N }, (_, i) => i));
    canary.abort();
  });

  it('shutdown ends every stream with the 3001 disconnect push', async () => {
    const token = mint(['--user', 'last', '--subscribe', 'bye']);
    const s = await lineStream(`${server.httpUrl}/connection/uni_http_stream`, { token });
    await s.feed.wait((m) => m && m.connect, 'connect push');
    const sse = await eventStream(`${server.httpUrl}/connection/uni_sse?cf_connect=${encodeURIComponent(JSON.stringify({ token }))}`);
    await sse.feed.wait((e) => e.data.connect, 'sse connect');
    const stopped = server.stop();
    const d = await s.feed.wait((m) => m && m.disconnect, 'disconnect push at shutdown');
    assert.equal(d.disconnect.code, 3001);
    const e = await sse.feed.wait((ev) => ev.data.disconnect, 'sse disconnect at shutdown');
    assert.equal(e.data.disconnect.code, 3001);
    await s.feed.closed();
    await sse.feed.closed();
    const { code } = await stopped;
    assert.equal(code, 0, 'clean exit on SIGTERM');
    server = null;
  });
});
