// The server HTTP API (`POST /api/<method>`, Centrifugo-compatible) against the
// real binary: every method we serve, every error path, and publications from the
// API reaching raw-room clients and `centrifuge` SDK clients alike.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test http_api.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Centrifuge } from 'centrifuge';
import { execFileSync } from 'node:child_process';
import { WebSocket, startServer, join, withTimeout, binaryPath } from './lib/harness.mjs';
import { once } from './lib/centrifuge_helpers.mjs';

function mint(user) {
  return execFileSync(binaryPath(), ['token', '--secret', 'api-test-secret', '--user', user], {
    encoding: 'utf8',
  }).trim();
}

const KEY = 'api-test-key';

const CONFIG = `
allow_anonymous = true
token_hmac_secret = "api-test-secret"
[channel.default]
presence = true
history_size = 50
history_ttl = 300
force_recovery = true
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true
`;

describe('HTTP API', () => {
  let server;
  let dir;
  const clients = [];

  async function api(method, body, { key = KEY, raw, httpMethod = 'POST' } = {}) {
    const headers = { 'content-type': 'application/json' };
    if (key !== null) headers['x-api-key'] = key;
    const res = await fetch(`${server.httpUrl}/api/${method}`, {
      method: httpMethod,
      headers,
      body: httpMethod === 'POST' ? (raw ?? JSON.stringify(body ?? {})) : undefined,
    });
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {}
    return { status: res.status, json, text };
  }

  async function sdkClient(opts = {}) {
    const c = new Centrifuge(server.wsUrl('/connection/websocket'), {
      ...opts,
      websocket: WebSocket,
      minReconnectDelay: 50,
      maxReconnectDelay: 200,
    });
    clients.push(c);
    const p = once(c, 'connected');
    c.connect();
    return { c, ctx: await p };
  }

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'sb-api-'));
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(file, CONFIG);
    server = await startServer(['--config', file, '--api-key', KEY]);
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a missing or wrong key with 401', async () => {
    assert.equal((await api('info', {}, { key: null })).status, 401);
    assert.equal((await api('info', {}, { key: 'wrong' })).status, 401);
    assert.equal((await api('info', {})).status, 200);
  });

  it('answers an unknown method with 404, bad JSON with 400, GET with 405, a huge body with 413', async () => {
    assert.equal((await api('no_such_method', {})).status, 404);
    assert.equal((await api('publish', null, { raw: '{"channel":' })).status, 400);
    assert.equal((await api('publish', { data: {} })).status, 400, 'channel missing');
    assert.equal((await api('info', null, { httpMethod: 'GET' })).status, 405);
    // A body larger than the largest message (1 MiB by default) plus room for the envelope.
    const huge = JSON.stringify({ channel: 'big', data: 'a'.repeat(2 * 1024 * 1024) });
    assert.equal((await api('publish', null, { raw: huge })).status, 413);
  });

  it('publishes to raw-room and SDK subscribers alike, with a stream position', async () => {
    const raw = await join(server.wsUrl('/mixed'));
    const { c } = await sdkClient();
    const sub = c.newSubscription('mixed');
    const subscribed = once(sub, 'subscribed');
    sub.subscribe();
    await subscribed;
    const got = once(sub, 'publication', (ctx) => ctx.data?.from === 'api', 'API publication');
    const r = await api('publish', { channel: 'mixed', data: { from: 'api' } });
    assert.equal(r.status, 200);
    assert.ok(r.json.result.offset >= 1);
    assert.ok(r.json.result.epoch);
    assert.deepEqual((await got).data, { from: 'api' });
    assert.equal((await raw.next('the API publication')).text, '{"from":"api"}');
    raw.ws.close();
  });

  it('broadcast, presence, presence_stats, history and history_remove', async () => {
    const { c, ctx } = await sdkClient();
    const sub = c.newSubscription('b1');
    const subscribed = once(sub, 'subscribed');
    sub.subscribe();
    await subscribed;
    const b = await api('broadcast', { channels: ['b1', 'b2'], data: 'x' });
    assert.equal(b.json.result.responses.length, 2);
    assert.ok(b.json.result.responses.every((r) => r.result.offset === 1));

    const p = await api('presence', { channel: 'b1' });
    assert.deepEqual(Object.keys(p.json.result.presence), [ctx.client]);
    const s = await api('presence_stats', { channel: 'b1' });
    assert.deepEqual(s.json.result, { num_clients: 1, num_users: 1 });

    const h = await api('history', { channel: 'b2', limit: -1 });
    assert.equal(h.json.result.publications.length, 1);
    assert.equal(h.json.result.publications[0].data, 'x');
    const epoch = h.json.result.epoch;
    assert.deepEqual((await api('history_remove', { channel: 'b2' })).json, { result: {} });
    const h2 = await api('history', { channel: 'b2', limit: -1 });
    assert.equal(h2.json.result.publications.length, 0);
    assert.notEqual(h2.json.result.epoch, epoch, 'removing history changes the epoch');

    const bad = await api('presence', { channel: 'nope:x' });
    assert.equal(bad.json.error.code, 102, 'unknown namespace');
    const info = await api('info', {});
    assert.ok(info.json.result.nodes[0].num_clients >= 1);
  });

  it('channels lists channels with subscribers and their counts, filtered by pattern', async () => {
    const subscribe = async (c, channel) => {
      const sub = c.newSubscription(channel);
      const done = once(sub, 'subscribed', () => true, `subscribed to ${channel}`);
      sub.subscribe();
      await done;
      return sub;
    };
    const { c: one } = await sdkClient();
    const { c: two } = await sdkClient();
    const oneA = await subscribe(one, 'lst-a');
    const oneB = await subscribe(one, 'lst-b');
    await subscribe(two, 'lst-a');
    // Kept by its history (the namespace keeps some) but without subscribers: not listed.
    await api('publish', { channel: 'lst-history-only', data: {} });

    const all = await api('channels', {});
    assert.equal(all.status, 200);
    assert.deepEqual(all.json.result.channels['lst-a'], { num_clients: 2 });
    assert.deepEqual(all.json.result.channels['lst-b'], { num_clients: 1 });
    assert.equal(all.json.result.channels['lst-history-only'], undefined);

    const ours = await api('channels', { pattern: 'lst-*' });
    assert.deepEqual(ours.json.result, {
      channels: { 'lst-a': { num_clients: 2 }, 'lst-b': { num_clients: 1 } },
    });
    const onlyB = await api('channels', { pattern: '*-b' });
    assert.deepEqual(onlyB.json.result, { channels: { 'lst-b': { num_clients: 1 } } });
    assert.deepEqual((await api('channels', { pattern: 'lst-' })).json.result, { channels: {} });

    // Leaving: one unsubscribes from both, two disconnects.
    oneA.unsubscribe();
    oneB.unsubscribe();
    two.disconnect();
    let polling = true;
    await withTimeout(
      (async () => {
        while (polling) {
          const r = await api('channels', { pattern: 'lst-*' });
          if (Object.keys(r.json.result.channels).length === 0) return;
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      })(),
      'the lst-* channels to empty',
    ).finally(() => (polling = false));
    assert.deepEqual((await api('channels', { pattern: 'lst-*' })).json, { result: { channels: {} } });
  });

  it('disconnect makes the client reconnect and recover what it missed', async () => {
    const { c, ctx } = await sdkClient();
    const sub = c.newSubscription('rec-api');
    const got = [];
    sub.on('publication', (p) => got.push(p.data.n));
    const first = once(sub, 'subscribed');
    sub.subscribe();
    await first;
    await api('publish', { channel: 'rec-api', data: { n: 0 } });
    const gone = once(c, 'connecting', () => true, 'reconnecting after disconnect');
    assert.deepEqual((await api('disconnect', { client: ctx.client })).json, { result: {} });
    await gone;
    for (let i = 1; i <= 5; i++) await api('publish', { channel: 'rec-api', data: { n: i } });
    const again = await once(sub, 'subscribed', () => true, 'resubscribed');
    assert.equal(again.recovered, true);
    await withTimeout(
      new Promise((resolve) => {
        const t = setInterval(() => got.length >= 6 && (clearInterval(t), resolve()), 10);
      }),
      'all publications',
    );
    assert.deepEqual(got, [0, 1, 2, 3, 4, 5]);
  });

  it('subscribe, unsubscribe and disconnect by user act on that user only', async () => {
    const { c: gina } = await sdkClient({ token: mint('gina') });
    const { c: other } = await sdkClient({ token: mint('hal') });
    let otherSubscribed = 0;
    other.on('subscribed', () => (otherSubscribed += 1));
    const subbed = once(gina, 'subscribed', (ctx) => ctx.channel === 'srv', 'server-side subscribe push');
    const got = once(gina, 'publication', (ctx) => ctx.channel === 'srv', 'publication on srv');
    assert.deepEqual((await api('subscribe', { user: 'gina', channel: 'srv' })).json, { result: {} });
    await subbed;
    await api('publish', { channel: 'srv', data: { ok: 1 } });
    assert.deepEqual((await got).data, { ok: 1 });
    assert.equal(otherSubscribed, 0, 'another user is not subscribed');

    const unsubbed = once(gina, 'unsubscribed', (ctx) => ctx.channel === 'srv', 'server-side unsubscribe push');
    await api('unsubscribe', { user: 'gina', channel: 'srv' });
    await unsubbed;
    const s = await api('presence_stats', { channel: 'srv' });
    assert.equal(s.json.result.num_clients, 0);

    let otherDown = 0;
    other.on('disconnected', () => (otherDown += 1));
    const down = once(gina, 'connecting', () => true, 'gina reconnecting');
    await api('disconnect', { user: 'gina' });
    const ctx = await down;
    assert.equal(ctx.code, 3011);
    assert.equal(otherDown, 0);
  });
});
