//! The per-connection sans-I/O state machine: bytes in → events out, messages in → bytes out.
//!
//! [`Decoder`] enforces, in addition to the frame rules of [`crate::frame`]:
//!
//! * **Masking** (RFC 6455 §5.1): a server must fail the connection on an unmasked frame, a
//!   client on a masked one → 1002.
//! * **Reserved bits** (§5.2): RSV2/RSV3 are never valid (no extension we negotiate defines
//!   them) → 1002. RSV1 is the "compressed" bit of permessage-deflate (RFC 7692 §6): valid only
//!   when the extension was negotiated, and only on the first frame of a data message —
//!   never on a continuation frame (§6.1) nor a control frame (§6.1) → 1002.
//! * **Fragmentation** (§5.4): a continuation frame with no message in progress, or a new
//!   Text/Binary frame while a fragmented message is in progress → 1002. Control frames may
//!   be interleaved between the fragments of a message and are returned at once.
//! * **UTF-8** (§5.6, §8.1): text is validated fragment by fragment as it arrives (and for
//!   compressed text, chunk by chunk as it is inflated), failing with 1007 at the first piece
//!   that cannot be a prefix of valid UTF-8 — not at the end of the message.
//! * **Close frames** (§5.5.1, §7.4): see [`crate::close`]; 1-byte payload or a code that may
//!   not be sent → 1002, reason not UTF-8 → 1007.
//! * **Sizes** (§10.4, "implementations SHOULD impose a limit"): a frame header announcing a
//!   payload larger than `max_frame_size`, or one that would push the message past
//!   `max_message_size`, fails with 1009 as soon as the header is parsed, before any of the
//!   payload is buffered. Inflated output is capped at `max_message_size` (see
//!   [`crate::deflate`]).
//!
//! The hot path does not allocate per frame: a complete single-frame uncompressed message is
//! split off the caller's input buffer as a `Bytes` and unmasked in place; control frames are
//! handled the same way. Only fragmented or compressed messages are assembled into a buffer
//! owned by the decoder.
//!
//! [`Encoder`] writes unmasked frames as a server and frames masked with a fresh random key as
//! a client (§5.3), compresses data messages at or above `compression_threshold` when
//! permessage-deflate was negotiated, and never compresses control frames (RFC 7692 §6.1).
//!
//! Compression state is created only when a message needs it, because it dwarfs everything
//! else a connection holds (≈ 300 KiB per compressor, ≈ 45 KiB per inflater):
//!
//! * The encoder compresses with a compressor borrowed from a per-thread pool
//!   ([`crate::deflate::with_pooled_deflater`]) when our side agreed no context takeover — the
//!   server always does — and owns one, built on the first compressed message, otherwise.
//! * The decoder builds its inflater when the first compressed frame arrives. When the peer
//!   agreed no context takeover, the inflater comes from a per-thread pool
//!   ([`crate::deflate::pooled_inflater`]) and goes back to it, reset, at the end of every
//!   message (so between messages the decoder holds none). When the peer keeps
//!   context, the inflater's window is part of the protocol state (the next message may refer
//!   to it) and is kept for the connection's life.
use bytes::{Buf, BytesMut};

use crate::close::{CloseFrame, MAX_REASON_LEN};
use crate::deflate::{
    pooled_inflater, recycle_inflater, with_pooled_deflater, DeflateParams, Deflater, Inflater,
};
use crate::error::Error;
use crate::frame::{
    encode_header, parse_header, write_header, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD,
    MAX_HEADER_LEN,
};
use crate::mask::apply_mask;
use crate::message::Message;
use crate::utf8::Utf8Validator;

/// Which side of the connection this endpoint is (decides masking rules, RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Server: incoming frames must be masked, outgoing are not.
    Server,
    /// Client: incoming frames must not be masked, outgoing are masked.
    Client,
}

/// Limits and options of one connection's codec.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest message accepted (after reassembly and inflation), in bytes. Enforced while
    /// reading (a frame header announcing more fails at once).
    pub max_message_size: usize,
    /// Largest single frame accepted, in bytes.
    pub max_frame_size: usize,
    /// Agreed permessage-deflate parameters, if the extension was negotiated.
    pub deflate: Option<DeflateParams>,
    /// Outgoing messages smaller than this are sent uncompressed even when deflate is on.
    pub compression_threshold: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_size: 64 << 20,
            max_frame_size: 16 << 20,
            deflate: None,
            compression_threshold: 64,
        }
    }
}

/// Something the decoder produced.
pub use crate::message::Message as Event;

/// A frame header encoded into a small inline array, to be written before a shared payload
/// (e.g. with a vectored write) so the payload itself is never copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderBytes {
    buf: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl HeaderBytes {
    /// Build from raw bytes; `len` is clamped to 14.
    pub fn from_parts(buf: [u8; MAX_HEADER_LEN], len: usize) -> HeaderBytes {
        HeaderBytes {
            buf,
            len: len.min(MAX_HEADER_LEN) as u8,
        }
    }

    /// Number of header bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Always false: a header has at least 2 bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for HeaderBytes {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// A data message whose first frame has been received but not its last.
#[derive(Debug, Clone, Copy)]
struct Partial {
    text: bool,
    compressed: bool,
}

/// Incoming half of a connection: bytes in, messages out.
///
/// After an error the connection must be failed with [`Error::close_code`]; further calls
/// return [`Error::ConnectionClosed`].
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    config: Config,
    /// Header already parsed (and removed from the input), waiting for its payload.
    header: Option<FrameHeader>,
    /// The fragmented or compressed data message in progress.
    partial: Option<Partial>,
    /// Reassembly / inflation buffer of `partial`.
    message: BytesMut,
    utf8: Utf8Validator,
    /// Built on the first compressed frame; given back to the pool after each message when the
    /// peer does not keep context (see the module docs). Boxed: the inflater's stream state is
    /// large, and an idle connection without one should not pay its room.
    inflater: Option<Box<Inflater>>,
    failed: bool,
}

impl Decoder {
    /// Whether no frame or message is in progress (nothing parsed waits for more input) and
    /// no error was seen.
    pub fn is_between_messages(&self) -> bool {
        self.header.is_none() && self.partial.is_none() && !self.failed
    }

    /// A decoder for an endpoint playing `role`.
    pub fn new(role: Role, config: Config) -> Decoder {
        Decoder {
            role,
            config,
            header: None,
            partial: None,
            message: BytesMut::new(),
            utf8: Utf8Validator::new(),
            inflater: None,
            failed: false,
        }
    }

    /// The peer's compression parameters (we inflate what the *peer* compressed): window
    /// bits and whether it resets its compressor after each message.
    fn peer_deflate(&self) -> Option<(u8, bool)> {
        self.config.deflate.map(|p| match self.role {
            Role::Server => (p.client_max_window_bits, p.client_no_context_takeover),
            Role::Client => (p.server_max_window_bits, p.server_no_context_takeover),
        })
    }

    /// Whether the decoder currently holds inflate state (for memory diagnostics and tests).
    /// Never before the first compressed frame; not between messages when the peer agreed no
    /// context takeover.
    pub fn holds_inflate_state(&self) -> bool {
        self.inflater.is_some()
    }

    /// The role this decoder was built for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration this decoder enforces.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Consume bytes from `buf` (advancing it) and return the next complete event:
    /// a whole Text/Binary message (reassembled, inflated, UTF-8 checked incrementally), or a
    /// Ping/Pong/Close. `Ok(None)` means more bytes are needed; when the next frame's header
    /// is complete, `buf` has been given enough capacity for its payload.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, Error> {
        if self.failed {
            return Err(Error::ConnectionClosed);
        }
        match self.decode_inner(buf) {
            Ok(m) => Ok(m),
            Err(e) => {
                self.failed = true;
                self.header = None;
                self.partial = None;
                self.message = BytesMut::new();
                self.inflater = None;
                Err(e)
            }
        }
    }

    /// Bytes held by the decoder itself (a message being reassembled or inflated). Never more
    /// than `max_message_size`.
    pub fn buffered_len(&self) -> usize {
        self.message.len()
    }

    /// Whether a fragmented data message is in progress.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, Error> {
        loop {
            let h = match self.header {
                Some(h) => h,
                None => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    self.check_prefix(buf[0], buf[1])?;
                    let Some((h, n)) = parse_header(buf)? else {
                        return Ok(None);
                    };
                    self.check_size(&h)?;
                    buf.advance(n);
                    self.header = Some(h);
                    h
                }
            };
            // `check_size` bounded the length by `max_frame_size` (or 125), so it fits.
            let len = h.payload_len as usize;
            if buf.len() < len {
                buf.reserve(len - buf.len());
                return Ok(None);
            }
            self.header = None;
            if let Some(msg) = self.frame(h, len, buf)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Rules that the first two header bytes decide, given the connection state.
    fn check_prefix(&self, b0: u8, b1: u8) -> Result<(), Error> {
        if b0 & 0x30 != 0 {
            return Err(Error::Protocol(
                "RSV2/RSV3 set without a negotiated extension",
            ));
        }
        let opcode = OpCode::from_u8(b0 & 0x0F)?;
        if b0 & 0x40 != 0 {
            if self.config.deflate.is_none() {
                return Err(Error::Protocol("RSV1 set without a negotiated extension"));
            }
            if !matches!(opcode, OpCode::Text | OpCode::Binary) {
                return Err(Error::Protocol(
                    "RSV1 set on a continuation or control frame",
                ));
            }
        }
        let masked = b1 & 0x80 != 0;
        match self.role {
            Role::Server if !masked => return Err(Error::Protocol("unmasked frame from client")),
            Role::Client if masked => return Err(Error::Protocol("masked frame from server")),
            _ => {}
        }
        match opcode {
            OpCode::Continuation if self.partial.is_none() => {
                Err(Error::Protocol("continuation frame without a message"))
            }
            OpCode::Text | OpCode::Binary if self.partial.is_some() => Err(Error::Protocol(
                "new data frame inside a fragmented message",
            )),
            _ => Ok(()),
        }
    }

    /// Size limits, checked on the header before any payload is buffered.
    fn check_size(&self, h: &FrameHeader) -> Result<(), Error> {
        if h.opcode.is_control() {
            return Ok(()); // ≤ 125, checked by parse_header
        }
        if h.payload_len > self.config.max_frame_size as u64 {
            return Err(Error::MessageTooBig {
                limit: self.config.max_frame_size,
            });
        }
        let compressed = match h.opcode {
            OpCode::Continuation => self.partial.is_some_and(|p| p.compressed),
            _ => h.rsv1,
        };
        // Compressed frames are bounded by the inflater's output limit instead.
        if !compressed
            && h.payload_len + self.message.len() as u64 > self.config.max_message_size as u64
        {
            return Err(Error::MessageTooBig {
                limit: self.config.max_message_size,
            });
        }
        Ok(())
    }

    /// Process one complete frame whose payload is the first `len` bytes of `buf`.
    fn frame(
        &mut self,
        h: FrameHeader,
        len: usize,
        buf: &mut BytesMut,
    ) -> Result<Option<Message>, Error> {
        match h.opcode {
            OpCode::Ping | OpCode::Pong | OpCode::Close => {
                let mut payload = buf.split_to(len);
                if let Some(key) = h.mask {
                    apply_mask(&mut payload, key);
                }
                let payload = payload.freeze();
                return Ok(Some(match h.opcode {
                    OpCode::Ping => Message::Ping(payload),
                    OpCode::Pong => Message::Pong(payload),
                    _ => Message::Close(CloseFrame::parse(payload)?),
                }));
            }
            OpCode::Text | OpCode::Binary if h.fin && !h.rsv1 => {
                // Fast path: a whole message in one frame, handed out without copying.
                let mut payload = buf.split_to(len);
                if let Some(key) = h.mask {
                    apply_mask(&mut payload, key);
                }
                if h.opcode == OpCode::Text {
                    if simdutf8::basic::from_utf8(&payload).is_err() {
                        return Err(Error::InvalidUtf8);
                    }
                    return Ok(Some(Message::Text(payload.freeze())));
                }
                return Ok(Some(Message::Binary(payload.freeze())));
            }
            OpCode::Text | OpCode::Binary => {
                self.partial = Some(Partial {
                    text: h.opcode == OpCode::Text,
                    compressed: h.rsv1,
                });
                self.utf8.reset();
            }
            OpCode::Continuation => {}
        }
        // A fragment (or a compressed frame): unmask in the input buffer, then append or
        // inflate into the message buffer.
        let partial = self
            .partial
            .ok_or(Error::Protocol("continuation frame without a message"))?;
        let payload = &mut buf[..len];
        if let Some(key) = h.mask {
            apply_mask(payload, key);
        }
        if partial.compressed {
            let (bits, no_context_takeover) = self
                .peer_deflate()
                .ok_or(Error::Protocol("RSV1 set without a negotiated extension"))?;
            let inflater = self.inflater.get_or_insert_with(|| {
                if no_context_takeover {
                    pooled_inflater(bits)
                } else {
                    Box::new(Inflater::new(bits, false))
                }
            });
            let utf8 = &mut self.utf8;
            let text = partial.text;
            inflater.inflate(
                payload,
                h.fin,
                &mut self.message,
                self.config.max_message_size,
                &mut |chunk| if text { utf8.feed(chunk) } else { Ok(()) },
            )?;
        } else {
            if partial.text {
                self.utf8.feed(payload)?;
            }
            self.message.extend_from_slice(payload);
        }
        buf.advance(len);
        if !h.fin {
            return Ok(None);
        }
        self.partial = None;
        if partial.compressed && self.peer_deflate().is_some_and(|(_, nct)| nct) {
            // The peer's next message starts from an empty window: nothing to keep.
            if let Some(inflater) = self.inflater.take() {
                recycle_inflater(inflater);
            }
        }
        if partial.text {
            self.utf8.finish()?;
        }
        // Hand the buffer over whole: splitting it would leave this decoder holding the
        // allocation (at the size of the largest message so far) for as long as any part
        // of it lives.
        let data = std::mem::take(&mut self.message).freeze();
        Ok(Some(if partial.text {
            Message::Text(data)
        } else {
            Message::Binary(data)
        }))
    }
}

/// Outgoing half of a connection: messages in, bytes out.
#[derive(Debug)]
pub struct Encoder {
    role: Role,
    config: Config,
    /// Our own compressor, only when our side keeps context between messages (built on the
    /// first compressed message). Without context takeover a pooled one is borrowed instead.
    /// Boxed: the compressor's stream state is large, and an encoder without one (every
    /// connection that never compressed with context takeover) should not pay its room.
    deflater: Option<Box<Deflater>>,
}

impl Encoder {
    /// An encoder for an endpoint playing `role`.
    pub fn new(role: Role, config: Config) -> Encoder {
        Encoder {
            role,
            config,
            deflater: None,
        }
    }

    /// Our own side's compression parameters: window bits and whether we reset after each
    /// message.
    fn own_deflate(&self) -> Option<(u8, bool)> {
        self.config.deflate.map(|p| match self.role {
            Role::Server => (p.server_max_window_bits, p.server_no_context_takeover),
            Role::Client => (p.client_max_window_bits, p.client_no_context_takeover),
        })
    }

    /// Whether the encoder owns compression state (for memory diagnostics and tests): only
    /// after a compressed message was sent with context takeover.
    pub fn holds_compression_state(&self) -> bool {
        self.deflater.is_some()
    }

    /// The role this encoder was built for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The options this encoder was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Append the frame for `msg` to `out` (client role: masked with a fresh random key;
    /// data messages deflated when negotiated and `len >= compression_threshold`).
    ///
    /// Fails with [`Error::Protocol`] for a control payload over 125 bytes or a close frame
    /// that may not be sent (see [`CloseFrame::check`]).
    pub fn encode(&mut self, msg: &Message, out: &mut BytesMut) -> Result<(), Error> {
        self.encode_fragmented(msg, usize::MAX, out)
    }

    /// Like [`Encoder::encode`], but data messages are split into frames carrying at most
    /// `max_fragment` payload bytes each (after compression). Control frames are never split.
    pub fn encode_fragmented(
        &mut self,
        msg: &Message,
        max_fragment: usize,
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        let max_fragment = max_fragment.max(1);
        match msg {
            Message::Ping(p) | Message::Pong(p) => {
                if p.len() > MAX_CONTROL_PAYLOAD {
                    return Err(Error::Protocol(
                        "control frame payload longer than 125 bytes",
                    ));
                }
                let op = if matches!(msg, Message::Ping(_)) {
                    OpCode::Ping
                } else {
                    OpCode::Pong
                };
                self.write_frame(out, true, false, op, p);
            }
            Message::Close(None) => self.write_frame(out, true, false, OpCode::Close, &[]),
            Message::Close(Some(cf)) => {
                cf.check()?;
                let mut payload = [0u8; 2 + MAX_REASON_LEN];
                payload[..2].copy_from_slice(&cf.code.0.to_be_bytes());
                payload[2..cf.encoded_len()].copy_from_slice(&cf.reason);
                self.write_frame(
                    out,
                    true,
                    false,
                    OpCode::Close,
                    &payload[..cf.encoded_len()],
                );
            }
            Message::Text(p) | Message::Binary(p) => {
                let op = if matches!(msg, Message::Text(_)) {
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                let compress = p.len() >= self.config.compression_threshold;
                match self.own_deflate() {
                    Some((bits, no_context_takeover)) if compress => {
                        // The header needs the compressed length, so compress aside first.
                        let mut body = BytesMut::new();
                        if no_context_takeover {
                            with_pooled_deflater(bits, |d| d.compress(p, &mut body))?;
                        } else {
                            self.deflater
                                .get_or_insert_with(|| Box::new(Deflater::new(bits, false)))
                                .compress(p, &mut body)?;
                        }
                        self.write_fragments(out, op, true, &body, max_fragment);
                    }
                    _ => self.write_fragments(out, op, false, p, max_fragment),
                }
            }
        }
        Ok(())
    }

    /// Server role, uncompressed data or control: only the header bytes, so a shared payload
    /// `Bytes` can be written after it without copying (vectored write).
    ///
    /// Returns `None` when the frame's payload is not exactly the message's bytes: client
    /// role (masked), a data message that would be compressed, a close frame with a status
    /// code, or an oversized control payload. Use [`Encoder::encode`] then.
    pub fn encode_header_only(&mut self, msg: &Message) -> Option<HeaderBytes> {
        if self.role != Role::Server {
            return None;
        }
        let (op, len) = match msg {
            Message::Text(p) | Message::Binary(p) => {
                if self.config.deflate.is_some() && p.len() >= self.config.compression_threshold {
                    return None;
                }
                let op = if matches!(msg, Message::Text(_)) {
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                (op, p.len())
            }
            Message::Ping(p) | Message::Pong(p) => {
                if p.len() > MAX_CONTROL_PAYLOAD {
                    return None;
                }
                let op = if matches!(msg, Message::Ping(_)) {
                    OpCode::Ping
                } else {
                    OpCode::Pong
                };
                (op, p.len())
            }
            Message::Close(None) => (OpCode::Close, 0),
            Message::Close(Some(_)) => return None,
        };
        let (buf, n) = write_header(true, false, op, None, len);
        Some(HeaderBytes::from_parts(buf, n))
    }

    fn mask_key(&self) -> Option<[u8; 4]> {
        match self.role {
            Role::Server => None,
            Role::Client => Some(rand::random()),
        }
    }

    fn write_fragments(
        &self,
        out: &mut BytesMut,
        op: OpCode,
        rsv1: bool,
        payload: &[u8],
        max_fragment: usize,
    ) {
        if payload.len() <= max_fragment {
            self.write_frame(out, true, rsv1, op, payload);
            return;
        }
        let count = payload.len().div_ceil(max_fragment);
        for (i, chunk) in payload.chunks(max_fragment).enumerate() {
            let (op, rsv1) = if i == 0 {
                (op, rsv1)
            } else {
                (OpCode::Continuation, false)
            };
            self.write_frame(out, i + 1 == count, rsv1, op, chunk);
        }
    }

    fn write_frame(&self, out: &mut BytesMut, fin: bool, rsv1: bool, op: OpCode, payload: &[u8]) {
        let key = self.mask_key();
        out.reserve(MAX_HEADER_LEN + payload.len());
        encode_header(out, fin, rsv1, op, key, payload.len());
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(key) = key {
            apply_mask(&mut out[start..], key);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Compression state is built on demand and released as soon as the agreed parameters
    //! allow; these tests watch it through `holds_*_state`.
    use bytes::Bytes;

    use super::*;

    fn config(client_no_context_takeover: bool) -> Config {
        Config {
            deflate: Some(DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover,
                ..DeflateParams::default()
            }),
            ..Config::default()
        }
    }

    /// Compressible text well above the compression threshold.
    fn text(i: usize) -> Message {
        Message::Text(Bytes::from(format!(
            "{{\"seq\":{i},\"text\":\"{}\"}}",
            "hello compressed world ".repeat(8)
        )))
    }

    fn decode_all(dec: &mut Decoder, wire: &mut BytesMut) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(m) = dec.decode(wire).expect("valid stream") {
            out.push(m);
        }
        out
    }

    #[test]
    fn no_state_before_the_first_compressed_message() {
        let enc = Encoder::new(Role::Server, config(true));
        let dec = Decoder::new(Role::Server, config(true));
        assert!(!enc.holds_compression_state());
        assert!(!dec.holds_inflate_state());
    }

    #[test]
    fn inflater_released_after_each_message_without_client_context_takeover() {
        let mut client = Encoder::new(Role::Client, config(true));
        let mut server = Decoder::new(Role::Server, config(true));
        for i in 0..3 {
            let mut wire = BytesMut::new();
            client.encode(&text(i), &mut wire).unwrap();
            assert_ne!(wire[0] & 0x40, 0, "message {i} should be sent compressed");
            assert_eq!(decode_all(&mut server, &mut wire), vec![text(i)]);
            // Released after every message, and the next one still inflates.
            assert!(!server.holds_inflate_state(), "message {i}");
        }
        // The client promised no context takeover, so it owns no compressor either.
        assert!(!client.holds_compression_state());
    }

    #[test]
    fn inflater_held_between_the_fragments_of_a_compressed_message() {
        let mut client = Encoder::new(Role::Client, config(true));
        let mut server = Decoder::new(Role::Server, config(true));
        let big = Message::Text(Bytes::from("abcdefgh".repeat(5000)));
        let mut wire = BytesMut::new();
        client.encode_fragmented(&big, 16, &mut wire).unwrap();
        // Feed the first frames only: the message is in progress, the inflater must live.
        let mut head = wire.split_to(60);
        assert!(server.decode(&mut head).unwrap().is_none());
        assert!(server.in_message());
        assert!(server.holds_inflate_state());
        head.unsplit(wire);
        assert_eq!(decode_all(&mut server, &mut head), vec![big]);
        assert!(!server.holds_inflate_state());
    }

    #[test]
    fn inflater_kept_while_the_client_keeps_context() {
        let mut client = Encoder::new(Role::Client, config(false));
        let mut server = Decoder::new(Role::Server, config(false));
        for i in 0..3 {
            let mut wire = BytesMut::new();
            client.encode(&text(i), &mut wire).unwrap();
            // Later messages refer to earlier ones: only a kept window inflates them.
            assert_eq!(decode_all(&mut server, &mut wire), vec![text(i)]);
            assert!(server.holds_inflate_state());
            assert!(client.holds_compression_state());
        }
    }

    #[test]
    fn server_encoder_without_context_takeover_never_owns_a_compressor() {
        let mut server = Encoder::new(Role::Server, config(true));
        let mut client = Decoder::new(Role::Client, config(true));
        let mut uncompressed = 0;
        let mut compressed = 0;
        for i in 0..5 {
            let mut wire = BytesMut::new();
            server.encode(&text(i), &mut wire).unwrap();
            let Message::Text(payload) = text(i) else {
                unreachable!()
            };
            uncompressed += payload.len();
            compressed += wire.len();
            assert_ne!(wire[0] & 0x40, 0);
            assert_eq!(decode_all(&mut client, &mut wire), vec![text(i)]);
            assert!(!server.holds_compression_state());
            // The server agreed no context takeover: the client drops its inflater too.
            assert!(!client.holds_inflate_state());
        }
        assert!(
            compressed * 2 < uncompressed,
            "{compressed} of {uncompressed}"
        );
    }

    #[test]
    fn encoder_with_context_takeover_builds_its_compressor_on_first_use() {
        let params = DeflateParams::default(); // both sides keep context
        let cfg = Config {
            deflate: Some(params),
            ..Config::default()
        };
        let mut server = Encoder::new(Role::Server, cfg.clone());
        let mut client = Decoder::new(Role::Client, cfg);
        let mut wire = BytesMut::new();
        // Below the threshold: sent uncompressed, still no state.
        server.encode(&Message::text("hi"), &mut wire).unwrap();
        assert!(!server.holds_compression_state());
        for i in 0..3 {
            server.encode(&text(i), &mut wire).unwrap();
            assert!(server.holds_compression_state());
        }
        let got = decode_all(&mut client, &mut wire);
        assert_eq!(got.len(), 4);
        assert_eq!(got[3], text(2));
    }
}
