//! Command-line flags of `switchboard serve` and how they combine with the environment and a
//! TOML file into one [`ServerConfig`].
//!
//! Precedence, highest first: command-line flag, `SWITCHBOARD_<FLAG>` environment variable,
//! key in the `--config` TOML file, built-in default. clap resolves the first two (every flag
//! is an `Option`, so "not given" is visible); the file is parsed into a full
//! [`ServerConfig`] whose missing keys are the defaults; then every given flag overrides it.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::builder::BoolishValueParser;
use clap::Args;
use switchboard_server::config::{
    parse_duration, parse_origin_list, parse_secs, LogFormat, ServerConfig, SlowConsumer,
};

/// Flags of the `serve` command. Each is also read from `SWITCHBOARD_<NAME>` and from the
/// `--config` file (key `name` or `name-with-dashes`).
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys like `ping_interval`).
    #[arg(long, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on; port 0 picks a free port [default: 0.0.0.0:8080].
    #[arg(long, env = "SWITCHBOARD_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Text message sent to every new WebSocket connection before anything else.
    #[arg(long, env = "SWITCHBOARD_WELCOME", value_name = "TEXT")]
    pub welcome: Option<String>,

    /// Seconds between pings sent to each connection [default: 25].
    #[arg(long, env = "SWITCHBOARD_PING_INTERVAL", value_name = "SECS", value_parser = parse_secs)]
    pub ping_interval: Option<Duration>,

    /// Seconds a connection has to answer a ping before it is dropped as dead [default: 20].
    #[arg(long, env = "SWITCHBOARD_PING_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
    pub ping_timeout: Option<Duration>,

    /// Most concurrent WebSocket connections; further upgrades get HTTP 503 [default: unlimited].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Largest accepted message in bytes; a larger one closes the connection with 1009
    /// [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    pub max_message_size: Option<usize>,

    /// Seconds a new connection has to finish TLS and send its HTTP request headers
    /// [default: 10].
    #[arg(long, env = "SWITCHBOARD_HANDSHAKE_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
    pub handshake_timeout: Option<Duration>,

    /// Seconds a request body (HTTP API, Socket.IO polling) has to arrive in full once its
    /// headers are read; a slower one gets 408 and its connection is closed [default: 30].
    #[arg(long, env = "SWITCHBOARD_BODY_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
    pub body_timeout: Option<Duration>,

    /// Most members of one room; a further join is closed with 1008 "room full"
    /// [default: unlimited].
    #[arg(long, env = "SWITCHBOARD_MAX_ROOM_MEMBERS", value_name = "N")]
    pub max_room_members: Option<usize>,

    /// Comma-separated origins allowed to open WebSockets: `*`, exact
    /// (`https://chat.example.com`) or wildcard (`https://*.example.com`). Requests without an
    /// Origin header (non-browser clients) are always allowed [default: *].
    #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS", value_name = "LIST")]
    pub allowed_origins: Option<String>,

    /// PEM certificate chain; with --tls-key serves https:// and wss:// on the same port.
    #[arg(long, env = "SWITCHBOARD_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// Offer permessage-deflate compression to clients (true|false) [default: true].
    #[arg(long, env = "SWITCHBOARD_DEFLATE", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    pub deflate: Option<bool>,

    /// What to do with a client whose outgoing queue is full: `close` (1008 "slow consumer")
    /// or `drop-oldest` [default: close].
    #[arg(long, env = "SWITCHBOARD_SLOW_CONSUMER", value_name = "POLICY")]
    pub slow_consumer: Option<SlowConsumer>,

    /// Bound of each connection's outgoing queue in bytes [default: 4194304].
    #[arg(long, env = "SWITCHBOARD_OUTBOX_MAX_BYTES", value_name = "BYTES")]
    pub outbox_max_bytes: Option<usize>,

    /// Bound of each connection's outgoing queue in messages [default: 4096].
    #[arg(long, env = "SWITCHBOARD_OUTBOX_MAX_MESSAGES", value_name = "N")]
    pub outbox_max_messages: Option<usize>,

    /// Seconds allowed for close handshakes on SIGINT/SIGTERM before exiting [default: 5].
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
    pub shutdown_timeout: Option<Duration>,

    /// Log output: `text` or `json` (one object per line) [default: text].
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter: a level (`error`..`trace`) or `target=level` directives [default: info].
    #[arg(long, env = "SWITCHBOARD_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Threads running connections; 0 means one per CPU core [default: 0].
    #[arg(long, env = "SWITCHBOARD_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,

    /// Park idle connections without a task of their own (true|false) [default: true].
    #[arg(long, env = "SWITCHBOARD_PARK_IDLE", value_name = "BOOL", value_parser = BoolishValueParser::new())]
    pub park_idle: Option<bool>,

    /// Shared secret verifying HS256/HS384/HS512 connection and subscription tokens.
    #[arg(long, env = "SWITCHBOARD_TOKEN_HMAC_SECRET", value_name = "SECRET")]
    pub token_hmac_secret: Option<String>,

    /// RSA public key (PEM text or file) verifying RS*/PS* tokens.
    #[arg(long, env = "SWITCHBOARD_TOKEN_RSA_PUBLIC_KEY", value_name = "PEM")]
    pub token_rsa_public_key: Option<String>,

    /// ECDSA public key (PEM text or file) verifying ES256/ES384 tokens.
    #[arg(long, env = "SWITCHBOARD_TOKEN_ECDSA_PUBLIC_KEY", value_name = "PEM")]
    pub token_ecdsa_public_key: Option<String>,

    /// Required `aud` claim of every token.
    #[arg(long, env = "SWITCHBOARD_TOKEN_AUDIENCE", value_name = "AUD")]
    pub token_audience: Option<String>,

    /// Required `iss` claim of every token.
    #[arg(long, env = "SWITCHBOARD_TOKEN_ISSUER", value_name = "ISS")]
    pub token_issuer: Option<String>,

    /// Seconds of clock skew tolerated on token `exp` and `nbf` [default: 0].
    #[arg(long, env = "SWITCHBOARD_TOKEN_LEEWAY", value_name = "SECS")]
    pub token_leeway: Option<u64>,

    /// Let Centrifugo-protocol clients connect without a token (true|false) [default: false].
    #[arg(long, env = "SWITCHBOARD_ALLOW_ANONYMOUS", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub allow_anonymous: Option<bool>,

    /// Key the HTTP API (`POST /api/<method>`) requires in the `X-API-Key` header.
    #[arg(long, env = "SWITCHBOARD_API_KEY", value_name = "KEY")]
    pub api_key: Option<String>,

    /// What several nodes share: `memory` (one node) or `redis://host:port/db`, so that
    /// publications, history, presence and recovery span every node on that Redis
    /// [default: memory].
    #[arg(long, env = "SWITCHBOARD_BROKER", value_name = "URL")]
    pub broker: Option<String>,

    /// Seconds a node's presence entries outlive it when it dies without leaving (renewed
    /// every third of it) [default: 15].
    #[arg(long, env = "SWITCHBOARD_BROKER_LEASE", value_name = "SECS", value_parser = parse_secs)]
    pub broker_lease: Option<Duration>,

    /// Time one webhook request may take before it is retried: "1s", "500ms" or seconds
    /// [default: 5s].
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_TIMEOUT", value_name = "DURATION", value_parser = switchboard_server::webhooks::parse_duration)]
    pub webhook_timeout: Option<Duration>,

    /// Events each webhook target's queue holds; more are dropped and counted [default:
    /// 10000].
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_QUEUE", value_name = "N")]
    pub webhook_queue: Option<usize>,

    /// HTTP URL other nodes reach this node at, registered with the broker [default:
    /// derived from the bound address].
    #[arg(long, env = "SWITCHBOARD_ADVERTISE_URL", value_name = "URL")]
    pub advertise_url: Option<String>,

    /// This node's name in the broker's registry and the `info` API [default: the
    /// advertised URL].
    #[arg(long, env = "SWITCHBOARD_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// With a `rediss://` broker: CA certificates (PEM file) Redis's certificate must chain
    /// to [default: the system's trust store].
    #[arg(long, env = "SWITCHBOARD_BROKER_TLS_CA", value_name = "PATH")]
    pub broker_tls_ca: Option<PathBuf>,

    /// With a `rediss://` broker: client certificate (PEM file) for Redis servers that
    /// require one; needs --broker-tls-key.
    #[arg(long, env = "SWITCHBOARD_BROKER_TLS_CERT", value_name = "PATH")]
    pub broker_tls_cert: Option<PathBuf>,

    /// Private key (PEM file) of --broker-tls-cert.
    #[arg(long, env = "SWITCHBOARD_BROKER_TLS_KEY", value_name = "PATH")]
    pub broker_tls_key: Option<PathBuf>,

    /// With a `rediss://` broker: do not verify Redis's certificate (tests only) (true|false)
    /// [default: false].
    #[arg(long, env = "SWITCHBOARD_BROKER_TLS_INSECURE", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub broker_tls_insecure: Option<bool>,

    /// Id of a Pusher Channels app (with --pusher-app-key and --pusher-app-secret; more
    /// apps: `[[pusher.apps]]` in the config file).
    #[arg(long, env = "SWITCHBOARD_PUSHER_APP_ID", value_name = "ID")]
    pub pusher_app_id: Option<String>,

    /// Key of the Pusher app given by --pusher-app-id (clients connect to `/app/{key}`).
    #[arg(long, env = "SWITCHBOARD_PUSHER_APP_KEY", value_name = "KEY")]
    pub pusher_app_key: Option<String>,

    /// Secret of the Pusher app given by --pusher-app-id.
    #[arg(long, env = "SWITCHBOARD_PUSHER_APP_SECRET", value_name = "SECRET")]
    pub pusher_app_secret: Option<String>,
    /// Most concurrent connections from one client address; further ones get HTTP 503
    /// [default: unlimited].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// New connections per second from one client address; further ones get HTTP 429
    /// [default: unlimited].
    #[arg(
        long,
        env = "SWITCHBOARD_CONNECTION_RATE_PER_IP",
        value_name = "PER_SEC"
    )]
    pub connection_rate_per_ip: Option<f64>,

    /// Most concurrent connections of one authenticated user [default: unlimited].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_USER", value_name = "N")]
    pub max_connections_per_user: Option<usize>,

    /// Messages per second one connection may send; over it messages are dropped, then the
    /// connection is closed with the protocol's policy code [default: unlimited].
    #[arg(long, env = "SWITCHBOARD_CLIENT_MESSAGE_RATE", value_name = "PER_SEC")]
    pub client_message_rate: Option<f64>,

    /// Messages one connection may send at once above --client-message-rate [default: the
    /// rate].
    #[arg(long, env = "SWITCHBOARD_CLIENT_MESSAGE_BURST", value_name = "N")]
    pub client_message_burst: Option<u32>,

    /// Payload bytes per second one connection may send [default: unlimited].
    #[arg(
        long,
        env = "SWITCHBOARD_CLIENT_BYTES_RATE",
        value_name = "BYTES_PER_SEC"
    )]
    pub client_bytes_rate: Option<f64>,

    /// Most channels one connection may be subscribed to at once [default: unlimited].
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        value_name = "N"
    )]
    pub max_subscriptions_per_connection: Option<usize>,

    /// Longest channel name accepted from clients, in bytes [default: unlimited].
    #[arg(long, env = "SWITCHBOARD_MAX_CHANNEL_LENGTH", value_name = "BYTES")]
    pub max_channel_length: Option<usize>,

    /// New connections per second the whole server accepts; further upgrades get HTTP 503
    /// [default: unlimited].
    #[arg(long, env = "SWITCHBOARD_ACCEPT_RATE", value_name = "PER_SEC")]
    pub accept_rate: Option<f64>,

    /// Request header with the client address set by a trusted reverse proxy (e.g.
    /// X-Forwarded-For, last entry used) [default: none, the socket's peer address].
    #[arg(long, env = "SWITCHBOARD_TRUSTED_PROXY_HEADER", value_name = "HEADER")]
    pub trusted_proxy_header: Option<String>,

    /// Seconds over which SIGTERM tells connections to reconnect elsewhere before exiting
    /// [default: 0, all at once].
    #[arg(long, env = "SWITCHBOARD_DRAIN_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
    pub drain_timeout: Option<Duration>,

    /// A second address serving only GET /metrics (plain HTTP) [default: none; /metrics is
    /// on the main port anyway].
    #[arg(long, env = "SWITCHBOARD_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Turn on the admin page at /admin, logged in with this password [default: none, the
    /// page is off].
    #[arg(long, env = "SWITCHBOARD_ADMIN_PASSWORD", value_name = "PASSWORD")]
    pub admin_password: Option<String>,

    /// Demo mode (logged at start): anonymous clients may subscribe, publish and read
    /// presence and history in the default namespace, so the chat page shows channels
    /// without a token; not for production (true|false) [default: false].
    #[arg(long, env = "SWITCHBOARD_DEMO", value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub demo: Option<bool>,

    /// Comma-separated headers of the client's upgrade request forwarded to the proxy
    /// (e.g. `Cookie,Authorization`) [default: none].
    #[arg(long, env = "SWITCHBOARD_PROXY_HTTP_HEADERS", value_name = "LIST")]
    pub proxy_http_headers: Option<String>,

    /// Most proxy calls in flight at once [default: 256].
    #[arg(long, env = "SWITCHBOARD_PROXY_MAX_CONCURRENCY", value_name = "N")]
    pub proxy_max_concurrency: Option<usize>,

    /// URL of the backend's connect proxy (connections without a token), e.g.
    /// `http://127.0.0.1:9000/proxy/connect` [default: none, off].
    #[arg(long, env = "SWITCHBOARD_PROXY_CONNECT_ENDPOINT", value_name = "URL")]
    pub proxy_connect_endpoint: Option<String>,

    /// Time a connect proxy call may take (`500ms`, `1s`) [default: 1s].
    #[arg(long, env = "SWITCHBOARD_PROXY_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub proxy_connect_timeout: Option<Duration>,

    /// URL of the backend's refresh proxy (a proxied connection whose expiry passed), e.g.
    /// `http://127.0.0.1:9000/proxy/refresh` [default: none, off].
    #[arg(long, env = "SWITCHBOARD_PROXY_REFRESH_ENDPOINT", value_name = "URL")]
    pub proxy_refresh_endpoint: Option<String>,

    /// Time a refresh proxy call may take (`500ms`, `1s`) [default: 1s].
    #[arg(long, env = "SWITCHBOARD_PROXY_REFRESH_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub proxy_refresh_timeout: Option<Duration>,

    /// URL of the backend's subscribe proxy (subscriptions in `proxy_subscribe` namespaces), e.g.
    /// `http://127.0.0.1:9000/proxy/subscribe` [default: none, off].
    #[arg(long, env = "SWITCHBOARD_PROXY_SUBSCRIBE_ENDPOINT", value_name = "URL")]
    pub proxy_subscribe_endpoint: Option<String>,

    /// Time a subscribe proxy call may take (`500ms`, `1s`) [default: 1s].
    #[arg(long, env = "SWITCHBOARD_PROXY_SUBSCRIBE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub proxy_subscribe_timeout: Option<Duration>,

    /// URL of the backend's publish proxy (publications in `proxy_publish` namespaces), e.g.
    /// `http://127.0.0.1:9000/proxy/publish` [default: none, off].
    #[arg(long, env = "SWITCHBOARD_PROXY_PUBLISH_ENDPOINT", value_name = "URL")]
    pub proxy_publish_endpoint: Option<String>,

    /// Time a publish proxy call may take (`500ms`, `1s`) [default: 1s].
    #[arg(long, env = "SWITCHBOARD_PROXY_PUBLISH_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub proxy_publish_timeout: Option<Duration>,

    /// URL of the backend's sub_refresh proxy (expiring subscriptions in `proxy_sub_refresh` namespaces), e.g.
    /// `http://127.0.0.1:9000/proxy/sub_refresh` [default: none, off].
    #[arg(
        long,
        env = "SWITCHBOARD_PROXY_SUB_REFRESH_ENDPOINT",
        value_name = "URL"
    )]
    pub proxy_sub_refresh_endpoint: Option<String>,

    /// Time a sub_refresh proxy call may take (`500ms`, `1s`) [default: 1s].
    #[arg(long, env = "SWITCHBOARD_PROXY_SUB_REFRESH_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub proxy_sub_refresh_timeout: Option<Duration>,

    /// URL of the backend's rpc proxy (client RPCs (Centrifugo `rpc`, Socket.IO events with an ack)), e.g.
    /// `http://127.0.0.1:9000/proxy/rpc` [default: none, off].
    #[arg(long, env = "SWITCHBOARD_PROXY_RPC_ENDPOINT", value_name = "URL")]
    pub proxy_rpc_endpoint: Option<String>,

    /// Time a rpc proxy call may take (`500ms`, `1s`) [default: 1s].
    #[arg(long, env = "SWITCHBOARD_PROXY_RPC_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub proxy_rpc_timeout: Option<Duration>,
}

impl ServeArgs {
    /// Combine flags/environment (already merged by clap), the config file and the defaults.
    pub fn resolve(&self) -> anyhow::Result<ServerConfig> {
        let base = match &self.config {
            Some(path) => load_file(path)?,
            None => ServerConfig::default(),
        };
        if self.pusher_app_id.is_some()
            || self.pusher_app_key.is_some()
            || self.pusher_app_secret.is_some()
        {
            anyhow::ensure!(
                self.pusher_app_id.is_some()
                    && self.pusher_app_key.is_some()
                    && self.pusher_app_secret.is_some(),
                "--pusher-app-id, --pusher-app-key and --pusher-app-secret go together"
            );
        }
        let config = self.apply(base);
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }

    /// Override `base` with every setting given on the command line or in the environment.
    pub fn apply(&self, base: ServerConfig) -> ServerConfig {
        let mut c = base;
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = &self.welcome {
            c.welcome = Some(v.clone());
        }
        if let Some(v) = self.ping_interval {
            c.ping_interval = v;
        }
        if let Some(v) = self.ping_timeout {
            c.ping_timeout = v;
        }
        if let Some(v) = self.max_connections {
            c.max_connections = Some(v);
        }
        if let Some(v) = self.max_connections_per_ip {
            c.max_connections_per_ip = Some(v);
        }
        if let Some(v) = self.connection_rate_per_ip {
            c.connection_rate_per_ip = Some(v);
        }
        if let Some(v) = self.max_connections_per_user {
            c.max_connections_per_user = Some(v);
        }
        if let Some(v) = self.client_message_rate {
            c.client_message_rate = Some(v);
        }
        if let Some(v) = self.client_message_burst {
            c.client_message_burst = Some(v);
        }
        if let Some(v) = self.client_bytes_rate {
            c.client_bytes_rate = Some(v);
        }
        if let Some(v) = self.max_subscriptions_per_connection {
            c.max_subscriptions_per_connection = Some(v);
        }
        if let Some(v) = self.max_channel_length {
            c.max_channel_length = Some(v);
        }
        if let Some(v) = self.accept_rate {
            c.accept_rate = Some(v);
        }
        if let Some(v) = &self.trusted_proxy_header {
            c.trusted_proxy_header = Some(v.clone());
        }
        if let Some(v) = self.drain_timeout {
            c.drain_timeout = v;
        }
        if let Some(v) = self.metrics_listen {
            c.metrics_listen = Some(v);
        }
        if let Some(v) = &self.admin_password {
            c.admin_password = Some(v.clone());
        }
        if let Some(v) = self.demo {
            c.demo = v;
        }
        if let Some(v) = self.outbox_max_messages {
            c.outbox_max_messages = v;
        }
        if let Some(v) = self.token_leeway {
            c.token_leeway = v;
        }
        if let Some(v) = &self.proxy_http_headers {
            c.proxy.http_headers = parse_origin_list(v);
        }
        if let Some(v) = self.proxy_max_concurrency {
            c.proxy.max_concurrency = v;
        }
        if let Some(v) = &self.proxy_connect_endpoint {
            set_proxy(&mut c, "connect", Some(v), None);
        }
        if let Some(v) = self.proxy_connect_timeout {
            set_proxy(&mut c, "connect", None, Some(v));
        }
        if let Some(v) = &self.proxy_refresh_endpoint {
            set_proxy(&mut c, "refresh", Some(v), None);
        }
        if let Some(v) = self.proxy_refresh_timeout {
            set_proxy(&mut c, "refresh", None, Some(v));
        }
        if let Some(v) = &self.proxy_subscribe_endpoint {
            set_proxy(&mut c, "subscribe", Some(v), None);
        }
        if let Some(v) = self.proxy_subscribe_timeout {
            set_proxy(&mut c, "subscribe", None, Some(v));
        }
        if let Some(v) = &self.proxy_publish_endpoint {
            set_proxy(&mut c, "publish", Some(v), None);
        }
        if let Some(v) = self.proxy_publish_timeout {
            set_proxy(&mut c, "publish", None, Some(v));
        }
        if let Some(v) = &self.proxy_sub_refresh_endpoint {
            set_proxy(&mut c, "sub_refresh", Some(v), None);
        }
        if let Some(v) = self.proxy_sub_refresh_timeout {
            set_proxy(&mut c, "sub_refresh", None, Some(v));
        }
        if let Some(v) = &self.proxy_rpc_endpoint {
            set_proxy(&mut c, "rpc", Some(v), None);
        }
        if let Some(v) = self.proxy_rpc_timeout {
            set_proxy(&mut c, "rpc", None, Some(v));
        }
        if let Some(v) = self.max_message_size {
            c.max_message_size = v;
        }
        if let Some(v) = self.handshake_timeout {
            c.handshake_timeout = v;
        }
        if let Some(v) = self.body_timeout {
            c.body_timeout = v;
        }
        if let Some(v) = self.max_room_members {
            c.max_room_members = Some(v);
        }
        if let Some(v) = &self.allowed_origins {
            c.allowed_origins = parse_origin_list(v);
        }
        if let Some(v) = &self.tls_cert {
            c.tls_cert = Some(v.clone());
        }
        if let Some(v) = &self.tls_key {
            c.tls_key = Some(v.clone());
        }
        if let Some(v) = self.deflate {
            c.deflate = v;
        }
        if let Some(v) = self.slow_consumer {
            c.slow_consumer = v;
        }
        if let Some(v) = self.outbox_max_bytes {
            c.outbox_max_bytes = v;
        }
        if let Some(v) = self.shutdown_timeout {
            c.shutdown_timeout = v;
        }
        if let Some(v) = self.log_format {
            c.log_format = v;
        }
        if let Some(v) = &self.log_level {
            c.log_level = v.clone();
        }
        if let Some(v) = self.worker_threads {
            c.worker_threads = v;
        }
        if let Some(v) = self.park_idle {
            c.park_idle = v;
        }
        if let Some(v) = &self.token_hmac_secret {
            c.token_hmac_secret = Some(v.clone());
        }
        if let Some(v) = &self.token_rsa_public_key {
            c.token_rsa_public_key = Some(v.clone());
        }
        if let Some(v) = &self.token_ecdsa_public_key {
            c.token_ecdsa_public_key = Some(v.clone());
        }
        if let Some(v) = &self.token_audience {
            c.token_audience = Some(v.clone());
        }
        if let Some(v) = &self.token_issuer {
            c.token_issuer = Some(v.clone());
        }
        if let Some(v) = self.allow_anonymous {
            c.allow_anonymous = v;
        }
        if let Some(v) = &self.api_key {
            c.api_key = Some(v.clone());
        }
        if let Some(v) = &self.broker {
            c.broker = Some(v.clone());
        }
        if let Some(v) = self.broker_lease {
            c.broker_lease = v;
        }
        if let Some(v) = self.webhook_timeout {
            c.webhook_timeout = v;
        }
        if let Some(v) = self.webhook_queue {
            c.webhook_queue = v;
        }
        if let Some(v) = &self.advertise_url {
            c.advertise_url = Some(v.clone());
        }
        if let Some(v) = &self.node_name {
            c.node_name = Some(v.clone());
        }
        if let Some(v) = &self.broker_tls_ca {
            c.broker_tls_ca = Some(v.clone());
        }
        if let Some(v) = &self.broker_tls_cert {
            c.broker_tls_cert = Some(v.clone());
        }
        if let Some(v) = &self.broker_tls_key {
            c.broker_tls_key = Some(v.clone());
        }
        if let Some(v) = self.broker_tls_insecure {
            c.broker_tls_insecure = v;
        }
        if let (Some(id), Some(key), Some(secret)) = (
            &self.pusher_app_id,
            &self.pusher_app_key,
            &self.pusher_app_secret,
        ) {
            let webhooks = c
                .pusher
                .app_by_id(id)
                .map(|a| a.webhooks.clone())
                .unwrap_or_default();
            c.pusher.set_app(switchboard_server::config::PusherApp {
                id: id.clone(),
                key: key.clone(),
                secret: secret.clone(),
                webhooks,
            });
        }
        c
    }
}

/// Read a TOML config file; unknown keys are an error so typos do not pass silently.
pub fn load_file(path: &Path) -> anyhow::Result<ServerConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Sets one proxy kind's endpoint URL and/or timeout (the kind is created when missing).
fn set_proxy(c: &mut ServerConfig, kind: &str, url: Option<&String>, timeout: Option<Duration>) {
    if let Some(ep) = c.proxy.endpoint_mut(kind) {
        if let Some(url) = url {
            ep.endpoint = url.clone();
        }
        if let Some(t) = timeout {
            ep.timeout = t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::sync::Mutex;

    /// Environment variables are process-wide; tests touching them take turns.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn resolve(args: &[&str]) -> anyhow::Result<ServerConfig> {
        let mut argv = vec!["switchboard"];
        argv.extend_from_slice(args);
        TestCli::try_parse_from(argv)?.serve.resolve()
    }

    fn with_env<T>(vars: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let out = f();
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        out
    }

    fn write_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn broker_settings_from_flag_env_and_file() {
        let file = write_file(
            "broker = \"redis://file:6379/0\"\nbroker-lease = 4\nnode_name = \"n-file\"\n",
        );
        let path = file.path().to_str().unwrap().to_string();
        let c = with_env(&[("SWITCHBOARD_BROKER", "redis://env:6379/1")], || {
            resolve(&["--config", &path, "--advertise-url", "http://10.0.0.5:8080"])
        })
        .unwrap();
        assert_eq!(c.broker.as_deref(), Some("redis://env:6379/1"));
        assert_eq!(c.broker_lease, Duration::from_secs(4));
        assert_eq!(c.node_name.as_deref(), Some("n-file"));
        assert_eq!(c.advertise_url.as_deref(), Some("http://10.0.0.5:8080"));
        let c = with_env(&[], || resolve(&["--broker", "redis://flag:1/0"])).unwrap();
        assert_eq!(c.broker.as_deref(), Some("redis://flag:1/0"));
        assert!(with_env(&[], || resolve(&["--broker", "nats://x"])).is_err());
    }

    #[test]
    fn webhooks_from_file_flags_and_env() {
        let file = write_file(
            "webhook_timeout = \"250ms\"\nwebhook-queue = 7\n\
             [[webhooks]]\nurl = \"http://127.0.0.1:9000/hooks\"\nsecret = \"s\"\nkey = \"k\"\n\
             event_types = [\"channel_occupied\", \"connect\"]\nnamespaces = [\"chat\"]\n",
        );
        let path = file.path().to_str().unwrap().to_string();
        let c = with_env(&[], || resolve(&["--config", &path])).unwrap();
        assert_eq!(c.webhook_timeout, Duration::from_millis(250));
        assert_eq!(c.webhook_queue, 7);
        assert_eq!(c.webhooks.len(), 1);
        assert_eq!(c.webhooks[0].namespaces, Some(vec!["chat".to_string()]));
        let c = with_env(&[("SWITCHBOARD_WEBHOOK_TIMEOUT", "2s")], || {
            resolve(&["--config", &path, "--webhook-queue", "9"])
        })
        .unwrap();
        assert_eq!(
            (c.webhook_timeout, c.webhook_queue),
            (Duration::from_secs(2), 9)
        );
        let c = with_env(&[], || resolve(&["--webhook-timeout", "1.5"])).unwrap();
        assert_eq!(c.webhook_timeout, Duration::from_millis(1500));
        assert!(with_env(&[], || resolve(&["--webhook-timeout", "soon"])).is_err());
        let bad = write_file("[[webhooks]]\nurl = \"http://h/\"\nsecret = \"s\"\nkey = \"k\"\nevent_types = [\"nope\"]\n");
        let bad = bad.path().to_str().unwrap().to_string();
        assert!(
            with_env(&[], || resolve(&["--config", &bad])).is_err(),
            "unknown event types are refused"
        );
    }

    #[test]
    fn a_pusher_app_from_flags_env_or_file() {
        let file = write_file("[[pusher.apps]]\nid = \"1\"\nkey = \"k1\"\nsecret = \"s1\"\n");
        let path = file.path().to_str().unwrap();
        let c = with_env(
            &[
                ("SWITCHBOARD_PUSHER_APP_ID", "2"),
                ("SWITCHBOARD_PUSHER_APP_KEY", "k2"),
            ],
            || resolve(&["--config", path, "--pusher-app-secret", "s2"]),
        )
        .unwrap();
        assert_eq!(c.pusher.apps.len(), 2);
        assert_eq!(c.pusher.app_by_key("k2").unwrap().secret, "s2");
        assert_eq!(c.pusher.app_by_key("k1").unwrap().id, "1");
        assert!(with_env(&[], || resolve(&["--pusher-app-id", "x"])).is_err());
    }

    #[test]
    fn defaults_without_anything() {
        let c = with_env(&[], || resolve(&[])).unwrap();
        assert_eq!(c, ServerConfig::default());
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let file = write_file(
            "ping_interval = 7\nping-timeout = 6\nwelcome = \"from file\"\nmax_connections = 3\n\
             allowed_origins = [\"https://file.test\"]\n",
        );
        let path = file.path().to_str().unwrap().to_string();
        let c = with_env(
            &[
                ("SWITCHBOARD_PING_INTERVAL", "8"),
                ("SWITCHBOARD_WELCOME", "from env"),
            ],
            || resolve(&["--config", &path, "--welcome", "from flag"]),
        )
        .unwrap();
        // flag > env
        assert_eq!(c.welcome.as_deref(), Some("from flag"));
        // env > file
        assert_eq!(c.ping_interval, Duration::from_secs(8));
        // file > default (kebab-case key accepted too)
        assert_eq!(c.ping_timeout, Duration::from_secs(6));
        assert_eq!(c.max_connections, Some(3));
        assert_eq!(c.allowed_origins, vec!["https://file.test"]);
        // default where nobody said anything
        assert_eq!(c.max_message_size, 1_048_576);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    }

    #[test]
    fn config_file_from_env_and_typed_values() {
        let file = write_file(
            "deflate = false\nslow_consumer = \"drop-oldest\"\nhandshake_timeout = 0.5\n",
        );
        let path = file.path().to_str().unwrap().to_string();
        let c = with_env(
            &[
                ("SWITCHBOARD_CONFIG", &path),
                (
                    "SWITCHBOARD_ALLOWED_ORIGINS",
                    "https://a.test, https://*.b.test",
                ),
            ],
            || resolve(&["--max-message-size", "1000", "--log-format", "json"]),
        )
        .unwrap();
        assert!(!c.deflate);
        assert_eq!(c.slow_consumer, SlowConsumer::DropOldest);
        assert_eq!(c.handshake_timeout, Duration::from_millis(500));
        assert_eq!(
            c.allowed_origins,
            vec!["https://a.test", "https://*.b.test"]
        );
        assert_eq!(c.max_message_size, 1000);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn worker_threads_flag_over_env_over_file() {
        let file = write_file("worker_threads = 3\n");
        let path = file.path().to_str().unwrap().to_string();
        let from_file = with_env(&[("SWITCHBOARD_CONFIG", &path)], || resolve(&[])).unwrap();
        assert_eq!(from_file.worker_threads, 3);
        let from_env = with_env(
            &[
                ("SWITCHBOARD_CONFIG", &path),
                ("SWITCHBOARD_WORKER_THREADS", "2"),
            ],
            || resolve(&[]),
        )
        .unwrap();
        assert_eq!(from_env.worker_threads, 2);
        let from_flag = with_env(
            &[
                ("SWITCHBOARD_CONFIG", &path),
                ("SWITCHBOARD_WORKER_THREADS", "2"),
            ],
            || resolve(&["--worker-threads", "1"]),
        )
        .unwrap();
        assert_eq!(from_flag.worker_threads, 1);
        assert_eq!(resolve(&[]).unwrap().worker_threads, 0);
        assert!(resolve(&["--worker-threads", "5000"]).is_err());
    }

    #[test]
    fn park_idle_flag_over_env_over_file() {
        assert!(resolve(&[]).unwrap().park_idle);
        let file = write_file("park_idle = false\n");
        let path = file.path().to_str().unwrap().to_string();
        let from_file = with_env(&[("SWITCHBOARD_CONFIG", &path)], || resolve(&[])).unwrap();
        assert!(!from_file.park_idle);
        let from_env = with_env(
            &[
                ("SWITCHBOARD_CONFIG", &path),
                ("SWITCHBOARD_PARK_IDLE", "true"),
            ],
            || resolve(&[]),
        )
        .unwrap();
        assert!(from_env.park_idle);
        let from_flag = with_env(
            &[
                ("SWITCHBOARD_CONFIG", &path),
                ("SWITCHBOARD_PARK_IDLE", "true"),
            ],
            || resolve(&["--park-idle", "false"]),
        )
        .unwrap();
        assert!(!from_flag.park_idle);
    }

    /// The README's configuration table, row by row: (flags, environment variables, TOML
    /// keys) as written in its first three columns.
    fn readme_rows() -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
        let readme = include_str!("../README.md");
        let table = readme
            .split("| Flag | Environment variable | TOML key | Default | Meaning |")
            .nth(1)
            .expect("the README has the configuration table");
        // Code spans of a cell: `--x N`, `SWITCHBOARD_X`, `x` (an ellipsis abbreviates a
        // second name sharing the first's prefix, e.g. `SWITCHBOARD_A_CERT`, `…_KEY`).
        // A key inside a table is written `[table] key` and kept whole.
        let spans = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(|s| match s.starts_with('[') {
                    true => s.to_string(),
                    false => s.split_whitespace().next().unwrap_or("").to_string(),
                })
                .collect()
        };
        table
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.split(" | ").collect();
                (spans(cells[0]), spans(cells[1]), spans(cells[2]))
            })
            .filter(|(flags, _, _)| !flags.is_empty())
            .collect()
    }

    #[test]
    fn the_readme_table_names_every_flag_and_only_real_ones() {
        use clap::CommandFactory;
        let cmd = TestCli::command();
        let args: Vec<_> = cmd
            .get_arguments()
            .filter_map(|a| {
                Some((
                    a.get_long()?.to_string(),
                    a.get_env()?.to_str()?.to_string(),
                ))
            })
            .collect();
        let rows = readme_rows();
        assert!(rows.len() > 40, "the table was found: {} rows", rows.len());
        let mut documented = std::collections::HashSet::new();
        for (flags, envs, keys) in &rows {
            for (i, flag) in flags.iter().enumerate() {
                let long = flag.trim_start_matches("--");
                let Some((_, env)) = args.iter().find(|(l, _)| l == long) else {
                    panic!("README documents {flag}, which `serve` does not have");
                };
                documented.insert(long.to_string());
                // The env column names this flag's variable (the second of a pair may be
                // abbreviated `…_SUFFIX`).
                let listed = envs.get(i).or(envs.first()).expect("an env column");
                let listed = match listed.strip_prefix('…') {
                    Some(suffix) => format!(
                        "{}{suffix}",
                        &envs[0][..envs[0].rfind('_').expect("an underscore")]
                    ),
                    None => listed.clone(),
                };
                assert_eq!(&listed, env, "environment variable of {flag}");
                // The TOML key is the flag's name with underscores, at the top level or
                // as `[table] key` (`--proxy-connect-timeout` is `[proxy.connect] timeout`),
                // and the parser knows it.
                let key = long.replace('-', "_");
                let toml_line = keys.iter().find_map(|k| match k.split_once("] ") {
                    Some((table, name)) => {
                        let table = table.trim_start_matches('[');
                        (format!("{}_{name}", table.replace('.', "_")) == key)
                            .then(|| format!("[{table}]\n{name} = []"))
                    }
                    None => (*k == key).then(|| format!("{key} = []")),
                });
                let Some(toml_line) = toml_line else {
                    panic!("README's TOML key for {flag}: {keys:?}");
                };
                let err = toml::from_str::<ServerConfig>(&toml_line)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                assert!(!err.contains("unknown field"), "{toml_line}: {err}");
            }
        }
        // Every flag of `serve` is documented, except the config file itself and the
        // Pusher app triple (documented in the README's Pusher section).
        let undocumented: Vec<_> = args
            .iter()
            .map(|(l, _)| l.as_str())
            .filter(|l| !documented.contains(*l))
            .filter(|l| *l != "config" && !l.starts_with("pusher-app-"))
            .collect();
        assert!(
            undocumented.is_empty(),
            "flags missing from the README table: {undocumented:?}"
        );
    }

    #[test]
    fn token_leeway_outbox_messages_admin_and_demo_are_flags() {
        let c = with_env(&[("SWITCHBOARD_ADMIN_PASSWORD", "pw")], || {
            resolve(&[
                "--token-leeway",
                "7",
                "--outbox-max-messages",
                "9",
                "--demo",
            ])
        })
        .unwrap();
        assert_eq!(c.token_leeway, 7);
        assert_eq!(c.outbox_max_messages, 9);
        assert_eq!(c.admin_password.as_deref(), Some("pw"));
        assert!(c.demo);
    }

    #[test]
    fn deflate_flag_overrides_file() {
        let file = write_file("deflate = false\n");
        let path = file.path().to_str().unwrap().to_string();
        let c = with_env(&[], || resolve(&["--config", &path, "--deflate", "true"])).unwrap();
        assert!(c.deflate);
        let c = with_env(&[], || resolve(&["--deflate", "false"])).unwrap();
        assert!(!c.deflate);
    }

    #[test]
    fn documented_example_file_parses() {
        let file = write_file(
            "listen = \"0.0.0.0:8080\"\nwelcome = \"Welcome to Switchboard\"\n\
             max_message_size = 65536\nallowed_origins = \"https://*.example.com\"\n",
        );
        let c = load_file(file.path()).unwrap();
        assert_eq!(c.welcome.as_deref(), Some("Welcome to Switchboard"));
        assert_eq!(c.max_message_size, 65536);
        assert_eq!(c.allowed_origins, vec!["https://*.example.com"]);
        assert_eq!(
            c.ping_interval,
            Duration::from_secs(25),
            "unset keys keep their defaults"
        );
    }

    #[test]
    fn token_flags_and_channel_namespaces() {
        let file = write_file(
            "token_hmac_secret = \"file\"\n[channel.namespaces.chat]\npresence = true\n",
        );
        let path = file.path().to_str().unwrap().to_string();
        let c = with_env(&[("SWITCHBOARD_API_KEY", "env-key")], || {
            resolve(&[
                "--config",
                &path,
                "--allow-anonymous",
                "--token-hmac-secret",
                "flag",
            ])
        })
        .unwrap();
        assert!(c.allow_anonymous);
        assert_eq!(c.token_hmac_secret.as_deref(), Some("flag"));
        assert_eq!(c.api_key.as_deref(), Some("env-key"));
        assert!(c.channel.namespaces["chat"].presence);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let file = write_file("no_such_key = 1\n");
        let path = file.path().to_str().unwrap().to_string();
        assert!(with_env(&[], || resolve(&["--config", &path])).is_err());
        assert!(with_env(&[], || resolve(&["--ping-interval", "soon"])).is_err());
        assert!(with_env(&[], || resolve(&["--tls-cert", "only-cert.pem"])).is_err());
        assert!(with_env(&[], || resolve(&[
            "--config",
            "/nonexistent/switchboard.toml"
        ]))
        .is_err());
    }

    #[test]
    fn proxy_flags_set_endpoints_and_timeouts() {
        let args = ServeArgs {
            proxy_connect_endpoint: Some("http://127.0.0.1:9000/proxy/connect".into()),
            proxy_connect_timeout: Some(Duration::from_millis(500)),
            proxy_rpc_endpoint: Some("http://127.0.0.1:9000/proxy/rpc".into()),
            proxy_http_headers: Some("Cookie, Authorization".into()),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        let connect = c.proxy.connect.as_ref().unwrap();
        assert_eq!(connect.endpoint, "http://127.0.0.1:9000/proxy/connect");
        assert_eq!(connect.timeout, Duration::from_millis(500));
        assert_eq!(
            c.proxy.rpc.as_ref().unwrap().timeout,
            Duration::from_secs(1)
        );
        assert_eq!(c.proxy.http_headers, vec!["Cookie", "Authorization"]);
        // A timeout without an endpoint is a configuration error, not a silent no-op.
        let bad = ServeArgs {
            proxy_publish_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        assert!(bad.resolve().is_err());
    }
}
