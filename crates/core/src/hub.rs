//! The hub: the registry of connections and channels, and the entry point
//! for subscribe, unsubscribe, publish, history, recovery, presence and
//! permission checks.
//!
//! Both registries are split into shards, each a `parking_lot` lock around a
//! `HashMap`, chosen by hashing the key. Unrelated channels therefore rarely
//! share a lock, and the shard lock is only held for a map lookup or
//! insert: the fan-out itself runs under the channel's own locks.
//!
//! Lock order (never taken the other way round, so no deadlock):
//! connection subscriptions → channel shard → channel stream → channel
//! members → outbox. A channel shard lock is always released before a
//! channel's own locks are taken. Connections found to be slow consumers
//! during a fan-out are removed only after every lock is released, because
//! removing one takes *its* subscriptions lock.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::channel::{Channel, FanOut, JoinError};
use crate::clock::{Clock, SystemClock};
use crate::connection::{ConnEntry, ConnHandle, ConnInfo, Subscriptions};
use crate::error::{ChannelError, CloseReason, HubError, PermissionError};
use crate::history::{Epoch, HistoryQuery, HistoryResult, Recovery, StreamPosition};
use crate::limits::HubLimits;
use crate::namespace::{ChannelOptions, Namespaces};
use crate::outbox::{Outbox, OutboxShared, PushOutcome};
use crate::presence::{ClientInfo, PresenceStats};
use crate::publication::{ConnId, Control, Delivery, Payload, Publication};
use crate::stats::{HubStats, StatsCounters};

/// Number of channel shards: enough that publishers on different cores
/// rarely meet on one lock, few enough to stay cheap to iterate.
const CHANNEL_SHARDS: usize = 64;
/// Number of connection-registry shards (touched on connect/disconnect only).
const CONN_SHARDS: usize = 16;

type ChannelMap = HashMap<Arc<str>, Arc<Channel>>;
type ConnMap = HashMap<ConnId, Arc<ConnEntry>>;

/// Options for [`Hub::publish`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Do not deliver to this connection (typically the publisher itself:
    /// "broadcast to everyone else").
    pub exclude: Option<ConnId>,
    /// Recorded as [`Publication::publisher`].
    pub publisher: Option<ConnId>,
    /// Deliver to the members without storing in history, even in a namespace that keeps
    /// history (Centrifugo's `skip_history`). Such a publication is not part of the
    /// channel's stream: it takes no offset (its [`Publication::offset`] is 0) and
    /// recovery never returns it. Honoured on a single node; a shared broker stores it.
    pub skip_history: bool,
}

impl PublishOptions {
    /// Publication by connection `id`, delivered to every member including itself.
    pub fn from_conn(id: ConnId) -> PublishOptions {
        PublishOptions {
            exclude: None,
            publisher: Some(id),
            skip_history: false,
        }
    }

    /// Publication by connection `id`, delivered to every member except itself.
    pub fn except_sender(id: ConnId) -> PublishOptions {
        PublishOptions {
            exclude: Some(id),
            publisher: Some(id),
            skip_history: false,
        }
    }
}

/// What one [`Hub::publish`] did.
#[derive(Debug, Clone, Default)]
pub struct PublishReport {
    /// The publication, or `None` if it went nowhere: the channel does not
    /// exist (no members) and keeps no history, or its name is invalid.
    pub publication: Option<Arc<Publication>>,
    /// Outboxes the publication was queued into.
    pub delivered: usize,
    /// Older items evicted from outboxes to make room (DropOldest policy).
    pub dropped: usize,
    /// Members closed as slow consumers by this publish (Close policy).
    pub slow_closed: usize,
}

impl PublishReport {
    /// Offset assigned to the publication, if the channel existed.
    pub fn offset(&self) -> Option<u64> {
        self.publication.as_ref().map(|p| p.offset)
    }

    /// Epoch of the channel, if it existed.
    pub fn epoch(&self) -> Option<Epoch> {
        self.publication.as_ref().map(|p| p.epoch)
    }

    /// Stream position of the publication, if the channel existed.
    pub fn position(&self) -> Option<StreamPosition> {
        self.publication.as_ref().map(|p| p.position())
    }
}

/// Options for [`Hub::subscribe_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Per-channel info about this subscriber (e.g. from a subscription
    /// token), shown in presence and join/leave events.
    pub chan_info: Option<Bytes>,
    /// Recover what the client missed after this position, atomically with
    /// the join (see [`Hub::subscribe_with_recovery`]).
    pub recover_since: Option<StreamPosition>,
}

/// What [`Hub::subscribe_with`] did.
#[derive(Debug, Clone, Default)]
pub struct SubscribeResult {
    /// False if the connection was already subscribed (nothing changed).
    pub added: bool,
    /// The channel's top at the moment of the join: every publication after
    /// it is queued to the connection.
    pub position: StreamPosition,
    /// Present when `recover_since` was given.
    pub recovery: Option<Recovery>,
    /// The namespace options of the channel (for protocols: `force_recovery`,
    /// whether to report positions, and so on).
    pub options: Arc<ChannelOptions>,
}

/// Who is asking, for the `check_*` permission methods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCtx {
    /// Authenticated user id; empty for an anonymous connection.
    pub user: String,
    /// The client's connection in this hub, if any; used to tell whether it
    /// is subscribed to the channel.
    pub conn: Option<ConnId>,
    /// The caller has verified a subscription token for this very channel
    /// (needed for private channels; also admits anonymous clients).
    pub subscription_token: bool,
}

impl ClientCtx {
    /// The context of a registered connection (its user and id, no token).
    pub fn for_conn(conn: &ConnHandle) -> ClientCtx {
        ClientCtx {
            user: conn.info().user.clone().unwrap_or_default(),
            conn: Some(conn.id()),
            subscription_token: false,
        }
    }

    /// Sets [`subscription_token`](Self::subscription_token).
    pub fn with_subscription_token(mut self, verified: bool) -> ClientCtx {
        self.subscription_token = verified;
        self
    }

    /// Whether the client has no user id.
    pub fn is_anonymous(&self) -> bool {
        self.user.is_empty()
    }
}

/// Told by the hub when a member leaves a channel, so that a broker shared by
/// several nodes can follow (remove presence entries, tell other nodes,
/// stop listening to a channel this node no longer needs). Leaving happens
/// on unsubscribe and on disconnect (dropping a [`ConnHandle`]), so the hub
/// is the one place that sees every leave.
pub trait HubListener: Send + Sync {
    /// Connection `conn` left `channel`. `info` is set in namespaces with
    /// presence or join/leave events; `emptied` when no member is left.
    /// Called with no hub lock held; must not block.
    fn member_left(&self, channel: &str, conn: ConnId, info: Option<&ClientInfo>, emptied: bool);
}

/// Told by the hub about every connection and every membership, for whatever
/// follows activity from outside the hub (webhooks in the server crate).
/// Every call is made with no hub lock held and must not block; join and leave
/// of one member may be reported from different threads, so an observer that
/// derives occupancy counts them rather than trusting their order.
pub trait HubObserver: Send + Sync {
    /// A connection was registered.
    fn connected(&self, conn: ConnId, info: &ConnInfo);
    /// A connection left the hub (after leaving all its channels).
    fn disconnected(&self, conn: ConnId, info: &ConnInfo);
    /// A connection joined `channel`; `member` carries its channel info.
    fn member_joined(&self, channel: &str, member: &ClientInfo);
    /// A connection left `channel`; `member` carries its channel info in
    /// namespaces with presence or join/leave events.
    fn member_left(&self, channel: &str, member: &ClientInfo);
}

/// A leave to report to the [`HubListener`] once no lock is held.
struct LeftNotice {
    conn: ConnId,
    info: Option<ClientInfo>,
    emptied: bool,
}

pub(crate) struct HubInner {
    /// Told about leaves (set once, by a node with a shared broker).
    listener: OnceLock<Arc<dyn HubListener>>,
    /// Told about connections and memberships (set once, by the server).
    observer: OnceLock<Arc<dyn HubObserver>>,
    pub(crate) limits: HubLimits,
    namespaces: Namespaces,
    clock: Arc<dyn Clock>,
    /// When the hub was made; a placeholder instant for channels that never
    /// read the clock.
    pub(crate) created: Instant,
    channels: Box<[RwLock<ChannelMap>]>,
    conns: Box<[Mutex<ConnMap>]>,
    next_id: AtomicU64,
    /// Feeds epoch generation; together with `hasher`'s random keys it makes
    /// epochs differ across channel lifetimes and across process restarts.
    epoch_counter: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
    stats: StatsCounters,
    /// Bytes held by all channel histories.
    pub(crate) history_bytes: AtomicUsize,
    /// Held by the one publisher enforcing the history memory cap.
    evicting: Mutex<()>,
    /// Registered connections per user, kept only under a per-user limit.
    per_user: Mutex<HashMap<String, usize>>,
}

impl HubInner {
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    pub(crate) fn new_epoch(&self) -> Epoch {
        let n = self.epoch_counter.fetch_add(1, Ordering::Relaxed);
        Epoch::from_seed(self.hasher.hash_one(n))
    }

    pub(crate) fn history_freed(&self, bytes: usize) {
        if bytes > 0 {
            self.history_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

/// What [`Hub::channel_sizes`] adds up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelSizes {
    /// Channel memberships (a connection in three channels counts three times).
    pub subscriptions: usize,
    /// Presence entries: members of channels whose namespace keeps presence.
    pub presence_entries: usize,
    /// Publications held in channel histories.
    pub history_publications: usize,
}

/// The channel hub. Cheap to clone (a reference-counted pointer); every
/// clone is the same hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Hub {
    /// Creates an empty hub with the given limits and the default namespace
    /// only, with default options (no history, no presence).
    pub fn new(limits: HubLimits) -> Hub {
        Hub::with_namespaces(limits, Namespaces::default())
    }

    /// Creates an empty hub with the given limits and namespaces.
    pub fn with_namespaces(limits: HubLimits, namespaces: Namespaces) -> Hub {
        Hub::with_clock(limits, namespaces, Arc::new(SystemClock))
    }

    /// Like [`with_namespaces`](Self::with_namespaces), reading time (for
    /// history expiry) from `clock`.
    pub fn with_clock(limits: HubLimits, namespaces: Namespaces, clock: Arc<dyn Clock>) -> Hub {
        let created = clock.now();
        Hub {
            inner: Arc::new(HubInner {
                listener: OnceLock::new(),
                observer: OnceLock::new(),
                limits,
                namespaces,
                clock,
                created,
                channels: (0..CHANNEL_SHARDS).map(|_| RwLock::default()).collect(),
                conns: (0..CONN_SHARDS).map(|_| Mutex::default()).collect(),
                next_id: AtomicU64::new(1),
                epoch_counter: AtomicU64::new(0),
                hasher: Default::default(),
                stats: StatsCounters::default(),
                history_bytes: AtomicUsize::new(0),
                evicting: Mutex::new(()),
                per_user: Mutex::default(),
            }),
        }
    }

    /// The limits this hub was created with.
    pub fn limits(&self) -> &HubLimits {
        &self.inner.limits
    }

    /// The namespaces this hub was created with.
    pub fn namespaces(&self) -> &Namespaces {
        &self.inner.namespaces
    }

    /// Registers a new connection. Returns its handle (dropping it
    /// disconnects) and its outbox (for the writer task).
    ///
    /// Fails with [`HubError::TooManyConnections`] at the connection limit.
    pub fn register(&self, info: ConnInfo) -> Result<(ConnHandle, Outbox), HubError> {
        let inner = &*self.inner;
        if !inner.stats.try_add_connection(inner.limits.max_connections) {
            inner.stats.rejected_connection();
            let limit = inner.limits.max_connections.unwrap_or(usize::MAX);
            tracing::debug!(limit, remote = %info.remote_addr, "connection refused: limit reached");
            return Err(HubError::TooManyConnections { limit });
        }
        if let (Some(limit), Some(user)) = (inner.limits.max_connections_per_user, &info.user) {
            let mut per_user = inner.per_user.lock();
            let n = per_user.entry(user.clone()).or_insert(0);
            if *n >= limit {
                drop(per_user);
                inner.stats.remove_connection();
                inner.stats.rejected_connection();
                tracing::debug!(limit, user, "connection refused: user limit reached");
                return Err(HubError::TooManyUserConnections { limit });
            }
            *n += 1;
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ConnEntry {
            id,
            info,
            signed_in: Default::default(),
            outbox: OutboxShared::new(),
            subs: Mutex::new(Subscriptions::default()),
        });
        self.conn_shard(id).lock().insert(id, Arc::clone(&entry));
        if let Some(observer) = inner.observer.get() {
            observer.connected(id, &entry.info);
        }
        let outbox = Outbox::new(Arc::clone(&entry));
        let handle = ConnHandle {
            entry,
            hub: self.clone(),
        };
        Ok((handle, outbox))
    }

    /// Makes `conn` a member of `channel`, creating the channel if needed.
    /// Subscribing twice is not an error.
    ///
    /// Fails with [`HubError::InvalidChannel`] or
    /// [`HubError::UnknownNamespace`] for a bad name, [`HubError::RoomFull`]
    /// at the member limit, or [`HubError::ConnectionClosed`] if the
    /// connection was closed. Permissions are not checked here; see
    /// [`check_subscribe`](Self::check_subscribe).
    pub fn subscribe(&self, conn: &ConnHandle, channel: &str) -> Result<(), HubError> {
        self.subscribe_with(conn, channel, SubscribeOptions::default())
            .map(|_| ())
    }

    /// Subscribes `conn` to `channel` and, atomically with the join, lists
    /// the publications after `since` that it missed: every publication in
    /// the channel is then either in [`Recovery::publications`] or queued
    /// to the connection's outbox after the join, exactly once, even while
    /// other tasks publish concurrently.
    pub fn subscribe_with_recovery(
        &self,
        conn: &ConnHandle,
        channel: &str,
        since: StreamPosition,
    ) -> Result<(Recovery, StreamPosition), HubError> {
        let r = self.subscribe_with(
            conn,
            channel,
            SubscribeOptions {
                chan_info: None,
                recover_since: Some(since),
            },
        )?;
        Ok((r.recovery.unwrap_or_default(), r.position))
    }

    /// [`subscribe`](Self::subscribe) with channel info and optional
    /// recovery. For a connection that is already a member nothing changes,
    /// but the position (and recovery, if asked) is still reported.
    pub fn subscribe_with(
        &self,
        conn: &ConnHandle,
        channel: &str,
        opts: SubscribeOptions,
    ) -> Result<SubscribeResult, HubError> {
        let inner = &*self.inner;
        let (_, options) = inner.namespaces.resolve(channel)?;
        let entry = &conn.entry;
        // Held for the whole operation so that a concurrent removal of this
        // connection either happens before (we see `removed`) or after (it
        // sees the channel in `channels` and leaves it).
        let mut subs = entry.subs.lock();
        if subs.removed {
            let reason = entry.outbox.close_reason().unwrap_or(CloseReason::Normal);
            return Err(HubError::ConnectionClosed(reason));
        }
        if let Some(max) = inner.limits.max_subscriptions_per_connection {
            if subs.channels.len() >= max && !subs.channels.contains(channel) {
                return Err(HubError::TooManySubscriptions { limit: max });
            }
        }
        let limit = inner.limits.max_room_members;
        if limit == Some(0) && !subs.channels.contains(channel) {
            return Err(self.room_full(channel, 0));
        }
        let (joined, ch) = loop {
            let ch = self.get_or_create_channel(channel, options);
            match ch.join(
                entry,
                limit,
                opts.chan_info.clone(),
                opts.recover_since,
                inner,
            ) {
                Ok(joined) => break (joined, ch),
                Err(JoinError::Full(limit)) => return Err(self.room_full(channel, limit)),
                // Its last member left between our lookup and our join:
                // unlink it (if its leaver has not yet) and start over.
                Err(JoinError::Dead) => {
                    self.unlink_channel(&ch);
                }
            }
        };
        if joined.added {
            subs.channels.insert(Arc::clone(ch.name()));
        }
        drop(subs);
        self.finish_fan_out(&joined.fan, channel);
        if let (true, Some(observer)) = (joined.added, self.inner.observer.get()) {
            observer.member_joined(channel, &ClientInfo::of(entry, opts.chan_info));
        }
        Ok(SubscribeResult {
            added: joined.added,
            position: joined.position,
            recovery: joined.recovery,
            options: Arc::clone(ch.options()),
        })
    }

    /// Removes `conn` from `channel`; the channel disappears when its last
    /// member leaves (unless it keeps history). Returns whether `conn` was a
    /// member.
    pub fn unsubscribe(&self, conn: &ConnHandle, channel: &str) -> bool {
        let mut subs = conn.entry.subs.lock();
        let Some(name) = subs.channels.take(channel) else {
            return false;
        };
        // Leave under the subscriptions lock (a concurrent subscribe of the
        // same connection must see a consistent state), deliver after.
        let (fan, notice) = self.leave_channel(conn.entry.id, &name);
        drop(subs);
        self.finish_fan_out(&fan, channel);
        self.observe_left(&conn.entry, channel, notice.as_ref());
        self.notify_left(channel, notice);
        true
    }

    /// Publishes `payload` in `channel`: one shared [`Publication`] with the
    /// channel's next offset is stored in history (if the namespace keeps
    /// history) and queued into every member's outbox, except
    /// `opts.exclude`. Never waits on a slow member: full outboxes are
    /// handled by the slow-consumer policy.
    ///
    /// A channel without members is only published into (and created) when
    /// its namespace keeps history; otherwise the publication goes nowhere
    /// and the report is empty. An invalid name also gives an empty report;
    /// [`try_publish`](Self::try_publish) reports it as an error.
    pub fn publish(&self, channel: &str, payload: Payload, opts: PublishOptions) -> PublishReport {
        self.publish_with_info(channel, payload, opts, None)
    }

    /// Like [`publish`](Self::publish), but fails on an invalid channel name
    /// or unknown namespace instead of returning an empty report.
    pub fn try_publish(
        &self,
        channel: &str,
        payload: Payload,
        opts: PublishOptions,
    ) -> Result<PublishReport, HubError> {
        if self.channel(channel).is_none() {
            self.inner.namespaces.resolve(channel)?;
        }
        Ok(self.publish(channel, payload, opts))
    }

    /// Like [`publish`](Self::publish), attaching the publisher's client
    /// info to the publication ([`Publication::info`]).
    pub fn publish_with_info(
        &self,
        channel: &str,
        payload: Payload,
        opts: PublishOptions,
        info: Option<Arc<ClientInfo>>,
    ) -> PublishReport {
        let inner = &*self.inner;
        inner.stats.published();
        let published = loop {
            let ch = match self.channel(channel) {
                Some(ch) => ch,
                None => match inner.namespaces.resolve(channel) {
                    // Without members, a publication that is not stored goes nowhere.
                    Ok((_, options)) if options.history_enabled() && !opts.skip_history => {
                        self.get_or_create_channel(channel, options)
                    }
                    _ => return PublishReport::default(),
                },
            };
            match ch.publish(payload.clone(), opts, info.clone(), inner) {
                Ok(p) => break p,
                Err(_dead) => {
                    self.unlink_channel(&ch);
                }
            }
        };
        let fan = &published.fan;
        inner.stats.delivered(fan.delivered as u64);
        inner.stats.dropped(fan.evicted as u64);
        let slow_closed = fan.slow.len();
        for entry in &fan.slow {
            inner.stats.slow_consumer_close();
            tracing::debug!(conn = entry.id, channel, "closing slow consumer");
            self.remove_conn(entry, CloseReason::SlowConsumer);
        }
        if published.stored {
            self.enforce_history_cap();
        }
        PublishReport {
            publication: Some(published.publication),
            delivered: fan.delivered,
            dropped: fan.evicted,
            slow_closed,
        }
    }

    /// Queues `publication`, numbered by a broker shared by several nodes,
    /// into the outboxes of this node's members of its channel (except
    /// `exclude`), without assigning an offset or storing it: the broker
    /// owns the channel's stream. Does nothing when the channel has no
    /// member here. Publications of one channel must be delivered in offset
    /// order, from one task.
    pub fn deliver(&self, publication: Arc<Publication>, exclude: Option<ConnId>) -> PublishReport {
        let Some(ch) = self.channel(&publication.channel) else {
            return PublishReport::default();
        };
        let fan = ch.fan_out(&publication, exclude, &self.inner.limits);
        let report = PublishReport {
            publication: Some(publication),
            delivered: fan.delivered,
            dropped: fan.evicted,
            slow_closed: fan.slow.len(),
        };
        self.finish_fan_out(&fan, &ch.name().clone());
        report
    }

    /// Queues a join (`join`) or leave event that happened on another node
    /// into the outboxes of this node's members of `channel` (namespaces
    /// with `join_leave` only). Returns how many were queued.
    pub fn deliver_member_event(&self, channel: &str, join: bool, info: ClientInfo) -> usize {
        let Some(ch) = self.channel(channel) else {
            return 0;
        };
        let fan = ch.member_event(join, info, &self.inner.limits);
        self.finish_fan_out(&fan, channel);
        fan.delivered
    }

    /// Sets the listener told about every leave (see [`HubListener`]).
    /// Only the first call has an effect; returns whether it was that one.
    pub fn set_listener(&self, listener: Arc<dyn HubListener>) -> bool {
        self.inner.listener.set(listener).is_ok()
    }

    /// Sets the observer told about every connection and membership (see
    /// [`HubObserver`]). Only the first call has an effect; returns whether
    /// it was that one.
    pub fn set_observer(&self, observer: Arc<dyn HubObserver>) -> bool {
        self.inner.observer.set(observer).is_ok()
    }

    /// Makes the connection ids given from now on start at `base`, so that
    /// ids (and the client ids derived from them) of several nodes sharing
    /// a broker do not collide. Ids already given are unaffected; the next
    /// id never goes backwards.
    pub fn set_conn_id_base(&self, base: u64) {
        self.inner.next_id.fetch_max(base, Ordering::Relaxed);
    }

    /// Whether connection `conn` is a member of `channel`.
    pub fn is_member(&self, conn: ConnId, channel: &str) -> bool {
        self.channel(channel).is_some_and(|ch| ch.has_member(conn))
    }

    /// Queries the history of `channel`.
    ///
    /// Fails with [`ChannelError::NotAvailable`] if its namespace keeps no
    /// history, and with [`ChannelError::UnrecoverablePosition`] if
    /// `query.since` is from another epoch or beyond the top. A channel that
    /// does not exist yet is created (without members) so that the position
    /// returned stays valid for a later recovery.
    pub fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, ChannelError> {
        let ch = self.history_channel(channel)?;
        ch.history(query, &self.inner)
    }

    /// Drops the history of `channel`; its epoch changes, so clients cannot
    /// claim to have recovered across the removal. Offsets continue.
    pub fn history_remove(&self, channel: &str) -> Result<(), ChannelError> {
        let options = self.inner.namespaces.options(channel)?;
        if !options.history_enabled() {
            return Err(ChannelError::NotAvailable);
        }
        if let Some(ch) = self.channel(channel) {
            ch.reset_history(&self.inner);
        }
        Ok(())
    }

    /// What a client at position `since` missed in `channel`, without
    /// subscribing (see [`Recovery`]). A subscriber should use
    /// [`subscribe_with_recovery`](Self::subscribe_with_recovery) instead,
    /// which cannot miss a concurrent publication.
    ///
    /// Channels without history can only report "recovered, nothing
    /// missed" (when `since` is the top) or "not recovered".
    pub fn recover(&self, channel: &str, since: StreamPosition) -> Result<Recovery, ChannelError> {
        let options = self.inner.namespaces.options(channel)?;
        let ch = if options.history_enabled() {
            Some(self.get_or_create_channel(channel, options))
        } else {
            self.channel(channel)
        };
        Ok(match ch {
            Some(ch) => ch.recover(since, &self.inner),
            None => Recovery {
                publications: Vec::new(),
                recovered: false,
                position: StreamPosition::default(),
            },
        })
    }

    /// Who is subscribed to `channel`: client id → info. Fails with
    /// [`ChannelError::NotAvailable`] if its namespace has no presence.
    pub fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, ChannelError> {
        Ok(self
            .presence_channel(channel)?
            .map(|ch| ch.presence())
            .unwrap_or_default())
    }

    /// Number of subscribed connections and distinct users in `channel`.
    /// Fails with [`ChannelError::NotAvailable`] if its namespace has no
    /// presence.
    pub fn presence_stats(&self, channel: &str) -> Result<PresenceStats, ChannelError> {
        Ok(self
            .presence_channel(channel)?
            .map(|ch| ch.presence_stats())
            .unwrap_or_default())
    }

    /// May this client subscribe to `channel`?
    ///
    /// * The name must be valid and its namespace known, else
    ///   [`PermissionError::UnknownChannel`].
    /// * A verified subscription token admits anyone (it is the app's
    ///   explicit grant).
    /// * Without one, `private` channels refuse with
    ///   [`PermissionError::TokenRequired`].
    /// * Otherwise authenticated users may subscribe; anonymous ones only
    ///   with `allow_subscribe_for_anonymous`, else [`PermissionError::Denied`].
    ///
    /// Server-side subscriptions (from the connection token, or the server
    /// API) are not checked.
    pub fn check_subscribe(&self, ctx: &ClientCtx, channel: &str) -> Result<(), PermissionError> {
        let options = self.options_for_check(channel)?;
        if ctx.subscription_token {
            return Ok(());
        }
        if options.private {
            return Err(PermissionError::TokenRequired);
        }
        if ctx.is_anonymous() && !options.allow_subscribe_for_anonymous {
            return Err(PermissionError::Denied);
        }
        Ok(())
    }

    /// May this client publish into `channel`? Yes with
    /// `allow_publish_for_client`, or with `allow_publish_for_subscriber`
    /// when it is subscribed to the channel; otherwise
    /// [`PermissionError::Denied`] (clients publishing is off by default:
    /// the app's backend publishes through the server API).
    pub fn check_publish(&self, ctx: &ClientCtx, channel: &str) -> Result<(), PermissionError> {
        let options = self.options_for_check(channel)?;
        if options.allow_publish_for_client
            || (options.allow_publish_for_subscriber && self.is_subscribed(ctx, channel))
        {
            return Ok(());
        }
        Err(PermissionError::Denied)
    }

    /// May this client ask for the presence of `channel`? The namespace
    /// must enable `presence` (else [`PermissionError::NotAvailable`]), and
    /// the client must be subscribed with `allow_presence_for_subscriber`.
    pub fn check_presence(&self, ctx: &ClientCtx, channel: &str) -> Result<(), PermissionError> {
        let options = self.options_for_check(channel)?;
        if !options.presence {
            return Err(PermissionError::NotAvailable);
        }
        if options.allow_presence_for_subscriber && self.is_subscribed(ctx, channel) {
            return Ok(());
        }
        Err(PermissionError::Denied)
    }

    /// May this client ask for the history of `channel`? The namespace must
    /// keep history (`history_size` and `history_ttl`, else
    /// [`PermissionError::NotAvailable`]), and the client must be subscribed
    /// with `allow_history_for_subscriber`.
    pub fn check_history(&self, ctx: &ClientCtx, channel: &str) -> Result<(), PermissionError> {
        let options = self.options_for_check(channel)?;
        if !options.history_enabled() {
            return Err(PermissionError::NotAvailable);
        }
        if options.allow_history_for_subscriber && self.is_subscribed(ctx, channel) {
            return Ok(());
        }
        Err(PermissionError::Denied)
    }

    /// Drops expired history everywhere and removes channels that have
    /// neither members nor history to keep. Expiry is otherwise lazy (on
    /// publish, history and recovery), so a server should call this
    /// periodically (e.g. every few seconds) to free memory of idle
    /// channels. Also shrinks the channel and connection tables when a burst
    /// left them mostly empty. Returns the number of channels removed.
    pub fn sweep(&self) -> usize {
        let mut removed = 0;
        for shard in self.inner.channels.iter() {
            // Collect first: expiring takes channel locks, and unlinking
            // takes the shard lock again.
            let candidates: Vec<Arc<Channel>> = shard
                .read()
                .values()
                .filter(|ch| ch.options().history_enabled())
                .cloned()
                .collect();
            for ch in candidates {
                if ch.expire(&self.inner) && self.unlink_channel(&ch) {
                    removed += 1;
                }
            }
            shrink_if_sparse(&mut shard.write());
        }
        for shard in self.inner.conns.iter() {
            shrink_if_sparse(&mut shard.lock());
        }
        removed
    }

    /// A snapshot of the hub's counters.
    pub fn stats(&self) -> HubStats {
        let mut s = self.inner.stats.snapshot();
        s.history_bytes = self.inner.history_bytes.load(Ordering::Relaxed);
        s
    }

    /// Connections currently registered.
    pub fn connection_count(&self) -> usize {
        self.inner.conns.iter().map(|s| s.lock().len()).sum()
    }

    /// Channels currently alive (with members, or kept for their history).
    pub fn channel_count(&self) -> usize {
        self.inner.channels.iter().map(|s| s.read().len()).sum()
    }

    /// The channels that currently have at least one member, with their
    /// member counts, in no particular order; only those whose name passes
    /// `keep`. Channels kept only for their history (no members) are left
    /// out.
    ///
    /// Each shard's lock is held only while its map is scanned (`keep` runs
    /// under it, so it should be cheap, like a name match); the counts are
    /// read afterwards, one channel at a time. The listing is therefore a
    /// snapshot per shard, not of the whole hub: a channel joined or left
    /// meanwhile may or may not appear.
    pub fn channels_with_members(
        &self,
        mut keep: impl FnMut(&str) -> bool,
    ) -> Vec<(Arc<str>, usize)> {
        let mut out = Vec::new();
        let mut picked: Vec<Arc<Channel>> = Vec::new();
        for shard in self.inner.channels.iter() {
            picked.extend(
                shard
                    .read()
                    .iter()
                    .filter(|(name, _)| keep(name))
                    .map(|(_, ch)| Arc::clone(ch)),
            );
            // Counted outside the shard lock: a count takes the channel's
            // members lock, which publishers hold during fan-out.
            for ch in picked.drain(..) {
                let n = ch.member_count();
                if n > 0 {
                    out.push((Arc::clone(ch.name()), n));
                }
            }
        }
        out
    }

    /// The live channel named `name`, if it has members or is kept for its
    /// history.
    pub fn channel(&self, name: &str) -> Option<Arc<Channel>> {
        self.channel_shard(name).read().get(name).cloned()
    }

    /// Members of channel `name` (0 if it does not exist).
    pub fn member_count(&self, name: &str) -> usize {
        self.channel(name).map_or(0, |c| c.member_count())
    }

    /// Every registered connection (a scan: for shutdown and administration, not per
    /// message).
    pub fn connection_ids(&self) -> Vec<ConnId> {
        let mut ids = Vec::new();
        for shard in self.inner.conns.iter() {
            ids.extend(shard.lock().keys().copied());
        }
        ids
    }

    /// Closes connection `id` with `reason` (see [`ConnHandle::close`]).
    /// Returns false if no such connection is registered.
    pub fn disconnect(&self, id: ConnId, reason: CloseReason) -> bool {
        let entry = self.conn_shard(id).lock().get(&id).cloned();
        match entry {
            Some(entry) => self.remove_conn(&entry, reason),
            None => false,
        }
    }

    /// Queues `control` for connection `id`, in order after what is already queued for it,
    /// outside the outbox's bounds. Returns false if no such connection is open.
    pub fn send_control(&self, id: ConnId, control: Control) -> bool {
        let entry = self.conn_shard(id).lock().get(&id).cloned();
        entry.is_some_and(|e| e.outbox.push_control(Delivery::Control(Arc::new(control))))
    }

    /// The registered connections of authenticated user `user`, whatever their protocol,
    /// also those that signed in as `user` after registering ([`ConnHandle::sign_in`]) (a
    /// scan of every connection: for administrative calls, not per message).
    pub fn connections_of_user(&self, user: &str) -> Vec<ConnId> {
        let mut ids = Vec::new();
        for shard in self.inner.conns.iter() {
            ids.extend(
                shard
                    .lock()
                    .values()
                    .filter(|e| {
                        e.info.user.as_deref() == Some(user)
                            || e.signed_in.get().is_some_and(|u| **u == *user)
                    })
                    .map(|e| e.id),
            );
        }
        ids
    }

    /// What the channels hold now, added up (a scan of every channel, each lock taken
    /// briefly one at a time: for a metrics scrape, not per message).
    pub fn channel_sizes(&self) -> ChannelSizes {
        let mut sizes = ChannelSizes::default();
        let mut picked: Vec<Arc<Channel>> = Vec::new();
        for shard in self.inner.channels.iter() {
            picked.extend(shard.read().values().map(Arc::clone));
            // Read outside the shard lock, as in `channels_with_members`.
            for ch in picked.drain(..) {
                let members = ch.member_count();
                sizes.subscriptions += members;
                if ch.options().presence {
                    sizes.presence_entries += members;
                }
                sizes.history_publications += ch.history_len().0;
            }
        }
        sizes
    }

    /// Up to `limit` registered connections for which `matches` is true, with their info,
    /// in id order (a scan of every connection: for administration, not per message).
    pub fn find_connections(
        &self,
        matches: impl Fn(ConnId, &ConnInfo) -> bool,
        limit: usize,
    ) -> Vec<(ConnId, ConnInfo)> {
        let mut found = Vec::new();
        for shard in self.inner.conns.iter() {
            found.extend(
                shard
                    .lock()
                    .values()
                    .filter(|e| matches(e.id, &e.info))
                    .map(|e| (e.id, e.info.clone())),
            );
        }
        found.sort_by_key(|(id, _)| *id);
        found.truncate(limit);
        found
    }

    /// Closes every registered connection with `reason` (e.g.
    /// [`CloseReason::Shutdown`]). Returns how many were closed.
    pub fn close_all(&self, reason: CloseReason) -> usize {
        let mut closed = 0;
        for shard in self.inner.conns.iter() {
            // Collect first: removal locks the shard again.
            let entries: Vec<_> = shard.lock().values().cloned().collect();
            for entry in entries {
                if self.remove_conn(&entry, reason) {
                    closed += 1;
                }
            }
        }
        closed
    }

    // ---- internals -------------------------------------------------------

    fn channel_shard(&self, name: &str) -> &RwLock<ChannelMap> {
        let h = self.inner.hasher.hash_one(name);
        &self.inner.channels[(h as usize) % CHANNEL_SHARDS]
    }

    fn conn_shard(&self, id: ConnId) -> &Mutex<ConnMap> {
        &self.inner.conns[(id as usize) % CONN_SHARDS]
    }

    fn get_or_create_channel(&self, name: &str, options: &Arc<ChannelOptions>) -> Arc<Channel> {
        let shard = self.channel_shard(name);
        if let Some(ch) = shard.read().get(name) {
            return Arc::clone(ch);
        }
        let mut map = shard.write();
        if let Some(ch) = map.get(name) {
            return Arc::clone(ch);
        }
        let name: Arc<str> = Arc::from(name);
        let ch = Arc::new(Channel::new(
            Arc::clone(&name),
            Arc::clone(options),
            &self.inner,
        ));
        map.insert(name, Arc::clone(&ch));
        self.inner.stats.add_channel();
        ch
    }

    /// The channel for a history query, created if its namespace keeps
    /// history.
    fn history_channel(&self, channel: &str) -> Result<Arc<Channel>, ChannelError> {
        let options = self.inner.namespaces.options(channel)?;
        if !options.history_enabled() {
            return Err(ChannelError::NotAvailable);
        }
        Ok(self.get_or_create_channel(channel, options))
    }

    fn presence_channel(&self, channel: &str) -> Result<Option<Arc<Channel>>, ChannelError> {
        let options = self.inner.namespaces.options(channel)?;
        if !options.presence {
            return Err(ChannelError::NotAvailable);
        }
        Ok(self.channel(channel))
    }

    fn options_for_check(&self, channel: &str) -> Result<&Arc<ChannelOptions>, PermissionError> {
        self.inner
            .namespaces
            .options(channel)
            .map_err(|_| PermissionError::UnknownChannel)
    }

    fn is_subscribed(&self, ctx: &ClientCtx, channel: &str) -> bool {
        let Some(id) = ctx.conn else {
            return false;
        };
        let entry = self.conn_shard(id).lock().get(&id).cloned();
        entry.is_some_and(|e| e.subs.lock().channels.contains(channel))
    }

    /// Removes `ch` from the map if the map still points at this very
    /// channel (it may already have been replaced by a fresh one). Returns
    /// whether it did.
    fn unlink_channel(&self, ch: &Arc<Channel>) -> bool {
        let mut map = self.channel_shard(ch.name()).write();
        if map
            .get(&**ch.name())
            .is_some_and(|cur| Arc::ptr_eq(cur, ch))
        {
            map.remove(&**ch.name());
            self.inner.stats.remove_channel();
            return true;
        }
        false
    }

    /// Removes member `id` from channel `name`. Returns the leave event's
    /// fan-out, for [`finish_fan_out`](Self::finish_fan_out) once no lock
    /// is held.
    fn leave_channel(&self, id: ConnId, name: &str) -> (FanOut, Option<LeftNotice>) {
        // While `id` is a member, the map entry for `name` is this channel:
        // a channel is only unlinked once it is empty.
        let Some(ch) = self.channel(name) else {
            return (FanOut::default(), None);
        };
        let left = ch.leave(id, &self.inner);
        if left.now_dead {
            self.unlink_channel(&ch);
        }
        let notice = left.was_member.then_some(LeftNotice {
            conn: id,
            info: left.info,
            emptied: left.emptied,
        });
        (left.fan, notice)
    }

    /// Reports a leave to the observer, if one is set. No lock may be held.
    fn observe_left(&self, entry: &ConnEntry, channel: &str, notice: Option<&LeftNotice>) {
        let (Some(observer), Some(n)) = (self.inner.observer.get(), notice) else {
            return;
        };
        match &n.info {
            Some(info) => observer.member_left(channel, info),
            None => observer.member_left(channel, &ClientInfo::of(entry, None)),
        }
    }

    /// Reports a leave to the listener, if one is set. No lock may be held.
    fn notify_left(&self, channel: &str, notice: Option<LeftNotice>) {
        if let (Some(listener), Some(n)) = (self.inner.listener.get(), notice) {
            listener.member_left(channel, n.conn, n.info.as_ref(), n.emptied);
        }
    }

    /// Counts a join/leave event fan-out and removes the members it found
    /// to be slow consumers. Must be called without any lock held.
    fn finish_fan_out(&self, fan: &FanOut, channel: &str) {
        let stats = &self.inner.stats;
        stats.delivered(fan.delivered as u64);
        stats.dropped(fan.evicted as u64);
        for entry in &fan.slow {
            stats.slow_consumer_close();
            tracing::debug!(conn = entry.id, channel, "closing slow consumer");
            self.remove_conn(entry, CloseReason::SlowConsumer);
        }
    }

    /// Keeps the bytes held by histories under the configured cap: when
    /// over it, drops whole histories of the channels that published least
    /// recently until usage is under 90% of the cap. The margin makes the
    /// scan (over all channels) rare. Only one publisher scans at a time;
    /// the others carry on, so the cap is soft by what they add meanwhile.
    fn enforce_history_cap(&self) {
        let inner = &*self.inner;
        let cap = inner.namespaces.history_max_bytes;
        if inner.history_bytes.load(Ordering::Relaxed) <= cap {
            return;
        }
        let Some(_scanning) = inner.evicting.try_lock() else {
            return;
        };
        let target = cap / 10 * 9;
        let mut candidates: Vec<(Instant, Arc<Channel>)> = Vec::new();
        for shard in inner.channels.iter() {
            let chans: Vec<Arc<Channel>> = shard
                .read()
                .values()
                .filter(|ch| ch.options().history_enabled())
                .cloned()
                .collect();
            for ch in chans {
                let (bytes, last_active) = ch.history_usage();
                if bytes > 0 {
                    candidates.push((last_active, ch));
                }
            }
        }
        candidates.sort_by_key(|(t, _)| *t);
        for (_, ch) in candidates {
            if inner.history_bytes.load(Ordering::Relaxed) <= target {
                break;
            }
            let freed = ch.reset_history(inner);
            inner.stats.history_eviction();
            tracing::debug!(channel = %ch.name(), freed, "history dropped: memory cap");
        }
    }

    fn room_full(&self, channel: &str, limit: usize) -> HubError {
        self.inner.stats.rejected_room_full();
        tracing::debug!(channel, limit, "subscribe refused: room full");
        HubError::RoomFull { limit }
    }

    /// Counts the effect of a push made outside `publish` (a direct send) and
    /// removes the connection if it overflowed.
    pub(crate) fn account_push(&self, entry: &Arc<ConnEntry>, outcome: PushOutcome) {
        let stats = &self.inner.stats;
        match outcome {
            PushOutcome::Queued { evicted } => {
                stats.delivered(1);
                stats.dropped(evicted as u64);
            }
            PushOutcome::ClosedSlow => {
                stats.slow_consumer_close();
                tracing::debug!(conn = entry.id, "closing slow consumer");
                self.remove_conn(entry, CloseReason::SlowConsumer);
            }
            PushOutcome::Closed(_) => {}
        }
    }

    /// Closes the connection's outbox and removes it from every channel and
    /// from the registry. Idempotent; returns true for the call that did it.
    pub(crate) fn remove_conn(&self, entry: &Arc<ConnEntry>, reason: CloseReason) -> bool {
        // Keeps the reason already set if the outbox was closed first (e.g.
        // as a slow consumer by a push).
        entry.outbox.close(reason);
        let channels = {
            let mut subs = entry.subs.lock();
            if subs.removed {
                return false;
            }
            subs.removed = true;
            std::mem::take(&mut subs.channels)
        };
        for name in channels.iter() {
            let (fan, notice) = self.leave_channel(entry.id, name);
            self.finish_fan_out(&fan, name);
            self.observe_left(entry, name, notice.as_ref());
            self.notify_left(name, notice);
        }
        if let Some(observer) = self.inner.observer.get() {
            observer.disconnected(entry.id, &entry.info);
        }
        if self.conn_shard(entry.id).lock().remove(&entry.id).is_some() {
            self.inner.stats.remove_connection();
            if let (Some(_), Some(user)) =
                (self.inner.limits.max_connections_per_user, &entry.info.user)
            {
                let mut per_user = self.inner.per_user.lock();
                if let Some(n) = per_user.get_mut(user.as_str()) {
                    *n -= 1;
                    if *n == 0 {
                        per_user.remove(user.as_str());
                    }
                }
            }
        }
        true
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("limits", &self.inner.limits)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Gives back a map's table after a burst: a hash map keeps its largest capacity, so
/// 300,000 channels (or connections) gone would otherwise keep their table for good. Only
/// when it is mostly empty, so a steady map is not reallocated on every sweep.
fn shrink_if_sparse<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_history_delivers_without_storing_or_taking_an_offset() {
        let ns = Namespaces::default().with(
            "h",
            ChannelOptions {
                history_size: 10,
                history_ttl: std::time::Duration::from_secs(60),
                ..ChannelOptions::default()
            },
        );
        let hub = Hub::with_namespaces(HubLimits::default(), ns);
        let (a, mut out) = hub.register(ConnInfo::default()).unwrap();
        hub.subscribe(&a, "h:x").unwrap();
        let skip = PublishOptions {
            skip_history: true,
            ..PublishOptions::default()
        };
        hub.publish("h:x", Payload::text("kept"), PublishOptions::default());
        hub.publish("h:x", Payload::text("typing"), skip);
        hub.publish("h:x", Payload::text("kept too"), PublishOptions::default());
        let mut got = Vec::new();
        out.try_recv_batch(&mut got, 10).unwrap();
        let delivered: Vec<(String, u64)> = got
            .iter()
            .map(|d| match d {
                Delivery::Publication(p) => (
                    String::from_utf8_lossy(&p.payload.data).into_owned(),
                    p.offset,
                ),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        // Delivered in order; the skipped one outside the stream (offset 0), the stream
        // numbered without a gap.
        assert_eq!(
            delivered,
            vec![
                ("kept".to_string(), 1),
                ("typing".to_string(), 0),
                ("kept too".to_string(), 2)
            ]
        );
        let h = hub.history("h:x", HistoryQuery::default()).unwrap();
        let stored: Vec<_> = h.publications.iter().map(|p| p.offset).collect();
        assert_eq!(stored, vec![1, 2]);
        assert_eq!(h.position.offset, 2);
        // Without members, a skipped publication goes nowhere and creates nothing.
        let channels = hub.channel_count();
        let report = hub.publish("h:empty", Payload::text("."), skip);
        assert!(report.publication.is_none());
        assert_eq!(hub.channel_count(), channels);
    }

    #[test]
    fn channels_with_members_lists_counts_and_skips_history_only_channels() {
        let ns = Namespaces::default().with(
            "h",
            ChannelOptions {
                history_size: 10,
                history_ttl: std::time::Duration::from_secs(60),
                ..ChannelOptions::default()
            },
        );
        let hub = Hub::with_namespaces(HubLimits::default(), ns);
        let (a, _a_out) = hub.register(ConnInfo::default()).unwrap();
        let (b, _b_out) = hub.register(ConnInfo::default()).unwrap();
        hub.subscribe(&a, "x").unwrap();
        hub.subscribe(&b, "x").unwrap();
        hub.subscribe(&a, "h:y").unwrap();
        // Kept alive by its history alone: no members, so not listed.
        hub.publish("h:kept", Payload::text("."), PublishOptions::default());
        assert_eq!(hub.channel_count(), 3);

        let sorted = |mut v: Vec<(Arc<str>, usize)>| {
            v.sort();
            v.into_iter()
                .map(|(n, c)| (n.to_string(), c))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            sorted(hub.channels_with_members(|_| true)),
            vec![("h:y".to_string(), 1), ("x".to_string(), 2)]
        );
        assert_eq!(
            sorted(hub.channels_with_members(|n| n.starts_with("h:"))),
            vec![("h:y".to_string(), 1)]
        );

        hub.unsubscribe(&b, "x");
        assert_eq!(
            sorted(hub.channels_with_members(|_| true)),
            vec![("h:y".to_string(), 1), ("x".to_string(), 1)]
        );
        drop(a);
        // "h:y" keeps its (empty) history but has no members any more.
        assert!(hub.channels_with_members(|_| true).is_empty());
        assert!(hub.channel_count() >= 1);
        drop(b);
    }

    #[test]
    fn the_observer_sees_connections_joins_and_leaves_with_channel_info() {
        #[derive(Default)]
        struct Record(Mutex<Vec<String>>);
        impl HubObserver for Record {
            fn connected(&self, conn: ConnId, info: &ConnInfo) {
                self.0
                    .lock()
                    .push(format!("connect {conn} {}", info.protocol));
            }
            fn disconnected(&self, conn: ConnId, _: &ConnInfo) {
                self.0.lock().push(format!("disconnect {conn}"));
            }
            fn member_joined(&self, channel: &str, m: &ClientInfo) {
                let data = m.chan_info.as_deref().unwrap_or(b"-");
                let data = String::from_utf8_lossy(data);
                self.0
                    .lock()
                    .push(format!("join {channel} {} {data}", m.client));
            }
            fn member_left(&self, channel: &str, m: &ClientInfo) {
                let data = m.chan_info.as_deref().unwrap_or(b"-");
                let data = String::from_utf8_lossy(data);
                self.0
                    .lock()
                    .push(format!("leave {channel} {} {data}", m.client));
            }
        }
        let ns = Namespaces::default().with(
            "p",
            ChannelOptions {
                presence: true,
                ..ChannelOptions::default()
            },
        );
        let hub = Hub::with_namespaces(HubLimits::default(), ns);
        let rec = Arc::new(Record::default());
        assert!(hub.set_observer(rec.clone()));
        let (a, _a_out) = hub.register(ConnInfo::new("x", "raw")).unwrap();
        let id = a.id();
        hub.subscribe(&a, "room").unwrap();
        hub.subscribe(&a, "room").unwrap();
        let opts = SubscribeOptions {
            chan_info: Some(Bytes::from_static(b"{\"user_id\":\"u1\"}")),
            ..Default::default()
        };
        hub.subscribe_with(&a, "p:x", opts).unwrap();
        assert!(hub.unsubscribe(&a, "room"));
        drop(a);
        assert_eq!(
            *rec.0.lock(),
            vec![
                format!("connect {id} raw"),
                format!("join room {id} -"),
                format!("join p:x {id} {{\"user_id\":\"u1\"}}"),
                format!("leave room {id} -"),
                format!("leave p:x {id} {{\"user_id\":\"u1\"}}"),
                format!("disconnect {id}"),
            ],
            "a repeated subscribe is not a join; presence leaves keep the channel info"
        );
    }

    #[test]
    fn deliver_fans_out_a_numbered_publication_and_the_listener_sees_every_leave() {
        struct Record(Mutex<Vec<(String, ConnId, bool, bool)>>);
        impl HubListener for Record {
            fn member_left(
                &self,
                ch: &str,
                conn: ConnId,
                info: Option<&ClientInfo>,
                emptied: bool,
            ) {
                self.0
                    .lock()
                    .push((ch.to_string(), conn, info.is_some(), emptied));
            }
        }
        let ns = Namespaces::default().with(
            "p",
            ChannelOptions {
                presence: true,
                ..ChannelOptions::default()
            },
        );
        let hub = Hub::with_namespaces(HubLimits::default(), ns);
        hub.set_conn_id_base(1 << 40);
        let rec = Arc::new(Record(Mutex::new(Vec::new())));
        assert!(hub.set_listener(rec.clone()));
        let (a, mut a_out) = hub.register(ConnInfo::default()).unwrap();
        let (b, mut b_out) = hub.register(ConnInfo::default()).unwrap();
        assert!(a.id() >= 1 << 40 && b.id() > a.id());
        hub.subscribe(&a, "p:x").unwrap();
        hub.subscribe(&b, "p:x").unwrap();

        // Numbered elsewhere: the offset is kept, nothing is stored, `exclude` is honoured.
        let p = Arc::new(Publication::new(
            Arc::from("p:x"),
            Payload::text("hi"),
            41,
            Epoch::parse("e").unwrap(),
            None,
        ));
        let report = hub.deliver(Arc::clone(&p), Some(b.id()));
        assert_eq!(report.delivered, 1);
        let mut batch = Vec::new();
        assert_eq!(a_out.try_recv_batch(&mut batch, 10), Ok(1));
        assert!(matches!(&batch[0], crate::Delivery::Publication(q) if q.offset == 41));
        assert_eq!(b_out.try_recv_batch(&mut Vec::new(), 10), Ok(0));
        assert_eq!(hub.channel("p:x").unwrap().last_offset(), 0);
        assert_eq!(hub.deliver(p, None).delivered, 2);
        let none = Arc::new(Publication::new(
            Arc::from("nobody"),
            Payload::text("."),
            1,
            0,
            None,
        ));
        assert_eq!(hub.deliver(none, None).delivered, 0);

        hub.unsubscribe(&a, "p:x");
        let (a_id, b_id) = (a.id(), b.id());
        drop(b);
        assert_eq!(
            *rec.0.lock(),
            vec![
                ("p:x".to_string(), a_id, true, false),
                ("p:x".to_string(), b_id, true, true)
            ]
        );
        assert!(!hub.is_member(a_id, "p:x"));
    }

    /// The window between looking a channel up and joining it is too narrow
    /// to hit reliably from threads, so stage it by hand: the last member has
    /// left (the channel is dead) but the leaver has not unlinked it yet.
    #[test]
    fn subscribe_replaces_a_dead_channel_still_in_the_map() {
        let hub = Hub::new(HubLimits::default());
        let (a, _a_out) = hub.register(ConnInfo::default()).unwrap();
        let (b, mut b_out) = hub.register(ConnInfo::default()).unwrap();
        hub.subscribe(&a, "x").unwrap();
        let old = hub.channel("x").unwrap();
        let left = old.leave(a.id(), &hub.inner);
        assert!(left.was_member && left.now_dead && old.is_dead());
        assert!(matches!(
            old.join(&b.entry, None, None, None, &hub.inner),
            Err(JoinError::Dead)
        ));

        hub.subscribe(&b, "x").unwrap();
        let new = hub.channel("x").unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        assert_eq!(new.member_ids(), vec![b.id()]);
        assert_eq!(hub.stats().channels, 1);
        assert_eq!(
            hub.publish("x", Payload::text("."), PublishOptions::default())
                .delivered,
            1
        );
        assert_eq!(b_out.try_recv_batch(&mut Vec::new(), 10), Ok(1));

        // The stale leaver's later cleanup must not touch the new channel.
        drop(a);
        assert_eq!(hub.member_count("x"), 1);
        drop(b);
        assert_eq!((hub.channel_count(), hub.stats().channels), (0, 0));
    }
}
