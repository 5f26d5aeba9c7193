//! Engine.IO v4 sessions: the WebSocket and HTTP long-polling transports, the upgrade from
//! one to the other, heartbeats, and the HTTP errors.
//!
//! One task per session (the *engine task*) owns all of its state: the Socket.IO layer,
//! the current transport and the heartbeat. Everything the client sends reaches it through
//! one bounded channel of [`Inbound`] items: decoded packets from the WebSocket reader task
//! or from a polling `POST`, the upgraded WebSocket, transport errors. What it sends goes
//! straight to the WebSocket writer, or into the session's polling queue, which the
//! pending `GET` takes in one payload.
//!
//! * Handshake: `GET ?EIO=4&transport=polling` answers the open packet in the body;
//!   a WebSocket upgrade with `transport=websocket` and no `sid` sends it as first message
//!   (with `upgrades: []`).
//! * Upgrade: a WebSocket upgrade with the `sid` of a polling session: the client sends
//!   `2probe`, we answer `3probe`, a pending `GET` is ended with a noop so the client can
//!   pause polling, the client sends `5` and the session moves to the WebSocket; packets
//!   still queued for polling are written there first. Later polling requests for the
//!   session are refused with "Bad request".
//! * Heartbeat: the server sends `2` every ping interval; no `3` within the ping timeout
//!   ends the session.
//! * Polling: one `GET` at a time (a second concurrent one is a protocol error that closes
//!   the session, as is a concurrent `POST`); bodies over `max_payload` get 413 and close
//!   the session; the queue for a polling client is bounded by `polling_buffer`, after
//!   which the session stops draining its outboxes (whose own bounds and slow-consumer
//!   policy then apply, as for every other protocol).
//! * A polling `POST` is answered once the engine task has handled its packets: `ok`, or
//!   400 with the reason when one breaks the protocol (the session is then closed). Its body
//!   must arrive within the body timeout, else 408 and the session is closed.
//! * Connection slots: a WebSocket session holds one for its lifetime; a polling session's
//!   slot belongs to the session record, which every request in flight for it holds, so a
//!   request still reading its body keeps counting against `max_connections` after the
//!   session ended.
//! * A panic in the engine task (a bug) ends the session: WebSocket close 1011, counted as
//!   `closed_panic`.
//!
//! Session ids: 22 URL-safe characters of randomness; with a shared broker they are prefixed
//! with the node's id, `<node>.<random>` (clients treat the sid as opaque). A polling request
//! that reaches a node which does not own its session is forwarded to the owner's HTTP
//! address, found in the broker's node registry ([`crate::transport::forward`]), so polling works behind
//! a load balancer without sticky sessions. A WebSocket upgrade that reaches the wrong node is
//! forwarded the same way and the two connections are spliced, so the session still moves to
//! WebSocket (its bytes then pass through the node that received the upgrade).
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use switchboard_protocols::socketio::engine::{Handshake, HttpError, Packet as EnginePacket};
use switchboard_websocket::stream::{WebSocket, WsReader, WsWriter};
use switchboard_websocket::{CloseCode, Message};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::socket::{Sockets, Step};
use super::{error, status_only, Query};
use crate::conn::shutdown::ShutdownToken;
use crate::conn::stats::{ConnectionSlot, Counter};
use crate::state::Shared;
use crate::transport::http::{Body, BodyError};

/// The upgraded connection type.
pub(crate) type Io = TokioIo<hyper::upgrade::Upgraded>;

/// Inbound items queued ahead of the engine task (back-pressure on a flooding client).
const INBOUND: usize = 64;
/// A session that joins no namespace within this time is closed (Socket.IO's default
/// `connectTimeout`): an open Engine.IO session costs memory and a connection slot.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);
/// How long to wait for the peer's close reply once ours is sent.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// One outgoing Engine.IO packet as bytes: a text packet with its type character (the same
/// bytes serve as a WebSocket text frame and as a polling packet), or binary data.
#[derive(Debug, Clone)]
pub(crate) enum Frame {
    /// A text packet, type character included.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// An event shared with other sockets (its text packet and attachments).
    Event(Arc<switchboard_protocols::socketio::EncodedEvent>),
}

impl Frame {
    fn len(&self) -> usize {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b.len(),
            Frame::Event(ev) => ev.len(),
        }
    }

    fn packet(p: &EnginePacket) -> Frame {
        match p.to_ws_frame() {
            (true, b) => Frame::Binary(b),
            (false, b) => Frame::Text(b),
        }
    }
}

/// What the engine task receives.
pub(crate) enum Inbound {
    /// A packet from the client.
    Packet(EnginePacket),
    /// The packets of a polling `POST`; the engine answers once they are handled: `Err`
    /// with the reason when one broke the protocol (the session then ends).
    Post(Vec<EnginePacket>, oneshot::Sender<Result<(), &'static str>>),
    /// The upgrade completed: the session moves to this WebSocket.
    Upgrade(Box<(WsReader<Io>, WsWriter<Io>)>),
    /// The client broke the protocol; the session ends.
    Error(&'static str),
    /// The transport closed.
    Closed,
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
}

/// A session reachable by its sid (polling sessions, until they end).
pub(crate) struct Session {
    sid: String,
    /// Identifies the server the session belongs to (several servers may share a process).
    server: usize,
    poll: Mutex<PollState>,
    /// Wakes the pending `GET`.
    wake_get: Notify,
    /// Wakes the engine task when a `GET` drained the queue.
    drained: Notify,
    inbound: mpsc::Sender<Inbound>,
    /// The session's connection slot: freed when the last holder of the session (the engine
    /// task, or a request still in flight) lets go of it.
    _slot: ConnectionSlot,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, PollState> {
        self.poll.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
        self.wake_get.notify_one();
    }
}

/// Live polling sessions by sid. Process-wide (sids are random, so sessions of several
/// servers in one process never collide); each session records its server.
static SESSIONS: LazyLock<Mutex<HashMap<String, Arc<Session>>>> = LazyLock::new(Default::default);

fn sessions() -> std::sync::MutexGuard<'static, HashMap<String, Arc<Session>>> {
    SESSIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forwards polling requests to the nodes owning their sessions.
static FORWARDER: LazyLock<crate::transport::forward::Forwarder> = LazyLock::new(Default::default);

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
async fn forward(req: Request<Incoming>, shared: &Shared, owner: &str) -> Response<Body> {
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
    match FORWARDER.forward(parts, body, &target, timeout).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(owner, "socket.io: forwarding failed: {e}");
            status_only(e.status())
        }
    }
}

/// Sends the WebSocket upgrade of a polling session to the node that owns it and splices the
/// two connections once the owner switches protocols: the session moves to WebSocket there.
async fn forward_upgrade(req: Request<Incoming>, shared: &Shared, owner: &str) -> Response<Body> {
    let target = match owner_address(shared, owner).await {
        Ok(target) => target,
        Err(reply) => return reply,
    };
    let timeout = shared.config.socketio.upgrade_timeout;
    match FORWARDER.forward_upgrade(req, &target, timeout).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(owner, "socket.io: forwarding an upgrade failed: {e}");
            status_only(e.status())
        }
    }
}

fn server_id(shared: &Arc<Shared>) -> usize {
    Arc::as_ptr(shared) as usize
}

fn find(shared: &Arc<Shared>, sid: &str) -> Option<Arc<Session>> {
    sessions()
        .get(sid)
        .filter(|s| s.server == server_id(shared))
        .cloned()
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
            None => websocket_handshake(req, shared, peer, token),
            Some(sid) => match find(&shared, &sid) {
                None => match foreign_owner(&shared, &sid) {
                    Some(owner) if !crate::transport::forward::is_forwarded(&req) => {
                        let owner = owner.to_string();
                        forward_upgrade(req, &shared, &owner).await
                    }
                    _ => error(HttpError::UnknownSid),
                },
                Some(session) => websocket_upgrade(req, shared, peer, session),
            },
        },
        // A WebSocket request without the upgrade, or an upgrade on the polling transport.
        (Some("websocket"), false) | (Some("polling"), true) => error(HttpError::BadRequest),
        (Some("polling"), false) => match q.sid {
            None if req.method() == Method::GET => polling_handshake(shared, peer, token),
            None => error(HttpError::BadHandshakeMethod),
            Some(sid) => match find(&shared, &sid) {
                None => match foreign_owner(&shared, &sid) {
                    Some(owner) if !crate::transport::forward::is_forwarded(&req) => {
                        let owner = owner.to_string();
                        forward(req, &shared, &owner).await
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

/// A new session on the polling transport: the open packet is the answer.
fn polling_handshake(
    shared: Arc<Shared>,
    peer: SocketAddr,
    token: ShutdownToken,
) -> Response<Body> {
    let Some(slot) = shared
        .counters
        .try_acquire_slot(shared.config.max_connections)
    else {
        shared.counters.bump(Counter::RejectedMaxConnections);
        return crate::transport::http::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections",
        );
    };
    let sid = new_sid(&shared);
    let (tx, rx) = mpsc::channel(INBOUND);
    let session = Arc::new(Session {
        sid: sid.clone(),
        server: server_id(&shared),
        poll: Mutex::new(PollState {
            queue: VecDeque::new(),
            bytes: 0,
            get_active: false,
            post_active: false,
            mode: Mode::Polling,
        }),
        wake_get: Notify::new(),
        drained: Notify::new(),
        inbound: tx.clone(),
        _slot: slot,
    });
    sessions().insert(sid.clone(), Arc::clone(&session));
    let open = handshake(&shared, &sid, vec!["websocket"]);
    let engine = Engine::new(Arc::clone(&shared), peer, sid, Some(session), None, tx);
    tokio::spawn(engine.run(rx, token, None));
    polling_response(encode_frames(&[Frame::packet(&open)]))
}

/// A new session on a WebSocket (no polling first).
fn websocket_handshake(
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
    admitted.accept(&mut req, &shared, peer, timeout, max, move |ws, slot| {
        let shared = conn_shared;
        let (reader, writer) = ws.split();
        let sid = new_sid(&shared);
        let (tx, rx) = mpsc::channel(INBOUND);
        let open = handshake(&shared, &sid, Vec::new());
        let mut engine = Engine::new(Arc::clone(&shared), peer, sid, None, None, tx.clone());
        engine.out.push(Frame::packet(&open));
        engine.attach(reader, writer);
        tokio::spawn(engine.run(rx, token, Some(slot)));
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
    {
        let (mut reader, mut writer) = ws.split();
        let probed = tokio::time::timeout(timeout, async {
            // `2probe` → `3probe`, then the client pauses polling and sends `5`.
            match reader.next().await {
                Some(Ok(Message::Text(t))) if &t[..] == b"2probe" => {}
                _ => return false,
            }
            if writer.send(Message::text("3probe")).await.is_err() {
                return false;
            }
            session.set_mode(Mode::Probing);
            loop {
                match reader.next().await {
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
            let _ = writer.close(CloseCode(1000), "").await;
            return;
        }
        let _ = session
            .inbound
            .send(Inbound::Upgrade(Box::new((reader, writer))))
            .await;
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
    let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
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
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn polling_response(body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
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
            Frame::Event(ev) => {
                put(&mut b, false, &ev.text);
                for a in &ev.attachments {
                    put(&mut b, true, a);
                }
            }
        }
    }
    b.freeze()
}

/// Why a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The transport closed or failed (the client may recover its sockets).
    TransportClose,
    /// No pong in time (the client may recover its sockets).
    PingTimeout,
    /// The client broke the protocol.
    ProtocolError,
    /// The client closed the session (close packet).
    ClientClose,
    /// An outbox overflowed under the close policy.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// A channel of the session lost publications the node could not deliver (WebSocket
    /// close 4500; the sockets are not kept, so the client's reconnect is not recovered).
    MissedPublications,
    /// The engine task panicked (a bug).
    InternalError,
}

impl End {
    /// Whether the sockets are kept for recovery. A client's close packet counts: the
    /// client sends one when its transport is torn down (e.g. a network change), and a
    /// deliberate `socket.disconnect()` leaves the namespace with DISCONNECT first.
    fn recoverable(self) -> bool {
        matches!(
            self,
            End::TransportClose | End::PingTimeout | End::ClientClose
        )
    }
}

/// The state of one session, owned by its engine task.
struct Engine {
    shared: Arc<Shared>,
    peer: SocketAddr,
    sid: String,
    /// Set for sessions that started with polling.
    session: Option<Arc<Session>>,
    writer: Option<WsWriter<Io>>,
    reader_task: Option<JoinHandle<()>>,
    inbound_tx: mpsc::Sender<Inbound>,
    sockets: Sockets,
    out: Vec<Frame>,
    pong_deadline: Option<Instant>,
    /// Why the client's last packet was refused, for the polling `POST` that carried it.
    refused: Option<&'static str>,
}

impl Engine {
    fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        sid: String,
        session: Option<Arc<Session>>,
        writer: Option<WsWriter<Io>>,
        inbound_tx: mpsc::Sender<Inbound>,
    ) -> Engine {
        let sockets = Sockets::new(Arc::clone(&shared), peer);
        Engine {
            shared,
            peer,
            sid,
            session,
            writer,
            reader_task: None,
            inbound_tx,
            sockets,
            out: Vec::new(),
            pong_deadline: None,
            refused: None,
        }
    }

    /// Moves the session onto a WebSocket.
    fn attach(&mut self, reader: WsReader<Io>, writer: WsWriter<Io>) {
        self.writer = Some(writer);
        let tx = self.inbound_tx.clone();
        self.reader_task = Some(tokio::spawn(read_ws(reader, tx)));
    }

    /// Whether more may be taken from the outboxes now.
    fn can_send(&self) -> bool {
        if self.writer.is_some() {
            return true;
        }
        match &self.session {
            Some(s) => s.lock().bytes < self.shared.config.socketio.polling_buffer,
            None => true,
        }
    }

    /// Runs the session to its end. `slot` is the connection slot of a WebSocket session
    /// (a polling session's belongs to its [`Session`]).
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Inbound>,
        token: ShutdownToken,
        slot: Option<ConnectionSlot>,
    ) {
        let end = match crate::conn::crash::CatchPanic::new(self.serve(&mut rx, &token)).await {
            Ok(end) => end,
            Err(p) => {
                self.shared.counters.bump(Counter::ClosedPanic);
                tracing::error!(peer = %self.peer, sid = %self.sid, "panic in socket.io session: {p}");
                End::InternalError
            }
        };
        tracing::debug!(peer = %self.peer, sid = %self.sid, ?end, "socket.io session ends");
        self.finish(end).await;
        drop(slot);
        drop(token);
    }

    async fn serve(&mut self, rx: &mut mpsc::Receiver<Inbound>, token: &ShutdownToken) -> End {
        let interval = self.shared.config.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = token.triggered();
        tokio::pin!(stop);
        let connect_by = Instant::now() + CONNECT_TIMEOUT;
        let end = loop {
            if let Err(end) = self.flush().await {
                break end;
            }
            let can_send = self.can_send();
            let deadline = self.pong_deadline;
            let drained = self.session.clone();
            let waiting_connect = !self.sockets.ever_connected();
            let expiry = self.sockets.next_expiry();
            let step = tokio::select! {
                m = rx.recv() => match m {
                    Some(Inbound::Packet(p)) => self.on_packet(p).await,
                    Some(Inbound::Post(packets, done)) => {
                        let mut result = Ok(());
                        for p in packets {
                            result = self.on_packet(p).await;
                            if result.is_err() {
                                break;
                            }
                        }
                        let answer = match result {
                            Ok(()) => Ok(()),
                            Err(End::ProtocolError) => {
                                Err(self.refused.take().unwrap_or("protocol error"))
                            }
                            Err(_) => Err("session closed"),
                        };
                        let _ = done.send(answer);
                        result
                    }
                    Some(Inbound::Upgrade(pair)) => {
                        let (reader, writer) = *pair;
                        self.upgrade(reader, writer);
                        Ok(())
                    }
                    Some(Inbound::Error(why)) => {
                        tracing::debug!(peer = %self.peer, sid = %self.sid, "socket.io: {why}");
                        Err(End::ProtocolError)
                    }
                    Some(Inbound::Closed) | None => Err(End::TransportClose),
                },
                got = self.sockets.next_delivery(), if can_send => {
                    let step = self.sockets.on_delivery(got, &mut self.out);
                    self.step(step)
                }
                _ = ping.tick() => {
                    self.out.push(Frame::Text(Bytes::from_static(b"2")));
                    if self.pong_deadline.is_none() {
                        self.pong_deadline = Some(Instant::now() + self.shared.config.ping_timeout);
                    }
                    Ok(())
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    Err(End::PingTimeout)
                }
                // Only a polling session (`drained` set) ever cannot send.
                _ = async {
                    match drained.as_ref() {
                        Some(session) => session.drained.notified().await,
                        None => std::future::pending().await,
                    }
                }, if !can_send => Ok(()),
                _ = expiry_sleep(expiry), if expiry.is_some() => {
                    self.sockets.expire(&mut self.out);
                    Ok(())
                }
                _ = tokio::time::sleep_until(connect_by), if waiting_connect => {
                    tracing::debug!(peer = %self.peer, sid = %self.sid, "socket.io: no CONNECT in time");
                    Err(End::ProtocolError)
                }
                _ = &mut stop => Err(End::Shutdown),
            };
            if let Err(end) = step {
                break end;
            }
        };
        end
    }

    async fn on_packet(&mut self, p: EnginePacket) -> Result<(), End> {
        match p {
            EnginePacket::Pong(_) => {
                self.pong_deadline = None;
                Ok(())
            }
            EnginePacket::Text(t) => {
                let step = self.sockets.on_text(&t, &mut self.out).await;
                self.step(step)
            }
            EnginePacket::Binary(b) => {
                let step = self.sockets.on_binary(b, &mut self.out).await;
                self.step(step)
            }
            EnginePacket::Close => Err(End::ClientClose),
            EnginePacket::Noop => Ok(()),
            // Ping from a client, open, or an upgrade outside of a probe: not allowed.
            EnginePacket::Ping(_) | EnginePacket::Open(_) | EnginePacket::Upgrade => {
                self.refused = Some("unexpected Engine.IO packet type");
                Err(End::ProtocolError)
            }
        }
    }

    fn step(&mut self, step: Step) -> Result<(), End> {
        match step {
            Step::Continue => Ok(()),
            Step::ProtocolError(why) => {
                tracing::debug!(peer = %self.peer, sid = %self.sid, "socket.io: {why}");
                self.refused = Some(why);
                Err(End::ProtocolError)
            }
            Step::SlowConsumer => Err(End::SlowConsumer),
            Step::Shutdown => Err(End::Shutdown),
            Step::MissedPublications => Err(End::MissedPublications),
        }
    }

    /// The probed WebSocket takes over from polling.
    fn upgrade(&mut self, reader: WsReader<Io>, writer: WsWriter<Io>) {
        if let Some(session) = &self.session {
            let mut st = session.lock();
            let queued: Vec<Frame> = st.queue.drain(..).collect();
            st.bytes = 0;
            st.mode = Mode::Upgraded;
            drop(st);
            session.wake_get.notify_one();
            // Queued for polling before the switch: they go first.
            let later = std::mem::take(&mut self.out);
            self.out = queued;
            self.out.extend(later);
        }
        tracing::debug!(peer = %self.peer, sid = %self.sid, "socket.io upgraded to websocket");
        self.attach(reader, writer);
    }

    /// Writes what is pending to the transport.
    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        if let Some(w) = &mut self.writer {
            for f in self.out.drain(..) {
                let r = match f {
                    Frame::Text(t) => w.feed(Message::Text(t)),
                    Frame::Binary(b) => w.feed(Message::Binary(b)),
                    Frame::Event(ev) => ev.prepared().iter().try_for_each(|m| w.feed_prepared(m)),
                };
                if r.is_err() {
                    return Err(End::TransportClose);
                }
            }
            // A peer that stops reading would hold the flush forever (and with it the
            // heartbeat, which runs in the same loop): give it as long as a silent peer gets.
            let limit = self.shared.config.ping_interval + self.shared.config.ping_timeout;
            return match tokio::time::timeout(limit, w.flush()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) | Err(_) => Err(End::TransportClose),
            };
        }
        if let Some(session) = &self.session {
            let mut st = session.lock();
            for f in self.out.drain(..) {
                st.bytes += f.len();
                st.queue.push_back(f);
            }
            drop(st);
            session.wake_get.notify_one();
        }
        Ok(())
    }

    async fn finish(mut self, end: End) {
        self.sockets.close(end.recoverable());
        if let Some(session) = &self.session {
            sessions().remove(&session.sid);
            let mut st = session.lock();
            if end == End::Shutdown {
                st.queue.push_back(Frame::Text(Bytes::from_static(b"1")));
            }
            st.mode = Mode::Closed;
            drop(st);
            session.wake_get.notify_one();
        }
        if let Some(mut w) = self.writer.take() {
            let (code, reason) = match end {
                End::Shutdown => (1001, "server shutting down"),
                End::SlowConsumer => (1008, "slow consumer"),
                End::ProtocolError => (1002, "protocol error"),
                End::MissedPublications => (4500, "missed publications"),
                End::InternalError => (1011, "internal server error"),
                _ => (1000, ""),
            };
            if end != End::TransportClose {
                let _ = w.close(CloseCode(code), reason).await;
                if let Some(task) = &mut self.reader_task {
                    let _ = tokio::time::timeout(CLOSE_LINGER, task).await;
                }
            }
        }
        if let Some(task) = self.reader_task.take() {
            task.abort();
        }
    }
}

/// Sleeps until one second after unix time `at` (the same grace as for Centrifugo tokens).
/// The future is made again on every turn of the engine loop, so the grace is part of the
/// deadline (not added to what remains), or frequent turns would push it back for ever.
async fn expiry_sleep(at: Option<u64>) {
    let deadline = at.unwrap_or(u64::MAX / 4).saturating_add(1);
    let secs = deadline.saturating_sub(crate::auth::unix_now());
    tokio::time::sleep(Duration::from_secs(secs.min(365 * 24 * 3600))).await;
}

/// The WebSocket reader task: decodes frames into packets for the engine task.
async fn read_ws(mut reader: WsReader<Io>, tx: mpsc::Sender<Inbound>) {
    while let Some(msg) = reader.next().await {
        let item = match msg {
            Ok(Message::Text(t)) => match EnginePacket::decode_text_bytes(&t) {
                Ok(p) => Inbound::Packet(p),
                Err(_) => Inbound::Error("bad packet"),
            },
            Ok(Message::Binary(b)) => Inbound::Packet(EnginePacket::Binary(b)),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => break,
        };
        let fatal = matches!(item, Inbound::Error(_));
        if tx.send(item).await.is_err() || fatal {
            return;
        }
    }
    let _ = tx.send(Inbound::Closed).await;
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

    #[test]
    fn polling_payloads() {
        let body = encode_frames(&[
            Frame::Text(Bytes::from_static(b"42[\"a\"]")),
            Frame::Binary(Bytes::from_static(&[1, 2, 3, 4])),
            Frame::Event(Arc::new(
                switchboard_protocols::socketio::EncodedEvent::new(
                    Bytes::from_static(b"451-[\"b\",{\"_placeholder\":true,\"num\":0}]"),
                    vec![Bytes::from_static(&[5])],
                ),
            )),
        ]);
        assert_eq!(
            &body[..],
            &b"42[\"a\"]\x1ebAQIDBA==\x1e451-[\"b\",{\"_placeholder\":true,\"num\":0}]\x1ebBQ=="[..]
        );
    }
}
