// The Centrifugo client protocol at /connection/websocket, exercised with the
// unmodified `centrifuge` JS SDK (5.x) against the real binary: anonymous and
// JWT connect, subscribe/publish, presence, join/leave, history, server-side
// subscriptions, private channels, recovery, and messages crossing between
// raw-room clients and SDK clients.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test centrifugo.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Centrifuge } from 'centrifuge';
import { WebSocket, Inbox, startServer, join, opened, withTimeout, binaryPath } from './lib/harness.mjs';
import { once, collect, mintToken } from './lib/centrifuge_helpers.mjs';

const SECRET = 'centrifugo-test-secret';
const mint = (args) => mintToken(SECRET, args);

const CONFIG = `
token_hmac_secret = "${SECRET}"
allow_anonymous = true

[channel.default]
presence = true
join_leave = true
history_size = 100
history_ttl = 300
force_recovery = true
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true

[channel.namespaces.private]
private = true
allow_publish_for_subscriber = true

[channel.namespaces.short]
history_size = 2
history_ttl = 300
force_recovery = true
allow_subscribe_for_anonymous = true
allow_publish_for_client = true
`;

describe('centrifuge SDK against /connection/websocket', () => {
  let server;
  let dir;
  const clients = [];

  function client(opts = {}) {
    const c = new Centrifuge(server.wsUrl('/connection/websocket'), {
      websocket: WebSocket,
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
    const ctx = await p;
    return { c, ctx };
  }

  async function subscribed(c, channel, opts = {}) {
    const sub = c.newSubscription(channel, opts);
    const p = once(sub, 'subscribed', () => true, `subscribed to ${channel}`);
    sub.subscribe();
    const ctx = await p;
    return { sub, ctx };
  }

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'sb-cf-'));
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(file, CONFIG);
    server = await startServer(['--config', file]);
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    const { code } = await server.stop();
    assert.equal(code, 0, 'clean exit on SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  });

  it('anonymous clients connect, subscribe, publish and receive', async () => {
    const { c: a, ctx } = await connected();
    assert.ok(ctx.client.length > 0, 'the connect result names the client');
    const { c: b } = await connected();
    const { sub: subA } = await subscribed(a, 'news');
    const { sub: subB } = await subscribed(b, 'news');
    const inbox = collect(subA);
    await subB.publish({ text: 'hello' });
    const [pub] = await inbox.until(1);
    assert.deepEqual(pub.data, { text: 'hello' });
    assert.equal(pub.channel, 'news');
    assert.ok(pub.offset >= 1);
  });

  it('a JWT user appears in presence and presence stats', async () => {
    const token = mint(['--user', 'alice', '--info', '{"name":"Alice"}']);
    const { c } = await connected({ token });
    const { sub } = await subscribed(c, 'lobby-jwt');
    const presence = await sub.presence();
    const members = Object.values(presence.clients);
    assert.equal(members.length, 1);
    assert.equal(members[0].user, 'alice');
    assert.deepEqual(members[0].connInfo, { name: 'Alice' });
    const { c: anon } = await connected();
    await subscribed(anon, 'lobby-jwt');
    const stats = await sub.presenceStats();
    assert.equal(stats.numClients, 2);
    assert.equal(stats.numUsers, 2, 'alice and the anonymous user');
  });

  it('join and leave events reach the other members', async () => {
    const { c: a } = await connected({ token: mint(['--user', 'ann']) });
    const { sub } = await subscribed(a, 'jl');
    const joined = once(sub, 'join', (ctx) => ctx.info.user === 'bob', 'join of bob');
    const { c: b } = await connected({ token: mint(['--user', 'bob']) });
    const { sub: subB } = await subscribed(b, 'jl');
    await joined;
    const left = once(sub, 'leave', (ctx) => ctx.info.user === 'bob', 'leave of bob');
    subB.unsubscribe();
    await left;
  });

  it('history returns the publications in order with the stream position', async () => {
    const { c } = await connected();
    const { sub } = await subscribed(c, 'hist');
    for (let i = 1; i <= 3; i++) await sub.publish({ n: i });
    const h = await sub.history({ limit: 10 });
    assert.deepEqual(h.publications.map((p) => p.data.n), [1, 2, 3]);
    assert.equal(h.offset, h.publications[2].offset);
    assert.ok(h.epoch.length > 0);
  });

  it('server-side subscriptions come from the token channels claim', async () => {
    const token = mint(['--user', 'carol', '--subscribe', 'feed']);
    const c = client({ token });
    const got = once(c, 'publication', (ctx) => ctx.channel === 'feed' && ctx.data?.via, 'server-side publication');
    const subscribedFeed = once(c, 'subscribed', (ctx) => ctx.channel === 'feed', 'server-side subscribed');
    c.connect();
    await subscribedFeed;
    const raw = await join(server.wsUrl('/feed'));
    raw.ws.send('{"via":"raw"}');
    const ctx = await got;
    assert.deepEqual(ctx.data, { via: 'raw' });
    raw.ws.close();
  });

  it('a private channel needs a subscription token for the user', async () => {
    const token = mint(['--user', 'dave']);
    const { c } = await connected({ token });
    // Without a token the subscription is refused.
    const denied = c.newSubscription('private:room');
    const refused = withTimeout(
      new Promise((resolve) => {
        denied.on('error', (ctx) => resolve(ctx.error));
        denied.on('unsubscribed', (ctx) => resolve(ctx));
      }),
      'the subscription to be refused',
    );
    denied.subscribe();
    const why = await refused;
    assert.equal(why.code, 103, 'permission denied');
    assert.notEqual(denied.state, 'subscribed');
    c.removeSubscription(denied);
    // With one it works, and publishing into it is allowed for subscribers.
    const subToken = mint(['--user', 'dave', '--channel', 'private:room']);
    const { sub } = await subscribed(c, 'private:room', { token: subToken });
    const inbox = collect(sub);
    await sub.publish({ secret: true });
    const [pub] = await inbox.until(1);
    assert.deepEqual(pub.data, { secret: true });
    assert.equal(pub.info?.user, 'dave', 'a live publication names its publisher');
  });

  it('recovers every publication missed during a disconnect exactly once, in order', async () => {
    const N = 7;
    const { c: a } = await connected();
    const { sub } = await subscribed(a, 'rec');
    const inbox = collect(sub);
    const { c: b } = await connected();
    const { sub: pubSub } = await subscribed(b, 'rec');
    await pubSub.publish({ n: 0 });
    await inbox.until(1);

    const down = once(a, 'disconnected');
    a.disconnect();
    await down;
    for (let i = 1; i <= N; i++) await pubSub.publish({ n: i });

    const back = once(sub, 'subscribed', () => true, 'resubscribed');
    a.connect();
    const ctx = await back;
    assert.equal(ctx.wasRecovering, true);
    assert.equal(ctx.recovered, true);
    await inbox.until(N + 1);
    // Nothing more than expected arrives after one more live message.
    await pubSub.publish({ n: N + 1 });
    await inbox.until(N + 2);
    assert.deepEqual(inbox.got.map((p) => p.data.n), Array.from({ length: N + 2 }, (_, i) => i));
    const offsets = inbox.got.map((p) => p.offset);
    for (let i = 1; i < offsets.length; i++) assert.equal(offsets[i], offsets[i - 1] + 1);
  });

  it('a recovery beyond the history reports not recovered', async () => {
    const { c: a } = await connected();
    const { sub } = await subscribed(a, 'short:x');
    const { c: b } = await connected();
    const down = once(a, 'disconnected');
    a.disconnect();
    await down;
    for (let i = 1; i <= 5; i++) await b.publish('short:x', { n: i });
    const back = once(sub, 'subscribed', () => true, 'resubscribed');
    a.connect();
    const ctx = await back;
    assert.equal(ctx.wasRecovering, true);
    assert.equal(ctx.recovered, false);
  });

  it('raw-room clients and SDK clients in one channel see each other', async () => {
    const raw = await join(server.wsUrl('/room1'));
    const { c } = await connected();
    const { sub } = await subscribed(c, 'room1');
    const inbox = collect(sub);
    raw.ws.send('{"from":"raw"}');
    const [pub] = await inbox.until(1);
    assert.deepEqual(pub.data, { from: 'raw' });
    // The raw client gets its own echo first, then the SDK's publication.
    assert.equal((await raw.next()).text, '{"from":"raw"}');
    await sub.publish({ from: 'sdk' });
    assert.equal((await raw.next('the SDK publication')).text, '{"from":"sdk"}');
    raw.ws.close();
  });

  it('an expired connection token makes the SDK fetch a new one and connect', async () => {
    const stale = mint(['--user', 'erin', '--ttl', '1s']);
    await new Promise((r) => setTimeout(r, 2100));
    let asked = 0;
    const c = client({
      token: stale,
      getToken: async () => {
        asked += 1;
        return mint(['--user', 'erin']);
      },
    });
    const up = once(c, 'connected', () => true, 'connected with a fresh token');
    c.connect();
    await up;
    assert.equal(asked, 1, 'getToken called once after error 109');
  });

  it('a connection token about to expire is refreshed without a disconnect', async () => {
    let asked = 0;
    const c = client({
      token: mint(['--user', 'fay', '--ttl', '2s']),
      getToken: async () => {
        asked += 1;
        return mint(['--user', 'fay', '--ttl', '1h']);
      },
    });
    let disconnects = 0;
    c.on('disconnected', () => (disconnects += 1));
    const up = once(c, 'connected');
    c.connect();
    const ctx = await up;
    assert.equal(ctx.client.length > 0, true);
    // Past the first token's expiry: the SDK must have refreshed it in place.
    await new Promise((r) => setTimeout(r, 4000));
    assert.ok(asked >= 1, 'getToken was called to refresh');
    assert.equal(disconnects, 0);
    assert.equal(c.state, 'connected');
  });

  it('a private subscription whose token is refreshed outlives the first token', async () => {
    const { c } = await connected({ token: mint(['--user', 'gil']) });
    let asked = 0;
    const { sub, ctx } = await subscribed(c, 'private:gil', {
      token: mint(['--user', 'gil', '--channel', 'private:gil', '--ttl', '2s']),
      getToken: async () => {
        asked += 1;
        return mint(['--user', 'gil', '--channel', 'private:gil', '--ttl', '2s']);
      },
    });
    assert.equal(ctx.channel, 'private:gil');
    const changes = [];
    sub.on('subscribing', (e) => changes.push(e));
    sub.on('unsubscribed', (e) => changes.push(e));
    const inbox = collect(sub);
    // Past the first token's expiry and the server's grace second.
    await new Promise((r) => setTimeout(r, 4500));
    assert.ok(asked >= 1, 'getToken was called to refresh the subscription');
    assert.deepEqual(changes, [], 'the subscription never left the subscribed state');
    assert.equal(sub.state, 'subscribed');
    await sub.publish({ still: 'here' });
    const [pub] = await inbox.until(1);
    assert.deepEqual(pub.data, { still: 'here' });
  });

  it('a subscription token expires on time even while messages keep flowing', async () => {
    const { c } = await connected({ token: mint(['--user', 'ivy']) });
    const { sub } = await subscribed(c, 'private:ivy', {
      token: mint(['--user', 'ivy', '--channel', 'private:ivy', '--ttl', '2s']),
      getToken: async () => {
        throw new Error('no token for you');
      },
    });
    sub.on('error', () => {});
    // A command and a delivery every 150 ms: the connection is never idle for the grace
    // second, which must not postpone the expiry.
    const traffic = setInterval(() => {
      if (sub.state === 'subscribed') sub.publish({ tick: Date.now() }).catch(() => {});
    }, 150);
    try {
      const expired = await once(sub, 'subscribing', (e) => e.code === 2501, 'the expiry unsubscribe under traffic');
      assert.equal(expired.reason, 'subscription expired');
      assert.equal(c.state, 'connected');
    } finally {
      clearInterval(traffic);
      c.removeSubscription(sub);
    }
  });

  it('a private subscription whose token is not refreshed is unsubscribed with 2501', async () => {
    const { c } = await connected({ token: mint(['--user', 'hal']) });
    let disconnects = 0;
    c.on('disconnected', () => (disconnects += 1));
    let asked = 0;
    const { sub } = await subscribed(c, 'private:hal', {
      token: mint(['--user', 'hal', '--channel', 'private:hal', '--ttl', '2s']),
      getToken: async () => {
        asked += 1;
        throw new Error('no token for you');
      },
    });
    // The SDK's refresh fails (it reports an error and retries much later), so the
    // server ends the subscription when the token expires; 2501 makes the SDK try to
    // subscribe again, which fails the same way.
    sub.on('error', () => {});
    const expired = await once(sub, 'subscribing', (e) => e.code === 2501, 'the expiry unsubscribe');
    assert.equal(expired.reason, 'subscription expired');
    assert.ok(asked >= 1, 'getToken was asked for a new token');
    assert.notEqual(sub.state, 'subscribed');
    // The connection itself stays up.
    assert.equal(c.state, 'connected');
    assert.equal(disconnects, 0);
    c.removeSubscription(sub);
  });

  it('a wrong token closes with 3500 and malformed JSON with 3501', async () => {
    const ws1 = new WebSocket(server.wsUrl('/connection/websocket'));
    const in1 = new Inbox(ws1);
    await opened(ws1);
    ws1.send(JSON.stringify({ id: 1, connect: { token: 'not.a.jwt' } }));
    assert.equal((await in1.close()).code, 3500);

    const ws2 = new WebSocket(server.wsUrl('/connection/websocket'));
    const in2 = new Inbox(ws2);
    await opened(ws2);
    ws2.send(JSON.stringify({ id: 1, connect: {} }));
    const reply = JSON.parse((await in2.next('connect reply')).text);
    assert.equal(reply.id, 1);
    assert.ok(reply.connect.client);
    assert.equal(reply.connect.pong, true);
    ws2.send('{not json');
    assert.equal((await in2.close()).code, 3501);
  });
});

describe('centrifugo heartbeat', () => {
  let server;
  before(async () => {
    server = await startServer(['--allow-anonymous', '--ping-interval', '1', '--ping-timeout', '1']);
  });
  after(() => server.stop());

  it('the SDK answers the server pings and stays connected', async () => {
    const c = new Centrifuge(server.wsUrl('/connection/websocket'), { websocket: WebSocket });
    let disconnects = 0;
    c.on('disconnected', () => (disconnects += 1));
    const up = once(c, 'connected');
    c.connect();
    const ctx = await up;
    assert.equal(ctx.client.length > 0, true);
    await new Promise((r) => setTimeout(r, 3500));
    assert.equal(disconnects, 0);
    assert.equal(c.state, 'connected');
    c.disconnect();
  });

  it('a client that never answers the pings is closed with 3012', async () => {
    const ws = new WebSocket(server.wsUrl('/connection/websocket'));
    const inbox = new Inbox(ws);
    await opened(ws);
    ws.send(JSON.stringify({ id: 1, connect: {} }));
    const reply = JSON.parse((await inbox.next('connect reply')).text);
    assert.equal(reply.connect.ping, 1);
    assert.equal((await inbox.next('a server ping')).text, '{}');
    assert.equal((await inbox.close()).code, 3012);
  });
});
