//! Hostile input against the real binary: payloads, tokens, packets and requests built to
//! break the server. Each test checks that the attacker gets a clear refusal (a status, a
//! close code, an error reply), that the memory it could pin stays bounded (read from the
//! counters in `/health`), and that other clients are still served.
mod server_support;

use std::time::Duration;

use server_support::*;
use switchboard_server::auth::{sign_hs256, ConnectionClaims, SubscriptionClaims};
use switchboard_websocket::{CloseCode, Message};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Held by the tests that load the machine (floods, thousands of connections) so they run
/// one at a time and the others, which wait on bounded timeouts, are not starved by two at once.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts the binary with `toml` as its configuration file plus `args`.
fn start(toml: &str, args: &[&str], env: &[(&str, &str)]) -> (tempfile::TempDir, ServerProc) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(&config, toml).unwrap();
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let server = ServerProc::start_with_env(&all, env);
    (dir, server)
}

/// One HTTP/1.1 request with `Connection: close` and an optional body; returns
/// (status, head, body). Status 0 means the server closed without answering.
async fn http(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> Response {
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    tcp.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut tcp).await
}

/// Reads until the server closes the socket and splits the answer.
async fn read_response(tcp: &mut TcpStream) -> Response {
    let raw = read_until_closed(tcp, WAIT).await;
    let (status, _, body) = split_response(&raw);
    Response { status, body }
}

/// What [`http`] read.
struct Response {
    status: u16,
    body: String,
}

/// `POST /api/<method>` with the test key.
async fn api(server: &ServerProc, method: &str, body: &str) -> Response {
    http(
        &server.addr(),
        "POST",
        &format!("/api/{method}"),
        &["X-API-Key: hostile-key", "Content-Type: application/json"],
        body,
    )
    .await
}

/// The `server` counters of `/health`.
async fn server_stats(server: &ServerProc) -> serde_json::Value {
    let r = http(&server.addr(), "GET", "/health", &[], "").await;
    assert_eq!(r.status, 200, "health: {}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("health is JSON");
    v["server"].clone()
}

/// Reads the next frame and asserts it is a close with `code`.
async fn expect_close_code(client: &mut Client, code: CloseCode) {
    match client.expect_close().await {
        Some(frame) => assert_eq!(frame.code, code, "close reason {:?}", frame.reason),
        None => panic!("expected close {code:?}, got a close without code"),
    }
}

// ---------------------------------------------------------------------------------------
// History holding JSON that serde_json cannot turn into a tree.
// ---------------------------------------------------------------------------------------

const HISTORY_CONFIG: &str = r#"
api_key = "hostile-key"
[channel.default]
history_size = 10
history_ttl = 300
"#;

/// A raw-room message nested deeper than serde_json's recursion limit (128) is kept in
/// history; `POST /api/history` must still answer, with the message embedded verbatim, and
/// the API keeps serving.
#[tokio::test]
async fn deeply_nested_json_in_history_does_not_break_the_api() {
    let (_dir, server) = start(HISTORY_CONFIG, &[], &[]);
    let mut client = ws(&server.ws_url("/deep")).await;
    let nested = format!("{}{}", "[".repeat(130), "]".repeat(130));
    assert_eq!(nested.len(), 260);
    client.send_text(&nested).await;
    // The echo means it was published (and so stored).
    assert_eq!(client.next_text().await, nested);

    for _ in 0..2 {
        let r = api(&server, "history", r#"{"channel":"deep","limit":-1}"#).await;
        assert_eq!(r.status, 200, "history answered: {:?}", r.body);
        assert!(
            r.body.starts_with(r#"{"result":{"#) && r.body.contains(&nested),
            "the publication is embedded as sent: {}",
            r.body
        );
    }
    // The API and the room still work.
    let r = api(&server, "publish", r#"{"channel":"deep","data":{"n":1}}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(r#""result""#), "{}", r.body);
    assert_eq!(client.next_text().await, r#"{"n":1}"#);
    let stats = server_stats(&server).await;
    assert_eq!(stats["http_panics"], 0, "{stats}");
}

// ---------------------------------------------------------------------------------------
// Request bodies that never arrive.
// ---------------------------------------------------------------------------------------

/// Sends a request head announcing `length` body bytes followed by only `sent`.
async fn truncated_post(addr: &str, path: &str, length: usize, sent: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {length}\r\nX-API-Key: hostile-key\r\n\r\n{sent}"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    tcp
}

/// The HTTP API does not wait for ever for a body either.
#[tokio::test]
async fn truncated_api_body_times_out() {
    let (_dir, server) = start(HISTORY_CONFIG, &[], &[("SWITCHBOARD_BODY_TIMEOUT", "2")]);
    let mut stuck = truncated_post(&server.addr(), "/api/publish", 500, "{\"ch").await;
    let answer = read_response(&mut stuck).await;
    assert_eq!(answer.status, 408, "{}", answer.body);
    let r = api(&server, "publish", r#"{"channel":"x","data":1}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

// ---------------------------------------------------------------------------------------
// Token time claims far in the future.
// ---------------------------------------------------------------------------------------

const SECRET: &str = "hostile-secret";

/// Time claims beyond what `SystemTime` can hold (1e19 s, `u64::MAX`, a huge float) mean
/// "far future": the connection and the subscription work and stay open, and nothing
/// panics.
#[tokio::test]
async fn huge_token_expiry_means_far_future() {
    let (_dir, server) = start(&format!("token_hmac_secret = \"{SECRET}\"\n"), &[], &[]);
    let url = server.ws_url("/connection/websocket");
    let mut client = ws(&url).await;

    let claims = ConnectionClaims {
        exp: Some(10_000_000_000_000_000_000),
        ..ConnectionClaims::new("42")
    };
    let token = sign_hs256(SECRET.as_bytes(), &claims).unwrap();
    client
        .send_text(&format!(r#"{{"id":1,"connect":{{"token":"{token}"}}}}"#))
        .await;
    let reply = client.next_text().await;
    assert!(
        reply.contains(r#""id":1"#) && reply.contains(r#""expires":true"#),
        "{reply}"
    );
    assert!(!reply.contains("error"), "{reply}");

    let sub = SubscriptionClaims {
        expire_at: Some(u64::MAX),
        ..SubscriptionClaims::new("42", "news")
    };
    let sub_token = sign_hs256(SECRET.as_bytes(), &sub).unwrap();
    client
        .send_text(&format!(
            r#"{{"id":2,"subscribe":{{"channel":"news","token":"{sub_token}"}}}}"#
        ))
        .await;
    let reply = client.next_text().await;
    assert!(
        reply.contains(r#""id":2"#) && !reply.contains("error"),
        "{reply}"
    );

    // A fractional exp far beyond u64 (1e300) on refresh.
    let refresh = r#"{"sub":"42","exp":1e300}"#;
    let refresh = sign_json(refresh);
    client
        .send_text(&format!(r#"{{"id":3,"refresh":{{"token":"{refresh}"}}}}"#))
        .await;
    let reply = client.next_text().await;
    assert!(
        reply.contains(r#""id":3"#) && !reply.contains("error"),
        "{reply}"
    );

    // Still open and answering after the timers were armed.
    client
        .send_text(r#"{"id":4,"presence_stats":{"channel":"news"}}"#)
        .await;
    let reply = client.next_text().await;
    assert!(reply.contains(r#""id":4"#), "{reply}");
    let stats = server_stats(&server).await;
    assert_eq!(stats["closed_panic"], 0, "{stats}");
}

/// An HS256 token over raw JSON claims (to write numbers serde would not produce).
fn sign_json(claims: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(claims).unwrap();
    sign_hs256(SECRET.as_bytes(), &value).unwrap()
}

// ---------------------------------------------------------------------------------------
// Malformed input gets a precise answer.
// ---------------------------------------------------------------------------------------

/// Channel names the server never accepts get Centrifugo's 107 "bad request" with a clear
/// message, not 102 "unknown channel"; the connection stays usable.
#[tokio::test]
async fn invalid_channel_names_are_bad_requests() {
    let (_dir, server) = start(
        "allow_anonymous = true\n[channel.default]\nallow_subscribe_for_anonymous = true\n",
        &[],
        &[],
    );
    let mut client = ws(&server.ws_url("/connection/websocket")).await;
    client.send_text(r#"{"id":1,"connect":{}}"#).await;
    let reply = client.next_text().await;
    assert!(!reply.contains("error"), "{reply}");
    let long = "x".repeat(256);
    for (i, name) in ["with space", "nul\\u0000byte", long.as_str()]
        .iter()
        .enumerate()
    {
        let id = i + 2;
        client
            .send_text(&format!(
                r#"{{"id":{id},"subscribe":{{"channel":"{name}"}}}}"#
            ))
            .await;
        let reply = client.next_text().await;
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v["id"], id, "{reply}");
        assert_eq!(v["error"]["code"], 107, "{reply}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("invalid channel"),
            "{reply}"
        );
    }
    // A valid name on the same connection still works.
    client
        .send_text(r#"{"id":9,"subscribe":{"channel":"fine"}}"#)
        .await;
    let reply = client.next_text().await;
    assert!(
        reply.contains(r#""id":9"#) && !reply.contains("error"),
        "{reply}"
    );
}

// ---------------------------------------------------------------------------------------
// Socket.IO binary attachments.
// ---------------------------------------------------------------------------------------

const SIO_CONFIG: &str = "allow_anonymous = true\n";

/// Opens a Socket.IO session over a WebSocket and joins `/`.
async fn sio(server: &ServerProc) -> Client {
    let mut c = ws(&server.ws_url("/socket.io/?EIO=4&transport=websocket")).await;
    let open = c.next_text().await;
    assert!(open.starts_with("0{"), "{open}");
    c.send_text("40").await;
    let connected = c.next_text().await;
    assert!(connected.starts_with("40{"), "{connected}");
    c
}

/// An Engine.IO message holding a BINARY_EVENT header that announces `n` attachments, with
/// ack id 7.
fn binary_event(n: usize) -> String {
    let placeholders: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"_placeholder":true,"num":{i}}}"#))
        .collect();
    format!("45{n}-7[\"up\",{}]", placeholders.join(","))
}

/// An event announcing more attachments than allowed (default 10) is refused at once with
/// a protocol-error close, before anything is buffered; other sessions carry on.
#[tokio::test]
async fn too_many_attachments_close_the_session() {
    let (_dir, server) = start(SIO_CONFIG, &[], &[]);
    let mut bystander = sio(&server).await;
    let mut attacker = sio(&server).await;
    attacker.send_text(&binary_event(64)).await;
    expect_close_code(&mut attacker, CloseCode::PROTOCOL_ERROR).await;

    // Ten are still fine: the event completes and is acknowledged.
    bystander.send_text(&binary_event(10)).await;
    for _ in 0..10 {
        bystander
            .writer
            .send(Message::binary(vec![1u8; 10]))
            .await
            .unwrap();
    }
    assert_eq!(bystander.next_text().await, "437[]");
    let stats = server_stats(&server).await;
    assert_eq!(stats["socketio_attachment_bytes"], 0, "{stats}");
}

/// Attachments of one connection are bounded in bytes (default 4 MiB per connection): the
/// one that goes over closes the session, and what was buffered is released.
#[tokio::test]
async fn attachment_bytes_per_connection_are_bounded() {
    let (_dir, server) = start(SIO_CONFIG, &[], &[]);
    let mut attacker = sio(&server).await;
    attacker.send_text(&binary_event(10)).await;
    // Each is within maxPayload (1 000 000); the fifth passes 4 MiB in total.
    for _ in 0..5 {
        if attacker
            .writer
            .send(Message::binary(vec![7u8; 1_000_000]))
            .await
            .is_err()
        {
            break;
        }
    }
    expect_close_code(&mut attacker, CloseCode::PROTOCOL_ERROR).await;
    let stats = server_stats(&server).await;
    assert_eq!(stats["socketio_attachment_bytes"], 0, "{stats}");
    // The server still accepts sessions.
    let _ok = sio(&server).await;
}

/// The attachment bytes buffered by all connections together are bounded: the connection
/// that would pass the server-wide limit is closed, the others complete their events.
#[tokio::test]
async fn attachment_bytes_across_the_server_are_bounded() {
    let config = format!("{SIO_CONFIG}[socketio]\nmax_attachment_bytes_total = 1500000\n");
    let (_dir, server) = start(&config, &[], &[]);
    let mut a = sio(&server).await;
    let mut b = sio(&server).await;
    a.send_text(&binary_event(2)).await;
    a.writer
        .send(Message::binary(vec![1u8; 600_000]))
        .await
        .unwrap();
    // A's bytes are held before B's arrive (the two connections are read independently):
    // B is the one that goes over the server-wide cap.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = server_stats(&server).await;
        if stats["socketio_attachment_bytes"].as_u64() >= Some(600_000) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A's attachment never held: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.send_text(&binary_event(2)).await;
    b.writer
        .send(Message::binary(vec![2u8; 1_000_000]))
        .await
        .unwrap();
    expect_close_code(&mut b, CloseCode::PROTOCOL_ERROR).await;
    let stats = server_stats(&server).await;
    let held = stats["socketio_attachment_bytes"].as_u64().unwrap();
    assert!(held <= 1_500_000, "{stats}");
    // A's event fits once B's bytes are released.
    a.writer
        .send(Message::binary(vec![1u8; 600_000]))
        .await
        .unwrap();
    assert_eq!(a.next_text().await, "437[]");
    let stats = server_stats(&server).await;
    assert_eq!(stats["socketio_attachment_bytes"], 0, "{stats}");
}

// ---------------------------------------------------------------------------------------
// Socket.IO long-polling: stalled bodies, malformed packets.
// ---------------------------------------------------------------------------------------

/// The sid of a new polling session (from the open packet).
async fn polling_session(server: &ServerProc) -> Response {
    http(
        &server.addr(),
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        &[],
        "",
    )
    .await
}

fn sid_of(open: &str) -> String {
    let json = open.strip_prefix('0').expect("open packet");
    let v: serde_json::Value = serde_json::from_str(json).expect("open JSON");
    v["sid"].as_str().expect("sid").to_string()
}

/// A polling `POST` that announces 1000 bytes and sends 2 is answered 408 and closed after
/// the body timeout; while it is open it holds the session's connection slot even though
/// the session itself ended.
#[tokio::test]
async fn truncated_polling_body_times_out_and_keeps_its_slot() {
    let (_dir, server) = start(
        SIO_CONFIG,
        &["--max-connections", "1"],
        &[("SWITCHBOARD_BODY_TIMEOUT", "3")],
    );
    let open = polling_session(&server).await;
    assert_eq!(open.status, 200, "{}", open.body);
    let sid = sid_of(&open.body);
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let mut stuck = truncated_post(&server.addr(), &path, 1000, "40").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A second POST overlaps the first: a protocol error that ends the session.
    let second = http(&server.addr(), "POST", &path, &[], "40").await;
    assert_eq!(second.status, 400, "{}", second.body);
    // The session is gone: a poll gets its close packet, or the sid is already unknown.
    let poll = http(&server.addr(), "GET", &path, &[], "").await;
    assert!(
        poll.status == 400 || (poll.status == 200 && poll.body.ends_with('1')),
        "{} {}",
        poll.status,
        poll.body
    );

    // The stuck request still holds the slot: no new session while it is open.
    let refused = polling_session(&server).await;
    assert_eq!(refused.status, 503, "{}", refused.body);

    // It is answered and closed once the body timeout passes...
    let answer = read_response(&mut stuck).await;
    assert_eq!(answer.status, 408, "{}", answer.body);
    // ... and its slot is free again.
    let again = polling_session(&server).await;
    assert_eq!(again.status, 200, "{}", again.body);
}

/// A malformed Socket.IO packet posted over polling is answered 400 with the reason, and
/// the session is closed (later requests for it are refused).
#[tokio::test]
async fn malformed_polling_packet_is_a_bad_request() {
    let (_dir, server) = start(SIO_CONFIG, &[], &[]);
    let open = polling_session(&server).await;
    assert_eq!(open.status, 200, "{}", open.body);
    let sid = sid_of(&open.body);
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let r = http(&server.addr(), "POST", &path, &[], "40").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Engine.IO message `4`, Socket.IO type `9` does not exist.
    let r = http(&server.addr(), "POST", &path, &[], "49[\"x\"]").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("unknown packet type"), "{}", r.body);
    // The session is closed: a poll gets the close packet or an unknown-sid error.
    let r = http(&server.addr(), "GET", &path, &[], "").await;
    assert!(
        (r.status == 200 && r.body.contains('1')) || r.status == 400,
        "{} {}",
        r.status,
        r.body
    );
    let r = http(&server.addr(), "GET", &path, &[], "").await;
    assert_eq!(r.status, 400, "{}", r.body);
}

// ---------------------------------------------------------------------------------------
// A Centrifugo client that stops reading while its channel is flooded.
// ---------------------------------------------------------------------------------------

const CF_FLOOD_CONFIG: &str =
    "allow_anonymous = true\n[channel.default]\nallow_subscribe_for_anonymous = true\n";

/// Size of each flooded message.
const FLOOD_PAD: usize = 16 * 1024;
/// Messages in the flood (24 MiB in all, far more than the socket buffers hold).
const FLOOD_N: usize = 1500;

/// Connects a Centrifugo client anonymously and subscribes it to `channel`.
async fn cf_subscribed(server: &ServerProc, channel: &str) -> Client {
    let mut c = ws(&server.ws_url("/connection/websocket")).await;
    c.send_text(r#"{"id":1,"connect":{}}"#).await;
    let reply = c.next_text().await;
    assert!(
        reply.contains(r#""id":1"#) && !reply.contains("error"),
        "{reply}"
    );
    c.send_text(&format!(
        r#"{{"id":2,"subscribe":{{"channel":"{channel}"}}}}"#
    ))
    .await;
    let reply = c.next_text().await;
    assert!(
        reply.contains(r#""id":2"#) && !reply.contains("error"),
        "{reply}"
    );
    c
}

/// Reads pushes until `count` publications arrived; returns their `n` fields in order.
async fn cf_publications(client: &mut Client, count: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.len() < count {
        // Several pushes may share one frame, one JSON message per line.
        for line in client.next_text().await.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("push is JSON");
            if let Some(n) = v["push"]["pub"]["data"]["n"].as_u64() {
                seen.push(n);
            }
        }
    }
    seen
}

/// Polls `/health` until `pred` holds for its `connections` count (bounded by [`WAIT`]).
async fn wait_connections(server: &ServerProc, want: u64) -> serde_json::Value {
    let end = std::time::Instant::now() + WAIT;
    loop {
        let r = http(&server.addr(), "GET", "/health", &[], "").await;
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("health is JSON");
        if v["connections"] == want {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "connections never reached {want}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Centrifugo client that subscribes and then never reads again, while its channel is
/// flooded, is let go within the stall limit (`ping_timeout`, 3 s here) under `policy`: its
/// connection slot is released without the client reading a byte, it is counted as a slow
/// consumer, the server's memory stays bounded, and a subscriber that reads gets every
/// message in order and stays connected.
async fn non_reading_centrifugo_client_is_closed(policy: &str) {
    let _heavy = HEAVY.lock().await;
    let (_dir, server) = start(
        CF_FLOOD_CONFIG,
        &[
            "--outbox-max-bytes",
            "262144",
            "--deflate",
            "false",
            "--ping-timeout",
            "3",
            "--slow-consumer",
            policy,
        ],
        &[],
    );
    let mut healthy = cf_subscribed(&server, "flood").await;

    // The stalled client: a tiny receive buffer so the server's side fills quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let (mut slow, mut seen) = raw_ws(&server.addr(), "/connection/websocket", Some(socket)).await;
    slow.write_all(&masked_text_frame(br#"{"id":1,"connect":{}}"#))
        .await
        .unwrap();
    slow.write_all(&masked_text_frame(
        br#"{"id":2,"subscribe":{"channel":"flood"}}"#,
    ))
    .await
    .unwrap();
    tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(r#""id":2"#) {
            let n = tokio::io::AsyncReadExt::read(&mut slow, &mut chunk)
                .await
                .unwrap();
            assert!(n > 0, "closed before the subscribe reply");
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("subscribe reply in time");
    assert!(!String::from_utf8_lossy(&seen).contains("error"));
    let rss_before = server.rss_bytes();

    // Flood through a raw room of the same name, at most four messages ahead of the
    // subscriber that reads, so only a client that does not read at all falls behind.
    let mut publisher = ws(&server.ws_url("/flood?echo=false")).await;
    let pad = "z".repeat(FLOOD_PAD);
    let mut received = Vec::new();
    for i in 0..FLOOD_N {
        publisher
            .send_text(&format!(r#"{{"n":{i},"pad":"{pad}"}}"#))
            .await;
        if i >= 4 && received.len() < i - 4 {
            received.extend(cf_publications(&mut healthy, 1).await);
        }
    }
    let rest = FLOOD_N - received.len();
    received.extend(cf_publications(&mut healthy, rest).await);
    assert_eq!(
        received,
        (0..FLOOD_N as u64).collect::<Vec<_>>(),
        "the reading subscriber gets everything, in order"
    );

    // The stalled client is let go without reading: only the subscriber and the publisher
    // are left.
    let health = wait_connections(&server, 2).await;
    assert!(
        health["server"]["closed_slow_consumer"].as_u64().unwrap() >= 1,
        "{health}"
    );
    assert_eq!(health["server"]["closed_panic"], 0, "{health}");
    // The queues in front of it were bounded (256 KiB outbox, 4 MiB write buffer): the
    // 24 MiB flood did not pile up in the server.
    let grown = server.rss_bytes().saturating_sub(rss_before);
    assert!(grown < 32 << 20, "RSS grew by {grown} bytes");
    // Its socket ends (EOF or reset) once what the kernel buffered is drained.
    let got = read_until_closed(&mut slow, WAIT).await;
    assert!(
        got.len() < FLOOD_N * FLOOD_PAD,
        "it did not get the whole flood"
    );

    // The reading subscriber is still served, and new clients are too.
    publisher.send_text(r#"{"n":999999}"#).await;
    assert_eq!(cf_publications(&mut healthy, 1).await, vec![999_999]);
    let _again = cf_subscribed(&server, "flood").await;
}

/// Under the default policy the hub closes the stalled client's outbox once it is full;
/// the connection notices while its write waits and closes (3008 "slow", if the socket
/// still takes the close frame).
#[tokio::test]
async fn non_reading_centrifugo_client_is_closed_as_slow_consumer() {
    non_reading_centrifugo_client_is_closed("close").await;
}

/// With `drop-oldest` the outbox never closes: the stall limit alone ends the connection.
#[tokio::test]
async fn non_reading_centrifugo_client_is_dropped_after_the_stall_limit() {
    non_reading_centrifugo_client_is_closed("drop-oldest").await;
}

// ---------------------------------------------------------------------------------------
// No file descriptor left for a new client.
// ---------------------------------------------------------------------------------------

/// Starts a WebSocket upgrade to a raw room by hand. Returns the answer's status (0 when the
/// server closed without one) and the socket, kept open after a `101`. Panics when the server
/// neither answers nor closes within five seconds: a client must not be left hanging.
async fn try_upgrade(addr: &str) -> (u16, TcpStream) {
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let req = switchboard_websocket::handshake::ClientRequest::new(
        addr,
        "/fd",
        &[],
        None,
        &http::HeaderMap::new(),
    );
    let _ = tcp.write_all(&req.bytes).await;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut tcp, &mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "the client was left hanging");
    let text = String::from_utf8_lossy(&head);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 503 {
        assert!(text.contains("Retry-After:"), "{text}");
    }
    (status, tcp)
}

/// With the open-files limit at 64, clients beyond what the server has descriptors for are
/// refused at once (`503` with `Retry-After`, or closed) instead of waiting in the backlog
/// until they time out; the refusals are counted and logged once, not per attempt; once
/// connections close, new clients are served again.
#[tokio::test]
async fn exhausted_file_descriptors_refuse_promptly_and_recover() {
    let server = ServerProc::start_with_nofile(&[], 64);
    let addr = server.addr();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        let (status, tcp) = try_upgrade(&addr).await;
        match status {
            101 => held.push(tcp),
            0 | 503 => {
                refused += 1;
                if refused == 5 {
                    break;
                }
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(refused, 5, "{} connections held, none refused", held.len());
    assert!(!held.is_empty() && held.len() < 64, "{} held", held.len());

    // Closing some connections frees descriptors: the server answers again.
    held.truncate(held.len() - 8);
    let end = std::time::Instant::now() + WAIT;
    let stats = loop {
        let (status, _, body) = http_raw(&addr, "GET", "/health", &[]).await;
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            break v["server"].clone();
        }
        assert!(std::time::Instant::now() < end, "never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        stats["rejected_fd_exhausted"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    let mut client = ws(&server.ws_url("/fd")).await;
    client.send_text("after").await;
    assert_eq!(client.next_text().await, "after");

    let log = server.stderr();
    assert!(!log.contains("accept failed"), "{log}");
    let warnings = log.matches("out of file descriptors").count();
    assert!((1..=2).contains(&warnings), "{warnings} warnings");
}

// ---------------------------------------------------------------------------------------
// One room flooded flat out while another room talks.
// ---------------------------------------------------------------------------------------

/// Round trips the quiet room must complete while the flood goes on.
const ROUND_TRIPS: usize = 100;
/// Frames in the flood (64 bytes of payload each); it is stopped earlier once the round
/// trips are done. A debug build on one worker takes them in about 2 s. While a connection
/// kept its worker for as long as its socket had data, room B needed about 5 s for its round
/// trips (50 ms each); now about 0.2 s.
const FLOOD_FRAMES: u64 = 150_000;
/// Longest the flood may last whatever its count.
const FLOOD_LIMIT: Duration = Duration::from_secs(20);

/// A client of room A sends tiny frames flat out to a server with one worker thread (so the
/// connections share it) while two clients of room B exchange numbered messages: B completes
/// its round trips, losing nothing, while the flood is still going on; a member of room A
/// that does not read is cut off under the slow-consumer policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_flood_does_not_hold_up_other_rooms() {
    let _heavy = HEAVY.lock().await;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let server = ServerProc::start_with_env(
        &["--deflate", "false", "--outbox-max-bytes", "262144"],
        &[("TOKIO_WORKER_THREADS", "1")],
    );
    let addr = server.addr();

    // Room A: a member that never reads (tiny receive buffer), and one that reads everything.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let (_stalled, _) = raw_ws(&addr, "/flood-a", Some(socket)).await;
    let (reader, _) = raw_ws(&addr, "/flood-a", None).await;
    let mut reader = reader.into_std().unwrap();
    reader.set_nonblocking(false).unwrap();
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });

    // Room B.
    let mut b1 = ws(&server.ws_url("/calm?echo=false")).await;
    let mut b2 = ws(&server.ws_url("/calm?echo=false")).await;
    b1.send_text("hello").await;
    assert_eq!(b2.next_text().await, "hello");

    // The flooder: 64-byte messages, as fast as the socket takes them.
    let (flooder, _) = raw_ws(&addr, "/flood-a?echo=false", None).await;
    let mut flooder = flooder.into_std().unwrap();
    flooder.set_nonblocking(false).unwrap();
    let flooding = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (flooding, sent) = (Arc::clone(&flooding), Arc::clone(&sent));
        std::thread::spawn(move || {
            let one = masked_text_frame(&[b'f'; 64]);
            let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 512).collect();
            let started = std::time::Instant::now();
            while flooding.load(Ordering::Relaxed)
                && sent.load(Ordering::Relaxed) < FLOOD_FRAMES
                && started.elapsed() < FLOOD_LIMIT
            {
                if flooder.write_all(&chunk).is_err() {
                    break;
                }
                sent.fetch_add(512, Ordering::Relaxed);
            }
            // Whether the flood ended by itself (rather than being stopped).
            flooding.swap(false, Ordering::Relaxed)
        })
    };
    // Wait until the flood is under way.
    let end = std::time::Instant::now() + WAIT;
    while sent.load(Ordering::Relaxed) < 50_000 {
        assert!(std::time::Instant::now() < end, "the flood did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for i in 0..ROUND_TRIPS {
        b1.send_text(&format!("ping {i}")).await;
        assert_eq!(b2.next_text().await, format!("ping {i}"));
        b2.send_text(&format!("pong {i}")).await;
        assert_eq!(b1.next_text().await, format!("pong {i}"));
    }
    let during = sent.load(Ordering::Relaxed);
    let ran_out = !flooding.swap(false, Ordering::Relaxed);
    let ended_first = flood.join().unwrap() || ran_out;
    assert!(
        !ended_first,
        "the flood of {FLOOD_FRAMES} frames ended before room B's {ROUND_TRIPS} round trips \
         ({during} frames sent)"
    );

    // The member of room A that does not read is cut off (close policy).
    let end = std::time::Instant::now() + WAIT;
    loop {
        let stats = server_stats(&server).await;
        if stats["closed_slow_consumer"].as_u64().unwrap() >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < end, "not cut off: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Room B is still fine.
    b2.send_text("after").await;
    assert_eq!(b1.next_text().await, "after");
    drop(server);
    let _ = drain.join();
}

// ---------------------------------------------------------------------------------------
// Memory after a burst.
// ---------------------------------------------------------------------------------------

/// Members of the burst room, none of which reads.
const BURST_MEMBERS: usize = 2000;
/// Messages of 4 KiB published to them. 250: since queue items became two words, 100 messages
/// grew the server by only ≈ 17–19 MiB (peak 44 → 37 MiB), too little against the ≈ 5 MiB that
/// stays after any burst (measured the same before and after that change), so the burst is
/// made large enough to be what the bound measures. 400 (with a 2 MiB outbox, so none is cut
/// off): since parked members are written to where they wait, one batch at a time, 250
/// messages peaked at ≈ 41–43 MiB instead of ≈ 54 MiB, and the ≈ 6 MiB that stays after the
/// release (the same as before) was more than a quarter of the smaller burst.
const BURST_MESSAGES: usize = 400;

/// After a burst of clients that stop reading and are then gone, the server's resident memory
/// goes back near where it started instead of staying at the burst's high-water mark: at most
/// a quarter of what the burst added may stay. (Debug build: baseline 17 MiB, peak 43 MiB;
/// 34 MiB stayed while freed memory was kept by the allocator, 22 MiB now. With 250 messages:
/// baseline ≈ 19 MiB, peak 46–49 MiB, ≈ 24.5 MiB after.)
#[tokio::test]
async fn memory_is_given_back_after_a_burst() {
    let _heavy = HEAVY.lock().await;
    let server = ServerProc::start(&["--deflate", "false", "--outbox-max-bytes", "2097152"]);
    let addr = server.addr();
    let baseline = server.rss_bytes();
    let mut members = Vec::new();
    for _ in 0..BURST_MEMBERS {
        // A tiny receive buffer: what they do not read stays in the server.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        members.push(raw_ws(&addr, "/burst", Some(socket)).await.0);
    }
    let mut publisher = ws(&server.ws_url("/burst?echo=false")).await;
    let payload = "m".repeat(4096);
    for i in 0..BURST_MESSAGES {
        publisher.send_text(&format!("{i:06}{payload}")).await;
    }
    // Everything was queued or handed to the sockets (or the member was cut off).
    let end = std::time::Instant::now() + WAIT;
    loop {
        let r = http(&addr, "GET", "/health", &[], "").await;
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let done = v["hub"]["delivered"].as_u64().unwrap() as usize
            + v["hub"]["dropped"].as_u64().unwrap() as usize;
        if done >= BURST_MEMBERS * BURST_MESSAGES || v["hub"]["slow_consumer_closes"] != 0 {
            break;
        }
        assert!(std::time::Instant::now() < end, "burst not delivered: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peak = server.rss_bytes();
    drop(members);
    drop(publisher);
    let health = wait_connections(&server, 0).await;
    assert!(
        health["memory"]["rss_bytes"].as_u64().unwrap() > 0,
        "{health}"
    );
    let grown = peak.saturating_sub(baseline);
    assert!(grown > 8 << 20, "the burst took only {grown} bytes");
    // The periodic sweep (every 5 s) gives the memory back; allow two of them.
    let end = std::time::Instant::now() + Duration::from_secs(12);
    let mut now = server.rss_bytes();
    while now > baseline + grown / 4 && std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = server.rss_bytes();
    }
    assert!(
        now <= baseline + grown / 4,
        "RSS {now} bytes with no client left (baseline {baseline}, peak {peak})"
    );
}
