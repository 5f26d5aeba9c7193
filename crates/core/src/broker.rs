//! The broker: what several Switchboard nodes share so that they behave as one server.
//!
//! A [`Broker`] carries publications between nodes (fan-out across nodes), numbers them
//! (offsets and epochs of each channel's stream), stores history, keeps presence, and
//! knows which nodes are alive. It is object-safe and asynchronous through boxed futures,
//! so this crate stays free of sockets and runtimes: implementations that talk to a
//! network store (the Redis broker in `switchboard-server`) live in the server crate.
//!
//! Two implementations exist:
//!
//! * [`MemoryBroker`](crate::MemoryBroker) (the default): one node, nothing shared. The
//!   [`Node`](crate::Node) facade does not even go through it for publishing: it keeps the
//!   hub's synchronous path (offset, history and fan-out under the channel lock).
//! * `RedisBroker` (`switchboard_server::broker::redis`): every node publishes through
//!   Redis, which assigns offsets atomically with the history append, and every node
//!   listens (pub/sub) to the channels it has local members in.
//!
//! A shared broker hands what arrives from other nodes (and from this node, after the
//! round trip) to a [`BrokerHandler`], which the node implements: it queues publications
//! into local outboxes with [`Hub::deliver`](crate::Hub::deliver).
//!
//! Besides channels, a broker carries **control** traffic between nodes, opaque to it:
//! [`Broker::control`] sends a command to every *other* node (fire and forget; the caller
//! applies it locally itself, so no node applies it twice), and [`Broker::survey`] asks every
//! other live node a question and gathers their answers within a bounded wait. The server
//! uses them so that API methods acting on connections (`disconnect`, `subscribe`,
//! `unsubscribe`) and listing them (`channels`) cover the whole cluster.
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::history::{HistoryQuery, StreamPosition};
use crate::namespace::ChannelOptions;
use crate::presence::ClientInfo;
use crate::publication::{ConnId, Payload, Publication};

/// A boxed, sendable future: what the [`Broker`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a broker operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The shared store cannot be reached right now; retrying later may succeed.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The store answered something unexpected.
    #[error("broker error: {0}")]
    Protocol(String),
}

impl BrokerError {
    /// Whether the failure is temporary (the client should retry).
    pub fn is_temporary(&self) -> bool {
        matches!(self, BrokerError::Unavailable(_))
    }
}

/// Whether the broker works, for `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStatus {
    /// `memory`, `redis`, `redis-sentinel` or `redis-cluster`.
    pub kind: &'static str,
    /// Whether the shared store is reachable (always true in memory).
    pub connected: bool,
    /// The Redis masters in use (`host:port`) when the broker finds them itself (Sentinel,
    /// Cluster); empty otherwise.
    pub masters: Vec<String>,
}

/// One live node, as registered with the broker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// Unique id of the node process (random, new at every start).
    pub id: String,
    /// Human-readable name (`--node-name`).
    pub name: String,
    /// HTTP address other nodes and tools can reach this node at (`--advertise-url`).
    pub url: String,
    /// Connections registered on the node at its latest heartbeat.
    pub num_clients: usize,
    /// Channels alive on the node at its latest heartbeat.
    pub num_channels: usize,
    /// Seconds since the node started.
    pub uptime_secs: u64,
}

/// A publication on its way into a broker: the broker gives it its offset and epoch.
#[derive(Debug, Clone)]
pub struct BrokerPublication {
    /// The message.
    pub payload: Payload,
    /// The publishing client, when it asked to be shown.
    pub info: Option<Arc<ClientInfo>>,
    /// The publishing connection (meaningful on its own node only).
    pub publisher: Option<ConnId>,
    /// A connection of *this* node that must not receive it (raw rooms with `echo=false`).
    pub exclude: Option<ConnId>,
}

/// A window of a channel's stream, read from a broker.
#[derive(Debug, Clone, Default)]
pub struct StreamSlice {
    /// The publications asked for, in the order asked for.
    pub publications: Vec<Arc<Publication>>,
    /// The channel's top: latest offset and current epoch.
    pub top: StreamPosition,
    /// Offset of the oldest publication still stored, if any is.
    pub oldest: Option<u64>,
    /// The offset the current epoch's stream starts after: 0 for a stream that began with
    /// its epoch, the last offset before the removal for a stream whose history was removed
    /// (offsets go on across `history_remove`, the epoch changes). Nothing at or below it
    /// was ever published in this epoch.
    pub start: u64,
}

/// One node's answer to a [`Broker::survey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SurveyAnswer {
    /// The id of the node that answered.
    pub node: String,
    /// Its answer, as its [`BrokerHandler::on_survey`] gave it.
    pub data: Bytes,
}

/// What a shared broker reports to the node it runs in. Called from the broker's own
/// task, one message at a time and, per channel, in stream order; must not block.
pub trait BrokerHandler: Send + Sync {
    /// A publication arrived for a channel this node listens to. `exclude` is a local
    /// connection that must not receive it (set only for publications of this node).
    fn on_publication(&self, publication: Arc<Publication>, exclude: Option<ConnId>);
    /// A member of `channel` joined (`join`) or left on another node.
    fn on_member_event(&self, channel: &str, join: bool, info: ClientInfo);
    /// After the connection to the store was lost and restored, and the node listens to
    /// `channel` again: `top` is the channel's current top. Publications between the last
    /// one seen and `top` were missed while disconnected.
    fn on_resync(&self, channel: &str, top: StreamPosition);
    /// This node's presence entries of `channel` (its local members in a namespace with
    /// presence). After a reconnect the broker writes them again before it reports itself
    /// connected, so a store that came back empty never answers a presence query without
    /// them.
    fn local_presence(&self, _channel: &str) -> Vec<ClientInfo> {
        Vec::new()
    }
    /// Connections and channels on this node, for its registry entry.
    fn local_stats(&self) -> (usize, usize);
    /// Another node sent a control command ([`Broker::control`]). Called from the broker's
    /// task: must not block. Commands the handler does not understand are its to ignore.
    fn on_control(&self, command: Bytes) {
        let _ = command;
    }
    /// Another node asks a question ([`Broker::survey`]); the return value is this node's
    /// answer. Called on a task of its own (never the one delivering publications), but
    /// should still be quick: the asking node waits for every answer.
    fn on_survey(&self, request: Bytes) -> Bytes {
        let _ = request;
        Bytes::new()
    }
}

/// The operations several nodes share. See the module documentation.
///
/// Every method returns a boxed future so the trait is object-safe (`Arc<dyn Broker>`).
/// Futures must not wait on the store forever: a broker bounds each operation and fails
/// it with [`BrokerError::Unavailable`] when the store does not answer.
pub trait Broker: Send + Sync {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;
    /// Whether several nodes share this broker. When false, the node uses its hub alone
    /// (the synchronous single-node path) and only [`status`](Self::status) and
    /// [`nodes`](Self::nodes) are asked of the broker.
    fn is_shared(&self) -> bool;
    /// This node's id in the broker's registry.
    fn node_id(&self) -> &str;
    /// Whether the store is reachable right now.
    fn status(&self) -> BrokerStatus;
    /// Starts delivering to `handler` (once, before any subscription).
    fn start(&self, handler: Arc<dyn BrokerHandler>);
    /// Appends a publication to `channel`'s stream (and history, as `options` say) and
    /// sends it to every node listening to the channel. Returns its position.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ChannelOptions,
        publication: BrokerPublication,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>>;
    /// Publishes several publications of one channel, in this order, in as few round
    /// trips as the store allows; returns their positions. The default publishes them one
    /// after the other.
    fn publish_batch<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ChannelOptions,
        publications: Vec<BrokerPublication>,
    ) -> BoxFuture<'a, Result<Vec<StreamPosition>, BrokerError>> {
        Box::pin(async move {
            let mut positions = Vec::with_capacity(publications.len());
            for p in publications {
                positions.push(self.publish(channel, options, p).await?);
            }
            Ok(positions)
        })
    }
    /// Starts listening to `channel` on this node's behalf. Resolves once publications
    /// are guaranteed to arrive. Idempotent.
    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;
    /// Stops listening to `channel`.
    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;
    /// Reads `channel`'s stream: with `query.since`, the publications after (or, with
    /// `reverse`, before) its offset; its epoch is *not* checked here (the caller
    /// compares it with [`StreamSlice::top`]). Creates the channel's epoch when missing,
    /// so a position handed out stays valid.
    fn read_stream<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ChannelOptions,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<StreamSlice, BrokerError>>;
    /// Drops `channel`'s history and starts a new epoch; offsets continue.
    fn remove_history<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;
    /// Adds a presence entry for `info.client` in `channel`, owned by this node.
    fn add_presence<'a>(
        &'a self,
        channel: &'a str,
        info: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;
    /// Removes the presence entry of `client` in `channel`.
    fn remove_presence<'a>(
        &'a self,
        channel: &'a str,
        client: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;
    /// Presence of `channel` across live nodes: client id → info.
    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, ClientInfo>, BrokerError>>;
    /// Tells the other nodes that a member of `channel` joined or left here.
    fn member_event<'a>(
        &'a self,
        channel: &'a str,
        join: bool,
        info: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;
    /// Cluster-wide occupancy: this node's first local member of `channel` arrived
    /// (`occupied`) or its last one left. Answers whether the whole cluster flipped with it
    /// (no node had the channel before, or none has it now), so exactly one node reports a
    /// channel occupied or vacated. A broker shared by several nodes decides it atomically
    /// in the store and, when a node dies, lets a survivor report what the dead node held.
    /// The default, for one node, is that the node's flip is the cluster's.
    fn occupancy<'a>(
        &'a self,
        channel: &'a str,
        occupied: bool,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let _ = (channel, occupied);
        ready(Ok(true))
    }
    /// Like [`occupancy`](Self::occupancy) for one user of `channel`: this node's first
    /// connection of `user` joined (`present`) or its last left. Answers whether the user
    /// appeared in or disappeared from the whole cluster's channel with it.
    fn user_occupancy<'a>(
        &'a self,
        channel: &'a str,
        user: &'a str,
        present: bool,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let _ = (channel, user, present);
        ready(Ok(true))
    }
    /// The live nodes (this one included).
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, BrokerError>>;
    /// Sends `command` to every other live node, whose handlers get it in
    /// [`BrokerHandler::on_control`]; this node's handler does not (the caller applies the
    /// command locally itself). Resolves once the store accepted it, not once the other
    /// nodes applied it. The default, for a broker without other nodes, does nothing.
    fn control(&self, command: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        let _ = command;
        ready(Ok(()))
    }
    /// Asks every other live node `request` ([`BrokerHandler::on_survey`]) and returns
    /// their answers, one per node, in no particular order. The wait is bounded: when a
    /// live node has not answered in time the survey fails with
    /// [`BrokerError::Unavailable`]. This node is not asked (the caller answers for it).
    /// The default, for a broker without other nodes, answers an empty list.
    fn survey(&self, request: Bytes) -> BoxFuture<'_, Result<Vec<SurveyAnswer>, BrokerError>> {
        let _ = request;
        ready(Ok(Vec::new()))
    }
}

/// A future that is ready at once.
pub fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}
