//! Interop with Python's `websockets` (a third-party implementation): its client against our
//! server and our client against its server, with permessage-deflate on and off.
mod interop_support;

use std::time::Duration;

use bytes::Bytes;
use interop_support::*;
use switchboard_websocket::client::{connect, ClientOptions};
use switchboard_websocket::upgrade::UpgradeOptions;
use switchboard_websocket::{CloseCode, Message};

/// Checks in py_client.py.
const PY_CLIENT_CHECKS: usize = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_against_our_server() {
    let py = match python_ready() {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED python interop: {why}");
            return;
        }
    };
    let addr = start_echo_server(UpgradeOptions::default()).await;
    let url = format!("ws://{addr}/");
    for mode in ["off", "on"] {
        println!("--- websockets client, deflate {mode}");
        let (ok, out) =
            run_script(&py, &["py_client.py", &url, mode], Duration::from_secs(300)).await;
        assert_eq!(summary(&out), (PY_CLIENT_CHECKS, 0), "mode {mode}");
        assert!(ok, "python client exited with failure in mode {mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_python_server() {
    let py = match python_ready() {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED python interop: {why}");
            return;
        }
    };
    for mode in ["off", "on"] {
        println!("--- websockets server, deflate {mode}");
        let mut server = PeerServer::start(&py, &["py_server.py", mode]).await;
        let url = format!("ws://127.0.0.1:{}/", server.port);
        let mut options = ClientOptions::default();
        if mode == "off" {
            options.deflate = None;
        }
        let (mut ws, resp) = connect(&url, options).await.unwrap();
        assert_eq!(resp.deflate.is_some(), mode == "on");

        let big: Bytes = (0..16u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<_>>()
            .into();
        for m in [
            Message::text("hello switchboard żółć € 𝄞 日本語"),
            Message::Binary((0..=255u8).cycle().take(2048).collect::<Vec<_>>().into()),
            Message::Binary(big),
        ] {
            ws.send(m.clone()).await.unwrap();
            let got = next_data(&mut ws).await;
            if got != m {
                let (a, b) = match (&got, &m) {
                    (
                        Message::Text(a) | Message::Binary(a),
                        Message::Text(b) | Message::Binary(b),
                    ) => (a.clone(), b.clone()),
                    _ => panic!("echo type differs in mode {mode}: {got:?}"),
                };
                let first = a.iter().zip(b.iter()).position(|(x, y)| x != y);
                panic!(
                    "echo differs in mode {mode}: len {} vs {}, first diff at {first:?}",
                    a.len(),
                    b.len()
                );
            }
        }
        ws.send(Message::text("cmd:fragmented")).await.unwrap();
        assert_eq!(next_data(&mut ws).await.as_text(), Some("frag-ment-ed"));
        let reply = ws.close(CloseCode(4000), "bye").await.unwrap();
        assert_eq!(reply.map(|f| f.code), Some(CloseCode(4000)));
        server.expect_line(|l| l == "CLOSE 4000 bye").await;
        server.stop().await;
    }
}
