//! `GET /metrics` after a scripted load against a server started in this process: N raw
//! clients in one room, M messages from one of them; the per-protocol traffic, the hub's
//! publications and deliveries and the closes by reason must be what the load implies.
use std::collections::HashMap;
use std::time::Duration;

use switchboard_server::{Server, ServerConfig};
use switchboard_websocket::client::{connect, ClientOptions};
use switchboard_websocket::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::start;

const N: usize = 4;
const M: usize = 25;

/// `GET path` over a fresh connection: status line and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// Every sample of a scrape, by its name with labels as written (`a{b="c"}`).
async fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let (head, body) = get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse::<f64>().unwrap())
        })
        .collect()
}

fn at(s: &HashMap<String, f64>, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {:?}", s.keys()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_load() {
    let (addr, tx) = start(ServerConfig::default()).await;

    let before = scrape(addr).await;
    assert_eq!(
        at(&before, "switchboard_connections{protocol=\"raw\"}"),
        0.0
    );
    assert_eq!(
        at(
            &before,
            "switchboard_connections{protocol=\"centrifugo-json\"}"
        ),
        0.0
    );
    let url = format!("ws://{addr}/metrics_room");
    let mut clients = Vec::new();
    for _ in 0..N {
        let (ws, _) = connect(&url, ClientOptions::default()).await.unwrap();
        clients.push(ws);
    }
    // Every member is in the room once the hub counts them.
    let mut joined = false;
    for _ in 0..100 {
        if at(&scrape(addr).await, "switchboard_hub_connections") == N as f64 {
            joined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(joined);
    // Idle, every connection parks (no task of its own); what follows needs them to resume,
    // on a read (the sender) and on deliveries (everyone).
    wait_parked(addr, N).await;
    send_all(&mut clients[0], "message").await;
    receive_all(&mut clients, "message").await;
    let after = scrape(addr).await;
    let delta = |k: &str| at(&after, k) - before.get(k).copied().unwrap_or(0.0);
    let len = "message-000".len();
    assert_eq!(
        at(&after, "switchboard_connections{protocol=\"raw\"}"),
        N as f64
    );
    assert_eq!(
        delta("switchboard_connections_opened_total{protocol=\"raw\"}"),
        N as f64
    );
    assert_eq!(
        delta("switchboard_messages_received_total{protocol=\"raw\"}"),
        M as f64
    );
    assert_eq!(
        delta("switchboard_received_bytes_total{protocol=\"raw\"}"),
        (M * len) as f64
    );
    assert_eq!(
        delta("switchboard_messages_sent_total{protocol=\"raw\"}"),
        (N * M) as f64
    );
    assert_eq!(
        delta("switchboard_sent_bytes_total{protocol=\"raw\"}"),
        (N * M * len) as f64
    );
    assert_eq!(delta("switchboard_publications_total"), M as f64);
    assert_eq!(delta("switchboard_deliveries_total"), (N * M) as f64);
    assert_eq!(delta("switchboard_websocket_upgrades_total"), N as f64);
    assert!(at(&after, "switchboard_process_open_fds") >= N as f64);
    assert!(at(&after, "switchboard_process_resident_memory_bytes") > 0.0);

    for mut ws in clients {
        ws.close(switchboard_websocket::CloseCode::NORMAL, "")
            .await
            .unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    let key = "switchboard_connections_closed_total{protocol=\"raw\",reason=\"peer_closed\"}";
    let mut closed = 0.0;
    for _ in 0..100 {
        let s = scrape(addr).await;
        closed = at(&s, key);
        if closed == N as f64
            && at(&s, "switchboard_connections{protocol=\"raw\"}") == 0.0
            && at(&s, "switchboard_connections_parked") == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(closed, N as f64);
    assert_eq!(
        at(&scrape(addr).await, "switchboard_connections_parked"),
        0.0
    );
    let (head, _) = get(addr, "/metrics").await;
    assert!(head.contains("no-store"), "{head}");
    let _ = tx.send(());
}

type Client =
    switchboard_websocket::stream::WebSocket<switchboard_websocket::client::MaybeTlsStream>;

/// `sender` sends `M` messages tagged `tag`.
async fn send_all(sender: &mut Client, tag: &str) {
    for i in 0..M {
        sender
            .send(Message::text(format!("{tag}-{i:03}")))
            .await
            .unwrap();
    }
}

/// Every receiver gets the `M` messages tagged `tag`, in order.
async fn receive_all(receivers: &mut [Client], tag: &str) {
    for ws in receivers {
        for i in 0..M {
            let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(msg.as_text(), Some(format!("{tag}-{i:03}").as_str()));
        }
    }
}

/// Waits until `n` connections are parked.
async fn wait_parked(addr: std::net::SocketAddr, n: usize) {
    let mut parked = 0.0;
    for _ in 0..250 {
        parked = at(&scrape(addr).await, "switchboard_connections_parked");
        if parked == n as f64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{parked} connections parked, not {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_reach_parked_connections_without_resuming_them() {
    const SUBS: usize = 16;
    let (addr, tx) = start(ServerConfig::default()).await;
    let mut subs = Vec::new();
    for _ in 0..SUBS {
        let (ws, _) = connect(
            &format!("ws://{addr}/parked_room"),
            ClientOptions::default(),
        )
        .await
        .unwrap();
        subs.push(ws);
    }
    let (mut publisher, _) = connect(
        &format!("ws://{addr}/parked_room?echo=false"),
        ClientOptions::default(),
    )
    .await
    .unwrap();
    wait_parked(addr, SUBS + 1).await;
    let before = scrape(addr).await;
    send_all(&mut publisher, "parked").await;
    receive_all(&mut subs, "parked").await;
    let after = scrape(addr).await;
    let delta = |k: &str| at(&after, k) - at(&before, k);
    assert_eq!(
        delta("switchboard_messages_sent_total{protocol=\"raw\"}"),
        (SUBS * M) as f64
    );
    // The publisher resumed to read; the subscribers were written to where they wait (a
    // subscriber woken again and again during its turn may resume, hence not zero).
    let resumed = delta("switchboard_connections_resumed_total");
    assert!(
        (1.0..(SUBS / 2) as f64).contains(&resumed),
        "{resumed} resumes for {SUBS} subscribers"
    );
    let _ = tx.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_whose_socket_fills_still_gets_every_message() {
    // Each message is handed to the parked socket whole, which takes only part of it.
    // Larger than a loopback socket's send buffer, smaller than the WebSocket's write
    // buffer: the parked connection hands it over whole and the socket takes part of it.
    const BIG: usize = 3 << 20;
    const COUNT: usize = 3;
    let (addr, tx) = start(ServerConfig {
        outbox_max_bytes: 64 << 20,
        max_message_size: 4 << 20,
        ..ServerConfig::default()
    })
    .await;
    // A small receive buffer: the server's socket fills long before the burst is written.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (mut slow, _) = switchboard_websocket::client::handshake(
        tcp,
        &addr.to_string(),
        "/full_room",
        ClientOptions::default(),
    )
    .await
    .unwrap();
    let (mut publisher, _) = connect(
        &format!("ws://{addr}/full_room?echo=false"),
        ClientOptions::default(),
    )
    .await
    .unwrap();
    for i in 0..COUNT {
        wait_parked(addr, 2).await;
        let body = format!("{i:03}{}", "x".repeat(BIG - 3));
        publisher.send(Message::text(body)).await.unwrap();
        // Nothing else is published until it parked again: what its socket did not take
        // when it wrote while parked must still go out.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let msg = tokio::time::timeout(Duration::from_secs(5), slow.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} never came"))
            .unwrap()
            .unwrap();
        let text = msg.as_text().unwrap();
        assert_eq!(text.len(), BIG);
        assert_eq!(&text[..3], format!("{i:03}"));
    }
    let _ = tx.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_parking_off_idle_connections_keep_their_tasks() {
    let (addr, tx) = start(ServerConfig {
        park_idle: false,
        ..ServerConfig::default()
    })
    .await;
    let (mut ws, _) = connect(&format!("ws://{addr}/quiet"), ClientOptions::default())
        .await
        .unwrap();
    // Long enough for a connection that may park to do so (it parks at its first idle moment).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = scrape(addr).await;
    assert_eq!(at(&s, "switchboard_connections{protocol=\"raw\"}"), 1.0);
    assert_eq!(at(&s, "switchboard_connections_parked"), 0.0);
    ws.send(Message::text("still here")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.as_text(), Some("still here"));
    let _ = tx.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_metrics_alone_on_a_second_port() {
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerConfig::default()
    };
    let bound = Server::builder()
        .config(config)
        .build()
        .unwrap()
        .bind()
        .await
        .unwrap();
    let metrics = bound.metrics_addr().expect("a metrics port");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.run_until(async move {
        let _ = rx.await;
    }));
    let s = scrape(metrics).await;
    assert_eq!(at(&s, "switchboard_connections{protocol=\"raw\"}"), 0.0);
    let (head, _) = get(metrics, "/health").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let _ = tx.send(());
}
