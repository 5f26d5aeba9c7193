//! `ws://` and `wss://` client connect (RFC 6455 §3, §4.1).
//!
//! [`connect`] resolves the URL's host, opens a TCP connection with `TCP_NODELAY` (WebSocket
//! messages are usually small and latency-sensitive, and our writer batches on its own),
//! wraps it in TLS for `wss://` (rustls with the Mozilla roots from `webpki-roots`, ALPN
//! `http/1.1`), sends the upgrade request and validates the answer with
//! [`crate::handshake::verify_client_response`]. Bytes the server sent after its 101 response
//! are kept for the WebSocket reader.
//!
//! `insecure: true` accepts any server certificate. It exists for local development with
//! self-signed certificates and must not be used against anything reachable by others.
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::codec::{Config, Role};
use crate::deflate::DeflateParams;
use crate::error::Error;
use crate::extensions::{client_offer, DeflatePolicy};
use crate::handshake::{verify_client_response, ClientRequest};
use crate::stream::{WebSocket, WriteConfig};

/// Largest response head we accept from the server.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Options of [`connect`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Extra request headers (e.g. `Authorization`, `Origin`).
    pub headers: HeaderMap,
    /// Subprotocols to offer, in order of preference.
    pub subprotocols: Vec<String>,
    /// permessage-deflate offer; `None` offers no compression.
    pub deflate: Option<DeflatePolicy>,
    /// Accept any TLS certificate (self-signed development certificates only).
    pub insecure: bool,
    /// A complete rustls configuration to use instead of the built-in one (custom roots,
    /// client certificates). `insecure` is ignored when set.
    pub tls_config: Option<Arc<ClientConfig>>,
    /// Codec limits; `deflate` is filled in from the negotiation.
    pub config: Config,
    /// Outgoing queue options.
    pub write_config: WriteConfig,
    /// Limit for TCP connect, TLS and the HTTP handshake together.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            headers: HeaderMap::new(),
            subprotocols: Vec::new(),
            // As a client we do not need the server to drop its context: keeping it compresses
            // better, and it costs us only the inflate window we hold anyway.
            deflate: Some(DeflatePolicy {
                server_no_context_takeover: false,
                ..DeflatePolicy::default()
            }),
            insecure: false,
            tls_config: None,
            config: Config::default(),
            write_config: WriteConfig::default(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What the server answered.
#[derive(Debug, Clone)]
pub struct ClientResponse {
    /// Always `101 Switching Protocols` on success.
    pub status: StatusCode,
    /// All response headers.
    pub headers: HeaderMap,
    /// The subprotocol the server picked.
    pub protocol: Option<String>,
    /// The agreed permessage-deflate parameters.
    pub deflate: Option<DeflateParams>,
}

/// A plain TCP or a TLS client stream.
#[derive(Debug)]
pub enum MaybeTlsStream {
    /// `ws://`
    Plain(TcpStream),
    /// `wss://`
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTlsStream::Plain(s) => s.is_write_vectored(),
            MaybeTlsStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connect to a `ws://` or `wss://` URL and complete the opening handshake.
pub async fn connect(
    url: &str,
    options: ClientOptions,
) -> Result<(WebSocket<MaybeTlsStream>, ClientResponse), Error> {
    let limit = options.connect_timeout;
    tokio::time::timeout(limit, connect_inner(url, options))
        .await
        .map_err(|_| Error::Handshake("timed out connecting".into()))?
}

async fn connect_inner(
    url: &str,
    options: ClientOptions,
) -> Result<(WebSocket<MaybeTlsStream>, ClientResponse), Error> {
    let target = Target::parse(url)?;
    let tcp = TcpStream::connect((target.connect_host.as_str(), target.port)).await?;
    tcp.set_nodelay(true)?;
    let stream = if target.tls {
        let config = match &options.tls_config {
            Some(c) => c.clone(),
            None => Arc::new(tls_config(options.insecure)?),
        };
        let name = ServerName::try_from(target.connect_host.clone())
            .map_err(|_| Error::Handshake("invalid TLS server name".into()))?;
        let tls = TlsConnector::from(config).connect(name, tcp).await?;
        MaybeTlsStream::Tls(Box::new(tls))
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    handshake(stream, &target.host_header, &target.path, options).await
}

/// Perform the client handshake over an already-connected stream (`host` is the `Host`
/// header value, `path` the request target including the query).
pub async fn handshake<S>(
    mut io: S,
    host: &str,
    path: &str,
    options: ClientOptions,
) -> Result<(WebSocket<S>, ClientResponse), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let offer = options
        .deflate
        .as_ref()
        .filter(|p| p.enabled)
        .map(client_offer);
    let req = ClientRequest::new(
        host,
        path,
        &options.subprotocols,
        offer.as_deref(),
        &options.headers,
    );
    io.write_all(&req.bytes).await?;
    io.flush().await?;

    let mut buf = BytesMut::with_capacity(4096);
    let (status, headers, head_len) = loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Err(Error::Handshake(
                "connection closed during the handshake".into(),
            ));
        }
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut raw);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = StatusCode::from_u16(resp.code.unwrap_or(0))
                    .map_err(|_| Error::Handshake("invalid status code".into()))?;
                let mut headers = HeaderMap::with_capacity(resp.headers.len());
                for h in resp.headers.iter() {
                    let name = HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| Error::Handshake("invalid response header name".into()))?;
                    let value = HeaderValue::from_bytes(h.value)
                        .map_err(|_| Error::Handshake("invalid response header value".into()))?;
                    headers.append(name, value);
                }
                break (status, headers, n);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(Error::Handshake("response head too large".into()))
            }
            Err(e) => return Err(Error::Handshake(format!("invalid HTTP response: {e}"))),
        }
    };
    let policy = options.deflate.as_ref().filter(|p| p.enabled);
    let agreed = verify_client_response(status, &headers, &req.key, &options.subprotocols, policy)?;
    let _ = buf.split_to(head_len);
    let mut config = options.config;
    config.deflate = agreed.deflate;
    let ws = WebSocket::from_partially_read(io, Role::Client, config, options.write_config, buf);
    Ok((
        ws,
        ClientResponse {
            status,
            headers,
            protocol: agreed.protocol,
            deflate: agreed.deflate,
        },
    ))
}

/// The pieces of a WebSocket URL we need (RFC 6455 §3).
struct Target {
    tls: bool,
    /// Host for DNS and TLS SNI (no brackets around IPv6).
    connect_host: String,
    port: u16,
    host_header: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, Error> {
        let u = url::Url::parse(url).map_err(|e| Error::Handshake(format!("invalid URL: {e}")))?;
        let tls = match u.scheme() {
            "ws" => false,
            "wss" => true,
            s => return Err(Error::Handshake(format!("unsupported URL scheme {s}"))),
        };
        // §3: fragments are not allowed in WebSocket URIs.
        if u.fragment().is_some() {
            return Err(Error::Handshake("URL must not have a fragment".into()));
        }
        let host = u
            .host()
            .ok_or_else(|| Error::Handshake("URL has no host".into()))?;
        let (connect_host, bracketed) = match host {
            url::Host::Ipv6(a) => (a.to_string(), format!("[{a}]")),
            url::Host::Ipv4(a) => (a.to_string(), a.to_string()),
            url::Host::Domain(d) => (d.to_string(), d.to_string()),
        };
        let default_port = if tls { 443 } else { 80 };
        let port = u.port().unwrap_or(default_port);
        let host_header = if port == default_port {
            bracketed
        } else {
            format!("{bracketed}:{port}")
        };
        let mut path = u.path().to_string();
        if let Some(q) = u.query() {
            path.push('?');
            path.push_str(q);
        }
        Ok(Target {
            tls,
            connect_host,
            port,
            host_header,
            path,
        })
    }
}

fn tls_config(insecure: bool) -> Result<ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Handshake(format!("TLS setup: {e}")))?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Certificate verifier for `insecure: true`: any certificate chain is accepted, handshake
/// signatures are still checked (so the peer at least holds the key of what it presented).
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("ws://example.com/chat?a=1").unwrap();
        assert_eq!(
            (t.tls, t.port, t.host_header.as_str(), t.path.as_str()),
            (false, 80, "example.com", "/chat?a=1")
        );
        let t = Target::parse("wss://[::1]:9443").unwrap();
        assert_eq!(
            (
                t.tls,
                t.port,
                t.host_header.as_str(),
                t.connect_host.as_str()
            ),
            (true, 9443, "[::1]:9443", "::1")
        );
        assert_eq!(t.path, "/");
        assert!(Target::parse("http://example.com").is_err());
        assert!(Target::parse("ws://example.com/#frag").is_err());
    }
}
