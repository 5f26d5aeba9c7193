//! The connection runtime: what every protocol's connection gets from one place — the
//! task, the socket, outbox batching, the bounded flush, heartbeat, shutdown, panic
//! containment and the counters. A protocol only supplies a [`driver::Driver`].
pub mod crash;
pub(crate) mod driver;
pub mod heartbeat;
pub(crate) mod limits;
pub(crate) mod park;
pub(crate) mod runtime;
pub mod shutdown;
pub mod stats;
pub(crate) mod wheel;
