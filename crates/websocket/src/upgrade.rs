//! hyper 1.x integration: turn an HTTP/1.1 upgrade request into a [`WebSocket`], so HTTP and
//! WebSocket share one port.
//!
//! [`upgrade`] validates the request with [`crate::handshake::validate_server_request`]
//! (RFC 6455 §4.2.1) and returns either a rejection response (400/405/426, RFC 6455 §4.2.2 and
//! §4.4) or the `101 Switching Protocols` response plus a [`PendingUpgrade`] future. The
//! caller returns the response from its hyper service and spawns the future: hyper completes
//! the upgrade only after the 101 has been written, and the future then yields the connection.
//!
//! The hyper connection must be served with upgrades enabled
//! (`http1::Builder::serve_connection(..).with_upgrades()`).
//!
//! Without hyper, [`accept`] performs the same handshake directly on a fresh stream.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{Config, Role};
use crate::deflate::DeflateParams;
use crate::error::Error;
use crate::extensions::DeflatePolicy;
use crate::handshake::{first_supported, validate_server_request};
use crate::stream::{WebSocket, WriteConfig};

/// The connection type produced by an upgrade.
pub type UpgradedWebSocket = WebSocket<TokioIo<Upgraded>>;

/// Server-side handshake and connection options.
#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    /// permessage-deflate policy.
    pub deflate: DeflatePolicy,
    /// Codec limits; `deflate` is filled in from the negotiation.
    pub config: Config,
    /// Outgoing queue options.
    pub write_config: WriteConfig,
    /// Supported subprotocols. The first one the client offered (in the client's order) that
    /// appears here is selected; none is selected when empty.
    pub protocols: Vec<String>,
}

/// A successful handshake: the response to send and the connection to await.
#[derive(Debug)]
pub struct Accepted {
    /// The `101 Switching Protocols` response; return it from the service.
    pub response: Response<String>,
    /// Resolves to the WebSocket once hyper has sent the response and handed over the
    /// connection.
    pub upgrade: PendingUpgrade,
    /// The chosen subprotocol.
    pub protocol: Option<String>,
    /// The agreed permessage-deflate parameters.
    pub deflate: Option<DeflateParams>,
}

/// A future resolving to the upgraded [`WebSocket`].
#[derive(Debug)]
pub struct PendingUpgrade {
    on_upgrade: OnUpgrade,
    config: Option<(Config, WriteConfig)>,
}

impl Future for PendingUpgrade {
    type Output = Result<UpgradedWebSocket, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let upgraded = match Pin::new(&mut self.on_upgrade).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r.map_err(|e| Error::Handshake(format!("upgrade failed: {e}")))?,
        };
        let (config, write_config) = self
            .config
            .take()
            .ok_or_else(|| Error::Handshake("upgrade future polled after completion".into()))?;
        Poll::Ready(Ok(WebSocket::new(
            TokioIo::new(upgraded),
            Role::Server,
            config,
            write_config,
        )))
    }
}

/// Validate `req` as a WebSocket upgrade. `Err` is the complete rejection response to send
/// (boxed: it is much larger than the success value).
pub fn upgrade<B>(
    req: &mut Request<B>,
    options: &UpgradeOptions,
) -> Result<Accepted, Box<Response<String>>> {
    let supported: Vec<&str> = options.protocols.iter().map(String::as_str).collect();
    upgrade_with(req, options, &|offered| {
        first_supported(&supported, offered)
    })
}

/// Like [`upgrade`], with a custom subprotocol choice (it receives the client's offers).
pub fn upgrade_with<B>(
    req: &mut Request<B>,
    options: &UpgradeOptions,
    choose_protocol: &dyn Fn(&[&str]) -> Option<String>,
) -> Result<Accepted, Box<Response<String>>> {
    let hs = match validate_server_request(
        req.method(),
        req.version(),
        req.headers(),
        &options.deflate,
        choose_protocol,
    ) {
        Ok(hs) => hs,
        Err(rej) => {
            let mut resp = Response::new(format!("{}\n", rej.reason));
            *resp.status_mut() = rej.status;
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            for (k, v) in rej.extra_headers {
                h.insert(k, v);
            }
            return Err(Box::new(resp));
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut *req);
    let mut response = Response::new(String::new());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = hs.response_headers();
    let deflate = hs.deflate.map(|(p, _)| p);
    let mut config = options.config.clone();
    config.deflate = deflate;
    Ok(Accepted {
        response,
        upgrade: PendingUpgrade {
            on_upgrade,
            config: Some((config, options.write_config.clone())),
        },
        protocol: hs.protocol,
        deflate,
    })
}

/// Largest request head [`accept`] reads.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Perform the server handshake directly on `io` (no hyper): read the request head, validate
/// it, and answer either `101` (returning the connection and the chosen subprotocol) or the
/// rejection (returning [`Error::Handshake`]). Bytes the client sent after its request head
/// are kept for the WebSocket reader.
pub async fn accept<S>(
    mut io: S,
    options: &UpgradeOptions,
) -> Result<(WebSocket<S>, Option<String>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(1024);
    let (method, version, headers, head_len) = loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Err(Error::Handshake(
                "connection closed during the handshake".into(),
            ));
        }
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut raw);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
                    .map_err(|_| Error::Handshake("invalid method".into()))?;
                let version = if req.version == Some(1) {
                    http::Version::HTTP_11
                } else {
                    http::Version::HTTP_10
                };
                let mut headers = HeaderMap::with_capacity(req.headers.len());
                for h in req.headers.iter() {
                    let name = HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| Error::Handshake("invalid header name".into()))?;
                    let value = HeaderValue::from_bytes(h.value)
                        .map_err(|_| Error::Handshake("invalid header value".into()))?;
                    headers.append(name, value);
                }
                break (method, version, headers, n);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_HEAD => {}
            Ok(httparse::Status::Partial) => {
                io.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await?;
                return Err(Error::Handshake("request head too large".into()));
            }
            Err(e) => {
                io.write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await?;
                return Err(Error::Handshake(format!("invalid HTTP request: {e}")));
            }
        }
    };
    let supported: Vec<&str> = options.protocols.iter().map(String::as_str).collect();
    let chosen = validate_server_request(&method, version, &headers, &options.deflate, &|o| {
        first_supported(&supported, o)
    });
    let hs = match chosen {
        Ok(hs) => hs,
        Err(rej) => {
            let body = format!("{}\n", rej.reason);
            let mut head = format!(
                "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
                rej.status.as_u16(),
                rej.status.canonical_reason().unwrap_or(""),
                body.len()
            );
            for (k, v) in &rej.extra_headers {
                head.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap_or("")));
            }
            head.push_str("\r\n");
            head.push_str(&body);
            io.write_all(head.as_bytes()).await?;
            io.flush().await?;
            return Err(Error::Handshake(rej.reason.to_string()));
        }
    };
    let mut resp = String::from("HTTP/1.1 101 Switching Protocols\r\n");
    for (k, v) in &hs.response_headers() {
        resp.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap_or("")));
    }
    resp.push_str("\r\n");
    io.write_all(resp.as_bytes()).await?;
    io.flush().await?;
    let _ = buf.split_to(head_len);
    let mut config = options.config.clone();
    config.deflate = hs.deflate.map(|(p, _)| p);
    let ws =
        WebSocket::from_partially_read(io, Role::Server, config, options.write_config.clone(), buf);
    Ok((ws, hs.protocol))
}
