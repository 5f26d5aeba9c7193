// Shared helpers for the Node interop suites: start the real `switchboard`
// binary on a free loopback port, and a small inbox around a `ws` client so
// tests can await "the next message" without sleeping.

import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import WebSocket from 'ws';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, '..', '..', '..');

/** Upper bound for any single wait, so a broken server fails a test instead of hanging it. */
export const WAIT_MS = 15_000;

/** Absolute path of the binary under test: `$SWITCHBOARD_BIN`, else the release build. */
export function binaryPath() {
  const bin = process.env.SWITCHBOARD_BIN || path.join(REPO_ROOT, 'target', 'release', 'switchboard');
  if (!existsSync(bin)) {
    throw new Error(`switchboard binary not found at ${bin}; build it with \`cargo build --release\` or set SWITCHBOARD_BIN`);
  }
  return bin;
}

/** Environment for the child: ours minus any SWITCHBOARD_* setting, so the flags a test passes are the whole config. */
function childEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('SWITCHBOARD_')) env[k] = v;
  }
  env.SWITCHBOARD_LOG_LEVEL = process.env.SWITCHBOARD_TEST_LOG_LEVEL || 'warn';
  return { ...env, ...extra };
}

/**
 * Start `switchboard serve --listen 127.0.0.1:0 ...extraArgs` (or another
 * `listen` address, e.g. to restart on the same port; `env` adds environment
 * variables such as SWITCHBOARD_WELCOME; `stderrFile` appends the server's log to that file
 * instead of a pipe, so a server logging a lot never waits for this process to read it) and
 * resolve once it printed its "listening" line. Returns { port, httpUrl, wsUrl(path), stop(),
 * stderr(), proc }.
 */
export function startServer(extraArgs = [], { listen = '127.0.0.1:0', env = {}, stderrFile } = {}) {
  const bin = binaryPath();
  const args = ['serve', '--listen', listen, ...extraArgs];
  const logFd = stderrFile ? openSync(stderrFile, 'a') : null;
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', logFd ?? 'pipe'], env: childEnv(env) });
  if (logFd !== null) closeSync(logFd);
  let piped = '';
  let stdout = '';
  // Only the tail: enough to explain a failure without unbounded growth.
  const stderr = () => (stderrFile ? readFileSync(stderrFile, 'utf8') : piped).slice(-20_000);
  proc.stderr?.setEncoding('utf8');
  proc.stderr?.on('data', (d) => {
    piped = (piped + d).slice(-20_000);
  });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));

  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`switchboard did not print its listening line within ${WAIT_MS} ms\nargs: ${args.join(' ')}\nstdout: ${stdout}\nstderr: ${stderr()}`));
    }, WAIT_MS);
    proc.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`could not start ${bin}: ${err.message}`));
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`switchboard exited early (code ${code}, signal ${signal})\nargs: ${args.join(' ')}\nstdout: ${stdout}\nstderr: ${stderr()}`));
    });
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (d) => {
      stdout += d;
      const m = /^Switchboard listening on (https?):\/\/127\.0\.0\.1:(\d+)\r?$/m.exec(stdout);
      if (!m) return;
      clearTimeout(timer);
      const port = Number(m[2]);
      const scheme = m[1];
      resolve({
        proc,
        port,
        httpUrl: `${scheme}://127.0.0.1:${port}`,
        wsUrl: (p = '/') => `${scheme === 'https' ? 'wss' : 'ws'}://127.0.0.1:${port}${p}`,
        stderr,
        stdout: () => stdout,
        exited,
        /** SIGTERM, then SIGKILL if it has not exited after WAIT_MS; resolves to { code, signal }. */
        async stop(signal = 'SIGTERM') {
          if (proc.exitCode !== null || proc.signalCode !== null) return exited;
          proc.kill(signal);
          const t = setTimeout(() => proc.kill('SIGKILL'), WAIT_MS);
          const r = await exited;
          clearTimeout(t);
          return r;
        },
      });
    });
  });
}

/** Reject after WAIT_MS with `what` in the message, so a missing event names itself. */
export function withTimeout(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Prefix of the probe messages `ready()` uses; inboxes hide them from tests. */
const PROBE = '__switchboard_test_probe__';

/**
 * Records every message a `ws` client receives, in order, and lets a test await
 * the next one. Probe messages from `ready()` (ours or other members') are skipped.
 */
export class Inbox {
  constructor(ws) {
    this.ws = ws;
    this.items = [];
    this.waiters = [];
    this.closed = null;
    this.probes = [];
    ws.on('message', (data, isBinary) => {
      if (!isBinary && data.toString().startsWith(PROBE)) {
        this.probes.push(data.toString());
        this.#wake();
        return;
      }
      this.items.push({ data: Buffer.from(data), isBinary, text: isBinary ? null : data.toString() });
      this.#wake();
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.#wake();
    });
  }

  #wake() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  async #until(check, what) {
    return withTimeout(
      new Promise((resolve, reject) => {
        const attempt = () => {
          let r;
          try {
            r = check();
          } catch (e) {
            reject(e);
            return;
          }
          if (r !== undefined) resolve(r);
          else this.waiters.push(attempt);
        };
        attempt();
      }),
      what,
    );
  }

  /** The next (not yet taken) message. Fails if the connection closes first. */
  next(what = 'a message') {
    return this.#until(() => {
      if (this.items.length) return this.items.shift();
      if (this.closed) throw new Error(`connection closed (${this.closed.code} ${this.closed.reason}) while waiting for ${what}`);
      return undefined;
    }, what);
  }

  /** Resolves with { code, reason } once the connection is closed. */
  close(what = 'the connection to close') {
    return this.#until(() => this.closed ?? undefined, what);
  }

  /** Waits until a probe with this exact text has arrived. */
  probe(text) {
    return this.#until(() => {
      const i = this.probes.indexOf(text);
      if (i >= 0) {
        this.probes.splice(i, 1);
        return true;
      }
      if (this.closed) throw new Error(`connection closed (${this.closed.code}) while waiting for probe`);
      return undefined;
    }, `probe ${text}`);
  }
}

/** Resolve when `ws` is open (reject on error or early close). */
export function opened(ws) {
  if (ws.readyState === WebSocket.OPEN) return Promise.resolve();
  return withTimeout(
    new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
      ws.once('close', (code) => reject(new Error(`closed with ${code} before opening`)));
    }),
    `${ws.url} to open`,
  );
}

/**
 * Make sure the server has added this client to its room: send a unique probe
 * and wait for it to come back (needs echo on). Only after that can a test rely
 * on receiving other members' messages.
 */
export async function ready(inbox) {
  const text = `${PROBE}${randomUUID()}`;
  inbox.ws.send(text);
  await inbox.probe(text);
}

/** Open a client, wrap it in an Inbox and wait until it is in its room (echo must be on). */
export async function join(url, options = {}) {
  const ws = new WebSocket(url, options);
  ws.on('error', () => {});
  const inbox = new Inbox(ws);
  await opened(ws);
  await ready(inbox);
  return inbox;
}

/**
 * Records every `event` an emitter (a socket.io socket, a centrifuge subscription, ...) gives,
 * as the list of its arguments, and waits for counts: `until(n)` resolves with all records
 * once there are `n` of them (bounded by WAIT_MS).
 */
export function collectEvents(emitter, event) {
  const got = [];
  const waiters = [];
  emitter.on(event, (...args) => {
    got.push(args);
    for (const w of waiters.splice(0)) w();
  });
  return {
    got,
    until(n, what = `${n} "${event}" events`) {
      return withTimeout(
        new Promise((resolve) => {
          const check = () => (got.length >= n ? resolve(got) : waiters.push(check));
          check();
        }),
        what,
      );
    },
  };
}

export { WebSocket, REPO_ROOT, PROBE };
