//! Engine.IO protocol version 4: the transport layer under Socket.IO.
//!
//! An Engine.IO packet is one type character followed by its data:
//!
//! | type | name    | data                                   |
//! |------|---------|----------------------------------------|
//! | `0`  | open    | the handshake JSON (server → client)   |
//! | `1`  | close   | none                                   |
//! | `2`  | ping    | optional text (`probe` while upgrading) |
//! | `3`  | pong    | optional text (`probe` while upgrading) |
//! | `4`  | message | text (a Socket.IO packet)              |
//! | `5`  | upgrade | none                                   |
//! | `6`  | noop    | none                                   |
//!
//! On a WebSocket every text frame is one packet; a binary frame is a whole binary message
//! packet, without a type byte. With HTTP long-polling several packets travel in one body,
//! separated by the record separator `\x1e`; a binary message is written as `b` followed by
//! the standard base64 of its bytes.
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

/// The record separator between packets of a polling payload.
pub const SEPARATOR: u8 = 0x1e;

/// The protocol revision this module speaks (`EIO=4` in the query string).
pub const VERSION: &str = "4";

/// One Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// The handshake, with its JSON body.
    Open(Bytes),
    /// The session is being closed.
    Close,
    /// A heartbeat request (from the server), or the upgrade probe (`probe`, from the client).
    Ping(Bytes),
    /// The answer to a ping, carrying the same data.
    Pong(Bytes),
    /// An application message: UTF-8 text.
    Text(Bytes),
    /// An application message: binary data.
    Binary(Bytes),
    /// The client switches to the probed WebSocket.
    Upgrade,
    /// Nothing; sent to end a pending poll while a transport upgrade is under way.
    Noop,
}

/// Why bytes are not a valid Engine.IO packet or payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet has no type character.
    Empty,
    /// The type character is not `0`–`6`.
    UnknownType(u8),
    /// A text packet is not UTF-8.
    NotUtf8,
    /// A `b`-prefixed polling packet is not valid base64.
    BadBase64,
    /// A packet that carries no data (close, upgrade, noop) had some.
    UnexpectedData,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty packet"),
            DecodeError::UnknownType(t) => write!(f, "unknown packet type {:?}", *t as char),
            DecodeError::NotUtf8 => f.write_str("text packet is not UTF-8"),
            DecodeError::BadBase64 => f.write_str("binary packet is not valid base64"),
            DecodeError::UnexpectedData => f.write_str("packet type carries no data"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Packet {
    /// A text message packet.
    pub fn text(s: impl Into<Bytes>) -> Packet {
        Packet::Text(s.into())
    }

    /// The type character of this packet (`4` for both kinds of message).
    pub fn type_char(&self) -> u8 {
        match self {
            Packet::Open(_) => b'0',
            Packet::Close => b'1',
            Packet::Ping(_) => b'2',
            Packet::Pong(_) => b'3',
            Packet::Text(_) | Packet::Binary(_) => b'4',
            Packet::Upgrade => b'5',
            Packet::Noop => b'6',
        }
    }

    /// Decodes one WebSocket text frame.
    pub fn decode_text(frame: &[u8]) -> Result<Packet, DecodeError> {
        let (&t, rest) = frame.split_first().ok_or(DecodeError::Empty)?;
        if std::str::from_utf8(rest).is_err() {
            return Err(DecodeError::NotUtf8);
        }
        // `rest` is a sub-slice of the frame; copying keeps the API simple and frames are small.
        let data = || Bytes::copy_from_slice(rest);
        let none = |p: Packet| {
            if rest.is_empty() {
                Ok(p)
            } else {
                Err(DecodeError::UnexpectedData)
            }
        };
        match t {
            b'0' => Ok(Packet::Open(data())),
            b'1' => none(Packet::Close),
            b'2' => Ok(Packet::Ping(data())),
            b'3' => Ok(Packet::Pong(data())),
            b'4' => Ok(Packet::Text(data())),
            b'5' => none(Packet::Upgrade),
            b'6' => none(Packet::Noop),
            other => Err(DecodeError::UnknownType(other)),
        }
    }

    /// Decodes one WebSocket text frame held in [`Bytes`] without copying the data.
    pub fn decode_text_bytes(frame: &Bytes) -> Result<Packet, DecodeError> {
        let packet = Packet::decode_text(frame)?;
        // Re-slice the data out of the frame instead of the copy made by `decode_text`.
        Ok(match packet {
            Packet::Open(_) => Packet::Open(frame.slice(1..)),
            Packet::Ping(_) => Packet::Ping(frame.slice(1..)),
            Packet::Pong(_) => Packet::Pong(frame.slice(1..)),
            Packet::Text(_) => Packet::Text(frame.slice(1..)),
            other => other,
        })
    }

    /// The WebSocket frame for this packet: `(is_binary, bytes)`.
    pub fn to_ws_frame(&self) -> (bool, Bytes) {
        match self {
            Packet::Binary(b) => (true, b.clone()),
            other => {
                let mut buf = BytesMut::with_capacity(1 + other.data_len());
                other.write_text(&mut buf);
                (false, buf.freeze())
            }
        }
    }

    fn data_len(&self) -> usize {
        match self {
            Packet::Open(d) | Packet::Ping(d) | Packet::Pong(d) | Packet::Text(d) => d.len(),
            Packet::Binary(d) => d.len().div_ceil(3) * 4,
            _ => 0,
        }
    }

    /// Appends the polling encoding of this packet (text form; binary as `b<base64>`).
    fn write_text(&self, buf: &mut BytesMut) {
        match self {
            Packet::Binary(b) => {
                buf.put_u8(b'b');
                buf.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(b)
                        .as_bytes(),
                );
            }
            other => {
                buf.put_u8(other.type_char());
                match other {
                    Packet::Open(d) | Packet::Ping(d) | Packet::Pong(d) | Packet::Text(d) => {
                        buf.extend_from_slice(d)
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Encodes packets as one HTTP long-polling body, separated by `\x1e`.
pub fn encode_payload<'a>(packets: impl IntoIterator<Item = &'a Packet>) -> Bytes {
    let mut buf = BytesMut::new();
    for (i, p) in packets.into_iter().enumerate() {
        if i > 0 {
            buf.put_u8(SEPARATOR);
        }
        buf.reserve(1 + p.data_len());
        p.write_text(&mut buf);
    }
    buf.freeze()
}

/// Decodes an HTTP long-polling body (a client's POST). Fails on the first bad packet; an
/// empty body is an error too (a client never posts nothing).
pub fn decode_payload(body: &Bytes) -> Result<Vec<Packet>, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut out = Vec::new();
    let mut start = 0;
    for end in body
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == SEPARATOR)
        .map(|(i, _)| i)
        .chain(std::iter::once(body.len()))
    {
        let part = body.slice(start..end);
        start = end + 1;
        if part.first() == Some(&b'b') {
            let bin = base64::engine::general_purpose::STANDARD
                .decode(&part[1..])
                .map_err(|_| DecodeError::BadBase64)?;
            out.push(Packet::Binary(Bytes::from(bin)));
        } else {
            out.push(Packet::decode_text_bytes(&part)?);
        }
    }
    Ok(out)
}

/// The handshake sent in the open packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake {
    /// The session id, used by polling requests (`sid=`) and the upgrade.
    pub sid: String,
    /// Transports the client may upgrade to: `["websocket"]` for polling, `[]` on a WebSocket.
    pub upgrades: Vec<&'static str>,
    /// Milliseconds between the server's pings.
    pub ping_interval: u64,
    /// Milliseconds the client has to answer a ping (and the server to send the next one,
    /// from the client's point of view).
    pub ping_timeout: u64,
    /// Largest payload the server accepts, in bytes (the client batches polling POSTs under it).
    pub max_payload: u64,
}

impl Handshake {
    /// The open packet carrying this handshake.
    #[allow(
        clippy::expect_used,
        reason = "strings and numbers only: serialising to bytes cannot fail"
    )]
    pub fn packet(&self) -> Packet {
        Packet::Open(Bytes::from(
            serde_json::to_vec(self).expect("a handshake always serializes"),
        ))
    }
}

/// The JSON body of an Engine.IO HTTP error: `{"code":N,"message":"..."}`, as the reference
/// server answers a request it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// `transport` is missing or not `polling`/`websocket` (400).
    UnknownTransport,
    /// `sid` names no live session (400).
    UnknownSid,
    /// A handshake (no `sid`) with another method than `GET` (400).
    BadHandshakeMethod,
    /// Anything else malformed (400).
    BadRequest,
    /// The origin is not allowed (403).
    Forbidden,
    /// `EIO` is missing or not `4` (400).
    UnsupportedProtocolVersion,
}

impl HttpError {
    /// The error's code in the JSON body.
    pub fn code(self) -> u8 {
        match self {
            HttpError::UnknownTransport => 0,
            HttpError::UnknownSid => 1,
            HttpError::BadHandshakeMethod => 2,
            HttpError::BadRequest => 3,
            HttpError::Forbidden => 4,
            HttpError::UnsupportedProtocolVersion => 5,
        }
    }

    /// The error's message in the JSON body.
    pub fn message(self) -> &'static str {
        match self {
            HttpError::UnknownTransport => "Transport unknown",
            HttpError::UnknownSid => "Session ID unknown",
            HttpError::BadHandshakeMethod => "Bad handshake method",
            HttpError::BadRequest => "Bad request",
            HttpError::Forbidden => "Forbidden",
            HttpError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// The HTTP status: 403 for [`HttpError::Forbidden`], 400 otherwise.
    pub fn status(self) -> u16 {
        match self {
            HttpError::Forbidden => 403,
            _ => 400,
        }
    }

    /// The JSON body.
    pub fn body(self) -> Bytes {
        Bytes::from(format!(
            "{{\"code\":{},\"message\":\"{}\"}}",
            self.code(),
            self.message()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_packets() {
        assert_eq!(
            Packet::decode_text(b"2").unwrap(),
            Packet::Ping(Bytes::new())
        );
        assert_eq!(
            Packet::decode_text(b"2probe").unwrap(),
            Packet::Ping(Bytes::from_static(b"probe"))
        );
        assert_eq!(
            Packet::decode_text(b"3").unwrap(),
            Packet::Pong(Bytes::new())
        );
        assert_eq!(
            Packet::decode_text(b"4hello").unwrap(),
            Packet::Text(Bytes::from_static(b"hello"))
        );
        assert_eq!(Packet::decode_text(b"5").unwrap(), Packet::Upgrade);
        assert_eq!(Packet::decode_text(b"6").unwrap(), Packet::Noop);
        assert_eq!(Packet::decode_text(b"1").unwrap(), Packet::Close);
        assert_eq!(Packet::decode_text(b""), Err(DecodeError::Empty));
        assert_eq!(
            Packet::decode_text(b"7"),
            Err(DecodeError::UnknownType(b'7'))
        );
        assert_eq!(Packet::decode_text(b"5x"), Err(DecodeError::UnexpectedData));
        assert_eq!(Packet::decode_text(b"4\xff"), Err(DecodeError::NotUtf8));
    }

    #[test]
    fn ws_frames() {
        assert_eq!(
            Packet::text("42[\"a\"]").to_ws_frame(),
            (false, Bytes::from_static(b"442[\"a\"]"))
        );
        assert_eq!(
            Packet::Binary(Bytes::from_static(&[1, 2, 3])).to_ws_frame(),
            (true, Bytes::from_static(&[1, 2, 3]))
        );
        assert_eq!(
            Packet::Noop.to_ws_frame(),
            (false, Bytes::from_static(b"6"))
        );
    }

    #[test]
    fn polling_payloads_use_the_record_separator_and_base64() {
        let packets = vec![
            Packet::text("hello"),
            Packet::Binary(Bytes::from_static(&[1, 2, 3, 4])),
            Packet::Ping(Bytes::new()),
        ];
        let body = encode_payload(&packets);
        assert_eq!(&body[..], b"4hello\x1ebAQIDBA==\x1e2");
        assert_eq!(decode_payload(&body).unwrap(), packets);
        assert_eq!(decode_payload(&Bytes::new()), Err(DecodeError::Empty));
        assert_eq!(
            decode_payload(&Bytes::from_static(b"4a\x1eb!!")),
            Err(DecodeError::BadBase64)
        );
        assert_eq!(
            decode_payload(&Bytes::from_static(b"4a\x1e")),
            Err(DecodeError::Empty)
        );
    }

    #[test]
    fn handshake_json() {
        let h = Handshake {
            sid: "abc".into(),
            upgrades: vec!["websocket"],
            ping_interval: 25000,
            ping_timeout: 20000,
            max_payload: 1000000,
        };
        let (_, frame) = h.packet().to_ws_frame();
        assert_eq!(
            &frame[..],
            &br#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#[..]
        );
    }

    #[test]
    fn http_errors() {
        assert_eq!(
            &HttpError::UnknownSid.body()[..],
            br#"{"code":1,"message":"Session ID unknown"}"#
        );
        assert_eq!(HttpError::Forbidden.status(), 403);
        assert_eq!(HttpError::UnknownTransport.status(), 400);
    }

    fn packet_strategy() -> impl Strategy<Value = Packet> {
        // Text data must not contain the separator (the protocol forbids it in text packets).
        let text = "[^\u{1e}]{0,20}".prop_map(|s: String| Bytes::from(s));
        prop_oneof![
            text.clone().prop_map(Packet::Open),
            Just(Packet::Close),
            text.clone().prop_map(Packet::Ping),
            text.clone().prop_map(Packet::Pong),
            text.prop_map(Packet::Text),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|v| Packet::Binary(Bytes::from(v))),
            Just(Packet::Upgrade),
            Just(Packet::Noop),
        ]
    }

    proptest! {
        #[test]
        fn payload_round_trip(packets in proptest::collection::vec(packet_strategy(), 1..8)) {
            let body = encode_payload(&packets);
            prop_assert_eq!(decode_payload(&body).unwrap(), packets);
        }

        #[test]
        fn ws_round_trip(p in packet_strategy()) {
            let (binary, frame) = p.to_ws_frame();
            let back = if binary { Packet::Binary(frame) } else { Packet::decode_text_bytes(&frame).unwrap() };
            prop_assert_eq!(back, p);
        }
    }
}
