//! Interop with Node's `ws` (a third-party implementation): its client against our server,
//! and our client against its server, with permessage-deflate off, default, and
//! no-context-takeover with 10-bit windows.
mod interop_support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use interop_support::*;
use switchboard_websocket::client::{connect, ClientOptions};
use switchboard_websocket::extensions::DeflatePolicy;
use switchboard_websocket::upgrade::UpgradeOptions;
use switchboard_websocket::{CloseCode, Error, Message};

const MODES: [&str; 3] = ["off", "default", "nct10"];
/// Checks in node_client.mjs.
const NODE_CLIENT_CHECKS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ws_client_against_our_server() {
    if let Err(why) = node_ready() {
        println!("SKIPPED node interop: {why}");
        return;
    }
    let addr = start_echo_server(UpgradeOptions::default()).await;
    let url = format!("ws://{addr}/echo");
    for mode in MODES {
        println!("--- ws client, deflate {mode}");
        let (ok, out) = run_script(
            Path::new("node"),
            &["node_client.mjs", &url, mode],
            Duration::from_secs(180),
        )
        .await;
        assert_eq!(summary(&out), (NODE_CLIENT_CHECKS, 0), "mode {mode}");
        assert!(ok, "node client exited with failure in mode {mode}");
    }
}

fn big_payload() -> Bytes {
    // Half pseudo-random (incompressible), half repetitive text.
    let size = 16 << 20;
    let mut v = Vec::with_capacity(size);
    let mut x: u32 = 0x9e37_79b9;
    while v.len() < size / 2 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    let text = b"switchboard interop line ";
    while v.len() < size {
        v.push(text[v.len() % text.len()]);
    }
    Bytes::from(v)
}

fn client_options(mode: &str) -> ClientOptions {
    let deflate = match mode {
        "off" => None,
        "default" => Some(DeflatePolicy {
            server_no_context_takeover: false,
            ..DeflatePolicy::default()
        }),
        _ => Some(DeflatePolicy {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 10,
            client_max_window_bits: 10,
            enabled: true,
        }),
    };
    ClientOptions {
        deflate,
        ..ClientOptions::default()
    }
}

/// Our client against a peer echo server that also understands `cmd:fragmented` and
/// `cmd:invalid-utf8`, and prints `CLOSE <code> <reason>` for every closed connection.
pub async fn client_matrix(server: &mut PeerServer, mode: &str) {
    let url = format!("ws://127.0.0.1:{}/", server.port);
    let (mut ws, resp) = connect(&url, client_options(mode)).await.unwrap();
    assert_eq!(
        resp.deflate.is_some(),
        mode != "off",
        "negotiation in {mode}"
    );
    if mode == "nct10" {
        let p = resp.deflate.unwrap();
        assert!(p.client_no_context_takeover && p.server_no_context_takeover);
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (10, 10)
        );
    }

    let cases = [
        Message::text("hello switchboard"),
        Message::text("żółć € 𝄞 日本語 ✓ ".repeat(100)),
        Message::Binary((0..=255u8).collect::<Vec<_>>().into()),
        Message::Binary(big_payload()),
    ];
    for m in cases {
        ws.send(m.clone()).await.unwrap();
        let got = next_data(&mut ws).await;
        assert!(got == m, "echo differs in mode {mode}");
    }

    // Pipelined small messages, batched by feed + one flush.
    for i in 0..1000 {
        ws.feed(Message::text(format!("m{i}"))).unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..1000 {
        let got = next_data(&mut ws).await;
        assert_eq!(got.as_text(), Some(format!("m{i}").as_str()));
    }

    // A message the peer sends in three fragments.
    ws.send(Message::text("cmd:fragmented")).await.unwrap();
    let got = next_data(&mut ws).await;
    assert_eq!(got.as_text(), Some("frag-ment-ed"));

    // Ping: the pong shows up as a message and in the tracker.
    ws.ping("are you there").await.unwrap();
    assert!(ws.tracker().awaiting_pong());
    let got = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Ping(_) => continue,
            m => break m,
        }
    };
    assert_eq!(got, Message::Pong(Bytes::from_static(b"are you there")));
    assert!(!ws.tracker().awaiting_pong());
    assert!(ws.tracker().last_pong().is_some());

    // We close with 4000 "bye": the peer echoes the code and reports it.
    let reply = ws.close(CloseCode(4000), "bye").await.unwrap();
    assert_eq!(reply.map(|f| f.code), Some(CloseCode(4000)));
    server
        .expect_line(|l| l.starts_with("CLOSE 4000 bye"))
        .await;

    // The peer sends invalid UTF-8: we fail with 1007 and it sees 1007.
    let (mut ws, _) = connect(&url, client_options(mode)).await.unwrap();
    ws.send(Message::text("cmd:invalid-utf8")).await.unwrap();
    match ws.next().await {
        Some(Err(Error::InvalidUtf8)) => {}
        other => panic!("expected InvalidUtf8, got {other:?}"),
    }
    assert!(ws.next().await.is_none());
    server.expect_line(|l| l.starts_with("CLOSE 1007")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_node_ws_server() {
    if let Err(why) = node_ready() {
        println!("SKIPPED node interop: {why}");
        return;
    }
    for mode in MODES {
        println!("--- ws server, deflate {mode}");
        let mut server = PeerServer::start(Path::new("node"), &["node_server.mjs", mode]).await;
        client_matrix(&mut server, mode).await;
        server.stop().await;
    }
}
