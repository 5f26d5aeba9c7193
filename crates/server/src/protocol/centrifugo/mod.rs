//! The Centrifugo client protocol (v2, JSON) at `/connection/websocket`, so the real
//! `centrifuge` SDKs can connect.
//!
//! After the WebSocket upgrade (same checks as raw rooms: origin, handshake, connection
//! limit), the connection runs on the connection runtime ([`crate::conn::runtime`]): one
//! task reads the client's frames, writes, pings and times out. [`CentrifugoDriver`] holds
//! the protocol state (subscriptions, user, token expiry), answers commands in the order
//! they were read and frames the outbox's deliveries, so a reply and the publications
//! queued after it can never be reordered, and a command read before the client's close is
//! carried out before the close is even seen.
//!
//! * The first command must be `connect`, within the handshake timeout (else 3502
//!   "stale"); a first frame that is not a `connect` closes with 3501 "bad request". Its token is verified with the configured keys
//!   ([`crate::auth`]); an empty token is accepted only with `allow_anonymous`. An expired
//!   token is answered with error 109 so the SDK fetches a fresh one and reconnects (the client then has the
//!   handshake timeout to close); an
//!   invalid one closes with 3500 "invalid token". The token's `channels` become
//!   server-side subscriptions, reported in the connect result (with recovery when the
//!   client asks for it in `subs`).
//! * `subscribe` checks permissions through the hub ([`switchboard_core::Hub::check_subscribe`]),
//!   verifies a subscription token when one is given, and joins with recovery when asked:
//!   the reply carries the missed publications, `recovered`, `epoch` and `offset`.
//!   Everything published after the join arrives after the reply, exactly once.
//! * `publish`, `presence`, `presence_stats`, `history` check permissions the same way;
//!   `rpc` answers 108 "not available"; `send` is ignored; `refresh` and `sub_refresh`
//!   verify the new token and move the expiry.
//! * A subscription made with an expiring token reports `expires`/`ttl`; if its expiry
//!   passes without a `sub_refresh`, it is removed and the client gets an `unsubscribe`
//!   push with code 2501 "subscription expired" (the connection stays open). An expiry set
//!   by the subscribe proxy (`expire_at`) in a `proxy_sub_refresh` namespace goes to the
//!   sub_refresh proxy instead, whose answer moves it or ends the subscription the same way.
//! * Once connected, the server sends `{}` every ping interval; a client that sends
//!   nothing (no pong, no command) within the ping timeout after a ping is closed with 3012
//!   "no pong".
//! * A connection whose token expires without a `refresh` is closed with 3005; an
//!   undecodable frame with 3501 "bad request"; a slow consumer with 3008 "slow"; server
//!   shutdown with 3001 "shutdown"; a kick through the API with 3011 "force reconnect".
//! * Writes are bounded like a raw room's: a write that waits for a client that stopped
//!   reading gives up when the hub closes the outbox under the slow-consumer policy (3008,
//!   sent within a bounded wait) or after `ping_timeout` without progress (the socket is
//!   dropped); both count as `closed_slow_consumer`.
//!
//! Replies and pushes that are ready together go out in one WebSocket frame, one JSON
//! message per line, as the protocol allows.
//!
//! Hostile input: a channel name no channel can have (empty, too long, whitespace or control
//! characters) gets error 107 "bad request: invalid channel name"; token time claims of any
//! size are accepted (a time past what the clock can represent never fires); a panic while
//! serving a connection (a bug) closes it with 1011 "internal server error" and is counted as
//! `closed_panic`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use switchboard_core::{
    ClientCtx, CloseReason, ConnHandle, ConnInfo, Control, Delivery, Epoch, HistoryQuery, Outbox,
    StreamPosition as CorePosition, SubscribeOptions,
};
use switchboard_protocols::centrifugo::{
    self as cf, protobuf, wire_epoch, Command, ConnectResult, DecodeError, Disconnect, Encoding,
    Error as CfError, HistoryResult, Join, Leave, Method, PingResult, PresenceResult,
    PresenceStatsResult, PublishResult, Push, PushBody, RefreshResult, Reply, ReplyResult,
    RpcRequest, RpcResult, SubRefreshResult, SubscribePush, SubscribeRequest, SubscribeResult,
    UnsubscribePush, UnsubscribeResult,
};
use switchboard_websocket::{CloseCode, Message};
use tokio::time::Instant;

use self::subs::Subscriptions;
use crate::auth::{unix_now, TokenError};
use crate::conn::driver::{Driver, Ending, Out};
use crate::conn::runtime::{self, Identity, Transport, WsTransport};
use crate::protocol::channels::{self, ClientOps, OpError};
use crate::proxy::{
    self, Answer, BackendDisconnect, BackendError, Failure, Forwarded, Kind, ProxyRequest,
};
use crate::state::Shared;
use crate::transport::upgrade;
use crate::transport::{Endpoint, RequestCtx, ResponseFuture, Route};
use tokio::sync::mpsc;

/// The path SDKs connect to.
pub const PATH: &str = "/connection/websocket";

/// The WebSocket subprotocols Centrifugo SDKs may offer (the JSON one is the default
/// without any); `centrifuge-protobuf` selects the Protobuf encoding.
const SUBPROTOCOLS: &[&str] = &["centrifuge-json", protobuf::SUBPROTOCOL];

/// Most outbox deliveries written per frame.
const BATCH: usize = 64;

/// The Centrifugo endpoint: WebSocket upgrades on [`PATH`].
pub(crate) struct Centrifugo;

impl Endpoint for Centrifugo {
    fn route(&self) -> Route {
        Route::Upgrade(PATH)
    }

    fn handle(&self, mut req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture {
        let RequestCtx {
            shared,
            peer,
            token,
        } = ctx;
        let admitted = match upgrade::admit_with(&req, &shared, peer, SUBPROTOCOLS) {
            Ok(admitted) => admitted,
            Err(refusal) => return Box::pin(std::future::ready(*refusal)),
        };
        let encoding = Encoding::negotiate(req.uri().query(), admitted.protocol());
        let ctx = RequestCtx {
            shared,
            peer,
            token,
        };
        Box::pin(std::future::ready(run_over_websocket(
            &mut req,
            ctx,
            admitted,
            encoding,
            |transport| transport,
        )))
    }
}

/// Accepts an admitted upgrade and runs the Centrifugo driver over the WebSocket, inside the
/// transport `wrap` makes of it: the one setup of both WebSocket endpoints (the bidirectional
/// protocol above, the unidirectional one in [`streams`]).
fn run_over_websocket<T: Transport>(
    req: &mut Request<Incoming>,
    ctx: RequestCtx,
    admitted: upgrade::Admitted,
    encoding: Encoding,
    wrap: impl FnOnce(WsTransport<upgrade::Io>) -> T + Send + 'static,
) -> http::Response<crate::transport::body::Body> {
    let RequestCtx {
        shared,
        peer,
        token,
    } = ctx;
    let timeout = shared.config.handshake_timeout;
    let max = shared.config.max_message_size;
    let limits = upgrade::limits(&shared);
    let counters = Arc::clone(&shared.counters);
    let conn_shared = Arc::clone(&shared);
    // The headers the backend's proxy gets with this connection's calls (cookies, …).
    let forwarded = shared
        .proxy
        .any_enabled()
        .then(|| shared.proxy.forwarded(req.headers()));
    admitted.accept(req, &shared, peer, timeout, max, move |ws, slot| {
        let who = Identity {
            peer,
            // The hub's id comes with `connect`; logs of the driver carry it from then.
            id: 0,
            protocol: encoding.protocol(),
        };
        runtime::spawn(
            wrap(WsTransport::new(ws)),
            CentrifugoDriver::new(conn_shared, peer, encoding).with_proxy(forwarded),
            limits,
            who,
            counters,
            token,
            Some(slot),
        );
    })
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `connect`, until this instant (the handshake timeout).
    AwaitConnect(Instant),
    /// `connect` was answered with an error: waiting for the client to go, until this
    /// instant.
    Refused(Instant),
    /// Connected: the handle and the outbox are set.
    Connected,
}

/// What handling one command produced.
enum Step {
    /// Keep going.
    Continue,
    /// End the connection with this disconnect (after what was queued).
    Stop(Disconnect),
}

/// A step's future: ready at once on the fast paths (a pong, publications to frame), boxed
/// when it waits on the node (subscribe, publish, history, presence, server-side
/// subscriptions). Boxing only the slow paths keeps the connection task's own state small:
/// the runtime's loop holds this future inline, so its size is paid by every connection.
enum StepFuture<F> {
    Ready(Option<Result<(), Ending>>),
    Boxed(Pin<Box<F>>),
}

impl<F> StepFuture<F> {
    fn ready(r: Result<(), Ending>) -> Self {
        StepFuture::Ready(Some(r))
    }

    fn boxed(f: F) -> Self {
        StepFuture::Boxed(Box::pin(f))
    }
}

impl<F: Future<Output = Result<(), Ending>>> Future for StepFuture<F> {
    type Output = Result<(), Ending>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            StepFuture::Ready(r) => Poll::Ready(r.take().unwrap_or(Ok(()))),
            StepFuture::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

/// The part of a client frame that may wait on the node.
enum SlowFrame {
    /// The first frame: `connect` (and the commands batched after it).
    Connect(Bytes),
    /// Commands of a connected client.
    Commands(Vec<Result<Command, DecodeError>>),
}

/// The runtime's ending for a Centrifugo disconnect: that close code and reason.
fn disconnect(d: Disconnect) -> Ending {
    Ending::Close(d.code, d.reason)
}

/// One Centrifugo connection's state machine (see the module documentation).
pub(crate) struct CentrifugoDriver {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// JSON or Protobuf, chosen at the upgrade.
    encoding: Encoding,
    phase: Phase,
    /// Set once `connect` succeeded.
    handle: Option<ConnHandle>,
    /// Set once `connect` succeeded; until then nothing is delivered.
    outbox: Option<Outbox>,
    /// Channels this client subscribed to (client- and server-side), with what is kept
    /// per subscription: stream positions, where live delivery starts, token expiry.
    subs: Subscriptions,
    /// Unix time at which the connection token expires.
    expires_at: Option<u64>,
    /// The expiry timer once connected: the earliest of the expiries above (Unix time) and
    /// the instant one second after it. Absolute, and recomputed only when that time
    /// changes: rebuilding "remaining + grace" on every step would push it back with every
    /// message, so a busy connection would never expire.
    expiry_timer: Option<(u64, Instant)>,
    /// Deliveries taken from the outbox, framed by `on_event`.
    batch: Vec<Delivery>,
    /// Calls to the application's backend; `None` when no proxy kind is configured.
    proxy: Option<Box<ProxyCalls>>,
    /// The emulation session id and node name told in the connect result, when the
    /// connection is an HTTP-streaming or SSE emulation ([`streams`]).
    session: Option<Box<(String, String)>>,
}

/// Most proxy calls one connection may have in flight; more are answered 111.
const MAX_CALLS_IN_FLIGHT: usize = 64;

/// One connection's calls to the backend's proxy (boxed: most servers have no proxy).
/// Calls run on their own tasks; their answers come back through `rx` as driver events,
/// so the connection goes on meanwhile (pings, deliveries, other commands).
struct ProxyCalls {
    forwarded: Forwarded,
    tx: mpsc::UnboundedSender<Box<ProxyDone>>,
    rx: mpsc::UnboundedReceiver<Box<ProxyDone>>,
    in_flight: usize,
    /// The connect proxy accepted this connection: its expiry goes to the refresh proxy.
    proxied_connect: bool,
    /// Channels whose expiry the subscribe proxy set: it goes to the sub_refresh proxy.
    proxied_expiry: Vec<String>,
    /// The connection's meta (a JSON object from the connect answer or the token): never
    /// sent to the client, sent as `meta` with every later call.
    meta: Option<serde_json::Value>,
}

/// What a finished proxy call was for.
enum PendingOp {
    /// `rpc` command `id`.
    Rpc(u32),
    /// `publish` command `id`: published only once the backend accepts it.
    Publish(u32, String, switchboard_core::Payload),
    /// `subscribe` command `id`: joined only once the backend accepts it.
    Subscribe(u32, SubscribeRequest),
    /// The connection's expiry (refresh proxy).
    Refresh,
    /// A subscription's expiry (sub_refresh proxy), for this channel.
    SubRefresh(String),
}

/// A finished proxy call.
pub(crate) struct ProxyDone {
    op: PendingOp,
    result: Result<Answer, Failure>,
}

/// What the driver's events report.
pub(crate) enum CfEvent {
    /// Outbox deliveries are ready (or the hub closed the outbox).
    Outbox(Result<(), CloseReason>),
    /// A proxy call finished.
    Proxy(Box<ProxyDone>),
}

/// One of two futures (an event's step: deliveries or a proxy answer).
enum Either<A, B> {
    Left(A),
    Right(B),
}

impl<A, B> Future for Either<A, B>
where
    A: Future<Output = Result<(), Ending>> + Unpin,
    B: Future<Output = Result<(), Ending>> + Unpin,
{
    type Output = Result<(), Ending>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Either::Left(a) => Pin::new(a).poll(cx),
            Either::Right(b) => Pin::new(b).poll(cx),
        }
    }
}

impl CentrifugoDriver {
    fn new(shared: Arc<Shared>, peer: SocketAddr, encoding: Encoding) -> CentrifugoDriver {
        let handshake = Instant::now() + shared.config.handshake_timeout;
        CentrifugoDriver {
            shared,
            peer,
            encoding,
            phase: Phase::AwaitConnect(handshake),
            handle: None,
            outbox: None,
            subs: Subscriptions::default(),
            expires_at: None,
            expiry_timer: None,
            batch: Vec::new(),
            proxy: None,
            session: None,
        }
    }

    /// Names the emulation session (`session`, on node `node`) in the connect result, so the
    /// client can address its commands to it.
    fn with_session(mut self, session: String, node: String) -> CentrifugoDriver {
        self.session = Some(Box::new((session, node)));
        self
    }

    /// Lets the connection call the backend's proxy, forwarding `forwarded` (`None`: no
    /// proxy kind is configured).
    fn with_proxy(mut self, forwarded: Option<Forwarded>) -> CentrifugoDriver {
        self.proxy = forwarded.map(|forwarded| {
            let (tx, rx) = mpsc::unbounded_channel();
            Box::new(ProxyCalls {
                forwarded,
                tx,
                rx,
                in_flight: 0,
                proxied_connect: false,
                proxied_expiry: Vec::new(),
                meta: None,
            })
        });
        self
    }

    /// Whether `kind` calls go to the backend for `channel` (its namespace's switch).
    fn proxies(&self, kind: Kind, channel: &str) -> bool {
        if self.proxy.is_none() || !self.shared.proxy.enabled(kind) {
            return false;
        }
        let Ok(o) = self.shared.config.channel.options(channel) else {
            return false;
        };
        match kind {
            Kind::Subscribe => o.proxy_subscribe,
            Kind::Publish => o.proxy_publish,
            Kind::SubRefresh => o.proxy_sub_refresh,
            _ => true,
        }
    }

    /// A proxy request from this (connected) client.
    fn proxy_request(&self) -> ProxyRequest {
        let mut req = ProxyRequest::new(
            self.encoding.protocol(),
            "websocket",
            self.handle().id().to_string(),
        );
        req.user = self.user();
        req.meta = self.proxy.as_ref().and_then(|c| c.meta.clone());
        req
    }

    /// Starts a proxy call on its own task; its answer comes back as an event.
    fn spawn_call(&mut self, kind: Kind, req: ProxyRequest, op: PendingOp) -> Result<(), CfError> {
        let Some(calls) = self.proxy.as_mut() else {
            return Err(CfError::NOT_AVAILABLE);
        };
        if calls.in_flight >= MAX_CALLS_IN_FLIGHT {
            return Err(CfError::TOO_MANY_REQUESTS);
        }
        calls.in_flight += 1;
        let tx = calls.tx.clone();
        let forwarded = calls.forwarded.clone();
        let proxy = Arc::clone(&self.shared.proxy);
        tokio::spawn(async move {
            let result = proxy.call(kind, &forwarded, &req).await;
            // The connection may be gone meanwhile: nothing to answer then.
            let _ = tx.send(Box::new(ProxyDone { op, result }));
        });
        Ok(())
    }

    /// A finished proxy call: its reply (or the publication, the join it allowed).
    async fn proxy_done(&mut self, done: Box<ProxyDone>, out: &mut Out) -> Result<(), Ending> {
        if let Some(calls) = self.proxy.as_mut() {
            calls.in_flight = calls.in_flight.saturating_sub(1);
        }
        let mut lines = Vec::new();
        let r = self.apply_answer(*done, &mut lines).await;
        self.end_step(&mut lines, out);
        r
    }

    async fn apply_answer(
        &mut self,
        done: ProxyDone,
        lines: &mut Vec<Bytes>,
    ) -> Result<(), Ending> {
        let ProxyDone { op, result } = done;
        let id = match &op {
            PendingOp::Rpc(id) | PendingOp::Publish(id, ..) | PendingOp::Subscribe(id, _) => *id,
            PendingOp::Refresh => return self.refreshed(result),
            PendingOp::SubRefresh(channel) => {
                return self.sub_refreshed(channel.clone(), result, lines)
            }
        };
        let answer = match result {
            Ok(Answer::Ok(r)) => r,
            Ok(Answer::Error(e)) => {
                lines.push(self.encoding.reply(&Reply::error(id, backend_error(e))));
                return Ok(());
            }
            Ok(Answer::Disconnect(d)) => return Err(disconnect(backend_disconnect(d))),
            Err(f) => {
                lines.push(self.encoding.reply(&Reply::error(id, proxy_failure(f))));
                return Ok(());
            }
        };
        let result = match op {
            PendingOp::Rpc(_) => Ok(ReplyResult::Rpc(RpcResult {
                data: answer.data_payload().map(|p| cf::Data::from_payload(&p)),
            })),
            PendingOp::Publish(_, channel, payload) => {
                // The backend may rewrite the data; without `data` the client's goes out.
                let payload = answer.data_payload().unwrap_or(payload);
                self.ops()
                    .publish_approved(&channel, payload, answer.skip_history)
                    .await
                    .map(|_| ReplyResult::Publish(PublishResult {}))
                    .map_err(op_error)
            }
            PendingOp::Subscribe(_, req) => {
                if self.subs.contains(&req.channel) {
                    Err(CfError::ALREADY_SUBSCRIBED)
                } else {
                    let overrides = answer.overrides;
                    match self.join_with(&req, answer.info_bytes(), overrides).await {
                        Ok(mut r) => {
                            // An expiry from the backend: the sub_refresh proxy is asked then.
                            if let Some(at) = answer.expire_at.filter(|&at| at > 0) {
                                self.subs.set_expiry(&req.channel, Some(at));
                                if let Some(calls) = self.proxy.as_mut() {
                                    calls.proxied_expiry.push(req.channel.clone());
                                }
                            }
                            r.data = answer.data_payload().map(|p| cf::Data::from_payload(&p));
                            Ok(ReplyResult::Subscribe(r))
                        }
                        Err(e) => Err(e),
                    }
                }
            }
            PendingOp::Refresh | PendingOp::SubRefresh(_) => return Ok(()),
        };
        lines.push(match result {
            Ok(r) => self.encoding.reply(&Reply::ok(id, r)),
            Err(e) => self.encoding.reply(&Reply::error(id, e)),
        });
        Ok(())
    }

    /// The refresh proxy's answer for a connection whose expiry passed.
    fn refreshed(&mut self, result: Result<Answer, Failure>) -> Result<(), Ending> {
        match result {
            Ok(Answer::Ok(r)) if !r.expired => {
                self.expires_at = r.expire_at.filter(|&at| at > 0);
                Ok(())
            }
            Ok(Answer::Disconnect(d)) => Err(disconnect(backend_disconnect(d))),
            Ok(_) => Err(disconnect(Disconnect::EXPIRED)),
            Err(_) => {
                // The backend is away: the session goes on and is asked about again soon.
                self.expires_at = Some(unix_now() + REFRESH_RETRY_SECS);
                Ok(())
            }
        }
    }

    /// The sub_refresh proxy's answer for a subscription whose expiry passed: a new expiry,
    /// or the end of the subscription (`expired` or an `error`: unsubscribe push 2501;
    /// `disconnect`: the connection closes). No answer keeps it and asks again soon.
    fn sub_refreshed(
        &mut self,
        channel: String,
        result: Result<Answer, Failure>,
        lines: &mut Vec<Bytes>,
    ) -> Result<(), Ending> {
        if !self.subs.contains(&channel) {
            return Ok(());
        }
        match result {
            Ok(Answer::Ok(r)) if !r.expired => {
                let at = r.expire_at.filter(|&at| at > 0);
                self.subs.set_expiry(&channel, at);
                if at.is_none() {
                    self.forget_proxied_expiry(&channel);
                }
                Ok(())
            }
            Ok(Answer::Disconnect(d)) => Err(disconnect(backend_disconnect(d))),
            Ok(_) => {
                self.forget_proxied_expiry(&channel);
                self.subs.set_expiry(&channel, Some(0));
                self.drop_expired_subs(lines);
                Ok(())
            }
            Err(_) => {
                self.subs
                    .set_expiry(&channel, Some(unix_now() + REFRESH_RETRY_SECS));
                Ok(())
            }
        }
    }

    fn forget_proxied_expiry(&mut self, channel: &str) {
        if let Some(calls) = self.proxy.as_mut() {
            calls.proxied_expiry.retain(|c| c != channel);
        }
    }

    /// Whether this connection's expiry is decided by the refresh proxy.
    fn refreshes_by_proxy(&self) -> bool {
        self.proxy.as_ref().is_some_and(|c| c.proxied_connect)
            && self.shared.proxy.enabled(Kind::Refresh)
    }

    /// `connect` without a token: the connect proxy decides (see the module docs).
    async fn connect_by_proxy(
        &mut self,
        req: &cf::ConnectRequest,
    ) -> Result<proxy::ProxyResult, Result<CfError, Disconnect>> {
        let Some(calls) = self.proxy.as_ref() else {
            return Err(Err(Disconnect::INVALID_TOKEN));
        };
        let mut preq = ProxyRequest::new(self.encoding.protocol(), "websocket", String::new())
            .with_client_data(req.data.as_ref().map(cf::Data::to_payload));
        preq.name = req.name.clone();
        preq.version = req.version.clone();
        // Before `connect` the connection has nothing else to do (no outbox, no pings),
        // so this call is awaited in the step; the kind's timeout bounds it.
        match self
            .shared
            .proxy
            .call(Kind::Connect, &calls.forwarded, &preq)
            .await
        {
            Ok(Answer::Ok(r)) => Ok(r),
            Ok(Answer::Error(e)) => Err(Ok(backend_error(e))),
            Ok(Answer::Disconnect(d)) => Err(Err(backend_disconnect(d))),
            Err(f) => Err(Ok(proxy_failure(f))),
        }
    }

    /// Ends a step: the lines it produced go out as one frame (newline-separated when there
    /// are several), and the expiry timer follows the expiries.
    ///
    /// Each step collects its lines in a fresh `Vec`, not one kept in the driver for its
    /// capacity: every idle connection would hold it (≈ 128 B after the connect and
    /// subscribe replies, and 24 B of the task for the field); one small allocation per
    /// step is cheap.
    fn end_step(&mut self, lines: &mut Vec<Bytes>, out: &mut Out) {
        match lines.len() {
            0 => {}
            1 => out.message(self.frame(lines[0].clone())),
            _ => out.message(self.frame(self.encoding.batch(lines.iter()))),
        }
        lines.clear();
        let at = match (self.expires_at, self.subs.earliest_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if self.expiry_timer.map(|(t, _)| t) != at {
            self.expiry_timer =
                at.map(|at| (at, Instant::now() + time_until_expiry(Some(at), unix_now())));
        }
    }

    /// A frame of replies and pushes as the WebSocket message its encoding travels in.
    fn frame(&self, bytes: Bytes) -> Message {
        if self.encoding.is_binary() {
            Message::Binary(bytes)
        } else {
            Message::Text(bytes)
        }
    }

    /// One frame of commands from the client.
    fn message<'a, 'b>(
        &'a mut self,
        frame: Bytes,
        out: &'b mut Out,
    ) -> StepFuture<impl Future<Output = Result<(), Ending>> + Send + use<'a, 'b>> {
        let slow = match self.phase {
            // After a refused connect nothing the client sends matters any more.
            Phase::Refused(_) => return StepFuture::ready(Ok(())),
            Phase::AwaitConnect(_) => SlowFrame::Connect(frame),
            Phase::Connected => {
                let cmds: Vec<Result<Command, DecodeError>> =
                    self.encoding.commands(&frame).collect();
                let rpc_proxied = self.proxy.is_some() && self.shared.proxy.enabled(Kind::Rpc);
                let instant = |c: &Command| {
                    is_instant(c) && !(rpc_proxied && matches!(c.method, Method::Rpc(_)))
                };
                if !cmds.iter().all(|c| matches!(c, Ok(c) if instant(c))) {
                    SlowFrame::Commands(cmds)
                } else {
                    // The fast path: pongs (every ping interval on every connection), pings.
                    let mut lines = Vec::new();
                    for cmd in cmds.into_iter().flatten() {
                        if let Some(reply) = instant_reply(self.encoding, cmd) {
                            lines.push(reply);
                        }
                    }
                    self.end_step(&mut lines, out);
                    return StepFuture::ready(Ok(()));
                }
            }
        };
        StepFuture::boxed(self.message_slow(slow, out))
    }

    /// The slow half of [`Self::message`].
    async fn message_slow(&mut self, frame: SlowFrame, out: &mut Out) -> Result<(), Ending> {
        let mut lines = Vec::new();
        let r = match frame {
            SlowFrame::Connect(frame) => match self.handle_first(&frame, &mut lines).await {
                Ok(Some(outbox)) => {
                    self.outbox = Some(outbox);
                    self.phase = Phase::Connected;
                    Ok(())
                }
                Ok(None) => {
                    // Refused with an error reply (e.g. an expired token): the reply goes
                    // out, then the client has the handshake timeout to go away and retry.
                    let wait = self.shared.config.handshake_timeout;
                    self.phase = Phase::Refused(Instant::now() + wait);
                    Ok(())
                }
                Err(d) => {
                    // Nothing of a refused first frame is sent but the close.
                    lines.clear();
                    Err(disconnect(d))
                }
            },
            SlowFrame::Commands(cmds) => match self.handle_frame(cmds, &mut lines).await {
                Step::Continue => Ok(()),
                // Replies queued before the stop still go out, before the close.
                Step::Stop(d) => Err(disconnect(d)),
            },
        };
        self.end_step(&mut lines, out);
        r
    }

    /// Deliveries taken from the outbox: framed as pushes, in order.
    fn deliveries<'a, 'b>(
        &'a mut self,
        out: &'b mut Out,
    ) -> StepFuture<impl Future<Output = Result<(), Ending>> + Send + use<'a, 'b>> {
        if self.deliveries_now(out) {
            return StepFuture::ready(Ok(()));
        }
        StepFuture::boxed(self.deliveries_slow(out))
    }

    /// The fast path of [`Self::deliveries`]: publications, joins and leaves, framed without
    /// waiting. False, with nothing done, when the batch needs the slow path.
    fn deliveries_now(&mut self, out: &mut Out) -> bool {
        let slow = self.batch.iter().any(|d| match d {
            Delivery::Control(_) => true,
            Delivery::Publication(p) => self.may_move(p),
            _ => false,
        });
        if slow {
            return false;
        }
        let mut lines = Vec::new();
        let mut batch = std::mem::take(&mut self.batch);
        for delivery in batch.drain(..) {
            if self.already_sent(&delivery) {
                continue;
            }
            if let Delivery::Publication(p) = &delivery {
                out.published(p);
            }
            if let Some(bytes) = encode_delivery(self.encoding, &delivery) {
                lines.push(bytes);
            }
        }
        self.restore_batch(batch);
        self.end_step(&mut lines, out);
        true
    }

    /// The slow half of [`Self::deliveries`]: controls from the server, and streams that
    /// may have moved to a new epoch.
    async fn deliveries_slow(&mut self, out: &mut Out) -> Result<(), Ending> {
        let mut lines = Vec::new();
        let mut batch = std::mem::take(&mut self.batch);
        // Channels whose stream went on in a new epoch in this batch.
        let mut moved: Vec<Arc<str>> = Vec::new();
        for delivery in batch.drain(..) {
            if let Delivery::Control(control) = &delivery {
                self.on_control(control, &mut lines).await;
                continue;
            }
            if self.already_sent(&delivery) {
                continue;
            }
            if let Delivery::Publication(p) = &delivery {
                if !moved.is_empty() && moved.contains(&p.channel) {
                    continue;
                }
                if self.stream_moved(p) {
                    moved.push(Arc::clone(&p.channel));
                    self.insufficient_state(&p.channel, &mut lines).await;
                    continue;
                }
            }
            if let Delivery::Publication(p) = &delivery {
                out.published(p);
            }
            if let Some(bytes) = encode_delivery(self.encoding, &delivery) {
                lines.push(bytes);
            }
        }
        self.restore_batch(batch);
        self.end_step(&mut lines, out);
        Ok(())
    }

    /// Puts the (drained) batch buffer back, without a burst's capacity.
    fn restore_batch(&mut self, batch: Vec<Delivery>) {
        self.batch = if batch.capacity() > BATCH {
            Vec::new()
        } else {
            batch
        };
    }

    /// The driver's timer: the handshake timeout, or an expiry.
    fn timer(&mut self, out: &mut Out) -> Result<(), Ending> {
        match self.phase {
            Phase::AwaitConnect(_) | Phase::Refused(_) => Err(disconnect(Disconnect::STALE)),
            Phase::Connected => {
                let now = unix_now();
                if self.expires_at.is_some_and(|at| at < now) {
                    if !self.refreshes_by_proxy() {
                        return Err(disconnect(Disconnect::EXPIRED));
                    }
                    // Asked once; the answer sets the next expiry (or ends the connection).
                    self.expires_at = None;
                    let req = self.proxy_request();
                    if self
                        .spawn_call(Kind::Refresh, req, PendingOp::Refresh)
                        .is_err()
                    {
                        return Err(disconnect(Disconnect::EXPIRED));
                    }
                }
                let mut lines = Vec::new();
                self.drop_expired_subs(&mut lines);
                // Re-armed from now: a timer capped at FAR_FUTURE ends early, and one for a
                // subscription that was refreshed meanwhile is moved.
                self.expiry_timer = None;
                self.end_step(&mut lines, out);
                Ok(())
            }
        }
    }

    /// Whether `p` may belong to a new epoch of a positioned subscription's stream (see
    /// [`Self::stream_moved`]), without changing anything.
    fn may_move(&self, p: &switchboard_core::Publication) -> bool {
        self.shared.node.is_shared() && self.subs.is_positioned(&p.channel)
    }
}

/// Whether a command is answered without waiting on anything.
fn is_instant(cmd: &Command) -> bool {
    matches!(
        cmd.method,
        Method::Pong | Method::Send(_) | Method::Ping(_) | Method::Rpc(_)
    )
}

/// The reply to a command for which [`is_instant`] holds (`None`: no reply). The same
/// replies as [`CentrifugoDriver::handle_command`] gives.
fn instant_reply(encoding: Encoding, cmd: Command) -> Option<Bytes> {
    match cmd.method {
        Method::Ping(_) => {
            Some(encoding.reply(&Reply::ok(cmd.id, ReplyResult::Ping(PingResult {}))))
        }
        Method::Rpc(_) => Some(encoding.reply(&Reply::error(cmd.id, CfError::NOT_AVAILABLE))),
        _ => None,
    }
}

impl Driver for CentrifugoDriver {
    type Event = CfEvent;

    fn on_message<'a, 'b>(
        &'a mut self,
        msg: Message,
        out: &'b mut Out,
    ) -> impl Future<Output = Result<(), Ending>> + Send + use<'a, 'b> {
        match msg {
            // A Protobuf client sends binary messages only: text is a client on the wrong
            // encoding (Centrifugo's SDKs never mix them), refused like any bad frame.
            Message::Text(_) if self.encoding.is_binary() => {
                tracing::debug!(peer = %self.peer, "text message on a protobuf connection");
                StepFuture::ready(Err(disconnect(Disconnect::BAD_REQUEST)))
            }
            Message::Text(frame) | Message::Binary(frame) => self.message(frame, out),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => StepFuture::ready(Ok(())),
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Self::Event> {
        if let Some(calls) = self.proxy.as_mut() {
            if let Poll::Ready(Some(done)) = calls.rx.poll_recv(cx) {
                return Poll::Ready(CfEvent::Proxy(done));
            }
        }
        match &mut self.outbox {
            Some(outbox) => outbox
                .poll_recv_batch(cx, &mut self.batch, BATCH)
                .map(|r| CfEvent::Outbox(r.map(|_| ()).map_err(|closed| closed.reason))),
            // Nothing is delivered before `connect`; the loop polls again after every step.
            None => Poll::Pending,
        }
    }

    fn on_event<'a, 'b>(
        &'a mut self,
        event: Self::Event,
        out: &'b mut Out,
    ) -> impl Future<Output = Result<(), Ending>> + Send + use<'a, 'b> {
        match event {
            CfEvent::Outbox(Ok(())) => Either::Left(self.deliveries(out)),
            CfEvent::Outbox(Err(reason)) => {
                Either::Left(StepFuture::ready(Err(Ending::Hub(reason))))
            }
            CfEvent::Proxy(done) => Either::Right(Box::pin(self.proxy_done(done, out))),
        }
    }

    fn on_event_now(
        &mut self,
        event: Self::Event,
        out: &mut Out,
    ) -> Result<Result<(), Ending>, Self::Event> {
        match event {
            CfEvent::Outbox(Ok(())) if self.deliveries_now(out) => Ok(Ok(())),
            CfEvent::Outbox(Err(reason)) => Ok(Err(Ending::Hub(reason))),
            // Controls, moved streams and proxy answers wait for the loop.
            event => Err(event),
        }
    }

    /// Centrifugo's own ping once connected: `{}` in JSON, an empty reply in Protobuf (the
    /// SDK answers with the same).
    fn ping(&mut self, out: &mut Out) {
        if self.phase == Phase::Connected {
            out.message(self.frame(self.encoding.ping()));
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitConnect(at) | Phase::Refused(at) => Some(at),
            Phase::Connected => self.expiry_timer.map(|(_, at)| at),
        }
    }

    fn on_timer(&mut self, out: &mut Out) -> impl Future<Output = Result<(), Ending>> + Send {
        std::future::ready(self.timer(out))
    }

    fn hub_verdict(&self) -> Option<CloseReason> {
        self.outbox.as_ref().and_then(Outbox::close_reason)
    }

    fn close_frame(&mut self, ending: &Ending) -> Option<(CloseCode, Cow<'static, str>)> {
        let d = match ending {
            Ending::Shutdown => Disconnect::SHUTDOWN,
            Ending::Hub(reason) => outbox_closed(*reason),
            Ending::Dead => Disconnect::NO_PONG,
            Ending::Panic(_) => {
                Disconnect::new(CloseCode::INTERNAL_ERROR.0, "internal server error")
            }
            Ending::Close(code, reason) => Disconnect::new(*code, reason.clone()),
            Ending::Flood => Disconnect::TOO_MANY_REQUESTS,
            // The peer is gone, takes no bytes, or the codec already sent its close code.
            Ending::PeerClosed(_)
            | Ending::Lost
            | Ending::ReadError
            | Ending::Stalled
            | Ending::WriteFailed => return None,
        };
        tracing::debug!(peer = %self.peer, code = d.code, reason = %d.reason, "centrifugo disconnect");
        Some((CloseCode(d.code), d.reason))
    }
}

impl CentrifugoDriver {
    async fn on_control(&mut self, control: &Control, out: &mut Vec<Bytes>) {
        match control {
            Control::Subscribe(channel) => self.server_subscribe(channel.clone(), out).await,
            Control::MissedPublications(channel) => {
                if self.subs.is_positioned(channel) {
                    self.insufficient_state(channel, out).await;
                }
            }
            Control::Unsubscribe(channel) => {
                if self.subs.contains(channel) {
                    self.forget(channel).await;
                    out.push(self.encoding.push(&Push::new(
                        channel.clone(),
                        PushBody::Unsubscribe(UnsubscribePush {
                            code: cf::unsubscribe_code::SERVER,
                            reason: "server unsubscribe".to_string(),
                        }),
                    )));
                }
            }
        }
    }

    /// Whether `delivery` is a publication the client already has (see `live_from`).
    fn already_sent(&mut self, delivery: &Delivery) -> bool {
        let Delivery::Publication(p) = delivery else {
            return false;
        };
        if p.offset == 0 {
            // Outside the channel's stream (published with `skip_history`): never recovered,
            // so never sent before.
            return false;
        }
        let Some(from) = self.subs.live_from(&p.channel) else {
            return false;
        };
        if p.epoch == from.epoch && p.offset <= from.offset {
            return true;
        }
        self.subs.set_live_from(&p.channel, None);
        false
    }

    /// Whether `p` belongs to a new epoch of a positioned subscription's stream (the store
    /// lost its data, or the channel's metadata expired): the client's position no longer
    /// names a place in the stream.
    fn stream_moved(&mut self, p: &switchboard_core::Publication) -> bool {
        if !self.shared.node.is_shared() {
            // One node's streams only change epoch through `history_remove`, whose live
            // subscribers keep receiving as before (there is no store to lose data).
            return false;
        }
        match self.subs.positioned_mut(&p.channel) {
            Some(epoch) if *epoch == Epoch::EMPTY => {
                *epoch = p.epoch;
                false
            }
            Some(epoch) => *epoch != p.epoch,
            None => false,
        }
    }

    /// Tells the client to resubscribe `channel` with recovery (`unsubscribe` push, code
    /// 2500 "insufficient state"): after a gap the node could not fill (recovery then says
    /// `recovered: false`), or when the stream went on in a new epoch. In the latter case
    /// the node delivered the new stream from its start to its members, so the client's
    /// recovery from its old position reads the new stream from its start and is
    /// `recovered: true` while history holds it (see `switchboard_core::Node::subscribe`).
    async fn insufficient_state(&mut self, channel: &str, out: &mut Vec<Bytes>) {
        tracing::debug!(peer = %self.peer, channel, "insufficient state: resubscribe (2500)");
        self.forget(channel).await;
        out.push(self.encoding.push(&Push::new(
            channel,
            PushBody::Unsubscribe(UnsubscribePush {
                code: cf::unsubscribe_code::INSUFFICIENT_STATE,
                reason: "insufficient state".to_string(),
            }),
        )));
    }

    /// Ends this connection's subscription to `channel` (no message to the client).
    async fn forget(&mut self, channel: &str) {
        self.subs.remove(channel);
        self.shared.node.unsubscribe(self.handle(), channel).await;
    }

    /// Ends every subscription whose token expired without a `sub_refresh`, telling the
    /// client with an `unsubscribe` push (code 2501, so the SDK resubscribes with a new
    /// token). The connection stays open.
    fn drop_expired_subs(&mut self, out: &mut Vec<Bytes>) {
        let now = unix_now();
        for channel in self.subs.expired(now) {
            let by_proxy = self
                .proxy
                .as_ref()
                .is_some_and(|c| c.proxied_expiry.contains(&channel));
            if by_proxy && self.proxies(Kind::SubRefresh, &channel) {
                // Asked once; the answer sets the next expiry or ends the subscription.
                self.subs.set_expiry(&channel, None);
                let mut req = self.proxy_request();
                req.channel = channel.clone();
                if self
                    .spawn_call(
                        Kind::SubRefresh,
                        req,
                        PendingOp::SubRefresh(channel.clone()),
                    )
                    .is_ok()
                {
                    continue;
                }
                self.subs.set_expiry(&channel, Some(0));
            }
            self.forget_proxied_expiry(&channel);
            if self.subs.remove(&channel) {
                self.shared.hub.unsubscribe(self.handle(), &channel);
                tracing::debug!(peer = %self.peer, %channel, "subscription expired");
                out.push(self.encoding.push(&Push::new(
                    channel,
                    PushBody::Unsubscribe(UnsubscribePush {
                        code: cf::unsubscribe_code::EXPIRED,
                        reason: "subscription expired".to_string(),
                    }),
                )));
            }
        }
    }

    /// The first frame: must start with `connect`. Returns the outbox on success, `None`
    /// when an error reply was queued instead.
    async fn handle_first(
        &mut self,
        frame: &Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<Option<Outbox>, Disconnect> {
        let mut cmds = self.encoding.commands(frame);
        let connect = match cmds.next() {
            Some(Ok(Command {
                id,
                method: Method::Connect(req),
            })) => (id, req),
            Some(Err(e)) => {
                tracing::debug!(peer = %self.peer, encoding = ?self.encoding, "bad first command: {e}");
                return Err(Disconnect::BAD_REQUEST);
            }
            _ => {
                tracing::debug!(peer = %self.peer, "first command is not connect");
                return Err(Disconnect::BAD_REQUEST);
            }
        };
        let (id, req) = connect;
        let verifier = &self.shared.verifier;
        let mut connect_data = None;
        let mut meta = None;
        let (user, info, exp, channels) = if req.token.is_empty()
            && self.proxy.is_some()
            && self.shared.proxy.enabled(Kind::Connect)
        {
            match self.connect_by_proxy(&req).await {
                Ok(r) => {
                    connect_data = r.data_payload().map(|p| cf::Data::from_payload(&p));
                    meta = r.meta_object();
                    if let Some(calls) = self.proxy.as_mut() {
                        calls.proxied_connect = true;
                    }
                    let user = r.user.clone().unwrap_or_default();
                    if user.is_empty() && !self.shared.config.allow_anonymous {
                        return Err(Disconnect::INVALID_TOKEN);
                    }
                    (
                        user,
                        r.info_bytes(),
                        r.expire_at.filter(|&at| at > 0),
                        r.channels,
                    )
                }
                Err(Ok(e)) => {
                    out.push(self.encoding.reply(&Reply::error(id, e)));
                    return Ok(None);
                }
                Err(Err(d)) => return Err(d),
            }
        } else if req.token.is_empty() {
            if !self.shared.config.allow_anonymous {
                return Err(Disconnect::INVALID_TOKEN);
            }
            (String::new(), None, None, Vec::new())
        } else {
            match verifier.verify_connection_token(&req.token) {
                Ok(claims) => {
                    if claims.sub.is_empty() && !self.shared.config.allow_anonymous {
                        return Err(Disconnect::INVALID_TOKEN);
                    }
                    let exp = claims.expire_at.or(claims.exp);
                    let info = claims.info.map(|i| Bytes::from(i.get().to_owned()));
                    meta = claims
                        .meta
                        .and_then(|m| serde_json::from_str(m.get()).ok())
                        .filter(serde_json::Value::is_object);
                    (claims.sub, info, exp, claims.channels)
                }
                Err(e) if e.is_expired() => {
                    out.push(
                        self.encoding
                            .reply(&Reply::error(id, CfError::TOKEN_EXPIRED)),
                    );
                    return Ok(None);
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, "connect token rejected: {e}");
                    return Err(Disconnect::INVALID_TOKEN);
                }
            }
        };
        let mut conn_info =
            ConnInfo::new(self.peer.to_string(), self.encoding.protocol()).with_user(user);
        if let Some(info) = info {
            conn_info = conn_info.with_conn_info(info);
        }
        let (handle, outbox) = match self.shared.hub.register(conn_info) {
            Ok(pair) => pair,
            Err(e) => {
                if matches!(e, switchboard_core::HubError::TooManyUserConnections { .. }) {
                    self.shared
                        .counters
                        .bump(crate::conn::stats::Counter::RejectedUserConnections);
                }
                return Err(Disconnect::CONNECTION_LIMIT);
            }
        };
        self.expires_at = exp;
        if let Some(calls) = self.proxy.as_mut() {
            calls.meta = meta;
        }
        let mut result = ConnectResult {
            client: handle.id().to_string(),
            version: concat!("switchboard ", env!("CARGO_PKG_VERSION")).to_string(),
            ping: u32::try_from(self.shared.config.ping_interval.as_secs().max(1))
                .unwrap_or(u32::MAX),
            pong: true,
            data: connect_data,
            ..Default::default()
        };
        if let Some(session) = &self.session {
            result.session.clone_from(&session.0);
            result.node.clone_from(&session.1);
        }
        // A proxied connection is refreshed by the server (refresh proxy), not by the SDK
        // with a token, so its expiry is not announced.
        let announce_expiry = !self.proxy.as_ref().is_some_and(|c| c.proxied_connect);
        if let Some(at) = exp.filter(|_| announce_expiry) {
            result.expires = true;
            result.ttl = u32::try_from(at.saturating_sub(unix_now())).unwrap_or(u32::MAX);
        }
        self.handle = Some(handle);
        // Server-side subscriptions: granted by the token, no permission check.
        for channel in channels {
            let asked = req.subs.get(&channel).cloned().unwrap_or_default();
            let sub_req = SubscribeRequest {
                channel: channel.clone(),
                ..asked
            };
            match self.join(&sub_req, None).await {
                Ok(r) => {
                    result.subs.insert(channel, r);
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, %channel, "server-side subscription failed: {e}");
                }
            }
        }
        out.push(
            self.encoding
                .reply(&Reply::ok(id, ReplyResult::Connect(result))),
        );
        // Commands batched after connect in the same frame.
        for cmd in cmds {
            match cmd {
                Ok(cmd) => {
                    if let Step::Stop(d) = self.handle_command(cmd, out).await {
                        return Err(d);
                    }
                }
                Err(_) => return Err(Disconnect::BAD_REQUEST),
            }
        }
        Ok(Some(outbox))
    }

    /// A server-side subscription requested through the HTTP API.
    async fn server_subscribe(&mut self, channel: String, out: &mut Vec<Bytes>) {
        if self.subs.contains(&channel) {
            return;
        }
        let req = SubscribeRequest {
            channel: channel.clone(),
            ..Default::default()
        };
        match self.join(&req, None).await {
            Ok(r) => out.push(self.encoding.push(&Push::new(
                channel,
                PushBody::Subscribe(SubscribePush {
                    recoverable: r.recoverable,
                    epoch: r.epoch,
                    offset: r.offset,
                    positioned: r.positioned,
                    data: None,
                }),
            ))),
            Err(e) => tracing::debug!(peer = %self.peer, %channel, "server subscribe failed: {e}"),
        }
    }

    async fn handle_frame(
        &mut self,
        cmds: Vec<Result<Command, DecodeError>>,
        out: &mut Vec<Bytes>,
    ) -> Step {
        for cmd in cmds {
            match cmd {
                Ok(cmd) => {
                    if let Step::Stop(d) = self.handle_command(cmd, out).await {
                        return Step::Stop(d);
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, encoding = ?self.encoding, "bad command: {e}");
                    return Step::Stop(Disconnect::BAD_REQUEST);
                }
            }
        }
        Step::Continue
    }

    #[allow(
        clippy::expect_used,
        reason = "set by `connect`, before any other command is handled"
    )]
    fn handle(&self) -> &ConnHandle {
        self.handle.as_ref().expect("connected")
    }

    fn user(&self) -> String {
        self.handle().info().user.clone().unwrap_or_default()
    }

    async fn handle_command(&mut self, cmd: Command, out: &mut Vec<Bytes>) -> Step {
        let id = cmd.id;
        // A name no channel can have is a malformed command (107), not an unknown channel.
        let channel = match &cmd.method {
            Method::Subscribe(r) => Some(&r.channel),
            Method::Publish(r) => Some(&r.channel),
            Method::Presence(r) => Some(&r.channel),
            Method::PresenceStats(r) => Some(&r.channel),
            Method::History(r) => Some(&r.channel),
            _ => None,
        };
        if let Some(channel) = channel {
            if let Err(OpError::InvalidChannel) = channels::check_name(&self.shared, channel) {
                out.push(
                    self.encoding
                        .reply(&Reply::error(id, CfError::INVALID_CHANNEL)),
                );
                return Step::Continue;
            }
        }
        let result: Result<ReplyResult, CfError> = match cmd.method {
            Method::Connect(_) => return Step::Stop(Disconnect::BAD_REQUEST),
            Method::Pong | Method::Send(_) => return Step::Continue,
            Method::Ping(_) => Ok(ReplyResult::Ping(PingResult {})),
            Method::Rpc(req) if self.proxy.is_some() && self.shared.proxy.enabled(Kind::Rpc) => {
                let mut preq = self
                    .proxy_request()
                    .with_client_data(req.data.as_ref().map(cf::Data::to_payload));
                preq.method = req.method;
                match self.spawn_call(Kind::Rpc, preq, PendingOp::Rpc(id)) {
                    // Answered when the backend is.
                    Ok(()) => return Step::Continue,
                    Err(e) => Err(e),
                }
            }
            Method::Rpc(RpcRequest { .. }) => Err(CfError::NOT_AVAILABLE),
            Method::Subscribe(req) if self.proxies(Kind::Subscribe, &req.channel) => {
                if self.subs.contains(&req.channel) {
                    Err(CfError::ALREADY_SUBSCRIBED)
                } else {
                    let mut preq = self
                        .proxy_request()
                        .with_client_data(req.data.as_ref().map(cf::Data::to_payload));
                    preq.channel = req.channel.clone();
                    preq.token = req.token.clone();
                    match self.spawn_call(Kind::Subscribe, preq, PendingOp::Subscribe(id, req)) {
                        Ok(()) => return Step::Continue,
                        Err(e) => Err(e),
                    }
                }
            }
            Method::Subscribe(req) => self.subscribe(&req).await.map(ReplyResult::Subscribe),
            Method::Unsubscribe(req) => {
                if self.subs.contains(&req.channel) {
                    self.forget(&req.channel).await;
                }
                Ok(ReplyResult::Unsubscribe(UnsubscribeResult {}))
            }
            Method::Publish(req) if self.proxies(Kind::Publish, &req.channel) => {
                let channel = req.channel.clone();
                match cf::publish_payload(req) {
                    None => Err(CfError::BAD_REQUEST),
                    Some(payload) => {
                        let mut preq = self.proxy_request().with_payload(&payload);
                        preq.channel = channel.clone();
                        // Nothing is published until the backend accepts it.
                        match self.spawn_call(
                            Kind::Publish,
                            preq,
                            PendingOp::Publish(id, channel, payload),
                        ) {
                            Ok(()) => return Step::Continue,
                            Err(e) => Err(e),
                        }
                    }
                }
            }
            Method::Publish(req) => self.publish(req).await.map(ReplyResult::Publish),
            Method::Presence(req) => self.presence(&req.channel).await.map(ReplyResult::Presence),
            Method::PresenceStats(req) => self
                .presence_stats(&req.channel)
                .await
                .map(ReplyResult::PresenceStats),
            Method::History(req) => self.history(req).await.map(ReplyResult::History),
            Method::Refresh(req) => {
                match self.shared.verifier.verify_connection_token(&req.token) {
                    Ok(claims) if claims.sub == self.user() => {
                        let exp = claims.expire_at.or(claims.exp);
                        self.expires_at = exp;
                        Ok(ReplyResult::Refresh(RefreshResult {
                            client: self.handle().id().to_string(),
                            version: concat!("switchboard ", env!("CARGO_PKG_VERSION")).to_string(),
                            expires: exp.is_some(),
                            ttl: exp
                                .map(|at| {
                                    u32::try_from(at.saturating_sub(unix_now())).unwrap_or(u32::MAX)
                                })
                                .unwrap_or(0),
                        }))
                    }
                    Err(e) if e.is_expired() => Err(CfError::TOKEN_EXPIRED),
                    _ => return Step::Stop(Disconnect::INVALID_TOKEN),
                }
            }
            Method::SubRefresh(req) => {
                match self.shared.verifier.verify_subscription_token(
                    &req.token,
                    &self.user(),
                    &req.channel,
                ) {
                    Ok(_) if !self.subs.contains(&req.channel) => Err(CfError::PERMISSION_DENIED),
                    Ok(claims) => {
                        let exp = claims.expire_at.or(claims.exp);
                        // The new token moves (or lifts) this subscription's expiry.
                        match exp {
                            Some(at) => self.subs.set_expiry(&req.channel, Some(at)),
                            None => self.subs.set_expiry(&req.channel, None),
                        };
                        Ok(ReplyResult::SubRefresh(SubRefreshResult {
                            expires: exp.is_some(),
                            ttl: exp
                                .map(|at| {
                                    u32::try_from(at.saturating_sub(unix_now())).unwrap_or(u32::MAX)
                                })
                                .unwrap_or(0),
                        }))
                    }
                    Err(e) if e.is_expired() => Err(CfError::TOKEN_EXPIRED),
                    Err(_) => Err(CfError::PERMISSION_DENIED),
                }
            }
        };
        out.push(match result {
            Ok(r) => self.encoding.reply(&Reply::ok(id, r)),
            Err(e) => self.encoding.reply(&Reply::error(id, e)),
        });
        Step::Continue
    }

    async fn subscribe(&mut self, req: &SubscribeRequest) -> Result<SubscribeResult, CfError> {
        if self.subs.contains(&req.channel) {
            return Err(CfError::ALREADY_SUBSCRIBED);
        }
        let mut ctx = ClientCtx::for_conn(self.handle());
        let mut chan_info = None;
        let mut expires_at = None;
        if !req.token.is_empty() {
            match self.shared.verifier.verify_subscription_token(
                &req.token,
                &ctx.user,
                &req.channel,
            ) {
                Ok(claims) => {
                    ctx = ctx.with_subscription_token(true);
                    expires_at = claims.expire_at.or(claims.exp);
                    chan_info = claims.info.map(|i| Bytes::from(i.get().to_owned()));
                }
                Err(TokenError::Expired) => return Err(CfError::TOKEN_EXPIRED),
                Err(e) => {
                    tracing::debug!(peer = %self.peer, channel = %req.channel, "subscription token rejected: {e}");
                    return Err(CfError::PERMISSION_DENIED);
                }
            }
        }
        self.ops()
            .check_subscribe(&req.channel, ctx.subscription_token)
            .map_err(op_error)?;
        let mut result = self.join(req, chan_info).await?;
        if let Some(at) = expires_at {
            // The SDK schedules `sub_refresh` `ttl` seconds on; without it the
            // subscription ends when the token does.
            self.subs.set_expiry(&req.channel, Some(at));
            result.expires = true;
            result.ttl = u32::try_from(at.saturating_sub(unix_now())).unwrap_or(u32::MAX);
        }
        Ok(result)
    }

    /// Join `req.channel` (permissions already checked), with recovery when asked.
    async fn join(
        &mut self,
        req: &SubscribeRequest,
        chan_info: Option<Bytes>,
    ) -> Result<SubscribeResult, CfError> {
        self.join_with(req, chan_info, proxy::SubscribeOverride::default())
            .await
    }

    /// [`Self::join`] with the subscribe proxy's per-subscription `override` of the
    /// namespace's `force_recovery` and of positioning.
    async fn join_with(
        &mut self,
        req: &SubscribeRequest,
        chan_info: Option<Bytes>,
        overrides: proxy::SubscribeOverride,
    ) -> Result<SubscribeResult, CfError> {
        let opts = SubscribeOptions {
            chan_info,
            recover_since: req
                .recover
                .then(|| CorePosition::new(req.offset, Epoch::from_client(&req.epoch))),
        };
        let r = self
            .ops()
            .join(&req.channel, opts)
            .await
            .map_err(op_error)?;
        self.subs.insert(&req.channel);
        // Publications queued meanwhile up to the reported top were recovered already.
        if r.position.offset > 0 {
            self.subs.set_live_from(&req.channel, Some(r.position));
        }
        let history = r.options.history_enabled();
        let force_recovery = overrides.force_recovery.unwrap_or(r.options.force_recovery);
        let force_positioning = overrides.force_positioning.unwrap_or(false);
        let recoverable = history && (req.recoverable || req.recover || force_recovery);
        let mut result = SubscribeResult {
            recoverable,
            positioned: history && (req.positioned || recoverable || force_positioning),
            epoch: wire_epoch(r.position.epoch),
            offset: r.position.offset,
            ..Default::default()
        };
        if result.positioned || result.recoverable {
            self.subs.set_positioned(&req.channel, r.position.epoch);
        }
        if let Some(recovery) = r.recovery {
            self.shared
                .counters
                .protocol(self.encoding.protocol())
                .recovery(recovery.recovered);
            result.was_recovering = true;
            result.recovered = recovery.recovered;
            result.publications = recovery
                .publications
                .iter()
                .map(|p| publication(p))
                .collect();
        }
        Ok(result)
    }

    async fn publish(&self, req: cf::PublishRequest) -> Result<PublishResult, CfError> {
        let channel = req.channel.clone();
        let payload = cf::publish_payload(req).ok_or(CfError::BAD_REQUEST)?;
        self.ops()
            .publish(&channel, payload)
            .await
            .map_err(op_error)?;
        Ok(PublishResult {})
    }

    async fn presence(&self, channel: &str) -> Result<PresenceResult, CfError> {
        let map = self.ops().presence(channel).await.map_err(op_error)?;
        Ok(PresenceResult {
            presence: map
                .into_iter()
                .map(|(k, v)| (k, client_info(&v)))
                .collect::<BTreeMap<_, _>>(),
        })
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStatsResult, CfError> {
        let stats = self.ops().presence_stats(channel).await.map_err(op_error)?;
        Ok(PresenceStatsResult {
            num_clients: u32::try_from(stats.num_clients).unwrap_or(u32::MAX),
            num_users: u32::try_from(stats.num_users).unwrap_or(u32::MAX),
        })
    }

    async fn history(&self, req: cf::HistoryRequest) -> Result<HistoryResult, CfError> {
        let query = HistoryQuery {
            since: req
                .since
                .as_ref()
                .map(|p| CorePosition::new(p.offset, Epoch::from_client(&p.epoch))),
            // Protocol: 0 asks for the position only, a negative limit for everything.
            limit: usize::try_from(req.limit).ok(),
            reverse: req.reverse,
        };
        let r = self
            .ops()
            .history(&req.channel, query)
            .await
            .map_err(op_error)?;
        Ok(HistoryResult::new(
            r.publications.iter().map(|p| publication(p)).collect(),
            cf::StreamPosition {
                offset: r.position.offset,
                epoch: wire_epoch(r.position.epoch),
            },
        ))
    }

    /// The client operations of this (connected) client.
    fn ops(&self) -> ClientOps<'_> {
        ClientOps::new(&self.shared, self.handle())
    }
}

/// A publication as sent inside replies (history, recovery), with the publisher's info.
fn publication(p: &switchboard_core::Publication) -> cf::Publication {
    cf::Publication::from_core(p)
}

/// The protocol's view of a member.
fn client_info(info: &switchboard_core::ClientInfo) -> cf::ClientInfo {
    cf::ClientInfo::from_core(info)
}

/// The frame line for one outbox item; `None` for items this protocol does not show.
fn encode_delivery(encoding: Encoding, delivery: &Delivery) -> Option<Bytes> {
    match delivery {
        Delivery::Publication(p) => Some(encoding.publication_push(p)),
        Delivery::Join(ev) => Some(encoding.push(&Push::new(
            &*ev.channel,
            PushBody::Join(Join {
                info: client_info(&ev.info),
            }),
        ))),
        Delivery::Leave(ev) => Some(encoding.push(&Push::new(
            &*ev.channel,
            PushBody::Leave(Leave {
                info: client_info(&ev.info),
            }),
        ))),
        Delivery::Direct(_) | Delivery::Control(_) => None,
    }
}

/// The protocol's error for a refused client operation; an unreachable broker is a
/// temporary error (the SDK retries).
fn op_error(e: OpError) -> CfError {
    match e {
        OpError::InvalidChannel | OpError::UnknownChannel => CfError::UNKNOWN_CHANNEL,
        OpError::PermissionDenied => CfError::PERMISSION_DENIED,
        OpError::NotAvailable => CfError::NOT_AVAILABLE,
        OpError::LimitExceeded => CfError::LIMIT_EXCEEDED,
        OpError::UnrecoverablePosition => CfError::UNRECOVERABLE_POSITION,
        OpError::Unavailable => CfError {
            code: CfError::INTERNAL.code,
            message: "broker unavailable, retry later".into(),
            temporary: true,
        },
        OpError::Closed => CfError::INTERNAL,
    }
}

/// How long after a failed refresh proxy call the connection's expiry is asked about again.
const REFRESH_RETRY_SECS: u64 = 5;

/// The backend's `error` answer as the client's error.
fn backend_error(e: BackendError) -> CfError {
    CfError {
        code: e.code,
        message: e.message.into(),
        temporary: e.temporary,
    }
}

/// The backend's `disconnect` answer as this protocol's disconnect (the reason cut to fit
/// a close frame).
fn backend_disconnect(d: BackendDisconnect) -> Disconnect {
    let mut reason = d.reason;
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    Disconnect::new(d.code, reason)
}

/// A proxy call without an answer: error 100, temporary (the SDK may retry).
fn proxy_failure(f: Failure) -> CfError {
    let message = match f {
        Failure::Timeout => "backend timeout",
        Failure::Unreachable => "backend unavailable",
        Failure::BadResponse => "backend error",
        Failure::NotConfigured => "not available",
    };
    CfError {
        code: CfError::INTERNAL.code,
        message: message.into(),
        temporary: true,
    }
}

/// The disconnect owed to a client whose outbox the hub closed.
fn outbox_closed(reason: CloseReason) -> Disconnect {
    match reason {
        CloseReason::SlowConsumer => Disconnect::SLOW,
        CloseReason::Shutdown => Disconnect::SHUTDOWN,
        CloseReason::MissedPublications => Disconnect::INSUFFICIENT_STATE,
        _ => Disconnect::FORCE_RECONNECT,
    }
}

/// Longest sleep armed for an expiry: a year. Tokens claiming a later time (up to
/// `u64::MAX` seconds, far past what `SystemTime` holds) simply never fire; the timer is re-armed
/// when it ends early, so such a connection sleeps a year at a time.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long from `now` (Unix seconds) until one second after `at`, at most
/// [`FAR_FUTURE`]. Integer arithmetic only: any `u64` a token carries is accepted.
fn time_until_expiry(at: Option<u64>, now: u64) -> Duration {
    match at {
        None => FAR_FUTURE,
        Some(at) => Duration::from_secs(at.saturating_add(1).saturating_sub(now)).min(FAR_FUTURE),
    }
}

pub(crate) mod streams;
mod subs;
#[cfg(test)]
mod tests;
