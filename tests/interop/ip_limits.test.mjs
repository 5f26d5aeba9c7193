// `--max-connections-per-ip N` with the unmodified clients of every protocol: N connections
// from one source address (127.0.0.x) are admitted, the (N+1)th from the same address is
// refused, and a connection from another address still gets in. Each protocol gets its own
// pair of addresses, so the cases do not count against each other.
//
// raw `ws`, `centrifuge` and `socket.io-client` bind their sockets to the address themselves
// (`localAddress`); `pusher-js` (its Node build cannot be given one) goes through a relay
// whose outgoing socket is bound to it, so the server sees that address as the client's.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test ip_limits.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';
import { io } from 'socket.io-client';
import PusherClient from 'pusher-js';
import { startServer, withTimeout } from './lib/harness.mjs';

const N = 3;
const APP = { appId: 'ip-app', key: 'ip-key', secret: 'ip-secret' };

let server;
let dir;
const cleanups = [];

/** `switchboard_handshake_refusals_total{reason="ip_connections"}` from /metrics. */
async function ipRefusals() {
  const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
  const m = /^switchboard_handshake_refusals_total\{reason="ip_connections"\} (\d+)$/m.exec(text);
  assert.ok(m, 'the per-address refusal counter is exported');
  return Number(m[1]);
}

/** Waits until the refusal counter reaches `n` (bounded). */
async function refusalsReach(n) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const got = await ipRefusals();
    if (got >= n) return got;
    if (Date.now() > deadline) throw new Error(`refusals stayed at ${got}, expected ${n}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Each client kind: open(source) resolves to a handle once connected or rejects when
// refused; close(handle) ends it.
const KINDS = {
  'raw ws': {
    async open(source) {
      const ws = new WebSocket(server.wsUrl('/iplimit'), { localAddress: source });
      cleanups.push(() => ws.terminate());
      await withTimeout(
        new Promise((resolve, reject) => {
          ws.once('open', resolve);
          ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
          ws.once('error', reject);
        }),
        `raw ws from ${source}`,
      );
      return ws;
    },
    close: (ws) => ws.close(),
    refusal: /HTTP 503/,
  },
  centrifuge: {
    async open(source) {
      // The SDK builds its socket with `new websocket(url)`: a class that binds it.
      class Bound extends WebSocket {
        constructor(url, protocols) {
          super(url, protocols, { localAddress: source });
        }
      }
      const c = new Centrifuge(server.wsUrl('/connection/websocket'), { websocket: Bound, minReconnectDelay: 60_000 });
      cleanups.push(() => c.disconnect());
      try {
        await withTimeout(
          new Promise((resolve, reject) => {
            c.once('connected', resolve);
            // A refused socket is a transport error.
            c.once('error', (ctx) => reject(new Error(`centrifuge refused: ${ctx.error?.message}`)));
            c.connect();
          }),
          `centrifuge from ${source}`,
        );
      } catch (e) {
        c.disconnect();
        throw e;
      }
      return c;
    },
    close: (c) => c.disconnect(),
    refusal: /centrifuge refused/,
  },
  'socket.io-client': {
    async open(source) {
      const s = io(server.httpUrl, { forceNew: true, reconnection: false, transports: ['websocket'], localAddress: source });
      cleanups.push(() => s.disconnect());
      await withTimeout(
        new Promise((resolve, reject) => {
          s.once('connect', resolve);
          s.once('connect_error', (e) => reject(new Error(`connect_error: ${e.message}`)));
        }),
        `socket.io from ${source}`,
      );
      return s;
    },
    close: (s) => s.disconnect(),
    refusal: /connect_error/,
  },
  'pusher-js': {
    async open(source) {
      const relay = await bindingRelay(source, server.port);
      cleanups.push(() => relay.close());
      const p = new PusherClient(APP.key, {
        wsHost: '127.0.0.1',
        wsPort: relay.port,
        forceTLS: false,
        enabledTransports: ['ws'],
        cluster: 'mt1',
        disableStats: true,
      });
      cleanups.push(() => p.disconnect());
      // pusher-js keeps retrying a refused connection: it is refused when the server
      // counted the refusal and the client is not connected.
      const before = await ipRefusals();
      // The poll is stopped however the wait ends (a timer left running would keep this
      // process alive after a failure), and a client that timed out stops retrying.
      let poll;
      let outcome;
      try {
        outcome = await withTimeout(
          new Promise((resolve) => {
            p.connection.bind('connected', () => resolve('connected'));
            poll = setInterval(async () => {
              try {
                if ((await ipRefusals()) > before) resolve('refused');
              } catch {
                // The next tick asks again; the timeout bounds the wait.
              }
            }, 50);
          }),
          `pusher-js from ${source}`,
        );
      } catch (e) {
        p.disconnect();
        relay.close();
        throw e;
      } finally {
        clearInterval(poll);
      }
      if (outcome === 'refused') {
        assert.notEqual(p.connection.state, 'connected');
        p.disconnect();
        relay.close();
        throw new Error('pusher-js refused');
      }
      return { p, relay };
    },
    close: ({ p, relay }) => {
      p.disconnect();
      relay.close();
    },
    refusal: /pusher-js refused/,
  },
};

/**
 * A TCP relay on a free loopback port whose connections to the server leave from `source`.
 */
async function bindingRelay(source, port) {
  const sockets = new Set();
  const relay = net.createServer((inbound) => {
    const out = net.connect({ host: '127.0.0.1', port, localAddress: source });
    for (const s of [inbound, out]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => sockets.delete(s));
    }
    inbound.pipe(out);
    out.pipe(inbound);
    inbound.on('close', () => out.destroy());
    out.on('close', () => inbound.destroy());
  });
  await new Promise((resolve) => relay.listen(0, '127.0.0.1', resolve));
  return {
    port: relay.address().port,
    close() {
      for (const s of sockets) s.destroy();
      relay.close();
    },
  };
}

describe(`--max-connections-per-ip ${N} with every protocol's client`, () => {
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'sb-iplimit-'));
    const file = path.join(dir, 'config.toml');
    writeFileSync(
      file,
      [
        'allow_anonymous = true',
        `max_connections_per_ip = ${N}`,
        '[[pusher.apps]]',
        `id = "${APP.appId}"`,
        `key = "${APP.key}"`,
        `secret = "${APP.secret}"`,
      ].join('\n'),
    );
    server = await startServer(['--config', file]);
  });

  after(async () => {
    for (const c of cleanups.splice(0)) {
      try {
        c();
      } catch {
        // already closed
      }
    }
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  let octet = 2;
  for (const [name, kind] of Object.entries(KINDS)) {
    const [capped, other] = [`127.0.0.${octet}`, `127.0.0.${octet + 1}`];
    octet += 2;
    it(`${name}: the ${N + 1}th connection from ${capped} is refused, one from ${other} is not`, async () => {
      const open = [];
      for (let i = 0; i < N; i++) open.push(await kind.open(capped));
      const before = await ipRefusals();
      await assert.rejects(kind.open(capped), kind.refusal);
      await refusalsReach(before + 1);

      const elsewhere = await kind.open(other);
      // Closing one of the capped address's connections frees its place.
      kind.close(open.pop());
      const deadline = Date.now() + 10_000;
      let again;
      while (!again) {
        try {
          again = await kind.open(capped);
        } catch (e) {
          if (Date.now() > deadline) throw e;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      for (const h of [...open, elsewhere, again]) kind.close(h);
    });
  }
});
