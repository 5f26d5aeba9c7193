// Plain HTTP endpoints of the switchboard binary and its graceful shutdown:
// GET / serves the chat page, /health reports JSON, unknown paths are 404,
// and SIGTERM / SIGINT close every WebSocket with 1001 before exiting 0.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test http_lifecycle.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, join } from './lib/harness.mjs';

describe('HTTP endpoints', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.stop();
  });

  it('GET / serves the self-contained chat page', async () => {
    const res = await fetch(`${server.httpUrl}/`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') || '', /^text\/html/);
    const html = await res.text();
    for (const id of ['nick', 'room', 'join', 'message', 'send', 'messages', 'status']) {
      assert.match(html, new RegExp(`id="${id}"`), `chat page lacks element #${id}`);
    }
    // Self-contained: nothing loaded from another host.
    assert.doesNotMatch(html, /<script[^>]+src=|<link[^>]+href="https?:/i);
  });

  it('GET /health returns status JSON that counts WebSocket connections', async () => {
    const a = await join(server.wsUrl('/health-room'));
    const b = await join(server.wsUrl('/health-room'));
    const res = await fetch(`${server.httpUrl}/health`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') || '', /json/);
    const body = await res.json();
    assert.equal(body.status, 'ok');
    assert.equal(typeof body.uptime_secs, 'number');
    assert.equal(typeof body.connections, 'number');
    assert.ok(body.connections >= 2, `two clients are connected but /health says ${body.connections}`);
    a.ws.terminate();
    b.ws.terminate();
  });

  it('unknown paths are 404', async () => {
    for (const p of ['/no-such-page.html', '/api/does-not-exist']) {
      const res = await fetch(`${server.httpUrl}${p}`);
      assert.equal(res.status, 404, `GET ${p}`);
      await res.arrayBuffer();
    }
  });
});

describe('graceful shutdown', () => {
  for (const signal of ['SIGTERM', 'SIGINT']) {
    it(`${signal} closes clients with 1001 and exits 0`, async () => {
      const server = await startServer();
      const a = await join(server.wsUrl('/'));
      const b = await join(server.wsUrl('/elsewhere'), { perMessageDeflate: false });
      const exit = server.stop(signal);
      const [ca, cb] = await Promise.all([a.close(), b.close()]);
      assert.equal(ca.code, 1001, `client in lobby got close ${ca.code}`);
      assert.equal(cb.code, 1001, `client in /elsewhere got close ${cb.code}`);
      const { code, signal: sig } = await exit;
      assert.equal(code, 0, `exit code after ${signal}: ${code} (signal ${sig})\n${server.stderr()}`);
    });
  }
});
