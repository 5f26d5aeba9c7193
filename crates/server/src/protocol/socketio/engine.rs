//! Engine.IO v4 sessions: the WebSocket and HTTP long-polling transports, the upgrade from
//! one to the other, and the HTTP errors.
//!
//! Every session runs on the connection runtime ([`crate::conn::runtime`]): one task per
//! session, with the [`SocketIoDriver`] as its state machine. A WebSocket session's
//! transport is the WebSocket itself; a polling session's is a [`PollingTransport`]: what
//! the client `POST`s reaches it through one bounded channel of [`Inbound`] items (the
//! packets, the upgraded WebSocket, a broken request), and what the session sends is queued
//! for the pending `GET`, which takes it in one payload.
//!
//! * Handshake: `GET ?EIO=4&transport=polling` answers the open packet in the body;
//!   a WebSocket upgrade with `transport=websocket` and no `sid` sends it as first message
//!   (with `upgrades: []`).
//! * Upgrade: a WebSocket upgrade with the `sid` of a polling session: the client sends
//!   `2probe`, we answer `3probe`, a pending `GET` is ended with a noop so the client can
//!   pause polling, the client sends `5` and the session moves to the WebSocket (its
//!   transport switches over); packets still queued for polling are written there first.
//!   Later polling requests for the session are refused with "Bad request".
//! * Heartbeat: the runtime's: the server sends `2` every ping interval; a client that
//!   sends nothing (a `3`, a `POST`, anything) within the ping timeout after it is dropped.
//! * Polling: one `GET` at a time (a second concurrent one is a protocol error that closes
//!   the session, as is a concurrent `POST`); bodies over `max_payload` get 413 and close
//!   the session; the queue for a polling client is bounded by `polling_buffer`: a write
//!   that finds it over waits for a `GET` to drain it (bounded like a stalled socket, and
//!   the session stops draining its outboxes meanwhile, whose own bounds and slow-consumer
//!   policy then apply, as for every other protocol).
//! * A polling `POST` is answered once the session has handled its packets: `ok`, or
//!   400 with the reason when one breaks the protocol (the session is then closed). Its body
//!   must arrive within the body timeout, else 408 and the session is closed.
//! * Connection slots: a WebSocket session holds one for its lifetime; a polling session's
//!   slot belongs to the session record, which every request in flight for it holds, so a
//!   request still reading its body keeps counting against `max_connections` after the
//!   session ended.
//! * A panic while serving the session (a bug) ends it: WebSocket close 1011, counted as
//!   `closed_panic`.
//!
//! Session ids: 22 URL-safe characters of randomness; with a shared broker they are prefixed
//! with the node's id, `<node>.<random>` (clients treat the sid as opaque). A polling request
//! that reaches a node which does not own its session is forwarded to the owner's HTTP
//! address, found in the broker's node registry ([`crate::transport::forward`]), so polling works behind
//! a load balancer without sticky sessions. A WebSocket upgrade that reaches the wrong node is
//! forwarded the same way and the two connections are spliced, so the session still moves to
//! WebSocket (its bytes then pass through the node that received the upgrade).
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use switchboard_protocols::socketio::engine::{Handshake, HttpError, Packet as EnginePacket};
use switchboard_websocket::stream::{PingTracker, WebSocket};
use switchboard_websocket::{CloseCode, Error as WsError, Message};
use tokio::sync::{mpsc, oneshot, Notify};

use super::driver::SocketIoDriver;
use super::{error, status_only, Query, SocketIo};
use crate::conn::driver::OutFrame;
use crate::conn::heartbeat::{Activity, Liveness, PeerActivity};
use crate::conn::runtime::{self, Identity, Transport, WsTransport};
use crate::conn::shutdown::ShutdownToken;
use crate::conn::stats::ConnectionSlot;
use crate::state::Shared;
use crate::transport::http::{Body, BodyError};

/// The upgraded connection type.
pub(crate) use crate::transport::upgrade::Io;

/// Inbound items queued ahead of a polling session (back-pressure on a flooding client).
const INBOUND: usize = 64;

/// One outgoing Engine.IO packet as polling bytes: a text packet with its type character,
/// or binary data.
#[derive(Debug, Clone)]
pub(crate) enum Frame {
    /// A text packet, type character included.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Frame {
    fn len(&self) -> usize {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b.len(),
        }
    }

    fn packet(p: &EnginePacket) -> Frame {
        match p.to_ws_frame() {
            (true, b) => Frame::Binary(b),
            (false, b) => Frame::Text(b),
        }
    }

    /// What the runtime asked to send, as a polling packet (WebSocket control frames have
    /// no polling form).
    fn from_out(frame: &OutFrame) -> Option<Frame> {
        match frame {
            OutFrame::Message(Message::Text(t)) => Some(Frame::Text(t.clone())),
            OutFrame::Message(Message::Binary(b)) => Some(Frame::Binary(b.clone())),
            OutFrame::Message(_) | OutFrame::Published(_) => None,
            OutFrame::Prepared(p) if p.is_text() => Some(Frame::Text(p.payload().clone())),
            OutFrame::Prepared(p) => Some(Frame::Binary(p.payload().clone())),
        }
    }
}

/// What a polling session's transport receives from the HTTP requests.
pub(crate) enum Inbound {
    /// The packets of a polling `POST`; answered once they are handled: `Err` with the
    /// reason when one broke the protocol (the session then ends).
    Post(Vec<EnginePacket>, oneshot::Sender<Result<(), &'static str>>),
    /// The upgrade completed: the session moves to this WebSocket.
    Upgrade(Box<WebSocket<Io>>),
    /// The client broke the protocol; the session ends.
    Error(&'static str),
}

/// Where a polling session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Polling,
    /// A WebSocket probe succeeded; a `GET` with nothing to send gets a noop at once.
    Probing,
    Upgraded,
    Closed,
}

struct PollState {
    queue: VecDeque<Frame>,
    bytes: usize,
    get_active: bool,
    post_active: bool,
    mode: Mode,
    /// What was queued for polling when the WebSocket took over, for the driver to send
    /// there first.
    handover: Option<Vec<Frame>>,
    /// Why the client's last packet was refused, for the `POST` that carried it.
    refused: Option<&'static str>,
}

/// A session reachable by its sid (polling sessions, until they end).
pub(crate) struct Session {
    sid: String,
    poll: Mutex<PollState>,
    /// Wakes the pending `GET`.
    wake_get: Notify,
    /// Wakes a write waiting for a `GET` to drain the queue.
    drained: Notify,
    inbound: mpsc::Sender<Inbound>,
    /// The session's connection slot: freed when the last holder of the session (its
    /// task, or a request still in flight) lets go of it.
    _slot: ConnectionSlot,
}

impl Session {
    /// A new polling session `sid` holding `slot`; what clients send reaches its task
    /// through `inbound`.
    fn new(sid: String, inbound: mpsc::Sender<Inbound>, slot: ConnectionSlot) -> Session {
        Session {
            sid,
            poll: Mutex::new(PollState {
                queue: VecDeque::new(),
                bytes: 0,
                get_active: false,
                post_active: false,
                mode: Mode::Polling,
                handover: None,
                refused: None,
            }),
            wake_get: Notify::new(),
            drained: Notify::new(),
            inbound,
            _slot: slot,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PollState> {
        self.poll.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session's id.
    pub(crate) fn sid(&self) -> &str {
        &self.sid
    }

    fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
        self.wake_get.notify_one();
    }

    /// Remembers why the client's packet was refused, for its `POST`'s answer.
    pub(crate) fn refuse(&self, why: &'static str) {
        self.lock().refused = Some(why);
    }

    /// The frames queued for polling when the WebSocket took over (once).
    pub(crate) fn take_handover(&self) -> Option<Vec<Frame>> {
        self.lock().handover.take()
    }

    /// The WebSocket takes over: what is queued is kept for the driver, polling ends.
    /// False when the session is already closed.
    fn hand_over(&self) -> bool {
        let mut st = self.lock();
        if st.mode == Mode::Closed {
            return false;
        }
        let queued: Vec<Frame> = st.queue.drain(..).collect();
        st.bytes = 0;
        st.mode = Mode::Upgraded;
        st.handover = Some(queued);
        drop(st);
        // A pending GET ends (with a noop).
        self.wake_get.notify_one();
        true
    }

    /// The session ended: a pending `GET` gets what is queued, then the close packet
    /// (queued explicitly at shutdown, so it follows what is queued).
    pub(crate) fn close(&self, shutdown: bool) {
        let mut st = self.lock();
        if shutdown {
            st.queue.push_back(Frame::Text(Bytes::from_static(b"1")));
        }
        st.mode = Mode::Closed;
        drop(st);
        self.wake_get.notify_one();
        self.drained.notify_one();
    }
}

/// A new session id: random, prefixed with this node's id when several nodes share a broker.
fn new_sid(shared: &Shared) -> String {
    if shared.node.is_shared() {
        format!("{}.{}", shared.node.broker().node_id(), random_id())
    } else {
        random_id()
    }
}

/// The node owning `sid`, when it is another node of a shared broker.
fn foreign_owner<'a>(shared: &Shared, sid: &'a str) -> Option<&'a str> {
    let (node, _) = sid.split_once('.')?;
    (shared.node.is_shared() && node != shared.node.broker().node_id()).then_some(node)
}

/// The `host:port` of node `owner` from the broker's registry, or the reply to give when it
/// cannot be reached.
async fn owner_address(shared: &Shared, owner: &str) -> Result<String, Response<Body>> {
    let nodes = match shared.node.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => {
            tracing::debug!(owner, "socket.io: node registry unavailable: {e}");
            return Err(status_only(StatusCode::SERVICE_UNAVAILABLE));
        }
    };
    // Only plain HTTP addresses can be reached by the forwarder.
    nodes
        .iter()
        .find(|n| n.id == owner)
        .and_then(|n| n.url.strip_prefix("http://"))
        .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
        .ok_or_else(|| error(HttpError::UnknownSid))
}

/// Sends a polling request on to the node that owns its session, and relays the answer.
async fn forward(
    io: &SocketIo,
    req: Request<Incoming>,
    shared: &Shared,
    owner: &str,
) -> Response<Body> {
    let target = match owner_address(shared, owner).await {
        Ok(target) => target,
        Err(reply) => return reply,
    };
    let (parts, body) = req.into_parts();
    let max = shared.config.socketio.max_payload;
    let body = match crate::transport::http::read_body(body, max, shared.config.body_timeout).await
    {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return status_only(StatusCode::PAYLOAD_TOO_LARGE),
        Err(BodyError::TimedOut) => return status_only(StatusCode::REQUEST_TIMEOUT),
        Err(BodyError::Broken) => return error(HttpError::BadRequest),
    };
    // A pending GET lasts up to a ping interval; allow the ping timeout on top.
    let timeout = shared.config.ping_interval + shared.config.ping_timeout;
    match io.forwarder().forward(parts, body, &target, timeout).await {
        Ok(response) => response.map(Body::from),
        Err(e) => {
            tracing::debug!(owner, "socket.io: forwarding failed: {e}");
            status_only(e.status())
        }
    }
}

/// Sends the WebSocket upgrade of a polling session to the node that owns it and splices the
/// two connections once the owner switches protocols: the session moves to WebSocket there.
async fn forward_upgrade(
    io: &SocketIo,
    req: Request<Incoming>,
    shared: &Shared,
    owner: &str,
) -> Response<Body> {
    let target = match owner_address(shared, owner).await {
        Ok(target) => target,
        Err(reply) => return reply,
    };
    let timeout = shared.config.socketio.upgrade_timeout;
    match io.forwarder().forward_upgrade(req, &target, timeout).await {
        Ok(response) => response.map(Body::from),
        Err(e) => {
            tracing::debug!(owner, "socket.io: forwarding an upgrade failed: {e}");
            status_only(e.status())
        }
    }
}

/// A random URL-safe id (128 bits from the OS-seeded SipHash keys of `RandomState`, fed a
/// process-wide counter: unpredictable without the keys, never repeated in a process).
pub(crate) fn random_id() -> String {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let state = std::collections::hash_map::RandomState::new();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&state.hash_one((n, 1u8)).to_le_bytes());
    bytes[8..].copy_from_slice(&state.hash_one((n, 2u8)).to_le_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Routes a non-preflight request: validation, then handshake, poll, post or upgrade.
pub(crate) async fn route(
    io: &Arc<SocketIo>,
    req: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    token: ShutdownToken,
) -> Response<Body> {
    let q = Query::parse(req.uri().query());
    if q.eio.as_deref() != Some(switchboard_protocols::socketio::engine::VERSION) {
        return error(HttpError::UnsupportedProtocolVersion);
    }
    let upgrade = switchboard_websocket::handshake::is_upgrade_request(req.headers());
    match (q.transport.as_deref(), upgrade) {
        (Some("websocket"), true) => match q.sid {
            None => websocket_handshake(io, req, shared, peer, token),
            Some(sid) => match io.find(&sid) {
                None => match foreign_owner(&shared, &sid) {
                    Some(owner) if !crate::transport::forward::is_forwarded(&req) => {
                        let owner = owner.to_string();
                        forward_upgrade(io, req, &shared, &owner).await
                    }
                    _ => error(HttpError::UnknownSid),
                },
                Some(session) => websocket_upgrade(req, shared, peer, session),
            },
        },
        // A WebSocket request without the upgrade, or an upgrade on the polling transport.
        (Some("websocket"), false) | (Some("polling"), true) => error(HttpError::BadRequest),
        (Some("polling"), false) => match q.sid {
            None if req.method() == Method::GET => polling_handshake(io, &req, shared, peer, token),
            None => error(HttpError::BadHandshakeMethod),
            Some(sid) => match io.find(&sid) {
                None => match foreign_owner(&shared, &sid) {
                    Some(owner) if !crate::transport::forward::is_forwarded(&req) => {
                        let owner = owner.to_string();
                        forward(io, req, &shared, &owner).await
                    }
                    _ => error(HttpError::UnknownSid),
                },
                Some(session) => match *req.method() {
                    Method::GET => poll(&session).await,
                    Method::POST => post(req, &shared, &session).await,
                    _ => error(HttpError::BadRequest),
                },
            },
        },
        _ => error(HttpError::UnknownTransport),
    }
}

fn handshake(shared: &Shared, sid: &str, upgrades: Vec<&'static str>) -> EnginePacket {
    Handshake {
        sid: sid.to_string(),
        upgrades,
        ping_interval: shared.config.ping_interval.as_millis() as u64,
        ping_timeout: shared.config.ping_timeout.as_millis() as u64,
        max_payload: shared.config.socketio.max_payload as u64,
    }
    .packet()
}

/// The open packet of a session that starts on a WebSocket, as a text frame's payload.
pub(super) fn websocket_open(shared: &Shared, sid: &str) -> Bytes {
    handshake(shared, sid, Vec::new()).to_ws_frame().1
}

/// Who a session is, for the runtime's logs (a session has one hub connection per
/// namespace, so no one id).
fn identity(peer: SocketAddr) -> Identity {
    Identity {
        peer,
        id: 0,
        protocol: switchboard_protocols::socketio::PROTOCOL,
    }
}

/// The headers of a session's first request the backend's proxy gets, when a proxy kind
/// is configured.
fn forwarded(shared: &Shared, req: &Request<Incoming>) -> Option<crate::proxy::Forwarded> {
    shared
        .proxy
        .any_enabled()
        .then(|| shared.proxy.forwarded(req.headers()))
}

/// A new session on the polling transport: the open packet is the answer.
fn polling_handshake(
    io: &Arc<SocketIo>,
    req: &Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    token: ShutdownToken,
) -> Response<Body> {
    let slot = match crate::transport::upgrade::take_slot(req, &shared, peer) {
        Ok(slot) => slot,
        Err(refusal) => return *refusal,
    };
    let sid = new_sid(&shared);
    let (tx, rx) = mpsc::channel(INBOUND);
    let session = Arc::new(Session::new(sid.clone(), tx, slot));
    io.insert(Arc::clone(&session));
    let open = handshake(&shared, &sid, vec!["websocket"]);
    let transport = PollingTransport::new(
        Arc::clone(&session),
        rx,
        shared.config.socketio.polling_buffer,
    );
    let driver = SocketIoDriver::new(
        Arc::clone(io),
        Arc::clone(&shared),
        peer,
        &sid,
        false,
        Some(session),
    )
    .with_proxy(forwarded(&shared, req));
    runtime::spawn(
        transport,
        driver,
        crate::transport::upgrade::limits(&shared),
        identity(peer),
        Arc::clone(&shared.counters),
        token,
        // The session record holds the slot.
        None,
    );
    polling_response(encode_frames(&[Frame::packet(&open)]))
}

/// A new session on a WebSocket (no polling first): one task, the runtime's, over the
/// WebSocket.
fn websocket_handshake(
    io: &Arc<SocketIo>,
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    token: ShutdownToken,
) -> Response<Body> {
    let admitted = match crate::transport::upgrade::admit(&req, &shared, peer) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
    let timeout = shared.config.handshake_timeout;
    let max = shared.config.socketio.max_payload;
    let conn_shared = Arc::clone(&shared);
    let io = Arc::clone(io);
    let forwarded = forwarded(&shared, &req);
    admitted.accept(&mut req, &shared, peer, timeout, max, move |ws, slot| {
        let shared = conn_shared;
        let sid = new_sid(&shared);
        let driver = SocketIoDriver::new(io, Arc::clone(&shared), peer, &sid, true, None)
            .with_proxy(forwarded);
        runtime::spawn(
            WsTransport::new(ws),
            driver,
            crate::transport::upgrade::limits(&shared),
            identity(peer),
            Arc::clone(&shared.counters),
            token,
            Some(slot),
        );
    })
}

/// The WebSocket upgrade of polling session `session`: probe, then hand over.
fn websocket_upgrade(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    session: Arc<Session>,
) -> Response<Body> {
    if session.lock().mode != Mode::Polling {
        return error(HttpError::BadRequest);
    }
    // The slot taken here is only held during the probe: the session already has one.
    let admitted = match crate::transport::upgrade::admit(&req, &shared, peer) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
    let timeout = shared.config.socketio.upgrade_timeout;
    let max = shared.config.socketio.max_payload;
    admitted.accept(
        &mut req,
        &Arc::clone(&shared),
        peer,
        timeout,
        max,
        move |ws, slot| {
            tokio::spawn(probe(ws, slot, session, peer, timeout));
        },
    )
}

/// The probe of a polling session's WebSocket upgrade: `2probe` → `3probe`, then `5` hands
/// the WebSocket to the session.
async fn probe(
    ws: WebSocket<Io>,
    slot: ConnectionSlot,
    session: Arc<Session>,
    peer: SocketAddr,
    timeout: Duration,
) {
    let mut ws = ws;
    let probed = tokio::time::timeout(timeout, async {
        // `2probe` → `3probe`, then the client pauses polling and sends `5`.
        match ws.next().await {
            Some(Ok(Message::Text(t))) if &t[..] == b"2probe" => {}
            _ => return false,
        }
        if ws.send(Message::text("3probe")).await.is_err() {
            return false;
        }
        session.set_mode(Mode::Probing);
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if &t[..] == b"5" => return true,
                // Heartbeat answers may arrive on the probe before the upgrade.
                Some(Ok(Message::Text(t))) if &t[..] == b"3" || &t[..] == b"6" => {}
                _ => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    drop(slot);
    if !probed {
        {
            let mut st = session.lock();
            if st.mode == Mode::Probing {
                st.mode = Mode::Polling;
            }
        }
        tracing::debug!(%peer, sid = %session.sid, "socket.io upgrade abandoned");
        let _ = ws.send_close(CloseCode(1000), "").await;
        return;
    }
    let _ = session.inbound.send(Inbound::Upgrade(Box::new(ws))).await;
}

/// When a session's client was last heard from: any `POST` while polling, then the
/// WebSocket's own clock once it took over.
#[derive(Default)]
struct SessionActivity {
    polling: Liveness,
    websocket: OnceLock<PingTracker>,
}

impl PeerActivity for SessionActivity {
    fn last_heard(&self) -> Option<std::time::Instant> {
        let polling = self.polling.last_heard();
        let ws = self.websocket.get().and_then(PeerActivity::last_heard);
        polling.max(ws)
    }
}

/// The answer a `POST` waits for, and the packets of it not yet handed on.
struct PendingPost {
    packets: std::vec::IntoIter<EnginePacket>,
    done: oneshot::Sender<Result<(), &'static str>>,
}

/// A polling session as a [`Transport`]: the packets `POST`ed by the client come in through
/// the session's channel, one message at a time; what the runtime writes is queued for the
/// pending `GET`. Once the probed WebSocket takes over ([`Inbound::Upgrade`]) everything
/// goes to the WebSocket.
pub(crate) struct PollingTransport {
    session: Arc<Session>,
    inbound: mpsc::Receiver<Inbound>,
    /// The `POST` whose packets are being handled.
    post: Option<PendingPost>,
    /// Bytes queued for the `GET` above which a write waits for it.
    polling_buffer: usize,
    activity: Arc<SessionActivity>,
    /// The WebSocket, after the upgrade.
    ws: Option<WsTransport<Io>>,
}

impl PollingTransport {
    fn new(session: Arc<Session>, inbound: mpsc::Receiver<Inbound>, polling_buffer: usize) -> Self {
        PollingTransport {
            session,
            inbound,
            post: None,
            polling_buffer,
            activity: Arc::default(),
            ws: None,
        }
    }

    /// Answers the `POST` whose packets ended the session (its reason, or "session
    /// closed").
    fn refuse_post(&mut self) {
        if let Some(post) = self.post.take() {
            let why = self
                .session
                .lock()
                .refused
                .take()
                .unwrap_or("session closed");
            let _ = post.done.send(Err(why));
        }
    }
}

/// A packet as the message the driver takes.
fn message(p: &EnginePacket) -> Message {
    match p.to_ws_frame() {
        (true, b) => Message::Binary(b),
        (false, b) => Message::Text(b),
    }
}

impl Transport for PollingTransport {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>> {
        loop {
            if let Some(ws) = &mut self.ws {
                return ws.poll_next(cx);
            }
            if let Some(post) = &mut self.post {
                if let Some(p) = post.packets.next() {
                    return Poll::Ready(Some(Ok(message(&p))));
                }
                // The runtime asks for the next message once the last one was handled.
                if let Some(post) = self.post.take() {
                    let _ = post.done.send(Ok(()));
                }
            }
            match std::task::ready!(self.inbound.poll_recv(cx)) {
                None => return Poll::Ready(None),
                Some(Inbound::Post(packets, done)) => {
                    self.activity.polling.touch();
                    self.post = Some(PendingPost {
                        packets: packets.into_iter(),
                        done,
                    });
                }
                Some(Inbound::Error(why)) => {
                    tracing::debug!(sid = %self.session.sid, "socket.io: {why}");
                    // An empty message is no Engine.IO packet: the driver ends the session
                    // as a protocol error (the request was answered already).
                    return Poll::Ready(Some(Ok(Message::Text(Bytes::new()))));
                }
                Some(Inbound::Upgrade(ws)) => {
                    let ws = *ws;
                    if !self.session.hand_over() {
                        continue;
                    }
                    let _ = self.activity.websocket.set(ws.tracker());
                    self.ws = Some(WsTransport::new(ws));
                    // The driver takes this `5` as the switch and writes what was queued
                    // for polling first.
                    return Poll::Ready(Some(Ok(Message::Text(Bytes::from_static(b"5")))));
                }
            }
        }
    }

    fn feed(&mut self, frame: &OutFrame) -> Result<(), WsError> {
        if let Some(ws) = &mut self.ws {
            return ws.feed(frame);
        }
        if let Some(f) = Frame::from_out(frame) {
            let mut st = self.session.lock();
            st.bytes += f.len();
            st.queue.push_back(f);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), WsError> {
        if let Some(ws) = &mut self.ws {
            return ws.flush().await;
        }
        self.session.wake_get.notify_one();
        // Over the buffer: wait for a GET to take the queue (the runtime bounds the wait
        // like a stalled socket's, and gives up when the hub closes an outbox).
        loop {
            {
                let st = self.session.lock();
                if st.bytes <= self.polling_buffer || st.mode != Mode::Polling {
                    return Ok(());
                }
            }
            self.session.drained.notified().await;
        }
    }

    fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
    ) -> impl Future<Output = Result<(), WsError>> + Send {
        let reason = reason.to_string();
        async move {
            if let Some(ws) = &mut self.ws {
                return ws.close(code, &reason).await;
            }
            self.refuse_post();
            Ok(())
        }
    }

    async fn linger(&mut self, limit: Duration) {
        if let Some(ws) = &mut self.ws {
            ws.linger(limit).await;
        }
    }

    async fn drain(&mut self, limit: Duration) {
        if let Some(ws) = &mut self.ws {
            ws.drain(limit).await;
        }
    }

    fn activity(&self) -> Activity {
        Activity::from(Arc::clone(&self.activity))
    }
}

impl Drop for PollingTransport {
    fn drop(&mut self) {
        self.refuse_post();
    }
}

/// Clears the session's `get_active` flag however the `GET` ends (the client may go away
/// while it waits).
struct GetGuard<'a>(&'a Session);

impl Drop for GetGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().get_active = false;
    }
}

/// A polling `GET`: everything queued, waiting for something if the queue is empty.
async fn poll(session: &Arc<Session>) -> Response<Body> {
    {
        let mut st = session.lock();
        match st.mode {
            Mode::Upgraded | Mode::Closed if st.queue.is_empty() => {
                return error(HttpError::BadRequest)
            }
            _ => {}
        }
        if st.get_active {
            drop(st);
            tracing::debug!(sid = %session.sid, "socket.io: overlapping GET, closing");
            let _ = session.inbound.try_send(Inbound::Error("overlapping GET"));
            return status_only(StatusCode::BAD_REQUEST);
        }
        st.get_active = true;
    }
    let _guard = GetGuard(session);
    loop {
        {
            let mut st = session.lock();
            if !st.queue.is_empty() {
                let frames: Vec<Frame> = st.queue.drain(..).collect();
                st.bytes = 0;
                drop(st);
                session.drained.notify_one();
                return polling_response(encode_frames(&frames));
            }
            match st.mode {
                Mode::Probing | Mode::Upgraded => {
                    return polling_response(Bytes::from_static(b"6"));
                }
                Mode::Closed => return polling_response(Bytes::from_static(b"1")),
                Mode::Polling => {}
            }
        }
        session.wake_get.notified().await;
    }
}

/// A polling `POST`: the client's packets, handed to the engine task in order.
async fn post(req: Request<Incoming>, shared: &Shared, session: &Arc<Session>) -> Response<Body> {
    let max = shared.config.socketio.max_payload;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        let _ = session
            .inbound
            .try_send(Inbound::Error("payload too large"));
        return status_only(StatusCode::PAYLOAD_TOO_LARGE);
    }
    {
        let mut st = session.lock();
        if st.mode != Mode::Polling && st.mode != Mode::Probing {
            return error(HttpError::BadRequest);
        }
        if st.post_active {
            drop(st);
            let _ = session.inbound.try_send(Inbound::Error("overlapping POST"));
            return status_only(StatusCode::BAD_REQUEST);
        }
        st.post_active = true;
    }
    let body =
        crate::transport::http::read_body(req.into_body(), max, shared.config.body_timeout).await;
    session.lock().post_active = false;
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let (why, mut response) = match e {
                BodyError::TooLarge => (
                    "payload too large",
                    status_only(StatusCode::PAYLOAD_TOO_LARGE),
                ),
                BodyError::TimedOut => (
                    "request body timed out",
                    status_only(StatusCode::REQUEST_TIMEOUT),
                ),
                BodyError::Broken => ("bad body", error(HttpError::BadRequest)),
            };
            tracing::debug!(sid = %session.sid, "socket.io: {why}");
            let _ = session.inbound.try_send(Inbound::Error(why));
            // The rest of the body may still come: this connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let packets = match switchboard_protocols::socketio::engine::decode_payload(&body) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(sid = %session.sid, "socket.io: bad polling payload: {e}");
            let _ = session.inbound.send(Inbound::Error("bad payload")).await;
            return bad_request(&e.to_string());
        }
    };
    let (done_tx, done_rx) = oneshot::channel();
    if session
        .inbound
        .send(Inbound::Post(packets, done_tx))
        .await
        .is_err()
    {
        return error(HttpError::UnknownSid);
    }
    match done_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return bad_request(why),
        Err(_) => return error(HttpError::UnknownSid),
    }
    let mut r = Response::new(Body::new(Bytes::from_static(b"ok")));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// Engine.IO's "Bad request" (code 3) with the reason the packets were refused.
fn bad_request(reason: &str) -> Response<Body> {
    let body = serde_json::json!({
        "code": 3,
        "message": "Bad request",
        "context": { "reason": reason },
    });
    let mut r = Response::new(Body::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn polling_response(body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::new(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Frames as one polling payload: `\x1e` between packets, binary as `b<base64>`.
fn encode_frames(frames: &[Frame]) -> Bytes {
    let size: usize = frames.iter().map(|f| f.len() * 4 / 3 + 4).sum();
    let mut b = BytesMut::with_capacity(size);
    let mut first = true;
    let mut put = |b: &mut BytesMut, binary: bool, data: &Bytes| {
        if !first {
            b.put_u8(switchboard_protocols::socketio::engine::SEPARATOR);
        }
        first = false;
        if binary {
            b.put_u8(b'b');
            b.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(data)
                    .as_bytes(),
            );
        } else {
            b.extend_from_slice(data);
        }
    };
    for f in frames {
        match f {
            Frame::Text(t) => put(&mut b, false, t),
            Frame::Binary(d) => put(&mut b, true, d),
        }
    }
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_url_safe_and_distinct() {
        let a = random_id();
        let b = random_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    fn polling_session(max: usize) -> (Arc<Session>, PollingTransport) {
        let counters = Arc::new(crate::conn::stats::ServerCounters::default());
        let slot = counters.try_acquire_slot(None).unwrap();
        let (tx, rx) = mpsc::channel(INBOUND);
        let session = Arc::new(Session::new("s".into(), tx, slot));
        let transport = PollingTransport::new(Arc::clone(&session), rx, max);
        (session, transport)
    }

    fn next(t: &mut PollingTransport) -> Poll<Option<Result<Message, WsError>>> {
        t.poll_next(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test]
    async fn a_post_is_answered_once_its_packets_were_taken() {
        let (session, mut t) = polling_session(1 << 20);
        let (done, mut answer) = oneshot::channel();
        let packets = vec![
            EnginePacket::Pong(Bytes::new()),
            EnginePacket::Binary(Bytes::from_static(&[1])),
        ];
        session
            .inbound
            .try_send(Inbound::Post(packets, done))
            .unwrap();
        assert!(matches!(next(&mut t), Poll::Ready(Some(Ok(Message::Text(m)))) if &m[..] == b"3"));
        assert!(matches!(next(&mut t), Poll::Ready(Some(Ok(Message::Binary(m)))) if m[..] == [1]));
        assert!(
            answer.try_recv().is_err(),
            "not before the last packet was handled"
        );
        assert!(next(&mut t).is_pending());
        assert_eq!(answer.try_recv().unwrap(), Ok(()));
        assert!(
            t.activity().last_heard().is_some(),
            "a POST counts as liveness"
        );
        // A POST whose packet ends the session gets the reason.
        let (done, mut answer) = oneshot::channel();
        session
            .inbound
            .try_send(Inbound::Post(vec![EnginePacket::Close], done))
            .unwrap();
        assert!(next(&mut t).is_ready());
        session.refuse("bad packet");
        drop(t);
        assert_eq!(answer.try_recv().unwrap(), Err("bad packet"));
    }

    #[tokio::test]
    async fn writes_queue_for_the_get_and_move_to_the_websocket_at_the_upgrade() {
        let (session, mut t) = polling_session(1 << 20);
        t.feed(&OutFrame::Message(Message::text("42[\"a\"]")))
            .unwrap();
        t.flush().await.unwrap();
        assert_eq!(session.lock().queue.len(), 1);
        let got = poll(&session).await;
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(session.lock().bytes, 0);
        t.feed(&OutFrame::Message(Message::text("42[\"b\"]")))
            .unwrap();
        assert!(session.hand_over());
        let handed = session.take_handover().unwrap();
        assert!(matches!(&handed[..], [Frame::Text(b)] if &b[..] == b"42[\"b\"]"));
        assert!(session.take_handover().is_none(), "once");
        // Polling is over: a GET is refused.
        assert_eq!(poll(&session).await.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn polling_payloads() {
        let body = encode_frames(&[
            Frame::Text(Bytes::from_static(b"42[\"a\"]")),
            Frame::Binary(Bytes::from_static(&[1, 2, 3, 4])),
            Frame::Text(Bytes::from_static(
                b"451-[\"b\",{\"_placeholder\":true,\"num\":0}]",
            )),
            Frame::Binary(Bytes::from_static(&[5])),
        ]);
        assert_eq!(
            &body[..],
            &b"42[\"a\"]\x1ebAQIDBA==\x1e451-[\"b\",{\"_placeholder\":true,\"num\":0}]\x1ebBQ=="[..]
        );
    }
}
