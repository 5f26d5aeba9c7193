// A private redis-server for the cluster suites: a free loopback port, a temporary
// directory, no persistence (`--save '' --appendonly no`) unless asked for
// (`startRedis({ persist: true })`: an append-only file fsynced on every write). Never
// touches a Redis that is already running (in particular not one on 6379).

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { WAIT_MS } from './harness.mjs';

/** A loopback TCP port nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Whether `redis-server` can be started here. */
export function redisAvailable() {
  return new Promise((resolve) => {
    const p = spawn('redis-server', ['--version'], { stdio: 'ignore' });
    p.on('error', () => resolve(false));
    p.on('exit', (code) => resolve(code === 0));
  });
}

function launch(port, dir, persist = false, tls = null) {
  const aof = persist ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no'];
  // TLS only: the plain port is off, every connection must speak TLS.
  const ports = tls
    ? ['--port', '0', '--tls-port', String(port), '--tls-cert-file', tls.cert, '--tls-key-file', tls.key,
        '--tls-ca-cert-file', tls.ca, '--tls-auth-clients', tls.authClients ? 'yes' : 'no']
    : ['--port', String(port)];
  const args = [...ports, '--bind', '127.0.0.1', '--save', '', ...aof, '--dir', dir];
  const proc = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`redis-server did not start on ${port}: ${out}`)), WAIT_MS);
    const onData = (d) => {
      out = (out + d).slice(-10_000);
      if (/Ready to accept connections/.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    };
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', onData);
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', onData);
    exited.then(({ code }) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited (${code}) before it was ready: ${out}`));
    });
  });
  return { proc, exited, ready };
}

/**
 * Start a private redis-server. Returns { port, url, stop(signal), restart() }:
 * `stop` ends it (SIGKILL by default: an outage), `restart` starts it again on the
 * same port with empty data, like a Redis that crashed and came back. With
 * `{ persist: true }` every write is appended to a file in its directory and fsynced
 * before the reply (`--appendonly yes --appendfsync always`), so `restart` brings it back
 * with every acknowledged write, like a Redis that crashed and reloaded its data.
 * With `{ tls: { cert, key, ca, authClients } }` (PEM file paths) it listens for TLS
 * only (its `url` is `rediss://…`), requiring client certificates when `authClients`.
 */
export async function startRedis({ persist = false, tls = null } = {}) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), 'sb-redis-'));
  let cur = launch(port, dir, persist, tls);
  await cur.ready;
  return {
    port,
    url: `${tls ? 'rediss' : 'redis'}://127.0.0.1:${port}/0`,
    async stop(signal = 'SIGKILL') {
      if (cur.proc.exitCode === null && cur.proc.signalCode === null) cur.proc.kill(signal);
      await cur.exited;
    },
    async restart() {
      cur = launch(port, dir, persist, tls);
      await cur.ready;
    },
    /** Run one command with `redis-cli` against this server; returns its output lines. */
    cli(...args) {
      return execFileSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8' })
        .trim()
        .split('\n');
    },
    async close() {
      await this.stop('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
