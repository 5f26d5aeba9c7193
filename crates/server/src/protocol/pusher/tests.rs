//! The Pusher driver without a socket: frames in, frames out, deliveries pumped from the
//! outbox by hand.
use super::*;
use crate::config::{PusherConfig, ServerConfig};
use crate::conn::driver::OutFrame;
use serde_json::{json, Value};
use switchboard_core::{Hub, HubLimits, Payload};

const KEY: &str = "app-key";
const SECRET: &str = "app-secret";

/// A node whose hub has the namespaces the server gives a configured Pusher app.
fn node_with(limits: HubLimits) -> Node {
    let config = ServerConfig {
        pusher: PusherConfig { apps: vec![app()] },
        ..ServerConfig::default()
    };
    Node::new(Hub::with_namespaces(limits, namespaces(&config)))
}

fn node() -> Node {
    node_with(HubLimits::default())
}

fn app() -> PusherApp {
    PusherApp {
        id: "app-id".into(),
        key: KEY.into(),
        secret: SECRET.into(),
        webhooks: Vec::new(),
    }
}

fn driver(node: &Node) -> PusherDriver {
    let (handle, outbox) = node
        .hub()
        .register(ConnInfo::new("127.0.0.1:1", wire::PROTOCOL))
        .unwrap();
    PusherDriver::new(
        Arc::new(app()),
        node.clone(),
        handle,
        outbox,
        25,
        None,
        None,
    )
}

/// Every queued frame as JSON, in order (shared publication frames included).
fn frames(out: &mut Out) -> Vec<Value> {
    out.drain()
        .map(|f| {
            let bytes = match f {
                OutFrame::Message(Message::Text(t)) => t.to_vec(),
                OutFrame::Prepared(p) => p.payload().to_vec(),
                other => panic!("expected a text frame, got {other:?}"),
            };
            serde_json::from_slice(&bytes).unwrap()
        })
        .collect()
}

async fn send(d: &mut PusherDriver, v: Value) -> Result<Vec<Value>, Ending> {
    send_text(d, &v.to_string()).await
}

async fn send_text(d: &mut PusherDriver, text: &str) -> Result<Vec<Value>, Ending> {
    let mut out = Out::default();
    let r = d
        .on_message(Message::text(text.to_string()), &mut out)
        .await;
    let sent = frames(&mut out);
    r.map(|()| sent)
}

/// What the outbox holds now, framed by the driver.
async fn pump(d: &mut PusherDriver) -> Vec<Value> {
    let mut out = Out::default();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    while let Poll::Ready(event) = d.poll_event(&mut cx) {
        d.on_event(event, &mut out).await.unwrap();
    }
    frames(&mut out)
}

fn subscribe(channel: &str) -> Value {
    json!({"event": "pusher:subscribe", "data": {"channel": channel}})
}

fn signed_subscribe(d: &PusherDriver, channel: &str, channel_data: Option<&str>) -> Value {
    let auth = auth::channel_auth(KEY, SECRET, &d.socket_id(), channel, channel_data);
    let mut data = json!({"channel": channel, "auth": auth});
    if let Some(cd) = channel_data {
        data["channel_data"] = json!(cd);
    }
    json!({"event": "pusher:subscribe", "data": data})
}

fn event_names(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .map(|f| f["event"].as_str().unwrap())
        .collect()
}

/// `data` of a server frame, decoded when it is a JSON string.
fn data(frame: &Value) -> Value {
    match &frame["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

#[test]
fn connections_are_refused_with_the_documented_codes() {
    assert_eq!(refusal(false, Some("7")).unwrap().0, 4001);
    assert_eq!(refusal(true, None).unwrap().0, 4008);
    assert_eq!(refusal(true, Some("seven")).unwrap().0, 4006);
    assert_eq!(refusal(true, Some("")).unwrap().0, 4006);
    assert_eq!(refusal(true, Some("6")).unwrap().0, 4007);
    assert_eq!(refusal(true, Some("7")), None);
    assert_eq!(refusal(true, Some("8")), None);
}

#[tokio::test]
async fn open_gives_the_socket_id_and_pings_are_answered() {
    let node = node();
    let mut d = driver(&node);
    let mut out = Out::default();
    d.open(&mut out).unwrap();
    let sent = frames(&mut out);
    assert_eq!(event_names(&sent), ["pusher:connection_established"]);
    let established = data(&sent[0]);
    let socket = established["socket_id"].as_str().unwrap();
    assert_eq!(conn_of_socket(socket), Some(d.handle.id()));
    assert_eq!(established["activity_timeout"], 25);
    let sent = send(&mut d, json!({"event": "pusher:ping", "data": {}}))
        .await
        .unwrap();
    assert_eq!(event_names(&sent), ["pusher:pong"]);
}

#[tokio::test]
async fn a_refused_connection_sends_its_error_then_closes_from_the_timer() {
    let node = node();
    let (handle, outbox) = node.hub().register(ConnInfo::default()).unwrap();
    let mut d = PusherDriver::new(
        Arc::new(app()),
        node.clone(),
        handle,
        outbox,
        25,
        refusal(true, None),
        None,
    );
    let mut out = Out::default();
    d.open(&mut out).unwrap();
    let sent = frames(&mut out);
    assert_eq!(sent[0]["event"], "pusher:error");
    assert_eq!(sent[0]["data"]["code"], 4008);
    assert!(d.deadline().is_some());
    let end = d.on_timer(&mut out).await.unwrap_err();
    assert_eq!(
        end,
        Ending::Close(4008, "No protocol version supplied".into())
    );
}

#[tokio::test]
async fn malformed_frames_close_with_4300_and_unknown_events_are_refused_alone() {
    let node = node();
    let mut d = driver(&node);
    let sent = send(&mut d, json!({"event": "pusher:nonsense", "data": {}}))
        .await
        .unwrap();
    assert_eq!(sent[0]["event"], "pusher:error");
    assert_eq!(sent[0]["data"]["code"], 4300);
    let sent = send(&mut d, json!({"event": "hello"})).await.unwrap();
    assert_eq!(sent[0]["data"]["code"], 4300);
    // Still serving.
    let sent = send(&mut d, subscribe("news")).await.unwrap();
    assert_eq!(
        event_names(&sent),
        ["pusher_internal:subscription_succeeded"]
    );
    for bad in ["{not json", "[1,2]", r#"{"data":{}}"#, "42"] {
        let mut d = driver(&node);
        let mut out = Out::default();
        let end = d
            .on_message(Message::text(bad.to_string()), &mut out)
            .await
            .unwrap_err();
        assert_eq!(end, Ending::Close(4300, "Invalid message".into()), "{bad}");
        let sent = frames(&mut out);
        assert_eq!(sent[0]["data"]["code"], 4300, "{bad}");
    }
}

#[tokio::test]
async fn public_events_arrive_until_unsubscribed() {
    let node = node();
    let mut d = driver(&node);
    send(&mut d, subscribe("news")).await.unwrap();
    node.publish(
        "news",
        wire::envelope("e", r#"{"a":1}"#, None),
        PublishOptions::default(),
        None,
    )
    .await
    .unwrap();
    let got = pump(&mut d).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["event"], "e");
    assert_eq!(got[0]["channel"], "news");
    assert_eq!(got[0]["data"], r#"{"a":1}"#);
    send(
        &mut d,
        json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}}),
    )
    .await
    .unwrap();
    node.publish("news", Payload::text("x"), PublishOptions::default(), None)
        .await
        .unwrap();
    assert!(pump(&mut d).await.is_empty());
}

#[tokio::test]
async fn private_channels_need_the_apps_signature() {
    let node = node();
    let mut d = driver(&node);
    let forged = json!({"event": "pusher:subscribe",
        "data": {"channel": "private-a", "auth": format!("{KEY}:{}", "0".repeat(64))}});
    let sent = send(&mut d, forged).await.unwrap();
    assert_eq!(sent[0]["event"], "pusher:subscription_error");
    assert_eq!(sent[0]["data"]["status"], 401);
    assert_eq!(node.hub().member_count("private-a"), 0);
    let sent = send(&mut d, subscribe("private-a")).await.unwrap();
    assert_eq!(sent[0]["event"], "pusher:subscription_error");
    let ok = signed_subscribe(&d, "private-a", None);
    let sent = send(&mut d, ok).await.unwrap();
    assert_eq!(
        event_names(&sent),
        ["pusher_internal:subscription_succeeded"]
    );
    assert_eq!(node.hub().member_count("private-a"), 1);
}

#[tokio::test]
async fn presence_announces_a_user_once_however_many_connections() {
    let node = node();
    let alice = r#"{"user_id":"alice","user_info":{"name":"A"}}"#;
    let bob = r#"{"user_id":"bob"}"#;
    let mut a = driver(&node);
    let req = signed_subscribe(&a, "presence-room", Some(alice));
    let sent = send(&mut a, req).await.unwrap();
    assert_eq!(data(&sent[0])["presence"]["count"], 1);

    let mut b1 = driver(&node);
    let req = signed_subscribe(&b1, "presence-room", Some(bob));
    let sent = send(&mut b1, req).await.unwrap();
    let members = data(&sent[0]);
    assert_eq!(members["presence"]["count"], 2);
    assert_eq!(members["presence"]["hash"]["alice"], json!({"name": "A"}));
    let got = pump(&mut a).await;
    assert_eq!(event_names(&got), ["pusher_internal:member_added"]);
    assert_eq!(data(&got[0])["user_id"], "bob");

    // Bob's second connection: no second member_added, and leaving it removes nobody.
    let mut b2 = driver(&node);
    let req = signed_subscribe(&b2, "presence-room", Some(bob));
    send(&mut b2, req).await.unwrap();
    assert!(pump(&mut a).await.is_empty());
    drop(b2);
    assert!(pump(&mut a).await.is_empty());
    drop(b1);
    let got = pump(&mut a).await;
    assert_eq!(event_names(&got), ["pusher_internal:member_removed"]);
    assert_eq!(data(&got[0])["user_id"], "bob");

    // channel_data is required, and must name a user.
    let mut c = driver(&node);
    let req = signed_subscribe(&c, "presence-room", Some(r#"{"user_info":{}}"#));
    let sent = send(&mut c, req).await.unwrap();
    assert_eq!(sent[0]["event"], "pusher:subscription_error");
}

#[tokio::test]
async fn client_events_reach_the_others_with_their_limits() {
    let node = node();
    let mut a = driver(&node);
    let mut b = driver(&node);
    let req = signed_subscribe(&a, "presence-chat", Some(r#"{"user_id":"ann"}"#));
    send(&mut a, req).await.unwrap();
    let req = signed_subscribe(&b, "presence-chat", Some(r#"{"user_id":"ben"}"#));
    send(&mut b, req).await.unwrap();
    send(&mut a, subscribe("open")).await.unwrap();
    pump(&mut a).await;

    let ev = json!({"event": "client-typing", "channel": "presence-chat", "data": {"n": 1}});
    assert!(send(&mut a, ev.clone()).await.unwrap().is_empty());
    let got = pump(&mut b).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["event"], "client-typing");
    assert_eq!(got[0]["user_id"], "ann");
    assert_eq!(data(&got[0]), json!({"n": 1}));
    assert!(pump(&mut a).await.is_empty(), "not echoed to the sender");

    // Public channels, unsubscribed channels, oversized data: 4301, nothing sent.
    let cases = [
        json!({"event": "client-x", "channel": "open", "data": {}}),
        json!({"event": "client-x", "channel": "private-elsewhere", "data": {}}),
        json!({"event": "client-x", "channel": "presence-chat",
            "data": "x".repeat(wire::MAX_EVENT_DATA + 1)}),
    ];
    for case in cases {
        let sent = send(&mut a, case.clone()).await.unwrap();
        assert_eq!(sent[0]["data"]["code"], 4301, "{case}");
    }
    assert!(pump(&mut b).await.is_empty());

    // Ten per second (the first one above counted), then refused.
    for _ in 0..9 {
        assert!(send(&mut a, ev.clone()).await.unwrap().is_empty());
    }
    let sent = send(&mut a, ev.clone()).await.unwrap();
    assert_eq!(sent[0]["data"]["code"], 4301);
    assert_eq!(pump(&mut b).await.len(), 9);
}

#[tokio::test]
async fn cache_channels_replay_the_last_event_or_say_miss() {
    let node = node();
    let mut first = driver(&node);
    let sent = send(&mut first, subscribe("cache-prices")).await.unwrap();
    assert_eq!(
        event_names(&sent),
        [
            "pusher_internal:subscription_succeeded",
            "pusher:cache_miss"
        ]
    );
    assert_eq!(sent[1]["channel"], "cache-prices");
    for n in 1..=2 {
        node.publish(
            "cache-prices",
            wire::envelope("price", &format!(r#"{{"n":{n}}}"#), None),
            PublishOptions::default(),
            None,
        )
        .await
        .unwrap();
    }
    assert_eq!(pump(&mut first).await.len(), 2);
    drop(first);

    // Nobody is subscribed now; the last event is still kept.
    let mut late = driver(&node);
    let sent = send(&mut late, subscribe("cache-prices")).await.unwrap();
    assert_eq!(
        event_names(&sent),
        ["pusher_internal:subscription_succeeded", "price"]
    );
    assert_eq!(data(&sent[1]), json!({"n": 2}));
    assert!(pump(&mut late).await.is_empty(), "not delivered twice");

    // The private and presence variants too.
    let mut p = driver(&node);
    let req = signed_subscribe(&p, "private-cache-x", None);
    let sent = send(&mut p, req).await.unwrap();
    assert_eq!(sent[1]["event"], "pusher:cache_miss");
    let req = signed_subscribe(&p, "presence-cache-x", Some(r#"{"user_id":"u"}"#));
    let sent = send(&mut p, req).await.unwrap();
    assert_eq!(data(&sent[0])["presence"]["count"], 1);
    assert_eq!(sent[1]["event"], "pusher:cache_miss");
    // A channel that is not a cache channel keeps nothing and says nothing.
    let sent = send(&mut p, subscribe("prices")).await.unwrap();
    assert_eq!(sent.len(), 1);
}

#[tokio::test]
async fn signin_names_the_connection_and_joins_the_users_channel() {
    let node = node();
    let mut d = driver(&node);
    let user_data = r#"{"id":"carol","name":"Carol"}"#;
    let forged = json!({"event": "pusher:signin",
        "data": {"user_data": user_data, "auth": format!("{KEY}:{}", "0".repeat(64))}});
    let sent = send(&mut d, forged).await.unwrap();
    assert_eq!(sent[0]["event"], "pusher:error");
    assert_eq!(sent[0]["data"]["code"], 4009);
    assert!(node.hub().connections_of_user("carol").is_empty());

    let sig = auth::sign(SECRET, &format!("{}::user::{user_data}", d.socket_id()));
    let signin = json!({"event": "pusher:signin",
        "data": {"user_data": user_data, "auth": format!("{KEY}:{sig}")}});
    let sent = send(&mut d, signin).await.unwrap();
    assert_eq!(event_names(&sent), ["pusher:signin_success"]);
    assert_eq!(sent[0]["data"]["user_data"], user_data);
    assert_eq!(node.hub().connections_of_user("carol"), vec![d.handle.id()]);

    // pusher-js then subscribes to its own channel by name; another user's is refused.
    let sent = send(&mut d, subscribe("#server-to-user-carol"))
        .await
        .unwrap();
    assert_eq!(
        event_names(&sent),
        ["pusher_internal:subscription_succeeded"]
    );
    let sent = send(&mut d, subscribe("#server-to-user-dave"))
        .await
        .unwrap();
    assert_eq!(sent[0]["event"], "pusher:subscription_error");
    assert_eq!(sent[0]["data"]["status"], 403);

    node.publish(
        "#server-to-user-carol",
        wire::envelope("note", r#"{"hi":1}"#, None),
        PublishOptions::default(),
        None,
    )
    .await
    .unwrap();
    let got = pump(&mut d).await;
    assert_eq!(got[0]["event"], "note");
    assert_eq!(got[0]["channel"], "#server-to-user-carol");

    // A kick (terminate_connections) closes with 4009.
    assert_eq!(
        crate::sessions::disconnect_user(node.hub(), "carol", None),
        1
    );
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let Poll::Ready(event) = d.poll_event(&mut cx) else {
        panic!("the kick is delivered")
    };
    let mut out = Out::default();
    let end = d.on_event(event, &mut out).await.unwrap_err();
    assert_eq!(end, Ending::Hub(CloseReason::Kicked));
    assert_eq!(d.close_frame(&end).unwrap().0, CloseCode(4009));
}

#[tokio::test]
async fn a_subscription_over_the_limit_is_refused_alone() {
    let node = node_with(HubLimits {
        max_subscriptions_per_connection: Some(2),
        ..HubLimits::default()
    });
    let mut d = driver(&node);
    send(&mut d, subscribe("a")).await.unwrap();
    send(&mut d, subscribe("b")).await.unwrap();
    let sent = send(&mut d, subscribe("c")).await.unwrap();
    assert_eq!(sent[0]["event"], "pusher:subscription_error");
    assert_eq!(sent[0]["data"]["status"], 429);
    assert_eq!(node.hub().member_count("a"), 1);
    assert_eq!(node.hub().member_count("c"), 0);
}

#[test]
fn endings_map_to_pushers_close_codes() {
    let node = node();
    let mut d = driver(&node);
    let code = |d: &mut PusherDriver, e: Ending| d.close_frame(&e).map(|(c, _)| c.0);
    assert_eq!(code(&mut d, Ending::Flood), Some(4100));
    assert_eq!(code(&mut d, Ending::Shutdown), Some(4200));
    assert_eq!(code(&mut d, Ending::Dead), Some(4201));
    assert_eq!(
        code(&mut d, Ending::Hub(CloseReason::SlowConsumer)),
        Some(4200)
    );
    assert_eq!(code(&mut d, Ending::Panic("x".into())), Some(1011));
    assert_eq!(code(&mut d, Ending::Lost), None);
}

#[tokio::test]
async fn the_connection_future_stays_small() {
    let node = node();
    let d = driver(&node);
    let sizes = crate::conn::runtime::ws_connection_sizes(d).await;
    // A connection keeps its state in one box for its whole life (what a parked connection
    // keeps), and while it has work a task whose future holds the loop's state, in a cell
    // tokio rounds up to 128 B (docs/benchmarks.md, idle memory). A field or an await point
    // that widens either costs every connection.
    assert!(
        sizes.parked <= 888,
        "the Pusher parked state grew: {sizes:?}"
    );
    assert!(
        sizes.task <= 408,
        "the Pusher connection future grew: {sizes:?}"
    );
}
