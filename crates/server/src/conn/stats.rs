//! Server-level counters: what the network layer refused or cut, next to the hub's own stats.
//!
//! Every rejection is counted here (and logged once by the code that rejects), so `/health`
//! shows why clients are being turned away without anyone grepping logs.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Live counters, shared by every task of one server.
#[derive(Debug, Default)]
pub struct ServerCounters {
    active: AtomicUsize,
    /// Highest `active` since [`ServerCounters::take_peak_active`] last ran.
    peak_active: AtomicUsize,
    accepted: AtomicU64,
    upgraded: AtomicU64,
    rejected_origin: AtomicU64,
    rejected_max_connections: AtomicU64,
    rejected_bad_handshake: AtomicU64,
    rejected_room_full: AtomicU64,
    handshake_timeouts: AtomicU64,
    tls_failures: AtomicU64,
    closed_too_big: AtomicU64,
    closed_protocol_error: AtomicU64,
    closed_slow_consumer: AtomicU64,
    closed_heartbeat: AtomicU64,
    closed_panic: AtomicU64,
    http_panics: AtomicU64,
    rejected_fd_exhausted: AtomicU64,
    rejected_ip_connections: AtomicU64,
    rejected_ip_rate: AtomicU64,
    rejected_accept_rate: AtomicU64,
    rejected_user_connections: AtomicU64,
    flood_dropped: AtomicU64,
    closed_flood: AtomicU64,
    attachment_bytes: AtomicUsize,
    /// Connections parked now (see `conn::park`).
    parked: AtomicUsize,
    /// Parked connections resumed on a task since start.
    resumed: AtomicU64,
    /// Per-protocol traffic, one entry per protocol that has had a connection (looked up
    /// once per connection, never per message).
    protocols: Mutex<Vec<Arc<ProtocolCounters>>>,
}

/// A snapshot of [`ServerCounters`], serialised into `/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServerStats {
    /// WebSocket connections open now (including ones finishing their upgrade).
    pub active_connections: usize,
    /// TCP connections accepted since start.
    pub accepted: u64,
    /// WebSocket upgrades completed since start.
    pub upgraded: u64,
    /// Upgrades refused with 403 because of the `Origin` header.
    pub rejected_origin: u64,
    /// Upgrades refused with 503 because of `max_connections`.
    pub rejected_max_connections: u64,
    /// Upgrade requests refused as malformed (400/405/426).
    pub rejected_bad_handshake: u64,
    /// Joins refused because the room was full (close 1008 "room full").
    pub rejected_room_full: u64,
    /// Connections dropped because TLS or the HTTP request did not complete in time.
    pub handshake_timeouts: u64,
    /// TLS handshakes that failed.
    pub tls_failures: u64,
    /// Connections closed with 1009 (message too big).
    pub closed_too_big: u64,
    /// Connections closed for breaking the protocol (1002/1007).
    pub closed_protocol_error: u64,
    /// Connections closed as slow consumers (1008, or dropped when the socket stalled).
    pub closed_slow_consumer: u64,
    /// Connections reaped because they stopped answering pings.
    pub closed_heartbeat: u64,
    /// Connections closed with 1011 after a panic in their handler.
    pub closed_panic: u64,
    /// HTTP requests answered 500 after a panic in their handler.
    pub http_panics: u64,
    /// Connections refused with `503` because the process had no file descriptor left to
    /// serve them (`accept` failed with EMFILE/ENFILE).
    pub rejected_fd_exhausted: u64,
    /// Upgrades refused with 503 by `max_connections_per_ip`.
    pub rejected_ip_connections: u64,
    /// Upgrades refused with 429 by `connection_rate_per_ip`.
    pub rejected_ip_rate: u64,
    /// Upgrades refused with 503 by `accept_rate`.
    pub rejected_accept_rate: u64,
    /// Connections refused by `max_connections_per_user`.
    pub rejected_user_connections: u64,
    /// Client messages dropped for going over `client_message_rate`/`client_bytes_rate`.
    pub flood_dropped: u64,
    /// Connections closed for going on sending over those rates.
    pub closed_flood: u64,
    /// Bytes of Socket.IO binary attachments buffered now, waiting for the rest of their
    /// packet (bounded by `socketio.max_attachment_bytes_total`).
    pub socketio_attachment_bytes: usize,
}

/// Which counter to bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// See [`ServerStats::accepted`].
    Accepted,
    /// See [`ServerStats::upgraded`].
    Upgraded,
    /// See [`ServerStats::rejected_origin`].
    RejectedOrigin,
    /// See [`ServerStats::rejected_max_connections`].
    RejectedMaxConnections,
    /// See [`ServerStats::rejected_bad_handshake`].
    RejectedBadHandshake,
    /// See [`ServerStats::rejected_room_full`].
    RejectedRoomFull,
    /// See [`ServerStats::handshake_timeouts`].
    HandshakeTimeout,
    /// See [`ServerStats::tls_failures`].
    TlsFailure,
    /// See [`ServerStats::closed_too_big`].
    ClosedTooBig,
    /// See [`ServerStats::closed_protocol_error`].
    ClosedProtocolError,
    /// See [`ServerStats::closed_slow_consumer`].
    ClosedSlowConsumer,
    /// See [`ServerStats::closed_heartbeat`].
    ClosedHeartbeat,
    /// See [`ServerStats::closed_panic`].
    ClosedPanic,
    /// See [`ServerStats::http_panics`].
    HttpPanic,
    /// See [`ServerStats::rejected_fd_exhausted`].
    RejectedFdExhausted,
    /// See [`ServerStats::rejected_ip_connections`].
    RejectedIpConnections,
    /// See [`ServerStats::rejected_ip_rate`].
    RejectedIpRate,
    /// See [`ServerStats::rejected_accept_rate`].
    RejectedAcceptRate,
    /// See [`ServerStats::rejected_user_connections`].
    RejectedUserConnections,
    /// See [`ServerStats::flood_dropped`].
    FloodDropped,
    /// See [`ServerStats::closed_flood`].
    ClosedFlood,
}

impl ServerCounters {
    /// Add one to `counter`.
    pub fn bump(&self, counter: Counter) {
        let c = match counter {
            Counter::Accepted => &self.accepted,
            Counter::Upgraded => &self.upgraded,
            Counter::RejectedOrigin => &self.rejected_origin,
            Counter::RejectedMaxConnections => &self.rejected_max_connections,
            Counter::RejectedBadHandshake => &self.rejected_bad_handshake,
            Counter::RejectedRoomFull => &self.rejected_room_full,
            Counter::HandshakeTimeout => &self.handshake_timeouts,
            Counter::TlsFailure => &self.tls_failures,
            Counter::ClosedTooBig => &self.closed_too_big,
            Counter::ClosedProtocolError => &self.closed_protocol_error,
            Counter::ClosedSlowConsumer => &self.closed_slow_consumer,
            Counter::ClosedHeartbeat => &self.closed_heartbeat,
            Counter::ClosedPanic => &self.closed_panic,
            Counter::HttpPanic => &self.http_panics,
            Counter::RejectedFdExhausted => &self.rejected_fd_exhausted,
            Counter::RejectedIpConnections => &self.rejected_ip_connections,
            Counter::RejectedIpRate => &self.rejected_ip_rate,
            Counter::RejectedAcceptRate => &self.rejected_accept_rate,
            Counter::RejectedUserConnections => &self.rejected_user_connections,
            Counter::FloodDropped => &self.flood_dropped,
            Counter::ClosedFlood => &self.closed_flood,
        };
        c.fetch_add(1, Relaxed);
    }

    /// WebSocket connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Relaxed)
    }

    /// Connections parked now: open, idle, waiting with no task of their own.
    pub fn parked(&self) -> usize {
        self.parked.load(Relaxed)
    }

    /// Parked connections resumed on a task since start.
    pub fn resumed(&self) -> u64 {
        self.resumed.load(Relaxed)
    }

    /// Count a connection parking (`true`) or resuming (`false`).
    pub(crate) fn count_parked(&self, parked: bool) {
        if parked {
            self.parked.fetch_add(1, Relaxed);
        } else {
            self.parked.fetch_sub(1, Relaxed);
            self.resumed.fetch_add(1, Relaxed);
        }
    }

    /// Take a connection slot unless `max` are already taken. The slot is released when the
    /// returned guard is dropped, whatever way the connection ends.
    pub fn try_acquire_slot(self: &Arc<Self>, max: Option<usize>) -> Option<ConnectionSlot> {
        let limit = max.unwrap_or(usize::MAX);
        self.active
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|before| {
                self.peak_active.fetch_max(before + 1, Relaxed);
                ConnectionSlot {
                    counters: Arc::clone(self),
                    ip: None,
                }
            })
    }

    /// The most connections open at once since the last call (a burst that came and went
    /// between two calls included); starts the next period from the current count.
    pub(crate) fn take_peak_active(&self) -> usize {
        self.peak_active
            .swap(self.active.load(Relaxed), Relaxed)
            .max(self.active.load(Relaxed))
    }

    /// Reserves `n` bytes of buffered Socket.IO attachments unless that would take the
    /// server's total past `max`; [`ServerCounters::release_attachment_bytes`] gives them back.
    pub fn try_reserve_attachment_bytes(&self, n: usize, max: usize) -> bool {
        self.attachment_bytes
            .fetch_update(Relaxed, Relaxed, |held| {
                held.checked_add(n).filter(|total| *total <= max)
            })
            .is_ok()
    }

    /// Gives back `n` bytes reserved with [`ServerCounters::try_reserve_attachment_bytes`].
    pub fn release_attachment_bytes(&self, n: usize) {
        let _ = self
            .attachment_bytes
            .fetch_update(Relaxed, Relaxed, |held| Some(held.saturating_sub(n)));
    }

    /// Read every counter.
    pub fn snapshot(&self) -> ServerStats {
        ServerStats {
            active_connections: self.active.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            upgraded: self.upgraded.load(Relaxed),
            rejected_origin: self.rejected_origin.load(Relaxed),
            rejected_max_connections: self.rejected_max_connections.load(Relaxed),
            rejected_bad_handshake: self.rejected_bad_handshake.load(Relaxed),
            rejected_room_full: self.rejected_room_full.load(Relaxed),
            handshake_timeouts: self.handshake_timeouts.load(Relaxed),
            tls_failures: self.tls_failures.load(Relaxed),
            closed_too_big: self.closed_too_big.load(Relaxed),
            closed_protocol_error: self.closed_protocol_error.load(Relaxed),
            closed_slow_consumer: self.closed_slow_consumer.load(Relaxed),
            closed_heartbeat: self.closed_heartbeat.load(Relaxed),
            closed_panic: self.closed_panic.load(Relaxed),
            http_panics: self.http_panics.load(Relaxed),
            rejected_fd_exhausted: self.rejected_fd_exhausted.load(Relaxed),
            rejected_ip_connections: self.rejected_ip_connections.load(Relaxed),
            rejected_ip_rate: self.rejected_ip_rate.load(Relaxed),
            rejected_accept_rate: self.rejected_accept_rate.load(Relaxed),
            rejected_user_connections: self.rejected_user_connections.load(Relaxed),
            flood_dropped: self.flood_dropped.load(Relaxed),
            closed_flood: self.closed_flood.load(Relaxed),
            socketio_attachment_bytes: self.attachment_bytes.load(Relaxed),
        }
    }
}

impl ServerCounters {
    /// The traffic counters of `protocol`, created at its first connection.
    pub(crate) fn protocol(&self, protocol: &'static str) -> Arc<ProtocolCounters> {
        let mut all = self.protocols.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = all.iter().find(|p| p.name == protocol) {
            return Arc::clone(p);
        }
        let p = Arc::new(ProtocolCounters::new(protocol));
        all.push(Arc::clone(&p));
        p
    }

    /// Every protocol's counters, for `/metrics`.
    pub(crate) fn protocols(&self) -> Vec<Arc<ProtocolCounters>> {
        self.protocols
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Why connections of one protocol ended, as `/metrics` labels them (`reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseKind {
    /// The server shut down.
    Shutdown,
    /// The peer closed.
    PeerClosed,
    /// The socket ended without a close frame.
    Lost,
    /// The peer broke the WebSocket protocol or the message size limit.
    ReadError,
    /// No answer to pings.
    Heartbeat,
    /// The peer stopped reading (stalled flush) or its outbox overflowed.
    SlowConsumer,
    /// Writing failed.
    WriteFailed,
    /// Closed by the hub: kicked (API `disconnect`), missed publications, …
    Hub,
    /// A panic while serving it.
    Panic,
    /// The protocol ended it with its own code (auth failure, bad command, …).
    Protocol,
    /// It sent faster than `client_message_rate` / `client_bytes_rate` allow.
    Flood,
}

impl CloseKind {
    /// Every kind, in label order.
    pub(crate) const ALL: [CloseKind; 11] = [
        CloseKind::Shutdown,
        CloseKind::PeerClosed,
        CloseKind::Lost,
        CloseKind::ReadError,
        CloseKind::Heartbeat,
        CloseKind::SlowConsumer,
        CloseKind::WriteFailed,
        CloseKind::Hub,
        CloseKind::Panic,
        CloseKind::Protocol,
        CloseKind::Flood,
    ];

    /// The `reason` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            CloseKind::Shutdown => "shutdown",
            CloseKind::PeerClosed => "peer_closed",
            CloseKind::Lost => "lost",
            CloseKind::ReadError => "read_error",
            CloseKind::Heartbeat => "heartbeat",
            CloseKind::SlowConsumer => "slow_consumer",
            CloseKind::WriteFailed => "write_failed",
            CloseKind::Hub => "hub",
            CloseKind::Panic => "panic",
            CloseKind::Protocol => "protocol",
            CloseKind::Flood => "flood",
        }
    }
}

/// Keeps counters bumped together on a cache line of their own, so connections of other
/// protocols (and the other direction) do not contend for it.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Traffic {
    pub(crate) messages: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

impl Traffic {
    /// Count `messages` messages of `bytes` bytes in all.
    #[inline]
    pub(crate) fn add(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }
}

/// One protocol's connections and traffic: relaxed atomics, bumped by the runtime.
#[derive(Debug)]
pub(crate) struct ProtocolCounters {
    /// The protocol's name (the `protocol` label).
    pub(crate) name: &'static str,
    /// Data messages read from peers (text and binary; not pings).
    pub(crate) received: Traffic,
    /// Frames written to peers (every frame the driver queued).
    pub(crate) sent: Traffic,
    /// Connections open now.
    pub(crate) active: AtomicUsize,
    /// Connections opened since start.
    pub(crate) opened: AtomicU64,
    /// Connections ended, by [`CloseKind`] (same order as [`CloseKind::ALL`]).
    pub(crate) closed: [AtomicU64; CloseKind::ALL.len()],
    /// Time from a publication entering the hub to its frame being written to a socket.
    pub(crate) delivery_latency: LatencyHistogram,
    /// Client recoveries (a resubscription or reconnection asking for what it missed)
    /// that got everything it missed.
    pub(crate) recovered: AtomicU64,
    /// Client recoveries that could not be complete (history too short, or gone).
    pub(crate) not_recovered: AtomicU64,
}

impl ProtocolCounters {
    fn new(name: &'static str) -> ProtocolCounters {
        ProtocolCounters {
            name,
            received: Traffic::default(),
            sent: Traffic::default(),
            active: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            closed: Default::default(),
            delivery_latency: LatencyHistogram::default(),
            recovered: AtomicU64::new(0),
            not_recovered: AtomicU64::new(0),
        }
    }

    /// Count one connection ended for `kind`.
    pub(crate) fn closed(&self, kind: CloseKind) {
        self.closed[kind as usize].fetch_add(1, Relaxed);
    }

    /// Count one client recovery, complete or not.
    pub(crate) fn recovery(&self, recovered: bool) {
        if recovered {
            self.recovered.fetch_add(1, Relaxed);
        } else {
            self.not_recovered.fetch_add(1, Relaxed);
        }
    }

    /// A connection opened; the guard counts it open until dropped.
    pub(crate) fn open(self: Arc<Self>) -> OpenConnection {
        self.opened.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
        OpenConnection(self)
    }
}

/// A connection counted open in its protocol's [`ProtocolCounters::active`] until dropped
/// (however the connection's task ends, panics included).
#[derive(Debug)]
pub(crate) struct OpenConnection(Arc<ProtocolCounters>);

impl std::ops::Deref for OpenConnection {
    type Target = ProtocolCounters;

    fn deref(&self) -> &ProtocolCounters {
        &self.0
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// Upper bounds (seconds) of the delivery latency histogram's buckets, besides `+Inf`.
pub(crate) const LATENCY_BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// The same bounds in microseconds, for the hot path (no float compare).
const LATENCY_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
/// Shards of a [`LatencyHistogram`]: each worker thread writes to its own, so two threads
/// observing at once do not fight over one cache line.
const LATENCY_SHARDS: usize = 8;

/// One shard: a count per bucket (the last is `+Inf`) and the sum in microseconds.
#[derive(Debug, Default)]
#[repr(align(64))]
struct LatencyShard {
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_micros: AtomicU64,
}

/// A fixed-bucket histogram of latencies, observed with two relaxed atomic adds on the
/// observing thread's own shard; the shards are added up only at scrape time.
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    shards: [LatencyShard; LATENCY_SHARDS],
}

thread_local! {
    /// The shard this thread observes into (threads take them in turn).
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Relaxed) % LATENCY_SHARDS
    };
}

/// What [`LatencyHistogram::snapshot`] reads: per-bucket (not cumulative) counts, the
/// last one `+Inf`, and the sum in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LatencySnapshot {
    /// Count per bucket of [`LATENCY_BOUNDS`] then `+Inf`.
    pub(crate) buckets: Vec<u64>,
    /// Sum of the observed latencies, in seconds.
    pub(crate) sum_seconds: f64,
}

impl LatencySnapshot {
    /// How many latencies were observed.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl LatencyHistogram {
    /// Count one latency.
    #[inline]
    pub(crate) fn observe(&self, latency: std::time::Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_US.partition_point(|&b| b < micros);
        let shard = &self.shards[SHARD.with(|s| *s)];
        shard.buckets[bucket].fetch_add(1, Relaxed);
        shard.sum_micros.fetch_add(micros, Relaxed);
    }

    /// Every shard added up.
    pub(crate) fn snapshot(&self) -> LatencySnapshot {
        let mut buckets = vec![0u64; LATENCY_BOUNDS_US.len() + 1];
        let mut sum = 0u64;
        for shard in &self.shards {
            for (total, b) in buckets.iter_mut().zip(&shard.buckets) {
                *total += b.load(Relaxed);
            }
            sum = sum.wrapping_add(shard.sum_micros.load(Relaxed));
        }
        LatencySnapshot {
            buckets,
            sum_seconds: sum as f64 / 1e6,
        }
    }
}

/// One taken connection slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionSlot {
    counters: Arc<ServerCounters>,
    /// The connection's place under the per-address limits, when they are on.
    ip: Option<super::limits::IpSlot>,
}

impl ConnectionSlot {
    /// Also holds `ip` (released with the slot).
    pub(crate) fn with_ip(mut self, ip: Option<super::limits::IpSlot>) -> ConnectionSlot {
        self.ip = ip;
        self
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_released() {
        let c = Arc::new(ServerCounters::default());
        let a = c.try_acquire_slot(Some(2)).unwrap();
        let _b = c.try_acquire_slot(Some(2)).unwrap();
        assert!(c.try_acquire_slot(Some(2)).is_none());
        assert_eq!(c.active(), 2);
        drop(a);
        assert!(c.try_acquire_slot(Some(2)).is_some());
        assert_eq!(c.active(), 1, "the temporary slot was released at once");
        assert!(c.try_acquire_slot(None).is_some());
    }

    #[test]
    fn attachment_bytes_are_bounded_and_released() {
        let c = ServerCounters::default();
        assert!(c.try_reserve_attachment_bytes(60, 100));
        assert!(!c.try_reserve_attachment_bytes(41, 100));
        assert!(c.try_reserve_attachment_bytes(40, 100));
        assert!(!c.try_reserve_attachment_bytes(usize::MAX, usize::MAX));
        assert_eq!(c.snapshot().socketio_attachment_bytes, 100);
        c.release_attachment_bytes(100);
        assert_eq!(c.snapshot().socketio_attachment_bytes, 0);
        c.release_attachment_bytes(5);
        assert_eq!(
            c.snapshot().socketio_attachment_bytes,
            0,
            "never below zero"
        );
    }

    #[test]
    fn protocol_counters_are_shared_by_name_and_count_open_connections() {
        let c = ServerCounters::default();
        let a = c.protocol("raw").open();
        let b = c.protocol("raw").open();
        let _x = c.protocol("other").open();
        a.received.add(2, 10);
        b.closed(CloseKind::Flood);
        drop(a);
        let all = c.protocols();
        assert_eq!(all.len(), 2);
        let raw = &all[0];
        assert_eq!(raw.name, "raw");
        assert_eq!(raw.active.load(Relaxed), 1);
        assert_eq!(raw.opened.load(Relaxed), 2);
        assert_eq!(raw.received.bytes.load(Relaxed), 10);
        assert_eq!(raw.closed[CloseKind::Flood as usize].load(Relaxed), 1);
    }

    #[test]
    fn latency_lands_in_the_first_bucket_at_or_above_it() {
        use std::time::Duration;
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(100)); // le 0.0001
        h.observe(Duration::from_micros(101)); // le 0.00025
        h.observe(Duration::from_millis(3)); // le 0.005
        h.observe(Duration::from_secs(60)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[5], 1);
        assert_eq!(s.buckets[LATENCY_BOUNDS.len()], 1);
        assert!(
            (s.sum_seconds - 60.003201).abs() < 1e-9,
            "{}",
            s.sum_seconds
        );
        for (f, us) in LATENCY_BOUNDS.iter().zip(LATENCY_BOUNDS_US) {
            assert_eq!((f * 1e6).round() as u64, us);
        }
    }

    #[test]
    fn bump_counts() {
        let c = ServerCounters::default();
        c.bump(Counter::RejectedOrigin);
        c.bump(Counter::RejectedOrigin);
        c.bump(Counter::ClosedPanic);
        let s = c.snapshot();
        assert_eq!(s.rejected_origin, 2);
        assert_eq!(s.closed_panic, 1);
        assert_eq!(s.accepted, 0);
    }
}
