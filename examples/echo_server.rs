//! Echo server: every message a client sends comes straight back to it, text as text and
//! binary as binary.
//!
//! The Rust counterpart of the first snippet of every Node.js WebSocket tutorial:
//!
//! ```js
//! const wss = new WebSocketServer({ port: 8080 });
//! wss.on('connection', (ws) => {
//!   ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
//! });
//! ```
//!
//! Run it with `cargo run --example echo_server -- --port 8080` (`--port 0` picks a free
//! port), then talk to it with `switchboard connect ws://127.0.0.1:8080`.
use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use switchboard::websocket::upgrade::{upgrade, UpgradeOptions, UpgradedWebSocket};
use switchboard::websocket::Message;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port_arg())).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        // One task per TCP connection; hyper parses the HTTP request, `with_upgrades` lets
        // us take the socket over once the 101 response is out.
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service_fn(handle))
                .with_upgrades()
                .await;
        });
    }
}

/// Every request must be a WebSocket upgrade; anything else gets the 4xx `upgrade` chose.
async fn handle(mut req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    match upgrade(&mut req, &UpgradeOptions::default()) {
        Ok(accepted) => {
            tokio::spawn(async move {
                if let Ok(ws) = accepted.upgrade.await {
                    echo(ws).await;
                }
            });
            Ok(accepted.response)
        }
        Err(rejection) => Ok(*rejection),
    }
}

/// The `ws.on('message')` handler: send every data message back.
async fn echo(mut ws: UpgradedWebSocket) {
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(_) | Message::Binary(_) = msg {
            if ws.send(msg).await.is_err() {
                break;
            }
        }
        // Pings are answered for us; a close is answered and then `next` returns `None`.
    }
}

/// `--port N` (default 8080; 0 picks a free port).
fn port_arg() -> u16 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == "--port")
        .map(|w| w[1].parse().expect("--port takes a number"))
        .unwrap_or(8080)
}
