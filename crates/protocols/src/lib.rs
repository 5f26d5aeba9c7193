//! Wire formats spoken by Switchboard: encode and decode only, no I/O.
//!
//! Each protocol module translates between its frames and the core's neutral types
//! ([`switchboard_core::Payload`] in, [`switchboard_core::Publication`] out), and caches its
//! encoding of a publication in the publication itself so fan-out encodes once per format.

#![warn(missing_docs)]
// Everything here decodes untrusted input: no unwrap/expect outside tests, except where an
// `allow` says why it cannot fail.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod centrifugo;
pub mod pusher;
pub mod raw;
pub mod socketio;
