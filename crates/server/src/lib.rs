//! Switchboard network layer: tokio, hyper, WebSocket upgrade, TLS.
//!
//! One port serves everything: the chat page at `/`, `/health`, the HTTP API under `/api/`,
//! the Centrifugo and Socket.IO protocols on their paths, and WebSocket upgrades on any
//! other (non-reserved) path, which join the raw room named by the path.
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
//! Layout (dependencies point down this list, never up, and no protocol imports another):
//! - [`server`](Server): the composition root — builds the shared state, registers the
//!   endpoints, binds, runs and shuts down;
//! - `protocol`: one folder per wire protocol (`raw`, `centrifugo`, `socketio`), each a
//!   [`Driver`](conn::driver) for the connection runtime plus the endpoint that upgrades
//!   to it; `protocol/channels.rs` holds the client operations they share;
//! - [`api`]: the HTTP API; [`broker`]: Redis and what nodes ask of each other;
//! - `proxy`: calls to the application's backend (Centrifugo's proxy format), for every
//!   protocol;
//! - `sessions`: the protocol-neutral registry of live connections (by client and user);
//! - [`conn`]: the connection runtime (one task per connection: socket, outbox batching,
//!   bounded flush, heartbeat, shutdown, panic containment, stats);
//! - [`transport`]: listener, TLS, routing over registered endpoints, the upgrade;
//! - `state`: what every task shares, protocol-neutral; [`config`], [`auth`], [`memory`].

#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod conn;
pub mod memory;
pub mod protocol;
mod proxy;
mod server;
mod sessions;
mod state;
pub mod transport;
pub mod webhooks;

pub use config::ServerConfig;
pub use conn::{crash, heartbeat, shutdown, stats};
pub use server::{hub_limits, BoundServer, MessageHook, Server, ServerBuilder, ServerError};
pub use stats::ServerStats;
pub use switchboard_core::Hub;
pub use transport::{forward, http, listener, origin, tls};
