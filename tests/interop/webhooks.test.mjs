// Webhooks in Pusher's format, checked by receivers written from Pusher's documented webhook
// format (Node `http`): every request is verified with the official `pusher` SDK's
// `webhook()` helper (`isValid()`: `X-Pusher-Key` and the HMAC-SHA256 `X-Pusher-Signature`
// of the raw body). Events come from unmodified clients: `pusher-js` (occupied, vacated,
// member_added/removed per user, client events), `centrifuge` and raw `ws` (connect,
// disconnect, a `[[webhooks]]` target filtered by namespace). A receiver that fails twice
// still gets every event (retries). Two nodes on a private redis-server (and on a private Redis
// Cluster): occupied/vacated once each, and a node killed with SIGKILL → member_removed and
// vacated from the survivor.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import PusherServer from 'pusher';
import { Centrifuge } from 'centrifuge';
import { startServer, withTimeout, WebSocket, join } from './lib/harness.mjs';
import { pusherClient as clientOfApp, connected, subscription } from './lib/pusher.mjs';
import { redisAvailable, startRedis } from './lib/redis.mjs';
import { until } from './lib/cluster.mjs';
import { startRedisCluster } from './lib/redis_ha.mjs';

const APP = { appId: 'hook-app', key: 'hook-app-key', secret: 'hook-app-secret' };
const HOOK = { key: 'hook-key', secret: 'hook-secret' };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A webhook receiver: records every request per path as { valid, time_ms, events }, checking
 * it with the `pusher` SDK for the key/secret registered for that path. `failFirst[path]`
 * requests of a path are answered 503 before it starts accepting.
 */
async function receiver(secrets, failFirst = {}) {
  const got = {};
  const failed = {};
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const p = req.url;
      failed[p] = failed[p] || 0;
      if (failed[p] < (failFirst[p] || 0)) {
        failed[p] += 1;
        res.writeHead(503).end('not now');
        return;
      }
      const rawBody = Buffer.concat(chunks).toString('utf8');
      const creds = secrets[p];
      const sdk = new PusherServer({ appId: 'x', key: creds.key, secret: creds.secret });
      const hook = sdk.webhook({ headers: req.headers, rawBody });
      const valid = hook.isValid();
      (got[p] = got[p] || []).push({
        valid,
        time_ms: valid ? hook.getTime().getTime() : null,
        events: valid ? hook.getEvents() : JSON.parse(rawBody).events,
        contentType: req.headers['content-type'],
      });
      res.writeHead(200).end('{}');
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const url = (p) => `http://127.0.0.1:${srv.address().port}${p}`;
  const events = (p) => (got[p] || []).flatMap((r) => r.events);
  return {
    url,
    got,
    failed,
    events,
    /** Events of `p` matching `pred`. */
    matching: (p, pred) => events(p).filter(pred),
    close: () => new Promise((r) => { srv.closeAllConnections?.(); srv.close(r); }),
  };
}

function pusherClient(port, api, presence) {
  return clientOfApp(APP.key, port, {
    authorize: (socketId, channel) => api.authorizeChannel(socketId, channel, presence),
  });
}

/** Subscribes `c` to `name`: resolves with the channel. */
async function subscribed(c, name) {
  return (await subscription(c, name)).ch;
}

const is = (name, channel, extra = {}) => (e) =>
  e.name === name && e.channel === channel && Object.entries(extra).every(([k, v]) => e[k] === v);

function configFile(lines) {
  const dir = mkdtempSync(path.join(tmpdir(), 'sb-webhooks-'));
  const file = path.join(dir, 'config.toml');
  writeFileSync(file, lines.join('\n') + '\n');
  return file;
}

describe('webhooks on one node', () => {
  let server;
  let hooks;
  let api;
  const closers = [];

  before(async () => {
    hooks = await receiver(
      {
        '/pusher': { key: APP.key, secret: APP.secret },
        '/all': HOOK,
        '/flaky': HOOK,
      },
      { '/flaky': 2 },
    );
    const file = configFile([
      'allow_anonymous = true',
      '[channel.default]',
      'allow_subscribe_for_anonymous = true',
      '[channel.namespaces.chat]',
      'allow_subscribe_for_anonymous = true',
      '[[webhooks]]',
      `url = "${hooks.url('/all')}"`,
      `secret = "${HOOK.secret}"`,
      `key = "${HOOK.key}"`,
      'event_types = ["channel_occupied", "channel_vacated", "connect", "disconnect"]',
      'namespaces = ["chat"]',
      '[[webhooks]]',
      `url = "${hooks.url('/flaky')}"`,
      `secret = "${HOOK.secret}"`,
      `key = "${HOOK.key}"`,
      'event_types = ["channel_occupied", "channel_vacated"]',
      '[[pusher.apps]]',
      `id = "${APP.appId}"`,
      `key = "${APP.key}"`,
      `secret = "${APP.secret}"`,
      '[[pusher.apps.webhooks]]',
      `url = "${hooks.url('/pusher')}"`,
      'event_types = ["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event", "cache_miss"]',
    ]);
    server = await startServer(['--config', file, '--webhook-timeout', '500ms']);
    api = new PusherServer({ ...APP, host: '127.0.0.1', port: String(server.port), useTLS: false });
  });

  after(async () => {
    for (const c of closers) c();
    await server?.stop();
    await hooks?.close();
  });

  it('pusher-js: occupied, member_added per user, client_event, member_removed, vacated — signed', async () => {
    const ch = 'presence-room';
    const alice1 = pusherClient(server.port, api, { user_id: 'alice', user_info: { n: 1 } });
    const alice2 = pusherClient(server.port, api, { user_id: 'alice', user_info: { n: 2 } });
    const bob = pusherClient(server.port, api, { user_id: 'bob' });
    closers.push(() => alice1.disconnect(), () => alice2.disconnect(), () => bob.disconnect());
    await Promise.all([connected(alice1), connected(alice2), connected(bob)]);
    await subscribed(alice1, ch);
    await subscribed(alice2, ch);
    const bobCh = await subscribed(bob, ch);
    await until(() => hooks.matching('/pusher', is('member_added', ch, { user_id: 'bob' })).length === 1, 'member_added bob');

    assert.equal(bobCh.trigger('client-typing', { who: 'bob' }), true);
    const [ce] = await until(() => {
      const m = hooks.matching('/pusher', is('client_event', ch));
      return m.length ? m : undefined;
    }, 'client_event');
    assert.equal(ce.event, 'client-typing');
    assert.deepEqual(JSON.parse(ce.data), { who: 'bob' });
    assert.equal(ce.socket_id, bob.connection.socket_id);
    assert.equal(ce.user_id, 'bob');

    // One of alice's two connections leaves: alice is still there.
    alice2.unsubscribe(ch);
    bob.unsubscribe(ch);
    await until(() => hooks.matching('/pusher', is('member_removed', ch, { user_id: 'bob' })).length === 1, 'member_removed bob');
    alice1.unsubscribe(ch);
    await until(() => hooks.matching('/pusher', is('channel_vacated', ch)).length === 1, 'channel_vacated');

    assert.equal(hooks.matching('/pusher', is('channel_occupied', ch)).length, 1);
    assert.equal(hooks.matching('/pusher', is('member_added', ch, { user_id: 'alice' })).length, 1, 'one member_added per user');
    assert.equal(hooks.matching('/pusher', is('member_removed', ch, { user_id: 'alice' })).length, 1);
    const requests = hooks.got['/pusher'];
    assert.ok(requests.length >= 1);
    for (const r of requests) {
      assert.equal(r.valid, true, 'every request passes the pusher SDK check');
      assert.equal(r.contentType, 'application/json');
      assert.ok(Math.abs(r.time_ms - Date.now()) < 60_000, 'time_ms is now');
    }
    // Order within the app's stream: occupied before member_added before vacated.
    const names = hooks.events('/pusher').filter((e) => e.channel === ch).map((e) => e.name);
    assert.ok(names.indexOf('channel_occupied') < names.indexOf('member_added'));
    assert.equal(names[names.length - 1], 'channel_vacated');
    // The `chat` namespace filter keeps Pusher's default-namespace channels away from /all.
    assert.equal(hooks.matching('/all', (e) => e.channel === ch).length, 0);
  });

  it('a cache channel with nothing cached: pusher:cache_miss to the client and one cache_miss webhook; none once an event is cached', async () => {
    const ch = `cache-news-${Date.now()}`;
    const first = pusherClient(server.port, api);
    closers.push(() => first.disconnect());
    await connected(first);
    const firstCh = first.subscribe(ch);
    await withTimeout(new Promise((r) => firstCh.bind('pusher:cache_miss', r)), 'pusher:cache_miss at the client');
    const [miss] = await until(() => {
      const m = hooks.matching('/pusher', is('cache_miss', ch));
      return m.length ? m : undefined;
    }, 'cache_miss webhook');
    assert.equal(miss.channel, ch);

    await api.trigger(ch, 'headline', { text: 'cached' });
    const second = pusherClient(server.port, api);
    closers.push(() => second.disconnect());
    await connected(second);
    const secondCh = second.subscribe(ch);
    let missed = false;
    secondCh.bind('pusher:cache_miss', () => { missed = true; });
    const replayed = await withTimeout(new Promise((r) => secondCh.bind('headline', r)), 'cached event replayed');
    assert.deepEqual(replayed, { text: 'cached' });
    assert.equal(missed, false, 'no cache miss once an event is cached');
    // Give a wrong second webhook time to arrive before counting.
    await sleep(1000);
    assert.equal(hooks.matching('/pusher', is('cache_miss', ch)).length, 1, 'one cache_miss webhook');
    for (const r of hooks.got['/pusher']) assert.equal(r.valid, true);
    first.disconnect();
    second.disconnect();
  });

  it('[[webhooks]]: a centrifuge channel occupied and vacated; connect/disconnect of centrifuge and raw ws', async () => {
    const c = new Centrifuge(server.wsUrl('/connection/websocket'), { websocket: WebSocket });
    closers.push(() => c.disconnect());
    const connectedCtx = withTimeout(new Promise((r) => c.on('connected', r)), 'centrifuge connected');
    c.connect();
    const { client } = await connectedCtx;
    const sub = c.newSubscription('chat:room');
    const subbed = withTimeout(new Promise((r) => sub.on('subscribed', r)), 'subscribed');
    sub.subscribe();
    await subbed;
    await until(() => hooks.matching('/all', is('channel_occupied', 'chat:room')).length === 1, 'occupied chat:room');
    const connect = hooks.matching('/all', (e) => e.name === 'connect' && e.client_id === client);
    assert.equal(connect.length, 1);
    assert.match(connect[0].protocol, /^centrifugo/);
    c.disconnect();
    await until(() => hooks.matching('/all', is('channel_vacated', 'chat:room')).length === 1, 'vacated chat:room');
    await until(() => hooks.matching('/all', (e) => e.name === 'disconnect' && e.client_id === client).length === 1, 'disconnect');

    const before = hooks.matching('/all', (e) => e.name === 'connect' && e.protocol === 'raw').length;
    const inbox = await join(server.wsUrl('/lobby'));
    await until(() => hooks.matching('/all', (e) => e.name === 'connect' && e.protocol === 'raw').length === before + 1, 'raw connect');
    inbox.ws.close();
    await until(() => hooks.matching('/all', (e) => e.name === 'disconnect' && e.protocol === 'raw').length >= 1, 'raw disconnect');
    // `lobby` is in the default namespace, which /all does not take.
    assert.equal(hooks.matching('/all', (e) => e.channel === 'lobby').length, 0);
    for (const r of hooks.got['/all']) assert.equal(r.valid, true);
  });

  it('a receiver that fails twice still gets every event, in order (retries)', async () => {
    for (const ch of ['chat:room', 'lobby']) {
      await until(() => hooks.matching('/flaky', is('channel_vacated', ch)).length === 1, `flaky got ${ch} vacated`);
    }
    assert.equal(hooks.failed['/flaky'], 2, 'two requests were refused');
    const names = hooks.events('/flaky').map((e) => `${e.name} ${e.channel}`);
    // Everything the all-events receivers saw, nothing lost or doubled.
    for (const ch of ['presence-room', 'chat:room', 'lobby']) {
      assert.deepEqual(names.filter((n) => n.endsWith(` ${ch}`)), [`channel_occupied ${ch}`, `channel_vacated ${ch}`], ch);
    }
    for (const r of hooks.got['/flaky']) assert.equal(r.valid, true);
    const metrics = await (await fetch(`${server.httpUrl}/metrics`)).text();
    const retried = Number(/^switchboard_webhook_retried_total (\d+)/m.exec(metrics)?.[1]);
    assert.ok(retried >= 2, `switchboard_webhook_retried_total ${retried}`);
    assert.match(metrics, /^switchboard_webhook_duration_seconds_count \d+/m);
  });
});

const haveRedis = await redisAvailable();

function twoNodes(title, startBroker) {
  describe(title, { skip: !haveRedis && 'redis-server is not installed' }, () => {
    let redis;
    let hooks;
    let nodes = [];
    let api;
    const clients = [];

    before(async () => {
      redis = await startBroker();
      hooks = await receiver({ '/pusher': { key: APP.key, secret: APP.secret } });
      const file = configFile([
        '[[pusher.apps]]',
        `id = "${APP.appId}"`,
        `key = "${APP.key}"`,
        `secret = "${APP.secret}"`,
        '[[pusher.apps.webhooks]]',
        `url = "${hooks.url('/pusher')}"`,
        'event_types = ["channel_occupied", "channel_vacated", "member_added", "member_removed"]',
      ]);
      for (let i = 0; i < 2; i++) {
        nodes.push(await startServer(['--config', file, '--broker', redis.url, '--broker-lease', '1.5', '--node-name', `n${i}`]));
      }
      api = new PusherServer({ ...APP, host: '127.0.0.1', port: String(nodes[0].port), useTLS: false });
    });

    after(async () => {
      for (const c of clients) c.disconnect();
      for (const n of nodes) await n.stop('SIGKILL');
      await redis?.close();
      await hooks?.close();
    });

    async function member(node, user, channel) {
      const c = pusherClient(node.port, api, { user_id: user });
      clients.push(c);
      await connected(c);
      await subscribed(c, channel);
      return c;
    }

    it('occupied, vacated and each member event are sent once for the whole cluster', async () => {
      const ch = 'presence-both';
      const a0 = await member(nodes[0], 'carol', ch);
      const a1 = await member(nodes[1], 'carol', ch);
      const d1 = await member(nodes[1], 'dave', ch);
      await until(() => hooks.matching('/pusher', is('member_added', ch, { user_id: 'dave' })).length === 1, 'dave added');
      a0.unsubscribe(ch);
      await sleep(300);
      assert.equal(hooks.matching('/pusher', is('member_removed', ch)).length, 0, 'carol is still on the other node');
      a1.unsubscribe(ch);
      d1.unsubscribe(ch);
      await until(() => hooks.matching('/pusher', is('channel_vacated', ch)).length === 1, 'vacated');
      await sleep(300);
      assert.equal(hooks.matching('/pusher', is('channel_occupied', ch)).length, 1);
      assert.equal(hooks.matching('/pusher', is('channel_vacated', ch)).length, 1);
      assert.equal(hooks.matching('/pusher', is('member_added', ch, { user_id: 'carol' })).length, 1);
      assert.equal(hooks.matching('/pusher', is('member_removed', ch, { user_id: 'carol' })).length, 1);
      assert.equal(hooks.matching('/pusher', is('member_removed', ch, { user_id: 'dave' })).length, 1);
      for (const r of hooks.got['/pusher']) assert.equal(r.valid, true);
      if (redis.cli) {
        // Nothing is left behind in Redis once the channel is empty everywhere.
        await until(() => redis.cli('KEYS', 'sb:node:*:oc').filter(Boolean).length === 0, 'occupancy index emptied');
        assert.deepEqual(redis.cli('KEYS', `sb:{${ch}}:[oun]*`).filter(Boolean), []);
      }
    });

    it('after Redis restarts empty, leaving still sends member_removed and channel_vacated once', async (t) => {
      if (!redis.restart) return t.skip('this broker cannot be restarted by the test');
      const ch = 'presence-restart';
      const c = await member(nodes[0], 'hal', ch);
      await until(() => hooks.matching('/pusher', is('member_added', ch, { user_id: 'hal' })).length === 1, 'hal added');
      await redis.stop();
      await redis.restart();
      // Both nodes reconnect and write their entries again.
      await until(async () => {
        for (const n of nodes) {
          const h = await (await fetch(`${n.httpUrl}/health`)).json();
          if (!h.broker.connected) return false;
        }
        return redis.cli('EXISTS', `sb:{${ch}}:o`)[0] === '1';
      }, 'occupancy written again');
      c.unsubscribe(ch);
      await until(() => hooks.matching('/pusher', is('channel_vacated', ch)).length === 1, 'vacated after the restart');
      assert.equal(hooks.matching('/pusher', is('member_removed', ch, { user_id: 'hal' })).length, 1);
      assert.equal(hooks.matching('/pusher', is('channel_occupied', ch)).length, 1, 'the rewrite sends nothing');
    });

    it('a node killed with SIGKILL: the survivor sends member_removed and channel_vacated', async () => {
      const ch = 'presence-kill';
      const frank = await member(nodes[0], 'frank', ch);
      await member(nodes[1], 'erin', ch);
      await until(() => hooks.matching('/pusher', is('member_added', ch, { user_id: 'erin' })).length === 1, 'erin added');
      await nodes[1].stop('SIGKILL');
      await until(() => hooks.matching('/pusher', is('member_removed', ch, { user_id: 'erin' })).length === 1, 'erin removed after the lease', 10_000);
      assert.equal(hooks.matching('/pusher', is('channel_vacated', ch)).length, 0, 'frank is still there');
      frank.unsubscribe(ch);
      await until(() => hooks.matching('/pusher', is('channel_vacated', ch)).length === 1, 'vacated');
      assert.equal(hooks.matching('/pusher', is('channel_occupied', ch)).length, 1);

      // Only the killed node's members: occupied on it alone, vacated by the survivor.
      const lone = 'presence-lone';
      const n2 = await startServer(['--config', nodes[0].proc.spawnargs[nodes[0].proc.spawnargs.indexOf('--config') + 1], '--broker', redis.url, '--broker-lease', '1.5', '--node-name', 'n2']);
      nodes.push(n2);
      await member(n2, 'gina', lone);
      await until(() => hooks.matching('/pusher', is('channel_occupied', lone)).length === 1, 'lone occupied');
      await n2.stop('SIGKILL');
      await until(() => hooks.matching('/pusher', is('channel_vacated', lone)).length === 1, 'lone vacated by the survivor', 10_000);
      await until(() => hooks.matching('/pusher', is('member_removed', lone, { user_id: 'gina' })).length === 1, 'gina removed');
    });
  });
}

twoNodes('webhooks from two nodes on one Redis', () => startRedis());

// The same on a Redis Cluster: every key of a channel has its hash tag, so each script runs on
// the channel's master.
twoNodes('webhooks from two nodes on a Redis Cluster', async () => {
  const rc = await startRedisCluster({ masters: 3, replicas: 0, nodeTimeoutMs: 1000 });
  return { url: rc.url(), close: () => rc.close() };
});
