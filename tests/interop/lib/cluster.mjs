// Helpers for the cluster suites: several real `switchboard` processes sharing one
// private Redis, the HTTP API, bounded polling, and the `centrifuge` SDK.

import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Centrifuge } from 'centrifuge';
import { WebSocket, startServer, withTimeout, WAIT_MS } from './harness.mjs';
import { startRedis } from './redis.mjs';

const execFileP = promisify(execFile);

export const API_KEY = 'cluster-test-key';

/** Channel settings shared by the cluster suites: history, recovery, presence, join/leave. */
export const CONFIG = `
allow_anonymous = true
api_key = "${API_KEY}"

[channel.default]
presence = true
join_leave = true
history_size = 10000
history_ttl = 300
force_recovery = true
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
`;

/**
 * Start a private Redis and `n` nodes on it. `args` are extra flags for every node, `env`
 * extra environment variables (e.g. `SWITCHBOARD_LOG_LEVEL`).
 * Returns { redis, nodes, startNode(i), close() }.
 */
export async function startCluster(n, args = [], env = {}) {
  const redis = await startRedis();
  const dir = mkdtempSync(path.join(tmpdir(), 'sb-cluster-'));
  const file = path.join(dir, 'switchboard.toml');
  writeFileSync(file, CONFIG);
  const startNode = (i) =>
    startServer(['--config', file, '--broker', redis.url, '--node-name', `node${i}`, ...args], { env });
  const nodes = [];
  for (let i = 0; i < n; i++) nodes.push(await startNode(i));
  return {
    redis,
    nodes,
    startNode,
    async close() {
      for (const node of nodes) await node.stop('SIGKILL');
      await redis.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** POST /api/<method> on `node`; resolves to { status, body }. */
export async function api(node, method, body = {}) {
  const res = await fetch(`${node.httpUrl}/api/${method}`, {
    method: 'POST',
    headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  return { status: res.status, body: json, text };
}

/** GET /health on `node` as JSON. */
export async function health(node) {
  const res = await fetch(`${node.httpUrl}/health`);
  return res.json();
}

/**
 * Polls `check` (async allowed) every 50 ms until it returns something other than
 * undefined/false, at most `ms`; resolves to that value. A bounded wait, not a timing
 * assertion: failing means the condition never held.
 */
export async function until(check, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Resolve on the first `event` on `emitter` whose context satisfies `pred`. */
export function once(emitter, event, pred = () => true, what = event) {
  return withTimeout(
    new Promise((resolve) => {
      const f = (ctx) => {
        if (!pred(ctx)) return;
        emitter.removeListener(event, f);
        resolve(ctx);
      };
      emitter.on(event, f);
    }),
    what,
  );
}

/**
 * A connected `centrifuge` client on `node`: { c, client } (client = the server's id).
 * `opts` are extra `Centrifuge` options (e.g. `token`).
 */
export async function connect(node, opts = {}) {
  const c = new Centrifuge(node.wsUrl('/connection/websocket'), {
    websocket: WebSocket,
    minReconnectDelay: 50,
    maxReconnectDelay: 300,
    ...opts,
  });
  const p = once(c, 'connected', () => true, `connect to ${node.httpUrl}`);
  c.connect();
  const ctx = await p;
  return { c, client: ctx.client };
}

/**
 * Subscribe `c` to `channel` and collect its publications: { sub, ctx, got, until(pred) }.
 * `got` holds publication contexts in arrival order.
 */
export async function subscribe(c, channel, opts = {}) {
  const sub = c.newSubscription(channel, opts);
  const got = [];
  const waiters = [];
  sub.on('publication', (ctx) => {
    got.push(ctx);
    for (const w of waiters.splice(0)) w();
  });
  const p = once(sub, 'subscribed', () => true, `subscribed to ${channel}`);
  sub.subscribe();
  const ctx = await p;
  return {
    sub,
    ctx,
    got,
    /** Wait until `pred(got)` holds. */
    until(pred, what) {
      return withTimeout(
        new Promise((resolve) => {
          const check = () => (pred(got) ? resolve(got) : waiters.push(check));
          check();
        }),
        what,
      );
    },
  };
}

/**
 * Make Redis drop every pub/sub connection (the nodes' subscription connections), as a
 * network blip would: `CLIENT KILL TYPE pubsub`. Without blocking the event loop, so
 * publishers keep going meanwhile. Resolves to how many connections it closed.
 */
export async function dropPubSub(redis) {
  const { stdout } = await execFileP('redis-cli', ['-p', String(redis.port), 'CLIENT', 'KILL', 'TYPE', 'pubsub'], {
    encoding: 'utf8',
  });
  return Number(stdout.trim());
}

/** The JSON messages a raw `ws` client (an `Inbox`) received so far, parsed, in order. */
export function rawJson(inbox) {
  return inbox.items.filter((m) => m.text !== null).map((m) => JSON.parse(m.text));
}
