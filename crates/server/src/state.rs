//! What every task of one server shares: the configuration, the hub and node, the
//! policies decided at start, and the counters. Protocol-neutral: no field belongs to one
//! wire protocol (a protocol keeps its own state in its folder, reachable from its endpoint).
use std::sync::Arc;
use std::time::Instant;

use switchboard_core::{Hub, Node};
use switchboard_websocket::extensions::DeflatePolicy;
use tokio_rustls::TlsAcceptor;

use crate::auth::TokenVerifier;
use crate::config::ServerConfig;
use crate::conn::stats::ServerCounters;
use crate::transport::origin::OriginPolicy;
use crate::transport::Router;

/// Everything the tasks of one server share, read-only apart from atomics.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) hub: Hub,
    /// The channel facade over the hub and the broker; drivers call it for channel
    /// operations (publish, subscribe, history, presence).
    pub(crate) node: Node,
    pub(crate) origins: OriginPolicy,
    pub(crate) deflate: DeflatePolicy,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) counters: Arc<ServerCounters>,
    pub(crate) started: Instant,
    /// Verifies connection and subscription tokens (JWT), whatever the protocol.
    pub(crate) verifier: TokenVerifier,
    /// What answers each request path.
    pub(crate) router: Arc<Router>,
    /// Per-address and server-wide admission limits (every protocol's upgrade).
    pub(crate) admission: Arc<crate::conn::limits::Admission>,
    /// The webhook targets (`None` without any).
    pub(crate) webhooks: Option<Arc<crate::webhooks::Webhooks>>,
    /// The broker's operations, errors and round trips, counted for `/metrics`.
    pub(crate) broker_metrics: Arc<crate::broker::metered::BrokerMetrics>,
    /// Calls to the application's backend (`[proxy]`), for every protocol.
    pub(crate) proxy: Arc<crate::proxy::Proxy>,
}
