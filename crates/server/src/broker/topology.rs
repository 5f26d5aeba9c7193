//! Which Redis deployment a broker URL names, and how to find the node to talk to.
//!
//! - `redis://[user:pass@]host:port/db`, `rediss://…`: one Redis (standalone).
//! - `redis+sentinel://[user:pass@]h1:p1,h2:p2,…/master-name[?db=N&wait=MS]` (and
//!   `rediss+sentinel://` for TLS to the sentinels and the master): the master that Redis
//!   Sentinel names, followed through failovers. Credentials are the master's; the
//!   sentinels are asked without them. `wait` bounds how long a publication waits for a
//!   replica to confirm it (`WAIT 1 MS`, default 1000; `wait=0` acknowledges once the master
//!   has it).
//! - `redis+cluster://[user:pass@]h1:p1,h2:p2,…[?wait=MS]` (and `rediss+cluster://`): a Redis
//!   Cluster, reached through any of the nodes given (the others are discovered). `wait` as
//!   for Sentinel, per master.
use super::redis::RedisTls;
use redis::{PushKind, Value};
use switchboard_core::BrokerError;
use tokio::sync::mpsc;

/// Default port of a sentinel when the URL gives none.
pub const SENTINEL_PORT: u16 = 26379;
/// Default bound of the replica confirmation of a publication, in milliseconds.
pub const DEFAULT_WAIT_MS: u64 = 1000;

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One Redis at this URL.
    Standalone(String),
    /// A master found through Redis Sentinel.
    Sentinel(SentinelSpec),
    /// A Redis Cluster.
    Cluster(ClusterSpec),
}

/// What a `redis+cluster://` URL says.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// `rediss+cluster://`: TLS to every node.
    pub tls: bool,
    /// `user:password` (percent-encoding kept).
    pub credentials: Option<String>,
    /// Nodes to discover the cluster from.
    pub nodes: Vec<(String, u16)>,
    /// Bound of `WAIT 1` after a publication, in milliseconds (0: no wait).
    pub wait_ms: u64,
}

impl std::fmt::Debug for ClusterSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSpec")
            .field("tls", &self.tls)
            .field("credentials", &self.credentials.as_ref().map(|_| "***"))
            .field("nodes", &self.nodes)
            .field("wait_ms", &self.wait_ms)
            .finish()
    }
}

impl ClusterSpec {
    /// The URLs of the seed nodes, with the credentials (RESP3).
    pub fn node_urls(&self) -> Vec<String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let creds = self
            .credentials
            .as_deref()
            .map(|c| format!("{c}@"))
            .unwrap_or_default();
        self.nodes
            .iter()
            .map(|(h, p)| format!("{scheme}://{creds}{h}:{p}/?protocol=resp3"))
            .collect()
    }
}

/// What a `redis+sentinel://` URL says.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelSpec {
    /// `rediss+sentinel://`: TLS to the sentinels and to the master.
    pub tls: bool,
    /// `user:password` (as written in the URL, percent-encoding kept), for the master.
    pub credentials: Option<String>,
    /// The sentinels, in the order they are tried.
    pub sentinels: Vec<(String, u16)>,
    /// The master's name in the sentinels' configuration.
    pub master: String,
    /// Database number on the master.
    pub db: u32,
    /// Bound of `WAIT 1` after a publication, in milliseconds (0: no wait).
    pub wait_ms: u64,
}

impl std::fmt::Debug for SentinelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSpec")
            .field("tls", &self.tls)
            .field("credentials", &self.credentials.as_ref().map(|_| "***"))
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("db", &self.db)
            .field("wait_ms", &self.wait_ms)
            .finish()
    }
}

/// `host:port` (or `[v6]:port`), with `default` when the port is left out.
fn host_port(s: &str, default: u16) -> Result<(String, u16), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty host".into());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unclosed [ in host")?;
        match after.strip_prefix(':') {
            Some(p) => (format!("[{h}]"), Some(p)),
            None if after.is_empty() => (format!("[{h}]"), None),
            None => return Err(format!("bad host {s:?}")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (s.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("bad port in {s:?}"))?,
        None => default,
    };
    if host.is_empty() {
        return Err(format!("bad host {s:?}"));
    }
    Ok((host, port))
}

/// Splits `scheme://[creds@]hosts/path?query` after the scheme.
fn split(rest: &str) -> (Option<String>, &str, &str, &str) {
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
    match authority.rsplit_once('@') {
        Some((creds, hosts)) => (Some(creds.to_string()), hosts, path, query),
        None => (None, authority, path, query),
    }
}

/// Parses a broker URL (already known to be a Redis one).
pub fn parse(url: &str) -> Result<Topology, String> {
    let url = url.trim();
    let (tls, rest) = if let Some(r) = url.strip_prefix("redis+sentinel://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
        (true, r)
    } else if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(Topology::Standalone(url.to_string()));
    } else if let Some(r) = url.strip_prefix("redis+cluster://") {
        return parse_cluster(false, r);
    } else if let Some(r) = url.strip_prefix("rediss+cluster://") {
        return parse_cluster(true, r);
    } else {
        return Err(format!(
            "unknown Redis URL scheme in {:?}",
            super::redacted(url)
        ));
    };
    let (credentials, hosts, path, query) = split(rest);
    let sentinels = hosts
        .split(',')
        .map(|h| host_port(h, SENTINEL_PORT))
        .collect::<Result<Vec<_>, _>>()?;
    let master = path.trim_end_matches('/').to_string();
    if master.is_empty() || master.contains('/') {
        return Err("a redis+sentinel:// URL names the master: …/master-name".into());
    }
    let mut db = 0;
    let mut wait_ms = DEFAULT_WAIT_MS;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "db" => db = v.parse().map_err(|_| format!("bad db {v:?}"))?,
            "wait" => wait_ms = v.parse().map_err(|_| format!("bad wait {v:?}"))?,
            other => return Err(format!("unknown parameter {other:?} in the sentinel URL")),
        }
    }
    Ok(Topology::Sentinel(SentinelSpec {
        tls,
        credentials,
        sentinels,
        master,
        db,
        wait_ms,
    }))
}

fn parse_cluster(tls: bool, rest: &str) -> Result<Topology, String> {
    let (credentials, hosts, path, query) = split(rest);
    let nodes = hosts
        .split(',')
        .map(|h| host_port(h, 6379))
        .collect::<Result<Vec<_>, _>>()?;
    if !path.trim_matches('/').is_empty() && path.trim_matches('/') != "0" {
        return Err("Redis Cluster has only database 0".into());
    }
    let mut wait_ms = DEFAULT_WAIT_MS;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "wait" => wait_ms = v.parse().map_err(|_| format!("bad wait {v:?}"))?,
            other => return Err(format!("unknown parameter {other:?} in the cluster URL")),
        }
    }
    Ok(Topology::Cluster(ClusterSpec {
        tls,
        credentials,
        nodes,
        wait_ms,
    }))
}

impl SentinelSpec {
    /// The URL of a sentinel (no credentials, RESP3).
    pub fn sentinel_url(&self, (host, port): &(String, u16)) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{host}:{port}/?protocol=resp3")
    }

    /// The URL of the master at `host:port`, with the credentials and database (RESP3).
    pub fn master_url(&self, host: &str, port: u16) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let creds = self
            .credentials
            .as_deref()
            .map(|c| format!("{c}@"))
            .unwrap_or_default();
        format!("{scheme}://{creds}{host}:{port}/{}?protocol=resp3", self.db)
    }
}

/// What a resolution found: the master's address and how many replicas it streams to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    /// `host:port`.
    pub addr: String,
    /// The master's URL (with credentials: never logged).
    pub url: String,
    /// Replicas online and acknowledging (from `INFO replication`).
    pub replicas: usize,
}

/// Whether an error means "not there now" (try again later) rather than a setting that
/// will not work (a certificate, a password).
fn temporary(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.code(), Some("LOADING" | "MASTERDOWN" | "READONLY"))
}

/// At start-up only Redis being down or slow is worth waiting for: anything else (a
/// certificate that does not verify, a refused handshake, a wrong password) will not get
/// better by itself.
pub(crate) fn temporary_at_start(e: &redis::RedisError) -> bool {
    e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.code(), Some("LOADING" | "MASTERDOWN" | "READONLY"))
}

fn classify(what: &str, e: redis::RedisError, at_start: bool) -> BrokerError {
    let temporary = if at_start {
        temporary_at_start(&e)
    } else {
        temporary(&e)
    };
    if temporary {
        BrokerError::Unavailable(format!("{what}: {e}"))
    } else {
        BrokerError::Protocol(format!("{what}: {e}"))
    }
}

async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, BrokerError> {
    bounded_as(what, false, fut).await
}

async fn bounded_as<T>(
    what: &str,
    at_start: bool,
    fut: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(super::redis::OP_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| classify(what, e, at_start)),
        Err(_) => Err(BrokerError::Unavailable(format!(
            "{what}: no answer in time"
        ))),
    }
}

/// Replicas whose last acknowledgement is older than this (seconds) are not counted: a
/// publication would wait for them in vain.
const MAX_LAG: u64 = 3;

/// `INFO replication`: whether the server is a master, and how many of its replicas are
/// online and acknowledged within the last [`MAX_LAG`] seconds.
pub fn parse_replication(info: &str) -> Option<(bool, usize)> {
    let mut role = None;
    let mut replicas = 0;
    for line in info.lines().map(str::trim) {
        if let Some(r) = line.strip_prefix("role:") {
            role = Some(r == "master");
        } else if let Some((name, fields)) = line.split_once(':') {
            if !name.starts_with("slave") || !fields.contains("ip=") {
                continue;
            }
            let online = fields.split(',').any(|f| f == "state=online");
            let lag = fields
                .split(',')
                .find_map(|f| f.strip_prefix("lag="))
                .and_then(|l| l.parse::<u64>().ok());
            if online && lag.is_some_and(|l| l <= MAX_LAG) {
                replicas += 1;
            }
        }
    }
    role.map(|master| (master, replicas))
}

/// `INFO replication` of a connection, parsed.
pub async fn replication(
    conn: &mut impl redis::aio::ConnectionLike,
) -> Result<Option<(bool, usize)>, BrokerError> {
    let info: String = bounded(
        "INFO replication",
        redis::cmd("INFO").arg("replication").query_async(conn),
    )
    .await?;
    Ok(parse_replication(&info))
}

/// Asks the sentinels, in turn, where the master is, and checks that the node they name
/// says it is a master. The error of the last attempt is returned when none worked.
pub async fn resolve(spec: &SentinelSpec, tls: &RedisTls) -> Result<Master, BrokerError> {
    resolve_as(spec, tls, false).await
}

/// [`resolve`] for the start-up check: an error that is not Redis being down or slow (see
/// [`temporary_at_start`]) is a [`BrokerError::Protocol`], and wins over the others.
pub async fn check(spec: &SentinelSpec, tls: &RedisTls) -> Result<(), BrokerError> {
    resolve_as(spec, tls, true).await.map(|_| ())
}

async fn resolve_as(
    spec: &SentinelSpec,
    tls: &RedisTls,
    at_start: bool,
) -> Result<Master, BrokerError> {
    let mut last = BrokerError::Unavailable("no sentinel configured".into());
    let mut fatal = None;
    for sentinel in &spec.sentinels {
        match resolve_via(spec, tls, sentinel, at_start).await {
            Ok(m) => return Ok(m),
            Err(e) => {
                tracing::debug!(sentinel = %format!("{}:{}", sentinel.0, sentinel.1), "master not resolved: {e}");
                if let BrokerError::Protocol(_) = e {
                    fatal.get_or_insert(e);
                } else {
                    last = e;
                }
            }
        }
    }
    Err(fatal.unwrap_or(last))
}

async fn resolve_via(
    spec: &SentinelSpec,
    tls: &RedisTls,
    sentinel: &(String, u16),
    at_start: bool,
) -> Result<Master, BrokerError> {
    let client = super::redis::client(&spec.sentinel_url(sentinel), tls)?;
    let mut conn = bounded_as(
        "sentinel",
        at_start,
        client.get_multiplexed_async_connection(),
    )
    .await?;
    let addr: Option<(String, String)> = bounded(
        "sentinel",
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&spec.master)
            .query_async(&mut conn),
    )
    .await?;
    let Some((host, port)) = addr else {
        return Err(BrokerError::Protocol(format!(
            "sentinel {}:{} does not know a master named {:?}",
            sentinel.0, sentinel.1, spec.master
        )));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| BrokerError::Protocol(format!("sentinel gave a bad port {port:?}")))?;
    let url = spec.master_url(&host, port);
    let client = super::redis::client(&url, tls)?;
    let mut conn = bounded_as(
        "master",
        at_start,
        client.get_multiplexed_async_connection(),
    )
    .await?;
    match replication(&mut conn).await? {
        Some((true, replicas)) => Ok(Master {
            addr: format!("{host}:{port}"),
            url,
            replicas,
        }),
        // A failover under way: the sentinels have not caught up yet.
        _ => Err(BrokerError::Unavailable(format!(
            "{host}:{port}, named by a sentinel, is not a master (yet)"
        ))),
    }
}

/// Listens on the sentinels (one at a time, the next when it goes away) for
/// `+switch-master` of `spec.master`, calling `on_switch` for each; ends when `on_switch`
/// returns false (the broker is gone).
pub async fn watch(spec: SentinelSpec, tls: RedisTls, on_switch: impl Fn() -> bool) {
    let mut i = 0usize;
    loop {
        let sentinel = &spec.sentinels[i % spec.sentinels.len()];
        i += 1;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let attempt = async {
            let client = super::redis::client(&spec.sentinel_url(sentinel), &tls)?;
            let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
            let mut conn = bounded(
                "sentinel",
                client.get_multiplexed_async_connection_with_config(&config),
            )
            .await?;
            bounded(
                "sentinel",
                redis::cmd("SUBSCRIBE")
                    .arg("+switch-master")
                    .exec_async(&mut conn),
            )
            .await?;
            Ok::<_, BrokerError>(conn)
        };
        match attempt.await {
            Ok(mut conn) => {
                // A switch may have happened while nobody listened.
                if !on_switch() {
                    return;
                }
                loop {
                    let push =
                        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
                    match push {
                        Ok(Some(p)) if p.kind == PushKind::Message => {
                            let about_ours = p.data.get(1).is_some_and(|v| match v {
                                Value::BulkString(b) => b
                                    .split(|&c| c == b' ')
                                    .next()
                                    .is_some_and(|name| name == spec.master.as_bytes()),
                                _ => false,
                            });
                            if about_ours && !on_switch() {
                                return;
                            }
                        }
                        Ok(Some(p)) if p.kind == PushKind::Disconnection => break,
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => {
                            // Quiet: check the sentinel is still there (and the broker).
                            let ping = redis::cmd("PING");
                            if bounded("sentinel", ping.exec_async(&mut conn))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::debug!("sentinel not watched: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let t =
            parse("redis+sentinel://u:p%40w@10.0.0.1:26380,10.0.0.2,[::1]:5/mymaster?db=3&wait=0")
                .unwrap();
        let Topology::Sentinel(s) = t else {
            panic!("{t:?}")
        };
        assert!(!s.tls);
        assert_eq!(s.credentials.as_deref(), Some("u:p%40w"));
        assert_eq!(
            s.sentinels,
            vec![
                ("10.0.0.1".to_string(), 26380),
                ("10.0.0.2".to_string(), SENTINEL_PORT),
                ("[::1]".to_string(), 5)
            ]
        );
        assert_eq!(s.master, "mymaster");
        assert_eq!((s.db, s.wait_ms), (3, 0));
        assert_eq!(s.master_url("h", 7), "redis://u:p%40w@h:7/3?protocol=resp3");
        assert!(!format!("{s:?}").contains("p%40w"), "no password in Debug");

        let Topology::Sentinel(s) = parse("rediss+sentinel://h:1/m").unwrap() else {
            panic!()
        };
        assert!(s.tls);
        assert_eq!((s.db, s.wait_ms), (0, DEFAULT_WAIT_MS));
        assert_eq!(
            s.sentinel_url(&s.sentinels[0]),
            "rediss://h:1/?protocol=resp3"
        );

        assert!(parse("redis+sentinel://h:1").is_err(), "no master name");
        assert!(parse("redis+sentinel://h:1/m?nope=1").is_err());
        assert!(parse("redis+sentinel://h:x/m").is_err());
        assert!(parse("redis+sentinel://h:1,,h:2/m").is_err());
        let Topology::Cluster(c) = parse("redis+cluster://:pw@a:7000,b?wait=5").unwrap() else {
            panic!()
        };
        assert_eq!(
            c.node_urls(),
            vec![
                "redis://:pw@a:7000/?protocol=resp3".to_string(),
                "redis://:pw@b:6379/?protocol=resp3".to_string()
            ]
        );
        assert_eq!(c.wait_ms, 5);
        assert!(!format!("{c:?}").contains("pw"));
        assert!(parse("redis+cluster://a:1/3").is_err(), "no database but 0");
        assert_eq!(
            parse("redis://h:1/0").unwrap(),
            Topology::Standalone("redis://h:1/0".into())
        );
    }

    #[test]
    fn replication_info() {
        let master = "# Replication\r\nrole:master\r\nconnected_slaves:3\r\n\
            slave0:ip=127.0.0.1,port=6380,state=online,offset=42,lag=0\r\n\
            slave1:ip=127.0.0.1,port=6381,state=online,offset=40,lag=9\r\n\
            slave2:ip=127.0.0.1,port=6382,state=wait_bgsave,offset=0,lag=0\r\n\
            master_failover_state:no-failover\r\n";
        assert_eq!(
            parse_replication(master),
            Some((true, 1)),
            "only the online replica that acknowledged lately"
        );
        let replica = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\n\
            slave_read_only:1\r\nconnected_slaves:0\r\n";
        assert_eq!(parse_replication(replica), Some((false, 0)));
        assert_eq!(parse_replication(""), None);
    }
}
