// The Node `ws` client code every WebSocket tutorial shows, run against the real
// switchboard binary: rooms, echo control, message types, permessage-deflate,
// the message size limit and the welcome message.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test tutorial_node.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocket, startServer, join, opened, Inbox, withTimeout } from './lib/harness.mjs';

const MiB = 1024 * 1024;

describe('tutorial Node client against switchboard (defaults)', () => {
  let server;
  const open = [];
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    for (const ws of open) ws.terminate();
    const { code, signal } = await server.stop();
    assert.equal(code, 0, `server should exit 0 on SIGTERM (got code ${code}, signal ${signal})\n${server.stderr()}`);
  });

  it('two tutorial clients in the lobby see each other\'s messages', async () => {
    const PORT = server.port;
    // B is already in the lobby (and known to be registered) when A arrives.
    const b = await join(`ws://localhost:${PORT}`);
    open.push(b.ws);

    // A is the tutorial client, verbatim apart from collecting messages.
    const received = [];
    let gotReply;
    const replied = new Promise((r) => (gotReply = r));
    const ws = new WebSocket(`ws://localhost:${PORT}`);
    open.push(ws);
    ws.on('error', console.error);
    ws.on('open', () => ws.send('Hello'));
    ws.on('message', (data, isBinary) => {
      received.push({ text: data.toString(), isBinary });
      if (data.toString() === 'Hi A, this is B') gotReply();
    });

    const first = await b.next('A\'s Hello at B');
    assert.equal(first.text, 'Hello');
    assert.equal(first.isBinary, false);

    b.ws.send('Hi A, this is B');
    await withTimeout(replied, 'B\'s reply at A');
    // Sender is included by default: A saw its own Hello before B's reply.
    assert.deepEqual(received, [
      { text: 'Hello', isBinary: false },
      { text: 'Hi A, this is B', isBinary: false },
    ]);
  });

  it('rooms are isolated: a message in /room1 does not reach the lobby', async () => {
    const lobby = await join(server.wsUrl('/'));
    const r1a = await join(server.wsUrl('/room1'));
    const r1b = await join(server.wsUrl('/room1'));
    open.push(lobby.ws, r1a.ws, r1b.ws);

    r1a.ws.send('only for room1');
    assert.equal((await r1b.next('room1 message at the other member')).text, 'only for room1');
    assert.equal((await r1a.next('room1 echo')).text, 'only for room1');
    // The lobby member gets the lobby marker as its very next message, proving
    // that the earlier room1 message was never queued for it.
    lobby.ws.send('lobby marker');
    assert.equal((await lobby.next('lobby marker')).text, 'lobby marker');
  });

  it('?echo=false broadcasts to the others only', async () => {
    const receiver = await join(server.wsUrl('/quiet'));
    const sender = new WebSocket(server.wsUrl('/quiet?echo=false'));
    open.push(receiver.ws, sender);
    const senderInbox = new Inbox(sender);
    await opened(sender);

    sender.send('from the quiet sender');
    assert.equal((await receiver.next('quiet sender message')).text, 'from the quiet sender');

    // The receiver answers after it saw the message, so if the server had
    // echoed it the echo would be queued at the sender before this marker.
    receiver.ws.send('marker from receiver');
    const firstAtSender = await senderInbox.next('marker at sender');
    assert.equal(firstAtSender.text, 'marker from receiver', 'sender with ?echo=false must not get its own message back');
  });

  it('text stays text and binary stays binary, byte for byte', async () => {
    const a = await join(server.wsUrl('/types'));
    const b = await join(server.wsUrl('/types'));
    open.push(a.ws, b.ws);
    const text = 'héllo wörld ✓ 🚀';
    const bin = Buffer.from([0, 1, 2, 3, 0xfe, 0xff, 0x80, 0x7f]);

    a.ws.send(text);
    a.ws.send(bin);
    for (const inbox of [b, a]) {
      const m1 = await inbox.next('text message');
      assert.equal(m1.isBinary, false, 'text frame must arrive as text');
      assert.equal(m1.text, text);
      const m2 = await inbox.next('binary message');
      assert.equal(m2.isBinary, true, 'binary frame must arrive as binary');
      assert.deepEqual(m2.data, bin);
    }

    // Binary that happens to be valid UTF-8 is still binary.
    b.ws.send(Buffer.from('looks like text'), { binary: true });
    const m3 = await a.next('utf-8 binary');
    assert.equal(m3.isBinary, true);
    assert.equal(m3.data.toString(), 'looks like text');
  });

  it('negotiates permessage-deflate with the ws default offer and actually compresses', async () => {
    const a = await join(server.wsUrl('/deflate'));
    const b = await join(server.wsUrl('/deflate'));
    open.push(a.ws, b.ws);
    assert.match(a.ws.extensions, /permessage-deflate/, `expected permessage-deflate, got "${a.ws.extensions}"`);
    assert.match(b.ws.extensions, /permessage-deflate/);

    const big = 'switchboard '.repeat(20_000); // 240 000 bytes, very compressible
    const before = b.ws._socket.bytesRead;
    a.ws.send(big);
    const m = await b.next('large compressible message');
    assert.equal(m.isBinary, false);
    assert.equal(m.text, big);
    const onWire = b.ws._socket.bytesRead - before;
    assert.ok(onWire < big.length / 10, `a ${big.length}-byte repetitive message took ${onWire} bytes on the wire: not compressed`);

    // Small messages and binary still work compressed.
    a.ws.send(Buffer.from([9, 8, 7]));
    const bin = await b.next('small binary');
    assert.equal(bin.isBinary, true);
    assert.deepEqual(bin.data, Buffer.from([9, 8, 7]));
  });

  it('works without compression when the client does not offer it (perMessageDeflate: false)', async () => {
    const a = await join(server.wsUrl('/plain'), { perMessageDeflate: false });
    const b = await join(server.wsUrl('/plain'), { perMessageDeflate: false });
    open.push(a.ws, b.ws);
    assert.equal(a.ws.extensions, '', 'no extension may be negotiated that the client did not offer');
    const big = 'x'.repeat(100_000);
    a.ws.send(big);
    const m = await b.next('uncompressed message');
    assert.equal(m.text, big);
  });

  it('a compressed and an uncompressed client share a room', async () => {
    const z = await join(server.wsUrl('/mixed'));
    const p = await join(server.wsUrl('/mixed'), { perMessageDeflate: false });
    open.push(z.ws, p.ws);
    z.ws.send('from deflate client');
    assert.equal((await p.next()).text, 'from deflate client');
    p.ws.send('from plain client');
    assert.equal((await z.next()).text, 'from deflate client');
    assert.equal((await z.next()).text, 'from plain client');
  });

  it('accepts a message of exactly 1 MiB (the default limit)', async () => {
    const a = await join(server.wsUrl('/limit-ok'), { perMessageDeflate: false });
    open.push(a.ws);
    const payload = Buffer.alloc(MiB, 0x61);
    a.ws.send(payload);
    const m = await a.next('1 MiB echo');
    assert.equal(m.data.length, MiB);
    assert.ok(m.data.equals(payload));
  });

  for (const deflate of [false, true]) {
    it(`closes with 1009 on a 1 MiB + 1 byte message (client deflate ${deflate ? 'on' : 'off'})`, async () => {
      const a = await join(server.wsUrl('/limit'), { perMessageDeflate: deflate });
      open.push(a.ws);
      // Compressed, 1 MiB of zeros is about a kilobyte on the wire: the limit
      // must apply to the decompressed size.
      a.ws.send(Buffer.alloc(MiB + 1));
      const { code } = await a.close('close after oversized message');
      assert.equal(code, 1009, `expected close code 1009 (message too big), got ${code}`);
    });
  }
  it('closes with 1009 (not a reset) when a much larger message is still arriving', async () => {
    // The server must keep reading (and discarding) after it sent its close
    // frame: closing a socket with unread input makes the kernel send a TCP
    // reset, which can destroy the close frame before the client reads it.
    const a = await join(server.wsUrl('/limit-big'), { perMessageDeflate: false });
    open.push(a.ws);
    a.ws.send(Buffer.alloc(8 * MiB));
    const { code } = await a.close('close after an 8 MiB message');
    assert.equal(code, 1009, `expected close code 1009, got ${code} (1006: connection reset before the close frame was read)`);
  });
});

describe('switchboard --welcome', () => {
  let server;
  before(async () => {
    server = await startServer(['--welcome', 'Welcome to Switchboard! ✓']);
  });
  after(async () => {
    await server.stop();
  });

  it('sends the welcome text first, as a text message', async () => {
    const ws = new WebSocket(`ws://localhost:${server.port}/welcome-room`);
    ws.on('error', () => {});
    const inbox = new Inbox(ws);
    await opened(ws);
    ws.send('after welcome');
    const first = await inbox.next('welcome message');
    assert.equal(first.isBinary, false);
    assert.equal(first.text, 'Welcome to Switchboard! ✓');
    assert.equal((await inbox.next('echo')).text, 'after welcome');
    ws.close();
    await inbox.close();
  });
});

describe('switchboard --deflate false', () => {
  let server;
  before(async () => {
    server = await startServer(['--deflate', 'false']);
  });
  after(async () => {
    await server.stop();
  });

  it('declines the client\'s permessage-deflate offer and still relays', async () => {
    const a = await join(server.wsUrl('/'));
    const b = await join(server.wsUrl('/'));
    assert.equal(a.ws.extensions, '', `server with --deflate false negotiated "${a.ws.extensions}"`);
    a.ws.send('hello without deflate');
    assert.equal((await b.next()).text, 'hello without deflate');
    a.ws.terminate();
    b.ws.terminate();
  });
});
