//! The accept loop: TCP accept, TCP_NODELAY, optional TLS, then hyper's HTTP/1.1 connection
//! with upgrades, each connection on its own task.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::crash::CatchPanic;
use crate::server::Shared;
use crate::shutdown::ShutdownToken;
use crate::stats::Counter;

/// Accept connections until shutdown is triggered.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, token: ShutdownToken) {
    let stop = token.triggered();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                shared.counters.bump(Counter::Accepted);
                // Small frames (chat messages, pings) must go out at once, not wait for
                // Nagle's algorithm to coalesce them with data that may never come.
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
                }
                let shared = Arc::clone(&shared);
                let token = token.clone();
                tokio::spawn(async move {
                    if let Err(p) = CatchPanic::new(serve_socket(tcp, peer, shared, token)).await {
                        tracing::error!(%peer, "panic while serving HTTP connection: {p}");
                    }
                });
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning; the listener stays.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// TLS (if configured, bounded by the handshake timeout), then HTTP.
async fn serve_socket(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>, token: ShutdownToken) {
    match shared.tls.clone() {
        None => serve_http(tcp, peer, shared, token).await,
        Some(acceptor) => {
            let timeout = shared.config.handshake_timeout;
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => serve_http(tls, peer, shared, token).await,
                Ok(Err(e)) => {
                    shared.counters.bump(Counter::TlsFailure);
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                }
                Err(_) => {
                    shared.counters.bump(Counter::HandshakeTimeout);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
}

/// Serve HTTP/1.1 on one connection. A WebSocket upgrade hands the socket over to the
/// connection task spawned by the upgrade handler, which ends this future.
async fn serve_http<S>(io: S, peer: SocketAddr, shared: Arc<Shared>, token: ShutdownToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake_timeout = shared.config.handshake_timeout;
    let svc = {
        let shared = Arc::clone(&shared);
        let token = token.clone();
        service_fn(move |req| crate::http::handle(req, Arc::clone(&shared), peer, token.clone()))
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // A client that connects and then sends nothing, or trickles its headers, is cut off
        // after the handshake timeout instead of holding a socket forever.
        .header_read_timeout(handshake_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let stop = token.triggered();
    tokio::pin!(stop);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = &mut stop => {
            // Finish the request in flight (if any), then close; idle keep-alive connections
            // close at once.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            shared.counters.bump(Counter::HandshakeTimeout);
            tracing::debug!(%peer, "HTTP request headers not received in time");
        } else {
            tracing::debug!(%peer, "HTTP connection error: {e}");
        }
    }
}
