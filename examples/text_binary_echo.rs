//! Text and binary on one connection: a text message is answered with the text
//! `You sent -> <text>`, a binary message is sent back unchanged as binary.
//!
//! The Rust counterpart of the Node.js tutorial snippet:
//!
//! ```js
//! wss.on('connection', (ws) => {
//!   ws.on('message', (data, isBinary) => {
//!     if (isBinary) ws.send(data, { binary: true });
//!     else ws.send(`You sent -> ${data}`);
//!   });
//! });
//! ```
//!
//! Run it with `cargo run --example text_binary_echo -- --port 8080` (`--port 0` picks a
//! free port), then try `switchboard connect ws://127.0.0.1:8080 -x hi` and
//! `switchboard connect ws://127.0.0.1:8080 --binary -x 'de ad be ef'`.
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
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service_fn(handle))
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    match upgrade(&mut req, &UpgradeOptions::default()) {
        Ok(accepted) => {
            tokio::spawn(async move {
                if let Ok(ws) = accepted.upgrade.await {
                    reply(ws).await;
                }
            });
            Ok(accepted.response)
        }
        Err(rejection) => Ok(*rejection),
    }
}

async fn reply(mut ws: UpgradedWebSocket) {
    while let Some(Ok(msg)) = ws.next().await {
        let answer = match msg {
            // `as_text` cannot fail here: the decoder only hands out valid UTF-8 text.
            Message::Text(_) => {
                Message::text(format!("You sent -> {}", msg.as_text().unwrap_or("")))
            }
            Message::Binary(data) => Message::Binary(data),
            _ => continue,
        };
        if ws.send(answer).await.is_err() {
            break;
        }
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
