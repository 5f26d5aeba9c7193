//! The wire protocols, one folder each. A protocol is an endpoint (what answers its path)
//! and a driver (its state machine, run by [`crate::conn::runtime`]). Protocols import the
//! runtime, the transport and the shared state, never each other.
pub mod centrifugo;
pub(crate) mod channels;
pub mod pusher;
pub(crate) mod raw;
pub mod socketio;
