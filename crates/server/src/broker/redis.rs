//! The Redis broker: several Switchboard nodes sharing one Redis (7.x; 6.2+ works with
//! plain pub/sub).
//!
//! What lives in Redis (`{C}` is the channel name, braces make it a cluster hash tag):
//!
//! | key | type | contents | lifetime |
//! |---|---|---|---|
//! | `sb:{C}:m` | hash | `e` epoch, `o` latest offset, `r` latest offset sent live, `b` the offset the epoch's stream starts after (set by a history removal) | `history_ttl` after the last publish (1 h without history) |
//! | `sb:{C}:h` | stream | history: entry id `0-<offset>`, field `d` = publication | `history_ttl`, at most `history_size` entries |
//! | `sb:{C}:p` | hash | presence: client id → `<node id>\n<client info>` | entries removed on leave, or when their node's lease ends |
//! | `sb:{C}:c` | pub/sub channel | live publications and join/leave events | — |
//! | `sb:nodes` | hash | node id → JSON registry entry | removed when the node's lease ends |
//! | `sb:lease:<node>` | string | node liveness | `lease` (default 15 s), renewed every `lease / 3` |
//! | `sb:node:<node>:ch` | set | channels where the node has presence entries | removed with the node |
//! | `sb:{C}:o` | set | nodes with local members of the channel (cluster-wide occupancy) | entries removed when the node's last member leaves, or when its lease ends |
//! | `sb:{C}:u` | hash | user id → number of nodes with a connection of that user in the channel | likewise |
//! | `sb:{C}:n:<node>` | set | users the node has in the channel | likewise |
//! | `sb:node:<node>:oc` | set | channels where the node holds occupancy entries | a channel leaves it when the node holds nothing more in it; removed with the node |
//! | `sb:ctl` | pub/sub channel | control commands and questions for every node | — |
//! | `sb:ctl:<node>` | pub/sub channel | answers to the node's questions | — |
//!
//! Publishing runs one Lua script: increment the offset, append to the stream (trimmed to
//! `history_size`), refresh the TTLs, and `SPUBLISH` (or `PUBLISH` on a Redis without
//! sharded pub/sub) `p<offset>\n<epoch>\n<publication>` to the channel — atomically, so
//! every node sees one channel's publications in offset order and history never disagrees
//! with the live stream. While publications wait for a replica's confirmation (below), the
//! script only stores them, and a second script, run once `WAIT` confirmed one, sends every
//! stored publication up to it not sent yet (`r`), in offset order.
//!
//! Two connections per node, both `redis` crate connection managers (RESP3, reconnecting
//! with backoff): one for commands and scripts, one for subscriptions, whose pushes feed one
//! task that decodes and hands each message to the node. A maintenance task renews the
//! lease every `lease / 3`, re-subscribes every channel after a reconnect (then reports each
//! channel's top so the node can detect what it missed), and removes the presence entries
//! of nodes whose lease expired, sending their leave events. Every command is bounded by a
//! timeout; while Redis is unreachable operations fail at once with
//! [`BrokerError::Unavailable`] instead of queueing.
//!
//! With `redis+sentinel://` ([`topology`]) the two connections go to the master the
//! sentinels name (checked with `INFO replication`). The maintenance task asks the sentinels again when
//! Redis becomes unreachable, answers `READONLY`, or a sentinel announces `+switch-master`;
//! when they name another node it connects both connections there and runs the same resync
//! as after a Redis restart (re-subscribe, report each channel's top, rewrite presence), so
//! what a node missed is filled from history. Meanwhile publishes fail at once with
//! [`BrokerError::Unavailable`]. While the master has replicas a publication is
//! acknowledged, and sent live, only once one of them has it (`WAIT 1 <wait>`), so a
//! promotion keeps it and a demoted master never sent what its successor lacks. A master
//! left without a confirming replica is not published to for [`REPLICA_HOLD`]. A channel's
//! live publications are handed on in offset order: one sent again (a new master that did
//! not learn it was sent) is dropped.
//!
//! With `redis+cluster://` both connections are the `redis` crate's cluster connections
//! (one connection per master each, commands routed by slot, `MOVED`/`ASK` followed). Every
//! key of a channel has the hash tag `{C}`; what belongs to no channel is named `sb:{sb}:…`
//! instead of `sb:…` (one slot). Subscriptions are sharded, each on the master of its
//! channel's slot; the acknowledgement round trip (`PING` or `WAIT`) goes to the master
//! that ran the script. The layout (`CLUSTER SLOTS`) is read at every heartbeat; a master
//! that fails a publication pauses only its own channels' publishes (`MASTER_PAUSE`).
//! Losing the subscription connection to a master resyncs every channel, as above. A slot
//! that moves to another master ends its sharded subscriptions (`SUNSUBSCRIBE` push); they
//! are made again on the new owner and their channels re-checked from history, as are those
//! whose slot a heartbeat finds owned by another master.
//!
//! Control traffic ([`Broker::control`], [`Broker::survey`]) uses the same pub/sub mode as
//! channels: every node listens to `sb:ctl` and to its own `sb:ctl:<node>` from its first
//! connection on (and again after each reconnect), and marks its registry entry with
//! `"ctl": 1` once it does, so a survey waits only for nodes that will answer (nodes of an
//! older version, during a rolling upgrade, are not waited for). A node skips its own
//! commands and questions. Each question is answered on a task of its own, so answering
//! never delays the delivery of publications.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{ConnectionAddr, IntoConnectionInfo, PushInfo, PushKind, RedisError, Script, Value};
use switchboard_core::{
    BoxFuture, Broker, BrokerError, BrokerHandler, BrokerPublication, BrokerStatus, ChannelOptions,
    ClientInfo, Epoch, HistoryQuery, NodeInfo, Publication, StreamPosition, StreamSlice,
    SurveyAnswer,
};
use tokio::sync::{mpsc, Notify};

use super::codec::{self, ControlFrame, Envelope};
use super::topology::{self, ClusterSpec, SentinelSpec, Topology};

/// Default lease of a node: its presence entries disappear at most this long (plus one
/// renewal period) after it dies.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// Bound on every Redis operation.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the stream position of a channel without history is kept (for gap detection).
const NO_HISTORY_META_TTL: Duration = Duration::from_secs(3600);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long publishes to the channels of a Redis Cluster master that failed are refused at
/// once before one is tried again.
const MASTER_PAUSE: Duration = Duration::from_millis(500);
/// How long publishes are refused once a master that had replicas has none that confirm
/// (a `WAIT` that timed out, or none left in its replication info): the master may be
/// about to be demoted (a switchover, a partition), and what it acknowledged without a
/// replica would then be lost. Once the failover is over the new master is used; when
/// none happens, publishing goes on without the confirmation.
const REPLICA_HOLD: Duration = Duration::from_secs(5);
/// How long a survey waits for the other nodes' answers.
pub const SURVEY_WAIT: Duration = Duration::from_secs(2);

const PUBLISH_LUA: &str = r#"
local e = redis.call('hget', KEYS[1], 'e')
if not e then
  e = ARGV[3]
  redis.call('hset', KEYS[1], 'e', e)
end
local o = redis.call('hincrby', KEYS[1], 'o', 1)
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('xadd', KEYS[2], 'MAXLEN', size, '0-' .. o, 'd', ARGV[2])
  redis.call('pexpire', KEYS[2], ARGV[5])
end
redis.call('pexpire', KEYS[1], ARGV[6])
if ARGV[8] == '1' then
  if not redis.call('hget', KEYS[1], 'r') then
    redis.call('hset', KEYS[1], 'r', o - 1)
  end
else
  redis.call('hset', KEYS[1], 'r', o)
  redis.call(ARGV[7], ARGV[1], 'p' .. o .. '\n' .. e .. '\n' .. ARGV[2])
end
return {o, e}
"#;

/// Sends live, in offset order, the publications of the stream up to `ARGV[3]` that were
/// not sent yet (`r` in the meta hash is the last one sent), once a replica confirmed
/// them. Nothing when the stream went on in another epoch meanwhile.
const RELEASE_LUA: &str = r#"
local e = redis.call('hget', KEYS[1], 'e')
if e ~= ARGV[4] then
  return 0
end
local r = tonumber(redis.call('hget', KEYS[1], 'r') or '0')
local upto = tonumber(ARGV[3])
if upto <= r then
  return 0
end
local entries = redis.call('xrange', KEYS[2], '0-' .. (r + 1), '0-' .. upto)
for _, entry in ipairs(entries) do
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 'd' then
      redis.call(ARGV[2], ARGV[1], 'p' .. string.sub(entry[1], 3) .. '\n' .. e .. '\n' .. f[i + 1])
    end
  end
end
redis.call('hset', KEYS[1], 'r', upto)
return #entries
"#;

const READ_LUA: &str = r#"
local e = redis.call('hget', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('hset', KEYS[1], 'e', e, 'o', 0)
  redis.call('pexpire', KEYS[1], ARGV[2])
end
local o = redis.call('hget', KEYS[1], 'o') or '0'
local b = redis.call('hget', KEYS[1], 'b') or '0'
local first = redis.call('xrange', KEYS[2], '-', '+', 'COUNT', 1)
local n = tonumber(ARGV[6])
local entries = {}
if n ~= 0 then
  local cmd = 'xrange'
  if ARGV[3] == 'r' then cmd = 'xrevrange' end
  if n > 0 then
    entries = redis.call(cmd, KEYS[2], ARGV[4], ARGV[5], 'COUNT', n)
  else
    entries = redis.call(cmd, KEYS[2], ARGV[4], ARGV[5])
  end
end
return {e, o, first, entries, b}
"#;

const REMOVE_LUA: &str = r#"
redis.call('del', KEYS[2])
local o = redis.call('hget', KEYS[1], 'o') or '0'
redis.call('hset', KEYS[1], 'e', ARGV[1], 'o', o, 'b', o, 'r', o)
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
"#;

/// Cluster-wide occupancy of a channel (`KEYS[1]` = `sb:{C}:o`): adds (`ARGV[2]` = `1`) or
/// removes node `ARGV[1]`; answers 1 when the set went from empty to one node or back to
/// empty, so exactly one node sees each flip.
const OCCUPY_LUA: &str = r#"
if ARGV[2] == '1' then
  if redis.call('sadd', KEYS[1], ARGV[1]) == 1 and redis.call('scard', KEYS[1]) == 1 then
    return 1
  end
elseif redis.call('srem', KEYS[1], ARGV[1]) == 1 and redis.call('scard', KEYS[1]) == 0 then
  return 1
end
return 0
"#;

/// A user's presence in a channel across nodes (`KEYS[1]` = `sb:{C}:u`, `KEYS[2]` =
/// `sb:{C}:n:<node>`): answers 1 when user `ARGV[1]` appeared in (`ARGV[2]` = `1`) or
/// disappeared from the whole cluster's channel.
const USER_LUA: &str = r#"
if ARGV[2] == '1' then
  if redis.call('sadd', KEYS[2], ARGV[1]) == 1 and redis.call('hincrby', KEYS[1], ARGV[1], 1) == 1 then
    return 1
  end
elseif redis.call('srem', KEYS[2], ARGV[1]) == 1 then
  if redis.call('hincrby', KEYS[1], ARGV[1], -1) <= 0 then
    redis.call('hdel', KEYS[1], ARGV[1])
    return 1
  end
end
return 0
"#;

/// Removes everything dead node `ARGV[1]` held in one channel (`KEYS` = `o`, `u`,
/// `n:<dead>`): answers `{vacated, users that disappeared}`.
const REAP_OCCUPANCY_LUA: &str = r#"
local vacated = 0
if redis.call('srem', KEYS[1], ARGV[1]) == 1 and redis.call('scard', KEYS[1]) == 0 then
  vacated = 1
end
local gone = {}
for _, u in ipairs(redis.call('smembers', KEYS[3])) do
  if redis.call('hincrby', KEYS[2], u, -1) <= 0 then
    redis.call('hdel', KEYS[2], u)
    table.insert(gone, u)
  end
end
redis.call('del', KEYS[3])
return {vacated, gone}
"#;

/// Told what a dead node's occupancy held, once reaped: the channel, whether it is now
/// vacated in the whole cluster, and the users that disappeared from it.
pub type OccupancyLost = Arc<dyn Fn(&str, bool, &[String]) + Send + Sync>;

/// This node's occupancy entries, kept to write them again into a Redis that came back
/// empty.
#[derive(Default)]
struct LocalOccupancy {
    channels: HashSet<String>,
    users: HashMap<String, HashSet<String>>,
}

/// TLS settings for a `rediss://` URL (PEM files).
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// CA certificates Redis's certificate must chain to (default: the system's store).
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and its key, for servers that require one.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Skip verifying Redis's certificate (tests only).
    pub insecure: bool,
}

/// How to connect and register.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db` or, over TLS, `rediss://host:port/db` (credentials allowed:
    /// `redis://user:password@host:port/db`; they are never logged).
    pub url: String,
    /// This node's registry entry (id, name, advertised URL; counts are filled in).
    pub node: NodeInfo,
    /// Node lease: how long a silent node is considered alive.
    pub lease: Duration,
    /// TLS settings, used with a `rediss://` URL.
    pub tls: RedisTls,
}

/// The Redis broker. See the module documentation.
pub struct RedisBroker {
    inner: Arc<Inner>,
    /// For [`probe`](RedisBroker::probe) (standalone Redis).
    client: Option<redis::Client>,
}

/// A connection to one Redis (reconnecting by itself) or to a Redis Cluster (routing each
/// command to the master of its slot, following `MOVED`/`ASK` and failovers).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Runs `cmd` on the master of `channel`'s slot (a Redis Cluster), or on the one Redis.
    async fn on_channel_master(
        &mut self,
        channel: &str,
        cmd: redis::Cmd,
    ) -> Result<Value, RedisError> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::new(slot_number(&meta_key(channel)), SlotAddr::Master);
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await
            }
        }
    }
}

/// One range of hash slots and its master (Redis Cluster).
#[derive(Debug, Clone)]
struct SlotRange {
    start: u16,
    end: u16,
    master: String,
    replicas: usize,
}

/// The two connections to the Redis in use (replaced when Sentinel names another master).
struct Conns {
    cmd: Conn,
    sub: Conn,
    /// `host:port` of the master (Sentinel), for `/health` and logs.
    addr: Option<String>,
}

struct Inner {
    /// `None` until Sentinel named a master.
    conns: RwLock<Option<Conns>>,
    /// The sentinels to ask for the master, with a `redis+sentinel://` URL.
    sentinel: Option<SentinelSpec>,
    /// The seed nodes of a Redis Cluster, with a `redis+cluster://` URL.
    cluster: Option<ClusterSpec>,
    /// The cluster's slot ranges and their masters, as last asked (`CLUSTER SLOTS`).
    slots: RwLock<Vec<SlotRange>>,
    /// Cluster masters found unreachable by a publication, until when their channels'
    /// publishes are refused at once.
    down: Mutex<HashMap<String, Instant>>,
    tls: RedisTls,
    /// Where every subscription connection sends its pushes.
    push_tx: mpsc::UnboundedSender<PushInfo>,
    /// Ask the sentinels again (a failover was announced or suspected).
    reresolve: AtomicBool,
    /// Replicas the master streams to (Sentinel): publications wait for one of them.
    replicas: AtomicUsize,
    /// Sentinel: publishes are refused until then ([`REPLICA_HOLD`]).
    hold: Mutex<Option<Instant>>,
    /// Per channel, the position of the last publication handed to the node live: one sent
    /// again (a new master sending what the old one had sent already) is dropped.
    live: Mutex<HashMap<String, StreamPosition>>,
    node: NodeInfo,
    lease: Duration,
    /// Sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`) works on this server.
    sharded: AtomicBool,
    connected: AtomicBool,
    /// The command connection answered its last heartbeat (cleared when a heartbeat or an
    /// operation finds Redis unreachable): while it is down, publishes fail at once.
    reachable: AtomicBool,
    /// The subscriptions were lost (disconnect) and must be made again.
    resync: AtomicBool,
    /// Wakes the maintenance task at once (a disconnect was seen).
    wake: Notify,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    /// Channels listened to, for re-subscribing after a reconnect.
    channels: Mutex<HashSet<String>>,
    /// Pub/sub names whose subscription Redis ended because their slot moved to another
    /// master (a `SUNSUBSCRIBE` push, or a new owner seen in the layout): subscribed again,
    /// on the new owner, by the maintenance task, and their channels re-checked.
    moved: Mutex<HashSet<String>>,
    started: Instant,
    publish: Script,
    read: Script,
    remove: Script,
    release: Script,
    pushes: Mutex<Option<mpsc::UnboundedReceiver<PushInfo>>>,
    /// This node listens to the control channels (advertised in its registry entry).
    control_ready: AtomicBool,
    /// `sb:ctl:<node>`, computed once: every pushed message is compared with it.
    answers: String,
    /// `sb:ctl`: commands and questions for every node.
    control: String,
    /// [`PREFIX`] or [`CLUSTER_PREFIX`].
    prefix: &'static str,
    /// Surveys waiting for answers, by question id.
    surveys: Mutex<HashMap<u64, mpsc::UnboundedSender<(String, Bytes)>>>,
    next_survey: AtomicU64,
    occupy: Script,
    user: Script,
    reap_occupancy: Script,
    /// What this node holds in the cluster-wide occupancy.
    occupancy: Mutex<LocalOccupancy>,
    /// Told about what a dead node's occupancy held.
    occupancy_lost: OnceLock<OccupancyLost>,
}

fn meta_key(channel: &str) -> String {
    format!("sb:{{{channel}}}:m")
}
fn stream_key(channel: &str) -> String {
    format!("sb:{{{channel}}}:h")
}
fn presence_key(channel: &str) -> String {
    format!("sb:{{{channel}}}:p")
}
fn pubsub_channel(channel: &str) -> String {
    format!("sb:{{{channel}}}:c")
}
fn channel_of(pubsub: &[u8]) -> Option<&str> {
    std::str::from_utf8(pubsub)
        .ok()?
        .strip_prefix("sb:{")?
        .strip_suffix("}:c")
}
/// Where the keys and pub/sub names that belong to no channel start: `sb:`, or `sb:{sb}:`
/// on a Redis Cluster (one hash slot for all of them, so pipelines over them work).
const PREFIX: &str = "sb:";
const CLUSTER_PREFIX: &str = "sb:{sb}:";
fn nodes_key(p: &str) -> String {
    format!("{p}nodes")
}
/// The pub/sub channel every node listens to for commands and questions.
fn control_channel(p: &str) -> String {
    format!("{p}ctl")
}
/// The pub/sub channel a node listens to for answers to its questions.
fn answers_channel(p: &str, node: &str) -> String {
    format!("{p}ctl:{node}")
}
fn lease_key(p: &str, node: &str) -> String {
    format!("{p}lease:{node}")
}
fn node_channels_key(p: &str, node: &str) -> String {
    format!("{p}node:{node}:ch")
}
fn occupancy_key(channel: &str) -> String {
    format!("sb:{{{channel}}}:o")
}
fn users_key(channel: &str) -> String {
    format!("sb:{{{channel}}}:u")
}
fn node_users_key(channel: &str, node: &str) -> String {
    format!("sb:{{{channel}}}:n:{node}")
}
fn node_occupancy_key(p: &str, node: &str) -> String {
    format!("{p}node:{node}:oc")
}

/// A fresh random 8-character epoch.
fn new_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let mut seed = h.finish();
    (0..8)
        .map(|_| {
            let c = ALPHABET[(seed % 62) as usize] as char;
            seed /= 62;
            c
        })
        .collect()
}

/// A random node id (16 hex digits).
pub fn new_node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:016x}", h.finish())
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

fn map_err(e: RedisError) -> BrokerError {
    // A demoted master (`READONLY`), a replica that lost its master, a Redis loading its
    // data: all pass.
    if matches!(
        e.code(),
        Some("READONLY" | "MASTERDOWN" | "LOADING" | "CLUSTERDOWN" | "TRYAGAIN" | "MOVED" | "ASK")
    ) || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
    {
        return BrokerError::Unavailable(e.to_string());
    }
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.to_string().contains("LOADING")
    {
        BrokerError::Unavailable(e.to_string())
    } else {
        BrokerError::Protocol(e.to_string())
    }
}

/// Runs `fut` within [`OP_TIMEOUT`], mapping errors.
async fn bounded<T>(
    fut: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => r.map_err(map_err),
        Err(_) => Err(unavailable("Redis did not answer in time")),
    }
}

fn bytes_of(v: &Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::copy_from_slice(b)),
        Value::SimpleString(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        Value::VerbatimString { text, .. } => Some(Bytes::copy_from_slice(text.as_bytes())),
        Value::Int(n) => Some(Bytes::from(n.to_string())),
        _ => None,
    }
}

fn u64_of(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => std::str::from_utf8(&bytes_of(other)?).ok()?.parse().ok(),
    }
}

fn array_of(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// Stream entries (`[[id, [field, value, ...]], ...]`) as (offset, publication bytes).
fn entries_of(v: &Value) -> Vec<(u64, Bytes)> {
    array_of(v)
        .iter()
        .filter_map(|entry| {
            let e = array_of(entry);
            let id = bytes_of(e.first()?)?;
            let offset: u64 = std::str::from_utf8(&id)
                .ok()?
                .strip_prefix("0-")?
                .parse()
                .ok()?;
            let fields = array_of(e.get(1)?);
            let data = fields
                .chunks(2)
                .find(|kv| kv.len() == 2 && bytes_of(&kv[0]).as_deref() == Some(b"d"))
                .and_then(|kv| bytes_of(&kv[1]))?;
            Some((offset, data))
        })
        .collect()
}

fn ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

fn meta_ttl(options: &ChannelOptions) -> Duration {
    if options.history_enabled() {
        options.history_ttl
    } else {
        NO_HISTORY_META_TTL
    }
}

fn publication(channel: &str, offset: u64, epoch: Epoch, env: Envelope) -> Publication {
    Publication::new(
        Arc::from(channel),
        env.payload,
        offset,
        epoch,
        env.publisher,
    )
    .with_info(env.info.map(Arc::new))
}

/// The Redis client for `url` (with `?protocol=resp3`), with the TLS settings for a
/// `rediss://` URL.
pub(crate) fn client(url: &str, tls: &RedisTls) -> Result<redis::Client, BrokerError> {
    let bad = |e: &dyn std::fmt::Display| BrokerError::Protocol(format!("bad broker URL: {e}"));
    if !url.starts_with("rediss://") {
        if tls.ca.is_some() || tls.client.is_some() || tls.insecure {
            return Err(BrokerError::Protocol(
                "broker TLS settings need a rediss:// URL".into(),
            ));
        }
        return redis::Client::open(url).map_err(|e| bad(&e));
    }
    let mut info = url.into_connection_info().map_err(|e| bad(&e))?;
    if tls.insecure {
        if let ConnectionAddr::TcpTls {
            host,
            port,
            tls_params,
            ..
        } = info.addr().clone()
        {
            info = info.set_addr(ConnectionAddr::TcpTls {
                host,
                port,
                insecure: true,
                tls_params,
            });
        }
    }
    redis::Client::build_with_tls(info, certificates(tls)?)
        .map_err(|e| BrokerError::Protocol(format!("broker TLS settings: {e}")))
}

/// The cluster client for a `redis+cluster://` URL (RESP3, bounded connection attempts),
/// sending its pushes to `pushes` when given.
fn cluster_client(
    spec: &ClusterSpec,
    tls: &RedisTls,
    pushes: Option<mpsc::UnboundedSender<PushInfo>>,
) -> Result<redis::cluster::ClusterClient, BrokerError> {
    let mut b = redis::cluster::ClusterClient::builder(spec.node_urls())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .retries(2)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(OP_TIMEOUT);
    if spec.tls {
        b = b.certs(certificates(tls)?);
        if tls.insecure {
            b = b.tls(redis::TlsMode::Insecure);
        }
    } else if tls.ca.is_some() || tls.client.is_some() || tls.insecure {
        return Err(BrokerError::Protocol(
            "broker TLS settings need a rediss+cluster:// URL".into(),
        ));
    }
    if let Some(tx) = pushes {
        b = b.push_sender(tx);
    }
    b.build()
        .map_err(|e| BrokerError::Protocol(format!("bad broker URL: {e}")))
}

/// The CA and client certificate of the TLS settings, read from their files.
fn certificates(tls: &RedisTls) -> Result<redis::TlsCertificates, BrokerError> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            BrokerError::Protocol(format!(
                "cannot read the broker TLS {what} {}: {e}",
                path.display()
            ))
        })
    };
    let root_cert = tls.ca.as_deref().map(|p| read("CA file", p)).transpose()?;
    let client_tls = match &tls.client {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read("certificate", cert)?,
            client_key: read("key", key)?,
        }),
        None => None,
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

impl RedisBroker {
    /// Connects lazily (the node starts even while Redis is down, reporting it in
    /// `/health`) and starts the maintenance and subscription tasks on the current tokio
    /// runtime.
    pub fn start(config: RedisConfig) -> Result<RedisBroker, BrokerError> {
        let topology = topology::parse(&config.url).map_err(BrokerError::Protocol)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut cluster = None;
        let (conns, sentinel, probe_client) = match topology {
            Topology::Standalone(url) => {
                let url = if url.contains('?') {
                    format!("{url}&protocol=resp3")
                } else {
                    format!("{url}?protocol=resp3")
                };
                let client = client(&url, &config.tls)?;
                let conns = Conns::new(&client, tx.clone(), None)?;
                (Some(conns), None, Some(client))
            }
            Topology::Sentinel(spec) => {
                // Checked now rather than at the first resolution.
                client(&spec.sentinel_url(&spec.sentinels[0]), &config.tls)?;
                (None, Some(spec), None)
            }
            Topology::Cluster(spec) => {
                // Connected by the maintenance task (the cluster's layout is asked first).
                cluster = Some(spec);
                (None, None, None)
            }
        };
        let prefix = if cluster.is_some() {
            CLUSTER_PREFIX
        } else {
            PREFIX
        };
        let watch = sentinel.clone();
        let inner = Arc::new(Inner {
            conns: RwLock::new(conns),
            sentinel,
            cluster,
            slots: RwLock::new(Vec::new()),
            down: Mutex::new(HashMap::new()),
            tls: config.tls.clone(),
            push_tx: tx,
            reresolve: AtomicBool::new(true),
            replicas: AtomicUsize::new(0),
            hold: Mutex::new(None),
            live: Mutex::new(HashMap::new()),
            node: config.node.clone(),
            lease: config.lease.max(Duration::from_millis(300)),
            sharded: AtomicBool::new(true),
            connected: AtomicBool::new(false),
            reachable: AtomicBool::new(false),
            resync: AtomicBool::new(false),
            wake: Notify::new(),
            handler: OnceLock::new(),
            channels: Mutex::new(HashSet::new()),
            moved: Mutex::new(HashSet::new()),
            started: Instant::now(),
            publish: Script::new(PUBLISH_LUA),
            read: Script::new(READ_LUA),
            remove: Script::new(REMOVE_LUA),
            release: Script::new(RELEASE_LUA),
            pushes: Mutex::new(Some(rx)),
            control_ready: AtomicBool::new(false),
            answers: answers_channel(prefix, &config.node.id),
            control: control_channel(prefix),
            prefix,
            surveys: Mutex::new(HashMap::new()),
            next_survey: AtomicU64::new(1),
            occupy: Script::new(OCCUPY_LUA),
            user: Script::new(USER_LUA),
            reap_occupancy: Script::new(REAP_OCCUPANCY_LUA),
            occupancy: Mutex::default(),
            occupancy_lost: OnceLock::new(),
        });
        tokio::spawn(maintain(Arc::downgrade(&inner)));
        if let Some(spec) = watch {
            let weak = Arc::downgrade(&inner);
            tokio::spawn(topology::watch(spec, config.tls, move || {
                let Some(inner) = weak.upgrade() else {
                    return false;
                };
                inner.suspect_failover();
                true
            }));
        }
        Ok(RedisBroker {
            inner,
            client: probe_client,
        })
    }

    /// Sets who is told what a dead node's occupancy entries held once a survivor (this
    /// node, when it wins the reaping) removed them. Only the first call has an effect.
    pub fn on_occupancy_lost(&self, report: OccupancyLost) {
        let _ = self.inner.occupancy_lost.set(report);
    }

    /// One direct connection attempt and a `PING`, bounded, for a clear error at start-up
    /// (the broker's own connections retry quietly in the background). A failure that is
    /// not Redis being down or slow — a certificate that does not verify, a refused TLS
    /// handshake, a wrong password — is reported as [`BrokerError::Protocol`].
    pub async fn probe(&self) -> Result<(), BrokerError> {
        if let Some(spec) = &self.inner.sentinel {
            return topology::check(spec, &self.inner.tls).await;
        }
        let attempt = async {
            if let Some(spec) = &self.inner.cluster {
                let client = cluster_client(spec, &self.inner.tls, None).map_err(|e| {
                    RedisError::from((redis::ErrorKind::InvalidClientConfig, "", e.to_string()))
                })?;
                let mut conn = client.get_async_connection().await?;
                return redis::cmd("PING").query_async::<()>(&mut conn).await;
            }
            let Some(client) = &self.client else {
                return Ok(());
            };
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await
        };
        match tokio::time::timeout(OP_TIMEOUT, attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if topology::temporary_at_start(&e) => Err(unavailable(e)),
            Ok(Err(e)) => Err(BrokerError::Protocol(e.to_string())),
            Err(_) => Err(unavailable("Redis did not answer in time")),
        }
    }

    /// Waits (up to `limit`) until Redis answered once; returns whether it did.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.inner.connected.load(Ordering::Relaxed) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        // Tell the tasks to stop (they hold the inner state weakly) and leave the registry
        // at once rather than when the lease runs out.
        let Ok(mut cmd) = self.inner.cmd() else {
            return;
        };
        let id = self.inner.node.id.clone();
        let (nodes, lease) = (
            nodes_key(self.inner.prefix),
            lease_key(self.inner.prefix, &id),
        );
        // A node that still holds occupancy entries only gives up its lease: it stays in the
        // registry so that a surviving node reaps it and reports the channels it vacates.
        let holds_occupancy = {
            let o = self
                .inner
                .occupancy
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            !(o.channels.is_empty() && o.users.is_empty())
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut pipe = redis::pipe();
                if !holds_occupancy {
                    pipe.hdel(nodes, &id);
                }
                let _ = bounded(pipe.del(lease).exec_async(&mut cmd)).await;
            });
        }
    }
}

impl Conns {
    /// Lazy connection managers for `client` (they connect at their first command).
    fn new(
        client: &redis::Client,
        pushes: mpsc::UnboundedSender<PushInfo>,
        addr: Option<String>,
    ) -> Result<Conns, BrokerError> {
        let base = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(MAX_BACKOFF);
        let cmd = ConnectionManager::new_lazy_with_config(client.clone(), base.clone())
            .map_err(|e| BrokerError::Protocol(e.to_string()))?;
        let sub =
            ConnectionManager::new_lazy_with_config(client.clone(), base.set_push_sender(pushes))
                .map_err(|e| BrokerError::Protocol(e.to_string()))?;
        Ok(Conns {
            cmd: Conn::Single(cmd),
            sub: Conn::Single(sub),
            addr,
        })
    }

    /// Connects to a Redis Cluster: one connection for commands, one (with its own
    /// connection to each master) for the sharded subscriptions.
    async fn cluster(
        spec: &ClusterSpec,
        tls: &RedisTls,
        pushes: mpsc::UnboundedSender<PushInfo>,
    ) -> Result<Conns, BrokerError> {
        let cmd = bounded(cluster_client(spec, tls, None)?.get_async_connection()).await?;
        let sub = bounded(cluster_client(spec, tls, Some(pushes))?.get_async_connection()).await?;
        Ok(Conns {
            cmd: Conn::Cluster(cmd),
            sub: Conn::Cluster(sub),
            addr: None,
        })
    }
}

impl Inner {
    /// The command connection (an error while Sentinel has not named a master).
    fn cmd(&self) -> Result<Conn, BrokerError> {
        let conns = self.conns.read().unwrap_or_else(|e| e.into_inner());
        conns
            .as_ref()
            .map(|c| c.cmd.clone())
            .ok_or_else(|| unavailable("no Redis master known yet"))
    }

    /// The subscription connection.
    fn sub(&self) -> Result<Conn, BrokerError> {
        let conns = self.conns.read().unwrap_or_else(|e| e.into_inner());
        conns
            .as_ref()
            .map(|c| c.sub.clone())
            .ok_or_else(|| unavailable("no Redis master known yet"))
    }

    /// Replicas of the master of `channel`'s slot at the last look (Redis Cluster).
    fn slot_replicas(&self, channel: &str) -> usize {
        let slot = slot_number(&meta_key(channel));
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .find(|r| r.start <= slot && slot <= r.end)
            .map_or(0, |r| r.replicas)
    }

    /// A replica of `channel`'s master did not confirm: do not wait for it until the next
    /// look at the cluster's layout finds it again.
    fn forget_replicas(&self, channel: &str) {
        let slot = slot_number(&meta_key(channel));
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        let Some(master) = slots
            .iter()
            .find(|r| r.start <= slot && slot <= r.end)
            .map(|r| r.master.clone())
        else {
            return;
        };
        for r in slots.iter_mut().filter(|r| r.master == master) {
            r.replicas = 0;
        }
    }

    /// The master in use (Sentinel), as `host:port`.
    fn master_addr(&self) -> Option<String> {
        let conns = self.conns.read().unwrap_or_else(|e| e.into_inner());
        conns.as_ref().and_then(|c| c.addr.clone())
    }

    /// With Sentinel: the master may have changed; stop publishing until it is known, and
    /// ask the sentinels at once.
    fn suspect_failover(&self) {
        if self.sentinel.is_some() {
            self.reresolve.store(true, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// With Sentinel: asks the sentinels for the master and, when it is another node than
    /// the one in use, connects both connections to it (the subscriptions are then restored
    /// and every channel resynchronised by the maintenance task). Returns whether it
    /// switched.
    async fn follow_master(&self) -> Result<bool, BrokerError> {
        let Some(spec) = &self.sentinel else {
            return Ok(false);
        };
        let master = topology::resolve(spec, &self.tls).await?;
        self.replicas.store(master.replicas, Ordering::Relaxed);
        if self.master_addr().as_deref() == Some(master.addr.as_str()) {
            return Ok(false);
        }
        let client = client(&master.url, &self.tls)?;
        let conns = Conns::new(&client, self.push_tx.clone(), Some(master.addr.clone()))?;
        let old = self
            .conns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace(conns);
        // A new master: what made the old one hold publishes does not apply to it.
        *self.hold.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::info!(
            master = %master.addr,
            previous = old.as_ref().and_then(|c| c.addr.as_deref()).unwrap_or("none"),
            replicas = master.replicas,
            "Redis master (from Sentinel)"
        );
        Ok(true)
    }

    /// Publishing is refused at once (a temporary error) while Redis is known to be
    /// unreachable, rather than after the connection's reconnection attempts. (Publishes
    /// are accepted while the subscriptions are being restored: what this node misses
    /// meanwhile it fills from history when it listens again.)
    ///
    /// On a Redis Cluster this holds per master: publishes to the channels of a master that
    /// just failed are refused at once for [`MASTER_PAUSE`], the other masters' channels are
    /// not affected (nor by the node registry's master being down).
    fn ready_to_publish(&self, channel: &str) -> Result<(), BrokerError> {
        if self.cluster.is_some() {
            let Some(master) = self.master_of(channel) else {
                return Ok(());
            };
            let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
            return match down.get(&master) {
                Some(until) if Instant::now() < *until => Err(unavailable(format!(
                    "the Redis Cluster master {master} is unreachable"
                ))),
                _ => Ok(()),
            };
        }
        if !self.reachable.load(Ordering::Relaxed) {
            return Err(unavailable("Redis is unreachable"));
        }
        match *self.hold.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(until) if Instant::now() < until => Err(unavailable(
                "the Redis master lost its replicas (a failover may be under way)",
            )),
            _ => Ok(()),
        }
    }

    /// With Sentinel: the master had replicas and has none that confirm; publishes to it
    /// are refused for [`REPLICA_HOLD`]. (Not on a cluster: there a master that just took
    /// over has no replica yet either, and the layout a node holds lags behind; a cluster
    /// master isolated by a partition is a known gap, see `docs/scaling.md`.)
    fn hold_publishes(&self) {
        if self.sentinel.is_none() {
            return;
        }
        tracing::warn!("the Redis master has no replica confirming writes; holding publishes");
        *self.hold.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + REPLICA_HOLD);
    }

    /// [`note`](Inner::note) for a publication to `channel`: on a Redis Cluster an
    /// unreachable master pauses the publishes to its channels only.
    fn note_for<T>(&self, channel: &str, r: Result<T, BrokerError>) -> Result<T, BrokerError> {
        if self.cluster.is_none() {
            return self.note(r);
        }
        if let Err(BrokerError::Unavailable(msg)) = &r {
            // A slot being migrated (`TRYAGAIN`, or redirections the client gave up
            // following) says nothing about the master being down: only the layout is
            // looked at again.
            let migrating = ["TRYAGAIN", "MOVED", "ASK"]
                .iter()
                .any(|code| msg.contains(code));
            if let Some(master) = self.master_of(channel).filter(|_| !migrating) {
                self.down
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(master, Instant::now() + MASTER_PAUSE);
            }
            // Look at the cluster's layout again at once.
            self.wake.notify_one();
        }
        r
    }

    /// The master of `channel`'s slot at the last look (Redis Cluster).
    fn master_of(&self, channel: &str) -> Option<String> {
        let slot = slot_number(&meta_key(channel));
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .find(|r| r.start <= slot && slot <= r.end)
            .map(|r| r.master.clone())
    }

    /// Notes an operation's outcome: an unreachable Redis makes the next publishes fail at
    /// once, and the maintenance task checks at once when it is back.
    fn note<T>(&self, r: Result<T, BrokerError>) -> Result<T, BrokerError> {
        if let Err(BrokerError::Unavailable(_)) = &r {
            if self.reachable.swap(false, Ordering::Relaxed) {
                self.wake.notify_one();
            }
            // The master may be gone or demoted (`READONLY`).
            self.suspect_failover();
        }
        r
    }

    /// Waits until Redis has sent out what the publications just run queued for the
    /// listening nodes, before they are acknowledged. Redis writes a script's reply and
    /// the pub/sub messages it queued in the same pass, reply first: a Redis killed in the
    /// middle of that pass (restarting without persistence) has acknowledged a publication
    /// that some nodes never get and no history keeps. A command sent only after the reply
    /// arrived is answered in a later pass, when the whole earlier one is in the sockets.
    /// If it is not answered the publication is not acknowledged (a temporary error: it may
    /// or may not have been published).
    ///
    /// With Sentinel and a master that has replicas, `WAIT 1 <wait>` takes the place of the
    /// `PING` (it is answered after that pass too): the publication is acknowledged once a
    /// replica has it, so a promotion keeps it. A replica that does not confirm in time
    /// makes the publication fail with a temporary error, and the following ones wait
    /// again only once the master reports a replica again (see `heartbeat`).
    ///
    /// On a Redis Cluster both go to the master of the channel's slot, the one that ran the
    /// script, and `WAIT` is used when that master had replicas at the last look.
    async fn flushed(
        &self,
        cmd: &mut Conn,
        channel: &str,
        wait_ms: u64,
    ) -> Result<(), BrokerError> {
        if wait_ms == 0 {
            let ping = cmd.on_channel_master(channel, redis::cmd("PING"));
            return self.note_for(channel, bounded(ping).await).map(|_| ());
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(wait_ms);
        let acked = self.note_for(channel, bounded(cmd.on_channel_master(channel, wait)).await)?;
        if u64_of(&acked).unwrap_or(0) < 1 {
            self.hold_publishes();
            if self.cluster.is_some() {
                self.forget_replicas(channel);
            }
            self.replicas.store(0, Ordering::Relaxed);
            return Err(unavailable(
                "no replica confirmed the publication in time (it may have been published)",
            ));
        }
        Ok(())
    }

    /// How long a publication to `channel` waits for a replica to confirm it (`WAIT 1 <ms>`),
    /// 0 for not at all (standalone Redis, no replica, `wait=0`).
    fn wait_ms(&self, channel: &str) -> u64 {
        match (&self.sentinel, &self.cluster) {
            (Some(s), _) if self.replicas.load(Ordering::Relaxed) > 0 => s.wait_ms,
            (_, Some(c)) if self.slot_replicas(channel) > 0 => c.wait_ms,
            _ => 0,
        }
    }

    /// Sends live the publications of `channel` up to `upto` (in `epoch`) that were
    /// stored but not sent yet: a publication that waits for a replica is sent only once
    /// one confirmed it, so a master demoted before that (a switchover) never sent out what
    /// its successor does not have. Publications of other nodes confirmed by this one's
    /// `WAIT` go out with it, in offset order.
    async fn release(
        &self,
        cmd: &mut Conn,
        channel: &str,
        upto: u64,
        epoch: &str,
    ) -> Result<(), BrokerError> {
        let _: Value = bounded(
            self.release
                .key(meta_key(channel))
                .key(stream_key(channel))
                .arg(pubsub_channel(channel))
                .arg(self.publish_cmd())
                .arg(upto)
                .arg(epoch)
                .invoke_async(cmd),
        )
        .await?;
        Ok(())
    }

    /// Presence is not read before this node wrote its own entries again after a
    /// reconnect (Redis may have come back empty).
    fn ready_for_presence(&self) -> Result<(), BrokerError> {
        if self.connected.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(unavailable("not connected to Redis"))
        }
    }

    fn lease_ms(&self) -> u64 {
        ms(self.lease)
    }

    fn publish_cmd(&self) -> &'static str {
        if self.sharded.load(Ordering::Relaxed) {
            "spublish"
        } else {
            "publish"
        }
    }

    /// Subscribes the subscription connection to `channels`, falling back to plain
    /// pub/sub when the server has no sharded pub/sub.
    async fn subscribe_raw(&self, channels: &[String]) -> Result<(), BrokerError> {
        if channels.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = channels.iter().map(|c| pubsub_channel(c)).collect();
        self.subscribe_names(&names).await
    }

    /// Subscribes the subscription connection to these pub/sub names (sharded when the
    /// server has it).
    async fn subscribe_names(&self, names: &[String]) -> Result<(), BrokerError> {
        let mut sub = self.sub()?;
        if self.cluster.is_some() {
            // Each name to the master of its slot.
            for name in names {
                bounded(redis::cmd("SSUBSCRIBE").arg(name).exec_async(&mut sub)).await?;
            }
            return Ok(());
        }
        if self.sharded.load(Ordering::Relaxed) {
            let r = bounded(redis::cmd("SSUBSCRIBE").arg(names).exec_async(&mut sub)).await;
            match r {
                Err(BrokerError::Protocol(msg))
                    if msg.to_ascii_lowercase().contains("unknown command") =>
                {
                    tracing::info!("Redis has no sharded pub/sub; using PUBLISH/SUBSCRIBE");
                    self.sharded.store(false, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        bounded(redis::cmd("SUBSCRIBE").arg(names).exec_async(&mut sub)).await
    }

    /// Registers the node and renews its lease; returns whether Redis answered.
    async fn heartbeat(&self) -> Result<(), BrokerError> {
        let (clients, channels) = self
            .handler
            .get()
            .map(|h| h.local_stats())
            .unwrap_or_default();
        let entry = serde_json::json!({
            "id": self.node.id,
            "name": self.node.name,
            "url": self.node.url,
            "num_clients": clients,
            "num_channels": channels,
            "uptime": self.started.elapsed().as_secs(),
            "ctl": u8::from(self.control_ready.load(Ordering::Relaxed)),
        })
        .to_string();
        let mut cmd = self.cmd()?;
        bounded(
            redis::pipe()
                .cmd("SET")
                .arg(lease_key(self.prefix, &self.node.id))
                .arg(1)
                .arg("PX")
                .arg(self.lease_ms())
                .ignore()
                .hset(nodes_key(self.prefix), &self.node.id, entry)
                .ignore()
                .exec_async(&mut cmd),
        )
        .await?;
        if self.cluster.is_some() {
            let v: Value =
                bounded(redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut cmd)).await?;
            let ranges = slot_ranges(&v);
            if !ranges.is_empty() {
                let masters: HashSet<&str> = ranges.iter().map(|r| r.master.as_str()).collect();
                self.down
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|m, _| masters.contains(m.as_str()));
                let old = std::mem::replace(
                    &mut *self.slots.write().unwrap_or_else(|e| e.into_inner()),
                    ranges.clone(),
                );
                self.note_moved_slots(&old, &ranges);
            }
        }
        if self.sentinel.is_some() {
            // Still the master (a demoted one answers reads), and with how many replicas.
            match topology::replication(&mut cmd).await? {
                Some((true, replicas)) => {
                    if self.replicas.swap(replicas, Ordering::Relaxed) > 0 && replicas == 0 {
                        self.hold_publishes();
                    }
                }
                _ => {
                    self.suspect_failover();
                    return Err(unavailable("the Redis in use is no longer a master"));
                }
            }
        }
        Ok(())
    }

    /// Listens to the control channels (after every (re)connect), and advertises it in the
    /// registry the first time.
    async fn subscribe_control(&self) -> Result<(), BrokerError> {
        // One name per command: they hash to different slots.
        self.subscribe_names(std::slice::from_ref(&self.control))
            .await?;
        self.subscribe_names(std::slice::from_ref(&self.answers))
            .await?;
        if !self.control_ready.swap(true, Ordering::Relaxed) {
            self.heartbeat().await?;
        }
        Ok(())
    }

    /// The live nodes, each with whether it answers control traffic.
    async fn registry(&self) -> Result<Vec<(NodeInfo, bool)>, BrokerError> {
        let mut cmd = self.cmd()?;
        let raw: HashMap<String, String> = bounded(
            redis::cmd("HGETALL")
                .arg(nodes_key(self.prefix))
                .query_async(&mut cmd),
        )
        .await?;
        let ids: Vec<String> = raw.keys().cloned().collect();
        let alive = self.alive(&ids).await?;
        Ok(raw
            .into_iter()
            .filter(|(id, _)| alive.contains(id))
            .filter_map(|(_, json)| {
                let v: serde_json::Value = serde_json::from_str(&json).ok()?;
                let info = NodeInfo {
                    id: v["id"].as_str()?.to_string(),
                    name: v["name"].as_str().unwrap_or_default().to_string(),
                    url: v["url"].as_str().unwrap_or_default().to_string(),
                    num_clients: v["num_clients"].as_u64().unwrap_or(0) as usize,
                    num_channels: v["num_channels"].as_u64().unwrap_or(0) as usize,
                    uptime_secs: v["uptime"].as_u64().unwrap_or(0),
                };
                Some((info, v["ctl"].as_u64().unwrap_or(0) >= 1))
            })
            .collect())
    }

    /// Publishes a control frame on `channel`.
    async fn send_control(&self, channel: &str, frame: &ControlFrame) -> Result<(), BrokerError> {
        let mut cmd = self.cmd()?;
        bounded(
            redis::cmd(self.publish_cmd())
                .arg(channel)
                .arg(codec::encode_control(frame))
                .exec_async(&mut cmd),
        )
        .await
    }

    /// A frame from a control channel.
    fn on_control_frame(self: &Arc<Self>, handler: &Arc<dyn BrokerHandler>, msg: &Bytes) {
        let Some(frame) = codec::decode_control(msg) else {
            tracing::debug!("unknown control message ignored");
            return;
        };
        match frame {
            ControlFrame::Command { origin, body } => {
                // The sender applied it itself.
                if origin != self.node.id {
                    handler.on_control(body);
                }
            }
            ControlFrame::Question { origin, id, body } => {
                if origin == self.node.id {
                    return;
                }
                // Answered on a task of its own: computing the answer and publishing it
                // must not delay the publications behind it on this connection.
                let inner = Arc::clone(self);
                let handler = Arc::clone(handler);
                tokio::spawn(async move {
                    let answer = ControlFrame::Answer {
                        node: inner.node.id.clone(),
                        id,
                        body: handler.on_survey(body),
                    };
                    if let Err(e) = inner
                        .send_control(&answers_channel(inner.prefix, &origin), &answer)
                        .await
                    {
                        tracing::debug!(node = %origin, "survey answer not sent: {e}");
                    }
                });
            }
            ControlFrame::Answer { node, id, body } => {
                let surveys = self.surveys.lock().unwrap_or_else(|e| e.into_inner());
                // A survey that gave up already has no entry: the late answer is dropped.
                if let Some(tx) = surveys.get(&id) {
                    let _ = tx.send((node, body));
                }
            }
        }
    }

    /// After a reconnect: subscribe again and report every channel's top.
    async fn resubscribe(&self) -> Result<(), BrokerError> {
        let channels: Vec<String> = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        let before = self.live.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for chunk in channels.chunks(256) {
            self.subscribe_raw(chunk).await?;
        }
        for channel in &channels {
            self.resync_channel(channel, before.get(channel).copied())
                .await?;
        }
        Ok(())
    }

    /// Reports `channel`'s top to the node (which fills what it missed below it) and writes
    /// this node's presence entries of the channel again. `before` is the last position
    /// handed on live before the subscription was made again.
    async fn resync_channel(
        &self,
        channel: &str,
        before: Option<StreamPosition>,
    ) -> Result<(), BrokerError> {
        let Some(handler) = self.handler.get() else {
            return Ok(());
        };
        {
            let mut cmd = self.cmd()?;
            let (epoch, offset): (Option<String>, Option<u64>) = bounded(
                redis::cmd("HMGET")
                    .arg(meta_key(channel))
                    .arg("e")
                    .arg("o")
                    .query_async(&mut cmd),
            )
            .await?;
            let top = StreamPosition::new(
                offset.unwrap_or(0),
                epoch
                    .as_deref()
                    .map(Epoch::from_client)
                    .unwrap_or(Epoch::EMPTY),
            );
            let top = {
                let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
                // Publications that arrived on the new subscription while the top was read
                // are newer than that top: the store has them (it did not go back).
                let top = match live.get(channel).copied() {
                    Some(now)
                        if Some(now) != before
                            && now.epoch == top.epoch
                            && now.offset > top.offset =>
                    {
                        now
                    }
                    _ => top,
                };
                // Everything up to `top` is delivered by the node's fill from now on: the
                // same offsets arriving live (sent again by a new master) are dropped.
                live.insert(channel.to_string(), top);
                top
            };
            handler.on_resync(channel, top);
            let members = handler.local_presence(channel);
            if !members.is_empty() {
                self.write_presence(channel, &members).await?;
            }
        }
        self.rewrite_occupancy().await
    }

    /// Writes this node's presence entries of `channel` (one round trip).
    async fn write_presence(
        &self,
        channel: &str,
        members: &[ClientInfo],
    ) -> Result<(), BrokerError> {
        let node = &self.node.id;
        let mut cmd = self.cmd()?;
        let mut pipe = redis::pipe();
        if self.cluster.is_some() {
            // The node's channel set is in another slot than the channel's presence: noted
            // first, so the entries can always be found for reaping.
            bounded(
                redis::cmd("SADD")
                    .arg(node_channels_key(self.prefix, node))
                    .arg(channel)
                    .exec_async(&mut cmd),
            )
            .await?;
        } else {
            pipe.atomic();
            pipe.sadd(node_channels_key(self.prefix, node), channel)
                .ignore();
        }
        for info in members {
            let mut value = format!("{node}\n").into_bytes();
            value.extend_from_slice(&codec::encode_info(info));
            pipe.hset(presence_key(channel), &info.client, value)
                .ignore();
        }
        bounded(pipe.exec_async(&mut cmd)).await
    }

    /// Removes dead node `dead`'s occupancy entries, telling [`OccupancyLost`] what
    /// flipped (each flip is seen by one node only: the script's).
    async fn reap_occupancy(&self, dead: &str) -> Result<(), BrokerError> {
        let mut cmd = self.cmd()?;
        let channels: Vec<String> = bounded(
            redis::cmd("SMEMBERS")
                .arg(node_occupancy_key(self.prefix, dead))
                .query_async(&mut cmd),
        )
        .await?;
        for channel in &channels {
            let (vacated, gone): (i64, Vec<String>) = bounded(
                self.reap_occupancy
                    .key(occupancy_key(channel))
                    .key(users_key(channel))
                    .key(node_users_key(channel, dead))
                    .arg(dead)
                    .invoke_async(&mut cmd),
            )
            .await?;
            if vacated == 1 || !gone.is_empty() {
                if let Some(report) = self.occupancy_lost.get() {
                    report(channel, vacated == 1, &gone);
                }
            }
        }
        Ok(())
    }

    /// Notes `channel` in this node's occupancy index (before any entry is written, so a
    /// survivor can always find what to reap).
    async fn index_occupancy(&self, cmd: &mut Conn, channel: &str) -> Result<(), BrokerError> {
        bounded(
            redis::cmd("SADD")
                .arg(node_occupancy_key(self.prefix, &self.node.id))
                .arg(channel)
                .exec_async(cmd),
        )
        .await
    }

    /// Runs the occupancy script for this node; answers whether the cluster flipped.
    async fn occupy(&self, channel: &str, occupied: bool) -> Result<bool, BrokerError> {
        let mut cmd = self.cmd()?;
        if occupied {
            self.index_occupancy(&mut cmd, channel).await?;
        }
        let flipped: i64 = bounded(
            self.occupy
                .key(occupancy_key(channel))
                .arg(&self.node.id)
                .arg(if occupied { "1" } else { "0" })
                .invoke_async(&mut cmd),
        )
        .await?;
        Ok(flipped == 1)
    }

    /// Runs the user script for this node; answers whether the cluster flipped.
    async fn occupy_user(
        &self,
        channel: &str,
        user: &str,
        present: bool,
    ) -> Result<bool, BrokerError> {
        let mut cmd = self.cmd()?;
        if present {
            self.index_occupancy(&mut cmd, channel).await?;
        }
        let flipped: i64 = bounded(
            self.user
                .key(users_key(channel))
                .key(node_users_key(channel, &self.node.id))
                .arg(user)
                .arg(if present { "1" } else { "0" })
                .invoke_async(&mut cmd),
        )
        .await?;
        Ok(flipped == 1)
    }

    /// Drops `channel` from this node's occupancy index once the node holds nothing in it,
    /// so the index lists live channels only.
    async fn unindex_occupancy(&self, channel: &str) -> Result<(), BrokerError> {
        let idle = {
            let o = self.occupancy.lock().unwrap_or_else(|e| e.into_inner());
            !o.channels.contains(channel) && !o.users.contains_key(channel)
        };
        if !idle {
            return Ok(());
        }
        let mut cmd = self.cmd()?;
        bounded(
            redis::cmd("SREM")
                .arg(node_occupancy_key(self.prefix, &self.node.id))
                .arg(channel)
                .exec_async(&mut cmd),
        )
        .await
    }

    /// Writes this node's occupancy entries again (after Redis came back, possibly empty);
    /// flips seen now are not reported: they are not news.
    async fn rewrite_occupancy(&self) -> Result<(), BrokerError> {
        let (channels, users) = {
            let o = self.occupancy.lock().unwrap_or_else(|e| e.into_inner());
            (
                o.channels.iter().cloned().collect::<Vec<_>>(),
                o.users
                    .iter()
                    .flat_map(|(c, us)| us.iter().map(move |u| (c.clone(), u.clone())))
                    .collect::<Vec<_>>(),
            )
        };
        for channel in &channels {
            self.occupy(channel, true).await?;
        }
        for (channel, user) in &users {
            self.occupy_user(channel, user, true).await?;
        }
        Ok(())
    }

    /// Which of `nodes` hold a lease.
    async fn alive(&self, nodes: &[String]) -> Result<HashSet<String>, BrokerError> {
        if nodes.is_empty() {
            return Ok(HashSet::new());
        }
        let mut pipe = redis::pipe();
        for n in nodes {
            pipe.exists(lease_key(self.prefix, n));
        }
        let mut cmd = self.cmd()?;
        let flags: Vec<bool> = bounded(pipe.query_async(&mut cmd)).await?;
        Ok(nodes
            .iter()
            .zip(flags)
            .filter(|(_, alive)| *alive)
            .map(|(n, _)| n.clone())
            .collect())
    }

    /// Removes the registry entries and presence of nodes whose lease expired, sending
    /// leave events for their members. One node does it per dead node (a short lock).
    async fn reap(&self) -> Result<(), BrokerError> {
        let mut cmd = self.cmd()?;
        let ids: Vec<String> = bounded(
            redis::cmd("HKEYS")
                .arg(nodes_key(self.prefix))
                .query_async(&mut cmd),
        )
        .await?;
        let alive = self.alive(&ids).await?;
        for dead in ids
            .iter()
            .filter(|id| !alive.contains(*id) && **id != self.node.id)
        {
            let won: Option<String> = bounded(
                redis::cmd("SET")
                    .arg(format!("{}reap:{dead}", self.prefix))
                    .arg(&self.node.id)
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000)
                    .query_async(&mut cmd),
            )
            .await?;
            if won.is_none() {
                continue;
            }
            let channels: Vec<String> = bounded(
                redis::cmd("SMEMBERS")
                    .arg(node_channels_key(self.prefix, dead))
                    .query_async(&mut cmd),
            )
            .await?;
            let mut removed = 0usize;
            for channel in &channels {
                let entries: HashMap<String, Vec<u8>> = bounded(
                    redis::cmd("HGETALL")
                        .arg(presence_key(channel))
                        .query_async(&mut cmd),
                )
                .await?;
                for (client, value) in entries {
                    let value = Bytes::from(value);
                    let Some((owner, info)) = split_entry(&value) else {
                        continue;
                    };
                    if owner != dead.as_str() {
                        continue;
                    }
                    let gone: i64 = bounded(
                        redis::cmd("HDEL")
                            .arg(presence_key(channel))
                            .arg(&client)
                            .query_async(&mut cmd),
                    )
                    .await?;
                    if gone == 1 {
                        removed += 1;
                        let mut msg = format!("l{dead}\n").into_bytes();
                        msg.extend_from_slice(&info);
                        let _: () = bounded(
                            redis::cmd(self.publish_cmd())
                                .arg(pubsub_channel(channel))
                                .arg(msg)
                                .query_async(&mut cmd),
                        )
                        .await?;
                    }
                }
            }
            self.reap_occupancy(dead).await?;
            let _: () = bounded(
                redis::pipe()
                    .del(node_channels_key(self.prefix, dead))
                    .del(node_occupancy_key(self.prefix, dead))
                    .hdel(nodes_key(self.prefix), dead)
                    .query_async(&mut cmd),
            )
            .await?;
            tracing::info!(node = %dead, presence_entries = removed, "removed a node whose lease expired");
        }
        Ok(())
    }

    /// Whether this node still listens to the pub/sub name `name` (a channel it has members
    /// in, or one of its control channels).
    fn still_wanted(&self, name: &str) -> bool {
        if name == self.control || name == self.answers {
            return self.control_ready.load(Ordering::Relaxed);
        }
        channel_of(name.as_bytes()).is_some_and(|c| {
            self.channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(c)
        })
    }

    /// A new cluster layout: the subscriptions of every name whose slot now has another
    /// master are made again. Redis ends them with a `SUNSUBSCRIBE` push when the slot
    /// leaves its old owner; this catches a push that was missed (a connection replaced
    /// meanwhile), and a failover.
    fn note_moved_slots(&self, old: &[SlotRange], new: &[SlotRange]) {
        if old.is_empty() {
            return;
        }
        let owner = |ranges: &[SlotRange], slot: u16| {
            ranges
                .iter()
                .find(|r| r.start <= slot && slot <= r.end)
                .map(|r| r.master.clone())
        };
        let mut names: Vec<String> = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| pubsub_channel(c))
            .collect();
        if self.control_ready.load(Ordering::Relaxed) {
            names.push(self.control.clone());
            names.push(self.answers.clone());
        }
        let changed: Vec<String> = names
            .into_iter()
            .filter(|n| {
                let slot = slot_number(n);
                owner(old, slot) != owner(new, slot)
            })
            .collect();
        if !changed.is_empty() {
            tracing::info!(
                subscriptions = changed.len(),
                "slots moved to other masters; subscribing again there"
            );
            self.moved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(changed);
        }
    }

    /// Subscribes again to the names whose slot moved (on their new owner: the cluster
    /// connection follows `MOVED`), then reports each channel's top, so the node fills
    /// from history what was published while it listened to the old owner (during a
    /// migration a publication runs on the slot's new owner as soon as its keys are there).
    /// Names that fail stay for the next round.
    async fn resubscribe_moved(&self) {
        let names: Vec<String> = self
            .moved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let mut failed = Vec::new();
        for name in names {
            if !self.still_wanted(&name) {
                continue;
            }
            let before = channel_of(name.as_bytes()).and_then(|c| {
                self.live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(c)
                    .copied()
            });
            let done = match self.subscribe_names(std::slice::from_ref(&name)).await {
                Ok(()) => match channel_of(name.as_bytes()) {
                    Some(channel) => self.resync_channel(channel, before).await,
                    None => Ok(()),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                tracing::debug!(
                    name,
                    "subscription on the slot's new owner not made yet: {e}"
                );
                failed.push(name);
            }
        }
        if !failed.is_empty() {
            self.moved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(failed);
        }
    }

    /// Hands one push from the subscription connection to the node.
    fn on_push(self: &Arc<Self>, push: PushInfo) {
        match push.kind {
            PushKind::Disconnection => {
                self.connected.store(false, Ordering::Relaxed);
                self.resync.store(true, Ordering::Relaxed);
                self.wake.notify_one();
            }
            PushKind::SUnsubscribe => {
                // Redis ends the sharded subscriptions of a slot that moves to another
                // master. Ours ends with our own `SUNSUBSCRIBE` only after the channel left
                // `channels`: one still there was moved, and is subscribed again.
                let Some(name) = push.data.first().and_then(bytes_of) else {
                    return;
                };
                let Ok(name) = std::str::from_utf8(&name) else {
                    return;
                };
                if self.still_wanted(name) {
                    tracing::info!(
                        name,
                        "Redis ended a sharded subscription (its slot moved); subscribing again"
                    );
                    self.moved
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name.to_string());
                    self.wake.notify_one();
                }
            }
            PushKind::Message | PushKind::SMessage => {
                let (Some(ch), Some(msg)) = (push.data.first(), push.data.get(1)) else {
                    return;
                };
                let (Some(ch), Some(msg)) = (bytes_of(ch), bytes_of(msg)) else {
                    return;
                };
                let Some(handler) = self.handler.get() else {
                    return;
                };
                if ch == self.control.as_bytes() || ch == self.answers.as_bytes() {
                    self.on_control_frame(handler, &msg);
                    return;
                }
                let Some(channel) = channel_of(&ch) else {
                    return;
                };
                self.dispatch(handler.as_ref(), channel, msg);
            }
            _ => {}
        }
    }

    fn dispatch(&self, handler: &dyn BrokerHandler, channel: &str, msg: Bytes) {
        match msg.first() {
            Some(b'p') => {
                let Some((offset, rest)) = split_line(&msg.slice(1..)) else {
                    return;
                };
                let Some((epoch, blob)) = split_line(&rest) else {
                    return;
                };
                let offset: Option<u64> = std::str::from_utf8(&offset)
                    .ok()
                    .and_then(|s| s.parse().ok());
                let (Some(offset), Some(env)) = (offset, codec::decode(&blob)) else {
                    tracing::warn!(channel, "undecodable publication from Redis ignored");
                    return;
                };
                let epoch = Epoch::from_client(std::str::from_utf8(&epoch).unwrap_or(""));
                {
                    // One master sends a channel's publications in offset order; an offset at
                    // or below the last one is one sent again (by a new master that did not
                    // know the old one had sent it).
                    let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
                    match live.get_mut(channel) {
                        Some(last) if last.epoch == epoch && offset <= last.offset => {
                            tracing::debug!(channel, offset, "publication sent again dropped");
                            return;
                        }
                        Some(last) => *last = StreamPosition::new(offset, epoch),
                        None => {
                            live.insert(channel.to_string(), StreamPosition::new(offset, epoch));
                        }
                    }
                }
                let exclude = if env.origin == self.node.id {
                    env.exclude
                } else {
                    None
                };
                handler.on_publication(Arc::new(publication(channel, offset, epoch, env)), exclude);
            }
            Some(kind @ (b'j' | b'l')) => {
                let join = *kind == b'j';
                let Some((origin, blob)) = split_line(&msg.slice(1..)) else {
                    return;
                };
                // Our own members' events were delivered locally by the hub already.
                if origin == self.node.id.as_bytes() {
                    return;
                }
                if let Some(info) = codec::decode_info(&blob) {
                    handler.on_member_event(channel, join, info);
                }
            }
            _ => {}
        }
    }
}

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag (the first non-empty `{…}`), or
/// of the whole key, modulo 16384.
fn slot_number(key: &str) -> u16 {
    let k = key.as_bytes();
    let tagged = k
        .iter()
        .position(|&c| c == b'{')
        .and_then(|open| {
            let len = k[open + 1..].iter().position(|&c| c == b'}')?;
            (len > 0).then(|| &k[open + 1..open + 1 + len])
        })
        .unwrap_or(k);
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, …] (master), [host, port, …]
/// (replicas)…], …]`.
fn slot_ranges(v: &Value) -> Vec<SlotRange> {
    array_of(v)
        .iter()
        .filter_map(|range| {
            let r = array_of(range);
            let start = u16::try_from(u64_of(r.first()?)?).ok()?;
            let end = u16::try_from(u64_of(r.get(1)?)?).ok()?;
            let master = array_of(r.get(2)?);
            let host = bytes_of(master.first()?)?;
            let port = u64_of(master.get(1)?)?;
            Some(SlotRange {
                start,
                end,
                master: format!("{}:{port}", String::from_utf8_lossy(&host)),
                replicas: r.len().saturating_sub(3),
            })
        })
        .collect()
}

/// `a\nrest` → (`a`, `rest`).
fn split_line(b: &Bytes) -> Option<(Bytes, Bytes)> {
    let i = b.iter().position(|&c| c == b'\n')?;
    Some((b.slice(..i), b.slice(i + 1..)))
}

/// A presence entry's owner node and encoded info.
fn split_entry(b: &Bytes) -> Option<(String, Bytes)> {
    let (node, info) = split_line(b)?;
    Some((String::from_utf8(node.to_vec()).ok()?, info))
}

/// The maintenance task: heartbeat, reconnect + resync, reaping. Also drains the
/// subscription pushes. Ends when the broker is dropped.
async fn maintain(weak: std::sync::Weak<Inner>) {
    let Some(mut pushes) = weak
        .upgrade()
        .and_then(|i| i.pushes.lock().unwrap_or_else(|e| e.into_inner()).take())
    else {
        return;
    };
    // Pushes are handled on their own task so a slow Redis command here never delays
    // delivery of publications.
    let push_weak = weak.clone();
    tokio::spawn(async move {
        while let Some(push) = pushes.recv().await {
            let Some(inner) = push_weak.upgrade() else {
                return;
            };
            inner.on_push(push);
        }
    });
    let mut backoff = Duration::from_millis(100);
    let mut reap_due = Instant::now();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let period = inner.lease / 3;
        if let Some(spec) = &inner.cluster {
            let none = inner
                .conns
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_none();
            if none {
                match Conns::cluster(spec, &inner.tls, inner.push_tx.clone()).await {
                    Ok(conns) => {
                        *inner.conns.write().unwrap_or_else(|e| e.into_inner()) = Some(conns);
                    }
                    Err(e) => tracing::debug!("Redis Cluster not reached yet: {e}"),
                }
            }
        }
        if inner.reresolve.swap(false, Ordering::Relaxed) && inner.sentinel.is_some() {
            match inner.follow_master().await {
                Ok(true) => {
                    // New connections: nothing is subscribed on them yet.
                    inner.reachable.store(false, Ordering::Relaxed);
                    inner.connected.store(false, Ordering::Relaxed);
                    inner.resync.store(true, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!("Redis master not resolved: {e}");
                    inner.reresolve.store(true, Ordering::Relaxed);
                }
            }
        }
        let ok = match inner.heartbeat().await {
            Ok(()) => {
                inner.reachable.store(true, Ordering::Relaxed);
                let mut ok = true;
                if !inner.connected.load(Ordering::Relaxed) || inner.resync.load(Ordering::Relaxed)
                {
                    // (Re)connected: make the subscription connection answer too, then
                    // restore every subscription. `resync` is cleared first so a
                    // disconnect during the restore triggers another one.
                    let was_resync = inner.resync.swap(false, Ordering::Relaxed);
                    let ping = match inner.sub() {
                        Ok(mut sub) => bounded(redis::cmd("PING").exec_async(&mut sub)).await,
                        Err(e) => Err(e),
                    };
                    let restored = match ping {
                        Ok(()) => match inner.subscribe_control().await {
                            Ok(()) if was_resync => inner.resubscribe().await,
                            other => other,
                        },
                        other => other,
                    };
                    if let Err(e) = restored {
                        tracing::warn!("Redis subscriptions not restored yet: {e}");
                        inner.resync.store(true, Ordering::Relaxed);
                        ok = false;
                    } else {
                        if was_resync {
                            tracing::info!("Redis connection restored; subscriptions restored");
                        }
                        inner.connected.store(true, Ordering::Relaxed);
                    }
                }
                if ok && inner.connected.load(Ordering::Relaxed) {
                    inner.resubscribe_moved().await;
                }
                if ok && Instant::now() >= reap_due {
                    reap_due = Instant::now() + period;
                    if let Err(e) = inner.reap().await {
                        tracing::debug!("reaping dead nodes failed: {e}");
                    }
                }
                ok
            }
            Err(e) => {
                inner.reachable.store(false, Ordering::Relaxed);
                inner.suspect_failover();
                if inner.connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!("Redis unreachable: {e}");
                }
                // Whatever was subscribed may be gone when it comes back.
                inner.resync.store(true, Ordering::Relaxed);
                false
            }
        };
        let wait = if ok {
            backoff = Duration::from_millis(100);
            period
        } else {
            backoff = (backoff * 2).min(MAX_BACKOFF);
            backoff
        };
        let woken = async {
            inner.wake.notified().await;
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = woken => {}
        }
        drop(inner);
    }
}

impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn node_id(&self) -> &str {
        &self.inner.node.id
    }

    fn status(&self) -> BrokerStatus {
        let inner = &self.inner;
        let (kind, masters) = if inner.cluster.is_some() {
            let slots = inner.slots.read().unwrap_or_else(|e| e.into_inner());
            let mut masters: Vec<String> = slots.iter().map(|r| r.master.clone()).collect();
            masters.sort();
            masters.dedup();
            ("redis-cluster", masters)
        } else if inner.sentinel.is_some() {
            ("redis-sentinel", inner.master_addr().into_iter().collect())
        } else {
            ("redis", Vec::new())
        };
        BrokerStatus {
            kind,
            connected: inner.connected.load(Ordering::Relaxed),
            masters,
        }
    }

    fn start(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ChannelOptions,
        p: BrokerPublication,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            inner.ready_to_publish(channel)?;
            let env = Envelope {
                origin: inner.node.id.clone(),
                exclude: p.exclude,
                publisher: p.publisher,
                info: p.info.map(|i| (*i).clone()),
                payload: p.payload,
            };
            let size = if options.history_enabled() {
                options.history_size
            } else {
                0
            };
            let wait_ms = inner.wait_ms(channel);
            // Sent live by the script, or (with history, waiting for a replica) only once
            // a replica confirmed it.
            let deferred = wait_ms > 0 && size > 0;
            let mut cmd = inner.cmd()?;
            let (offset, epoch): (u64, String) = inner.note_for(
                channel,
                bounded(
                    inner
                        .publish
                        .key(meta_key(channel))
                        .key(stream_key(channel))
                        .arg(pubsub_channel(channel))
                        .arg(codec::encode(&env))
                        .arg(new_epoch())
                        .arg(size)
                        .arg(ms(options.history_ttl))
                        .arg(ms(meta_ttl(options)))
                        .arg(inner.publish_cmd())
                        .arg(if deferred { "1" } else { "0" })
                        .invoke_async(&mut cmd),
                )
                .await,
            )?;
            inner.flushed(&mut cmd, channel, wait_ms).await?;
            if deferred {
                inner.release(&mut cmd, channel, offset, &epoch).await?;
            }
            Ok(StreamPosition::new(offset, Epoch::from_client(&epoch)))
        })
    }

    fn publish_batch<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ChannelOptions,
        publications: Vec<BrokerPublication>,
    ) -> BoxFuture<'a, Result<Vec<StreamPosition>, BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            if publications.is_empty() {
                return Ok(Vec::new());
            }
            inner.ready_to_publish(channel)?;
            let size = if options.history_enabled() {
                options.history_size
            } else {
                0
            };
            let wait_ms = inner.wait_ms(channel);
            let deferred = wait_ms > 0 && size > 0;
            // One pipeline of EVALs: Redis runs them in order, one round trip for all.
            // (EVAL rather than EVALSHA: a NOSCRIPT retry inside a pipeline could reorder.)
            let mut pipe = redis::pipe();
            for p in publications {
                let env = Envelope {
                    origin: inner.node.id.clone(),
                    exclude: p.exclude,
                    publisher: p.publisher,
                    info: p.info.map(|i| (*i).clone()),
                    payload: p.payload,
                };
                pipe.cmd("EVAL")
                    .arg(PUBLISH_LUA)
                    .arg(2)
                    .arg(meta_key(channel))
                    .arg(stream_key(channel))
                    .arg(pubsub_channel(channel))
                    .arg(codec::encode(&env))
                    .arg(new_epoch())
                    .arg(size)
                    .arg(ms(options.history_ttl))
                    .arg(ms(meta_ttl(options)))
                    .arg(inner.publish_cmd())
                    .arg(if deferred { "1" } else { "0" });
            }
            let mut cmd = inner.cmd()?;
            let answers: Vec<(u64, String)> =
                inner.note_for(channel, bounded(pipe.query_async(&mut cmd)).await)?;
            inner.flushed(&mut cmd, channel, wait_ms).await?;
            if let (true, Some((last, epoch))) = (deferred, answers.last()) {
                inner.release(&mut cmd, channel, *last, epoch).await?;
            }
            Ok(answers
                .into_iter()
                .map(|(offset, epoch)| StreamPosition::new(offset, Epoch::from_client(&epoch)))
                .collect())
        })
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            if !self.inner.connected.load(Ordering::Relaxed) {
                return Err(unavailable("not connected to Redis"));
            }
            self.inner.subscribe_raw(&[channel.to_string()]).await?;
            self.inner
                .channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(channel.to_string());
            Ok(())
        })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.inner
                .channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(channel);
            self.inner
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(channel);
            let mut sub = self.inner.sub()?;
            let cmd = if self.inner.sharded.load(Ordering::Relaxed) {
                "SUNSUBSCRIBE"
            } else {
                "UNSUBSCRIBE"
            };
            bounded(
                redis::cmd(cmd)
                    .arg(pubsub_channel(channel))
                    .exec_async(&mut sub),
            )
            .await
        })
    }

    fn read_stream<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ChannelOptions,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<StreamSlice, BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            let since = query.since.map(|s| s.offset);
            let (dir, start, end) = match (query.reverse, since) {
                (false, Some(o)) => ("f", format!("(0-{o}"), "+".to_string()),
                (false, None) => ("f", "-".to_string(), "+".to_string()),
                (true, Some(o)) => ("r", format!("(0-{o}"), "-".to_string()),
                (true, None) => ("r", "+".to_string(), "-".to_string()),
            };
            let count: i64 = match query.limit {
                Some(n) => i64::try_from(n).unwrap_or(i64::MAX),
                None => -1,
            };
            let mut cmd = inner.cmd()?;
            let v: Value = bounded(
                inner
                    .read
                    .key(meta_key(channel))
                    .key(stream_key(channel))
                    .arg(new_epoch())
                    .arg(ms(meta_ttl(options)))
                    .arg(dir)
                    .arg(start)
                    .arg(end)
                    .arg(count)
                    .invoke_async(&mut cmd),
            )
            .await?;
            let parts = array_of(&v);
            let bad = || BrokerError::Protocol("unexpected answer to a history read".into());
            let epoch = parts.first().and_then(bytes_of).ok_or_else(bad)?;
            let epoch = Epoch::from_client(std::str::from_utf8(&epoch).unwrap_or(""));
            let top = parts.get(1).and_then(u64_of).ok_or_else(bad)?;
            let oldest = parts
                .get(2)
                .and_then(|v| entries_of(v).first().map(|(o, _)| *o));
            let publications = parts
                .get(3)
                .map(entries_of)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(offset, blob)| {
                    let env = codec::decode(&blob)?;
                    Some(Arc::new(publication(channel, offset, epoch, env)))
                })
                .collect();
            let start = parts.get(4).and_then(u64_of).unwrap_or(0);
            Ok(StreamSlice {
                publications,
                top: StreamPosition::new(top, epoch),
                oldest,
                start,
            })
        })
    }

    fn remove_history<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut cmd = self.inner.cmd()?;
            let _: i64 = bounded(
                self.inner
                    .remove
                    .key(meta_key(channel))
                    .key(stream_key(channel))
                    .arg(new_epoch())
                    .arg(ms(meta_ttl(options)))
                    .invoke_async(&mut cmd),
            )
            .await?;
            Ok(())
        })
    }

    fn add_presence<'a>(
        &'a self,
        channel: &'a str,
        info: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.inner
                .write_presence(channel, std::slice::from_ref(&info))
                .await
        })
    }

    fn remove_presence<'a>(
        &'a self,
        channel: &'a str,
        client: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut cmd = self.inner.cmd()?;
            bounded(
                redis::cmd("HDEL")
                    .arg(presence_key(channel))
                    .arg(client)
                    .exec_async(&mut cmd),
            )
            .await
        })
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, ClientInfo>, BrokerError>> {
        Box::pin(async move {
            self.inner.ready_for_presence()?;
            let mut cmd = self.inner.cmd()?;
            let raw: HashMap<String, Vec<u8>> = bounded(
                redis::cmd("HGETALL")
                    .arg(presence_key(channel))
                    .query_async(&mut cmd),
            )
            .await?;
            let entries: Vec<(String, String, Bytes)> = raw
                .into_iter()
                .filter_map(|(client, v)| {
                    let (node, info) = split_entry(&Bytes::from(v))?;
                    Some((client, node, info))
                })
                .collect();
            // Entries of a node whose lease ended are hidden at once, before they are reaped.
            let nodes: Vec<String> = entries
                .iter()
                .map(|(_, n, _)| n.clone())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let alive = self.inner.alive(&nodes).await?;
            Ok(entries
                .into_iter()
                .filter(|(_, node, _)| alive.contains(node))
                .filter_map(|(client, _, info)| Some((client, codec::decode_info(&info)?)))
                .collect())
        })
    }

    fn member_event<'a>(
        &'a self,
        channel: &'a str,
        join: bool,
        info: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            let mut msg =
                format!("{}{}\n", if join { 'j' } else { 'l' }, inner.node.id).into_bytes();
            msg.extend_from_slice(&codec::encode_info(&info));
            let mut cmd = inner.cmd()?;
            bounded(
                redis::cmd(inner.publish_cmd())
                    .arg(pubsub_channel(channel))
                    .arg(msg)
                    .exec_async(&mut cmd),
            )
            .await
        })
    }

    fn occupancy<'a>(
        &'a self,
        channel: &'a str,
        occupied: bool,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(async move {
            {
                let mut o = self
                    .inner
                    .occupancy
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if occupied {
                    o.channels.insert(channel.to_string());
                } else {
                    o.channels.remove(channel);
                }
            }
            let flipped = self.inner.occupy(channel, occupied).await?;
            if !occupied {
                self.inner.unindex_occupancy(channel).await?;
            }
            Ok(flipped)
        })
    }

    fn user_occupancy<'a>(
        &'a self,
        channel: &'a str,
        user: &'a str,
        present: bool,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(async move {
            {
                let mut o = self
                    .inner
                    .occupancy
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if present {
                    o.users
                        .entry(channel.to_string())
                        .or_default()
                        .insert(user.to_string());
                } else if let Some(us) = o.users.get_mut(channel) {
                    us.remove(user);
                    if us.is_empty() {
                        o.users.remove(channel);
                    }
                }
            }
            let flipped = self.inner.occupy_user(channel, user, present).await?;
            if !present {
                self.inner.unindex_occupancy(channel).await?;
            }
            Ok(flipped)
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, BrokerError>> {
        Box::pin(async move {
            let mut nodes: Vec<NodeInfo> = self
                .inner
                .registry()
                .await?
                .into_iter()
                .map(|(info, _)| info)
                .collect();
            nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
            Ok(nodes)
        })
    }

    fn control(&self, command: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            if !inner.connected.load(Ordering::Relaxed) {
                return Err(unavailable("not connected to Redis"));
            }
            let frame = ControlFrame::Command {
                origin: inner.node.id.clone(),
                body: command,
            };
            inner.send_control(&inner.control, &frame).await
        })
    }

    fn survey(&self, request: Bytes) -> BoxFuture<'_, Result<Vec<SurveyAnswer>, BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            if !inner.connected.load(Ordering::Relaxed) {
                return Err(unavailable("not connected to Redis"));
            }
            let deadline = tokio::time::Instant::now() + SURVEY_WAIT;
            let mut waiting: HashSet<String> = inner
                .registry()
                .await?
                .into_iter()
                .filter(|(info, ctl)| *ctl && info.id != inner.node.id)
                .map(|(info, _)| info.id)
                .collect();
            if waiting.is_empty() {
                return Ok(Vec::new());
            }
            let id = inner.next_survey.fetch_add(1, Ordering::Relaxed);
            let (tx, mut rx) = mpsc::unbounded_channel();
            // Registered before the question goes out, so no answer can come first; removed
            // however this future ends (answered, timed out, or dropped by its caller).
            let _pending = Pending::register(inner, id, tx);
            let question = ControlFrame::Question {
                origin: inner.node.id.clone(),
                id,
                body: request,
            };
            inner.send_control(&inner.control, &question).await?;
            let mut answers: HashMap<String, Bytes> = HashMap::new();
            while !waiting.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((node, body))) => {
                        waiting.remove(&node);
                        answers.insert(node, body);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        let mut missing: Vec<String> = waiting.into_iter().collect();
                        missing.sort();
                        return Err(unavailable(format!(
                            "no answer in time from node(s) {}",
                            missing.join(", ")
                        )));
                    }
                }
            }
            Ok(answers
                .into_iter()
                .map(|(node, data)| SurveyAnswer { node, data })
                .collect())
        })
    }
}

/// A survey's entry in [`Inner::surveys`], removed when dropped.
struct Pending<'a> {
    inner: &'a Inner,
    id: u64,
}

impl<'a> Pending<'a> {
    fn register(inner: &'a Inner, id: u64, tx: mpsc::UnboundedSender<(String, Bytes)>) -> Self {
        inner
            .surveys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        Pending { inner, id }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.inner
            .surveys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_round_trip() {
        for name in ["room", "chat:1", "a}b", "x{y}"] {
            assert_eq!(channel_of(pubsub_channel(name).as_bytes()), Some(name));
        }
        assert_eq!(channel_of(b"other"), None);
        assert_eq!(meta_key("c"), "sb:{c}:m");
    }

    #[test]
    fn hash_slots_match_redis() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(slot_number("foo"), 12182);
        assert_eq!(slot_number("{user1000}.following"), slot_number("user1000"));
        assert_eq!(slot_number("foo{}{bar}"), slot_number("foo{}{bar}"));
        assert_eq!(
            slot_number(&meta_key("c")),
            slot_number(&pubsub_channel("c"))
        );
        assert_eq!(slot_number(&meta_key("c")), slot_number("c"));
        assert_eq!(
            slot_number(&lease_key(CLUSTER_PREFIX, "n1")),
            slot_number(&nodes_key(CLUSTER_PREFIX))
        );
    }

    #[test]
    fn epochs_and_ids_look_right() {
        let e = new_epoch();
        assert_eq!(e.len(), 8);
        assert!(e.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(new_node_id().len(), 16);
    }

    /// Records what the broker hands to the node.
    #[derive(Default)]
    struct Recorder {
        commands: Mutex<Vec<Bytes>>,
        offsets: Mutex<Vec<u64>>,
    }

    impl BrokerHandler for Recorder {
        fn on_publication(&self, p: Arc<Publication>, _: Option<switchboard_core::ConnId>) {
            self.offsets.lock().unwrap().push(p.offset);
        }
        fn on_member_event(&self, _: &str, _: bool, _: ClientInfo) {}
        fn on_resync(&self, _: &str, _: StreamPosition) {}
        fn local_stats(&self) -> (usize, usize) {
            (0, 0)
        }
        fn on_control(&self, command: Bytes) {
            self.commands.lock().unwrap().push(command);
        }
    }

    fn push(channel: &str, frame: &ControlFrame) -> PushInfo {
        PushInfo {
            kind: PushKind::SMessage,
            data: vec![
                Value::BulkString(channel.as_bytes().to_vec()),
                Value::BulkString(codec::encode_control(frame)),
            ],
        }
    }

    /// A broker whose connections stay lazy (nothing listens on port 1), with a recorder.
    fn idle_broker() -> (RedisBroker, Arc<Recorder>) {
        let broker = RedisBroker::start(RedisConfig {
            url: "redis://127.0.0.1:1/0".into(),
            node: NodeInfo {
                id: "me".into(),
                ..NodeInfo::default()
            },
            lease: DEFAULT_LEASE,
            tls: RedisTls::default(),
        })
        .unwrap();
        let recorder = Arc::new(Recorder::default());
        broker.start(recorder.clone());
        (broker, recorder)
    }

    fn live(channel: &str, offset: u64, epoch: &str) -> PushInfo {
        let env = Envelope {
            origin: "other".into(),
            exclude: None,
            publisher: None,
            info: None,
            payload: switchboard_core::Payload::text("x"),
        };
        let mut msg = format!("p{offset}\n{epoch}\n").into_bytes();
        msg.extend_from_slice(&codec::encode(&env));
        PushInfo {
            kind: PushKind::SMessage,
            data: vec![
                Value::BulkString(pubsub_channel(channel).into_bytes()),
                Value::BulkString(msg),
            ],
        }
    }

    #[tokio::test]
    async fn a_publication_sent_again_is_dropped_and_a_new_epoch_starts_over() {
        let (broker, recorder) = idle_broker();
        let inner = &broker.inner;
        for (offset, epoch) in [
            (1, "e1"),
            (2, "e1"),
            (2, "e1"),
            (1, "e1"),
            (3, "e1"),
            (1, "e2"),
        ] {
            inner.on_push(live("room", offset, epoch));
        }
        assert_eq!(*recorder.offsets.lock().unwrap(), vec![1, 2, 3, 1]);
        // After a resync at top 5, what arrives at or below it was filled by the node.
        inner.live.lock().unwrap().insert(
            "room".into(),
            StreamPosition::new(5, Epoch::from_client("e2")),
        );
        inner.on_push(live("room", 4, "e2"));
        inner.on_push(live("room", 6, "e2"));
        assert_eq!(*recorder.offsets.lock().unwrap(), vec![1, 2, 3, 1, 6]);
    }

    #[tokio::test]
    async fn a_subscription_redis_ended_is_made_again_only_while_listened_to() {
        let (broker, _) = idle_broker();
        let inner = &broker.inner;
        inner.channels.lock().unwrap().insert("kept".into());
        let ended = |name: String| PushInfo {
            kind: PushKind::SUnsubscribe,
            data: vec![Value::BulkString(name.into_bytes()), Value::Int(0)],
        };
        inner.on_push(ended(pubsub_channel("kept")));
        // Left already (our own SUNSUBSCRIBE), and the control channel before it is used.
        inner.on_push(ended(pubsub_channel("left")));
        inner.on_push(ended(inner.control.clone()));
        let moved: Vec<String> = inner.moved.lock().unwrap().iter().cloned().collect();
        assert_eq!(moved, vec![pubsub_channel("kept")]);

        // A new owner in the layout: the channels of the slot that changed hands.
        inner.moved.lock().unwrap().clear();
        let slot = slot_number(&pubsub_channel("kept"));
        let range = |start: u16, end: u16, master: &str| SlotRange {
            start,
            end,
            master: master.into(),
            replicas: 1,
        };
        let old = vec![range(0, 16383, "a:1")];
        inner.note_moved_slots(&old, &old);
        assert!(inner.moved.lock().unwrap().is_empty(), "nothing moved");
        let new = vec![range(0, slot, "b:2"), range(slot + 1, 16383, "a:1")]
            .into_iter()
            .filter(|r| r.start <= r.end)
            .collect::<Vec<_>>();
        inner.note_moved_slots(&old, &new);
        let moved: Vec<String> = inner.moved.lock().unwrap().iter().cloned().collect();
        assert_eq!(moved, vec![pubsub_channel("kept")]);
    }

    #[tokio::test]
    async fn control_frames_reach_the_handler_except_the_nodes_own_and_answers_reach_their_survey()
    {
        // Nothing listens on port 1: the connections stay lazy and nothing is sent.
        let broker = RedisBroker::start(RedisConfig {
            url: "redis://127.0.0.1:1/0".into(),
            node: NodeInfo {
                id: "me".into(),
                ..NodeInfo::default()
            },
            lease: DEFAULT_LEASE,
            tls: RedisTls::default(),
        })
        .unwrap();
        let recorder = Arc::new(Recorder::default());
        broker.start(recorder.clone());
        let inner = &broker.inner;
        let command = |origin: &str, body: &'static [u8]| ControlFrame::Command {
            origin: origin.into(),
            body: Bytes::from_static(body),
        };
        inner.on_push(push("sb:ctl", &command("me", b"mine")));
        inner.on_push(push("sb:ctl", &command("other", b"theirs")));
        // A frame kind from a later version, and a command on a channel's pub/sub name.
        inner.on_push(PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(b"sb:ctl".to_vec()),
                Value::BulkString(b"zother\nlater".to_vec()),
            ],
        });
        inner.on_push(push(&pubsub_channel("room"), &command("other", b"no")));
        assert_eq!(
            *recorder.commands.lock().unwrap(),
            vec![Bytes::from_static(b"theirs")],
            "only the other node's command, once"
        );

        let (tx, mut rx) = mpsc::unbounded_channel();
        let pending = Pending::register(inner, 41, tx);
        let answer = |id| ControlFrame::Answer {
            node: "other".into(),
            id,
            body: Bytes::from_static(b"{}"),
        };
        inner.on_push(push(&answers_channel(PREFIX, "me"), &answer(41)));
        inner.on_push(push(&answers_channel(PREFIX, "me"), &answer(40)));
        assert_eq!(
            rx.try_recv().unwrap(),
            ("other".to_string(), Bytes::from_static(b"{}"))
        );
        assert!(
            rx.try_recv().is_err(),
            "an answer to another survey is dropped"
        );
        drop(pending);
        assert!(inner.surveys.lock().unwrap().is_empty());
        // While Redis is unreachable both fail at once, temporarily.
        assert!(broker
            .control(Bytes::from_static(b"x"))
            .await
            .unwrap_err()
            .is_temporary());
        assert!(broker
            .survey(Bytes::from_static(b"x"))
            .await
            .unwrap_err()
            .is_temporary());
    }

    #[test]
    fn tls_settings_need_a_rediss_url_and_readable_files() {
        let with_ca = RedisTls {
            ca: Some("/nonexistent/ca.pem".into()),
            ..RedisTls::default()
        };
        let e = client("redis://127.0.0.1:1/0", &with_ca).unwrap_err();
        assert!(e.to_string().contains("need a rediss:// URL"), "{e}");
        let e = client("rediss://127.0.0.1:1/0", &with_ca).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        assert!(client("rediss://127.0.0.1:1/0", &RedisTls::default()).is_ok());
        let insecure = RedisTls {
            insecure: true,
            ..RedisTls::default()
        };
        assert!(client("rediss://127.0.0.1:1/0", &insecure).is_ok());
    }

    #[test]
    fn stream_entries_parse() {
        let v = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"0-7".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"d".to_vec()),
                Value::BulkString(b"blob".to_vec()),
            ]),
        ])]);
        assert_eq!(entries_of(&v), vec![(7, Bytes::from_static(b"blob"))]);
    }
}
