//! Brokers that let several nodes share channels: the Redis broker and the wire format of
//! what it stores. The [`Broker`](switchboard_core::Broker) trait and the in-memory broker
//! are in `switchboard-core`; this module holds the implementations that need the network.
//!
//! `--broker` picks one: absent or `memory` for a single node, `redis://host:port/db` for
//! Redis (`rediss://` over TLS, with the `broker_tls_*` settings),
//! `redis+sentinel://h1:p1,h2:p2,h3:p3/master-name` for a master found through Redis
//! Sentinel, `redis+cluster://h1:p1,h2:p2,…` for a Redis Cluster ([`topology`]). See `docs/scaling.md` for the topology and what is stored. [`control`] holds what
//! nodes ask of each other for the HTTP API (cluster-wide disconnect, server-side
//! subscriptions, channel listing).
pub mod codec;
pub mod control;
pub(crate) mod metered;
pub mod redis;
pub mod topology;

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
        Some(url)
            if [
                "redis://",
                "rediss://",
                "redis+sentinel://",
                "rediss+sentinel://",
                "redis+cluster://",
                "rediss+cluster://",
            ]
            .iter()
            .any(|s| url.starts_with(s)) =>
        {
            topology::parse(url)?;
            Ok(BrokerKind::Redis(url.to_string()))
        }
        Some(other) => Err(format!(
            "unknown broker {:?} (expected memory, redis://host:port/db, rediss://…, \
             redis+sentinel://h1:p1,h2:p2/master, redis+cluster://h1:p1,h2:p2 or their \
             rediss+ forms)",
            redacted(other)
        )),
    }
}

/// `url` with its password (if any) replaced by `***`, for logs and errors.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Starts the Redis broker for this node.
pub fn start_redis(
    url: &str,
    node: NodeInfo,
    lease: Duration,
    tls: redis::RedisTls,
) -> Result<redis::RedisBroker, switchboard_core::BrokerError> {
    redis::RedisBroker::start(redis::RedisConfig {
        url: url.to_string(),
        node,
        lease,
        tls,
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
        assert_eq!(
            parse(Some("rediss://127.0.0.1:6380/0")),
            Ok(BrokerKind::Redis("rediss://127.0.0.1:6380/0".into()))
        );
        assert!(parse(Some("nats://x")).is_err());
        assert!(matches!(
            parse(Some("redis+sentinel://a:1,b:2/mymaster?db=1")),
            Ok(BrokerKind::Redis(_))
        ));
        assert!(parse(Some("redis+sentinel://a:1,b:2")).is_err());
        assert!(matches!(
            parse(Some("rediss+cluster://a:1,b:2")),
            Ok(BrokerKind::Redis(_))
        ));
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("redis://alice:s3cret@10.0.0.9:6379/0"),
            "redis://alice:***@10.0.0.9:6379/0"
        );
        assert_eq!(redacted("rediss://:pw@h:1"), "rediss://:***@h:1");
        assert_eq!(redacted("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(
            redacted("redis+sentinel://u:pw@a:1,b:2/mymaster"),
            "redis+sentinel://u:***@a:1,b:2/mymaster"
        );
    }
}
