//! Socket.IO protocol version 5 packets, carried in Engine.IO message packets.
//!
//! Encoding of one packet (all parts after the type are optional):
//!
//! ```text
//! <type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]
//! ```
//!
//! | type | name          | data                                              |
//! |------|---------------|---------------------------------------------------|
//! | `0`  | CONNECT       | client: optional auth object; server: `{"sid"}`   |
//! | `1`  | DISCONNECT    | none                                              |
//! | `2`  | EVENT         | array: event name, then arguments                 |
//! | `3`  | ACK           | array: arguments                                  |
//! | `4`  | CONNECT_ERROR | object `{"message"}` (or a string)                 |
//! | `5`  | BINARY_EVENT  | like EVENT, binary values replaced by placeholders |
//! | `6`  | BINARY_ACK    | like ACK, binary values replaced by placeholders   |
//!
//! The namespace is written only when it is not `/`. A binary value is replaced in the JSON
//! by `{"_placeholder":true,"num":N}` and sent as the N-th attachment right after the packet
//! (one binary Engine.IO message each).
use bytes::Bytes;
use serde_json::{Map, Value};

/// Most attachments any packet may announce: the ceiling of what [`Packet::decode_counted`]
/// accepts, whatever a [`Decoder`] is configured with.
pub const MAX_ATTACHMENTS: usize = 64;
/// Most attachments a [`Decoder`] accepts on one packet by default (as the reference
/// parser's `maxAttachments`).
pub const DEFAULT_MAX_ATTACHMENTS: usize = 10;
/// Most attachment bytes a [`Decoder`] buffers for one packet by default (4 MiB).
pub const DEFAULT_MAX_ATTACHMENT_BYTES: usize = 4 << 20;

/// A Socket.IO packet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// Joins a namespace (client), or confirms it (server).
    Connect,
    /// Leaves a namespace.
    Disconnect,
    /// An event without binary data.
    Event,
    /// An acknowledgement without binary data.
    Ack,
    /// The server refused to join a namespace.
    ConnectError,
    /// An event with binary attachments.
    BinaryEvent,
    /// An acknowledgement with binary attachments.
    BinaryAck,
}

impl PacketType {
    /// The type digit.
    pub fn digit(self) -> u8 {
        match self {
            PacketType::Connect => b'0',
            PacketType::Disconnect => b'1',
            PacketType::Event => b'2',
            PacketType::Ack => b'3',
            PacketType::ConnectError => b'4',
            PacketType::BinaryEvent => b'5',
            PacketType::BinaryAck => b'6',
        }
    }

    fn from_digit(d: u8) -> Option<PacketType> {
        Some(match d {
            b'0' => PacketType::Connect,
            b'1' => PacketType::Disconnect,
            b'2' => PacketType::Event,
            b'3' => PacketType::Ack,
            b'4' => PacketType::ConnectError,
            b'5' => PacketType::BinaryEvent,
            b'6' => PacketType::BinaryAck,
            _ => return None,
        })
    }

    /// Whether packets of this type carry attachments.
    pub fn is_binary(self) -> bool {
        matches!(self, PacketType::BinaryEvent | PacketType::BinaryAck)
    }
}

/// One Socket.IO packet, its binary attachments included once complete.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// The packet type.
    pub kind: PacketType,
    /// The namespace, `/` by default.
    pub nsp: String,
    /// The acknowledgement id: asks for an ACK (on an EVENT), or answers one (on an ACK).
    pub id: Option<u64>,
    /// The JSON data, with placeholders where binary values were.
    pub data: Option<Value>,
    /// The binary values, in placeholder order.
    pub attachments: Vec<Bytes>,
}

/// Why text is not a valid Socket.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet is empty or its type is not `0`–`6`.
    UnknownType,
    /// The attachment count of a binary packet is missing, malformed or too large.
    BadAttachments,
    /// The ack id does not fit in 64 bits.
    BadAckId,
    /// The data is not JSON.
    BadJson,
    /// The data does not have the shape its type requires (e.g. an EVENT that is not an
    /// array starting with a string name).
    InvalidPayload,
    /// A placeholder names an attachment that does not exist.
    BadPlaceholder,
    /// A binary attachment arrived while no binary packet was waiting for one.
    UnexpectedAttachment,
    /// A text packet arrived while a binary packet was still waiting for attachments.
    MissingAttachments,
    /// A binary packet announced more attachments than the decoder accepts.
    TooManyAttachments,
    /// The attachments of a binary packet add up to more bytes than the decoder buffers.
    AttachmentsTooLarge,
}

impl DecodeError {
    /// A short description, fit for an error answer.
    pub fn as_str(&self) -> &'static str {
        match self {
            DecodeError::UnknownType => "unknown packet type",
            DecodeError::BadAttachments => "invalid attachment count",
            DecodeError::BadAckId => "invalid ack id",
            DecodeError::BadJson => "data is not JSON",
            DecodeError::InvalidPayload => "invalid payload for the packet type",
            DecodeError::BadPlaceholder => "placeholder without attachment",
            DecodeError::UnexpectedAttachment => "unexpected binary attachment",
            DecodeError::MissingAttachments => "text packet before the attachments were complete",
            DecodeError::TooManyAttachments => "too many attachments",
            DecodeError::AttachmentsTooLarge => "attachments too large",
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for DecodeError {}

impl Packet {
    /// A packet of `kind` in namespace `nsp`, without id, data or attachments.
    pub fn new(kind: PacketType, nsp: impl Into<String>) -> Packet {
        Packet {
            kind,
            nsp: nsp.into(),
            id: None,
            data: None,
            attachments: Vec::new(),
        }
    }

    /// An EVENT (BINARY_EVENT when `attachments` is not empty) with `args` (name first).
    pub fn event(nsp: impl Into<String>, args: Vec<Value>, attachments: Vec<Bytes>) -> Packet {
        let kind = if attachments.is_empty() {
            PacketType::Event
        } else {
            PacketType::BinaryEvent
        };
        Packet {
            data: Some(Value::Array(args)),
            attachments,
            ..Packet::new(kind, nsp)
        }
    }

    /// An ACK (BINARY_ACK when `attachments` is not empty) answering `id` with `args`.
    pub fn ack(
        nsp: impl Into<String>,
        id: u64,
        args: Vec<Value>,
        attachments: Vec<Bytes>,
    ) -> Packet {
        let kind = if attachments.is_empty() {
            PacketType::Ack
        } else {
            PacketType::BinaryAck
        };
        Packet {
            id: Some(id),
            data: Some(Value::Array(args)),
            attachments,
            ..Packet::new(kind, nsp)
        }
    }

    /// The server's CONNECT answer: `{"sid"}`, plus `pid` when the session is recoverable.
    pub fn connect_ok(nsp: impl Into<String>, sid: &str, pid: Option<&str>) -> Packet {
        let mut obj = Map::new();
        obj.insert("sid".into(), Value::from(sid));
        if let Some(pid) = pid {
            obj.insert("pid".into(), Value::from(pid));
        }
        Packet {
            data: Some(Value::Object(obj)),
            ..Packet::new(PacketType::Connect, nsp)
        }
    }

    /// A CONNECT_ERROR with `{"message": message}`.
    pub fn connect_error(nsp: impl Into<String>, message: &str) -> Packet {
        let mut obj = Map::new();
        obj.insert("message".into(), Value::from(message));
        Packet {
            data: Some(Value::Object(obj)),
            ..Packet::new(PacketType::ConnectError, nsp)
        }
    }

    /// The text part: what goes after the Engine.IO `4`.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(16);
        s.push(self.kind.digit() as char);
        if self.kind.is_binary() {
            s.push_str(&self.attachments.len().to_string());
            s.push('-');
        }
        if self.nsp != "/" && !self.nsp.is_empty() {
            s.push_str(&self.nsp);
            s.push(',');
        }
        if let Some(id) = self.id {
            s.push_str(&id.to_string());
        }
        if let Some(data) = &self.data {
            s.push_str(&data.to_string());
        }
        s
    }

    /// Decodes the text part of a packet. A binary packet comes back with no attachments
    /// yet; [`Decoder`] collects them.
    pub fn decode(s: &str) -> Result<Packet, DecodeError> {
        Packet::decode_counted(s).map(|(p, _)| p)
    }

    /// Like [`decode`](Self::decode), also returning the number of attachments announced.
    pub fn decode_counted(s: &str) -> Result<(Packet, usize), DecodeError> {
        let b = s.as_bytes();
        let kind = b
            .first()
            .and_then(|d| PacketType::from_digit(*d))
            .ok_or(DecodeError::UnknownType)?;
        let mut i = 1;
        let mut expected = 0;
        if kind.is_binary() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == start || i >= b.len() || b[i] != b'-' {
                return Err(DecodeError::BadAttachments);
            }
            expected = s[start..i]
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_ATTACHMENTS).contains(n))
                .ok_or(DecodeError::BadAttachments)?;
            i += 1;
        }
        let mut nsp = "/".to_string();
        if b.get(i) == Some(&b'/') {
            let start = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            nsp = s[start..i].to_string();
            if i < b.len() {
                i += 1; // the comma
            }
        }
        let mut id = None;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i > start {
            id = Some(
                s[start..i]
                    .parse::<u64>()
                    .map_err(|_| DecodeError::BadAckId)?,
            );
        }
        let data = if i < b.len() {
            Some(serde_json::from_str::<Value>(&s[i..]).map_err(|_| DecodeError::BadJson)?)
        } else {
            None
        };
        let valid = match kind {
            PacketType::Connect => matches!(data, None | Some(Value::Object(_))),
            PacketType::Disconnect => data.is_none(),
            PacketType::ConnectError => {
                matches!(data, Some(Value::Object(_)) | Some(Value::String(_)))
            }
            PacketType::Event | PacketType::BinaryEvent => match &data {
                Some(Value::Array(a)) => matches!(a.first(), Some(Value::String(_))),
                _ => false,
            },
            PacketType::Ack | PacketType::BinaryAck => {
                id.is_some() && matches!(data, Some(Value::Array(_)))
            }
        };
        if !valid {
            return Err(DecodeError::InvalidPayload);
        }
        if kind.is_binary() && count_placeholders(data.as_ref(), expected)? == 0 {
            // Attachments no placeholder refers to would be dropped silently.
            return Err(DecodeError::BadPlaceholder);
        }
        Ok((
            Packet {
                kind,
                nsp,
                id,
                data,
                attachments: Vec::with_capacity(expected),
            },
            expected,
        ))
    }

    /// For an EVENT: its name.
    pub fn event_name(&self) -> Option<&str> {
        match (&self.kind, &self.data) {
            (PacketType::Event | PacketType::BinaryEvent, Some(Value::Array(a))) => {
                a.first().and_then(Value::as_str)
            }
            _ => None,
        }
    }

    /// For an EVENT or ACK: its arguments (after the name, for an EVENT).
    pub fn args(&self) -> &[Value] {
        match &self.data {
            Some(Value::Array(a)) => match self.kind {
                PacketType::Event | PacketType::BinaryEvent => a.get(1..).unwrap_or(&[]),
                _ => a,
            },
            _ => &[],
        }
    }
}

/// Counts the placeholders in `data`, checking each names an attachment below `expected`.
fn count_placeholders(data: Option<&Value>, expected: usize) -> Result<usize, DecodeError> {
    fn walk(v: &Value, expected: usize, n: &mut usize) -> Result<(), DecodeError> {
        match v {
            Value::Array(a) => a.iter().try_for_each(|v| walk(v, expected, n)),
            Value::Object(o) => {
                if let Some(num) = placeholder_num(v) {
                    if num >= expected {
                        return Err(DecodeError::BadPlaceholder);
                    }
                    *n += 1;
                    return Ok(());
                }
                o.values().try_for_each(|v| walk(v, expected, n))
            }
            _ => Ok(()),
        }
    }
    let mut n = 0;
    if let Some(v) = data {
        walk(v, expected, &mut n)?;
    }
    Ok(n)
}

/// The attachment index of a placeholder object, `None` for any other value.
pub fn placeholder_num(v: &Value) -> Option<usize> {
    let o = v.as_object()?;
    if o.get("_placeholder") != Some(&Value::Bool(true)) {
        return None;
    }
    o.get("num")?.as_u64().and_then(|n| usize::try_from(n).ok())
}

/// The placeholder object for attachment `num`.
pub fn placeholder(num: usize) -> Value {
    let mut o = Map::new();
    o.insert("_placeholder".into(), Value::Bool(true));
    o.insert("num".into(), Value::from(num));
    Value::Object(o)
}

/// Assembles packets from Engine.IO messages: a text message starts a packet; a binary
/// packet then takes the announced number of binary messages as its attachments.
///
/// What one decoder buffers is bounded: a packet announcing more than `max_attachments`
/// attachments is refused before any is read ([`DecodeError::TooManyAttachments`]), and
/// the attachment that takes the packet's total past `max_attachment_bytes` is refused
/// ([`DecodeError::AttachmentsTooLarge`]), dropping what the packet had buffered.
#[derive(Debug)]
pub struct Decoder {
    /// A binary packet and the number of attachments it announced.
    pending: Option<(Packet, usize)>,
    /// Bytes of the pending packet's attachments so far.
    pending_bytes: usize,
    max_attachments: usize,
    max_attachment_bytes: usize,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::with_limits(DEFAULT_MAX_ATTACHMENTS, DEFAULT_MAX_ATTACHMENT_BYTES)
    }
}

impl Decoder {
    /// A decoder with nothing pending and the default limits
    /// ([`DEFAULT_MAX_ATTACHMENTS`], [`DEFAULT_MAX_ATTACHMENT_BYTES`]).
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// A decoder accepting at most `max_attachments` attachments (capped at
    /// [`MAX_ATTACHMENTS`]) of at most `max_attachment_bytes` bytes in total per packet.
    pub fn with_limits(max_attachments: usize, max_attachment_bytes: usize) -> Decoder {
        Decoder {
            pending: None,
            pending_bytes: 0,
            max_attachments: max_attachments.min(MAX_ATTACHMENTS),
            max_attachment_bytes,
        }
    }

    /// Feeds a text message. Returns the packet when complete (immediately, unless it is a
    /// binary packet waiting for attachments).
    pub fn text(&mut self, s: &str) -> Result<Option<Packet>, DecodeError> {
        if self.pending.is_some() {
            return Err(DecodeError::MissingAttachments);
        }
        let (p, expected) = Packet::decode_counted(s)?;
        if p.kind.is_binary() {
            if expected > self.max_attachments {
                return Err(DecodeError::TooManyAttachments);
            }
            self.pending = Some((p, expected));
            self.pending_bytes = 0;
            Ok(None)
        } else {
            Ok(Some(p))
        }
    }

    /// Feeds a binary message: the next attachment of the pending packet.
    pub fn binary(&mut self, data: Bytes) -> Result<Option<Packet>, DecodeError> {
        let Some((p, expected)) = self.pending.as_mut() else {
            return Err(DecodeError::UnexpectedAttachment);
        };
        let total = self.pending_bytes.saturating_add(data.len());
        if total > self.max_attachment_bytes {
            self.reset();
            return Err(DecodeError::AttachmentsTooLarge);
        }
        self.pending_bytes = total;
        p.attachments.push(data);
        if p.attachments.len() >= *expected {
            self.pending_bytes = 0;
            return Ok(self.pending.take().map(|(p, _)| p));
        }
        Ok(None)
    }

    /// Bytes of attachments buffered for the pending packet.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Drops the pending packet, if any.
    pub fn reset(&mut self) {
        self.pending = None;
        self.pending_bytes = 0;
    }

    /// Whether a binary packet is waiting for attachments.
    pub fn is_waiting(&self) -> bool {
        self.pending.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn announcing(n: usize) -> String {
        format!("5{n}-[\"up\",{{\"_placeholder\":true,\"num\":0}}]")
    }

    #[test]
    fn attachment_count_is_bounded_before_anything_is_buffered() {
        let mut d = Decoder::new();
        assert_eq!(
            d.text(&announcing(11)),
            Err(DecodeError::TooManyAttachments)
        );
        assert!(!d.is_waiting());
        assert_eq!(d.text(&announcing(10)), Ok(None));
        assert!(d.is_waiting());
        let mut d = Decoder::with_limits(2, 100);
        assert_eq!(d.text(&announcing(3)), Err(DecodeError::TooManyAttachments));
        // The ceiling applies whatever the configuration.
        let mut d = Decoder::with_limits(1000, 100);
        assert_eq!(d.text(&announcing(65)), Err(DecodeError::BadAttachments));
    }

    #[test]
    fn attachment_bytes_are_bounded_and_released_on_error() {
        let mut d = Decoder::with_limits(10, 100);
        assert_eq!(d.text(&announcing(3)), Ok(None));
        assert_eq!(d.binary(Bytes::from(vec![0u8; 60])), Ok(None));
        assert_eq!(d.pending_bytes(), 60);
        assert_eq!(
            d.binary(Bytes::from(vec![0u8; 41])),
            Err(DecodeError::AttachmentsTooLarge)
        );
        assert!(!d.is_waiting());
        assert_eq!(d.pending_bytes(), 0);
        // Exactly at the limit is fine.
        assert_eq!(d.text(&announcing(2)), Ok(None));
        assert_eq!(d.binary(Bytes::from(vec![0u8; 50])), Ok(None));
        let p = d.binary(Bytes::from(vec![0u8; 50])).unwrap().unwrap();
        assert_eq!(p.attachments.len(), 2);
        assert_eq!(d.pending_bytes(), 0);
    }

    #[test]
    fn decodes_the_documented_examples() {
        let p = Packet::decode("0").unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.data),
            (PacketType::Connect, "/", None)
        );
        let p = Packet::decode("0/admin,{\"token\":\"123\"}").unwrap();
        assert_eq!(p.nsp, "/admin");
        assert_eq!(p.data, Some(json!({"token": "123"})));
        let p = Packet::decode("1/admin,").unwrap();
        assert_eq!((p.kind, p.nsp.as_str()), (PacketType::Disconnect, "/admin"));
        let p = Packet::decode("2[\"foo\"]").unwrap();
        assert_eq!(p.event_name(), Some("foo"));
        assert!(p.args().is_empty());
        let p = Packet::decode("2/admin,456[\"project:delete\",123]").unwrap();
        assert_eq!(p.id, Some(456));
        assert_eq!(p.args(), &[json!(123)]);
        let p = Packet::decode("3/admin,456[]").unwrap();
        assert_eq!((p.kind, p.id), (PacketType::Ack, Some(456)));
        let p = Packet::decode("4{\"message\":\"Not authorized\"}").unwrap();
        assert_eq!(p.kind, PacketType::ConnectError);
        let (p, n) =
            Packet::decode_counted("51-[\"baz\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!((p.kind, n), (PacketType::BinaryEvent, 1));
        let p = Packet::decode("61-/admin,456[{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.id),
            (PacketType::BinaryAck, "/admin", Some(456))
        );
    }

    #[test]
    fn strict_decoding() {
        use DecodeError::*;
        for (s, e) in [
            ("", UnknownType),
            ("9", UnknownType),
            ("2", InvalidPayload),
            ("2{}", InvalidPayload),
            ("2[]", InvalidPayload),
            ("2[1]", InvalidPayload),
            ("2[\"a\"", BadJson),
            ("0[]", InvalidPayload),
            ("1{}", InvalidPayload),
            ("3[]", InvalidPayload),
            ("3{}", InvalidPayload),
            ("5[\"a\"]", BadAttachments),
            ("5x-[\"a\"]", BadAttachments),
            ("50-[\"a\"]", BadAttachments),
            ("51-[\"a\"]", BadPlaceholder),
            (
                "51-[\"a\",{\"_placeholder\":true,\"num\":1}]",
                BadPlaceholder,
            ),
            ("5999-[\"a\"]", BadAttachments),
            ("299999999999999999999[\"a\"]", BadAckId),
        ] {
            assert_eq!(Packet::decode(s), Err(e), "{s:?}");
        }
    }

    #[test]
    fn encodes() {
        assert_eq!(
            Packet::connect_ok("/", "abc", None).encode(),
            "0{\"sid\":\"abc\"}"
        );
        assert_eq!(
            Packet::connect_ok("/admin", "abc", Some("p")).encode(),
            "0/admin,{\"pid\":\"p\",\"sid\":\"abc\"}"
        );
        assert_eq!(
            Packet::connect_error("/", "Not authorized").encode(),
            "4{\"message\":\"Not authorized\"}"
        );
        assert_eq!(Packet::ack("/", 12, vec![], vec![]).encode(), "312[]");
        let p = Packet::event(
            "/",
            vec![json!("baz"), placeholder(0)],
            vec![Bytes::from_static(&[1, 2])],
        );
        assert_eq!(p.encode(), "51-[\"baz\",{\"_placeholder\":true,\"num\":0}]");
        assert_eq!(Packet::new(PacketType::Disconnect, "/x").encode(), "1/x,");
    }

    #[test]
    fn decoder_collects_attachments() {
        let mut d = Decoder::new();
        assert_eq!(
            d.text(
                "52-[\"a\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]"
            ),
            Ok(None)
        );
        assert!(d.is_waiting());
        assert_eq!(d.text("2[\"b\"]"), Err(DecodeError::MissingAttachments));
        assert_eq!(d.binary(Bytes::from_static(b"x")), Ok(None));
        let p = d.binary(Bytes::from_static(b"y")).unwrap().unwrap();
        assert_eq!(
            p.attachments,
            vec![Bytes::from_static(b"x"), Bytes::from_static(b"y")]
        );
        assert!(!d.is_waiting());
        assert_eq!(
            d.binary(Bytes::new()),
            Err(DecodeError::UnexpectedAttachment)
        );
        assert_eq!(d.text("2[\"b\"]").unwrap().unwrap().event_name(), Some("b"));
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            "[a-z0-9 ,/\"\\\\]{0,8}".prop_map(Value::from),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(
            nsp in prop_oneof![Just("/".to_string()), "/[a-z]{1,6}"],
            id in proptest::option::of(any::<u64>()),
            name in "[a-z:]{1,8}",
            args in proptest::collection::vec(json_leaf(), 0..4),
            n_bin in 0usize..3,
        ) {
            let mut all = vec![Value::from(name)];
            all.extend(args);
            let attachments: Vec<Bytes> = (0..n_bin).map(|i| Bytes::from(vec![i as u8; i + 1])).collect();
            for i in 0..n_bin {
                all.push(placeholder(i));
            }
            let mut p = Packet::event(nsp, all, attachments.clone());
            p.id = id;
            let text = p.encode();
            let mut d = Decoder::new();
            let mut got = d.text(&text).unwrap();
            for a in attachments {
                prop_assert!(got.is_none());
                got = d.binary(a).unwrap();
            }
            prop_assert_eq!(got.unwrap(), p);
        }
    }
}
