//! The room server shared by `broadcast_all.rs` and `broadcast_others.rs`, which differ only
//! in who a message goes to.
//!
//! Instead of looping over clients it uses Switchboard's [`Hub`]: every connection joins one
//! room, and a publish queues the same shared message into each member's outbox (bounded,
//! so a client that stops reading cannot make the server buffer without limit).
use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use switchboard::core::{
    ConnHandle, ConnId, ConnInfo, Hub, HubLimits, Outbox, Payload, PayloadKind, PublishOptions,
};
use switchboard::websocket::upgrade::{upgrade, UpgradeOptions, UpgradedWebSocket};
use switchboard::websocket::Message;
use tokio::net::TcpListener;

/// The one room everybody is in.
const ROOM: &str = "everyone";

/// Who a client's message goes to: built from the sender's connection id.
pub type Audience = fn(ConnId) -> PublishOptions;

/// Serve one room on `--port` until the process is stopped, publishing every message a client
/// sends with the options `audience` gives for that client.
pub async fn serve(audience: Audience) -> std::io::Result<()> {
    let hub = Hub::new(HubLimits::default());
    let listener = TcpListener::bind(("127.0.0.1", port_arg())).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let hub = hub.clone();
        tokio::spawn(async move {
            let service =
                service_fn(move |req| handle(req, hub.clone(), peer.to_string(), audience));
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
    audience: Audience,
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
            serve_client(ws, hub, conn, outbox, audience).await;
        }
    });
    Ok(accepted.response)
}

async fn serve_client(
    ws: UpgradedWebSocket,
    hub: Hub,
    conn: ConnHandle,
    mut outbox: Outbox,
    audience: Audience,
) {
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
    // Socket → room: publish each message to the audience.
    while let Some(Ok(msg)) = reader.next().await {
        let payload = match msg {
            Message::Text(data) => Payload {
                kind: PayloadKind::Text,
                data,
            },
            Message::Binary(data) => Payload::binary(data),
            _ => continue,
        };
        hub.publish(ROOM, payload, audience(conn.id()));
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
