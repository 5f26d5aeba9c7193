//! A Centrifugo client that stops reading while its channel is flooded, against a server
//! started in this process: it is let go within the stall limit (or as a slow consumer as soon
//! as its outbox overflows), counted as `closed_slow_consumer`, and what the server queued for
//! it stays bounded.
use std::time::{Duration, Instant};

use switchboard_core::{ChannelOptions, Namespaces, Payload};
use switchboard_server::config::SlowConsumer;
use switchboard_server::{Hub, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The stall limit (`ping_timeout`) of the servers below.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The outbox bound of the servers below.
const OUTBOX_MAX_BYTES: usize = 256 * 1024;
/// How long the runtime may spend on a close frame and on the peer's reply to it.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Size of each flooded message.
const PAD: usize = 16 * 1024;

struct Running {
    addr: std::net::SocketAddr,
    hub: Hub,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(policy: SlowConsumer) -> Running {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        allow_anonymous: true,
        deflate: false,
        ping_timeout: PING_TIMEOUT,
        outbox_max_bytes: OUTBOX_MAX_BYTES,
        slow_consumer: policy,
        ..ServerConfig::default()
    };
    config.channel = Namespaces::new(ChannelOptions {
        allow_subscribe_for_anonymous: true,
        ..ChannelOptions::default()
    });
    let server = Server::builder().config(config).build().unwrap();
    let bound = server.bind().await.unwrap();
    let addr = bound.local_addr();
    let hub = bound.hub().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.run_until(async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        hub,
        stop: Some(tx),
    }
}

/// One masked client text frame.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81u8];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads from `tcp` into `seen` until `needle` shows up.
async fn read_until(tcp: &mut TcpStream, seen: &mut Vec<u8>, needle: &str) {
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(seen).contains(needle) {
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before {needle:?}");
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} in time"));
}

/// A Centrifugo client by hand: the WebSocket handshake, `connect`, `subscribe` to
/// `channel`; a small receive buffer so the server's side fills quickly once it stops
/// reading.
async fn stalled_subscriber(addr: std::net::SocketAddr, channel: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let req = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    read_until(&mut tcp, &mut seen, "\r\n\r\n").await;
    assert!(
        seen.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    tcp.write_all(&masked_text_frame(br#"{"id":1,"connect":{}}"#))
        .await
        .unwrap();
    let sub = format!(r#"{{"id":2,"subscribe":{{"channel":"{channel}"}}}}"#);
    tcp.write_all(&masked_text_frame(sub.as_bytes()))
        .await
        .unwrap();
    read_until(&mut tcp, &mut seen, r#""id":2"#).await;
    assert!(!String::from_utf8_lossy(&seen).contains("error"));
    tcp
}

/// `GET /health` by hand.
async fn health(addr: std::net::SocketAddr) -> serde_json::Value {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tcp.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8_lossy(&all);
    let body = &text[text.find("\r\n\r\n").expect("a response head") + 4..];
    // The body may be chunked: the JSON object is between the first `{` and the last `}`.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    serde_json::from_str(json).unwrap()
}

/// This process's resident memory.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

async fn stalled_client_is_let_go(policy: SlowConsumer) {
    let server = start(policy).await;
    let mut slow = stalled_subscriber(server.addr, "flood").await;
    assert_eq!(server.hub.connection_count(), 1);
    let rss_before = rss_bytes();

    // The client reads nothing from here on, while its channel is flooded (about 25 MiB/s,
    // far more than any buffer holds) until it is gone.
    let started = Instant::now();
    let hub = server.hub.clone();
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flood = tokio::spawn({
        let flooding = std::sync::Arc::clone(&flooding);
        async move {
            let pad = "z".repeat(PAD);
            let mut n = 0u64;
            while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..16 {
                    let text = format!(r#"{{"n":{n},"pad":"{pad}"}}"#);
                    hub.publish("flood", Payload::text(text), Default::default());
                    n += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        }
    });
    // Let go within the stall limit, plus the bounded close (frame and reply) and a margin.
    let limit = PING_TIMEOUT + 2 * CLOSE_LINGER + Duration::from_secs(2);
    loop {
        let h = health(server.addr).await;
        if h["connections"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < limit,
            "the stalled client is still connected after {:?}: {h}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.await.unwrap();
    let h = health(server.addr).await;
    assert!(
        h["server"]["closed_slow_consumer"].as_u64().unwrap() >= 1,
        "counted as a slow consumer: {h}"
    );
    assert_eq!(h["server"]["closed_panic"], 0, "{h}");
    assert_eq!(h["connections"], 0, "{h}");
    // What was queued for it was bounded (outbox 256 KiB, write buffer 4 MiB): the 24 MiB
    // flood did not pile up.
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 32 << 20, "RSS grew by {grown} bytes");
    // Its socket ends (EOF or reset) once what the kernel buffered is read.
    let mut got = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match slow.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await
    .expect("the socket ends");
    assert!(got < sent as usize * PAD, "it did not get the whole flood");
    eprintln!(
        "{policy:?}: let go after {took:?} ({sent} messages published), RSS grew by {grown} bytes"
    );
}

/// Under the default policy the hub closes the outbox once it overflows; the write that waits
/// for the stalled client gives up on that verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_centrifugo_client_is_closed_as_a_slow_consumer() {
    stalled_client_is_let_go(SlowConsumer::Close).await;
}

/// With `drop-oldest` the outbox never closes: the stall limit alone ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_centrifugo_client_is_dropped_after_the_stall_limit() {
    stalled_client_is_let_go(SlowConsumer::DropOldest).await;
}
