// Bad input on the Pusher endpoint, against the real binary: each offender gets the
// documented `pusher:error` code and, where the protocol says so, its connection closed —
// while canary `pusher-js` clients (private and presence channels, client events) carry
// on undisturbed on the same server. Offenders are raw `ws` clients, so they can send
// what `pusher-js` never would; their channel signatures come from the `pusher` SDK.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import PusherServer from 'pusher';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServer, withTimeout, Inbox, WebSocket, opened } from './lib/harness.mjs';
import { pusherClient, connected, subscription } from './lib/pusher.mjs';

const APP = { appId: 'app-id', key: 'app-key', secret: 'app-secret' };
const QUERY = 'protocol=7&client=js&version=8.4.0';
const MAX_SUBSCRIPTIONS = 6;

let server;
let api;
let dir;
const canaries = [];

function canary(user) {
  const c = pusherClient(APP.key, server.port, {
    authorize: (socketId, channel) => api.authorizeChannel(socketId, channel,
      channel.startsWith('presence-') ? { user_id: user, user_info: { name: user } } : undefined),
  });
  canaries.push(c);
  return c;
}

/** Subscribes `c` to `name`: resolves with the channel. */
async function subscribed(c, name) {
  return (await subscription(c, name)).ch;
}

/** Every event `name` on `ch`, recorded. */
function record(ch, name) {
  const got = [];
  ch.bind(name, (data) => got.push(data));
  return got;
}

/** A raw connection to the Pusher endpoint; resolves once `connection_established` arrived. */
async function raw(query = QUERY) {
  const ws = new WebSocket(server.wsUrl(`/app/${APP.key}?${query}`));
  ws.on('error', () => {});
  const inbox = new Inbox(ws);
  await opened(ws);
  const first = JSON.parse((await inbox.next('connection_established')).text);
  assert.equal(first.event, 'pusher:connection_established');
  return { ws, inbox, socketId: JSON.parse(first.data).socket_id };
}

/** The next frame that is not a ping, as JSON. */
async function nextEvent(inbox, what) {
  for (;;) {
    const m = JSON.parse((await inbox.next(what)).text);
    if (m.event !== 'pusher:ping') return m;
  }
}

/** A raw connection refused at once: its one `pusher:error` and its close code. */
async function refused(query) {
  const ws = new WebSocket(server.wsUrl(`/app/${APP.key}${query}`));
  ws.on('error', () => {});
  const inbox = new Inbox(ws);
  const first = JSON.parse((await inbox.next('pusher:error')).text);
  const closed = await inbox.close();
  return { error: first, close: closed.code };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe('bad input on the Pusher endpoint', () => {
  let a;
  let b;
  let aPrivate;
  let bPrivate;
  let bPresence;
  let sockets;

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'sb-pusher-bad-'));
    const file = path.join(dir, 'config.toml');
    writeFileSync(file, [
      // Bounds the offenders trip over; the canaries stay far below them.
      'client_message_rate = 20',
      'client_message_burst = 20',
      `max_subscriptions_per_connection = ${MAX_SUBSCRIPTIONS}`,
      'max_message_size = 65536',
      '[[pusher.apps]]',
      `id = "${APP.appId}"`,
      `key = "${APP.key}"`,
      `secret = "${APP.secret}"`,
      '',
    ].join('\n'));
    server = await startServer(['--config', file]);
    api = new PusherServer({ ...APP, host: '127.0.0.1', port: String(server.port), useTLS: false });
    a = canary('canary-a');
    b = canary('canary-b');
    await Promise.all([connected(a), connected(b)]);
    aPrivate = await subscribed(a, 'private-canary');
    bPrivate = await subscribed(b, 'private-canary');
    await subscribed(a, 'presence-canary');
    bPresence = await subscribed(b, 'presence-canary');
    sockets = [a.connection.socket_id, b.connection.socket_id];
  });

  after(async () => {
    for (const c of canaries) c.disconnect();
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a missing or malformed protocol version: 4008 and 4006, closed', async () => {
    const missing = await refused('');
    assert.equal(missing.error.event, 'pusher:error');
    assert.equal(missing.error.data.code, 4008);
    assert.equal(missing.close, 4008);
    const malformed = await refused('?protocol=seven');
    assert.equal(malformed.error.data.code, 4006);
    assert.equal(malformed.close, 4006);
  });

  it('malformed JSON: pusher:error 4300 and that connection closed with 4300', async () => {
    for (const bad of ['{"event":', 'not json at all', '[1,2,3]', '{"data":{}}']) {
      const { ws, inbox } = await raw();
      ws.send(bad);
      const err = await nextEvent(inbox, `error for ${bad}`);
      assert.equal(err.event, 'pusher:error');
      assert.equal(err.data.code, 4300, bad);
      assert.equal((await inbox.close()).code, 4300, bad);
    }
  });

  it('an unknown event is refused with 4300; the connection carries on', async () => {
    const { ws, inbox } = await raw();
    ws.send(JSON.stringify({ event: 'pusher:make_me_admin', data: {} }));
    const err = await nextEvent(inbox, 'unknown event error');
    assert.equal(err.data.code, 4300);
    ws.send(JSON.stringify({ event: 'pusher:ping', data: {} }));
    assert.equal((await nextEvent(inbox, 'pong')).event, 'pusher:pong');
    ws.close();
  });

  it('oversized and rate-limited client events: 4301, nothing reaches the channel', async () => {
    const got = record(bPrivate, 'client-big');
    const { ws, inbox, socketId } = await raw();
    const { auth } = api.authorizeChannel(socketId, 'private-canary');
    ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: 'private-canary', auth } }));
    assert.equal((await nextEvent(inbox, 'subscribed')).event, 'pusher_internal:subscription_succeeded');
    ws.send(JSON.stringify({ event: 'client-big', channel: 'private-canary', data: { blob: 'x'.repeat(11 * 1024) } }));
    const err = await nextEvent(inbox, 'too large');
    assert.equal(err.event, 'pusher:error');
    assert.equal(err.data.code, 4301);

    // Fifteen at once: ten a second pass (Pusher's limit), the rest are refused with 4301.
    // The ping's pong comes after every answer to them.
    const burst = record(bPrivate, 'client-burst');
    for (let i = 0; i < 15; i++) {
      ws.send(JSON.stringify({ event: 'client-burst', channel: 'private-canary', data: { i } }));
    }
    ws.send(JSON.stringify({ event: 'pusher:ping', data: {} }));
    let refusedCount = 0;
    for (;;) {
      const m = await nextEvent(inbox, 'rate limit errors, then the pong');
      if (m.event === 'pusher:pong') break;
      assert.equal(m.event, 'pusher:error');
      assert.equal(m.data.code, 4301);
      refusedCount++;
    }
    assert.equal(refusedCount, 5);
    await withTimeout((async () => { while (burst.length < 10) await sleep(20); })(), '10 client events at the canary');
    await sleep(200);
    assert.equal(burst.length, 10, 'only the events within the rate reached the canary');
    assert.deepEqual(burst.map((d) => d.i), [...Array(10).keys()]);
    assert.equal(got.length, 0, 'the oversized event reached no one');
    ws.close();
  });

  it('more subscriptions than allowed: only that subscription is refused', async () => {
    const { ws, inbox } = await raw();
    for (let i = 0; i <= MAX_SUBSCRIPTIONS; i++) {
      ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: `many-${i}` } }));
    }
    const replies = [];
    for (let i = 0; i <= MAX_SUBSCRIPTIONS; i++) replies.push(await nextEvent(inbox, `reply ${i}`));
    const ok = replies.filter((r) => r.event === 'pusher_internal:subscription_succeeded');
    const bad = replies.filter((r) => r.event === 'pusher:subscription_error');
    assert.equal(ok.length, MAX_SUBSCRIPTIONS);
    assert.equal(bad.length, 1);
    assert.equal(bad[0].data.status, 429);
    ws.send(JSON.stringify({ event: 'pusher:ping', data: {} }));
    assert.equal((await nextEvent(inbox, 'pong')).event, 'pusher:pong');
    ws.close();
  });

  it('a subscribe flood closes the flooder with 4100 (back off)', async () => {
    const { ws, inbox } = await raw();
    for (let i = 0; i < 400 && ws.readyState === WebSocket.OPEN; i++) {
      ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: `flood-${i}` } }));
    }
    assert.equal((await inbox.close()).code, 4100);
  });

  it('a frame over max_message_size closes that connection with 1009', async () => {
    const { ws, inbox } = await raw();
    ws.send(JSON.stringify({ event: 'client-x', channel: 'private-canary', data: 'y'.repeat(100_000) }));
    assert.equal((await inbox.close()).code, 1009);
  });

  it('the canaries were not disturbed', async () => {
    assert.equal(a.connection.state, 'connected');
    assert.equal(b.connection.state, 'connected');
    assert.deepEqual([a.connection.socket_id, b.connection.socket_id], sockets, 'never reconnected');
    const triggered = new Promise((resolve) => bPrivate.bind('after', resolve));
    await api.trigger('private-canary', 'after', { ok: true });
    assert.deepEqual(await withTimeout(triggered, 'event after the offenders'), { ok: true });
    const whisper = new Promise((resolve) => bPresence.bind('client-still-here', (d, meta) => resolve({ d, meta })));
    assert.equal(aPrivate.trigger('client-warmup', {}), true);
    const presenceA = a.channel('presence-canary');
    assert.equal(presenceA.trigger('client-still-here', { n: 1 }), true);
    const { d, meta } = await withTimeout(whisper, 'client event between canaries');
    assert.deepEqual(d, { n: 1 });
    assert.equal(meta.user_id, 'canary-a');
    const info = await (await api.get({ path: '/channels/private-canary', params: { info: 'subscription_count' } })).json();
    assert.equal(info.subscription_count, 2, 'only the canaries are left on the channel');
    assert.equal(bPresence.members.count, 2);
  });
});
