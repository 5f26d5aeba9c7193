//! Switchboard: a real-time WebSocket server you can also embed.
//!
//! This crate re-exports the layers so a Rust program can run the server or embed the hub
//! and publish from its own code.
pub use switchboard_core as core;
pub use switchboard_protocols as protocols;
pub use switchboard_server as server;
pub use switchboard_websocket as websocket;
