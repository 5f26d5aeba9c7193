// Faults in a three-node cluster on one private Redis: a node killed with SIGKILL while
// publications flow (its clients move to the other nodes and recover everything, its
// presence entries vanish within the lease), the nodes' pub/sub connections dropped
// mid-run (what they missed is filled from history: raw clients get everything once, in
// order), and Redis restarted mid-run (no crash, a clear temporary error to publishers
// during the outage, subscriptions restored after, every publication acknowledged after
// Redis came back empty delivered once, in order).

import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from './lib/harness.mjs';
import { redisAvailable } from './lib/redis.mjs';
import {
  startCluster,
  api,
  health,
  until,
  once,
  connect,
  subscribe,
  dropPubSub,
  rawJson,
} from './lib/cluster.mjs';

const haveRedis = await redisAvailable();
const skip = !haveRedis && 'redis-server is not installed';

// A short lease so the dead node's presence goes within a couple of seconds.
const LEASE = '1.5';

describe('a node killed with SIGKILL', { skip }, () => {
  let cluster;
  const clients = [];
  after(async () => {
    for (const c of clients) c.disconnect();
    await cluster?.close();
  });

  it('its clients recover every publication on the other nodes, and its presence vanishes', async () => {
    cluster = await startCluster(3, ['--broker-lease', LEASE]);
    const [n0, n1, n2] = cluster.nodes;
    const channel = 'kill';
    const M = 400;

    const observer = await connect(n0);
    clients.push(observer.c);
    const watch = await subscribe(observer.c, channel);
    const victim = await connect(n2);
    clients.push(victim.c);
    const v = await subscribe(victim.c, channel);
    assert.equal(v.ctx.recoverable, true);
    const presence = await api(n1, 'presence', { channel });
    assert.ok(victim.client in presence.body.result.presence, 'the victim is present before');

    const left = once(watch.sub, 'leave', (ctx) => ctx.info.client === victim.client, 'the leave event of the dead node');
    let published = 0;
    const publisher = (async () => {
      for (let k = 0; k < M; k++) {
        const r = await api(n0, 'publish', { channel, data: { i: k } });
        assert.equal(r.status, 200, r.text);
        published++;
      }
    })();

    await v.until((got) => got.length >= 60, 'sixty publications on the victim node');
    await n2.stop('SIGKILL');
    // The SDK would keep retrying the dead address; this client moves to another node
    // with the position it reached, as an application with a list of nodes would.
    victim.c.disconnect();
    const seen = v.got.map((p) => p.data.i);
    const since = { offset: v.got.at(-1).offset, epoch: v.ctx.streamPosition.epoch };
    assert.ok(published < M, 'the node died while publications were still flowing');

    const moved = await connect(n1);
    clients.push(moved.c);
    const r = await subscribe(moved.c, channel, { since });
    assert.equal(r.ctx.recovered, true);
    await publisher;
    await r.until((got) => got.some((p) => p.data.i === M - 1), 'the last publication after moving');
    const all = seen.concat(r.got.map((p) => p.data.i));
    const lost = M - new Set(all).size;
    const duplicates = all.length - new Set(all).size;
    assert.equal(lost, 0, 'lost = 0');
    assert.equal(duplicates, 0, 'duplicates = 0');
    assert.deepEqual(all, [...Array(M).keys()], 'in order');

    // Presence: bounded by the lease (1.5 s) plus a renewal period; waited for, not timed.
    await left;
    for (const node of [n0, n1]) {
      await until(async () => {
        const p = await api(node, 'presence', { channel });
        return !(victim.client in p.body.result.presence);
      }, `the dead node's presence entry gone on ${node.httpUrl}`);
    }
    const info = await until(async () => {
      const i = await api(n0, 'info');
      return i.body.result.nodes.length === 2 ? i.body.result.nodes : undefined;
    }, 'two live nodes in the info API');
    assert.deepEqual(info.map((n) => n.name).sort(), ['node0', 'node1']);
  });
});

describe('pub/sub connections dropped mid-run', { skip }, () => {
  let cluster;
  const clients = [];
  const sockets = [];
  after(async () => {
    for (const c of clients) c.disconnect();
    for (const s of sockets) s.ws.close();
    await cluster?.close();
  });

  it('what the nodes missed is filled from history: every client gets every publication once, in order', async (t) => {
    // The node's gap log lines (info) tell the test when a drop made a gap; nothing else is
    // logged below `error`, so the kept tail of the log holds them all.
    cluster = await startCluster(2, [], { SWITCHBOARD_LOG_LEVEL: 'error,switchboard_core::node=info' });
    const [n0, n1] = cluster.nodes;
    // The default namespace keeps history (see CONFIG): gaps can be filled from it.
    const channel = 'blips';
    // Gaps the nodes noticed (filled or not), as their logs tell. A drop only makes a gap
    // when a publication is sent while a node re-subscribes, so drops go on (a bounded
    // number of times) until each node has noticed some.
    const GAPS = 2;
    const noticed = (node) =>
      (node.stderr().match(/gap filled from history|subscribers may have missed publications/g) ?? []).length;

    const raws = [];
    for (const node of [n0, n0, n1, n1]) {
      const raw = await join(node.wsUrl(`/${channel}`));
      sockets.push(raw);
      raws.push(raw);
    }
    const cf = await connect(n1);
    clients.push(cf.c);
    const s = await subscribe(cf.c, channel);
    assert.equal(s.ctx.positioned, true);
    const told = [];
    s.sub.on('subscribing', (ctx) => told.push(ctx.code));

    // One publisher, steadily, one publication after the other (so the order is known).
    let M = 0;
    let stop = false;
    const publisher = (async () => {
      while (!stop) {
        const r = await api(n0, 'publish', { channel, data: { i: M } });
        assert.equal(r.status, 200, r.text);
        M++;
      }
    })();
    const flowing = (n) => {
      const from = M;
      return until(() => M >= from + n, `${n} more publications`);
    };
    await flowing(50);
    let drops = 0;
    while (drops < 100 && (noticed(n0) < GAPS || noticed(n1) < GAPS)) {
      // Both nodes' subscription connections go while the publisher keeps going.
      assert.ok((await dropPubSub(cluster.redis)) >= 2, "both nodes' pub/sub connections dropped");
      drops++;
      await flowing(20);
    }
    await flowing(50);
    stop = true;
    await publisher;
    t.diagnostic(`${drops} drops, ${M} publications, gaps noticed: ${noticed(n0)} + ${noticed(n1)}`);
    assert.ok(noticed(n0) >= GAPS && noticed(n1) >= GAPS, `gaps on both nodes after ${drops} drops`);

    const want = [...Array(M).keys()];
    const check = (name, got) => {
      const lost = M - new Set(got).size;
      const duplicates = got.length - new Set(got).size;
      assert.equal(lost, 0, `${name}: lost = 0`);
      assert.equal(duplicates, 0, `${name}: duplicates = 0`);
      assert.deepEqual(got, want, `${name}: in order`);
    };
    for (const [j, raw] of raws.entries()) {
      const got = await until(() => {
        const g = rawJson(raw).map((d) => d.i);
        return g.includes(M - 1) ? g : undefined;
      }, `the last publication on raw client ${j}`);
      check(`raw client ${j}`, got);
    }
    await s.until((got) => got.some((p) => p.data?.i === M - 1), 'the last publication (centrifuge)');
    check(
      'centrifuge client',
      // (The raw clients' readiness probes are plain-text publications: left out.)
      s.got.map((p) => p.data).filter((d) => d && typeof d === 'object').map((d) => d.i),
    );
    assert.deepEqual(told, [], 'filled: the centrifuge client was never told to resubscribe');
  });
});

describe('Redis restarted mid-run', { skip }, () => {
  let cluster;
  const clients = [];
  const sockets = [];
  after(async () => {
    for (const c of clients) c.disconnect();
    for (const s of sockets) s.ws.close();
    await cluster?.close();
  });

  it('publishers get a clear temporary error, nothing crashes, subscriptions come back and clients learn of the gap', async () => {
    cluster = await startCluster(2, ['--broker-lease', LEASE]);
    const [n0, n1] = cluster.nodes;
    const channel = 'outage';

    const cf = await connect(n0);
    clients.push(cf.c);
    const s = await subscribe(cf.c, channel);
    assert.equal(s.ctx.positioned, true);
    const raw = await join(n1.wsUrl(`/${channel}`));
    sockets.push(raw);

    const before = await api(n1, 'publish', { channel, data: { step: 'before' } });
    assert.equal(before.status, 200);
    await s.until((got) => got.some((p) => p.data?.step === 'before'), 'the publication before the outage');
    assert.equal(JSON.parse((await raw.next('before, raw')).text).step, 'before');

    const resubscribing = once(s.sub, 'subscribing', (ctx) => ctx.code === 2500, 'an unsubscribe push with code 2500');
    const resubscribed = resubscribing.then(() => once(s.sub, 'subscribed', () => true, 'subscribed again'));
    await cluster.redis.stop('SIGKILL');

    // The API answers 503 with a temporary error instead of dropping the message.
    const refused = await until(async () => {
      const r = await api(n0, 'publish', { channel, data: { step: 'during' } });
      return r.status === 503 ? r : undefined;
    }, 'a 503 from the API while Redis is down');
    assert.equal(refused.body.error.temporary, true);
    assert.match(refused.body.error.message, /broker unavailable/);
    // The SDK's publish is refused with a temporary error too.
    const err = await s.sub.publish({ step: 'during-sdk' }).then(
      () => null,
      (e) => e,
    );
    assert.ok(err, 'publishing through the SDK fails during the outage');
    assert.equal(err.code, 100);
    assert.equal(err.temporary, true);
    for (const node of [n0, n1]) {
      const h = await until(async () => {
        const h = await health(node);
        return h.broker.connected === false ? h : undefined;
      }, 'health reporting the broker down');
      assert.equal(h.status, 'degraded');
    }

    await cluster.redis.restart();
    for (const node of [n0, n1]) {
      await until(async () => (await health(node)).broker.connected === true, 'the broker connected again');
    }

    // Redis came back empty; the nodes wrote their members' presence entries again before
    // reporting themselves connected.
    const p = await api(n1, 'presence', { channel });
    assert.equal(p.status, 200);
    assert.ok(cf.client in p.body.result.presence, 'presence restored after the outage');

    const afterRes = await until(async () => {
      const r = await api(n1, 'publish', { channel, data: { step: 'after' } });
      return r.status === 200 ? r : undefined;
    }, 'publishing again after the outage');
    assert.equal(afterRes.body.result.offset, 1, 'a new stream: Redis lost the old one');
    // The stream went on in a new epoch: the positioned subscriber is told to resubscribe
    // (2500) and recovers the new stream from its start.
    await resubscribing;
    const again = await resubscribed;
    assert.equal(again.wasRecovering, true);
    assert.equal(again.recovered, true, 'the new stream recovered from its start');
    assert.notEqual(again.streamPosition.epoch, s.ctx.streamPosition.epoch, 'a new epoch');
    await s.until((got) => got.some((p) => p.data?.step === 'after'), 'the publication after the outage (centrifuge)');
    for (;;) {
      const m = JSON.parse((await raw.next('after, raw')).text);
      if (m.step === 'after') break;
    }
    assert.deepEqual(
      // (The raw client's readiness probe is a plain-text publication: left out.)
      s.got.map((p) => p.data).filter((d) => d && typeof d === 'object').map((d) => d.step),
      ['before', 'after'],
      'nothing published during the outage was delivered, nothing twice',
    );
    for (const node of [n0, n1]) assert.equal(node.proc.exitCode, null, 'the node is still running');
  });
});

describe('one node, Redis restarted empty while publishing', { skip }, () => {
  let cluster;
  const clients = [];
  const sockets = [];
  after(async () => {
    for (const c of clients) c.disconnect();
    for (const s of sockets) s.ws.close();
    await cluster?.close();
  });

  it('every acknowledged publication reaches the raw and the centrifuge client, once and in order', async () => {
    cluster = await startCluster(1);
    const [n0] = cluster.nodes;
    const channel = 'restart-empty';
    const raw = await join(n0.wsUrl(`/${channel}`));
    sockets.push(raw);
    const cf = await connect(n0);
    clients.push(cf.c);
    const s = await subscribe(cf.c, channel);
    assert.equal(s.ctx.positioned, true);

    const acked = [];
    let i = 0;
    const publish = async () => {
      const k = i++;
      const r = await api(n0, 'publish', { channel, data: { i: k } });
      if (r.status === 200) acked.push(k);
      else assert.equal(r.status, 503, r.text);
      return r.status;
    };
    for (let k = 0; k < 5; k++) assert.equal(await publish(), 200);

    await cluster.redis.stop('SIGKILL');
    await new Promise((r) => setTimeout(r, 1000));
    await cluster.redis.restart();
    // Publish for 1.5 s from the moment Redis is back: what the API acknowledges must arrive.
    const backAt = acked.length;
    const until15 = Date.now() + 1500;
    while (Date.now() < until15) {
      await publish();
      await new Promise((r) => setTimeout(r, 10));
    }
    await until(async () => (await publish()) === 200, 'a publication acknowledged after Redis came back');
    assert.ok(acked.length > backAt, 'publications were acknowledged after Redis came back');
    for (let k = 0; k < 5; k++) assert.equal(await publish(), 200);

    const rawGot = () => rawJson(raw).filter((d) => d && typeof d === 'object').map((d) => d.i);
    const cfGot = () => s.got.map((p) => p.data).filter((d) => d && typeof d === 'object').map((d) => d.i);
    const missing = (got) => acked.filter((k) => !got.includes(k));
    await until(() => missing(rawGot()).length === 0, 'every acknowledged publication at the raw client', 10_000).catch(
      () => assert.fail(`raw client lost ${missing(rawGot()).length} of ${acked.length} acknowledged publications`),
    );
    await until(() => missing(cfGot()).length === 0, 'every acknowledged publication at the centrifuge client', 10_000).catch(
      () => assert.fail(`centrifuge client lost ${missing(cfGot()).length} of ${acked.length} acknowledged publications`),
    );
    for (const got of [rawGot(), cfGot()]) {
      assert.equal(got.length, new Set(got).size, 'nothing twice');
      assert.deepEqual(got, [...got].sort((a, b) => a - b), 'in order');
    }
  });
});
