//! What a wire protocol supplies to the connection runtime: a [`Driver`], the protocol's
//! state machine for one connection. It never touches the socket: messages from the peer,
//! deliveries from its outbox(es), heartbeat ticks and timers come in; frames to send go
//! into an [`Out`] queue; an [`Ending`] says when and why to stop. The runtime
//! ([`super::runtime`]) does the rest, the same way for every protocol, so a driver can be
//! tested without a socket: feed it messages and deliveries, read what it queued.
use std::borrow::Cow;
use std::future::Future;
use std::task::{Context, Poll};

use bytes::Bytes;
use switchboard_core::CloseReason;
use switchboard_websocket::{CloseCode, Message, PreparedMessage};
use tokio::time::Instant;

/// One frame a driver asks the runtime to send.
#[derive(Debug, Clone)]
pub(crate) enum OutFrame {
    /// A message framed (and compressed) for this connection.
    Message(Message),
    /// A message framed once for every subscriber of a publication: its bytes are shared,
    /// never copied per connection.
    Prepared(PreparedMessage),
    /// Not a frame: a publication whose frame is queued in this batch entered the hub at
    /// this instant. The runtime observes the delivery latency when it hands the batch to
    /// the socket. Kept among the frames rather than in a field of its own, so an idle
    /// connection pays nothing for it.
    Published(std::time::Instant),
}

/// Frames waiting to be written, in order. The runtime drains it after every step.
#[derive(Debug, Default)]
pub(crate) struct Out {
    frames: Vec<OutFrame>,
}

impl Out {
    /// Queue a message.
    pub(crate) fn message(&mut self, msg: Message) {
        self.frames.push(OutFrame::Message(msg));
    }

    /// Queue a shared, already framed message.
    pub(crate) fn prepared(&mut self, msg: &PreparedMessage) {
        self.frames.push(OutFrame::Prepared(msg.clone()));
    }

    /// Marks that a frame of `publication` is queued in this batch (once per publication,
    /// however many frames it takes), for the delivery latency histogram.
    pub(crate) fn published(&mut self, publication: &switchboard_core::Publication) {
        self.frames
            .push(OutFrame::Published(publication.published_at));
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// How many frames are queued (latency marks not counted).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.frames().len()
    }

    /// Takes the queued frames, in order (latency marks dropped).
    #[cfg(test)]
    pub(crate) fn drain(&mut self) -> std::vec::IntoIter<OutFrame> {
        let frames: Vec<OutFrame> = self
            .frames
            .drain(..)
            .filter(|f| !matches!(f, OutFrame::Published(_)))
            .collect();
        frames.into_iter()
    }

    /// How many publications were marked as queued ([`Out::published`]).
    #[cfg(test)]
    pub(crate) fn published_marks(&self) -> usize {
        self.frames
            .iter()
            .filter(|f| matches!(f, OutFrame::Published(_)))
            .count()
    }

    /// The queued frames, in order.
    pub(crate) fn pending(&self) -> &[OutFrame] {
        &self.frames
    }

    /// Drops the first `n` queued frames (they were handed to the transport).
    pub(crate) fn consume(&mut self, n: usize) {
        self.frames.drain(..n);
    }

    /// The queued frames (for tests and inspection; latency marks left out).
    #[cfg(test)]
    pub(crate) fn frames(&self) -> Vec<OutFrame> {
        self.frames
            .iter()
            .filter(|f| !matches!(f, OutFrame::Published(_)))
            .cloned()
            .collect()
    }

    /// Drops a burst's capacity once the queue is empty again, so an idle connection does
    /// not keep it.
    pub(crate) fn shrink(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            self.frames = Vec::new();
        }
    }
}

/// Why a connection ends, the same words for every protocol. The runtime produces the
/// transport endings; drivers produce [`Ending::Close`] (their own close code) and
/// [`Ending::Hub`] (from their outboxes). The driver then says what close frame each ending
/// owes the peer ([`Driver::close_frame`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The server is shutting down.
    Shutdown,
    /// The peer sent a close frame (the WebSocket layer queued the echo).
    PeerClosed(Option<u16>),
    /// The socket ended without a close frame.
    Lost,
    /// The peer broke the WebSocket protocol or a limit; the codec already sent the close
    /// code.
    ReadError,
    /// The peer stopped answering pings.
    Dead,
    /// The peer accepted no bytes for the stall limit: the socket is dropped.
    Stalled,
    /// Writing failed (the peer is gone).
    WriteFailed,
    /// The hub closed the connection's outbox for this reason.
    Hub(CloseReason),
    /// A bug: a panic while handling the connection.
    Panic(String),
    /// The protocol ends the connection with this close code and reason.
    Close(u16, Cow<'static, str>),
    /// The client went on sending over `client_message_rate` / `client_bytes_rate` after
    /// its messages were being dropped: closed with the protocol's policy code.
    Flood,
}

/// A wire protocol's state machine for one connection.
///
/// Methods that may wait on the core (a subscribe that asks the broker, a history read)
/// return futures; a driver whose work is synchronous returns a ready one, which costs
/// nothing. While such a future runs, the runtime writes nothing else for this connection,
/// so replies and publications cannot be reordered.
pub(crate) trait Driver: Send + 'static {
    /// What [`poll_event`](Self::poll_event) reports (deliveries, control messages).
    type Event: Send;

    /// Frames to send first, before anything else (a welcome, an open packet). An error
    /// ends the connection at once.
    fn open(&mut self, out: &mut Out) -> Result<(), Ending> {
        let _ = out;
        Ok(())
    }

    /// One text or binary message from the peer.
    fn on_message(
        &mut self,
        msg: Message,
        out: &mut Out,
    ) -> impl Future<Output = Result<(), Ending>> + Send;

    /// Whether the driver takes messages now. Pending pauses reading (back-pressure, e.g.
    /// while a message waits for room in a publisher's queue); the waker is woken when it
    /// may resume.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let _ = cx;
        Poll::Ready(())
    }

    /// Something for the connection besides the peer's messages: its outboxes' deliveries,
    /// control messages. Stores the waker when nothing is ready.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Self::Event>;

    /// Handles what [`poll_event`](Self::poll_event) reported.
    fn on_event(
        &mut self,
        event: Self::Event,
        out: &mut Out,
    ) -> impl Future<Output = Result<(), Ending>> + Send;

    /// Handles `event` at once, if it can be without waiting for anything: what a parked
    /// connection's turn uses, so its deliveries are written without resuming it. Gives the
    /// event back (the default) when it needs [`on_event`](Self::on_event); the connection
    /// then resumes and handles it there.
    fn on_event_now(
        &mut self,
        event: Self::Event,
        out: &mut Out,
    ) -> Result<Result<(), Ending>, Self::Event> {
        let _ = out;
        Err(event)
    }

    /// The ping interval elapsed: queue this protocol's ping. The default is a WebSocket
    /// ping; protocols with their own (Centrifugo's `{}`, Engine.IO's `2`) queue that.
    /// Whatever the peer sends back counts as an answer.
    fn ping(&mut self, out: &mut Out) {
        out.message(Message::Ping(Bytes::new()));
    }

    /// When [`on_timer`](Self::on_timer) should run next (a token's expiry, a deadline
    /// for the first command), if ever. Asked after every step; the runtime keeps one
    /// timer, re-armed only when the answer changes.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// The [`deadline`](Self::deadline) passed.
    fn on_timer(&mut self, out: &mut Out) -> impl Future<Output = Result<(), Ending>> + Send {
        let _ = out;
        std::future::ready(Ok(()))
    }

    /// Why the hub closed the connection's outbox while a write was waiting, if it did:
    /// a stalled flush gives up on that verdict instead of waiting for the stall limit.
    fn hub_verdict(&self) -> Option<CloseReason>;

    /// The close frame the peer is owed for `ending` (`None`: end without one). Also the
    /// place to count and log the ending in the protocol's words.
    fn close_frame(&mut self, ending: &Ending) -> Option<(CloseCode, Cow<'static, str>)>;

    /// The last step, after the close frame: release what the connection held (leave the
    /// hub, keep state for recovery). Bounded in time by the runtime.
    fn finish(self, ending: &Ending) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        let _ = ending;
        async move { drop(self) }
    }
}
