//! An echo server on hyper: plain HTTP and WebSocket on one port. Every text or binary
//! message is sent back with its type.
//!
//! ```text
//! cargo run -p switchboard-websocket --example ws_echo_server -- --port 9001 [--no-deflate] [--max-message-size BYTES]
//! ```
//!
//! It prints `listening on <addr>` once bound (use `--port 0` for an ephemeral port).
use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use switchboard_websocket::extensions::DeflatePolicy;
use switchboard_websocket::handshake::is_upgrade_request;
use switchboard_websocket::upgrade::{upgrade, UpgradeOptions, UpgradedWebSocket};
use switchboard_websocket::Message;
use tokio::net::TcpListener;

struct Args {
    port: u16,
    deflate: bool,
    max_message_size: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: 9001,
        deflate: true,
        max_message_size: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--port" => {
                args.port = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--port needs a number")?
            }
            "--no-deflate" => args.deflate = false,
            "--max-message-size" => {
                args.max_message_size = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--max-message-size needs a number")?,
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

async fn echo(ws: UpgradedWebSocket) {
    let (mut reader, mut writer) = ws.split();
    while let Some(msg) = reader.next().await {
        match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if writer.send(m).await.is_err() {
                    break;
                }
            }
            // Pings are answered by the reader; a close is answered and ends the loop.
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

async fn handle(
    mut req: Request<Incoming>,
    options: Arc<UpgradeOptions>,
) -> Result<Response<String>, Infallible> {
    if !is_upgrade_request(req.headers()) {
        return Ok(Response::new("switchboard-websocket echo server\n".into()));
    }
    match upgrade(&mut req, &options) {
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args().inspect_err(|_| {
        eprintln!("usage: ws_echo_server [--port N] [--no-deflate] [--max-message-size BYTES]");
    })?;
    let mut options = UpgradeOptions::default();
    if !args.deflate {
        options.deflate = DeflatePolicy::disabled();
    }
    if let Some(max) = args.max_message_size {
        options.config.max_message_size = max;
        options.config.max_frame_size = max;
    }
    let options = Arc::new(options);
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let options = options.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, options.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}
