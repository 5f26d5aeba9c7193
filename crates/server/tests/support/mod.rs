//! What the server's integration tests share: a server started in the test's runtime.
#![allow(dead_code)]
use std::net::SocketAddr;

use switchboard_server::{Server, ServerConfig};

/// Starts a server with `config` on a free loopback port (without deflate); it runs until the
/// returned sender is used or dropped.
pub async fn start(config: ServerConfig) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        deflate: false,
        ..config
    };
    let bound = Server::builder()
        .config(config)
        .build()
        .unwrap()
        .bind()
        .await
        .unwrap();
    let addr = bound.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.run_until(async move {
        let _ = rx.await;
    }));
    (addr, tx)
}
