//! The connection runtime: one task per connection, the same loop for every protocol.
//!
//! The task runs a [`Driver`] over a [`Transport`] (a WebSocket, or another sink such as
//! Engine.IO long-polling). It sends what the driver queues at open, then loops over four
//! sources polled by hand (no `select!`, so an idle connection's state stays small):
//!
//! * **shutdown** → [`Ending::Shutdown`];
//! * **the transport**: each text or binary message goes to [`Driver::on_message`] (which
//!   may pause reading through [`Driver::poll_read_ready`]); control frames are answered
//!   by the WebSocket layer, which also stamps liveness for the heartbeat;
//! * **the heartbeat** timer: [`Driver::ping`] every ping interval; a peer that sends
//!   nothing within the ping timeout after a ping is [`Ending::Dead`];
//! * **the driver's events** ([`Driver::poll_event`]: its outbox deliveries, controls) and
//!   its one timer ([`Driver::deadline`]).
//!
//! After every step the frames the driver queued are written in one vectored write. The
//! flush is bounded for every protocol alike: a peer that accepts no bytes for the stall
//! limit (`ping_timeout`) is dropped ([`Ending::Stalled`]), and a flush that waits gives up
//! as soon as the hub closes the outbox as a slow consumer. No lock is held while writing.
//! After a message was read, the next pass looks at the writes first, so a client that
//! sends without pause still receives; after [`TURNS_PER_YIELD`] turns in a row the task
//! yields, so such a client cannot hold its worker thread.
//!
//! A panic in the driver (a bug, or an embedder's hook) is caught: the peer gets the close
//! the driver owes [`Ending::Panic`] (1011 for WebSocket protocols), it is counted as
//! `closed_panic`, and every other connection carries on. A panic in the runtime itself
//! drops the socket (the writer that could send 1011 is what failed).
use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use switchboard_core::{CloseReason, ConnId};
use switchboard_websocket::stream::WebSocket;
use switchboard_websocket::{CloseCode, Error as WsError, Message};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::crash;
use super::driver::{Driver, Ending, Out, OutFrame};
use super::heartbeat::{Activity, Beat, Heartbeat};
use super::limits::{Flood, FloodLimits, Verdict};
use super::park::{ParkIo, ParkedConn, Parker};
use super::shutdown::ShutdownToken;
use super::stats::{CloseKind, ConnectionSlot, Counter, OpenConnection, ServerCounters};

/// How long to wait for the peer's close reply after sending ours (outside shutdown), and
/// at most for our close frame to be written.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long a connection closed for flooding stays open, unread, after its close frame.
const FLOOD_GRACE: Duration = Duration::from_millis(250);
/// How often a stalled flush checks whether the hub gave up on the connection.
const STALL_CHECK: Duration = Duration::from_millis(200);
/// Most turns of the loop (messages read, events handled) in one go before the task
/// yields. The socket's own cooperative budget counts reads from the kernel, not messages,
/// and one read of small frames holds hundreds of them.
pub(crate) const TURNS_PER_YIELD: u32 = 32;

/// Where a connection's frames come from and go to.
pub(crate) trait Transport: Send + 'static {
    /// The next message from the peer; `None` at the end of the stream.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>>;
    /// Queue one frame for the next flush. [`WsError::WouldOverflow`] when the write buffer
    /// is full: the runtime flushes and tries again once.
    fn feed(&mut self, frame: &OutFrame) -> Result<(), WsError>;
    /// Write what is queued.
    fn flush(&mut self) -> impl Future<Output = Result<(), WsError>> + Send + '_;
    /// Send a close frame and flush it.
    fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
    ) -> impl Future<Output = Result<(), WsError>> + Send;
    /// Read and discard until the peer's close reply or the end of the stream, at most
    /// `limit`, so the socket is not reset while our close frame is unread.
    fn linger(&mut self, limit: Duration) -> impl Future<Output = ()> + Send + '_;
    /// After a read error: discard what the peer still sends for at most `limit`, so the
    /// close code the codec sent is not destroyed by a reset.
    fn drain(&mut self, limit: Duration) -> impl Future<Output = ()> + Send + '_;
    /// When the peer was last heard from, for the heartbeat.
    fn activity(&self) -> Activity;
    /// Whether the transport could be parked now: nothing in progress in either direction,
    /// over a socket that parks (see [`super::park`]).
    fn can_park(&mut self) -> bool {
        false
    }
    /// Move the socket into `parker`, which wakes `waker` when it turns readable; false
    /// when it did not move.
    fn park(&mut self, parker: &Parker, waker: Waker) -> bool {
        let _ = (parker, waker);
        false
    }
    /// Take the socket back from `parker` into tokio's reactor; true when it has something
    /// to read (see [`ParkIo::unpark`]).
    fn unpark(&mut self, parker: &Parker) -> std::io::Result<bool> {
        let _ = parker;
        Ok(false)
    }
    /// Whether nothing is in progress in either direction (the first half of
    /// [`Transport::can_park`]; a parked transport checks it after writing in place).
    fn is_at_rest(&mut self) -> bool {
        false
    }
    /// Whether the parked socket was reported readable since it was parked.
    fn parked_readable(&mut self, parker: &Parker) -> bool {
        let _ = parker;
        false
    }
    /// Make room for a batch of frames with these payload lengths, about to be fed.
    fn reserve_for(&mut self, payload_lens: impl Iterator<Item = usize>) {
        let _ = payload_lens;
    }
}

/// A WebSocket as a [`Transport`]. Unsplit: one task drives both directions, so the
/// WebSocket's state lives in the task itself (no shared allocation, no reference count).
pub(crate) struct WsTransport<S> {
    ws: WebSocket<S>,
}

impl<S> WsTransport<S> {
    /// The transport over `ws`.
    pub(crate) fn new(ws: WebSocket<S>) -> Self {
        WsTransport { ws }
    }
}

impl<S> Transport for WsTransport<S>
where
    S: AsyncRead + AsyncWrite + ParkIo + Unpin + Send + 'static,
{
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>> {
        self.ws.poll_next(cx)
    }

    fn feed(&mut self, frame: &OutFrame) -> Result<(), WsError> {
        match frame {
            OutFrame::Message(m) => self.ws.feed(m.clone()),
            OutFrame::Prepared(p) => self.ws.feed_prepared(p),
            // The runtime takes the marks before they reach a transport.
            OutFrame::Published(_) => Ok(()),
        }
    }

    fn flush(&mut self) -> impl Future<Output = Result<(), WsError>> + Send + '_ {
        self.ws.flush()
    }

    fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
    ) -> impl Future<Output = Result<(), WsError>> + Send {
        self.ws.send_close(code, reason)
    }

    fn linger(&mut self, limit: Duration) -> impl Future<Output = ()> + Send + '_ {
        let ws = &mut self.ws;
        async move {
            let _ = tokio::time::timeout(limit, async {
                while let Some(Ok(msg)) = ws.next().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }

    fn drain(&mut self, limit: Duration) -> impl Future<Output = ()> + Send + '_ {
        self.ws.drain(limit)
    }

    fn activity(&self) -> Activity {
        Activity::Tracker(self.ws.tracker())
    }

    fn can_park(&mut self) -> bool {
        self.ws.io_mut().can_park() && self.ws.is_at_rest()
    }

    fn park(&mut self, parker: &Parker, waker: Waker) -> bool {
        self.ws.io_mut().park(parker, waker)
    }

    fn unpark(&mut self, parker: &Parker) -> std::io::Result<bool> {
        self.ws.io_mut().unpark(parker)
    }

    fn is_at_rest(&mut self) -> bool {
        self.ws.is_at_rest()
    }

    fn parked_readable(&mut self, parker: &Parker) -> bool {
        self.ws.io_mut().parked_readable(parker)
    }

    fn reserve_for(&mut self, payload_lens: impl Iterator<Item = usize>) {
        self.ws.reserve_for(payload_lens);
    }
}

/// The runtime's settings, the same for every protocol (from the server configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// How often the driver pings.
    pub(crate) ping_interval: Duration,
    /// How long after a ping the peer may stay silent; also the stall limit of a flush.
    pub(crate) ping_timeout: Duration,
    /// How long the peer's close reply is awaited at shutdown.
    pub(crate) shutdown_timeout: Duration,
    /// The message and byte rates a client may send at.
    pub(crate) flood: FloodLimits,
    /// Whether idle connections park (see [`super::park`]).
    pub(crate) park_idle: bool,
}

/// Who the connection is, for logs and counters.
pub(crate) struct Identity {
    /// The peer's address.
    pub(crate) peer: SocketAddr,
    /// The connection's id in the hub (0 before it has one).
    pub(crate) id: ConnId,
    /// The protocol, for logs.
    pub(crate) protocol: &'static str,
}

/// Runs `driver` over `transport` on its own task until the connection ends; `slot` (the
/// connection's place under `max_connections`) is released at the end, however it ends.
pub(crate) fn spawn<T: Transport, D: Driver>(
    transport: T,
    driver: D,
    limits: Limits,
    who: Identity,
    counters: Arc<ServerCounters>,
    token: ShutdownToken,
    slot: Option<ConnectionSlot>,
) {
    let task = ConnTask {
        counters: Arc::clone(&counters),
        conn: run(Entry::Open(Box::new(Start {
            transport,
            driver,
            limits,
            who,
            counters,
            token,
            slot,
        }))),
    };
    tokio::spawn(task);
}

pin_project_lite::pin_project! {
    /// A connection's task: its future, polled with panics caught.
    ///
    /// A plain struct rather than an `async` block around the future on purpose: an `async`
    /// block that awaits (or pins) a future it captured keeps the captured copy as well as
    /// the one it polls, which doubled every idle connection's largest allocation. It keeps
    /// nothing else the connection's future has (the peer, the id): every connection in a
    /// task pays for each byte here, and the future logs its own endings, panics included.
    struct ConnTask<F> {
        #[pin]
        conn: F,
        counters: Arc<ServerCounters>,
    }
}

impl<F: Future<Output = ()>> Future for ConnTask<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let conn = this.conn;
        // Never polled again after a panic (we return Ready, and the future, with the
        // connection's slot, is dropped), so no broken invariant it left behind can be
        // observed.
        match std::panic::catch_unwind(AssertUnwindSafe(|| conn.poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(())) => {}
            Err(p) => {
                this.counters.bump(Counter::ClosedPanic);
                let p = crash::panic_message(p.as_ref());
                tracing::error!("panic in a connection's runtime: {p}");
            }
        }
        Poll::Ready(())
    }
}

pin_project_lite::pin_project! {
    /// A driver's future with panics caught, without boxing it (the hot path of raw rooms
    /// runs one per message).
    struct Contained<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future<Output = Result<(), Ending>>> Future for Contained<F> {
    type Output = Result<(), Ending>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        // Never polled again after a panic: the connection ends with Ending::Panic.
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(p) => p,
            Err(p) => Poll::Ready(Err(Ending::Panic(crash::panic_message(p.as_ref())))),
        }
    }
}

fn contained<F: Future<Output = Result<(), Ending>>>(inner: F) -> Contained<F> {
    Contained { inner }
}

/// What [`spawn`] hands to the connection future. Boxed: an `async fn` keeps its arguments
/// for its whole life, and these are only needed while opening.
struct Start<T, D> {
    transport: T,
    driver: D,
    limits: Limits,
    who: Identity,
    counters: Arc<ServerCounters>,
    token: ShutdownToken,
    slot: Option<ConnectionSlot>,
}

/// How a connection's task begins: opening, or going on after it was parked (with what
/// its turn in the parker found to do, if it already took it).
enum Entry<T, D, E> {
    Open(Box<Start<T, D>>),
    Resume(Box<Running<T, D>>, Option<Box<Wake<E>>>),
}

/// A connection past its opening: what the loop and the ending need, and all a parked
/// connection keeps.
struct Running<T, D> {
    transport: T,
    driver: D,
    out: Out,
    /// The heartbeat, on the server's shared timer wheel; it holds the shutdown token too
    /// (the wheel wakes the connection at shutdown).
    heartbeat: Heartbeat,
    /// The driver's one timer, allocated only once it asks for one.
    timer: Option<(Instant, Pin<Box<Sleep>>)>,
    /// How long the peer's close reply is awaited at shutdown (the other limits live in the
    /// heartbeat: every byte here is paid by every idle connection).
    shutdown_timeout: Duration,
    /// Who the peer is, for logs (the protocol's name is the traffic counters').
    peer: SocketAddr,
    id: ConnId,
    counters: Arc<ServerCounters>,
    /// The protocol's traffic counters; counts the connection open while it lives.
    traffic: OpenConnection,
    /// The flood guard, when a client message or byte rate is configured.
    flood: Option<Box<Flood>>,
    /// The connection's place under `max_connections`, released when this is dropped.
    _slot: Option<ConnectionSlot>,
    /// Parking: when the current window of [`PARK_WINDOW_MS`] began (the wheel's coarse
    /// clock, wrapping), how many times the loop woke in it, and whether the window before
    /// was busy (more than [`QUIET_WAKES`]).
    window_ms: u32,
    wakes: u8,
    busy_before: bool,
    /// Resumed with bytes to read that tokio's reactor has not reported yet: no parking
    /// before they are read (or it would park again at once, with them unread).
    unread: bool,
    /// Parking is on (the server's `park_idle`).
    may_park: bool,
}

/// The window over which a connection's wake-ups are counted to tell whether it is quiet.
const PARK_WINDOW_MS: u32 = 1000;
/// A connection that woke at most this many times in the current window and in the one
/// before parks when it next has nothing to do; a busier one keeps its task (parking and
/// resuming cost a few system calls, which a connection that handles traffic all the time
/// would pay over and over).
const QUIET_WAKES: u8 = 4;

impl<T, D> Running<T, D> {
    /// Counts a wake-up in the parking window.
    fn count_wake(&mut self) {
        let now = self.heartbeat.coarse_ms() as u32;
        let elapsed = now.wrapping_sub(self.window_ms);
        if elapsed >= PARK_WINDOW_MS {
            // A window with no wake at all in between counts as quiet.
            self.busy_before = self.wakes > QUIET_WAKES && elapsed < 2 * PARK_WINDOW_MS;
            self.window_ms = now;
            self.wakes = 0;
        }
        self.wakes = self.wakes.saturating_add(1);
    }

    /// Whether the connection has been quiet enough to park.
    fn is_quiet(&self) -> bool {
        self.may_park && self.wakes <= QUIET_WAKES && !self.busy_before
    }
}

/// The connection's life, in one task or, when it parks, in several: each task runs the
/// loop until the connection ends or parks. The connection's state lives in one box for its
/// whole life, so parking and resuming move a pointer and allocate nothing but the (small)
/// task; the opening and the ending run boxed too, so a task keeps only the loop's state.
async fn run<T: Transport, D: Driver>(entry: Entry<T, D, D::Event>) {
    let (mut conn, opened, mut pending) = enter(entry);
    let end = match opened {
        Err(end) => end,
        Ok(()) => loop {
            match drive(&mut conn, pending.take()).await {
                Stop::End(end) => break end,
                Stop::Park => match park(conn) {
                    Parking::Parked => return,
                    Parking::Stays(back, wake) => {
                        conn = back;
                        // Not again in this window (whatever stopped it may still hold).
                        conn.wakes = QUIET_WAKES + 1;
                        // Boxed: rare, and the loop's future keeps room for it.
                        pending = wake.map(Box::new);
                    }
                },
            }
        },
    };
    Box::pin(finish(unbox(conn), end)).await;
}

/// The connection at the start of a task: opened (the driver's first frames queued; the
/// loop writes them first), or resumed (its socket back in tokio's reactor).
#[allow(
    clippy::type_complexity,
    reason = "the connection, the ending it met on the way in, and what is pending"
)]
fn enter<T: Transport, D: Driver>(
    entry: Entry<T, D, D::Event>,
) -> (
    Box<Running<T, D>>,
    Result<(), Ending>,
    Option<Box<Wake<D::Event>>>,
) {
    match entry {
        // Moved out by a function, so the start's box is freed now: a box only moved out of
        // (`*start`) in an `async fn` would be freed at its end, i.e. kept for the
        // connection's whole life.
        Entry::Open(start) => {
            let (conn, opened) = open(unbox(start));
            (Box::new(conn), opened, None)
        }
        Entry::Resume(mut conn, pending) => {
            conn.counters.count_parked(false);
            // The wheel holds the parked connection's waker: hand it this task's.
            conn.heartbeat.rearm();
            let parker = conn.heartbeat.token().parker().cloned();
            let back = parker.map_or(Ok(false), |p| conn.transport.unpark(&p));
            match back {
                Ok(unread) => {
                    conn.unread = unread;
                    tracing::trace!(peer = %conn.peer, id = conn.id, "resumed");
                    (conn, Ok(()), pending)
                }
                Err(e) => {
                    tracing::debug!(peer = %conn.peer, id = conn.id, "cannot resume a parked socket: {e}");
                    (conn, Err(Ending::Lost), None)
                }
            }
        }
    }
}

/// A parked connection: its waker (which every source it waits on holds) and its state.
struct ParkCell<T, D> {
    state: Mutex<ParkState<T, D>>,
}

enum ParkState<T, D> {
    /// Being parked, or taking its turn: a wake now means the connection has something (more)
    /// to do.
    Parking { woken: bool },
    /// Parked.
    Waiting(Box<Running<T, D>>),
    /// Parked and woken: queued in the parker for its turn.
    Queued(Box<Running<T, D>>),
    /// Resumed on a task.
    Taken,
}

/// Turns in a row a parked connection may take when it is woken again during one; then it
/// resumes (something keeps it busy).
const TURNS_PARKED: u32 = 4;
/// Most driver events handled in one turn of a parked connection.
const EVENTS_PER_TURN: u32 = 64;

impl<T: Transport, D: Driver> ParkCell<T, D> {
    fn lock(&self) -> std::sync::MutexGuard<'_, ParkState<T, D>> {
        // Nothing that can panic runs under the lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resumes `conn` on a new task, with what its turn found to do.
    fn resume(conn: Box<Running<T, D>>, pending: Option<Box<Wake<D::Event>>>) {
        // Wakers may be called from outside the runtime (an embedding program publishing
        // from a thread of its own): then the runtime the parker was made in.
        let handle = tokio::runtime::Handle::try_current().ok().or_else(|| {
            let parker = conn.heartbeat.token().parker();
            parker.map(|p| p.runtime().clone())
        });
        let task = ConnTask {
            counters: Arc::clone(&conn.counters),
            conn: run(Entry::Resume(conn, pending)),
        };
        match handle {
            Some(h) => drop(h.spawn(task)),
            None => tracing::error!("a parked connection woke with no runtime to run on"),
        }
    }
}

impl<T: Transport, D: Driver> std::task::Wake for ParkCell<T, D> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.lock();
        match &mut *state {
            ParkState::Parking { woken } => *woken = true,
            ParkState::Queued(_) | ParkState::Taken => {}
            ParkState::Waiting(conn) => {
                let parker = conn.heartbeat.token().parker().cloned();
                let ParkState::Waiting(conn) = std::mem::replace(&mut *state, ParkState::Taken)
                else {
                    unreachable!("matched above")
                };
                match parker {
                    Some(parker) => {
                        *state = ParkState::Queued(conn);
                        drop(state);
                        parker.schedule(Arc::clone(self) as Arc<dyn ParkedConn>);
                    }
                    None => {
                        drop(state);
                        Self::resume(conn, None);
                    }
                }
            }
        }
    }
}

impl<T: Transport, D: Driver> ParkedConn for ParkCell<T, D> {
    /// The connection's turn: what it can do parked it does here (deliveries written
    /// straight to its socket); anything else resumes it.
    fn deliver(self: Arc<Self>) {
        let mut conn = {
            let mut state = self.lock();
            if !matches!(*state, ParkState::Queued(_)) {
                return;
            }
            match std::mem::replace(&mut *state, ParkState::Parking { woken: false }) {
                ParkState::Queued(conn) => conn,
                _ => unreachable!("matched above"),
            }
        };
        let Some(parker) = conn.heartbeat.token().parker().cloned() else {
            *self.lock() = ParkState::Taken;
            return Self::resume(conn, None);
        };
        let waker = Waker::from(Arc::clone(&self));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..TURNS_PARKED {
            if let Turn::Resume(pending) = turn(&mut conn, &parker, &mut cx) {
                *self.lock() = ParkState::Taken;
                tracing::trace!(peer = %conn.peer, id = conn.id, "parked connection resumes");
                return Self::resume(conn, pending);
            }
            let mut state = self.lock();
            if let ParkState::Parking { woken: true } = *state {
                // Woken while taking the turn: take another.
                *state = ParkState::Parking { woken: false };
                continue;
            }
            *state = ParkState::Waiting(conn);
            return;
        }
        *self.lock() = ParkState::Taken;
        Self::resume(conn, None);
    }
}

/// What a parked connection's turn came to.
enum Turn<E> {
    /// Done: it stays parked.
    Stay,
    /// It must resume on a task, with this to handle first.
    Resume(Option<Box<Wake<E>>>),
}

/// A parked connection's turn, polled with its parked cell's waker: the driver's events
/// handled and written to the socket without blocking. Anything that needs the loop (bytes
/// to read, the heartbeat or the driver's timer, shutdown, an event the driver handles only
/// asynchronously, a write the socket would not take whole) resumes it.
fn turn<T: Transport, D: Driver>(
    conn: &mut Running<T, D>,
    parker: &Parker,
    cx: &mut Context<'_>,
) -> Turn<D::Event> {
    let resume = |wake| Turn::Resume(Some(Box::new(wake)));
    if conn.transport.parked_readable(parker) {
        return Turn::Resume(None);
    }
    if conn.heartbeat.poll_shutdown(cx).is_ready() {
        return resume(Wake::Shutdown);
    }
    if let Poll::Ready(beat) = conn.heartbeat.poll_next(cx) {
        return resume(Wake::Beat(beat));
    }
    if let Some((_, sleep)) = &mut conn.timer {
        if sleep.as_mut().poll(cx).is_ready() {
            conn.timer = None;
            return resume(Wake::Timer);
        }
    }
    let mut events = 0;
    loop {
        if events == EVENTS_PER_TURN {
            return Turn::Resume(None);
        }
        events += 1;
        let driver = &mut conn.driver;
        let event = match std::panic::catch_unwind(AssertUnwindSafe(|| driver.poll_event(cx))) {
            Ok(Poll::Ready(event)) => event,
            Ok(Poll::Pending) => break,
            Err(p) => return resume(Wake::ReadPanicked(crash::panic_message(p.as_ref()))),
        };
        let out = &mut conn.out;
        match crash::call(|| driver.on_event_now(event, out)) {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(end))) => return resume(Wake::Ended(end)),
            Ok(Err(event)) => return resume(Wake::Event(event)),
            Err(p) => return resume(Wake::Ended(Ending::Panic(p.0))),
        }
        // Written after each event, as the loop does: the write buffer holds one batch at a
        // time, and a socket that takes only part of it resumes the connection at once.
        if !conn.out.is_empty() {
            match feed_out(conn) {
                Ok((_, true)) => {}
                // The write buffer is full: the loop writes the rest.
                Ok((_, false)) => return Turn::Resume(None),
                Err(end) => return resume(Wake::Ended(end)),
            }
            let flushed = std::pin::pin!(conn.transport.flush()).poll(cx);
            match flushed {
                Poll::Ready(Ok(())) => conn.out.shrink(),
                Poll::Ready(Err(_)) => return resume(Wake::Ended(Ending::WriteFailed)),
                // The socket took only part: the loop writes the rest, bounded as always.
                Poll::Pending => return resume(Wake::Flush),
            }
        }
    }
    // The driver's timer is armed by the loop: one it asked for in this turn resumes it.
    let timer_armed = match (conn.driver.deadline(), &conn.timer) {
        (None, _) => true,
        (Some(at), Some((armed, _))) => at == *armed,
        (Some(_), None) => false,
    };
    if !timer_armed || !conn.transport.is_at_rest() {
        return Turn::Resume(None);
    }
    Turn::Stay
}

/// Parks `conn`: its socket into the server's parker, its other sources told to wake the
/// parked cell, its state into the cell. Gives the connection back (with what woke it, if
/// anything did while it was being parked) when it cannot park or must not.
fn park<T: Transport, D: Driver>(mut conn: Box<Running<T, D>>) -> Parking<T, D, D::Event> {
    let Some(parker) = conn.heartbeat.token().parker().cloned() else {
        return Parking::Stays(conn, None);
    };
    let cell = Arc::new(ParkCell {
        state: Mutex::new(ParkState::Parking { woken: false }),
    });
    let waker = Waker::from(Arc::clone(&cell));
    if !conn.transport.park(&parker, waker.clone()) {
        return Parking::Stays(conn, None);
    }
    // Every other source now wakes the cell rather than this task, which is ending.
    let mut cx = Context::from_waker(&waker);
    conn.heartbeat.rearm();
    let woke = if conn.heartbeat.poll_shutdown(&mut cx).is_ready() {
        Some(Wake::Shutdown)
    } else {
        match poll_writes(&mut conn, &mut cx) {
            Poll::Ready(w) => Some(w),
            Poll::Pending => None,
        }
    };
    if woke.is_none() {
        let mut state = cell.lock();
        if !matches!(*state, ParkState::Parking { woken: true }) {
            tracing::trace!(peer = %conn.peer, id = conn.id, "parked");
            conn.counters.count_parked(true);
            *state = ParkState::Waiting(conn);
            return Parking::Parked;
        }
    }
    tracing::trace!(peer = %conn.peer, id = conn.id, woke = woke.is_some(), "parking given up");
    // Back into this task: it registers its own waker everywhere on its next pass.
    conn.heartbeat.rearm();
    match conn.transport.unpark(&parker) {
        Ok(unread) => {
            conn.unread = unread;
            Parking::Stays(conn, woke)
        }
        Err(e) => {
            tracing::debug!(peer = %conn.peer, id = conn.id, "cannot take a socket back from parking: {e}");
            Parking::Stays(conn, Some(Wake::Read(None)))
        }
    }
}

/// What [`park`] did.
enum Parking<T, D, E> {
    /// The connection is parked.
    Parked,
    /// It stays in its task, with the wake-up that stopped the parking, if one did.
    Stays(Box<Running<T, D>>, Option<Wake<E>>),
}

/// The value in `b`, the box freed.
#[allow(
    clippy::boxed_local,
    reason = "taking the box is the point: it is freed when this returns"
)]
fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// Opening: the driver's first frames are queued; the loop writes them first.
fn open<T: Transport, D: Driver>(start: Start<T, D>) -> (Running<T, D>, Result<(), Ending>) {
    let Start {
        transport,
        mut driver,
        limits,
        who,
        counters,
        token,
        slot,
    } = start;
    let mut out = Out::default();
    let opened = match crash::call(|| driver.open(&mut out)) {
        Ok(r) => r,
        Err(p) => Err(Ending::Panic(p.0)),
    };
    let heartbeat = Heartbeat::new(
        limits.ping_interval,
        limits.ping_timeout,
        transport.activity(),
        token,
    );
    tracing::debug!(peer = %who.peer, id = who.id, protocol = who.protocol, "connected");
    let traffic = counters.protocol(who.protocol).open();
    let flood = limits
        .flood
        .is_on()
        .then(|| Box::new(Flood::new(limits.flood)));
    let window_ms = heartbeat.coarse_ms() as u32;
    let conn = Running {
        transport,
        driver,
        out,
        heartbeat,
        timer: None,
        shutdown_timeout: limits.shutdown_timeout,
        peer: who.peer,
        id: who.id,
        counters,
        traffic,
        flood,
        _slot: slot,
        window_ms,
        wakes: 0,
        busy_before: false,
        unread: false,
        may_park: limits.park_idle,
    };
    (conn, opened)
}

/// What woke the loop.
enum Wake<E> {
    Shutdown,
    Read(Option<Result<Message, WsError>>),
    ReadPanicked(String),
    /// The driver takes messages again.
    ReadReady,
    Beat(Beat),
    Event(E),
    Timer,
    /// Nothing to do, and the connection has been quiet: it parks.
    Park,
    /// A parked connection's turn met the connection's end (what it queued is written
    /// first).
    Ended(Ending),
    /// A parked connection's turn left bytes its socket did not take: they go first.
    Flush,
}

/// Why the loop stopped.
enum Stop {
    End(Ending),
    Park,
}

impl From<Ending> for Stop {
    fn from(end: Ending) -> Stop {
        Stop::End(end)
    }
}

/// The loop of an open connection, from `pending` (a wake-up already taken) if given. Its
/// sources are polled by hand in one `poll_fn` rather than with `select!`: this future is
/// what every connection in a task keeps, and polling by hand keeps it to a few references.
/// Shutdown has no future of its own: the heartbeat's wheel wakes every connection when it
/// is triggered.
async fn drive<T: Transport, D: Driver>(
    conn: &mut Running<T, D>,
    mut pending: Option<Box<Wake<D::Event>>>,
) -> Stop {
    // Whether the driver paused reading (see `Driver::poll_read_ready`).
    let mut read_paused = false;
    let mut writes_first = false;
    let mut turns: u32 = 0;
    // Anything queued at open goes out before the loop looks at any source.
    if let Err(end) = write_out(conn).await {
        return end.into();
    }
    loop {
        if turns >= TURNS_PER_YIELD {
            turns = 0;
            tokio::task::yield_now().await;
        }
        match (conn.driver.deadline(), &mut conn.timer) {
            (None, t) => *t = None,
            (Some(at), Some((armed, sleep))) => {
                if *armed != at {
                    *armed = at;
                    sleep.as_mut().reset(at);
                }
            }
            (Some(at), t @ None) => *t = Some((at, Box::pin(tokio::time::sleep_until(at)))),
        }
        let wake = match pending.take() {
            Some(wake) => *wake,
            None => {
                // Polled again means woken: by then tokio has reported whatever a resumed
                // socket had to read (bytes, or a control frame the WebSocket answered
                // without waking this loop), so parking is no longer held back for it.
                let mut polled_before = false;
                std::future::poll_fn(|cx| {
                    if std::mem::replace(&mut polled_before, true) {
                        conn.unread = false;
                    }
                    if conn.heartbeat.poll_shutdown(cx).is_ready() {
                        return Poll::Ready(Wake::Shutdown);
                    }
                    let polled = if writes_first {
                        match poll_writes(conn, cx) {
                            Poll::Ready(w) => Poll::Ready(w),
                            Poll::Pending => poll_reads(conn, &mut read_paused, cx),
                        }
                    } else {
                        match poll_reads(conn, &mut read_paused, cx) {
                            Poll::Ready(w) => Poll::Ready(w),
                            Poll::Pending => poll_writes(conn, cx),
                        }
                    };
                    if polled.is_pending() {
                        // The task is about to give its thread back anyway.
                        turns = 0;
                        if !read_paused
                            && !conn.unread
                            && conn.is_quiet()
                            && conn.transport.can_park()
                        {
                            return Poll::Ready(Wake::Park);
                        }
                    }
                    polled
                })
                .await
            }
        };
        if let Wake::Park = wake {
            return Stop::Park;
        }
        conn.count_wake();
        turns += 1;
        writes_first = matches!(wake, Wake::Read(_));
        if writes_first {
            conn.unread = false;
        }
        let step = match wake {
            Wake::Park => return Stop::Park,
            Wake::Ended(end) => return end.into(),
            Wake::Flush => flush_bounded(conn).await,
            Wake::Shutdown => return Ending::Shutdown.into(),
            Wake::ReadReady => Ok(()),
            Wake::ReadPanicked(msg) => return Ending::Panic(msg).into(),
            Wake::Read(None) => return Ending::Lost.into(),
            Wake::Read(Some(Err(e))) => {
                // Counted as soon as the codec has sent its close code, so the count is
                // visible to anyone who saw that close frame.
                match e.close_code() {
                    Some(CloseCode::TOO_BIG) => conn.counters.bump(Counter::ClosedTooBig),
                    Some(_) => conn.counters.bump(Counter::ClosedProtocolError),
                    None => {}
                }
                tracing::debug!(peer = %conn.peer, id = conn.id, "read error: {e}");
                return Ending::ReadError.into();
            }
            Wake::Read(Some(Ok(msg))) => match take_message(conn, msg) {
                // Awaited out here, with nothing else held across the await: this future is
                // what every connection keeps.
                Taken::Handle(msg) => contained(conn.driver.on_message(msg, &mut conn.out)).await,
                Taken::Done => Ok(()),
                Taken::End(end) => return end.into(),
            },
            Wake::Beat(Beat::Dead) => return Ending::Dead.into(),
            Wake::Beat(Beat::Ping) => match crash::call(|| conn.driver.ping(&mut conn.out)) {
                Ok(()) => Ok(()),
                Err(p) => Err(Ending::Panic(p.0)),
            },
            Wake::Event(event) => contained(conn.driver.on_event(event, &mut conn.out)).await,
            Wake::Timer => contained(conn.driver.on_timer(&mut conn.out)).await,
        };
        // What the step queued goes out even when it ends the connection (a last reply, an
        // error frame), before the close.
        let written = write_out(conn).await;
        if let Err(end) = step.and(written) {
            return end.into();
        }
    }
}

/// Writes what the driver queued, bounded (see [`flush_bounded`]). The frames are fed by a
/// plain function and only the flush is awaited, so this future (which every connection's
/// state is sized for) holds little more than the flush.
async fn write_out<T: Transport, D: Driver>(conn: &mut Running<T, D>) -> Result<(), Ending> {
    if conn.out.is_empty() {
        return Ok(());
    }
    let mut flushed_for_room = false;
    loop {
        let (fed, all) = feed_out(conn)?;
        if !all && fed == 0 && flushed_for_room {
            // Not even an empty write buffer takes the next frame.
            return Err(Ending::WriteFailed);
        }
        flush_bounded(conn).await?;
        if all {
            break;
        }
        // The write buffer was full mid-batch: it was pushed out, the rest goes now.
        flushed_for_room = true;
    }
    conn.out.shrink();
    Ok(())
}

/// Hands the queued frames to the transport until they are all taken or its write buffer is
/// full; returns how many were taken and whether that was all.
fn feed_out<T: Transport, D: Driver>(conn: &mut Running<T, D>) -> Result<(usize, bool), Ending> {
    let mut fed = 0;
    let mut marks = 0;
    let mut bytes = 0;
    let mut all = true;
    // Read at most once per batch, and only when the batch holds publications.
    let mut now = None;
    let frames = conn.out.pending();
    if frames.len() > 2 {
        conn.transport.reserve_for(
            frames
                .iter()
                .filter(|f| !matches!(f, OutFrame::Published(_)))
                .map(frame_len),
        );
    }
    for frame in conn.out.pending() {
        if let OutFrame::Published(at) = frame {
            let now = *now.get_or_insert_with(std::time::Instant::now);
            conn.traffic
                .delivery_latency
                .observe(now.saturating_duration_since(*at));
            marks += 1;
            continue;
        }
        match conn.transport.feed(frame) {
            Ok(()) => {
                fed += 1;
                bytes += frame_len(frame);
            }
            Err(WsError::WouldOverflow) => {
                all = false;
                break;
            }
            Err(_) => return Err(Ending::WriteFailed),
        }
    }
    conn.out.consume(fed + marks);
    if fed > 0 {
        conn.traffic.sent.add(fed as u64, bytes as u64);
    }
    Ok((fed, all))
}

/// A message's payload length, as counted in `/metrics`.
fn message_len(msg: &Message) -> usize {
    match msg {
        Message::Text(b) | Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 0,
    }
}

/// A queued frame's payload length, as counted in `/metrics`.
fn frame_len(frame: &OutFrame) -> usize {
    match frame {
        OutFrame::Message(m) => message_len(m),
        OutFrame::Prepared(p) => p.payload().len(),
        OutFrame::Published(_) => 0,
    }
}

/// How `/metrics` labels an ending.
fn close_kind(end: &Ending) -> CloseKind {
    match end {
        Ending::Shutdown
        | Ending::Hub(CloseReason::Shutdown)
        | Ending::Hub(CloseReason::Restart) => CloseKind::Shutdown,
        Ending::PeerClosed(_) => CloseKind::PeerClosed,
        Ending::Lost => CloseKind::Lost,
        Ending::ReadError => CloseKind::ReadError,
        Ending::Dead => CloseKind::Heartbeat,
        Ending::Stalled | Ending::Hub(CloseReason::SlowConsumer) => CloseKind::SlowConsumer,
        Ending::WriteFailed => CloseKind::WriteFailed,
        Ending::Hub(_) => CloseKind::Hub,
        Ending::Panic(_) => CloseKind::Panic,
        Ending::Close(..) => CloseKind::Protocol,
        Ending::Flood => CloseKind::Flood,
    }
}

/// What to do with a message read from the peer.
enum Taken {
    /// Hand it to the driver.
    Handle(Message),
    /// Nothing more (a control frame, or a message dropped by the flood guard).
    Done,
    /// The connection ends.
    End(Ending),
}

/// Counts a message from the peer and runs it past the flood guard; a plain function, so
/// its state is not part of the connection's future.
fn take_message<T: Transport, D: Driver>(conn: &mut Running<T, D>, msg: Message) -> Taken {
    match msg {
        Message::Close(frame) => Taken::End(Ending::PeerClosed(frame.map(|f| f.code.0))),
        Message::Ping(_) | Message::Pong(_) => Taken::Done,
        msg @ (Message::Text(_) | Message::Binary(_)) => {
            let len = message_len(&msg);
            conn.traffic.received.add(1, len as u64);
            match conn.flood.as_mut().map_or(Verdict::Pass, |f| f.check(len)) {
                Verdict::Pass => Taken::Handle(msg),
                Verdict::Drop { first } => {
                    conn.counters.bump(Counter::FloodDropped);
                    if first {
                        tracing::warn!(peer = %conn.peer, id = conn.id, protocol = conn.traffic.name, "client over its message rate: dropping its messages");
                    }
                    Taken::Done
                }
                Verdict::Close => {
                    conn.counters.bump(Counter::ClosedFlood);
                    Taken::End(Ending::Flood)
                }
            }
        }
    }
}

/// The reading side: the transport, unless the driver paused reading.
fn poll_reads<T: Transport, D: Driver, E>(
    conn: &mut Running<T, D>,
    read_paused: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Wake<E>> {
    if conn.driver.poll_read_ready(cx).is_pending() {
        *read_paused = true;
        return Poll::Pending;
    }
    if std::mem::take(read_paused) {
        return Poll::Ready(Wake::ReadReady);
    }
    let transport = &mut conn.transport;
    match std::panic::catch_unwind(AssertUnwindSafe(|| transport.poll_next(cx))) {
        Ok(Poll::Ready(item)) => Poll::Ready(Wake::Read(item)),
        Ok(Poll::Pending) => Poll::Pending,
        // Never polled again after this (the connection ends).
        Err(p) => Poll::Ready(Wake::ReadPanicked(crash::panic_message(p.as_ref()))),
    }
}

/// The writing side: the heartbeat, the driver's timer, then its events.
fn poll_writes<T: Transport, D: Driver>(
    conn: &mut Running<T, D>,
    cx: &mut Context<'_>,
) -> Poll<Wake<D::Event>> {
    if let Poll::Ready(beat) = conn.heartbeat.poll_next(cx) {
        return Poll::Ready(Wake::Beat(beat));
    }
    if let Some((_, sleep)) = &mut conn.timer {
        if sleep.as_mut().poll(cx).is_ready() {
            conn.timer = None;
            return Poll::Ready(Wake::Timer);
        }
    }
    let driver = &mut conn.driver;
    match std::panic::catch_unwind(AssertUnwindSafe(|| driver.poll_event(cx))) {
        Ok(p) => p.map(Wake::Event),
        Err(p) => Poll::Ready(Wake::ReadPanicked(crash::panic_message(p.as_ref()))),
    }
}

/// Flush, but give up when the peer accepts nothing for `stall`, when the hub closes the
/// outbox as a slow consumer, or on shutdown. The fast path (socket writable) costs no timer.
async fn flush_bounded<T: Transport, D: Driver>(conn: &mut Running<T, D>) -> Result<(), Ending> {
    let Running {
        transport,
        driver,
        heartbeat,
        ..
    } = conn;
    let mut flush = std::pin::pin!(transport.flush());
    if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(flush.as_mut().poll(cx))).await {
        return r.map_err(|_| Ending::WriteFailed);
    }
    // A peer that accepts no bytes for as long as it may stay silent is gone.
    let stall = heartbeat.timeout();
    Box::pin(flush_stalled(flush, driver, heartbeat.token(), stall)).await
}

/// The slow half of [`flush_bounded`]: the socket did not take everything at once.
async fn flush_stalled<D: Driver, W>(
    mut flush: Pin<&mut W>,
    driver: &mut D,
    token: &ShutdownToken,
    stall: Duration,
) -> Result<(), Ending>
where
    W: Future<Output = Result<(), WsError>>,
{
    let deadline = tokio::time::sleep(stall);
    tokio::pin!(deadline);
    let stop = token.triggered();
    tokio::pin!(stop);
    let mut check = tokio::time::interval(STALL_CHECK);
    loop {
        tokio::select! {
            r = &mut flush => return r.map_err(|_| Ending::WriteFailed),
            _ = &mut deadline => return Err(Ending::Stalled),
            _ = &mut stop => return Err(Ending::Shutdown),
            _ = check.tick() => {
                if let Some(reason @ (CloseReason::SlowConsumer | CloseReason::Shutdown)) = driver.hub_verdict() {
                    return Err(Ending::Hub(reason));
                }
            }
        }
    }
}

/// The ending: counted, the close frame the driver says the peer is owed, a bounded wait for
/// its reply, then the driver's last step (leaving the hub).
async fn finish<T: Transport, D: Driver>(conn: Running<T, D>, end: Ending) {
    let Running {
        mut transport,
        mut driver,
        shutdown_timeout,
        peer,
        id,
        counters,
        traffic,
        ..
    } = conn;
    let protocol = traffic.name;
    traffic.closed(close_kind(&end));
    match &end {
        Ending::Panic(msg) => {
            counters.bump(Counter::ClosedPanic);
            tracing::error!(%peer, id, protocol, "panic while serving a connection: {msg}");
        }
        Ending::Hub(CloseReason::SlowConsumer) => {
            counters.bump(Counter::ClosedSlowConsumer);
            tracing::info!(%peer, id, protocol, "closing slow consumer");
        }
        Ending::Stalled => {
            counters.bump(Counter::ClosedSlowConsumer);
            tracing::info!(%peer, id, protocol, "peer stopped reading; dropping connection");
        }
        Ending::Dead => {
            counters.bump(Counter::ClosedHeartbeat);
            tracing::debug!(%peer, id, protocol, "no answer to ping; dropping connection");
        }
        _ => {}
    }
    let close = match crash::call(|| driver.close_frame(&end)) {
        Ok(c) => c,
        Err(_) => Some((CloseCode::INTERNAL_ERROR, Cow::Borrowed("internal error"))),
    };
    match (&end, close) {
        // The WebSocket layer queued the close echo; make sure it is on the wire.
        (Ending::PeerClosed(_), _) => {
            let _ = tokio::time::timeout(CLOSE_LINGER, transport.flush()).await;
        }
        (Ending::ReadError, _) => {
            let _ = tokio::time::timeout(CLOSE_LINGER, transport.flush()).await;
            transport.drain(CLOSE_LINGER).await;
        }
        // Nothing can be written to a peer that takes no bytes or is gone.
        (Ending::Stalled | Ending::WriteFailed | Ending::Lost, _) | (_, None) => {}
        // A flooding client keeps sending until it reads our close frame: waiting for its
        // close reply would mean reading (and decoding) all of that. Nothing more is read;
        // after a short pause, time for the close frame to reach it, the socket is dropped.
        (Ending::Flood, Some((code, reason))) => {
            let _ = tokio::time::timeout(CLOSE_LINGER, transport.close(code, &reason)).await;
            tokio::time::sleep(FLOOD_GRACE).await;
        }
        (_, Some((code, reason))) => {
            let _ = tokio::time::timeout(CLOSE_LINGER, transport.close(code, &reason)).await;
            let wait = if end == Ending::Shutdown {
                shutdown_timeout
            } else {
                CLOSE_LINGER
            };
            transport.linger(wait).await;
        }
    }
    // The driver's last step (leaving the hub, keeping state for recovery), bounded.
    let _ = tokio::time::timeout(CLOSE_LINGER, crash::CatchPanic::new(driver.finish(&end))).await;
    tracing::debug!(%peer, id, protocol, ending = ?end, "disconnected");
}

/// What a connection costs in memory (tests): its task's future while it runs in a task, and
/// what it keeps while parked (its state, boxed).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionSizes {
    /// The connection's future, in its task's allocation.
    pub(crate) task: usize,
    /// The parked state's allocation.
    pub(crate) parked: usize,
}

#[cfg(test)]
/// The sizes of a WebSocket connection driven by `driver`, over a real loopback socket: the
/// protocols' idle-memory tests.
pub(crate) async fn ws_connection_sizes<D: Driver>(driver: D) -> ConnectionSizes {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (io, _) = listener.accept().await.unwrap();
    let ws = switchboard_websocket::stream::WebSocket::new(
        io,
        switchboard_websocket::Role::Server,
        Default::default(),
        Default::default(),
    );
    connection_sizes(WsTransport::new(ws), driver)
}

#[cfg(test)]
/// The sizes of a connection's future and parked state, for memory tests.
pub(crate) fn connection_sizes<T: Transport, D: Driver>(
    transport: T,
    driver: D,
) -> ConnectionSizes {
    let start = Box::new(Start {
        transport,
        driver,
        limits: Limits {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            shutdown_timeout: Duration::from_secs(1),
            flood: FloodLimits::default(),
            park_idle: true,
        },
        who: Identity {
            peer: ([127, 0, 0, 1], 0).into(),
            id: 0,
            protocol: "test",
        },
        counters: Arc::default(),
        token: super::shutdown::Shutdown::new().token(),
        slot: None,
    });
    let fut = run(Entry::Open(start));
    let sizes = ConnectionSizes {
        task: std::mem::size_of_val(&fut),
        parked: std::mem::size_of::<Running<T, D>>(),
    };
    eprintln!(
        "sizes: {sizes:?}, transport {} B, driver {} B",
        std::mem::size_of::<T>(),
        std::mem::size_of::<D>(),
    );
    sizes
}
