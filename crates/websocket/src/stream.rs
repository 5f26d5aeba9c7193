//! The tokio connection: [`WebSocket`] over any `AsyncRead + AsyncWrite`, driven by one task
//! with its state inline, or split into a [`WsReader`] and a [`WsWriter`] that can live in
//! different tasks (the state then moves to one allocation both halves point to).
//!
//! Protocol duties handled here (the framing rules themselves live in [`crate::codec`]):
//!
//! * **Pings** (RFC 6455 §5.5.2, §5.5.3): every ping is answered with a pong carrying the same
//!   payload. If several pings arrive before a pong could be written, only the most recent one
//!   is answered, which §5.5.3 allows; this bounds what a peer that pings without reading can
//!   make us buffer. Received pongs update a [`PingTracker`] so a server can reap dead peers.
//! * **Closing** (§5.5.1, §7.1.2–§7.1.4): when the peer closes first we reply with a close frame
//!   echoing its status code, flush, and shut the write side of the transport. When we close
//!   first, no data frame may follow our close frame; the reader keeps reading until the
//!   peer's close arrives or [`WriteConfig::close_timeout`] passes, then shuts the write side.
//! * **Failing the connection** (§7.1.7): on a decoding error we send a close frame with the
//!   error's code ([`Error::close_code`]) and stop.
//!
//! Writing is batched: `feed*` only queues frames, [`WsWriter::flush`] writes everything
//! pending with vectored writes. Small frames that follow another in the queue are copied into
//! one contiguous buffer (one `iovec` for many messages; a frame alone is written from where it
//! is); payloads of at least [`WriteConfig::coalesce_threshold`] bytes —
//! including pre-encoded broadcast frames from [`PreparedMessage`] — are queued as the
//! caller's `Bytes`, by reference. The queue is bounded: past
//! [`WriteConfig::max_buffered_bytes`] `feed` returns [`Error::WouldOverflow`] instead of
//! growing.
//!
//! The reading and writing sides share one small mutex around the transport and the outgoing
//! queue (uncontended when one task drives both). It is only ever held for the duration of a
//! non-blocking `poll_*` call or an encode, never across an `.await`, so a writer stuck on a
//! slow peer cannot stop the reader from queueing pongs.
//! Write readiness is signalled to both halves, because either may be the one flushing: when
//! they run in one task (the same waker) the transport gets that waker as it is, and only
//! halves in different tasks that both wait get a fan-out waker.
//!
//! An idle connection holds no read buffer at all: while nothing is buffered, a read lands in
//! a buffer on the stack and only the bytes that arrived are copied into a heap buffer of
//! exactly that size (the decoded message then shares that allocation). Only a partial frame
//! keeps a heap buffer between reads; it grows as far as the frame being read needs and is
//! given back once the frame is complete.
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::close::{CloseCode, CloseFrame, MAX_REASON_LEN};
use crate::codec::{Config, Decoder, Encoder, Role};
use crate::error::Error;
use crate::frame::MAX_HEADER_LEN;
use crate::message::Message;
use crate::prepared::PreparedMessage;

/// Smallest step by which a read buffer holding a partial frame grows.
const READ_BUF_MIN: usize = 4 * 1024;
/// Size of the on-stack buffer a read lands in when nothing is buffered. Large enough for a
/// typical message (and a 16 KiB one with its header) to arrive in one read.
const STACK_READ: usize = 32 * 1024;
/// A read buffer larger than this is replaced by a small one once it is empty again.
const READ_BUF_KEEP: usize = 64 * 1024;
/// Chunks handed to one vectored write (Linux IOV_MAX is 1024; 64 covers any realistic batch).
const MAX_IOVECS: usize = 64;

/// Options of the outgoing side of a connection.
#[derive(Debug, Clone)]
pub struct WriteConfig {
    /// Bytes that may wait in the outgoing queue. A `feed` that would go past it fails with
    /// [`Error::WouldOverflow`], except when the queue is empty (so a single message larger
    /// than the limit can still be sent). Judged by the uncompressed payload size.
    pub max_buffered_bytes: usize,
    /// Payloads (and pre-encoded frames) at least this long are queued by reference instead of
    /// being copied into the coalescing buffer.
    pub coalesce_threshold: usize,
    /// How long to wait for the peer's close frame after sending ours (and for our close
    /// reply to drain) before giving up on a clean close.
    pub close_timeout: Duration,
}

impl Default for WriteConfig {
    fn default() -> Self {
        WriteConfig {
            max_buffered_bytes: 4 << 20,
            coalesce_threshold: 2048,
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Liveness information shared by both halves: when pongs and other frames arrived, and
/// whether a ping we sent is still unanswered. Cheap to clone; readable from any thread.
#[derive(Debug, Clone)]
pub struct PingTracker(Arc<TrackerInner>);

#[derive(Debug)]
struct TrackerInner {
    /// Nanoseconds since [`tracker_base`] + 1 (0 = never).
    last_pong: AtomicU64,
    last_ping_sent: AtomicU64,
    last_received: AtomicU64,
    awaiting_pong: AtomicBool,
}

/// The instant every tracker counts from: one per process rather than one per connection
/// (every idle connection's tracker would keep 16 bytes for it).
fn tracker_base() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

impl PingTracker {
    fn new() -> Self {
        // Fixed before any stamp can be taken.
        tracker_base();
        PingTracker(Arc::new(TrackerInner {
            last_pong: AtomicU64::new(0),
            last_ping_sent: AtomicU64::new(0),
            last_received: AtomicU64::new(0),
            awaiting_pong: AtomicBool::new(false),
        }))
    }

    fn stamp(&self, slot: &AtomicU64) {
        let ns = tracker_base().elapsed().as_nanos() as u64 + 1;
        slot.store(ns, Ordering::Relaxed);
    }

    fn load(&self, slot: &AtomicU64) -> Option<Instant> {
        match slot.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(tracker_base() + Duration::from_nanos(ns - 1)),
        }
    }

    fn ping_sent(&self) {
        self.stamp(&self.0.last_ping_sent);
        self.0.awaiting_pong.store(true, Ordering::Relaxed);
    }

    fn pong_received(&self) {
        self.stamp(&self.0.last_pong);
        self.0.awaiting_pong.store(false, Ordering::Relaxed);
    }

    /// When the last pong arrived.
    pub fn last_pong(&self) -> Option<Instant> {
        self.load(&self.0.last_pong)
    }

    /// When we last sent a ping.
    pub fn last_ping_sent(&self) -> Option<Instant> {
        self.load(&self.0.last_ping_sent)
    }

    /// When any frame last arrived from the peer (proof of life even without pongs).
    pub fn last_received(&self) -> Option<Instant> {
        self.load(&self.0.last_received)
    }

    /// Whether a ping we sent has not been answered by a pong yet.
    pub fn awaiting_pong(&self) -> bool {
        self.0.awaiting_pong.load(Ordering::Relaxed)
    }
}

/// The halves waiting for the transport to become writable, kept in the shared state.
///
/// Only split halves keep these (an unsplit WebSocket hands the transport its task's waker
/// directly). When both halves run in one task they have the same waker and the transport
/// gets it as it is; only while halves with different wakers both wait is a fan-out waker
/// made, so that either may be the one flushing.
#[derive(Default)]
struct WriteWakers([Option<Waker>; 2]);

const READER: usize = 0;
const WRITER: usize = 1;

impl WriteWakers {
    /// Remember `waker` for `who`. Returns the waker to hand the transport when it is not
    /// `waker` itself: a fan-out to both halves.
    fn register(&mut self, who: usize, waker: &Waker) -> Option<Waker> {
        match &mut self.0[who] {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        match &self.0[1 - who] {
            Some(other) if !other.will_wake(waker) => {
                Some(Waker::from(Arc::new(FanOut(self.0.clone()))))
            }
            _ => None,
        }
    }

    /// `who` is no longer waiting.
    fn done(&mut self, who: usize) {
        self.0[who] = None;
    }
}

/// Wakes both halves.
struct FanOut([Option<Waker>; 2]);

impl Wake for FanOut {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.iter().flatten().for_each(Waker::wake_by_ref);
    }
}

/// The outgoing queue: sealed chunks followed by the open coalescing buffer.
struct WriteQueue {
    /// The role control frames (pongs, close replies) are encoded for: a control frame needs
    /// no encoder state (never compressed), so an encoder is made on the stack for each one
    /// rather than kept per connection. Data frames are encoded by the writer outside the
    /// lock, so a large compression never stalls the reader.
    role: Role,
    config: WriteConfig,
    /// Chunks ready to be written, in order.
    chunks: VecDeque<Bytes>,
    /// Small frames accumulate here; sealed into `chunks` before a by-reference chunk.
    buf: BytesMut,
    /// Bytes in `chunks` + `buf`.
    queued: usize,
    /// Total bytes ever appended / written (to know whether a queued pong went out).
    appended: u64,
    written: u64,
    pong_end: u64,
    /// Payload of the latest ping not answered yet. Boxed: peers rarely ping, and every
    /// connection would otherwise keep room for a `Bytes` here.
    pending_pong: Option<Box<Bytes>>,
}

impl WriteQueue {
    fn append_buf(
        &mut self,
        f: impl FnOnce(&mut Encoder, &mut BytesMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let before = self.buf.len();
        let mut control = Encoder::new(self.role, Config::default());
        f(&mut control, &mut self.buf)?;
        let n = self.buf.len() - before;
        self.queued += n;
        self.appended += n as u64;
        Ok(())
    }

    fn append_chunk(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.seal();
        self.queued += chunk.len();
        self.appended += chunk.len() as u64;
        self.chunks.push_back(chunk);
    }

    fn seal(&mut self) {
        if !self.buf.is_empty() {
            self.chunks.push_back(self.buf.split().freeze());
        }
    }

    fn check_room(&self, estimate: usize) -> Result<(), Error> {
        if self.queued > 0 && self.queued + estimate > self.config.max_buffered_bytes {
            return Err(Error::WouldOverflow);
        }
        Ok(())
    }

    /// Queue complete frame bytes: by reference when large, copied into the coalescing
    /// buffer when small.
    fn push_frame(&mut self, frame: Bytes) {
        // Alone in the queue, a frame is queued by reference whatever its size: copying it
        // would cost an allocation for nothing to coalesce with. Frames that follow it in the
        // same batch are coalesced as usual.
        if frame.len() >= self.config.coalesce_threshold || self.queued == 0 {
            self.append_chunk(frame);
        } else {
            self.buf.extend_from_slice(&frame);
            self.queued += frame.len();
            self.appended += frame.len() as u64;
        }
    }

    /// Move the pending pong into the queue unless an earlier pong is still unwritten.
    fn schedule_pong(&mut self) {
        if self.written < self.pong_end {
            return;
        }
        if let Some(p) = self.pending_pong.take() {
            if self
                .append_buf(|enc, out| enc.encode(&Message::Pong(*p), out))
                .is_ok()
            {
                self.pong_end = self.appended;
            }
        }
    }

    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        self.written += n as u64;
        while n > 0 {
            let front = self.chunks.front_mut().expect("written more than queued");
            if n >= front.len() {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

/// Close-handshake progress.
#[derive(Debug, Default)]
struct CloseState {
    /// We queued our close frame; no data may follow.
    sent_at: Option<Instant>,
    /// The peer's close frame arrived.
    received: bool,
    /// The write side of the transport has been shut down.
    shut_down: bool,
    /// A write failed; the transport is unusable.
    broken: bool,
}

struct Inner<S> {
    io: S,
    queue: WriteQueue,
    close: CloseState,
    /// Only split halves need wakers of their own (they may run in different tasks); an
    /// unsplit WebSocket is driven by one task, which gets the transport's wake-ups itself.
    /// Boxed, so an unsplit WebSocket keeps one pointer for them.
    split: Option<Box<SplitWakers>>,
}

/// The wakers split halves keep in their shared state.
#[derive(Default)]
struct SplitWakers {
    /// The reader's task, woken when the writer sends a close so it can start the timeout.
    reader: Option<Waker>,
    /// Who waits for the transport to become writable.
    write: WriteWakers,
}

struct Shared<S> {
    inner: Mutex<Inner<S>>,
    tracker: PingTracker,
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        // A panic while holding the lock leaves the queue consistent enough to keep going:
        // every mutation is completed before anything that can panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S: AsyncWrite + Unpin> Shared<S> {
    /// Write everything queued (and a pending pong), then flush the transport. `who` says
    /// which half's waker to register for write readiness (kept in the shared state under the
    /// lock this takes anyway, so registering costs no lock of its own).
    fn poll_flush(&self, who: usize, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut g = self.lock();
        let inner = &mut *g;
        let fan = inner.register_write(who, cx.waker());
        let polled = match fan {
            Some(fan) => inner.poll_flush(&mut Context::from_waker(&fan)),
            None => inner.poll_flush(cx),
        };
        if polled.is_ready() {
            if let Some(w) = &mut inner.split {
                w.write.done(who);
            }
        }
        polled
    }

    /// Flush, then shut down the write side (once).
    fn poll_flush_shutdown(&self, who: usize, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        std::task::ready!(self.poll_flush(who, cx))?;
        let mut g = self.lock();
        if g.close.shut_down {
            return Poll::Ready(Ok(()));
        }
        let inner = &mut *g;
        let fan = inner.register_write(who, cx.waker());
        let polled = match fan {
            Some(fan) => Pin::new(&mut inner.io).poll_shutdown(&mut Context::from_waker(&fan)),
            None => Pin::new(&mut inner.io).poll_shutdown(cx),
        };
        match polled {
            Poll::Ready(r) => {
                if let Some(w) = &mut inner.split {
                    w.write.done(who);
                }
                inner.close.shut_down = true;
                Poll::Ready(r.map_err(Error::from))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> Inner<S> {
    /// Remembers `waker` as `who`'s write waker when the halves are split; the waker the
    /// transport is to get instead of `waker`, when one is needed (see `WriteWakers::register`).
    fn register_write(&mut self, who: usize, waker: &Waker) -> Option<Waker> {
        self.split
            .as_mut()
            .and_then(|w| w.write.register(who, waker))
    }

    /// [`Shared::poll_flush`] under the lock, with the waker the transport is to get.
    fn poll_flush(&mut self, fcx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let inner = self;
        if inner.close.broken {
            return Poll::Ready(Err(Error::ConnectionClosed));
        }
        if inner.close.sent_at.is_none() {
            inner.queue.schedule_pong();
        }
        let q = &mut inner.queue;
        // Only small frames queued (the common case): written straight from the coalescing
        // buffer, without sealing it into a chunk (which would allocate to share it).
        while q.chunks.is_empty() && !q.buf.is_empty() {
            match Pin::new(&mut inner.io).poll_write(fcx, &q.buf) {
                Poll::Ready(Ok(0)) => {
                    inner.close.broken = true;
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                Poll::Ready(Ok(w)) => {
                    q.queued -= w;
                    q.written += w as u64;
                    q.buf.advance(w);
                }
                Poll::Ready(Err(e)) => {
                    inner.close.broken = true;
                    return Poll::Ready(Err(e.into()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        q.seal();
        while !q.chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for c in q.chunks.iter().take(MAX_IOVECS) {
                slices[n] = IoSlice::new(c);
                n += 1;
            }
            match Pin::new(&mut inner.io).poll_write_vectored(fcx, &slices[..n]) {
                Poll::Ready(Ok(0)) => {
                    inner.close.broken = true;
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                Poll::Ready(Ok(w)) => q.advance(w),
                Poll::Ready(Err(e)) => {
                    inner.close.broken = true;
                    return Poll::Ready(Err(e.into()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        // Everything is written: give the coalescing buffer back, whatever its size, so a
        // connection that goes quiet after a burst keeps none (the next small frame costs
        // one small allocation instead).
        if q.buf.capacity() > 0 {
            q.buf = BytesMut::new();
        }
        match Pin::new(&mut inner.io).poll_flush(fcx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                inner.close.broken = true;
                Poll::Ready(Err(e.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> Shared<S> {
    /// Queue a close frame unless one was queued already.
    fn queue_close(&self, frame: Option<CloseFrame>) -> Result<bool, Error> {
        let mut g = self.lock();
        if g.close.sent_at.is_some() {
            return Ok(false);
        }
        let msg = Message::Close(frame);
        g.queue.append_buf(|enc, out| enc.encode(&msg, out))?;
        g.close.sent_at = Some(Instant::now());
        // A pong after our close frame would break §5.5.1; drop it.
        g.queue.pending_pong = None;
        if let Some(w) = g.split.as_mut().and_then(|w| w.reader.take()) {
            w.wake();
        }
        Ok(true)
    }
}

/// A WebSocket connection over `S`, owned by one task: its state is kept inline (no shared
/// allocation, no reference count). Use [`WebSocket::split`] to read and write from
/// different tasks.
pub struct WebSocket<S> {
    shared: Shared<S>,
    reader: ReadState,
    writer: WriterState,
}

/// The read half: yields messages, answers pings, completes the close handshake.
pub struct WsReader<S> {
    shared: Arc<Shared<S>>,
    state: ReadState,
}

/// What only the reading side touches.
struct ReadState {
    decoder: Decoder,
    buf: BytesMut,
    /// A pong or close reply of ours is queued and must be pushed out by us.
    must_flush: bool,
    close_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
    /// The end of the close handshake in progress, and what to return once it is done.
    finishing: Option<Box<Finishing>>,
}

/// A close handshake being completed by [`WsReader::poll_next`] before it returns `item`:
/// the flush and shutdown of the write side, given up at `deadline`.
struct Finishing {
    deadline: Pin<Box<tokio::time::Sleep>>,
    item: Option<Result<Message, Error>>,
}

/// The write half: queues and sends messages, pings, closes.
pub struct WsWriter<S> {
    shared: Arc<Shared<S>>,
    state: WriterState,
}

/// What only the writer touches: the data encoder (with its compressor). The role, the agreed
/// deflate parameters and the compression threshold are the encoder's. No staging buffer is
/// kept: every frame is encoded into a buffer of its own that is handed whole to the queue,
/// so a kept one would always be empty between messages and only cost every connection room.
struct WriterState {
    encoder: Encoder,
    coalesce_threshold: usize,
}

/// Frame bytes produced outside the lock, ready to be appended to the queue.
enum Staged {
    /// A complete frame.
    Frame(Bytes),
    /// A header followed by a payload shared by reference.
    Split(crate::codec::HeaderBytes, Bytes),
}

impl WriterState {
    fn stage(&mut self, msg: &Message) -> Result<Staged, Error> {
        if let Message::Text(p) | Message::Binary(p) = msg {
            if p.len() >= self.coalesce_threshold {
                if let Some(h) = self.encoder.encode_header_only(msg) {
                    return Ok(Staged::Split(h, p.clone()));
                }
            }
        }
        // A buffer of the frame's own, frozen whole: nothing is left behind to hold an
        // allocation after the frame is written, nor a partial frame after a failed encode.
        let mut frame = BytesMut::new();
        self.encoder.encode(msg, &mut frame)?;
        Ok(Staged::Frame(frame.freeze()))
    }

    /// The shared frame of `msg` as this connection sends it, when it needs no encoding of
    /// its own (see [`Self::stage_prepared`]).
    fn shared_frame(&self, msg: &PreparedMessage) -> Option<Bytes> {
        if self.encoder.role() == Role::Client {
            return None;
        }
        let config = self.encoder.config();
        match &config.deflate {
            Some(p) if !p.server_no_context_takeover => None,
            d => Some(msg.frame_for(d.as_ref(), config.compression_threshold)),
        }
    }

    fn stage_prepared(&mut self, msg: &PreparedMessage) -> Result<Staged, Error> {
        if self.encoder.role() == Role::Client {
            // Client frames must be masked, so the shared server frame cannot be used.
            return self.stage(msg.message());
        }
        let config = self.encoder.config();
        match &config.deflate {
            // Broadcast frames come from a fresh compressor; they may only be interleaved with
            // our own compressed frames when our compressor does not keep context either.
            Some(p) if !p.server_no_context_takeover => self.stage(msg.message()),
            d => Ok(Staged::Frame(
                msg.frame_for(d.as_ref(), config.compression_threshold),
            )),
        }
    }
}

impl WriteQueue {
    fn push_staged(&mut self, staged: Staged) {
        match staged {
            Staged::Frame(f) => self.push_frame(f),
            Staged::Split(h, payload) => {
                self.buf.extend_from_slice(h.as_ref());
                self.queued += h.len();
                self.appended += h.len() as u64;
                self.append_chunk(payload);
            }
        }
    }
}

/// Truncate a close reason to what fits in a close frame, on a character boundary.
fn short_reason(s: &str) -> String {
    let mut end = s.len().min(MAX_REASON_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> WebSocket<S> {
    /// Wrap an already-upgraded transport.
    pub fn new(io: S, role: Role, config: Config, write_config: WriteConfig) -> Self {
        Self::from_partially_read(io, role, config, write_config, BytesMut::new())
    }

    /// Like [`WebSocket::new`], with bytes that were read past the end of the handshake and
    /// belong to the WebSocket stream.
    pub fn from_partially_read(
        io: S,
        role: Role,
        config: Config,
        write_config: WriteConfig,
        read_buf: BytesMut,
    ) -> Self {
        let writer_state = WriterState {
            encoder: Encoder::new(role, config.clone()),
            coalesce_threshold: write_config.coalesce_threshold,
        };
        let queue = WriteQueue {
            role,
            config: write_config,
            chunks: VecDeque::new(),
            buf: BytesMut::new(),
            queued: 0,
            appended: 0,
            written: 0,
            pong_end: 0,
            pending_pong: None,
        };
        let shared = Shared {
            inner: Mutex::new(Inner {
                io,
                queue,
                close: CloseState::default(),
                split: None,
            }),
            tracker: PingTracker::new(),
        };
        WebSocket {
            shared,
            reader: ReadState {
                decoder: Decoder::new(role, config),
                buf: read_buf,
                must_flush: false,
                close_deadline: None,
                done: false,
                finishing: None,
            },
            writer: writer_state,
        }
    }

    /// Separate the read and write halves (their shared state moves to one allocation both
    /// point to).
    pub fn split(mut self) -> (WsReader<S>, WsWriter<S>) {
        let inner = self.shared.inner.get_mut();
        inner.unwrap_or_else(|e| e.into_inner()).split = Some(Box::default());
        let shared = Arc::new(self.shared);
        (
            WsReader {
                shared: Arc::clone(&shared),
                state: self.reader,
            },
            WsWriter {
                shared,
                state: self.writer,
            },
        )
    }

    /// See [`WsReader::next`].
    pub async fn next(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.reader.poll_next(&self.shared, cx)).await
    }

    /// See [`WsReader::poll_next`].
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        self.reader.poll_next(&self.shared, cx)
    }

    /// See [`WsReader::drain`].
    pub async fn drain(&mut self, limit: Duration) {
        self.reader.drain(&self.shared, limit).await
    }

    /// See [`WsWriter::send`].
    pub async fn send(&mut self, msg: Message) -> Result<(), Error> {
        self.feed(msg)?;
        self.flush().await
    }

    /// See [`WsWriter::feed`].
    pub fn feed(&mut self, msg: Message) -> Result<(), Error> {
        self.writer.feed(&self.shared, msg)
    }

    /// See [`WsWriter::feed_prepared`].
    pub fn feed_prepared(&mut self, msg: &PreparedMessage) -> Result<(), Error> {
        self.writer.feed_prepared(&self.shared, msg)
    }

    /// Make room at once for a batch of frames with these payload lengths, about to be fed:
    /// the small ones are copied into one buffer, which would otherwise grow a step at a time
    /// (one reallocation and copy per doubling) for every batch.
    pub fn reserve_for(&mut self, payload_lens: impl IntoIterator<Item = usize>) {
        let inner = self
            .shared
            .inner
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        let q = &mut inner.queue;
        // Alone in an empty queue, the first frame is queued by reference (see `push_frame`).
        let skip = usize::from(q.queued == 0);
        let copied: usize = payload_lens
            .into_iter()
            .skip(skip)
            .map(|len| len + MAX_HEADER_LEN)
            .filter(|&len| len < q.config.coalesce_threshold)
            .sum();
        if copied > 0 {
            q.buf.reserve(copied);
        }
    }

    /// See [`WsWriter::feed_frame`].
    pub fn feed_frame(&mut self, frame: Bytes) -> Result<(), Error> {
        feed_frame(&self.shared, frame)
    }

    /// See [`WsWriter::flush`].
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.shared.poll_flush(WRITER, cx)).await
    }

    /// See [`WsWriter::buffered_bytes`].
    pub fn buffered_bytes(&self) -> usize {
        self.shared.lock().queue.queued
    }

    /// See [`WsReader::read_buffer_capacity`].
    pub fn read_buffer_capacity(&self) -> usize {
        self.reader.buf.capacity()
    }

    /// Whether nothing is in progress in either direction: no input buffered or half
    /// decoded, nothing queued to write, no pong owed, no close begun. While a WebSocket is
    /// at rest its transport may be swapped out and back (see [`WebSocket::io_mut`]): the
    /// next byte it reads starts a new frame.
    pub fn is_at_rest(&mut self) -> bool {
        let r = &self.reader;
        if !r.buf.is_empty()
            || r.must_flush
            || r.done
            || r.close_deadline.is_some()
            || r.finishing.is_some()
            || !r.decoder.is_between_messages()
        {
            return false;
        }
        let inner = self
            .shared
            .inner
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        let close = &inner.close;
        inner.queue.queued == 0
            && inner.queue.pending_pong.is_none()
            && close.sent_at.is_none()
            && !close.received
            && !close.shut_down
            && !close.broken
    }

    /// The transport itself. Only for an unsplit WebSocket, and meant for swapping it while
    /// the WebSocket [is at rest](WebSocket::is_at_rest).
    pub fn io_mut(&mut self) -> &mut S {
        &mut self
            .shared
            .inner
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .io
    }

    /// See [`WsWriter::write_buffer_capacity`].
    pub fn write_buffer_capacity(&self) -> usize {
        self.shared.lock().queue.buf.capacity()
    }

    /// See [`WsWriter::ping`].
    pub async fn ping(&mut self, payload: impl Into<Bytes>) -> Result<(), Error> {
        self.send(Message::Ping(payload.into())).await
    }

    /// The liveness tracker.
    pub fn tracker(&self) -> PingTracker {
        self.shared.tracker.clone()
    }

    /// Send a close frame with `code` and `reason` and flush it, without waiting for the
    /// peer's reply (see [`WsWriter::close`]); [`WebSocket::next`] then sees the reply.
    pub async fn send_close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        queue_close(
            &self.shared,
            Some(CloseFrame::new(code, short_reason(reason))),
        )?;
        self.flush().await
    }

    /// Close the connection: send a close frame, then read (discarding data messages) until
    /// the peer's close arrives or the close timeout passes, and shut the transport down.
    /// Returns the peer's close frame, if one arrived.
    pub async fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
    ) -> Result<Option<CloseFrame>, Error> {
        self.send_close(code, reason).await?;
        while let Some(m) = self.next().await {
            if let Message::Close(f) = m? {
                return Ok(f);
            }
        }
        Ok(None)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> WsReader<S> {
    /// The next message from the peer.
    ///
    /// Pings are answered automatically and still returned (as are pongs). A close frame from
    /// the peer is answered, returned once as [`Message::Close`], and then `None` follows.
    /// On a protocol violation the matching close code is sent and the error returned; after
    /// that, and after the transport ends, `None` is returned.
    pub async fn next(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.state.poll_next(&self.shared, cx)).await
    }

    /// Poll form of [`WsReader::next`], for a task that drives the reader together with
    /// other sources from one hand-written `poll` (no future of its own to keep between
    /// polls). Same semantics; a close handshake it has to complete (the peer closed, a
    /// protocol error, our close timed out) is driven by the following calls before the
    /// result is returned.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        self.state.poll_next(&self.shared, cx)
    }

    /// Read and throw away whatever the peer still sends, until it ends the connection or
    /// `limit` passes. Call this after [`WsReader::next`] returned an error: the close frame
    /// is on its way, but closing a socket that still has unread input makes the kernel send
    /// a TCP reset, which can destroy that close frame before the peer reads it (a client
    /// still streaming an oversized message would see 1006 instead of 1009).
    pub async fn drain(&mut self, limit: Duration) {
        self.state.drain(&self.shared, limit).await
    }

    /// The shared liveness tracker.
    pub fn tracker(&self) -> PingTracker {
        self.shared.tracker.clone()
    }

    /// Current capacity of the read buffer, for memory diagnostics.
    pub fn read_buffer_capacity(&self) -> usize {
        self.state.buf.capacity()
    }
}

impl ReadState {
    /// [`WsReader::poll_next`] over `shared`.
    fn poll_next<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &mut self,
        shared: &Shared<S>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, Error>>> {
        if let Some(f) = &mut self.finishing {
            // Flushed and shut down, or given up at the close timeout (the flush is polled
            // first, as a timeout polls what it bounds).
            if shared.poll_flush_shutdown(READER, cx).is_pending()
                && f.deadline.as_mut().poll(cx).is_pending()
            {
                return Poll::Pending;
            }
            let done = self.finishing.take().expect("checked above");
            return Poll::Ready(done.item);
        }
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(msg)) => {
                    self.maybe_shrink();
                    return match self.on_message(shared, cx, msg) {
                        Some(item) => Poll::Ready(Some(item)),
                        // A close frame: our reply is on its way.
                        None => self.poll_next(shared, cx),
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    let reason = short_reason(&e.to_string());
                    let frame = e.close_code().map(|c| CloseFrame::new(c, reason));
                    let frame = frame.or(Some(CloseFrame::new(CloseCode::PROTOCOL_ERROR, "")));
                    self.start_finish(shared, Some(frame), Some(Err(e)));
                    return self.poll_next(shared, cx);
                }
            }
            self.maybe_shrink();
            match std::task::ready!(self.poll_fill(shared, cx)) {
                Fill::Data => {}
                Fill::Eof => {
                    self.done = true;
                    let clean = {
                        let g = shared.lock();
                        g.close.sent_at.is_some() || g.close.received
                    };
                    if clean {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(Error::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection ended without a close frame",
                    )))));
                }
                Fill::TimedOut => {
                    // The peer never answered our close: give up on a clean close.
                    self.start_finish(shared, None, None);
                    return self.poll_next(shared, cx);
                }
                Fill::Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    /// [`WsReader::drain`] over `shared`.
    async fn drain<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &mut self,
        shared: &Shared<S>,
        limit: Duration,
    ) {
        self.buf = BytesMut::new();
        let _ = tokio::time::timeout(limit, async {
            loop {
                self.buf.clear();
                match poll_fn(|cx| self.poll_fill(shared, cx)).await {
                    Fill::Data => {}
                    Fill::Eof | Fill::TimedOut | Fill::Err(_) => break,
                }
            }
        })
        .await;
    }

    /// Bookkeeping for a received message. A close frame starts our reply (see
    /// [`Self::start_finish`]) and gives `None`: [`Self::poll_next`] returns it once the
    /// reply is out.
    fn on_message<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &mut self,
        shared: &Shared<S>,
        cx: &mut Context<'_>,
        msg: Message,
    ) -> Option<Result<Message, Error>> {
        let tracker = &shared.tracker;
        tracker.stamp(&tracker.0.last_received);
        match &msg {
            Message::Ping(p) => {
                {
                    let mut g = shared.lock();
                    if g.close.sent_at.is_none() {
                        // The box is reused while a pong is pending (a peer pinging in a burst).
                        match &mut g.queue.pending_pong {
                            Some(b) => **b = p.clone(),
                            slot => *slot = Some(Box::new(p.clone())),
                        }
                        self.must_flush = true;
                    }
                }
                // Push the pong out now if the socket takes it; otherwise the next read poll
                // (or the writer's next flush) will.
                if let Poll::Ready(r) = shared.poll_flush(READER, cx) {
                    self.must_flush = false;
                    if let Err(e) = r {
                        return Some(Err(e));
                    }
                }
            }
            Message::Pong(_) => tracker.pong_received(),
            Message::Close(frame) => {
                shared.lock().close.received = true;
                // Echo the status code (§5.5.1); an empty close is answered with an empty one.
                let reply = frame
                    .as_ref()
                    .map(|f| CloseFrame::new(f.code, String::new()));
                self.start_finish(shared, Some(reply), Some(Ok(msg)));
                return None;
            }
            _ => {}
        }
        Some(Ok(msg))
    }

    /// End the connection from the reading side: queue the close frame `close` (unless a
    /// close was sent already; `None` queues nothing), then flush and shut the write side
    /// down, bounded by the close timeout. [`Self::poll_next`] drives this and then returns
    /// `item`.
    fn start_finish<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &mut self,
        shared: &Shared<S>,
        close: Option<Option<CloseFrame>>,
        item: Option<Result<Message, Error>>,
    ) {
        self.done = true;
        if let Some(frame) = close {
            let _ = shared.queue_close(frame);
        }
        let limit = shared.lock().queue.config.close_timeout;
        let deadline = Box::pin(tokio::time::sleep(limit));
        self.finishing = Some(Box::new(Finishing { deadline, item }));
    }

    /// Give back a buffer that grew for a large message once little is left in it.
    fn maybe_shrink(&mut self) {
        if self.buf.capacity() > READ_BUF_KEEP && self.buf.len() <= READ_BUF_MIN / 2 {
            let mut small = BytesMut::with_capacity(READ_BUF_MIN);
            small.extend_from_slice(&self.buf);
            self.buf = small;
        }
    }

    fn poll_fill<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &mut self,
        shared: &Shared<S>,
        cx: &mut Context<'_>,
    ) -> Poll<Fill> {
        if self.must_flush {
            if let Poll::Ready(r) = shared.poll_flush(READER, cx) {
                self.must_flush = false;
                if let Err(e) = r {
                    return Poll::Ready(Fill::Err(e));
                }
            }
        }
        let mut g = shared.lock();
        if let Some(w) = &mut g.split {
            match &mut w.reader {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        }
        if let Some(at) = g.close.sent_at {
            if !g.close.received {
                let deadline = tokio::time::Instant::from_std(at + g.queue.config.close_timeout);
                let sleep = self
                    .close_deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Fill::TimedOut);
                }
            }
        }
        if self.buf.is_empty() {
            // Nothing partial is buffered: give the buffer back (an idle connection then holds
            // none) and read onto the stack.
            self.buf = BytesMut::new();
            let mut stack = [const { std::mem::MaybeUninit::<u8>::uninit() }; STACK_READ];
            let mut rb = ReadBuf::uninit(&mut stack);
            return match Pin::new(&mut g.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Fill::Eof),
                Poll::Ready(Ok(())) => {
                    self.buf.extend_from_slice(rb.filled());
                    Poll::Ready(Fill::Data)
                }
                Poll::Ready(Err(e)) => Poll::Ready(Fill::Err(e.into())),
                Poll::Pending => Poll::Pending,
            };
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            // Grow geometrically while a large frame streams in; the decoder has already
            // reserved room for the payload of a frame whose header it parsed.
            let extra = self.buf.len().clamp(READ_BUF_MIN, 1 << 20);
            self.buf.reserve(extra);
        }
        let spare = self.buf.spare_capacity_mut();
        let mut rb = ReadBuf::uninit(spare);
        match Pin::new(&mut g.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Fill::Eof);
                }
                // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
                unsafe { self.buf.set_len(self.buf.len() + n) };
                Poll::Ready(Fill::Data)
            }
            Poll::Ready(Err(e)) => Poll::Ready(Fill::Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future as _;

enum Fill {
    Data,
    Eof,
    TimedOut,
    Err(Error),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> WsWriter<S> {
    /// Queue `msg` and write everything pending.
    pub async fn send(&mut self, msg: Message) -> Result<(), Error> {
        self.feed(msg)?;
        self.flush().await
    }

    /// Queue `msg` without writing. A [`Message::Close`] starts the close handshake (see
    /// [`WsWriter::close`]). Fails with [`Error::WouldOverflow`] when the queue is full and
    /// [`Error::ConnectionClosed`] once a close frame has been sent.
    pub fn feed(&mut self, msg: Message) -> Result<(), Error> {
        self.state.feed(&self.shared, msg)
    }

    /// Queue a broadcast message framed once for many connections. On a server connection
    /// the shared frame (compressed once, if deflate was agreed) is queued without copying
    /// when large; a client connection masks its own copy.
    pub fn feed_prepared(&mut self, msg: &PreparedMessage) -> Result<(), Error> {
        self.state.feed_prepared(&self.shared, msg)
    }

    /// Queue a complete, already-encoded frame as-is. The caller guarantees it is a valid
    /// frame for this connection (role, negotiated extensions).
    pub fn feed_frame(&mut self, frame: Bytes) -> Result<(), Error> {
        feed_frame(&self.shared, frame)
    }

    /// Write everything queued, with as few vectored writes as the transport allows.
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.shared.poll_flush(WRITER, cx)).await
    }

    /// Send a ping; its pong will show up in the [`PingTracker`].
    pub async fn ping(&mut self, payload: impl Into<Bytes>) -> Result<(), Error> {
        self.send(Message::Ping(payload.into())).await
    }

    /// Start the close handshake: send a close frame with `code` and `reason` (truncated to
    /// 123 bytes) and flush. The reader half then sees the peer's close (or ends after the
    /// close timeout) and shuts the transport down.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        queue_close(
            &self.shared,
            Some(CloseFrame::new(code, short_reason(reason))),
        )?;
        self.flush().await
    }

    /// Bytes waiting in the outgoing queue.
    pub fn buffered_bytes(&self) -> usize {
        self.shared.lock().queue.queued
    }

    /// Capacity of the buffer the writer keeps between messages (the queue's coalescing
    /// buffer), for memory diagnostics. Zero once everything queued has been written.
    pub fn write_buffer_capacity(&self) -> usize {
        self.shared.lock().queue.buf.capacity()
    }

    /// Whether a close frame was sent or received (no more data messages can be sent).
    pub fn is_closing(&self) -> bool {
        let g = self.shared.lock();
        g.close.sent_at.is_some() || g.close.received || g.close.broken
    }

    /// The shared liveness tracker.
    pub fn tracker(&self) -> PingTracker {
        self.shared.tracker.clone()
    }
}

impl WriterState {
    /// [`WsWriter::feed`] over `shared`.
    fn feed<S: AsyncWrite + Unpin>(
        &mut self,
        shared: &Shared<S>,
        msg: Message,
    ) -> Result<(), Error> {
        if let Message::Close(frame) = msg {
            return queue_close(shared, frame);
        }
        let estimate = match &msg {
            Message::Text(p) | Message::Binary(p) | Message::Ping(p) | Message::Pong(p) => {
                p.len() + 14
            }
            Message::Close(_) => 0,
        };
        open(shared)?.queue.check_room(estimate)?;
        // Encode (and compress) without holding the lock the reader needs.
        let staged = self.stage(&msg)?;
        open(shared)?.queue.push_staged(staged);
        if let Message::Ping(_) = msg {
            shared.tracker.ping_sent();
        }
        Ok(())
    }

    /// [`WsWriter::feed_prepared`] over `shared`.
    fn feed_prepared<S>(&mut self, shared: &Shared<S>, msg: &PreparedMessage) -> Result<(), Error> {
        let estimate = msg.payload().len() + 14;
        if let Some(frame) = self.shared_frame(msg) {
            // Nothing is encoded for this connection, so nothing is lost when the room check
            // fails: one lock for both.
            let mut g = open(shared)?;
            g.queue.check_room(estimate)?;
            g.queue.push_frame(frame);
            return Ok(());
        }
        open(shared)?.queue.check_room(estimate)?;
        let staged = self.stage_prepared(msg)?;
        open(shared)?.queue.push_staged(staged);
        Ok(())
    }
}

/// [`WsWriter::feed_frame`] over `shared`.
fn feed_frame<S>(shared: &Shared<S>, frame: Bytes) -> Result<(), Error> {
    let mut g = open(shared)?;
    g.queue.check_room(frame.len())?;
    g.queue.push_frame(frame);
    Ok(())
}

/// The state under the lock, unless the connection is closing (no data may be queued).
fn open<S>(shared: &Shared<S>) -> Result<MutexGuard<'_, Inner<S>>, Error> {
    let g = shared.lock();
    if g.close.sent_at.is_some() || g.close.received || g.close.broken {
        return Err(Error::ConnectionClosed);
    }
    Ok(g)
}

/// Queue our close frame; fails when one was queued already or the transport is broken.
fn queue_close<S: AsyncWrite + Unpin>(
    shared: &Shared<S>,
    frame: Option<CloseFrame>,
) -> Result<(), Error> {
    if shared.lock().close.broken {
        return Err(Error::ConnectionClosed);
    }
    match shared.queue_close(frame)? {
        true => Ok(()),
        false => Err(Error::ConnectionClosed),
    }
}

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket").finish_non_exhaustive()
    }
}

impl<S> std::fmt::Debug for WsReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsReader")
            .field("buffered", &self.state.buf.len())
            .field("done", &self.state.done)
            .finish_non_exhaustive()
    }
}

impl<S> std::fmt::Debug for WsWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsWriter").finish_non_exhaustive()
    }
}
