// pusher-js helpers shared by the Pusher suites: a client for a local server (plain
// WebSocket, no stats, the backend's signatures computed by the `pusher` SDK or a custom
// function), and promises for "connected", "subscribed" and "the next event".

import PusherClient from 'pusher-js';
import { withTimeout } from './harness.mjs';

/**
 * A pusher-js client of app `key` on 127.0.0.1:`port`. `authorize(socketId, channel)` and
 * `authenticate(socketId)` answer the channel and user authorization requests (omit them
 * when the test needs none); `extra` is merged into the options.
 */
export function pusherClient(key, port, { authorize, authenticate, extra } = {}) {
  return new PusherClient(key, {
    wsHost: '127.0.0.1',
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    disableStats: true,
    ...(authorize && {
      channelAuthorization: {
        customHandler: ({ socketId, channelName }, cb) => cb(null, authorize(socketId, channelName)),
      },
    }),
    ...(authenticate && {
      userAuthentication: {
        customHandler: ({ socketId }, cb) => cb(null, authenticate(socketId)),
      },
    }),
    ...extra,
  });
}

/** Resolves once `c` is connected. */
export function connected(c) {
  return withTimeout(new Promise((resolve) => {
    if (c.connection.state === 'connected') return resolve();
    c.connection.bind('connected', resolve);
  }), 'pusher-js connected');
}

/** Subscribes `c` to `name`: resolves with { ch, data } on success, rejects on a subscription error. */
export function subscription(c, name) {
  const ch = c.subscribe(name);
  return withTimeout(new Promise((resolve, reject) => {
    ch.bind('pusher:subscription_succeeded', (data) => resolve({ ch, data }));
    ch.bind('pusher:subscription_error', (e) => reject(new Error(`subscription_error ${JSON.stringify(e)}`)));
  }), `subscribed to ${name}`);
}

/** The next event `event` on `ch` whose data passes `pred`: { data, meta }. */
export function nextEvent(ch, event, pred = () => true) {
  return withTimeout(new Promise((resolve) => ch.bind(event, function h(data, meta) {
    if (!pred(data)) return;
    ch.unbind(event, h);
    resolve({ data, meta });
  })), `event ${event}`);
}
