//! Socket.IO v5 over Engine.IO v4 at `/socket.io/`, so the unmodified `socket.io-client`
//! (and other v5 clients) can connect, over a WebSocket directly or over HTTP long-polling
//! with the upgrade to a WebSocket.
//!
//! * [`engine`]: sessions, the two transports, the upgrade, HTTP errors.
//! * `driver`: the state machine of one session on the connection runtime (Engine.IO
//!   packets, pings, the connect deadline, token expiry, endings).
//! * `socket`: the Socket.IO layer of one session: namespaces, CONNECT with `auth`,
//!   events and acks, binary attachments, the reserved events, recovery.
//! * `channels`: every hub operation the driver makes, in one file.
//! * `recovery`: sessions kept after their transport dropped, for connection state
//!   recovery.
//!
//! The protocol semantics (reserved events, data mapping, recovery) are documented in
//! `docs/protocols.md`, section "Socket.IO".
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use switchboard_protocols::socketio::engine::HttpError;

use crate::conn::shutdown::ShutdownToken;
use crate::state::Shared;
use crate::transport::forward::Forwarder;
use crate::transport::http::Body;
use crate::transport::{Endpoint, RequestCtx, ResponseFuture, Route};

mod channels;
mod driver;
pub mod engine;
mod recovery;
mod socket;

/// The path clients connect to (`socket.io-client`'s default `path`).
pub const PATH: &str = "/socket.io/";

pub use crate::config::{SocketIoConfig, DEFAULT_MAX_ATTACHMENT_BYTES_TOTAL};

/// The query parameters Engine.IO uses.
#[derive(Debug, Default)]
struct Query {
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

impl Query {
    fn parse(q: Option<&str>) -> Query {
        let mut out = Query::default();
        for pair in q.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = crate::transport::http::decode_query_value(v);
            match k {
                "EIO" => out.eio = Some(v),
                "transport" => out.transport = Some(v),
                "sid" => out.sid = Some(v),
                _ => {}
            }
        }
        out
    }
}

/// The Socket.IO endpoint: every request on [`PATH`] (long-polling and WebSocket), and what
/// its sessions share: the polling sessions by sid, the forwarder to other nodes, the
/// sockets kept for recovery. One per server.
pub(crate) struct SocketIo {
    /// Live polling sessions by sid (until they end).
    sessions: Mutex<HashMap<String, Arc<engine::Session>>>,
    /// Forwards polling requests to the nodes owning their sessions.
    forwarder: Forwarder,
    /// Sockets kept for connection state recovery.
    store: Arc<recovery::Store>,
}

impl SocketIo {
    /// The endpoint of one server, with no session yet.
    pub(crate) fn new() -> Arc<SocketIo> {
        Arc::new(SocketIo {
            sessions: Mutex::default(),
            forwarder: Forwarder::default(),
            store: Arc::default(),
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<engine::Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live polling session `sid`.
    fn find(&self, sid: &str) -> Option<Arc<engine::Session>> {
        self.sessions().get(sid).cloned()
    }

    fn insert(&self, session: Arc<engine::Session>) {
        self.sessions().insert(session.sid().to_string(), session);
    }

    /// The session ended: its sid is unknown from now on.
    fn forget(&self, session: &engine::Session) {
        let removed = self.sessions().remove(session.sid());
        // Dropped outside the lock (it may hold the last reference).
        drop(removed);
    }

    fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    fn store(&self) -> &Arc<recovery::Store> {
        &self.store
    }
}

impl Endpoint for Arc<SocketIo> {
    fn route(&self) -> Route {
        Route::Paths {
            paths: &[PATH, "/socket.io"],
            upgrades: true,
        }
    }

    fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture {
        Box::pin(handle(
            Arc::clone(self),
            req,
            ctx.shared,
            ctx.peer,
            ctx.token,
        ))
    }
}

/// Answers one request on [`PATH`]: a WebSocket upgrade or a long-polling request.
pub(crate) async fn handle(
    io: Arc<SocketIo>,
    req: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    token: ShutdownToken,
) -> Response<Body> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string());
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok());
    if !shared.origins.allows_request(origin.as_deref(), host) {
        shared
            .counters
            .bump(crate::conn::stats::Counter::RejectedOrigin);
        return error(HttpError::Forbidden);
    }
    let mut response = if req.method() == Method::OPTIONS {
        preflight(&req)
    } else {
        engine::route(&io, req, shared, peer, token).await
    };
    if let Some(origin) = origin {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            cors(&mut response, &origin);
        }
    }
    response
}

/// `OPTIONS`: the CORS preflight of a cross-origin polling request.
fn preflight(req: &Request<Incoming>) -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

/// The CORS headers for an allowed origin (credentials allowed, so cookies and
/// `withCredentials` work as with the reference server's `cors` option).
fn cors(r: &mut Response<Body>, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// An Engine.IO error answer: the status and JSON body the reference server uses.
pub(crate) fn error(e: HttpError) -> Response<Body> {
    let mut r = Response::new(Body::new(e.body()));
    *r.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A bare status without body (what the reference server answers to an oversized or
/// overlapping polling request).
pub(crate) fn status_only(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::http::decode_query_value as percent_decode;
    use std::time::Duration;

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some("EIO=4&transport=polling&t=abc&sid=a%2Db"));
        assert_eq!(q.eio.as_deref(), Some("4"));
        assert_eq!(q.transport.as_deref(), Some("polling"));
        assert_eq!(q.sid.as_deref(), Some("a-b"));
        let q = Query::parse(None);
        assert!(q.eio.is_none() && q.sid.is_none());
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn config_from_toml() {
        let c: SocketIoConfig = toml::from_str(
            "recovery = true\nmax_disconnection_duration = 5\nexclude_sender = [\"/chat\"]\n",
        )
        .unwrap();
        assert!(c.recovery);
        assert_eq!(c.max_disconnection_duration, Duration::from_secs(5));
        assert_eq!(c.exclude_sender, vec!["/chat"]);
        assert_eq!(c.max_payload, 1_000_000);
        assert!(toml::from_str::<SocketIoConfig>("nope = 1").is_err());
    }
}
