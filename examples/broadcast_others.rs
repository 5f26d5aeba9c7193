//! Broadcast to everyone else: every message a client sends goes to every other connected
//! client, but not back to the sender. Text stays text, binary stays binary.
//!
//! The Rust counterpart of the Node.js tutorial snippet:
//!
//! ```js
//! wss.on('connection', (ws) => {
//!   ws.on('message', (data, isBinary) => {
//!     wss.clients.forEach((client) => {
//!       if (client !== ws && client.readyState === WebSocket.OPEN) {
//!         client.send(data, { binary: isBinary });
//!       }
//!     });
//!   });
//! });
//! ```
//!
//! The only difference from `broadcast_all.rs` is the publish option:
//! [`PublishOptions::except_sender`] instead of [`PublishOptions::from_conn`].
//!
//! Run it with `cargo run --example broadcast_others -- --port 8080` (`--port 0` picks a free
//! port) and open two `switchboard connect ws://127.0.0.1:8080` sessions.
use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use switchboard::core::{
    ConnHandle, ConnInfo, Hub, HubLimits, Outbox, Payload, PayloadKind, PublishOptions,
};
use switchboard::websocket::upgrade::{upgrade, UpgradeOptions, UpgradedWebSocket};
use switchboard::websocket::Message;
use tokio::net::TcpListener;

/// The one room everybody is in.
const ROOM: &str = "everyone";

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let hub = Hub::new(HubLimits::default());
    let listener = TcpListener::bind(("127.0.0.1", port_arg())).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, hub.clone(), peer.to_string()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(
    mut req: Request<Incoming>,
    hub: Hub,
    peer: String,
) -> Result<Response<String>, Infallible> {
    let accepted = match upgrade(&mut req, &UpgradeOptions::default()) {
        Ok(a) => a,
        Err(rejection) => return Ok(*rejection),
    };
    // Join the room before answering, so a client is a member as soon as its handshake
    // completes and cannot miss a message sent right after.
    let Ok((conn, outbox)) = hub.register(ConnInfo::new(peer, "ws")) else {
        return Ok(Response::builder()
            .status(503)
            .body("full\n".into())
            .unwrap());
    };
    if conn.subscribe(ROOM).is_err() {
        return Ok(Response::builder()
            .status(503)
            .body("full\n".into())
            .unwrap());
    }
    tokio::spawn(async move {
        if let Ok(ws) = accepted.upgrade.await {
            serve_client(ws, hub, conn, outbox).await;
        }
    });
    Ok(accepted.response)
}

async fn serve_client(ws: UpgradedWebSocket, hub: Hub, conn: ConnHandle, mut outbox: Outbox) {
    let (mut reader, mut writer) = ws.split();
    // Outbox → socket: write whatever the hub queued for us, a batch at a time.
    tokio::spawn(async move {
        let mut batch = Vec::new();
        while outbox.recv_batch(&mut batch, 64).await.is_ok() {
            for item in batch.drain(..) {
                let p = item.payload();
                let msg = match p.kind {
                    PayloadKind::Text => Message::Text(p.data.clone()),
                    PayloadKind::Binary => Message::Binary(p.data.clone()),
                };
                if writer.feed(msg).is_err() {
                    return;
                }
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
    });
    // Socket → room: publish each message to every member except ourselves.
    while let Some(Ok(msg)) = reader.next().await {
        let payload = match msg {
            Message::Text(data) => Payload {
                kind: PayloadKind::Text,
                data,
            },
            Message::Binary(data) => Payload::binary(data),
            _ => continue,
        };
        hub.publish(ROOM, payload, PublishOptions::except_sender(conn.id()));
    }
    // Dropping the handle leaves the room and closes the outbox, which ends the writer.
    drop(conn);
}

/// `--port N` (default 8080; 0 picks a free port).
fn port_arg() -> u16 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == "--port")
        .map(|w| w[1].parse().expect("--port takes a number"))
        .unwrap_or(8080)
}
