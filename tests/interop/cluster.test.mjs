// Three real `switchboard` processes sharing one private Redis (`--broker redis://...`):
// clients of every node (the `centrifuge` SDK and raw `ws`) receive every publication
// exactly once and in order per publisher, whichever node or the HTTP API published it;
// a client recovers on another node what it missed; presence is the same from every node.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join, Inbox, WebSocket, opened } from './lib/harness.mjs';
import { redisAvailable } from './lib/redis.mjs';
import { startCluster, api, health, until, once, connect, subscribe } from './lib/cluster.mjs';

const haveRedis = await redisAvailable();

describe('three nodes on one Redis', { skip: !haveRedis && 'redis-server is not installed' }, () => {
  let cluster;
  let nodes;
  const clients = [];
  const sockets = [];

  async function client(node) {
    const r = await connect(node);
    clients.push(r.c);
    return r;
  }

  before(async () => {
    cluster = await startCluster(3);
    nodes = cluster.nodes;
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    for (const s of sockets) s.ws.close();
    await cluster?.close();
  });

  it('every node reports the Redis broker as connected and lists the others', async () => {
    for (const node of nodes) {
      const h = await health(node);
      assert.equal(h.broker.kind, 'redis');
      assert.equal(h.broker.connected, true);
    }
    const info = await until(async () => {
      const r = await api(nodes[1], 'info');
      return r.body?.result?.nodes?.length === 3 ? r.body.result.nodes : undefined;
    }, 'three nodes in the info API');
    assert.deepEqual(info.map((n) => n.name).sort(), ['node0', 'node1', 'node2']);
    for (const n of info) assert.match(n.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  });

  it('publications from every node and the HTTP API reach every client exactly once, in order per publisher', async () => {
    const channel = 'fan';
    const N = 30;
    const cf = [];
    for (const node of nodes) {
      const { c } = await client(node);
      cf.push(await subscribe(c, channel));
    }
    const raw = [];
    for (const node of nodes) {
      const inbox = await join(node.wsUrl(`/${channel}`));
      sockets.push(inbox);
      raw.push(inbox);
    }
    const publishers = [];
    cf.forEach((s, i) => {
      publishers.push(
        (async () => {
          for (let k = 0; k < N; k++) await s.sub.publish({ p: `c${i}`, i: k });
        })(),
      );
    });
    raw.forEach((inbox, i) => {
      publishers.push(
        (async () => {
          for (let k = 0; k < N; k++) inbox.ws.send(JSON.stringify({ p: `r${i}`, i: k }));
        })(),
      );
    });
    publishers.push(
      (async () => {
        for (let k = 0; k < N; k++) {
          const r = await api(nodes[0], 'publish', { channel, data: { p: 'api', i: k } });
          assert.equal(r.status, 200, r.text);
          assert.ok(r.body.result.offset > 0, 'the API reports the stream position');
        }
      })(),
    );
    await Promise.all(publishers);
    // A final marker from another node: once every client has it, everything published
    // before it has arrived too (one channel is one ordered stream), duplicates included.
    const done = await api(nodes[2], 'publish', { channel, data: { p: 'end' } });
    assert.equal(done.status, 200);

    const expected = ['api', 'c0', 'c1', 'c2', 'r0', 'r1', 'r2'];
    const check = (msgs, who) => {
      const by = {};
      for (const m of msgs) (by[m.p] ??= []).push(m.i);
      for (const p of expected) {
        assert.deepEqual(by[p], [...Array(N).keys()], `${who}: messages of ${p} exactly once, in order`);
      }
      assert.equal(msgs.length, expected.length * N, `${who}: nothing else`);
    };
    for (const [i, s] of cf.entries()) {
      await s.until((got) => got.some((p) => p.data?.p === 'end'), `the end marker on centrifuge client ${i}`);
      const msgs = s.got.map((p) => p.data).filter((d) => d && typeof d === 'object' && d.p && d.p !== 'end');
      check(msgs, `centrifuge client on node${i}`);
      // Offsets of one channel are one sequence, the same on every node.
      const offsets = s.got.map((p) => p.offset);
      for (let k = 1; k < offsets.length; k++) assert.ok(offsets[k] > offsets[k - 1], 'offsets increase');
    }
    for (const [i, inbox] of raw.entries()) {
      const msgs = [];
      for (;;) {
        const m = JSON.parse((await inbox.next(`messages on raw client ${i}`)).text);
        if (m.p === 'end') break;
        msgs.push(m);
      }
      check(msgs, `raw client on node${i}`);
    }
  });

  it('a client that reconnects to another node recovers what it missed', async () => {
    const channel = 'recover';
    const { c: a } = await client(nodes[0]);
    const s = await subscribe(a, channel);
    assert.equal(s.ctx.recoverable, true);
    for (let k = 0; k < 5; k++) await api(nodes[1], 'publish', { channel, data: { i: k } });
    await s.until((got) => got.length === 5, 'five live publications');
    const last = s.got[4];
    const since = { offset: last.offset, epoch: s.ctx.streamPosition.epoch };
    a.disconnect();

    for (let k = 5; k < 10; k++) await api(nodes[2], 'publish', { channel, data: { i: k } });

    const { c: b } = await client(nodes[1]);
    const r = await subscribe(b, channel, { since });
    assert.equal(r.ctx.wasRecovering, true);
    assert.equal(r.ctx.recovered, true, 'the epoch is shared, the history is complete');
    await api(nodes[0], 'publish', { channel, data: { i: 10 } });
    await r.until((got) => got.some((p) => p.data.i === 10), 'the live publication after recovery');
    assert.deepEqual(r.got.map((p) => p.data.i), [5, 6, 7, 8, 9, 10]);
    assert.deepEqual(r.got.map((p) => p.offset), [6, 7, 8, 9, 10, 11].map((k) => since.offset - 5 + k));
  });

  it('recovery with a concurrent publisher is gap-free and duplicate-free', async () => {
    const channel = 'race';
    const M = 6000;
    const K = 4;
    const firsts = [];
    for (let j = 0; j < K; j++) {
      const { c } = await client(nodes[0]);
      firsts.push({ c, s: await subscribe(c, channel) });
    }
    // A raw client publishes a steady stream (one message per event-loop turn), so
    // publications are in flight while the subscribers move: the join-then-read window of
    // a resubscribe sees some of them arrive live as well as in the recovered history.
    const pubInbox = await join(nodes[0].wsUrl(`/${channel}`));
    sockets.push(pubInbox);
    const publisher = (async () => {
      for (let k = 0; k < M; k++) {
        pubInbox.ws.send(JSON.stringify({ i: k }));
        await new Promise((r) => setImmediate(r));
      }
    })();
    const ints = (got) => got.map((p) => p.data).filter((d) => d && typeof d === 'object').map((d) => d.i);
    await Promise.all(firsts.map(({ s }) => s.until((got) => ints(got).length >= 100, 'a hundred publications')));
    const moved = [];
    for (const [j, { c, s }] of firsts.entries()) {
      c.disconnect();
      const positioned = s.got.filter((p) => p.data && typeof p.data === 'object');
      const since = { offset: positioned.at(-1).offset, epoch: s.ctx.streamPosition.epoch };
      moved.push({ seen: ints(s.got), since, node: nodes[1 + (j % 2)] });
    }
    // Resubscribe elsewhere, all at once, while the publisher keeps going.
    const seconds = await Promise.all(
      moved.map(async (m) => {
        const { c } = await client(m.node);
        return subscribe(c, channel, { since: m.since });
      }),
    );
    await publisher;
    for (const [j, second] of seconds.entries()) {
      assert.equal(second.ctx.recovered, true);
      await second.until((got) => ints(got).includes(M - 1), 'the last publication');
      const all = moved[j].seen.concat(ints(second.got));
      assert.deepEqual(all, [...Array(M).keys()], `client ${j}: every publication once, in order (lost = 0, duplicates = 0)`);
    }
  });

  it('presence is the same from every node, and leaves reach the other nodes', async () => {
    const channel = 'who';
    const members = [];
    for (const node of nodes) {
      const { c, client: id } = await client(node);
      members.push({ c, id, s: await subscribe(c, channel) });
    }
    const ids = members.map((m) => m.id).sort();
    assert.equal(new Set(ids).size, 3, 'client ids are unique across nodes');
    for (const node of nodes) {
      const p = await api(node, 'presence', { channel });
      assert.deepEqual(Object.keys(p.body.result.presence).sort(), ids);
      const st = await api(node, 'presence_stats', { channel });
      assert.equal(st.body.result.num_clients, 3);
    }
    const viaSdk = await members[2].s.sub.presence();
    assert.deepEqual(Object.keys(viaSdk.clients).sort(), ids);

    // Every node listens to the channel (one shard subscriber each)...
    const listeners = () => Number(cluster.redis.cli('PUBSUB', 'SHARDNUMSUB', `sb:{${channel}}:c`)[1]);
    assert.equal(listeners(), 3);
    const leave = once(members[0].s.sub, 'leave', (ctx) => ctx.info.client === members[1].id, 'the leave event from node1');
    members[1].c.disconnect();
    await leave;
    // ...and node1, left without members, stops listening.
    await until(() => listeners() === 2, 'node1 to stop listening to the channel');
    const rest = [members[0].id, members[2].id].sort();
    for (const node of nodes) {
      await until(async () => {
        const p = await api(node, 'presence', { channel });
        const keys = Object.keys(p.body.result.presence).sort();
        return JSON.stringify(keys) === JSON.stringify(rest);
      }, `presence without the departed client on ${node.httpUrl}`);
    }
  });

  it('history is shared: any node answers with the same stream', async () => {
    const channel = 'hist';
    // A raw member listening throughout: a history removal must not cost it anything. (No
    // readiness probe: it would be a publication in the history checked below. The node
    // listens to the channel before it completes the upgrade.)
    const ws = new WebSocket(nodes[2].wsUrl(`/${channel}`));
    ws.on('error', () => {});
    const member = new Inbox(ws);
    await opened(ws);
    sockets.push(member);
    for (let k = 0; k < 4; k++) await api(nodes[k % 3], 'publish', { channel, data: { i: k } });
    const answers = [];
    for (const node of nodes) {
      const h = await api(node, 'history', { channel, limit: -1 });
      answers.push(h.body.result);
    }
    for (const a of answers) {
      assert.deepEqual(a.publications.map((p) => p.data.i), [0, 1, 2, 3]);
      assert.equal(a.epoch, answers[0].epoch);
      assert.equal(a.offset, 4);
    }
    const removed = await api(nodes[1], 'history_remove', { channel });
    assert.deepEqual(removed.body, { result: {} });
    const after = await api(nodes[2], 'history', { channel, limit: -1 });
    assert.deepEqual(after.body.result.publications, []);
    assert.notEqual(after.body.result.epoch, answers[0].epoch, 'a new epoch after removal');

    // The stream goes on in the new epoch: the member gets what follows and stays connected
    // (nothing was missed, so nobody is told).
    const next = await api(nodes[0], 'publish', { channel, data: { i: 4 } });
    assert.equal(next.status, 200, next.text);
    assert.equal(next.body.result.offset, 5, 'offsets go on across a removal');
    const got = [];
    while (got.length < 5) got.push(JSON.parse((await member.next('the raw member\'s publications')).text).i);
    assert.deepEqual(got, [0, 1, 2, 3, 4]);
    assert.equal(member.closed, null, 'the raw member was not closed');
  });
});
