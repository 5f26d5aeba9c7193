// The Redis broker on a Redis Cluster: a private 3-master + 3-replica cluster
// (`redis-server --cluster-enabled yes` ×6, `redis-cli --cluster create … --cluster-replicas
// 1`, cluster-node-timeout 1000 ms) on free loopback ports, three `switchboard` nodes on
// `redis+cluster://…`.
//
// 1. Channels chosen so that every master owns two: each master carries the sharded pub/sub
//    of its channels (`PUBSUB SHARDNUMSUB` on it counts the three listening nodes); every
//    node publishes to every channel, and the API too; every client (centrifuge-js and raw
//    `ws`, on every node) gets every publication once, in order per publisher; a client
//    recovers on another node what it missed; presence is the same from every node.
// 2. Failover: two publishers (HTTP API, ~100/s each, through two nodes) on a channel, the
//    master owning its slot killed with SIGKILL; after its replica is promoted nothing
//    acknowledged is lost, nothing doubled or reordered, and the publishers saw only 503s
//    meanwhile; a third publisher on a channel of another master is not affected at all.
//    The window is printed (`redis-cluster: …`).
// 3. Resharding: two publishers (HTTP API, through two nodes) on two channels of one
//    master while `redis-cli --cluster reshard` moves their slots to another master; every
//    node subscribes again on the new owner (Redis ends the old subscriptions), nothing
//    acknowledged is lost, doubled or reordered, publishers saw only 503s meanwhile.
//
// Run: node --test --test-concurrency=1 tests/interop/redis_cluster.test.mjs
// (SWITCHBOARD_BIN=/abs/path/to/switchboard to test another binary). Skipped when
// redis-server is not installed.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { startServer, join, withTimeout } from './lib/harness.mjs';
import { CONFIG, API_KEY, api, health, connect, subscribe, once } from './lib/cluster.mjs';
import { available, cli, poll, startRedisCluster } from './lib/redis_ha.mjs';

const execFileP = promisify(execFile);
const skip = !(await available('redis-server')) && 'redis-server is not installed';

const RATE = 100;
const PUBLISH_TIMEOUT_MS = 5_000;
const DRAIN_MS = 15_000;

/** One publisher: one request at a time through `node`, paced at RATE; data {p, i}. */
function startPublisher(node, channel, p) {
  const state = { p, next: 0, acked: [], errors: [], statuses: {}, stop: false };
  state.done = (async () => {
    const interval = 1000 / RATE;
    let due = Date.now();
    while (!state.stop) {
      const i = state.next++;
      const sentAt = Date.now();
      let outcome;
      try {
        const r = await fetch(`${node.httpUrl}/api/publish`, {
          method: 'POST',
          headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' },
          body: JSON.stringify({ channel, data: { p, i } }),
          signal: AbortSignal.timeout(PUBLISH_TIMEOUT_MS),
        });
        const body = await r.json().catch(() => null);
        outcome = r.status === 200 && body?.result ? 'ok' : String(r.status);
      } catch (e) {
        outcome = e.name === 'TimeoutError' ? 'timeout' : 'network error';
      }
      const at = Date.now();
      state.statuses[outcome] = (state.statuses[outcome] ?? 0) + 1;
      if (outcome === 'ok') state.acked.push({ i, sentAt, ackAt: at });
      else state.errors.push({ i, sentAt, at, outcome });
      due += interval;
      if (due > at) await sleep(due - at);
      else if (at - due > 250) due = at;
    }
  })();
  return state;
}

/** Per publisher `p` (acknowledged `acked` i's): lost, duplicated, reordered. */
function tally(received, p, acked) {
  const mine = received.filter((d) => d && d.p === p).map((d) => d.i);
  const seen = new Set();
  let duplicated = 0;
  let reordered = 0;
  let max = -1;
  for (const i of mine) {
    if (seen.has(i)) {
      duplicated++;
      continue;
    }
    seen.add(i);
    if (i < max) reordered++;
    else max = i;
  }
  const missing = acked.filter((i) => !seen.has(i));
  return { lost: missing.length, duplicated, reordered, missing };
}

/** The hash slot of a key (CRC16/XMODEM of its hash tag, modulo 16384), as Redis Cluster computes it. */
function keySlot(key) {
  const open = key.indexOf('{');
  const close = open >= 0 ? key.indexOf('}', open + 1) : -1;
  const tag = close > open + 1 ? key.slice(open + 1, close) : key;
  let crc = 0;
  for (const b of Buffer.from(tag)) {
    crc ^= b << 8;
    for (let k = 0; k < 8; k++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc % 16384;
}

/** The JSON data a raw client received, in order. */
function rawData(inbox) {
  return inbox.items
    .filter((m) => m.text !== null)
    .map((m) => {
      try {
        return JSON.parse(m.text);
      } catch {
        return null;
      }
    })
    .filter((d) => d && typeof d.p === 'string');
}

describe('the Redis broker on a Redis Cluster', { skip }, () => {
  let rc;
  let dir;
  const nodes = [];
  const cleanups = [];

  before(async () => {
    rc = await startRedisCluster({ masters: 3, replicas: 1, nodeTimeoutMs: 1000 });
    dir = mkdtempSync(path.join(tmpdir(), 'sb-rcluster-nodes-'));
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(file, CONFIG);
    for (let i = 0; i < 3; i++) {
      nodes.push(await startServer(['--config', file, '--broker', rc.url(), '--node-name', `node${i}`, '--broker-lease', '1.5']));
    }
    const masters = (await rc.slots()).map((r) => `127.0.0.1:${r.master}`).sort();
    for (const n of nodes) {
      await poll(async () => {
        const h = await health(n);
        return (
          h.broker.connected &&
          h.broker.kind === 'redis-cluster' &&
          JSON.stringify([...new Set(h.broker.masters)].sort()) === JSON.stringify([...new Set(masters)])
        );
      }, `${n.httpUrl} connected to the cluster, its masters in /health`);
    }
  });

  after(async () => {
    for (const f of cleanups.reverse()) await f();
    for (const n of nodes) await n.stop('SIGKILL');
    if (rc) await rc.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** `perMaster` channel names for every master: { channel, master } list. */
  async function spreadChannels(prefix, perMaster) {
    const masters = [...new Set((await rc.slots()).map((r) => r.master))];
    const by = new Map(masters.map((m) => [m, []]));
    for (let k = 0; [...by.values()].some((l) => l.length < perMaster); k++) {
      assert.ok(k < 1000, 'channels for every master found');
      const channel = `${prefix}-${k}`;
      const m = await rc.masterOf(`sb:{${channel}}:m`);
      if (by.get(m).length < perMaster) by.get(m).push(channel);
    }
    return [...by.entries()].flatMap(([master, chans]) => chans.map((channel) => ({ channel, master })));
  }

  /**
   * On every node: a centrifuge-js subscription (recovery on) and a raw client on `channel`.
   * Returns [{ kind, node, received(), subscribed (centrifuge), inbox (raw) }].
   */
  async function listenEverywhere(channel) {
    const clients = [];
    for (const [k, node] of nodes.entries()) {
      const { c } = await connect(node);
      cleanups.push(async () => c.disconnect());
      const rec = { kind: 'centrifuge', node: k, got: [], subscribed: [] };
      const sub = c.newSubscription(channel);
      sub.on('publication', (ctx) => rec.got.push(ctx.data));
      sub.on('subscribed', (ctx) => rec.subscribed.push({ wasRecovering: ctx.wasRecovering, recovered: ctx.recovered }));
      const p = once(sub, 'subscribed', () => true, `subscribed on node${k}`);
      sub.subscribe();
      await p;
      rec.received = () => rec.got;
      clients.push(rec);
      const inbox = await join(node.wsUrl(`/${channel}`));
      cleanups.push(async () => inbox.ws.terminate());
      clients.push({ kind: 'raw', node: k, inbox, received: () => rawData(inbox) });
    }
    return clients;
  }

  /**
   * Waits until every client has every acknowledged publication of its publishers
   * (`watch`: [{ clients, pubs }]), then asserts none was lost, doubled or reordered, no
   * raw client was closed and every centrifuge resubscription recovered. `label` prefixes
   * the printed summary.
   */
  async function assertDelivered(t, label, watch) {
    let drained = true;
    try {
      await poll(() => {
        for (const { clients, pubs } of watch) {
          for (const c of clients) {
            const got = c.received();
            for (const p of pubs) {
              const have = new Set(got.filter((d) => d.p === p.p).map((d) => d.i));
              if (p.acked.some((a) => !have.has(a.i))) return false;
            }
          }
        }
        return true;
      }, 'every client to have every acknowledged publication', DRAIN_MS);
    } catch (e) {
      drained = false;
      t.diagnostic(e.message);
    }
    const failures = [];
    const all = watch.flatMap((w) => w.clients);
    for (const { clients, pubs } of watch) {
      for (const c of clients) {
        for (const p of pubs) {
          const r = tally(c.received(), p.p, p.acked.map((a) => a.i));
          if (r.lost || r.duplicated || r.reordered) {
            failures.push(
              `${c.kind} on node${c.node}, publisher ${p.p}: lost=${r.lost} duplicated=${r.duplicated} reordered=${r.reordered} ` +
                `missing=${r.missing.slice(0, 5).join(',')}`,
            );
          }
        }
      }
    }
    const resubs = all.filter((c) => c.kind === 'centrifuge').flatMap((c) => c.subscribed.slice(1));
    console.log(
      `${label}: clients=${all.length} failures=${failures.length} ` +
        `raw_closed=${all.filter((c) => c.kind === 'raw' && c.inbox.closed).length} ` +
        `centrifuge_resubscribed=${resubs.length} recovered=${resubs.filter((s) => s.recovered).length}`,
    );
    if (failures.length || !drained) {
      // What the nodes logged (warnings: gaps they could not fill and why).
      for (const [k, n] of nodes.entries()) t.diagnostic(`node${k} log tail:\n${n.stderr().slice(-3000)}`);
    }
    assert.deepEqual(failures, [], 'no acknowledged publication lost, none twice, none out of order');
    assert.ok(drained, 'every client got every acknowledged publication');
    for (const c of all.filter((c) => c.kind === 'raw')) assert.equal(c.inbox.closed, null, `raw client on node${c.node} not closed`);
    for (const s of resubs) assert.equal(s.recovered, true, 'a centrifuge resubscription recovered');
  }

  /** Prints a publisher's outcome and asserts it saw only acknowledgements and 503s. */
  function assertOnly503s(label, p, since) {
    const firstAfter = p.acked.find((a) => a.sentAt >= since);
    const windowMs = p.errors.length ? p.errors.at(-1).at - p.errors[0].sentAt : 0;
    const statuses = Object.entries(p.statuses)
      .map(([s, n]) => `${s}:${n}`)
      .join(',');
    console.log(
      `${label}: publisher ${p.p}: attempted=${p.next} acknowledged=${p.acked.length} statuses=${statuses} ` +
        `error_window_ms=${windowMs} resume_ms=${firstAfter ? firstAfter.ackAt - since : 'none'}`,
    );
    assert.ok(firstAfter, `publisher ${p.p}: acknowledged again after ${since}`);
    assert.deepEqual(
      Object.keys(p.statuses).filter((s) => s !== 'ok' && s !== '503'),
      [],
      `publisher ${p.p}: only 503s meanwhile (${statuses})`,
    );
  }

  it('every master carries pub/sub; every client gets every publication once, in order; recovery and presence across nodes', async () => {
    const chans = await spreadChannels('spread', 2);
    assert.equal(chans.length, 6);
    // On every node: one centrifuge client subscribed to every channel, one raw client per channel.
    const subs = [];
    const raws = [];
    for (const [k, node] of nodes.entries()) {
      const { c } = await connect(node);
      cleanups.push(async () => c.disconnect());
      for (const { channel } of chans) subs.push({ node: k, channel, s: await subscribe(c, channel) });
      for (const { channel } of chans) {
        const inbox = await join(node.wsUrl(`/${channel}`));
        cleanups.push(async () => inbox.ws.terminate());
        raws.push({ node: k, channel, inbox });
      }
    }
    // Each master holds the subscriptions of its channels, one per node.
    for (const { channel, master } of chans) {
      const out = (await cli(master, 'PUBSUB', 'SHARDNUMSUB', `sb:{${channel}}:c`)).split('\n');
      assert.equal(Number(out[1]), 3, `the master ${master} has the three nodes' subscriptions to ${channel}`);
    }
    const before = new Map();
    for (const m of new Set(chans.map((c) => c.master))) {
      before.set(m, Number((await cli(m, 'INFO', 'stats')).match(/pubsubshard_channels:(\d+)/)?.[1] ?? -1));
      assert.ok(before.get(m) >= 2, `master ${m} reports its shard channels`);
    }
    // Every node publishes 10 to every channel (in parallel across channels and nodes).
    const N = 10;
    await Promise.all(
      nodes.flatMap((node, k) =>
        chans.map(async ({ channel }) => {
          for (let i = 0; i < N; i++) {
            const r = await api(node, 'publish', { channel, data: { p: `node${k}`, i } });
            assert.equal(r.status, 200, r.text);
          }
        }),
      ),
    );
    const everything = (got) => nodes.every((_, k) => got.filter((d) => d.p === `node${k}`).length >= N);
    for (const s of subs) {
      await s.s.until((got) => everything(got.map((p) => p.data)), `centrifuge on node${s.node}, ${s.channel}`);
    }
    for (const r of raws) {
      await poll(() => everything(rawData(r.inbox)), `raw on node${r.node}, ${r.channel}`);
    }
    // Acknowledged once a replica had them: WAIT ran on every master.
    for (const m of new Set(chans.map((c) => c.master))) {
      const waits = Number((await cli(m, 'INFO', 'commandstats')).match(/cmdstat_wait:calls=(\d+)/)?.[1] ?? 0);
      assert.ok(waits >= 2 * N * nodes.length, `master ${m} confirmed publications with its replica (WAIT calls: ${waits})`);
    }
    const acked = [...Array(N).keys()];
    const failures = [];
    for (const [what, got] of [
      ...subs.map((s) => [`centrifuge node${s.node} ${s.channel}`, s.s.got.map((p) => p.data)]),
      ...raws.map((r) => [`raw node${r.node} ${r.channel}`, rawData(r.inbox)]),
    ]) {
      for (let k = 0; k < nodes.length; k++) {
        const t = tally(got, `node${k}`, acked);
        if (t.lost || t.duplicated || t.reordered) failures.push(`${what} from node${k}: ${JSON.stringify(t)}`);
      }
    }
    assert.deepEqual(failures, [], 'once each, in order per publisher');

    // Recovery on another node.
    const channel = chans[0].channel;
    const { c: a } = await connect(nodes[0]);
    const s = await subscribe(a, channel);
    await api(nodes[1], 'publish', { channel, data: { p: 'rec', i: 0 } });
    await s.until((got) => got.length === 1, 'one live publication');
    const since = { offset: s.got[0].offset, epoch: s.ctx.streamPosition.epoch };
    a.disconnect();
    for (let i = 1; i <= 5; i++) await api(nodes[2], 'publish', { channel, data: { p: 'rec', i } });
    const { c: b } = await connect(nodes[1]);
    cleanups.push(async () => b.disconnect());
    const r = await subscribe(b, channel, { since });
    assert.equal(r.ctx.recovered, true, 'recovered on another node');
    await r.until((got) => got.length >= 5, 'the recovered publications');
    assert.deepEqual(r.got.map((p) => p.data.i), [1, 2, 3, 4, 5]);

    // Presence: the same from every node.
    const pchan = chans[chans.length - 1].channel;
    const ids = [];
    for (const node of nodes) {
      const { c, client } = await connect(node);
      cleanups.push(async () => c.disconnect());
      await subscribe(c, pchan);
      ids.push(client);
    }
    for (const node of nodes) {
      const p = await api(node, 'presence', { channel: pchan });
      assert.equal(p.status, 200, p.text);
      // The first loop's centrifuge clients are members too.
      for (const id of ids) assert.ok(id in p.body.result.presence, `${id} in presence on ${node.httpUrl}`);
    }
  });

  it('slots resharded under publishing: nothing acknowledged lost, doubled or reordered; subscriptions follow the slots', async (t) => {
    // Two channels in the first slots of one master, the slots `redis-cli --cluster
    // reshard` moves first; a publisher on each (through two nodes) while those slots move
    // to another master.
    const SLOTS = 64;
    const layout = await rc.slots();
    const source = layout[0].master;
    const first = layout.filter((r) => r.master === source).sort((a, b) => a.start - b.start)[0];
    assert.ok(first.end - first.start + 1 >= SLOTS, 'the source master owns a long enough first range');
    const target = layout.find((r) => r.master !== source).master;
    const stamp = Date.now();
    const channels = [];
    for (let k = 0; channels.length < 2; k++) {
      assert.ok(k < 100_000, 'channels in the moved slots found');
      const channel = `reshard-${stamp}-${k}`;
      const slot = keySlot(`sb:{${channel}}:m`);
      if (slot >= first.start && slot < first.start + SLOTS) channels.push(channel);
    }
    for (const channel of channels) assert.equal(await rc.masterOf(`sb:{${channel}}:m`), source);
    const watch = [];
    for (const [k, channel] of channels.entries()) {
      const clients = await listenEverywhere(channel);
      const pub = startPublisher(nodes[k], channel, k === 0 ? 'A' : 'B');
      watch.push({ channel, clients, pubs: [pub] });
    }
    const pubs = watch.flatMap((w) => w.pubs);
    let startedAt;
    try {
      await sleep(1_500);
      const sourceId = await cli(source, 'CLUSTER', 'MYID');
      const targetId = await cli(target, 'CLUSTER', 'MYID');
      startedAt = Date.now();
      await execFileP(
        'redis-cli',
        ['--cluster', 'reshard', `127.0.0.1:${source}`, '--cluster-from', sourceId, '--cluster-to', targetId,
          '--cluster-slots', String(SLOTS), '--cluster-yes'],
        { encoding: 'utf8', timeout: 60_000 },
      );
      const movedAt = Date.now();
      for (const channel of channels) {
        await poll(async () => (await rc.masterOf(`sb:{${channel}}:m`)) === target, `${channel} to be owned by ${target}`);
        // Every node listens to the channel on its new owner, and no longer on the old one.
        await poll(async () => {
          const out = (await cli(target, 'PUBSUB', 'SHARDNUMSUB', `sb:{${channel}}:c`)).split('\n');
          return Number(out[1]) === nodes.length;
        }, `the three nodes' subscriptions to ${channel} on ${target}`);
        const old = (await cli(source, 'PUBSUB', 'SHARDNUMSUB', `sb:{${channel}}:c`)).split('\n');
        assert.equal(Number(old[1]), 0, `no subscription to ${channel} left on ${source}`);
      }
      console.log(
        `redis-cluster: resharded ${SLOTS} slots from ${source} to ${target} in ${movedAt - startedAt} ms; ` +
          `every node subscribed on the new owner after ${Date.now() - startedAt} ms`,
      );
      await sleep(1_500);
    } finally {
      for (const p of pubs) p.stop = true;
      await withTimeout(Promise.all(pubs.map((p) => p.done)), 'the publishers to stop', PUBLISH_TIMEOUT_MS + 2_000);
    }
    for (const p of pubs) assertOnly503s('redis-cluster reshard', p, startedAt);
    await assertDelivered(t, 'redis-cluster reshard', watch);
  });

  it('a master killed under publishing: nothing acknowledged lost or doubled, only 503s meanwhile', async (t) => {
    const spread = await spreadChannels(`failover-${Date.now()}`, 1);
    const [{ channel, master }] = spread;
    // A channel on another master, published to meanwhile: its publications are not
    // affected by the failover.
    const other = spread.find((c) => c.master !== master).channel;
    const clients = await listenEverywhere(channel);
    const slotsBefore = await rc.slots();
    const replica = slotsBefore.find((r) => r.master === master).replicas[0];
    const pubs = [startPublisher(nodes[0], channel, 'A'), startPublisher(nodes[1], channel, 'B')];
    const bystander = startPublisher(nodes[2], other, 'C');
    let killedAt;
    try {
      await sleep(1_500);
      killedAt = Date.now();
      await rc.nodes.find((n) => n.port === master).kill('SIGKILL');
      await poll(async () => (await rc.slots()).some((r) => r.master === replica), 'the replica to be promoted', 30_000);
      const promotedAt = Date.now();
      for (const n of nodes) {
        await poll(async () => {
          const h = await health(n);
          return h.broker.connected && h.broker.masters.includes(`127.0.0.1:${replica}`) && !h.broker.masters.includes(`127.0.0.1:${master}`);
        }, `${n.httpUrl} to see the new master`);
      }
      console.log(
        `redis-cluster: killed master ${master}; replica ${replica} promoted after ${promotedAt - killedAt} ms; ` +
          `every node connected with the new layout after ${Date.now() - killedAt} ms`,
      );
      await sleep(2_000);
    } finally {
      for (const p of [...pubs, bystander]) p.stop = true;
      await withTimeout(Promise.all([...pubs, bystander].map((p) => p.done)), 'the publishers to stop', PUBLISH_TIMEOUT_MS + 2_000);
    }
    const cStatuses = Object.entries(bystander.statuses)
      .map(([s, n]) => `${s}:${n}`)
      .join(',');
    console.log(`redis-cluster: publisher C on a channel of another master: statuses=${cStatuses}`);
    assert.deepEqual(Object.keys(bystander.statuses), ['ok'], `publisher C: not affected by another master's failure (${cStatuses})`);
    for (const p of pubs) assertOnly503s('redis-cluster', p, killedAt);
    await assertDelivered(t, 'redis-cluster', [{ clients, pubs }]);
  });
});
