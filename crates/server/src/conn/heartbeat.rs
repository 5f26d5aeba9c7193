//! Heartbeat: ping each connection periodically and reap the ones that stop answering.
//!
//! A half-open TCP connection (peer vanished without a FIN) looks idle forever; writes keep
//! succeeding into the kernel buffer. The only cure is to demand an answer: every
//! `ping_interval` the connection's task sends a ping, and if nothing at all (a pong or any other
//! frame) arrives from the peer within `ping_timeout`, the connection is closed.
//!
//! Cost: no extra task and no per-ping allocation. The WebSocket layer already stamps the
//! time of every received frame in its [`PingTracker`]; the connection's task loop owns one
//! timer ([`Heartbeat`]), armed for the next ping or, while a ping is unanswered, for whichever
//! comes first of the next ping and the answer's deadline, and compares that stamp with the
//! time of its last ping. One timer rather than two keeps an idle connection small.
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchboard_websocket::stream::PingTracker;
use tokio::time::{Instant, Sleep};

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

/// The connection's heartbeat timer.
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    activity: Activity,
    /// When the unanswered ping was sent, if any.
    pending: Option<std::time::Instant>,
    /// When the next ping is due.
    next_ping: Instant,
    /// When the pending ping must have been answered.
    dead_at: Instant,
    /// The one timer, armed for `armed`.
    timer: Pin<Box<Sleep>>,
    armed: Instant,
}

impl Heartbeat {
    /// Timers for one connection: the first ping goes out one `interval` from now.
    pub fn new(interval: Duration, timeout: Duration, activity: impl Into<Activity>) -> Heartbeat {
        let activity = activity.into();
        let first = Instant::now() + interval;
        Heartbeat {
            interval,
            timeout,
            activity,
            pending: None,
            next_ping: first,
            dead_at: first,
            timer: Box::pin(tokio::time::sleep_until(first)),
            armed: first,
        }
    }

    /// How long the peer may stay silent after a ping.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Wait for the next heartbeat action. Cancel-safe: meant for a `select!` branch (state
    /// only changes after the timer fired, right before returning).
    pub async fn next(&mut self) -> Beat {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Poll form of [`next`](Self::next), for a loop that polls its sources by hand.
    pub fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Beat> {
        loop {
            let target = match self.pending {
                Some(_) => self.next_ping.min(self.dead_at),
                None => self.next_ping,
            };
            // Re-arming touches the timer wheel; only do it when the target moved (this is
            // polled on every pass of the connection's loop).
            if target != self.armed {
                self.timer.as_mut().reset(target);
                self.armed = target;
            }
            std::task::ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            if self.pending.is_some() && now >= self.dead_at {
                self.settle();
                if self.pending.is_some() {
                    return std::task::Poll::Ready(Beat::Dead);
                }
            }
            if now >= self.next_ping {
                // A late tick delays the following ones rather than bunching them up.
                self.next_ping = now + self.interval;
                self.settle();
                if self.pending.is_none() {
                    self.pending = Some(std::time::Instant::now());
                    self.dead_at = now + self.timeout;
                    return std::task::Poll::Ready(Beat::Ping);
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silent_peer_is_dead_after_timeout() {
        let live = Liveness::new();
        let mut hb = Heartbeat::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Arc::new(live),
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
        );
        assert_eq!(hb.next().await, Beat::Ping);
        assert_eq!(hb.next().await, Beat::Dead);
    }
}
