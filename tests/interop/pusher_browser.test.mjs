// Laravel Echo with pusher-js (their unmodified browser builds) in headless Chromium against
// the real binary. The page and its channel authorization endpoint come from this test's
// own Node backend, which signs with the npm `pusher` SDK (`authorizeChannel`) as a Laravel
// backend would: two pages join one presence channel, see each other, whisper a client
// event, and both receive an event the backend triggers with the SDK.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test pusher_browser.test.mjs
// Skipped (not failed) when no Chromium is installed.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import PusherServer from 'pusher';
import { startServer, REPO_ROOT, WAIT_MS } from './lib/harness.mjs';
import { CHROMIUM, launchChromium } from './lib/chromium.mjs';

const HAVE_CHROMIUM = existsSync(CHROMIUM);
const MODULES = path.join(REPO_ROOT, 'tests', 'interop', 'node_modules');
const PUSHER_JS = path.join(MODULES, 'pusher-js', 'dist', 'web', 'pusher.min.js');
const ECHO_JS = path.join(MODULES, 'laravel-echo', 'dist', 'echo.iife.js');
const APP = { appId: 'echo-app', key: 'echo-key', secret: 'echo-secret' };

const USERS = {
  ann: { user_id: 'ann', user_info: { name: 'Ann' } },
  ben: { user_id: 'ben', user_info: { name: 'Ben' } },
};

describe('Laravel Echo + pusher-js in Chromium', { skip: HAVE_CHROMIUM ? false : `${CHROMIUM} not installed` }, () => {
  let server;
  let sdk;
  let backend;
  let backendUrl;
  let browser;
  let dir;
  const authorized = [];
  const pageErrors = [];

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'sb-pusher-browser-'));
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(file, [
      '[[pusher.apps]]',
      `id = "${APP.appId}"`,
      `key = "${APP.key}"`,
      `secret = "${APP.secret}"`,
      '',
    ].join('\n'));
    server = await startServer(['--config', file]);
    sdk = new PusherServer({ ...APP, host: '127.0.0.1', port: String(server.port), useTLS: false });

    // The application backend: the page, the two scripts, and Laravel's auth endpoint
    // (form-encoded `socket_id` and `channel_name`; the user comes from a header the page
    // sets, standing in for a session).
    const page = `<!doctype html><html><head><meta charset="utf-8"></head><body>
<script src="/pusher.min.js"></script><script src="/echo.iife.js"></script></body></html>`;
    backend = createServer((req, res) => {
      if (req.method === 'GET' && req.url === '/') {
        res.writeHead(200, { 'content-type': 'text/html' }).end(page);
      } else if (req.method === 'GET' && req.url === '/pusher.min.js') {
        res.writeHead(200, { 'content-type': 'text/javascript' }).end(readFileSync(PUSHER_JS));
      } else if (req.method === 'GET' && req.url === '/echo.iife.js') {
        res.writeHead(200, { 'content-type': 'text/javascript' }).end(readFileSync(ECHO_JS));
      } else if (req.method === 'POST' && req.url === '/broadcasting/auth') {
        let body = '';
        req.on('data', (d) => { body += d; });
        req.on('end', () => {
          const form = new URLSearchParams(body);
          const user = USERS[req.headers['x-user']];
          if (!user) {
            res.writeHead(403).end();
            return;
          }
          const channel = form.get('channel_name');
          authorized.push([user.user_id, channel]);
          const auth = sdk.authorizeChannel(form.get('socket_id'), channel, channel.startsWith('presence-') ? user : undefined);
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(auth));
        });
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise((resolve) => backend.listen(0, '127.0.0.1', resolve));
    backendUrl = `http://127.0.0.1:${backend.address().port}`;
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    await new Promise((resolve) => (backend ? backend.close(resolve) : resolve()));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** A page of `user` with Echo connected to the server and joined to presence channel `room`. */
  async function openPage(user, room) {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(err.message));
    await page.goto(backendUrl);
    await page.evaluate(({ key, port, user, room }) => {
      window.here = null;
      window.joining = [];
      window.leaving = [];
      window.whispers = [];
      window.announced = [];
      window.echo = new Echo.default({
        broadcaster: 'pusher',
        key,
        cluster: 'mt1',
        wsHost: '127.0.0.1',
        wsPort: port,
        forceTLS: false,
        enabledTransports: ['ws'],
        disableStats: true,
        authEndpoint: '/broadcasting/auth',
        auth: { headers: { 'X-User': user } },
      });
      window.room = window.echo.join(room)
        .here((members) => { window.here = members; })
        .joining((m) => window.joining.push(m))
        .leaving((m) => window.leaving.push(m))
        .listenForWhisper('typing', (e) => window.whispers.push(e))
        .listen('.Announced', (e) => window.announced.push(e));
    }, { key: APP.key, port: server.port, user, room });
    await page.waitForFunction(() => window.here !== null, null, { timeout: WAIT_MS });
    return page;
  }

  it('joins a presence channel, whispers, and listens to a backend event', async () => {
    const a = await openPage('ann', 'lobby');
    assert.deepEqual(await a.evaluate(() => window.here), [{ name: 'Ann' }]);
    const b = await openPage('ben', 'lobby');
    const here = await b.evaluate(() => window.here);
    assert.deepEqual(here.map((m) => m.name).sort(), ['Ann', 'Ben']);
    await a.waitForFunction(() => window.joining.length === 1, null, { timeout: WAIT_MS });
    assert.deepEqual(await a.evaluate(() => window.joining), [{ name: 'Ben' }]);
    assert.deepEqual(authorized.map((x) => x.join(' ')).sort(), ['ann presence-lobby', 'ben presence-lobby']);

    // Echo's whisper is a client event: the other page gets it, the sender does not.
    await b.evaluate(() => window.room.whisper('typing', { name: 'Ben', typing: true }));
    await a.waitForFunction(() => window.whispers.length === 1, null, { timeout: WAIT_MS });
    assert.deepEqual(await a.evaluate(() => window.whispers), [{ name: 'Ben', typing: true }]);

    // An event the backend triggers with the SDK, heard through Echo's listen().
    await sdk.trigger('presence-lobby', 'Announced', { text: 'doors open' });
    for (const p of [a, b]) {
      await p.waitForFunction(() => window.announced.length === 1, null, { timeout: WAIT_MS });
      assert.deepEqual(await p.evaluate(() => window.announced), [{ text: 'doors open' }]);
    }
    assert.deepEqual(await b.evaluate(() => window.whispers), [], 'a whisper is not echoed to its sender');

    // Ben closes his page: Ann's Echo sees him leave.
    await b.context().close();
    await a.waitForFunction(() => window.leaving.length === 1, null, { timeout: WAIT_MS });
    assert.deepEqual(await a.evaluate(() => window.leaving), [{ name: 'Ben' }]);
    assert.deepEqual(pageErrors, []);
    await a.context().close();
  });
});
