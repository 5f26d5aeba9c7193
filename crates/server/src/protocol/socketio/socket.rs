//! The Socket.IO layer of one Engine.IO session: its sockets (one per namespace joined),
//! CONNECT with `auth`, events and acks, binary attachments, the reserved events, and
//! connection state recovery.
//!
//! Each socket is a connection of its own in the hub (its own subscriptions and outbox),
//! so the same channel joined in two namespaces is delivered once to each. The driver
//! polls all of their outboxes at once ([`Sockets::poll_delivery`]).
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use serde_json::{json, Value};
use switchboard_core::{
    CloseReason, ConnHandle, ConnId, ConnInfo, Control, Delivery, Outbox, OutboxClosed,
    Publication, StreamPosition,
};
use switchboard_protocols::socketio::mapping::{
    encode_broadcast, namespace_channel, offset_of, publish_payload,
};
use switchboard_protocols::socketio::{
    encode_publication, is_namespace_channel, Decoder, EncodedEvent, Packet, PacketType, PROTOCOL,
};

use switchboard_websocket::Message;

use super::channels::{self, ChanError};
use super::engine::random_id;
use super::recovery::Ring;
use super::SocketIo;
use crate::conn::driver::Out;
use crate::proxy::{Answer, Failure, Forwarded, Kind, ProxyRequest};
use crate::state::Shared;
use tokio::sync::mpsc;

/// Most outbox deliveries taken at once.
const BATCH: usize = 64;
/// Longest namespace name accepted.
const MAX_NSP_LEN: usize = 200;

/// What handling a packet asks of the engine.
pub(crate) enum Step {
    /// Carry on.
    Continue,
    /// The client broke the protocol (for this reason): end the session.
    ProtocolError(&'static str),
    /// A socket's outbox overflowed: end the session.
    SlowConsumer,
    /// The hub is closing every connection (server shutdown): end the session so the
    /// client reconnects (to another node, or to this one once it is back).
    Shutdown,
    /// A socket's channel lost publications the node could not deliver: end the session
    /// without keeping its sockets, so the client reconnects and learns `recovered: false`.
    MissedPublications,
    /// The node is draining: end the session with WebSocket close 1012, which
    /// socket.io-client answers by reconnecting (a DISCONNECT packet would stop it).
    Restart,
}

/// Server-side subscribe / unsubscribe requests taken from the outboxes, by socket (kept
/// only while they are applied, not in the session).
pub(crate) type Controls = Vec<(ConnId, Arc<Control>)>;

/// One socket: a namespace joined by the client.
///
/// Every idle socket pays for each byte here (and the session's list of sockets is sized
/// for one): what only some sockets need is boxed or left unallocated until needed.
pub(crate) struct NsSocket {
    /// The namespace, `/` by default (not allocated then).
    pub(crate) nsp: Cow<'static, str>,
    /// With recovery on: the socket's ids and the events last sent.
    pub(crate) recovery: Option<Box<Recovery>>,
    handle: ConnHandle,
    /// Polled by the session's driver; kept with the socket for recovery (publications
    /// keep being queued meanwhile).
    outbox: Outbox,
    exclude_sender: bool,
    /// Per channel, the position its join reported when it had one (the channel keeps
    /// history): queued publications at or below it were also part of the join's snapshot
    /// and are skipped (with a shared broker they can be queued live during the join; on
    /// one node never). An entry goes once a publication past it arrives.
    live_from: Vec<(Box<str>, StreamPosition)>,
    /// Unix time at which the connection token expires; the socket is then disconnected.
    expires_at: Option<u64>,
}

/// What a socket keeps for connection state recovery (without recovery, its id is not
/// needed once told to the client).
pub(crate) struct Recovery {
    /// The socket id told to the client, told again when the socket is recovered.
    sid: Box<str>,
    /// The private session id told to the client.
    pub(crate) pid: Box<str>,
    /// The events last sent, with their offsets.
    ring: Ring,
}

/// A namespace name as kept by a socket: the default one is not allocated.
fn nsp_name(nsp: String) -> Cow<'static, str> {
    if nsp == "/" {
        Cow::Borrowed("/")
    } else {
        Cow::Owned(nsp)
    }
}

impl NsSocket {
    /// The private session id, with recovery on.
    pub(crate) fn pid(&self) -> Option<&str> {
        self.recovery.as_deref().map(|r| &*r.pid)
    }

    /// Records where live delivery of `channel` starts after a join that reported
    /// `position`; a position without an offset (no history) skips nothing.
    fn joined(&mut self, channel: &str, position: StreamPosition) {
        let at = self.live_from.iter().position(|(c, _)| **c == *channel);
        match (at, position.offset > 0) {
            (Some(i), true) => self.live_from[i].1 = position,
            (Some(i), false) => {
                self.live_from.swap_remove(i);
            }
            (None, true) => self.live_from.push((channel.into(), position)),
            (None, false) => {}
        }
        if self.live_from.is_empty() {
            self.live_from = Vec::new();
        }
    }

    /// Forgets where live delivery of `channel` starts (it was left).
    fn left(&mut self, channel: &str) {
        self.joined(channel, StreamPosition::default());
    }

    /// Whether publication `p` was part of its channel's join snapshot (to be skipped).
    /// The first publication past the join's position ends the check for its channel.
    fn already_sent(&mut self, p: &Publication) -> bool {
        let Some(i) = self.live_from.iter().position(|(c, _)| **c == *p.channel) else {
            return false;
        };
        let pos = &self.live_from[i].1;
        if p.epoch == pos.epoch && p.offset <= pos.offset {
            return true;
        }
        self.left(&p.channel);
        false
    }
}

/// The sockets of one session.
pub(crate) struct Sockets {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// The decoder of a binary packet waiting for its attachments; none otherwise (each
    /// text packet gets a fresh one, so an idle session keeps none).
    pending: Option<Box<Decoder>>,
    /// Attachment bytes of the pending packet reserved in the server-wide total.
    reserved: usize,
    list: Vec<NsSocket>,
    /// Whether a namespace was ever joined (for the connect timeout).
    connected_once: bool,
    /// The endpoint: where sockets are kept for recovery, and polling sessions are
    /// forgotten when they end.
    io: Arc<SocketIo>,
    /// The socket whose outbox is polled first next time (round robin, so one busy
    /// namespace does not hold up the others).
    next: u32,
    /// Calls to the backend's proxy; `None` when no proxy kind is configured (boxed: most
    /// servers have none).
    proxy: Option<Box<SioProxy>>,
}

/// The index [`Sockets::poll_delivery`] reports for "rpc answers are ready".
pub(crate) const PROXY_ANSWERS: usize = usize::MAX;
/// Most rpc calls one session may have in flight; more are acknowledged with an error.
const MAX_CALLS_IN_FLIGHT: usize = 64;

/// A finished proxy call of a session, with what the backend said.
enum Done {
    /// An rpc: the namespace and ack id to answer.
    Rpc(String, u64, Result<Answer, Failure>),
    /// A broadcast event held for the publish proxy: it goes out only when accepted.
    Broadcast(Box<HeldBroadcast>, Result<Answer, Failure>),
}

/// A broadcast event waiting for the publish proxy's verdict.
struct HeldBroadcast {
    nsp: String,
    /// The client's ack id, if it asked for one.
    id: Option<u64>,
    /// The event name followed by its arguments, as on the wire.
    event: Vec<Value>,
    attachments: Vec<Bytes>,
}

/// One session's calls to the backend: the forwarded headers of its first request, and
/// rpc answers coming back from their tasks (so the session goes on meanwhile).
pub(crate) struct SioProxy {
    forwarded: Forwarded,
    tx: mpsc::UnboundedSender<Done>,
    rx: mpsc::UnboundedReceiver<Done>,
    ready: Vec<Done>,
    in_flight: usize,
}

/// Queues an event shared with other sockets: its frames are made once for all of them.
fn push_event(out: &mut Out, ev: &EncodedEvent) {
    for m in ev.prepared() {
        out.prepared(m);
    }
}

/// The ack argument for a backend's refusal.
fn refusal_arg(answer: Answer) -> Value {
    match answer {
        Answer::Error(e) => json!({"error": e.message, "code": e.code}),
        Answer::Disconnect(d) => json!({"error": d.reason, "code": d.code}),
        Answer::Ok(_) => Value::Null,
    }
}

/// Queues a packet for this socket only.
fn push_packet(out: &mut Out, p: &Packet) {
    let ev = EncodedEvent::from_packet(p);
    out.message(Message::Text(ev.text));
    for a in ev.attachments {
        out.message(Message::Binary(a));
    }
}

impl Sockets {
    pub(crate) fn new(shared: Arc<Shared>, peer: SocketAddr, io: Arc<SocketIo>) -> Sockets {
        Sockets {
            shared,
            peer,
            pending: None,
            reserved: 0,
            list: Vec::new(),
            connected_once: false,
            io,
            next: 0,
            proxy: None,
        }
    }

    /// Lets the session call the backend's proxy with these forwarded headers.
    pub(crate) fn set_proxy(&mut self, forwarded: Forwarded) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.proxy = Some(Box::new(SioProxy {
            forwarded,
            tx,
            rx,
            ready: Vec::new(),
            in_flight: 0,
        }));
    }

    /// Handles every finished proxy call. An rpc is acknowledged: `[data]` on success,
    /// `[{"error": message, "code": code}]` on refusal, `[{"error": …, "temporary": true}]`
    /// when the backend did not answer. A held broadcast goes out when the publish proxy
    /// accepted it (with the backend's `data` as its arguments when it rewrote them); a
    /// refusal or no answer drops it, acknowledged with the same error shapes as an rpc
    /// when the client asked for an ack, logged either way.
    pub(crate) async fn push_answers(&mut self, out: &mut Out) {
        let Some(proxy) = self.proxy.as_mut() else {
            return;
        };
        let ready = std::mem::take(&mut proxy.ready);
        proxy.in_flight = proxy.in_flight.saturating_sub(ready.len());
        for done in ready {
            match done {
                Done::Rpc(nsp, id, result) => {
                    let arg = match result {
                        Ok(Answer::Ok(r)) => match r.data_payload() {
                            Some(p) => serde_json::from_slice(&p.data).unwrap_or(Value::Null),
                            None => Value::Null,
                        },
                        Ok(answer) => refusal_arg(answer),
                        Err(f) => json!({"error": f.to_string(), "temporary": true}),
                    };
                    push_packet(out, &Packet::ack(nsp, id, vec![arg], Vec::new()));
                }
                Done::Broadcast(held, result) => self.broadcast_held(*held, result, out).await,
            }
        }
    }

    /// Sends a held broadcast the publish proxy accepted, or drops it (see
    /// [`Self::push_answers`]).
    async fn broadcast_held(
        &mut self,
        held: HeldBroadcast,
        result: Result<Answer, Failure>,
        out: &mut Out,
    ) {
        let HeldBroadcast {
            nsp,
            id,
            mut event,
            attachments,
        } = held;
        let outcome = match result {
            Ok(Answer::Ok(r)) => {
                // A rewrite: an array replaces the arguments, any other value becomes the
                // only one.
                if let Some(p) = r.data_payload() {
                    if let Ok(v) = serde_json::from_slice::<Value>(&p.data) {
                        event.truncate(1);
                        match v {
                            Value::Array(a) => event.extend(a),
                            v => event.push(v),
                        }
                    }
                }
                match self.list.iter().find(|s| s.nsp == nsp) {
                    // The socket left its namespace while the backend was asked.
                    None => return,
                    Some(s) => {
                        let payload = encode_broadcast(&event, &attachments);
                        channels::broadcast(
                            &self.shared,
                            &s.handle,
                            &s.nsp,
                            payload,
                            s.exclude_sender,
                        )
                        .await
                        .map_err(|e| json!({"error": e.message()}))
                    }
                }
            }
            Ok(answer) => {
                tracing::info!(%nsp, peer = %self.peer, "socket.io: broadcast refused by the publish proxy");
                Err(refusal_arg(answer))
            }
            Err(f) => {
                tracing::info!(%nsp, peer = %self.peer, "socket.io: broadcast dropped, publish proxy failed: {f}");
                Err(json!({"error": f.to_string(), "temporary": true}))
            }
        };
        if let Some(id) = id {
            let args = match outcome {
                Ok(()) => Vec::new(),
                Err(e) => vec![e],
            };
            push_packet(out, &Packet::ack(nsp, id, args, Vec::new()));
        }
    }

    /// Whether broadcasts in namespace `nsp` go to the publish proxy first (the switch of
    /// the namespace its broadcast channel belongs to).
    fn proxies_broadcast(&self, nsp: &str) -> bool {
        self.proxy.is_some()
            && self.shared.proxy.enabled(Kind::Publish)
            && self
                .shared
                .config
                .channel
                .options(&namespace_channel(nsp))
                .is_ok_and(|o| o.proxy_publish)
    }

    /// Holds a broadcast event of socket `i` for the publish proxy: the call runs on its
    /// own task, the event goes out (or not) when the answer comes back.
    fn hold_broadcast(&mut self, i: usize, p: Packet, out: &mut Out) {
        let s = &self.list[i];
        let mut req = ProxyRequest::new(PROTOCOL, "websocket", s.handle.id().to_string());
        req.user = s.handle.info().user.clone().unwrap_or_default();
        req.channel = namespace_channel(&s.nsp);
        // The backend sees the arguments as `data` and the event name as `method`.
        req.method = p.event_name().unwrap_or_default().to_string();
        req.data = serde_json::value::to_raw_value(p.args()).ok();
        let event = match p.data {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        let Some(proxy) = self.proxy.as_mut() else {
            return;
        };
        if proxy.in_flight >= MAX_CALLS_IN_FLIGHT {
            tracing::info!(nsp = %p.nsp, "socket.io: broadcast dropped, too many proxy calls in flight");
            if let Some(id) = p.id {
                let arg = json!({"error": "too many requests", "temporary": true});
                push_packet(out, &Packet::ack(p.nsp, id, vec![arg], Vec::new()));
            }
            return;
        }
        proxy.in_flight += 1;
        let held = Box::new(HeldBroadcast {
            nsp: p.nsp,
            id: p.id,
            event,
            attachments: p.attachments,
        });
        let tx = proxy.tx.clone();
        let forwarded = proxy.forwarded.clone();
        let shared_proxy = Arc::clone(&self.shared.proxy);
        tokio::spawn(async move {
            let result = shared_proxy.call(Kind::Publish, &forwarded, &req).await;
            let _ = tx.send(Done::Broadcast(held, result));
        });
    }

    /// Asks the connect proxy about a CONNECT without a token: the user, connection info
    /// and channels it grants, or the message of the `connect_error` to send. Awaited in
    /// the step: the namespace has nothing to do before it is joined, and the kind's
    /// timeout bounds the wait.
    async fn connect_by_proxy(
        &self,
        nsp: &str,
        auth: &Value,
    ) -> Result<(String, Option<Bytes>, Vec<String>, Option<u64>), String> {
        let forwarded = self
            .proxy
            .as_ref()
            .map(|p| p.forwarded.clone())
            .unwrap_or_default();
        let mut req = ProxyRequest::new(PROTOCOL, "websocket", String::new());
        if !auth.is_null() {
            req.data = serde_json::value::to_raw_value(auth).ok();
        }
        req.meta = Some(json!({ "namespace": nsp }));
        match self
            .shared
            .proxy
            .call(Kind::Connect, &forwarded, &req)
            .await
        {
            Ok(Answer::Ok(r)) => {
                let info = r.info_bytes();
                let exp = r.expire_at.filter(|&at| at > 0);
                Ok((r.user.unwrap_or_default(), info, r.channels, exp))
            }
            Ok(Answer::Error(e)) => Err(e.message),
            Ok(Answer::Disconnect(d)) => Err(d.reason),
            Err(f) => Err(f.to_string()),
        }
    }

    /// Sends an event with an ack to the rpc proxy (method = event name, data = the
    /// arguments); the ack goes out when the answer comes back. False when there is no rpc
    /// proxy.
    fn rpc(&mut self, p: &Packet, out: &mut Out) -> bool {
        let (Some(id), Some(name)) = (p.id, p.event_name()) else {
            return false;
        };
        if !self.shared.proxy.enabled(Kind::Rpc) {
            return false;
        }
        let Some(proxy) = self.proxy.as_mut() else {
            return false;
        };
        if proxy.in_flight >= MAX_CALLS_IN_FLIGHT {
            let arg = json!({"error": "too many requests", "temporary": true});
            push_packet(out, &Packet::ack(p.nsp.clone(), id, vec![arg], Vec::new()));
            return true;
        }
        proxy.in_flight += 1;
        let mut req = ProxyRequest::new(PROTOCOL, "websocket", String::new());
        if let Some(s) = self.list.iter().find(|s| s.nsp == p.nsp) {
            req.client = s.handle.id().to_string();
            req.user = s.handle.info().user.clone().unwrap_or_default();
        }
        req.method = name.to_string();
        req.data = serde_json::value::to_raw_value(&p.args()).ok();
        let tx = proxy.tx.clone();
        let forwarded = proxy.forwarded.clone();
        let shared_proxy = Arc::clone(&self.shared.proxy);
        let nsp = p.nsp.clone();
        tokio::spawn(async move {
            let result = shared_proxy.call(Kind::Rpc, &forwarded, &req).await;
            let _ = tx.send(Done::Rpc(nsp, id, result));
        });
        true
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The client's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The endpoint the session belongs to.
    pub(crate) fn endpoint(&self) -> &SocketIo {
        &self.io
    }

    /// The decoder to feed the next message to: the pending packet's, or a fresh one.
    fn take_decoder(&mut self) -> Decoder {
        match self.pending.take() {
            Some(d) => *d,
            None => {
                let limits = &self.shared.config.socketio;
                Decoder::with_limits(limits.max_attachments, limits.max_attachment_bytes)
            }
        }
    }

    /// Keeps `decoder` if a binary packet waits in it for attachments.
    fn keep_decoder(&mut self, decoder: Decoder) {
        if decoder.is_waiting() {
            self.pending = Some(Box::new(decoder));
        }
    }

    /// The earliest token expiry among the sockets.
    pub(crate) fn next_expiry(&self) -> Option<u64> {
        self.list.iter().filter_map(|s| s.expires_at).min()
    }

    /// Disconnects the sockets whose token expired: the client gets DISCONNECT (its
    /// `disconnect` event with "io server disconnect", after which it does not reconnect by
    /// itself) and has to connect again with a fresh token.
    pub(crate) fn expire(&mut self, out: &mut Out) {
        let now = crate::auth::unix_now();
        self.list.retain(|s| {
            let expired = s.expires_at.is_some_and(|at| at < now);
            if expired {
                tracing::debug!(nsp = %s.nsp, "socket.io: connection token expired");
                push_packet(out, &Packet::new(PacketType::Disconnect, &*s.nsp));
            }
            !expired
        });
    }

    /// The hub connections of the sockets, in order.
    #[cfg(test)]
    pub(crate) fn conn_ids(&self) -> Vec<ConnId> {
        self.list.iter().map(|s| s.handle.id()).collect()
    }

    /// Whether the client ever joined a namespace in this session.
    pub(crate) fn ever_connected(&self) -> bool {
        self.connected_once
    }

    fn recovery(&self) -> bool {
        self.shared.config.socketio.recovery
    }

    /// Whether a socket's outbox has deliveries (moved into `batch`), or was closed: the
    /// socket's index and the outcome. Pending (with every outbox's waker stored) when
    /// none has; always when there is no socket.
    pub(crate) fn poll_delivery(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Delivery>,
    ) -> Poll<(usize, Result<usize, OutboxClosed>)> {
        if let Some(proxy) = self.proxy.as_mut() {
            while let Poll::Ready(Some(done)) = proxy.rx.poll_recv(cx) {
                proxy.ready.push(done);
            }
            if !proxy.ready.is_empty() {
                return Poll::Ready((PROXY_ANSWERS, Ok(0)));
            }
        }
        let n = self.list.len();
        for k in 0..n {
            let i = (self.next as usize + k) % n;
            if let Poll::Ready(r) = self.list[i].outbox.poll_recv_batch(cx, batch, BATCH) {
                self.next = (i + 1) as u32;
                return Poll::Ready((i, r));
            }
        }
        Poll::Pending
    }

    /// Why the hub closed one of the outboxes, if it did (slow consumer, shutdown).
    pub(crate) fn hub_verdict(&self) -> Option<CloseReason> {
        self.list.iter().find_map(|s| s.outbox.close_reason())
    }

    /// Turns the deliveries of socket `i` (`batch`, emptied) into frames. Server-side
    /// subscribe / unsubscribe requests among them go to `controls`, for
    /// [`Self::apply_controls`].
    pub(crate) fn on_delivery(
        &mut self,
        i: usize,
        batch: &mut Vec<Delivery>,
        r: Result<usize, OutboxClosed>,
        out: &mut Out,
        controls: &mut Controls,
    ) -> Step {
        if i == PROXY_ANSWERS {
            // Answered by the driver ([`Self::push_answers`]): it may publish.
            return Step::Continue;
        }
        let recovery = self.recovery();
        let Some(s) = self.list.get_mut(i) else {
            return Step::Continue;
        };
        if let Err(closed) = r {
            match closed.reason {
                CloseReason::SlowConsumer => return Step::SlowConsumer,
                CloseReason::Shutdown => return Step::Shutdown,
                CloseReason::MissedPublications => return Step::MissedPublications,
                CloseReason::Restart => return Step::Restart,
                _ => {}
            }
            // Closed by the server (e.g. the HTTP API's disconnect): the socket leaves its
            // namespace and the client is told so.
            let s = self.list.remove(i);
            push_packet(out, &Packet::new(PacketType::Disconnect, &*s.nsp));
            return Step::Continue;
        }
        let mut step = Step::Continue;
        for d in batch.drain(..) {
            match d {
                Delivery::Publication(p) => {
                    if s.already_sent(&p) {
                        continue;
                    }
                    let ev = encode_publication(&p, &s.nsp, recovery);
                    out.published(&p);
                    push_event(out, &ev);
                    if let Some(r) = s.recovery.as_deref_mut() {
                        r.ring.push(offset_of(&p), ev);
                    }
                }
                Delivery::Control(c) => match &*c {
                    Control::MissedPublications(channel) => {
                        tracing::warn!(peer = %self.peer, nsp = %s.nsp, %channel, "socket.io: missed publications, closing (4500)");
                        // What came before the report was framed; nothing after it is.
                        step = Step::MissedPublications;
                        break;
                    }
                    Control::Subscribe(_) | Control::Unsubscribe(_) => {
                        controls.push((s.handle.id(), c));
                    }
                },
                // Socket.IO has no join/leave events; direct messages are not addressed
                // to Socket.IO sockets.
                Delivery::Direct(_) | Delivery::Join(_) | Delivery::Leave(_) => {}
            }
        }
        batch.clear();
        if batch.capacity() > 2 * BATCH {
            // Do not keep a burst's capacity on a session that goes idle.
            *batch = Vec::new();
        }
        step
    }

    /// Applies the server-side subscribe / unsubscribe requests received (the HTTP API's
    /// subscribe by user): the socket joins or leaves the channel as if it had sent the
    /// event, without the permission check (the server asked). Socket.IO has no packet to
    /// tell the client.
    pub(crate) async fn apply_controls(&mut self, controls: Controls) {
        for (id, c) in controls {
            let Some(s) = self.list.iter_mut().find(|s| s.handle.id() == id) else {
                continue;
            };
            match &*c {
                Control::Subscribe(channel) => {
                    match channels::join_channel(&self.shared, &s.handle, channel).await {
                        Ok(position) => s.joined(channel, position),
                        Err(e) => {
                            tracing::debug!(nsp = %s.nsp, %channel, "socket.io: server-side subscribe failed: {e:?}")
                        }
                    }
                }
                Control::Unsubscribe(channel) => {
                    channels::unsubscribe(&self.shared, &s.handle, channel).await;
                    s.left(channel);
                }
                Control::MissedPublications(_) => {}
            }
        }
    }

    /// A text message (a Socket.IO packet, or the start of a binary one).
    pub(crate) async fn on_text(&mut self, t: &Bytes, out: &mut Out) -> Step {
        let Ok(s) = std::str::from_utf8(t) else {
            return Step::ProtocolError("text packet is not UTF-8");
        };
        let mut decoder = self.take_decoder();
        let decoded = decoder.text(s);
        self.keep_decoder(decoder);
        match decoded {
            Ok(Some(p)) => self.on_packet(p, out).await,
            Ok(None) => Step::Continue,
            Err(e) => {
                self.release_attachments();
                tracing::debug!(peer = %self.peer, "socket.io: bad packet: {e}");
                Step::ProtocolError(e.as_str())
            }
        }
    }

    /// A binary message: an attachment of the pending binary packet. Its bytes count
    /// against the server-wide bound until the packet is complete (or the session ends).
    pub(crate) async fn on_binary(&mut self, b: Bytes, out: &mut Out) -> Step {
        if self.pending.is_some() {
            let max = self.shared.config.socketio.max_attachment_bytes_total;
            if !self
                .shared
                .counters
                .try_reserve_attachment_bytes(b.len(), max)
            {
                self.pending = None;
                self.release_attachments();
                tracing::debug!(peer = %self.peer, "socket.io: server-wide attachment bytes exhausted");
                return Step::ProtocolError("too many attachment bytes buffered");
            }
            self.reserved = self.reserved.saturating_add(b.len());
        }
        let mut decoder = self.take_decoder();
        let decoded = decoder.binary(b);
        self.keep_decoder(decoder);
        match decoded {
            Ok(Some(p)) => {
                self.release_attachments();
                self.on_packet(p, out).await
            }
            Ok(None) => Step::Continue,
            Err(e) => {
                self.release_attachments();
                tracing::debug!(peer = %self.peer, "socket.io: bad attachment: {e}");
                Step::ProtocolError(e.as_str())
            }
        }
    }

    /// Gives the reserved attachment bytes back to the server-wide total.
    fn release_attachments(&mut self) {
        let n = std::mem::take(&mut self.reserved);
        if n > 0 {
            self.shared.counters.release_attachment_bytes(n);
        }
    }

    async fn on_packet(&mut self, p: Packet, out: &mut Out) -> Step {
        match p.kind {
            PacketType::Connect => {
                self.connect(p, out).await;
                Step::Continue
            }
            PacketType::Disconnect => {
                // The client left the namespace: no recovery for it.
                self.list.retain(|s| s.nsp != p.nsp);
                Step::Continue
            }
            PacketType::Event | PacketType::BinaryEvent => {
                if let Some(i) = self.list.iter().position(|s| s.nsp == p.nsp) {
                    self.event(i, p, out).await;
                }
                Step::Continue
            }
            // The server never asks clients for acks; a stray one is harmless.
            PacketType::Ack | PacketType::BinaryAck => Step::Continue,
            PacketType::ConnectError => Step::ProtocolError("clients do not send CONNECT_ERROR"),
        }
    }

    fn nsp_allowed(&self, nsp: &str) -> bool {
        let allowed = &self.shared.config.socketio.namespaces;
        nsp.starts_with('/')
            && nsp.len() <= MAX_NSP_LEN
            && !nsp.contains(':')
            && !nsp.chars().any(|c| c.is_control() || c.is_whitespace())
            && (allowed.is_empty() || allowed.iter().any(|a| a == nsp))
    }

    async fn connect(&mut self, p: Packet, out: &mut Out) {
        let nsp = p.nsp.clone();
        if self.list.iter().any(|s| s.nsp == nsp) {
            // Already connected: answer as before (a client never does this on purpose).
            return;
        }
        if !self.nsp_allowed(&nsp) {
            push_packet(out, &Packet::connect_error(nsp, "Invalid namespace"));
            return;
        }
        let auth = p.data.unwrap_or(Value::Null);
        if self.recovery() {
            if let Some(pid) = auth.get("pid").and_then(Value::as_str) {
                if let Some(socket) = self
                    .io
                    .store()
                    .take(pid, &nsp)
                    .filter(|s| s.expires_at.is_none_or(|at| at >= crate::auth::unix_now()))
                {
                    let offset = auth.get("offset").and_then(Value::as_str);
                    let recovered = socket
                        .recovery
                        .as_deref()
                        .and_then(|r| Some((r, r.ring.after(offset)?)));
                    if let Some((r, missed)) = recovered {
                        self.shared.counters.protocol(PROTOCOL).recovery(true);
                        push_packet(out, &Packet::connect_ok(nsp, &r.sid, Some(&r.pid)));
                        for ev in &missed {
                            push_event(out, ev);
                        }
                        tracing::debug!(peer = %self.peer, replayed = missed.len(), "socket.io session recovered");
                        self.list.reserve_exact(1);
                        self.list.push(socket);
                        self.connected_once = true;
                        return;
                    }
                    // Not recoverable: the old socket leaves the hub, a new one is made.
                    drop(socket);
                }
                // Asked to recover (it has a pid) and could not: gone, expired or too far behind.
                self.shared.counters.protocol(PROTOCOL).recovery(false);
            }
        }
        let token = auth.get("token").and_then(Value::as_str).unwrap_or("");
        let allow_anonymous = self.shared.config.allow_anonymous;
        let by_proxy =
            token.is_empty() && self.proxy.is_some() && self.shared.proxy.enabled(Kind::Connect);
        let (user, info, token_channels, expires_at) = if by_proxy {
            match self.connect_by_proxy(&nsp, &auth).await {
                Ok((user, _, _, _)) if user.is_empty() && !allow_anonymous => {
                    push_packet(out, &Packet::connect_error(nsp, "invalid token"));
                    return;
                }
                Ok(granted) => granted,
                Err(message) => {
                    tracing::debug!(peer = %self.peer, "socket.io connect refused by the backend: {message}");
                    push_packet(out, &Packet::connect_error(nsp, &message));
                    return;
                }
            }
        } else if token.is_empty() {
            if !allow_anonymous {
                push_packet(out, &Packet::connect_error(nsp, "invalid token"));
                return;
            }
            (String::new(), None, Vec::new(), None)
        } else {
            match self.shared.verifier.verify_connection_token(token) {
                Ok(claims) if !claims.sub.is_empty() || allow_anonymous => {
                    let exp = claims.expire_at.or(claims.exp);
                    let info = claims.info.map(|i| Bytes::from(i.get().to_owned()));
                    (claims.sub, info, claims.channels, exp)
                }
                Ok(_) => {
                    push_packet(out, &Packet::connect_error(nsp, "invalid token"));
                    return;
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, "socket.io connect token rejected: {e}");
                    let message = if e.is_expired() {
                        "token expired"
                    } else {
                        "invalid token"
                    };
                    push_packet(out, &Packet::connect_error(nsp, message));
                    return;
                }
            }
        };
        let mut conn_info = ConnInfo::new(self.peer.to_string(), PROTOCOL).with_user(user);
        if let Some(info) = info {
            conn_info = conn_info.with_conn_info(info);
        }
        let (handle, outbox) = match channels::register(&self.shared, conn_info).await {
            Ok(pair) => pair,
            Err(_) => {
                push_packet(out, &Packet::connect_error(nsp, "connection limit reached"));
                return;
            }
        };
        let joined =
            match channels::join_namespace(&self.shared, &handle, &nsp, &token_channels).await {
                Ok(joined) => joined,
                Err(e) => {
                    push_packet(out, &Packet::connect_error(nsp, e.message()));
                    return;
                }
            };
        let sid = random_id();
        let recovery = self.recovery().then(|| {
            Box::new(Recovery {
                sid: sid.as_str().into(),
                pid: random_id().into(),
                ring: Ring::new(self.shared.config.socketio.recovery_buffer),
            })
        });
        let pid = recovery.as_deref().map(|r| &*r.pid);
        push_packet(out, &Packet::connect_ok(nsp.clone(), &sid, pid));
        let exclude_sender = self.shared.config.socketio.exclude_sender.contains(&nsp);
        let mut socket = NsSocket {
            nsp: nsp_name(nsp),
            recovery,
            handle,
            outbox,
            exclude_sender,
            live_from: Vec::new(),
            expires_at,
        };
        for (channel, position) in joined {
            socket.joined(&channel, position);
        }
        // Most sessions join one namespace: room for exactly one more, not the four a
        // growing `Vec` would make.
        self.list.reserve_exact(1);
        self.list.push(socket);
        self.connected_once = true;
    }

    async fn event(&mut self, i: usize, p: Packet, out: &mut Out) {
        let reserved = matches!(
            p.event_name(),
            Some("subscribe" | "unsubscribe" | "publish")
        );
        if !reserved && self.rpc(&p, out) {
            return;
        }
        if !reserved && self.proxies_broadcast(&self.list[i].nsp) {
            // Nothing goes out before the backend accepts it.
            self.hold_broadcast(i, p, out);
            return;
        }
        let shared = &self.shared;
        // The reserved `publish` does not go to the publish proxy (yet): in a namespace
        // that wants every publication checked, it is refused rather than let through.
        let unchecked = |c: &str| {
            shared.proxy.enabled(Kind::Publish)
                && shared
                    .config
                    .channel
                    .options(c)
                    .is_ok_and(|o| o.proxy_publish)
        };
        let s = &mut self.list[i];
        let name = p.event_name().unwrap_or_default();
        let args = p.args();
        let channel = args
            .first()
            .and_then(Value::as_str)
            .filter(|c| !is_namespace_channel(c));
        // `None`: a broadcast, acknowledged without arguments.
        let result: Option<Result<(), ChanError>> = match name {
            "subscribe" => Some(match channel {
                Some(c) => channels::subscribe(shared, &s.handle, c)
                    .await
                    .map(|position| s.joined(c, position)),
                None => Err(ChanError::UnknownChannel),
            }),
            "unsubscribe" => Some(match channel {
                Some(c) => {
                    channels::unsubscribe(shared, &s.handle, c).await;
                    s.left(c);
                    Ok(())
                }
                None => Err(ChanError::UnknownChannel),
            }),
            "publish" => Some(match (channel, args.get(1)) {
                (Some(c), Some(_)) if unchecked(c) => Err(ChanError::PermissionDenied),
                (Some(c), Some(data)) => {
                    let payload = publish_payload(data, &p.attachments);
                    channels::publish(shared, &s.handle, c, payload).await
                }
                _ => Err(ChanError::UnknownChannel),
            }),
            _ => {
                let all = match &p.data {
                    Some(Value::Array(a)) => a.as_slice(),
                    _ => &[],
                };
                let payload = encode_broadcast(all, &p.attachments);
                match channels::broadcast(shared, &s.handle, &s.nsp, payload, s.exclude_sender)
                    .await
                {
                    Ok(()) => None,
                    Err(e) => Some(Err(e)),
                }
            }
        };
        if let Some(id) = p.id {
            let args = match result {
                None => Vec::new(),
                Some(Ok(())) => vec![json!({"ok": true})],
                Some(Err(e)) => vec![json!({"error": e.message()})],
            };
            push_packet(out, &Packet::ack(p.nsp.clone(), id, args, Vec::new()));
        }
    }

    /// The session ended: attachments still buffered are dropped; with `recoverable`,
    /// sockets with a pid are kept for recovery;
    /// the others leave the hub.
    pub(crate) fn close(&mut self, recoverable: bool) {
        self.pending = None;
        self.release_attachments();
        let ttl = self.shared.config.socketio.max_disconnection_duration;
        for s in self.list.drain(..) {
            if recoverable && s.recovery.is_some() && !s.handle.is_closed() {
                self.io.store().keep(s, ttl);
            }
        }
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        // However the session ends (a panic included), its reservation is given back.
        self.release_attachments();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::{Epoch, Hub, HubLimits, Payload};

    fn socket(hub: &Hub) -> NsSocket {
        let (handle, outbox) = hub.register(ConnInfo::new("p", PROTOCOL)).unwrap();
        NsSocket {
            nsp: nsp_name("/".into()),
            recovery: None,
            handle,
            outbox,
            exclude_sender: false,
            live_from: Vec::new(),
            expires_at: None,
        }
    }

    fn publication(channel: &str, offset: u64, epoch: u32) -> Publication {
        Publication::new(channel.into(), Payload::text("x"), offset, epoch, None)
    }

    #[test]
    fn publications_of_the_join_snapshot_are_skipped_until_one_passes_it() {
        let hub = Hub::new(HubLimits::default());
        let mut s = socket(&hub);
        assert!(
            matches!(s.nsp, Cow::Borrowed("/")),
            "the default namespace is not allocated"
        );
        // No history (no offset): nothing to skip, nothing kept.
        s.joined("a", StreamPosition::default());
        assert!(s.live_from.is_empty() && s.live_from.capacity() == 0);
        assert!(!s.already_sent(&publication("a", 0, 0)));
        // History: at or below the join's position in its epoch is skipped.
        let epoch = Epoch::from(7u32);
        s.joined("b", StreamPosition::new(5, epoch));
        assert!(s.already_sent(&publication("b", 4, 7)));
        assert!(s.already_sent(&publication("b", 5, 7)));
        assert!(!s.already_sent(&publication("a", 1, 7)), "another channel");
        // The first one past it ends the check for the channel.
        assert!(!s.already_sent(&publication("b", 6, 7)));
        assert!(s.live_from.is_empty());
        assert!(!s.already_sent(&publication("b", 5, 7)));
        // Another epoch is never skipped; leaving forgets the position.
        s.joined("c", StreamPosition::new(5, epoch));
        s.joined("d", StreamPosition::new(5, epoch));
        assert!(!s.already_sent(&publication("c", 1, 8)));
        s.left("d");
        assert!(!s.already_sent(&publication("d", 1, 7)));
        // A join again without history replaces a position.
        s.joined("e", StreamPosition::new(5, epoch));
        s.joined("e", StreamPosition::default());
        assert!(!s.already_sent(&publication("e", 1, 7)));
        assert!(s.live_from.is_empty());
    }
}
