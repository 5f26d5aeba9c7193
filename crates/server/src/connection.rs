//! One WebSocket connection in a raw room, driven by one task.
//!
//! The task sends the welcome message first, then loops over four sources polled by hand
//! (no `select!`, so an idle connection's state stays small):
//!
//! * **shutdown** → close 1001;
//! * **the socket**: decoded messages stamp liveness for the heartbeat, run the embedder's
//!   hook (panics caught) and are published to the room through the hub; protocol replies
//!   (pong, close echo) are queued by the WebSocket layer;
//! * **the heartbeat** timer: pings, and the verdict on a peer that stopped answering;
//! * **the outbox**: a batch of deliveries, each queued as its shared frame (framed and
//!   compressed once per publication for all subscribers, see
//!   [`switchboard_protocols::raw::encode`] and `WsWriter::feed_prepared`) and flushed in one
//!   vectored write. No lock is held while writing and no payload is copied per subscriber.
//!
//! A message published by this connection to its own room (the echo) is therefore written
//! by the same task that read it, without waking another. After 32 turns in a row (messages
//! read, batches written) the task yields, so a client that sends without pause cannot keep
//! its worker thread from the other connections scheduled on it. While a flush waits for a full
//! socket, reading pauses (bounded by the stall limit below).
//!
//! Endings and what the peer sees: shutdown → 1001 "going away"; outbox closed as a slow
//! consumer → 1008 "slow consumer" (or the socket is dropped when it does not drain at all);
//! room full → 1008 "room full"; message too big → 1009 (sent by the codec); a panic while
//! handling a message → 1011 "internal error"; no answer to pings → the socket is dropped.
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use switchboard_core::{
    CloseReason, ConnHandle, ConnId, Delivery, Node, Outbox, Payload, PublishOptions,
};
use switchboard_protocols::raw;
use switchboard_websocket::codec::Config as CodecConfig;
use switchboard_websocket::stream::{WriteConfig, WsReader, WsWriter};
use switchboard_websocket::{
    CloseCode, CloseFrame, DeflateParams, Error as WsError, Message, Role,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::crash;
use crate::heartbeat::{Beat, Heartbeat};
use crate::server::Shared;
use crate::shutdown::ShutdownToken;
use crate::stats::{ConnectionSlot, Counter, ServerCounters};

/// Messages a connection may have waiting for its publisher task (shared broker only).
const PUBLISH_QUEUE: usize = 256;
/// Most messages of one connection published per broker round trip.
const PUBLISH_BATCH: usize = 64;
/// Most deliveries written per flush.
const BATCH: usize = 64;
/// How long to wait for the peer's close reply after sending ours (outside shutdown).
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How often a stalled flush checks whether the hub gave up on the connection.
const STALL_CHECK: Duration = Duration::from_millis(200);
/// Most turns of the connection loop (messages read, batches written) in one go: then the
/// task yields to the scheduler even if its socket has more. The socket's own cooperative
/// budget counts reads from the kernel, not messages, and one read of small frames holds
/// hundreds of them, so a client sending without pause would otherwise hold its worker
/// thread (and every connection queued behind it) for tens of milliseconds at a time.
const TURNS_PER_YIELD: u32 = 32;

/// What the upgrade decided about this connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnParams {
    /// The raw room.
    pub room: Arc<str>,
    /// Whether joining the room succeeded (it was full otherwise).
    pub joined: bool,
    /// Whether the sender receives its own messages.
    pub echo: bool,
    /// Agreed permessage-deflate parameters.
    pub deflate: Option<DeflateParams>,
    /// Remote address, for logs.
    pub peer: SocketAddr,
}

/// Run the connection on its own task. A panic in the writer is caught and logged; the
/// socket is then dropped (the writer that could send 1011 is the thing that failed).
pub(crate) fn spawn<S>(
    io: S,
    handle: ConnHandle,
    outbox: Outbox,
    params: ConnParams,
    shared: Arc<Shared>,
    token: ShutdownToken,
    slot: ConnectionSlot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let task = ConnTask {
        peer: params.peer,
        id: handle.id(),
        counters: Arc::clone(&shared.counters),
        slot: Some(slot),
        conn: run(Box::new(Start {
            io,
            handle,
            outbox,
            params,
            shared,
            token,
        })),
    };
    tokio::spawn(task);
}

pin_project_lite::pin_project! {
    /// A connection's task: its future, polled with panics caught, then the bookkeeping.
    ///
    /// A plain struct rather than an `async` block around the future on purpose: an `async`
    /// block that awaits (or pins) a future it captured keeps the captured copy as well as
    /// the one it polls, which doubled every idle connection's largest allocation.
    struct ConnTask<F> {
        #[pin]
        conn: F,
        peer: SocketAddr,
        id: ConnId,
        counters: Arc<ServerCounters>,
        // Released when the connection ends, whichever way.
        slot: Option<ConnectionSlot>,
    }
}

impl<F: std::future::Future<Output = ()>> std::future::Future for ConnTask<F> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.project();
        let conn = this.conn;
        // Never polled again after a panic (we return Ready), so no broken invariant it left
        // behind can be observed.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(())) => {}
            Err(p) => {
                this.counters.bump(Counter::ClosedPanic);
                let (peer, id) = (*this.peer, *this.id);
                let p = crash::panic_message(p.as_ref());
                tracing::error!(%peer, id, "panic in connection task: {p}");
            }
        }
        this.slot.take();
        Poll::Ready(())
    }
}

/// How reading ended.
enum ReadEnd {
    /// The peer sent a close frame.
    Closed(Option<CloseFrame>),
    /// The socket ended without a close frame.
    Eof,
    /// The peer broke the protocol or a limit; the codec already sent the close code.
    Error(WsError),
    /// The message hook panicked.
    HookPanic(String),
    /// Reading itself panicked (a bug): the reader is not touched again.
    Panicked(String),
}

/// Why the connection loop stopped.
enum End {
    Shutdown,
    Read(ReadEnd),
    Hub(CloseReason),
    Dead,
    Stalled,
    WriteError(WsError),
}

/// What [`spawn`] hands to the connection future. Boxed: an `async fn` keeps its arguments
/// for its whole life, and these are only needed while opening.
struct Start<S> {
    io: S,
    handle: ConnHandle,
    outbox: Outbox,
    params: ConnParams,
    shared: Arc<Shared>,
    token: ShutdownToken,
}

/// A connection past its opening steps: what the loop and the ending need.
struct Running<S> {
    reader: WsReader<S>,
    writer: WsWriter<S>,
    outbox: Outbox,
    heartbeat: Heartbeat,
    handle: ConnHandle,
    shared: Arc<Shared>,
    token: ShutdownToken,
    peer: SocketAddr,
    room: Arc<str>,
    /// With a shared broker: the connection's publisher task (see [`publish_in_order`]).
    publisher: Option<mpsc::Sender<Payload>>,
    /// Who receives this connection's messages (the sender too, unless `?echo=false`).
    opts: PublishOptions,
}

/// The connection's life. Only the loop's state stays in the task while the connection is
/// open; the opening steps and the ending run boxed, so an idle connection does not carry
/// their (larger) state.
async fn run<S>(start: Box<Start<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(mut conn) = Box::pin(open(start)).await else {
        return;
    };
    let end = drive(&mut conn).await;
    Box::pin(finish(conn, end)).await;
}

/// Opening steps: the WebSocket, "room full", the welcome message, the publisher task. `None`
/// when the connection already ended.
async fn open<S>(start: Box<Start<S>>) -> Option<Running<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Start {
        io,
        handle,
        outbox,
        params,
        shared,
        token,
    } = *start;
    let config = &shared.config;
    let codec = CodecConfig {
        max_message_size: config.max_message_size,
        max_frame_size: config.max_message_size,
        deflate: params.deflate,
        ..CodecConfig::default()
    };
    let write_config = WriteConfig {
        // Our close frame waits this long for the peer's reply before the socket is shut.
        close_timeout: config.shutdown_timeout,
        ..WriteConfig::default()
    };
    let ws = switchboard_websocket::stream::WebSocket::new(io, Role::Server, codec, write_config);
    let (mut reader, mut writer) = ws.split();
    let (peer, id, room) = (params.peer, handle.id(), Arc::clone(&params.room));
    tracing::debug!(%peer, id, %room, deflate = params.deflate.is_some(), "connected");

    if !params.joined {
        // Cold paths are boxed so their futures do not enlarge every connection's state.
        Box::pin(async {
            close_with(&mut writer, CloseCode::POLICY, "room full").await;
            linger(&mut reader, CLOSE_LINGER).await;
        })
        .await;
        return None;
    }

    // The welcome goes out before anything from the outbox: nothing was written yet, and
    // the writer loop only starts after this flush.
    if let Some(welcome) = &shared.welcome {
        let sent = match writer.feed(welcome.clone()) {
            Ok(()) => writer.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::debug!(%peer, id, "disconnected before the welcome: {e}");
            return None;
        }
    }

    let opts = if params.echo {
        PublishOptions::from_conn(id)
    } else {
        PublishOptions::except_sender(id)
    };
    let publisher = shared.node.is_shared().then(|| {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(publish_in_order(
            shared.node.clone(),
            Arc::clone(&room),
            opts,
            rx,
        ));
        tx
    });
    // The WebSocket layer stamps every received frame; the heartbeat reads that stamp.
    let tracker = Arc::new(reader.tracker());
    let heartbeat = Heartbeat::new(config.ping_interval, config.ping_timeout, tracker);
    Some(Running {
        reader,
        writer,
        outbox,
        heartbeat,
        handle,
        shared,
        token,
        peer,
        room,
        publisher,
        opts,
    })
}

/// The ending: the close frame the peer is owed for `end`, a bounded wait for its reply,
/// then leaving the hub.
async fn finish<S>(conn: Running<S>, end: End)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Running {
        mut reader,
        mut writer,
        outbox,
        handle,
        shared,
        peer,
        room,
        ..
    } = conn;
    let config = &shared.config;
    let id = handle.id();
    let c = &shared.counters;
    let reason: &str = match end {
        End::Shutdown => {
            close_with(&mut writer, CloseCode::GOING_AWAY, "going away").await;
            linger(&mut reader, config.shutdown_timeout).await;
            "server shutdown"
        }
        End::Read(ReadEnd::Closed(frame)) => {
            // The WebSocket layer queued the close echo; make sure it is on the wire.
            let _ = writer.flush().await;
            tracing::debug!(%peer, id, code = frame.as_ref().map(|f| f.code.0), "peer closed");
            "closed by peer"
        }
        End::Read(ReadEnd::Eof) => "connection lost",
        End::Read(ReadEnd::Error(e)) => {
            let _ = writer.flush().await;
            tracing::debug!(%peer, id, "read error: {e}");
            reader.drain(CLOSE_LINGER).await;
            "read error"
        }
        End::Read(ReadEnd::HookPanic(msg)) => {
            c.bump(Counter::ClosedPanic);
            tracing::error!(%peer, id, %room, "panic while handling a message: {msg}");
            close_with(&mut writer, CloseCode::INTERNAL_ERROR, "internal error").await;
            linger(&mut reader, CLOSE_LINGER).await;
            "internal error"
        }
        End::Read(ReadEnd::Panicked(msg)) => {
            c.bump(Counter::ClosedPanic);
            tracing::error!(%peer, id, %room, "panic in connection reader: {msg}");
            close_with(&mut writer, CloseCode::INTERNAL_ERROR, "internal error").await;
            "internal error"
        }
        End::Hub(CloseReason::SlowConsumer) => {
            c.bump(Counter::ClosedSlowConsumer);
            tracing::info!(%peer, id, %room, "closing slow consumer");
            close_with(&mut writer, CloseCode::POLICY, "slow consumer").await;
            linger(&mut reader, CLOSE_LINGER).await;
            "slow consumer"
        }
        End::Hub(reason) => {
            let code = CloseCode(reason.close_code());
            close_with(&mut writer, code, reason.close_text()).await;
            linger(&mut reader, CLOSE_LINGER).await;
            "closed by the application"
        }
        End::Dead => {
            c.bump(Counter::ClosedHeartbeat);
            tracing::debug!(%peer, id, "no answer to ping; dropping connection");
            "ping timeout"
        }
        End::Stalled => {
            c.bump(Counter::ClosedSlowConsumer);
            tracing::info!(%peer, id, %room, "peer stopped reading; dropping connection");
            "write stalled"
        }
        End::WriteError(e) => {
            tracing::debug!(%peer, id, "write failed: {e}");
            "write error"
        }
    };
    // Leaving the room and the hub happens when the handle drops, before the socket closes.
    drop(handle);
    drop(outbox);
    tracing::debug!(%peer, id, %room, reason, "disconnected");
}

/// What woke the connection loop.
enum Wake {
    Shutdown,
    Read(Option<Result<Message, WsError>>),
    ReadPanicked(String),
    /// The publisher task's queue had room again for the message that waited.
    Published,
    Beat(Beat),
    Deliveries,
    Closed(CloseReason),
}

/// The loop of an open connection. Its sources are polled by hand in one `poll_fn` rather
/// than with `select!`: this future is what every idle connection keeps, and polling by hand
/// keeps it to the shutdown future, the delivery batch and a few references.
async fn drive<S>(conn: &mut Running<S>) -> End
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A peer that accepts no bytes at all for this long is treated like one that stopped
    // answering pings.
    let stall = conn.shared.config.ping_timeout;
    // Grows with the first batch; an idle connection that never received holds none.
    let mut batch: Vec<Delivery> = Vec::new();
    // With a shared broker, a message waiting for room in the publisher task's queue; reading
    // pauses meanwhile (back-pressure on a client that publishes faster than the broker takes).
    let mut waiting: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    let stop = conn.token.triggered();
    tokio::pin!(stop);
    // After a message was read, the next pass looks at the heartbeat and the outbox before
    // the socket again, so a client that sends without pause still receives.
    let mut writes_first = false;
    // Turns since the task last gave its worker thread back (see [`TURNS_PER_YIELD`]).
    let mut turns: u32 = 0;
    loop {
        if turns >= TURNS_PER_YIELD {
            turns = 0;
            tokio::task::yield_now().await;
        }
        let wake = std::future::poll_fn(|cx| {
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Shutdown);
            }
            let (reader, heartbeat, outbox) =
                (&mut conn.reader, &mut conn.heartbeat, &mut conn.outbox);
            let polled = if writes_first {
                match poll_writes(heartbeat, outbox, &mut batch, cx) {
                    Poll::Ready(w) => Poll::Ready(w),
                    Poll::Pending => poll_reads(reader, &mut waiting, cx),
                }
            } else {
                match poll_reads(reader, &mut waiting, cx) {
                    Poll::Ready(w) => Poll::Ready(w),
                    Poll::Pending => poll_writes(heartbeat, outbox, &mut batch, cx),
                }
            };
            if polled.is_pending() {
                // The task is about to give its thread back anyway.
                turns = 0;
            }
            polled
        })
        .await;
        turns += 1;
        writes_first = matches!(wake, Wake::Read(_));
        let writer = &mut conn.writer;
        match wake {
            Wake::Shutdown => return End::Shutdown,
            Wake::Published => {}
            Wake::ReadPanicked(msg) => return End::Read(ReadEnd::Panicked(msg)),
            Wake::Read(None) => return End::Read(ReadEnd::Eof),
            Wake::Read(Some(Err(e))) => {
                // Counted here, as soon as the codec has sent its close code, so the count is
                // visible to anyone who saw that close frame.
                let counters = &conn.shared.counters;
                match e.close_code() {
                    Some(CloseCode::TOO_BIG) => counters.bump(Counter::ClosedTooBig),
                    Some(_) => counters.bump(Counter::ClosedProtocolError),
                    None => {}
                }
                return End::Read(ReadEnd::Error(e));
            }
            Wake::Read(Some(Ok(msg))) => match &msg {
                Message::Close(frame) => return End::Read(ReadEnd::Closed(frame.clone())),
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Text(_) | Message::Binary(_) => {
                    if let Some(hook) = &conn.shared.on_message {
                        if let Err(p) = crash::call(|| hook(&conn.room, &msg)) {
                            return End::Read(ReadEnd::HookPanic(p.0));
                        }
                    }
                    // The outbox is polled right after this (`writes_first`): a delivery of
                    // this very message to ourselves need not wake this running task.
                    conn.outbox.forget_waker();
                    if let Some(full) = raw::decode(&msg).and_then(|p| publish(conn, p)) {
                        waiting = conn.publisher.clone().map(|tx| publish_when_room(tx, full));
                    }
                }
            },
            Wake::Closed(reason) => return End::Hub(reason),
            Wake::Beat(Beat::Dead) => return End::Dead,
            Wake::Beat(Beat::Ping) => {
                if let Err(e) = writer.feed(Message::Ping(Bytes::new())) {
                    return End::WriteError(e);
                }
                if let Err(end) = flush_bounded(writer, &conn.outbox, &mut stop, stall).await {
                    return end;
                }
            }
            Wake::Deliveries => {
                for delivery in batch.drain(..) {
                    match feed_delivery(writer, &delivery) {
                        Ok(()) => {}
                        Err(WsError::WouldOverflow) => {
                            // The write buffer is full mid-batch: push it out, then retry once.
                            if let Err(end) =
                                flush_bounded(writer, &conn.outbox, &mut stop, stall).await
                            {
                                return end;
                            }
                            if let Err(e) = feed_delivery(writer, &delivery) {
                                return End::WriteError(e);
                            }
                        }
                        Err(e) => return End::WriteError(e),
                    }
                }
                if batch.capacity() > 8 {
                    // Do not keep a burst's batch capacity on a connection that goes idle.
                    batch = Vec::new();
                }
                if let Err(end) = flush_bounded(writer, &conn.outbox, &mut stop, stall).await {
                    return end;
                }
            }
        }
    }
}

/// Queue one delivery's frame (the publication's shared frame, or a direct message).
fn feed_delivery<S>(writer: &mut WsWriter<S>, delivery: &Delivery) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match delivery {
        Delivery::Publication(p) => writer.feed_prepared(raw::encode(p)),
        Delivery::Direct(payload) => writer.feed(raw::to_message(payload)),
        // Raw rooms have no join/leave events.
        _ => Ok(()),
    }
}

/// The reading side of the loop: the socket, or the wait for the publisher task's queue
/// while a message waits for room in it (reading pauses meanwhile).
fn poll_reads<S>(
    reader: &mut WsReader<S>,
    waiting: &mut Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Wake>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Some(w) = waiting {
        std::task::ready!(w.as_mut().poll(cx));
        *waiting = None;
        return Poll::Ready(Wake::Published);
    }
    match std::panic::catch_unwind(AssertUnwindSafe(|| reader.poll_next(cx))) {
        Ok(Poll::Ready(item)) => Poll::Ready(Wake::Read(item)),
        Ok(Poll::Pending) => Poll::Pending,
        // Never polled again after this (the connection ends), so no broken invariant can
        // be observed.
        Err(p) => Poll::Ready(Wake::ReadPanicked(crash::panic_message(p.as_ref()))),
    }
}

/// The writing side of the loop: the heartbeat timer, then the outbox.
fn poll_writes(
    heartbeat: &mut Heartbeat,
    outbox: &mut Outbox,
    batch: &mut Vec<Delivery>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Wake> {
    if let Poll::Ready(beat) = heartbeat.poll_next(cx) {
        return Poll::Ready(Wake::Beat(beat));
    }
    outbox
        .poll_recv_batch(cx, batch, BATCH)
        .map(|received| match received {
            Ok(_) => Wake::Deliveries,
            Err(closed) => Wake::Closed(closed.reason),
        })
}

/// Flush, but give up when the peer accepts nothing for `stall`, when the hub closes the
/// outbox as a slow consumer, or on shutdown. The fast path (socket writable) costs no timer.
async fn flush_bounded<S, F>(
    writer: &mut WsWriter<S>,
    outbox: &Outbox,
    stop: &mut std::pin::Pin<&mut F>,
    stall: Duration,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: std::future::Future<Output = ()>,
{
    let mut flush = std::pin::pin!(writer.flush());
    if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(flush.as_mut().poll(cx))).await {
        return r.map_err(End::WriteError);
    }
    Box::pin(flush_stalled(flush, outbox, stop, stall)).await
}

/// The slow half of [`flush_bounded`]: the socket did not take everything at once.
async fn flush_stalled<F, W>(
    mut flush: std::pin::Pin<&mut W>,
    outbox: &Outbox,
    stop: &mut std::pin::Pin<&mut F>,
    stall: Duration,
) -> Result<(), End>
where
    F: std::future::Future<Output = ()>,
    W: std::future::Future<Output = Result<(), WsError>>,
{
    let deadline = tokio::time::sleep(stall);
    tokio::pin!(deadline);
    let mut check = tokio::time::interval(STALL_CHECK);
    loop {
        tokio::select! {
            r = &mut flush => return r.map_err(End::WriteError),
            _ = &mut deadline => return Err(End::Stalled),
            _ = stop.as_mut() => return Err(End::Shutdown),
            _ = check.tick() => {
                if let Some(reason @ (CloseReason::SlowConsumer | CloseReason::Shutdown)) = outbox.close_reason() {
                    return Err(End::Hub(reason));
                }
            }
        }
    }
}

/// Publishes one message of the room without waiting. One node: the hub's synchronous path.
/// With a shared broker: handed to the connection's publisher task; when that task is
/// [`PUBLISH_QUEUE`] messages behind, the payload is given back for [`publish_when_room`].
fn publish<S>(conn: &Running<S>, payload: Payload) -> Option<Payload> {
    match &conn.publisher {
        Some(tx) => match tx.try_send(payload) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(payload)) => Some(payload),
            // The publisher task is gone only when the connection is ending.
            Err(mpsc::error::TrySendError::Closed(_)) => None,
        },
        None => {
            conn.shared
                .node
                .publish_now(&conn.room, payload, conn.opts, None);
            None
        }
    }
}

/// The slow half of [`publish`]: wait for room in the publisher task's queue. Boxed by the
/// caller, and only then, so the wait does not widen every connection's state.
fn publish_when_room(
    tx: mpsc::Sender<Payload>,
    payload: Payload,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        // Fails only once the publisher task is gone, i.e. the connection is ending.
        let _ = tx.send(payload).await;
    })
}

/// A connection's publisher with a shared broker: publishes its messages in order, as many
/// as are waiting (up to [`PUBLISH_BATCH`]) per broker round trip, so one client is not
/// limited to one message per round trip. While the broker is unreachable the messages
/// still reach this node's members (local fan-out) and a warning is logged; if the link
/// broke in the middle of a batch, some of them may also have reached the other nodes.
async fn publish_in_order(
    node: Node,
    room: Arc<str>,
    opts: PublishOptions,
    mut rx: mpsc::Receiver<Payload>,
) {
    let mut batch: Vec<Payload> = Vec::with_capacity(PUBLISH_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < PUBLISH_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        match node.publish_batch(&room, batch.clone(), opts).await {
            Ok(_) => {}
            Err(e) if e.is_temporary() => {
                tracing::warn!(%room, messages = batch.len(), "broker unavailable, delivered on this node only: {e}");
                for p in batch.drain(..) {
                    node.hub().publish(&room, p, opts);
                }
            }
            Err(e) => tracing::debug!(%room, "messages not published: {e}"),
        }
        batch.clear();
    }
}

/// Send a close frame, bounded in time (the peer may not be reading at all).
async fn close_with<S>(writer: &mut WsWriter<S>, code: CloseCode, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = tokio::time::timeout(CLOSE_LINGER, writer.close(code, reason)).await;
}

/// Read (and discard) until the peer's close reply or the end of the stream, so the socket
/// is not reset while our close frame is still unread on the other side.
async fn linger<S>(reader: &mut WsReader<S>, limit: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = tokio::time::timeout(limit, async {
        while let Some(Ok(msg)) = reader.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
