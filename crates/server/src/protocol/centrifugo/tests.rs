use super::*;

#[test]
fn expiry_sleeps_are_capped_and_never_overflow() {
    let now = 1_700_000_000;
    assert_eq!(time_until_expiry(None, now), FAR_FUTURE);
    assert_eq!(time_until_expiry(Some(now), now), Duration::from_secs(1));
    assert_eq!(time_until_expiry(Some(now - 10), now), Duration::ZERO);
    assert_eq!(
        time_until_expiry(Some(now + 59), now),
        Duration::from_secs(60)
    );
    for at in [10_000_000_000_000_000_000, i64::MAX as u64, u64::MAX] {
        assert_eq!(time_until_expiry(Some(at), now), FAR_FUTURE);
    }
}

// ---------------------------------------------------------------------------------------
// The driver without a socket: frames in, frames out.
// ---------------------------------------------------------------------------------------

use crate::auth::{sign_hs256, ConnectionClaims};
use crate::config::ServerConfig;
use crate::conn::driver::OutFrame;
use switchboard_core::{ChannelOptions, Namespaces, Payload};

const SECRET: &str = "driver-test-secret";

fn shared() -> Arc<Shared> {
    let mut config = ServerConfig {
        allow_anonymous: true,
        token_hmac_secret: Some(SECRET.to_string()),
        ..ServerConfig::default()
    };
    config.channel = Namespaces::new(ChannelOptions {
        allow_subscribe_for_anonymous: true,
        allow_publish_for_client: true,
        ..ChannelOptions::default()
    });
    let hub = switchboard_core::Hub::with_namespaces(
        crate::server::hub_limits(&config),
        config.channel.clone(),
    );
    let verifier = config.token_config().verifier().unwrap();
    let proxy = Arc::new(crate::proxy::Proxy::new(&config.proxy));
    Arc::new(Shared {
        config,
        node: switchboard_core::Node::new(hub.clone()),
        hub,
        origins: crate::transport::origin::OriginPolicy::new(&["*"]),
        deflate: switchboard_websocket::extensions::DeflatePolicy::disabled(),
        tls: None,
        counters: Arc::default(),
        started: std::time::Instant::now(),
        verifier,
        router: Arc::default(),
        admission: Arc::default(),
        webhooks: None,
        broker_metrics: Arc::default(),
        proxy,
    })
}

fn driver(shared: &Arc<Shared>) -> CentrifugoDriver {
    CentrifugoDriver::new(
        Arc::clone(shared),
        "127.0.0.1:1".parse().unwrap(),
        Encoding::Json,
    )
}

/// The text of every frame queued, in order.
fn frames(out: &mut Out) -> Vec<String> {
    out.drain()
        .map(|f| match f {
            OutFrame::Message(Message::Text(t)) => String::from_utf8_lossy(&t).into_owned(),
            other => panic!("expected a text frame, got {other:?}"),
        })
        .collect()
}

/// Sends one text frame; returns the frames queued.
async fn send(d: &mut CentrifugoDriver, text: &str) -> Result<Vec<String>, Ending> {
    let mut out = Out::default();
    let r = d.on_message(Message::text(text), &mut out).await;
    let sent = frames(&mut out);
    r.map(|()| sent)
}

/// Takes what is ready in the outbox and frames it.
async fn pump(d: &mut CentrifugoDriver) -> Result<Vec<String>, Ending> {
    let mut out = Out::default();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match d.poll_event(&mut cx) {
        Poll::Ready(event) => d.on_event(event, &mut out).await?,
        Poll::Pending => {}
    }
    Ok(frames(&mut out))
}

async fn connected(shared: &Arc<Shared>) -> CentrifugoDriver {
    let mut d = driver(shared);
    let sent = send(&mut d, r#"{"id":1,"connect":{}}"#).await.unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    d
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[tokio::test]
async fn connect_is_answered_with_the_connect_result() {
    let shared = shared();
    let mut d = driver(&shared);
    assert!(d.deadline().is_some(), "the handshake timeout runs");
    let sent = send(&mut d, r#"{"id":1,"connect":{}}"#).await.unwrap();
    assert_eq!(sent.len(), 1);
    let reply = json(&sent[0]);
    assert_eq!(reply["id"], 1);
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    assert_eq!(reply["connect"]["pong"], true);
    assert_eq!(d.deadline(), None, "no token expiry: no timer");
}

#[tokio::test]
async fn subscribe_reply_comes_before_the_publications_in_order() {
    let shared = shared();
    let mut d = connected(&shared).await;
    let sent = send(&mut d, r#"{"id":2,"subscribe":{"channel":"news"}}"#)
        .await
        .unwrap();
    assert_eq!(json(&sent[0])["id"], 2);
    for i in 0..3 {
        shared
            .hub
            .publish("news", Payload::text(format!("{i}")), Default::default());
    }
    let sent = pump(&mut d).await.unwrap();
    assert_eq!(sent.len(), 1, "one frame for the batch: {sent:?}");
    let data: Vec<_> = sent[0]
        .lines()
        .map(|l| json(l)["push"]["pub"]["data"].clone())
        .collect();
    assert_eq!(data, [0, 1, 2]);
    let push = json(sent[0].lines().next().unwrap());
    assert_eq!(push["push"]["channel"], "news", "framed as a push: {push}");
}

#[tokio::test]
async fn replies_of_one_frame_go_out_as_one_frame() {
    let shared = shared();
    let mut d = driver(&shared);
    let sent = send(
        &mut d,
        "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"a\"}}\n{\"id\":3,\"ping\":{}}",
    )
    .await
    .unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let ids: Vec<_> = sent[0].lines().map(|l| json(l)["id"].clone()).collect();
    assert_eq!(ids, [1, 2, 3]);
    // Instant commands (the fast path) batch the same way.
    let sent = send(&mut d, "{\"id\":4,\"ping\":{}}\n{}\n{\"id\":5,\"rpc\":{}}")
        .await
        .unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let lines: Vec<_> = sent[0].lines().map(json).collect();
    assert_eq!(lines[0]["id"], 4);
    assert_eq!(lines[1]["id"], 5);
    assert_eq!(lines[1]["error"]["code"], 108);
}

#[tokio::test]
async fn bad_frames_close_with_3501() {
    let shared = shared();
    let mut d = driver(&shared);
    let end = send(&mut d, "not json").await.unwrap_err();
    assert!(matches!(end, Ending::Close(3501, _)), "{end:?}");
    let mut d = driver(&shared);
    let end = send(&mut d, r#"{"id":1,"ping":{}}"#).await.unwrap_err();
    assert!(
        matches!(end, Ending::Close(3501, _)),
        "not connect first: {end:?}"
    );
    let mut d = connected(&shared).await;
    let end = send(&mut d, "{oops").await.unwrap_err();
    assert!(matches!(end, Ending::Close(3501, _)), "{end:?}");
    assert_eq!(
        d.close_frame(&end),
        Some((CloseCode(3501), Cow::Borrowed("bad request")))
    );
}

#[tokio::test]
async fn invalid_and_expired_connect_tokens() {
    let shared = shared();
    let mut d = driver(&shared);
    let end = send(&mut d, r#"{"id":1,"connect":{"token":"garbage"}}"#)
        .await
        .unwrap_err();
    assert!(matches!(end, Ending::Close(3500, _)), "{end:?}");

    let mut claims = ConnectionClaims::new("alice");
    claims.exp = Some(unix_now() - 3600);
    let token = sign_hs256(SECRET.as_bytes(), &claims).unwrap();
    let mut d = driver(&shared);
    let sent = send(
        &mut d,
        &format!(r#"{{"id":1,"connect":{{"token":"{token}"}}}}"#),
    )
    .await
    .unwrap();
    assert_eq!(json(&sent[0])["error"]["code"], 109, "{sent:?}");
    // The client has the handshake timeout to go; what it sends meanwhile is ignored.
    assert!(d.deadline().is_some());
    assert!(send(&mut d, r#"{"id":2,"ping":{}}"#)
        .await
        .unwrap()
        .is_empty());
    let mut out = Out::default();
    let end = d.on_timer(&mut out).await.unwrap_err();
    assert!(matches!(end, Ending::Close(3502, _)), "{end:?}");
}

#[tokio::test]
async fn ping_is_the_empty_object_once_connected() {
    let shared = shared();
    let mut d = driver(&shared);
    let mut out = Out::default();
    d.ping(&mut out);
    assert!(out.is_empty(), "no ping before connect");
    let mut d = connected(&shared).await;
    d.ping(&mut out);
    assert_eq!(frames(&mut out), ["{}"]);
    assert_eq!(
        d.close_frame(&Ending::Dead),
        Some((CloseCode(3012), Cow::Borrowed("no pong")))
    );
    // The client's pong is taken without a reply.
    assert!(send(&mut d, "{}").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_expired_token_closes_with_3005_on_the_timer() {
    let shared = shared();
    let mut claims = ConnectionClaims::new("alice");
    claims.exp = Some(unix_now() + 60);
    let token = sign_hs256(SECRET.as_bytes(), &claims).unwrap();
    let mut d = driver(&shared);
    let sent = send(
        &mut d,
        &format!(r#"{{"id":1,"connect":{{"token":"{token}"}}}}"#),
    )
    .await
    .unwrap();
    assert_eq!(json(&sent[0])["connect"]["expires"], true, "{sent:?}");
    let at = d.deadline().expect("the expiry timer");
    let left = at - Instant::now();
    assert!(
        left > Duration::from_secs(59) && left <= Duration::from_secs(62),
        "{left:?}"
    );
    // Not yet expired: the timer re-arms, the connection stays.
    let mut out = Out::default();
    d.on_timer(&mut out).await.unwrap();
    assert!(d.deadline().is_some());
    // Past the expiry (and its grace second): 3005.
    d.expires_at = Some(unix_now() - 2);
    let end = d.on_timer(&mut out).await.unwrap_err();
    assert!(matches!(end, Ending::Close(3005, _)), "{end:?}");
}

#[tokio::test]
async fn a_server_unsubscribe_is_an_unsubscribe_push() {
    let shared = shared();
    let mut d = connected(&shared).await;
    send(&mut d, r#"{"id":2,"subscribe":{"channel":"news"}}"#)
        .await
        .unwrap();
    let id = d.handle().id();
    assert!(shared
        .hub
        .send_control(id, Control::Unsubscribe("news".into())));
    let sent = pump(&mut d).await.unwrap();
    let push = json(&sent[0]);
    assert_eq!(push["push"]["channel"], "news", "{push}");
    assert_eq!(push["push"]["unsubscribe"]["code"], 2000, "{push}");
    assert!(!d.subs.contains("news"));
    // Nothing more arrives from the channel.
    shared
        .hub
        .publish("news", Payload::text("late"), Default::default());
    assert!(pump(&mut d).await.unwrap().is_empty());
}

#[tokio::test]
async fn endings_map_to_close_codes() {
    let shared = shared();
    let mut d = connected(&shared).await;
    let code = |d: &mut CentrifugoDriver, e: Ending| d.close_frame(&e).map(|(c, _)| c.0);
    assert_eq!(code(&mut d, Ending::Shutdown), Some(3001));
    assert_eq!(
        code(&mut d, Ending::Hub(CloseReason::SlowConsumer)),
        Some(3008)
    );
    assert_eq!(code(&mut d, Ending::Hub(CloseReason::Kicked)), Some(3011));
    assert_eq!(
        code(&mut d, Ending::Hub(CloseReason::MissedPublications)),
        Some(3010)
    );
    assert_eq!(code(&mut d, Ending::Panic("bug".into())), Some(1011));
    for gone in [
        Ending::Stalled,
        Ending::Lost,
        Ending::WriteFailed,
        Ending::ReadError,
    ] {
        assert_eq!(code(&mut d, gone), None);
    }
}

#[tokio::test]
async fn flood_and_drain_have_their_disconnect_codes() {
    let shared = shared();
    let mut d = connected(&shared).await;
    assert_eq!(
        d.close_frame(&Ending::Flood),
        Some((CloseCode(3013), Cow::Borrowed("too many requests")))
    );
    assert_eq!(
        d.close_frame(&Ending::Hub(CloseReason::Restart)),
        Some((CloseCode(3011), Cow::Borrowed("force reconnect")))
    );
}

// ---------------------------------------------------------------------------------------
// The Protobuf encoding through the same driver.
// ---------------------------------------------------------------------------------------

use switchboard_protocols::centrifugo::protobuf::{decode_server_frame, encode_commands};

/// Sends one binary frame of `commands`; returns the binary frames queued.
async fn send_protobuf(
    d: &mut CentrifugoDriver,
    commands: &[Command],
) -> Result<Vec<Bytes>, Ending> {
    let mut out = Out::default();
    let r = d
        .on_message(Message::Binary(encode_commands(commands)), &mut out)
        .await;
    let sent = out
        .drain()
        .map(|f| match f {
            OutFrame::Message(Message::Binary(b)) => b,
            other => panic!("expected a binary frame, got {other:?}"),
        })
        .collect();
    r.map(|()| sent)
}

#[tokio::test]
async fn a_protobuf_connection_answers_in_binary_and_pings_with_an_empty_reply() {
    let shared = shared();
    let mut d = CentrifugoDriver::new(
        Arc::clone(&shared),
        "127.0.0.1:1".parse().unwrap(),
        Encoding::Protobuf,
    );
    let connect = Command {
        id: 1,
        method: Method::Connect(cf::ConnectRequest::default()),
    };
    let subscribe = Command {
        id: 2,
        method: Method::Subscribe(SubscribeRequest {
            channel: "pb".into(),
            ..Default::default()
        }),
    };
    let sent = send_protobuf(&mut d, &[connect, subscribe]).await.unwrap();
    assert_eq!(sent.len(), 1, "both replies in one frame");
    let replies = decode_server_frame(&sent[0]).unwrap();
    assert_eq!(replies.len(), 2);
    assert!(replies[0].connected_client().is_some());
    assert_eq!((replies[1].id(), replies[1].error_code()), (2, None));
    assert_eq!(d.handle().info().protocol, "centrifugo-protobuf");

    // A binary publication reaches the Protobuf subscriber as the same bytes.
    let bytes: Vec<u8> = vec![0, 255, 1, 254];
    shared.hub.publish(
        "pb",
        Payload::binary(bytes.clone()),
        switchboard_core::PublishOptions::default(),
    );
    let mut out = Out::default();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    if let Poll::Ready(event) = d.poll_event(&mut cx) {
        d.on_event(event, &mut out).await.unwrap();
    }
    let frames: Vec<_> = out.drain().collect();
    let OutFrame::Message(Message::Binary(frame)) = &frames[0] else {
        panic!("expected a binary frame, got {frames:?}");
    };
    let replies = decode_server_frame(frame).unwrap();
    let (channel, data, _) = replies[0].publication().unwrap();
    assert_eq!((channel, &data[..]), ("pb", &bytes[..]));

    let mut out = Out::default();
    d.ping(&mut out);
    let frames: Vec<_> = out.drain().collect();
    assert!(
        matches!(&frames[..], [OutFrame::Message(Message::Binary(b))] if b[..] == [0]),
        "{frames:?}"
    );
}

#[tokio::test]
async fn a_protobuf_connection_refuses_text_and_bad_frames_with_3501() {
    let shared = shared();
    let new = || {
        CentrifugoDriver::new(
            Arc::clone(&shared),
            "127.0.0.1:1".parse().unwrap(),
            Encoding::Protobuf,
        )
    };
    let connect = Command {
        id: 1,
        method: Method::Connect(cf::ConnectRequest::default()),
    };
    // Text, even before connect.
    let mut d = new();
    let mut out = Out::default();
    let r = d.on_message(Message::text("{}"), &mut out).await;
    assert!(matches!(r, Err(Ending::Close(3501, _))), "{r:?}");
    // A truncated varint after connect.
    let mut d = new();
    send_protobuf(&mut d, std::slice::from_ref(&connect))
        .await
        .unwrap();
    let mut out = Out::default();
    let r = d
        .on_message(Message::Binary(Bytes::from_static(&[0x80])), &mut out)
        .await;
    assert!(matches!(r, Err(Ending::Close(3501, _))), "{r:?}");
    // Garbage as the first frame.
    let mut d = new();
    let mut out = Out::default();
    let r = d
        .on_message(
            Message::Binary(Bytes::from_static(&[0x02, 0xff, 0xff])),
            &mut out,
        )
        .await;
    assert!(matches!(r, Err(Ending::Close(3501, _))), "{r:?}");
}

#[tokio::test]
async fn the_connection_future_stays_small() {
    let shared = shared();
    let sizes = crate::conn::runtime::ws_connection_sizes(driver(&shared)).await;
    // A connection keeps its state in one box for its whole life (what a parked connection
    // keeps), and while it has work a task whose future holds the loop's state, in a cell
    // tokio rounds up to 128 B (docs/benchmarks.md, idle memory). A field or an await point
    // that widens either costs every connection.
    assert!(
        sizes.parked <= 928,
        "the Centrifugo parked state grew: {sizes:?}"
    );
    assert!(
        sizes.task <= 312,
        "the Centrifugo connection future grew: {sizes:?}"
    );
}
