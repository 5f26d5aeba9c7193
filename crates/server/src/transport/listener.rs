//! The accept loop: TCP accept, TCP_NODELAY, optional TLS, then hyper's HTTP/1.1 connection
//! with upgrades, each connection on its own task.
//!
//! When the process runs out of file descriptors, `accept` fails with EMFILE/ENFILE and the
//! pending connection stays in the kernel's backlog: retrying only spins, and the client
//! waits until it times out. The loop keeps one descriptor in reserve (`/dev/null`, opened at
//! start) for that moment: it gives the reserve up, accepts the waiting connections one at a
//! time, answers each `503` with `Retry-After` and closes it, then takes the reserve back and
//! pauses briefly before accepting again. Refusals are counted (`rejected_fd_exhausted` in
//! `/health`) and logged once per burst.
use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::conn::crash::CatchPanic;
use crate::conn::shutdown::ShutdownToken;
use crate::conn::stats::Counter;
use crate::state::Shared;

/// Pause after a burst of refusals (or any other accept error) before accepting again, so
/// a server out of descriptors does not spin; short, so service resumes as soon as
/// connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// Most connections refused in one burst before pausing (the rest wait in the backlog).
const REFUSE_BURST: usize = 256;
/// At most one warning about exhausted descriptors in this long.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// What a connection gets when there is no descriptor to serve it with.
const UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 29\r\nConnection: close\r\n\r\n\
server busy, try again later\n";

/// Whether `e` says the process or the system has no file descriptor left.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The descriptor kept for refusing connections when none is left.
fn open_reserve() -> Option<File> {
    File::open("/dev/null").ok()
}

/// Rate limit for the "out of descriptors" warning: one line per [`WARN_EVERY`], with the
/// number refused since the last one.
struct FdWarning {
    last: Option<Instant>,
    refused_since: u64,
}

impl FdWarning {
    fn refused(&mut self, n: u64, reserve: bool) {
        self.refused_since += n;
        if self.last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        tracing::warn!(
            refused = self.refused_since,
            reserve,
            "out of file descriptors: refusing new connections with 503 (raise the open-files \
             limit, `ulimit -n`, or lower max_connections)"
        );
        self.refused_since = 0;
    }
}

/// Accept connections until shutdown is triggered.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, token: ShutdownToken) {
    let stop = token.triggered();
    tokio::pin!(stop);
    let mut reserve = open_reserve();
    let mut warning = FdWarning {
        last: None,
        refused_since: 0,
    };
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
            Err(e) if out_of_descriptors(&e) => {
                let had_reserve = reserve.is_some();
                // Frees one descriptor: enough to accept and refuse the waiting clients.
                drop(reserve.take());
                let refused = refuse_pending(&listener);
                for _ in 0..refused {
                    shared.counters.bump(Counter::RejectedFdExhausted);
                }
                reserve = open_reserve();
                warning.refused(refused, had_reserve);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            Err(e) => {
                // Other errors (ECONNABORTED, ENOBUFS, ...): back off instead of spinning; the
                // listener stays.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Accepts the connections waiting in the backlog right now (at most [`REFUSE_BURST`]),
/// answers each `503` and closes it; returns how many. Never waits: one descriptor is used at
/// a time and given back before the next accept.
fn refuse_pending(listener: &TcpListener) -> u64 {
    let mut refused = 0;
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    for _ in 0..REFUSE_BURST {
        let Poll::Ready(Ok((tcp, _))) = listener.poll_accept(&mut cx) else {
            break;
        };
        // Read what the client already sent, so closing does not turn into a reset that
        // could discard our answer on its side; then answer without waiting (a fresh socket's
        // send buffer takes these few bytes).
        let mut sink = [0u8; 4096];
        while matches!(tcp.try_read(&mut sink), Ok(n) if n > 0) {}
        let _ = tcp.try_write(UNAVAILABLE);
        drop(tcp);
        refused += 1;
    }
    refused
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
        service_fn(move |req| {
            crate::transport::http::handle(req, Arc::clone(&shared), peer, token.clone())
        })
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
