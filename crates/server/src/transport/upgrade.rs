//! The WebSocket upgrade, written once for every endpoint: every check that can refuse a
//! client happens in [`admit`], before the `101 Switching Protocols`, so refusals are plain
//! HTTP answers a client can read — origin (403) → handshake validity (400/405/426) →
//! connection limit (503). [`Admitted::accept`] then answers 101, waits (bounded) for hyper
//! to hand over the socket, builds the WebSocket with the server's limits and hands it to
//! the endpoint, which starts the connection runtime on it.
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use switchboard_websocket::codec::Config as CodecConfig;
use switchboard_websocket::handshake::{first_supported, validate_server_request, ServerHandshake};
use switchboard_websocket::stream::{WebSocket, WriteConfig};
use switchboard_websocket::{DeflateParams, Role};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::conn::limits::{FloodLimits, Rate, Refusal};
use crate::conn::park::{ParkIo, ParkKey, Parker};
use crate::conn::runtime::Limits;
use crate::conn::stats::{ConnectionSlot, Counter};
use crate::state::Shared;
use crate::transport::http::{text, Body};

/// The connection type an upgraded request becomes: the plain TCP socket itself when hyper
/// served one (taken back out of hyper's upgrade wrapper, which boxes the socket behind a
/// trait object and keeps a buffer slot: 32 B more on the heap and a larger shared state for
/// every connection), hyper's wrapper otherwise (TLS).
pub(crate) enum Io {
    /// A plain TCP connection.
    Tcp(TcpStream),
    /// Anything else hyper upgraded, boxed: rare, and it keeps [`Io`] as small as a socket.
    Upgraded(Box<TokioIo<Upgraded>>),
    /// A plain TCP socket parked: out of tokio's reactor, waiting in the server's
    /// [`Parker`] (see `conn::park`). Never read in this state; a write is tried once
    /// without blocking and is pending (with no waker registered: the connection resumes
    /// to wait on tokio's reactor) when the socket would block.
    Parked(std::net::TcpStream, ParkKey),
    /// Only while moving between the states above, or after a move failed (the socket is
    /// gone: reads and writes fail).
    Gone,
}

impl ParkIo for Io {
    fn can_park(&self) -> bool {
        matches!(self, Io::Tcp(_))
    }

    fn park(&mut self, parker: &Parker, waker: Waker) -> bool {
        if !self.can_park() {
            return false;
        }
        let Io::Tcp(socket) = std::mem::replace(self, Io::Gone) else {
            unreachable!("checked above");
        };
        let socket = match socket.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot take a socket out of the reactor: {e}");
                return false;
            }
        };
        match parker.park(socket.as_raw_fd(), waker) {
            Ok(key) => {
                *self = Io::Parked(socket, key);
                true
            }
            Err(e) => {
                tracing::warn!("cannot park a socket: {e}");
                if let Ok(s) = TcpStream::from_std(socket) {
                    *self = Io::Tcp(s);
                }
                false
            }
        }
    }

    fn unpark(&mut self, parker: &Parker) -> std::io::Result<bool> {
        if !matches!(self, Io::Parked(..)) {
            return Ok(false);
        }
        let Io::Parked(socket, key) = std::mem::replace(self, Io::Gone) else {
            unreachable!("checked above");
        };
        parker.unpark(socket.as_raw_fd(), key);
        // Anything there (bytes, an end of stream or an error) is for the next read.
        let readable = !matches!(socket.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        *self = Io::Tcp(TcpStream::from_std(socket)?);
        Ok(readable)
    }

    fn parked_readable(&self, parker: &Parker) -> bool {
        match self {
            Io::Parked(_, key) => parker.is_readable(*key),
            _ => false,
        }
    }
}

/// A write to a parked socket: once, without blocking (it is in non-blocking mode). Sent
/// with `sendmsg` rather than `writev`: a socket call skips the file layer's work (its
/// position lock), which a fan-out pays once per subscriber.
fn write_parked(
    socket: &std::net::TcpStream,
    bufs: &[std::io::IoSlice<'_>],
) -> Poll<std::io::Result<usize>> {
    match socket2::SockRef::from(socket).send_vectored(bufs) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Poll::Pending,
        r => Poll::Ready(r),
    }
}

/// A write to a socket in tokio's reactor, with `sendmsg` (see [`write_parked`]) once tokio
/// says it is writable.
fn write_tcp(
    socket: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[std::io::IoSlice<'_>],
) -> Poll<std::io::Result<usize>> {
    loop {
        std::task::ready!(socket.poll_write_ready(cx))?;
        let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
            socket2::SockRef::from(socket).send_vectored(bufs)
        });
        match sent {
            // Tokio cleared its readiness: wait for the next.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}

/// What a read or write of a socket that is not there gets.
fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "socket parked or gone")
}

impl Io {
    /// The socket of `upgraded`, and the bytes hyper read past the handshake (the start of the
    /// WebSocket stream).
    fn from_upgraded(upgraded: Upgraded) -> (Io, BytesMut) {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (
                Io::Tcp(parts.io.into_inner()),
                BytesMut::from(&parts.read_buf[..]),
            ),
            Err(upgraded) => (
                Io::Upgraded(Box::new(TokioIo::new(upgraded))),
                BytesMut::new(),
            ),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Upgraded(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Parked(..) | Io::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => write_tcp(s, cx, &[std::io::IoSlice::new(buf)]),
            Io::Upgraded(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Parked(s, _) => write_parked(s, &[std::io::IoSlice::new(buf)]),
            Io::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => write_tcp(s, cx, bufs),
            Io::Upgraded(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Parked(s, _) => write_parked(s, bufs),
            Io::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Upgraded(s) => s.is_write_vectored(),
            Io::Parked(..) => true,
            Io::Gone => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Upgraded(s) => Pin::new(s.as_mut()).poll_flush(cx),
            // TCP has nothing to flush past the kernel.
            Io::Parked(..) => Poll::Ready(Ok(())),
            Io::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Upgraded(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Parked(..) | Io::Gone => Poll::Ready(Err(gone())),
        }
    }
}

/// A request that passed [`admit`]: the agreed handshake and the connection slot it holds.
pub(crate) struct Admitted {
    handshake: ServerHandshake,
    slot: ConnectionSlot,
}

impl Admitted {
    /// The subprotocol agreed with the client (one of those [`admit_with`] was given).
    pub(crate) fn protocol(&self) -> Option<&str> {
        self.handshake.protocol.as_deref()
    }

    /// Answers `101 Switching Protocols` and, once hyper hands over the socket (within
    /// `timeout`, else counted as `handshake_timeouts`), builds the WebSocket — message
    /// limit `max_message`, the agreed deflate, the server's close timeout — and calls
    /// `then` with it and the connection slot. `then` runs on the task that waited for the
    /// upgrade and should spawn the connection's own task (so the wait's state is not kept
    /// for the connection's life).
    pub(crate) fn accept<F>(
        self,
        req: &mut Request<Incoming>,
        shared: &Arc<Shared>,
        peer: SocketAddr,
        timeout: Duration,
        max_message: usize,
        then: F,
    ) -> Response<Body>
    where
        F: FnOnce(WebSocket<Io>, ConnectionSlot) + Send + 'static,
    {
        let Admitted { handshake, slot } = self;
        let deflate = handshake.deflate.as_ref().map(|(params, _)| *params);
        let on_upgrade = hyper::upgrade::on(req);
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            let upgraded = match tokio::time::timeout(timeout, on_upgrade).await {
                Ok(Ok(upgraded)) => upgraded,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "upgrade failed: {e}");
                    return;
                }
                Err(_) => {
                    shared.counters.bump(Counter::HandshakeTimeout);
                    tracing::debug!(%peer, "upgrade did not complete in time");
                    return;
                }
            };
            shared.counters.bump(Counter::Upgraded);
            let (io, read) = Io::from_upgraded(upgraded);
            let ws = websocket(&shared, io, read, deflate, max_message);
            then(ws, slot);
        });
        let mut response = Response::new(Body::default());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *response.headers_mut() = handshake.response_headers();
        response
    }
}

/// A server-side WebSocket over `io` with the server's limits.
pub(crate) fn websocket<S>(
    shared: &Shared,
    io: S,
    read: BytesMut,
    deflate: Option<DeflateParams>,
    max_message: usize,
) -> WebSocket<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let codec = CodecConfig {
        max_message_size: max_message,
        max_frame_size: max_message,
        deflate,
        ..CodecConfig::default()
    };
    let write_config = WriteConfig {
        // Our close frame waits this long for the peer's reply before the socket is shut.
        close_timeout: shared.config.shutdown_timeout,
        ..WriteConfig::default()
    };
    WebSocket::from_partially_read(io, Role::Server, codec, write_config, read)
}

/// The runtime's limits from the server configuration: the same for every protocol.
pub(crate) fn limits(shared: &Shared) -> Limits {
    Limits {
        ping_interval: shared.config.ping_interval,
        ping_timeout: shared.config.ping_timeout,
        shutdown_timeout: shared.config.shutdown_timeout,
        park_idle: shared.config.park_idle,
        flood: FloodLimits {
            messages: Rate::new(
                shared.config.client_message_rate,
                shared.config.client_message_burst.map(f64::from),
            ),
            bytes: Rate::new(shared.config.client_bytes_rate, None),
        },
    }
}

/// The token a client presents on an upgrade request: `Authorization: Bearer <token>`, or
/// the `token` query parameter (browsers cannot set headers on a WebSocket).
pub(crate) fn bearer_token<B>(req: &Request<B>) -> Option<String> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if let Some(t) = header {
        return Some(t.to_string());
    }
    query_value(req.uri().query(), "token").filter(|t| !t.is_empty())
}

/// The value of query parameter `name`, percent-decoded.
pub(crate) fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    let raw = query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)?
        .1;
    Some(crate::transport::http::decode_query_value(raw))
}

/// Whether the query string sets `name` to a false value (`false`, `0`, `no`, `off`).
pub fn query_flag_is_false(query: Option<&str>, name: &str) -> bool {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .any(|(k, v)| {
            k == name
                && matches!(
                    v.to_ascii_lowercase().as_str(),
                    "false" | "0" | "no" | "off"
                )
        })
}

/// The checks every WebSocket endpoint makes before the `101`, in order: origin (403),
/// handshake validity (400/405/426), the connection limits of [`take_slot`] (429/503,
/// with `Retry-After`). Each
/// refusal is counted and logged once. On success the caller holds a connection slot.
pub(crate) fn admit(
    req: &Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
) -> Result<Admitted, Box<Response<Body>>> {
    admit_with(req, shared, peer, &[])
}

/// [`admit`] for an endpoint that speaks WebSocket subprotocols: the first of the client's
/// offers (in its order) found in `subprotocols` is agreed and echoed in the `101`; a client
/// offering none of them is still admitted, without a subprotocol.
pub(crate) fn admit_with(
    req: &Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
    subprotocols: &[&str],
) -> Result<Admitted, Box<Response<Body>>> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if !shared.origins.allows_request(origin, host) {
        shared.counters.bump(Counter::RejectedOrigin);
        tracing::info!(%peer, origin = origin.unwrap_or(""), "upgrade refused: origin not allowed");
        return Err(Box::new(text(StatusCode::FORBIDDEN, "origin not allowed")));
    }

    let handshake = match validate_server_request(
        req.method(),
        req.version(),
        req.headers(),
        &shared.deflate,
        &|offered| first_supported(subprotocols, offered),
    ) {
        Ok(h) => h,
        Err(rejection) => {
            shared.counters.bump(Counter::RejectedBadHandshake);
            tracing::debug!(%peer, reason = rejection.reason, "upgrade refused: bad handshake");
            let mut r = Response::new(Body::new(bytes::Bytes::from_static(
                rejection.reason.as_bytes(),
            )));
            *r.status_mut() = rejection.status;
            for (name, value) in rejection.extra_headers {
                r.headers_mut().insert(name, value);
            }
            return Err(Box::new(r));
        }
    };

    let slot = take_slot(req, shared, peer)?;
    Ok(Admitted { handshake, slot })
}

/// The client's address: the socket's peer, or (only when `trusted_proxy_header` is set)
/// the last address in that header, which the trusted proxy appended.
pub(crate) fn client_ip<B>(req: &Request<B>, shared: &Shared, peer: SocketAddr) -> IpAddr {
    shared
        .config
        .trusted_proxy_header
        .as_deref()
        .and_then(|name| req.headers().get(name))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .unwrap_or(peer.ip())
}

/// The connection limits every new connection passes, whatever its protocol or transport:
/// `accept_rate` (503), `connection_rate_per_ip` (429), `max_connections_per_ip` (503),
/// then `max_connections` (503), each with `Retry-After`. Each refusal is counted.
pub(crate) fn take_slot<B>(
    req: &Request<B>,
    shared: &Shared,
    peer: SocketAddr,
) -> Result<ConnectionSlot, Box<Response<Body>>> {
    let refuse = |status: StatusCode, body: &'static str, retry: u64| {
        let mut r = text(status, body);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry));
        Box::new(r)
    };
    let ip = client_ip(req, shared, peer);
    let ip_slot = match shared.admission.admit(ip) {
        Ok(slot) => slot,
        Err(Refusal::Draining) => {
            tracing::debug!(%peer, "upgrade refused: draining");
            return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "draining", 1));
        }
        Err(Refusal::AcceptRate(retry)) => {
            shared.counters.bump(Counter::RejectedAcceptRate);
            tracing::debug!(%peer, "upgrade refused: accept rate");
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "server busy",
                retry,
            ));
        }
        Err(Refusal::PerIpRate(retry)) => {
            shared.counters.bump(Counter::RejectedIpRate);
            tracing::info!(%peer, %ip, "upgrade refused: connection rate per address");
            return Err(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too many new connections from this address",
                retry,
            ));
        }
        Err(Refusal::PerIpConnections) => {
            shared.counters.bump(Counter::RejectedIpConnections);
            tracing::info!(%peer, %ip, "upgrade refused: too many connections from this address");
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections from this address",
                5,
            ));
        }
    };
    let Some(slot) = shared
        .counters
        .try_acquire_slot(shared.config.max_connections)
    else {
        shared.counters.bump(Counter::RejectedMaxConnections);
        tracing::info!(%peer, limit = shared.config.max_connections, "upgrade refused: too many connections");
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections",
            5,
        ));
    };
    Ok(slot.with_ip(ip_slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_value(Some("a=1&token=x%2Ey+z"), "token").as_deref(),
            Some("x.y z")
        );
        assert_eq!(
            query_value(Some("token=abc%"), "token").as_deref(),
            Some("abc%")
        );
        assert_eq!(query_value(Some("tokens=1"), "token"), None);
        assert_eq!(query_value(None, "token"), None);
    }

    #[test]
    fn echo_flag() {
        assert!(query_flag_is_false(Some("echo=false"), "echo"));
        assert!(query_flag_is_false(Some("a=1&echo=0"), "echo"));
        assert!(!query_flag_is_false(Some("echo=true"), "echo"));
        assert!(!query_flag_is_false(Some("echoes=false"), "echo"));
        assert!(!query_flag_is_false(None, "echo"));
    }
}
