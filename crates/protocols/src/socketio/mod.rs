//! Socket.IO protocol version 5 over Engine.IO protocol version 4: pure encode/decode, no I/O.
//!
//! The unmodified `socket.io-client` (JS, 3.x and 4.x) and the other v5 clients speak this at
//! `/socket.io/`. Three layers:
//!
//! * [`engine`]: Engine.IO packets (open, close, ping, pong, message, upgrade, noop), the
//!   long-polling payload format (`\x1e` separators, `b`-prefixed base64 binary), the
//!   handshake and the HTTP error bodies.
//! * [`packet`]: Socket.IO packets (CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR,
//!   BINARY_EVENT, BINARY_ACK) with namespaces, ack ids and binary attachments, decoded
//!   strictly.
//! * [`mapping`]: channel publications as Socket.IO events, encoded once per publication
//!   and namespace, and client events as channel payloads.
//!
//! Sources (facts only): the Engine.IO protocol description and test suite
//! (`socketio/engine.io-protocol`), the Socket.IO protocol description and test suite
//! (`socketio/socket.io-protocol`), and the behaviour of `socket.io-client` 4.8, which the
//! interop suite runs against the real server.

pub mod engine;
pub mod mapping;
pub mod packet;

pub use mapping::{
    encode_publication, is_namespace_channel, namespace_channel, EncodedEvent, MESSAGE_EVENT,
};
pub use packet::{DecodeError, Decoder, Packet, PacketType};

/// The protocol name recorded in the hub for Socket.IO connections.
pub const PROTOCOL: &str = "socket.io";
