//! A data message framed once (and compressed once) for broadcast.
//!
//! Fan-out sends the same message to thousands of connections. Framing it per connection
//! would copy the payload N times, and compressing it per connection would run DEFLATE N
//! times. A [`PreparedMessage`] holds:
//!
//! * the unmasked server frame (header + payload) as one shared `Bytes`, built at once;
//! * a compressed frame (RSV1 set) per `server_max_window_bits` value 8..=15, produced on
//!   first request by a *fresh* compressor and cached in a `OnceLock`.
//!
//! A frame compressed by a fresh compressor refers to no earlier message, so it is valid for
//! every connection on which the server agreed `server_no_context_takeover` (RFC 7692 §7.1.1.1):
//! such a connection's own compressor is reset after each message too, so the peer's
//! decompressor state and ours never diverge. On connections with server context takeover the
//! uncompressed frame is returned instead, since injecting an independently compressed
//! message would desynchronise the connection's own compressor from the peer's window.
//! Server frames are never masked (RFC 6455 §5.1), which is what makes sharing them possible.
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use crate::codec::{Encoder, Role};
use crate::deflate::{with_pooled_deflater, DeflateParams};
use crate::error::Error;
use crate::frame::{encode_header, OpCode};
use crate::message::Message;

struct Inner {
    message: Message,
    frame: Bytes,
    payload: Bytes,
    /// Index `bits - 8`; `None` inside means compression did not make the frame smaller.
    compressed: [OnceLock<Option<Bytes>>; 8],
}

/// A data message framed once for broadcast; cheap to clone (Arc inside), Send + Sync.
#[derive(Clone)]
pub struct PreparedMessage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PreparedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedMessage")
            .field("is_text", &self.is_text())
            .field("payload_len", &self.inner.payload.len())
            .finish_non_exhaustive()
    }
}

impl PreparedMessage {
    /// Frame a message for broadcast. Meant for Text or Binary; control messages are framed
    /// as-is and never compressed.
    ///
    /// # Panics
    ///
    /// If `msg` is a control message that cannot be sent (payload over 125 bytes, invalid
    /// close code or reason); use [`PreparedMessage::try_new`] to get an error instead.
    pub fn new(msg: Message) -> PreparedMessage {
        match PreparedMessage::try_new(msg) {
            Ok(p) => p,
            Err(e) => panic!("PreparedMessage::new: {e}"),
        }
    }

    /// Like [`PreparedMessage::new`], returning an error for an unsendable control message.
    pub fn try_new(msg: Message) -> Result<PreparedMessage, Error> {
        let (frame, payload) = match &msg {
            Message::Text(p) | Message::Binary(p) => {
                let op = if matches!(msg, Message::Text(_)) {
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                (build_frame(op, false, p), p.clone())
            }
            _ => {
                let mut out = BytesMut::new();
                Encoder::new(Role::Server, Default::default()).encode(&msg, &mut out)?;
                let payload = match &msg {
                    Message::Ping(p) | Message::Pong(p) => p.clone(),
                    _ => Bytes::new(),
                };
                (out.freeze(), payload)
            }
        };
        Ok(PreparedMessage {
            inner: Arc::new(Inner {
                message: msg,
                frame,
                payload,
                compressed: Default::default(),
            }),
        })
    }

    /// Header + payload, uncompressed, server role.
    pub fn frame(&self) -> &Bytes {
        &self.inner.frame
    }

    /// The frame to send on a connection with the given deflate parameters.
    ///
    /// The same message deflated ONCE (cached per window bits, 8..=15) with a fresh
    /// compressor (no context takeover), RSV1 set; legal for every connection that agreed
    /// `server_no_context_takeover`. Returns the uncompressed frame when deflate is off, the
    /// connection uses server context takeover, the payload is below `threshold`, the message
    /// is not a data message, or compression would not make the frame smaller.
    pub fn frame_for(&self, deflate: Option<&DeflateParams>, threshold: usize) -> Bytes {
        let Some(params) = deflate else {
            return self.inner.frame.clone();
        };
        let data = matches!(self.inner.message, Message::Text(_) | Message::Binary(_));
        if !data || !params.server_no_context_takeover || self.inner.payload.len() < threshold {
            return self.inner.frame.clone();
        }
        let bits = params.server_max_window_bits.clamp(8, 15);
        let slot = &self.inner.compressed[(bits - 8) as usize];
        slot.get_or_init(|| self.compress(bits))
            .clone()
            .unwrap_or_else(|| self.inner.frame.clone())
    }

    fn compress(&self, bits: u8) -> Option<Bytes> {
        let mut body = BytesMut::new();
        // A fresh history is exactly what a pooled compressor offers, without building (and
        // zeroing) a new one for every publication.
        with_pooled_deflater(bits, |d| d.compress(&self.inner.payload, &mut body)).ok()?;
        let op = if self.is_text() {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        let frame = build_frame(op, true, &body);
        (frame.len() < self.inner.frame.len()).then_some(frame)
    }

    /// Whether `a` and `b` are handles to the same framed message (shared, not copied).
    pub fn ptr_eq(a: &PreparedMessage, b: &PreparedMessage) -> bool {
        Arc::ptr_eq(&a.inner, &b.inner)
    }

    /// The unframed, uncompressed payload.
    pub fn payload(&self) -> &Bytes {
        &self.inner.payload
    }

    /// Whether this is a text message.
    pub fn is_text(&self) -> bool {
        matches!(self.inner.message, Message::Text(_))
    }

    /// The message this was prepared from.
    pub fn message(&self) -> &Message {
        &self.inner.message
    }
}

fn build_frame(op: OpCode, rsv1: bool, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    encode_header(&mut out, true, rsv1, op, None, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}
