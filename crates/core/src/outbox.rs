//! The bounded per-connection queue between the hub and the connection's
//! writer task.
//!
//! Producers (any task that publishes, or the connection itself via
//! `send_direct`) push under a short uncontended mutex and never wait; the
//! single consumer (the writer task owning the [`Outbox`]) drains everything
//! pending in one [`Outbox::recv_batch`] call so it can write the whole batch
//! with one vectored write. A waiting writer is remembered by its waker alone,
//! under the queue's lock, so an idle connection's writer holds no wait-list
//! entry of its own.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::connection::ConnEntry;
use crate::error::{CloseReason, OutboxClosed};
use crate::limits::{HubLimits, SlowConsumerPolicy};
use crate::publication::{ConnId, Delivery};

/// A queue whose capacity grew past this gives its buffer back when it drains, so a burst
/// does not pin its peak memory for the rest of the connection's life: in a fan-out every
/// subscriber's queue grows at once, and 2,000 subscribers each keeping room for a burst of
/// 80 publications held ≈ 10 MiB after the burst. Small enough for an idle connection to
/// keep (16 items of 16 bytes); a queue that keeps filling pays one allocation per growth
/// step again, which measured within the noise of fan-out's CPU per delivery.
const SHRINK_ABOVE: usize = 16;

/// Result of pushing one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushOutcome {
    /// Queued; `evicted` older items were dropped to make room (DropOldest).
    Queued { evicted: usize },
    /// This push overflowed the queue under the Close policy: the outbox is
    /// now closed with `CloseReason::SlowConsumer` and its queue discarded.
    ClosedSlow,
    /// The outbox was already closed; the item was not queued.
    Closed(CloseReason),
}

struct OutboxState {
    queue: VecDeque<Delivery>,
    /// Sum of `payload_len` over `queue`.
    bytes: usize,
    closed: Option<CloseReason>,
    /// The writer, when it found the queue empty and is waiting. Kept under the same lock
    /// as the queue (no separate wait-list future in every idle writer's state), and only
    /// woken on the empty → non-empty transition (and on close): while the queue is
    /// non-empty the writer is either busy or about to drain, so further wake-ups would be
    /// wasted.
    waiter: Option<Waker>,
}

/// State shared between the producers (hub) and the consumer ([`Outbox`]).
///
/// The bounds and the slow-consumer policy are the hub's, the same for every connection, so
/// a push is given them rather than every connection keeping a copy (24 bytes each).
pub(crate) struct OutboxShared {
    state: Mutex<OutboxState>,
}

impl OutboxShared {
    pub(crate) fn new() -> OutboxShared {
        OutboxShared {
            state: Mutex::new(OutboxState {
                queue: VecDeque::new(),
                bytes: 0,
                closed: None,
                waiter: None,
            }),
        }
    }

    /// Queues `item` without blocking, applying the slow-consumer policy of `limits` (the
    /// hub's) when full.
    pub(crate) fn push(&self, item: Delivery, limits: &HubLimits) -> PushOutcome {
        let max_messages = limits.outbox_max_messages.max(1);
        let max_bytes = limits.outbox_max_bytes;
        let size = item.payload_len();
        let mut st = self.state.lock();
        if let Some(reason) = st.closed {
            return PushOutcome::Closed(reason);
        }
        let full = |st: &OutboxState| {
            // An empty queue always accepts one item, so an oversized message
            // cannot wedge a healthy connection.
            !st.queue.is_empty() && (st.queue.len() >= max_messages || st.bytes + size > max_bytes)
        };
        let mut evicted = 0;
        if full(&st) {
            match limits.slow_consumer {
                SlowConsumerPolicy::Close => {
                    st.closed = Some(CloseReason::SlowConsumer);
                    st.bytes = 0;
                    let discarded = std::mem::take(&mut st.queue);
                    let waiter = st.waiter.take();
                    drop(st);
                    // Free the discarded items and wake outside the lock.
                    drop(discarded);
                    if let Some(w) = waiter {
                        w.wake();
                    }
                    return PushOutcome::ClosedSlow;
                }
                SlowConsumerPolicy::DropOldest => {
                    while full(&st) {
                        if let Some(old) = st.queue.pop_front() {
                            st.bytes -= old.payload_len();
                            evicted += 1;
                        }
                    }
                }
            }
        }
        let waiter = if st.queue.is_empty() {
            st.waiter.take()
        } else {
            None
        };
        st.queue.push_back(item);
        st.bytes += size;
        drop(st);
        if let Some(w) = waiter {
            w.wake();
        }
        PushOutcome::Queued { evicted }
    }

    /// Queues a control item whatever the bounds (they are rare, sent by the server, and
    /// must not be evicted or make a healthy connection a slow consumer). False once the
    /// outbox is closed.
    pub(crate) fn push_control(&self, item: Delivery) -> bool {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return false;
        }
        let waiter = if st.queue.is_empty() {
            st.waiter.take()
        } else {
            None
        };
        st.queue.push_back(item);
        drop(st);
        if let Some(w) = waiter {
            w.wake();
        }
        true
    }

    /// Closes the outbox. Returns false if it was already closed.
    ///
    /// For [`CloseReason::SlowConsumer`] the pending items are discarded (the
    /// point is to stop spending memory on this peer); for every other reason
    /// the writer still receives what was queued before it sees the error, so
    /// a graceful close does not lose the last messages.
    pub(crate) fn close(&self, reason: CloseReason) -> bool {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return false;
        }
        st.closed = Some(reason);
        let discarded = if reason == CloseReason::SlowConsumer {
            st.bytes = 0;
            std::mem::take(&mut st.queue)
        } else {
            VecDeque::new()
        };
        let waiter = st.waiter.take();
        drop(st);
        drop(discarded);
        if let Some(w) = waiter {
            w.wake();
        }
        true
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }
}

/// The receiving end of a connection's queue, owned by its writer task.
///
/// Dropping the `Outbox` (the writer went away) closes it, so the hub stops
/// queueing for this connection.
pub struct Outbox {
    entry: Arc<ConnEntry>,
}

impl Outbox {
    pub(crate) fn new(entry: Arc<ConnEntry>) -> Outbox {
        Outbox { entry }
    }

    fn shared(&self) -> &OutboxShared {
        &self.entry.outbox
    }

    /// The connection this outbox belongs to.
    pub fn id(&self) -> ConnId {
        self.entry.id
    }

    /// Waits until at least one item is pending, then moves up to `max` items
    /// (at least 1) into `out` without waiting further, returning how many.
    ///
    /// Returns `Err` once the outbox is closed and nothing is left to deliver.
    /// After [`CloseReason::SlowConsumer`] that happens immediately (the queue
    /// was discarded); the server should then send close 1008 "slow consumer".
    ///
    /// Cancel safe: items are only removed in the poll that returns them.
    pub async fn recv_batch(
        &mut self,
        out: &mut Vec<Delivery>,
        max: usize,
    ) -> Result<usize, OutboxClosed> {
        poll_fn(|cx| self.poll_recv_batch(cx, out, max)).await
    }

    /// Poll form of [`recv_batch`](Self::recv_batch), for a writer that drives several
    /// sources from one hand-written `poll`. When nothing is pending, `cx`'s waker is stored
    /// (replacing the one of any earlier poll) and woken by the next push or close.
    pub fn poll_recv_batch(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Delivery>,
        max: usize,
    ) -> Poll<Result<usize, OutboxClosed>> {
        let mut st = self.shared().state.lock();
        match Self::take_batch(&mut st, out, max) {
            Ok(0) => {
                match &mut st.waiter {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            other => Poll::Ready(other),
        }
    }

    /// Forgets the waker stored by the last pending [`poll_recv_batch`](Self::poll_recv_batch).
    /// For a writer that is about to poll again anyway (it is running, and e.g. about to
    /// publish to a channel it is a member of): a push meanwhile then does not wake the task
    /// that is already running. The next pending poll stores the waker again.
    pub fn forget_waker(&mut self) {
        self.shared().state.lock().waiter = None;
    }

    /// Like [`recv_batch`](Self::recv_batch) but never waits: `Ok(0)` when
    /// nothing is pending.
    pub fn try_recv_batch(
        &mut self,
        out: &mut Vec<Delivery>,
        max: usize,
    ) -> Result<usize, OutboxClosed> {
        let mut st = self.shared().state.lock();
        Self::take_batch(&mut st, out, max)
    }

    fn take_batch(
        st: &mut OutboxState,
        out: &mut Vec<Delivery>,
        max: usize,
    ) -> Result<usize, OutboxClosed> {
        let max = max.max(1);
        if st.queue.is_empty() {
            return match st.closed {
                Some(reason) => Err(OutboxClosed { reason }),
                None => Ok(0),
            };
        }
        let n = st.queue.len().min(max);
        out.reserve(n);
        let mut taken = 0;
        for item in st.queue.drain(..n) {
            taken += item.payload_len();
            out.push(item);
        }
        st.bytes -= taken;
        if st.queue.is_empty() && st.queue.capacity() > SHRINK_ABOVE {
            st.queue = VecDeque::new();
        }
        Ok(n)
    }

    /// Items currently queued.
    pub fn len(&self) -> usize {
        self.shared().state.lock().queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Payload bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.shared().state.lock().bytes
    }

    /// Why the outbox was closed, if it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared().close_reason()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // Nobody will read the queue any more: close it and free it now rather
        // than when the connection handle goes away.
        let discarded = {
            let mut st = self.shared().state.lock();
            st.closed.get_or_insert(CloseReason::Normal);
            st.bytes = 0;
            (std::mem::take(&mut st.queue), st.waiter.take())
        };
        drop(discarded);
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("id", &self.entry.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::Subscriptions;
    use crate::publication::Payload;

    fn outbox(
        max_messages: usize,
        max_bytes: usize,
        policy: SlowConsumerPolicy,
    ) -> (Outbox, HubLimits) {
        let limits = HubLimits {
            outbox_max_messages: max_messages,
            outbox_max_bytes: max_bytes,
            slow_consumer: policy,
            ..HubLimits::default()
        };
        let ob = Outbox::new(Arc::new(ConnEntry {
            id: 7,
            info: Default::default(),
            signed_in: Default::default(),
            outbox: OutboxShared::new(),
            subs: Mutex::new(Subscriptions::default()),
        }));
        (ob, limits)
    }

    fn direct(n: usize, len: usize) -> Delivery {
        let mut body = vec![b'x'; len];
        body[..8.min(len)].copy_from_slice(&(n as u64).to_le_bytes()[..8.min(len)]);
        Delivery::Direct(Box::new(Payload::binary(body)))
    }

    fn tag(d: &Delivery) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&d.payload().data[..8]);
        u64::from_le_bytes(b)
    }

    #[test]
    fn try_recv_drains_everything_pending_in_one_call() {
        let (mut ob, lim) = outbox(1000, 1 << 20, SlowConsumerPolicy::Close);
        for i in 0..300 {
            assert_eq!(
                ob.shared().push(direct(i, 16), &lim),
                PushOutcome::Queued { evicted: 0 }
            );
        }
        let mut out = Vec::new();
        assert_eq!(ob.try_recv_batch(&mut out, 10_000), Ok(300));
        assert_eq!(out.len(), 300);
        assert!(out.iter().enumerate().all(|(i, d)| tag(d) == i as u64));
        assert_eq!(ob.queued_bytes(), 0);
        assert_eq!(ob.try_recv_batch(&mut out, 10_000), Ok(0));
    }

    #[test]
    fn try_recv_respects_max_and_keeps_order() {
        let (mut ob, lim) = outbox(1000, 1 << 20, SlowConsumerPolicy::Close);
        for i in 0..10 {
            ob.shared().push(direct(i, 8), &lim);
        }
        let mut out = Vec::new();
        assert_eq!(ob.try_recv_batch(&mut out, 4), Ok(4));
        assert_eq!(ob.len(), 6);
        assert_eq!(ob.queued_bytes(), 48);
        assert_eq!(
            ob.try_recv_batch(&mut out, 0),
            Ok(1),
            "max 0 is treated as 1"
        );
        assert_eq!(ob.try_recv_batch(&mut out, 100), Ok(5));
        let tags: Vec<u64> = out.iter().map(tag).collect();
        assert_eq!(tags, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn close_policy_overflow_by_count_discards_queue() {
        let (mut ob, lim) = outbox(3, 1 << 20, SlowConsumerPolicy::Close);
        for i in 0..3 {
            assert_eq!(
                ob.shared().push(direct(i, 8), &lim),
                PushOutcome::Queued { evicted: 0 }
            );
        }
        assert_eq!(
            ob.shared().push(direct(3, 8), &lim),
            PushOutcome::ClosedSlow
        );
        assert_eq!(
            ob.shared().push(direct(4, 8), &lim),
            PushOutcome::Closed(CloseReason::SlowConsumer)
        );
        let mut out = Vec::new();
        assert_eq!(
            ob.try_recv_batch(&mut out, 10),
            Err(OutboxClosed {
                reason: CloseReason::SlowConsumer
            })
        );
        assert!(
            out.is_empty(),
            "queued items are discarded on slow-consumer close"
        );
        assert_eq!(ob.queued_bytes(), 0);
    }

    #[test]
    fn byte_bound_is_respected_under_drop_oldest() {
        let (mut ob, lim) = outbox(1000, 100, SlowConsumerPolicy::DropOldest);
        let mut evicted_total = 0;
        for i in 0..50 {
            match ob.shared().push(direct(i, 30), &lim) {
                PushOutcome::Queued { evicted } => evicted_total += evicted,
                other => panic!("unexpected {other:?}"),
            }
            assert!(
                ob.queued_bytes() <= 100,
                "bytes {} > 100",
                ob.queued_bytes()
            );
        }
        // 100 bytes hold three 30-byte items: the newest three survive.
        assert_eq!(ob.len(), 3);
        assert_eq!(evicted_total, 47);
        let mut out = Vec::new();
        ob.try_recv_batch(&mut out, 10).unwrap();
        assert_eq!(out.iter().map(tag).collect::<Vec<_>>(), vec![47, 48, 49]);
    }

    #[test]
    fn byte_bound_closes_under_close_policy() {
        let (ob, lim) = outbox(1000, 100, SlowConsumerPolicy::Close);
        for i in 0..3 {
            assert_eq!(
                ob.shared().push(direct(i, 30), &lim),
                PushOutcome::Queued { evicted: 0 }
            );
        }
        assert_eq!(ob.queued_bytes(), 90);
        assert_eq!(
            ob.shared().push(direct(3, 30), &lim),
            PushOutcome::ClosedSlow
        );
        assert_eq!(ob.close_reason(), Some(CloseReason::SlowConsumer));
    }

    #[test]
    fn oversized_item_is_accepted_only_into_an_empty_queue() {
        let (mut ob, lim) = outbox(1000, 100, SlowConsumerPolicy::DropOldest);
        ob.shared().push(direct(0, 10), &lim);
        // Evicts the small one, then fits alone.
        assert_eq!(
            ob.shared().push(direct(1, 500), &lim),
            PushOutcome::Queued { evicted: 1 }
        );
        assert_eq!(ob.len(), 1);
        assert_eq!(ob.queued_bytes(), 500);
        let mut out = Vec::new();
        assert_eq!(ob.try_recv_batch(&mut out, 10), Ok(1));
        assert_eq!(tag(&out[0]), 1);

        let (close, close_lim) = outbox(1000, 100, SlowConsumerPolicy::Close);
        assert_eq!(
            close.shared().push(direct(0, 500), &close_lim),
            PushOutcome::Queued { evicted: 0 }
        );
        assert_eq!(
            close.shared().push(direct(1, 1), &close_lim),
            PushOutcome::ClosedSlow
        );
    }

    #[test]
    fn graceful_close_delivers_pending_then_errors() {
        let (mut ob, lim) = outbox(10, 1 << 20, SlowConsumerPolicy::Close);
        ob.shared().push(direct(0, 8), &lim);
        ob.shared().push(direct(1, 8), &lim);
        assert!(ob.shared().close(CloseReason::Shutdown));
        assert!(!ob.shared().close(CloseReason::Kicked), "first reason wins");
        assert_eq!(
            ob.shared().push(direct(2, 8), &lim),
            PushOutcome::Closed(CloseReason::Shutdown)
        );
        let mut out = Vec::new();
        assert_eq!(ob.try_recv_batch(&mut out, 10), Ok(2));
        assert_eq!(
            ob.try_recv_batch(&mut out, 10),
            Err(OutboxClosed {
                reason: CloseReason::Shutdown
            })
        );
    }

    #[test]
    fn dropping_the_outbox_closes_it() {
        let (ob, lim) = outbox(10, 1 << 20, SlowConsumerPolicy::Close);
        let entry = Arc::clone(&ob.entry);
        entry.outbox.push(direct(0, 8), &lim);
        drop(ob);
        assert_eq!(
            entry.outbox.push(direct(1, 8), &lim),
            PushOutcome::Closed(CloseReason::Normal)
        );
        assert!(entry.outbox.state.lock().queue.is_empty());
    }

    #[test]
    fn drained_queue_gives_back_burst_capacity() {
        let (mut ob, lim) = outbox(100_000, usize::MAX, SlowConsumerPolicy::Close);
        for i in 0..10_000 {
            ob.shared().push(direct(i, 8), &lim);
        }
        let mut out = Vec::new();
        assert_eq!(ob.try_recv_batch(&mut out, usize::MAX), Ok(10_000));
        assert_eq!(ob.shared().state.lock().queue.capacity(), 0);
    }

    #[test]
    fn a_small_queue_keeps_its_buffer() {
        let (mut ob, lim) = outbox(100, usize::MAX, SlowConsumerPolicy::Close);
        for i in 0..3 {
            ob.shared().push(direct(i, 8), &lim);
        }
        let mut out = Vec::new();
        assert_eq!(ob.try_recv_batch(&mut out, usize::MAX), Ok(3));
        let cap = ob.shared().state.lock().queue.capacity();
        assert!((3..=SHRINK_ABOVE).contains(&cap), "capacity {cap}");
    }

    #[test]
    fn a_queued_item_is_two_words() {
        // Every subscriber's queue is sized in these: keep the large variants boxed.
        assert_eq!(
            std::mem::size_of::<Delivery>(),
            2 * std::mem::size_of::<usize>()
        );
    }

    #[tokio::test]
    async fn recv_batch_waits_for_a_push_and_wakes() {
        let (mut ob, lim) = outbox(100, 1 << 20, SlowConsumerPolicy::Close);
        let entry = Arc::clone(&ob.entry);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            let n = ob.recv_batch(&mut out, 100).await.unwrap();
            (n, out.iter().map(tag).collect::<Vec<_>>(), ob)
        });
        tokio::task::yield_now().await;
        entry.outbox.push(direct(42, 8), &lim);
        let (n, tags, mut ob) = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("reader woke")
            .unwrap();
        assert_eq!((n, tags), (1, vec![42]));

        // Closing wakes a waiting reader with the error.
        let entry2 = Arc::clone(&ob.entry);
        let waiter = tokio::spawn(async move {
            let mut out = Vec::new();
            ob.recv_batch(&mut out, 100).await
        });
        tokio::task::yield_now().await;
        entry2.outbox.close(CloseReason::Kicked);
        let res = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("reader woke")
            .unwrap();
        assert_eq!(
            res,
            Err(OutboxClosed {
                reason: CloseReason::Kicked
            })
        );
    }
}
