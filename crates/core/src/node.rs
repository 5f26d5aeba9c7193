//! The node: the facade protocol drivers call for every channel operation, on one node or
//! on several sharing a [`Broker`].
//!
//! [`Node`] pairs the local [`Hub`] (connections, outboxes, local fan-out) with a broker:
//!
//! * With the in-memory broker ([`Node::new`]) every method is the hub's own, synchronous
//!   path wrapped in an `async fn`: a publish assigns the offset, appends to history and
//!   fans out under the channel lock, exactly as [`Hub::publish_with_info`] does.
//!   [`Node::publish_now`] gives drivers that path without even a future.
//! * With a shared broker ([`Node::with_broker`]) a publish goes to the broker, which
//!   numbers it, stores it and sends it to every node listening to the channel (this one
//!   included); what arrives is queued into local outboxes with [`Hub::deliver`], one
//!   channel's publications in order from one task. A node listens to a channel only
//!   while it has local members: the first subscribe starts listening (before the
//!   subscriber is told anything), the last leave stops it.
//!
//! # Subscribing with recovery across nodes
//!
//! The join is local and immediate; the stream lives in the broker. To stay gap-free and
//! duplicate-free against concurrent publications, [`Node::subscribe`]:
//!
//! 1. joins the local channel (live publications are queued to the new member from now),
//! 2. makes sure the node listens to the channel (so nothing published later is missed),
//! 3. reads the stream's top `T` (and, when recovering, everything after the client's
//!    position) from the broker.
//!
//! Publications after `T` arrive live. Publications up to `T` are in the recovered list,
//! but some of them may *also* have been queued live between steps 1 and 3. The
//! returned [`SubscribeResult::position`] is `T`, and the rule for drivers is: **skip a
//! queued publication of this channel whose offset is at or below the position the
//! subscribe returned** (in its epoch). On a single node this never happens (the hub joins
//! under the publish lock), so drivers can apply the rule unconditionally.
//!
//! # Gaps
//!
//! The node remembers the latest offset it saw per channel. A publication that skips
//! offsets (a message lost between the store and this node, e.g. across a reconnect), or
//! a resync after a reconnect whose top is beyond what was seen, means local subscribers
//! missed something. When the channel keeps history in the broker, the node **fills the
//! gap**: it reads the missing range from the broker's stream and delivers it to local
//! members before the publication that revealed the gap (for a resync: up to the new
//! top), so every member still gets every publication once and in order, whatever its
//! protocol. While a fill runs, live publications of that channel are held back; when it
//! completes they follow, minus those the fill already delivered. Other channels are
//! delivered as usual meanwhile, and no lock is held across the read. Fills run in
//! [`Node::run_background`].
//!
//! # A new epoch
//!
//! A publication or a resync in another epoch means the store began a new stream for the
//! channel: it lost its data (a restart without persistence), or the channel's metadata
//! expired. Every publication of the new stream was acknowledged to its publisher, so the
//! node delivers the new stream **from its first offset**, filled from history like any
//! other gap, then goes on live. It remembers the succession (old epoch and the last offset
//! it delivered of it → new epoch) for a while, and a client recovering from a position at
//! or after that offset in the old epoch recovers from the new stream's start
//! (`recovered: true` while history holds it): that is how a Centrifugo subscriber, told to
//! resubscribe because its position names the old epoch, keeps every publication. A store
//! that comes back with its data but without its latest writes (offsets would be used
//! again) is a gap that cannot be filled. A history removal also starts a new epoch, whose
//! offsets go on from the old ones: the stream then starts after the old top
//! ([`StreamSlice::start`]), and nothing below it is missing.
//!
//! Only when the range cannot be filled (no history in the namespace, the range trimmed or
//! expired from history, the broker unreachable, the store lost what was being filled) does
//! the node fall back to telling: the held publications are delivered as they are and the
//! gap handler ([`Node::set_gap_handler`]) is called with the channel. Drivers tell their
//! clients: the Centrifugo driver sends an `unsubscribe` push with code 2500 "insufficient
//! state" (the SDK resubscribes with recovery and learns `recovered: false`); the server
//! closes other connections of the channel with close code 4500, so raw-room applications
//! reload and Socket.IO clients reconnect without recovery.
//!
//! # Control between nodes
//!
//! [`Node::control`] sends an opaque command to every other node and [`Node::survey`] asks
//! them a question; what arrives from other nodes goes to the [`ControlHandler`] set with
//! [`Node::set_control_handler`]. The caller applies a command to (or answers a question
//! for) its own node itself: the broker never echoes them back, so nothing is applied twice.
//! On a single node both reach nobody and resolve at once.
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::Poll;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::broker::{
    Broker, BrokerError, BrokerHandler, BrokerPublication, BrokerStatus, NodeInfo, StreamSlice,
    SurveyAnswer,
};
use crate::broker_memory::MemoryBroker;
use crate::connection::ConnHandle;
use crate::error::{ChannelError, HubError};
use crate::history::{Epoch, HistoryQuery, HistoryResult, Recovery, StreamPosition};
use crate::hub::{
    Hub, HubListener, PublishOptions, PublishReport, SubscribeOptions, SubscribeResult,
};
use crate::namespace::ChannelOptions;
use crate::presence::{ClientInfo, PresenceStats};
use crate::publication::{ConnId, Payload, Publication};

/// Why a [`Node`] operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The hub refused (bad name, room full, connection closed).
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The channel feature refused (not available, unrecoverable position).
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The shared broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl NodeError {
    /// Whether retrying later may succeed (the broker is unreachable right now).
    pub fn is_temporary(&self) -> bool {
        matches!(self, NodeError::Broker(e) if e.is_temporary())
    }
}

/// Called with a channel whose local subscribers may have missed publications that the
/// node could not fill from history (see the module documentation).
pub type GapHandler = Arc<dyn Fn(&str) + Send + Sync>;

/// What this node does with control traffic from other nodes (see the module
/// documentation). Called from the broker's tasks: must not block.
pub trait ControlHandler: Send + Sync {
    /// Applies a command another node sent with [`Node::control`].
    fn on_command(&self, command: &[u8]);
    /// Answers a question another node asked with [`Node::survey`].
    fn on_survey(&self, request: &[u8]) -> Bytes;
}

/// Most publications one read of a gap fill asks the broker for.
const FILL_BATCH: u64 = 1000;

/// What the node tracks per listened channel: gap detection and filling.
struct Track {
    /// Latest position seen (while a fill runs: delivered so far, owned by the fill).
    last: StreamPosition,
    /// The fill in progress, if any.
    fill: Option<Fill>,
}

/// A gap fill in progress for one channel.
struct Fill {
    /// Tells this fill from a later one of the same channel (the channel may be dropped
    /// and listened to again while a read is in flight).
    id: u64,
    /// Fill from history up to this offset (in the epoch of [`Track::last`]).
    upto: u64,
    /// Live publications held back until the fill is done, in arrival order.
    held: VecDeque<(Arc<Publication>, Option<ConnId>)>,
    /// A resync found a new epoch meanwhile: the range cannot be filled any more.
    new_epoch: Option<StreamPosition>,
}

/// What a fill does next, decided under the lock and done outside it.
enum FillStep {
    Read {
        after: StreamPosition,
        upto: u64,
    },
    Done,
    /// The channel was dropped (or filled by a later fill) meanwhile.
    Gone,
}

/// What to do with a live publication, given the channel's latest position.
enum Arrival {
    /// Next in order (or at or below what was seen: a subscribe read the top first).
    Deliver,
    /// Offsets between were skipped: fill up to this offset first.
    Fill(u64),
    /// A new epoch: the store began a new stream (it lost its data, or the channel's
    /// metadata expired or its history was removed). The new stream is delivered from its
    /// first offset: fill up to the one before this publication.
    NewEpoch,
}

fn arrival(last: StreamPosition, p: &Publication) -> Arrival {
    if p.epoch != last.epoch {
        Arrival::NewEpoch
    } else if p.offset > last.offset.saturating_add(1) {
        Arrival::Fill(p.offset - 1)
    } else {
        Arrival::Deliver
    }
}

/// How long a node remembers that a channel's stream went on in a new epoch (see
/// [`Succession`]): long enough for its Centrifugo clients, told to resubscribe, to recover.
const SUCCESSION_KEPT: std::time::Duration = std::time::Duration::from_secs(300);

/// A channel's stream went on in a new epoch on this node: everything it delivered of the
/// old epoch ended at `from`, and the new epoch `to` was delivered from its first offset.
/// A client positioned at or after `from` therefore has everything the old stream had for
/// this node, and recovering it means reading the new stream from its start.
#[derive(Debug, Clone, Copy)]
struct Succession {
    from: StreamPosition,
    to: Epoch,
    at: std::time::Instant,
}

/// Background work queued by the hub's leave notifications and the broker's resyncs.
enum Task {
    Left {
        channel: String,
        conn: ConnId,
        info: Option<ClientInfo>,
        emptied: bool,
    },
}

/// Gap counters of a [`Node`] (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GapStats {
    /// Gap fills started (offset jumps, resyncs, new epochs filled from history).
    pub fills: u64,
    /// Gaps that could not be filled: the gap handler was told.
    pub unfilled: u64,
}

struct NodeInner {
    hub: Hub,
    broker: Arc<dyn Broker>,
    shared: bool,
    /// Latest position seen per listened channel, and gap fills in progress.
    seen: Mutex<HashMap<String, Track>>,
    /// Channels whose stream went on in a new epoch lately (see [`Succession`]).
    successions: Mutex<HashMap<String, Succession>>,
    /// Gap fills to run: channel and fill id.
    fills: mpsc::UnboundedSender<(String, u64)>,
    fills_rx: Mutex<Option<mpsc::UnboundedReceiver<(String, u64)>>>,
    next_fill: AtomicU64,
    /// Gaps that could not be filled (the gap handler was told), since start.
    gaps_unfilled: AtomicU64,
    /// Channels the broker listens to for this node. Held across the broker call that
    /// changes it, so a subscribe and an unsubscribe of one channel never interleave.
    listening: tokio::sync::Mutex<HashSet<String>>,
    tasks: mpsc::UnboundedSender<Task>,
    tasks_rx: Mutex<Option<mpsc::UnboundedReceiver<Task>>>,
    on_gap: OnceLock<GapHandler>,
    on_control: OnceLock<Arc<dyn ControlHandler>>,
}

/// The channel facade for protocol drivers. Cheap to clone. See the module documentation.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("broker", &self.inner.broker.kind())
            .field("node_id", &self.inner.broker.node_id())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A single node: `hub` with the in-memory broker.
    pub fn new(hub: Hub) -> Node {
        let info = NodeInfo {
            id: "local".to_string(),
            name: "switchboard".to_string(),
            ..NodeInfo::default()
        };
        let broker = Arc::new(MemoryBroker::new(hub.clone(), info));
        Node::with_broker(hub, broker)
    }

    /// `hub` sharing `broker` with other nodes. Installs the node as the hub's leave
    /// listener and as the broker's handler; a shared broker also needs
    /// [`run_background`](Self::run_background) to be driven.
    pub fn with_broker(hub: Hub, broker: Arc<dyn Broker>) -> Node {
        let shared = broker.is_shared();
        let (tx, rx) = mpsc::unbounded_channel();
        let (fills, fills_rx) = mpsc::unbounded_channel();
        let node = Node {
            inner: Arc::new(NodeInner {
                hub,
                broker,
                shared,
                seen: Mutex::new(HashMap::new()),
                successions: Mutex::new(HashMap::new()),
                fills,
                fills_rx: Mutex::new(Some(fills_rx)),
                next_fill: AtomicU64::new(1),
                gaps_unfilled: AtomicU64::new(0),
                listening: tokio::sync::Mutex::new(HashSet::new()),
                tasks: tx,
                tasks_rx: Mutex::new(Some(rx)),
                on_gap: OnceLock::new(),
                on_control: OnceLock::new(),
            }),
        };
        if shared {
            let weak = Arc::downgrade(&node.inner);
            node.inner
                .hub
                .set_listener(Arc::new(Listener(weak.clone())));
            node.inner.broker.start(Arc::new(Handler(weak)));
        }
        node
    }

    /// The local hub (connections, outboxes, permission checks).
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// Whether several nodes share the broker.
    pub fn is_shared(&self) -> bool {
        self.inner.shared
    }

    /// The broker's kind and whether it is reachable.
    pub fn broker_status(&self) -> BrokerStatus {
        self.inner.broker.status()
    }

    /// Gap fills started and gaps that could not be filled, since start (both 0 with the
    /// in-memory broker, which has no gaps).
    pub fn gap_stats(&self) -> GapStats {
        GapStats {
            fills: self.inner.next_fill.load(Ordering::Relaxed) - 1,
            unfilled: self.inner.gaps_unfilled.load(Ordering::Relaxed),
        }
    }

    /// Sets the function told about channels whose subscribers may have missed
    /// publications (see the module documentation). Only the first call has an effect.
    pub fn set_gap_handler(&self, handler: GapHandler) {
        let _ = self.inner.on_gap.set(handler);
    }

    /// Sets what handles control commands and surveys from other nodes. Only the first
    /// call has an effect; until then they are ignored (surveys get an empty answer).
    pub fn set_control_handler(&self, handler: Arc<dyn ControlHandler>) {
        let _ = self.inner.on_control.set(handler);
    }

    /// Sends `command` to every other node's [`ControlHandler`]; apply it to this node
    /// yourself. Fails with a temporary [`NodeError::Broker`] when the shared store is
    /// unreachable (then no other node got it). Resolves at once on a single node.
    pub async fn control(&self, command: Bytes) -> Result<(), NodeError> {
        match self.via() {
            Via::Local(_) => Ok(()),
            Via::Shared(inner) => Ok(inner.broker.control(command).await?),
        }
    }

    /// Asks every other live node `request` and returns their answers (answer for this
    /// node yourself). The wait is bounded by the broker; a node that does not answer in
    /// time fails the survey with a temporary [`NodeError::Broker`]. Empty on a single
    /// node.
    pub async fn survey(&self, request: Bytes) -> Result<Vec<SurveyAnswer>, NodeError> {
        match self.via() {
            Via::Local(_) => Ok(Vec::new()),
            Via::Shared(inner) => Ok(inner.broker.survey(request).await?),
        }
    }

    /// The work a shared broker needs done outside the hub's locks (presence removal,
    /// leave events to other nodes, stopping to listen to emptied channels, gap fills).
    /// The server spawns it once; it runs until the node is dropped. Resolves at once for
    /// the in-memory broker, or when called a second time.
    ///
    /// Leave work runs one task after the other; gap fills run concurrently with it and
    /// with each other, so a slow read for one channel delays no other channel.
    pub fn run_background(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let rx = self.inner.tasks_rx.lock().take();
        let fills_rx = self.inner.fills_rx.lock().take();
        let weak = Arc::downgrade(&self.inner);
        async move {
            let (Some(mut rx), Some(fills_rx)) = (rx, fills_rx) else {
                return;
            };
            let tasks_weak = weak.clone();
            let tasks = async move {
                while let Some(task) = rx.recv().await {
                    let Some(inner) = tasks_weak.upgrade() else {
                        return;
                    };
                    inner.run_task(task).await;
                }
            };
            both(tasks, run_fills(weak, fills_rx)).await;
        }
    }

    /// Publishes on the synchronous single-node path when there is no shared broker;
    /// `None` when there is one (use [`publish`](Self::publish)).
    pub fn publish_now(
        &self,
        channel: &str,
        payload: Payload,
        opts: PublishOptions,
        info: Option<Arc<ClientInfo>>,
    ) -> Option<PublishReport> {
        match self.via() {
            Via::Local(hub) => Some(hub.publish_with_info(channel, payload, opts, info)),
            Via::Shared(_) => None,
        }
    }

    /// Publishes `payload` in `channel` on every node. Returns its position (`None` when
    /// it went nowhere: a single node's channel without members or history).
    ///
    /// Fails with [`NodeError::Hub`] for a bad channel name, and with a temporary
    /// [`NodeError::Broker`] when the shared store is unreachable: nothing was published
    /// then, anywhere.
    pub async fn publish(
        &self,
        channel: &str,
        payload: Payload,
        opts: PublishOptions,
        info: Option<Arc<ClientInfo>>,
    ) -> Result<Option<StreamPosition>, NodeError> {
        let (_, options) = self.inner.hub.namespaces().resolve(channel)?;
        match self.via() {
            Via::Local(hub) => Ok(hub
                .publish_with_info(channel, payload, opts, info)
                .position()),
            Via::Shared(inner) => inner.publish(channel, options, payload, opts, info).await,
        }
    }

    /// Publishes `payloads` in `channel`, in this order, with one round trip to a shared
    /// broker for the whole batch (on one node: one after the other on the hub's path).
    /// On a temporary broker error some of them may have been published.
    pub async fn publish_batch(
        &self,
        channel: &str,
        payloads: Vec<Payload>,
        opts: PublishOptions,
    ) -> Result<Vec<StreamPosition>, NodeError> {
        let (_, options) = self.inner.hub.namespaces().resolve(channel)?;
        match self.via() {
            Via::Local(hub) => Ok(payloads
                .into_iter()
                .filter_map(|p| hub.publish(channel, p, opts).position())
                .collect()),
            Via::Shared(inner) => inner.publish_batch(channel, options, payloads, opts).await,
        }
    }

    /// Subscribes `conn` to `channel` (with channel info and recovery as `opts` say).
    /// See the module documentation for the rule drivers apply to queued publications
    /// at or below the returned position.
    pub async fn subscribe(
        &self,
        conn: &ConnHandle,
        channel: &str,
        opts: SubscribeOptions,
    ) -> Result<SubscribeResult, NodeError> {
        match self.via() {
            Via::Local(hub) => Ok(hub.subscribe_with(conn, channel, opts)?),
            Via::Shared(inner) => inner.subscribe(conn, channel, opts).await,
        }
    }

    /// Removes `conn` from `channel`. Returns whether it was a member. Presence removal and
    /// leave events for other nodes follow in the background.
    pub async fn unsubscribe(&self, conn: &ConnHandle, channel: &str) -> bool {
        self.inner.hub.unsubscribe(conn, channel)
    }

    /// Queries the history of `channel` (see [`Hub::history`]).
    pub async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, NodeError> {
        match self.via() {
            Via::Local(hub) => Ok(hub.history(channel, query)?),
            Via::Shared(inner) => inner.history(channel, query).await,
        }
    }

    /// Drops the history of `channel`; its epoch changes (see [`Hub::history_remove`]).
    pub async fn history_remove(&self, channel: &str) -> Result<(), NodeError> {
        match self.via() {
            Via::Local(hub) => Ok(hub.history_remove(channel)?),
            Via::Shared(inner) => inner.history_remove(channel).await,
        }
    }

    /// Who is subscribed to `channel` on every node: client id → info.
    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, NodeError> {
        match self.via() {
            Via::Local(hub) => Ok(hub.presence(channel)?),
            Via::Shared(inner) => inner.presence(channel).await,
        }
    }

    /// Subscribed connections and distinct users of `channel` on every node.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, NodeError> {
        match self.via() {
            Via::Local(hub) => Ok(hub.presence_stats(channel)?),
            Via::Shared(inner) => inner.presence_stats(channel).await,
        }
    }

    /// The live nodes.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, NodeError> {
        Ok(self.inner.broker.nodes().await?)
    }
}

/// Where a channel operation runs, decided in one place ([`Node::via`]): on this node's hub
/// alone (the in-memory broker), or through the shared broker (the hub then serves this
/// node's members only).
enum Via<'a> {
    Local(&'a Hub),
    Shared(&'a NodeInner),
}

impl Node {
    /// The one dispatch point between one node and several.
    fn via(&self) -> Via<'_> {
        if self.inner.shared {
            Via::Shared(&self.inner)
        } else {
            Via::Local(&self.inner.hub)
        }
    }
}

/// The channel operations with a shared broker.
impl NodeInner {
    async fn publish(
        &self,
        channel: &str,
        options: &Arc<ChannelOptions>,
        payload: Payload,
        opts: PublishOptions,
        info: Option<Arc<ClientInfo>>,
    ) -> Result<Option<StreamPosition>, NodeError> {
        let inner = self;
        let publication = BrokerPublication {
            payload,
            info,
            publisher: opts.publisher,
            exclude: opts.exclude,
        };
        let position = inner.broker.publish(channel, options, publication).await?;
        Ok(Some(position))
    }

    async fn publish_batch(
        &self,
        channel: &str,
        options: &Arc<ChannelOptions>,
        payloads: Vec<Payload>,
        opts: PublishOptions,
    ) -> Result<Vec<StreamPosition>, NodeError> {
        let inner = self;
        let batch = payloads
            .into_iter()
            .map(|payload| BrokerPublication {
                payload,
                info: None,
                publisher: opts.publisher,
                exclude: opts.exclude,
            })
            .collect();
        Ok(inner.broker.publish_batch(channel, options, batch).await?)
    }

    async fn subscribe(
        &self,
        conn: &ConnHandle,
        channel: &str,
        opts: SubscribeOptions,
    ) -> Result<SubscribeResult, NodeError> {
        let inner = self;
        let since = opts
            .recover_since
            .map(|since| inner.carried_over(channel, since));
        let local = SubscribeOptions {
            chan_info: opts.chan_info.clone(),
            recover_since: None,
        };
        let mut result = inner.hub.subscribe_with(conn, channel, local)?;
        let undo = |e: NodeError| {
            if result.added {
                inner.hub.unsubscribe(conn, channel);
            }
            e
        };
        let options = Arc::clone(&result.options);
        if let Err(e) = inner.listen(channel).await {
            return Err(undo(e.into()));
        }
        if options.history_enabled() || since.is_some() {
            let query = HistoryQuery {
                since,
                limit: if since.is_some() { None } else { Some(0) },
                reverse: false,
            };
            let slice = match inner.broker.read_stream(channel, &options, query).await {
                Ok(s) => s,
                Err(e) => return Err(undo(e.into())),
            };
            inner.saw_top(channel, slice.top);
            result.position = slice.top;
            result.recovery = since.map(|since| recovery(slice, since));
        } else {
            result.position = StreamPosition::default();
        }
        if result.added && (options.presence || options.join_leave) {
            let info = ClientInfo::of(&conn.entry, opts.chan_info);
            if options.presence {
                if let Err(e) = inner.broker.add_presence(channel, info.clone()).await {
                    return Err(undo(e.into()));
                }
                // A leave that raced with the add found nothing to remove: remove it now.
                if !inner.hub.is_member(conn.id(), channel) {
                    let _ = inner.broker.remove_presence(channel, &info.client).await;
                }
            }
            if options.join_leave {
                if let Err(e) = inner.broker.member_event(channel, true, info).await {
                    tracing::debug!(channel, "join event not sent to other nodes: {e}");
                }
            }
        }
        Ok(result)
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, NodeError> {
        let inner = self;
        let options = history_options(&inner.hub, channel)?;
        let slice = inner.broker.read_stream(channel, &options, query).await?;
        if let Some(since) = query.since {
            if since.epoch != slice.top.epoch || since.offset > slice.top.offset {
                return Err(ChannelError::UnrecoverablePosition.into());
            }
        }
        Ok(HistoryResult {
            publications: slice.publications,
            position: slice.top,
        })
    }

    async fn history_remove(&self, channel: &str) -> Result<(), NodeError> {
        let inner = self;
        let options = history_options(&inner.hub, channel)?;
        inner.broker.remove_history(channel, &options).await?;
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, NodeError> {
        let inner = self;
        let options = inner.hub.namespaces().options(channel)?;
        if !options.presence {
            return Err(ChannelError::NotAvailable.into());
        }
        let mut all = inner.broker.presence(channel).await?;
        // This node's own members are known here for sure: a store that came back empty
        // may not have their entries again yet (they are rewritten in the background).
        if let Ok(local) = inner.hub.presence(channel) {
            for (client, info) in local {
                all.entry(client).or_insert(info);
            }
        }
        Ok(all)
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, NodeError> {
        let map = self.presence(channel).await?;
        let users: HashSet<&str> = map.values().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats {
            num_clients: map.len(),
            num_users: users.len(),
        })
    }
}

/// The options of a channel whose history is asked for (an error when it keeps none).
fn history_options(hub: &Hub, channel: &str) -> Result<Arc<ChannelOptions>, NodeError> {
    let options = hub.namespaces().options(channel)?;
    if !options.history_enabled() {
        return Err(ChannelError::NotAvailable.into());
    }
    Ok(Arc::clone(options))
}

/// What a client at `since` missed, from a slice read after `since.offset`.
fn recovery(slice: StreamSlice, since: StreamPosition) -> Recovery {
    let top = slice.top;
    // Nothing was published in this epoch at or below its start: a position there (a
    // stream carried over into an epoch that began after a removal) misses nothing of it.
    let since = if since.epoch == top.epoch {
        StreamPosition::new(since.offset.max(slice.start), since.epoch)
    } else {
        since
    };
    if since.epoch != top.epoch || since.offset > top.offset {
        return Recovery {
            publications: Vec::new(),
            recovered: false,
            position: top,
        };
    }
    let recovered =
        since.offset == top.offset || slice.oldest.is_some_and(|first| first <= since.offset + 1);
    let publications = slice
        .publications
        .into_iter()
        .filter(|p| p.offset > since.offset && p.offset <= top.offset)
        .collect();
    Recovery {
        publications,
        recovered,
        position: top,
    }
}

impl NodeInner {
    /// Makes the broker listen to `channel` for this node.
    async fn listen(&self, channel: &str) -> Result<(), BrokerError> {
        let mut listening = self.listening.lock().await;
        if listening.contains(channel) {
            return Ok(());
        }
        self.broker.subscribe(channel).await?;
        listening.insert(channel.to_string());
        Ok(())
    }

    /// Records a top read from the store for `channel` (a subscribe). A channel seen for
    /// the first time starts there. Within the known epoch the mark stays where live
    /// delivery is: publications up to `top` still arrive live, or their loss shows as a
    /// gap and is filled. A new epoch is what a resync finding it would be.
    fn saw_top(&self, channel: &str, top: StreamPosition) {
        let unfilled = {
            let mut seen = self.seen.lock();
            match seen.get_mut(channel) {
                Some(track) if track.fill.is_some() || track.last.epoch == top.epoch => None,
                Some(track) => self.new_stream(channel, track, top),
                None => {
                    seen.insert(channel.to_string(), Track::at(top));
                    None
                }
            }
        };
        if let Some(why) = unfilled {
            self.gap(channel, why);
        }
    }

    /// `track` (no fill running) learnt that the store's stream of `channel` is in another
    /// epoch, at `top`: the new stream is delivered from its first offset, filled from
    /// history. Returns why it cannot be, for the gap handler (called without the lock).
    fn new_stream(
        &self,
        channel: &str,
        track: &mut Track,
        top: StreamPosition,
    ) -> Option<&'static str> {
        if top.epoch == Epoch::EMPTY {
            // The store has nothing for the channel (yet): its next publication starts the
            // new stream, and shows it.
            return None;
        }
        self.switch_epoch(channel, &mut track.last, 0, top.epoch);
        if top.offset == 0 || self.start_fill(channel, track, top.offset).is_some() {
            return None;
        }
        track.last = top;
        Some("no history to fill from")
    }

    /// Moves `last` to the start of epoch `to`, remembering the succession for recovering
    /// clients. `known_top` is the old epoch's top as far as this node knows: a client
    /// below it missed part of the old stream, which is gone.
    fn switch_epoch(&self, channel: &str, last: &mut StreamPosition, known_top: u64, to: Epoch) {
        if last.epoch != Epoch::EMPTY {
            let now = std::time::Instant::now();
            let mut successions = self.successions.lock();
            successions.retain(|_, s| now.duration_since(s.at) < SUCCESSION_KEPT);
            successions.insert(
                channel.to_string(),
                Succession {
                    from: StreamPosition::new(known_top.max(last.offset), last.epoch),
                    to,
                    at: now,
                },
            );
        }
        tracing::info!(
            channel,
            "the stream went on in a new epoch: delivering it from its start"
        );
        *last = StreamPosition::new(0, to);
    }

    /// The position to recover `channel` from for a client at `since`: unchanged, or the
    /// start of the new epoch when this node carried the client's stream over into it
    /// (see [`Succession`]).
    fn carried_over(&self, channel: &str, since: StreamPosition) -> StreamPosition {
        let successions = self.successions.lock();
        match successions.get(channel) {
            Some(s)
                if s.from.epoch == since.epoch
                    && since.offset >= s.from.offset
                    && s.at.elapsed() < SUCCESSION_KEPT =>
            {
                StreamPosition::new(0, s.to)
            }
            _ => since,
        }
    }

    /// Starts filling `track` of `channel` up to `upto`; returns the fill, or `None` (and
    /// starts nothing) when the channel keeps no history, so there is nothing to fill
    /// from, or when nothing runs fills any more.
    fn start_fill<'t>(
        &self,
        channel: &str,
        track: &'t mut Track,
        upto: u64,
    ) -> Option<&'t mut Fill> {
        let fillable = self
            .hub
            .namespaces()
            .options(channel)
            .is_ok_and(|o| o.history_enabled());
        if !fillable {
            return None;
        }
        let id = self.next_fill.fetch_add(1, Ordering::Relaxed);
        self.fills.send((channel.to_string(), id)).ok()?;
        Some(track.fill.insert(Fill {
            id,
            upto,
            held: VecDeque::new(),
            new_epoch: None,
        }))
    }

    /// A gap that could not be filled: the subscribers are told.
    fn gap(&self, channel: &str, why: &str) {
        self.gaps_unfilled.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            channel,
            reason = why,
            "subscribers may have missed publications: gap not filled"
        );
        if let Some(handler) = self.on_gap.get() {
            handler(channel);
        }
    }

    /// Runs the fill `id` of `channel` to its end (see the module documentation): reads
    /// the missing range in batches, delivers it, then the held publications, filling
    /// again when they reveal another gap. Falls back to the gap handler when the broker
    /// cannot give the range.
    async fn fill(&self, channel: &str, id: u64) {
        let options = match self.hub.namespaces().options(channel) {
            Ok(o) => Arc::clone(o),
            Err(_) => Arc::new(ChannelOptions::default()),
        };
        let mut filled = 0usize;
        let mut failure: Option<String> = None;
        // Part of the old stream that the store lost while this fill ran.
        let mut lost: Option<String> = None;
        loop {
            let step = self.fill_step(channel, id, &mut failure, &mut lost);
            let (after, upto) = match step {
                FillStep::Read { after, upto } => (after, upto),
                FillStep::Done => break,
                FillStep::Gone => return,
            };
            let query = HistoryQuery {
                since: Some(after),
                limit: Some((upto - after.offset).min(FILL_BATCH) as usize),
                reverse: false,
            };
            let slice = match self.broker.read_stream(channel, &options, query).await {
                Ok(slice) => slice,
                Err(e) => {
                    failure = Some(format!("history read failed: {e}"));
                    continue;
                }
            };
            if slice.top.epoch != after.epoch {
                failure = Some("the stream has a new epoch".into());
                continue;
            }
            if after.offset < slice.start {
                // A stream whose epoch began after a history removal: the offsets up to its
                // start do not exist in it, nothing was missed there.
                let mut seen = self.seen.lock();
                match seen.get_mut(channel) {
                    Some(track) if track.fill.as_ref().is_some_and(|f| f.id == id) => {
                        track.last.offset = track.last.offset.max(slice.start);
                    }
                    _ => return,
                }
                continue;
            }
            let mut batch = Vec::new();
            for p in slice.publications {
                if p.offset != after.offset + 1 + batch.len() as u64 || p.offset > upto {
                    break;
                }
                batch.push(p);
            }
            let Some(end) = batch.last().map(|p| p.offset) else {
                failure = Some("the range is no longer in history".into());
                continue;
            };
            // The fill owns the channel's delivery (live publications are held), so the
            // batch goes out without the lock.
            filled += batch.len();
            for p in batch {
                self.hub.deliver(p, None);
            }
            let mut seen = self.seen.lock();
            match seen.get_mut(channel) {
                Some(track) if track.fill.as_ref().is_some_and(|f| f.id == id) => {
                    track.last.offset = end;
                }
                _ => return,
            }
        }
        match failure.or(lost) {
            None => tracing::info!(channel, filled, "gap filled from history"),
            Some(why) => {
                if filled > 0 {
                    tracing::info!(channel, filled, "part of a gap filled from history");
                }
                self.gap(channel, &why);
            }
        }
    }

    /// Under the lock: the next range a fill reads, or (once everything up to the target
    /// is delivered, or the fill failed) the held publications delivered and the fill
    /// ended.
    fn fill_step(
        &self,
        channel: &str,
        id: u64,
        failure: &mut Option<String>,
        lost: &mut Option<String>,
    ) -> FillStep {
        let mut seen = self.seen.lock();
        let Some(track) = seen.get_mut(channel) else {
            return FillStep::Gone;
        };
        let Some(fill) = track.fill.as_mut().filter(|f| f.id == id) else {
            return FillStep::Gone;
        };
        if let Some(top) = fill.new_epoch.take() {
            if failure.is_none() {
                // What was still to be read of the old stream is gone with the store's
                // data; the new stream is filled from its start.
                if fill.upto > track.last.offset {
                    *lost = Some("the store lost part of the stream (new epoch)".into());
                }
                self.switch_epoch(channel, &mut track.last, fill.upto, top.epoch);
                fill.upto = top.offset;
            } else {
                track.last = top;
            }
        }
        loop {
            if failure.is_none() && fill.upto > track.last.offset {
                return FillStep::Read {
                    after: track.last,
                    upto: fill.upto,
                };
            }
            let Some((p, exclude)) = fill.held.pop_front() else {
                track.fill = None;
                return FillStep::Done;
            };
            if failure.is_some() {
                // Falling back: what arrived is delivered as it is, as without a fill.
                if p.epoch != track.last.epoch || p.offset > track.last.offset {
                    track.last = p.position();
                }
                self.hub.deliver(p, exclude);
                continue;
            }
            match arrival(track.last, &p) {
                Arrival::Deliver if p.offset <= track.last.offset => {} // filled already
                Arrival::Deliver => {
                    track.last = p.position();
                    self.hub.deliver(p, exclude);
                }
                Arrival::Fill(upto) => {
                    fill.upto = upto;
                    fill.held.push_front((p, exclude));
                }
                Arrival::NewEpoch => {
                    self.switch_epoch(channel, &mut track.last, 0, p.epoch);
                    if p.offset > 1 {
                        fill.upto = p.offset - 1;
                        fill.held.push_front((p, exclude));
                    } else {
                        track.last = p.position();
                        self.hub.deliver(p, exclude);
                    }
                }
            }
        }
    }

    async fn run_task(&self, task: Task) {
        match task {
            Task::Left {
                channel,
                conn,
                info,
                emptied,
            } => {
                let Ok(options) = self.hub.namespaces().options(&channel) else {
                    return;
                };
                let options = Arc::clone(options);
                if let Some(info) = info {
                    // Subscribed again meanwhile: its entry is current, keep it.
                    if options.presence && !self.hub.is_member(conn, &channel) {
                        if let Err(e) = self.broker.remove_presence(&channel, &info.client).await {
                            tracing::warn!(%channel, "presence entry not removed: {e}");
                        }
                    }
                    if options.join_leave {
                        if let Err(e) = self.broker.member_event(&channel, false, info).await {
                            tracing::debug!(%channel, "leave event not sent to other nodes: {e}");
                        }
                    }
                }
                if emptied {
                    let mut listening = self.listening.lock().await;
                    if self.hub.member_count(&channel) == 0 && listening.remove(&channel) {
                        self.seen.lock().remove(&channel);
                        if let Err(e) = self.broker.unsubscribe(&channel).await {
                            tracing::debug!(%channel, "unsubscribe from the broker failed: {e}");
                        }
                    }
                }
            }
        }
    }
}

impl Track {
    fn at(last: StreamPosition) -> Track {
        Track { last, fill: None }
    }
}

/// Runs every gap fill queued on `rx`, concurrently, until the node is dropped.
async fn run_fills(weak: Weak<NodeInner>, mut rx: mpsc::UnboundedReceiver<(String, u64)>) {
    type Running = Pin<Box<dyn Future<Output = ()> + Send>>;
    let mut running: Vec<Running> = Vec::new();
    let mut open = true;
    std::future::poll_fn(|cx| {
        while open {
            match rx.poll_recv(cx) {
                Poll::Ready(Some((channel, id))) => {
                    if let Some(inner) = weak.upgrade() {
                        running.push(Box::pin(async move { inner.fill(&channel, id).await }));
                    }
                }
                Poll::Ready(None) => open = false,
                Poll::Pending => break,
            }
        }
        running.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if !open && running.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Runs `a` and `b` to completion, concurrently on one task.
async fn both(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut a_done, mut b_done) = (false, false);
    std::future::poll_fn(|cx| {
        if !a_done {
            a_done = a.as_mut().poll(cx).is_ready();
        }
        if !b_done {
            b_done = b.as_mut().poll(cx).is_ready();
        }
        if a_done && b_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// The node as the hub's leave listener (weak: the hub must not keep the node alive).
struct Listener(Weak<NodeInner>);

impl HubListener for Listener {
    fn member_left(&self, channel: &str, conn: ConnId, info: Option<&ClientInfo>, emptied: bool) {
        if let Some(inner) = self.0.upgrade() {
            let _ = inner.tasks.send(Task::Left {
                channel: channel.to_string(),
                conn,
                info: info.cloned(),
                emptied,
            });
        }
    }
}

/// The node as the broker's handler (weak, for the same reason).
struct Handler(Weak<NodeInner>);

impl BrokerHandler for Handler {
    fn on_publication(&self, publication: Arc<Publication>, exclude: Option<ConnId>) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let channel = Arc::clone(&publication.channel);
        // Delivered under the lock: a fill started by a resync meanwhile must not deliver
        // later publications before this one.
        let mut seen = inner.seen.lock();
        let Some(track) = seen.get_mut(&*channel) else {
            seen.insert(channel.to_string(), Track::at(publication.position()));
            inner.hub.deliver(publication, exclude);
            return;
        };
        if let Some(fill) = track.fill.as_mut() {
            fill.held.push_back((publication, exclude));
            return;
        }
        match arrival(track.last, &publication) {
            Arrival::Deliver => {
                track.last.offset = track.last.offset.max(publication.offset);
                inner.hub.deliver(publication, exclude);
            }
            Arrival::Fill(upto) => match inner.start_fill(&channel, track, upto) {
                // It follows the filled range.
                Some(fill) => fill.held.push_back((publication, exclude)),
                None => {
                    track.last = publication.position();
                    inner.hub.deliver(publication, exclude);
                    drop(seen);
                    inner.gap(&channel, "no history to fill from");
                }
            },
            Arrival::NewEpoch => {
                inner.switch_epoch(&channel, &mut track.last, 0, publication.epoch);
                if publication.offset <= 1 {
                    track.last = publication.position();
                    inner.hub.deliver(publication, exclude);
                    return;
                }
                match inner.start_fill(&channel, track, publication.offset - 1) {
                    Some(fill) => fill.held.push_back((publication, exclude)),
                    None => {
                        track.last = publication.position();
                        inner.hub.deliver(publication, exclude);
                        drop(seen);
                        inner.gap(&channel, "no history to fill the new stream from");
                    }
                }
            }
        }
    }

    fn on_member_event(&self, channel: &str, join: bool, info: ClientInfo) {
        if let Some(inner) = self.0.upgrade() {
            inner.hub.deliver_member_event(channel, join, info);
        }
    }

    fn on_resync(&self, channel: &str, top: StreamPosition) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let unfilled = {
            let mut seen = inner.seen.lock();
            match seen.get_mut(channel) {
                Some(track) if track.fill.is_some() => {
                    // A fill runs already: make it go up to the new top too.
                    let same_epoch = track.last.epoch == top.epoch;
                    if let Some(fill) = track.fill.as_mut() {
                        if same_epoch {
                            fill.upto = fill.upto.max(top.offset);
                        } else if top.epoch != Epoch::EMPTY {
                            fill.new_epoch = Some(top);
                        }
                    }
                    None
                }
                Some(track) if track.last.epoch == top.epoch => {
                    if top.offset < track.last.offset {
                        // The store came back with its data but without its latest writes
                        // (persistence that had not synced them): publications this node
                        // delivered are gone from history, and their offsets will be used
                        // again. Positions clients hold no longer name the same stream.
                        track.last = top;
                        Some("the store lost its latest publications")
                    } else if top.offset > track.last.offset
                        && inner.start_fill(channel, track, top.offset).is_none()
                    {
                        track.last.offset = top.offset;
                        Some("no history to fill from")
                    } else {
                        None
                    }
                }
                Some(track) => inner.new_stream(channel, track, top),
                None => {
                    seen.insert(channel.to_string(), Track::at(top));
                    None
                }
            }
        };
        if let Some(why) = unfilled {
            inner.gap(channel, why);
        }
    }

    fn local_presence(&self, channel: &str) -> Vec<ClientInfo> {
        // Only namespaces with presence answer; the entries are this node's members. The
        // store may have lost them (a restart without persistence).
        self.0
            .upgrade()
            .and_then(|inner| inner.hub.presence(channel).ok())
            .map(|members| members.into_values().collect())
            .unwrap_or_default()
    }

    fn local_stats(&self) -> (usize, usize) {
        match self.0.upgrade() {
            Some(inner) => {
                let s = inner.hub.stats();
                (s.connections, s.channels)
            }
            None => (0, 0),
        }
    }

    fn on_control(&self, command: Bytes) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        match inner.on_control.get() {
            Some(handler) => handler.on_command(&command),
            None => tracing::debug!("control command from another node ignored: no handler"),
        }
    }

    fn on_survey(&self, request: Bytes) -> Bytes {
        let Some(inner) = self.0.upgrade() else {
            return Bytes::new();
        };
        match inner.on_control.get() {
            Some(handler) => handler.on_survey(&request),
            None => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{ready, BoxFuture};
    use crate::connection::ConnInfo;
    use crate::limits::HubLimits;
    use crate::namespace::Namespaces;
    use crate::publication::Delivery;
    use crate::{Epoch, Outbox};
    use std::time::Duration;

    /// A shared broker kept in memory: one stream per channel, delivering every
    /// publication to the handler at once (as pub/sub would), with hooks to stage races.
    #[derive(Default)]
    struct FakeBroker {
        handler: Mutex<Option<Arc<dyn BrokerHandler>>>,
        streams: Mutex<HashMap<String, Vec<Arc<Publication>>>>,
        /// Publications to "arrive live" at the start of the next stream read.
        during_read: Mutex<Vec<(String, Payload)>>,
        presence: Mutex<HashMap<String, ClientInfo>>,
        listening: Mutex<HashSet<String>>,
        down: std::sync::atomic::AtomicBool,
        /// Commands sent to the other nodes, and the questions asked them.
        sent: Mutex<Vec<Bytes>>,
        /// Per channel: history was trimmed up to this offset (included).
        trimmed: Mutex<HashMap<String, u64>>,
        /// Stream reads asked of the broker.
        reads: std::sync::atomic::AtomicUsize,
        /// Per channel: the epoch of its stream, when not [`EPOCH`].
        epochs: Mutex<HashMap<String, Epoch>>,
        /// Per channel: the offset its epoch's stream starts after (a removed history).
        starts: Mutex<HashMap<String, u64>>,
    }

    const EPOCH: &str = "fakeepoc";

    impl FakeBroker {
        fn append(&self, channel: &str, payload: Payload) -> Arc<Publication> {
            let epoch = self.epoch_of(channel);
            let start = self.start_of(channel);
            let mut streams = self.streams.lock();
            let s = streams.entry(channel.to_string()).or_default();
            let p = Arc::new(Publication::new(
                Arc::from(channel),
                payload,
                start + s.len() as u64 + 1,
                epoch,
                None,
            ));
            s.push(Arc::clone(&p));
            p
        }

        fn epoch_of(&self, channel: &str) -> Epoch {
            self.epochs
                .lock()
                .get(channel)
                .copied()
                .unwrap_or_else(|| Epoch::parse(EPOCH).unwrap())
        }

        fn start_of(&self, channel: &str) -> u64 {
            self.starts.lock().get(channel).copied().unwrap_or(0)
        }

        /// `channel`'s history is removed: a new epoch whose offsets go on.
        fn remove(&self, channel: &str, epoch: &str) {
            let top = self.start_of(channel)
                + self
                    .streams
                    .lock()
                    .get(channel)
                    .map_or(0, |s| s.len() as u64);
            self.reset(channel, epoch);
            self.starts.lock().insert(channel.to_string(), top);
        }

        /// The store lost `channel`'s stream (a restart without persistence): the next
        /// publication starts a new one in `epoch`, at offset 1.
        fn reset(&self, channel: &str, epoch: &str) {
            self.starts.lock().remove(channel);
            self.streams.lock().remove(channel);
            self.trimmed.lock().remove(channel);
            self.epochs
                .lock()
                .insert(channel.to_string(), Epoch::parse(epoch).unwrap());
        }

        fn emit(&self, p: Arc<Publication>) {
            let h = self.handler.lock().clone();
            if let Some(h) = h {
                h.on_publication(p, None);
            }
        }

        fn check(&self) -> Result<(), BrokerError> {
            if self.down.load(std::sync::atomic::Ordering::Relaxed) {
                Err(BrokerError::Unavailable("down".into()))
            } else {
                Ok(())
            }
        }
    }

    impl Broker for FakeBroker {
        fn kind(&self) -> &'static str {
            "fake"
        }
        fn is_shared(&self) -> bool {
            true
        }
        fn node_id(&self) -> &str {
            "n1"
        }
        fn status(&self) -> BrokerStatus {
            BrokerStatus {
                kind: "fake",
                connected: true,
                masters: Vec::new(),
            }
        }
        fn start(&self, handler: Arc<dyn BrokerHandler>) {
            *self.handler.lock() = Some(handler);
        }
        fn publish<'a>(
            &'a self,
            channel: &'a str,
            _options: &'a ChannelOptions,
            p: BrokerPublication,
        ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
            if let Err(e) = self.check() {
                return ready(Err(e));
            }
            let p = self.append(channel, p.payload);
            let pos = p.position();
            self.emit(p);
            ready(Ok(pos))
        }
        fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
            let r = self.check();
            if r.is_ok() {
                self.listening.lock().insert(channel.to_string());
            }
            ready(r)
        }
        fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
            self.listening.lock().remove(channel);
            ready(Ok(()))
        }
        fn read_stream<'a>(
            &'a self,
            channel: &'a str,
            _options: &'a ChannelOptions,
            query: HistoryQuery,
        ) -> BoxFuture<'a, Result<StreamSlice, BrokerError>> {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = self.check() {
                return ready(Err(e));
            }
            // Publications racing with the read (a subscribe, a gap fill): they reach the
            // hub before the read sees the stream.
            let racing: Vec<_> = self.during_read.lock().drain(..).collect();
            for (ch, payload) in racing {
                let p = self.append(&ch, payload);
                self.emit(p);
            }
            let epoch = self.epoch_of(channel);
            let start = self.start_of(channel);
            let streams = self.streams.lock();
            let s = streams.get(channel).cloned().unwrap_or_default();
            let gone = self.trimmed.lock().get(channel).copied().unwrap_or(0);
            let after = query.since.map_or(0, |p| p.offset);
            let publications: Vec<_> = s
                .iter()
                .filter(|p| p.offset > after && p.offset > gone)
                .cloned()
                .collect();
            let limit = query.limit.unwrap_or(usize::MAX);
            ready(Ok(StreamSlice {
                publications: publications.into_iter().take(limit).collect(),
                top: StreamPosition::new(start + s.len() as u64, epoch),
                oldest: s.iter().map(|p| p.offset).find(|&o| o > gone),
                start,
            }))
        }
        fn remove_history<'a>(
            &'a self,
            _channel: &'a str,
            _options: &'a ChannelOptions,
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            ready(Ok(()))
        }
        fn add_presence<'a>(
            &'a self,
            _channel: &'a str,
            info: ClientInfo,
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            self.presence.lock().insert(info.client.clone(), info);
            ready(Ok(()))
        }
        fn remove_presence<'a>(
            &'a self,
            _channel: &'a str,
            client: &'a str,
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            self.presence.lock().remove(client);
            ready(Ok(()))
        }
        fn presence<'a>(
            &'a self,
            _channel: &'a str,
        ) -> BoxFuture<'a, Result<HashMap<String, ClientInfo>, BrokerError>> {
            ready(Ok(self.presence.lock().clone()))
        }
        fn member_event<'a>(
            &'a self,
            _channel: &'a str,
            _join: bool,
            _info: ClientInfo,
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            ready(Ok(()))
        }
        fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, BrokerError>> {
            ready(Ok(Vec::new()))
        }
        fn control(&self, command: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
            let r = self.check();
            if r.is_ok() {
                self.sent.lock().push(command);
            }
            ready(r)
        }
        fn survey(&self, request: Bytes) -> BoxFuture<'_, Result<Vec<SurveyAnswer>, BrokerError>> {
            if let Err(e) = self.check() {
                return ready(Err(e));
            }
            // One other node, answering through the same handler type as this one's.
            self.sent.lock().push(request.clone());
            let answer = self
                .handler
                .lock()
                .clone()
                .map(|h| h.on_survey(request))
                .unwrap_or_default();
            ready(Ok(vec![SurveyAnswer {
                node: "n2".into(),
                data: answer,
            }]))
        }
    }

    /// Records the commands it applies; answers a survey with the request reversed.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Vec<u8>>>);

    impl ControlHandler for Recorder {
        fn on_command(&self, command: &[u8]) {
            self.0.lock().push(command.to_vec());
        }
        fn on_survey(&self, request: &[u8]) -> Bytes {
            request.iter().rev().copied().collect::<Vec<u8>>().into()
        }
    }

    #[tokio::test]
    async fn control_goes_to_the_broker_and_what_arrives_reaches_the_control_handler() {
        let (node, broker) = shared_node();
        let handler = broker.handler.lock().clone().unwrap();
        // Before a control handler is set, arrivals are dropped and surveys answered empty.
        handler.on_control(Bytes::from_static(b"early"));
        assert_eq!(handler.on_survey(Bytes::from_static(b"q")), Bytes::new());

        let recorder = Arc::new(Recorder::default());
        node.set_control_handler(recorder.clone());
        node.control(Bytes::from_static(b"kick bob")).await.unwrap();
        assert_eq!(*broker.sent.lock(), vec![Bytes::from_static(b"kick bob")]);
        // Sending does not apply it here: the caller does that itself, once.
        assert!(recorder.0.lock().is_empty());

        handler.on_control(Bytes::from_static(b"from n2"));
        assert_eq!(*recorder.0.lock(), vec![b"from n2".to_vec()]);

        let answers = node.survey(Bytes::from_static(b"abc")).await.unwrap();
        assert_eq!(
            answers,
            vec![SurveyAnswer {
                node: "n2".into(),
                data: Bytes::from_static(b"cba"),
            }]
        );

        broker
            .down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(node
            .control(Bytes::from_static(b"x"))
            .await
            .unwrap_err()
            .is_temporary());
        assert!(node
            .survey(Bytes::from_static(b"x"))
            .await
            .unwrap_err()
            .is_temporary());
    }

    #[tokio::test]
    async fn control_on_a_single_node_reaches_nobody() {
        let hub = Hub::with_namespaces(HubLimits::default(), namespaces());
        let node = Node::new(hub.clone());
        let recorder = Arc::new(Recorder::default());
        node.set_control_handler(recorder.clone());
        node.control(Bytes::from_static(b"kick")).await.unwrap();
        assert!(node
            .survey(Bytes::from_static(b"q"))
            .await
            .unwrap()
            .is_empty());
        // The memory broker itself answers the same way when asked directly.
        let broker = node.broker();
        broker.control(Bytes::from_static(b"kick")).await.unwrap();
        assert!(broker
            .survey(Bytes::from_static(b"q"))
            .await
            .unwrap()
            .is_empty());
        assert!(recorder.0.lock().is_empty(), "never echoed back");
    }

    fn namespaces() -> Namespaces {
        Namespaces::default().with(
            "h",
            ChannelOptions {
                history_size: 100,
                history_ttl: Duration::from_secs(60),
                presence: true,
                ..ChannelOptions::default()
            },
        )
    }

    fn shared_node() -> (Node, Arc<FakeBroker>) {
        let hub = Hub::with_namespaces(HubLimits::default(), namespaces());
        let broker = Arc::new(FakeBroker::default());
        let node = Node::with_broker(hub, broker.clone());
        (node, broker)
    }

    fn drain(out: &mut Outbox) -> Vec<Arc<Publication>> {
        let mut batch = Vec::new();
        let _ = out.try_recv_batch(&mut batch, 1000);
        batch
            .into_iter()
            .filter_map(|d| match d {
                Delivery::Publication(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn recovery_racing_with_live_publications_is_exactly_once_under_the_skip_rule() {
        let (node, broker) = shared_node();
        for i in 0..5 {
            node.publish(
                "h:c",
                Payload::text(format!("{i}")),
                PublishOptions::default(),
                None,
            )
            .await
            .unwrap();
        }
        let (conn, mut out) = node.hub().register(ConnInfo::default()).unwrap();
        // Offsets 6 and 7 arrive live after the join but before the history read.
        broker.during_read.lock().extend([
            ("h:c".to_string(), Payload::text("5")),
            ("h:c".to_string(), Payload::text("6")),
        ]);
        let since = StreamPosition::new(2, Epoch::parse(EPOCH).unwrap());
        let r = node
            .subscribe(
                &conn,
                "h:c",
                SubscribeOptions {
                    chan_info: None,
                    recover_since: Some(since),
                },
            )
            .await
            .unwrap();
        let rec = r.recovery.unwrap();
        assert!(rec.recovered);
        assert_eq!(r.position.offset, 7);
        let recovered: Vec<u64> = rec.publications.iter().map(|p| p.offset).collect();
        assert_eq!(recovered, vec![3, 4, 5, 6, 7]);
        // The race really happened: 6 and 7 are also queued...
        let queued: Vec<u64> = drain(&mut out).iter().map(|p| p.offset).collect();
        assert_eq!(queued, vec![6, 7]);
        // ...and the drivers' rule (skip at or below the returned position) drops them.
        node.publish("h:c", Payload::text("7"), PublishOptions::default(), None)
            .await
            .unwrap();
        let live: Vec<u64> = drain(&mut out)
            .iter()
            .map(|p| p.offset)
            .filter(|&o| o > r.position.offset)
            .collect();
        let mut all = recovered;
        all.extend(queued.into_iter().filter(|&o| o > r.position.offset));
        all.extend(live);
        assert_eq!(
            all,
            vec![3, 4, 5, 6, 7, 8],
            "every publication after 2, once"
        );
        assert!(broker.listening.lock().contains("h:c"));
    }

    /// Records the channels the gap handler is called with.
    fn gap_recorder(node: &Node) -> Arc<Mutex<Vec<String>>> {
        let gaps = Arc::new(Mutex::new(Vec::<String>::new()));
        let g = Arc::clone(&gaps);
        node.set_gap_handler(Arc::new(move |ch: &str| g.lock().push(ch.to_string())));
        gaps
    }

    fn offsets(out: &mut Outbox) -> Vec<u64> {
        drain(out).iter().map(|p| p.offset).collect()
    }

    /// Drains `out` until `n` publications arrived (bounded); returns their offsets.
    async fn collect(out: &mut Outbox, n: usize) -> Vec<u64> {
        let got = collect_publications(out, n).await;
        got.iter().map(|p| p.offset).collect()
    }

    async fn collect_publications(out: &mut Outbox, n: usize) -> Vec<Arc<Publication>> {
        let mut got = Vec::new();
        for _ in 0..500 {
            got.extend(drain(out));
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let offsets: Vec<u64> = got.iter().map(|p| p.offset).collect();
        panic!("only {offsets:?} arrived, {n} expected");
    }

    #[tokio::test]
    async fn without_history_a_jump_or_a_resync_beyond_it_is_reported_as_a_gap() {
        let (node, broker) = shared_node();
        tokio::spawn(node.run_background());
        let gaps = gap_recorder(&node);
        let (conn, mut out) = node.hub().register(ConnInfo::default()).unwrap();
        node.subscribe(&conn, "plain", SubscribeOptions::default())
            .await
            .unwrap();
        let p1 = broker.append("plain", Payload::text("a"));
        broker.emit(p1);
        let _lost = broker.append("plain", Payload::text("b"));
        let p3 = broker.append("plain", Payload::text("c"));
        broker.emit(p3);
        assert_eq!(*gaps.lock(), vec!["plain".to_string()]);
        // Delivered anyway: the client learns of the gap, it does not lose more.
        assert_eq!(offsets(&mut out), vec![1, 3]);
        assert_eq!(broker.reads.load(std::sync::atomic::Ordering::Relaxed), 0);

        let handler = broker.handler.lock().clone().unwrap();
        handler.on_resync(
            "plain",
            StreamPosition::new(3, Epoch::parse(EPOCH).unwrap()),
        );
        assert_eq!(gaps.lock().len(), 1, "nothing missed: same top");
        handler.on_resync(
            "plain",
            StreamPosition::new(5, Epoch::parse(EPOCH).unwrap()),
        );
        assert_eq!(gaps.lock().len(), 2, "missed 4 and 5 while disconnected");
        handler.on_resync(
            "plain",
            StreamPosition::new(0, Epoch::parse("other").unwrap()),
        );
        assert_eq!(
            gaps.lock().len(),
            2,
            "a new stream with nothing in it yet: nothing to miss"
        );
        handler.on_resync(
            "plain",
            StreamPosition::new(2, Epoch::parse("another").unwrap()),
        );
        assert_eq!(
            gaps.lock().len(),
            3,
            "two publications of a new stream missed, no history to fill from"
        );
        handler.on_resync(
            "plain",
            StreamPosition::new(1, Epoch::parse("another").unwrap()),
        );
        assert_eq!(
            gaps.lock().len(),
            4,
            "the store came back without its latest write: offsets will be used again"
        );
    }

    #[tokio::test]
    async fn a_lost_live_publication_is_filled_from_history_in_order_exactly_once() {
        let (node, broker) = shared_node();
        tokio::spawn(node.run_background());
        let gaps = gap_recorder(&node);
        let (a, mut a_out) = node.hub().register(ConnInfo::default()).unwrap();
        let (b, mut b_out) = node.hub().register(ConnInfo::default()).unwrap();
        for conn in [&a, &b] {
            node.subscribe(conn, "h:f", SubscribeOptions::default())
                .await
                .unwrap();
        }
        let p1 = broker.append("h:f", Payload::text("1"));
        broker.emit(p1);
        // 2 and 3 are stored but never arrive live; 4 reveals the gap.
        broker.append("h:f", Payload::text("2"));
        broker.append("h:f", Payload::text("3"));
        let p4 = broker.append("h:f", Payload::text("4"));
        broker.emit(p4);
        for out in [&mut a_out, &mut b_out] {
            assert_eq!(collect(out, 4).await, vec![1, 2, 3, 4]);
        }
        // The stream goes on as usual once the fill is done.
        wait(|| node.inner.seen.lock()["h:f"].fill.is_none()).await;
        node.publish("h:f", Payload::text("5"), PublishOptions::default(), None)
            .await
            .unwrap();
        assert_eq!(offsets(&mut a_out), vec![5]);
        assert_eq!(offsets(&mut b_out), vec![5]);
        assert!(gaps.lock().is_empty(), "filled: nobody is told of a gap");

        // A resync beyond what was seen is filled up to the new top.
        broker.append("h:f", Payload::text("6"));
        broker.append("h:f", Payload::text("7"));
        let handler = broker.handler.lock().clone().unwrap();
        handler.on_resync("h:f", StreamPosition::new(7, Epoch::parse(EPOCH).unwrap()));
        assert_eq!(collect(&mut a_out, 2).await, vec![6, 7]);
        assert!(gaps.lock().is_empty());
    }

    #[tokio::test]
    async fn a_trimmed_range_an_unreachable_store_or_a_new_epoch_fall_back_to_the_gap_handler() {
        let (node, broker) = shared_node();
        tokio::spawn(node.run_background());
        let gaps = gap_recorder(&node);
        let (a, mut out) = node.hub().register(ConnInfo::default()).unwrap();
        node.subscribe(&a, "h:t", SubscribeOptions::default())
            .await
            .unwrap();
        let p1 = broker.append("h:t", Payload::text("1"));
        broker.emit(p1);
        broker.append("h:t", Payload::text("2"));
        broker.append("h:t", Payload::text("3"));
        // History no longer holds 2: the range cannot be filled in order.
        broker.trimmed.lock().insert("h:t".into(), 2);
        let p4 = broker.append("h:t", Payload::text("4"));
        broker.emit(p4);
        wait(|| gaps.lock().len() == 1).await;
        assert_eq!(
            offsets(&mut out),
            vec![1, 4],
            "held publication delivered as it is"
        );

        // The store unreachable during the read: the same fallback.
        broker.append("h:t", Payload::text("5"));
        broker
            .down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let p6 = broker.append("h:t", Payload::text("6"));
        broker.emit(p6);
        wait(|| gaps.lock().len() == 2).await;
        assert_eq!(offsets(&mut out), vec![6]);
        broker
            .down
            .store(false, std::sync::atomic::Ordering::Relaxed);

        // Untrimmed again (and reachable): the next gap is filled.
        broker.append("h:t", Payload::text("7"));
        let p8 = broker.append("h:t", Payload::text("8"));
        broker.emit(p8);
        assert_eq!(collect(&mut out, 2).await, vec![7, 8]);
        assert_eq!(gaps.lock().len(), 2);

        // A resync finding a new epoch whose start history no longer holds.
        broker.reset("h:t", "other");
        broker.append("h:t", Payload::text("1"));
        broker.append("h:t", Payload::text("2"));
        broker.trimmed.lock().insert("h:t".into(), 1);
        let handler = broker.handler.lock().clone().unwrap();
        handler.on_resync(
            "h:t",
            StreamPosition::new(2, Epoch::parse("other").unwrap()),
        );
        wait(|| gaps.lock().len() == 3).await;
        assert!(
            offsets(&mut out).is_empty(),
            "nothing out of a broken range"
        );
    }

    #[tokio::test]
    async fn a_stream_in_a_new_epoch_is_delivered_from_its_start_and_recovers_across() {
        let (node, broker) = shared_node();
        tokio::spawn(node.run_background());
        let gaps = gap_recorder(&node);
        let (a, mut out) = node.hub().register(ConnInfo::default()).unwrap();
        let first = node
            .subscribe(&a, "h:e", SubscribeOptions::default())
            .await
            .unwrap();
        let old_epoch = Epoch::parse(EPOCH).unwrap();
        assert_eq!(first.position.epoch, old_epoch);
        for text in ["1", "2"] {
            let p = broker.append("h:e", Payload::text(text));
            broker.emit(p);
        }
        assert_eq!(collect(&mut out, 2).await, vec![1, 2]);

        // The store restarts empty; the node's resync finds nothing yet.
        broker.reset("h:e", "epochtwo");
        let handler = broker.handler.lock().clone().unwrap();
        handler.on_resync("h:e", StreamPosition::new(0, Epoch::EMPTY));
        // Three publications are accepted by the store before this node listens again.
        for text in ["a", "b", "c"] {
            broker.append("h:e", Payload::text(text));
        }
        let two = Epoch::parse("epochtwo").unwrap();
        handler.on_resync("h:e", StreamPosition::new(3, two));
        let got = collect_publications(&mut out, 3).await;
        assert_eq!(
            got.iter().map(|p| (p.offset, p.epoch)).collect::<Vec<_>>(),
            vec![(1, two), (2, two), (3, two)],
            "the new stream from its start, in order"
        );
        let p4 = broker.append("h:e", Payload::text("d"));
        broker.emit(p4);
        assert_eq!(collect(&mut out, 1).await, vec![4]);
        assert!(gaps.lock().is_empty(), "nothing missed: nobody is told");

        // A client that had everything of the old stream (it was at 2) recovers across
        // the change of epoch; one that was behind did miss something and is told.
        let (b, _b_out) = node.hub().register(ConnInfo::default()).unwrap();
        let r = node
            .subscribe(
                &b,
                "h:e",
                SubscribeOptions {
                    recover_since: Some(StreamPosition::new(2, old_epoch)),
                    ..SubscribeOptions::default()
                },
            )
            .await
            .unwrap();
        let rec = r.recovery.unwrap();
        assert!(rec.recovered);
        assert_eq!(rec.position, StreamPosition::new(4, two));
        assert_eq!(
            rec.publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        let (c, _c_out) = node.hub().register(ConnInfo::default()).unwrap();
        let r = node
            .subscribe(
                &c,
                "h:e",
                SubscribeOptions {
                    recover_since: Some(StreamPosition::new(1, old_epoch)),
                    ..SubscribeOptions::default()
                },
            )
            .await
            .unwrap();
        assert!(!r.recovery.unwrap().recovered);

        // A new epoch shown by a live publication instead of a resync: filled the same way.
        broker.reset("h:e", "epochthr");
        broker.append("h:e", Payload::text("x"));
        let p2 = broker.append("h:e", Payload::text("y"));
        broker.emit(p2);
        let three = Epoch::parse("epochthr").unwrap();
        let got = collect_publications(&mut out, 2).await;
        assert_eq!(
            got.iter().map(|p| (p.offset, p.epoch)).collect::<Vec<_>>(),
            vec![(1, three), (2, three)]
        );
        assert!(gaps.lock().is_empty());
    }

    #[tokio::test]
    async fn a_removed_history_goes_on_in_a_new_epoch_without_a_gap() {
        let (node, broker) = shared_node();
        tokio::spawn(node.run_background());
        let gaps = gap_recorder(&node);
        let (a, mut out) = node.hub().register(ConnInfo::default()).unwrap();
        node.subscribe(&a, "h:rm", SubscribeOptions::default())
            .await
            .unwrap();
        for text in ["1", "2", "3"] {
            let p = broker.append("h:rm", Payload::text(text));
            broker.emit(p);
        }
        assert_eq!(collect(&mut out, 3).await, vec![1, 2, 3]);
        let old = Epoch::parse(EPOCH).unwrap();
        broker.remove("h:rm", "removed1");
        let p4 = broker.append("h:rm", Payload::text("4"));
        broker.emit(p4);
        let got = collect_publications(&mut out, 1).await;
        let new = Epoch::parse("removed1").unwrap();
        assert_eq!((got[0].offset, got[0].epoch), (4, new));
        wait(|| node.inner.seen.lock()["h:rm"].fill.is_none()).await;
        assert!(gaps.lock().is_empty(), "nothing was missed: nobody is told");
        // A client that had everything before the removal recovers in the new epoch.
        let (b, _b_out) = node.hub().register(ConnInfo::default()).unwrap();
        let r = node
            .subscribe(
                &b,
                "h:rm",
                SubscribeOptions {
                    recover_since: Some(StreamPosition::new(3, old)),
                    ..SubscribeOptions::default()
                },
            )
            .await
            .unwrap();
        let rec = r.recovery.unwrap();
        assert!(rec.recovered);
        assert_eq!(
            rec.publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            vec![4]
        );
    }

    #[tokio::test]
    async fn live_publications_during_a_fill_are_held_and_never_delivered_twice() {
        let (node, broker) = shared_node();
        let gaps = gap_recorder(&node);
        let (a, mut out) = node.hub().register(ConnInfo::default()).unwrap();
        node.subscribe(&a, "h:r", SubscribeOptions::default())
            .await
            .unwrap();
        let (b, mut other_out) = node.hub().register(ConnInfo::default()).unwrap();
        node.subscribe(&b, "h:other", SubscribeOptions::default())
            .await
            .unwrap();
        let p1 = broker.append("h:r", Payload::text("1"));
        broker.emit(p1);
        broker.append("h:r", Payload::text("2"));
        let p3 = broker.append("h:r", Payload::text("3"));
        // 3 reveals the gap; the fill is queued but not running yet (no background task).
        broker.emit(p3);
        assert_eq!(offsets(&mut out), vec![1], "3 is held until 2 is filled");
        // A resync reports a top of 4 meanwhile, then 4 arrives live too (published
        // between the re-subscribe and the top read): both at or below the filled top.
        let p4 = broker.append("h:r", Payload::text("4"));
        let handler = broker.handler.lock().clone().unwrap();
        handler.on_resync("h:r", p4.position());
        broker.emit(p4);
        // Another channel is delivered as usual while the fill waits.
        let o1 = broker.append("h:other", Payload::text("x"));
        broker.emit(o1);
        assert_eq!(offsets(&mut other_out), vec![1]);
        assert_eq!(offsets(&mut out), Vec::<u64>::new());
        // 5 and 6 arrive live while the fill reads the stream.
        broker.during_read.lock().extend([
            ("h:r".to_string(), Payload::text("5")),
            ("h:r".to_string(), Payload::text("6")),
        ]);
        tokio::spawn(node.run_background());
        assert_eq!(collect(&mut out, 5).await, vec![2, 3, 4, 5, 6]);
        wait(|| node.inner.seen.lock()["h:r"].fill.is_none()).await;
        let p7 = broker.append("h:r", Payload::text("7"));
        broker.emit(p7);
        assert_eq!(offsets(&mut out), vec![7], "nothing else, nothing twice");
        assert!(gaps.lock().is_empty());
    }

    #[tokio::test]
    async fn leaving_removes_presence_and_the_last_leave_stops_listening() {
        let (node, broker) = shared_node();
        tokio::spawn(node.run_background());
        let (a, _a_out) = node.hub().register(ConnInfo::default()).unwrap();
        let (b, _b_out) = node.hub().register(ConnInfo::default()).unwrap();
        node.subscribe(&a, "h:p", SubscribeOptions::default())
            .await
            .unwrap();
        node.subscribe(&b, "h:p", SubscribeOptions::default())
            .await
            .unwrap();
        assert_eq!(node.presence_stats("h:p").await.unwrap().num_clients, 2);
        // The store lost everything (a restart): the broker writes this node's entries
        // again from what the node tells it, before it reports itself connected.
        let handler = broker.handler.lock().clone().unwrap();
        let mut again: Vec<String> = handler
            .local_presence("h:p")
            .into_iter()
            .map(|i| i.client)
            .collect();
        again.sort();
        let mut present: Vec<String> = broker.presence.lock().keys().cloned().collect();
        present.sort();
        assert_eq!(again, present);
        assert_eq!(again.len(), 2);
        drop(a);
        wait(|| broker.presence.lock().len() == 1).await;
        assert!(broker.listening.lock().contains("h:p"), "b still listens");
        node.unsubscribe(&b, "h:p").await;
        wait(|| broker.presence.lock().is_empty() && broker.listening.lock().is_empty()).await;
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_a_temporary_error_and_undoes_the_join() {
        let (node, broker) = shared_node();
        broker
            .down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (a, _out) = node.hub().register(ConnInfo::default()).unwrap();
        let e = node
            .subscribe(&a, "h:x", SubscribeOptions::default())
            .await
            .unwrap_err();
        assert!(e.is_temporary());
        assert!(!node.hub().is_member(a.id(), "h:x"));
        let e = node
            .publish("h:x", Payload::text("."), PublishOptions::default(), None)
            .await
            .unwrap_err();
        assert!(e.is_temporary());
        assert!(node
            .publish_now("h:x", Payload::text("."), PublishOptions::default(), None)
            .is_none());
    }

    #[tokio::test]
    async fn the_memory_node_is_the_hub() {
        let hub = Hub::with_namespaces(HubLimits::default(), namespaces());
        let node = Node::new(hub.clone());
        assert!(!node.is_shared());
        let (a, mut out) = hub.register(ConnInfo::default()).unwrap();
        node.subscribe(&a, "h:m", SubscribeOptions::default())
            .await
            .unwrap();
        let pos = node
            .publish("h:m", Payload::text("x"), PublishOptions::default(), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pos.offset, 1);
        assert!(node
            .publish_now("h:m", Payload::text("y"), PublishOptions::default(), None)
            .is_some());
        assert_eq!(drain(&mut out).len(), 2);
        let h = node.history("h:m", HistoryQuery::default()).await.unwrap();
        assert_eq!(h.publications.len(), 2);
        assert_eq!(node.presence("h:m").await.unwrap().len(), 1);
        assert!(matches!(
            node.publish(
                "bad name",
                Payload::text("."),
                PublishOptions::default(),
                None
            )
            .await,
            Err(NodeError::Channel(ChannelError::InvalidName))
        ));
    }

    /// Waits (bounded) for background work to reach a state.
    async fn wait(mut cond: impl FnMut() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached");
    }
}
