// The admin page (`/admin`) in a real browser: headless Chromium (Debian's /usr/bin/chromium)
// driven by playwright-core, against the real switchboard binary started with
// --admin-password. Refused without logging in (and with a wrong password or a forged
// request), then logged in: the charts move under load from `ws` clients, a channel search
// finds a channel, a user's connection (a `ws` client with a token) is disconnected, and the
// publish form reaches a `ws` client.
// Screenshots are written only when asked: SCREENSHOT_DIR=docs/screenshots (relative to the
// repository) refreshes docs/screenshots/admin.png and admin-mobile.png.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test admin_browser.test.mjs
// Skipped (not failed) when no Chromium is installed.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CHROMIUM, launchChromium } from './lib/chromium.mjs';
import { WebSocket, Inbox, binaryPath, join, opened, startServer, withTimeout, REPO_ROOT, WAIT_MS } from './lib/harness.mjs';

const HAVE_CHROMIUM = existsSync(CHROMIUM);
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR ? path.resolve(REPO_ROOT, process.env.SCREENSHOT_DIR) : null;
const PASSWORD = 'correct horse battery staple';
const SECRET = 'admin-test-secret';

/** Uncaught errors in any page; each test asserts there were none. */
const pageErrors = [];

function mintToken(user) {
  return execFileSync(binaryPath(), ['token', '--user', user, '--secret', SECRET], { encoding: 'utf8' }).trim();
}

/** Log in through the page's form; resolves once the dashboard shows. */
async function logIn(page, baseUrl) {
  await page.goto(`${baseUrl}/admin`);
  await page.waitForSelector('#login:not([hidden])', { timeout: WAIT_MS });
  await page.fill('#password', PASSWORD);
  await page.click('#login-btn');
  await page.waitForSelector('#app:not([hidden])', { timeout: WAIT_MS });
}

describe('admin page in Chromium', { skip: HAVE_CHROMIUM ? false : `${CHROMIUM} not installed` }, () => {
  let server;
  let browser;
  let userDataDir;
  let context;
  let page;
  before(async () => {
    server = await startServer(['--admin-password', PASSWORD, '--token-hmac-secret', SECRET]);
    userDataDir = mkdtempSync(path.join(tmpdir(), 'switchboard-chromium-'));
    browser = await launchChromium(path.join(userDataDir, 'cache'));
    context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
    page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(err.message));
  });
  afterEach(() => {
    assert.deepEqual(pageErrors.splice(0), [], 'the admin page threw errors');
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
    if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  });

  it('refuses everything without a login, a wrong password, and forged requests', async () => {
    const base = server.httpUrl;
    for (const p of ['/admin/stats', '/admin/config', '/admin/channels', '/admin/nodes', '/admin/connections']) {
      const r = await fetch(base + p);
      assert.equal(r.status, 401, p);
    }
    const pub = await fetch(`${base}/admin/publish`, { method: 'POST', body: '{"channel":"x","data":1}' });
    assert.equal(pub.status, 401);

    // The page shows the login form and nothing of the dashboard.
    await page.goto(`${base}/admin`);
    await page.waitForSelector('#login:not([hidden])', { timeout: WAIT_MS });
    assert.equal(await page.isHidden('#app'), true);
    await page.fill('#password', 'wrong');
    await page.click('#login-btn');
    await page.waitForFunction(() => document.querySelector('#login-error').textContent.length > 0, null, { timeout: WAIT_MS });
    assert.match(await page.textContent('#login-error'), /wrong password/);
    assert.equal(await page.isHidden('#app'), true);

    // A login from another origin is refused before the password is looked at.
    const cross = await fetch(`${base}/admin/login`, {
      method: 'POST',
      headers: { Origin: 'http://evil.example', 'Content-Type': 'application/json' },
      body: JSON.stringify({ password: PASSWORD }),
    });
    assert.equal(cross.status, 403);

    // A real session cookie without the CSRF token cannot change anything.
    const login = await fetch(`${base}/admin/login`, { method: 'POST', body: JSON.stringify({ password: PASSWORD }) });
    assert.equal(login.status, 200);
    const setCookie = login.headers.get('set-cookie');
    assert.match(setCookie, /HttpOnly/);
    assert.match(setCookie, /SameSite=Strict/);
    const { csrf } = await login.json();
    const cookie = setCookie.split(';')[0];
    const noToken = await fetch(`${base}/admin/publish`, { method: 'POST', headers: { Cookie: cookie }, body: '{"channel":"x","data":1}' });
    assert.equal(noToken.status, 403);
    const wrongOrigin = await fetch(`${base}/admin/publish`, {
      method: 'POST',
      headers: { Cookie: cookie, 'X-CSRF-Token': csrf, Origin: 'http://evil.example' },
      body: '{"channel":"x","data":1}',
    });
    assert.equal(wrongOrigin.status, 403);
    const ok = await fetch(`${base}/admin/publish`, {
      method: 'POST',
      headers: { Cookie: cookie, 'X-CSRF-Token': csrf },
      body: '{"channel":"x","data":1}',
    });
    assert.equal(ok.status, 200);
  });

  it('logs in, and the charts move under load', async () => {
    await logIn(page, server.httpUrl);
    // The configuration is shown with its secrets masked.
    await page.waitForFunction(() => document.querySelector('#config').textContent.includes('listen'), null, { timeout: WAIT_MS });
    const config = await page.textContent('#config');
    assert.ok(!config.includes(PASSWORD) && !config.includes(SECRET), 'secrets are masked');
    assert.match(config, /admin_password: Some\(\s*"••••••"/);

    const canvasBefore = await page.evaluate(() => document.querySelector('#chart-deliveries').toDataURL());
    // Load: 20 listeners in one room, one client publishing 50 messages a second.
    const listeners = await Promise.all(Array.from({ length: 20 }, () => join(server.wsUrl('/admin-load'))));
    const sender = listeners[0].ws;
    const load = setInterval(() => sender.send('load ' + Date.now()), 20);
    try {
      await page.waitForFunction(() => {
        const n = Number(document.querySelector('#now-connections').textContent);
        const d = document.querySelector('#now-deliveries').textContent;
        return n >= 20 && parseFloat(d) > 100;
      }, null, { timeout: WAIT_MS, polling: 250 });
      // The p99 latency is a number, and the in/out message rates count the load.
      await page.waitForFunction(() => /\d/.test(document.querySelector('#now-latency').textContent), null, { timeout: WAIT_MS });
      const [inRate] = (await page.textContent('#now-messages')).split('·').map((s) => parseFloat(s));
      assert.ok(inRate > 10, `messages in/s ${inRate}`);
      const canvasAfter = await page.evaluate(() => document.querySelector('#chart-deliveries').toDataURL());
      assert.notEqual(canvasAfter, canvasBefore, 'the deliveries chart was redrawn with the load');
      assert.match(await page.textContent('#legend-connections'), /raw 2\d/);
      if (SCREENSHOT_DIR) {
        mkdirSync(SCREENSHOT_DIR, { recursive: true });
        // Some seconds of history in the charts, and the channel list refreshed.
        await page.waitForTimeout(8000);
        await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'admin.png'), fullPage: true });
        const phone = await context.newPage();
        await phone.setViewportSize({ width: 390, height: 844 });
        await phone.goto(`${server.httpUrl}/admin`);
        await phone.waitForSelector('#app:not([hidden])', { timeout: WAIT_MS });
        await phone.waitForTimeout(3000);
        await phone.screenshot({ path: path.join(SCREENSHOT_DIR, 'admin-mobile.png') });
        await phone.close();
      }
    } finally {
      clearInterval(load);
      for (const l of listeners) l.ws.close();
    }
  });

  it('finds a channel by searching', async () => {
    const a = await join(server.wsUrl('/needle-haystack-42'));
    const b = await join(server.wsUrl('/other-room'));
    try {
      await page.fill('#channel-search', 'haystack');
      await page.waitForFunction(() => [...document.querySelectorAll('#channels tr td:first-child')].some((td) => td.textContent === 'needle-haystack-42'), null, { timeout: WAIT_MS });
      const rows = await page.$$eval('#channels tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
      assert.deepEqual(rows, [['needle-haystack-42', '1']], 'only the matching channel, with its subscriber count');
    } finally {
      a.ws.close();
      b.ws.close();
      await page.fill('#channel-search', '');
    }
  });

  it('disconnects a user', async () => {
    const ws = new WebSocket(`${server.wsUrl('/kick-room')}?token=${encodeURIComponent(mintToken('mallory'))}`);
    ws.on('error', () => {});
    const closed = new Promise((resolve) => ws.once('close', (code) => resolve(code)));
    await opened(ws);
    const bystander = await join(server.wsUrl('/kick-room'));
    await page.fill('#conn-search', 'mallory');
    await page.click('#conn-form button[type=submit]');
    await page.waitForFunction(() => [...document.querySelectorAll('#connections td')].some((td) => td.textContent === 'mallory'), null, { timeout: WAIT_MS });
    const rows = await page.$$eval('#connections tr', (trs) => trs.map((tr) => [...tr.children].slice(1, 3).map((td) => td.textContent)));
    assert.deepEqual(rows, [['mallory', 'raw']], 'only the user\'s connection is listed');
    await page.click('#disconnect-user');
    const code = await withTimeout(closed, 'the user\'s connection to close');
    assert.equal(code, 1008, 'raw rooms close a kicked connection with 1008');
    await page.waitForFunction(() => /Disconnected user mallory/.test(document.querySelector('#conn-result').textContent), null, { timeout: WAIT_MS });
    assert.equal(bystander.ws.readyState, WebSocket.OPEN, 'other connections are left alone');
    bystander.ws.close();
  });

  it('publishes to a ws client', async () => {
    const ws = new WebSocket(server.wsUrl('/news'));
    ws.on('error', () => {});
    const inbox = new Inbox(ws);
    await opened(ws);
    await join(server.wsUrl('/news')).then((probe) => probe.ws.close()); // the room is live
    await page.fill('#pub-channel', 'news');
    await page.fill('#pub-data', '{"text":"hello from the admin page"}');
    await page.click('#pub-send');
    const got = await inbox.next();
    assert.equal(got.text, '{"text":"hello from the admin page"}');
    await page.waitForFunction(() => /Published/.test(document.querySelector('#pub-result').textContent), null, { timeout: WAIT_MS });
    // Data that is not JSON is refused in the page, nothing is sent.
    await page.fill('#pub-data', 'not json');
    await page.click('#pub-send');
    await page.waitForFunction(() => /must be JSON/.test(document.querySelector('#pub-result').textContent), null, { timeout: WAIT_MS });
    ws.close();
  });

  it('logs out', async () => {
    await page.click('#logout');
    await page.waitForSelector('#login:not([hidden])', { timeout: WAIT_MS });
    const status = await page.evaluate(async () => (await fetch('/admin/stats')).status);
    assert.equal(status, 401);
  });
});

describe('admin page off by default', () => {
  it('is not served without an admin password', async () => {
    const server = await startServer();
    try {
      const r = await fetch(`${server.httpUrl}/admin`);
      assert.equal(r.status, 404);
    } finally {
      await server.stop();
    }
  });
});
