//! The raw room protocol: WebSocket messages are the payloads, untouched.
//!
//! A text or binary message a client sends becomes a [`Payload`] of the same kind, published
//! to the room. A [`Publication`] goes out as the same kind of message, framed once as a
//! [`PreparedMessage`] (and compressed at most once per window size) and cached in the
//! publication under [`WireFormat::RAW_WEBSOCKET`], so every subscriber's writer shares the
//! same bytes.
use switchboard_core::{Payload, PayloadKind, Publication, WireFormat};
use switchboard_websocket::{Message, PreparedMessage};

/// The protocol name recorded in the hub for raw connections.
pub const PROTOCOL: &str = "raw";

/// The payload to publish for an incoming message; `None` for control messages
/// (ping, pong, close), which are never published.
pub fn decode(msg: &Message) -> Option<Payload> {
    match msg {
        Message::Text(data) => Some(Payload {
            kind: PayloadKind::Text,
            data: data.clone(),
        }),
        Message::Binary(data) => Some(Payload {
            kind: PayloadKind::Binary,
            data: data.clone(),
        }),
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => None,
    }
}

/// The WebSocket message carrying `payload` (same kind, same bytes; no copy).
pub fn to_message(payload: &Payload) -> Message {
    match payload.kind {
        PayloadKind::Text => Message::Text(payload.data.clone()),
        PayloadKind::Binary => Message::Binary(payload.data.clone()),
    }
}

/// The frame-once encoding of `publication`, built by the first subscriber's writer that asks
/// and shared by all others.
pub fn encode(publication: &Publication) -> &PreparedMessage {
    publication.encoded(WireFormat::RAW_WEBSOCKET, |p| {
        PreparedMessage::new(to_message(&p.payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn data_messages_become_payloads_of_the_same_kind() {
        let p = decode(&Message::text("hi")).unwrap();
        assert_eq!(p.kind, PayloadKind::Text);
        assert_eq!(&p.data[..], b"hi");
        let p = decode(&Message::binary(vec![0u8, 1, 2])).unwrap();
        assert_eq!(p.kind, PayloadKind::Binary);
        assert_eq!(&p.data[..], &[0, 1, 2]);
        assert!(decode(&Message::Ping(Bytes::new())).is_none());
        assert!(decode(&Message::Close(None)).is_none());
    }

    #[test]
    fn a_publication_is_framed_once_for_everyone() {
        use std::sync::Arc;
        let publication = Publication::new(Arc::from("room"), Payload::text("hello"), 1, 7, None);
        let first = encode(&publication);
        let second = encode(&publication);
        assert!(std::ptr::eq(first, second), "the cached encoding is shared");
        // Unmasked server text frame: FIN + opcode 1, length 5, then the payload.
        assert_eq!(&first.frame()[..], b"\x81\x05hello");
        assert!(first.is_text());
    }

    #[test]
    fn payloads_round_trip_without_copying() {
        let data = Bytes::from_static(b"shared");
        let msg = to_message(&Payload {
            kind: PayloadKind::Binary,
            data: data.clone(),
        });
        match msg {
            Message::Binary(b) => assert_eq!(b.as_ptr(), data.as_ptr()),
            other => panic!("unexpected {other:?}"),
        }
    }
}
