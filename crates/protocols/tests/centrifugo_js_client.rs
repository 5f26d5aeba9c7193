//! The real `centrifuge` JS SDK against frames produced by this codec.
//!
//! A small Node WebSocket server (the `ws` package) answers the SDK's commands with replies
//! and pushes encoded here, byte for byte (only the reply id is filled in), and records the
//! frames the SDK sends. The SDK must connect, subscribe, receive the publication, answer
//! the server ping, and resolve presence stats, history and publish; every frame it sent
//! must decode with [`decode_commands`].
//!
//! Needs `node` and the interop test dependencies (`npm ci` in `tests/interop`); without
//! them the test says so and passes without checking anything.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_core::{Payload, Publication as CorePublication};
use switchboard_protocols::centrifugo::{
    decode_commands, encode_publication_push, ConnectResult, HistoryResult, Method,
    PresenceStatsResult, Publication, PublishResult, Reply, ReplyResult, StreamPosition,
    SubscribeResult,
};

/// Placeholder id the Node side replaces with the id of the command it answers.
const ID: u32 = 999_999;

const PEER: &str = r#"
const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');
const fs = require('fs');
const templates = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const received = [];
const events = {};
let pongs = 0;
const timer = setTimeout(() => { console.error('timeout', JSON.stringify({ events, received })); process.exit(2); }, 15000);
function finish() {
  clearTimeout(timer);
  process.stdout.write(JSON.stringify({ events, received }));
  process.exit(0);
}
function maybeFinish() { if (events.publish && pongs > 0) finish(); }
const wss = new WebSocket.Server({ host: '127.0.0.1', port: 0 });
wss.on('connection', (ws) => {
  ws.on('message', (data) => {
    const text = data.toString();
    received.push(text);
    const out = [];
    let subscribed = false;
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      const cmd = JSON.parse(line);
      const method = Object.keys(cmd).find((k) => k !== 'id');
      if (!method) { pongs++; maybeFinish(); continue; }
      const t = templates[method];
      if (t) out.push(t.replace('{"id":999999,', '{"id":' + cmd.id + ','));
      if (method === 'subscribe') subscribed = true;
    }
    if (out.length) ws.send(out.join('\n'));
    if (subscribed) { ws.send(templates.pub); ws.send(templates.ping); }
  });
});
wss.on('listening', () => {
  const port = wss.address().port;
  const client = new Centrifuge('ws://127.0.0.1:' + port + '/connection/websocket', { websocket: WebSocket, name: 'js' });
  client.on('connected', (ctx) => { events.connected = ctx.client; });
  client.on('error', (ctx) => { events.error = ctx; });
  const sub = client.newSubscription('room', { joinLeave: true });
  sub.on('subscribed', (ctx) => { events.subscribed = { recoverable: ctx.recoverable, positioned: ctx.positioned, streamPosition: ctx.streamPosition }; });
  sub.on('publication', async (ctx) => {
    events.publication = { data: ctx.data, offset: ctx.offset };
    try {
      events.stats = await sub.presenceStats();
      events.history = await sub.history({ limit: 10 });
      await sub.publish({ x: 1 });
      events.publish = true;
    } catch (e) { events.failure = String(e && (e.message || e.code)); }
    maybeFinish();
  });
  sub.subscribe();
  client.connect();
});
"#;

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/node_modules")
}

fn templates() -> String {
    let with_id = |result| String::from_utf8(Reply::ok(ID, result).encode().to_vec()).unwrap();
    let core = CorePublication::new(
        Arc::from("room"),
        Payload::text(r#"{"text":"hi"}"#),
        5,
        7u32,
        None,
    );
    let history = HistoryResult::new(
        vec![Publication::from_core(&core)],
        StreamPosition {
            offset: 5,
            epoch: "7".into(),
        },
    );
    serde_json::json!({
        "connect": with_id(ReplyResult::Connect(ConnectResult {
            client: "c-1".into(),
            version: "0.1.0".into(),
            ping: 25,
            pong: true,
            ..Default::default()
        })),
        "subscribe": with_id(ReplyResult::Subscribe(SubscribeResult {
            recoverable: true,
            positioned: true,
            epoch: "7".into(),
            offset: 4,
            ..Default::default()
        })),
        "presence_stats": with_id(ReplyResult::PresenceStats(PresenceStatsResult {
            num_clients: 2,
            num_users: 1,
        })),
        "history": with_id(ReplyResult::History(history)),
        "publish": with_id(ReplyResult::Publish(PublishResult {})),
        "pub": String::from_utf8(encode_publication_push(&core).to_vec()).unwrap(),
        "ping": "{}",
    })
    .to_string()
}

#[test]
fn the_js_sdk_understands_our_frames_and_we_understand_its() {
    let modules = interop_dir();
    if !modules.join("centrifuge").is_dir() || !modules.join("ws").is_dir() {
        eprintln!(
            "skipped: run `npm ci` in tests/interop to install the centrifuge SDK ({})",
            modules.display()
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("cfcodec-js-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("peer.cjs");
    let templates_file = dir.join("templates.json");
    std::fs::write(&script, PEER).unwrap();
    std::fs::write(&templates_file, templates()).unwrap();

    let mut child = match Process::new("node")
        .arg(&script)
        .arg(&templates_file)
        .env("NODE_PATH", &modules)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("skipped: cannot run node: {e}");
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("node peer did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "node peer failed: {stderr}\n{stdout}");

    let out: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let events = &out["events"];
    // Our replies and pushes, as the SDK understood them.
    assert_eq!(events["connected"], "c-1", "{out}");
    assert_eq!(events["subscribed"]["recoverable"], true, "{out}");
    assert_eq!(events["subscribed"]["positioned"], true, "{out}");
    assert_eq!(
        events["subscribed"]["streamPosition"],
        serde_json::json!({"offset": 4, "epoch": "7"})
    );
    assert_eq!(
        events["publication"],
        serde_json::json!({"data": {"text": "hi"}, "offset": 5})
    );
    assert_eq!(
        events["stats"],
        serde_json::json!({"numClients": 2, "numUsers": 1})
    );
    assert_eq!(events["history"]["epoch"], "7", "{out}");
    assert_eq!(events["history"]["offset"], 5, "{out}");
    assert_eq!(
        events["history"]["publications"][0]["data"],
        serde_json::json!({"text": "hi"})
    );
    assert_eq!(events["history"]["publications"][0]["offset"], 5);
    assert_eq!(events["publish"], true, "{out}");
    assert!(events.get("failure").is_none(), "{out}");

    // The SDK's frames, as we understand them.
    let mut methods = Vec::new();
    for frame in out["received"].as_array().unwrap() {
        for cmd in decode_commands(frame.as_str().unwrap().as_bytes()) {
            let cmd = cmd.unwrap_or_else(|e| panic!("{frame}: {e}"));
            match &cmd.method {
                Method::Connect(r) => {
                    assert_eq!(cmd.id, 1);
                    assert_eq!(r.name, "js");
                }
                Method::Subscribe(r) => {
                    assert_eq!(r.channel, "room");
                    assert!(r.join_leave);
                }
                Method::History(r) => assert_eq!((r.channel.as_str(), r.limit), ("room", 10)),
                Method::Publish(r) => {
                    assert_eq!(r.channel, "room");
                    assert_eq!(r.data.as_ref().unwrap().get(), r#"{"x":1}"#);
                }
                Method::PresenceStats(r) => assert_eq!(r.channel, "room"),
                Method::Pong => assert_eq!(cmd.id, 0),
                other => panic!("unexpected command {other:?}"),
            }
            methods.push(cmd.method.name());
        }
    }
    // The pong answers the ping sent after the subscribe reply; when it goes out relative
    // to the calls made from the publication handler is up to the SDK.
    let pongs = methods.iter().filter(|m| **m == "pong").count();
    assert_eq!(pongs, 1, "{methods:?}");
    methods.retain(|m| *m != "pong");
    assert_eq!(
        methods,
        [
            "connect",
            "subscribe",
            "presence_stats",
            "history",
            "publish"
        ]
    );
}
