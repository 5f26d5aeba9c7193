// Pusher on two real `switchboard` nodes sharing one private redis-server: unmodified
// `pusher-js` clients on different nodes see one presence list, events triggered with the
// `pusher` SDK on either node reach everyone, channel counts cover both nodes,
// `terminateUserConnections` closes a user's connections on every node, and a node killed
// with SIGKILL has its members removed (`member_removed`) on the other within the lease.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test pusher_cluster.test.mjs
// Skipped (not failed) when redis-server is not installed.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import PusherServer from 'pusher';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServer, withTimeout } from './lib/harness.mjs';
import { pusherClient, connected, subscription as subscribed, nextEvent as next } from './lib/pusher.mjs';
import { redisAvailable, startRedis } from './lib/redis.mjs';
import { until } from './lib/cluster.mjs';

const haveRedis = await redisAvailable();
const APP = { appId: 'app-id', key: 'app-key', secret: 'app-secret' };
// A short lease, so a dead node's members go within a few seconds.
const LEASE = '1.5';

describe('pusher on two nodes with Redis', { skip: !haveRedis && 'redis-server is not installed' }, () => {
  let redis;
  let dir;
  const nodes = [];
  const sdks = [];
  const clients = [];

  function client(node, { presence, user } = {}) {
    const sdk = sdks[nodes.indexOf(node)];
    const c = pusherClient(APP.key, node.port, {
      authorize: (socketId, channel) => sdk.authorizeChannel(socketId, channel, presence),
      authenticate: (socketId) => sdk.authenticateUser(socketId, user ?? { id: 'nobody' }),
    });
    clients.push(c);
    return c;
  }

  async function signedIn(c) {
    await connected(c);
    c.signin();
    await withTimeout(c.user.signinDonePromise, 'signed in');
    assert.ok(c.user.user_data, 'sign-in succeeded');
    // The user channel's subscription is confirmed before events are sent to it.
    await withTimeout((async () => {
      while (!c.user.serverToUserChannel?.subscribed) await new Promise((r) => setTimeout(r, 20));
    })(), 'the server-to-user channel subscribed');
  }

  function leftConnected(c) {
    return withTimeout(new Promise((resolve) => {
      c.connection.bind('state_change', (s) => { if (s.current !== 'connected') resolve(s.current); });
    }), 'connection terminated');
  }

  before(async () => {
    redis = await startRedis();
    dir = mkdtempSync(path.join(tmpdir(), 'sb-pusher-cluster-'));
    const file = path.join(dir, 'config.toml');
    writeFileSync(file, [
      '[[pusher.apps]]',
      `id = "${APP.appId}"`,
      `key = "${APP.key}"`,
      `secret = "${APP.secret}"`,
      '',
    ].join('\n'));
    for (let i = 0; i < 2; i++) {
      const node = await startServer(['--config', file, '--broker', redis.url, '--node-name', `node${i}`, '--broker-lease', LEASE]);
      nodes.push(node);
      sdks.push(new PusherServer({ ...APP, host: '127.0.0.1', port: String(node.port), useTLS: false }));
    }
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    for (const n of nodes) await n.stop('SIGKILL');
    await redis?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('one presence list across nodes; events and counts cover both', async () => {
    const alice = client(nodes[0], { presence: { user_id: 'alice', user_info: { name: 'Alice' } } });
    await connected(alice);
    const { ch: a } = await subscribed(alice, 'presence-hall');
    const added = next(a, 'pusher:member_added');
    const bob = client(nodes[1], { presence: { user_id: 'bob', user_info: { name: 'Bob' } } });
    await connected(bob);
    const { ch: b, data } = await subscribed(bob, 'presence-hall');
    assert.equal(data.count, 2, 'bob on node1 sees alice on node0');
    assert.deepEqual(data.members.alice, { name: 'Alice' });
    assert.equal((await added).data.id, 'bob', 'alice on node0 sees bob join on node1');

    for (const sdk of sdks) {
      const users = await (await sdk.get({ path: '/channels/presence-hall/users' })).json();
      assert.deepEqual(users.users.map((u) => u.id).sort(), ['alice', 'bob']);
      const info = await (await sdk.get({ path: '/channels/presence-hall', params: { info: 'user_count,subscription_count' } })).json();
      assert.equal(info.user_count, 2);
      assert.equal(info.subscription_count, 2);
      const list = await (await sdk.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })).json();
      assert.equal(list.channels['presence-hall']?.user_count, 2, JSON.stringify(list));
    }

    // A public channel with one subscriber on each node: counted on both.
    const { ch: pa } = await subscribed(alice, 'ticker');
    const { ch: pb } = await subscribed(bob, 'ticker');
    for (const sdk of sdks) {
      const one = await (await sdk.get({ path: '/channels/ticker', params: { info: 'subscription_count' } })).json();
      assert.equal(one.subscription_count, 2, JSON.stringify(one));
      const all = await (await sdk.get({ path: '/channels', params: { info: 'subscription_count' } })).json();
      assert.equal(all.channels.ticker?.subscription_count, 2, JSON.stringify(all));
    }
    const ga = next(pa, 'tick');
    const gb = next(pb, 'tick');
    await sdks[1].trigger('ticker', 'tick', { n: 1 });
    assert.deepEqual((await ga).data, { n: 1 });
    assert.deepEqual((await gb).data, { n: 1 });

    // A client event from node1 reaches node0 with its user id.
    const whisper = next(a, 'client-wave');
    b.trigger('client-wave', { hi: true });
    const w = await whisper;
    assert.deepEqual(w.data, { hi: true });
    assert.equal(w.meta.user_id, 'bob');
  });

  it('sendToUser and terminateUserConnections reach the user on every node', async () => {
    const here = client(nodes[0], { user: { id: 'dora' } });
    const there = client(nodes[1], { user: { id: 'dora' } });
    await Promise.all([signedIn(here), signedIn(there)]);
    const got = [here, there].map((c) => new Promise((resolve) => c.user.bind('notice', resolve)));
    await sdks[0].sendToUser('dora', 'notice', { text: 'hello dora' });
    for (const g of got) assert.deepEqual(await withTimeout(g, 'the user event'), { text: 'hello dora' });

    const bystander = client(nodes[1], { user: { id: 'eve' } });
    await signedIn(bystander);
    const closed = [here, there].map(leftConnected);
    const res = await sdks[0].terminateUserConnections('dora');
    assert.equal(res.status, 200);
    await Promise.all(closed);
    assert.equal(bystander.connection.state, 'connected', 'another user is untouched');
  });

  it('a node killed with SIGKILL: its members are removed on the other node within the lease', async () => {
    const watcher = client(nodes[0], { presence: { user_id: 'watcher' } });
    await connected(watcher);
    const { ch: w } = await subscribed(watcher, 'presence-fragile');
    const joined = next(w, 'pusher:member_added', (m) => m.id === 'victim');
    const victim = client(nodes[1], { presence: { user_id: 'victim' } });
    await connected(victim);
    await subscribed(victim, 'presence-fragile');
    await joined;

    const removed = next(w, 'pusher:member_removed', (m) => m.id === 'victim');
    await nodes[1].stop('SIGKILL');
    // pusher-js would keep retrying the dead address.
    victim.disconnect();
    assert.equal((await removed).data.id, 'victim');
    await until(async () => {
      const users = await (await sdks[0].get({ path: '/channels/presence-fragile/users' })).json();
      return users.users.length === 1 ? true : undefined;
    }, 'the dead node\'s member gone from /users');
    assert.equal(w.members.count, 1);
  });
});
