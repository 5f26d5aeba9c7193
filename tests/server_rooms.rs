//! Raw rooms end to end against the real binary: broadcast, `?echo=false`, message types,
//! the welcome message, room isolation, and the plain HTTP routes.
mod server_support;

use server_support::*;
use switchboard_websocket::Message;

#[tokio::test]
async fn broadcast_reaches_every_member_including_the_sender() {
    let server = ServerProc::start(&[]);
    let mut a = ws(&server.ws_url("/room1")).await;
    let mut b = ws(&server.ws_url("/room1")).await;
    let mut c = ws(&server.ws_url("/room1")).await;
    // Make sure all three have joined before publishing: each sends a marker that every
    // member must see.
    for (i, cl) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
        cl.send_text(&format!("hello {i}")).await;
    }
    for cl in [&mut a, &mut b, &mut c] {
        let mut got: Vec<String> = Vec::new();
        for _ in 0..3 {
            got.push(cl.next_text().await);
        }
        got.sort();
        assert_eq!(got, ["hello 0", "hello 1", "hello 2"]);
    }
}

#[tokio::test]
async fn echo_false_excludes_the_sender() {
    let server = ServerProc::start(&[]);
    let mut quiet = ws(&server.ws_url("/r?echo=false")).await;
    let mut other = ws(&server.ws_url("/r")).await;
    quiet.send_text("from quiet").await;
    assert_eq!(other.next_text().await, "from quiet");
    other.send_text("from other").await;
    // The first thing `quiet` receives is the other's message, not its own.
    assert_eq!(quiet.next_text().await, "from other");
    assert_eq!(other.next_text().await, "from other");
}

#[tokio::test]
async fn text_and_binary_keep_their_type() {
    let server = ServerProc::start(&[]);
    let mut a = ws(&server.ws_url("/types")).await;
    let mut b = ws(&server.ws_url("/types")).await;
    a.writer
        .send(Message::binary(vec![0u8, 159, 146, 150, 255]))
        .await
        .unwrap();
    a.send_text("plain text ✓").await;
    let big = "x".repeat(100_000); // compressed with deflate, and past the copy threshold
    a.send_text(&big).await;
    for cl in [&mut a, &mut b] {
        assert_eq!(
            cl.next_data().await,
            Message::binary(vec![0u8, 159, 146, 150, 255])
        );
        assert_eq!(cl.next_data().await, Message::text("plain text ✓"));
        let got = cl.next_text().await;
        assert!(got == big, "big text corrupted ({} bytes)", got.len());
    }
}

#[tokio::test]
async fn deflate_off_still_delivers() {
    let server = ServerProc::start(&["--deflate", "false"]);
    let mut a = ws(&server.ws_url("/")).await;
    let big = "y".repeat(10_000);
    a.send_text(&big).await;
    let got = a.next_text().await;
    assert!(got == big, "text corrupted ({} bytes)", got.len());
}

#[tokio::test]
async fn welcome_comes_first_and_rooms_are_isolated() {
    // The welcome text comes from the environment: flags, env and file all reach the binary.
    let server = ServerProc::start_with_env(&[], &[("SWITCHBOARD_WELCOME", "welcome ✓")]);
    let mut lobby = ws(&server.ws_url("/")).await;
    assert_eq!(lobby.next_text().await, "welcome ✓");
    let mut other = ws(&server.ws_url("/elsewhere")).await;
    assert_eq!(other.next_text().await, "welcome ✓");
    other.send_text("only here").await;
    assert_eq!(other.next_text().await, "only here");
    lobby.send_text("lobby only").await;
    // The lobby member sees its own message and nothing from the other room.
    assert_eq!(lobby.next_text().await, "lobby only");
}

#[tokio::test]
async fn http_routes() {
    let server = ServerProc::start(&[]);
    let addr = server.addr();

    let (status, head, body) = http_raw(&addr, "GET", "/", &[]).await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(body.contains("id=\"messages\""), "the chat page is served");

    let (status, head, body) = http_raw(&addr, "GET", "/health", &[]).await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("application/json"),
        "{head}"
    );
    let json: serde_json::Value = serde_json::from_str(&body).expect("health is JSON");
    assert_eq!(json["status"], "ok");
    assert!(json["uptime_secs"].is_u64());
    assert_eq!(json["connections"], 0);
    assert!(json["hub"]["published"].is_u64());

    let (status, _, _) = http_raw(&addr, "GET", "/no-such-page", &[]).await;
    assert_eq!(status, 404);

    // Reserved prefixes are never rooms.
    let mut headers = upgrade_headers();
    headers.push("Origin: http://example.test");
    let (status, _, _) = http_raw(&addr, "GET", "/api/rooms", &headers).await;
    assert_eq!(status, 404);

    // A path that is no valid room name (unknown namespace) is refused before the upgrade.
    let (status, _, body) = http_raw(&addr, "GET", "/nope:room", &upgrade_headers()).await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid room name"), "{body}");
}

#[tokio::test]
async fn health_counts_connections() {
    let server = ServerProc::start(&[]);
    let _a = ws(&server.ws_url("/h")).await;
    let mut b = ws(&server.ws_url("/h")).await;
    // Once b has seen its own message, both connections are fully registered.
    b.send_text("sync").await;
    assert_eq!(b.next_text().await, "sync");
    let (_, _, body) = http_raw(&server.addr(), "GET", "/health", &[]).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["connections"], 2);
    assert_eq!(json["hub"]["connections"], 2);
    assert!(json["hub"]["published"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn json_logs() {
    let server = ServerProc::start(&["--log-format", "json"]);
    let _c = ws(&server.ws_url("/")).await;
    let (status, _, _) = http_raw(&server.addr(), "GET", "/health", &[]).await;
    assert_eq!(status, 200);
    let logs = server.stderr();
    let first = logs.lines().next().expect("a log line");
    let v: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(v["level"], "INFO");
    assert!(
        v["message"].as_str().unwrap().contains("listening"),
        "{first}"
    );
}

/// One task reads and writes each raw connection: a client that sends without pause must
/// still receive (here, the echoes of its own messages) rather than have its deliveries
/// starve in a small outgoing queue until it is closed as a slow consumer.
#[tokio::test]
async fn a_client_sending_without_pause_still_receives() {
    // About 20 of these messages fit in the queue; the client sends 2,000 in batches of 64.
    let server = ServerProc::start(&["--outbox-max-bytes", "2048"]);
    let Client {
        mut reader,
        mut writer,
    } = ws(&server.ws_url("/flood")).await;
    const N: usize = 2000;
    let body = "x".repeat(90);
    let sender = tokio::spawn(async move {
        for i in 0..N {
            writer
                .feed(Message::text(format!("{i:06} {body}")))
                .expect("feed");
            if i % 64 == 63 {
                writer.flush().await.expect("flush");
            }
        }
        writer.flush().await.expect("flush");
        // Kept open until every echo is read.
        writer
    });
    for i in 0..N {
        let got = match tokio::time::timeout(WAIT, reader.next()).await {
            Ok(Some(Ok(Message::Text(b)))) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("echo {i}: expected a text message, got {other:?}"),
        };
        assert_eq!(&got[..6], format!("{i:06}"), "echo {i} out of order");
    }
    let _writer = sender.await.expect("sender");
}
