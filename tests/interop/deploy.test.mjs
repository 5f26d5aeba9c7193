// A rolling deploy of three real `switchboard` nodes on a private Redis, with 3,000
// connections of three kinds, driven from four worker threads: raw `ws` clients and
// `centrifuge` clients (with recovery) that know the list of nodes and move to the next one
// when theirs goes, and `socket.io-client` clients behind a round-robin balancer. Messages
// are published through the HTTP API the whole time. Each node in turn gets SIGTERM, exits
// and is started again on its port.
//
// The deploy runs twice: with `--drain-timeout 8` (the node answers /health with 503 and
// tells its connections to reconnect at moments spread over 8 s) and with
// `--drain-timeout 0` (every connection is closed at once). Reconnections are counted per
// 100 ms twice: as the clients saw them, and as the nodes accepted them (their own log
// times); the drained deploy's peak must be at most half the other's by both counts. Every
// centrifuge client must move and have every resubscription recovered, and have every
// message once: lost 0, duplicates 0.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test deploy.test.mjs
// Skipped (not failed) when redis-server is not installed.

import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { startServer, withTimeout } from './lib/harness.mjs';
import { redisAvailable, startRedis } from './lib/redis.mjs';
import { startRoundRobinProxy } from './lib/rr_proxy.mjs';
import { CONFIG, api, until } from './lib/cluster.mjs';

const haveRedis = await redisAvailable();

// DEPLOY_TEST_SCALE scales the client counts: the default 1 is 3,000 connections (0.2: 600).
// They run in DEPLOY_TEST_WORKERS threads (default 4), so that one event loop's lag does not
// bunch up the reconnection times.
const SCALE = Number(process.env.DEPLOY_TEST_SCALE || 1);
const WORKERS = Number(process.env.DEPLOY_TEST_WORKERS || 4);
const RAW = Math.round(1500 * SCALE);
const CENTRIFUGE = Math.round(750 * SCALE);
const SOCKETIO = Math.round(750 * SCALE);
const CHANNEL = 'deploy';
// The drain window. The rolling order piles the clients up: the last node holds ~2,800 of
// the 3,000 when its turn comes. Over 4 s that is ~78 reconnections per 100 ms on average,
// and on 2 busy CPUs they come in bursts of twice that, near what the nodes accept with no
// drain at all; 8 s leaves room (docs/operations.md, "A rolling deploy, measured").
const DRAIN_SECS = 8;
// History and recovery (for lost 0 / duplicates 0) and presence, as in the other cluster
// suites, but no join/leave events: with them every reconnection sends a leave and a join to
// each of the 3,000 members, ~2 × 3,000 × 5,600 pushes per deploy, which is what the 2 CPUs
// then spend their time on (and some raw clients were closed as slow consumers).
const DEPLOY_CONFIG = CONFIG.replace('join_leave = true\n', 'join_leave = false\n');
assert.notEqual(DEPLOY_CONFIG, CONFIG, 'the cluster config turns join/leave on');
/** Milliseconds between two API publications. */
const PUBLISH_EVERY = 50;
const BUCKET_MS = 100;
/** The nodes' log filter: warnings, and each connection's start and end (see `nodeOpens`). */
const SERVER_LOG = 'warn,switchboard_server::conn::runtime=debug';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T0 = performance.now();
/** Progress on stderr, so a slow stage names itself. */
const log = (...a) => console.error(`[deploy ${((performance.now() - T0) / 1000).toFixed(1)} s]`, ...a);

/** Absolute milliseconds, comparable with the times the client threads record. */
const now = () => performance.timeOrigin + performance.now();

/** Starts one client thread; `ask(type)` sends it a request and resolves with its answer. */
function clientWorker(data) {
  const thread = new Worker(new URL('./lib/deploy_clients.mjs', import.meta.url), { workerData: data });
  let next = 0;
  const waiting = new Map();
  thread.on('message', (m) => {
    const w = waiting.get(m.id);
    waiting.delete(m.id);
    if (m.error) w?.reject(new Error(m.error));
    else w?.resolve(m);
  });
  const failAll = (e) => {
    for (const w of waiting.values()) w.reject(e);
    waiting.clear();
  };
  thread.on('error', failAll);
  thread.on('exit', (code) => failAll(new Error(`client thread exited (${code})`)));
  const ask = (type, extra = {}) =>
    new Promise((resolve, reject) => {
      const id = next++;
      waiting.set(id, { resolve, reject });
      thread.postMessage({ id, type, ...extra });
    });
  return { thread, ask };
}

/**
 * The moments the nodes opened WebSocket connections, by their own clocks: with SERVER_LOG a
 * node logs a JSON line "connected" when a connection's task starts, right after the
 * upgrade. The logs are files, not pipes, so a node never waits for this process to read
 * them (a full pipe would hold its writes up and bunch the very accepts being timed).
 */
function nodeOpens(files) {
  const opened = [];
  for (const file of files) {
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      if (!line.includes('"connected"')) continue;
      try {
        const e = JSON.parse(line);
        if (e.message === 'connected') opened.push(Date.parse(e.timestamp));
      } catch {
        // a line cut short by a node being killed
      }
    }
  }
  return opened;
}

/**
 * The busiest BUCKET_MS of `times` (ms), wherever it starts (a window sliding over the
 * times, not fixed buckets, which can cut a burst in two): its count and its start.
 */
function peak(times) {
  const sorted = times.slice().sort((a, b) => a - b);
  let best = { peakAtMs: 0, peak: 0 };
  let from = 0;
  for (let to = 0; to < sorted.length; to++) {
    while (sorted[to] - sorted[from] >= BUCKET_MS) from++;
    if (to - from + 1 > best.peak) best = { peakAtMs: sorted[from], peak: to - from + 1 };
  }
  return best;
}

/** One deploy: returns what the clients saw. */
async function rollingDeploy(drainSecs) {
  const redis = await startRedis();
  const dir = mkdtempSync(path.join(tmpdir(), 'sb-deploy-'));
  const file = path.join(dir, 'switchboard.toml');
  writeFileSync(file, DEPLOY_CONFIG);
  const args = (i) => [
    '--config', file, '--broker', redis.url, '--node-name', `node${i}`,
    '--drain-timeout', String(drainSecs), '--shutdown-timeout', '2', '--log-format', 'json',
  ];
  const logs = [0, 1, 2].map((i) => path.join(dir, `node${i}.log`));
  const start = (i, listen) =>
    startServer(args(i), { listen, env: { RUST_LOG: SERVER_LOG }, stderrFile: logs[i] });
  const nodes = [];
  for (let i = 0; i < 3; i++) nodes.push(await start(i, '127.0.0.1:0'));
  const ports = nodes.map((n) => n.port);
  const proxy = await startRoundRobinProxy(ports.map((p) => `127.0.0.1:${p}`));
  const closers = [];
  const result = { drainSecs };
  try {
    for (const node of nodes) {
      await until(async () => (await api(node, 'info')).body?.result?.nodes?.length === 3 || undefined, 'three nodes');
    }
    // The clients run in WORKERS threads, each with its share of every kind, so that the
    // times they record are not held up behind one busy event loop.
    const share = (total, w) => Math.floor(total / WORKERS) + (w < total % WORKERS ? 1 : 0);
    let first = 0;
    const workers = [];
    for (let w = 0; w < WORKERS; w++) {
      const counts = { raw: share(RAW, w), centrifuge: share(CENTRIFUGE, w), socketio: share(SOCKETIO, w) };
      workers.push(clientWorker({ ports, proxyUrl: proxy.url, channel: CHANNEL, first, ...counts }));
      first += counts.raw + counts.centrifuge;
    }
    closers.push(async () => {
      for (const w of workers) {
        await withTimeout(w.ask('stop'), 'clients to stop', 5000).catch(() => {});
        await w.thread.terminate();
      }
    });
    const askAll = (type, extra) => Promise.all(workers.map((w) => w.ask(type, extra)));
    log(`--drain-timeout ${drainSecs}: connecting ${RAW + CENTRIFUGE + SOCKETIO} clients in ${WORKERS} threads`);
    await withTimeout(askAll('start'), 'every client connected', 60_000);
    let lastNotReady;
    const everyoneBack = (what, ms = 30_000) =>
      until(
        async () => {
          const answers = await askAll('status');
          lastNotReady = answers.map((a) => a.notReady);
          return answers.every((a) => a.ready) || undefined;
        },
        what,
        ms,
      ).catch((e) => {
        throw new Error(`${e.message}; not back: ${JSON.stringify(lastNotReady)}`);
      });
    await everyoneBack('every client connected');
    log('all connected');
    /** Every (re)connection time from `since` on, from every thread. */
    const acceptsSince = async (since) =>
      (await askAll('accepts')).flatMap((a) => a.accepts).filter((t) => t >= since);

    // Publish the whole time, to a node that is not the one being replaced.
    let replacing = -1;
    let published = 0;
    let publishing = true;
    const publishErrors = [];
    // The request in flight: a node is stopped only once it is answered, so no publication
    // is left in doubt (and none is sent twice).
    let inflight = Promise.resolve();
    const publisher = (async () => {
      while (publishing) {
        const node = nodes[(replacing + 1 + 3) % 3];
        inflight = api(node, 'publish', { channel: CHANNEL, data: { n: published } }).catch((e) => ({ status: 0, text: e.message }));
        const r = await inflight;
        if (r.status === 200 && !r.body?.error) published += 1;
        else publishErrors.push(`${r.status} ${r.text}`);
        await sleep(PUBLISH_EVERY);
      }
    })();

    await sleep(500);
    const started = now();
    result.steps = [];
    for (let i = 0; i < 3; i++) {
      replacing = i;
      await inflight;
      const t0 = now();
      // One SIGTERM (a second one means "exit now").
      nodes[i].proc.kill('SIGTERM');
      if (drainSecs > 0) {
        // /health says draining before anything closes.
        const h = await until(async () => {
          const res = await fetch(`${nodes[i].httpUrl}/health`);
          return res.status === 503 ? res.json() : undefined;
        }, '/health 503 while draining', 2000);
        assert.equal(h.status, 'draining');
      }
      log(`node${i}: SIGTERM`);
      const exit = await withTimeout(nodes[i].exited, `node${i} to exit`, drainSecs * 1000 + 10_000);
      log(`node${i}: exited`);
      const exitedAfter = now() - t0;
      assert.equal(exit.code, 0, `node${i} exits cleanly after the drain: ${JSON.stringify(exit)}`);
      nodes[i] = await start(i, `127.0.0.1:${ports[i]}`);
      await everyoneBack(`every client back after node${i} was replaced`);
      log(`node${i}: replaced, every client back`);
      const moved = (await acceptsSince(t0)).map((t) => t - t0);
      // Which kinds of client make up the busiest 100 ms of this step.
      const busiest = peak(moved);
      const top = busiest.peakAtMs;
      const byKind = {};
      for (const a of await askAll('accepts')) {
        for (const [kind, times] of Object.entries(a.acceptsByKind)) {
          const n = times.filter((t) => t - t0 >= top && t - t0 < top + BUCKET_MS).length;
          byKind[kind] = (byKind[kind] || 0) + n;
        }
      }
      const stepEnd = now();
      result.steps.push({
        node: i,
        exitedAfterMs: Math.round(exitedAfter),
        reconnections: moved.length,
        firstMs: Math.round(Math.min(...moved)),
        lastMs: Math.round(Math.max(...moved)),
        peakAtMs: Math.round(top),
        peak: busiest.peak,
        peakByKind: byKind,
        t0,
        stepEnd,
      });
      replacing = -1;
      await sleep(300);
    }
    result.deploySecs = (now() - started) / 1000;
    publishing = false;
    await publisher;
    result.published = published;
    result.publishErrors = publishErrors;

    // Peak reconnections per 100 ms over the whole deploy.
    const accepts = await acceptsSince(started);
    result.reconnections = accepts.length;
    result.peakPer100ms = peak(accepts).peak;
    // The same seen from the nodes: the connections they opened (accepted and upgraded),
    // per 100 ms, by their own clocks, so the clients' event-loop lag does not enter.
    const opened = nodeOpens(logs);
    const serverSide = (from, to) => {
      const times = opened.filter((t) => t >= from && t <= to).map((t) => t - from);
      const p = peak(times);
      return { opens: times.length, peak: p.peak, atMs: Math.round(p.peakAtMs) };
    };
    for (const s of result.steps) {
      s.server = serverSide(s.t0, s.stepEnd);
      delete s.t0;
      delete s.stepEnd;
    }
    result.server = serverSide(started, now());

    // Centrifuge: every message once, for the clients whose resubscriptions all recovered.
    const finals = await withTimeout(askAll('final', { published }), 'the clients\' tallies', 30_000);
    const sum = (objs) => {
      const out = {};
      for (const o of objs) for (const [k, v] of Object.entries(o)) out[k] = (out[k] || 0) + v;
      return out;
    };
    const cs = finals.map((f) => f.centrifuge);
    const total = (key) => cs.reduce((n, c) => n + c[key], 0);
    result.centrifuge = {
      clients: total('clients'),
      moved: total('moved'),
      recovering: total('recovering'),
      unrecovered: total('unrecovered'),
      notMovedSample: cs.flatMap((c) => c.notMovedSample).slice(0, 5),
      lostSample: cs.flatMap((c) => c.lostSample).slice(0, 3),
      lost: total('lost'),
      duplicates: total('duplicates'),
      codes: sum(cs.map((c) => c.codes)),
    };
    result.raw = { closes: sum(finals.map((f) => f.rawCloses)) };
    result.socketio = { reasons: sum(finals.map((f) => f.sioReasons)) };
    return result;
  } finally {
    for (const c of closers) await c();
    await proxy.close();
    for (const node of nodes) await node.stop('SIGKILL');
    await redis.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe(`rolling deploy of three nodes with ${RAW + CENTRIFUGE + SOCKETIO} connections`, { skip: !haveRedis && 'redis-server is not installed' }, () => {
  const runs = {};
  after(() => {
    if (runs.drained && runs.abrupt) {
      console.log(
        `peak per ${BUCKET_MS} ms, --drain-timeout ${DRAIN_SECS} vs 0: ` +
          `reconnections seen by the clients ${runs.drained.peakPer100ms} vs ${runs.abrupt.peakPer100ms}, ` +
          `connections the nodes accepted ${runs.drained.server.peak} vs ${runs.abrupt.server.peak}`,
      );
    }
  });

  for (const [key, drain] of [['drained', DRAIN_SECS], ['abrupt', 0]]) {
    it(`--drain-timeout ${drain}: every client moves, every centrifuge client recovers and loses nothing`, { timeout: 150_000 }, async () => {
      const r = await rollingDeploy(drain);
      runs[key] = r;
      console.log(JSON.stringify(r));
      assert.deepEqual(r.publishErrors, []);
      // The nodes' logs hold every reconnection the clients saw (so their peak is read from
      // all of them, not from a log that stopped matching).
      assert.ok(r.server.opens >= r.reconnections, `opens in the nodes' logs: ${r.server.opens}, reconnections: ${r.reconnections}`);
      assert.ok(r.published > 20, `published throughout: ${r.published}`);
      // Every client came back after every step (rollingDeploy waits for it); each step
      // moved at least the connections of the node replaced.
      for (const s of r.steps) assert.ok(s.reconnections >= (RAW + CENTRIFUGE + SOCKETIO) / 6, JSON.stringify(s));
      const c = r.centrifuge;
      // Every centrifuge client moved, resubscribed and recovered, so the check below covers all.
      assert.equal(c.moved, c.clients, `centrifuge clients that moved: ${JSON.stringify(c)}`);
      assert.equal(c.recovering, c.clients, `centrifuge clients that recovered: ${c.recovering} of ${c.clients}`);
      assert.equal(c.lost, 0, 'recovered centrifuge clients lost nothing');
      assert.equal(c.duplicates, 0, 'recovered centrifuge clients got nothing twice');
      if (drain > 0) {
        // Told to reconnect (1012), and nothing else: not closed for shutdown (1001) nor as
        // slow consumers (1008); and spread over the window.
        assert.deepEqual(Object.keys(r.raw.closes), ['1012'], `raw close codes: ${JSON.stringify(r.raw.closes)}`);
        assert.ok(r.raw.closes['1012'] >= RAW, `raw close codes: ${JSON.stringify(r.raw.closes)}`);
        for (const s of r.steps) assert.ok(s.lastMs - s.firstMs >= drain * 1000 * 0.5, `spread: ${JSON.stringify(s)}`);
      }
    });
  }

  it('the drained deploy reconnects at a clearly lower peak rate', () => {
    assert.ok(runs.drained && runs.abrupt, 'both deploys ran');
    // Both as the clients saw it and as the nodes accepted: at most half.
    assert.ok(
      runs.drained.peakPer100ms * 2 <= runs.abrupt.peakPer100ms,
      `peak reconnections per ${BUCKET_MS} ms: drained ${runs.drained.peakPer100ms}, abrupt ${runs.abrupt.peakPer100ms}`,
    );
    assert.ok(
      runs.drained.server.peak * 2 <= runs.abrupt.server.peak,
      `peak accepts per ${BUCKET_MS} ms: drained ${JSON.stringify(runs.drained.server)}, abrupt ${JSON.stringify(runs.abrupt.server)}`,
    );
  });
});
