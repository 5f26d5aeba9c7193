//! The per-connection sans-I/O state machine: bytes in → events out, messages in → bytes out.
use crate::deflate::DeflateParams;

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

/// Decoder placeholder; see module docs.
pub struct Decoder;
/// Encoder placeholder; see module docs.
pub struct Encoder;
