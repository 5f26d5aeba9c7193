//! Between channel publications and Socket.IO events.
//!
//! * A publication in an ordinary channel reaches a Socket.IO subscriber as the event
//!   [`MESSAGE_EVENT`] with two arguments, the channel name and the data: a text payload
//!   that is valid JSON is embedded as that JSON value, other text as a JSON string, and a
//!   binary payload as a binary attachment (a `Buffer` / `ArrayBuffer` in the client).
//! * Every namespace has a channel of its own, [`namespace_channel`]; an event a client
//!   emits that is not one of the reserved ones is published there and delivered to every
//!   socket of the namespace as the same event with the same arguments. Its payload is the
//!   JSON array `[name, ...args]` as text, or, with binary arguments, the framing of
//!   [`encode_broadcast`].
//! * With connection state recovery on, every event from a publication carries one more
//!   argument, last: the publication's offset, `<epoch>.<offset>`, the same string for every
//!   subscriber, so the encoded packet stays shared.
//!
//! Each publication is encoded at most once per namespace (and offset mode), cached in the
//! publication under [`WireFormat::SOCKET_IO`]: fan-out to many sockets of a namespace
//! shares the same bytes.
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;
use switchboard_core::{Payload, PayloadKind, Publication, WireFormat};
use switchboard_websocket::{Message, PreparedMessage};

use super::engine::Packet as EnginePacket;

/// The event a channel publication is delivered as: `(channel, data)`.
pub const MESSAGE_EVENT: &str = "message";

/// Prefix of the per-namespace broadcast channels. Raw-room paths under `/socket.io/` are
/// reserved, so no raw client lands in one by accident.
pub const NAMESPACE_CHANNEL_PREFIX: &str = "socket.io";

/// Magic at the start of a binary broadcast payload.
const BROADCAST_MAGIC: &[u8; 4] = b"SIOB";

/// The channel carrying the broadcast events of namespace `nsp` (`/` → `socket.io/`,
/// `/admin` → `socket.io/admin`).
pub fn namespace_channel(nsp: &str) -> String {
    format!("{NAMESPACE_CHANNEL_PREFIX}{nsp}")
}

/// Whether `channel` is a namespace broadcast channel (clients may not subscribe or publish
/// to those directly).
pub fn is_namespace_channel(channel: &str) -> bool {
    channel
        .strip_prefix(NAMESPACE_CHANNEL_PREFIX)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// The offset argument of a publication: `<epoch>.<offset>`.
pub fn offset_of(p: &Publication) -> String {
    format!("{}.{}", p.epoch, p.offset)
}

/// An event ready for the wire: the Engine.IO text packet (`4` + Socket.IO packet) and its
/// attachments.
#[derive(Debug, Default)]
pub struct EncodedEvent {
    /// `42…` or `45N-…`, with the Engine.IO message type in front.
    pub text: Bytes,
    /// Binary attachments, each one Engine.IO binary message.
    pub attachments: Vec<Bytes>,
    /// The WebSocket frames, made on first use and shared by every WebSocket writer
    /// (compressed at most once per window size).
    prepared: OnceLock<Vec<PreparedMessage>>,
}

impl PartialEq for EncodedEvent {
    fn eq(&self, other: &EncodedEvent) -> bool {
        self.text == other.text && self.attachments == other.attachments
    }
}

impl Eq for EncodedEvent {}

impl EncodedEvent {
    /// An event from its text packet (type `4` included) and attachments.
    pub fn new(text: Bytes, attachments: Vec<Bytes>) -> EncodedEvent {
        EncodedEvent {
            text,
            attachments,
            prepared: OnceLock::new(),
        }
    }

    /// The WebSocket messages of this event (the text packet, then one binary message per
    /// attachment), framed once for every socket that writes it.
    pub fn prepared(&self) -> &[PreparedMessage] {
        self.prepared.get_or_init(|| {
            std::iter::once(Message::Text(self.text.clone()))
                .chain(self.attachments.iter().cloned().map(Message::Binary))
                .map(PreparedMessage::new)
                .collect()
        })
    }

    /// The Engine.IO packets, in order.
    pub fn packets(&self) -> impl Iterator<Item = EnginePacket> + '_ {
        std::iter::once(EnginePacket::Text(self.text.slice(1..)))
            .chain(self.attachments.iter().cloned().map(EnginePacket::Binary))
    }

    /// Bytes this event puts on the wire (text plus attachments).
    pub fn len(&self) -> usize {
        self.text.len() + self.attachments.iter().map(Bytes::len).sum::<usize>()
    }

    /// Whether the event is empty (never, for a built event).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The event built from a Socket.IO packet (for events sent to one socket only).
    pub fn from_packet(packet: &super::Packet) -> EncodedEvent {
        let text = packet.encode();
        let mut b = BytesMut::with_capacity(text.len() + 1);
        b.put_u8(b'4');
        b.extend_from_slice(text.as_bytes());
        EncodedEvent::new(b.freeze(), packet.attachments.clone())
    }
}

/// One cached encoding: namespace, with offset, the event.
type CacheEntry = (Box<str>, bool, Arc<EncodedEvent>);

/// The per-publication cache: one encoding per (namespace, with offset).
#[derive(Default)]
struct Cache {
    entries: Mutex<Vec<CacheEntry>>,
}

/// The event for `publication` as sent to sockets of namespace `nsp`, encoded once per
/// publication, namespace and offset mode, and shared.
pub fn encode_publication(
    publication: &Publication,
    nsp: &str,
    with_offset: bool,
) -> Arc<EncodedEvent> {
    let cache: &Cache = publication.encoded(WireFormat::SOCKET_IO, |_| Cache::default());
    let mut entries = cache.entries.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, e)) = entries
        .iter()
        .find(|(n, o, _)| &**n == nsp && *o == with_offset)
    {
        return Arc::clone(e);
    }
    // Encoded under the lock: a second socket of the same namespace waits instead of
    // encoding again (and entries stay few: one per namespace in use).
    let offset = with_offset.then(|| offset_of(publication));
    let e = Arc::new(build_event(publication, nsp, offset.as_deref()));
    entries.push((nsp.into(), with_offset, Arc::clone(&e)));
    e
}

fn build_event(p: &Publication, nsp: &str, offset: Option<&str>) -> EncodedEvent {
    if is_namespace_channel(&p.channel) {
        if let Some((json, attachments)) = decode_broadcast(&p.payload) {
            if let Ok(Value::Array(mut args)) = serde_json::from_str::<Value>(&json) {
                if matches!(args.first(), Some(Value::String(_))) {
                    if let Some(off) = offset {
                        args.push(Value::from(off));
                    }
                    let packet = super::Packet::event(nsp, args, attachments);
                    return EncodedEvent::from_packet(&packet);
                }
            }
        }
    }
    // `["message", channel, data(, offset)]`, built as text: the data is embedded without
    // being parsed into a tree and serialized again.
    let mut t = String::with_capacity(p.payload.len() + p.channel.len() + 32);
    t.push('4');
    let binary = p.payload.kind == PayloadKind::Binary;
    t.push_str(if binary { "51-" } else { "2" });
    if nsp != "/" {
        t.push_str(nsp);
        t.push(',');
    }
    t.push_str("[\"");
    t.push_str(MESSAGE_EVENT);
    t.push_str("\",");
    t.push_str(&Value::from(&*p.channel).to_string());
    t.push(',');
    let mut attachments = Vec::new();
    if binary {
        t.push_str("{\"_placeholder\":true,\"num\":0}");
        attachments.push(p.payload.data.clone());
    } else {
        t.push_str(&text_as_json(&p.payload.data));
    }
    if let Some(off) = offset {
        t.push(',');
        t.push_str(&Value::from(off).to_string());
    }
    t.push(']');
    EncodedEvent::new(Bytes::from(t), attachments)
}

/// Text as a JSON value: embedded as is when it is valid JSON, else as a JSON string.
pub fn text_as_json(data: &[u8]) -> String {
    let s = String::from_utf8_lossy(data);
    if serde_json::from_str::<serde::de::IgnoredAny>(&s).is_ok() {
        s.trim().to_string()
    } else {
        Value::from(s.as_ref()).to_string()
    }
}

/// The payload a client's `publish` data becomes: a binary payload for a binary argument,
/// else a text payload holding the JSON text of the value (`"hi"` keeps its quotes).
pub fn publish_payload(data: &Value, attachments: &[Bytes]) -> Payload {
    if let Some(num) = super::packet::placeholder_num(data) {
        if let Some(b) = attachments.get(num) {
            return Payload::binary(b.clone());
        }
    }
    Payload::text(data.to_string())
}

/// The payload of a namespace broadcast: the event as a JSON array (`[name, ...args]`, with
/// placeholders for binary values) and its attachments. Text when there are no attachments;
/// otherwise binary: `SIOB`, the JSON length (u32, big endian), the JSON, then each
/// attachment as its length (u32, big endian) and bytes.
pub fn encode_broadcast(args: &[Value], attachments: &[Bytes]) -> Payload {
    let json = Value::Array(args.to_vec()).to_string();
    if attachments.is_empty() {
        return Payload::text(json);
    }
    let size = 8 + json.len() + attachments.iter().map(|a| 4 + a.len()).sum::<usize>();
    let mut b = BytesMut::with_capacity(size);
    b.extend_from_slice(BROADCAST_MAGIC);
    b.put_u32(json.len() as u32);
    b.extend_from_slice(json.as_bytes());
    for a in attachments {
        b.put_u32(a.len() as u32);
        b.extend_from_slice(a);
    }
    Payload::binary(b.freeze())
}

/// The inverse of [`encode_broadcast`]; `None` if the payload is not in that format.
pub fn decode_broadcast(payload: &Payload) -> Option<(String, Vec<Bytes>)> {
    match payload.kind {
        PayloadKind::Text => Some((
            std::str::from_utf8(&payload.data).ok()?.to_string(),
            Vec::new(),
        )),
        PayloadKind::Binary => {
            let d = &payload.data;
            if d.len() < 8 || &d[..4] != BROADCAST_MAGIC {
                return None;
            }
            // Lengths come from the payload: every sum is checked, every range looked up.
            let n = usize::try_from(u32::from_be_bytes(d.get(4..8)?.try_into().ok()?)).ok()?;
            let mut at = n.checked_add(8)?;
            let json = std::str::from_utf8(d.get(8..at)?).ok()?.to_string();
            let mut attachments = Vec::new();
            while at < d.len() {
                let start = at.checked_add(4)?;
                let len = u32::from_be_bytes(d.get(at..start)?.try_into().ok()?);
                let end = start.checked_add(usize::try_from(len).ok()?)?;
                if end > d.len() {
                    return None;
                }
                attachments.push(d.slice(start..end));
                at = end;
            }
            Some((json, attachments))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn publication(channel: &str, payload: Payload) -> Publication {
        Publication::new(Arc::from(channel), payload, 7, 3, None)
    }

    #[test]
    fn channel_publications_become_message_events() {
        let p = publication("news", Payload::text("{\"a\":1}"));
        assert_eq!(
            &encode_publication(&p, "/", false).text[..],
            b"42[\"message\",\"news\",{\"a\":1}]"
        );
        assert_eq!(
            &encode_publication(&p, "/admin", true).text[..],
            b"42/admin,[\"message\",\"news\",{\"a\":1},\"3.7\"]"
        );
        let p = publication("news", Payload::text("hello"));
        assert_eq!(
            &encode_publication(&p, "/", false).text[..],
            b"42[\"message\",\"news\",\"hello\"]"
        );
        let p = publication("news", Payload::binary(vec![1u8, 2]));
        let e = encode_publication(&p, "/", false);
        assert_eq!(
            &e.text[..],
            b"451-[\"message\",\"news\",{\"_placeholder\":true,\"num\":0}]"
        );
        assert_eq!(e.attachments, vec![Bytes::from_static(&[1, 2])]);
        // Every packet decodes with our own strict decoder.
        let mut d = super::super::Decoder::new();
        assert!(d
            .text(std::str::from_utf8(&e.text[1..]).unwrap())
            .unwrap()
            .is_none());
        let back = d.binary(e.attachments[0].clone()).unwrap().unwrap();
        assert_eq!(back.event_name(), Some("message"));
    }

    #[test]
    fn encoded_once_per_namespace_and_shared() {
        let p = publication("news", Payload::text("1"));
        let a = encode_publication(&p, "/", false);
        let b = encode_publication(&p, "/", false);
        assert!(Arc::ptr_eq(&a, &b));
        // The WebSocket frames are made once and shared too.
        assert!(std::ptr::eq(a.prepared(), b.prepared()));
        assert_eq!(&a.prepared()[0].frame()[2..], &a.text[..]);
        let c = encode_publication(&p, "/x", false);
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(Arc::ptr_eq(&c, &encode_publication(&p, "/x", false)));
    }

    #[test]
    fn namespace_broadcasts_keep_the_event() {
        let args = vec![
            json!("chat"),
            json!({"t": "hi"}),
            super::super::packet::placeholder(0),
        ];
        let payload = encode_broadcast(&args, &[Bytes::from_static(b"\x00\x01")]);
        assert_eq!(payload.kind, PayloadKind::Binary);
        let (json, att) = decode_broadcast(&payload).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&json).unwrap(),
            Value::Array(args.clone())
        );
        assert_eq!(att, vec![Bytes::from_static(b"\x00\x01")]);

        let p = publication(&namespace_channel("/"), payload);
        let e = encode_publication(&p, "/", true);
        assert_eq!(
            &e.text[..],
            &b"451-[\"chat\",{\"t\":\"hi\"},{\"_placeholder\":true,\"num\":0},\"3.7\"]"[..]
        );
        let p = publication(
            &namespace_channel("/"),
            encode_broadcast(&[json!("x"), json!(1)], &[]),
        );
        assert_eq!(&encode_publication(&p, "/", false).text[..], b"42[\"x\",1]");
        // Text in the namespace channel that is not an event array falls back to `message`.
        let p = publication("socket.io/", Payload::text("plain"));
        assert_eq!(
            &encode_publication(&p, "/", false).text[..],
            b"42[\"message\",\"socket.io/\",\"plain\"]"
        );
        assert!(decode_broadcast(&Payload::binary(vec![1u8, 2, 3])).is_none());
    }

    #[test]
    fn names() {
        assert_eq!(namespace_channel("/"), "socket.io/");
        assert_eq!(namespace_channel("/admin"), "socket.io/admin");
        assert!(is_namespace_channel("socket.io/"));
        assert!(is_namespace_channel("socket.io/a"));
        assert!(!is_namespace_channel("socket.iox"));
        assert!(!is_namespace_channel("chat"));
    }

    #[test]
    fn publish_payloads() {
        assert_eq!(publish_payload(&json!("hi"), &[]), Payload::text("\"hi\""));
        assert_eq!(
            publish_payload(&json!({"a": 1}), &[]),
            Payload::text("{\"a\":1}")
        );
        assert_eq!(
            publish_payload(
                &super::super::packet::placeholder(0),
                &[Bytes::from_static(b"z")]
            ),
            Payload::binary(Bytes::from_static(b"z"))
        );
    }
}
