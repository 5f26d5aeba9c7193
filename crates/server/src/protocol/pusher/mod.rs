//! Pusher Channels protocol 7: `/app/{key}` (the WebSocket, [`PusherSocket`] and
//! [`PusherDriver`]) and the signed HTTP API `/apps/{id}/…` ([`api`]).
//!
//! A Pusher channel is the core channel of the same name (Pusher names have no `:`, so
//! they live in the default namespace; `presence-` channels get presence and join/leave
//! events, see [`presence_options`]). Subscriptions are authorized by the app's
//! signatures, not by tokens: the hub's anonymous-subscribe rule does not apply.
//!
//! `cache-` channels (also `private-cache-`, `private-encrypted-cache-`, `presence-cache-`)
//! keep their last event in the core's channel history ([`cache_options`]: one publication
//! for [`CACHE_TTL`]), so a new subscriber gets it, or `pusher:cache_miss`, on every node.
//! A signed-in connection (`pusher:signin`) is named by its user in the hub (so
//! `terminate_connections` and the server API's disconnect reach it on every node) and
//! joins the core channel `#server-to-user-{id}`, where the server SDKs' `sendToUser`
//! triggers.
//!
//! Endings and what the peer sees: unknown key → `pusher:error` 4001 and close 4001;
//! no `protocol` parameter → 4008, not a number → 4006, below 7 → 4007; a frame that is
//! not a JSON object with an `event` → `pusher:error` and close 4300; over the client
//! message rate → 4100 (back off); shutdown, slow consumer, missed publications → 4200
//! (reconnect at once); no pong → 4201; terminated through the API → 4009; a panic → 1011.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use switchboard_core::{
    ChannelOptions, CloseReason, ConnHandle, ConnId, ConnInfo, Control, Delivery, HistoryQuery,
    HubError, MemberEvent, Node, NodeError, Outbox, PublishOptions, StreamPosition,
    SubscribeOptions,
};
use switchboard_protocols::pusher::{self as wire, auth, code, ChannelKind};
use switchboard_websocket::{CloseCode, Message};
use tokio::time::Instant;

use crate::config::PusherApp;
use crate::conn::driver::{Driver, Ending, Out};
use crate::conn::runtime::{self, Identity, WsTransport};
use crate::transport::http::text;
use crate::transport::upgrade;
use crate::transport::{Endpoint, RequestCtx, ResponseFuture, Route};

pub(crate) mod api;
mod subs;

use subs::{Presence, Sub, Subscriptions};

/// Most deliveries taken from the outbox per step.
const BATCH: usize = 64;
/// Client events a connection may send per second (Pusher's documented limit).
const CLIENT_EVENTS_PER_SEC: u32 = 10;

/// Options of `presence-` channels: the default namespace's, with presence and join/leave
/// events on (members are listed and announced).
pub fn presence_options(default: &ChannelOptions) -> ChannelOptions {
    ChannelOptions {
        presence: true,
        join_leave: true,
        ..default.clone()
    }
}

/// How long a cache channel keeps its last event (Pusher's documented 30 minutes), and how
/// long the channel outlives its last subscriber for it.
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// Options of cache channels: `base`'s, keeping at least the last publication for at least
/// [`CACHE_TTL`].
pub fn cache_options(base: &ChannelOptions) -> ChannelOptions {
    ChannelOptions {
        history_size: base.history_size.max(1),
        history_ttl: base.history_ttl.max(CACHE_TTL),
        ..base.clone()
    }
}

/// The hub's namespaces for `config`: the configured ones, plus, when a Pusher app is
/// configured, [`presence_options`] for `presence-` channels and [`cache_options`] for the
/// cache channels (`presence-cache-` gets both).
pub fn namespaces(config: &crate::config::ServerConfig) -> switchboard_core::Namespaces {
    let ns = config.channel.clone();
    if config.pusher.apps.is_empty() {
        return ns;
    }
    let presence = presence_options(&ns.default);
    let cache = cache_options(&ns.default);
    // The first matching prefix wins: the cache prefixes (most specific first) go before
    // `presence-`.
    let mut ns = ns;
    for prefix in wire::CACHE_PREFIXES {
        let options = if prefix.starts_with(PRESENCE_PREFIX) {
            cache_options(&presence)
        } else {
            cache.clone()
        };
        ns = ns.with_prefix(prefix, options);
    }
    ns.with_prefix(PRESENCE_PREFIX, presence)
}

/// The prefix of presence channels.
pub const PRESENCE_PREFIX: &str = "presence-";

/// What the Pusher endpoints share: the apps.
#[derive(Default)]
pub struct PusherState {
    apps: Vec<Arc<PusherApp>>,
}

impl PusherState {
    /// The state for these apps.
    pub fn new(apps: &[PusherApp]) -> Arc<PusherState> {
        Arc::new(PusherState {
            apps: apps.iter().cloned().map(Arc::new).collect(),
        })
    }

    fn by_key(&self, key: &str) -> Option<&Arc<PusherApp>> {
        self.apps.iter().find(|a| a.key == key)
    }

    fn by_id(&self, id: &str) -> Option<&Arc<PusherApp>> {
        self.apps.iter().find(|a| a.id == id)
    }
}

/// The WebSocket endpoint `/app/{key}`.
pub(crate) struct PusherSocket(pub(crate) Arc<PusherState>);

impl Endpoint for PusherSocket {
    fn route(&self) -> Route {
        Route::UpgradePrefix("/app/")
    }

    fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture {
        let state = Arc::clone(&self.0);
        Box::pin(std::future::ready(upgrade_socket(state, req, ctx)))
    }
}

/// The connection's `socket_id`: its hub id, a dot, a random number `nonce` (so ids are
/// not guessable from each other; see [`socket_nonce`]).
pub fn socket_id(id: ConnId, nonce: u32) -> String {
    format!("{id}.{nonce}")
}

/// A new random number for a `socket_id`.
pub fn socket_nonce() -> u32 {
    rand::random::<u32>() % 1_000_000_000
}

/// The hub id inside a `socket_id`.
pub fn conn_of_socket(socket_id: &str) -> Option<ConnId> {
    let (id, rest) = socket_id.split_once('.')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

fn upgrade_socket(
    state: Arc<PusherState>,
    mut req: Request<Incoming>,
    ctx: RequestCtx,
) -> http::Response<crate::transport::http::Body> {
    let RequestCtx {
        shared,
        peer,
        token,
    } = ctx;
    if state.apps.is_empty() {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    let key = req
        .uri()
        .path()
        .trim_start_matches("/app/")
        .trim_end_matches('/')
        .to_string();
    let version = req
        .uri()
        .query()
        .map(auth::parse_query)
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k == "protocol")
        .map(|(_, v)| v);
    let admitted = match upgrade::admit(&req, &shared, peer) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
    let app = state.by_key(&key).cloned();
    let refusal = refusal(app.is_some(), version.as_deref());
    if let Some((code, message)) = refusal {
        tracing::info!(%peer, code, "pusher connection refused: {message}");
    }
    let (handle, outbox) = match shared
        .hub
        .register(ConnInfo::new(peer.to_string(), wire::PROTOCOL))
    {
        Ok(pair) => pair,
        Err(_) => return text(StatusCode::SERVICE_UNAVAILABLE, "too many connections"),
    };
    let id = handle.id();
    let driver = PusherDriver::new(
        app.unwrap_or_default(),
        shared.node.clone(),
        handle,
        outbox,
        shared.config.ping_interval.as_secs().max(1),
        refusal,
        shared.webhooks.clone(),
    );
    let limits = upgrade::limits(&shared);
    let counters = Arc::clone(&shared.counters);
    let timeout = shared.config.handshake_timeout;
    let max = shared.config.max_message_size;
    admitted.accept(&mut req, &shared, peer, timeout, max, move |ws, slot| {
        let who = Identity {
            peer,
            id,
            protocol: wire::PROTOCOL,
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

/// Why a connection to a known (`app_known`) or unknown app with this `protocol` query
/// value is refused, if it is: the code and message of its `pusher:error` and close.
pub fn refusal(app_known: bool, protocol: Option<&str>) -> Option<(u16, &'static str)> {
    if !app_known {
        return Some((code::APP_NOT_FOUND, "App key not in this cluster"));
    }
    match protocol.map(str::parse::<u32>) {
        None => Some((code::NO_VERSION, "No protocol version supplied")),
        Some(Err(_)) => Some((code::INVALID_VERSION, "Invalid version string format")),
        Some(Ok(v)) if v < wire::MIN_PROTOCOL_VERSION => {
            Some((code::UNSUPPORTED_PROTOCOL, "Unsupported protocol version"))
        }
        Some(Ok(_)) => None,
    }
}

/// One Pusher connection's state machine.
pub(crate) struct PusherDriver {
    app: Arc<PusherApp>,
    node: Node,
    handle: ConnHandle,
    outbox: Outbox,
    /// The random part of the connection's `socket_id` ([`PusherDriver::socket_id`]): kept
    /// as a number, the text is made when needed (rarely: open, signatures, webhooks).
    socket_nonce: u32,
    activity_timeout: u64,
    /// Set when the connection is refused (unknown key, old protocol): sent by `open`.
    refusal: Option<(u16, &'static str)>,
    channels: Subscriptions,
    /// Client events: the current second's start and how many were sent in it.
    bucket: (Instant, u32),
    batch: Vec<Delivery>,
    /// Where `client_event` (and `cache_miss`) webhooks go.
    webhooks: Option<Arc<crate::webhooks::Webhooks>>,
}

impl PusherDriver {
    /// The driver of connection `handle` to `app` (`refusal`: the connection is refused
    /// with this code and message instead; `webhooks`: where its app's webhooks go).
    pub(crate) fn new(
        app: Arc<PusherApp>,
        node: Node,
        handle: ConnHandle,
        outbox: Outbox,
        activity_timeout: u64,
        refusal: Option<(u16, &'static str)>,
        webhooks: Option<Arc<crate::webhooks::Webhooks>>,
    ) -> PusherDriver {
        PusherDriver {
            app,
            node,
            socket_nonce: socket_nonce(),
            handle,
            outbox,
            activity_timeout,
            refusal,
            channels: Subscriptions::default(),
            bucket: (Instant::now(), 0),
            batch: Vec::new(),
            webhooks,
        }
    }

    /// The connection's `socket_id`.
    pub(crate) fn socket_id(&self) -> String {
        socket_id(self.handle.id(), self.socket_nonce)
    }

    async fn message(&mut self, frame: &[u8], out: &mut Out) -> Result<(), Ending> {
        let f = match wire::decode(frame) {
            Ok(f) => f,
            Err(e) => {
                // A stream we cannot parse: closed, in the range pusher-js does not
                // reconnect after (the client would only send the same again).
                tracing::info!(id = self.handle.id(), "pusher: malformed message: {e}");
                out.message(wire::error(
                    Some(code::BAD_MESSAGE),
                    "Invalid message: expected a JSON object with an event",
                ));
                return Err(Ending::Close(
                    code::BAD_MESSAGE,
                    Cow::Borrowed("Invalid message"),
                ));
            }
        };
        match f.event.as_str() {
            "pusher:ping" => out.message(wire::pong()),
            "pusher:pong" => {}
            "pusher:subscribe" => match wire::data_object::<wire::Subscribe>(&f.data) {
                Some(s) => self.subscribe(s, out).await,
                None => out.message(wire::error(None, "Invalid subscribe data")),
            },
            "pusher:unsubscribe" => {
                if let Some(s) = wire::data_object::<wire::Subscribe>(&f.data) {
                    if self.channels.remove(&s.channel) {
                        self.node.unsubscribe(&self.handle, &s.channel).await;
                    }
                }
            }
            "pusher:signin" => match wire::data_object::<wire::Signin>(&f.data) {
                Some(s) => self.signin(s, out).await,
                None => out.message(wire::error(Some(code::UNAUTHORIZED), "Invalid signin data")),
            },
            name if name.starts_with("client-") => {
                let data = wire::data_string(&f.data);
                self.client_event(name, f.channel.as_deref(), &data, out)
                    .await;
            }
            other => {
                // Only this event is refused; the connection carries on.
                tracing::debug!(
                    id = self.handle.id(),
                    event = other,
                    "pusher: unknown event"
                );
                out.message(wire::error(
                    Some(code::BAD_MESSAGE),
                    &format!("Unknown event: {}", truncated(other, 64)),
                ));
            }
        }
        Ok(())
    }

    async fn subscribe(&mut self, s: wire::Subscribe, out: &mut Out) {
        let channel = s.channel;
        if let Some(user) = channel.strip_prefix(wire::USER_CHANNEL_PREFIX) {
            // Joined at sign-in; pusher-js then subscribes to it by name.
            if self.handle.signed_in_user() == Some(user) && self.channels.contains(&channel) {
                out.message(wire::subscription_succeeded(&channel));
            } else {
                out.message(wire::subscription_error(
                    &channel,
                    "Sign in as this user first",
                    403,
                ));
            }
            return;
        }
        if !wire::valid_channel_name(&channel) {
            out.message(wire::subscription_error(
                &channel,
                "Invalid channel name",
                400,
            ));
            return;
        }
        let kind = ChannelKind::of(&channel);
        let channel_data = s
            .channel_data
            .as_deref()
            .filter(|_| kind == ChannelKind::Presence);
        if kind.needs_auth() {
            let ok = s.auth.as_deref().is_some_and(|a| {
                auth::verify_channel_auth(
                    &self.app.key,
                    &self.app.secret,
                    a,
                    &self.socket_id(),
                    &channel,
                    channel_data,
                )
            });
            if !ok {
                out.message(wire::subscription_error(&channel, "Invalid signature", 401));
                return;
            }
        }
        let member = match channel_data.map(|d| wire::parse_member(d.as_bytes())) {
            Some(Some(m)) => Some(m),
            Some(None) => {
                out.message(wire::subscription_error(
                    &channel,
                    "Invalid channel_data: user_id is required",
                    400,
                ));
                return;
            }
            None if kind == ChannelKind::Presence => {
                out.message(wire::subscription_error(
                    &channel,
                    "channel_data is required",
                    400,
                ));
                return;
            }
            None => None,
        };
        let opts = SubscribeOptions {
            chan_info: channel_data.map(|d| bytes::Bytes::from(d.to_string())),
            ..Default::default()
        };
        let joined = match self.node.subscribe(&self.handle, &channel, opts).await {
            Ok(joined) => joined,
            Err(NodeError::Hub(e @ HubError::TooManySubscriptions { .. })) => {
                tracing::info!(id = self.handle.id(), %channel, "pusher subscribe refused: {e}");
                out.message(wire::subscription_error(
                    &channel,
                    "Too many subscriptions",
                    429,
                ));
                return;
            }
            Err(e) => {
                tracing::debug!(%channel, "pusher subscribe failed: {e}");
                out.message(wire::subscription_error(
                    &channel,
                    "Subscription failed",
                    500,
                ));
                return;
            }
        };
        let mut sub = Sub::plain(&channel, kind);
        if let Some(member) = member {
            let presence = self.node.presence(&channel).await.unwrap_or_default();
            let mut members: BTreeMap<String, Option<serde_json::Value>> = BTreeMap::new();
            let mut users: HashMap<String, HashSet<String>> = HashMap::new();
            for info in presence.values() {
                let Some(m) = info.chan_info.as_deref().and_then(wire::parse_member) else {
                    continue;
                };
                users
                    .entry(m.user_id.clone())
                    .or_default()
                    .insert(info.client.clone());
                members.entry(m.user_id).or_insert(m.user_info);
            }
            users
                .entry(member.user_id.clone())
                .or_default()
                .insert(self.handle.id().to_string());
            members
                .entry(member.user_id.clone())
                .or_insert(member.user_info.clone());
            sub.presence = Some(Box::new(Presence { member, users }));
            out.message(wire::presence_succeeded(&channel, &members));
        } else {
            out.message(wire::subscription_succeeded(&channel));
        }
        if wire::is_cache(&channel) {
            self.replay_cached(&channel, joined.position, out).await;
        }
        self.channels.insert(sub);
    }

    /// A cache channel's last event up to the join (`position`) goes to the new subscriber,
    /// after its `subscription_succeeded`. Nothing cached: `pusher:cache_miss`.
    async fn replay_cached(&mut self, channel: &str, position: StreamPosition, out: &mut Out) {
        let newest = HistoryQuery {
            since: None,
            limit: Some(1),
            reverse: true,
        };
        let last = match self.node.history(channel, newest).await {
            Ok(found) => found.publications.into_iter().next(),
            Err(e) => {
                tracing::debug!(%channel, "pusher cache read failed: {e}");
                None
            }
        };
        match last {
            Some(p) if p.epoch == position.epoch && p.offset <= position.offset => {
                out.prepared(wire::encode(&p));
            }
            // Published after the join (a later offset, or a new epoch): it is queued to this
            // subscriber already, and it is the last event; replaying it would deliver it
            // twice.
            Some(_) => {}
            None => {
                self.cache_missed(channel);
                out.message(wire::cache_miss(channel));
            }
        }
    }

    /// A subscriber of cache channel `channel` found nothing cached: the one place a cache
    /// miss is detected (the `cache_miss` webhook is reported from here).
    fn cache_missed(&self, channel: &str) {
        if let Some(hooks) = &self.webhooks {
            hooks.cache_miss(&self.app.id, channel, &self.socket_id());
        }
    }

    async fn signin(&mut self, s: wire::Signin, out: &mut Out) {
        let user = wire::parse_user(&s.user_data);
        let ok = user.is_some()
            && auth::verify_user_auth(
                &self.app.key,
                &self.app.secret,
                &s.auth,
                &self.socket_id(),
                &s.user_data,
            );
        let Some(user) = user.filter(|_| ok) else {
            tracing::info!(
                id = self.handle.id(),
                "pusher sign-in refused: bad signature or user data"
            );
            out.message(wire::error(Some(code::UNAUTHORIZED), "Invalid signin"));
            return;
        };
        // The hub knows the connection by its user from now on (API disconnects and
        // `terminate_connections` find it on whichever node it is); one user per connection.
        if !self.handle.sign_in(&user) && self.handle.signed_in_user() != Some(user.as_str()) {
            out.message(wire::error(
                Some(code::UNAUTHORIZED),
                "Already signed in as another user",
            ));
            return;
        }
        let channel = wire::user_channel(&user);
        if !self.channels.contains(&channel) {
            match self
                .node
                .subscribe(&self.handle, &channel, SubscribeOptions::default())
                .await
            {
                Ok(_) => self
                    .channels
                    .insert(Sub::plain(&channel, ChannelKind::Public)),
                Err(e) => tracing::warn!(%channel, "pusher user channel not joined: {e}"),
            }
        }
        out.message(wire::signin_success(&s.user_data));
    }

    async fn client_event(
        &mut self,
        event: &str,
        channel: Option<&str>,
        data: &str,
        out: &mut Out,
    ) {
        let Some(sub) = channel.and_then(|c| self.channels.get(c)) else {
            out.message(wire::error(
                Some(code::CLIENT_EVENT_REJECTED),
                "Client event rejected: not subscribed to the channel",
            ));
            return;
        };
        if !sub.kind.allows_client_events() {
            out.message(wire::error(
                Some(code::CLIENT_EVENT_REJECTED),
                "Client events are only allowed on private and presence channels",
            ));
            return;
        }
        if data.len() > wire::MAX_EVENT_DATA {
            out.message(wire::error(
                Some(code::CLIENT_EVENT_REJECTED),
                "Client event rejected: data too large",
            ));
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.bucket.0).as_secs() >= 1 {
            self.bucket = (now, 0);
        }
        if self.bucket.1 >= CLIENT_EVENTS_PER_SEC {
            out.message(wire::error(
                Some(code::CLIENT_EVENT_REJECTED),
                "Client event rejected: rate limit exceeded",
            ));
            return;
        }
        self.bucket.1 += 1;
        let user_id = sub.member().map(|m| m.user_id.clone());
        let channel = sub.channel.to_string();
        let payload = wire::envelope(event, data, user_id.as_deref());
        let opts = PublishOptions::except_sender(self.handle.id());
        if let Err(e) = self.node.publish(&channel, payload, opts, None).await {
            tracing::debug!(%channel, "pusher client event not published: {e}");
            return;
        }
        if let Some(hooks) = &self.webhooks {
            hooks.client_event(
                &self.app.id,
                &channel,
                event,
                data,
                &self.socket_id(),
                user_id.as_deref(),
            );
        }
    }

    fn member_event(&mut self, ev: &MemberEvent, join: bool, out: &mut Out) {
        let Some(presence) = self
            .channels
            .get_mut(&ev.channel)
            .and_then(|s| s.presence.as_deref_mut())
        else {
            return;
        };
        if ev.info.client == self.handle.id().to_string() {
            return;
        }
        let Some(m) = ev.info.chan_info.as_deref().and_then(wire::parse_member) else {
            return;
        };
        if join {
            let conns = presence.users.entry(m.user_id.clone()).or_default();
            let first = conns.is_empty();
            if conns.insert(ev.info.client.clone()) && first {
                out.message(wire::member_added(&ev.channel, &m));
            }
        } else if let Some(conns) = presence.users.get_mut(&m.user_id) {
            if conns.remove(&ev.info.client) && conns.is_empty() {
                presence.users.remove(&m.user_id);
                out.message(wire::member_removed(&ev.channel, &m.user_id));
            }
        }
    }

    /// What an event from [`Driver::poll_event`] comes to; never waits.
    fn handle_event(
        &mut self,
        event: Result<(), CloseReason>,
        out: &mut Out,
    ) -> Result<(), Ending> {
        match event {
            Ok(()) => self.deliveries(out),
            Err(reason) => Err(Ending::Hub(reason)),
        }
    }

    fn deliveries(&mut self, out: &mut Out) -> Result<(), Ending> {
        let batch = std::mem::take(&mut self.batch);
        let mut ending = Ok(());
        for delivery in &batch {
            match delivery {
                Delivery::Publication(p) => {
                    if self.channels.contains(&p.channel) {
                        out.published(p);
                        out.prepared(wire::encode(p));
                    }
                }
                Delivery::Join(ev) => self.member_event(ev, true, out),
                Delivery::Leave(ev) => self.member_event(ev, false, out),
                Delivery::Direct(_) => {}
                Delivery::Control(c) => match &**c {
                    Control::MissedPublications(_) => {
                        ending = Err(Ending::Close(
                            code::RECONNECT,
                            Cow::Borrowed("Missed publications"),
                        ));
                        break;
                    }
                    Control::Unsubscribe(channel) => {
                        self.channels.remove(channel);
                        self.node.hub().unsubscribe(&self.handle, channel);
                    }
                    // Pusher has no server-side subscriptions.
                    Control::Subscribe(_) => {}
                },
            }
        }
        self.batch = batch;
        self.batch.clear();
        if self.batch.capacity() > 8 {
            self.batch = Vec::new();
        }
        ending
    }
}

impl Driver for PusherDriver {
    type Event = Result<(), CloseReason>;

    fn open(&mut self, out: &mut Out) -> Result<(), Ending> {
        if let Some((code, message)) = self.refusal {
            // The error goes out first; the close follows at once, from the timer.
            out.message(wire::error(Some(code), message));
            return Ok(());
        }
        out.message(wire::connection_established(
            &self.socket_id(),
            self.activity_timeout,
        ));
        Ok(())
    }

    async fn on_message(&mut self, msg: Message, out: &mut Out) -> Result<(), Ending> {
        match msg {
            // Boxed: what a message waits on (the node, for subscribe, sign-in and client
            // events) would otherwise widen the future every idle connection keeps; clients
            // send few messages, so one allocation each is cheap (docs/benchmarks.md).
            Message::Text(frame) | Message::Binary(frame) => {
                Box::pin(self.message(&frame, out)).await
            }
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => Ok(()),
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Self::Event> {
        self.outbox
            .poll_recv_batch(cx, &mut self.batch, BATCH)
            .map(|r| r.map(|_| ()).map_err(|closed| closed.reason))
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

    fn ping(&mut self, out: &mut Out) {
        if self.refusal.is_none() {
            out.message(wire::ping());
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.refusal.map(|_| self.bucket.0)
    }

    fn on_timer(&mut self, _out: &mut Out) -> impl Future<Output = Result<(), Ending>> + Send {
        std::future::ready(match self.refusal {
            Some((code, message)) => Err(Ending::Close(code, Cow::Borrowed(message))),
            None => Ok(()),
        })
    }

    fn hub_verdict(&self) -> Option<CloseReason> {
        self.outbox.close_reason()
    }

    fn close_frame(&mut self, ending: &Ending) -> Option<(CloseCode, Cow<'static, str>)> {
        let (code, reason): (u16, Cow<'static, str>) = match ending {
            Ending::Shutdown => (code::RECONNECT, "Server closing".into()),
            Ending::Hub(CloseReason::Kicked) => {
                (code::UNAUTHORIZED, "Connection terminated".into())
            }
            Ending::Hub(CloseReason::Shutdown) => (code::RECONNECT, "Server closing".into()),
            Ending::Hub(_) => (code::RECONNECT, "Reconnect".into()),
            Ending::Dead => (code::PONG_TIMEOUT, "Pong reply not received".into()),
            // 4100–4199: the client reconnects after backing off.
            Ending::Flood => (4100, "Over capacity".into()),
            Ending::Panic(_) => (CloseCode::INTERNAL_ERROR.0, "Internal error".into()),
            Ending::Close(code, reason) => (*code, reason.clone()),
            Ending::PeerClosed(_)
            | Ending::Lost
            | Ending::ReadError
            | Ending::Stalled
            | Ending::WriteFailed => return None,
        };
        Some((CloseCode(code), reason))
    }

    // `finish` is the default: leaving the channels and the hub happens when the handle
    // drops.
}

/// At most `max` bytes of `s`, cut at a character boundary (for error messages that quote
/// the client).
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;
