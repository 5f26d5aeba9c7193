// Chaos runs on a three-node cluster sharing one private Redis, with a steady publisher and
// every kind of client at once: centrifuge-js (3 per node), socket.io-client (1 per node,
// WebSocket transport, connection state recovery on) and raw `ws` clients (1 per node, path
// `/<channel>`). Every client reaches the cluster through a round-robin load balancer
// (lib/rr_proxy.mjs), as in a real deployment: a client whose node goes away reconnects
// through the same address and lands on a live node.
//
// Scenarios (each on a fresh cluster and channel, each run twice):
//   - Redis killed with SIGKILL and restarted empty;
//   - Redis killed with SIGKILL and restarted with its data (append-only file, fsync always);
//   - one node killed with SIGKILL.
// The publisher calls the HTTP API `publish` (rotating over the three nodes) at ~150/s with
// data {i: N}; a publication is acknowledged when the API answered 200 with a result (503s
// during an outage are expected and not acknowledged). After the fault the publisher goes on
// for a while, stops, and the test waits (bounded) until every client has every acknowledged
// publication. Asserted: nothing acknowledged is lost, nothing is delivered twice, nothing
// out of order — for every client, except the raw and Socket.IO clients of a killed node
// (raw rooms have no recovery, Socket.IO recovery is node-local): those must have been told
// (raw: the connection closes; Socket.IO: a disconnect, then `recovered === false` on the
// live node it reconnects to). Centrifuge clients that resubscribe (reconnect, or the
// `unsubscribe` push with code 2500) must get `recovered: true`.
//
// One summary line per run and client kind is printed (`chaos: ...`), for docs/scaling.md:
// lost = acknowledged but never received, duplicated = received more than once, reordered =
// received after a larger i (all three summed over the clients that must have everything),
// told = clients told they may have missed publications (closed / new Socket.IO session),
// told_lost = what those told clients missed, resume_ms = from the fault to the first
// acknowledged publication sent after it; centrifuge: resubscriptions, `unsubscribe` pushes
// with code 2500 and how many recovering subscribes got `recovered: true`; socketio:
// disconnects, reconnects and how many were recovered.
//
// Run: node --test --test-reporter=spec --test-concurrency=1 tests/interop/chaos.test.mjs
// (SWITCHBOARD_BIN=/abs/path/to/switchboard to test another binary). Skipped when
// redis-server is not installed.

import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { io } from 'socket.io-client';
import { startServer, join, withTimeout, binaryPath } from './lib/harness.mjs';
import { startRedis, redisAvailable } from './lib/redis.mjs';
import { startRoundRobinProxy } from './lib/rr_proxy.mjs';
import { CONFIG, API_KEY, until, once, connect } from './lib/cluster.mjs';

const haveRedis = await redisAvailable();
const skip = !haveRedis && 'redis-server is not installed';
if (!skip) {
  const bin = binaryPath();
  console.log(`chaos: binary ${bin} (modified ${statSync(bin).mtime.toISOString()})`);
}

const NODES = 3;
const LEASE = '1.5';
const RATE = 150; // publications per second
const CENTRIFUGE_PER_NODE = 3;
/** Bound of the final wait for every client to have every acknowledged publication. */
const DRAIN_MS = 15_000;
/** Bound of one publish request. */
const PUBLISH_TIMEOUT_MS = 3_000;

// The cluster suites' channel settings (history 10000, force_recovery, …) plus Socket.IO
// connection state recovery.
const CHAOS_CONFIG = `${CONFIG}
[socketio]
recovery = true
max_disconnection_duration = 60
`;

/** Everything started by a run, so `after` can end it even when a run fails half-way. */
const live = new Set();

async function cleanup(res) {
  for (const c of res.clients ?? []) {
    try {
      if (c.kind === 'centrifuge') c.c.disconnect();
      else if (c.kind === 'socketio') c.s.disconnect();
      else c.inbox.ws.terminate();
    } catch {
      // already gone
    }
  }
  res.clients = [];
  if (res.proxy) {
    const p = res.proxy;
    res.proxy = null;
    // Bounded: a spliced WebSocket still open would keep `close` waiting.
    await Promise.race([p.close(), sleep(2_000)]);
  }
  if (res.cluster) {
    const c = res.cluster;
    res.cluster = null;
    await c.close();
  }
  live.delete(res);
}

after(async () => {
  for (const res of [...live]) await cleanup(res);
});

/** Redis (`persist` or not) and NODES nodes on it, like `startCluster` with CHAOS_CONFIG. */
async function startChaosCluster({ persist }) {
  const redis = await startRedis({ persist });
  const dir = mkdtempSync(path.join(tmpdir(), 'sb-chaos-'));
  const file = path.join(dir, 'switchboard.toml');
  writeFileSync(file, CHAOS_CONFIG);
  const nodes = [];
  const cluster = {
    redis,
    nodes,
    async close() {
      for (const node of nodes) await node.stop('SIGKILL');
      await redis.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    for (let i = 0; i < NODES; i++) {
      nodes.push(
        await startServer(['--config', file, '--broker', redis.url, '--node-name', `node${i}`, '--broker-lease', LEASE]),
      );
    }
  } catch (e) {
    await cluster.close();
    throw e;
  }
  return cluster;
}

/** Index of the one backend whose hit count moved since `before`. */
function movedBackend(before, hits) {
  const moved = hits.map((h, i) => h - before[i]);
  const idx = moved.findIndex((d) => d > 0);
  assert.equal(moved.filter((d) => d > 0).length, 1, `one connection, one backend: ${moved}`);
  return idx;
}

const intOf = (d) => (d && typeof d === 'object' && Number.isInteger(d.i) ? d.i : undefined);

/**
 * Connects every client through the balancer, one after the other (so the rotation places
 * each kind evenly: connection k goes to backend k mod 3), and records which backend each
 * one reached. Each record has `kind`, `backend` and `received()` (the i's, in order).
 */
async function connectClients(res, proxy, channel) {
  const lb = { httpUrl: proxy.url, wsUrl: (p = '/') => `ws://127.0.0.1:${proxy.port}${p}` };
  const clients = res.clients;

  for (let k = 0; k < CENTRIFUGE_PER_NODE * NODES; k++) {
    const before = proxy.hits.slice();
    const { c } = await connect(lb);
    const rec = { kind: 'centrifuge', c, got: [], subscribing: [], subscribed: [] };
    clients.push(rec);
    rec.backend = movedBackend(before, proxy.hits);
    rec.received = () => rec.got;
    const sub = c.newSubscription(channel);
    rec.sub = sub;
    sub.on('publication', (ctx) => {
      const i = intOf(ctx.data);
      if (i !== undefined) rec.got.push(i);
    });
    sub.on('subscribing', (ctx) => rec.subscribing.push(ctx.code));
    sub.on('subscribed', (ctx) =>
      rec.subscribed.push({ wasRecovering: ctx.wasRecovering, recovered: ctx.recovered, epoch: ctx.streamPosition?.epoch }),
    );
    const p = once(sub, 'subscribed', () => true, `centrifuge client ${k} subscribed to ${channel}`);
    sub.subscribe();
    await p;
    assert.equal(rec.subscribed[0].wasRecovering, false);
  }

  for (let k = 0; k < NODES; k++) {
    const before = proxy.hits.slice();
    const s = io(proxy.url, {
      forceNew: true,
      transports: ['websocket'],
      reconnectionDelay: 100,
      reconnectionDelayMax: 500,
      timeout: 5_000,
    });
    const rec = { kind: 'socketio', s, got: [], connects: [], disconnects: [] };
    clients.push(rec);
    rec.received = () => rec.got;
    s.on('message', (ch, data) => {
      const i = intOf(data);
      if (ch === channel && i !== undefined) rec.got.push(i);
    });
    s.on('disconnect', (reason) => rec.disconnects.push(reason));
    s.on('connect', () => {
      rec.connects.push({ recovered: s.recovered });
      // What an application does when its session was not recovered: join again.
      if (rec.connects.length > 1 && !s.recovered) s.emit('subscribe', channel);
    });
    await withTimeout(
      new Promise((resolve, reject) => {
        s.once('connect', resolve);
        s.once('connect_error', reject);
      }),
      `socket.io client ${k} to connect`,
    );
    rec.backend = movedBackend(before, proxy.hits);
    assert.deepEqual(await s.timeout(5_000).emitWithAck('subscribe', channel), { ok: true });
  }

  for (let k = 0; k < NODES; k++) {
    const before = proxy.hits.slice();
    // `join` waits until the client is in its room (its probe came back).
    const inbox = await join(lb.wsUrl(`/${channel}`));
    const rec = { kind: 'raw', inbox };
    clients.push(rec);
    rec.backend = movedBackend(before, proxy.hits);
    rec.received = () => {
      const out = [];
      for (const m of inbox.items) {
        if (m.text === null) continue;
        try {
          const i = intOf(JSON.parse(m.text));
          if (i !== undefined) out.push(i);
        } catch {
          // not JSON: not ours
        }
      }
      return out;
    };
  }

  for (const kind of ['centrifuge', 'socketio', 'raw']) {
    const per = [0, 0, 0];
    for (const c of clients.filter((c) => c.kind === kind)) per[c.backend]++;
    assert.ok(per.every((n) => n === per[0] && n > 0), `${kind} clients spread evenly over the nodes: ${per}`);
  }
}

/**
 * The publisher: one request at a time (so acknowledgement order = i order), rotating over
 * the nodes, paced at RATE. `acked` holds { i, sentAt, ackAt } of the 200s.
 */
function startPublisher(nodes, channel) {
  const state = { next: 0, acked: [], statuses: {}, stop: false, startedAt: Date.now() };
  state.done = (async () => {
    const interval = 1000 / RATE;
    let due = Date.now();
    while (!state.stop) {
      const i = state.next++;
      const node = nodes[i % nodes.length];
      const sentAt = Date.now();
      let outcome;
      try {
        const r = await fetch(`${node.httpUrl}/api/publish`, {
          method: 'POST',
          headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' },
          body: JSON.stringify({ channel, data: { i } }),
          signal: AbortSignal.timeout(PUBLISH_TIMEOUT_MS),
        });
        const text = await r.text();
        let body = null;
        try {
          body = JSON.parse(text);
        } catch {
          body = null;
        }
        outcome = r.status === 200 && body?.result ? 'ok' : String(r.status);
      } catch (e) {
        outcome = e.name === 'TimeoutError' ? 'timeout' : 'network error';
      }
      state.statuses[outcome] = (state.statuses[outcome] ?? 0) + 1;
      if (outcome === 'ok') state.acked.push({ i, sentAt, ackAt: Date.now() });
      due += interval;
      const now = Date.now();
      if (due > now) await sleep(due - now);
      else if (now - due > 250) due = now; // behind (an outage): no burst afterwards
    }
    state.stoppedAt = Date.now();
  })();
  return state;
}

/** lost (acknowledged, never received), duplicated, reordered (arrived after a larger i). */
function tally(received, ackedSet) {
  const seen = new Set();
  let duplicated = 0;
  let reordered = 0;
  let max = -1;
  for (const i of received) {
    if (seen.has(i)) {
      duplicated++;
      continue;
    }
    seen.add(i);
    if (i < max) reordered++;
    else max = i;
  }
  const missing = [];
  for (const i of ackedSet) if (!seen.has(i)) missing.push(i);
  return { lost: missing.length, duplicated, reordered, missing };
}

/**
 * One run: fresh cluster, balancer, clients and channel; publish, `fault(ctx)` (returns the
 * index of a killed node, or undefined), publish on, drain, report, assert.
 */
async function run(t, { scenario, k, persist = false, fault }) {
  const res = { clients: [] };
  live.add(res);
  try {
    res.cluster = await startChaosCluster({ persist });
    const { nodes } = res.cluster;
    res.proxy = await startRoundRobinProxy(nodes.map((n) => `127.0.0.1:${n.port}`));
    const channel = `chaos-${scenario.replace(/\W+/g, '-')}-${k}-${Date.now()}`;
    await connectClients(res, res.proxy, channel);
    const clients = res.clients;

    const pub = startPublisher(nodes, channel);
    let faultAt;
    let killed;
    try {
      await sleep(1_000);
      faultAt = Date.now();
      killed = await fault(res.cluster);
    } finally {
      pub.stop = true;
      await withTimeout(pub.done, 'the publisher to stop', PUBLISH_TIMEOUT_MS + 2_000);
    }
    const acked = pub.acked.map((a) => a.i);
    // Where a missing publication stands relative to the fault, to tell which case it was.
    const byI = new Map(pub.acked.map((a) => [a.i, a]));
    const describeAck = (i) => {
      const a = byI.get(i);
      return a ? `${i}(sent ${a.sentAt - faultAt} ms after the fault, acked +${a.ackAt - a.sentAt} ms)` : `${i}`;
    };
    const ackedSet = new Set(acked);
    const firstAfter = pub.acked.find((a) => a.sentAt >= faultAt);
    const resumeMs = firstAfter ? firstAfter.ackAt - faultAt : 'none';

    // "told": the raw clients whose connection closed, the Socket.IO clients that were
    // disconnected and got a new (not recovered) session.
    const isTold = (c) =>
      (c.kind === 'raw' && c.inbox.closed !== null) ||
      (c.kind === 'socketio' && c.disconnects.length > 0 && c.connects.slice(1).some((x) => !x.recovered));
    // Who must have everything: everyone, except the raw and Socket.IO clients of a killed
    // node (they cannot recover on another node; they must have been told instead).
    const mustHaveAll = (c) => killed === undefined || c.kind === 'centrifuge' || c.backend !== killed;

    let drained = true;
    try {
      await until(() => {
        for (const c of clients) {
          if (c.kind === 'centrifuge' && c.sub.state !== 'subscribed') return false;
          if (c.kind === 'socketio' && !c.s.connected) return false;
          if (!mustHaveAll(c)) continue;
          const got = new Set(c.received());
          for (const i of acked) if (!got.has(i)) return false;
        }
        return true;
      }, 'every client to have every acknowledged publication (and to be connected again)', DRAIN_MS);
    } catch (e) {
      drained = false;
      t.diagnostic(e.message);
    }

    const statuses = Object.entries(pub.statuses)
      .map(([s, n]) => `${s}:${n}`)
      .join(',');
    const seconds = (pub.stoppedAt - pub.startedAt) / 1000;
    console.log(
      `chaos: ${scenario} run ${k}: publisher attempted=${pub.next} acknowledged=${acked.length} ` +
        `seconds=${seconds.toFixed(1)} rate=${Math.round(pub.next / seconds)}/s statuses=${statuses}` +
        (killed !== undefined ? ` killed=node${killed}` : ''),
    );
    const failures = [];
    for (const kind of ['centrifuge', 'socketio', 'raw']) {
      const group = clients.filter((c) => c.kind === kind);
      let lost = 0;
      let duplicated = 0;
      let reordered = 0;
      let told = 0;
      let toldLost = 0;
      for (const c of group) {
        const r = tally(c.received(), ackedSet);
        if (mustHaveAll(c)) {
          lost += r.lost;
          duplicated += r.duplicated;
          reordered += r.reordered;
          if (r.lost || r.duplicated || r.reordered) {
            failures.push(
              `${kind} client on node${c.backend}: lost=${r.lost} duplicated=${r.duplicated} reordered=${r.reordered}` +
                (r.lost ? ` missing=${r.missing.slice(0, 5).map(describeAck).join(',')}` : ''),
            );
          }
        } else {
          toldLost += r.lost;
        }
        if (isTold(c)) told++;
      }
      let extra = '';
      if (kind === 'centrifuge') {
        const resubs = group.reduce((n, c) => n + c.subscribed.length - 1, 0);
        const code2500 = group.reduce((n, c) => n + c.subscribing.filter((code) => code === 2500).length, 0);
        const recovering = group.flatMap((c) => c.subscribed.filter((s) => s.wasRecovering));
        const recovered = recovering.filter((s) => s.recovered).length;
        extra = ` resubscribed=${resubs} unsubscribe_2500=${code2500} recovered=${recovered}/${recovering.length}`;
      } else if (kind === 'socketio') {
        const disconnects = group.reduce((n, c) => n + c.disconnects.length, 0);
        const reconnects = group.flatMap((c) => c.connects.slice(1));
        const recovered = reconnects.filter((x) => x.recovered).length;
        extra = ` disconnects=${disconnects} reconnects=${reconnects.length} recovered=${recovered}/${reconnects.length}`;
      } else {
        extra = ` closed=${group.filter((c) => c.inbox.closed !== null).length}`;
      }
      if (told) extra += ` told_lost=${toldLost}`;
      console.log(
        `chaos: ${scenario} run ${k}: ${kind} clients=${group.length} acknowledged=${acked.length} ` +
          `lost=${lost} duplicated=${duplicated} reordered=${reordered} told=${told} resume_ms=${resumeMs}${extra}`,
      );
    }

    // Behaviour, not timings.
    assert.ok(acked.length > 0, 'publications were acknowledged');
    assert.ok(firstAfter, 'publications were acknowledged again after the fault');
    assert.deepEqual(failures, [], 'no acknowledged publication lost, none twice, none out of order');
    assert.ok(drained, 'every client got every acknowledged publication');
    for (const c of clients.filter((c) => c.kind === 'centrifuge')) {
      for (const s of c.subscribed.slice(1)) {
        assert.equal(s.wasRecovering, true, `centrifuge client on node${c.backend}: a resubscription recovers`);
        assert.equal(s.recovered, true, `centrifuge client on node${c.backend}: recovered after resubscribing`);
      }
    }
    if (killed !== undefined) {
      for (const c of clients.filter((c) => c.backend === killed)) {
        if (c.kind === 'centrifuge') {
          assert.ok(c.subscribed.length >= 2, 'a centrifuge client of the killed node resubscribed on a live node');
        } else if (c.kind === 'raw') {
          assert.notEqual(c.inbox.closed, null, 'the raw client of the killed node was told: its connection closed');
        } else {
          assert.ok(c.disconnects.length > 0, 'the Socket.IO client of the killed node was told: disconnect');
          assert.ok(c.connects.length >= 2, 'the Socket.IO client of the killed node reconnected to a live node');
          assert.equal(c.connects.at(-1).recovered, false, 'not recovered on another node (recovery is node-local)');
        }
      }
    }
  } finally {
    await cleanup(res);
  }
}

/** The Redis fault: killed with SIGKILL, started again 1 s later, publishing goes on 3 s. */
async function restartRedis(cluster) {
  await cluster.redis.stop('SIGKILL');
  await sleep(1_000);
  await cluster.redis.restart();
  await sleep(3_000);
  return undefined;
}

describe('chaos: redis restarted empty', { skip }, () => {
  for (const k of [1, 2]) {
    it(`run ${k}: nothing acknowledged is lost, duplicated or reordered`, { timeout: 60_000 }, (t) =>
      run(t, {
        scenario: 'redis restarted empty',
        k,
        fault: restartRedis,
      }),
    );
  }
});

describe('chaos: redis restarted with its data', { skip }, () => {
  for (const k of [1, 2]) {
    it(`run ${k}: nothing acknowledged is lost, duplicated or reordered`, { timeout: 60_000 }, (t) =>
      run(t, {
        scenario: 'redis restarted with its data',
        k,
        persist: true,
        fault: restartRedis,
      }),
    );
  }
});

describe('chaos: node kill -9', { skip }, () => {
  for (const k of [1, 2]) {
    it(`run ${k}: centrifuge clients recover on a live node, the others are told`, { timeout: 60_000 }, (t) =>
      run(t, {
        scenario: 'node kill -9',
        k,
        async fault(cluster) {
          const victim = k % NODES;
          await cluster.nodes[victim].stop('SIGKILL');
          await sleep(3_000);
          return victim;
        },
      }),
    );
  }
});
