//! A streamed HTTP response as a connection's [`Transport`]: the sink of the HTTP-streaming
//! and Server-Sent Events transports. The connection runtime drives it like a WebSocket —
//! the same loop, heartbeat, stall limit, slow-consumer verdict, shutdown and counters —
//! only the bytes go into a response body ([`Body::channel`]) instead of WebSocket frames.
//!
//! * **Out**: each text message the driver queues is handed to a [`Framing`], which turns it
//!   into body chunks (newline-delimited lines, `data:` events, …). A publication's shared
//!   bytes are passed on as they are (a `Bytes` clone), with the framing's own short
//!   chunks around them, so a broadcast is still encoded once, never per subscriber.
//! * **In**: the first message is the one the request carried (a connect command); later
//!   ones arrive through a bounded channel from other requests (a bidirectional emulation's
//!   `POST`s), or never (a unidirectional stream).
//! * **Liveness**: a peer that can send (emulation) is heard through what it sends; a
//!   unidirectional peer cannot answer pings, so only the write side judges it — a client
//!   that stops reading stalls the flush and is dropped at the stall limit.
//! * **End**: the client closing the response drops the body, which ends the connection
//!   as [`Ending::Lost`](crate::conn::driver::Ending); a close the driver owes the peer is
//!   framed by the [`Framing`] (a disconnect push) and the body ends after it.
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_websocket::{CloseCode, Error as WsError, Message};
use tokio::sync::mpsc;

use crate::conn::driver::OutFrame;
use crate::conn::heartbeat::{Activity, Liveness, PeerActivity};
use crate::conn::runtime::Transport;
use crate::transport::body::BodyFeed;

/// How a protocol writes its messages into a streamed body.
pub(crate) trait Framing: Send + 'static {
    /// Appends the chunks carrying `payload` (one message the driver queued, possibly
    /// several lines) to `out`.
    fn frame(&mut self, payload: &Bytes, out: &mut Vec<Bytes>);
    /// Appends the chunks telling the peer the connection ends with `code` and `reason`.
    fn close(&mut self, code: u16, reason: &str, out: &mut Vec<Bytes>);
    /// Whether the stream should end now (e.g. after an error answer to the connect).
    fn finished(&self) -> bool {
        false
    }
}

/// A peer that cannot send: always taken as alive, so the heartbeat never drops it (the
/// stall limit on writes does).
struct Unidirectional;

impl PeerActivity for Unidirectional {
    fn last_heard(&self) -> Option<Instant> {
        Some(Instant::now())
    }
}

/// A streamed response (and, for emulation, a channel of the peer's messages) as a
/// [`Transport`].
pub(crate) struct StreamTransport<F> {
    framing: F,
    body: Option<BodyFeed>,
    /// Chunks fed and not yet flushed.
    pending: Vec<Bytes>,
    /// The message the opening request carried, handed to the driver first.
    first: Option<Bytes>,
    /// Messages from later requests (emulation); `None` for a unidirectional stream.
    inbound: Option<mpsc::Receiver<Bytes>>,
    liveness: Option<Liveness>,
}

impl<F: Framing> StreamTransport<F> {
    /// A unidirectional stream: `first` is the connect message, nothing else comes in.
    pub(crate) fn unidirectional(framing: F, body: BodyFeed, first: Bytes) -> Self {
        StreamTransport {
            framing,
            body: Some(body),
            pending: Vec::new(),
            first: Some(first),
            inbound: None,
            liveness: None,
        }
    }

    /// A bidirectional stream: `first` is the connect message, later messages come through
    /// `inbound` and count as the peer being alive.
    pub(crate) fn bidirectional(
        framing: F,
        body: BodyFeed,
        first: Bytes,
        inbound: mpsc::Receiver<Bytes>,
    ) -> Self {
        StreamTransport {
            framing,
            body: Some(body),
            pending: Vec::new(),
            first: Some(first),
            inbound: Some(inbound),
            liveness: Some(Liveness::new()),
        }
    }

    /// Sends what is pending; `false` when the body is gone.
    async fn send_pending(&mut self) -> bool {
        let Some(body) = &self.body else {
            self.pending.clear();
            return false;
        };
        for chunk in self.pending.drain(..) {
            if !body.send(chunk).await {
                return false;
            }
        }
        true
    }
}

impl<F: Framing> Transport for StreamTransport<F> {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Message::Text(first))));
        }
        let Some(body) = &mut self.body else {
            return Poll::Ready(None);
        };
        if body.poll_gone(cx).is_ready() || self.framing.finished() {
            return Poll::Ready(None);
        }
        match &mut self.inbound {
            Some(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(msg)) => {
                    if let Some(l) = &self.liveness {
                        l.touch();
                    }
                    Poll::Ready(Some(Ok(Message::Text(msg))))
                }
                // The session was removed from the registry: nothing more can come in, but
                // the stream stays until the client closes it.
                Poll::Ready(None) => {
                    self.inbound = None;
                    Poll::Pending
                }
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Pending,
        }
    }

    fn feed(&mut self, frame: &OutFrame) -> Result<(), WsError> {
        let payload = match frame {
            OutFrame::Message(Message::Text(b) | Message::Binary(b)) => b,
            OutFrame::Prepared(p) => p.payload(),
            // WebSocket control frames have no form here; marks never reach a transport.
            OutFrame::Message(_) | OutFrame::Published(_) => return Ok(()),
        };
        self.framing.frame(payload, &mut self.pending);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), WsError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.send_pending().await {
            Ok(())
        } else {
            Err(WsError::ConnectionClosed)
        }
    }

    fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
    ) -> impl Future<Output = Result<(), WsError>> + Send {
        self.framing.close(code.0, reason, &mut self.pending);
        async move {
            let sent = self.send_pending().await;
            // Dropping the feed ends the body after what was sent.
            self.body = None;
            if sent {
                Ok(())
            } else {
                Err(WsError::ConnectionClosed)
            }
        }
    }

    async fn linger(&mut self, _limit: Duration) {}

    async fn drain(&mut self, _limit: Duration) {}

    fn activity(&self) -> Activity {
        match &self.liveness {
            Some(l) => Activity::from(Arc::new(l.clone())),
            None => Activity::from(Arc::new(Unidirectional)),
        }
    }
}
