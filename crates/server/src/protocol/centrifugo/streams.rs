//! Centrifugo's transports besides the WebSocket: the unidirectional HTTP streams (no SDK
//! needed) and the bidirectional emulation centrifuge-js falls back to when WebSocket is
//! unavailable. Every connection here runs the same [`CentrifugoDriver`] on the connection
//! runtime; only its sink differs ([`StreamTransport`] over a streamed response body), so
//! pings, recovery, stall limits, the slow-consumer policy, shutdown and the counters are
//! the WebSocket connection's.
//!
//! | path | request | response body |
//! |---|---|---|
//! | `/connection/uni_http_stream` | `POST`, body: the connect request (JSON) | one JSON push per line; ping `null` |
//! | `/connection/uni_websocket` | WebSocket upgrade; the connect request as `cf_connect` or as the first message | one text message per push; ping `{}` with a WebSocket ping |
//! | `/connection/uni_sse` | `GET ?cf_connect=<connect request JSON>` (or `POST` with it as body) | `text/event-stream`: one `data:` event per push; ping `{}` |
//! | `/connection/http_stream` | `POST`, body: the SDK's connect command | the bidirectional protocol's replies and pushes, one per line |
//! | `/connection/sse` | `GET ?cf_connect=<connect command>` | the same, one `data:` event each |
//! | `/emulation` | `POST {"session","node","data"}` | `200` (commands handed to the session) |
//!
//! **Unidirectional** pushes are the bidirectional protocol's without the wrapper: the
//! connect result as `{"connect":{...}}`, then `{"channel":"c","pub":{...}}` and the like;
//! the connection's channels are the server-side ones (the token's `channels` claim, or the
//! connect proxy's `channels`). Recovery: `subs` in the connect request
//! (`{"c":{"recover":true,"offset":5,"epoch":"…"}}`). On `uni_sse` every event that moves a
//! position carries an `id:` holding the positions of all the connection's channels in that
//! same shape, so a browser's `EventSource`, reconnecting by itself with `Last-Event-ID`,
//! recovers what it missed. An error answer to the connect (an expired token) is sent as
//! `{"error":{...}}` and ends the stream; every other ending is a `{"disconnect":{...}}`
//! push, then the end of the body.
//!
//! **Emulation**: the stream carries the server → client half; the client sends its
//! commands as `POST /emulation` with `{"session": …, "node": …, "data": "<commands>"}`,
//! where `session` and `node` come from the connect result. The session lives on the node
//! that holds its stream; a request reaching another node of a shared broker is forwarded
//! to it ([`crate::transport::forward`]), so no sticky sessions are needed. Answers:
//! `200` handed over, `204` no such session on its node (its stream is gone), `404` the
//! node is unknown, `400` malformed, `413` over `max_message_size`, `408` body too slow,
//! `502`/`504` the owning node unreachable.
//!
//! Bad input before the stream starts is a plain HTTP answer: `400` for a connect request
//! that is not valid JSON (or a missing one), `405` for a wrong method, `413` for a body over
//! `max_message_size`, `403` for an origin not allowed, and the connection limits' `429`/`503`.
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use switchboard_protocols::centrifugo::{
    self as cf, ConnectRequest, ConnectResult, DisconnectPush, Encoding, Push, PushBody,
    SubscribeRequest,
};
use switchboard_websocket::{CloseCode, Error as WsError, Message};
use tokio::sync::mpsc;

use super::CentrifugoDriver;
use crate::conn::driver::OutFrame;
use crate::conn::runtime::{self, Identity, Transport, WsTransport};
use crate::state::Shared;
use crate::transport::body::Body;
use crate::transport::forward::{is_forwarded, Forwarder};
use crate::transport::http::{read_body, text, BodyError};
use crate::transport::stream::{Framing, StreamTransport};
use crate::transport::upgrade;
use crate::transport::{Endpoint, RequestCtx, ResponseFuture, Route};

/// Unidirectional HTTP streaming.
pub const UNI_HTTP_STREAM_PATH: &str = "/connection/uni_http_stream";
/// Unidirectional WebSocket.
pub const UNI_WEBSOCKET_PATH: &str = "/connection/uni_websocket";
/// Unidirectional Server-Sent Events.
pub const UNI_SSE_PATH: &str = "/connection/uni_sse";
/// Bidirectional emulation over HTTP streaming (centrifuge-js `http_stream`).
pub const HTTP_STREAM_PATH: &str = "/connection/http_stream";
/// Bidirectional emulation over Server-Sent Events (centrifuge-js `sse`).
pub const SSE_PATH: &str = "/connection/sse";
/// Where emulated connections send their commands (centrifuge-js `emulationEndpoint`).
pub const EMULATION_PATH: &str = "/emulation";

/// Chunks queued ahead of the socket per stream (hyper buffers a little more itself).
const BODY_CHUNKS: usize = 32;
/// Emulation requests queued ahead of a session's connection.
const INBOUND: usize = 64;

/// Which of the stream transports a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    UniHttpStream,
    UniSse,
    UniWebsocket,
    HttpStream,
    Sse,
}

impl Kind {
    fn of(path: &str) -> Option<Kind> {
        match path {
            UNI_HTTP_STREAM_PATH => Some(Kind::UniHttpStream),
            UNI_SSE_PATH => Some(Kind::UniSse),
            HTTP_STREAM_PATH => Some(Kind::HttpStream),
            SSE_PATH => Some(Kind::Sse),
            _ => None,
        }
    }

    fn is_uni(self) -> bool {
        matches!(
            self,
            Kind::UniHttpStream | Kind::UniSse | Kind::UniWebsocket
        )
    }

    fn is_sse(self) -> bool {
        matches!(self, Kind::UniSse | Kind::Sse)
    }
}

/// The live emulation sessions of this node: id → the channel into its connection.
#[derive(Default)]
struct Sessions {
    map: Mutex<HashMap<String, mpsc::Sender<Bytes>>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Bytes>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes its session from the registry when the connection ends.
struct SessionGuard {
    sessions: Arc<Sessions>,
    id: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

/// The endpoint of the stream transports and of `/emulation`.
#[derive(Default)]
pub(crate) struct CentrifugoStreams {
    sessions: Arc<Sessions>,
    forwarder: Arc<Forwarder>,
}

impl CentrifugoStreams {
    /// An endpoint with no sessions yet.
    pub(crate) fn new() -> CentrifugoStreams {
        CentrifugoStreams::default()
    }
}

impl Endpoint for CentrifugoStreams {
    fn route(&self) -> Route {
        Route::Paths {
            paths: &[
                UNI_HTTP_STREAM_PATH,
                UNI_SSE_PATH,
                HTTP_STREAM_PATH,
                SSE_PATH,
                EMULATION_PATH,
            ],
            upgrades: false,
        }
    }

    fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture {
        let sessions = Arc::clone(&self.sessions);
        let forwarder = Arc::clone(&self.forwarder);
        Box::pin(async move {
            match Kind::of(req.uri().path()) {
                Some(kind) => open(kind, req, ctx, sessions).await,
                None => emulation(req, ctx, &sessions, &forwarder).await,
            }
        })
    }
}

/// A plain-text refusal, logged and counted once.
fn refuse(
    shared: &Shared,
    peer: SocketAddr,
    status: StatusCode,
    why: &'static str,
) -> Response<Body> {
    shared
        .counters
        .bump(crate::conn::stats::Counter::RejectedBadHandshake);
    tracing::info!(%peer, status = status.as_u16(), "centrifugo stream refused: {why}");
    text(status, why)
}

/// Opens a stream connection: the connect request is checked, the connection slot taken,
/// the driver started on the runtime, and the streamed response returned.
async fn open(
    kind: Kind,
    req: Request<Incoming>,
    ctx: RequestCtx,
    sessions: Arc<Sessions>,
) -> Response<Body> {
    let RequestCtx {
        shared,
        peer,
        token,
    } = ctx;
    let (parts, body) = req.into_parts();
    let origin = parts
        .headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if !shared.origins.allows_request(origin, host) {
        shared
            .counters
            .bump(crate::conn::stats::Counter::RejectedOrigin);
        tracing::info!(%peer, "centrifugo stream refused: origin not allowed");
        return text(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let max = shared.config.max_message_size;
    // The connect: `cf_connect` in the query of a GET (SSE), the body of a POST.
    let raw = match parts.method {
        Method::GET if kind.is_sse() => match upgrade::query_value(parts.uri.query(), "cf_connect")
        {
            Some(v) if v.len() <= max => Bytes::from(v),
            Some(_) => return refuse(&shared, peer, StatusCode::PAYLOAD_TOO_LARGE, "too large"),
            None if kind.is_uni() => Bytes::from_static(b"{}"),
            None => return refuse(&shared, peer, StatusCode::BAD_REQUEST, "bad request"),
        },
        Method::POST if kind != Kind::Sse => {
            match read_body(body, max, shared.config.body_timeout).await {
                Ok(b) if b.is_empty() && kind.is_uni() => Bytes::from_static(b"{}"),
                Ok(b) => b,
                Err(BodyError::TooLarge) => {
                    return refuse(&shared, peer, StatusCode::PAYLOAD_TOO_LARGE, "too large")
                }
                Err(BodyError::TimedOut) => {
                    return refuse(&shared, peer, StatusCode::REQUEST_TIMEOUT, "body timeout")
                }
                Err(BodyError::Broken) => {
                    return refuse(&shared, peer, StatusCode::BAD_REQUEST, "bad request")
                }
            }
        }
        _ => return crate::transport::http::method_not_allowed(),
    };
    let first = if kind.is_uni() {
        let last_event_id = parts
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| upgrade::query_value(parts.uri.query(), "lastEventId"));
        match uni_connect(&raw, last_event_id.as_deref().filter(|_| kind.is_sse())) {
            Some(first) => first,
            None => {
                return refuse(
                    &shared,
                    peer,
                    StatusCode::BAD_REQUEST,
                    "bad connect request",
                )
            }
        }
    } else {
        // The SDK's connect command, checked now so that garbage is a 400, not a stream.
        match cf::commands(&raw).next() {
            Some(Ok(cf::Command {
                method: cf::Method::Connect(_),
                ..
            })) => raw,
            _ => {
                return refuse(
                    &shared,
                    peer,
                    StatusCode::BAD_REQUEST,
                    "bad connect command",
                )
            }
        }
    };
    let head = Request::from_parts(parts, ());
    let slot = match upgrade::take_slot(&head, &shared, peer) {
        Ok(slot) => slot,
        Err(refusal) => return *refusal,
    };
    let forwarded = shared
        .proxy
        .any_enabled()
        .then(|| shared.proxy.forwarded(head.headers()));
    let (feed, body) = Body::channel(BODY_CHUNKS);
    let driver =
        CentrifugoDriver::new(Arc::clone(&shared), peer, Encoding::Json).with_proxy(forwarded);
    let who = Identity {
        peer,
        id: 0,
        protocol: cf::PROTOCOL,
    };
    let limits = upgrade::limits(&shared);
    let counters = Arc::clone(&shared.counters);
    if kind.is_uni() {
        let framing = CfFraming::new(kind, None);
        let transport = StreamTransport::unidirectional(framing, feed, first);
        runtime::spawn(transport, driver, limits, who, counters, token, Some(slot));
    } else {
        let id = session_id();
        let node = shared.node.broker().node_id().to_string();
        let (tx, rx) = mpsc::channel(INBOUND);
        sessions.lock().insert(id.clone(), tx);
        let guard = SessionGuard {
            sessions,
            id: id.clone(),
        };
        let framing = CfFraming::new(kind, Some(guard));
        let transport = StreamTransport::bidirectional(framing, feed, first, rx);
        let driver = driver.with_session(id, node);
        runtime::spawn(transport, driver, limits, who, counters, token, Some(slot));
    }
    let mut r = Response::new(body);
    let content_type = if kind.is_sse() {
        "text/event-stream"
    } else {
        "application/json"
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Asks reverse proxies (nginx) not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// A new emulation session id: 128 random bits, hex.
fn session_id() -> String {
    let n: u128 = rand::random();
    format!("{n:032x}")
}

/// The connect command a unidirectional connect request stands for, with the positions of
/// an SSE `Last-Event-ID` (see [`positions_id`]) added to its `subs` as recovery requests;
/// `None` when the request is not a JSON connect request.
fn uni_connect(raw: &[u8], last_event_id: Option<&str>) -> Option<Bytes> {
    let mut req: ConnectRequest = serde_json::from_slice(raw).ok()?;
    if let Some(id) = last_event_id {
        // A malformed id is ignored rather than refused: the browser sends back whatever
        // it last saw, and a plain reconnect is still better than none.
        if let Ok(positions) = serde_json::from_str::<BTreeMap<String, Position>>(id) {
            for (channel, p) in positions {
                req.subs.insert(
                    channel,
                    SubscribeRequest {
                        recover: true,
                        offset: p.offset,
                        epoch: p.epoch,
                        ..Default::default()
                    },
                );
            }
        }
    }
    let command = serde_json::json!({ "id": 1, "connect": req });
    serde_json::to_vec(&command).ok().map(Bytes::from)
}

/// A channel's stream position, as carried in an SSE event id.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
struct Position {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

/// Turns the driver's messages (bidirectional replies and pushes, one per line) into what a
/// stream transport sends.
struct CfFraming {
    kind: Kind,
    /// `uni_sse`: each recoverable channel's position, for the event ids.
    positions: BTreeMap<String, Position>,
    /// An error answered the connect: the stream ends.
    finished: bool,
    /// Emulation: removes the session from the registry when the connection ends.
    _session: Option<SessionGuard>,
}

const NEWLINE: Bytes = Bytes::from_static(b"\n");
const DATA: Bytes = Bytes::from_static(b"data: ");
const EVENT_END: Bytes = Bytes::from_static(b"\n\n");
const OPEN_BRACE: Bytes = Bytes::from_static(b"{");

impl CfFraming {
    fn new(kind: Kind, session: Option<SessionGuard>) -> CfFraming {
        CfFraming {
            kind,
            positions: BTreeMap::new(),
            finished: false,
            _session: session,
        }
    }

    /// One bidirectional line as its unidirectional form (the pieces to send one after the
    /// other), `None` when it has none (a reply to a command a unidirectional client cannot
    /// send). Also keeps the `uni_sse` positions; returns whether they moved.
    fn uni_line(&mut self, line: Bytes, pieces: &mut Vec<Bytes>) -> bool {
        if &line[..] == cf::PING {
            pieces.push(if self.kind == Kind::UniHttpStream {
                Bytes::from_static(b"null")
            } else {
                line
            });
            return false;
        }
        if let Some(inner) = strip_push(&line) {
            let inner = line.slice_ref(inner);
            let moved = self.kind == Kind::UniSse && self.track_push(&line);
            pieces.push(inner);
            return moved;
        }
        if line.starts_with(b"{\"id\":") {
            let Some(comma) = line.iter().position(|&b| b == b',') else {
                return false;
            };
            let rest = line.slice(comma + 1..);
            if rest.starts_with(b"\"connect\":") {
                let moved = self.kind == Kind::UniSse && self.track_connect(&line);
                pieces.push(OPEN_BRACE);
                pieces.push(rest);
                return moved;
            }
            if rest.starts_with(b"\"error\":") {
                self.finished = true;
                pieces.push(OPEN_BRACE);
                pieces.push(rest);
            }
            return false;
        }
        pieces.push(line);
        false
    }

    /// Records the positions of the connect result's recoverable subscriptions.
    fn track_connect(&mut self, line: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct ConnectReply {
            connect: ConnectResult,
        }
        let Ok(reply) = serde_json::from_slice::<ConnectReply>(line) else {
            return false;
        };
        for (channel, sub) in reply.connect.subs {
            if sub.recoverable || sub.positioned {
                self.positions.insert(
                    channel,
                    Position {
                        offset: sub.offset,
                        epoch: sub.epoch,
                    },
                );
            }
        }
        !self.positions.is_empty()
    }

    /// Moves a channel's position on its publication; forgets it on `unsubscribe`.
    fn track_push(&mut self, line: &[u8]) -> bool {
        if let Some((channel, offset)) = publication_position(line) {
            if let Some(p) = self.positions.get_mut(&channel) {
                p.offset = offset;
                return true;
            }
            return false;
        }
        if let Some(channel) = push_channel(line) {
            if line[..].windows(15).any(|w| w == b"\"unsubscribe\":{") {
                return self.positions.remove(&channel).is_some();
            }
        }
        false
    }

    /// The `disconnect` push telling the peer the connection ends with `code` and `reason`,
    /// as a bidirectional line; `None` after an error answer already ended the stream.
    fn disconnect_push(&self, code: u16, reason: &str) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        let push = Push::new(
            "",
            PushBody::Disconnect(DisconnectPush {
                code: u32::from(code),
                reason: reason.to_string(),
                reconnect: (3000..3500).contains(&code) || (4000..4500).contains(&code),
            }),
        );
        Some(push.encode())
    }

    /// The SSE event id holding every tracked position.
    fn positions_id(&self) -> Option<Bytes> {
        if self.positions.is_empty() {
            return None;
        }
        let json = serde_json::to_string(&self.positions).ok()?;
        Some(Bytes::from(format!("id: {json}\n")))
    }
}

impl Framing for CfFraming {
    fn frame(&mut self, payload: &Bytes, out: &mut Vec<Bytes>) {
        if self.kind == Kind::HttpStream {
            // The SDK splits the stream on newlines: the driver's lines go as they are.
            out.push(payload.clone());
            out.push(NEWLINE);
            return;
        }
        let mut start = 0;
        while start < payload.len() {
            let end = payload[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(payload.len(), |i| start + i);
            let line = payload.slice(start..end);
            start = end + 1;
            if line.is_empty() {
                continue;
            }
            match self.kind {
                Kind::Sse => {
                    out.extend([DATA, line, EVENT_END]);
                }
                Kind::UniHttpStream => {
                    let before = out.len();
                    self.uni_line(line, out);
                    if out.len() > before {
                        out.push(NEWLINE);
                    }
                }
                Kind::UniSse => {
                    let mut pieces = Vec::with_capacity(2);
                    let moved = self.uni_line(line, &mut pieces);
                    if pieces.is_empty() {
                        continue;
                    }
                    if moved {
                        out.extend(self.positions_id());
                    }
                    out.push(DATA);
                    out.append(&mut pieces);
                    out.push(EVENT_END);
                }
                // Framed message by message by `UniWsTransport`.
                Kind::HttpStream | Kind::UniWebsocket => {}
            }
        }
    }

    fn close(&mut self, code: u16, reason: &str, out: &mut Vec<Bytes>) {
        if let Some(push) = self.disconnect_push(code, reason) {
            self.frame(&push, out);
        }
    }

    fn finished(&self) -> bool {
        self.finished
    }
}

/// The inner push of a `{"push":{...}}` line.
fn strip_push(line: &[u8]) -> Option<&[u8]> {
    line.strip_prefix(b"{\"push\":")?.strip_suffix(b"}")
}

/// The channel of a `{"push":{"channel":"…",…}}` line (only the name is parsed).
fn push_channel(line: &[u8]) -> Option<String> {
    let rest = line.strip_prefix(b"{\"push\":{\"channel\":")?;
    let mut de = serde_json::Deserializer::from_slice(rest);
    String::deserialize(&mut de).ok()
}

/// The channel and offset of a publication push, read from the ends of the line the
/// encoder writes (`{"push":{"channel":"c","pub":{…,"offset":N}}}`) without parsing the
/// data in between; `None` for any other push or a publication without an offset.
fn publication_position(line: &[u8]) -> Option<(String, u64)> {
    let channel = push_channel(line)?;
    let head_len = b"{\"push\":{\"channel\":".len() + serde_json::to_string(&channel).ok()?.len();
    if !line.get(head_len..)?.starts_with(b",\"pub\":{") {
        return None;
    }
    let body = line.strip_suffix(b"}}}")?;
    let digits = body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let (head, number) = body.split_at(body.len() - digits);
    if !head.ends_with(b"\"offset\":") {
        return None;
    }
    let offset = std::str::from_utf8(number).ok()?.parse().ok()?;
    Some((channel, offset))
}

/// The endpoint of `/connection/uni_websocket`: the unidirectional protocol over a
/// WebSocket. The connect request comes as `cf_connect` in the query or as the client's first
/// message; after it the client's messages are read and ignored (pongs and close frames are
/// the WebSocket layer's).
pub(crate) struct CentrifugoUniWebsocket;

impl Endpoint for CentrifugoUniWebsocket {
    fn route(&self) -> Route {
        Route::Upgrade(UNI_WEBSOCKET_PATH)
    }

    fn handle(&self, mut req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture {
        let RequestCtx {
            shared,
            peer,
            token,
        } = ctx;
        let first = match upgrade::query_value(req.uri().query(), "cf_connect") {
            None => None,
            Some(raw) => match uni_connect(raw.as_bytes(), None) {
                Some(first) => Some(first),
                None => {
                    let r = refuse(
                        &shared,
                        peer,
                        StatusCode::BAD_REQUEST,
                        "bad connect request",
                    );
                    return Box::pin(std::future::ready(r));
                }
            },
        };
        let admitted = match upgrade::admit(&req, &shared, peer) {
            Ok(admitted) => admitted,
            Err(refusal) => return Box::pin(std::future::ready(*refusal)),
        };
        let ctx = RequestCtx {
            shared,
            peer,
            token,
        };
        let response =
            super::run_over_websocket(&mut req, ctx, admitted, Encoding::Json, move |inner| {
                UniWsTransport {
                    inner,
                    framing: CfFraming::new(Kind::UniWebsocket, None),
                    first,
                    connected: false,
                }
            });
        Box::pin(std::future::ready(response))
    }
}

/// A WebSocket carrying the unidirectional protocol: each of the driver's lines becomes one
/// text message without its bidirectional wrapper (a publication's shared bytes, sliced,
/// not copied), and each application ping `{}` goes with a WebSocket ping, whose pong keeps
/// the connection alive (the client never sends anything else).
struct UniWsTransport<S> {
    inner: WsTransport<S>,
    framing: CfFraming,
    /// The connect command from `cf_connect`, handed to the driver first.
    first: Option<Bytes>,
    /// Whether the connect was handed over: later client messages are ignored.
    connected: bool,
}

impl<S> Transport for UniWsTransport<S>
where
    S: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + crate::conn::park::ParkIo
        + Unpin
        + Send
        + 'static,
{
    fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Message, WsError>>> {
        use std::task::Poll;
        if let Some(first) = self.first.take() {
            self.connected = true;
            return Poll::Ready(Some(Ok(Message::Text(first))));
        }
        loop {
            match std::task::ready!(self.inner.poll_next(cx)) {
                Some(Ok(Message::Text(t) | Message::Binary(t))) if !self.connected => {
                    self.connected = true;
                    // Not a connect request: an empty message, which the driver refuses
                    // as a bad request (3501).
                    let first = uni_connect(&t, None).unwrap_or_default();
                    return Poll::Ready(Some(Ok(Message::Text(first))));
                }
                Some(Ok(Message::Text(_) | Message::Binary(_))) => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn feed(&mut self, frame: &OutFrame) -> Result<(), WsError> {
        let payload = match frame {
            OutFrame::Message(Message::Text(b)) => b,
            OutFrame::Prepared(p) => p.payload(),
            other => return self.inner.feed(other),
        };
        for line in payload.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = payload.slice_ref(line);
            if &line[..] == cf::PING {
                self.inner
                    .feed(&OutFrame::Message(Message::Ping(Bytes::new())))?;
            }
            let mut pieces = Vec::with_capacity(2);
            self.framing.uni_line(line, &mut pieces);
            let message = match pieces.len() {
                0 => continue,
                1 => pieces.swap_remove(0),
                _ => Bytes::from(pieces.concat()),
            };
            self.inner
                .feed(&OutFrame::Message(Message::Text(message)))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> impl std::future::Future<Output = Result<(), WsError>> + Send + '_ {
        self.inner.flush()
    }

    fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
    ) -> impl std::future::Future<Output = Result<(), WsError>> + Send {
        // The disconnect push first, then the close frame with the same advice.
        let fed = match self.framing.disconnect_push(code.0, reason) {
            Some(push) => self.feed(&OutFrame::Message(Message::Text(push))),
            None => Ok(()),
        };
        let reason = reason.to_string();
        async move {
            fed?;
            self.inner.close(code, &reason).await
        }
    }

    fn linger(
        &mut self,
        limit: std::time::Duration,
    ) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.inner.linger(limit)
    }

    fn drain(
        &mut self,
        limit: std::time::Duration,
    ) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.inner.drain(limit)
    }

    fn activity(&self) -> crate::conn::heartbeat::Activity {
        self.inner.activity()
    }
}

/// The emulation body centrifuge-js posts.
#[derive(Deserialize)]
struct EmulationRequest {
    #[serde(default)]
    session: String,
    #[serde(default)]
    node: String,
    /// The commands: a string of JSON lines (what the SDK sends), or one JSON command.
    data: serde_json::Value,
}

/// `POST /emulation`: hands the commands to their session here, or forwards the request to
/// the node that holds it.
async fn emulation(
    req: Request<Incoming>,
    ctx: RequestCtx,
    sessions: &Sessions,
    forwarder: &Forwarder,
) -> Response<Body> {
    let RequestCtx { shared, peer, .. } = ctx;
    if req.method() != Method::POST {
        return crate::transport::http::method_not_allowed();
    }
    let forwarded_already = is_forwarded(&req);
    let (parts, body) = req.into_parts();
    let max = shared.config.max_message_size;
    let raw = match read_body(body, max, shared.config.body_timeout).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return refuse(&shared, peer, StatusCode::PAYLOAD_TOO_LARGE, "too large")
        }
        Err(BodyError::TimedOut) => {
            return refuse(&shared, peer, StatusCode::REQUEST_TIMEOUT, "body timeout")
        }
        Err(BodyError::Broken) => {
            return refuse(&shared, peer, StatusCode::BAD_REQUEST, "bad request")
        }
    };
    let Ok(request) = serde_json::from_slice::<EmulationRequest>(&raw) else {
        return refuse(
            &shared,
            peer,
            StatusCode::BAD_REQUEST,
            "bad emulation request",
        );
    };
    let commands = match request.data {
        serde_json::Value::String(s) => Bytes::from(s),
        serde_json::Value::Null => {
            return refuse(
                &shared,
                peer,
                StatusCode::BAD_REQUEST,
                "bad emulation request",
            )
        }
        other => Bytes::from(other.to_string()),
    };
    let own = shared.node.broker().node_id();
    if request.node != own && shared.node.is_shared() && !forwarded_already {
        let target = match owner_address(&shared, &request.node).await {
            Ok(target) => target,
            Err(status) => return text(status, "unknown node"),
        };
        let timeout = shared.config.body_timeout;
        return match forwarder.forward(parts, raw, &target, timeout).await {
            Ok(response) => response.map(Body::from),
            Err(e) => {
                tracing::debug!(node = %request.node, "centrifugo emulation: forwarding failed: {e}");
                text(e.status(), "node unreachable")
            }
        };
    }
    let tx = sessions.lock().get(&request.session).cloned();
    let Some(tx) = tx else {
        tracing::debug!(%peer, "centrifugo emulation: no such session");
        let mut r = Response::new(Body::default());
        *r.status_mut() = StatusCode::NO_CONTENT;
        return r;
    };
    // Bounded: a client posting faster than its connection handles commands waits here,
    // at most the body timeout.
    match tokio::time::timeout(shared.config.body_timeout, tx.send(commands)).await {
        Ok(Ok(())) => text(StatusCode::OK, ""),
        Ok(Err(_)) => {
            let mut r = Response::new(Body::default());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "session busy"),
    }
}

/// The `host:port` of node `owner` from the broker's registry.
async fn owner_address(shared: &Shared, owner: &str) -> Result<String, StatusCode> {
    let nodes = shared.node.nodes().await.map_err(|e| {
        tracing::debug!(
            owner,
            "centrifugo emulation: node registry unavailable: {e}"
        );
        StatusCode::SERVICE_UNAVAILABLE
    })?;
    nodes
        .iter()
        .find(|n| n.id == owner)
        .and_then(|n| n.url.strip_prefix("http://"))
        .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
        .ok_or(StatusCode::NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::{Epoch, Payload, Publication};

    fn framed(framing: &mut CfFraming, payload: &[u8]) -> String {
        let mut out = Vec::new();
        framing.frame(&Bytes::copy_from_slice(payload), &mut out);
        joined(&out)
    }

    /// The pieces of a stream's output as one text.
    fn joined(pieces: &[Bytes]) -> String {
        pieces
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn the_position_of_an_encoded_publication_is_read_from_its_ends() {
        let p = Publication::new(
            Arc::from("news \"x\""),
            Payload::text(r#"{"offset":99,"a":"}}}"}"#),
            42,
            Epoch::default(),
            None,
        );
        let line = cf::encode_publication_push(&p);
        assert_eq!(
            publication_position(&line),
            Some(("news \"x\"".to_string(), 42))
        );
        assert_eq!(
            publication_position(b"{\"push\":{\"channel\":\"c\",\"join\":{}}}"),
            None
        );
    }

    #[test]
    fn unidirectional_lines_lose_their_wrapper() {
        let mut f = CfFraming::new(Kind::UniHttpStream, None);
        let s = framed(
            &mut f,
            b"{\"id\":1,\"connect\":{\"client\":\"c\"}}\n{\"push\":{\"channel\":\"a\",\"pub\":{\"data\":1}}}\n{}",
        );
        assert_eq!(
            s,
            "{\"connect\":{\"client\":\"c\"}}\n{\"channel\":\"a\",\"pub\":{\"data\":1}}\nnull\n"
        );
    }

    #[test]
    fn uni_sse_events_carry_the_positions() {
        let mut f = CfFraming::new(Kind::UniSse, None);
        let s = framed(
            &mut f,
            b"{\"id\":1,\"connect\":{\"client\":\"c\",\"subs\":{\"a\":{\"recoverable\":true,\"epoch\":\"e\",\"offset\":3}}}}",
        );
        assert!(
            s.starts_with("id: {\"a\":{\"offset\":3,\"epoch\":\"e\"}}\ndata: {\"connect\":"),
            "{s}"
        );
        let s = framed(
            &mut f,
            b"{\"push\":{\"channel\":\"a\",\"pub\":{\"data\":1,\"offset\":4}}}",
        );
        assert_eq!(
            s,
            "id: {\"a\":{\"offset\":4,\"epoch\":\"e\"}}\ndata: {\"channel\":\"a\",\"pub\":{\"data\":1,\"offset\":4}}\n\n"
        );
        let s = framed(&mut f, b"{}");
        assert_eq!(s, "data: {}\n\n");
    }

    #[test]
    fn an_error_answer_to_the_connect_ends_a_unidirectional_stream() {
        let mut f = CfFraming::new(Kind::UniHttpStream, None);
        let s = framed(
            &mut f,
            b"{\"id\":1,\"error\":{\"code\":109,\"message\":\"token expired\"}}",
        );
        assert_eq!(
            s,
            "{\"error\":{\"code\":109,\"message\":\"token expired\"}}\n"
        );
        assert!(f.finished());
    }

    #[test]
    fn a_close_is_a_disconnect_push() {
        let mut f = CfFraming::new(Kind::Sse, None);
        let mut out = Vec::new();
        f.close(3001, "shutdown", &mut out);
        assert_eq!(
            joined(&out),
            "data: {\"push\":{\"disconnect\":{\"code\":3001,\"reason\":\"shutdown\",\"reconnect\":true}}}\n\n"
        );
    }

    #[test]
    fn last_event_id_becomes_recovery_requests() {
        let cmd = uni_connect(
            br#"{"token":"t"}"#,
            Some(r#"{"a":{"offset":7,"epoch":"e"}}"#),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&cmd).unwrap();
        assert_eq!(v["id"], 1);
        assert_eq!(v["connect"]["token"], "t");
        assert_eq!(v["connect"]["subs"]["a"]["recover"], true);
        assert_eq!(v["connect"]["subs"]["a"]["offset"], 7);
        assert!(uni_connect(b"not json", None).is_none());
    }
}
