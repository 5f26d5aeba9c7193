// The Protobuf encoding of the Centrifugo client protocol at /connection/websocket,
// exercised with the unmodified `centrifuge` JS SDK's Protobuf build
// (`centrifuge/build/protobuf`, which offers the `centrifuge-protobuf` WebSocket
// subprotocol) against the real binary: pub/sub with byte-exact binary payloads,
// presence, history, recovery after the socket is cut, messages crossing to raw-room
// clients (binary both ways) and JSON SDK clients, the `?cf_protocol=protobuf` query, and
// bad input from a raw `ws` client (each closed with 3501 or 1009, counted in /metrics)
// while a canary SDK client carries on undisturbed.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test centrifugo_protobuf.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Centrifuge } from 'centrifuge/build/protobuf';
import { Centrifuge as CentrifugeJson } from 'centrifuge';
import { WebSocket, Inbox, startServer, join, opened, withTimeout, binaryPath } from './lib/harness.mjs';
import { once, collect, mintToken } from './lib/centrifuge_helpers.mjs';

const SECRET = 'centrifugo-protobuf-test-secret';
const mint = (args) => mintToken(SECRET, args);
const MAX_MESSAGE = 65536;

const CONFIG = `
token_hmac_secret = "${SECRET}"
allow_anonymous = true
max_message_size = ${MAX_MESSAGE}

[channel.default]
presence = true
join_leave = true
history_size = 100
history_ttl = 300
force_recovery = true
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
`;

/** Every byte value, in a shuffled order, plus some invalid UTF-8. */
function allBytes() {
  const b = new Uint8Array(256 + 4);
  for (let i = 0; i < 256; i++) b[i] = (i * 167 + 13) % 256;
  b.set([0xc3, 0x28, 0xff, 0x00], 256);
  return b;
}

// A few lines of the Protobuf wire format, to craft frames by hand for the raw client.
function varint(n) {
  const out = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}
/** A length-delimited message. */
function delimited(bytes) {
  return [...varint(bytes.length), ...bytes];
}
/** Field `n` holding `bytes` (wire type 2). */
function lenField(n, bytes) {
  return [(n << 3) | 2, ...delimited(bytes)];
}
/** Command { id, <field>: <request bytes> } as a frame of one command. */
function command(id, field, request = []) {
  return Buffer.from(delimited([0x08, ...varint(id), ...lenField(field, request)]));
}
/** The top-level field numbers of each Reply in a frame (enough to tell what it is). */
function replyFields(frame) {
  const replies = [];
  let pos = 0;
  const readVarint = () => {
    let n = 0;
    let shift = 0;
    for (;;) {
      const b = frame[pos++];
      n += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) return n;
      shift += 7;
    }
  };
  while (pos < frame.length) {
    const end = readVarint() + pos;
    const fields = [];
    while (pos < end) {
      const key = readVarint();
      fields.push(key >> 3);
      if ((key & 7) === 0) readVarint();
      else if ((key & 7) === 2) {
        const len = readVarint();
        pos += len;
      }
      else throw new Error(`unexpected wire type ${key & 7}`);
    }
    replies.push(fields);
  }
  return replies;
}

const CONNECT = 4;
const PING = 11;

describe('centrifuge Protobuf SDK against /connection/websocket', () => {
  let server;
  let dir;
  const clients = [];
  /** Every socket the SDK opened, in order (to cut one, and to see the subprotocol). */
  const sockets = [];
  class RecordedWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }

  function client(opts = {}, Sdk = Centrifuge) {
    const c = new Sdk(server.wsUrl('/connection/websocket'), {
      websocket: RecordedWebSocket,
      minReconnectDelay: 50,
      maxReconnectDelay: 200,
      ...opts,
    });
    clients.push(c);
    return c;
  }

  async function connected(opts, Sdk) {
    const c = client(opts, Sdk);
    const p = once(c, 'connected');
    c.connect();
    const ctx = await p;
    return { c, ctx, socket: sockets[sockets.length - 1] };
  }

  async function subscribed(c, channel, opts = {}) {
    const sub = c.newSubscription(channel, opts);
    const p = once(sub, 'subscribed', () => true, `subscribed to ${channel}`);
    sub.subscribe();
    const ctx = await p;
    return { sub, ctx };
  }

  async function metric(line) {
    const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
    const found = text.split('\n').find((l) => l.startsWith(`${line} `));
    return found ? Number(found.split(' ')[1]) : 0;
  }

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'sb-cfpb-'));
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(file, CONFIG);
    server = await startServer(['--config', file]);
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    const { code } = await server.stop();
    assert.equal(code, 0, 'clean exit on SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  });

  it('the SDK agrees centrifuge-protobuf and pub/sub carries binary byte for byte', async () => {
    const { c: a, ctx, socket } = await connected();
    assert.equal(socket.protocol, 'centrifuge-protobuf', 'the server agreed the subprotocol');
    assert.ok(ctx.client.length > 0, 'the connect result names the client');
    const { c: b } = await connected();
    const { sub: subA } = await subscribed(a, 'bin');
    const { sub: subB } = await subscribed(b, 'bin');
    const inbox = collect(subA);
    const payload = allBytes();
    await subB.publish(payload);
    await subB.publish(new Uint8Array([0]));
    const [pub, second] = await inbox.until(2);
    assert.ok(pub.data instanceof Uint8Array, 'publication data is bytes');
    assert.deepEqual(Buffer.from(pub.data), Buffer.from(payload));
    assert.deepEqual(Buffer.from(second.data), Buffer.from([0]));
    assert.equal(pub.channel, 'bin');
    assert.ok(pub.offset >= 1);
    assert.equal(second.offset, pub.offset + 1);
  });

  it('presence and presence stats name a JWT user, with its info as bytes', async () => {
    const token = mint(['--user', 'alice', '--info', '{"name":"Alice"}']);
    const { c } = await connected({ token });
    const { sub } = await subscribed(c, 'lobby');
    const presence = await sub.presence();
    const members = Object.values(presence.clients);
    assert.equal(members.length, 1);
    assert.equal(members[0].user, 'alice');
    assert.equal(Buffer.from(members[0].connInfo).toString(), '{"name":"Alice"}');
    const { c: anon } = await connected();
    await subscribed(anon, 'lobby');
    const stats = await sub.presenceStats();
    assert.equal(stats.numClients, 2);
    assert.equal(stats.numUsers, 2);
  });

  it('join and leave pushes reach the other members', async () => {
    const { c: a } = await connected({ token: mint(['--user', 'ann']) });
    const { sub } = await subscribed(a, 'jl');
    const joined = once(sub, 'join', (ctx) => ctx.info.user === 'bob', 'join of bob');
    const { c: b } = await connected({ token: mint(['--user', 'bob']) });
    const { sub: subB } = await subscribed(b, 'jl');
    await joined;
    const left = once(sub, 'leave', (ctx) => ctx.info.user === 'bob', 'leave of bob');
    subB.unsubscribe();
    await left;
  });

  it('history returns binary publications in order with the stream position', async () => {
    const { c } = await connected();
    const { sub } = await subscribed(c, 'hist');
    const sent = [new Uint8Array([1, 0, 255]), new Uint8Array([2]), new Uint8Array([3, 3, 3])];
    for (const data of sent) await sub.publish(data);
    const h = await sub.history({ limit: 10 });
    assert.deepEqual(
      h.publications.map((p) => [...p.data]),
      sent.map((d) => [...d]),
    );
    assert.equal(h.offset, h.publications[2].offset);
    assert.ok(h.epoch.length > 0);
    const newest = await sub.history({ limit: 1, reverse: true });
    assert.deepEqual([...newest.publications[0].data], [3, 3, 3]);
  });

  it('after the socket is cut the SDK recovers every missed publication exactly once', async () => {
    const N = 7;
    const { c: a, socket } = await connected();
    const { sub } = await subscribed(a, 'rec');
    const inbox = collect(sub);
    const { c: b } = await connected();
    const { sub: pubSub } = await subscribed(b, 'rec');
    await pubSub.publish(new Uint8Array([0]));
    await inbox.until(1);

    // The TCP connection dies without a close frame; the SDK reconnects by itself.
    const down = once(a, 'connecting', () => true, 'the SDK to notice the cut');
    socket.terminate();
    await down;
    for (let i = 1; i <= N; i++) await pubSub.publish(new Uint8Array([i]));

    const back = await once(sub, 'subscribed', () => true, 'resubscribed');
    assert.equal(back.wasRecovering, true);
    assert.equal(back.recovered, true);
    await inbox.until(N + 1);
    await pubSub.publish(new Uint8Array([N + 1]));
    await inbox.until(N + 2);
    assert.deepEqual(
      inbox.got.map((p) => p.data[0]),
      Array.from({ length: N + 2 }, (_, i) => i),
    );
    const offsets = inbox.got.map((p) => p.offset);
    for (let i = 1; i < offsets.length; i++) assert.equal(offsets[i], offsets[i - 1] + 1);
  });

  it('raw-room clients and Protobuf clients exchange binary and text both ways', async () => {
    const raw = await join(server.wsUrl('/xroom'));
    const { c } = await connected();
    const { sub } = await subscribed(c, 'xroom');
    const inbox = collect(sub);

    // Raw binary → the SDK gets the same bytes.
    const bin = allBytes();
    raw.ws.send(bin);
    const echo = await raw.next('the raw echo');
    assert.equal(echo.isBinary, true);
    // Raw text → the SDK gets its UTF-8 bytes.
    raw.ws.send('héllo {not json');
    await raw.next('the raw text echo');
    const [p1, p2] = await inbox.until(2);
    assert.deepEqual(Buffer.from(p1.data), Buffer.from(bin));
    assert.equal(Buffer.from(p2.data).toString('utf8'), 'héllo {not json');

    // SDK binary → the raw client gets a binary message with the same bytes.
    const back = new Uint8Array([0xde, 0xad, 0x00, 0xbe, 0xef]);
    await sub.publish(back);
    const got = await raw.next('the SDK publication');
    assert.equal(got.isBinary, true, 'binary stays binary');
    assert.deepEqual(got.data, Buffer.from(back));
    raw.ws.close();
  });

  it('JSON SDK clients and Protobuf SDK clients share a channel', async () => {
    const { c: json } = await connected({}, CentrifugeJson);
    const { c: pb } = await connected();
    const { sub: jsonSub } = await subscribed(json, 'mixed');
    const { sub: pbSub } = await subscribed(pb, 'mixed');
    const pbInbox = collect(pbSub);
    const jsonInbox = collect(jsonSub);
    await jsonSub.publish({ from: 'json' });
    const [fromJson] = await pbInbox.until(1);
    assert.deepEqual(JSON.parse(Buffer.from(fromJson.data).toString()), { from: 'json' });
    await jsonInbox.until(1);
    // Protobuf data is bytes: JSON clients get them as base64 (documented).
    await pbSub.publish(new Uint8Array([1, 2, 3]));
    const [, fromPb] = await jsonInbox.until(2);
    assert.equal(fromPb.data, Buffer.from([1, 2, 3]).toString('base64'));
  });

  it('?cf_protocol=protobuf selects Protobuf without a subprotocol', async () => {
    const ws = new WebSocket(server.wsUrl('/connection/websocket?cf_protocol=protobuf'));
    const inbox = new Inbox(ws);
    await opened(ws);
    assert.equal(ws.protocol, '');
    // connect {} and ping {} in one frame: two replies back in one binary message.
    ws.send(Buffer.concat([command(1, CONNECT), command(2, PING)]));
    const msg = await inbox.next('the connect and ping replies');
    assert.equal(msg.isBinary, true);
    const replies = replyFields(msg.data);
    assert.deepEqual(replies, [
      [1, 5], // id, connect result
      [1, 12], // id, ping result
    ]);
    ws.close();
  });

  describe('bad input from a raw client', () => {
    const closedProtocol = 'switchboard_connections_closed_total{protocol="centrifugo-protobuf",reason="protocol"}';

    /** A raw client that connected with Protobuf; returns its socket and inbox. */
    async function rawProtobuf() {
      const ws = new WebSocket(server.wsUrl('/connection/websocket'), 'centrifuge-protobuf');
      ws.on('error', () => {});
      const inbox = new Inbox(ws);
      await opened(ws);
      ws.send(command(1, CONNECT));
      const reply = await inbox.next('connect reply');
      assert.deepEqual(replyFields(reply.data)[0], [1, 5]);
      return { ws, inbox };
    }

    it('each is closed with the documented code, counted, and a canary carries on', async () => {
      const { c: canary } = await connected();
      const { sub } = await subscribed(canary, 'canary');
      const canaryInbox = collect(sub);
      const before = await metric(closedProtocol);

      const cases = [
        ['a truncated varint', Buffer.from([0x80]), 3501],
        ['a length past the end of the frame', Buffer.from([0x20, 0x08, 0x01]), 3501],
        ['a length prefix of eleven bytes', Buffer.alloc(11, 0xff), 3501],
        ['bytes that are not a Command', Buffer.from([0x03, 0x0f, 0x0f, 0x0f]), 3501],
        ['a command without its channel', command(2, 5 /* subscribe */), 3501],
        ['a text frame', 'hello', 3501],
        ['a frame over max_message_size', Buffer.alloc(MAX_MESSAGE + 1, 0x00), 1009],
      ];
      let protocolCloses = 0;
      for (const [what, bytes, code] of cases) {
        const { ws, inbox } = await rawProtobuf();
        ws.send(bytes);
        assert.equal((await inbox.close(`close after ${what}`)).code, code, what);
        if (code !== 1009) protocolCloses += 1;
        // The canary still receives.
        await sub.publish(new Uint8Array([canaryInbox.got.length]));
        await canaryInbox.until(canaryInbox.got.length + 1, `canary after ${what}`);
      }
      // A first frame that is garbage closes too, before any connect.
      const ws = new WebSocket(server.wsUrl('/connection/websocket'), 'centrifuge-protobuf');
      const inbox = new Inbox(ws);
      await opened(ws);
      ws.send(Buffer.from([0xff, 0xff]));
      assert.equal((await inbox.close('close after a garbage first frame')).code, 3501);
      protocolCloses += 1;

      assert.equal(await metric(closedProtocol), before + protocolCloses, 'every 35xx close is counted');
      assert.equal(canary.state, 'connected');
      assert.deepEqual(
        canaryInbox.got.map((p) => p.data[0]),
        Array.from({ length: canaryInbox.got.length }, (_, i) => i),
      );
    });

    it('unknown fields are skipped and the command is answered', async () => {
      const { ws, inbox } = await rawProtobuf();
      // ping {} with an unknown varint field 99 inside it and field 200 on the command.
      const frame = Buffer.from(
        delimited([0x08, 0x07, ...lenField(PING, [0x98, 0x06, 0x01]), 0xc0, 0x0c, 0x05]),
      );
      ws.send(frame);
      const reply = await inbox.next('the ping reply');
      assert.deepEqual(replyFields(reply.data), [[1, 12]]);
      ws.close();
    });
  });
});
