//! Switchboard network layer: tokio, hyper, WebSocket upgrade, TLS.
//!
//! One port serves everything: the chat page at `/`, `/health`, and WebSocket upgrades on
//! any other (non-reserved) path, which join the raw room named by the path.
//!
//! ```no_run
//! use switchboard_server::{Server, ServerConfig};
//! use switchboard_core::Payload;
//!
//! # async fn example() -> Result<(), switchboard_server::ServerError> {
//! let config = ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
//! let server = Server::builder()
//!     .config(config)
//!     .on_message(|room, msg| tracing::trace!(room, ?msg, "received"))
//!     .build()?
//!     .bind()
//!     .await?;
//! println!("listening on {}", server.url());
//! let hub = server.hub().clone();
//! tokio::spawn(async move {
//!     // Publish from application code to everyone in room "news".
//!     hub.publish("news", Payload::text("hello"), Default::default());
//! });
//! server.run_until(switchboard_server::shutdown::os_signal()).await
//! # }
//! ```
//!
//! Modules, one concept each: [`config`] (settings), [`listener`] (accept loop, TLS, hyper),
//! [`http`] (routing), `ws` (the upgrade and its checks), `connection` (the raw-room
//! connection task), [`heartbeat`], [`origin`], [`shutdown`], [`tls`], [`stats`], [`memory`] (giving memory back after bursts), [`crash`] (panic
//! containment).

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod broker;
pub mod centrifugo;
pub mod config;
mod connection;
pub mod crash;
pub mod forward;
pub mod heartbeat;
pub mod http;
pub mod listener;
pub mod memory;
pub mod origin;
mod server;
pub mod shutdown;
pub mod socketio;
pub mod stats;
pub mod tls;
mod ws;

pub use config::ServerConfig;
pub use server::{hub_limits, BoundServer, MessageHook, Server, ServerBuilder, ServerError};
pub use stats::ServerStats;
pub use switchboard_core::Hub;
