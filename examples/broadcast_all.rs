//! Broadcast to everyone: every message any client sends goes to every connected client,
//! the sender included, with its type (text or binary) preserved.
//!
//! The Rust counterpart of the Node.js tutorial snippet:
//!
//! ```js
//! wss.on('connection', (ws) => {
//!   ws.on('message', (data, isBinary) => {
//!     wss.clients.forEach((client) => {
//!       if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
//!     });
//!   });
//! });
//! ```
//!
//! The room itself (a Switchboard [`Hub`](switchboard::core::Hub) with bounded outboxes) is in
//! `support/broadcast_room.rs`; this file only says who a message goes to.
//!
//! Run it with `cargo run --example broadcast_all -- --port 8080` (`--port 0` picks a free
//! port) and open two `switchboard connect ws://127.0.0.1:8080` sessions.
#[path = "support/broadcast_room.rs"]
mod broadcast_room;

use switchboard::core::PublishOptions;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // Each message goes to every member, the sender included.
    broadcast_room::serve(PublishOptions::from_conn).await
}
