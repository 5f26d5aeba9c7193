// Centrifugo's HTTP stream transports in headless Chromium, with the browser's own
// clients: an `EventSource` on `/connection/uni_sse` (recovering by itself through
// `Last-Event-ID` after the server ends its stream), and the unmodified centrifuge-js
// bundle on a page where WebSocket does not exist, falling back to HTTP streaming and,
// with HTTP streaming blocked, to SSE — chatting with a Node WebSocket SDK client and
// recovering after a cut.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test centrifugo_streams_browser.test.mjs

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Centrifuge } from 'centrifuge';
import { CHROMIUM, launchChromium } from './lib/chromium.mjs';
import { WebSocket, startServer, opened, binaryPath, REPO_ROOT, WAIT_MS, withTimeout } from './lib/harness.mjs';

const HAVE_CHROMIUM = existsSync(CHROMIUM);
const SECRET = 'streams-browser-secret';
const KEY = 'streams-browser-key';
const BUNDLE = path.join(REPO_ROOT, 'tests', 'interop', 'node_modules', 'centrifuge', 'dist', 'centrifuge.js');

const CONFIG = `
token_hmac_secret = "${SECRET}"
allow_anonymous = true

[channel.default]
history_size = 100
history_ttl = 300
force_recovery = true
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true
`;

if (!HAVE_CHROMIUM) {
  console.log(`SKIP centrifugo stream browser tests: ${CHROMIUM} not found`);
}

function mint(args) {
  return execFileSync(binaryPath(), ['token', '--secret', SECRET, ...args], { encoding: 'utf8' }).trim();
}

describe('Centrifugo HTTP stream transports in Chromium', { skip: !HAVE_CHROMIUM }, () => {
  let server;
  let dir;
  let browser;
  const pageErrors = [];
  const cleanups = [];

  async function api(method, body) {
    const res = await fetch(`${server.httpUrl}/api/${method}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': KEY },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 200, `${method}: ${await res.clone().text()}`);
  }

  async function newPage() {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(e));
    cleanups.push(() => context.close());
    return page;
  }

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'sb-streams-browser-'));
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(file, CONFIG);
    server = await startServer(['--config', file, '--api-key', KEY, '--ping-interval', '2', '--ping-timeout', '2']);
    browser = await launchChromium(path.join(dir, 'cache'));
  });

  after(async () => {
    for (const f of cleanups.reverse()) await f();
    await browser?.close();
    const { code } = await server.stop();
    assert.equal(code, 0, 'clean exit on SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  });

  it('an EventSource on uni_sse receives API and raw-room publications and recovers after the stream ends', async () => {
    const page = await newPage();
    await page.goto(`${server.httpUrl}/health`);
    const token = mint(['--user', 'eve', '--subscribe', 'b-news']);
    await page.evaluate((token) => {
      window.__events = [];
      const url = new URL('/connection/uni_sse', location.href);
      url.searchParams.append('cf_connect', JSON.stringify({ token }));
      const es = new EventSource(url);
      es.onmessage = (e) => window.__events.push({ id: e.lastEventId, data: JSON.parse(e.data) });
      window.__es = es;
    }, token);
    const count = (pred) => page.evaluate(`window.__events.filter(${pred}).length`);
    await page.waitForFunction(() => window.__events.some((e) => e.data.connect), null, { timeout: WAIT_MS });

    await api('publish', { channel: 'b-news', data: { n: 1 } });
    const ws = new WebSocket(server.wsUrl('/b-news'));
    await opened(ws);
    cleanups.push(() => ws.close());
    ws.send(JSON.stringify({ n: 2 }));
    await page.waitForFunction(
      () => [1, 2].every((n) => window.__events.some((e) => e.data.pub && e.data.pub.data.n === n)),
      null,
      { timeout: WAIT_MS },
    );

    // The server ends the stream (a kick through the API); the browser reconnects by
    // itself, sending the id of the last event it saw; what was published meanwhile
    // comes back in the new connect event.
    await api('disconnect', { user: 'eve' });
    await page.waitForFunction(() => window.__events.some((e) => e.data.disconnect), null, { timeout: WAIT_MS });
    for (const n of [3, 4]) await api('publish', { channel: 'b-news', data: { n } });
    await page.waitForFunction(
      () => window.__events.filter((e) => e.data.connect).length === 2,
      null,
      { timeout: WAIT_MS },
    );
    const second = await page.evaluate(() => window.__events.filter((e) => e.data.connect)[1].data.connect);
    assert.equal(second.subs['b-news'].recovered, true);
    assert.deepEqual(second.subs['b-news'].publications.map((p) => p.data.n), [3, 4]);
    await api('publish', { channel: 'b-news', data: { n: 5 } });
    await page.waitForFunction(() => window.__events.some((e) => e.data.pub && e.data.pub.data.n === 5), null, { timeout: WAIT_MS });
    assert.equal(await count('(e) => e.data.pub && e.data.pub.data.n === 3'), 0, 'recovered ones are not sent again live');
    await page.evaluate(() => window.__es.close());
    assert.deepEqual(pageErrors, []);
  });

  for (const expected of ['http_stream', 'sse']) {
    it(`centrifuge-js without WebSocket falls back to ${expected}, chats and recovers`, async () => {
      const page = await newPage();
      await page.addInitScript(() => {
        window.WebSocket = undefined;
      });
      if (expected === 'sse') {
        // HTTP streaming unavailable (e.g. a proxy that buffers): the client moves on.
        await page.route('**/connection/http_stream', (route) => route.abort());
      }
      // A same-origin document without scripts of its own (the chat page would open a WebSocket).
      await page.goto(`${server.httpUrl}/health`);
      await page.addScriptTag({ path: BUNDLE });
      const channel = `b-chat-${expected}`;
      const transport = await page.evaluate(async ({ wsUrl, channel }) => {
        window.__got = [];
        const c = new Centrifuge([
          { transport: 'websocket', endpoint: wsUrl },
          { transport: 'http_stream', endpoint: '/connection/http_stream' },
          { transport: 'sse', endpoint: '/connection/sse' },
        ], { minReconnectDelay: 100, maxReconnectDelay: 500 });
        window.__c = c;
        const connected = new Promise((resolve) => c.on('connected', resolve));
        c.connect();
        const ctx = await connected;
        const sub = c.newSubscription(channel);
        window.__sub = sub;
        sub.on('publication', (p) => window.__got.push(p.data));
        const subscribed = new Promise((resolve) => sub.on('subscribed', resolve));
        sub.subscribe();
        await subscribed;
        return ctx.transport;
      }, { wsUrl: server.wsUrl('/connection/websocket'), channel });
      assert.equal(transport, expected);

      const node = new Centrifuge(server.wsUrl('/connection/websocket'), { websocket: WebSocket });
      cleanups.push(() => node.disconnect());
      const nodeGot = [];
      const nodeSub = node.newSubscription(channel);
      nodeSub.on('publication', (p) => nodeGot.push(p.data));
      const nodeSubscribed = new Promise((resolve) => nodeSub.on('subscribed', resolve));
      node.connect();
      nodeSub.subscribe();
      await withTimeout(nodeSubscribed, 'node client subscribed');

      await page.evaluate(() => window.__sub.publish({ from: 'browser' }));
      await withTimeout(
        (async () => { while (!nodeGot.some((d) => d.from === 'browser')) await new Promise((r) => setTimeout(r, 20)); })(),
        'the WebSocket client receiving the browser',
      );
      await nodeSub.publish({ from: 'node' });
      await page.waitForFunction(() => window.__got.some((d) => d.from === 'node'), null, { timeout: WAIT_MS });

      // A cut, two missed publications, the way back with recovery.
      await page.evaluate(() => new Promise((resolve) => {
        window.__c.once('disconnected', resolve);
        window.__c.disconnect();
      }));
      for (const n of [1, 2]) await nodeSub.publish({ n });
      const recovered = await page.evaluate(() => new Promise((resolve) => {
        window.__sub.once('subscribed', (ctx) => resolve(ctx.recovered));
        window.__c.connect();
      }));
      assert.equal(recovered, true);
      await page.waitForFunction(() => window.__got.filter((d) => d.n).length === 2, null, { timeout: WAIT_MS });
      assert.deepEqual(await page.evaluate(() => window.__got.filter((d) => d.n).map((d) => d.n)), [1, 2]);
      await page.evaluate(() => window.__c.disconnect());
      node.disconnect();
      assert.deepEqual(pageErrors, []);
    });
  }
});
