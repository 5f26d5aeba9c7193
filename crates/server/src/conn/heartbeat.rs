//! Heartbeat: ping each connection periodically and reap the ones that stop answering.
//!
//! A half-open TCP connection (peer vanished without a FIN) looks idle forever; writes keep
//! succeeding into the kernel buffer. The only cure is to demand an answer: every
//! `ping_interval` the connection's task sends a ping, and if nothing at all (a pong or any other
//! frame) arrives from the peer within `ping_timeout`, the connection is closed.
//!
//! Cost: no extra task, no per-ping allocation and no timer of its own. The WebSocket layer
//! already stamps the time of every received frame in its [`PingTracker`]; the connection's
//! task loop holds a [`Heartbeat`] whose one deadline (the next ping or, while a ping is
//! unanswered, whichever comes first of the next ping and the answer's deadline) lives in the
//! server's shared coarse timer wheel ([`super::wheel`]), and compares that stamp with the time
//! of its last ping. A deadline fires at most one wheel tick late (1 s with the defaults).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use switchboard_websocket::stream::PingTracker;

use super::shutdown::ShutdownToken;
use super::wheel::Slot;

/// Something that knows when the peer was last heard from.
pub trait PeerActivity: Send + Sync + 'static {
    /// When the last frame (of any kind) arrived from the peer, if any did.
    fn last_heard(&self) -> Option<std::time::Instant>;
}

impl PeerActivity for PingTracker {
    fn last_heard(&self) -> Option<std::time::Instant> {
        self.last_received()
    }
}

/// A stand-alone activity clock, for transports without a [`PingTracker`] (and tests).
#[derive(Debug, Clone)]
pub struct Liveness {
    base: std::time::Instant,
    /// Nanoseconds since `base` + 1; 0 = never.
    last: Arc<AtomicU64>,
}

impl Liveness {
    /// A clock that has heard nothing yet.
    pub fn new() -> Liveness {
        Liveness {
            base: std::time::Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Record that the peer sent something.
    pub fn touch(&self) {
        self.last
            .store(self.base.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerActivity for Liveness {
    fn last_heard(&self) -> Option<std::time::Instant> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.base + Duration::from_nanos(ns - 1)),
        }
    }
}

/// Where a heartbeat reads when the peer was last heard from. The WebSocket's own tracker is
/// held as it is (it is a shared pointer already); anything else behind one more.
#[derive(Clone)]
pub enum Activity {
    /// A WebSocket's stamp of its last received frame.
    Tracker(PingTracker),
    /// Any other clock (a long-polling session's, a test's).
    Other(Arc<dyn PeerActivity>),
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Activity").field(&self.last_heard()).finish()
    }
}

impl PeerActivity for Activity {
    fn last_heard(&self) -> Option<std::time::Instant> {
        match self {
            Activity::Tracker(t) => t.last_heard(),
            Activity::Other(a) => a.last_heard(),
        }
    }
}

impl From<PingTracker> for Activity {
    fn from(t: PingTracker) -> Self {
        Activity::Tracker(t)
    }
}

impl<A: PeerActivity> From<Arc<A>> for Activity {
    fn from(a: Arc<A>) -> Self {
        Activity::Other(a)
    }
}

impl From<Arc<dyn PeerActivity>> for Activity {
    fn from(a: Arc<dyn PeerActivity>) -> Self {
        Activity::Other(a)
    }
}

/// What the connection's task must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Send a ping now.
    Ping,
    /// The peer did not answer in time: close the connection.
    Dead,
}

/// The connection's heartbeat timer, on the server's shared wheel (see [`super::wheel`]).
///
/// It also carries the connection's [`ShutdownToken`]: the wheel that wakes a connection for
/// its heartbeat is what wakes it at shutdown. Times are milliseconds on the wheel's clock;
/// every byte here is paid by every idle connection.
pub struct Heartbeat {
    token: ShutdownToken,
    activity: Activity,
    /// When the unanswered ping was sent, if any.
    pending: Option<std::time::Instant>,
    interval_ms: u64,
    timeout_ms: u64,
    /// When the next ping is due.
    next_ping: u64,
    /// When the pending ping must have been answered.
    dead_at: u64,
    /// The deadline the wheel holds for us (0: none).
    armed: u64,
    slot: Slot,
}

impl Heartbeat {
    /// Timers for one connection: the first ping goes out one `interval` from now.
    pub fn new(
        interval: Duration,
        timeout: Duration,
        activity: impl Into<Activity>,
        token: ShutdownToken,
    ) -> Heartbeat {
        let interval_ms = (interval.as_millis() as u64).max(1);
        let first = token.wheel().now_ms() + interval_ms;
        Heartbeat {
            token,
            activity: activity.into(),
            pending: None,
            interval_ms,
            timeout_ms: (timeout.as_millis() as u64).max(1),
            next_ping: first,
            dead_at: first,
            armed: 0,
            slot: Slot::NONE,
        }
    }

    /// How long the peer may stay silent after a ping.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The connection's shutdown token.
    pub fn token(&self) -> &ShutdownToken {
        &self.token
    }

    /// Whether shutdown was requested. Registers the connection in the wheel first (it is
    /// woken there when shutdown is triggered), so a trigger in between is not missed.
    pub fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot == Slot::NONE {
            self.arm(self.next_ping, cx);
        }
        if self.token.is_triggered() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Wait for the next heartbeat action.
    pub async fn next(&mut self) -> Beat {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Poll form of [`next`](Self::next), for a loop that polls its sources by hand. The
    /// waker must be that of the task owning the connection (the wheel keeps the one given
    /// when a deadline is armed).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Beat> {
        loop {
            let target = match self.pending {
                Some(_) => self.next_ping.min(self.dead_at),
                None => self.next_ping,
            };
            // The wheel's coarse clock first: it never runs ahead of the real one, and it
            // has reached the target by the time the wheel wakes the connection for it, so a
            // pass of the loop that is not due costs no clock read (this is polled on every
            // pass, and on every delivery to a parked connection).
            let wheel = self.token.wheel();
            let now = if wheel.coarse_ms() < target {
                u64::MIN
            } else {
                wheel.now_ms()
            };
            if now < target {
                // Arming takes the wheel's lock; only do it when the target moved.
                if target != self.armed || self.slot == Slot::NONE {
                    self.arm(target, cx);
                }
                return Poll::Pending;
            }
            // The wheel fired (or is about to): whatever comes next must be armed anew.
            self.armed = 0;
            if self.pending.is_some() && now >= self.dead_at {
                self.settle();
                if self.pending.is_some() {
                    return Poll::Ready(Beat::Dead);
                }
            }
            if now >= self.next_ping {
                // A late tick delays the following ones rather than bunching them up.
                self.next_ping = now + self.interval_ms;
                self.settle();
                if self.pending.is_none() {
                    self.pending = Some(std::time::Instant::now());
                    self.dead_at = now + self.timeout_ms;
                    return Poll::Ready(Beat::Ping);
                }
            }
        }
    }

    /// Forget which waker the wheel holds: the next [`Heartbeat::poll_next`] hands it the
    /// waker it is polled with even if the deadline did not move (a connection that parks or
    /// resumes changes wakers).
    pub fn rearm(&mut self) {
        self.armed = 0;
    }

    /// The server's coarse clock, in the wheel's milliseconds (see `Wheel::coarse_ms`).
    pub(crate) fn coarse_ms(&self) -> u64 {
        self.token.wheel().coarse_ms()
    }

    fn arm(&mut self, target: u64, cx: &mut Context<'_>) {
        let period = Duration::from_millis(self.interval_ms.min(self.timeout_ms));
        self.token
            .wheel()
            .arm(&mut self.slot, target, cx.waker(), period);
        self.armed = target;
    }

    /// Clear the pending ping if the peer has been heard from since it was sent.
    fn settle(&mut self) {
        if let Some(sent) = self.pending {
            if self.activity.last_heard().is_some_and(|at| at >= sent) {
                self.pending = None;
            }
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.token.wheel().release(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::shutdown::Shutdown;

    #[tokio::test(start_paused = true)]
    async fn silent_peer_is_dead_after_timeout() {
        let live = Liveness::new();
        let mut hb = Heartbeat::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Arc::new(live),
            Shutdown::new().token(),
        );
        assert_eq!(hb.next().await, Beat::Ping);
        assert_eq!(hb.next().await, Beat::Dead);
    }

    #[tokio::test(start_paused = true)]
    async fn answering_peer_keeps_getting_pings() {
        let live = Liveness::new();
        let mut hb = Heartbeat::new(
            Duration::from_secs(2),
            Duration::from_secs(1),
            Arc::new(live.clone()),
            Shutdown::new().token(),
        );
        for _ in 0..5 {
            assert_eq!(hb.next().await, Beat::Ping);
            tokio::time::sleep(Duration::from_millis(300)).await;
            live.touch();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn activity_before_the_ping_does_not_count() {
        let live = Liveness::new();
        live.touch();
        let mut hb = Heartbeat::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Arc::new(live),
            Shutdown::new().token(),
        );
        assert_eq!(hb.next().await, Beat::Ping);
        assert_eq!(hb.next().await, Beat::Dead);
    }
}
