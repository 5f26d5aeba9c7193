//! Brokers that let several nodes share channels: the Redis broker and the wire format of
//! what it stores. The [`Broker`](switchboard_core::Broker) trait and the in-memory broker
//! are in `switchboard-core`; this module holds the implementations that need the network.
//!
//! `--broker` picks one: absent or `memory` for a single node, `redis://host:port/db` for
//! Redis. See `docs/scaling.md` for the topology and what is stored. [`control`] holds what
//! nodes ask of each other for the HTTP API (cluster-wide disconnect, server-side
//! subscriptions, channel listing).
pub mod codec;
pub mod control;
pub mod redis;

use std::time::Duration;

use switchboard_core::NodeInfo;

/// Which broker a `--broker` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerKind {
    /// One node, nothing shared.
    Memory,
    /// Redis at this URL.
    Redis(String),
}

/// Parses a `--broker` value: empty or `memory`, or a `redis://` URL.
pub fn parse(spec: Option<&str>) -> Result<BrokerKind, String> {
    match spec.map(str::trim) {
        None | Some("") | Some("memory") => Ok(BrokerKind::Memory),
        Some(url) if url.starts_with("redis://") => Ok(BrokerKind::Redis(url.to_string())),
        Some(other) => Err(format!(
            "unknown broker {other:?} (expected memory or redis://host:port/db)"
        )),
    }
}

/// Starts the Redis broker for this node.
pub fn start_redis(
    url: &str,
    node: NodeInfo,
    lease: Duration,
) -> Result<redis::RedisBroker, switchboard_core::BrokerError> {
    redis::RedisBroker::start(redis::RedisConfig {
        url: url.to_string(),
        node,
        lease,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_specs() {
        assert_eq!(parse(None), Ok(BrokerKind::Memory));
        assert_eq!(parse(Some("memory")), Ok(BrokerKind::Memory));
        assert_eq!(
            parse(Some("redis://127.0.0.1:6380/0")),
            Ok(BrokerKind::Redis("redis://127.0.0.1:6380/0".into()))
        );
        assert!(parse(Some("nats://x")).is_err());
    }
}
