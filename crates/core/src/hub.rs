//! The hub: the registry of connections and channels, and the entry point
//! for subscribe, unsubscribe and publish.
//!
//! Both registries are split into shards, each a `parking_lot` lock around a
//! `HashMap`, chosen by hashing the key. Unrelated channels therefore rarely
//! share a lock, and the shard lock is only held for a map lookup or
//! insert: the fan-out itself runs under the channel's own lock.
//!
//! Lock order (never taken the other way round, so no deadlock):
//! connection subscriptions → channel shard → channel members. A channel
//! shard lock is always released before a channel's members lock is taken.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::channel::{Channel, JoinError};
use crate::connection::{ConnEntry, ConnHandle, ConnInfo, Subscriptions};
use crate::error::{CloseReason, HubError};
use crate::limits::HubLimits;
use crate::outbox::{Outbox, OutboxShared, PushOutcome};
use crate::publication::{ConnId, Payload, Publication};
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
}

impl PublishOptions {
    /// Publication by connection `id`, delivered to every member including itself.
    pub fn from_conn(id: ConnId) -> PublishOptions {
        PublishOptions {
            exclude: None,
            publisher: Some(id),
        }
    }

    /// Publication by connection `id`, delivered to every member except itself.
    pub fn except_sender(id: ConnId) -> PublishOptions {
        PublishOptions {
            exclude: Some(id),
            publisher: Some(id),
        }
    }
}

/// What one [`Hub::publish`] did.
#[derive(Debug, Clone, Default)]
pub struct PublishReport {
    /// The publication, or `None` if the channel does not exist (no members).
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
    pub fn epoch(&self) -> Option<u32> {
        self.publication.as_ref().map(|p| p.epoch)
    }
}

pub(crate) struct HubInner {
    limits: HubLimits,
    channels: Box<[RwLock<ChannelMap>]>,
    conns: Box<[Mutex<ConnMap>]>,
    next_id: AtomicU64,
    /// Feeds epoch generation; together with `hasher`'s random keys it makes
    /// epochs differ across channel lifetimes and across process restarts.
    epoch_counter: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
    stats: StatsCounters,
}

/// The channel hub. Cheap to clone (a reference-counted pointer); every
/// clone is the same hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Hub {
    /// Creates an empty hub with the given limits.
    pub fn new(limits: HubLimits) -> Hub {
        Hub {
            inner: Arc::new(HubInner {
                limits,
                channels: (0..CHANNEL_SHARDS).map(|_| RwLock::default()).collect(),
                conns: (0..CONN_SHARDS).map(|_| Mutex::default()).collect(),
                next_id: AtomicU64::new(1),
                epoch_counter: AtomicU64::new(0),
                hasher: Default::default(),
                stats: StatsCounters::default(),
            }),
        }
    }

    /// The limits this hub was created with.
    pub fn limits(&self) -> &HubLimits {
        &self.inner.limits
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
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ConnEntry {
            id,
            info,
            outbox: OutboxShared::new(&inner.limits),
            subs: Mutex::new(Subscriptions::default()),
        });
        self.conn_shard(id).lock().insert(id, Arc::clone(&entry));
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
    /// Fails with [`HubError::RoomFull`] at the member limit, or
    /// [`HubError::ConnectionClosed`] if the connection was closed.
    pub fn subscribe(&self, conn: &ConnHandle, channel: &str) -> Result<(), HubError> {
        if channel.is_empty() {
            return Err(HubError::InvalidChannel);
        }
        let inner = &*self.inner;
        let entry = &conn.entry;
        // Held for the whole operation so that a concurrent removal of this
        // connection either happens before (we see `removed`) or after (it
        // sees the channel in `channels` and leaves it).
        let mut subs = entry.subs.lock();
        if subs.removed {
            let reason = entry.outbox.close_reason().unwrap_or(CloseReason::Normal);
            return Err(HubError::ConnectionClosed(reason));
        }
        if subs.channels.contains(channel) {
            return Ok(());
        }
        let limit = inner.limits.max_room_members;
        if limit == Some(0) {
            return Err(self.room_full(channel, 0));
        }
        loop {
            let ch = self.get_or_create_channel(channel);
            match ch.join(entry, limit) {
                Ok(_) => {
                    subs.channels.insert(Arc::clone(ch.name()));
                    return Ok(());
                }
                Err(JoinError::Full(limit)) => return Err(self.room_full(channel, limit)),
                // Its last member left between our lookup and our join:
                // unlink it (if its leaver has not yet) and start over.
                Err(JoinError::Dead) => self.unlink_channel(&ch),
            }
        }
    }

    /// Removes `conn` from `channel`; the channel disappears when its last
    /// member leaves. Returns whether `conn` was a member.
    pub fn unsubscribe(&self, conn: &ConnHandle, channel: &str) -> bool {
        let mut subs = conn.entry.subs.lock();
        match subs.channels.take(channel) {
            Some(name) => {
                self.leave_channel(conn.entry.id, &name);
                true
            }
            None => false,
        }
    }

    /// Publishes `payload` in `channel`: one shared [`Publication`] with the
    /// channel's next offset is queued into every member's outbox, except
    /// `opts.exclude`. Never waits on a slow member: full outboxes are handled
    /// by the slow-consumer policy.
    pub fn publish(&self, channel: &str, payload: Payload, opts: PublishOptions) -> PublishReport {
        let inner = &*self.inner;
        inner.stats.published();
        let Some(ch) = self.channel(channel) else {
            return PublishReport::default();
        };
        let (publication, fan) = ch.publish(payload, opts.publisher, opts.exclude);
        inner.stats.delivered(fan.delivered as u64);
        inner.stats.dropped(fan.evicted as u64);
        let slow_closed = fan.slow.len();
        for entry in &fan.slow {
            inner.stats.slow_consumer_close();
            tracing::debug!(conn = entry.id, channel, "closing slow consumer");
            self.remove_conn(entry, CloseReason::SlowConsumer);
        }
        PublishReport {
            publication: Some(publication),
            delivered: fan.delivered,
            dropped: fan.evicted,
            slow_closed,
        }
    }

    /// A snapshot of the hub's counters.
    pub fn stats(&self) -> HubStats {
        self.inner.stats.snapshot()
    }

    /// Connections currently registered.
    pub fn connection_count(&self) -> usize {
        self.inner.conns.iter().map(|s| s.lock().len()).sum()
    }

    /// Channels currently alive.
    pub fn channel_count(&self) -> usize {
        self.inner.channels.iter().map(|s| s.read().len()).sum()
    }

    /// The live channel named `name`, if it has members.
    pub fn channel(&self, name: &str) -> Option<Arc<Channel>> {
        self.channel_shard(name).read().get(name).cloned()
    }

    /// Members of channel `name` (0 if it does not exist).
    pub fn member_count(&self, name: &str) -> usize {
        self.channel(name).map_or(0, |c| c.member_count())
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

    fn new_epoch(&self) -> u32 {
        let n = self.inner.epoch_counter.fetch_add(1, Ordering::Relaxed);
        let h = self.inner.hasher.hash_one(n);
        // Fold to 32 bits; 0 is kept free to mean "no epoch" for clients.
        match (h ^ (h >> 32)) as u32 {
            0 => 1,
            e => e,
        }
    }

    fn get_or_create_channel(&self, name: &str) -> Arc<Channel> {
        let shard = self.channel_shard(name);
        if let Some(ch) = shard.read().get(name) {
            return Arc::clone(ch);
        }
        let mut map = shard.write();
        if let Some(ch) = map.get(name) {
            return Arc::clone(ch);
        }
        let name: Arc<str> = Arc::from(name);
        let ch = Arc::new(Channel::new(Arc::clone(&name), self.new_epoch()));
        map.insert(name, Arc::clone(&ch));
        self.inner.stats.add_channel();
        ch
    }

    /// Removes `ch` from the map if the map still points at this very
    /// channel (it may already have been replaced by a fresh one).
    fn unlink_channel(&self, ch: &Arc<Channel>) {
        let mut map = self.channel_shard(ch.name()).write();
        if map
            .get(&**ch.name())
            .is_some_and(|cur| Arc::ptr_eq(cur, ch))
        {
            map.remove(&**ch.name());
            self.inner.stats.remove_channel();
        }
    }

    fn leave_channel(&self, id: ConnId, name: &str) {
        // While `id` is a member, the map entry for `name` is this channel:
        // a channel is only unlinked once it is empty.
        let Some(ch) = self.channel(name) else {
            return;
        };
        let (_, now_dead) = ch.leave(id);
        if now_dead {
            self.unlink_channel(&ch);
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
        for name in &channels {
            self.leave_channel(entry.id, name);
        }
        if self.conn_shard(entry.id).lock().remove(&entry.id).is_some() {
            self.inner.stats.remove_connection();
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(old.leave(a.id()), (true, true));
        assert!(matches!(old.join(&b.entry, None), Err(JoinError::Dead)));

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
