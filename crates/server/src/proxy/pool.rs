//! A small keep-alive HTTP/1.1 client for the proxy calls: idle connections are kept per
//! backend address and reused, so a busy server does not pay a TCP handshake per call.
//!
//! Built on hyper's connection-level client (one `SendRequest` per TCP connection): a
//! connection is taken from the idle list when one is ready, otherwise a new one is opened;
//! after a full response it goes back to the list (at most [`MAX_IDLE`] per backend).
use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Most idle connections kept per backend address.
const MAX_IDLE: usize = 64;

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// The backend could not be reached (refused, reset, DNS).
    #[error("backend unreachable: {0}")]
    Connect(std::io::Error),
    /// The HTTP exchange failed midway.
    #[error("backend HTTP error: {0}")]
    Http(#[from] hyper::Error),
}

/// Keep-alive connections by backend address (`host:port`).
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<String, Vec<SendRequest<Full<Bytes>>>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

impl Pool {
    /// Sends `req` to `addr` (`host:port`) and reads the whole response body.
    pub(crate) async fn send(
        &self,
        addr: &str,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, PoolError> {
        let mut sender = match self.take_idle(addr) {
            Some(s) => s,
            None => self.open(addr).await?,
        };
        // A pooled connection may have been closed by the backend between the readiness
        // check and this request; one retry on a fresh connection covers that race.
        let (req_for_retry, req) = split_for_retry(req);
        let response = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) if e.is_canceled() => {
                sender = self.open(addr).await?;
                sender.send_request(req_for_retry).await?
            }
            Err(e) => return Err(e.into()),
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        self.put_idle(addr, sender);
        Ok(Response::from_parts(parts, body))
    }

    fn take_idle(&self, addr: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(addr)?;
        while let Some(s) = list.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, addr: &str, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr.to_string()).or_default();
        if list.len() < MAX_IDLE {
            list.push(sender);
        }
    }

    async fn open(&self, addr: &str) -> Result<SendRequest<Full<Bytes>>, PoolError> {
        let tcp = TcpStream::connect(addr).await.map_err(PoolError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("proxy backend connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

/// The request twice (bodies are cheap `Bytes` clones), for the one retry.
fn split_for_retry(req: Request<Full<Bytes>>) -> (Request<Full<Bytes>>, Request<Full<Bytes>>) {
    let (parts, body) = req.into_parts();
    let copy = Request::from_parts(parts.clone(), body.clone());
    (copy, Request::from_parts(parts, body))
}
