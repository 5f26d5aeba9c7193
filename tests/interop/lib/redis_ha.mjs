// Private Redis deployments with failover for the broker suites, on free loopback ports in
// temporary directories, no persistence: a master, its replicas and three sentinels
// (`startSentinels`). Every process is killed by `close()`; nothing already running on the
// machine is touched.

import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from './redis.mjs';
import { WAIT_MS } from './harness.mjs';

const execFileP = promisify(execFile);

/** Whether `program --version` runs here. */
export function available(program) {
  return new Promise((resolve) => {
    const p = spawn(program, ['--version'], { stdio: 'ignore' });
    p.on('error', () => resolve(false));
    p.on('exit', (code) => resolve(code === 0));
  });
}

/** One `redis-cli -p port ...args` (async: publishers keep running); resolves to its output. */
export async function cli(port, ...args) {
  return cliTls(null, port, ...args);
}

/** `cli` over TLS when `tls` ({ cert, key, ca }) is given. */
export async function cliTls(tls, port, ...args) {
  const t = tls ? ['--tls', '--cacert', tls.ca] : [];
  const { stdout } = await execFileP('redis-cli', [...t, '-p', String(port), ...args], {
    encoding: 'utf8',
    timeout: 5_000,
  });
  return stdout.trim();
}

/** Polls `check` every 100 ms until it returns a truthy value, at most `ms`. */
export async function poll(check, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? ` (${last.message})` : ''}`);
    }
    await sleep(100);
  }
}

/** A started process: { port, proc, kill(signal), exited, output() }. */
function launch(program, args, port) {
  const proc = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (d) => {
    out = (out + d).slice(-20_000);
  };
  proc.stdout.setEncoding('utf8');
  proc.stdout.on('data', keep);
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', keep);
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  return {
    port,
    proc,
    exited,
    output: () => out,
    async kill(signal = 'SIGKILL') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
  };
}

/** `redis-server` arguments to listen on `port` only over TLS (`tls`: { cert, key, ca }), or in the clear. */
function listenArgs(port, tls) {
  return tls
    ? ['--port', '0', '--tls-port', String(port), '--tls-cert-file', tls.cert, '--tls-key-file', tls.key,
        '--tls-ca-cert-file', tls.ca, '--tls-auth-clients', 'no', '--tls-replication', 'yes']
    : ['--port', String(port)];
}

/** A `redis-server` on `port` (extra `args`; TLS only with `tls`), answering PING. */
export async function startServerProcess(port, dir, args = [], tls = null) {
  const p = launch(
    'redis-server',
    [...listenArgs(port, tls), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...args],
    port,
  );
  await poll(async () => (await cliTls(tls, port, 'PING')) === 'PONG', `redis-server on ${port}`).catch((e) => {
    throw new Error(`${e.message}\n${p.output()}`);
  });
  return p;
}

/**
 * A master, `replicas` replicas of it, and three sentinels watching it as `name` (quorum
 * 2, down after `downAfterMs`, failover timeout `failoverTimeoutMs`). Resolves once the
 * replicas are in sync and every sentinel knows the other two and the replicas. With `tls`
 * ({ cert, key, ca }: PEM files) every server and sentinel listens only over TLS and
 * replicates over TLS, and `url()` is `rediss+sentinel://…`. Returns
 * { name, master, replicas, sentinels, url(query), masterPort(), close() }.
 */
export async function startSentinels({ name = 'sbmaster', replicas = 1, downAfterMs = 1000, failoverTimeoutMs = 3000, tls = null } = {}) {
  const cli = (port, ...args) => cliTls(tls, port, ...args);
  const dir = mkdtempSync(path.join(tmpdir(), 'sb-sentinel-'));
  const procs = [];
  const res = {
    name,
    replicas: [],
    sentinels: [],
    async close() {
      for (const p of procs) await p.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    const mdir = mkdtempSync(path.join(dir, 'master-'));
    res.master = await startServerProcess(await freePort(), mdir, [], tls);
    procs.push(res.master);
    for (let i = 0; i < replicas; i++) {
      const rdir = mkdtempSync(path.join(dir, `replica${i}-`));
      const r = await startServerProcess(await freePort(), rdir, ['--replicaof', '127.0.0.1', String(res.master.port)], tls);
      procs.push(r);
      res.replicas.push(r);
    }
    for (const r of res.replicas) {
      await poll(async () => /master_link_status:up/.test(await cli(r.port, 'INFO', 'replication')), `replica ${r.port} in sync`);
    }
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      const sdir = mkdtempSync(path.join(dir, `sentinel${i}-`));
      const conf = path.join(sdir, 'sentinel.conf');
      writeFileSync(
        conf,
        [
          ...(tls
            ? ['port 0', `tls-port ${port}`, `tls-cert-file ${tls.cert}`, `tls-key-file ${tls.key}`,
                `tls-ca-cert-file ${tls.ca}`, 'tls-auth-clients no', 'tls-replication yes']
            : [`port ${port}`]),
          'bind 127.0.0.1',
          `dir ${sdir}`,
          `sentinel monitor ${name} 127.0.0.1 ${res.master.port} 2`,
          `sentinel down-after-milliseconds ${name} ${downAfterMs}`,
          `sentinel failover-timeout ${name} ${failoverTimeoutMs}`,
          `sentinel parallel-syncs ${name} 1`,
          '',
        ].join('\n'),
      );
      const s = launch('redis-sentinel', [conf], port);
      procs.push(s);
      res.sentinels.push(s);
      await poll(async () => (await cli(port, 'PING')) === 'PONG', `redis-sentinel on ${port}`).catch((e) => {
        throw new Error(`${e.message}\n${s.output()}`);
      });
    }
    for (const s of res.sentinels) {
      await poll(async () => {
        const others = await cli(s.port, 'SENTINEL', 'sentinels', name);
        const known = await cli(s.port, 'SENTINEL', 'replicas', name);
        const peers = (others.match(/^runid$/gm) ?? []).length;
        const reps = (known.match(/^runid$/gm) ?? []).length;
        return peers === 2 && reps === replicas;
      }, `sentinel ${s.port} to know its peers and the replicas`, 30_000);
    }
  } catch (e) {
    await res.close();
    throw e;
  }
  res.url = (query = '') =>
    `${tls ? 'rediss' : 'redis'}+sentinel://${res.sentinels.map((s) => `127.0.0.1:${s.port}`).join(',')}/${name}${query}`;
  /** The master's port as the first sentinel that answers reports it. */
  res.masterPort = async () => {
    for (const s of res.sentinels) {
      try {
        const out = (await cli(s.port, 'SENTINEL', 'get-master-addr-by-name', name)).split('\n');
        return Number(out[1]);
      } catch {
        // that sentinel is gone: ask the next
      }
    }
    throw new Error('no sentinel answered');
  };
  return res;
}

/**
 * A Redis Cluster of `masters` masters with `replicas` replicas each (`--cluster-enabled
 * yes`, `cluster-node-timeout` `nodeTimeoutMs`), created with `redis-cli --cluster create`.
 * Resolves once every node reports `cluster_state:ok` and knows every other node. Returns
 * { nodes, url(query), slots(), masterOf(key), cli(port, ...args), close() }: `slots()` is the
 * slot layout as a live node reports it ([{ start, end, master: port, replicas: [port] }]).
 * With `tls` ({ cert, key, ca }: PEM files) every node listens only over TLS, the cluster
 * bus and replication too (`tls-cluster yes`), and `url()` is `rediss+cluster://…`.
 */
export async function startRedisCluster({ masters = 3, replicas = 1, nodeTimeoutMs = 1000, tls = null } = {}) {
  const cli = (port, ...args) => cliTls(tls, port, ...args);
  const tlsArgs = tls ? ['--tls', '--cacert', tls.ca] : [];
  const dir = mkdtempSync(path.join(tmpdir(), 'sb-rcluster-'));
  const nodes = [];
  const res = {
    nodes,
    async close() {
      for (const n of nodes) await n.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
  res.cli = cli;
  res.url = (query = '') => `${tls ? 'rediss' : 'redis'}+cluster://${nodes.slice(0, 2).map((n) => `127.0.0.1:${n.port}`).join(',')}${query}`;
  /** The slot layout, asked of the first live node that answers. */
  res.slots = async () => {
    for (const n of nodes) {
      if (n.proc.exitCode !== null || n.proc.signalCode !== null) continue;
      try {
        const { stdout } = await execFileP('redis-cli', [...tlsArgs, '-p', String(n.port), '--json', 'CLUSTER', 'SLOTS'], {
          encoding: 'utf8',
          timeout: 5_000,
        });
        return JSON.parse(stdout).map((r) => ({
          start: r[0],
          end: r[1],
          master: Number(r[2][1]),
          replicas: r.slice(3).map((x) => Number(x[1])),
        }));
      } catch {
        // that node is gone: ask the next
      }
    }
    throw new Error('no cluster node answered');
  };
  /** The port of the master that owns `key`'s slot. */
  res.masterOf = async (key) => {
    const live = nodes.find((n) => n.proc.exitCode === null && n.proc.signalCode === null);
    const slot = Number(await cli(live.port, 'CLUSTER', 'KEYSLOT', key));
    const r = (await res.slots()).find((x) => x.start <= slot && slot <= x.end);
    return r?.master;
  };
  try {
    const total = masters * (1 + replicas);
    for (let i = 0; i < total; i++) {
      const ndir = mkdtempSync(path.join(dir, `node${i}-`));
      nodes.push(
        await startServerProcess(await freePort(), ndir, [
          '--cluster-enabled', 'yes',
          '--cluster-config-file', path.join(ndir, 'nodes.conf'),
          '--cluster-node-timeout', String(nodeTimeoutMs),
          ...(tls ? ['--tls-cluster', 'yes'] : []),
        ], tls),
      );
    }
    await execFileP(
      'redis-cli',
      [...tlsArgs, '--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', String(replicas), '--cluster-yes'],
      { encoding: 'utf8', timeout: 60_000 },
    );
    for (const n of nodes) {
      await poll(async () => {
        const info = await cli(n.port, 'CLUSTER', 'INFO');
        return /cluster_state:ok/.test(info) && new RegExp(`cluster_known_nodes:${total}\\b`).test(info);
      }, `cluster node ${n.port} to be ready`, 30_000);
    }
    // Every node's view lists each master's replicas (a client may ask any of them for the
    // layout), and every replica is in sync: only then is the cluster as the tests assume.
    for (const n of nodes) {
      await poll(async () => {
        const { stdout } = await execFileP('redis-cli', [...tlsArgs, '-p', String(n.port), '--json', 'CLUSTER', 'SLOTS'], {
          encoding: 'utf8',
          timeout: 5_000,
        });
        const s = JSON.parse(stdout);
        return s.length >= masters && s.every((r) => r.length - 3 === replicas);
      }, `cluster node ${n.port} to list every master's replicas`, 30_000);
    }
    const layout = await res.slots();
    for (const port of new Set(layout.flatMap((r) => r.replicas))) {
      await poll(
        async () => /master_link_status:up/.test(await cli(port, 'INFO', 'replication')),
        `replica ${port} in sync`,
        30_000,
      );
    }
  } catch (e) {
    await res.close();
    throw e;
  }
  return res;
}
