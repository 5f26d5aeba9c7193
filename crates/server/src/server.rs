//! The embeddable server: build it from a [`ServerConfig`], bind it, run it until a
//! shutdown future resolves, and publish through its [`Hub`] from your own code.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use switchboard_core::{Hub, HubLimits, Node, NodeInfo, SlowConsumerPolicy};
use switchboard_websocket::extensions::DeflatePolicy;
use switchboard_websocket::Message;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{ServerConfig, SlowConsumer};
use crate::conn::shutdown::Shutdown;
use crate::conn::stats::{ServerCounters, ServerStats};
use crate::protocol::raw::RawRooms;
use crate::state::Shared;
use crate::transport::http::{Health, Page};
use crate::transport::origin::OriginPolicy;
use crate::transport::{listener, tls, Router};

/// How often expired history and idle channels are swept from the hub.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A callback run for every text or binary message a client sends to a raw room, before it
/// is published: `(room, message)`. It runs on the connection's task; a panic inside
/// it closes that connection with 1011 and leaves every other connection alone.
pub type MessageHook = Arc<dyn Fn(&str, &Message) + Send + Sync>;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Configures a [`Server`].
#[derive(Default)]
pub struct ServerBuilder {
    config: ServerConfig,
    hub: Option<Hub>,
    on_message: Option<MessageHook>,
    tls: Option<TlsAcceptor>,
}

impl ServerBuilder {
    /// Use this configuration (default: [`ServerConfig::default`]).
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Serve this hub instead of creating one from the configuration's limits; lets an
    /// application share one hub between several servers or publish before binding.
    pub fn hub(mut self, hub: Hub) -> Self {
        self.hub = Some(hub);
        self
    }

    /// Run `hook(room, message)` for every data message received in a raw room.
    pub fn on_message(mut self, hook: impl Fn(&str, &Message) + Send + Sync + 'static) -> Self {
        self.on_message = Some(Arc::new(hook));
        self
    }

    /// Use a ready TLS acceptor instead of `tls_cert`/`tls_key` files.
    pub fn tls_acceptor(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Check the configuration and load TLS material.
    pub fn build(self) -> Result<Server, ServerError> {
        let ServerBuilder {
            mut config,
            hub,
            on_message,
            tls,
        } = self;
        config.validate().map_err(ServerError::Config)?;
        if config.demo {
            config.apply_demo();
            tracing::warn!(
                "DEMO MODE: anonymous clients may subscribe, publish and read presence and history \
                 in every channel of the default namespace; do not use this in production"
            );
        }
        if let Some(max) = config.max_channel_length {
            // The top-level key overrides `[channel] max_channel_length`.
            config.channel.max_channel_length = max;
        }
        let tls = match (tls, &config.tls_cert, &config.tls_key) {
            (Some(acceptor), _, _) => Some(acceptor),
            (None, Some(cert), Some(key)) => Some(tls::load_acceptor(cert, key)?),
            _ => None,
        };
        let hub = hub.unwrap_or_else(|| {
            Hub::with_namespaces(
                hub_limits(&config),
                crate::protocol::pusher::namespaces(&config),
            )
        });
        let verifier = config
            .token_config()
            .verifier()
            .map_err(|e| ServerError::Config(e.to_string()))?;
        let origins = OriginPolicy::new(&config.allowed_origins);
        let deflate = if config.deflate {
            // server_no_context_takeover is what makes one compressed frame valid for every
            // subscriber; the policy's default already insists on it, this keeps it explicit.
            // client_no_context_takeover (which the server may ask for even when the offer
            // did not, RFC 7692 §7.1.1.2) lets a connection drop its inflater after every
            // message instead of keeping a 32 KiB window per client for its whole life; see
            // docs/architecture.md, "Compression memory".
            DeflatePolicy {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                ..DeflatePolicy::default()
            }
        } else {
            DeflatePolicy::disabled()
        };
        let router = Arc::new(endpoints(&config, on_message));
        let webhooks = crate::webhooks::targets(&config).map_err(ServerError::Config)?;
        let webhooks = (!webhooks.is_empty()).then(|| {
            Arc::new(crate::webhooks::Webhooks::new(
                webhooks,
                config.webhook_queue,
                config.webhook_timeout,
            ))
        });
        let admission = crate::conn::limits::Admission::new(
            config.max_connections_per_ip,
            crate::conn::limits::Rate::new(config.connection_rate_per_ip, None),
            crate::conn::limits::Rate::new(config.accept_rate, None),
        );
        let counters = Arc::new(ServerCounters::default());
        // Every protocol's series exist in `/metrics` from the start, at zero.
        for protocol in [
            switchboard_protocols::raw::PROTOCOL,
            switchboard_protocols::centrifugo::PROTOCOL,
            switchboard_protocols::socketio::PROTOCOL,
        ] {
            counters.protocol(protocol);
        }
        let proxy = Arc::new(crate::proxy::Proxy::new(&config.proxy));
        Ok(Server {
            shared: Arc::new(Shared {
                config,
                node: Node::new(hub.clone()),
                hub,
                origins,
                deflate,
                tls,
                counters,
                started: Instant::now(),
                verifier,
                router,
                admission: Arc::new(admission),
                webhooks,
                broker_metrics: Arc::default(),
                proxy,
            }),
        })
    }
}

/// The composition root of the endpoints: everything the server answers, in one place. A
/// new protocol is one more `register` line here (and its folder under `protocol/`).
fn endpoints(config: &ServerConfig, on_message: Option<MessageHook>) -> Router {
    let mut router = Router::default();
    let pusher = crate::protocol::pusher::PusherState::new(&config.pusher.apps);
    router
        .register(Arc::new(Page))
        .register(Arc::new(Health))
        .register(Arc::new(crate::transport::metrics::Metrics))
        .register(Arc::new(crate::api::Api))
        .register(Arc::new(crate::protocol::centrifugo::Centrifugo))
        .register(Arc::new(
            crate::protocol::centrifugo::streams::CentrifugoStreams::new(),
        ))
        .register(Arc::new(
            crate::protocol::centrifugo::streams::CentrifugoUniWebsocket,
        ))
        .register(Arc::new(crate::protocol::socketio::SocketIo::new()))
        .register(Arc::new(crate::protocol::pusher::PusherSocket(
            pusher.clone(),
        )))
        .register(Arc::new(crate::protocol::pusher::api::PusherApi(
            pusher.clone(),
        )))
        .register(Arc::new(crate::protocol::pusher::api::PusherUserApi(
            pusher,
        )))
        .register(Arc::new(Arc::new(RawRooms::new(
            config.welcome.clone(),
            on_message,
        ))));
    if let Some(password) = &config.admin_password {
        router.register(Arc::new(crate::admin::Admin::new(password.clone())));
    }
    router
}

/// The hub limits implied by a configuration. `max_connections` is enforced by the server
/// before the upgrade (so it can answer 503), not by the hub.
pub fn hub_limits(config: &ServerConfig) -> HubLimits {
    HubLimits {
        max_connections: None,
        max_room_members: config.max_room_members,
        outbox_max_messages: config.outbox_max_messages,
        outbox_max_bytes: config.outbox_max_bytes,
        slow_consumer: match config.slow_consumer {
            SlowConsumer::Close => SlowConsumerPolicy::Close,
            SlowConsumer::DropOldest => SlowConsumerPolicy::DropOldest,
        },
        max_connections_per_user: config.max_connections_per_user,
        max_subscriptions_per_connection: config.max_subscriptions_per_connection,
    }
}

/// The address to show for a bound one: a wildcard bind (`0.0.0.0`, `::`) is reachable on
/// every interface, so show the loopback address, which a browser on this machine can open.
fn reachable(local: SocketAddr) -> SocketAddr {
    match local.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], local.port()))
        }
        ip if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, local.port()))
        }
        _ => local,
    }
}

/// A configured server, not yet listening.
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// Start configuring a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The hub: publish to rooms, inspect members and stats.
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// The configuration in use.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// The channel facade (hub + broker). Before [`bind`](Self::bind) it always uses
    /// the in-memory broker; a configured shared broker is started by `bind`.
    pub fn node(&self) -> &Node {
        &self.shared.node
    }

    /// Bind the listening socket (the port is known after this, useful with port 0) and
    /// start the configured broker.
    pub async fn bind(self) -> Result<BoundServer, ServerError> {
        let mut shared = self.shared;
        let addr = shared.config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener.local_addr()?;
        let scheme = if shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = shared
            .config
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", reachable(local_addr)));
        let name = shared
            .config
            .node_name
            .clone()
            .unwrap_or_else(|| url.clone());
        let kind =
            crate::broker::parse(shared.config.broker.as_deref()).map_err(ServerError::Config)?;
        if let crate::broker::BrokerKind::Redis(redis_url) = kind {
            let info = NodeInfo {
                id: crate::broker::redis::new_node_id(),
                name,
                url,
                ..NodeInfo::default()
            };
            // Client ids must not collide across nodes: presence is keyed by them.
            let base = u64::from_str_radix(&info.id[..5], 16).unwrap_or(1).max(1) << 32;
            shared.hub.set_conn_id_base(base);
            let config = &shared.config;
            let tls = crate::broker::redis::RedisTls {
                ca: config.broker_tls_ca.clone(),
                client: config
                    .broker_tls_cert
                    .clone()
                    .zip(config.broker_tls_key.clone()),
                insecure: config.broker_tls_insecure,
            };
            let broker = crate::broker::start_redis(&redis_url, info, config.broker_lease, tls)
                .map_err(|e| ServerError::Config(e.to_string()))?;
            if let Some(hooks) = &shared.webhooks {
                broker.on_occupancy_lost(crate::webhooks::observer::lost_reporter(hooks));
            }
            let shown = crate::broker::redacted(&redis_url);
            if !broker
                .wait_connected(std::time::Duration::from_secs(3))
                .await
            {
                // Down or slow: retried in the background. Anything else (a certificate that
                // does not verify, a wrong password) will not get better: refuse to start.
                match broker.probe().await {
                    Err(switchboard_core::BrokerError::Protocol(e)) => {
                        return Err(ServerError::Config(format!(
                            "cannot use the broker {shown}: {e}"
                        )));
                    }
                    _ => {
                        tracing::warn!(url = %shown, "Redis not reachable yet; retrying in the background")
                    }
                }
            }
            let broker = crate::broker::metered::Metered::new(
                Arc::new(broker),
                Arc::clone(&shared.broker_metrics),
            );
            let node = Node::with_broker(shared.hub.clone(), Arc::new(broker));
            tokio::spawn(node.run_background());
            let Some(s) = Arc::get_mut(&mut shared) else {
                return Err(ServerError::Config(
                    "the server was shared before bind".into(),
                ));
            };
            s.node = node;
            crate::broker::control::install(&shared);
            let weak = Arc::downgrade(&shared);
            shared.node.set_gap_handler(Arc::new(move |channel: &str| {
                if let Some(shared) = weak.upgrade() {
                    crate::sessions::tell_missed(&shared.hub, channel);
                }
            }));
        } else {
            let Some(s) = Arc::get_mut(&mut shared) else {
                return Err(ServerError::Config(
                    "the server was shared before bind".into(),
                ));
            };
            let broker = switchboard_core::MemoryBroker::new(
                s.hub.clone(),
                NodeInfo {
                    id: "local".to_string(),
                    name,
                    url,
                    ..NodeInfo::default()
                },
            );
            s.node = Node::with_broker(
                s.hub.clone(),
                Arc::new(crate::broker::metered::Metered::new(
                    Arc::new(broker),
                    Arc::clone(&s.broker_metrics),
                )),
            );
        }
        if let Some(webhooks) = &shared.webhooks {
            webhooks.start();
            crate::webhooks::WebhookObserver::install(
                webhooks,
                &shared.node,
                shared.config.webhook_queue,
            );
        }
        let metrics_listener = match shared.config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?,
            ),
            None => None,
        };
        Ok(BoundServer {
            shared,
            listener,
            local_addr,
            metrics_listener,
        })
    }

    /// Bind, then serve until `shutdown` resolves; see [`BoundServer::run_until`].
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        self.bind().await?.run_until(shutdown).await
    }
}

/// Drains the server over `window`: new connections are refused and `/health` answers 503
/// "draining"; every connection is told to reconnect elsewhere (its protocol's signal for
/// [`CloseReason::Restart`](switchboard_core::CloseReason::Restart): raw 1012, Centrifugo
/// 3011, Socket.IO 1012) at a random moment in the first 90% of the window, so clients do
/// not all reconnect at once. Returns when no connection is left or at the end of the
/// window.
async fn drain(shared: &Shared, window: std::time::Duration) {
    use std::hash::BuildHasher;
    shared.admission.start_draining();
    let start = tokio::time::Instant::now();
    let ids = shared.hub.connection_ids();
    tracing::info!(
        connections = ids.len(),
        window_secs = window.as_secs_f64(),
        "draining: telling connections to reconnect elsewhere"
    );
    // One random moment per connection: the closes are spread evenly over the window,
    // in no particular order.
    let seed = std::collections::hash_map::RandomState::new();
    let mut plan: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let unit = (seed.hash_one(id) >> 11) as f64 / (1u64 << 53) as f64;
            (window.mul_f64(0.9 * unit), id)
        })
        .collect();
    plan.sort_unstable();
    let mut told: std::collections::HashSet<_> = plan.iter().map(|(_, id)| *id).collect();
    // A connection admitted just before the drain began may register after the list above
    // was taken (and a Socket.IO session moving from polling to its WebSocket registers
    // anew): every look-in tells those at once, so none waits for the final close.
    let tell_late = |told: &mut std::collections::HashSet<_>| {
        for id in shared.hub.connection_ids() {
            if told.insert(id) {
                shared
                    .hub
                    .disconnect(id, switchboard_core::CloseReason::Restart);
            }
        }
    };
    // Each wake-up tells every connection whose moment has come, so a node that is
    // scheduled late (a busy machine) catches up at once instead of falling further behind
    // one timer per connection and leaving the rest to the final close at the deadline.
    let step = std::time::Duration::from_millis(100);
    let mut plan = plan.into_iter().peekable();
    while let Some(&(next_at, _)) = plan.peek() {
        let now = tokio::time::Instant::now();
        if start + next_at > now {
            tokio::time::sleep_until((start + next_at).min(now + step)).await;
            tell_late(&mut told);
            continue;
        }
        while let Some((_, id)) = plan.next_if(|&(at, _)| start + at <= now) {
            shared
                .hub
                .disconnect(id, switchboard_core::CloseReason::Restart);
        }
    }
    let deadline = start + window;
    while shared.counters.active() > 0 && tokio::time::Instant::now() < deadline {
        tell_late(&mut told);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A server with its socket bound, ready to run.
pub struct BoundServer {
    shared: Arc<Shared>,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The `metrics_listen` socket, when configured.
    metrics_listener: Option<TcpListener>,
}

impl BoundServer {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://ADDR` or `https://ADDR`; a wildcard bind (`0.0.0.0`, `::`) shows the loopback
    /// address, which a browser on this machine can open.
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", reachable(self.local_addr))
    }

    /// The channel facade (hub + broker).
    pub fn node(&self) -> &Node {
        &self.shared.node
    }

    /// The hub: publish to rooms, inspect members and stats.
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// The address `GET /metrics` is served on alone (`metrics_listen`), if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The server's own counters.
    pub fn stats(&self) -> ServerStats {
        self.shared.counters.snapshot()
    }

    /// Serve until `shutdown` resolves, then shut down gracefully: with a `drain_timeout`,
    /// first drain (see `drain`: `/health` 503, connections told to reconnect elsewhere,
    /// spread over the window); then stop accepting, send close 1001 "going away" to every
    /// WebSocket left, and wait up to `shutdown_timeout` for the close handshakes. Returns
    /// once that is done.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let BoundServer {
            shared,
            listener,
            local_addr,
            metrics_listener,
        } = self;
        let metrics = metrics_listener.map(|l| {
            tokio::spawn(crate::transport::metrics::serve_alone(
                l,
                Arc::clone(&shared),
            ))
        });
        let config = &shared.config;
        tracing::info!(
            url = %format!("{}://{}", if shared.tls.is_some() { "https" } else { "http" }, local_addr),
            deflate = config.deflate,
            "Switchboard listening"
        );
        let auth = config.token_hmac_secret.is_some()
            || config.token_rsa_public_key.is_some()
            || config.token_ecdsa_public_key.is_some();
        if (shared.tls.is_some() || auth) && shared.origins.allows_any() {
            tracing::warn!(
                "TLS or token auth is on but any Origin may open WebSockets; set --allowed-origins \
                 to the sites that embed this server to prevent cross-site WebSocket hijacking"
            );
        }
        let switch = Shutdown::new();
        // Expire history and drop idle channels even when nothing publishes or queries them;
        // after a burst, give the memory it used back to the system.
        let sweeper = {
            let hub = shared.hub.clone();
            let counters = Arc::clone(&shared.counters);
            let admission = Arc::clone(&shared.admission);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut trimmer = crate::memory::Trimmer::default();
                loop {
                    tick.tick().await;
                    hub.sweep();
                    admission.sweep();
                    let peak = counters.take_peak_active();
                    if trimmer.after_sweep(peak, counters.active(), hub.channel_count()) {
                        tracing::debug!("burst over: free memory returned to the system");
                    }
                }
            })
        };
        let accept = listener::accept_loop(listener, Arc::clone(&shared), switch.token());
        tokio::pin!(accept);
        tokio::select! {
            _ = &mut accept => {}
            _ = shutdown => {
                if !config.drain_timeout.is_zero() {
                    // The listener stays open meanwhile: `/health` answers 503 "draining"
                    // and upgrades are refused, so load balancers move clients elsewhere.
                    tokio::select! {
                        _ = &mut accept => {}
                        _ = drain(&shared, config.drain_timeout) => {}
                    }
                }
            }
        }
        tracing::info!(connections = shared.counters.active(), "shutting down");
        switch.trigger();
        // The accept loop sees the trigger and returns, dropping the listener: no new
        // connections from here on.
        accept.await;
        if tokio::time::timeout(config.shutdown_timeout, switch.drain())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = shared.counters.active(),
                "shutdown timeout reached; dropping remaining connections"
            );
        }
        sweeper.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}
