//! Payloads, publications and the per-publication encoding cache.
//!
//! A [`Publication`] is built once per `publish` and shared by every
//! subscriber as an `Arc<Publication>`. The server turns it into bytes on the
//! wire with [`Publication::encoded`], which runs the encoder at most once per
//! [`WireFormat`] and hands every later caller the cached result.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use crate::history::{Epoch, StreamPosition};
use crate::presence::{ClientInfo, MemberEvent};

/// Identifier of a registered connection, unique within one [`Hub`](crate::Hub).
pub type ConnId = u64;

/// Whether a payload is UTF-8 text or arbitrary binary data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// UTF-8 text (a WebSocket text message).
    Text,
    /// Arbitrary bytes (a WebSocket binary message).
    Binary,
}

/// An application message. Cloning is cheap: the data is a reference-counted [`Bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Text or binary.
    pub kind: PayloadKind,
    /// The message body. For [`PayloadKind::Text`] it must be valid UTF-8.
    pub data: Bytes,
}

impl Payload {
    /// A text payload.
    pub fn text(s: impl Into<String>) -> Payload {
        Payload {
            kind: PayloadKind::Text,
            data: Bytes::from(s.into()),
        }
    }

    /// A text payload from a static string, without allocating.
    pub fn from_static_str(s: &'static str) -> Payload {
        Payload {
            kind: PayloadKind::Text,
            data: Bytes::from_static(s.as_bytes()),
        }
    }

    /// A binary payload.
    pub fn binary(data: impl Into<Bytes>) -> Payload {
        Payload {
            kind: PayloadKind::Binary,
            data: data.into(),
        }
    }

    /// Length of the body in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Identifies one wire encoding of publications (a slot in the encoding cache).
///
/// Values must be below [`WireFormat::MAX_FORMATS`]. Each slot must always be
/// filled with the same Rust type by every caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WireFormat(pub u8);

impl WireFormat {
    /// Number of cache slots per publication.
    pub const MAX_FORMATS: usize = 8;
    /// The payload as a plain WebSocket frame (raw rooms protocol).
    pub const RAW_WEBSOCKET: WireFormat = WireFormat(0);
    /// Centrifugo-compatible JSON push.
    pub const CENTRIFUGO_JSON: WireFormat = WireFormat(1);
    /// Centrifugo-compatible Protobuf push.
    pub const CENTRIFUGO_PROTOBUF: WireFormat = WireFormat(2);
    /// Socket.IO / Engine.IO event packet.
    pub const SOCKET_IO: WireFormat = WireFormat(3);
    /// Pusher Channels event frame.
    pub const PUSHER: WireFormat = WireFormat(4);
}

/// One cached encoding per wire format, filled on first use.
///
/// `OnceLock` guarantees the encoder runs exactly once per slot even when many
/// writer tasks ask for the same format at the same moment; the losers wait
/// for the winner instead of encoding a second time.
#[derive(Default)]
struct EncodedCache {
    slots: [OnceLock<Box<dyn Any + Send + Sync>>; WireFormat::MAX_FORMATS],
}

/// One message published in one channel.
///
/// Shared by every subscriber as `Arc<Publication>`; the payload is never
/// copied per subscriber.
pub struct Publication {
    /// The channel it was published in.
    pub channel: Arc<str>,
    /// The message.
    pub payload: Payload,
    /// Position in the channel: the first publication of a channel has offset 1,
    /// each next one +1, without gaps.
    pub offset: u64,
    /// Identifies the channel's history: chosen when the channel is created
    /// and changed whenever its history is lost. Offsets are only comparable
    /// within one epoch.
    pub epoch: Epoch,
    /// The connection that published it, if it came from a client.
    pub publisher: Option<ConnId>,
    /// The publishing client, when the publisher asked for it to be shown
    /// (see [`Hub::publish_with_info`](crate::Hub::publish_with_info)).
    pub info: Option<Arc<ClientInfo>>,
    /// When the publication entered this node's hub (built once, shared by every
    /// subscriber), so the time from publish to each socket write can be measured without
    /// a clock read per subscriber.
    pub published_at: Instant,
    cache: EncodedCache,
}

impl Publication {
    /// Builds a publication. The hub does this in `publish`; it is public for
    /// protocol encoders' tests.
    pub fn new(
        channel: Arc<str>,
        payload: Payload,
        offset: u64,
        epoch: impl Into<Epoch>,
        publisher: Option<ConnId>,
    ) -> Publication {
        Publication {
            channel,
            payload,
            offset,
            epoch: epoch.into(),
            publisher,
            info: None,
            published_at: Instant::now(),
            cache: EncodedCache::default(),
        }
    }

    /// Sets [`info`](Self::info).
    pub fn with_info(mut self, info: Option<Arc<ClientInfo>>) -> Publication {
        self.info = info;
        self
    }

    /// The publication's place in its channel's stream.
    pub fn position(&self) -> StreamPosition {
        StreamPosition::new(self.offset, self.epoch)
    }

    /// Encodes once per wire format: slot `format` is filled by `encode` on
    /// first use, and every later call (from any thread) returns the same value
    /// without calling its closure.
    ///
    /// # Panics
    ///
    /// If `format.0 >= WireFormat::MAX_FORMATS`, or if the slot was already
    /// filled with a different type `T` (a programming error: one format, one type).
    pub fn encoded<T: Any + Send + Sync>(
        &self,
        format: WireFormat,
        encode: impl FnOnce(&Publication) -> T,
    ) -> &T {
        let slot = self
            .cache
            .slots
            .get(format.0 as usize)
            .unwrap_or_else(|| panic!("wire format {} out of range", format.0));
        slot.get_or_init(|| Box::new(encode(self)))
            .downcast_ref::<T>()
            .unwrap_or_else(|| panic!("wire format {} was cached with a different type", format.0))
    }

    /// Whether format `format` has already been encoded.
    pub fn is_encoded(&self, format: WireFormat) -> bool {
        self.cache
            .slots
            .get(format.0 as usize)
            .is_some_and(|s| s.get().is_some())
    }
}

impl fmt::Debug for Publication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publication")
            .field("channel", &self.channel)
            .field("payload", &self.payload)
            .field("offset", &self.offset)
            .field("epoch", &self.epoch)
            .field("publisher", &self.publisher)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// One item in a connection's outbox.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A channel publication, shared with every other subscriber.
    Publication(Arc<Publication>),
    /// A message for this connection only (a reply, a server push). Boxed, so that every
    /// item of every outbox queue is two words: the queues of a fan-out burst hold
    /// publications, and each subscriber's queue is sized for its largest variant.
    Direct(Box<Payload>),
    /// Someone subscribed to a channel this connection is a member of (only
    /// in namespaces with `join_leave`). Protocols without such events
    /// ignore it.
    Join(Arc<MemberEvent>),
    /// Someone left a channel this connection is a member of (only in
    /// namespaces with `join_leave`). Protocols without such events ignore it.
    Leave(Arc<MemberEvent>),
    /// An instruction from the server for this connection (an API call by user, a gap
    /// report); each protocol carries it out its own way. Queued in order with the
    /// publications, outside the outbox's bounds (see [`crate::Hub::send_control`]).
    Control(Arc<Control>),
}

/// What the server can ask of one connection, whatever its protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Subscribe to this channel (a server-side subscription) and tell the client, where
    /// the protocol can express it.
    Subscribe(String),
    /// Leave this channel and tell the client, where the protocol can express it.
    Unsubscribe(String),
    /// Publications of this channel were lost before they reached this connection and
    /// history cannot fill the gap: the client must learn it (Centrifugo: resubscribe with
    /// code 2500; protocols without positions: close 4500 "missed publications").
    MissedPublications(String),
}

/// What [`Delivery::payload`] returns for items without a payload.
static NO_PAYLOAD: Payload = Payload {
    kind: PayloadKind::Text,
    data: Bytes::new(),
};

impl Delivery {
    /// Bytes this item accounts for in the outbox's byte budget: the payload,
    /// or for join/leave events the size of the client info.
    pub fn payload_len(&self) -> usize {
        match self {
            Delivery::Publication(p) => p.payload.len(),
            Delivery::Direct(p) => p.len(),
            Delivery::Join(e) | Delivery::Leave(e) => e.info.size(),
            Delivery::Control(_) => 0,
        }
    }

    /// The payload carried by this item (an empty text payload for join and
    /// leave events).
    pub fn payload(&self) -> &Payload {
        match self {
            Delivery::Publication(p) => &p.payload,
            Delivery::Direct(p) => p,
            Delivery::Join(_) | Delivery::Leave(_) | Delivery::Control(_) => &NO_PAYLOAD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn publication() -> Publication {
        Publication::new(Arc::from("room"), Payload::text("hello"), 1, 9, None)
    }

    #[test]
    fn encoded_runs_the_encoder_once_per_format() {
        let p = publication();
        let calls = AtomicUsize::new(0);
        for _ in 0..5 {
            let v: &Bytes = p.encoded(WireFormat::RAW_WEBSOCKET, |p| {
                calls.fetch_add(1, Ordering::SeqCst);
                p.payload.data.clone()
            });
            assert_eq!(&v[..], b"hello");
            let s: &String = p.encoded(WireFormat::CENTRIFUGO_JSON, |p| {
                calls.fetch_add(1, Ordering::SeqCst);
                format!("{{\"offset\":{}}}", p.offset)
            });
            assert_eq!(s, "{\"offset\":1}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(p.is_encoded(WireFormat::RAW_WEBSOCKET));
        assert!(!p.is_encoded(WireFormat::SOCKET_IO));
    }

    #[test]
    #[should_panic(expected = "different type")]
    fn one_format_one_type() {
        let p = publication();
        p.encoded(WireFormat(4), |_| 1u32);
        p.encoded(WireFormat(4), |_| 1u64);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn format_out_of_range_panics() {
        publication().encoded(WireFormat(WireFormat::MAX_FORMATS as u8), |_| ());
    }

    #[test]
    fn payload_constructors() {
        assert_eq!(Payload::text("ab").kind, PayloadKind::Text);
        assert_eq!(Payload::from_static_str("abc").len(), 3);
        let b = Payload::binary(vec![1, 2]);
        assert_eq!(
            (b.kind, b.len(), b.is_empty()),
            (PayloadKind::Binary, 2, false)
        );
    }
}
