//! The webhook sender: a bounded queue and a task per target, batching, signing, POSTing
//! with a timeout and retrying with exponential backoff.
//!
//! [`Webhooks::emit`] offers an event to every target that wants it with `try_send`: it
//! never waits, so whatever calls it (the hub's observer, a protocol driver) is never held
//! up by a receiver. A full queue drops the event; drops are counted
//! (`switchboard_webhook_dropped`) and logged (at most once a second per target).
//!
//! Each target's task takes everything queued (up to [`MAX_BATCH`] events) into one body
//! `{"time_ms":…,"events":[…]}`, signs it and POSTs it over a kept-alive HTTP/1.1
//! connection. An answer other than 2xx, a refused connection or a timeout is retried
//! after 0.2 s, 0.4 s, 0.8 s, … (at most [`MAX_BACKOFF`]), [`MAX_ATTEMPTS`] times in all;
//! events keep their order because one batch is retried before the next is taken.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;

use super::{Event, EventKind, Kinds, Target};

/// Most events in one request body.
pub const MAX_BATCH: usize = 100;
/// Attempts per body, the first included.
pub const MAX_ATTEMPTS: u32 = 8;
/// The wait before the first retry; each further retry waits twice as long.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The wait before retry number `retry` (0 for the first retry).
pub fn backoff(retry: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF)
}

/// A parsed `http://host:port/path` target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port`, to connect to.
    pub addr: String,
    /// The `Host` header.
    pub authority: String,
    /// Path and query.
    pub path: String,
}

impl Url {
    /// Parses `url`; only `http://` is supported.
    pub fn parse(url: &str) -> Result<Url, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("bad webhook url {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("webhook url {url:?}: only http:// is supported"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("webhook url {url:?} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(Url {
            addr: format!("{}:{port}", authority.host()),
            authority: authority.to_string(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.to_string()),
        })
    }
}

/// Counters of every target together, read by `/metrics`.
#[derive(Debug)]
pub struct WebhookStats {
    /// Requests answered 2xx.
    pub sent: AtomicU64,
    /// Events given up on after every attempt failed.
    pub failed: AtomicU64,
    /// Attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Events dropped because a target's queue was full.
    pub dropped: AtomicU64,
    /// Events delivered (in 2xx-answered requests).
    pub events: AtomicU64,
    /// Seconds each request took, failed ones included.
    pub duration: Histogram,
}

impl Default for WebhookStats {
    fn default() -> Self {
        WebhookStats {
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            events: AtomicU64::new(0),
            duration: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        }
    }
}

/// One target with its queue.
struct Queue {
    target: Arc<Target>,
    tx: mpsc::Sender<Event>,
    /// Taken by [`Webhooks::start`].
    rx: Mutex<Option<mpsc::Receiver<Event>>>,
    /// When a drop was last logged, to log at most once a second.
    last_drop_log: Mutex<Option<Instant>>,
}

/// Every webhook target of the server, with their queues and counters.
pub struct Webhooks {
    queues: Vec<Queue>,
    /// The union of what the targets want, checked before building an event.
    kinds: Kinds,
    timeout: Duration,
    stats: Arc<WebhookStats>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("targets", &self.queues.len())
            .finish()
    }
}

impl Webhooks {
    /// Webhooks for `targets`, each with a queue of `queue` events; requests time out after
    /// `timeout`. Nothing is sent until [`start`](Self::start).
    pub fn new(targets: Vec<Target>, queue: usize, timeout: Duration) -> Webhooks {
        let mut kinds = Kinds::default();
        let queues = targets
            .into_iter()
            .map(|t| {
                for k in EventKind::ALL {
                    if t.kinds.contains(k) {
                        kinds.insert(k);
                    }
                }
                let (tx, rx) = mpsc::channel(queue.max(1));
                Queue {
                    target: Arc::new(t),
                    tx,
                    rx: Mutex::new(Some(rx)),
                    last_drop_log: Mutex::new(None),
                }
            })
            .collect();
        Webhooks {
            queues,
            kinds,
            timeout,
            stats: Arc::default(),
        }
    }

    /// Starts one sending task per target (on the current tokio runtime). Later calls do
    /// nothing.
    pub fn start(&self) {
        for q in &self.queues {
            let rx = q.rx.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(rx) = rx {
                tokio::spawn(run(
                    Arc::clone(&q.target),
                    rx,
                    Arc::clone(&self.stats),
                    self.timeout,
                ));
            }
        }
    }

    /// Whether any target wants events of `kind` (to skip building events nobody wants).
    pub fn wants(&self, kind: EventKind) -> bool {
        self.kinds.contains(kind)
    }

    /// Whether there is any target at all.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// The counters.
    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }

    /// Queues `event` for every target that wants it, without waiting.
    pub fn emit(&self, event: Event) {
        if !self.wants(event.kind) {
            return;
        }
        for q in &self.queues {
            if !q.target.wants(&event) {
                continue;
            }
            if q.tx.try_send(event.clone()).is_err() {
                self.stats.dropped.fetch_add(1, Relaxed);
                let mut last = q.last_drop_log.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        url = %q.target.url.authority,
                        event = event.kind.name(),
                        dropped_total = self.stats.dropped.load(Relaxed),
                        "webhook queue full: event dropped"
                    );
                }
            }
        }
    }

    /// Reports a Pusher client event (`client_event`): `user_id` is set on presence
    /// channels.
    pub fn client_event(
        &self,
        app: &str,
        channel: &str,
        event: &str,
        data: &str,
        socket_id: &str,
        user_id: Option<&str>,
    ) {
        if !self.wants(EventKind::ClientEvent) {
            return;
        }
        let mut e = Event::channel(EventKind::ClientEvent, channel)
            .with("event", event)
            .with("data", data)
            .with("socket_id", socket_id);
        if let Some(user) = user_id {
            e = e.with("user_id", user);
        }
        e.app = Some(Arc::from(app));
        self.emit(e);
    }

    /// Reports a subscription to a Pusher `cache-` channel with nothing cached
    /// (`cache_miss`). The body carries the channel only, as Pusher's does; `socket_id` is
    /// for the log.
    pub fn cache_miss(&self, app: &str, channel: &str, socket_id: &str) {
        if !self.wants(EventKind::CacheMiss) {
            return;
        }
        tracing::debug!(%channel, socket_id, "cache miss");
        let mut e = Event::channel(EventKind::CacheMiss, channel);
        e.app = Some(Arc::from(app));
        self.emit(e);
    }
}

/// The request body for `events` at `time_ms`.
pub fn body(time_ms: u64, events: &[Event]) -> Bytes {
    let v = serde_json::json!({
        "time_ms": time_ms,
        "events": events.iter().map(Event::to_json).collect::<Vec<_>>(),
    });
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// `X-Pusher-Signature` of `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    switchboard_protocols::pusher::auth::sign_bytes(secret, body)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One target's task: batches, sends, retries, until every sender is gone.
async fn run(
    target: Arc<Target>,
    mut rx: mpsc::Receiver<Event>,
    stats: Arc<WebhookStats>,
    timeout: Duration,
) {
    let mut client = Client::new(target.url.clone());
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let body = body(now_ms(), &batch);
        let sig = signature(&target.secret, &body);
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let result =
                tokio::time::timeout(timeout, client.post(&target.key, &sig, body.clone()))
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_string()));
            stats.duration.observe(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    stats.sent.fetch_add(1, Relaxed);
                    stats.events.fetch_add(batch.len() as u64, Relaxed);
                    break;
                }
                Err(e) => {
                    client.reset();
                    attempt += 1;
                    if attempt >= MAX_ATTEMPTS {
                        stats.failed.fetch_add(batch.len() as u64, Relaxed);
                        tracing::warn!(url = %target.url.authority, events = batch.len(), "webhook given up after {attempt} attempts: {e}");
                        break;
                    }
                    stats.retried.fetch_add(1, Relaxed);
                    tracing::debug!(url = %target.url.authority, attempt, "webhook failed, retrying: {e}");
                    tokio::time::sleep(backoff(attempt - 1)).await;
                }
            }
        }
    }
}

/// A kept-alive HTTP/1.1 connection to one target, opened when needed.
struct Client {
    url: Url,
    conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    fn new(url: Url) -> Client {
        Client { url, conn: None }
    }

    fn reset(&mut self) {
        self.conn = None;
    }

    async fn connection(
        &mut self,
    ) -> Result<&mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        if self.conn.as_ref().is_some_and(|c| c.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let tcp = tokio::net::TcpStream::connect(&self.url.addr)
                .await
                .map_err(|e| format!("connect {}: {e}", self.url.addr))?;
            let _ = tcp.set_nodelay(true);
            let (send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.conn = Some(send);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "no connection".to_string())
    }

    async fn post(&mut self, key: &str, signature: &str, body: Bytes) -> Result<(), String> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(&self.url.path)
            .header(header::HOST, &self.url.authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "switchboard-webhooks")
            .header(
                "X-Pusher-Key",
                HeaderValue::from_str(key).map_err(|e| e.to_string())?,
            )
            .header("X-Pusher-Signature", signature)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let send = self.connection().await?;
        send.ready().await.map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read the answer to the end so the connection can carry the next request.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_batches_and_signatures_are_hex_hmac_sha256() {
        let events = vec![
            Event::channel(EventKind::ChannelOccupied, "a"),
            Event::channel(EventKind::MemberAdded, "presence-b").with("user_id", "7"),
        ];
        let b = body(1_700_000_000_123, &events);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["time_ms"], 1_700_000_000_123u64);
        assert_eq!(v["events"].as_array().unwrap().len(), 2);
        assert_eq!(v["events"][0]["name"], "channel_occupied");
        assert_eq!(v["events"][1]["user_id"], "7");
        // RFC 4231 test case 2: key "Jefe", "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(0), Duration::from_millis(200));
        assert_eq!(backoff(1), Duration::from_millis(400));
        assert_eq!(backoff(3), Duration::from_millis(1600));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn only_plain_http_urls() {
        let u = Url::parse("http://127.0.0.1:9000/hooks?x=1").unwrap();
        assert_eq!(
            (u.addr.as_str(), u.path.as_str()),
            ("127.0.0.1:9000", "/hooks?x=1")
        );
        assert_eq!(
            Url::parse("http://example.com").unwrap().addr,
            "example.com:80"
        );
        assert!(Url::parse("https://example.com/").is_err());
        assert!(Url::parse("not a url").is_err());
    }

    /// A receiver on loopback that answers 503 to its first `fail` requests, then 200.
    async fn receiver(
        fail: usize,
    ) -> (
        std::net::SocketAddr,
        mpsc::UnboundedReceiver<(http::HeaderMap, Bytes)>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let seen = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (tx, seen) = (tx.clone(), Arc::clone(&seen));
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (tx, seen) = (tx.clone(), Arc::clone(&seen));
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                let n = seen.fetch_add(1, Relaxed) as usize;
                                let status = if n < fail { 503 } else { 200 };
                                if status == 200 {
                                    let _ = tx.send((parts.headers, body));
                                }
                                let mut r = http::Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (addr, rx)
    }

    fn hooks(addr: std::net::SocketAddr, queue: usize) -> Webhooks {
        let target = Target {
            url: Url::parse(&format!("http://{addr}/hook")).unwrap(),
            key: "hook-key".into(),
            secret: "hook-secret".into(),
            kinds: Kinds::from_names(&[]).unwrap(),
            namespaces: None,
            app: None,
        };
        Webhooks::new(vec![target], queue, Duration::from_secs(2))
    }

    #[tokio::test]
    async fn a_failing_receiver_gets_the_batch_after_retries_signed() {
        let (addr, mut rx) = receiver(2).await;
        let hooks = hooks(addr, 16);
        hooks.start();
        hooks.emit(Event::channel(EventKind::ChannelOccupied, "a"));
        let (headers, body) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(headers["x-pusher-key"], "hook-key");
        assert_eq!(
            headers["x-pusher-signature"].to_str().unwrap(),
            signature("hook-secret", &body)
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["events"][0]["channel"], "a");
        assert_eq!(hooks.stats().retried.load(Relaxed), 2);
        // Counted once the answer is read, which may be just after the receiver saw it.
        tokio::time::timeout(Duration::from_secs(5), async {
            while hooks.stats().sent.load(Relaxed) != 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the delivery is counted as sent");
        assert_eq!(hooks.stats().events.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        // Nothing listens there: the task is not even started, so the queue only fills.
        let hooks = hooks("127.0.0.1:9".parse().unwrap(), 2);
        for i in 0..5 {
            hooks.emit(Event::channel(EventKind::ChannelVacated, &format!("c{i}")));
        }
        assert_eq!(hooks.stats().dropped.load(Relaxed), 3);
        // Events no target wants are not queued at all.
        hooks.emit(Event {
            kind: EventKind::Connect,
            channel: None,
            app: None,
            fields: Default::default(),
        });
        assert_eq!(hooks.stats().dropped.load(Relaxed), 3);
    }

    #[tokio::test]
    async fn queued_events_go_out_together_in_order() {
        let (addr, mut rx) = receiver(0).await;
        let hooks = hooks(addr, 64);
        for i in 0..10 {
            hooks.emit(Event::channel(EventKind::ChannelOccupied, &format!("c{i}")));
        }
        hooks.start();
        let (_, body) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let names: Vec<_> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["channel"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, (0..10).map(|i| format!("c{i}")).collect::<Vec<_>>());
    }
}
