//! Errors of the WebSocket layer, each mapped to the close code the RFC asks for.
use crate::close::CloseCode;

/// Everything that can go wrong on a WebSocket connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer broke a framing rule (RFC 6455 §5); close with 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or close reason was not valid UTF-8; close with 1007.
    #[error("invalid UTF-8 in text payload")]
    InvalidUtf8,
    /// A message (after inflation) exceeded the configured limit; close with 1009.
    #[error("message too big (limit {limit} bytes)")]
    MessageTooBig {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// Compressed data could not be inflated; close with 1007.
    #[error("invalid compressed data: {0}")]
    Compression(String),
    /// The connection was closed (close handshake finished or the socket ended).
    #[error("connection closed")]
    ConnectionClosed,
    /// The outgoing buffer is full: the peer does not read fast enough.
    #[error("outgoing buffer full")]
    WouldOverflow,
    /// Opening handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// Underlying I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The close code to send to the peer for this error, if one should be sent.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::Protocol(_) => Some(CloseCode::PROTOCOL_ERROR),
            Error::InvalidUtf8 | Error::Compression(_) => Some(CloseCode::INVALID_PAYLOAD),
            Error::MessageTooBig { .. } => Some(CloseCode::TOO_BIG),
            _ => None,
        }
    }
}
