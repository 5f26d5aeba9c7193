//! One coarse timer wheel per server, shared by every connection: the heartbeat's deadlines
//! and the shutdown broadcast.
//!
//! Why not a tokio `Sleep` per connection and a `Notified` for shutdown: each idle
//! connection paid a boxed timer entry (≈ 140 B on the heap) and a wait-list future in its
//! task (≈ 80 B), and most of the time neither was near firing. Here a connection owns one
//! slot number; the wheel keeps its task's waker (24 B in a shared table) and, when a
//! deadline is armed, one 8-byte ticket in the bucket of that deadline's tick. One task per
//! server wakes the tickets that fell due every tick, and exits when no connection is
//! registered. Shutdown wakes every registered connection at once.
//!
//! Precision: a deadline fires in the first tick at or after it (never before), so pings and
//! dead-peer verdicts come at most one tick late. The tick is a sixteenth of the shortest
//! heartbeat period, between 5 ms and 1 s (1 s with the defaults).
//!
//! Time is tokio's clock (`tokio::time::Instant`), so tests with paused time drive it.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

/// Buckets of the wheel; a deadline further out than this many ticks waits in its bucket
/// for the rounds before it.
const BUCKETS: usize = 64;
/// Bounds of the tick.
const MIN_TICK_MS: u64 = 5;
const MAX_TICK_MS: u64 = 1000;

/// A connection's place in the wheel; [`Slot::NONE`] until it first arms a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(u32);

impl Slot {
    /// Not registered.
    pub(crate) const NONE: Slot = Slot(u32::MAX);
}

/// The shared wheel (see the module docs).
#[derive(Debug)]
pub(crate) struct Wheel {
    base: Instant,
    state: Mutex<State>,
    /// Handed to the ticking task, which must not keep the wheel alive.
    this: Weak<Wheel>,
    /// [`Wheel::coarse_ms`]: the clock as of the last tick.
    coarse_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<Entry>,
    free: Vec<u32>,
    live: usize,
    /// Tickets `(slot, generation)`, by the tick they are due at modulo [`BUCKETS`].
    buckets: Vec<Vec<(u32, u32)>>,
    /// Milliseconds per tick; set by the first registration.
    tick_ms: u64,
    /// The first tick not processed yet.
    next_tick: u64,
    /// Whether a ticking task is running.
    ticking: bool,
}

#[derive(Debug, Default)]
struct Entry {
    waker: Option<Waker>,
    /// The tick the armed deadline is due at.
    due_tick: u64,
    /// Bumped at each arming and release: older tickets are stale.
    generation: u32,
    /// A ticket of the current generation waits in a bucket.
    ticketed: bool,
}

impl Wheel {
    /// An empty wheel; the ticking task starts with the first deadline.
    pub(crate) fn new() -> Arc<Wheel> {
        Arc::new_cyclic(|this| Wheel {
            base: Instant::now(),
            state: Mutex::default(),
            this: this.clone(),
            coarse_ms: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation completes before anything that could panic; a poisoned lock still
        // holds a consistent table.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Wheel::now_ms`] as of the last tick (it lags by at most a tick while the wheel
    /// ticks, i.e. while any connection is registered): a clock that costs no clock read.
    pub(crate) fn coarse_ms(&self) -> u64 {
        self.coarse_ms.load(Ordering::Relaxed)
    }

    /// Milliseconds since the wheel was made, on tokio's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Wake `waker` once the clock reaches `due_ms` (see [`Self::now_ms`]), replacing any
    /// deadline `slot` had; registers the slot first when it is [`Slot::NONE`]. `period` (the
    /// shortest heartbeat period) sets the tick at the first registration.
    pub(crate) fn arm(&self, slot: &mut Slot, due_ms: u64, waker: &Waker, period: Duration) {
        let mut s = self.lock();
        if s.tick_ms == 0 {
            s.tick_ms = (period.as_millis() as u64 / 16).clamp(MIN_TICK_MS, MAX_TICK_MS);
            s.next_tick = self.now_ms() / s.tick_ms;
            s.buckets = (0..BUCKETS).map(|_| Vec::new()).collect();
        }
        if *slot == Slot::NONE {
            let key = match s.free.pop() {
                Some(k) => k,
                None => {
                    s.entries.push(Entry::default());
                    (s.entries.len() - 1) as u32
                }
            };
            s.live += 1;
            *slot = Slot(key);
        }
        // Rounded up: a deadline is never woken before it.
        let due_tick = due_ms.div_ceil(s.tick_ms).max(s.next_tick);
        let entry = &mut s.entries[slot.0 as usize];
        match &entry.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => entry.waker = Some(waker.clone()),
        }
        if entry.ticketed && entry.due_tick == due_tick {
            // Only the waker changed (a connection parking or resuming): the ticket in the
            // bucket stays good.
            return;
        }
        entry.generation = entry.generation.wrapping_add(1);
        entry.due_tick = due_tick;
        entry.ticketed = true;
        let ticket = (slot.0, entry.generation);
        s.buckets[(due_tick % BUCKETS as u64) as usize].push(ticket);
        if !s.ticking {
            s.ticking = true;
            tokio::spawn(tick(self.this.clone(), s.tick_ms));
        }
    }

    /// Forget `slot` (the connection ended): its waker is dropped now, its tickets go stale.
    pub(crate) fn release(&self, slot: Slot) {
        if slot == Slot::NONE {
            return;
        }
        let mut s = self.lock();
        let entry = &mut s.entries[slot.0 as usize];
        entry.waker = None;
        entry.generation = entry.generation.wrapping_add(1);
        entry.ticketed = false;
        s.free.push(slot.0);
        s.live -= 1;
        if s.live == 0 {
            // Give the table back after a burst of connections.
            s.entries = Vec::new();
            s.free = Vec::new();
            s.buckets.iter_mut().for_each(|b| *b = Vec::new());
        }
    }

    /// Wake every registered connection (shutdown). A connection that registers later is
    /// expected to look at the shutdown flag after registering.
    pub(crate) fn wake_all(&self) {
        let wakers: Vec<Waker> = {
            let s = self.lock();
            s.entries.iter().filter_map(|e| e.waker.clone()).collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Process the ticks up to now: the wakers of the deadlines that fell due, or `None`
    /// when no connection is registered (the ticking task ends).
    fn advance(&self) -> Option<Vec<Waker>> {
        let mut s = self.lock();
        if s.live == 0 {
            s.ticking = false;
            return None;
        }
        let now_tick = self.now_ms() / s.tick_ms;
        let mut due = Vec::new();
        let first = s.next_tick;
        let rounds = (now_tick + 1).saturating_sub(first).min(BUCKETS as u64);
        let State {
            entries, buckets, ..
        } = &mut *s;
        for t in first..first + rounds {
            let bucket = &mut buckets[(t % BUCKETS as u64) as usize];
            bucket.retain(|&(key, generation)| {
                let Some(entry) = entries.get_mut(key as usize) else {
                    return false;
                };
                if entry.generation != generation {
                    return false;
                }
                if entry.due_tick > now_tick {
                    // Due in a later round of the wheel.
                    return true;
                }
                due.extend(entry.waker.clone());
                entry.ticketed = false;
                false
            });
            if bucket.is_empty() && bucket.capacity() > 64 {
                *bucket = Vec::new();
            }
        }
        s.next_tick = s.next_tick.max(now_tick + 1);
        self.coarse_ms
            .store(now_tick * s.tick_ms, Ordering::Relaxed);
        Some(due)
    }
}

/// The ticking task: wakes what fell due every tick until the wheel is empty or gone.
async fn tick(wheel: Weak<Wheel>, tick_ms: u64) {
    let tick = Duration::from_millis(tick_ms);
    let mut at = Instant::now();
    loop {
        at += tick;
        tokio::time::sleep_until(at).await;
        let due = match wheel.upgrade() {
            Some(w) => match w.advance() {
                Some(due) => due,
                None => return,
            },
            None => return,
        };
        due.into_iter().for_each(Waker::wake);
        // A late tick (a busy worker) does not bunch the next ones up.
        at = at.max(Instant::now() - tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(w: &Wheel) -> u64 {
        w.now_ms()
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_at_or_after_it_never_before() {
        let wheel = Wheel::new();
        let mut slot = Slot::NONE;
        let due = now(&wheel) + 250;
        std::future::poll_fn(|cx| {
            if now(&wheel) >= due {
                return std::task::Poll::Ready(());
            }
            wheel.arm(&mut slot, due, cx.waker(), Duration::from_millis(160));
            std::task::Poll::Pending
        })
        .await;
        let late = now(&wheel) - due;
        // A tick is 10 ms here.
        assert!(late <= 10, "fired {late} ms late");
        wheel.release(slot);
        assert_eq!(wheel.lock().live, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_slot_is_not_woken_and_the_task_ends() {
        let wheel = Wheel::new();
        let mut slot = Slot::NONE;
        let waker = futures_noop_waker();
        wheel.arm(&mut slot, 50, &waker, Duration::from_millis(160));
        wheel.release(slot);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !wheel.lock().ticking,
            "the ticking task outlived every slot"
        );
    }

    fn futures_noop_waker() -> Waker {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        Waker::from(Arc::new(Noop))
    }
}
