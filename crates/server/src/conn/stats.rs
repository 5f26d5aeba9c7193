//! Server-level counters: what the network layer refused or cut, next to the hub's own stats.
//!
//! Every rejection is counted here (and logged once by the code that rejects), so `/health`
//! shows why clients are being turned away without anyone grepping logs.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

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
    attachment_bytes: AtomicUsize,
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
        };
        c.fetch_add(1, Relaxed);
    }

    /// WebSocket connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Relaxed)
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
            socketio_attachment_bytes: self.attachment_bytes.load(Relaxed),
        }
    }
}

/// One taken connection slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionSlot {
    counters: Arc<ServerCounters>,
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
