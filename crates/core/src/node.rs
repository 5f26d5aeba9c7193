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
//! offsets (a message lost between the store and this node, e.g. across a reconnect), a
//! new epoch, or a resync after a reconnect whose top differs from what was seen, means
//! local subscribers may have missed something: the gap handler
//! ([`Node::set_gap_handler`]) is called with the channel, and drivers tell their clients
//! (the Centrifugo driver sends an `unsubscribe` push with code 2500 "insufficient state",
//! so the SDK resubscribes with recovery).
//!
//! # Control between nodes
//!
//! [`Node::control`] sends an opaque command to every other node and [`Node::survey`] asks
//! them a question; what arrives from other nodes goes to the [`ControlHandler`] set with
//! [`Node::set_control_handler`]. The caller applies a command to (or answers a question
//! for) its own node itself: the broker never echoes them back, so nothing is applied twice.
//! On a single node both reach nobody and resolve at once.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, Weak};

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
use crate::history::{HistoryQuery, HistoryResult, Recovery, StreamPosition};
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

/// Called with a channel whose local subscribers may have missed publications.
pub type GapHandler = Arc<dyn Fn(&str) + Send + Sync>;

/// What this node does with control traffic from other nodes (see the module
/// documentation). Called from the broker's tasks: must not block.
pub trait ControlHandler: Send + Sync {
    /// Applies a command another node sent with [`Node::control`].
    fn on_command(&self, command: &[u8]);
    /// Answers a question another node asked with [`Node::survey`].
    fn on_survey(&self, request: &[u8]) -> Bytes;
}

/// Background work queued by the hub's leave notifications and the broker's resyncs.
enum Task {
    /// The store came back (possibly empty): write this node's presence entries of the
    /// channel again.
    RestorePresence(String),
    Left {
        channel: String,
        conn: ConnId,
        info: Option<ClientInfo>,
        emptied: bool,
    },
}

struct NodeInner {
    hub: Hub,
    broker: Arc<dyn Broker>,
    shared: bool,
    /// Latest position seen per listened channel (gap detection).
    seen: Mutex<HashMap<String, StreamPosition>>,
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
        let node = Node {
            inner: Arc::new(NodeInner {
                hub,
                broker,
                shared,
                seen: Mutex::new(HashMap::new()),
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
        if !self.inner.shared {
            return Ok(());
        }
        Ok(self.inner.broker.control(command).await?)
    }

    /// Asks every other live node `request` and returns their answers (answer for this
    /// node yourself). The wait is bounded by the broker; a node that does not answer in
    /// time fails the survey with a temporary [`NodeError::Broker`]. Empty on a single
    /// node.
    pub async fn survey(&self, request: Bytes) -> Result<Vec<SurveyAnswer>, NodeError> {
        if !self.inner.shared {
            return Ok(Vec::new());
        }
        Ok(self.inner.broker.survey(request).await?)
    }

    /// The work a shared broker needs done outside the hub's locks (presence removal,
    /// leave events to other nodes, stopping to listen to emptied channels). The server
    /// spawns it once; it runs until the node is dropped. Resolves at once for the
    /// in-memory broker, or when called a second time.
    pub fn run_background(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let rx = self.inner.tasks_rx.lock().take();
        let weak = Arc::downgrade(&self.inner);
        async move {
            let Some(mut rx) = rx else { return };
            while let Some(task) = rx.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                inner.run_task(task).await;
            }
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
        (!self.inner.shared).then(|| {
            self.inner
                .hub
                .publish_with_info(channel, payload, opts, info)
        })
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
        let inner = &*self.inner;
        let (_, options) = inner.hub.namespaces().resolve(channel)?;
        if !inner.shared {
            let report = inner.hub.publish_with_info(channel, payload, opts, info);
            return Ok(report.position());
        }
        let publication = BrokerPublication {
            payload,
            info,
            publisher: opts.publisher,
            exclude: opts.exclude,
        };
        let position = inner.broker.publish(channel, options, publication).await?;
        Ok(Some(position))
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
        let inner = &*self.inner;
        let (_, options) = inner.hub.namespaces().resolve(channel)?;
        if !inner.shared {
            return Ok(payloads
                .into_iter()
                .filter_map(|p| inner.hub.publish(channel, p, opts).position())
                .collect());
        }
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

    /// Subscribes `conn` to `channel` (with channel info and recovery as `opts` say).
    /// See the module documentation for the rule drivers apply to queued publications
    /// at or below the returned position.
    pub async fn subscribe(
        &self,
        conn: &ConnHandle,
        channel: &str,
        opts: SubscribeOptions,
    ) -> Result<SubscribeResult, NodeError> {
        let inner = &*self.inner;
        if !inner.shared {
            return Ok(inner.hub.subscribe_with(conn, channel, opts)?);
        }
        let since = opts.recover_since;
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
            inner.saw(channel, slice.top, false);
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
        let inner = &*self.inner;
        if !inner.shared {
            return Ok(inner.hub.history(channel, query)?);
        }
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

    /// Drops the history of `channel`; its epoch changes (see [`Hub::history_remove`]).
    pub async fn history_remove(&self, channel: &str) -> Result<(), NodeError> {
        let inner = &*self.inner;
        if !inner.shared {
            return Ok(inner.hub.history_remove(channel)?);
        }
        let options = history_options(&inner.hub, channel)?;
        inner.broker.remove_history(channel, &options).await?;
        Ok(())
    }

    /// Who is subscribed to `channel` on every node: client id → info.
    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, NodeError> {
        let inner = &*self.inner;
        if !inner.shared {
            return Ok(inner.hub.presence(channel)?);
        }
        let options = inner.hub.namespaces().options(channel)?;
        if !options.presence {
            return Err(ChannelError::NotAvailable.into());
        }
        Ok(inner.broker.presence(channel).await?)
    }

    /// Subscribed connections and distinct users of `channel` on every node.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, NodeError> {
        if !self.inner.shared {
            return Ok(self.inner.hub.presence_stats(channel)?);
        }
        let map = self.presence(channel).await?;
        let users: HashSet<&str> = map.values().map(|i| i.user.as_str()).collect();
        Ok(PresenceStats {
            num_clients: map.len(),
            num_users: users.len(),
        })
    }

    /// The live nodes.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, NodeError> {
        Ok(self.inner.broker.nodes().await?)
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

    /// Records that `position` was seen in `channel`; returns whether it reveals a gap.
    /// `live`: from the stream (a jump is a gap); otherwise a top read from the store,
    /// which only moves the mark forward.
    fn saw(&self, channel: &str, position: StreamPosition, live: bool) -> bool {
        let mut seen = self.seen.lock();
        match seen.get_mut(channel) {
            Some(last) if last.epoch == position.epoch => {
                let gap = live && position.offset > last.offset + 1;
                if position.offset > last.offset {
                    *last = position;
                }
                gap
            }
            Some(last) => {
                *last = position;
                live
            }
            None => {
                seen.insert(channel.to_string(), position);
                false
            }
        }
    }

    fn gap(&self, channel: &str) {
        tracing::info!(channel, "subscribers may have missed publications");
        if let Some(handler) = self.on_gap.get() {
            handler(channel);
        }
    }

    async fn run_task(&self, task: Task) {
        match task {
            Task::RestorePresence(channel) => {
                // Only namespaces with presence answer; the entries are this node's members.
                let Ok(members) = self.hub.presence(&channel) else {
                    return;
                };
                for info in members.into_values() {
                    if let Err(e) = self.broker.add_presence(&channel, info).await {
                        tracing::warn!(%channel, "presence entry not restored: {e}");
                        return;
                    }
                }
            }
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
        let gap = inner.saw(&channel, publication.position(), true);
        inner.hub.deliver(publication, exclude);
        if gap {
            inner.gap(&channel);
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
        // The store may have lost this node's presence entries (a restart without
        // persistence): write them again.
        let _ = inner.tasks.send(Task::RestorePresence(channel.to_string()));
        let missed = {
            let mut seen = inner.seen.lock();
            match seen.get_mut(channel) {
                Some(last) if last.epoch == top.epoch => {
                    let missed = top.offset > last.offset;
                    last.offset = last.offset.max(top.offset);
                    missed
                }
                Some(last) => {
                    *last = top;
                    true
                }
                None => {
                    seen.insert(channel.to_string(), top);
                    false
                }
            }
        };
        if missed {
            inner.gap(channel);
        }
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
    }

    const EPOCH: &str = "fakeepoc";

    impl FakeBroker {
        fn append(&self, channel: &str, payload: Payload) -> Arc<Publication> {
            let mut streams = self.streams.lock();
            let s = streams.entry(channel.to_string()).or_default();
            let p = Arc::new(Publication::new(
                Arc::from(channel),
                payload,
                s.len() as u64 + 1,
                Epoch::parse(EPOCH).unwrap(),
                None,
            ));
            s.push(Arc::clone(&p));
            p
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
            // Publications racing with the subscribe: they reach the hub (and the new
            // member) before the read sees the stream.
            let racing: Vec<_> = self.during_read.lock().drain(..).collect();
            for (ch, payload) in racing {
                let p = self.append(&ch, payload);
                self.emit(p);
            }
            let streams = self.streams.lock();
            let s = streams.get(channel).cloned().unwrap_or_default();
            let after = query.since.map_or(0, |p| p.offset);
            let publications: Vec<_> = s.iter().filter(|p| p.offset > after).cloned().collect();
            let limit = query.limit.unwrap_or(usize::MAX);
            ready(Ok(StreamSlice {
                publications: publications.into_iter().take(limit).collect(),
                top: StreamPosition::new(s.len() as u64, Epoch::parse(EPOCH).unwrap()),
                oldest: s.first().map(|p| p.offset),
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

    #[tokio::test]
    async fn a_jump_in_the_live_stream_or_a_resync_beyond_it_is_reported_as_a_gap() {
        let (node, broker) = shared_node();
        let gaps = Arc::new(Mutex::new(Vec::<String>::new()));
        let g = Arc::clone(&gaps);
        node.set_gap_handler(Arc::new(move |ch: &str| g.lock().push(ch.to_string())));
        let (conn, mut out) = node.hub().register(ConnInfo::default()).unwrap();
        node.subscribe(&conn, "h:g", SubscribeOptions::default())
            .await
            .unwrap();
        let p1 = broker.append("h:g", Payload::text("a"));
        broker.emit(p1);
        let _lost = broker.append("h:g", Payload::text("b"));
        let p3 = broker.append("h:g", Payload::text("c"));
        broker.emit(p3);
        assert_eq!(*gaps.lock(), vec!["h:g".to_string()]);
        // Delivered anyway: the client learns of the gap, it does not lose more.
        assert_eq!(drain(&mut out).len(), 2);

        let handler = broker.handler.lock().clone().unwrap();
        handler.on_resync("h:g", StreamPosition::new(3, Epoch::parse(EPOCH).unwrap()));
        assert_eq!(gaps.lock().len(), 1, "nothing missed: same top");
        handler.on_resync("h:g", StreamPosition::new(5, Epoch::parse(EPOCH).unwrap()));
        assert_eq!(gaps.lock().len(), 2, "missed 4 and 5 while disconnected");
        handler.on_resync(
            "h:g",
            StreamPosition::new(0, Epoch::parse("other").unwrap()),
        );
        assert_eq!(gaps.lock().len(), 3, "the store lost the stream");
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
        // The store lost everything (a restart): the resync writes this node's entries again.
        broker.presence.lock().clear();
        let handler = broker.handler.lock().clone().unwrap();
        handler.on_resync("h:p", StreamPosition::default());
        wait(|| broker.presence.lock().len() == 2).await;
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
