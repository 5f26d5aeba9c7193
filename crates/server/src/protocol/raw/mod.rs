//! Raw WebSocket rooms: a WebSocket upgrade on any path no other endpoint reserves joins the
//! room named by the path (`/` = `lobby`); every text or binary message is published to the
//! room as it is, and the room's messages arrive as they were sent.
//!
//! The endpoint ([`RawRooms`]) joins the room before answering 101, so a member receives
//! everything sent after its `open`; a full room is reported after the upgrade as close
//! 1008 "room full" (browsers hide handshake statuses from scripts, not close codes). The
//! driver ([`RawDriver`]) sends the welcome message, publishes what it reads and frames
//! deliveries as their shared prepared frame (framed and compressed once per publication for
//! all subscribers; see [`switchboard_protocols::raw::encode`]).
//!
//! Endings and what the peer sees: shutdown → 1001 "going away"; outbox closed as a slow
//! consumer → 1008 "slow consumer" (or the socket is dropped when it does not drain at all);
//! room full → 1008 "room full"; message too big → 1009 (sent by the codec); a panic in the
//! embedder's hook → 1011 "internal error"; publications missed that history cannot fill →
//! 4500 "missed publications"; kicked through the API → the hub's close code; no answer to
//! pings → the socket is dropped.
//!
//! With `[proxy.connect]` set, an upgrade without a token goes to the backend's connect
//! proxy first (path, query and the forwarded headers such as `Cookie`), which names the
//! user or refuses: `error` → HTTP 403, `disconnect` → 401, no answer → 503, all before the
//! 101.
//!
//! In a room whose namespace has `proxy_publish` (with `[proxy.publish]` set), every message
//! goes to the backend's publish proxy first, in order, one at a time per connection; only
//! what it accepts is published (its `data`, when it rewrites the message). Raw frames
//! carry nothing but the application's data, so a refusal is told with the close code: the
//! message is dropped and the connection closed with `error` → 1008 and the backend's
//! message, `disconnect` → the backend's code and reason, no answer within the timeout →
//! 1013 "try again later".
//!
//! Server-side subscribe/unsubscribe requests do not apply: a raw connection is exactly one
//! room, fixed by its path, and its frames carry no channel name.
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use switchboard_core::{
    CloseReason, ConnHandle, ConnInfo, Control, Delivery, HubError, Node, NodeError, Outbox,
    Payload, PublishOptions, SubscribeOptions,
};
use switchboard_protocols::raw;
use switchboard_websocket::{CloseCode, Message};
use tokio::sync::mpsc;

use crate::conn::crash;
use crate::conn::driver::{Driver, Ending, Out};
use crate::conn::runtime::{self, Identity, WsTransport};
use crate::conn::stats::Counter;
use crate::proxy::{Answer, Forwarded, Kind, Proxy, ProxyRequest};
use crate::server::MessageHook;
use crate::state::Shared;
use crate::transport::http::text;
use crate::transport::upgrade::{self, query_flag_is_false};
use crate::transport::{Endpoint, RequestCtx, ResponseFuture, Route};

/// Messages a connection may have waiting for its publisher task (shared broker only).
const PUBLISH_QUEUE: usize = 256;
/// Most messages of one connection published per broker round trip.
const PUBLISH_BATCH: usize = 64;
/// Most deliveries taken from the outbox per step.
const BATCH: usize = 64;

/// The room used for `/`.
pub const DEFAULT_ROOM: &str = "lobby";

/// The raw room a WebSocket path joins: the path without its leading `/`, `lobby` for `/`.
pub fn room_for_path(path: &str) -> String {
    let name = path.trim_start_matches('/');
    if name.is_empty() {
        DEFAULT_ROOM.to_string()
    } else {
        name.to_string()
    }
}

/// The raw-rooms endpoint and what its connections share.
pub(crate) struct RawRooms {
    /// Sent to every connection first.
    welcome: Option<Message>,
    /// The embedder's hook, run for every message before it is published.
    on_message: Option<MessageHook>,
}

impl RawRooms {
    /// The endpoint, with the welcome message and the embedder's hook.
    pub(crate) fn new(welcome: Option<String>, on_message: Option<MessageHook>) -> Self {
        RawRooms {
            welcome: welcome.map(Message::text),
            on_message,
        }
    }
}

impl Endpoint for Arc<RawRooms> {
    fn route(&self) -> Route {
        Route::AnyUpgrade
    }

    fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture {
        Box::pin(upgrade_into_room(Arc::clone(self), req, ctx))
    }
}

/// Asks the connect proxy about a raw upgrade request: the user it names, or the refusal
/// to answer with.
async fn connect_by_proxy(
    shared: &Shared,
    req: &Request<Incoming>,
) -> Result<String, http::Response<crate::transport::http::Body>> {
    let forwarded = shared.proxy.forwarded(req.headers());
    let mut preq = ProxyRequest::new(raw::PROTOCOL, "websocket", String::new());
    preq.meta = Some(serde_json::json!({
        "path": req.uri().path(),
        "query": req.uri().query().unwrap_or(""),
    }));
    match shared.proxy.call(Kind::Connect, &forwarded, &preq).await {
        Ok(Answer::Ok(r)) => Ok(r.user.unwrap_or_default()),
        Ok(Answer::Error(e)) => Err(refusal(StatusCode::FORBIDDEN, e.message)),
        Ok(Answer::Disconnect(d)) => Err(refusal(StatusCode::UNAUTHORIZED, d.reason)),
        Err(_) => Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "authentication backend unavailable",
        )),
    }
}

/// A plain-text refusal with the backend's message.
fn refusal(status: StatusCode, message: String) -> http::Response<crate::transport::http::Body> {
    let mut r = http::Response::new(crate::transport::http::Body::new(bytes::Bytes::from(
        message,
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Answers an upgrade request for the room its path names.
async fn upgrade_into_room(
    rooms: Arc<RawRooms>,
    mut req: Request<Incoming>,
    ctx: RequestCtx,
) -> http::Response<crate::transport::http::Body> {
    let RequestCtx {
        shared,
        peer,
        token,
    } = ctx;
    let room = room_for_path(req.uri().path());
    let admitted = match upgrade::admit(&req, &shared, peer) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
    // Who the client is, when it says: a connection token (`?token=` or `Authorization:
    // Bearer`), checked like a Centrifugo client's. Without one the connection is anonymous,
    // as raw rooms always were; with a bad one it is refused before the 101.
    let mut info = ConnInfo::new(peer.to_string(), raw::PROTOCOL);
    if let Some(jwt) = upgrade::bearer_token(&req) {
        match shared.verifier.verify_connection_token(&jwt) {
            Ok(claims) if !claims.sub.is_empty() => info = info.with_user(claims.sub),
            Ok(_) => {}
            Err(e) => {
                shared.counters.bump(Counter::RejectedBadHandshake);
                tracing::info!(%peer, %room, "upgrade refused: token rejected: {e}");
                return text(StatusCode::UNAUTHORIZED, "invalid token");
            }
        }
    }
    // Without a token, the backend's connect proxy (when configured) decides who the client
    // is from the upgrade request (path, query, forwarded headers such as `Cookie`), before
    // the 101: `error` → 403, `disconnect` → 401, no answer → 503.
    if info.user.is_none() && shared.proxy.enabled(Kind::Connect) {
        match connect_by_proxy(&shared, &req).await {
            Ok(user) => {
                if !user.is_empty() {
                    info = info.with_user(user);
                }
            }
            Err(response) => {
                shared.counters.bump(Counter::RejectedBadHandshake);
                tracing::info!(%peer, %room, status = %response.status(), "upgrade refused by the connect proxy");
                return response;
            }
        }
    }
    let (handle, outbox) = match shared.hub.register(info) {
        Ok(pair) => pair,
        Err(e @ HubError::TooManyUserConnections { .. }) => {
            shared.counters.bump(Counter::RejectedUserConnections);
            tracing::info!(%peer, "upgrade refused: {e}");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections of this user",
            );
        }
        Err(e) => {
            // Only reachable when an embedder supplied a hub with its own connection limit.
            shared.counters.bump(Counter::RejectedMaxConnections);
            tracing::info!(%peer, "upgrade refused by the hub: {e}");
            return text(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
        }
    };
    // Join before answering 101: once the client sees its connection open it is a member,
    // so a message sent right after `open` by anyone in the room reaches it.
    let joined = match shared
        .node
        .subscribe(&handle, &room, SubscribeOptions::default())
        .await
    {
        Ok(_) => true,
        Err(NodeError::Hub(e @ (HubError::InvalidChannel | HubError::UnknownNamespace(_)))) => {
            // The path itself is not a usable room name: nothing to upgrade to.
            shared.counters.bump(Counter::RejectedBadHandshake);
            tracing::info!(%peer, %room, "upgrade refused: {e}");
            return text(StatusCode::BAD_REQUEST, "invalid room name");
        }
        Err(e) if e.is_temporary() => {
            // With a shared broker that cannot be reached, the member would miss what
            // other nodes publish: refuse now, the client retries.
            tracing::info!(%peer, %room, "upgrade refused: {e}");
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable");
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        Err(e) => {
            shared.counters.bump(Counter::RejectedRoomFull);
            tracing::info!(%peer, %room, "join refused: {e}");
            false
        }
    };
    let check = (shared.proxy.enabled(Kind::Publish)
        && shared
            .config
            .channel
            .options(&room)
            .is_ok_and(|o| o.proxy_publish))
    .then(|| PublishCheck {
        proxy: Arc::clone(&shared.proxy),
        forwarded: shared.proxy.forwarded(req.headers()),
        user: handle.info().user.clone().unwrap_or_default(),
    });
    let echo = !query_flag_is_false(req.uri().query(), "echo");
    let room: Arc<str> = room.into();
    let id = handle.id();
    let opts = if echo {
        PublishOptions::from_conn(id)
    } else {
        PublishOptions::except_sender(id)
    };
    let node = shared.node.clone();
    let limits = upgrade::limits(&shared);
    let counters = Arc::clone(&shared.counters);
    let timeout = shared.config.handshake_timeout;
    let max = shared.config.max_message_size;
    admitted.accept(&mut req, &shared, peer, timeout, max, move |ws, slot| {
        let mut driver = RawDriver::new(rooms, node, handle, outbox, room, opts, joined);
        driver.check = check.map(Box::new);
        let who = Identity {
            peer,
            id,
            protocol: raw::PROTOCOL,
        };
        runtime::spawn(
            WsTransport::new(ws),
            driver,
            limits,
            who,
            counters,
            token,
            Some(slot),
        );
    })
}

/// What a connection in a `proxy_publish` room needs to ask the publish proxy.
struct PublishCheck {
    proxy: Arc<Proxy>,
    forwarded: Forwarded,
    user: String,
}

/// How a connection whose message the publish proxy did not accept is closed.
type Refusal = (u16, Cow<'static, str>);

/// Why the driver's event source stopped: the hub closed the outbox, or the publish proxy
/// did not accept a message.
pub(crate) enum Stop {
    /// The hub closed the outbox, for this reason.
    Hub(CloseReason),
    /// The publish proxy did not accept a message: close like this.
    Refused(Refusal),
}

/// A message waiting for room in the publisher task's queue.
type Waiting = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One raw-room connection's state machine.
pub(crate) struct RawDriver {
    rooms: Arc<RawRooms>,
    node: Node,
    /// The connection's place in the hub, held for its life: dropping it leaves the room.
    handle: ConnHandle,
    outbox: Outbox,
    room: Arc<str>,
    /// Whether joining the room succeeded (it was full otherwise).
    joined: bool,
    /// Who receives this connection's messages (the sender too, unless `?echo=false`).
    opts: PublishOptions,
    /// With a shared broker: the connection's publisher task (see [`publish_in_order`]).
    publisher: Option<mpsc::Sender<Payload>>,
    /// With a shared broker, a message waiting for room in the publisher's queue; reading
    /// pauses meanwhile (back-pressure on a client that publishes faster than the broker
    /// takes).
    waiting: Option<Waiting>,
    /// Grows with the first batch; an idle connection that never received holds none.
    batch: Vec<Delivery>,
    /// In a `proxy_publish` room: how to ask the backend (taken when the checking task
    /// starts).
    check: Option<Box<PublishCheck>>,
    /// In a `proxy_publish` room: the checking task's verdict when it refused a message.
    refused: Option<tokio::sync::oneshot::Receiver<Refusal>>,
}

impl RawDriver {
    fn new(
        rooms: Arc<RawRooms>,
        node: Node,
        handle: ConnHandle,
        outbox: Outbox,
        room: Arc<str>,
        opts: PublishOptions,
        joined: bool,
    ) -> RawDriver {
        RawDriver {
            rooms,
            node,
            handle,
            outbox,
            room,
            joined,
            opts,
            publisher: None,
            waiting: None,
            batch: Vec::new(),
            check: None,
            refused: None,
        }
    }

    fn handle_message(&mut self, msg: Message) -> Result<(), Ending> {
        if let Some(hook) = &self.rooms.on_message {
            if let Err(p) = crash::call(|| hook(&self.room, &msg)) {
                return Err(Ending::Panic(format!("in the message hook: {}", p.0)));
            }
        }
        // The runtime looks at the outbox right after this: a delivery of this very message
        // to ourselves need not wake this running task.
        self.outbox.forget_waker();
        if let Some(full) = raw::decode(&msg).and_then(|p| self.publish(p)) {
            self.waiting = self.publisher.clone().map(|tx| publish_when_room(tx, full));
        }
        Ok(())
    }

    /// Publishes one message of the room without waiting. One node: the hub's synchronous
    /// path. With a shared broker: handed to the connection's publisher task; when that task
    /// is [`PUBLISH_QUEUE`] messages behind, the payload is given back for
    /// [`publish_when_room`].
    fn publish(&self, payload: Payload) -> Option<Payload> {
        match &self.publisher {
            Some(tx) => match tx.try_send(payload) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(payload)) => Some(payload),
                // The publisher task is gone only when the connection is ending.
                Err(mpsc::error::TrySendError::Closed(_)) => None,
            },
            None => {
                self.node.publish_now(&self.room, payload, self.opts, None);
                None
            }
        }
    }

    /// What an event from [`Driver::poll_event`] comes to; never waits.
    fn handle_event(&mut self, event: Result<(), Stop>, out: &mut Out) -> Result<(), Ending> {
        match event {
            Ok(()) => self.frame_deliveries(out),
            Err(Stop::Hub(reason)) => Err(Ending::Hub(reason)),
            Err(Stop::Refused((code, reason))) => Err(Ending::Close(code, reason)),
        }
    }

    fn frame_deliveries(&mut self, out: &mut Out) -> Result<(), Ending> {
        let mut ending = Ok(());
        for delivery in self.batch.drain(..) {
            match delivery {
                Delivery::Publication(p) => {
                    out.published(&p);
                    out.prepared(raw::encode(&p));
                }
                Delivery::Direct(payload) => out.message(raw::to_message(&payload)),
                Delivery::Control(c) => {
                    if let Control::MissedPublications(channel) = &*c {
                        tracing::warn!(room = %self.room, %channel, "missed publications: closing (4500)");
                        ending = Err(Ending::Hub(CloseReason::MissedPublications));
                        break;
                    }
                }
                // Raw rooms have no join/leave events.
                Delivery::Join(_) | Delivery::Leave(_) => {}
            }
        }
        self.batch.clear();
        if self.batch.capacity() > 8 {
            // Do not keep a burst's batch capacity on a connection that goes idle.
            self.batch = Vec::new();
        }
        ending
    }
}

impl Driver for RawDriver {
    type Event = Result<(), Stop>;

    fn open(&mut self, out: &mut Out) -> Result<(), Ending> {
        if !self.joined {
            return Err(Ending::Close(
                CloseCode::POLICY.0,
                Cow::Borrowed("room full"),
            ));
        }
        // The welcome goes out before anything from the outbox.
        if let Some(welcome) = &self.rooms.welcome {
            out.message(welcome.clone());
        }
        if let Some(check) = self.check.take() {
            // Every message waits for the backend: the checking task takes the place of
            // the publisher task (same queue, same back-pressure), in both broker modes.
            let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
            let (verdict, refused) = tokio::sync::oneshot::channel();
            tokio::spawn(check_and_publish(
                *check,
                self.node.clone(),
                Arc::clone(&self.room),
                self.handle.id().to_string(),
                self.opts,
                rx,
                verdict,
            ));
            self.publisher = Some(tx);
            self.refused = Some(refused);
        } else if self.node.is_shared() {
            let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
            tokio::spawn(publish_in_order(
                self.node.clone(),
                Arc::clone(&self.room),
                self.opts,
                rx,
            ));
            self.publisher = Some(tx);
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        msg: Message,
        _out: &mut Out,
    ) -> impl Future<Output = Result<(), Ending>> + Send {
        std::future::ready(self.handle_message(msg))
    }

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(w) = &mut self.waiting {
            std::task::ready!(w.as_mut().poll(cx));
            self.waiting = None;
        }
        Poll::Ready(())
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Self::Event> {
        if let Some(refused) = &mut self.refused {
            match Pin::new(refused).poll(cx) {
                Poll::Ready(Ok(refusal)) => return Poll::Ready(Err(Stop::Refused(refusal))),
                // The checking task ended without a refusal: the connection is ending.
                Poll::Ready(Err(_)) => self.refused = None,
                Poll::Pending => {}
            }
        }
        self.outbox
            .poll_recv_batch(cx, &mut self.batch, BATCH)
            .map(|r| r.map(|_| ()).map_err(|closed| Stop::Hub(closed.reason)))
    }

    fn on_event(
        &mut self,
        event: Self::Event,
        out: &mut Out,
    ) -> impl Future<Output = Result<(), Ending>> + Send {
        std::future::ready(self.handle_event(event, out))
    }

    fn on_event_now(
        &mut self,
        event: Self::Event,
        out: &mut Out,
    ) -> Result<Result<(), Ending>, Self::Event> {
        Ok(self.handle_event(event, out))
    }

    fn hub_verdict(&self) -> Option<CloseReason> {
        self.outbox.close_reason()
    }

    fn close_frame(&mut self, ending: &Ending) -> Option<(CloseCode, Cow<'static, str>)> {
        match ending {
            Ending::Shutdown => Some((CloseCode::GOING_AWAY, Cow::Borrowed("going away"))),
            Ending::Hub(CloseReason::SlowConsumer) => {
                Some((CloseCode::POLICY, Cow::Borrowed("slow consumer")))
            }
            Ending::Hub(reason) => Some((
                CloseCode(reason.close_code()),
                Cow::Borrowed(reason.close_text()),
            )),
            Ending::Panic(_) => Some((CloseCode::INTERNAL_ERROR, Cow::Borrowed("internal error"))),
            Ending::Close(code, reason) => Some((CloseCode(*code), reason.clone())),
            Ending::Flood => Some((CloseCode::POLICY, Cow::Borrowed("message rate exceeded"))),
            Ending::PeerClosed(_)
            | Ending::Lost
            | Ending::ReadError
            | Ending::Dead
            | Ending::Stalled
            | Ending::WriteFailed => None,
        }
    }

    fn finish(self, ending: &Ending) -> impl Future<Output = ()> + Send {
        // Leaving the room and the hub happens here, when the handle drops.
        tracing::debug!(id = self.handle.id(), room = %self.room, ?ending, "left the room");
        drop(self);
        std::future::ready(())
    }
}

/// The slow half of [`RawDriver::publish`]: wait for room in the publisher task's queue.
/// Boxed, and only then, so the wait does not widen every connection's state.
fn publish_when_room(tx: mpsc::Sender<Payload>, payload: Payload) -> Waiting {
    Box::pin(async move {
        // Fails only once the publisher task is gone, i.e. the connection is ending.
        let _ = tx.send(payload).await;
    })
}

/// A connection's messages in a `proxy_publish` room: each goes to the publish proxy, in
/// order, and is published (as the backend's `data` when it rewrote it) only once accepted.
/// The first message not accepted ends the task with the close to send (see the module
/// documentation); what the client sent after it is dropped with the connection.
async fn check_and_publish(
    check: PublishCheck,
    node: Node,
    room: Arc<str>,
    client: String,
    opts: PublishOptions,
    mut rx: mpsc::Receiver<Payload>,
    verdict: tokio::sync::oneshot::Sender<Refusal>,
) {
    while let Some(payload) = rx.recv().await {
        let mut req =
            ProxyRequest::new(raw::PROTOCOL, "websocket", client.clone()).with_payload(&payload);
        req.user = check.user.clone();
        req.channel = room.to_string();
        let refusal = match check
            .proxy
            .call(Kind::Publish, &check.forwarded, &req)
            .await
        {
            Ok(Answer::Ok(r)) => {
                let payload = r.data_payload().unwrap_or(payload);
                if let Err(e) = node.publish(&room, payload, opts, None).await {
                    tracing::warn!(%room, "message accepted by the publish proxy not published: {e}");
                }
                continue;
            }
            Ok(Answer::Error(e)) => (CloseCode::POLICY.0, close_reason(e.message)),
            // A code a close frame may not carry becomes 1008.
            Ok(Answer::Disconnect(d)) if CloseCode(d.code).is_valid_on_wire() => {
                (d.code, close_reason(d.reason))
            }
            Ok(Answer::Disconnect(d)) => (CloseCode::POLICY.0, close_reason(d.reason)),
            Err(f) => (
                TRY_AGAIN_LATER,
                close_reason(format!("try again later: {f}")),
            ),
        };
        tracing::info!(%room, %client, code = refusal.0, "raw message not accepted by the publish proxy: closing");
        let _ = verdict.send(refusal);
        return;
    }
}

/// Close code 1013, "try again later" (RFC 6455's registry): the backend did not answer.
const TRY_AGAIN_LATER: u16 = 1013;

/// A close reason fitting the 123 bytes a close frame allows, cut at a character boundary.
fn close_reason(mut text: String) -> Cow<'static, str> {
    if text.len() > 123 {
        let mut end = 123;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    Cow::Owned(text)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::driver::OutFrame;
    use switchboard_core::{Hub, HubLimits, MemoryBroker, NodeInfo};

    fn node() -> Node {
        let hub = Hub::new(HubLimits::default());
        let broker = MemoryBroker::new(hub.clone(), NodeInfo::default());
        Node::with_broker(hub, Arc::new(broker))
    }

    async fn driver(node: &Node, room: &str, echo: bool, welcome: Option<&str>) -> RawDriver {
        let (handle, outbox) = node
            .hub()
            .register(ConnInfo::new("test", raw::PROTOCOL))
            .unwrap();
        node.subscribe(&handle, room, SubscribeOptions::default())
            .await
            .unwrap();
        let id = handle.id();
        let opts = if echo {
            PublishOptions::from_conn(id)
        } else {
            PublishOptions::except_sender(id)
        };
        let rooms = Arc::new(RawRooms::new(welcome.map(str::to_string), None));
        RawDriver::new(rooms, node.clone(), handle, outbox, room.into(), opts, true)
    }

    /// Takes what is ready from the driver's outbox and frames it.
    fn pump(d: &mut RawDriver, out: &mut Out) -> Result<(), Ending> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match d.poll_event(&mut cx) {
            Poll::Ready(Ok(())) => d.frame_deliveries(out),
            Poll::Ready(Err(Stop::Hub(reason))) => Err(Ending::Hub(reason)),
            Poll::Ready(Err(Stop::Refused((code, reason)))) => Err(Ending::Close(code, reason)),
            Poll::Pending => Ok(()),
        }
    }

    fn texts(out: &mut Out) -> Vec<String> {
        out.drain()
            .map(|f| match f {
                OutFrame::Message(Message::Text(t)) => String::from_utf8_lossy(&t).into_owned(),
                OutFrame::Prepared(p) => String::from_utf8_lossy(p.payload()).into_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_message_in_reaches_every_member_as_one_shared_frame() {
        let node = node();
        let mut alice = driver(&node, "r", true, Some("hi")).await;
        let mut bob = driver(&node, "r", true, None).await;
        let (mut a_out, mut b_out) = (Out::default(), Out::default());
        alice.open(&mut a_out).unwrap();
        bob.open(&mut b_out).unwrap();
        assert_eq!(texts(&mut a_out), ["hi"], "the welcome goes first");
        alice
            .on_message(Message::text("hello"), &mut a_out)
            .await
            .unwrap();
        pump(&mut alice, &mut a_out).unwrap();
        pump(&mut bob, &mut b_out).unwrap();
        // Each delivery is marked once for the latency histogram, beside its frame.
        assert_eq!((a_out.published_marks(), b_out.published_marks()), (1, 1));
        let (a, b) = (a_out.frames().to_vec(), b_out.frames().to_vec());
        assert_eq!(texts(&mut a_out), ["hello"], "echo to the sender");
        assert_eq!(texts(&mut b_out), ["hello"]);
        match (&a[0], &b[0]) {
            (OutFrame::Prepared(x), OutFrame::Prepared(y)) => {
                assert!(switchboard_websocket::PreparedMessage::ptr_eq(x, y))
            }
            other => panic!("expected shared frames, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn echo_off_skips_the_sender() {
        let node = node();
        let mut alice = driver(&node, "r", false, None).await;
        let mut bob = driver(&node, "r", true, None).await;
        let (mut a_out, mut b_out) = (Out::default(), Out::default());
        alice
            .on_message(Message::binary(vec![1u8, 2]), &mut a_out)
            .await
            .unwrap();
        pump(&mut alice, &mut a_out).unwrap();
        pump(&mut bob, &mut b_out).unwrap();
        assert!(a_out.is_empty());
        assert_eq!(b_out.len(), 1);
    }

    #[tokio::test]
    async fn endings_map_to_close_codes() {
        let node = node();
        let mut d = driver(&node, "r", true, None).await;
        let code = |d: &mut RawDriver, e: Ending| d.close_frame(&e).map(|(c, r)| (c.0, r));
        assert_eq!(code(&mut d, Ending::Shutdown).unwrap().0, 1001);
        assert_eq!(
            code(&mut d, Ending::Hub(CloseReason::SlowConsumer)).unwrap(),
            (1008, "slow consumer".into())
        );
        assert_eq!(
            code(&mut d, Ending::Hub(CloseReason::MissedPublications))
                .unwrap()
                .0,
            4500
        );
        assert_eq!(code(&mut d, Ending::Panic("x".into())).unwrap().0, 1011);
        assert_eq!(
            code(&mut d, Ending::Flood).unwrap(),
            (1008, "message rate exceeded".into())
        );
        assert_eq!(
            code(&mut d, Ending::Hub(CloseReason::Restart)).unwrap(),
            (1012, "service restart".into())
        );
        assert_eq!(code(&mut d, Ending::Dead), None);
        assert_eq!(code(&mut d, Ending::Stalled), None);
        d.joined = false;
        let mut out = Out::default();
        let refused = d.open(&mut out).unwrap_err();
        assert_eq!(code(&mut d, refused).unwrap(), (1008, "room full".into()));
    }

    #[tokio::test]
    async fn a_gap_report_closes_after_what_was_queued_before_it() {
        let node = node();
        let mut d = driver(&node, "r", true, None).await;
        node.hub()
            .publish("r", Payload::text("before"), Default::default());
        assert!(node
            .hub()
            .send_control(d.handle.id(), Control::MissedPublications("r".into())));
        node.hub()
            .publish("r", Payload::text("after"), Default::default());
        let mut out = Out::default();
        let ending = pump(&mut d, &mut out).unwrap_err();
        assert_eq!(ending, Ending::Hub(CloseReason::MissedPublications));
        assert_eq!(texts(&mut out), ["before"]);
    }

    #[tokio::test]
    async fn a_panicking_hook_ends_with_a_panic() {
        let node = node();
        let mut d = driver(&node, "r", true, None).await;
        d.rooms = Arc::new(RawRooms::new(
            None,
            Some(Arc::new(|_: &str, _: &Message| panic!("hook bug"))),
        ));
        let mut out = Out::default();
        let r = d.on_message(Message::text("x"), &mut out).await;
        assert!(matches!(r, Err(Ending::Panic(m)) if m.contains("hook bug")));
    }

    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let node = node();
        let d = driver(&node, "r", true, None).await;
        let sizes = crate::conn::runtime::ws_connection_sizes(d).await;
        // A connection keeps its state in one box for its whole life (what a parked connection
        // keeps), and while it has work a task whose future holds the loop's state, in a cell
        // tokio rounds up to 128 B (docs/benchmarks.md, idle memory). A field or an await point
        // that widens either costs every connection.
        assert!(sizes.parked <= 904, "the raw parked state grew: {sizes:?}");
        assert!(
            sizes.task <= 296,
            "the raw connection future grew: {sizes:?}"
        );
    }

    #[test]
    fn rooms_from_paths() {
        assert_eq!(room_for_path("/"), "lobby");
        assert_eq!(room_for_path("/room1"), "room1");
        assert_eq!(room_for_path("/a/b"), "a/b");
    }
}
