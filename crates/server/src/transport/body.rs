//! The body of every response the server sends: either one buffer known up front (every
//! ordinary answer), or a stream of chunks a connection's task feeds while the response is
//! open (the HTTP-streaming and Server-Sent Events transports, [`super::stream`]).
//!
//! A streamed body is fed through a bounded channel. hyper polls the body only when it can
//! write, so a client that stops reading fills the channel and the connection's flush waits:
//! the runtime's stall limit and slow-consumer policy apply as for a WebSocket.
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, SizeHint};
use tokio::sync::{mpsc, oneshot};

/// A response body: a whole buffer, or a stream fed by a connection.
#[derive(Debug)]
pub struct Body {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Full(Full<Bytes>),
    /// The chunks, and a guard whose drop (hyper dropping the body: the client went away)
    /// the feeding side sees ([`BodyFeed::poll_gone`]).
    Stream {
        chunks: mpsc::Receiver<Bytes>,
        _guard: oneshot::Receiver<()>,
    },
}

/// The feeding half of a streamed [`Body`].
#[derive(Debug)]
pub struct BodyFeed {
    tx: mpsc::Sender<Bytes>,
    gone: oneshot::Sender<()>,
}

impl BodyFeed {
    /// Sends one chunk, waiting for room; `false` when the body is gone.
    pub async fn send(&self, chunk: Bytes) -> bool {
        self.tx.send(chunk).await.is_ok()
    }

    /// Ready once the body was dropped: the response ended or the client went away.
    pub fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.gone.poll_closed(cx)
    }
}

impl Body {
    /// A body of `bytes`.
    pub fn new(bytes: impl Into<Bytes>) -> Body {
        Body {
            inner: Inner::Full(Full::new(bytes.into())),
        }
    }

    /// A streamed body and the sender that feeds it, `capacity` chunks ahead of the
    /// socket. The body ends when the sender is dropped.
    pub fn channel(capacity: usize) -> (BodyFeed, Body) {
        let (tx, rx) = mpsc::channel(capacity);
        let (gone, guard) = oneshot::channel();
        (
            BodyFeed { tx, gone },
            Body {
                inner: Inner::Stream {
                    chunks: rx,
                    _guard: guard,
                },
            },
        )
    }
}

impl Default for Body {
    fn default() -> Body {
        Body::new(Bytes::new())
    }
}

impl From<Full<Bytes>> for Body {
    fn from(full: Full<Bytes>) -> Body {
        Body {
            inner: Inner::Full(full),
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        Body::new(bytes)
    }
}

impl From<String> for Body {
    fn from(s: String) -> Body {
        Body::new(s)
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Body {
        Body::new(Bytes::from_static(s.as_bytes()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().inner {
            Inner::Full(full) => Pin::new(full).poll_frame(cx),
            Inner::Stream { chunks, .. } => chunks
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(full) => full.is_end_stream(),
            Inner::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(full) => full.size_hint(),
            Inner::Stream { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_streamed_body_yields_what_was_sent_then_ends() {
        let (tx, body) = Body::channel(4);
        assert!(tx.send(Bytes::from_static(b"a")).await);
        assert!(tx.send(Bytes::from_static(b"b")).await);
        drop(tx);
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"ab");
    }

    #[tokio::test]
    async fn the_feed_sees_the_body_dropped() {
        let (mut tx, body) = Body::channel(4);
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(tx.poll_gone(&mut cx).is_pending());
        drop(body);
        assert!(tx.poll_gone(&mut cx).is_ready());
        assert!(!tx.send(Bytes::from_static(b"x")).await);
    }

    fn futures_noop_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }

    #[tokio::test]
    async fn a_full_body_reports_its_length() {
        let body = Body::new(Bytes::from_static(b"hello"));
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(5));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"hello");
    }
}
