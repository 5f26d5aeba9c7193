//! A strict, fast WebSocket implementation (RFC 6455) with permessage-deflate (RFC 7692).
//!
//! The crate has a sans-I/O core and a thin tokio layer:
//!
//! * [`frame`], [`mask`], [`utf8`], [`close`]: the wire rules of RFC 6455 §5 and §7.
//! * [`codec`]: the message-level decoder/encoder state machine for one connection (either role).
//! * [`deflate`]: the permessage-deflate engine (RFC 7692 §7) with a hard inflate limit.
//! * [`extensions`]: parsing and negotiating `Sec-WebSocket-Extensions` (RFC 7692 §5, §7.1).
//! * [`prepared`]: a message framed once (and compressed once) and shared as `Bytes` by any
//!   number of connections — the heart of fan-out.
//! * [`handshake`]: the opening handshake for both roles (RFC 6455 §4).
//! * [`stream`]: the tokio connection type, split into a read half and a write half.
//! * [`upgrade`]: hyper 1.x integration, so HTTP and WebSocket share one port.
//! * [`client`]: `ws://` and `wss://` client connect.

pub mod client;
pub mod close;
pub mod codec;
pub mod deflate;
pub mod error;
pub mod extensions;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod prepared;
pub mod stream;
pub mod upgrade;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use codec::{Config, Decoder, Encoder, Event, Role};
pub use deflate::DeflateParams;
pub use error::Error;
pub use message::Message;
pub use prepared::PreparedMessage;
