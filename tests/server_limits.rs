//! Limits and refusals against the real binary: message size (1009), connection limit (503),
//! room size (1008), handshake timeout, origin checks (403), slow consumers (1008/drop).
mod server_support;

use std::time::Duration;

use server_support::*;
use switchboard_websocket::{CloseCode, Message};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let server = ServerProc::start(&["--max-message-size", "1024"]);
    let mut c = ws(&server.ws_url("/big")).await;
    let fits = "a".repeat(1024);
    c.send_text(&fits).await;
    assert_eq!(
        c.next_text().await.len(),
        1024,
        "a message at the limit is delivered"
    );
    c.send_text(&"b".repeat(2000)).await;
    let frame = c.expect_close().await.expect("close frame with a status");
    assert_eq!(frame.code, CloseCode::TOO_BIG);
    // The close frame goes out before the connection task finishes and counts the close, so
    // the counter may lag the frame by a moment: poll it, bounded.
    let mut counted = serde_json::Value::Null;
    for _ in 0..50 {
        let (_, _, body) = http_raw(&server.addr(), "GET", "/health", &[]).await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        counted = json["server"]["closed_too_big"].clone();
        if counted == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, 1, "the 1009 close is counted in /health");
}

#[tokio::test]
async fn connection_limit_answers_503() {
    let server = ServerProc::start(&["--max-connections", "2"]);
    let mut a = ws(&server.ws_url("/")).await;
    let _b = ws(&server.ws_url("/")).await;
    let (status, _, _) = http_raw(&server.addr(), "GET", "/", &upgrade_headers()).await;
    assert_eq!(status, 503);
    // Plain HTTP is not a WebSocket connection and is still served.
    let (status, _, _) = http_raw(&server.addr(), "GET", "/health", &[]).await;
    assert_eq!(status, 200);
    // Freeing a slot lets the next client in.
    a.writer.close(CloseCode::NORMAL, "bye").await.unwrap();
    while a.reader.next().await.is_some() {}
    let mut admitted = false;
    for _ in 0..100 {
        let (status, _, _) = http_raw(&server.addr(), "GET", "/", &upgrade_headers()).await;
        if status == 101 {
            admitted = true;
            break;
        }
        assert_eq!(status, 503);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "a slot was freed by the close");
    let (_, _, body) = http_raw(&server.addr(), "GET", "/health", &[]).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["server"]["rejected_max_connections"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn full_room_closes_with_1008() {
    let server = ServerProc::start(&["--max-room-members", "1"]);
    let mut first = ws(&server.ws_url("/small")).await;
    let mut second = ws(&server.ws_url("/small")).await;
    let frame = second.expect_close().await.expect("close frame");
    assert_eq!(frame.code, CloseCode::POLICY);
    assert_eq!(&frame.reason[..], b"room full");
    // Another room is unaffected, and so is the member.
    let mut elsewhere = ws(&server.ws_url("/other")).await;
    elsewhere.send_text("ok").await;
    assert_eq!(elsewhere.next_text().await, "ok");
    first.send_text("still here").await;
    assert_eq!(first.next_text().await, "still here");
}

#[tokio::test]
async fn idle_and_slow_handshakes_are_dropped() {
    let server = ServerProc::start(&["--handshake-timeout", "1"]);
    // Connects and sends nothing.
    let mut idle = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    // Sends part of a request head and then stalls.
    let mut slow = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut idle, WAIT).await;
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let got = read_until_closed(&mut slow, WAIT).await;
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // The server still works, and counted both.
    let (status, _, body) = http_raw(&server.addr(), "GET", "/health", &[]).await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["server"]["handshake_timeouts"], 2, "{json}");
}

#[tokio::test]
async fn origins_are_checked_before_the_upgrade() {
    let server = ServerProc::start(&[
        "--allowed-origins",
        "https://chat.example.com,https://*.example.org",
    ]);
    let addr = server.addr();
    let with_origin = |o: &'static str| {
        let mut h = upgrade_headers();
        h.push(o);
        h
    };
    let (status, _, _) = http_raw(
        &addr,
        "GET",
        "/r",
        &with_origin("Origin: https://evil.example.net"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = http_raw(
        &addr,
        "GET",
        "/r",
        &with_origin("Origin: https://chat.example.com"),
    )
    .await;
    assert_eq!(status, 101);
    let (status, _, _) = http_raw(
        &addr,
        "GET",
        "/r",
        &with_origin("Origin: https://a.example.org"),
    )
    .await;
    assert_eq!(status, 101);
    let (status, _, _) = http_raw(
        &addr,
        "GET",
        "/r",
        &with_origin("Origin: https://example.org"),
    )
    .await;
    assert_eq!(status, 403);
    // Non-browser clients send no Origin and are allowed.
    let (status, _, _) = http_raw(&addr, "GET", "/r", &upgrade_headers()).await;
    assert_eq!(status, 101);
    let (_, _, body) = http_raw(&addr, "GET", "/health", &[]).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["server"]["rejected_origin"], 2);
}

#[tokio::test]
async fn slow_consumer_is_cut_off_while_healthy_members_get_everything() {
    let server = ServerProc::start(&[
        "--outbox-max-bytes",
        "65536",
        "--deflate",
        "false",
        "--ping-timeout",
        "3",
    ]);
    // The slow member completes the handshake, then never reads. A tiny receive buffer makes
    // the server's socket fill up quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let (mut slow, _) = raw_ws(&server.addr(), "/flood", Some(socket)).await;

    let mut healthy = ws(&server.ws_url("/flood")).await;
    // Flood with flow control on the healthy side: at most two messages in flight, so only a
    // member that does not read at all can fall behind.
    const N: usize = 1500;
    let payload = "z".repeat(16 * 1024);
    let mut received = 0;
    for i in 0..N {
        healthy.send_text(&format!("{i:06}{payload}")).await;
        if i >= 1 {
            let got = healthy.next_text().await;
            assert_eq!(
                &got[..6],
                format!("{received:06}"),
                "healthy member sees every message in order"
            );
            received += 1;
        }
    }
    while received < N {
        let got = healthy.next_text().await;
        assert_eq!(&got[..6], format!("{received:06}"));
        received += 1;
    }

    let (_, _, body) = http_raw(&server.addr(), "GET", "/health", &[]).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["server"]["closed_slow_consumer"].as_u64().unwrap() >= 1
            || json["hub"]["slow_consumer_closes"].as_u64().unwrap() >= 1,
        "{json}"
    );
    // Draining the slow member's socket now ends in EOF/reset: the server let go of it.
    let got = read_until_closed(&mut slow, WAIT).await;
    assert!(
        got.len() < N * payload.len(),
        "the slow member did not get the whole flood"
    );
    // And the healthy member is still connected.
    healthy.writer.send(Message::text("after")).await.unwrap();
    assert_eq!(healthy.next_text().await, "after");
}
