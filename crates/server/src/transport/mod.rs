//! Transport: accepting sockets (TCP, TLS), serving HTTP on them, routing each request to
//! the [`Endpoint`] registered for its path, and the WebSocket upgrade every endpoint
//! shares ([`upgrade`]).
//!
//! The router knows no protocol: the composition root (`server.rs`) registers the
//! endpoints — the chat page, `/health`, the HTTP API, each wire protocol — and a new
//! protocol is one more registration.
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use ::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use switchboard_websocket::handshake::is_upgrade_request;

use crate::conn::shutdown::ShutdownToken;
use crate::state::Shared;

pub mod body;
pub mod forward;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod origin;
pub(crate) mod stream;
pub mod tls;
pub(crate) mod upgrade;

use self::http::Body;

/// What a handler knows about one request besides the request itself.
#[derive(Clone)]
pub(crate) struct RequestCtx {
    /// The server's shared state.
    pub(crate) shared: Arc<Shared>,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// Resolves when the server shuts down; connections hold it until they end.
    pub(crate) token: ShutdownToken,
}

/// Which requests an endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Requests other than upgrades whose path starts with this prefix (ending in `/`).
    Prefix(&'static str),
    /// Requests on exactly one of these paths; upgrades too when `upgrades` is set (the
    /// endpoint checks the method).
    Paths {
        /// The paths.
        paths: &'static [&'static str],
        /// Whether upgrade requests are this endpoint's as well.
        upgrades: bool,
    },
    /// WebSocket upgrades on exactly this path.
    Upgrade(&'static str),
    /// WebSocket upgrades on any path under this prefix (ending in `/`).
    UpgradePrefix(&'static str),
    /// WebSocket upgrades on any path nothing else claims and no reserved prefix covers
    /// (raw rooms).
    AnyUpgrade,
}

/// A response still being computed.
pub(crate) type ResponseFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// What answers a path: a wire protocol, the HTTP API, a page.
pub(crate) trait Endpoint: Send + Sync + 'static {
    /// The requests it answers.
    fn route(&self) -> Route;
    /// Answer one of them.
    fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture;
}

/// Routes requests over the registered endpoints.
#[derive(Default)]
pub(crate) struct Router {
    endpoints: Vec<Arc<dyn Endpoint>>,
}

impl Router {
    /// Adds an endpoint. Prefixes and exact paths are matched before [`Route::AnyUpgrade`]
    /// whatever the order of registration.
    pub(crate) fn register(&mut self, endpoint: Arc<dyn Endpoint>) -> &mut Self {
        self.endpoints.push(endpoint);
        self
    }

    /// The endpoint that answers `req`, if any.
    fn find(&self, req: &Request<Incoming>) -> Option<&Arc<dyn Endpoint>> {
        let path = req.uri().path();
        let upgrade = is_upgrade_request(req.headers());
        let routes = || self.endpoints.iter().map(|e| (e, e.route()));
        let claimed = routes().find(|(_, r)| match r {
            Route::Paths { paths, upgrades } => (!upgrade || *upgrades) && paths.contains(&path),
            Route::Prefix(prefix) => !upgrade && path.starts_with(prefix),
            Route::UpgradePrefix(prefix) => upgrade && path.starts_with(prefix),
            _ => false,
        });
        if let Some((e, _)) = claimed {
            return Some(e);
        }
        if upgrade {
            if let Some((e, _)) =
                routes().find(|(_, r)| matches!(r, Route::Upgrade(p) if *p == path))
            {
                return Some(e);
            }
            if http::is_reserved(path) {
                return None;
            }
            return routes()
                .find(|(_, r)| *r == Route::AnyUpgrade)
                .map(|(e, _)| e);
        }
        None
    }

    /// Answers `req` with its endpoint, or 404.
    pub(crate) fn dispatch(&self, req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture {
        match self.find(&req) {
            Some(endpoint) => endpoint.handle(req, ctx),
            None => Box::pin(std::future::ready(http::text(
                StatusCode::NOT_FOUND,
                "not found",
            ))),
        }
    }
}
