// The Redis broker over TLS: a private TLS-only redis-server (plain port off) with a
// certificate from a CA generated for this run (openssl), two `switchboard` nodes on
// `rediss://` trusting that CA. Publications cross nodes; a node given another CA, or none
// (the system's store does not know the test CA), refuses to start with a clear error
// instead of retrying for ever; a Redis that requires client certificates accepts a node
// that presents one signed by its CA. The same for a Redis Cluster (3 masters, 3 replicas)
// served only over TLS, cluster bus included: two nodes on `rediss+cluster://` share
// channels of every master; a wrong CA, or none, is refused at start.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServer, join, binaryPath, withTimeout } from './lib/harness.mjs';
import { startRedis, redisAvailable } from './lib/redis.mjs';
import { CONFIG, api, health } from './lib/cluster.mjs';
import { poll, startRedisCluster } from './lib/redis_ha.mjs';

const execFileP = promisify(execFile);
const haveRedis = await redisAvailable();
const haveOpenssl = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
const skip = (!haveRedis && 'redis-server is not installed') || (!haveOpenssl && 'openssl is not installed');

const dir = mkdtempSync(path.join(tmpdir(), 'sb-redis-tls-'));
const file = (name) => path.join(dir, name);

/** A CA (`NAME.crt`, `NAME.key`) valid for a day. */
function makeCa(name) {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', file(`${name}.key`),
    '-out', file(`${name}.crt`), '-days', '1', '-subj', `/CN=${name}`], { stdio: 'ignore' });
}

/** A certificate `NAME.crt`/`NAME.key` for 127.0.0.1, signed by CA `ca`. */
function makeCert(name, ca) {
  execFileSync('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', file(`${name}.key`),
    '-out', file(`${name}.csr`), '-subj', '/CN=127.0.0.1'], { stdio: 'ignore' });
  writeFileSync(file(`${name}.ext`), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  execFileSync('openssl', ['x509', '-req', '-in', file(`${name}.csr`), '-CA', file(`${ca}.crt`),
    '-CAkey', file(`${ca}.key`), '-CAcreateserial', '-out', file(`${name}.crt`), '-days', '1',
    '-extfile', file(`${name}.ext`)], { stdio: 'ignore' });
}

/** Runs `switchboard serve` expecting it to exit on its own; resolves to { code, stderr }. */
function startExpectingExit(args) {
  return withTimeout(new Promise((resolve) => {
    const p = spawn(binaryPath(), ['serve', '--listen', '127.0.0.1:0', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr.setEncoding('utf8');
    p.stderr.on('data', (d) => { stderr = (stderr + d).slice(-20_000); });
    p.on('exit', (code) => resolve({ code, stderr }));
  }), 'switchboard to refuse to start');
}

describe('the Redis broker over TLS', { skip }, () => {
  const nodes = [];
  const redises = [];
  const clusters = [];
  const sockets = [];
  let config;

  before(() => {
    makeCa('ca');
    makeCa('other-ca');
    makeCert('redis', 'ca');
    makeCert('node', 'ca');
    config = file('switchboard.toml');
    writeFileSync(config, CONFIG);
  });

  after(async () => {
    for (const s of sockets) s.ws.close();
    for (const n of nodes) await n.stop('SIGKILL');
    for (const r of redises) await r.close();
    for (const rc of clusters) await rc.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('two nodes on rediss:// with the generated CA share channels', async () => {
    const redis = await startRedis({ tls: { cert: file('redis.crt'), key: file('redis.key'), ca: file('ca.crt') } });
    redises.push(redis);
    assert.match(redis.url, /^rediss:\/\//);
    for (let i = 0; i < 2; i++) {
      nodes.push(await startServer(['--config', config, '--broker', redis.url, '--broker-tls-ca', file('ca.crt'), '--node-name', `tls${i}`]));
    }
    for (const node of nodes) {
      const h = await (await fetch(`${node.httpUrl}/health`)).json();
      assert.equal(h.broker.connected, true, 'connected over TLS');
    }
    const raw = await join(nodes[1].wsUrl('/tls-room'));
    sockets.push(raw);
    const r = await api(nodes[0], 'publish', { channel: 'tls-room', data: { over: 'tls' } });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(JSON.parse((await raw.next('the publication from the other node')).text), { over: 'tls' });
  });

  it('a node given the wrong CA, or none, refuses to start with a clear error', async () => {
    const redis = redises[0];
    for (const extra of [['--broker-tls-ca', file('other-ca.crt')], []]) {
      const { code, stderr } = await startExpectingExit(['--config', config, '--broker', redis.url, ...extra]);
      assert.notEqual(code, 0, 'exits with an error');
      assert.match(stderr, /cannot use the broker rediss:\/\/127\.0\.0\.1:\d+\/0/);
      assert.match(stderr, /certificate|UnknownIssuer/i, stderr);
    }
  });

  it('a Redis that requires client certificates accepts a node presenting one', async () => {
    const redis = await startRedis({
      tls: { cert: file('redis.crt'), key: file('redis.key'), ca: file('ca.crt'), authClients: true },
    });
    redises.push(redis);
    const node = await startServer(['--config', config, '--broker', redis.url, '--broker-tls-ca', file('ca.crt'),
      '--broker-tls-cert', file('node.crt'), '--broker-tls-key', file('node.key')]);
    nodes.push(node);
    const r = await api(node, 'publish', { channel: 'mtls', data: 1 });
    assert.equal(r.status, 200, r.text);
    // Without a client certificate the handshake is refused: also a clear error at start.
    const { code, stderr } = await startExpectingExit(['--config', config, '--broker', redis.url, '--broker-tls-ca', file('ca.crt')]);
    assert.notEqual(code, 0);
    assert.match(stderr, /cannot use the broker/);
  });

  it('a TLS-only Redis Cluster (rediss+cluster://): two nodes share channels of every master; a wrong CA, or none, is refused at start', async () => {
    const tls = { cert: file('redis.crt'), key: file('redis.key'), ca: file('ca.crt') };
    const rc = await startRedisCluster({ masters: 3, replicas: 1, tls });
    clusters.push(rc);
    const url = rc.url();
    assert.match(url, /^rediss\+cluster:\/\//);
    // Nothing answers in the clear.
    await assert.rejects(execFileP('redis-cli', ['-p', String(rc.nodes[0].port), 'PING'], { timeout: 5_000 }).then(({ stdout }) => {
      if (!/PONG/.test(stdout)) throw new Error(stdout);
    }));
    const masters = [...new Set((await rc.slots()).map((r) => r.master))];
    assert.equal(masters.length, 3);
    const pair = [];
    for (let i = 0; i < 2; i++) {
      const n = await startServer(['--config', config, '--broker', url, '--broker-tls-ca', file('ca.crt'), '--node-name', `tls-cluster${i}`]);
      nodes.push(n);
      pair.push(n);
    }
    for (const n of pair) {
      await poll(async () => {
        const h = await health(n);
        return h.broker.connected && h.broker.kind === 'redis-cluster' && new Set(h.broker.masters).size === 3;
      }, `${n.httpUrl} connected to the TLS cluster`);
    }
    // One channel per master: its publications cross the nodes through that master.
    const channels = new Map();
    for (let k = 0; channels.size < masters.length; k++) {
      assert.ok(k < 1000, 'a channel for every master found');
      const channel = `tls-cluster-${k}`;
      const m = await rc.masterOf(`sb:{${channel}}:m`);
      if (!channels.has(m)) channels.set(m, channel);
    }
    for (const [master, channel] of channels) {
      const raw = await join(pair[1].wsUrl(`/${channel}`));
      sockets.push(raw);
      const r = await api(pair[0], 'publish', { channel, data: { over: 'tls', master } });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(JSON.parse((await raw.next(`the publication through ${master}`)).text), { over: 'tls', master });
      const sub = (await rc.cli(master, 'PUBSUB', 'SHARDNUMSUB', `sb:{${channel}}:c`)).split('\n');
      assert.equal(Number(sub[1]), 1, `the listening node subscribed on ${master} over TLS`);
    }
    for (const extra of [['--broker-tls-ca', file('other-ca.crt')], []]) {
      const { code, stderr } = await startExpectingExit(['--config', config, '--broker', url, ...extra]);
      assert.notEqual(code, 0, 'exits with an error');
      assert.match(stderr, /cannot use the broker rediss\+cluster:\/\/127\.0\.0\.1:\d+,127\.0\.0\.1:\d+/);
      assert.match(stderr, /certificate|UnknownIssuer/i, stderr);
    }
  });
});
