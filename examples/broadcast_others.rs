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
//! [`PublishOptions::except_sender`] instead of [`PublishOptions::from_conn`]. The room itself
//! is in `support/broadcast_room.rs`.
//!
//! Run it with `cargo run --example broadcast_others -- --port 8080` (`--port 0` picks a free
//! port) and open two `switchboard connect ws://127.0.0.1:8080` sessions.
#[path = "support/broadcast_room.rs"]
mod broadcast_room;

use switchboard::core::PublishOptions;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // Each message goes to every member except the sender.
    broadcast_room::serve(PublishOptions::except_sender).await
}
