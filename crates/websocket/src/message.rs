//! Application-level messages.
use bytes::Bytes;

use crate::close::CloseFrame;

/// A complete WebSocket message (after reassembly and inflation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the bytes are guaranteed valid UTF-8 when produced by the decoder.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping control frame (≤ 125 bytes).
    Ping(Bytes),
    /// A pong control frame (≤ 125 bytes).
    Pong(Bytes),
    /// A close frame; `None` for an empty close payload.
    Close(Option<CloseFrame>),
}

impl Message {
    /// Build a text message from a string.
    pub fn text(s: impl Into<String>) -> Message {
        Message::Text(Bytes::from(s.into()))
    }

    /// Build a binary message.
    pub fn binary(b: impl Into<Bytes>) -> Message {
        Message::Binary(b.into())
    }

    /// The text of a `Text` message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            // The decoder validated these bytes; constructors take `String`.
            Message::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}
