//! Draining on shutdown (`drain_timeout`): `/health` answers 503 "draining" at once, new
//! upgrades are refused, and a few hundred raw connections are told to reconnect (close
//! 1012 "service restart") at moments spread over the window rather than all at once; the
//! server returns when they are gone.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_server::{Server, ServerConfig};
use switchboard_websocket::client::{connect, ClientOptions};
use switchboard_websocket::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 300;
const WINDOW: Duration = Duration::from_secs(3);

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.unwrap();
    String::from_utf8(buf).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_are_spread_over_the_drain_window() {
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        deflate: false,
        drain_timeout: WINDOW,
        ..ServerConfig::default()
    };
    let bound = Server::builder()
        .config(config)
        .build()
        .unwrap()
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addr();
    let hub = bound.hub().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.run_until(async move {
        let _ = rx.await;
    }));

    let url = format!("ws://{addr}/drain");
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let (ws, _) = connect(&url, ClientOptions::default()).await.unwrap();
        clients.push(ws);
    }
    while hub.stats().connections < CONNECTIONS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let health = get(addr, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let started = Instant::now();
    let (closes_tx, mut closes_rx) = tokio::sync::mpsc::unbounded_channel();
    for mut ws in clients {
        let closes_tx = closes_tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Close(frame) = msg {
                    let code = frame.map(|f| f.code.0);
                    let _ = closes_tx.send((started.elapsed(), code));
                    return;
                }
            }
            let _ = closes_tx.send((started.elapsed(), None));
        });
    }
    drop(closes_tx);
    tx.send(()).unwrap();

    // At once: /health says draining and upgrades are refused.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let health = get(addr, "/health").await;
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains("\"status\":\"draining\""), "{health}");
    let refused = connect(&url, ClientOptions::default()).await;
    assert!(refused.is_err(), "an upgrade while draining was accepted");

    let mut at = Vec::new();
    while let Some((when, code)) = closes_rx.recv().await {
        assert_eq!(code, Some(1012), "close code at {when:?}");
        at.push(when);
    }
    assert_eq!(at.len(), CONNECTIONS);
    at.sort();
    let (first, last) = (at[0], at[CONNECTIONS - 1]);
    assert!(
        last <= WINDOW + Duration::from_secs(1),
        "last close at {last:?}"
    );
    assert!(
        last - first >= WINDOW / 2,
        "closes not spread: {first:?}..{last:?}"
    );
    // No tenth of the window holds more than a quarter of the closes.
    let tenth = WINDOW / 10;
    for w in 0..10u32 {
        let (lo, hi) = (tenth * w, tenth * (w + 1));
        let n = at.iter().filter(|t| **t >= lo && **t < hi).count();
        assert!(n <= CONNECTIONS / 4, "{n} closes in {lo:?}..{hi:?}");
    }
    tokio::time::timeout(WINDOW + Duration::from_secs(5), server)
        .await
        .expect("the server stopped after the drain")
        .unwrap()
        .unwrap();
}
