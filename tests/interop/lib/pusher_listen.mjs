// An unmodified pusher-js client driven over stdin/stdout, for suites written in other
// languages (pusher_sdk.py): `node pusher_listen.mjs PORT KEY`.
//
// Out (one JSON object per line): {connected: socket_id}, {subscribed: channel},
// {event, channel, data} for every channel event, {user_event, data} for server-to-user
// events, {signed_in: user_data}, {state: s} on connection state changes, and
// {auth_request: {socket_id, channel}} / {user_auth_request: {socket_id}} when pusher-js asks
// for a signature.
// In (one JSON object per line): {subscribe: channel}, {signin: true}, and the answers
// {auth: {...}} / {user_auth: {...}} to the requests above, in order.

import PusherClient from 'pusher-js';
import { createInterface } from 'node:readline';

const [port, key] = process.argv.slice(2);
const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const pendingAuth = [];
const pendingUserAuth = [];

const pusher = new PusherClient(key, {
  wsHost: '127.0.0.1',
  wsPort: Number(port),
  forceTLS: false,
  enabledTransports: ['ws'],
  cluster: 'mt1',
  disableStats: true,
  channelAuthorization: {
    customHandler: ({ socketId, channelName }, cb) => {
      pendingAuth.push(cb);
      say({ auth_request: { socket_id: socketId, channel: channelName } });
    },
  },
  userAuthentication: {
    customHandler: ({ socketId }, cb) => {
      pendingUserAuth.push(cb);
      say({ user_auth_request: { socket_id: socketId } });
    },
  },
});

pusher.connection.bind('state_change', ({ current }) => say({ state: current }));
pusher.connection.bind('connected', () => say({ connected: pusher.connection.socket_id }));
pusher.user.bind_global((event, data) => {
  if (!event.startsWith('pusher')) say({ user_event: event, data });
});

createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.subscribe) {
    const ch = pusher.subscribe(cmd.subscribe);
    ch.bind('pusher:subscription_succeeded', () => say({ subscribed: cmd.subscribe }));
    ch.bind('pusher:subscription_error', (e) => say({ subscription_error: cmd.subscribe, error: e }));
    ch.bind_global((event, data) => {
      if (!event.startsWith('pusher:')) say({ event, channel: cmd.subscribe, data });
    });
  } else if (cmd.signin) {
    pusher.signin();
    pusher.user.signinDonePromise.then(() => say({ signed_in: pusher.user.user_data }));
  } else if (cmd.auth) {
    pendingAuth.shift()(null, cmd.auth);
  } else if (cmd.user_auth) {
    pendingUserAuth.shift()(null, cmd.user_auth);
  } else if (cmd.exit) {
    pusher.disconnect();
    process.exit(0);
  }
});
