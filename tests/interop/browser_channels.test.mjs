// The chat page speaking the Centrifugo client protocol, in a real browser:
// headless Chromium (Debian's /usr/bin/chromium) driven by playwright-core,
// against the real switchboard binary started with a config that enables JWT
// auth, presence, join/leave, history and recovery on the default namespace.
// Two users with tokens see each other online, the second sees the messages
// sent before it joined, a page whose connection is cut gets every message
// missed meanwhile exactly once, a lost stream shows the "could not be
// recovered" notice, and a page the server refuses (no token, or a channel
// closed to anonymous users) falls back to the raw room and still chats.
// Saves a screenshot of the page to a temporary folder; to refresh
// docs/screenshots/chat-channels.png run it with SCREENSHOT_DIR=docs/screenshots.
//
// Run: SWITCHBOARD_BIN=/abs/path/to/switchboard node --test browser_channels.test.mjs
// Skipped (not failed) when no Chromium is installed.

import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CHROMIUM, launchChromium } from './lib/chromium.mjs';
import { WebSocket, Inbox, startServer, opened, binaryPath, REPO_ROOT, WAIT_MS } from './lib/harness.mjs';

const HAVE_CHROMIUM = existsSync(CHROMIUM);
// Screenshots go to a temporary folder, so that running the tests never changes tracked
// files; `SCREENSHOT_DIR=docs/screenshots` (relative to the repository) refreshes the ones
// in the docs on purpose.
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR
  ? path.resolve(REPO_ROOT, process.env.SCREENSHOT_DIR)
  : mkdtempSync(path.join(tmpdir(), 'sb-screenshots-'));
const SECRET = 'browser-channels-secret';
const API_KEY = 'browser-channels-api-key';

// Anonymous connections stay off (the default): a page without a token must
// fall back to the raw room.
const CONFIG = `
token_hmac_secret = "${SECRET}"
api_key = "${API_KEY}"

[channel.default]
presence = true
join_leave = true
history_size = 100
history_ttl = 300
force_recovery = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
`;

if (!HAVE_CHROMIUM) {
  console.log(`SKIP browser channel tests: ${CHROMIUM} not found (install Debian's chromium package)`);
}

/** Uncaught errors in any page; each test asserts there were none. */
const pageErrors = [];

function mint(user) {
  return execFileSync(binaryPath(), ['token', '--user', user, '--secret', SECRET], { encoding: 'utf8' }).trim();
}

/** Wait until the page is online in `room` using protocol `mode` ("channels" or "raw"). */
async function waitJoined(page, room, mode) {
  await page.waitForFunction(
    ([r, m]) => document.querySelector('#status').textContent.trim() === 'online'
      && document.body.dataset.room === r && document.body.dataset.mode === m,
    [room, mode],
    { timeout: WAIT_MS },
  );
}

/** Texts of all chat messages shown, in order. */
function texts(page) {
  return page.evaluate(() => [...document.querySelectorAll('#messages .msg .text')].map((e) => e.textContent));
}

/** Wait until some message shows exactly `text`; returns its nick and whether it is marked own. */
async function waitForMessage(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages .msg .text')].some((el) => el.textContent === t),
    text,
    { timeout: WAIT_MS },
  );
  return page.evaluate((t) => {
    const el = [...document.querySelectorAll('#messages .msg')].find((m) => m.querySelector('.text').textContent === t);
    return { nick: el.querySelector('.nick').textContent, own: el.classList.contains('own') };
  }, text);
}

/** Wait until the online list shows exactly these user names (sorted). */
async function waitOnline(page, users) {
  const want = [...users].sort();
  try {
    await page.waitForFunction(
      (w) => JSON.stringify([...document.querySelectorAll('#online li')].map((li) => li.dataset.user).sort()) === JSON.stringify(w),
      want,
      { timeout: WAIT_MS },
    );
  } catch (e) {
    const got = await page.evaluate(() => [...document.querySelectorAll('#online li')].map((li) => li.dataset.user));
    throw new Error(`online list is ${JSON.stringify(got)}, expected ${JSON.stringify(want)}: ${e.message}`);
  }
}

async function say(page, text) {
  await page.fill('#message', text);
  await page.press('#message', 'Enter');
  await waitForMessage(page, text);
}

function notices(page) {
  return page.evaluate(() => [...document.querySelectorAll('#messages .system.notice')].map((e) => e.textContent));
}

describe('chat page over the Centrifugo protocol in Chromium', { skip: HAVE_CHROMIUM ? false : `${CHROMIUM} not installed` }, () => {
  let server;
  let browser;
  let dir;

  async function api(method, body) {
    const res = await fetch(`${server.httpUrl}/api/${method}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 200, `api ${method}`);
    const json = await res.json();
    assert.equal(json.error, undefined, `api ${method}: ${JSON.stringify(json.error)}`);
    return json.result;
  }

  async function openPage(ctx, label) {
    const page = await ctx.newPage();
    page.on('pageerror', (err) => pageErrors.push(`${label}: ${err.message}`));
    return page;
  }

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'switchboard-chromium-cf-'));
    const file = path.join(dir, 'switchboard.toml');
    writeFileSync(file, CONFIG);
    server = await startServer(['--config', file]);
    browser = await launchChromium(path.join(dir, 'cache'));
  });
  afterEach(() => {
    assert.deepEqual(pageErrors.splice(0), [], 'the chat page threw errors');
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('presence, history on join, recovery after a cut connection, and raw clients in the same room', async () => {
    const room = 'team';
    const aliceCtx = await browser.newContext({ viewport: { width: 900, height: 680 } });
    const bobCtx = await browser.newContext({ viewport: { width: 420, height: 700 } });

    // Alice: room and token from the URL hash.
    const alice = await openPage(aliceCtx, 'alice');
    await alice.goto(`${server.httpUrl}/#room=${room}&token=${mint('alice')}`);
    await waitJoined(alice, room, 'channels');
    assert.equal(await alice.evaluate(() => location.hash), `#${room}`, 'the token is not left in the URL');
    await alice.fill('#nick', 'Alice');
    await alice.click('#join');
    await waitJoined(alice, room, 'channels');
    assert.equal((await alice.textContent('#mode')).trim(), 'channels');
    await waitOnline(alice, ['alice']);
    await say(alice, 'sent before Bob joined (1)');
    await say(alice, 'sent before Bob joined (2)');

    // Bob: token typed into the form.
    const bob = await openPage(bobCtx, 'bob');
    await bob.goto(`${server.httpUrl}/`);
    await bob.fill('#nick', 'Bob');
    await bob.fill('#room', room);
    await bob.fill('#token', mint('bob'));
    await bob.click('#join');
    await waitJoined(bob, room, 'channels');
    const early = await waitForMessage(bob, 'sent before Bob joined (2)');
    assert.equal(early.nick, 'Alice');
    assert.equal(early.own, false);
    assert.deepEqual(await texts(bob), ['sent before Bob joined (1)', 'sent before Bob joined (2)'], 'history on join, in order');
    await waitOnline(bob, ['alice', 'bob']);
    await waitOnline(alice, ['alice', 'bob']);

    // Live chat both ways, own messages marked as such.
    await say(bob, 'Hi Alice <b>not bold</b>');
    const atAlice = await waitForMessage(alice, 'Hi Alice <b>not bold</b>');
    assert.deepEqual(atAlice, { nick: 'Bob', own: false });
    assert.equal(await alice.locator('#messages b').count(), 0, 'message text must not be parsed as HTML');
    assert.equal((await waitForMessage(bob, 'Hi Alice <b>not bold</b>')).own, true);

    // A raw-room client in the same room: its plain text arrives as a JSON
    // string and shows as text; the pages' messages reach it as JSON text.
    const cli = new WebSocket(server.wsUrl(`/${room}`));
    cli.on('error', () => {});
    const cliInbox = new Inbox(cli);
    await opened(cli);
    cli.send('plain text from a terminal');
    await waitForMessage(alice, 'plain text from a terminal');
    await waitForMessage(bob, 'plain text from a terminal');
    await say(alice, 'hello terminal');
    for (;;) {
      const m = await cliInbox.next('the page message at the raw client');
      if (m.text === null) continue;
      let parsed = null;
      try { parsed = JSON.parse(m.text); } catch { /* not JSON: someone else's text */ }
      if (parsed?.text !== 'hello terminal') continue;
      assert.equal(parsed.nick, 'Alice');
      assert.equal(typeof parsed.ts, 'number');
      break;
    }
    cli.close();

    // Cut Alice's connection and keep her away while Bob writes.
    await alice.evaluate(() => window.__sbTestDrop(true));
    await alice.waitForFunction(() => document.querySelector('#status').textContent.trim() === 'offline', null, { timeout: WAIT_MS });
    await waitOnline(bob, ['bob']);
    const missed = ['missed one', 'missed two', 'missed three'];
    for (const m of missed) await say(bob, m);
    await alice.evaluate(() => window.__sbTestResume());
    await waitJoined(alice, room, 'channels');
    await waitForMessage(alice, 'missed three');
    await waitOnline(bob, ['alice', 'bob']);

    // The server cuts her too (HTTP API disconnect: she reconnects by herself).
    await api('disconnect', { user: 'alice' });
    await say(bob, 'after the server cut');
    await waitForMessage(alice, 'after the server cut');
    await waitJoined(alice, room, 'channels');
    await say(alice, 'back, thanks');
    await waitForMessage(bob, 'back, thanks');

    const seen = await texts(alice);
    assert.deepEqual(seen, [
      'sent before Bob joined (1)',
      'sent before Bob joined (2)',
      'Hi Alice <b>not bold</b>',
      'plain text from a terminal',
      'hello terminal',
      ...missed,
      'after the server cut',
      'back, thanks',
    ], 'every message exactly once, in order');
    assert.deepEqual(await notices(alice), [], 'no "could not be recovered" notice');
    // The missed messages came from the recovery in the subscribe reply (not
    // from a history reload): the page says how many it got that way.
    const systemLines = await alice.evaluate(() => [...document.querySelectorAll('#messages .system')].map((e) => e.textContent));
    assert.ok(systemLines.some((l) => l.startsWith('Reconnected') && l.endsWith('(3 missed messages recovered)')),
      `no recovery line in ${JSON.stringify(systemLines)}`);

    mkdirSync(SCREENSHOT_DIR, { recursive: true });
    await alice.screenshot({ path: path.join(SCREENSHOT_DIR, 'chat-channels.png') });

    // The history is dropped while Alice is away: the new epoch cannot tell
    // what she missed, and the page says so.
    await alice.evaluate(() => window.__sbTestDrop(true));
    await alice.waitForFunction(() => document.querySelector('#status').textContent.trim() === 'offline', null, { timeout: WAIT_MS });
    await api('history_remove', { channel: room });
    await say(bob, 'after the history was dropped');
    await alice.evaluate(() => window.__sbTestResume());
    await waitJoined(alice, room, 'channels');
    await alice.waitForFunction(
      () => [...document.querySelectorAll('#messages .system.notice')].some((e) => /could not be recovered/i.test(e.textContent)),
      null,
      { timeout: WAIT_MS },
    );
    await waitForMessage(alice, 'after the history was dropped');
    const after = await texts(alice);
    assert.equal(after.filter((t) => t === 'after the history was dropped').length, 1);
    assert.equal(after.filter((t) => t === 'missed one').length, 1, 'nothing shown twice');

    await aliceCtx.close();
    await bobCtx.close();
  });

  it('without a token the page falls back to the raw room and still chats with channel users', async () => {
    const room = 'mixed';
    const carolCtx = await browser.newContext();
    const guestCtx = await browser.newContext();
    const carol = await openPage(carolCtx, 'carol');
    await carol.goto(`${server.httpUrl}/#room=${room}&token=${mint('carol')}`);
    await waitJoined(carol, room, 'channels');
    await carol.fill('#nick', 'Carol');

    const guest = await openPage(guestCtx, 'guest');
    await guest.goto(`${server.httpUrl}/#${room}`);
    await guest.fill('#nick', 'Guest');
    await guest.click('#join');
    await waitJoined(guest, room, 'raw');
    assert.equal((await guest.textContent('#mode')).trim(), 'raw room');
    assert.equal(await guest.isVisible('#online'), false, 'no online list in raw mode');

    await say(guest, 'from the raw room');
    assert.deepEqual(await waitForMessage(carol, 'from the raw room'), { nick: 'Guest', own: false });
    await say(carol, 'from the channel');
    assert.deepEqual(await waitForMessage(guest, 'from the channel'), { nick: 'Carol', own: false });

    const lines = await guest.evaluate(() => [...document.querySelectorAll('#messages .system')].map((e) => e.textContent));
    assert.ok(lines.some((l) => l.includes('wants a token')), `no fallback reason in ${JSON.stringify(lines)}`);

    await carolCtx.close();
    await guestCtx.close();
  });

  it('falls back to the raw room when anonymous users may connect but not subscribe', async () => {
    const file = path.join(dir, 'anonymous.toml');
    // The default namespace keeps allow_subscribe_for_anonymous = false.
    writeFileSync(file, 'allow_anonymous = true\n');
    const anon = await startServer(['--config', file]);
    const ctx = await browser.newContext();
    try {
      const page = await openPage(ctx, 'anonymous');
      await page.goto(`${anon.httpUrl}/#lobby`);
      await waitJoined(page, 'lobby', 'raw');
      const lines = await page.evaluate(() => [...document.querySelectorAll('#messages .system')].map((e) => e.textContent));
      assert.ok(lines.some((l) => l.startsWith('Channels unavailable (the channel refused this user')), JSON.stringify(lines));
      await say(page, 'still chatting');
    } finally {
      await ctx.close();
      await anon.stop();
    }
  });
});
