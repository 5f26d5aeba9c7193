// Centrifugo's bidirectional emulation on two real `switchboard` nodes sharing one private
// Redis, behind a round-robin load balancer without sticky sessions: the unmodified
// centrifuge-js SDK on `http_stream` (and on `sse`) opens its stream on one node and posts
// its commands to `/emulation` wherever the balancer sends them; a node that does not hold
// the session forwards the command to the node that does.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test centrifugo_streams_cluster.test.mjs
// Skipped (not failed) when redis-server is not installed.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Centrifuge } from 'centrifuge';
import { EventSource } from 'eventsource';
import { WebSocket, withTimeout } from './lib/harness.mjs';
import { redisAvailable } from './lib/redis.mjs';
import { startRoundRobinProxy } from './lib/rr_proxy.mjs';
import { startCluster, api, until, once } from './lib/cluster.mjs';

const haveRedis = await redisAvailable();

describe('Centrifugo emulation on two nodes behind a round-robin balancer', { skip: !haveRedis && 'redis-server is not installed' }, () => {
  let cluster;
  let proxy;
  const clients = [];

  before(async () => {
    cluster = await startCluster(2);
    for (const node of cluster.nodes) {
      await until(async () => {
        const r = await api(node, 'info');
        return r.body?.result?.nodes?.length === 2 ? true : undefined;
      }, 'both nodes in the registry');
    }
    proxy = await startRoundRobinProxy(cluster.nodes.map((n) => `127.0.0.1:${n.port}`));
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    await proxy?.close();
    await cluster?.close();
  });

  for (const transport of ['http_stream', 'sse']) {
    it(`${transport}: every command reaches the session's node, whichever node the balancer picks`, async () => {
      const channel = `balanced-${transport}`;
      const c = new Centrifuge([{ transport, endpoint: `${proxy.url}/connection/${transport}` }], {
        emulationEndpoint: `${proxy.url}/emulation`,
        eventsource: EventSource,
        websocket: WebSocket,
      });
      clients.push(c);
      const connected = once(c, 'connected', () => true, 'connected through the balancer');
      c.connect();
      assert.equal((await connected).transport, transport);

      // A WebSocket client straight on the second node.
      const other = new Centrifuge(cluster.nodes[1].wsUrl('/connection/websocket'), { websocket: WebSocket });
      clients.push(other);
      other.connect();
      const otherSub = other.newSubscription(channel);
      const otherGot = [];
      otherSub.on('publication', (p) => otherGot.push(p.data));
      const otherReady = once(otherSub, 'subscribed', () => true, 'other subscribed');
      otherSub.subscribe();
      await otherReady;

      const sub = c.newSubscription(channel);
      const got = [];
      sub.on('publication', (p) => got.push(p.data));
      const ready = once(sub, 'subscribed', () => true, 'subscribed through the balancer');
      sub.subscribe();
      await ready;

      const hitsBefore = proxy.hits.slice();
      const N = 10;
      for (let i = 0; i < N; i++) await sub.publish({ i });
      await withTimeout(
        (async () => { while (otherGot.length < N) await new Promise((r) => setTimeout(r, 20)); })(),
        'every publish through the balancer reaching the other node',
      );
      assert.deepEqual(otherGot.map((d) => d.i), Array.from({ length: N }, (_, i) => i));
      const spread = proxy.hits.map((h, i) => h - hitsBefore[i]);
      assert.ok(spread[0] > 0 && spread[1] > 0, `commands went to both nodes: ${spread}`);

      await otherSub.publish({ back: true });
      await withTimeout(
        (async () => { while (!got.some((d) => d.back)) await new Promise((r) => setTimeout(r, 20)); })(),
        'the stream receiving the other node',
      );
      c.disconnect();
      other.disconnect();
    });
  }
});
