//! Hub counters: cheap relaxed atomics updated on the hot path, read as a
//! [`HubStats`] snapshot.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Refusals by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rejections {
    /// `register` refused by `max_connections`.
    pub connections: u64,
    /// `subscribe` refused by `max_room_members`.
    pub room_full: u64,
}

impl Rejections {
    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.connections + self.room_full
    }
}

/// A point-in-time snapshot of the hub's counters.
///
/// The fields are read one by one without a global lock, so under concurrent
/// load they may be mutually inconsistent by a few events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Connections currently registered.
    pub connections: usize,
    /// Channels currently alive (with members, or kept for their history).
    pub channels: usize,
    /// `publish` calls so far.
    pub published: u64,
    /// Items queued into outboxes so far (publication fan-out and direct sends).
    pub delivered: u64,
    /// Queued items evicted by [`SlowConsumerPolicy::DropOldest`](crate::SlowConsumerPolicy::DropOldest).
    pub dropped: u64,
    /// Connections closed because their outbox overflowed under
    /// [`SlowConsumerPolicy::Close`](crate::SlowConsumerPolicy::Close).
    pub slow_consumer_closes: u64,
    /// Refused registrations and subscriptions.
    pub rejections: Rejections,
    /// Bytes currently held by channel histories (see
    /// [`Namespaces::history_max_bytes`](crate::Namespaces::history_max_bytes)).
    pub history_bytes: usize,
    /// Channel histories dropped to stay under the history memory cap.
    pub history_evictions: u64,
}

/// Keeps a hot counter on its own cache line so that cores bumping
/// different counters do not invalidate each other's lines.
#[derive(Default)]
#[repr(align(64))]
struct Padded<T>(T);

/// The live counters behind [`HubStats`].
#[derive(Default)]
pub(crate) struct StatsCounters {
    connections: Padded<AtomicUsize>,
    channels: Padded<AtomicUsize>,
    published: Padded<AtomicU64>,
    delivered: Padded<AtomicU64>,
    dropped: AtomicU64,
    slow_consumer_closes: AtomicU64,
    rejected_connections: AtomicU64,
    rejected_room_full: AtomicU64,
    history_evictions: AtomicU64,
}

impl StatsCounters {
    /// Reserves a connection slot; fails (without reserving) when `limit` is reached.
    pub(crate) fn try_add_connection(&self, limit: Option<usize>) -> bool {
        let prev = self.connections.0.fetch_add(1, Relaxed);
        match limit {
            Some(max) if prev >= max => {
                self.connections.0.fetch_sub(1, Relaxed);
                false
            }
            _ => true,
        }
    }
    pub(crate) fn remove_connection(&self) {
        self.connections.0.fetch_sub(1, Relaxed);
    }
    pub(crate) fn add_channel(&self) {
        self.channels.0.fetch_add(1, Relaxed);
    }
    pub(crate) fn remove_channel(&self) {
        self.channels.0.fetch_sub(1, Relaxed);
    }
    pub(crate) fn published(&self) {
        self.published.0.fetch_add(1, Relaxed);
    }
    pub(crate) fn delivered(&self, n: u64) {
        if n > 0 {
            self.delivered.0.fetch_add(n, Relaxed);
        }
    }
    pub(crate) fn dropped(&self, n: u64) {
        if n > 0 {
            self.dropped.fetch_add(n, Relaxed);
        }
    }
    pub(crate) fn slow_consumer_close(&self) {
        self.slow_consumer_closes.fetch_add(1, Relaxed);
    }
    pub(crate) fn rejected_connection(&self) {
        self.rejected_connections.fetch_add(1, Relaxed);
    }
    pub(crate) fn history_eviction(&self) {
        self.history_evictions.fetch_add(1, Relaxed);
    }
    pub(crate) fn rejected_room_full(&self) {
        self.rejected_room_full.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HubStats {
        HubStats {
            connections: self.connections.0.load(Relaxed),
            channels: self.channels.0.load(Relaxed),
            published: self.published.0.load(Relaxed),
            delivered: self.delivered.0.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            slow_consumer_closes: self.slow_consumer_closes.load(Relaxed),
            rejections: Rejections {
                connections: self.rejected_connections.load(Relaxed),
                room_full: self.rejected_room_full.load(Relaxed),
            },
            // Filled in by the hub, which owns the byte counter.
            history_bytes: 0,
            history_evictions: self.history_evictions.load(Relaxed),
        }
    }
}
