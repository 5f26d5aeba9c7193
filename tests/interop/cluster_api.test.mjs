// The HTTP API acts on the whole cluster, whichever node answers: three real `switchboard`
// processes on one private Redis, real `centrifuge` and `socket.io-client` clients on
// different nodes.
// `disconnect`, `subscribe` and `unsubscribe` reach a user's connections on every node
// (through the broker's control channel), `channels` lists the channels with members on
// every node with their counts summed, and with Redis down these methods answer 503.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { io } from 'socket.io-client';
import { binaryPath, withTimeout, WebSocket, opened } from './lib/harness.mjs';
import { redisAvailable } from './lib/redis.mjs';
import { startCluster, api, until, once, connect, subscribe } from './lib/cluster.mjs';

const haveRedis = await redisAvailable();
const SECRET = 'cluster-api-secret';

function mint(user) {
  return execFileSync(binaryPath(), ['token', '--secret', SECRET, '--user', user], {
    encoding: 'utf8',
  }).trim();
}

describe('the HTTP API on three nodes', { skip: !haveRedis && 'redis-server is not installed' }, () => {
  let cluster;
  let nodes;
  const clients = [];
  const sockets = [];

  /** A `centrifuge` client of `user` (anonymous without one) on `node`, counting its reconnects. */
  async function client(node, user) {
    const r = await connect(node, user ? { token: mint(user) } : {});
    clients.push(r.c);
    const events = { connecting: [], subscribed: [], unsubscribed: [] };
    r.c.on('connecting', (ctx) => events.connecting.push(ctx));
    r.c.on('subscribed', (ctx) => events.subscribed.push(ctx.channel));
    r.c.on('unsubscribed', (ctx) => events.unsubscribed.push(ctx.channel));
    return { ...r, events };
  }

  /** `channels` from `node` with `pattern`: { name: num_clients }. */
  async function channels(node, pattern) {
    const r = await api(node, 'channels', { pattern });
    assert.equal(r.status, 200, r.text);
    return Object.fromEntries(Object.entries(r.body.result.channels).map(([k, v]) => [k, v.num_clients]));
  }

  before(async () => {
    cluster = await startCluster(3, ['--token-hmac-secret', SECRET]);
    nodes = cluster.nodes;
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    for (const s of sockets) s.disconnect();
    await cluster?.close();
  });

  it('disconnect by user on node0 closes that user\'s clients on node1 and node2, and only theirs', async () => {
    const onC = await client(nodes[2], 'dave');
    const onB = await client(nodes[1], 'dave');
    const onA = await client(nodes[0], 'dave');
    const bystander = await client(nodes[2], 'erin');
    const downs = [onC, onB, onA].map((x, i) =>
      once(x.c, 'connecting', (ctx) => ctx.code === 3011, `dave's client on node${2 - i} told to reconnect`),
    );
    const r = await api(nodes[0], 'disconnect', { user: 'dave' });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.body, { result: {} });
    await Promise.all(downs);
    // The SDK reconnects them (3011 means "reconnect").
    for (const x of [onA, onB, onC]) {
      if (x.c.state !== 'connected') await once(x.c, 'connected', () => true, 'dave reconnected');
    }
    // A later command from another node reaches dave's new connections, node0's included,
    // and nothing closed them meanwhile: one API call, one forced reconnect per client.
    // (That a node skips its own commands on the control channel is checked by the
    // broker's unit tests: an echo would usually reach the old, closing connection.)
    const marks = [onA, onB, onC].map((x, i) =>
      once(x.c, 'subscribed', (ctx) => ctx.channel === 'dave-mark', `the marker subscription on dave's client ${i}`),
    );
    assert.equal((await api(nodes[1], 'subscribe', { user: 'dave', channel: 'dave-mark' })).status, 200);
    await Promise.all(marks);
    for (const x of [onA, onB, onC]) {
      assert.equal(x.events.connecting.filter((c) => c.code === 3011).length, 1, 'told to reconnect once');
      assert.equal(x.c.state, 'connected');
    }
    assert.equal(bystander.events.connecting.length, 0, 'another user on the same node stays connected');
    assert.equal(bystander.c.state, 'connected');
  });

  it('disconnect by user also closes that user\'s Socket.IO sockets, on every node', async () => {
    /** A socket.io-client socket of `user` on `node`, connected. */
    async function sio(node, user) {
      const s = io(node.httpUrl, {
        transports: ['websocket'],
        auth: { token: mint(user) },
        reconnection: false,
        forceNew: true,
      });
      sockets.push(s);
      await withTimeout(new Promise((resolve, reject) => {
        s.once('connect', resolve);
        s.once('connect_error', reject);
      }), `socket.io connect of ${user}`);
      return s;
    }
    const onB = await sio(nodes[1], 'frank');
    const onA = await sio(nodes[0], 'frank');
    const bystander = await sio(nodes[1], 'gina');
    const cf = await client(nodes[2], 'frank');
    const reasons = [onB, onA].map((s) =>
      withTimeout(new Promise((resolve) => s.once('disconnect', resolve)), 'frank\'s socket disconnected'),
    );
    const cfDown = once(cf.c, 'connecting', (ctx) => ctx.code === 3011, 'frank\'s centrifuge client told to reconnect');
    const r = await api(nodes[0], 'disconnect', { user: 'frank' });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(await Promise.all(reasons), ['io server disconnect', 'io server disconnect']);
    await cfDown;
    assert.equal(bystander.connected, true, 'another user\'s socket on the same node stays connected');
    // The SDK reconnects after 3011; end it, so the later tests see only the clients they open.
    cf.c.disconnect();
  });

  it('disconnect by user closes that user\'s raw-room, Socket.IO and Centrifugo connections on every node', async () => {
    /** A raw-room WebSocket of `user` on `node`: the token in the query or in a header. */
    async function raw(node, user, how) {
      const token = mint(user);
      const ws = how === 'header'
        ? new WebSocket(node.wsUrl('/raw-room'), { headers: { authorization: `Bearer ${token}` } })
        : new WebSocket(node.wsUrl(`/raw-room?token=${encodeURIComponent(token)}`));
      ws.on('error', () => {});
      await opened(ws);
      return ws;
    }
    const closed = (ws, what) =>
      withTimeout(new Promise((resolve) => ws.once('close', (code) => resolve(code))), what);
    const rawA = await raw(nodes[0], 'hank', 'query');
    const rawC = await raw(nodes[2], 'hank', 'header');
    const rawOther = await raw(nodes[2], 'ivy', 'query');
    const anonymous = new WebSocket(nodes[1].wsUrl('/raw-room'));
    anonymous.on('error', () => {});
    await opened(anonymous);
    const s = io(nodes[1].httpUrl, {
      transports: ['websocket'],
      auth: { token: mint('hank') },
      reconnection: false,
      forceNew: true,
    });
    sockets.push(s);
    await withTimeout(new Promise((resolve, reject) => {
      s.once('connect', resolve);
      s.once('connect_error', reject);
    }), 'socket.io connect of hank');
    const cf = await client(nodes[1], 'hank');
    const downs = [closed(rawA, 'hank\'s raw socket on node0 closed'), closed(rawC, 'hank\'s raw socket on node2 closed')];
    const sioDown = withTimeout(new Promise((resolve) => s.once('disconnect', resolve)), 'hank\'s socket disconnected');
    const cfDown = once(cf.c, 'connecting', (ctx) => ctx.code === 3011, 'hank\'s centrifuge client told to reconnect');
    const r = await api(nodes[0], 'disconnect', { user: 'hank' });
    assert.equal(r.status, 200, r.text);
    // Raw rooms close with the hub's code for a kick: 1008 "disconnected".
    assert.deepEqual(await Promise.all(downs), [1008, 1008]);
    assert.equal(await sioDown, 'io server disconnect');
    await cfDown;
    cf.c.disconnect();
    assert.equal(rawOther.readyState, WebSocket.OPEN, 'another user\'s raw socket stays open');
    assert.equal(anonymous.readyState, WebSocket.OPEN, 'an anonymous raw socket stays open');
    rawOther.close();
    anonymous.close();
    // A raw-room upgrade with a token that does not verify is refused before the 101.
    const bad = new WebSocket(nodes[0].wsUrl('/raw-room?token=not-a-jwt'));
    const refused = await withTimeout(new Promise((resolve) => {
      bad.once('unexpected-response', (_req, res) => resolve(res.statusCode));
      bad.once('open', () => resolve('opened'));
      bad.once('error', () => {});
    }), 'bad token refused');
    assert.equal(refused, 401);
  });

  it('disconnect by client id reaches the client on whichever node holds it', async () => {
    const target = await client(nodes[2]);
    const down = once(target.c, 'connecting', (ctx) => ctx.code === 3011, 'the client on node2 told to reconnect');
    const r = await api(nodes[0], 'disconnect', { client: target.client });
    assert.deepEqual(r.body, { result: {} });
    await down;
  });

  it('subscribe on node0 subscribes the user on node1 (server-side), unsubscribe on node2 ends it', async () => {
    const channel = 'srv-x';
    const frank = await client(nodes[1], 'frank');
    const other = await client(nodes[1], 'gina');
    const subbed = once(frank.c, 'subscribed', (ctx) => ctx.channel === channel, 'the server-side subscribe push on node1');
    const got = once(frank.c, 'publication', (ctx) => ctx.channel === channel, 'a publication of the server-side subscription');
    const r = await api(nodes[0], 'subscribe', { user: 'frank', channel });
    assert.deepEqual(r.body, { result: {} });
    await subbed;
    const p = await api(nodes[2], 'publish', { channel, data: { hello: 'frank' } });
    assert.equal(p.status, 200, p.text);
    assert.deepEqual((await got).data, { hello: 'frank' });
    assert.deepEqual(other.events.subscribed, [], 'another user on that node is not subscribed');
    // Presence and `channels` from any node see the subscription.
    assert.equal((await api(nodes[0], 'presence_stats', { channel })).body.result.num_clients, 1);
    assert.deepEqual(await channels(nodes[2], channel), { [channel]: 1 });

    const unsubbed = once(frank.c, 'unsubscribed', (ctx) => ctx.channel === channel, 'the server-side unsubscribe push on node1');
    assert.deepEqual((await api(nodes[2], 'unsubscribe', { user: 'frank', channel })).body, { result: {} });
    await unsubbed;
    await until(async () => (await api(nodes[0], 'presence_stats', { channel })).body.result.num_clients === 0, 'frank gone from presence');
    await until(async () => Object.keys(await channels(nodes[0], channel)).length === 0, 'the channel gone from channels');
  });

  it('channels from any node lists the channels with members on every node, counts summed', async () => {
    const a0 = await client(nodes[0]);
    const b0 = await client(nodes[0]);
    const a1 = await client(nodes[1]);
    const c2 = await client(nodes[2]);
    const subs = [
      await subscribe(a0.c, 'cnt-a'),
      await subscribe(b0.c, 'cnt-a'),
      await subscribe(a1.c, 'cnt-a'),
      await subscribe(c2.c, 'cnt-b'),
      await subscribe(c2.c, 'other-c'),
    ];
    const expected = { 'cnt-a': 3, 'cnt-b': 1 };
    for (const node of nodes) {
      assert.deepEqual(await channels(node, 'cnt-*'), expected, `channels from ${node.httpUrl}`);
    }
    // Without a pattern the other channel is listed too.
    const all = await channels(nodes[1], '');
    assert.equal(all['other-c'], 1);
    assert.equal(all['cnt-a'], 3);

    // Leaving on node1 is reflected when asked on node2.
    subs[2].sub.unsubscribe();
    await until(async () => (await channels(nodes[2], 'cnt-*'))['cnt-a'] === 2, 'cnt-a down to 2 members');
    c2.c.disconnect();
    await until(async () => {
      const now = await channels(nodes[0], 'cnt-*');
      return JSON.stringify(now) === JSON.stringify({ 'cnt-a': 2 });
    }, 'cnt-b gone with its only member');
  });

  it('with Redis down these methods answer 503 (temporary); after it returns they reach every node again', async () => {
    const holly = await client(nodes[1], 'holly');
    await subscribe(holly.c, 'holly-room');
    await cluster.redis.stop('SIGKILL');
    for (const [method, body] of [
      ['disconnect', { user: 'holly' }],
      ['subscribe', { user: 'holly', channel: 'x' }],
      ['channels', {}],
    ]) {
      const r = await api(nodes[0], method, body);
      assert.equal(r.status, 503, `${method}: ${r.text}`);
      assert.equal(r.body.error.temporary, true);
    }
    assert.equal(holly.events.connecting.length, 0, 'nothing was applied anywhere');
    assert.equal(holly.c.state, 'connected', 'existing connections stay open');

    await cluster.redis.restart();
    // node1 answers surveys again once it listens to the control channels again...
    await until(async () => {
      const r = await api(nodes[0], 'channels', { pattern: 'holly-*' });
      return r.status === 200 && r.body.result.channels['holly-room']?.num_clients === 1;
    }, 'channels to list node1\'s channel after Redis came back');
    // ...and gets commands again.
    const down = once(holly.c, 'connecting', (ctx) => ctx.code === 3011, 'holly told to reconnect');
    // node2 may still be reconnecting (backoff): a 503 means nothing was applied, so ask
    // again until it answers.
    await until(
      async () => (await api(nodes[2], 'disconnect', { user: 'holly' })).status === 200,
      'node2 accepting the disconnect after Redis came back',
    );
    await down;
  });
});
