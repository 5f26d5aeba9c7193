//! Server configuration: every knob of the network layer in one struct.
//!
//! [`ServerConfig`] is what the library consumes. It deserializes from TOML (or any serde
//! format) with every field optional — missing keys take the documented default — so a config
//! file only needs the settings it changes. Durations are written as seconds (integer or
//! fractional). Keys are `snake_case`; the `kebab-case` spelling of the command-line flag is
//! accepted as an alias so a file can be written the way the flags read.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use switchboard_core::Namespaces;

use crate::auth::TokenConfig;

/// What to do with a connection whose outgoing queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumer {
    /// Close the connection with 1008 "slow consumer" (the default: the client reconnects and
    /// knows it missed messages, instead of silently missing them).
    #[default]
    Close,
    /// Drop the oldest queued messages and keep the connection.
    DropOldest,
}

impl std::str::FromStr for SlowConsumer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "close" => Ok(SlowConsumer::Close),
            "drop-oldest" | "drop_oldest" => Ok(SlowConsumer::DropOldest),
            other => Err(format!(
                "unknown slow-consumer policy {other:?} (expected close or drop-oldest)"
            )),
        }
    }
}

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected text or json)"
            )),
        }
    }
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default interval between server pings.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// Default time a peer has to answer a ping.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Default largest accepted message (1 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;
/// Default time allowed for the TLS and HTTP upgrade handshakes.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time allowed for a request body to arrive once its headers are read.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time allowed for close handshakes on shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Most worker threads `worker_threads` accepts (far past any core count it is meant for).
pub const MAX_WORKER_THREADS: usize = 1024;
/// Default node lease with a shared broker.
pub const DEFAULT_BROKER_LEASE: Duration = Duration::from_secs(15);
/// Default per-connection outgoing queue bound in bytes (4 MiB).
pub const DEFAULT_OUTBOX_MAX_BYTES: usize = 4 << 20;
/// Default per-connection outgoing queue bound in messages.
pub const DEFAULT_OUTBOX_MAX_MESSAGES: usize = 4096;

/// Every setting of the server. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Text message sent to every new connection before anything else.
    pub welcome: Option<String>,
    /// Interval between pings sent to each connection.
    #[serde(alias = "ping-interval", deserialize_with = "secs")]
    pub ping_interval: Duration,
    /// Time a connection has to answer a ping before it is closed as dead.
    #[serde(alias = "ping-timeout", deserialize_with = "secs")]
    pub ping_timeout: Duration,
    /// Most concurrent WebSocket connections; further upgrades get HTTP 503.
    #[serde(alias = "max-connections")]
    pub max_connections: Option<usize>,
    /// Largest accepted message in bytes; larger ones close the connection with 1009.
    #[serde(alias = "max-message-size")]
    pub max_message_size: usize,
    /// Time allowed for a new TCP connection to complete TLS and its HTTP request headers.
    #[serde(alias = "handshake-timeout", deserialize_with = "secs")]
    pub handshake_timeout: Duration,
    /// Time allowed for a request body (HTTP API, Socket.IO polling) to arrive in full once
    /// its headers are read; a slower one is answered 408 and its connection closed.
    #[serde(alias = "body-timeout", deserialize_with = "secs")]
    pub body_timeout: Duration,
    /// Most members of one room; a further join is closed with 1008 "room full".
    #[serde(alias = "max-room-members")]
    pub max_room_members: Option<usize>,
    /// Origin patterns allowed to open WebSockets (`*`, exact, or `https://*.example.com`).
    #[serde(alias = "allowed-origins", deserialize_with = "origin_list")]
    pub allowed_origins: Vec<String>,
    /// PEM certificate chain; with `tls_key`, serves https and wss.
    #[serde(alias = "tls-cert")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching `tls_cert`.
    #[serde(alias = "tls-key")]
    pub tls_key: Option<PathBuf>,
    /// Offer permessage-deflate to clients.
    pub deflate: bool,
    /// Policy for connections that cannot keep up.
    #[serde(alias = "slow-consumer")]
    pub slow_consumer: SlowConsumer,
    /// Bound of each connection's outgoing queue, in bytes.
    #[serde(alias = "outbox-max-bytes")]
    pub outbox_max_bytes: usize,
    /// Bound of each connection's outgoing queue, in messages.
    #[serde(alias = "outbox-max-messages")]
    pub outbox_max_messages: usize,
    /// Time allowed for close handshakes when the server shuts down.
    #[serde(alias = "shutdown-timeout", deserialize_with = "secs")]
    pub shutdown_timeout: Duration,
    /// Log output format (used by the binary).
    #[serde(alias = "log-format")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `switchboard=debug` (used by the binary).
    #[serde(alias = "log-level")]
    pub log_level: String,
    /// Threads running connections (used by the binary); 0 means one per CPU core.
    #[serde(alias = "worker-threads")]
    pub worker_threads: usize,
    /// Park idle connections: a quiet connection gives back its task and its reactor
    /// registration until something wakes it (less memory per idle connection; see
    /// docs/benchmarks.md, "Idle connections: parking").
    #[serde(alias = "park-idle")]
    pub park_idle: bool,
    /// Shared secret for `HS256`/`HS384`/`HS512` connection and subscription tokens.
    #[serde(alias = "token-hmac-secret")]
    pub token_hmac_secret: Option<String>,
    /// RSA public key (PEM text or file path) for `RS*`/`PS*` tokens.
    #[serde(alias = "token-rsa-public-key")]
    pub token_rsa_public_key: Option<String>,
    /// ECDSA public key (PEM text or file path) for `ES256`/`ES384` tokens.
    #[serde(alias = "token-ecdsa-public-key")]
    pub token_ecdsa_public_key: Option<String>,
    /// When set, every token must carry this value in `aud`.
    #[serde(alias = "token-audience")]
    pub token_audience: Option<String>,
    /// When set, every token must carry this value in `iss`.
    #[serde(alias = "token-issuer")]
    pub token_issuer: Option<String>,
    /// Seconds of clock skew tolerated on token `exp` and `nbf`.
    #[serde(alias = "token-leeway")]
    pub token_leeway: u64,
    /// Whether Centrifugo-protocol clients may connect without a token, as anonymous users.
    #[serde(alias = "allow-anonymous")]
    pub allow_anonymous: bool,
    /// Key the server HTTP API (`/api/<method>`) requires in `X-API-Key`; the API is off
    /// without one.
    #[serde(alias = "api-key")]
    pub api_key: Option<String>,
    /// Channel options: `[channel.default]` and `[channel.namespaces.<name>]`.
    pub channel: Namespaces,
    /// Socket.IO options: the `[socketio]` table.
    pub socketio: SocketIoConfig,
    /// Pusher Channels apps: the `[[pusher.apps]]` tables.
    pub pusher: PusherConfig,
    /// Webhook targets for every protocol: the `[[webhooks]]` tables.
    pub webhooks: Vec<crate::webhooks::WebhookConfig>,
    /// How long one webhook request may take before it is retried.
    #[serde(
        alias = "webhook-timeout",
        deserialize_with = "crate::webhooks::duration"
    )]
    pub webhook_timeout: Duration,
    /// Events each webhook target's queue holds; more are dropped (and counted).
    #[serde(alias = "webhook-queue")]
    pub webhook_queue: usize,
    /// What several nodes share: `memory` (one node, the default) or
    /// `redis://host:port/db`.
    pub broker: Option<String>,
    /// How long a node's presence entries outlive it when it dies without leaving
    /// (kill -9, network loss); renewed every third of it.
    #[serde(alias = "broker-lease", deserialize_with = "secs")]
    pub broker_lease: Duration,
    /// The HTTP address other nodes reach this one at (registered with the broker);
    /// default: derived from the bound address.
    #[serde(alias = "advertise-url")]
    pub advertise_url: Option<String>,
    /// This node's name in the broker's registry and the `info` API; default: the
    /// advertised address.
    #[serde(alias = "node-name")]
    pub node_name: Option<String>,
    /// With a `rediss://` broker: the CA certificates (PEM file) that Redis's certificate
    /// must chain to; default: the system's trust store.
    #[serde(alias = "broker-tls-ca")]
    pub broker_tls_ca: Option<PathBuf>,
    /// With a `rediss://` broker: this node's client certificate (PEM file) for Redis
    /// servers that require one (`tls-auth-clients yes`); needs `broker_tls_key`.
    #[serde(alias = "broker-tls-cert")]
    pub broker_tls_cert: Option<PathBuf>,
    /// The private key (PEM file) of `broker_tls_cert`.
    #[serde(alias = "broker-tls-key")]
    pub broker_tls_key: Option<PathBuf>,
    /// With a `rediss://` broker: do not verify Redis's certificate (for tests only: the
    /// connection is encrypted but not authenticated).
    #[serde(alias = "broker-tls-insecure")]
    pub broker_tls_insecure: bool,
    /// Most concurrent connections from one client address; further ones get HTTP 503.
    #[serde(alias = "max-connections-per-ip")]
    pub max_connections_per_ip: Option<usize>,
    /// New connections per second allowed from one client address (bursts of as many);
    /// further ones get HTTP 429 with `Retry-After`.
    #[serde(alias = "connection-rate-per-ip")]
    pub connection_rate_per_ip: Option<f64>,
    /// Most concurrent connections of one authenticated user (every protocol together);
    /// a further one is refused with the protocol's limit code.
    #[serde(alias = "max-connections-per-user")]
    pub max_connections_per_user: Option<usize>,
    /// Messages per second one connection may send on average; over it messages are
    /// dropped, and a client that keeps on is closed with the protocol's policy code.
    #[serde(alias = "client-message-rate")]
    pub client_message_rate: Option<f64>,
    /// Messages one connection may send at once above `client_message_rate` [default: the
    /// rate].
    #[serde(alias = "client-message-burst")]
    pub client_message_burst: Option<u32>,
    /// Payload bytes per second one connection may send on average (bursts of one second's
    /// worth); treated like `client_message_rate`.
    #[serde(alias = "client-bytes-rate")]
    pub client_bytes_rate: Option<f64>,
    /// Most channels one connection may be subscribed to at once.
    #[serde(alias = "max-subscriptions-per-connection")]
    pub max_subscriptions_per_connection: Option<usize>,
    /// Longest channel name accepted from clients, in bytes.
    #[serde(alias = "max-channel-length")]
    pub max_channel_length: Option<usize>,
    /// New connections per second the whole server accepts (bursts of as many); further
    /// upgrades get HTTP 503 with `Retry-After`.
    #[serde(alias = "accept-rate")]
    pub accept_rate: Option<f64>,
    /// The request header holding the client's address as seen by a trusted reverse proxy
    /// (e.g. `X-Forwarded-For`, last entry used); only honoured when set.
    #[serde(alias = "trusted-proxy-header")]
    pub trusted_proxy_header: Option<String>,
    /// On SIGTERM: the window over which connections are told to reconnect elsewhere
    /// (spread with jitter) before the server exits; 0 closes them all at once.
    #[serde(alias = "drain-timeout", deserialize_with = "secs")]
    pub drain_timeout: Duration,
    /// A second address serving only `GET /metrics` (plain HTTP), e.g. on an internal
    /// interface; `/metrics` stays on the main port too.
    #[serde(alias = "metrics-listen")]
    pub metrics_listen: Option<SocketAddr>,
    /// Turns on the admin page at `/admin`, logged in with this password; off when unset.
    #[serde(alias = "admin-password")]
    pub admin_password: Option<String>,
    /// Demo mode: anonymous clients may subscribe, publish and read presence and history in
    /// the default namespace (with recovery), so the chat page shows channels without a
    /// token. Logged at start; not for production. Applied by [`ServerConfig::apply_demo`].
    pub demo: bool,
    /// The application backend's proxy endpoints (`[proxy]`).
    pub proxy: ProxyConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            welcome: None,
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            max_connections: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_room_members: None,
            allowed_origins: vec!["*".to_string()],
            tls_cert: None,
            tls_key: None,
            deflate: true,
            slow_consumer: SlowConsumer::Close,
            outbox_max_bytes: DEFAULT_OUTBOX_MAX_BYTES,
            outbox_max_messages: DEFAULT_OUTBOX_MAX_MESSAGES,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            log_format: LogFormat::Text,
            log_level: "info".to_string(),
            worker_threads: 0,
            park_idle: true,
            token_hmac_secret: None,
            token_rsa_public_key: None,
            token_ecdsa_public_key: None,
            token_audience: None,
            token_issuer: None,
            token_leeway: 0,
            allow_anonymous: false,
            api_key: None,
            channel: Namespaces::default(),
            socketio: Default::default(),
            pusher: Default::default(),
            webhooks: Vec::new(),
            webhook_timeout: crate::webhooks::DEFAULT_TIMEOUT,
            webhook_queue: crate::webhooks::DEFAULT_QUEUE,
            broker: None,
            broker_lease: DEFAULT_BROKER_LEASE,
            advertise_url: None,
            node_name: None,
            broker_tls_ca: None,
            broker_tls_cert: None,
            broker_tls_key: None,
            broker_tls_insecure: false,
            max_connections_per_ip: None,
            connection_rate_per_ip: None,
            max_connections_per_user: None,
            client_message_rate: None,
            client_message_burst: None,
            client_bytes_rate: None,
            max_subscriptions_per_connection: None,
            max_channel_length: None,
            accept_rate: None,
            trusted_proxy_header: None,
            drain_timeout: Duration::ZERO,
            metrics_listen: None,
            admin_password: None,
            demo: false,
            proxy: ProxyConfig::default(),
        }
    }
}

impl ServerConfig {
    /// What [`demo`](Self::demo) turns on: anonymous connections, and channels of the default
    /// namespace that anonymous clients may subscribe to and publish in, with presence,
    /// join/leave events, history (at least 100 messages for 5 minutes) and recovery.
    pub fn apply_demo(&mut self) {
        self.allow_anonymous = true;
        let o = std::sync::Arc::make_mut(&mut self.channel.default);
        o.presence = true;
        o.join_leave = true;
        o.history_size = o.history_size.max(100);
        o.history_ttl = o.history_ttl.max(Duration::from_secs(300));
        o.force_recovery = true;
        o.allow_subscribe_for_anonymous = true;
        o.allow_publish_for_subscriber = true;
        o.allow_presence_for_subscriber = true;
        o.allow_history_for_subscriber = true;
    }

    /// Whether TLS is configured (both certificate and key given).
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// The token settings as the verifier's configuration.
    pub fn token_config(&self) -> TokenConfig {
        TokenConfig {
            token_hmac_secret: self.token_hmac_secret.clone(),
            token_rsa_public_key: self.token_rsa_public_key.clone(),
            token_ecdsa_public_key: self.token_ecdsa_public_key.clone(),
            token_audience: self.token_audience.clone(),
            token_issuer: self.token_issuer.clone(),
            token_leeway: self.token_leeway,
            allow_anonymous: self.allow_anonymous,
        }
    }

    /// Check the settings that cannot be expressed in the types.
    pub fn validate(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("--tls-cert and --tls-key must be given together".into());
        }
        if self.ping_interval.is_zero() || self.ping_timeout.is_zero() {
            return Err("ping interval and ping timeout must be positive".into());
        }
        if self.handshake_timeout.is_zero() {
            return Err("handshake timeout must be positive".into());
        }
        if self.body_timeout.is_zero() {
            return Err("body timeout must be positive".into());
        }
        if self.max_message_size == 0 {
            return Err("max message size must be positive".into());
        }
        if self.outbox_max_bytes == 0 || self.outbox_max_messages == 0 {
            return Err("outbox bounds must be positive".into());
        }
        if self.api_key.as_deref() == Some("") {
            return Err("the API key must not be empty".into());
        }
        if self.admin_password.as_deref() == Some("") {
            return Err("the admin password must not be empty".into());
        }
        crate::broker::parse(self.broker.as_deref())?;
        crate::webhooks::targets(self)?;
        if self.webhook_timeout.is_zero() || self.webhook_queue == 0 {
            return Err("webhook_timeout and webhook_queue must be positive".into());
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(format!(
                "worker_threads must be at most {MAX_WORKER_THREADS} (0 = one per CPU core)"
            ));
        }
        if self.broker_lease < Duration::from_millis(300) {
            return Err("the broker lease must be at least 0.3 seconds".into());
        }
        if self.broker_tls_cert.is_some() != self.broker_tls_key.is_some() {
            return Err("broker_tls_cert and broker_tls_key go together".into());
        }
        for (name, rate) in [
            ("connection_rate_per_ip", self.connection_rate_per_ip),
            ("client_message_rate", self.client_message_rate),
            ("client_bytes_rate", self.client_bytes_rate),
            ("accept_rate", self.accept_rate),
        ] {
            if rate.is_some_and(|r| !(r.is_finite() && r >= 0.0)) {
                return Err(format!("{name} must be a non-negative number"));
            }
        }
        if self
            .trusted_proxy_header
            .as_deref()
            .is_some_and(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err("trusted_proxy_header is not a valid header name".into());
        }
        if self.allowed_origins.is_empty() {
            return Err("allowed origins must not be empty (use * to allow any)".into());
        }
        self.proxy.validate()?;
        let namespaces = std::iter::once(("default", &self.channel.default)).chain(
            self.channel
                .namespaces
                .iter()
                .map(|(name, o)| (name.as_str(), o)),
        );
        for (name, o) in namespaces {
            for (on, kind, endpoint) in [
                (o.proxy_subscribe, "subscribe", &self.proxy.subscribe),
                (o.proxy_publish, "publish", &self.proxy.publish),
                (o.proxy_sub_refresh, "sub_refresh", &self.proxy.sub_refresh),
            ] {
                if on && endpoint.is_none() {
                    return Err(format!(
                        "namespace {name:?} has proxy_{kind} but [proxy.{kind}] has no endpoint"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Parse a duration given in seconds (`"2.5"`, `"10"`); used by the command line too.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("not a valid number of seconds: {s:?}"))
}

/// Split a comma-separated origin list, dropping empty entries.
pub fn parse_origin_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Secs {
        Int(u64),
        Float(f64),
        Text(String),
    }
    match Secs::deserialize(d)? {
        Secs::Int(n) => Ok(Duration::from_secs(n)),
        Secs::Float(f) => Duration::try_from_secs_f64(f).map_err(serde::de::Error::custom),
        Secs::Text(s) => parse_secs(&s).map_err(serde::de::Error::custom),
    }
}

fn origin_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Origins {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Origins::deserialize(d)? {
        Origins::List(v) => v,
        Origins::Text(s) => parse_origin_list(&s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_documentation() {
        let c = ServerConfig::default();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.ping_interval, Duration::from_secs(25));
        assert_eq!(c.ping_timeout, Duration::from_secs(20));
        assert_eq!(c.max_message_size, 1_048_576);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(c.allowed_origins, vec!["*"]);
        assert!(c.deflate);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn parses_seconds_and_lists() {
        assert_eq!(parse_secs("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("abc").is_err());
        assert_eq!(
            parse_origin_list(" https://a.com, ,*"),
            vec!["https://a.com", "*"]
        );
        assert_eq!(
            "drop-oldest".parse::<SlowConsumer>().unwrap(),
            SlowConsumer::DropOldest
        );
        assert!("sometimes".parse::<SlowConsumer>().is_err());
    }

    #[test]
    fn channel_options_and_tokens_from_toml() {
        let c: ServerConfig = toml::from_str(
            r#"
            token_hmac_secret = "s3cret"
            allow-anonymous = true
            api_key = "k"
            [channel.default]
            presence = true
            [channel.namespaces.chat]
            history_size = 10
            history_ttl = 60
            "#,
        )
        .unwrap();
        assert!(c.allow_anonymous);
        assert!(c.token_config().has_keys());
        assert_eq!(c.api_key.as_deref(), Some("k"));
        assert!(c.channel.default.presence);
        assert_eq!(c.channel.namespaces["chat"].history_size, 10);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn abuse_limits_from_toml() {
        let c: ServerConfig = toml::from_str(
            r#"
            max_connections_per_ip = 10
            connection_rate_per_ip = 2.5
            max_connections_per_user = 3
            client_message_rate = 50
            client_message_burst = 100
            client_bytes_rate = 65536
            max_subscriptions_per_connection = 20
            max_channel_length = 64
            accept_rate = 500
            trusted_proxy_header = "X-Forwarded-For"
            drain_timeout = 30
            "#,
        )
        .unwrap();
        assert_eq!(c.max_connections_per_ip, Some(10));
        assert_eq!(c.connection_rate_per_ip, Some(2.5));
        assert_eq!(c.max_connections_per_user, Some(3));
        assert_eq!(c.client_message_rate, Some(50.0));
        assert_eq!(c.client_message_burst, Some(100));
        assert_eq!(c.client_bytes_rate, Some(65536.0));
        assert_eq!(c.max_subscriptions_per_connection, Some(20));
        assert_eq!(c.max_channel_length, Some(64));
        assert_eq!(c.accept_rate, Some(500.0));
        assert_eq!(c.trusted_proxy_header.as_deref(), Some("X-Forwarded-For"));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert!(c.validate().is_ok());
        let bad = ServerConfig {
            client_message_rate: Some(-1.0),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn validation_rejects_half_tls() {
        let c = ServerConfig {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}

/// Socket.IO settings: the `[socketio]` table of the configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoConfig {
    /// Namespaces clients may connect to (`/`, `/admin`, …); empty allows any.
    pub namespaces: Vec<String>,
    /// Namespaces whose broadcast events are not delivered back to their sender.
    #[serde(alias = "exclude-sender")]
    pub exclude_sender: Vec<String>,
    /// Connection state recovery: the CONNECT answer carries a `pid`, every event from a
    /// channel an offset (last argument), and a client that reconnects within
    /// `max_disconnection_duration` gets its session back with what it missed.
    pub recovery: bool,
    /// How long a session whose transport dropped is kept for recovery (seconds).
    #[serde(
        alias = "max-disconnection-duration",
        deserialize_with = "socketio_secs"
    )]
    pub max_disconnection_duration: Duration,
    /// Most events a socket keeps after sending them, to replay to a recovering client that
    /// had not received them.
    #[serde(alias = "recovery-buffer")]
    pub recovery_buffer: usize,
    /// Largest HTTP long-polling body and WebSocket message accepted, in bytes (announced to
    /// clients as `maxPayload`).
    #[serde(alias = "max-payload")]
    pub max_payload: usize,
    /// Bytes queued for a long-polling client before the session stops taking more from its
    /// outboxes (which then fill up and apply the slow-consumer policy).
    #[serde(alias = "polling-buffer")]
    pub polling_buffer: usize,
    /// Time allowed for the WebSocket upgrade of a polling session (probe to upgrade packet).
    #[serde(alias = "upgrade-timeout", deserialize_with = "socketio_secs")]
    pub upgrade_timeout: Duration,
    /// Most binary attachments one packet may announce (at most 64); a packet announcing
    /// more closes the session as a protocol error before anything is buffered.
    #[serde(alias = "max-attachments")]
    pub max_attachments: usize,
    /// Most bytes of attachments one session buffers for its pending packet; the attachment
    /// that goes over closes the session as a protocol error.
    #[serde(alias = "max-attachment-bytes")]
    pub max_attachment_bytes: usize,
    /// Most bytes of attachments all sessions together buffer; the attachment that would go
    /// over closes its session as a protocol error.
    #[serde(alias = "max-attachment-bytes-total")]
    pub max_attachment_bytes_total: usize,
}

/// Default for [`SocketIoConfig::max_attachment_bytes_total`]: 64 MiB.
pub const DEFAULT_MAX_ATTACHMENT_BYTES_TOTAL: usize = 64 << 20;

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            namespaces: Vec::new(),
            exclude_sender: Vec::new(),
            recovery: false,
            max_disconnection_duration: Duration::from_secs(120),
            recovery_buffer: 1000,
            max_payload: 1_000_000,
            polling_buffer: 1 << 20,
            upgrade_timeout: Duration::from_secs(10),
            max_attachments: switchboard_protocols::socketio::packet::DEFAULT_MAX_ATTACHMENTS,
            max_attachment_bytes:
                switchboard_protocols::socketio::packet::DEFAULT_MAX_ATTACHMENT_BYTES,
            max_attachment_bytes_total: DEFAULT_MAX_ATTACHMENT_BYTES_TOTAL,
        }
    }
}

/// A `[socketio]` duration: a non-negative number of seconds.
fn socketio_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = f64::deserialize(d)?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(serde::de::Error::custom(
            "expected a non-negative number of seconds",
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Pusher Channels settings: the `[pusher]` table. Without an app the Pusher endpoints
/// (`/app/{key}`, `/apps/{id}/…`) answer 404.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherConfig {
    /// The apps (`[[pusher.apps]]`).
    pub apps: Vec<PusherApp>,
}

/// One Pusher app: clients connect with its key; its secret signs channel authorizations,
/// HTTP API requests and webhooks.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PusherApp {
    /// The app id (HTTP API paths `/apps/{id}/…`).
    pub id: String,
    /// The public key (`/app/{key}`, `auth_key`).
    pub key: String,
    /// The secret.
    pub secret: String,
    /// Where to send webhooks (`[[pusher.apps.webhooks]]`).
    #[serde(default)]
    pub webhooks: Vec<PusherWebhook>,
}

/// A webhook target of a Pusher app.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PusherWebhook {
    /// The URL events are POSTed to.
    pub url: String,
    /// Which events: `channel_occupied`, `channel_vacated`, `member_added`,
    /// `member_removed`, `client_event`, `cache_miss` (`connect`, `disconnect` too); empty
    /// means every channel event.
    #[serde(default)]
    pub event_types: Vec<String>,
}

impl PusherConfig {
    /// The app whose key is `key`.
    pub fn app_by_key(&self, key: &str) -> Option<&PusherApp> {
        self.apps.iter().find(|a| a.key == key)
    }

    /// The app whose id is `id`.
    pub fn app_by_id(&self, id: &str) -> Option<&PusherApp> {
        self.apps.iter().find(|a| a.id == id)
    }

    /// Adds `app`, replacing an app with the same id.
    pub fn set_app(&mut self, app: PusherApp) {
        self.apps.retain(|a| a.id != app.id);
        self.apps.push(app);
    }
}

#[cfg(test)]
mod pusher_tests {
    use super::*;

    #[test]
    fn pusher_apps_from_toml() {
        let c: ServerConfig = toml::from_str(
            r#"
[[pusher.apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
[[pusher.apps.webhooks]]
url = "http://127.0.0.1:9000/pusher/webhooks"
event_types = ["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event"]
"#,
        )
        .unwrap();
        let app = c.pusher.app_by_key("app-key").unwrap();
        assert_eq!(
            (app.id.as_str(), app.secret.as_str()),
            ("app-id", "app-secret")
        );
        assert_eq!(app.webhooks[0].event_types.len(), 5);
        assert!(c.pusher.app_by_id("app-id").is_some());
        assert!(ServerConfig::default().pusher.apps.is_empty());
    }
}

/// Default [`ProxyEndpoint::timeout`]: one second.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(1);
/// Default [`ProxyConfig::max_concurrency`].
pub const DEFAULT_PROXY_MAX_CONCURRENCY: usize = 256;

/// The application backend's proxy (`[proxy]`): HTTP endpoints that decide connects,
/// subscriptions and publications and answer RPCs, in Centrifugo's proxy format.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Headers of the client's upgrade request forwarded with every proxy call (`Cookie`,
    /// `Authorization`, `User-Agent`, …), case-insensitive.
    #[serde(alias = "http-headers")]
    pub http_headers: Vec<String>,
    /// Headers added to every proxy call (e.g. a shared secret the backend checks).
    #[serde(alias = "static-headers")]
    pub static_headers: BTreeMap<String, String>,
    /// Most proxy calls in flight at once, all kinds together; further calls wait for a
    /// slot within their timeout.
    #[serde(alias = "max-concurrency")]
    pub max_concurrency: usize,
    /// `[proxy.connect]`: connections without a token.
    pub connect: Option<ProxyEndpoint>,
    /// `[proxy.refresh]`: a proxied connection whose `expire_at` passed.
    pub refresh: Option<ProxyEndpoint>,
    /// `[proxy.subscribe]`: subscriptions in namespaces with `proxy_subscribe`.
    pub subscribe: Option<ProxyEndpoint>,
    /// `[proxy.publish]`: publications in namespaces with `proxy_publish`.
    pub publish: Option<ProxyEndpoint>,
    /// `[proxy.sub_refresh]`: expiring subscriptions in namespaces with `proxy_sub_refresh`.
    #[serde(alias = "sub-refresh")]
    pub sub_refresh: Option<ProxyEndpoint>,
    /// `[proxy.rpc]`: client RPCs (Centrifugo `rpc`, Socket.IO events with an ack).
    pub rpc: Option<ProxyEndpoint>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            http_headers: Vec::new(),
            static_headers: BTreeMap::new(),
            max_concurrency: DEFAULT_PROXY_MAX_CONCURRENCY,
            connect: None,
            refresh: None,
            subscribe: None,
            publish: None,
            sub_refresh: None,
            rpc: None,
        }
    }
}

impl ProxyConfig {
    /// Checks every configured endpoint is a plain `http://` URL with a host, and the
    /// header names are valid.
    pub fn validate(&self) -> Result<(), String> {
        for (kind, ep) in self.endpoints() {
            let Some(ep) = ep else { continue };
            let uri: http::Uri = ep
                .endpoint
                .parse()
                .map_err(|e| format!("[proxy.{kind}] endpoint {:?}: {e}", ep.endpoint))?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(format!(
                    "[proxy.{kind}] endpoint {:?}: expected http://host[:port]/path",
                    ep.endpoint
                ));
            }
            if ep.timeout.is_zero() {
                return Err(format!("[proxy.{kind}] timeout must be above zero"));
            }
        }
        for name in self.http_headers.iter().chain(self.static_headers.keys()) {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("[proxy] invalid header name {name:?}"))?;
        }
        if self.max_concurrency == 0 {
            return Err("[proxy] max_concurrency must be at least 1".into());
        }
        Ok(())
    }

    /// Every kind's endpoint, by the kind's name (`connect`, `refresh`, `subscribe`,
    /// `publish`, `sub_refresh`, `rpc`).
    pub fn endpoints(&self) -> [(&'static str, Option<&ProxyEndpoint>); 6] {
        [
            ("connect", self.connect.as_ref()),
            ("refresh", self.refresh.as_ref()),
            ("subscribe", self.subscribe.as_ref()),
            ("publish", self.publish.as_ref()),
            ("sub_refresh", self.sub_refresh.as_ref()),
            ("rpc", self.rpc.as_ref()),
        ]
    }

    /// The endpoint of the kind named `kind`, for setting it (created with the default
    /// timeout and an empty URL when missing).
    pub fn endpoint_mut(&mut self, kind: &str) -> Option<&mut ProxyEndpoint> {
        let slot = match kind {
            "connect" => &mut self.connect,
            "refresh" => &mut self.refresh,
            "subscribe" => &mut self.subscribe,
            "publish" => &mut self.publish,
            "sub_refresh" => &mut self.sub_refresh,
            "rpc" => &mut self.rpc,
            _ => return None,
        };
        Some(slot.get_or_insert_with(ProxyEndpoint::default))
    }
}

/// One proxy kind's endpoint (`[proxy.connect]` and the others).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyEndpoint {
    /// The URL calls are POSTed to (`http://host:port/path`).
    pub endpoint: String,
    /// How long a call may take, waiting for a free slot included (`"1s"`, `"500ms"`, or
    /// a number of seconds).
    #[serde(deserialize_with = "duration_text")]
    pub timeout: Duration,
}

impl Default for ProxyEndpoint {
    fn default() -> Self {
        ProxyEndpoint {
            endpoint: String::new(),
            timeout: DEFAULT_PROXY_TIMEOUT,
        }
    }
}

/// Parses a duration with a unit (`"500ms"`, `"1s"`, `"1.5s"`, `"2m"`) or a plain number
/// of seconds (`"2"`); used by the command line too.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (e.g. \"500ms\", \"1s\")"))?;
    Duration::try_from_secs_f64(v * scale).map_err(|_| format!("not a valid duration: {s:?}"))
}

fn duration_text<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Int(u64),
        Float(f64),
        Text(String),
    }
    match Given::deserialize(d)? {
        Given::Int(n) => Ok(Duration::from_secs(n)),
        Given::Float(f) => Duration::try_from_secs_f64(f).map_err(serde::de::Error::custom),
        Given::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod proxy_tests {
    use super::*;

    #[test]
    fn proxy_from_toml_in_the_documented_shape() {
        let c: ServerConfig = toml::from_str(
            r#"
[proxy]
http_headers = ["Cookie", "Authorization"]
[proxy.connect]
endpoint = "http://127.0.0.1:9000/proxy/connect"
timeout = "1s"
[proxy.rpc]
endpoint = "http://127.0.0.1:9000/proxy/rpc"
timeout = "500ms"
[proxy.subscribe]
endpoint = "http://127.0.0.1:9000/proxy/subscribe"
[channel.default]
proxy_subscribe = true
proxy_publish = true
"#,
        )
        .unwrap();
        assert_eq!(c.proxy.http_headers, vec!["Cookie", "Authorization"]);
        let connect = c.proxy.connect.as_ref().unwrap();
        assert_eq!(connect.endpoint, "http://127.0.0.1:9000/proxy/connect");
        assert_eq!(connect.timeout, Duration::from_secs(1));
        assert_eq!(
            c.proxy.rpc.as_ref().unwrap().timeout,
            Duration::from_millis(500)
        );
        assert!(c.proxy.publish.is_none());
        assert!(c.channel.default.proxy_subscribe && c.channel.default.proxy_publish);
        // `proxy_publish` without `[proxy.publish]` is refused at start.
        assert!(c.validate().unwrap_err().contains("proxy_publish"));
        let mut c = c;
        c.proxy.endpoint_mut("publish").unwrap().endpoint = "http://127.0.0.1:9000/p".into();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn proxy_endpoints_are_checked() {
        let mut c = ServerConfig::default();
        c.proxy.endpoint_mut("connect").unwrap().endpoint = "https://x/y".into();
        assert!(c.validate().is_err());
        c.proxy.endpoint_mut("connect").unwrap().endpoint = "http://127.0.0.1:1/c".into();
        assert!(c.validate().is_ok());
        c.proxy.http_headers = vec!["bad header".into()];
        assert!(c.validate().is_err());
        assert!(c.proxy.endpoint_mut("nope").is_none());
    }

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
