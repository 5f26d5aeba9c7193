//! The application backend's proxy: HTTP calls that let the backend decide connects,
//! subscriptions and publications and answer RPCs, in Centrifugo's proxy format
//! ([`format`]), for every protocol.
//!
//! One [`Proxy`] per server: per-kind endpoint and timeout (`[proxy.connect]`, …), a
//! pooled keep-alive HTTP/1.1 client ([`pool`]), at most `max_concurrency` calls in flight
//! (a semaphore; a call waits for a slot within its own timeout), the configured headers
//! of the client's upgrade request forwarded (`http_headers`, e.g. `Cookie`) plus
//! `static_headers`. Every call ends within its kind's timeout with an [`Answer`] or a
//! [`Failure`]; protocols turn a failure into their own temporary error. Calls are counted
//! by kind and result and timed ([`ProxyStats`], `switchboard_proxy_*` in `/metrics`).
//!
//! A driver never awaits a call inside its step once the client is connected: it spawns
//! the call and gets the answer back as one of its events, so pings, deliveries and other
//! commands go on meanwhile.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request};
use http_body_util::Full;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Semaphore;

use crate::config::ProxyConfig;

pub(crate) mod format;
mod pool;

pub(crate) use format::{
    Answer, BackendDisconnect, BackendError, ProxyRequest, ProxyResult, SubscribeOverride,
};

/// The kinds of proxy call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A connection without a token.
    Connect = 0,
    /// A proxied connection's `expire_at` passed.
    Refresh = 1,
    /// A subscription in a `proxy_subscribe` namespace.
    Subscribe = 2,
    /// A publication in a `proxy_publish` namespace.
    Publish = 3,
    /// An expiring subscription in a `proxy_sub_refresh` namespace.
    SubRefresh = 4,
    /// A client RPC.
    Rpc = 5,
}

impl Kind {
    /// Every kind, in index order.
    pub(crate) const ALL: [Kind; 6] = [
        Kind::Connect,
        Kind::Refresh,
        Kind::Subscribe,
        Kind::Publish,
        Kind::SubRefresh,
        Kind::Rpc,
    ];

    /// The kind's name in configuration and metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Refresh => "refresh",
            Kind::Subscribe => "subscribe",
            Kind::Publish => "publish",
            Kind::SubRefresh => "sub_refresh",
            Kind::Rpc => "rpc",
        }
    }
}

/// Why a call has no answer from the backend. Protocols report all of them to the client
/// as a temporary error (the backend may be back soon); the log line says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Failure {
    /// No endpoint is configured for the kind (a caller's bug: it checks first).
    #[error("no proxy endpoint configured")]
    NotConfigured,
    /// No answer within the kind's timeout (a free slot included).
    #[error("backend timed out")]
    Timeout,
    /// The backend could not be reached.
    #[error("backend unreachable")]
    Unreachable,
    /// The backend answered with a non-2xx status or a body that is not the proxy format.
    #[error("backend answered garbage")]
    BadResponse,
}

/// The results a call is counted under.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok = 0,
    Rejected = 1,
    Timeout = 2,
    Unreachable = 3,
    BadResponse = 4,
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Ok, "ok"),
    (Outcome::Rejected, "rejected"),
    (Outcome::Timeout, "timeout"),
    (Outcome::Unreachable, "unreachable"),
    (Outcome::BadResponse, "bad_response"),
];

/// Bucket bounds of the call-duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Proxy calls by kind and result, and their durations by kind.
pub(crate) struct ProxyStats {
    calls: [[AtomicU64; 5]; 6],
    durations: [Histogram; 6],
}

impl Default for ProxyStats {
    fn default() -> Self {
        ProxyStats {
            calls: Default::default(),
            durations: std::array::from_fn(|_| Histogram::new(DURATION_BUCKETS)),
        }
    }
}

impl ProxyStats {
    fn record(&self, kind: Kind, outcome: Outcome, took: Duration) {
        self.calls[kind as usize][outcome as usize].fetch_add(1, Relaxed);
        self.durations[kind as usize].observe(took.as_secs_f64());
    }

    /// `(kind, result, calls)` for every pair, for `/metrics`.
    pub(crate) fn calls(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut v = Vec::with_capacity(30);
        for kind in Kind::ALL {
            for (outcome, label) in OUTCOMES {
                v.push((
                    kind.label(),
                    label,
                    self.calls[kind as usize][outcome as usize].load(Relaxed),
                ));
            }
        }
        v
    }

    /// The duration histogram of every kind, for `/metrics`.
    pub(crate) fn durations(&self) -> impl Iterator<Item = (&'static str, &Histogram)> {
        Kind::ALL
            .into_iter()
            .map(|k| (k.label(), &self.durations[k as usize]))
    }
}

/// Where one kind's calls go.
struct Target {
    /// `host:port` to connect to.
    addr: String,
    /// The `Host` header.
    host: HeaderValue,
    /// The request target (path and query).
    path: String,
    timeout: Duration,
}

/// The headers of a client's upgrade request the proxy forwards, captured once per
/// connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Forwarded(std::sync::Arc<[(HeaderName, HeaderValue)]>);

/// The server's proxy (see the module documentation).
pub(crate) struct Proxy {
    targets: [Option<Target>; 6],
    forward: Vec<HeaderName>,
    static_headers: Vec<(HeaderName, HeaderValue)>,
    permits: Semaphore,
    pool: pool::Pool,
    /// Calls and durations, for `/metrics`.
    pub(crate) stats: ProxyStats,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Proxy")
    }
}

impl Proxy {
    /// The proxy of a (validated) configuration; kinds without an endpoint are off.
    pub(crate) fn new(config: &ProxyConfig) -> Proxy {
        let targets = std::array::from_fn(|i| {
            let (_, ep) = config.endpoints()[i];
            let ep = ep?;
            let uri: http::Uri = ep.endpoint.parse().ok()?;
            let host = uri.host()?.to_string();
            let port = uri.port_u16().unwrap_or(80);
            let authority = uri.authority()?.as_str().to_string();
            Some(Target {
                addr: format!("{host}:{port}"),
                host: HeaderValue::from_str(&authority).ok()?,
                path: uri
                    .path_and_query()
                    .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
                timeout: ep.timeout,
            })
        });
        Proxy {
            targets,
            forward: config
                .http_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            static_headers: config
                .static_headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            permits: Semaphore::new(config.max_concurrency.max(1)),
            pool: pool::Pool::default(),
            stats: ProxyStats::default(),
        }
    }

    /// Whether any kind of call is configured.
    pub(crate) fn any_enabled(&self) -> bool {
        self.targets.iter().any(Option::is_some)
    }

    /// Whether calls of `kind` are configured.
    pub(crate) fn enabled(&self, kind: Kind) -> bool {
        self.targets[kind as usize].is_some()
    }

    /// The configured headers of a client's request, to forward with its calls.
    pub(crate) fn forwarded(&self, headers: &HeaderMap) -> Forwarded {
        let mut v = Vec::new();
        for name in &self.forward {
            for value in headers.get_all(name) {
                v.push((name.clone(), value.clone()));
            }
        }
        Forwarded(v.into())
    }

    /// One call: POSTs `req` to `kind`'s endpoint and reads the answer, within the kind's
    /// timeout.
    pub(crate) async fn call(
        &self,
        kind: Kind,
        forwarded: &Forwarded,
        req: &ProxyRequest,
    ) -> Result<Answer, Failure> {
        let Some(target) = &self.targets[kind as usize] else {
            return Err(Failure::NotConfigured);
        };
        let started = Instant::now();
        let r = match tokio::time::timeout(target.timeout, self.exchange(target, forwarded, req))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        };
        let outcome = match &r {
            Ok(Answer::Ok(_)) => Outcome::Ok,
            Ok(_) => Outcome::Rejected,
            Err(Failure::Timeout) => Outcome::Timeout,
            Err(Failure::Unreachable) => Outcome::Unreachable,
            Err(_) => Outcome::BadResponse,
        };
        self.stats.record(kind, outcome, started.elapsed());
        if let Err(e) = &r {
            tracing::warn!(kind = kind.label(), endpoint = %target.path, "proxy call failed: {e}");
        }
        r
    }

    async fn exchange(
        &self,
        target: &Target,
        forwarded: &Forwarded,
        req: &ProxyRequest,
    ) -> Result<Answer, Failure> {
        let body = serde_json::to_vec(req).map_err(|_| Failure::BadResponse)?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(target.path.as_str())
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| Failure::BadResponse)?;
        let headers = request.headers_mut();
        for (name, value) in forwarded.0.iter() {
            headers.append(name.clone(), value.clone());
        }
        for (name, value) in &self.static_headers {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(HOST, target.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Failure::Unreachable)?;
        let response = self
            .pool
            .send(&target.addr, request)
            .await
            .map_err(|e| match e {
                pool::PoolError::Connect(_) => Failure::Unreachable,
                pool::PoolError::Http(_) => Failure::BadResponse,
            })?;
        if !response.status().is_success() {
            return Err(Failure::BadResponse);
        }
        format::ProxyResponse::parse(response.body()).ok_or(Failure::BadResponse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyEndpoint;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend on loopback answering every request with `body` after `delay`, over
    /// keep-alive connections; counts the TCP connections it accepted.
    async fn backend(body: &'static str, delay: Duration) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut seen = Vec::new();
                    loop {
                        let n = match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        seen.extend_from_slice(&buf[..n]);
                        // One whole request: headers, then the Content-Length body.
                        let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if seen.len() < end + 4 + len {
                            continue;
                        }
                        seen.drain(..end + 4 + len);
                        tokio::time::sleep(delay).await;
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tcp.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/proxy"), accepted)
    }

    fn proxy_for(url: &str, timeout: Duration) -> Proxy {
        let config = ProxyConfig {
            rpc: Some(ProxyEndpoint {
                endpoint: url.to_string(),
                timeout,
            }),
            ..Default::default()
        };
        Proxy::new(&config)
    }

    fn rpc() -> ProxyRequest {
        ProxyRequest::new("centrifugo", "websocket", "c".into())
    }

    #[tokio::test]
    async fn calls_reuse_one_keep_alive_connection() {
        let (url, accepted) = backend(r#"{"result":{"data":{"ok":1}}}"#, Duration::ZERO).await;
        let proxy = proxy_for(&url, Duration::from_secs(2));
        for _ in 0..3 {
            let r = proxy.call(Kind::Rpc, &Forwarded::default(), &rpc()).await;
            assert!(matches!(r, Ok(Answer::Ok(_))), "{r:?}");
        }
        assert_eq!(accepted.load(Relaxed), 1);
        assert!(proxy.stats.calls().contains(&("rpc", "ok", 3)));
    }

    #[tokio::test]
    async fn slow_garbage_and_absent_backends_fail_within_the_timeout() {
        let (slow, _) = backend("{}", Duration::from_secs(5)).await;
        let proxy = proxy_for(&slow, Duration::from_millis(200));
        let started = Instant::now();
        let r = proxy.call(Kind::Rpc, &Forwarded::default(), &rpc()).await;
        assert_eq!(r.unwrap_err(), Failure::Timeout);
        assert!(started.elapsed() < Duration::from_secs(2));

        let (garbage, _) = backend("<html>", Duration::ZERO).await;
        let proxy = proxy_for(&garbage, Duration::from_secs(2));
        let r = proxy.call(Kind::Rpc, &Forwarded::default(), &rpc()).await;
        assert_eq!(r.unwrap_err(), Failure::BadResponse);

        // A port nothing listens on (bound, then released).
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let proxy = proxy_for(
            &format!("http://127.0.0.1:{port}/x"),
            Duration::from_secs(2),
        );
        let r = proxy.call(Kind::Rpc, &Forwarded::default(), &rpc()).await;
        assert_eq!(r.unwrap_err(), Failure::Unreachable);
        assert!(!proxy.enabled(Kind::Connect));
        let r = proxy
            .call(Kind::Connect, &Forwarded::default(), &rpc())
            .await;
        assert_eq!(r.unwrap_err(), Failure::NotConfigured);
    }
}
