// socket.io-client's browser build (dist/socket.io.min.js, unmodified) in headless
// Chromium against the real binary: cross-origin long-polling (CORS) and the upgrade to a
// WebSocket, channel messages and broadcasts with binary data (ArrayBuffer), and
// connection state recovery after the transport drops.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test socketio_browser.test.mjs
// Skipped (not failed) when no Chromium is installed.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServer, REPO_ROOT, WAIT_MS, withTimeout } from './lib/harness.mjs';
import { CHROMIUM, launchChromium } from './lib/chromium.mjs';

const HAVE_CHROMIUM = existsSync(CHROMIUM);
const CLIENT = path.join(REPO_ROOT, 'tests', 'interop', 'node_modules', 'socket.io-client', 'dist', 'socket.io.min.js');
const API_KEY = 'browser-sio-key';

const CONFIG = `
allow_anonymous = true
api_key = "${API_KEY}"

[channel.default]
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true

[socketio]
recovery = true
`;

describe('socket.io-client in Chromium', { skip: HAVE_CHROMIUM ? false : `${CHROMIUM} not installed` }, () => {
  let server;
  let pageOrigin;
  let browser;
  let dir;
  const pageErrors = [];

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'sb-sio-browser-'));
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(file, CONFIG);
    server = await startServer(['--config', file]);
    // A second server only to give the pages another origin, so every polling request to
    // `server` is cross-origin and needs its CORS answers.
    pageOrigin = await startServer();
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    await pageOrigin?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** A page on the other origin with the client loaded and connected; resolves once upgraded. */
  async function openPage() {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(err.message));
    await page.goto(`${pageOrigin.httpUrl}/health`);
    await page.addScriptTag({ path: CLIENT });
    await page.evaluate((url) => {
      window.transports = [];
      window.received = [];
      window.waves = [];
      const s = io(url, { reconnectionDelay: 300, reconnectionDelayMax: 300 });
      window.s = s;
      s.io.on('open', () => {
        window.transports.push(s.io.engine.transport.name);
        s.io.engine.on('upgrade', (t) => window.transports.push(t.name));
      });
      s.on('message', (channel, data) => {
        const shown = data instanceof ArrayBuffer ? { bytes: [...new Uint8Array(data)] } : data;
        window.received.push([channel, shown]);
      });
      s.on('wave', (who, data) => window.waves.push([who, [...new Uint8Array(data)]]));
    }, server.httpUrl);
    await page.waitForFunction(() => window.s.connected && window.transports.includes('websocket'), null, {
      timeout: WAIT_MS,
    });
    return page;
  }

  async function apiPublish(channel, data) {
    const r = await fetch(`${server.httpUrl}/api/publish`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
      body: JSON.stringify({ channel, data }),
    });
    assert.equal(r.status, 200);
  }

  it('polls cross-origin, upgrades, and exchanges JSON and binary data', async () => {
    const a = await openPage();
    const b = await openPage();
    assert.deepEqual(await a.evaluate(() => window.transports), ['polling', 'websocket']);
    for (const p of [a, b]) {
      assert.deepEqual(await p.evaluate(() => window.s.emitWithAck('subscribe', 'browser-ch')), { ok: true });
    }
    assert.deepEqual(
      await a.evaluate(() => window.s.emitWithAck('publish', 'browser-ch', { text: 'hi from a' })),
      { ok: true },
    );
    assert.deepEqual(
      await a.evaluate(() => window.s.emitWithAck('publish', 'browser-ch', new Uint8Array([1, 2, 250]).buffer)),
      { ok: true },
    );
    await b.waitForFunction(() => window.received.length >= 2, null, { timeout: WAIT_MS });
    assert.deepEqual(await b.evaluate(() => window.received), [
      ['browser-ch', { text: 'hi from a' }],
      ['browser-ch', { bytes: [1, 2, 250] }],
    ]);

    await b.evaluate(() => window.s.emit('wave', 'b', new Uint8Array([9, 8]).buffer));
    await a.waitForFunction(() => window.waves.length >= 1, null, { timeout: WAIT_MS });
    assert.deepEqual(await a.evaluate(() => window.waves), [['b', [9, 8]]]);
    assert.deepEqual(pageErrors, []);
  });

  it('recovers the session after the transport drops', async () => {
    const p = await openPage();
    assert.deepEqual(await p.evaluate(() => window.s.emitWithAck('subscribe', 'browser-rec')), { ok: true });
    await apiPublish('browser-rec', 'before');
    await p.waitForFunction(() => window.received.length >= 1, null, { timeout: WAIT_MS });
    await p.evaluate(() => {
      // Reconnect only after a fixed 1.5 s, so the publication below surely happens while the
      // client is away (with the page's 300 ms the reconnect could beat a slow test runner).
      window.s.io.reconnectionDelay(1500);
      window.s.io.reconnectionDelayMax(1500);
      window.s.io.randomizationFactor(0);
      window.disconnected = new Promise((resolve) => window.s.once('disconnect', resolve));
      window.reconnected = new Promise((resolve) => window.s.once('connect', resolve));
      window.s.io.engine.close();
    });
    await withTimeout(p.evaluate(() => window.disconnected), 'the disconnect');
    assert.equal(await p.evaluate(() => window.s.connected), false);
    await apiPublish('browser-rec', 'missed');
    await p.evaluate(() => window.reconnected);
    assert.equal(await p.evaluate(() => window.s.recovered), true);
    await apiPublish('browser-rec', 'after');
    await p.waitForFunction(() => window.received.length >= 3, null, { timeout: WAIT_MS });
    assert.deepEqual(
      await p.evaluate(() => window.received.map((m) => m[1])),
      ['before', 'missed', 'after'],
    );
    assert.deepEqual(pageErrors, []);
  });
});
