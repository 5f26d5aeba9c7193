// The tutorials' login with the backend taking part (examples/chat_backend.rs and
// examples/chat_backend.toml), in headless Chromium via playwright-core, against the real
// switchboard binary: without the session cookie the chat page is refused; after the
// login form, chat messages show under the logged-in name (whatever the nickname field
// says); a message with the banned word is refused; the backend's rpc answers who the
// user is.
// Screenshots go to a temporary folder; `SCREENSHOT_DIR=docs/screenshots` refreshes
// docs/screenshots/chat-login.png on purpose.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test login_browser.test.mjs
// (needs target/release/examples/chat_backend: cargo build --release --example chat_backend)

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startServer, binaryPath, withTimeout, REPO_ROOT, WAIT_MS } from './lib/harness.mjs';
import { CHROMIUM, launchChromium } from './lib/chromium.mjs';

const HAVE_CHROMIUM = existsSync(CHROMIUM);
const BACKEND_BIN = path.join(path.dirname(binaryPath()), 'examples', 'chat_backend');
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR
  ? path.resolve(REPO_ROOT, process.env.SCREENSHOT_DIR)
  : mkdtempSync(path.join(tmpdir(), 'sb-screenshots-'));
const ROOM = 'login-room';

/** A free loopback port (the backend needs it before the server's config is written). */
function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Starts the example backend; resolves once it prints its address. */
function startBackend(port, chatUrl) {
  const child = spawn(BACKEND_BIN, ['--port', String(port), '--chat', chatUrl], { stdio: ['ignore', 'pipe', 'pipe'] });
  return withTimeout(
    new Promise((resolve, reject) => {
      child.stdout.on('data', (d) => String(d).includes('chat backend on') && resolve(child));
      child.on('exit', (code) => reject(new Error(`chat_backend exited with ${code}`)));
    }),
    'chat_backend start',
  );
}

/** The text of every system line of the page. */
function systemLines(page) {
  return page.evaluate(() => [...document.querySelectorAll('#messages .system')].map((li) => li.textContent));
}

describe('login through the backend in Chromium', { skip: HAVE_CHROMIUM ? false : `${CHROMIUM} not installed` }, () => {
  let server;
  let backend;
  let backendUrl;
  let browser;
  let dir;

  before(async () => {
    const port = await freePort();
    backendUrl = `http://127.0.0.1:${port}`;
    dir = mkdtempSync(path.join(tmpdir(), 'sb-login-'));
    // The example's configuration as shipped, pointed at this backend's port.
    const config = readFileSync(path.join(REPO_ROOT, 'examples', 'chat_backend.toml'), 'utf8')
      .replaceAll('127.0.0.1:9000', `127.0.0.1:${port}`)
      .replace(/^listen = .*$/m, '');
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(file, config);
    server = await startServer(['--config', file]);
    backend = await startBackend(port, `${server.httpUrl}/`);
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    backend?.kill();
    const { code } = await server.stop();
    assert.equal(code, 0, server.stderr());
    rmSync(dir, { recursive: true, force: true });
  });

  async function join(page, nick) {
    await page.fill('#nick', nick);
    await page.fill('#room', ROOM);
    await page.click('#join');
  }

  it('without the session cookie the connection is refused', async () => {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(`${server.httpUrl}/`);
      await join(page, 'nobody');
      await page.waitForFunction(
        () => [...document.querySelectorAll('#messages .system')].some((li) => li.textContent.includes('login required')),
        null,
        { timeout: WAIT_MS },
      );
      // The raw-room fallback is refused too (403 before the 101): the page stays offline.
      await page.waitForTimeout(500);
      assert.equal((await page.textContent('#status')).trim(), 'offline');
      assert.ok(!(await systemLines(page)).some((l) => l.startsWith('Joined')), 'never joined');
    } finally {
      await context.close();
    }
  });

  it('after logging in, messages show under the user name; the banned word is refused; rpc knows the user', async () => {
    const context = await browser.newContext({ viewport: { width: 900, height: 640 } });
    try {
      const page = await context.newPage();
      await page.goto(`${backendUrl}/`);
      await page.fill('#name', 'alice');
      await Promise.all([page.waitForURL(`${server.httpUrl}/**`, { timeout: WAIT_MS }), page.click('#login')]);
      // The nickname field says otherwise: the backend's publish check puts the real user in.
      await join(page, 'mallory');
      await page.waitForFunction(
        (r) => document.querySelector('#status').textContent.trim() === 'online' && document.body.dataset.room === r && document.body.dataset.mode === 'channels',
        ROOM,
        { timeout: WAIT_MS },
      );
      await page.fill('#message', 'hello from alice');
      await page.click('#send');
      await page.waitForFunction(
        () => [...document.querySelectorAll('#messages .msg .text')].some((el) => el.textContent === 'hello from alice'),
        null,
        { timeout: WAIT_MS },
      );
      const nick = await page.evaluate(() => {
        const el = [...document.querySelectorAll('#messages .msg')].find((m) => m.querySelector('.text').textContent === 'hello from alice');
        return el.querySelector('.nick').textContent;
      });
      assert.equal(nick, 'alice');
      await page.fill('#message', 'cheap spam here');
      await page.click('#send');
      await page.waitForFunction(
        () => [...document.querySelectorAll('#messages .system')].some((li) => li.textContent.includes('banned word')),
        null,
        { timeout: WAIT_MS },
      );
      const texts = await page.evaluate(() => [...document.querySelectorAll('#messages .msg .text')].map((el) => el.textContent));
      assert.ok(!texts.includes('cheap spam here'), 'the refused message is not shown');
      // The backend's rpc, from the page's origin (the browser sends the cookie itself).
      const who = await page.evaluate(
        (url) =>
          new Promise((resolve, reject) => {
            const ws = new WebSocket(url);
            ws.onopen = () => ws.send('{"id":1,"connect":{}}\n{"id":2,"rpc":{"method":"whoami"}}');
            ws.onmessage = (e) => {
              for (const line of String(e.data).split('\n')) {
                const m = line && JSON.parse(line);
                if (m && m.id === 2) {
                  ws.close();
                  return m.error ? reject(new Error(m.error.message)) : resolve(m.rpc.data);
                }
              }
            };
            ws.onerror = () => reject(new Error('websocket error'));
          }),
        `${server.wsUrl('/connection/websocket')}`,
      );
      assert.deepEqual(who, { user: 'alice' });
      await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'chat-login.png') });
    } finally {
      await context.close();
    }
  });
});
