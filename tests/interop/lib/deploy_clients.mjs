// One worker thread's share of the rolling-deploy clients (tests/interop/deploy.test.mjs):
// raw `ws` clients, `centrifuge` clients with recovery and `socket.io-client` clients. The
// test spreads ~3,000 connections over a few of these so that no single event loop lags
// behind the reconnections it is meant to time.
//
// workerData: { ports, proxyUrl, channel, raw, centrifuge, socketio, first }.
// Messages in: { id, type: 'start' | 'status' | 'accepts' | 'final', published? }; each is
// answered with { id, ...answer }. Times are absolute (performance.timeOrigin + now), so
// they compare across threads.
import { parentPort, workerData } from 'node:worker_threads';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';
import { io } from 'socket.io-client';

const { ports, proxyUrl, channel, first } = workerData;
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves once `pred()` is true, or rejects after `ms`. */
async function until(pred, what, ms) {
  const deadline = now() + ms;
  while (!pred()) {
    if (now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Every (re)connection's time. */
const accepts = [];
/** The same times by kind of client: raw, centrifuge, socketio. */
const acceptsByKind = { raw: [], centrifuge: [], socketio: [] };
const accepted = (kind) => {
  const t = now();
  accepts.push(t);
  acceptsByKind[kind].push(t);
};

// Raw clients: a list of nodes, the next one when theirs goes (or refuses).
const rawClient = (k) => {
  const c = { at: k % 3, open: false, closes: {}, stopped: false };
  const connect = () => {
    if (c.stopped) return;
    const ws = new WebSocket(`ws://127.0.0.1:${ports[c.at]}/${channel}`);
    c.ws = ws;
    let opened = false;
    ws.on('open', () => {
      opened = true;
      c.open = true;
      accepted('raw');
    });
    ws.on('error', () => {});
    ws.on('close', (code) => {
      c.open = false;
      if (opened) c.closes[code] = (c.closes[code] || 0) + 1;
      c.at = (c.at + 1) % 3;
      // Straight away after a close; a short pause after a refused attempt.
      setTimeout(connect, opened ? 0 : 50);
    });
  };
  c.start = () => {
    connect();
    return until(() => c.open, 'a raw client', 30_000);
  };
  c.ready = () => c.open;
  c.stop = () => {
    c.stopped = true;
    c.ws?.terminate();
  };
  return c;
};

// Centrifuge clients: the SDK opens its socket with `new websocket(url)`; this class opens
// it to the next node of the list instead each time.
const centClient = (k) => {
  const c = { at: k % 3, got: [], subscribed: false, resubscribes: 0, unrecovered: 0, codes: {}, sockets: 0 };
  const ListSocket = class extends WebSocket {
    constructor(_url, protocols) {
      const port = ports[c.at];
      c.at = (c.at + 1) % 3;
      c.sockets += 1;
      // No permessage-deflate: at 3,000 connections some `ws` clients' receivers stopped in
      // their inflate step (state INFLATING, the socket paused with data buffered, never
      // resumed), so those clients neither got publications nor saw their node go.
      super(`ws://127.0.0.1:${port}/connection/websocket`, protocols, { perMessageDeflate: false });
      c.socket = this;
      this.on('close', () => {
        c.sawClose = true;
      });
    }
  };
  const client = new Centrifuge(`ws://127.0.0.1:${ports[0]}/connection/websocket`, {
    websocket: ListSocket,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
  });
  const sub = client.newSubscription(channel);
  sub.on('publication', (ctx) => c.got.push(ctx.data.n));
  sub.on('subscribed', (ctx) => {
    if (c.subscribed) {
      c.resubscribes += 1;
      if (!(ctx.wasRecovering && ctx.recovered)) c.unrecovered += 1;
    }
    c.subscribed = true;
    c.subscribedNow = true;
  });
  sub.on('subscribing', () => {
    c.subscribedNow = false;
  });
  client.on('connected', () => accepted('centrifuge'));
  client.on('disconnected', (ctx) => {
    c.codes[ctx.code] = (c.codes[ctx.code] || 0) + 1;
  });
  client.on('connecting', (ctx) => {
    if (ctx.code !== 0) c.codes[ctx.code] = (c.codes[ctx.code] || 0) + 1;
  });
  c.start = async () => {
    sub.subscribe();
    client.connect();
    await until(() => c.subscribedNow, 'a centrifuge subscription', 30_000);
  };
  c.ready = () => client.state === 'connected' && c.subscribedNow;
  c.client = client;
  c.sub = sub;
  c.stop = () => client.disconnect();
  return c;
};

// Socket.IO clients: through the round-robin balancer; they subscribe on every connect.
const sioClient = () => {
  const c = { joined: false, reasons: {} };
  const s = io(proxyUrl, {
    forceNew: true,
    autoConnect: false,
    transports: ['websocket'],
    reconnectionDelay: 100,
    reconnectionDelayMax: 1000,
  });
  s.on('connect', () => {
    accepted('socketio');
    c.joined = false;
    s.emitWithAck('subscribe', channel).then(
      () => {
        c.joined = true;
      },
      () => {},
    );
  });
  s.on('disconnect', (reason) => {
    c.joined = false;
    c.reasons[reason] = (c.reasons[reason] || 0) + 1;
  });
  c.start = () => {
    s.connect();
    return until(() => c.joined, 'a socket.io subscription', 30_000);
  };
  c.ready = () => s.connected && c.joined;
  c.stop = () => s.disconnect();
  return c;
};

// `first` offsets k so that the workers together spread their clients over the nodes evenly.
const raws = Array.from({ length: workerData.raw }, (_, k) => rawClient(first + k));
const cents = Array.from({ length: workerData.centrifuge }, (_, k) => centClient(first + k));
const sios = Array.from({ length: workerData.socketio }, () => sioClient());
const all = [...raws, ...cents, ...sios];

/** Runs `tasks` (functions returning promises) with at most `n` in flight. */
async function limited(n, tasks) {
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) await tasks[next++]();
  };
  await Promise.all(Array.from({ length: n }, worker));
}

const notReady = () => ({
  raw: raws.filter((c) => !c.ready()).length,
  centrifuge: cents.filter((c) => !c.ready()).length,
  centrifugeSample: cents.filter((c) => !c.ready()).slice(0, 2).map((c) => ({ s: `${c.client.state}/${c.sub.state}`, sockets: c.sockets, ws: c.socket?.readyState, sawClose: c.sawClose, paused: c.socket?._socket?.isPaused(), destroyed: c.socket?._socket?.destroyed, ext: c.socket?.extensions, rstate: c.socket?._receiver?._state, rbuf: c.socket?._receiver?._writableState?.length, rbytes: c.socket?._receiver?._bufferedBytes, plen: c.socket?._receiver?._payloadLength, got: c.got.length, codes: c.codes })),
  socketio: sios.filter((c) => !c.ready()).length,
});

/** The centrifuge and close-code tallies once the deploy is over. */
async function final(published) {
  const moved = () => cents.filter((c) => c.resubscribes > 0);
  const recoveringNow = () => cents.filter((c) => c.resubscribes > 0 && c.unrecovered === 0);
  // A recovered history may still be arriving.
  await until(() => recoveringNow().every((c) => new Set(c.got).size >= published), 'centrifuge clients caught up', 15_000).catch(
    () => {},
  );
  const recovering = recoveringNow();
  let lost = 0;
  let duplicates = 0;
  for (const c of recovering) {
    const seen = new Set();
    for (const n of c.got) {
      if (seen.has(n)) duplicates += 1;
      seen.add(n);
    }
    for (let n = 0; n < published; n++) if (!seen.has(n)) lost += 1;
  }
  const tally = (list, key) => {
    const out = {};
    for (const c of list) for (const [k, v] of Object.entries(c[key])) out[k] = (out[k] || 0) + v;
    return out;
  };
  return {
    centrifuge: {
      clients: cents.length,
      moved: moved().length,
      recovering: recovering.length,
      unrecovered: cents.filter((c) => c.unrecovered > 0).length,
      notMovedSample: cents
        .filter((c) => c.resubscribes === 0)
        .slice(0, 5)
        .map((c) => ({ codes: c.codes, got: c.got.length, state: c.client.state, sub: c.sub.state, sockets: c.sockets, ws: c.socket?.readyState, sawClose: c.sawClose, paused: c.socket?._socket?.isPaused(), destroyed: c.socket?._socket?.destroyed, ext: c.socket?.extensions, rstate: c.socket?._receiver?._state, rbuf: c.socket?._receiver?._writableState?.length, rloop: c.socket?._receiver?._loop, rbytes: c.socket?._receiver?._bufferedBytes, opcode: c.socket?._receiver?._opcode, fin: c.socket?._receiver?._fin, plen: c.socket?._receiver?._payloadLength })),
      lostSample: recovering.filter((c) => new Set(c.got).size < published).slice(0, 3).map((c) => {
        const seen = new Set(c.got);
        const missing = [];
        for (let n = 0; n < published; n++) if (!seen.has(n)) missing.push(n);
        return { missing: missing.length, from: missing[0], to: missing.at(-1), got: c.got.length, codes: c.codes, sockets: c.sockets };
      }),
      lost,
      duplicates,
      codes: tally(cents, 'codes'),
    },
    rawCloses: tally(raws, 'closes'),
    sioReasons: tally(sios, 'reasons'),
  };
}

parentPort.on('message', async ({ id, type, published }) => {
  try {
    if (type === 'start') {
      await limited(50, all.map((c) => () => c.start()));
      parentPort.postMessage({ id });
    } else if (type === 'status') {
      const n = notReady();
      parentPort.postMessage({ id, ready: n.raw + n.centrifuge + n.socketio === 0, notReady: n });
    } else if (type === 'accepts') {
      parentPort.postMessage({ id, accepts, acceptsByKind });
    } else if (type === 'final') {
      parentPort.postMessage({ id, ...(await final(published)) });
    } else if (type === 'stop') {
      all.forEach((c) => c.stop());
      parentPort.postMessage({ id });
    }
  } catch (e) {
    parentPort.postMessage({ id, error: e.message });
  }
});
