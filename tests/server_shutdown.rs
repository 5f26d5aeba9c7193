//! Graceful shutdown of the real binary: SIGTERM → every client gets close 1001, exit 0.
mod server_support;

use std::time::Duration;

use server_support::*;
use switchboard_websocket::CloseCode;

#[tokio::test]
async fn sigterm_closes_every_client_with_1001_and_exits_zero() {
    let mut server = ServerProc::start(&[]);
    let mut clients = Vec::new();
    for path in ["/", "/a", "/a", "/b?echo=false"] {
        clients.push(ws(&server.ws_url(path)).await);
    }
    // Everyone is connected (a round trip in room a proves the server has them).
    clients[1].send_text("ready").await;
    assert_eq!(clients[2].next_text().await, "ready");
    assert_eq!(clients[1].next_text().await, "ready");

    server.terminate();
    for c in &mut clients {
        let frame = c.expect_close().await.expect("close frame with a status");
        assert_eq!(frame.code, CloseCode::GOING_AWAY);
    }
    let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the server exits after shutdown");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn sigterm_with_no_clients_exits_zero() {
    let mut server = ServerProc::start(&[]);
    let (status, _, _) = http_raw(&server.addr(), "GET", "/health", &[]).await;
    assert_eq!(status, 200);
    server.terminate();
    let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the server exits");
    assert!(status.success(), "exit status {status:?}");
}
