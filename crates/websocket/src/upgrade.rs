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
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{header, Request, Response, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

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

/// Validate `req` as a WebSocket upgrade. `Err` is the complete rejection response to send.
pub fn upgrade<B>(
    req: &mut Request<B>,
    options: &UpgradeOptions,
) -> Result<Accepted, Response<String>> {
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
) -> Result<Accepted, Response<String>> {
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
            return Err(resp);
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
