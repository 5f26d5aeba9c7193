//! Heartbeat against the real binary: a peer that completes the handshake and then never
//! answers pings is reaped; a peer that answers stays.
mod server_support;

use std::time::Duration;

use server_support::*;
use switchboard_websocket::Message;

#[tokio::test]
async fn silent_peer_is_reaped() {
    let server = ServerProc::start(&["--ping-interval", "1", "--ping-timeout", "1"]);
    let (mut tcp, early) = raw_ws(&server.addr(), "/hb", None).await;
    // Never reply to anything: read whatever comes until the server hangs up.
    let mut got = early;
    got.extend(read_until_closed(&mut tcp, WAIT).await);
    // The server pinged (opcode 0x9 with FIN) before giving up.
    assert!(
        got.first() == Some(&0x89),
        "expected a ping frame first, got {:02x?}",
        &got[..got.len().min(16)]
    );
    let (_, _, body) = http_raw(&server.addr(), "GET", "/health", &[]).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["server"]["closed_heartbeat"], 1, "{json}");
    assert_eq!(json["connections"], 0);
}

#[tokio::test]
async fn answering_peer_stays_connected() {
    let server = ServerProc::start(&["--ping-interval", "1", "--ping-timeout", "1"]);
    let mut c = ws(&server.ws_url("/hb")).await;
    // Our client answers pings automatically while we wait for several rounds.
    let mut pings = 0;
    while pings < 3 {
        match tokio::time::timeout(WAIT, c.reader.next())
            .await
            .expect("a ping in time")
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Give the last pong time to arrive, then check the connection still works.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send_text("still alive").await;
    assert_eq!(c.next_text().await, "still alive");
    let (_, _, body) = http_raw(&server.addr(), "GET", "/health", &[]).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["server"]["closed_heartbeat"], 0, "{json}");
}
