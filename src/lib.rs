//! Switchboard: a real-time WebSocket server you can also embed.
//!
//! This crate re-exports the layers so a Rust program can run the server or embed the hub
//! and publish from its own code:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use switchboard::server::{Server, ServerConfig};
//! let config = ServerConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() };
//! let server = Server::builder().config(config).build()?.bind().await?;
//! println!("listening on {}", server.url());
//! let hub = server.hub().clone();
//! // … publish with `hub.publish(..)` from anywhere …
//! server.run_until(switchboard::server::shutdown::os_signal()).await?;
//! # drop(hub);
//! # Ok(())
//! # }
//! ```
pub use switchboard_core as core;
pub use switchboard_protocols as protocols;
pub use switchboard_server as server;
pub use switchboard_websocket as websocket;

pub mod bench;
pub mod config;
pub mod connect;
pub mod logging;
pub mod token;
