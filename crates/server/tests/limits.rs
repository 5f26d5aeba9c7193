//! Abuse limits against a server started in this process: a raw client flooding its room is
//! throttled, then closed with 1008 "message rate exceeded" while the other members carry
//! on; `max_connections_per_ip` refuses the (N+1)th connection from one source address
//! (the client socket is bound to 127.0.0.2) but not one from another (127.0.0.3);
//! `connection_rate_per_ip` answers 429; `trusted_proxy_header` is honoured when set.
use std::net::SocketAddr;
use std::time::Duration;

use support::start;
use switchboard_server::ServerConfig;
use switchboard_websocket::client::{connect, ClientOptions};
use switchboard_websocket::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod support;

async fn next_text(
    ws: &mut switchboard_websocket::stream::WebSocket<
        impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    >,
) -> Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message in time")
        .expect("open")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_throttled_then_closed_while_its_room_carries_on() {
    let (addr, _stop) = start(ServerConfig {
        client_message_rate: Some(50.0),
        client_message_burst: Some(20),
        ..ServerConfig::default()
    })
    .await;
    let url = format!("ws://{addr}/flood?echo=false");
    let (mut listener, _) = connect(&url, ClientOptions::default()).await.unwrap();
    let (mut polite, _) = connect(&url, ClientOptions::default()).await.unwrap();
    let (flooder, _) = connect(&url, ClientOptions::default()).await.unwrap();
    // Everyone is in the room once a message goes round.
    polite.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_text(&mut listener).await.as_text(), Some("hello"));

    let (mut reader, mut writer) = flooder.split();
    let closed = tokio::spawn(async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), reader.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame,
                Ok(Some(Ok(_))) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    });
    let mut sent = 0u32;
    while !closed.is_finished() && sent < 100_000 {
        for _ in 0..50 {
            if writer.feed(Message::text("flood")).is_err() {
                break;
            }
            sent += 1;
        }
        if writer.flush().await.is_err() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let frame = closed.await.unwrap().expect("a close code");
    assert_eq!(frame.code.0, 1008);
    assert_eq!(frame.reason, "message rate exceeded");

    // The room kept working: the listener got at most a burst's worth of the flood (plus
    // what refilled meanwhile), then a polite message.
    polite.send(Message::text("still here")).await.unwrap();
    let mut floods = 0;
    loop {
        let m = next_text(&mut listener).await;
        match m.as_text() {
            Some("flood") => floods += 1,
            Some("still here") => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(floods >= 20, "the burst passed: {floods}");
    assert!(floods < sent, "the flood was throttled: {floods} of {sent}");

    let (_, body) = get(addr, "/metrics").await;
    assert!(
        body.contains(
            "switchboard_connections_closed_total{protocol=\"raw\",reason=\"flood\"} 1\n"
        ),
        "{body}"
    );
    assert!(!body.contains("switchboard_flood_dropped_messages_total 0\n"));
}

/// An upgrade request on a socket bound to `source`; the status code of the answer, the
/// answer's head and the socket (kept open so the connection stays counted).
async fn upgrade_from(
    addr: SocketAddr,
    source: &str,
    forwarded: Option<&str>,
) -> (u16, String, TcpStream) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let extra = forwarded
        .map(|f| format!("X-Forwarded-For: {f}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /iproom HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "connection closed mid-answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head, tcp)
}

async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_cap_refuses_one_address_but_not_another() {
    const N: usize = 3;
    let (addr, _stop) = start(ServerConfig {
        max_connections_per_ip: Some(N),
        ..ServerConfig::default()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..N {
        let (status, head, tcp) = upgrade_from(addr, "127.0.0.2", None).await;
        assert_eq!(status, 101, "{head}");
        open.push(tcp);
    }
    let (status, head, _) = upgrade_from(addr, "127.0.0.2", None).await;
    assert_eq!(status, 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );
    let (status, head, other) = upgrade_from(addr, "127.0.0.3", None).await;
    assert_eq!(status, 101, "{head}");
    open.push(other);

    // A slot is given back when its connection ends.
    drop(open.remove(0));
    let mut again = 0;
    for _ in 0..100 {
        let (status, _, tcp) = upgrade_from(addr, "127.0.0.2", None).await;
        if status == 101 {
            again = 101;
            open.push(tcp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again, 101);

    let (_, body) = get(addr, "/metrics").await;
    assert!(
        body.contains("switchboard_handshake_refusals_total{reason=\"ip_connections\"} "),
        "{body}"
    );
    assert!(!body.contains("switchboard_handshake_refusals_total{reason=\"ip_connections\"} 0\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_rate_answers_429_and_a_trusted_proxy_header_names_the_client() {
    let (addr, _stop) = start(ServerConfig {
        connection_rate_per_ip: Some(1.0),
        trusted_proxy_header: Some("X-Forwarded-For".into()),
        ..ServerConfig::default()
    })
    .await;
    let (status, head, _a) = upgrade_from(addr, "127.0.0.1", Some("10.1.1.1")).await;
    assert_eq!(status, 101, "{head}");
    let (status, head, _) = upgrade_from(addr, "127.0.0.1", Some("10.9.9.9, 10.1.1.1")).await;
    assert_eq!(status, 429, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    // Another client behind the same proxy is not affected.
    let (status, head, _b) = upgrade_from(addr, "127.0.0.1", Some("10.2.2.2")).await;
    assert_eq!(status, 101, "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_trusted_proxy_header_the_forwarded_address_is_ignored() {
    let (addr, _stop) = start(ServerConfig {
        max_connections_per_ip: Some(1),
        ..ServerConfig::default()
    })
    .await;
    let (status, _, _a) = upgrade_from(addr, "127.0.0.4", Some("10.1.1.1")).await;
    assert_eq!(status, 101);
    let (status, head, _) = upgrade_from(addr, "127.0.0.4", Some("10.2.2.2")).await;
    assert_eq!(status, 503, "{head}");
}
