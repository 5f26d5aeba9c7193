//! HTTP on the shared port: the entry point of every request (handed to the router,
//! [`crate::transport::Router`]), the chat page and `/health` endpoints, reserved
//! prefixes, bounded body reads.
//!
//! | request                               | answer                                   |
//! |---------------------------------------|------------------------------------------|
//! | upgrade on `/connection/websocket`    | Centrifugo client protocol (JSON)        |
//! | anything on `/socket.io/`             | Socket.IO / Engine.IO ([`crate::protocol::socketio`]) |
//! | `/connection/{uni_http_stream,uni_sse,http_stream,sse}`, `POST /emulation` | Centrifugo over streamed responses ([`crate::protocol::centrifugo::streams`]) |
//! | upgrade on a reserved prefix          | 404 (those paths belong to other protocols) |
//! | upgrade on any other path             | WebSocket; room = path (`/` = `lobby`)   |
//! | `GET /`                               | the chat page                            |
//! | `POST /api/<method>`                  | the server HTTP API ([`crate::api`])      |
//! | `GET /health`                         | JSON: status, uptime, connections, stats |
//! | `GET /metrics`                        | Prometheus text format ([`super::metrics`]) |
//! | anything else                         | 404                                      |
//!
//! Request bodies are read with [`read_body`]: bounded in size and in time (the body
//! timeout), so a client that announces a body and stalls cannot hold a request open.
//!
//! A panic while answering a request (a bug) is caught: the client gets a 500, the panic is
//! logged and counted (`http_panics` in `/health`), and the server carries on.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::conn::crash::CatchPanic;
use crate::conn::shutdown::ShutdownToken;
use crate::conn::stats::{Counter, ServerCounters};
use crate::state::Shared;
use crate::transport::{Endpoint, RequestCtx, ResponseFuture, Route};

/// The chat page served at `/`.
pub const INDEX_HTML: &str = include_str!("../../assets/index.html");

/// Path prefixes that are never raw rooms: they are kept for the HTTP API and the other wire
/// protocols, so a room can never shadow them.
pub const RESERVED_PREFIXES: &[&str] = &[
    "/api/",
    "/connection/",
    "/socket.io/",
    "/app/",
    "/apps/",
    "/health",
    "/metrics",
    "/admin",
];

/// The body type of every response.
pub use super::body::Body;

/// Whether `path` falls under a reserved prefix (`/health` and `/health/x` do, `/healthy` does not).
pub fn is_reserved(path: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|prefix| {
        if prefix.ends_with('/') {
            path.starts_with(prefix) || path == prefix.trim_end_matches('/')
        } else {
            path == *prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        }
    })
}

/// Route one request; a panic on the way becomes a 500.
pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    token: ShutdownToken,
) -> Result<Response<Body>, Infallible> {
    let counters = Arc::clone(&shared.counters);
    Ok(contain(route(req, shared, peer, token), &counters, peer).await)
}

/// Runs a request handler, answering 500 (counted as [`Counter::HttpPanic`]) if it panics.
pub(crate) async fn contain(
    handler: impl std::future::Future<Output = Response<Body>>,
    counters: &ServerCounters,
    peer: SocketAddr,
) -> Response<Body> {
    match CatchPanic::new(handler).await {
        Ok(response) => response,
        Err(p) => {
            counters.bump(Counter::HttpPanic);
            tracing::error!(%peer, "panic while answering an HTTP request: {p}");
            let mut r = text(StatusCode::INTERNAL_SERVER_ERROR, "internal server error");
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
    }
}

async fn route(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    token: ShutdownToken,
) -> Response<Body> {
    let router = Arc::clone(&shared.router);
    router
        .dispatch(
            req,
            RequestCtx {
                shared,
                peer,
                token,
            },
        )
        .await
}

/// The chat page at `/`.
pub(crate) struct Page;

impl Endpoint for Page {
    fn route(&self) -> Route {
        Route::Paths {
            paths: &["/"],
            upgrades: false,
        }
    }

    fn handle(&self, req: Request<Incoming>, _ctx: RequestCtx) -> ResponseFuture {
        let response = match *req.method() {
            Method::GET | Method::HEAD => {
                let mut r = Response::new(Body::new(Bytes::from_static(INDEX_HTML.as_bytes())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                r
            }
            _ => method_not_allowed(),
        };
        Box::pin(std::future::ready(response))
    }
}

/// `/health`.
pub(crate) struct Health;

impl Endpoint for Health {
    fn route(&self) -> Route {
        Route::Paths {
            paths: &["/health"],
            upgrades: false,
        }
    }

    fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture {
        let response = match *req.method() {
            Method::GET | Method::HEAD => health(&ctx.shared),
            _ => method_not_allowed(),
        };
        Box::pin(std::future::ready(response))
    }
}

/// 405 for a page that only answers `GET` and `HEAD`.
pub(crate) fn method_not_allowed() -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

/// Decodes one query-string value: `%XX` escapes and `+` for a space; bytes that do not
/// make UTF-8 become U+FFFD.
pub(crate) fn decode_query_value(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Longer than the limit (413).
    TooLarge,
    /// Not complete within the body timeout (408).
    TimedOut,
    /// The connection failed while reading it.
    Broken,
}

/// Reads a whole request body of at most `limit` bytes, within `timeout` (a client that
/// announces a length and then stalls must not hold the request, and its socket, for ever).
pub(crate) async fn read_body(
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge)
        }
        Ok(Err(_)) => Err(BodyError::Broken),
    }
}

/// `/health`: liveness plus the numbers an operator looks at first, and the broker's
/// state (`kind`, `connected`; the node id with a shared broker).
fn health(shared: &Shared) -> Response<Body> {
    let hub = shared.hub.stats();
    let server = shared.counters.snapshot();
    let broker = shared.node.broker_status();
    let draining = shared.admission.is_draining();
    let status = if draining {
        "draining"
    } else if broker.connected {
        "ok"
    } else {
        "degraded"
    };
    let mut body = serde_json::json!({
        "status": status,
        "broker": {
            "kind": broker.kind,
            "connected": broker.connected,
            "node": shared.node.broker().node_id(),
        },
        "uptime_secs": shared.started.elapsed().as_secs(),
        "connections": server.active_connections,
        "hub": {
            "connections": hub.connections,
            "channels": hub.channels,
            "published": hub.published,
            "delivered": hub.delivered,
            "dropped": hub.dropped,
            "slow_consumer_closes": hub.slow_consumer_closes,
            "rejections": {
                "connections": hub.rejections.connections,
                "room_full": hub.rejections.room_full,
            },
        },
        "server": server,
        "memory": {
            // Resident memory of the process, to see that a burst's memory was given back.
            "rss_bytes": crate::memory::rss_bytes(),
        },
    });
    if !broker.masters.is_empty() {
        body["broker"]["masters"] = serde_json::json!(broker.masters);
    }
    let mut r = Response::new(Body::new(Bytes::from(body.to_string())));
    if draining {
        // Load balancers take the node out of rotation.
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A short plain-text response.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_prefixes() {
        for p in [
            "/api/x",
            "/api",
            "/connection/websocket",
            "/socket.io/",
            "/app/key",
            "/health",
            "/health/x",
            "/metrics",
        ] {
            assert!(is_reserved(p), "{p} should be reserved");
        }
        for p in [
            "/",
            "/room1",
            "/healthy",
            "/apix",
            "/application",
            "/metrics2",
        ] {
            assert!(!is_reserved(p), "{p} should not be reserved");
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_and_counted() {
        let counters = ServerCounters::default();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let bug = async {
            if counters.active() == 0 {
                panic!("handler bug");
            }
            text(StatusCode::OK, "unreachable")
        };
        let r = contain(bug, &counters, peer).await;
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(counters.snapshot().http_panics, 1);
        let r = contain(async { text(StatusCode::OK, "fine") }, &counters, peer).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(counters.snapshot().http_panics, 1);
    }
}
