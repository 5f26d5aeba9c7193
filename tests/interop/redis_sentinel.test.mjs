// The Redis broker behind Redis Sentinel: a private master + 1 replica + 3 sentinels
// (quorum 2, down-after 1000 ms, failover-timeout 3 s) on free loopback ports, two
// `switchboard` nodes on `redis+sentinel://…/sbmaster`, centrifuge-js and raw `ws` clients
// subscribed on both nodes, and two publishers (HTTP API `publish`, one request at a time,
// ~100/s each, publisher A through node0 and B through node1). The master is killed with
// SIGKILL; the sentinels promote the replica and the nodes follow. The same again on a fresh
// setup with a switchover (`SENTINEL FAILOVER`: the old master stays up, accepting writes
// until the sentinels make it a replica).
//
// Asserted: every publication the API acknowledged (200) is received by every client
// exactly once and in order per publisher (a client told it missed something — a raw
// connection closed with 4500, a centrifuge resubscription with recovered:false — is a
// failure here); the publishers saw nothing but 200 and 503; both nodes report the new
// master in /health; publications waited for the replica (`WAIT` calls on the master)
// before the fault. Printed (`sentinel: …`): the failover window seen by each publisher
// (first to last 503, and from the kill to the first acknowledgement after it), and the
// publish latency through the API with and without the replica confirmation.
//
// Also: a node given a master name the sentinels do not know exits at start with a clear
// error that shows the URL's password as `***`; /health names the master in use.
//
// Run: node --test --test-concurrency=1 tests/interop/redis_sentinel.test.mjs
// (SWITCHBOARD_BIN=/abs/path/to/switchboard to test another binary). Skipped when
// redis-server or redis-sentinel is not installed.

import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execFileSync, spawn } from 'node:child_process';
import { startServer, join, withTimeout, binaryPath } from './lib/harness.mjs';
import { CONFIG, API_KEY, health, connect, once } from './lib/cluster.mjs';
import { available, cli, poll, startSentinels } from './lib/redis_ha.mjs';

const skip =
  (!(await available('redis-server')) && 'redis-server is not installed') ||
  (!(await available('redis-sentinel')) && 'redis-sentinel is not installed');

const haveOpenssl = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

const RATE = 100; // per publisher, per second
const PUBLISH_TIMEOUT_MS = 5_000;
const DRAIN_MS = 15_000;

const live = [];
after(async () => {
  for (const f of live.reverse()) await f();
});

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

/** Publish latency through the API (sequential, `n` requests), in ms: { mean, p50, p99 }. */
async function latency(node, channel, n) {
  const ms = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const r = await fetch(`${node.httpUrl}/api/publish`, {
      method: 'POST',
      headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' },
      body: JSON.stringify({ channel, data: { warm: i } }),
    });
    await r.text();
    assert.equal(r.status, 200);
    ms.push(performance.now() - t0);
  }
  ms.sort((a, b) => a - b);
  const at = (q) => ms[Math.min(ms.length - 1, Math.floor(q * ms.length))];
  return { mean: ms.reduce((a, b) => a + b, 0) / ms.length, p50: at(0.5), p99: at(0.99) };
}

/** Per publisher: lost (acknowledged, never received), duplicated, reordered. */
function tally(received, pub) {
  const mine = received.filter((d) => d.p === pub.p).map((d) => d.i);
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
  const missing = pub.acked.map((a) => a.i).filter((i) => !seen.has(i));
  return { lost: missing.length, duplicated, reordered, missing };
}

/** Runs `switchboard serve` expecting it to exit on its own; resolves to { code, stderr }. */
function startExpectingExit(args) {
  return withTimeout(
    new Promise((resolve) => {
      const p = spawn(binaryPath(), ['serve', '--listen', '127.0.0.1:0', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      p.stderr.setEncoding('utf8');
      p.stderr.on('data', (d) => {
        stderr = (stderr + d).slice(-20_000);
      });
      p.on('exit', (code) => resolve({ code, stderr }));
    }),
    'switchboard to refuse to start',
  );
}

/**
 * One failover run on a fresh setup: `fault` is `kill` (the master killed with SIGKILL) or
 * `switchover` (`SENTINEL FAILOVER`: the old master stays up and becomes a replica, so the
 * nodes see `READONLY` and `+switch-master` rather than a lost connection).
 */
async function failoverRun(t, fault) {
  const ha = await startSentinels({ replicas: 1, downAfterMs: 1000, failoverTimeoutMs: 3000 });
  live.push(() => ha.close());
  const dir = mkdtempSync(path.join(tmpdir(), 'sb-sentinel-nodes-'));
  live.push(async () => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'switchboard.toml');
  writeFileSync(file, CONFIG);
  const nodes = [];
  live.push(async () => {
    for (const n of nodes) await n.stop('SIGKILL');
  });
  for (let i = 0; i < 2; i++) {
    nodes.push(
      await startServer(['--config', file, '--broker', ha.url(), '--node-name', `node${i}`, '--broker-lease', '1.5']),
    );
  }
  // A third node acknowledging without the replica's confirmation, for the latency figure.
  const noWait = await startServer(['--config', file, '--broker', ha.url('?wait=0'), '--node-name', 'nowait']);
  nodes.push(noWait);
  const masterAddr = `127.0.0.1:${ha.master.port}`;
  for (const n of nodes) {
    await poll(async () => {
      const h = await health(n);
      return h.broker.connected && h.broker.kind === 'redis-sentinel' && h.broker.masters?.[0] === masterAddr;
    }, `${n.httpUrl} on the master ${masterAddr}`);
  }

  // What the replica confirmation costs, on an idle setup.
  const latChannel = `sentinel-latency-${Date.now()}`;
  await latency(nodes[0], latChannel, 50);
  await latency(noWait, latChannel, 50);
  const withWait = await latency(nodes[0], latChannel, 300);
  const without = await latency(noWait, latChannel, 300);
  const f = (x) => x.toFixed(2);
  console.log(
    `sentinel: API publish latency ms, WAIT 1 (replica confirms): mean=${f(withWait.mean)} p50=${f(withWait.p50)} p99=${f(withWait.p99)}; ` +
      `wait=0: mean=${f(without.mean)} p50=${f(without.p50)} p99=${f(without.p99)}`,
  );
  const waits = Number((await cli(ha.master.port, 'INFO', 'commandstats')).match(/cmdstat_wait:calls=(\d+)/)?.[1] ?? 0);
  assert.ok(waits >= 350, `publications waited for the replica (WAIT calls: ${waits})`);

  // Clients: two centrifuge and one raw per node (not the latency node).
  const channel = `sentinel-${Date.now()}`;
  const clients = [];
  live.push(async () => {
    for (const c of clients) {
      if (c.kind === 'centrifuge') c.c.disconnect();
      else c.inbox.ws.terminate();
    }
  });
  for (const [k, node] of nodes.slice(0, 2).entries()) {
    for (let j = 0; j < 2; j++) {
      const { c } = await connect(node);
      const rec = { kind: 'centrifuge', node: k, c, got: [], subscribed: [] };
      clients.push(rec);
      const sub = c.newSubscription(channel);
      rec.sub = sub;
      sub.on('publication', (ctx) => rec.got.push(ctx.data));
      sub.on('subscribed', (ctx) => rec.subscribed.push({ wasRecovering: ctx.wasRecovering, recovered: ctx.recovered }));
      const p = once(sub, 'subscribed', () => true, `subscribed on node${k}`);
      sub.subscribe();
      await p;
      rec.received = () => rec.got;
    }
    const inbox = await join(node.wsUrl(`/${channel}`));
    clients.push({
      kind: 'raw',
      node: k,
      inbox,
      received: () =>
        inbox.items
          .filter((m) => m.text !== null)
          .map((m) => {
            try {
              return JSON.parse(m.text);
            } catch {
              return null;
            }
          })
          .filter((d) => d && typeof d.p === 'string'),
    });
  }

  const pubs = [startPublisher(nodes[0], channel, 'A'), startPublisher(nodes[1], channel, 'B')];
  let faultAt;
  const oldPort = ha.master.port;
  const newPort = ha.replicas[0].port;
  try {
    await sleep(1_500);
    faultAt = Date.now();
    if (fault === 'kill') await ha.master.kill('SIGKILL');
    else assert.equal(await cli(ha.sentinels[0].port, 'SENTINEL', 'FAILOVER', ha.name), 'OK');
    // Promotion: the sentinels name the replica, and both nodes use it.
    await poll(async () => (await ha.masterPort()) === newPort, 'the sentinels to promote the replica', 30_000);
    const promotedAt = Date.now();
    for (const n of nodes.slice(0, 2)) {
      await poll(async () => {
        const h = await health(n);
        return h.broker.connected && h.broker.masters?.[0] === `127.0.0.1:${newPort}`;
      }, `${n.httpUrl} on the new master`);
    }
    console.log(
      `sentinel: ${fault}: master ${oldPort}; sentinels promoted ${newPort} after ${promotedAt - faultAt} ms; ` +
        `both nodes on it after ${Date.now() - faultAt} ms`,
    );
    // Publishing goes on for a while on the new master.
    await sleep(2_000);
  } finally {
    for (const p of pubs) p.stop = true;
    await withTimeout(Promise.all(pubs.map((p) => p.done)), 'the publishers to stop', PUBLISH_TIMEOUT_MS + 2_000);
  }

  for (const p of pubs) {
    const firstAfter = p.acked.find((a) => a.sentAt >= faultAt);
    const errs = p.errors;
    const windowMs = errs.length ? errs.at(-1).at - errs[0].sentAt : 0;
    const statuses = Object.entries(p.statuses)
      .map(([s, n]) => `${s}:${n}`)
      .join(',');
    console.log(
      `sentinel: ${fault}: publisher ${p.p}: attempted=${p.next} acknowledged=${p.acked.length} statuses=${statuses} ` +
        `error_window_ms=${windowMs} resume_ms=${firstAfter ? firstAfter.ackAt - faultAt : 'none'}`,
    );
    assert.ok(firstAfter, `publisher ${p.p}: acknowledged again after the failover`);
    assert.deepEqual(
      Object.keys(p.statuses).filter((s) => s !== 'ok' && s !== '503'),
      [],
      `publisher ${p.p}: only 503s while there was no master (${statuses})`,
    );
  }

  let drained = true;
  try {
    await poll(() => {
      for (const c of clients) {
        const got = c.received();
        for (const p of pubs) {
          const have = new Set(got.filter((d) => d.p === p.p).map((d) => d.i));
          if (p.acked.some((a) => !have.has(a.i))) return false;
        }
      }
      return true;
    }, 'every client to have every acknowledged publication', DRAIN_MS);
  } catch (e) {
    drained = false;
    t.diagnostic(e.message);
  }
  const failures = [];
  for (const c of clients) {
    for (const p of pubs) {
      const r = tally(c.received(), p);
      if (r.lost || r.duplicated || r.reordered) {
        failures.push(
          `${c.kind} client on node${c.node}, publisher ${p.p}: lost=${r.lost} duplicated=${r.duplicated} ` +
            `reordered=${r.reordered} missing=${r.missing.slice(0, 5).join(',')}`,
        );
      }
    }
  }
  const raws = clients.filter((c) => c.kind === 'raw');
  const cents = clients.filter((c) => c.kind === 'centrifuge');
  const resubs = cents.flatMap((c) => c.subscribed.slice(1));
  console.log(
    `sentinel: ${fault}: clients=${clients.length} failures=${failures.length} raw_closed=${raws.filter((c) => c.inbox.closed).length} ` +
      `centrifuge_resubscribed=${resubs.length} recovered=${resubs.filter((s) => s.recovered).length}`,
  );
  assert.deepEqual(failures, [], 'no acknowledged publication lost, none twice, none out of order');
  assert.ok(drained, 'every client got every acknowledged publication');
  for (const c of raws) assert.equal(c.inbox.closed, null, `raw client on node${c.node} was not closed`);
  for (const s of resubs) assert.equal(s.recovered, true, 'a centrifuge resubscription recovered');
}

describe('the Redis broker behind Redis Sentinel', { skip }, () => {
  it('refuses to start on a master name the sentinels do not know, without showing the password', async () => {
    const ha = await startSentinels({ replicas: 0 });
    live.push(() => ha.close());
    const url = `redis+sentinel://alice:s3cret@${ha.sentinels.map((x) => `127.0.0.1:${x.port}`).join(',')}/nosuchmaster`;
    const { code, stderr } = await startExpectingExit(['--broker', url]);
    assert.notEqual(code, 0, 'exits with an error');
    assert.match(stderr, /cannot use the broker redis\+sentinel:\/\/alice:\*\*\*@127\.0\.0\.1:\d+/, stderr);
    assert.match(stderr, /does not know a master named "nosuchmaster"/, stderr);
    assert.doesNotMatch(stderr, /s3cret/, 'the password is not shown');
    // The master the sentinels do know is used, and /health does not show credentials.
    const node = await startServer(['--broker', ha.url()]);
    live.push(() => node.stop('SIGKILL'));
    await poll(async () => (await health(node)).broker.connected, 'the node on the master');
    const h = await health(node);
    assert.equal(h.broker.kind, 'redis-sentinel');
    assert.deepEqual(h.broker.masters, [`127.0.0.1:${ha.master.port}`]);
  });

  it('over TLS (rediss+sentinel://): sentinels and master reached with the broker TLS settings', { skip: !haveOpenssl && 'openssl is not installed' }, async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'sb-sentinel-tls-'));
    live.push(async () => rmSync(dir, { recursive: true, force: true }));
    const f = (n) => path.join(dir, n);
    const quiet = { stdio: 'ignore' };
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.crt'),
      '-days', '1', '-subj', '/CN=sentinel-test-ca'], quiet);
    execFileSync('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('redis.key'), '-out', f('redis.csr'),
      '-subj', '/CN=127.0.0.1'], quiet);
    writeFileSync(f('redis.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
    execFileSync('openssl', ['x509', '-req', '-in', f('redis.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'),
      '-CAcreateserial', '-out', f('redis.crt'), '-days', '1', '-extfile', f('redis.ext')], quiet);
    const tls = { cert: f('redis.crt'), key: f('redis.key'), ca: f('ca.crt') };
    const ha = await startSentinels({ replicas: 1, tls });
    live.push(() => ha.close());
    assert.match(ha.url(), /^rediss\+sentinel:\/\//);

    // Without the test CA the certificates do not verify: refused at start.
    const refused = await startExpectingExit(['--broker', ha.url()]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /cannot use the broker rediss\+sentinel:/, refused.stderr);
    assert.match(refused.stderr, /certificate|UnknownIssuer/i, refused.stderr);

    const config = f('switchboard.toml');
    writeFileSync(config, CONFIG);
    const pair = [];
    for (let i = 0; i < 2; i++) {
      const n = await startServer(['--config', config, '--broker', ha.url(), '--broker-tls-ca', tls.ca]);
      live.push(() => n.stop('SIGKILL'));
      pair.push(n);
      await poll(async () => {
        const h = await health(n);
        return h.broker.connected && h.broker.masters?.[0] === `127.0.0.1:${ha.master.port}`;
      }, 'a node on the TLS master');
    }
    const inbox = await join(pair[1].wsUrl('/tls-room'));
    live.push(async () => inbox.ws.terminate());
    const r = await fetch(`${pair[0].httpUrl}/api/publish`, {
      method: 'POST',
      headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' },
      body: JSON.stringify({ channel: 'tls-room', data: { over: 'tls' } }),
    });
    assert.equal(r.status, 200, await r.text());
    assert.deepEqual(JSON.parse((await inbox.next('the publication from the other node')).text), { over: 'tls' });
  });

  it('follows a failover (kill): nothing acknowledged is lost or doubled, publishers get only 503s meanwhile', (t) =>
    failoverRun(t, 'kill'),
  );

  // During a switchover the old master accepts publications until the sentinels reconfigure
  // it; the promoted replica does not have those. They must never be acknowledged, nor sent
  // live: a publication goes out only once a replica confirmed it, and a master left
  // without a confirming replica is not published to for a while.
  it('follows a switchover (SENTINEL FAILOVER): nothing acknowledged is lost or doubled', (t) =>
    failoverRun(t, 'switchover'),
  );
});
