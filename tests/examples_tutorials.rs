//! Runs each tutorial example in `examples/` and checks what it does with our own client:
//! echo, broadcast to all, broadcast to others, text/binary echo, HTTP + WebSocket on one
//! port, and the client example against the echo example.
mod examples_support;

use std::io::{Read, Write};
use std::net::TcpStream;

use examples_support::{example, run, start, Running, LIMIT};
use switchboard::websocket::client::{connect, ClientOptions, MaybeTlsStream};
use switchboard::websocket::stream::WebSocket;
use switchboard::websocket::{CloseCode, Error, Message};
use tokio::time::timeout;

type Ws = WebSocket<MaybeTlsStream>;

fn start_example(name: &str) -> Running {
    let mut cmd = example(name);
    cmd.args(["--port", "0"]);
    start(cmd)
}

async fn open(server: &Running, path: &str) -> Ws {
    let url = server.ws_url(path);
    timeout(LIMIT, connect(&url, ClientOptions::default()))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
        .0
}

/// The next text or binary message (control frames skipped); panics if the connection ends.
async fn next_data(ws: &mut Ws) -> Message {
    loop {
        let msg = timeout(LIMIT, ws.next())
            .await
            .expect("no message in time")
            .expect("connection ended")
            .expect("read error");
        match msg {
            Message::Text(_) | Message::Binary(_) => return msg,
            Message::Close(f) => panic!("closed by the server: {f:?}"),
            _ => {}
        }
    }
}

async fn send(ws: &mut Ws, msg: Message) {
    timeout(LIMIT, ws.send(msg))
        .await
        .expect("send timed out")
        .expect("send");
}

async fn close(mut ws: Ws) {
    let reply = timeout(LIMIT, ws.close(CloseCode::NORMAL, ""))
        .await
        .expect("close timed out")
        .expect("close");
    assert_eq!(reply.map(|f| f.code), Some(CloseCode::NORMAL));
}

#[tokio::test]
async fn echo_server_echoes_text_and_binary() {
    let server = start_example("echo_server");
    let mut ws = open(&server, "/").await;
    send(&mut ws, Message::text("hello")).await;
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
    let bytes: Vec<u8> = (0..=255u8).collect();
    send(&mut ws, Message::binary(bytes.clone())).await;
    assert_eq!(next_data(&mut ws).await, Message::binary(bytes));
    // A large message crosses several reads and (compressed) frames unchanged.
    let big = "x".repeat(200_000) + "end";
    send(&mut ws, Message::text(big.clone())).await;
    assert_eq!(next_data(&mut ws).await, Message::text(big));
    close(ws).await;
}

#[tokio::test]
async fn broadcast_all_reaches_every_client_including_the_sender() {
    let server = start_example("broadcast_all");
    let mut a = open(&server, "/").await;
    let mut b = open(&server, "/").await;
    let mut c = open(&server, "/").await;

    send(&mut a, Message::text("from a")).await;
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(next_data(ws).await, Message::text("from a"));
    }
    // Binary stays binary.
    send(&mut b, Message::binary(vec![0u8, 1, 2, 255])).await;
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(next_data(ws).await, Message::binary(vec![0u8, 1, 2, 255]));
    }
    // A client that left no longer counts: the others still get everything.
    close(c).await;
    send(&mut a, Message::text("after c left")).await;
    assert_eq!(next_data(&mut a).await, Message::text("after c left"));
    assert_eq!(next_data(&mut b).await, Message::text("after c left"));
    close(a).await;
    close(b).await;
}

#[tokio::test]
async fn broadcast_others_skips_the_sender() {
    let server = start_example("broadcast_others");
    let mut a = open(&server, "/").await;
    let mut b = open(&server, "/").await;
    let mut c = open(&server, "/").await;

    send(&mut a, Message::text("from a")).await;
    assert_eq!(next_data(&mut b).await, Message::text("from a"));
    assert_eq!(next_data(&mut c).await, Message::text("from a"));
    // Publications in the room are delivered in order, so had A received its own message it
    // would come before B's. A's first message being B's proves it got nothing of its own.
    send(&mut b, Message::binary(vec![7u8, 8, 9])).await;
    assert_eq!(next_data(&mut a).await, Message::binary(vec![7u8, 8, 9]));
    assert_eq!(next_data(&mut c).await, Message::binary(vec![7u8, 8, 9]));
    // Likewise B must not see its own binary before C's next message.
    send(&mut c, Message::text("from c")).await;
    assert_eq!(next_data(&mut a).await, Message::text("from c"));
    assert_eq!(next_data(&mut b).await, Message::text("from c"));
    close(a).await;
    close(b).await;
    close(c).await;
}

#[tokio::test]
async fn text_binary_echo_prefixes_text_and_preserves_binary() {
    let server = start_example("text_binary_echo");
    let mut ws = open(&server, "/").await;
    send(&mut ws, Message::text("hi")).await;
    assert_eq!(next_data(&mut ws).await, Message::text("You sent -> hi"));
    send(&mut ws, Message::text("héllo ✓")).await;
    assert_eq!(
        next_data(&mut ws).await,
        Message::text("You sent -> héllo ✓")
    );
    let bytes = vec![0xffu8, 0x00, 0xfe, 0x80, 0x41];
    send(&mut ws, Message::binary(bytes.clone())).await;
    assert_eq!(next_data(&mut ws).await, Message::binary(bytes));
    close(ws).await;
}

/// A plain HTTP/1.1 GET; returns the whole response (the connection is closed by us asking).
fn http_get(port: u16, path: &str) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).expect("read response");
    resp
}

#[tokio::test]
async fn http_and_ws_share_one_port() {
    let server = start_example("http_and_ws");
    let page = http_get(server.port, "/");
    let (head, body) = page.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(body.contains("<h1>Hello"), "{body}");
    assert!(body.contains("/ws"), "the page connects to /ws: {body}");

    let missing = http_get(server.port, "/nope");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

    let mut ws = open(&server, "/ws").await;
    send(&mut ws, Message::text("over ws")).await;
    assert_eq!(next_data(&mut ws).await, Message::text("over ws"));
    send(&mut ws, Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(next_data(&mut ws).await, Message::binary(vec![1u8, 2, 3]));
    close(ws).await;

    // Upgrades are only served on /ws.
    let url = server.ws_url("/elsewhere");
    let err = timeout(LIMIT, connect(&url, ClientOptions::default()))
        .await
        .expect("connect timed out")
        .expect_err("upgrade outside /ws must fail");
    assert!(
        matches!(&err, Error::Handshake(m) if m.contains("404")),
        "{err}"
    );
}

#[tokio::test]
async fn client_example_talks_to_echo_example() {
    let server = start_example("echo_server");
    let mut cmd = example("client");
    cmd.args(["--port", &server.port.to_string()]);
    let out = run(cmd);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines, ["received: Hello", "closed 1000"], "{out:?}");

    // The URL form works too.
    let mut cmd = example("client");
    cmd.arg(server.ws_url("/any/path"));
    let out = run(cmd);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("received: Hello"), "{out:?}");
}

#[tokio::test]
async fn client_example_fails_without_a_server() {
    // Bind and release a port so nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = example("client");
    cmd.args(["--port", &port.to_string()]);
    let out = run(cmd);
    assert!(!out.status.success(), "{out:?}");
    assert!(!out.stdout.contains("received"), "{out:?}");
}
