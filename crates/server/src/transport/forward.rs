//! Forwarding one HTTP request to another node of the cluster.
//!
//! Some state cannot move between nodes cheaply: an Engine.IO polling session lives in the
//! memory of the node that opened it. Behind a load balancer without sticky sessions the next
//! request of that session may arrive anywhere, so the node that receives it sends it on to the
//! owner (found in the broker's node registry) and relays the answer. That costs one extra hop
//! for polling clients only; WebSocket connections never move.
//!
//! A WebSocket upgrade can be forwarded too ([`Forwarder::forward_upgrade`]): the owner's
//! `101 Switching Protocols` is relayed to the client and the two upgraded connections are
//! spliced together, so the bytes flow through this node unchanged from then on.
//!
//! A forwarded request carries [`FORWARDED_HEADER`]; a node never forwards such a request again,
//! so a stale registry can cause an error reply but never a loop. Idle HTTP/1.1 connections to
//! other nodes are kept in a small pool and reused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, CONNECTION, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Header marking a request that one node already forwarded to another.
pub const FORWARDED_HEADER: &str = "x-switchboard-forwarded";

/// Idle connections kept per target node; more concurrent requests open more connections,
/// which are closed when the pool is full.
const IDLE_PER_TARGET: usize = 8;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The owning node did not accept a connection.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// `host:port` of the owning node.
        target: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP exchange with the owning node failed.
    #[error("forwarding to {target} failed: {source}")]
    Http {
        /// `host:port` of the owning node.
        target: String,
        /// The HTTP error.
        source: hyper::Error,
    },
    /// The owning node did not answer in time.
    #[error("{target} did not answer within {timeout:?}")]
    Timeout {
        /// `host:port` of the owning node.
        target: String,
        /// The limit that passed.
        timeout: Duration,
    },
}

impl ForwardError {
    /// The status to answer the client with: the owner is unreachable or too slow.
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Sends requests on to other nodes, reusing idle connections.
#[derive(Default)]
pub struct Forwarder {
    idle: Mutex<HashMap<String, Vec<SendRequest<Full<Bytes>>>>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(Vec::len)
            .sum();
        f.debug_struct("Forwarder").field("idle", &idle).finish()
    }
}

/// Whether `req` was already forwarded by another node.
pub fn is_forwarded<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(FORWARDED_HEADER)
}

impl Forwarder {
    /// A forwarder with an empty pool.
    pub fn new() -> Forwarder {
        Forwarder::default()
    }

    /// Sends `parts` + `body` to `target` (`host:port`) and returns its answer, body collected.
    ///
    /// `timeout` bounds the whole exchange; a long-polling GET needs more than the polling
    /// interval. Hop-by-hop headers are dropped, the `Host` header is kept (the owner routes
    /// on the path, not the host) and [`FORWARDED_HEADER`] is added.
    pub async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: Bytes,
        target: &str,
        timeout: Duration,
    ) -> Result<Response<Full<Bytes>>, ForwardError> {
        for name in [CONNECTION, UPGRADE, TRANSFER_ENCODING] {
            parts.headers.remove(name);
        }
        parts.headers.remove(HeaderName::from_static("keep-alive"));
        if !parts.headers.contains_key(HOST) {
            if let Ok(host) = http::HeaderValue::from_str(target) {
                parts.headers.insert(HOST, host);
            }
        }
        mark_forwarded(&mut parts);
        let req = Request::from_parts(parts, Full::new(body));
        let exchange = self.exchange(req, target);
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ForwardError::Timeout {
                target: target.to_owned(),
                timeout,
            }),
        }
    }

    /// Forwards a WebSocket upgrade request to `target` on a connection of its own and, when
    /// the owner switches protocols, splices the client's upgraded connection to the owner's.
    ///
    /// Returns the owner's answer (its `101` with the handshake headers, or its refusal with
    /// the body collected); `timeout` bounds the handshake, not the spliced connection.
    pub async fn forward_upgrade(
        &self,
        mut req: Request<hyper::body::Incoming>,
        target: &str,
        timeout: Duration,
    ) -> Result<Response<Full<Bytes>>, ForwardError> {
        let client_side = hyper::upgrade::on(&mut req);
        let (mut parts, _) = req.into_parts();
        mark_forwarded(&mut parts);
        let handshake = async {
            let http_err = |source| ForwardError::Http {
                target: target.to_owned(),
                source,
            };
            let mut sender = connect(target, true).await?;
            let mut response = sender
                .send_request(Request::from_parts(parts, Full::new(Bytes::new())))
                .await
                .map_err(http_err)?;
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                let (parts, body) = response.into_parts();
                let body = body.collect().await.map_err(http_err)?.to_bytes();
                return Ok((Response::from_parts(parts, Full::new(body)), None));
            }
            let owner_side = hyper::upgrade::on(&mut response);
            let (parts, _) = response.into_parts();
            Ok((
                Response::from_parts(parts, Full::new(Bytes::new())),
                Some(owner_side),
            ))
        };
        let (response, owner_side) = match tokio::time::timeout(timeout, handshake).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ForwardError::Timeout {
                    target: target.to_owned(),
                    timeout,
                })
            }
        };
        if let Some(owner_side) = owner_side {
            let target = target.to_owned();
            tokio::spawn(async move {
                match tokio::join!(client_side, owner_side) {
                    (Ok(client), Ok(owner)) => {
                        let mut client = TokioIo::new(client);
                        let mut owner = TokioIo::new(owner);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut owner).await
                        {
                            tracing::debug!(%target, "forwarded WebSocket ended: {e}");
                        }
                    }
                    (client, owner) => {
                        tracing::debug!(
                            %target,
                            client_ok = client.is_ok(),
                            owner_ok = owner.is_ok(),
                            "forwarded upgrade did not complete"
                        );
                    }
                }
            });
        }
        Ok(response)
    }

    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        target: &str,
    ) -> Result<Response<Full<Bytes>>, ForwardError> {
        let mut sender = match self.take_idle(target) {
            Some(sender) => sender,
            None => connect(target, false).await?,
        };
        let http_err = |source| ForwardError::Http {
            target: target.to_owned(),
            source,
        };
        let response = sender.send_request(req).await.map_err(http_err)?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(http_err)?.to_bytes();
        self.put_idle(target, sender);
        let mut response = Response::from_parts(parts, Full::new(body));
        // The body is relayed whole: the length is known again, hop-by-hop headers are ours.
        for name in [CONNECTION, TRANSFER_ENCODING] {
            response.headers_mut().remove(name);
        }
        Ok(response)
    }

    fn take_idle(&self, target: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(target)?;
        while let Some(sender) = list.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, target: &str, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(target.to_owned()).or_default();
        if list.len() < IDLE_PER_TARGET {
            list.push(sender);
        }
    }
}

/// Marks `parts` as forwarded and makes it an HTTP/1.1 request line with only the path and
/// query (the owner routes on the path, not the host).
fn mark_forwarded(parts: &mut http::request::Parts) {
    parts.headers.insert(
        HeaderName::from_static(FORWARDED_HEADER),
        http::HeaderValue::from_static("1"),
    );
    if let Some(pq) = parts.uri.path_and_query() {
        if let Ok(uri) = pq.as_str().parse() {
            parts.uri = uri;
        }
    }
    parts.version = http::Version::HTTP_11;
}

/// Opens an HTTP/1.1 client connection to `target`; `upgrades` keeps the connection usable
/// for a protocol switch (the upgraded I/O is taken with `hyper::upgrade::on`).
async fn connect(target: &str, upgrades: bool) -> Result<SendRequest<Full<Bytes>>, ForwardError> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|source| ForwardError::Connect {
            target: target.to_owned(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ForwardError::Http {
            target: target.to_owned(),
            source,
        })?;
    let target = target.to_owned();
    tokio::spawn(async move {
        let ended = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = ended {
            tracing::debug!(%target, "connection to another node ended: {e}");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A real HTTP server on loopback that echoes the method, path, the forwarded marker and
    /// the body, and counts the TCP connections it accepted.
    async fn echo_server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let method = req.method().clone();
                            let path = req.uri().to_string();
                            let marked = is_forwarded(&req);
                            let host = req
                                .headers()
                                .get(HOST)
                                .map(|h| h.to_str().unwrap().to_owned())
                                .unwrap_or_default();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let text = format!(
                                "{method} {path} forwarded={marked} host={host} body={}",
                                String::from_utf8_lossy(&body)
                            );
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(StatusCode::CREATED)
                                    .header("x-answer", "yes")
                                    .body(Full::new(Bytes::from(text)))
                                    .unwrap(),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn request(method: &str, uri: &str, host: &str) -> http::request::Parts {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, host)
            .header(CONNECTION, "keep-alive")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[tokio::test]
    async fn relays_request_and_answer_and_reuses_the_connection() {
        let (addr, accepted) = echo_server().await;
        let fwd = Forwarder::new();
        for i in 0..3 {
            let parts = request("POST", "/socket.io/?EIO=4&sid=abc", "front.example");
            let resp = fwd
                .forward(
                    parts,
                    Bytes::from(format!("payload {i}")),
                    &addr,
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::CREATED);
            assert_eq!(resp.headers()["x-answer"], "yes");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                body,
                format!(
                    "POST /socket.io/?EIO=4&sid=abc forwarded=true host=front.example body=payload {i}"
                )
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "idle connection reused");
    }

    #[tokio::test]
    async fn unreachable_owner_is_a_bad_gateway() {
        // Bind and drop to find a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let target = format!("127.0.0.1:{port}");
        let err = Forwarder::new()
            .forward(
                request("GET", "/x", "h"),
                Bytes::new(),
                &target,
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Connect { .. }), "{err}");
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn silent_owner_times_out() {
        // Accepts the connection but never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                held.push(tcp);
            }
        });
        let err = Forwarder::new()
            .forward(
                request("GET", "/x", "h"),
                Bytes::new(),
                &addr,
                Duration::from_millis(200),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Timeout { .. }), "{err}");
        assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    /// An upstream that switches protocols and echoes the bytes of the upgraded connection,
    /// and a front server that forwards every request's upgrade to it.
    async fn upgrade_pair() -> String {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = upstream.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |mut req: Request<hyper::body::Incoming>| async move {
                            assert!(is_forwarded(&req), "the owner sees the marker");
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                let mut io = TokioIo::new(on.await.unwrap());
                                let (mut r, mut w) = tokio::io::split(&mut io);
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                            });
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(StatusCode::SWITCHING_PROTOCOLS)
                                    .header(CONNECTION, "upgrade")
                                    .header(UPGRADE, "echo")
                                    .header("x-owner", "yes")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap().to_string();
        let forwarder = Arc::new(Forwarder::new());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = front.accept().await.unwrap();
                let forwarder = forwarder.clone();
                let target = upstream_addr.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let forwarder = forwarder.clone();
                        let target = target.clone();
                        async move {
                            Ok::<_, Infallible>(
                                forwarder
                                    .forward_upgrade(req, &target, Duration::from_secs(5))
                                    .await
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        front_addr
    }

    #[tokio::test]
    async fn upgrades_are_spliced_to_the_owner() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let front = upgrade_pair().await;
        let mut tcp = TcpStream::connect(&front).await.unwrap();
        tcp.write_all(
            b"GET /socket.io/?sid=x HTTP/1.1\r\nHost: front\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains("x-owner: yes"),
            "the owner's answer is relayed: {head}"
        );
        for word in [&b"hello"[..], b"through the front"] {
            tcp.write_all(word).await.unwrap();
            let mut back = vec![0u8; word.len()];
            tcp.read_exact(&mut back).await.unwrap();
            assert_eq!(back, word);
        }
    }
}
