// Readers for Centrifugo's HTTP stream transports, written from Centrifugo's documented
// formats: newline-delimited JSON (uni_http_stream: one JSON message per line, `null` as
// ping) and Server-Sent Events (`id:` / `data:` fields, an empty line ending each event).
// Each reader records what arrived and lets a test await the first message matching a
// predicate, so nothing sleeps.

import { withTimeout } from './harness.mjs';

/** Messages arriving on some stream, awaitable by predicate. */
export class Feed {
  constructor() {
    this.items = [];
    this.waiters = [];
    this.ended = false;
  }

  push(item) {
    this.items.push(item);
    this.#wake();
  }

  end() {
    this.ended = true;
    this.#wake();
  }

  #wake() {
    for (const w of this.waiters.splice(0)) w();
  }

  /** The first item (from index `from`) that satisfies `pred`. */
  wait(pred, what, from = 0) {
    return withTimeout(
      new Promise((resolve, reject) => {
        const check = () => {
          const found = this.items.slice(from).find(pred);
          if (found !== undefined) return resolve(found);
          if (this.ended) return reject(new Error(`stream ended before ${what}`));
          this.waiters.push(check);
        };
        check();
      }),
      what,
    );
  }

  /** Resolves when the stream ends. */
  closed(what = 'the end of the stream') {
    return withTimeout(
      new Promise((resolve) => {
        const check = () => (this.ended ? resolve() : this.waiters.push(check));
        check();
      }),
      what,
    );
  }
}

/** Reads `response.body` as text chunks, calling `onText`, then `feed.end()`. */
async function pump(response, feed, onText) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      onText(decoder.decode(value, { stream: true }));
    }
  } catch {
    // Aborted by the test, or the connection was cut.
  } finally {
    feed.end();
  }
}

/**
 * POSTs `body` to a newline-delimited JSON stream. Resolves with
 * { status, response, feed (parsed lines; `null` pings kept as null), raw (all text), abort() }.
 */
export async function lineStream(url, body, headers = {}) {
  const controller = new AbortController();
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal: controller.signal,
  });
  const feed = new Feed();
  const out = { status: response.status, response, feed, raw: '', abort: () => controller.abort() };
  if (!response.ok) {
    out.raw = await response.text();
    feed.end();
    return out;
  }
  let partial = '';
  pump(response, feed, (text) => {
    out.raw += text;
    partial += text;
    let i;
    while ((i = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, i);
      partial = partial.slice(i + 1);
      if (line.trim() !== '') feed.push(JSON.parse(line));
    }
  });
  return out;
}

/**
 * GETs a Server-Sent Events stream. Resolves with { status, response, feed (events
 * { id, data } with `data` parsed as JSON; `id` is the last event id in force), raw, abort() }.
 */
export async function eventStream(url, headers = {}) {
  const controller = new AbortController();
  const response = await fetch(url, {
    headers: { accept: 'text/event-stream', ...headers },
    signal: controller.signal,
  });
  const feed = new Feed();
  const out = { status: response.status, response, feed, raw: '', abort: () => controller.abort() };
  if (!response.ok) {
    out.raw = await response.text();
    feed.end();
    return out;
  }
  let partial = '';
  let lastId = '';
  let data = [];
  pump(response, feed, (text) => {
    out.raw += text;
    partial += text;
    let i;
    while ((i = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, i).replace(/\r$/, '');
      partial = partial.slice(i + 1);
      if (line === '') {
        if (data.length) feed.push({ id: lastId, data: JSON.parse(data.join('\n')) });
        data = [];
      } else if (line.startsWith('data:')) {
        data.push(line.slice(5).replace(/^ /, ''));
      } else if (line.startsWith('id:')) {
        lastId = line.slice(3).replace(/^ /, '');
      }
    }
  });
  return out;
}
