// Pusher Channels protocol 7 with unmodified clients: `pusher-js` (8.x, its Node build) on
// `/app/{key}` and the `pusher` server SDK (5.x) on the signed HTTP API `/apps/{id}/…`,
// against the real binary; plus raw `ws` and `centrifuge` clients on the same channels.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import PusherServer from 'pusher';
import WebSocket from 'ws';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Centrifuge } from 'centrifuge';
import { io } from 'socket.io-client';
import { startServer, withTimeout, Inbox } from './lib/harness.mjs';
import { pusherClient, connected, subscription as subscribed, nextEvent as next } from './lib/pusher.mjs';

const APP = { appId: 'app-id', key: 'app-key', secret: 'app-secret' };

let server;
let api;
const clients = [];

function client(opts = {}) {
  const c = pusherClient(APP.key, server.port, {
    authorize: (socketId, channel) => api.authorizeChannel(socketId, channel, opts.presence),
    authenticate: (socketId) => api.authenticateUser(socketId, opts.user || { id: 'nobody' }),
    extra: opts.extra,
  });
  clients.push(c);
  return c;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe('pusher-js and the pusher SDK', () => {
  before(async () => {
    // The app from the TOML file (the documented shape); anonymous Centrifugo and Socket.IO
    // clients (subscribing, and publishing from Socket.IO) for the cross-protocol test.
    const dir = mkdtempSync(path.join(tmpdir(), 'sb-pusher-'));
    const file = path.join(dir, 'config.toml');
    writeFileSync(file, [
      'allow_anonymous = true',
      '[channel.default]',
      'allow_subscribe_for_anonymous = true',
      'allow_publish_for_subscriber = true',
      '[[pusher.apps]]',
      `id = "${APP.appId}"`,
      `key = "${APP.key}"`,
      `secret = "${APP.secret}"`,
      '',
    ].join('\n'));
    server = await startServer(['--config', file]);
    api = new PusherServer({ ...APP, host: '127.0.0.1', port: String(server.port), useTLS: false });
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    await server?.stop();
  });

  it('connects and gets a socket id', async () => {
    const c = client();
    await connected(c);
    assert.match(c.connection.socket_id, /^\d+\.\d+$/);
  });

  it('public channel: trigger, triggerBatch and GET /channels', async () => {
    const c = client();
    await connected(c);
    const { ch } = await subscribed(c, 'news');
    const got = next(ch, 'my-event');
    await api.trigger('news', 'my-event', { message: 'hello' });
    assert.deepEqual((await got).data, { message: 'hello' });

    const a = next(ch, 'a');
    const b = next(ch, 'b');
    await api.triggerBatch([
      { channel: 'news', name: 'a', data: 'plain' },
      { channel: 'news', name: 'b', data: { n: 2 } },
    ]);
    assert.equal((await a).data, 'plain');
    assert.deepEqual((await b).data, { n: 2 });

    const res = await api.get({ path: '/channels', params: { info: 'subscription_count' } });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.ok(body.channels.news, JSON.stringify(body));
    assert.ok(body.channels.news.subscription_count >= 1);
    const one = await (await api.get({ path: '/channels/news', params: { info: 'subscription_count' } })).json();
    assert.equal(one.occupied, true);
  });

  it('a request with a bad signature is refused with 401', async () => {
    const forged = new PusherServer({ ...APP, secret: 'wrong', host: '127.0.0.1', port: String(server.port), useTLS: false });
    await assert.rejects(forged.trigger('news', 'x', {}), (e) => e.status === 401);
  });

  it('private channel: authorized by the backend signature, a forged one refused', async () => {
    const c = client();
    await connected(c);
    const { ch } = await subscribed(c, 'private-room');
    const got = next(ch, 'secret');
    await api.trigger('private-room', 'secret', { x: 1 });
    assert.deepEqual((await got).data, { x: 1 });

    const bad = client({
      extra: {
        channelAuthorization: { customHandler: (_p, cb) => cb(null, { auth: `${APP.key}:${'0'.repeat(64)}` }) },
      },
    });
    await connected(bad);
    await assert.rejects(subscribed(bad, 'private-room'), /subscription_error/);
  });

  it('client events reach the others, not the sender; only on private channels', async () => {
    const a = client();
    const b = client();
    await Promise.all([connected(a), connected(b)]);
    const { ch: cha } = await subscribed(a, 'private-chat');
    const { ch: chb } = await subscribed(b, 'private-chat');
    let echoed = false;
    cha.bind('client-typing', () => { echoed = true; });
    const got = next(chb, 'client-typing');
    assert.equal(cha.trigger('client-typing', { who: 'a' }), true);
    assert.deepEqual((await got).data, { who: 'a' });
    await sleep(200);
    assert.equal(echoed, false, 'not echoed to the sender');
  });

  it('socket_id excludes the triggering connection', async () => {
    const a = client();
    const b = client();
    await Promise.all([connected(a), connected(b)]);
    const { ch: cha } = await subscribed(a, 'excl');
    const { ch: chb } = await subscribed(b, 'excl');
    let aGot = false;
    cha.bind('e', () => { aGot = true; });
    const got = next(chb, 'e');
    await api.trigger('excl', 'e', 'x', { socket_id: a.connection.socket_id });
    await got;
    await sleep(200);
    assert.equal(aGot, false);
  });

  it('presence: members, member_added, member_removed, user_id on client events, /users', async () => {
    const a = client({ presence: { user_id: 'alice', user_info: { name: 'Alice' } } });
    await connected(a);
    const { ch: cha, data } = await subscribed(a, 'presence-lobby');
    assert.equal(data.count, 1);
    assert.equal(data.me.id, 'alice');
    const added = next(cha, 'pusher:member_added');
    const b = client({ presence: { user_id: 'bob', user_info: { name: 'Bob' } } });
    await connected(b);
    const { ch: chb, data: bdata } = await subscribed(b, 'presence-lobby');
    assert.equal(bdata.count, 2);
    assert.deepEqual(bdata.members.alice, { name: 'Alice' });
    const m = (await added).data;
    assert.equal(m.id, 'bob');
    assert.deepEqual(m.info, { name: 'Bob' });

    const users = await (await api.get({ path: '/channels/presence-lobby/users' })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['alice', 'bob']);

    const ev = next(cha, 'client-hi');
    chb.trigger('client-hi', { n: 1 });
    const { data: d, meta } = await ev;
    assert.deepEqual(d, { n: 1 });
    assert.equal(meta?.user_id, 'bob');

    const removed = next(cha, 'pusher:member_removed');
    b.disconnect();
    assert.equal((await removed).data.id, 'bob');
  });

  it('terminate_connections closes a signed-in user\'s connections', async () => {
    const c = client({ user: { id: 'carol' } });
    await connected(c);
    c.signin();
    await withTimeout(new Promise((r) => c.user.signinDonePromise.then(r)), 'signed in');
    const closed = withTimeout(new Promise((resolve) => {
      c.connection.bind('state_change', (s) => { if (s.current !== 'connected') resolve(s.current); });
    }), 'terminated');
    await api.terminateUserConnections('carol');
    await closed;
  });

  it('cache channels: the last event is replayed to a new subscriber, else pusher:cache_miss', async () => {
    // Triggered while nobody is subscribed: kept all the same.
    await api.trigger('cache-quotes', 'quote', { price: 1 });
    await api.trigger('cache-quotes', 'quote', { price: 2 });
    const c = client();
    await connected(c);
    const ch = c.subscribe('cache-quotes');
    const seen = [];
    ch.bind_global((event, data) => seen.push([event, data]));
    const got = next(ch, 'quote');
    assert.deepEqual((await got).data, { price: 2 }, 'only the last event');
    assert.equal(seen[0][0], 'pusher:subscription_succeeded', 'after the subscription succeeded');
    const live = next(ch, 'quote');
    await api.trigger('cache-quotes', 'quote', { price: 3 });
    assert.deepEqual((await live).data, { price: 3 });
    assert.deepEqual(seen.filter(([e]) => e === 'quote').map(([, d]) => d.price), [2, 3], 'nothing twice');

    const empty = c.subscribe('private-cache-empty');
    const miss = await withTimeout(new Promise((resolve) => empty.bind('pusher:cache_miss', () => resolve(true))), 'pusher:cache_miss');
    assert.equal(miss, true);
  });

  it('signin: sendToUser reaches pusher.user.bind; a forged signature gets pusher:error 4009', async () => {
    const c = client({ user: { id: 'frank', name: 'Frank' } });
    await connected(c);
    c.signin();
    await withTimeout(c.user.signinDonePromise, 'signed in');
    assert.equal(c.user.user_data?.id, 'frank');
    const got = new Promise((resolve) => c.user.bind('note', resolve));
    await api.sendToUser('frank', 'note', { text: 'just for frank' });
    assert.deepEqual(await withTimeout(got, 'the server-to-user event'), { text: 'just for frank' });

    const forged = client({
      extra: {
        userAuthentication: {
          customHandler: ({ socketId }, cb) => cb(null, {
            auth: `${APP.key}:${'0'.repeat(64)}`,
            user_data: JSON.stringify({ id: 'mallory' }),
          }),
        },
      },
    });
    await connected(forged);
    const error = withTimeout(new Promise((resolve) => forged.connection.bind('error', resolve)), 'pusher:error');
    forged.signin();
    const e = await error;
    assert.equal(e.data.code, 4009);
    assert.equal(forged.connection.state, 'connected', 'the connection stays');
    assert.equal(forged.user.user_data, null);
  });

  it('the same channel with a raw ws client, a centrifuge client and a socket.io-client', async () => {
    const c = client();
    await connected(c);
    const { ch } = await subscribed(c, 'shared');
    // A raw client's text becomes the Pusher event `message`.
    const raw = new WebSocket(server.wsUrl('/shared?echo=false'));
    const rawInbox = new Inbox(raw);
    await withTimeout(new Promise((r) => raw.once('open', r)), 'raw open');
    const got = next(ch, 'message');
    raw.send('from raw');
    assert.equal((await got).data, 'from raw');
    // A Pusher event reaches the raw client as its envelope.
    await api.trigger('shared', 'evt', { a: 1 });
    const env = JSON.parse((await rawInbox.next()).data.toString());
    assert.deepEqual(env, { event: 'evt', data: { a: 1 } });
    raw.close();

    const cf = new Centrifuge(server.wsUrl('/connection/websocket'), { websocket: WebSocket });
    cf.connect();
    const sub = cf.newSubscription('shared');
    const pub = new Promise((resolve) => sub.on('publication', (ctx) => resolve(ctx.data)));
    sub.subscribe();
    await withTimeout(new Promise((r) => sub.on('subscribed', r)), 'centrifuge subscribed');
    await api.trigger('shared', 'evt2', 'text');
    assert.deepEqual(await withTimeout(pub, 'centrifuge publication'), { event: 'evt2', data: 'text' });
    cf.disconnect();

    // Socket.IO: a Pusher event arrives as `message` (channel, envelope); what the socket
    // publishes reaches pusher-js as the event `message`.
    const sio = io(server.httpUrl, { transports: ['websocket'], reconnection: false });
    try {
      await withTimeout(new Promise((resolve, reject) => {
        sio.on('connect', resolve);
        sio.on('connect_error', reject);
      }), 'socket.io connected');
      const sioGot = withTimeout(new Promise((resolve) => sio.on('message', (...args) => resolve(args))), 'socket.io message');
      assert.deepEqual(await sio.timeout(5000).emitWithAck('subscribe', 'shared'), { ok: true });
      await api.trigger('shared', 'evt3', { b: 2 });
      const [channel, envelope] = await sioGot;
      assert.equal(channel, 'shared');
      assert.deepEqual(envelope, { event: 'evt3', data: { b: 2 } });
      const fromSio = next(ch, 'message');
      assert.deepEqual(await sio.timeout(5000).emitWithAck('publish', 'shared', { x: 1 }), { ok: true });
      assert.deepEqual((await fromSio).data, { x: 1 });
    } finally {
      sio.disconnect();
    }
  });

  it('an unknown key gets pusher:error 4001', async () => {
    const ws = new WebSocket(server.wsUrl('/app/nope?protocol=7&client=js&version=8.4.0'));
    const firstMsg = new Promise((r) => ws.once('message', (d) => r(d.toString())));
    const first = JSON.parse(await withTimeout(firstMsg, 'pusher:error'));
    assert.equal(first.event, 'pusher:error');
    assert.equal(first.data.code, 4001);
    const code = await withTimeout(new Promise((r) => ws.once('close', r)), 'close');
    assert.equal(code, 4001);
  });

  it('protocol below 7 gets 4007', async () => {
    const ws = new WebSocket(server.wsUrl(`/app/${APP.key}?protocol=6`));
    const code = await withTimeout(new Promise((r) => ws.once('close', r)), 'close');
    assert.equal(code, 4007);
  });
});
