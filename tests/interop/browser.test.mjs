// The chat page in a real browser: headless Chromium (Debian's /usr/bin/chromium)
// driven by playwright-core, against the real switchboard binary.
// Two people chat in one room; plain-text and binary messages from a non-browser
// client render safely; the page reconnects after a server restart.
// Saves screenshots of the page to a temporary folder; to refresh docs/screenshots/chat.png
// and chat-mobile.png run it with SCREENSHOT_DIR=docs/screenshots.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test browser.test.mjs
// Skipped (not failed) when no Chromium is installed.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CHROMIUM, launchChromium } from './lib/chromium.mjs';
import { WebSocket, startServer, opened, REPO_ROOT, WAIT_MS } from './lib/harness.mjs';

const HAVE_CHROMIUM = existsSync(CHROMIUM);
// Screenshots go to a temporary folder, so that running the tests never changes tracked
// files; `SCREENSHOT_DIR=docs/screenshots` (relative to the repository) refreshes the ones
// in the docs on purpose.
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR
  ? path.resolve(REPO_ROOT, process.env.SCREENSHOT_DIR)
  : mkdtempSync(path.join(tmpdir(), 'sb-screenshots-'));
const ROOM = 'browser-room';

if (!HAVE_CHROMIUM) {
  console.log(`SKIP browser tests: ${CHROMIUM} not found (install Debian's chromium package)`);
}

/** Uncaught errors in any page; each test asserts there were none. */
const pageErrors = [];

/** Open the chat page, set nick and room, press Join and wait until connected to that room. */
async function enterRoom(context, baseUrl, nick, room) {
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${nick}: ${err.message}`));
  await page.goto(`${baseUrl}/`);
  await page.fill('#nick', nick);
  await page.fill('#room', room);
  await page.click('#join');
  await page.waitForFunction(
    (r) => document.querySelector('#status').textContent.trim() === 'online' && document.body.dataset.room === r,
    room,
    { timeout: WAIT_MS },
  );
  return page;
}

/** Wait until some `.msg .text` in the page shows exactly `text`; returns that message's details. */
async function waitForMessage(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages .msg .text')].some((el) => el.textContent === t),
    text,
    { timeout: WAIT_MS },
  );
  return page.evaluate((t) => {
    const el = [...document.querySelectorAll('#messages .msg')].find((m) => m.querySelector('.text').textContent === t);
    return {
      nick: el.querySelector('.nick').textContent,
      time: el.querySelector('.time').textContent,
      own: el.classList.contains('own'),
    };
  }, text);
}

describe('chat page in Chromium', { skip: HAVE_CHROMIUM ? false : `${CHROMIUM} not installed` }, () => {
  let server;
  let browser;
  let userDataDir;
  before(async () => {
    server = await startServer();
    userDataDir = mkdtempSync(path.join(tmpdir(), 'switchboard-chromium-'));
    browser = await launchChromium(path.join(userDataDir, 'cache'));
  });
  afterEach(() => {
    assert.deepEqual(pageErrors.splice(0), [], 'the chat page threw errors');
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
    if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  });

  it('two people chat in the same room and see each other', async () => {
    // Separate contexts: separate localStorage, like two different people.
    const aliceCtx = await browser.newContext({ viewport: { width: 900, height: 640 } });
    const bobCtx = await browser.newContext({ viewport: { width: 390, height: 700 } });
    const alice = await enterRoom(aliceCtx, server.httpUrl, 'Alice', ROOM);
    const bob = await enterRoom(bobCtx, server.httpUrl, 'Bob', ROOM);

    await alice.fill('#message', 'Hi Bob! Switchboard works in the browser.');
    await alice.press('#message', 'Enter');
    const atBob = await waitForMessage(bob, 'Hi Bob! Switchboard works in the browser.');
    assert.equal(atBob.nick, 'Alice');
    assert.equal(atBob.own, false, 'Alice\'s message must not look like Bob\'s own');
    assert.match(atBob.time, /\d/, 'message shows a time');
    const atAlice = await waitForMessage(alice, 'Hi Bob! Switchboard works in the browser.');
    assert.equal(atAlice.own, true, 'Alice\'s own message is marked as own');
    assert.equal(await alice.inputValue('#message'), '', 'input is cleared after sending');

    await bob.fill('#message', 'Hello Alice, ça va ? <b>not bold</b>');
    await bob.click('#send');
    const atAlice2 = await waitForMessage(alice, 'Hello Alice, ça va ? <b>not bold</b>');
    assert.equal(atAlice2.nick, 'Bob');
    assert.equal(atAlice2.own, false);
    assert.equal(await alice.locator('#messages b').count(), 0, 'message text must not be parsed as HTML');

    assert.equal((await alice.textContent('#status')).trim(), 'online');
    assert.equal((await bob.textContent('#status')).trim(), 'online');

    // A wscat-style client in the same room: plain text and binary render as such.
    const cli = new WebSocket(server.wsUrl(`/${ROOM}`));
    cli.on('error', () => {});
    await opened(cli);
    cli.send('plain text from a terminal');
    cli.send(Buffer.from([1, 2, 3]));
    await waitForMessage(alice, 'plain text from a terminal');
    await waitForMessage(alice, '[binary 3 bytes]');
    await waitForMessage(bob, '[binary 3 bytes]');
    cli.close();

    await alice.fill('#message', 'See you in the lobby!');
    await alice.press('#message', 'Enter');
    await waitForMessage(bob, 'See you in the lobby!');
    await waitForMessage(alice, 'See you in the lobby!');

    // The nickname is remembered for the next visit.
    const reloaded = await aliceCtx.newPage();
    await reloaded.goto(`${server.httpUrl}/`);
    assert.equal(await reloaded.inputValue('#nick'), 'Alice');
    await reloaded.close();

    mkdirSync(SCREENSHOT_DIR, { recursive: true });
    await alice.screenshot({ path: path.join(SCREENSHOT_DIR, 'chat.png') });
    await bob.screenshot({ path: path.join(SCREENSHOT_DIR, 'chat-mobile.png') });
    await aliceCtx.close();
    await bobCtx.close();
  });

  it('rooms are separate in the page too', async () => {
    const ctxA = await browser.newContext();
    const ctxB = await browser.newContext();
    const a = await enterRoom(ctxA, server.httpUrl, 'Ann', 'room-a');
    const b = await enterRoom(ctxB, server.httpUrl, 'Ben', 'room-b');
    await a.fill('#message', 'only in room-a');
    await a.press('#message', 'Enter');
    await waitForMessage(a, 'only in room-a');
    await b.fill('#message', 'only in room-b');
    await b.press('#message', 'Enter');
    await waitForMessage(b, 'only in room-b');
    const leaked = await b.evaluate(() => [...document.querySelectorAll('.msg .text')].map((e) => e.textContent));
    assert.deepEqual(leaked, ['only in room-b']);
    await ctxA.close();
    await ctxB.close();
  });

  it('served over https, the page connects with wss', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'switchboard-tls-'));
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'),
    ], { stdio: 'ignore' });
    const tls = await startServer(['--tls-cert', path.join(dir, 'cert.pem'), '--tls-key', path.join(dir, 'key.pem')]);
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
    try {
      assert.match(tls.httpUrl, /^https:/);
      const page = await enterRoom(ctx, tls.httpUrl, 'Dana', 'secure-room');
      await page.fill('#message', 'sent over wss');
      await page.press('#message', 'Enter');
      await waitForMessage(page, 'sent over wss');
    } finally {
      await ctx.close();
      await tls.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('goes offline when the server stops and reconnects when it is back', async () => {
    const ctx = await browser.newContext();
    const page = await enterRoom(ctx, server.httpUrl, 'Carol', 'lobby');
    const port = server.port;
    await server.stop();
    await page.waitForFunction(() => document.querySelector('#status').textContent.trim() === 'offline', null, { timeout: WAIT_MS });

    server = await startServer([], { listen: `127.0.0.1:${port}` });
    // Backoff is at most a few seconds after a short outage.
    await page.waitForFunction(() => document.querySelector('#status').textContent.trim() === 'online', null, { timeout: 45_000 });
    const systemLines = await page.evaluate(() => [...document.querySelectorAll('#messages .system')].map((e) => e.textContent));
    assert.ok(systemLines.some((l) => l.startsWith('Reconnected')), `no reconnect notice in ${JSON.stringify(systemLines)}`);

    // And it is really back in the room.
    await page.fill('#message', 'back again');
    await page.press('#message', 'Enter');
    await waitForMessage(page, 'back again');
    await ctx.close();
  });
});
