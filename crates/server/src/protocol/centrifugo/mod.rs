//! The Centrifugo client protocol (v2, JSON) at `/connection/websocket`, so the real
//! `centrifuge` SDKs can connect.
//!
//! After the WebSocket upgrade (same checks as raw rooms: origin, handshake, connection
//! limit), one task runs the connection. A small reader task only decodes WebSocket frames
//! and hands their bytes over; the connection task owns all state (subscriptions, user,
//! token expiry), answers commands in order and writes the outbox's deliveries, so a reply
//! and the publications queued after it can never be reordered.
//!
//! * The first command must be `connect`. Its token is verified with the configured keys
//!   ([`crate::auth`]); an empty token is accepted only with `allow_anonymous`. An expired
//!   token is answered with error 109 so the SDK fetches a fresh one and reconnects; an
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
//!   push with code 2501 "subscription expired" (the connection stays open).
//! * The server sends `{}` every ping interval; a client that sent nothing (no pong, no
//!   command) for the ping interval plus the ping timeout is closed with 3012 "no pong".
//! * A connection whose token expires without a `refresh` is closed with 3005; an
//!   undecodable frame with 3501 "bad request"; a slow consumer with 3008 "slow"; server
//!   shutdown with 3001 "shutdown".
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
//! serving a connection (a bug) closes it with 1011 and is counted as `closed_panic`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use switchboard_core::{
    ChannelError, ClientCtx, CloseReason, ConnHandle, ConnInfo, Control, Delivery, Epoch,
    HistoryQuery, HubError, NodeError, Outbox, PermissionError, PublishOptions,
    StreamPosition as CorePosition, SubscribeOptions,
};
use switchboard_protocols::centrifugo::{
    self as cf, commands, encode_batch, encode_publication_push, wire_epoch, Command,
    ConnectResult, Disconnect, Error as CfError, HistoryResult, Join, Leave, Method, PingResult,
    PresenceResult, PresenceStatsResult, PublishResult, Push, PushBody, RefreshResult, Reply,
    ReplyResult, RpcRequest, SubRefreshResult, SubscribePush, SubscribeRequest, SubscribeResult,
    UnsubscribePush, UnsubscribeResult,
};
use switchboard_websocket::stream::{WebSocket, WsWriter};
use switchboard_websocket::{CloseCode, Message};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::auth::{unix_now, TokenError};
use crate::conn::shutdown::ShutdownToken;
use crate::conn::stats::{ConnectionSlot, Counter};
use crate::state::Shared;
use crate::transport::upgrade;
use crate::transport::{Endpoint, RequestCtx, ResponseFuture, Route};

/// The path SDKs connect to.
pub const PATH: &str = "/connection/websocket";

/// Most outbox deliveries written per frame.
const BATCH: usize = 64;
/// Frames read ahead of the connection task (back-pressure on a client that floods us).
const READ_AHEAD: usize = 16;
/// How long to wait for the peer's close reply once ours is sent, and at most for our close
/// frame to be written.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How often a stalled write checks whether the hub gave up on the connection.
const STALL_CHECK: Duration = Duration::from_millis(200);

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
        let admitted = match upgrade::admit(&req, &shared, peer) {
            Ok(admitted) => admitted,
            Err(refusal) => return Box::pin(std::future::ready(*refusal)),
        };
        let timeout = shared.config.handshake_timeout;
        let max = shared.config.max_message_size;
        let conn_shared = Arc::clone(&shared);
        let response = admitted.accept(&mut req, &shared, peer, timeout, max, move |ws, slot| {
            tokio::spawn(run(ws, conn_shared, peer, token, slot));
        });
        Box::pin(std::future::ready(response))
    }
}

/// Run one connection to its end.
async fn run<S>(
    ws: WebSocket<S>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    token: ShutdownToken,
    slot: ConnectionSlot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = ws.split();
    let (tx, rx) = mpsc::channel::<Bytes>(READ_AHEAD);
    // The reader only forwards data frames; the WebSocket layer answers control frames
    // itself. It ends on close, EOF or error (the codec has sent the close code then).
    let mut reader_task = tokio::spawn(async move {
        while let Some(Ok(msg)) = reader.next().await {
            match msg {
                Message::Text(b) | Message::Binary(b) => {
                    if tx.send(b).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    });
    let mut conn = Conn {
        shared: Arc::clone(&shared),
        peer,
        rx,
        handle: None,
        subs: HashSet::new(),
        positioned: HashMap::new(),
        live_from: HashMap::new(),
        sub_expiry: HashMap::new(),
        expires_at: None,
        last_seen: Instant::now(),
    };
    // A panic while serving (a bug) must not just drop the socket: the client gets 1011 and
    // the panic is counted, as for raw rooms.
    let end = match crate::conn::crash::CatchPanic::new(conn.serve(&mut writer, &token)).await {
        Ok(end) => end,
        Err(p) => {
            shared.counters.bump(Counter::ClosedPanic);
            tracing::error!(%peer, "panic in centrifugo connection: {p}");
            End::Disconnect(Disconnect::new(
                CloseCode::INTERNAL_ERROR.0,
                "internal server error",
            ))
        }
    };
    match end {
        End::Disconnect(d) => {
            tracing::debug!(%peer, code = d.code, reason = %d.reason, "centrifugo disconnect");
            if d.code == Disconnect::SLOW.code {
                shared.counters.bump(Counter::ClosedSlowConsumer);
                tracing::info!(%peer, "closing slow consumer");
            }
            // Bounded: a client that stopped reading cannot take even the close frame.
            let _ = tokio::time::timeout(CLOSE_LINGER, writer.close(CloseCode(d.code), &d.reason))
                .await;
            let _ = tokio::time::timeout(CLOSE_LINGER, &mut reader_task).await;
        }
        End::Stalled => {
            // Like raw rooms: a peer that takes no bytes at all gets no close frame either;
            // dropping the socket frees its buffers now.
            shared.counters.bump(Counter::ClosedSlowConsumer);
            tracing::info!(%peer, "peer stopped reading; dropping connection");
        }
        End::Gone => {}
    }
    reader_task.abort();
    drop(conn);
    drop(slot);
    drop(token);
}

/// How a connection ends.
enum End {
    /// Close the WebSocket with this code and reason.
    Disconnect(Disconnect),
    /// The peer is gone (closed, EOF, write error); nothing more to send.
    Gone,
    /// The peer accepted no bytes for the stall limit: the socket is dropped.
    Stalled,
}

/// The state of one connection.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    rx: mpsc::Receiver<Bytes>,
    /// Set once `connect` succeeded.
    handle: Option<ConnHandle>,
    /// Channels this client subscribed to (client- and server-side).
    subs: HashSet<String>,
    /// Subscriptions whose client tracks stream positions (told about gaps).
    positioned: HashMap<String, Epoch>,
    /// Per channel, the position a subscribe reply reported: queued publications at or
    /// below it were already recovered (or predate the subscription) and are skipped.
    /// Only happens with a shared broker (see `switchboard_core::Node`); removed once a
    /// later publication passes.
    live_from: HashMap<String, CorePosition>,
    /// Unix time at which each subscription made with an expiring token ends unless
    /// `sub_refresh` moves it. Checked against one deadline (the earliest) in the
    /// connection's loop, so no timer per subscription.
    sub_expiry: HashMap<String, u64>,
    /// Unix time at which the connection token expires.
    expires_at: Option<u64>,
    /// When the client last sent anything (its pongs included).
    last_seen: Instant,
}

/// What handling one frame produced.
enum Step {
    /// Keep going; these messages are to be written.
    Continue,
    /// Stop with this ending.
    Stop(End),
}

impl Conn {
    async fn serve<S>(&mut self, writer: &mut WsWriter<S>, token: &ShutdownToken) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = self.shared.config.clone();
        let bound = WriteBound {
            stall: config.ping_timeout,
            outbox: None,
            token,
        };
        // The connect command must arrive within the handshake timeout.
        let mut out: Vec<Bytes> = Vec::new();
        let first = tokio::select! {
            f = self.rx.recv() => f,
            _ = tokio::time::sleep(config.handshake_timeout) => {
                return End::Disconnect(Disconnect::STALE);
            }
        };
        let Some(first) = first else {
            return End::Gone;
        };
        self.last_seen = Instant::now();
        let mut outbox = match self.handle_first(&first, &mut out).await {
            Ok(Some(outbox)) => outbox,
            Ok(None) => {
                // Connect refused with an error reply (e.g. expired token): send it and
                // let the client close and retry.
                if let Err(fail) = write_all(writer, &out, &bound).await {
                    return fail.end();
                }
                return self.wait_close(token).await;
            }
            Err(d) => return End::Disconnect(d),
        };
        if let Err(fail) = write_all(writer, &out, &bound).await {
            return fail.end();
        }
        out.clear();

        let mut ping = tokio::time::interval(config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let dead_after = config.ping_interval + config.ping_timeout;
        let stop = token.triggered();
        tokio::pin!(stop);
        let mut batch: Vec<Delivery> = Vec::with_capacity(BATCH);
        // Re-armed only when an expiry changes, not on every turn of the loop.
        let mut expiry = ExpiryTimer::new();
        let mut sub_expiry = ExpiryTimer::new();
        loop {
            expiry.set(self.expires_at);
            sub_expiry.set(self.sub_expiry.values().min().copied());
            tokio::select! {
                frame = self.rx.recv() => {
                    let Some(frame) = frame else { return End::Gone };
                    self.last_seen = Instant::now();
                    match self.handle_frame(&frame, &mut out).await {
                        Step::Continue => {}
                        Step::Stop(end) => {
                            let _ = write_all(writer, &out, &bound.with(&outbox)).await;
                            return end;
                        }
                    }
                }
                got = outbox.recv_batch(&mut batch, BATCH) => {
                    match got {
                        Ok(_) => {
                            // Channels whose stream went on in a new epoch in this batch.
                            let mut moved: Vec<Arc<str>> = Vec::new();
                            for delivery in batch.drain(..) {
                                if let Delivery::Control(control) = &delivery {
                                    self.on_control(control, &mut out).await;
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
                                        self.insufficient_state(&p.channel, &mut out).await;
                                        continue;
                                    }
                                }
                                if let Some(bytes) = encode_delivery(&delivery) {
                                    out.push(bytes);
                                }
                            }
                        }
                        Err(closed) => return End::Disconnect(outbox_closed(closed.reason)),
                    }
                }
                _ = ping.tick() => {
                    if self.last_seen.elapsed() > dead_after {
                        return End::Disconnect(Disconnect::NO_PONG);
                    }
                    out.push(cf::ping_frame());
                }
                _ = expiry.elapsed() => {
                    if expiry.passed() {
                        return End::Disconnect(Disconnect::EXPIRED);
                    }
                }
                _ = sub_expiry.elapsed() => {
                    if sub_expiry.passed() {
                        self.drop_expired_subs(&mut out);
                    }
                }
                _ = &mut stop => {
                    return End::Disconnect(Disconnect::SHUTDOWN);
                }
            }
            if !out.is_empty() {
                if let Err(fail) = write_all(writer, &out, &bound.with(&outbox)).await {
                    if !matches!(fail, WriteFail::Gone) {
                        return fail.end();
                    }
                    // Usually the client closed right after its last commands (the reader
                    // answered its close and shut our write side). Commands it sent before
                    // closing still count — a publish must not be lost because its reply
                    // cannot be written — so the ones already read are carried out, replies
                    // discarded.
                    Box::pin(self.finish_read_commands(&mut out)).await;
                    return End::Gone;
                }
                out.clear();
                if out.capacity() > BATCH {
                    // Do not keep a burst's capacity on a connection that goes quiet.
                    out = Vec::new();
                }
            }
        }
    }

    /// Carry out the commands the client sent before it went away, without replying. Bounded:
    /// the reader forwards what it already has and then ends.
    async fn finish_read_commands(&mut self, out: &mut Vec<Bytes>) {
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(frame) = self.rx.recv().await {
                out.clear();
                if let Step::Stop(_) = self.handle_frame(&frame, out).await {
                    break;
                }
            }
        })
        .await;
        out.clear();
    }

    /// Carries out what the server asked of this connection (the HTTP API, a gap report).
    async fn on_control(&mut self, control: &Control, out: &mut Vec<Bytes>) {
        match control {
            Control::Subscribe(channel) => self.server_subscribe(channel.clone(), out).await,
            Control::MissedPublications(channel) => {
                if self.positioned.contains_key(channel) && self.subs.contains(channel) {
                    self.insufficient_state(channel, out).await;
                }
            }
            Control::Unsubscribe(channel) => {
                if self.subs.contains(channel) {
                    self.forget(channel).await;
                    out.push(
                        Push::new(
                            channel.clone(),
                            PushBody::Unsubscribe(UnsubscribePush {
                                code: cf::unsubscribe_code::SERVER,
                                reason: "server unsubscribe".to_string(),
                            }),
                        )
                        .encode(),
                    );
                }
            }
        }
    }

    /// Whether `delivery` is a publication the client already has (see `live_from`).
    fn already_sent(&mut self, delivery: &Delivery) -> bool {
        let Delivery::Publication(p) = delivery else {
            return false;
        };
        let Some(from) = self.live_from.get(&*p.channel) else {
            return false;
        };
        if p.epoch == from.epoch && p.offset <= from.offset {
            return true;
        }
        self.live_from.remove(&*p.channel);
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
        match self.positioned.get_mut(&*p.channel) {
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
        out.push(
            Push::new(
                channel,
                PushBody::Unsubscribe(UnsubscribePush {
                    code: cf::unsubscribe_code::INSUFFICIENT_STATE,
                    reason: "insufficient state".to_string(),
                }),
            )
            .encode(),
        );
    }

    /// Ends this connection's subscription to `channel` (no message to the client).
    async fn forget(&mut self, channel: &str) {
        self.subs.remove(channel);
        self.positioned.remove(channel);
        self.live_from.remove(channel);
        self.sub_expiry.remove(channel);
        self.shared.node.unsubscribe(self.handle(), channel).await;
    }

    /// After a refused connect: wait for the client to go away (bounded).
    async fn wait_close(&mut self, token: &ShutdownToken) -> End {
        let stop = token.triggered();
        tokio::select! {
            _ = async { while self.rx.recv().await.is_some() {} } => End::Gone,
            _ = tokio::time::sleep(self.shared.config.handshake_timeout) => End::Disconnect(Disconnect::STALE),
            _ = stop => End::Disconnect(Disconnect::SHUTDOWN),
        }
    }

    /// Ends every subscription whose token expired without a `sub_refresh`, telling the
    /// client with an `unsubscribe` push (code 2501, so the SDK resubscribes with a new
    /// token). The connection stays open.
    fn drop_expired_subs(&mut self, out: &mut Vec<Bytes>) {
        let now = unix_now();
        let expired: Vec<String> = self
            .sub_expiry
            .iter()
            .filter(|(_, at)| **at < now)
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in expired {
            self.sub_expiry.remove(&channel);
            if self.subs.remove(&channel) {
                self.positioned.remove(&channel);
                self.live_from.remove(&channel);
                self.shared.hub.unsubscribe(self.handle(), &channel);
                tracing::debug!(peer = %self.peer, %channel, "subscription expired");
                out.push(
                    Push::new(
                        channel,
                        PushBody::Unsubscribe(UnsubscribePush {
                            code: cf::unsubscribe_code::EXPIRED,
                            reason: "subscription expired".to_string(),
                        }),
                    )
                    .encode(),
                );
            }
        }
    }

    /// The first frame: must start with `connect`. Returns the outbox on success, `None`
    /// when an error reply was queued instead.
    async fn handle_first(
        &mut self,
        frame: &[u8],
        out: &mut Vec<Bytes>,
    ) -> Result<Option<Outbox>, Disconnect> {
        let mut cmds = commands(frame);
        let connect = match cmds.next() {
            Some(Ok(Command {
                id,
                method: Method::Connect(req),
            })) => (id, req),
            _ => return Err(Disconnect::BAD_REQUEST),
        };
        let (id, req) = connect;
        let verifier = &self.shared.verifier;
        let (user, info, exp, channels) = if req.token.is_empty() {
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
                    (claims.sub, claims.info, exp, claims.channels)
                }
                Err(e) if e.is_expired() => {
                    out.push(Reply::error(id, CfError::TOKEN_EXPIRED).encode());
                    return Ok(None);
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, "connect token rejected: {e}");
                    return Err(Disconnect::INVALID_TOKEN);
                }
            }
        };
        let mut conn_info = ConnInfo::new(self.peer.to_string(), cf::PROTOCOL).with_user(user);
        if let Some(info) = &info {
            conn_info = conn_info.with_conn_info(Bytes::from(info.get().to_owned()));
        }
        let (handle, outbox) = match self.shared.hub.register(conn_info) {
            Ok(pair) => pair,
            Err(_) => return Err(Disconnect::CONNECTION_LIMIT),
        };
        self.expires_at = exp;
        let mut result = ConnectResult {
            client: handle.id().to_string(),
            version: concat!("switchboard ", env!("CARGO_PKG_VERSION")).to_string(),
            ping: u32::try_from(self.shared.config.ping_interval.as_secs().max(1))
                .unwrap_or(u32::MAX),
            pong: true,
            ..Default::default()
        };
        if let Some(at) = exp {
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
        out.push(Reply::ok(id, ReplyResult::Connect(result)).encode());
        // Commands batched after connect in the same frame.
        for cmd in cmds {
            match cmd {
                Ok(cmd) => {
                    if let Step::Stop(End::Disconnect(d)) = self.handle_command(cmd, out).await {
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
            Ok(r) => out.push(
                Push::new(
                    channel,
                    PushBody::Subscribe(SubscribePush {
                        recoverable: r.recoverable,
                        epoch: r.epoch,
                        offset: r.offset,
                        positioned: r.positioned,
                        data: None,
                    }),
                )
                .encode(),
            ),
            Err(e) => tracing::debug!(peer = %self.peer, %channel, "server subscribe failed: {e}"),
        }
    }

    async fn handle_frame(&mut self, frame: &[u8], out: &mut Vec<Bytes>) -> Step {
        let cmds: Vec<_> = commands(frame).collect();
        for cmd in cmds {
            match cmd {
                Ok(cmd) => {
                    if let Step::Stop(end) = self.handle_command(cmd, out).await {
                        return Step::Stop(end);
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, "bad command: {e}");
                    return Step::Stop(End::Disconnect(Disconnect::BAD_REQUEST));
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
            if let Err(ChannelError::InvalidName) = self.shared.hub.namespaces().resolve(channel) {
                out.push(Reply::error(id, CfError::INVALID_CHANNEL).encode());
                return Step::Continue;
            }
        }
        let result: Result<ReplyResult, CfError> = match cmd.method {
            Method::Connect(_) => return Step::Stop(End::Disconnect(Disconnect::BAD_REQUEST)),
            Method::Pong | Method::Send(_) => return Step::Continue,
            Method::Ping(_) => Ok(ReplyResult::Ping(PingResult {})),
            Method::Rpc(RpcRequest { .. }) => Err(CfError::NOT_AVAILABLE),
            Method::Subscribe(req) => self.subscribe(&req).await.map(ReplyResult::Subscribe),
            Method::Unsubscribe(req) => {
                if self.subs.contains(&req.channel) {
                    self.forget(&req.channel).await;
                }
                Ok(ReplyResult::Unsubscribe(UnsubscribeResult {}))
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
                    _ => return Step::Stop(End::Disconnect(Disconnect::INVALID_TOKEN)),
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
                            Some(at) => self.sub_expiry.insert(req.channel.clone(), at),
                            None => self.sub_expiry.remove(&req.channel),
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
            Ok(r) => Reply::ok(id, r).encode(),
            Err(e) => Reply::error(id, e).encode(),
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
        self.shared
            .hub
            .check_subscribe(&ctx, &req.channel)
            .map_err(permission_error)?;
        let mut result = self.join(req, chan_info).await?;
        if let Some(at) = expires_at {
            // The SDK schedules `sub_refresh` `ttl` seconds on; without it the
            // subscription ends when the token does.
            self.sub_expiry.insert(req.channel.clone(), at);
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
        let opts = SubscribeOptions {
            chan_info,
            recover_since: req
                .recover
                .then(|| CorePosition::new(req.offset, Epoch::from_client(&req.epoch))),
        };
        let r = self
            .shared
            .node
            .subscribe(self.handle(), &req.channel, opts)
            .await
            .map_err(|e| match e {
                NodeError::Hub(HubError::RoomFull { .. } | HubError::TooManyConnections { .. }) => {
                    CfError::LIMIT_EXCEEDED
                }
                NodeError::Hub(HubError::InvalidChannel | HubError::UnknownNamespace(_)) => {
                    CfError::UNKNOWN_CHANNEL
                }
                e => node_error(&e),
            })?;
        self.subs.insert(req.channel.clone());
        // Publications queued meanwhile up to the reported top were recovered already.
        if r.position.offset > 0 {
            self.live_from.insert(req.channel.clone(), r.position);
        }
        let history = r.options.history_enabled();
        let recoverable = history && (req.recoverable || req.recover || r.options.force_recovery);
        let mut result = SubscribeResult {
            recoverable,
            positioned: history && (req.positioned || recoverable),
            epoch: wire_epoch(r.position.epoch),
            offset: r.position.offset,
            ..Default::default()
        };
        if result.positioned || result.recoverable {
            self.positioned
                .insert(req.channel.clone(), r.position.epoch);
        }
        if let Some(recovery) = r.recovery {
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
        let ctx = ClientCtx::for_conn(self.handle());
        self.shared
            .hub
            .check_publish(&ctx, &req.channel)
            .map_err(permission_error)?;
        let channel = req.channel.clone();
        let payload = cf::publish_payload(req).ok_or(CfError::BAD_REQUEST)?;
        let handle = self.handle();
        let info = switchboard_core::ClientInfo {
            client: handle.id().to_string(),
            user: ctx.user,
            conn_info: handle.info().conn_info.clone(),
            chan_info: None,
        };
        self.shared
            .node
            .publish(
                &channel,
                payload,
                PublishOptions::from_conn(handle.id()),
                Some(Arc::new(info)),
            )
            .await
            .map_err(|e| node_error(&e))?;
        Ok(PublishResult {})
    }

    async fn presence(&self, channel: &str) -> Result<PresenceResult, CfError> {
        let ctx = ClientCtx::for_conn(self.handle());
        self.shared
            .hub
            .check_presence(&ctx, channel)
            .map_err(permission_error)?;
        let map = self
            .shared
            .node
            .presence(channel)
            .await
            .map_err(|e| node_error(&e))?;
        Ok(PresenceResult {
            presence: map
                .into_iter()
                .map(|(k, v)| (k, client_info(&v)))
                .collect::<BTreeMap<_, _>>(),
        })
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStatsResult, CfError> {
        let ctx = ClientCtx::for_conn(self.handle());
        self.shared
            .hub
            .check_presence(&ctx, channel)
            .map_err(permission_error)?;
        let stats = self
            .shared
            .node
            .presence_stats(channel)
            .await
            .map_err(|e| node_error(&e))?;
        Ok(PresenceStatsResult {
            num_clients: u32::try_from(stats.num_clients).unwrap_or(u32::MAX),
            num_users: u32::try_from(stats.num_users).unwrap_or(u32::MAX),
        })
    }

    async fn history(&self, req: cf::HistoryRequest) -> Result<HistoryResult, CfError> {
        let ctx = ClientCtx::for_conn(self.handle());
        self.shared
            .hub
            .check_history(&ctx, &req.channel)
            .map_err(permission_error)?;
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
            .shared
            .node
            .history(&req.channel, query)
            .await
            .map_err(|e| node_error(&e))?;
        Ok(HistoryResult::new(
            r.publications.iter().map(|p| publication(p)).collect(),
            cf::StreamPosition {
                offset: r.position.offset,
                epoch: wire_epoch(r.position.epoch),
            },
        ))
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
fn encode_delivery(delivery: &Delivery) -> Option<Bytes> {
    match delivery {
        Delivery::Publication(p) => Some(encode_publication_push(p)),
        Delivery::Join(ev) => Some(
            Push::new(
                &*ev.channel,
                PushBody::Join(Join {
                    info: client_info(&ev.info),
                }),
            )
            .encode(),
        ),
        Delivery::Leave(ev) => Some(
            Push::new(
                &*ev.channel,
                PushBody::Leave(Leave {
                    info: client_info(&ev.info),
                }),
            )
            .encode(),
        ),
        Delivery::Direct(_) | Delivery::Control(_) => None,
    }
}

/// The protocol error for a failed node operation; an unreachable broker is a temporary
/// error (the SDK retries).
fn node_error(e: &NodeError) -> CfError {
    match e {
        NodeError::Channel(switchboard_core::ChannelError::UnrecoverablePosition) => {
            CfError::UNRECOVERABLE_POSITION
        }
        NodeError::Channel(switchboard_core::ChannelError::NotAvailable) => CfError::NOT_AVAILABLE,
        NodeError::Channel(_)
        | NodeError::Hub(HubError::InvalidChannel | HubError::UnknownNamespace(_)) => {
            CfError::UNKNOWN_CHANNEL
        }
        e if e.is_temporary() => CfError {
            code: CfError::INTERNAL.code,
            message: "broker unavailable, retry later".into(),
            temporary: true,
        },
        _ => CfError::INTERNAL,
    }
}

fn permission_error(e: PermissionError) -> CfError {
    match e {
        PermissionError::UnknownChannel => CfError::UNKNOWN_CHANNEL,
        PermissionError::NotAvailable => CfError::NOT_AVAILABLE,
        _ => CfError::PERMISSION_DENIED,
    }
}

/// What bounds a write to a client that may have stopped reading.
struct WriteBound<'a> {
    /// How long the peer may accept no bytes at all (the raw rooms' stall limit,
    /// `ping_timeout`).
    stall: Duration,
    /// The connection's outbox, once connected: a flush that waits gives up as soon as the hub
    /// closes it (the slow-consumer policy) instead of waiting for the stall limit.
    outbox: Option<&'a Outbox>,
    token: &'a ShutdownToken,
}

impl WriteBound<'_> {
    /// The same bound, watching `outbox`.
    fn with<'b>(&'b self, outbox: &'b Outbox) -> WriteBound<'b> {
        WriteBound {
            stall: self.stall,
            outbox: Some(outbox),
            token: self.token,
        }
    }
}

/// Why a write did not complete.
enum WriteFail {
    /// The socket failed (usually: the peer closed).
    Gone,
    /// The peer accepted no bytes for the stall limit.
    Stalled,
    /// The hub closed the outbox while the write waited.
    Closed(CloseReason),
    /// The server is shutting down.
    Shutdown,
}

impl WriteFail {
    /// How the connection ends after this failure.
    fn end(self) -> End {
        match self {
            WriteFail::Gone => End::Gone,
            WriteFail::Stalled => End::Stalled,
            WriteFail::Closed(reason) => End::Disconnect(outbox_closed(reason)),
            WriteFail::Shutdown => End::Disconnect(Disconnect::SHUTDOWN),
        }
    }
}

/// The disconnect owed to a client whose outbox the hub closed.
fn outbox_closed(reason: CloseReason) -> Disconnect {
    match reason {
        CloseReason::SlowConsumer => Disconnect::SLOW,
        CloseReason::Shutdown => Disconnect::SHUTDOWN,
        _ => Disconnect::FORCE_RECONNECT,
    }
}

/// Write `messages` as one frame, newline-separated, within `bound`. The fast path (the
/// socket takes everything at once) arms no timer.
///
/// Without the bound a client that stops reading would hold this task in the flush for
/// ever: its heartbeat, its close and the slow-consumer verdict could never fire.
async fn write_all<S>(
    writer: &mut WsWriter<S>,
    messages: &[Bytes],
    bound: &WriteBound<'_>,
) -> Result<(), WriteFail>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if messages.is_empty() {
        return Ok(());
    }
    let frame = if messages.len() == 1 {
        messages[0].clone()
    } else {
        encode_batch(messages)
    };
    writer
        .feed(Message::Text(frame))
        .map_err(|_| WriteFail::Gone)?;
    let mut flush = std::pin::pin!(writer.flush());
    if let std::task::Poll::Ready(r) = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(flush.as_mut(), cx))
    })
    .await
    {
        return r.map_err(|_| WriteFail::Gone);
    }
    Box::pin(flush_stalled(flush, bound)).await
}

/// The slow half of [`write_all`]: the socket did not take everything at once.
async fn flush_stalled<W>(
    mut flush: std::pin::Pin<&mut W>,
    bound: &WriteBound<'_>,
) -> Result<(), WriteFail>
where
    W: std::future::Future<Output = Result<(), switchboard_websocket::Error>>,
{
    let deadline = tokio::time::sleep(bound.stall);
    tokio::pin!(deadline);
    let stop = bound.token.triggered();
    tokio::pin!(stop);
    let mut check = tokio::time::interval(STALL_CHECK);
    loop {
        tokio::select! {
            r = &mut flush => return r.map_err(|_| WriteFail::Gone),
            _ = &mut deadline => return Err(WriteFail::Stalled),
            _ = &mut stop => return Err(WriteFail::Shutdown),
            _ = check.tick() => {
                if let Some(reason) = bound.outbox.and_then(Outbox::close_reason) {
                    return Err(WriteFail::Closed(reason));
                }
            }
        }
    }
}

/// A timer that fires one second after a Unix time (never without one), re-armed only when
/// that time changes.
///
/// The deadline is absolute: rebuilding a relative "remaining + grace" sleep on every turn of
/// the connection loop would push it back with every message, so a busy connection would
/// never expire. The extra second lets a client that refreshes right at the expiry keep its
/// connection or subscription.
struct ExpiryTimer {
    at: Option<u64>,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl ExpiryTimer {
    fn new() -> ExpiryTimer {
        ExpiryTimer {
            at: None,
            sleep: Box::pin(sleep_past_expiry(None)),
        }
    }

    /// Fires one second after `at` from now on (never for `None`).
    fn set(&mut self, at: Option<u64>) {
        if at != self.at {
            self.at = at;
            self.sleep.set(sleep_past_expiry(at));
        }
    }

    /// Resolves when the timer fires.
    fn elapsed(&mut self) -> &mut std::pin::Pin<Box<tokio::time::Sleep>> {
        &mut self.sleep
    }

    /// Called once the sleep ended: whether the time really passed. A sleep is at most
    /// [`FAR_FUTURE`] long, so for a later (or no) time it ends early; it is then re-armed
    /// and `false` returned.
    fn passed(&mut self) -> bool {
        if self.at.is_some_and(|at| at < unix_now()) {
            return true;
        }
        self.sleep.set(sleep_past_expiry(self.at));
        false
    }
}

/// Longest sleep armed for an expiry: a year. Tokens claiming a later time (up to
/// `u64::MAX` seconds, far past what `SystemTime` holds) simply never fire; the loop re-arms
/// the timer only when the expiry changes, so such a connection sleeps a year at a time.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);

/// A sleep that ends one second after the Unix time `at` (never when `None`).
fn sleep_past_expiry(at: Option<u64>) -> tokio::time::Sleep {
    tokio::time::sleep(time_until_expiry(at, crate::auth::unix_now()))
}

/// How long from `now` (Unix seconds) until one second after `at`, at most
/// [`FAR_FUTURE`]. Integer arithmetic only: any `u64` a token carries is accepted.
fn time_until_expiry(at: Option<u64>, now: u64) -> Duration {
    match at {
        None => FAR_FUTURE,
        Some(at) => Duration::from_secs(at.saturating_add(1).saturating_sub(now)).min(FAR_FUTURE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_sleeps_are_capped_and_never_overflow() {
        let now = 1_700_000_000;
        assert_eq!(time_until_expiry(None, now), FAR_FUTURE);
        assert_eq!(time_until_expiry(Some(now), now), Duration::from_secs(1));
        assert_eq!(time_until_expiry(Some(now - 10), now), Duration::ZERO);
        assert_eq!(
            time_until_expiry(Some(now + 59), now),
            Duration::from_secs(60)
        );
        for at in [10_000_000_000_000_000_000, i64::MAX as u64, u64::MAX] {
            assert_eq!(time_until_expiry(Some(at), now), FAR_FUTURE);
        }
    }

    #[tokio::test]
    async fn a_far_future_timer_re_arms_instead_of_firing() {
        let mut timer = ExpiryTimer::new();
        timer.set(Some(u64::MAX));
        assert!(!timer.passed(), "not due: re-armed");
        timer.set(Some(1));
        assert!(timer.passed(), "long past");
    }
}
