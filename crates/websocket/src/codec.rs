//! The per-connection sans-I/O state machine: bytes in → events out, messages in → bytes out.
use bytes::BytesMut;

use crate::deflate::DeflateParams;
use crate::error::Error;
use crate::frame::MAX_HEADER_LEN;
use crate::message::Message;

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

/// A frame header encoded into a small inline array, to be written before a shared payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderBytes {
    buf: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl HeaderBytes {
    /// Build from raw bytes (at most 14).
    pub fn from_parts(buf: [u8; MAX_HEADER_LEN], len: usize) -> HeaderBytes {
        HeaderBytes {
            buf,
            len: len as u8,
        }
    }
}

impl AsRef<[u8]> for HeaderBytes {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// Incoming half of a connection: bytes in, messages out.
pub struct Decoder {
    _p: (),
}

impl Decoder {
    /// A decoder for an endpoint playing `role`.
    pub fn new(role: Role, config: Config) -> Decoder {
        let _ = (role, config);
        todo!()
    }

    /// Consume bytes from `buf` (advancing it) and return the next complete event.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, Error> {
        let _ = buf;
        todo!()
    }

    /// Bytes held by the decoder itself (a message being reassembled or inflated).
    pub fn buffered_len(&self) -> usize {
        todo!()
    }
}

/// Outgoing half of a connection: messages in, bytes out.
pub struct Encoder {
    _p: (),
}

impl Encoder {
    /// An encoder for an endpoint playing `role`.
    pub fn new(role: Role, config: Config) -> Encoder {
        let _ = (role, config);
        todo!()
    }

    /// Append the frame for `msg` to `out`.
    pub fn encode(&mut self, msg: &Message, out: &mut BytesMut) -> Result<(), Error> {
        let _ = (msg, out);
        todo!()
    }

    /// Append `msg` as frames of at most `max_fragment` payload bytes each.
    pub fn encode_fragmented(
        &mut self,
        msg: &Message,
        max_fragment: usize,
        out: &mut BytesMut,
    ) -> Result<(), Error> {
        let _ = (msg, max_fragment, out);
        todo!()
    }

    /// Server role, uncompressed data or control: only the header bytes.
    pub fn encode_header_only(&mut self, msg: &Message) -> Option<HeaderBytes> {
        let _ = msg;
        todo!()
    }
}
