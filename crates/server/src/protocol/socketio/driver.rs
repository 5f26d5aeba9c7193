//! The state machine of one Engine.IO session on the connection runtime: the Engine.IO
//! layer (open packet, pings, the upgrade hand-over) above the Socket.IO layer ([`Sockets`]:
//! one hub connection and outbox per namespace joined). The same driver serves a WebSocket
//! session and a long-polling one (see [`super::engine::PollingTransport`]); it never
//! touches the transport.
//!
//! Endings and what the peer sees (WebSocket): shutdown → 1001; an outbox closed as a slow
//! consumer → 1008 "slow consumer"; a broken packet → 1002 "protocol error"; publications
//! missed that the node could not deliver → 4500 "missed publications"; a panic → 1011;
//! the client's close packet or a missed pong → 1000; a transport that dropped → nothing.
//! The sockets are kept for connection state recovery when the ending is one a client
//! recovers from (transport dropped, missed pong, the client's close packet).
use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use switchboard_core::{CloseReason, Control, Delivery, OutboxClosed};
use switchboard_protocols::socketio::engine::Packet as EnginePacket;
use switchboard_websocket::{CloseCode, Message};
use tokio::time::Instant;

use super::engine::{Frame, Session};
use super::socket::{Sockets, Step};
use super::SocketIo;
use crate::conn::driver::{Driver, Ending, Out};
use crate::proxy::Forwarded;
use crate::state::Shared;

/// A session that joins no namespace within this time is closed (Socket.IO's default
/// `connectTimeout`): an open Engine.IO session costs memory and a connection slot.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);

/// Why a session ends, in Engine.IO's terms.
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
    /// The hub closed an outbox for another reason while a write waited.
    Hub(CloseReason),
    /// A panic while serving the session (a bug).
    InternalError,
    /// The client went on sending over its message or byte rate.
    Flood,
}

impl End {
    /// Whether the sockets are kept for recovery. A client's close packet counts: the
    /// client sends one when its transport is torn down (e.g. a network change), and a
    /// deliberate `socket.disconnect()` leaves the namespace with DISCONNECT first.
    pub(crate) fn recoverable(self) -> bool {
        matches!(
            self,
            End::TransportClose | End::PingTimeout | End::ClientClose
        )
    }

    /// The WebSocket close frame this ending owes the peer.
    fn close_frame(self) -> Option<(CloseCode, Cow<'static, str>)> {
        let (code, reason) = match self {
            End::TransportClose => return None,
            End::Shutdown => (CloseCode::GOING_AWAY, "server shutting down"),
            End::SlowConsumer => (CloseCode::POLICY, "slow consumer"),
            End::ProtocolError => (CloseCode::PROTOCOL_ERROR, "protocol error"),
            End::MissedPublications => (CloseCode(4500), "missed publications"),
            End::InternalError => (CloseCode::INTERNAL_ERROR, "internal server error"),
            End::Flood => (CloseCode::POLICY, "message rate exceeded"),
            End::Hub(reason) => (CloseCode(reason.close_code()), reason.close_text()),
            End::PingTimeout | End::ClientClose => (CloseCode::NORMAL, ""),
        };
        Some((code, Cow::Borrowed(reason)))
    }
}

/// One Engine.IO session's state machine.
///
/// Every idle session keeps this in its task (the runtime's connection future): a field
/// here is paid by every connection, so what is only needed at times is made when needed.
pub(crate) struct SocketIoDriver {
    sid: Box<str>,
    /// Whether the open packet is sent first (WebSocket sessions; a polling session's goes
    /// in the handshake's answer). Made when sent.
    send_open: bool,
    /// The polling record of a session that started with long-polling.
    session: Option<Arc<Session>>,
    sockets: Sockets,
    /// Deliveries taken from one outbox, framed by [`Driver::on_event`].
    batch: Vec<Delivery>,
    /// Until the first CONNECT: when the session is given up.
    connect_by: Option<Instant>,
    /// The earliest token expiry among the sockets (unix seconds) and when to act on it.
    expiry: Option<(u64, Instant)>,
    /// Why the driver ended the session, when it did.
    end: Option<End>,
}

impl SocketIoDriver {
    /// A driver for session `sid`; with `send_open` it sends the open packet first,
    /// `session` is the polling record of a session that started with polling.
    pub(crate) fn new(
        io: Arc<SocketIo>,
        shared: Arc<Shared>,
        peer: SocketAddr,
        sid: &str,
        send_open: bool,
        session: Option<Arc<Session>>,
    ) -> SocketIoDriver {
        let sockets = Sockets::new(shared, peer, io);
        SocketIoDriver {
            sid: sid.into(),
            send_open,
            session,
            sockets,
            batch: Vec::new(),
            connect_by: Some(Instant::now() + CONNECT_TIMEOUT),
            expiry: None,
            end: None,
        }
    }

    /// Lets the session call the backend's proxy, forwarding `forwarded` (the configured
    /// headers of the session's first request; `None`: no proxy kind is configured).
    pub(crate) fn with_proxy(mut self, forwarded: Option<Forwarded>) -> SocketIoDriver {
        if let Some(forwarded) = forwarded {
            self.sockets.set_proxy(forwarded);
        }
        self
    }

    /// Ends the session for `end`: remembered for the close frame and for recovery.
    fn ending(&mut self, end: End) -> Ending {
        self.end = Some(end);
        match end {
            End::SlowConsumer => Ending::Hub(CloseReason::SlowConsumer),
            End::Shutdown => Ending::Hub(CloseReason::Shutdown),
            End::MissedPublications => Ending::Hub(CloseReason::MissedPublications),
            End::Hub(reason) => Ending::Hub(reason),
            other => match other.close_frame() {
                Some((code, reason)) => Ending::Close(code.0, reason),
                None => Ending::Lost,
            },
        }
    }

    /// The client broke the protocol: the reason goes to the polling `POST` that carried
    /// the packet.
    fn protocol_error(&mut self, why: &'static str) -> Ending {
        tracing::debug!(peer = %self.sockets.peer(), sid = %self.sid, "socket.io: {why}");
        if let Some(session) = &self.session {
            session.refuse(why);
        }
        self.ending(End::ProtocolError)
    }

    fn step(&mut self, step: Step) -> Result<(), Ending> {
        let r = match step {
            Step::Continue => Ok(()),
            Step::ProtocolError(why) => Err(self.protocol_error(why)),
            Step::SlowConsumer => Err(self.ending(End::SlowConsumer)),
            Step::Shutdown => Err(self.ending(End::Shutdown)),
            Step::MissedPublications => Err(self.ending(End::MissedPublications)),
            Step::Restart => Err(self.ending(End::Hub(CloseReason::Restart))),
        };
        self.refresh_timers();
        r
    }

    /// Re-reads the connect deadline and the earliest token expiry after a step.
    fn refresh_timers(&mut self) {
        if self.connect_by.is_some() && self.sockets.ever_connected() {
            self.connect_by = None;
        }
        let at = self.sockets.next_expiry();
        if at != self.expiry.map(|(at, _)| at) {
            self.expiry = at.map(|at| {
                // One second of grace, as for Centrifugo tokens: acted on once the clock
                // is past `at`.
                let secs = at.saturating_add(1).saturating_sub(crate::auth::unix_now());
                let wait = Duration::from_secs(secs.min(365 * 24 * 3600));
                (at, Instant::now() + wait)
            });
        }
    }

    /// The `5` the polling transport reports once the probed WebSocket took over: the
    /// frames queued for polling before the switch go out first. False when this session
    /// has no upgrade to finish (a client's own `5` is a protocol error).
    fn take_handover(&mut self, out: &mut Out) -> bool {
        let Some(frames) = self.session.as_ref().and_then(|s| s.take_handover()) else {
            return false;
        };
        for f in frames {
            match f {
                Frame::Text(t) => out.message(Message::Text(t)),
                Frame::Binary(b) => out.message(Message::Binary(b)),
            }
        }
        tracing::debug!(peer = %self.sockets.peer(), sid = %self.sid, "socket.io upgraded to websocket");
        true
    }

    async fn handle_message(&mut self, msg: Message, out: &mut Out) -> Result<(), Ending> {
        let packet = match msg {
            Message::Text(t) => match EnginePacket::decode_text_bytes(&t) {
                Ok(p) => p,
                Err(_) => return Err(self.protocol_error("bad packet")),
            },
            Message::Binary(b) => EnginePacket::Binary(b),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return Ok(()),
        };
        let step = match packet {
            // Whatever the client sends counts as liveness (the runtime's heartbeat).
            EnginePacket::Pong(_) | EnginePacket::Noop => return Ok(()),
            // In the step's box (see `on_message`).
            EnginePacket::Text(t) => self.sockets.on_text(&t, out).await,
            EnginePacket::Binary(b) => self.sockets.on_binary(b, out).await,
            EnginePacket::Close => return Err(self.ending(End::ClientClose)),
            EnginePacket::Upgrade if self.take_handover(out) => return Ok(()),
            // Ping from a client, open, or an upgrade outside of a probe: not allowed.
            EnginePacket::Ping(_) | EnginePacket::Open(_) | EnginePacket::Upgrade => {
                return Err(self.protocol_error("unexpected Engine.IO packet type"))
            }
        };
        self.step(step)
    }

    async fn handle_event(
        &mut self,
        (i, r): (usize, Result<usize, OutboxClosed>),
        out: &mut Out,
    ) -> Result<(), Ending> {
        if i == super::socket::PROXY_ANSWERS {
            Box::pin(self.sockets.push_answers(out)).await;
            return Ok(());
        }
        let mut controls = Vec::new();
        let step = self
            .sockets
            .on_delivery(i, &mut self.batch, r, out, &mut controls);
        if !controls.is_empty() {
            Box::pin(self.sockets.apply_controls(controls)).await;
        }
        self.step(step)
    }

    /// What the session's ending means in Engine.IO's terms.
    fn end_of(&self, ending: &Ending) -> End {
        if let Some(end) = self.end {
            return end;
        }
        match ending {
            Ending::Shutdown | Ending::Hub(CloseReason::Shutdown) => End::Shutdown,
            Ending::Hub(CloseReason::SlowConsumer) => End::SlowConsumer,
            Ending::Hub(CloseReason::MissedPublications) => End::MissedPublications,
            Ending::Hub(reason) => End::Hub(*reason),
            Ending::Dead => End::PingTimeout,
            Ending::Panic(_) => End::InternalError,
            Ending::Close(..) => End::ProtocolError,
            Ending::Flood => End::Flood,
            Ending::PeerClosed(_)
            | Ending::Lost
            | Ending::ReadError
            | Ending::Stalled
            | Ending::WriteFailed => End::TransportClose,
        }
    }
}

impl Driver for SocketIoDriver {
    type Event = (usize, Result<usize, OutboxClosed>);

    fn open(&mut self, out: &mut Out) -> Result<(), Ending> {
        if std::mem::take(&mut self.send_open) {
            let open = super::engine::websocket_open(self.sockets.shared(), &self.sid);
            out.message(Message::Text(open));
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        msg: Message,
        out: &mut Out,
    ) -> impl Future<Output = Result<(), Ending>> + Send {
        // Boxed, the whole step: its future (the message, the decoded packet, the Socket.IO
        // layer's CONNECT or subscribe) would otherwise widen the task every idle session
        // keeps (docs/benchmarks.md); clients send few messages, so one allocation each is
        // cheap.
        Box::pin(self.handle_message(msg, out))
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Self::Event> {
        self.sockets.poll_delivery(cx, &mut self.batch)
    }

    fn on_event(
        &mut self,
        event: Self::Event,
        out: &mut Out,
    ) -> impl Future<Output = Result<(), Ending>> + Send {
        self.handle_event(event, out)
    }

    fn on_event_now(
        &mut self,
        event: Self::Event,
        out: &mut Out,
    ) -> Result<Result<(), Ending>, Self::Event> {
        // The backend's answers and server-side subscribes wait for the loop.
        let needs_loop = event.0 == super::socket::PROXY_ANSWERS
            || self.batch.iter().any(|d| {
                matches!(d, Delivery::Control(c)
                    if matches!(**c, Control::Subscribe(_) | Control::Unsubscribe(_)))
            });
        if needs_loop {
            return Err(event);
        }
        let (i, r) = event;
        let mut controls = Vec::new();
        let step = self
            .sockets
            .on_delivery(i, &mut self.batch, r, out, &mut controls);
        debug_assert!(
            controls.is_empty(),
            "the batch held no subscribe or unsubscribe"
        );
        Ok(self.step(step))
    }

    fn ping(&mut self, out: &mut Out) {
        out.message(Message::Text(Bytes::from_static(b"2")));
    }

    fn deadline(&self) -> Option<Instant> {
        match (self.connect_by, self.expiry) {
            (Some(a), Some((_, b))) => Some(a.min(b)),
            (a, b) => a.or(b.map(|(_, at)| at)),
        }
    }

    fn on_timer(&mut self, out: &mut Out) -> impl Future<Output = Result<(), Ending>> + Send {
        let r = match self.connect_by {
            Some(at) if at <= Instant::now() && !self.sockets.ever_connected() => {
                Err(self.protocol_error("no CONNECT in time"))
            }
            _ => {
                self.sockets.expire(out);
                self.expiry = None;
                self.refresh_timers();
                Ok(())
            }
        };
        std::future::ready(r)
    }

    fn hub_verdict(&self) -> Option<CloseReason> {
        self.sockets.hub_verdict()
    }

    fn close_frame(&mut self, ending: &Ending) -> Option<(CloseCode, Cow<'static, str>)> {
        let end = self.end_of(ending);
        tracing::debug!(peer = %self.sockets.peer(), sid = %self.sid, ?end, "socket.io session ends");
        end.close_frame()
    }

    fn finish(mut self, ending: &Ending) -> impl Future<Output = ()> + Send {
        let end = self.end_of(ending);
        self.sockets.close(end.recoverable());
        if let Some(session) = &self.session {
            self.sockets.endpoint().forget(session);
            session.close(end == End::Shutdown);
        }
        drop(self);
        std::future::ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use crate::conn::driver::OutFrame;
    use crate::conn::stats::ServerCounters;
    use switchboard_core::{Control, Hub, Node, Payload, PublishOptions};

    const CONFIG: &str = "allow_anonymous = true\n\
        [channel.default]\n\
        allow_subscribe_for_anonymous = true\n\
        allow_publish_for_client = true\n";

    fn shared() -> Arc<Shared> {
        let config: ServerConfig = toml::from_str(CONFIG).unwrap();
        let hub = Hub::with_namespaces(crate::server::hub_limits(&config), config.channel.clone());
        Arc::new(Shared {
            node: Node::new(hub.clone()),
            hub,
            origins: crate::transport::origin::OriginPolicy::new(&config.allowed_origins),
            deflate: switchboard_websocket::extensions::DeflatePolicy::disabled(),
            tls: None,
            counters: Arc::new(ServerCounters::default()),
            started: std::time::Instant::now(),
            verifier: config.token_config().verifier().unwrap(),
            router: Arc::default(),
            admission: Arc::default(),
            webhooks: None,
            broker_metrics: Arc::default(),
            proxy: Arc::new(crate::proxy::Proxy::new(&config.proxy)),
            config,
        })
    }

    #[test]
    fn flood_and_drain_close_the_websocket_with_their_codes() {
        let shared = shared();
        let mut d = driver(&shared);
        assert_eq!(
            d.close_frame(&Ending::Flood),
            Some((CloseCode::POLICY, Cow::Borrowed("message rate exceeded")))
        );
        let mut d = driver(&shared);
        assert_eq!(
            d.close_frame(&Ending::Hub(CloseReason::Restart)),
            Some((CloseCode(1012), Cow::Borrowed("service restart")))
        );
    }

    fn driver(shared: &Arc<Shared>) -> SocketIoDriver {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        SocketIoDriver::new(SocketIo::new(), Arc::clone(shared), peer, "s", true, None)
    }

    /// The frames queued, as text (binary frames as `<bin:len>`).
    fn frames(out: &mut Out) -> Vec<String> {
        out.drain()
            .map(|f| {
                let (text, b) = match &f {
                    OutFrame::Message(Message::Text(t)) => (true, t.clone()),
                    OutFrame::Message(Message::Binary(b)) => (false, b.clone()),
                    OutFrame::Prepared(p) => (p.is_text(), p.payload().clone()),
                    other => panic!("unexpected frame {other:?}"),
                };
                if text {
                    String::from_utf8_lossy(&b).into_owned()
                } else {
                    format!("<bin:{:?}>", &b[..])
                }
            })
            .collect()
    }

    /// Takes what is ready in the outboxes and frames it.
    async fn pump(d: &mut SocketIoDriver, out: &mut Out) -> Result<(), Ending> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while let Poll::Ready(event) = d.poll_event(&mut cx) {
            d.on_event(event, out).await?;
        }
        Ok(())
    }

    async fn send(d: &mut SocketIoDriver, text: &str, out: &mut Out) -> Result<(), Ending> {
        d.on_message(Message::text(text.to_string()), out).await
    }

    /// A driver connected to `/`, its output so far drained.
    async fn connected(shared: &Arc<Shared>) -> (SocketIoDriver, Out) {
        let mut d = driver(shared);
        let mut out = Out::default();
        d.open(&mut out).unwrap();
        send(&mut d, "40", &mut out).await.unwrap();
        out.drain();
        (d, out)
    }

    #[tokio::test]
    async fn open_packet_first_then_the_connect_reply() {
        let shared = shared();
        let mut d = driver(&shared);
        let mut out = Out::default();
        d.open(&mut out).unwrap();
        let open = frames(&mut out);
        assert_eq!(open.len(), 1, "{open:?}");
        assert!(open[0].starts_with("0{\"sid\":\"s\","), "{open:?}");
        assert!(d.deadline().is_some(), "the connect deadline is armed");
        send(&mut d, "40", &mut out).await.unwrap();
        let got = frames(&mut out);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("40{\"sid\":\""), "{got:?}");
        assert!(d.deadline().is_none(), "connected: no deadline left");
    }

    #[tokio::test]
    async fn subscribe_with_ack_then_publications_arrive_as_events() {
        let shared = shared();
        let (mut d, mut out) = connected(&shared).await;
        send(&mut d, "421[\"subscribe\",\"r\"]", &mut out)
            .await
            .unwrap();
        assert_eq!(frames(&mut out), ["431[{\"ok\":true}]"]);
        shared
            .hub
            .publish("r", Payload::text("{\"x\":1}"), PublishOptions::default());
        pump(&mut d, &mut out).await.unwrap();
        assert_eq!(frames(&mut out), ["42[\"message\",\"r\",{\"x\":1}]"]);
        // A refusal is acknowledged with the reason.
        send(&mut d, "422[\"subscribe\",\"\"]", &mut out)
            .await
            .unwrap();
        assert_eq!(frames(&mut out), ["432[{\"error\":\"unknown channel\"}]"]);
    }

    #[tokio::test]
    async fn the_ping_is_an_engine_io_ping_and_pongs_are_quiet() {
        let shared = shared();
        let (mut d, mut out) = connected(&shared).await;
        d.ping(&mut out);
        assert_eq!(frames(&mut out), ["2"]);
        send(&mut d, "3", &mut out).await.unwrap();
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn a_binary_event_is_broadcast_with_its_attachment() {
        let shared = shared();
        let (mut d, mut out) = connected(&shared).await;
        send(
            &mut d,
            "451-[\"hello\",{\"_placeholder\":true,\"num\":0}]",
            &mut out,
        )
        .await
        .unwrap();
        assert!(out.is_empty(), "waits for its attachment");
        d.on_message(Message::binary(vec![1u8, 2, 3]), &mut out)
            .await
            .unwrap();
        pump(&mut d, &mut out).await.unwrap();
        assert_eq!(
            frames(&mut out),
            [
                "451-[\"hello\",{\"_placeholder\":true,\"num\":0}]",
                "<bin:[1, 2, 3]>"
            ]
        );
        assert_eq!(shared.counters.snapshot().socketio_attachment_bytes, 0);
    }

    #[tokio::test]
    async fn a_draining_node_ends_the_session_with_1012_and_no_disconnect_packet() {
        let shared = shared();
        let (mut d, mut out) = connected(&shared).await;
        let id = d.sockets.conn_ids()[0];
        assert!(shared.hub.disconnect(id, CloseReason::Restart));
        let ending = pump(&mut d, &mut out).await.unwrap_err();
        // A DISCONNECT packet (`41`) would make socket.io-client give up instead of
        // reconnecting to another node.
        assert!(frames(&mut out).is_empty());
        assert_eq!(ending, Ending::Hub(CloseReason::Restart));
        let (code, reason) = d.close_frame(&ending).unwrap();
        assert_eq!((code.0, &*reason), (1012, "service restart"));
    }

    #[tokio::test]
    async fn missed_publications_end_the_session_with_4500_without_recovery() {
        let shared = shared();
        let (mut d, mut out) = connected(&shared).await;
        send(&mut d, "42[\"subscribe\",\"r\"]", &mut out)
            .await
            .unwrap();
        shared
            .hub
            .publish("r", Payload::text("1"), PublishOptions::default());
        let id = d.sockets.conn_ids()[0];
        assert!(shared
            .hub
            .send_control(id, Control::MissedPublications("r".into())));
        shared
            .hub
            .publish("r", Payload::text("2"), PublishOptions::default());
        let ending = pump(&mut d, &mut out).await.unwrap_err();
        assert_eq!(frames(&mut out), ["42[\"message\",\"r\",1]"]);
        assert_eq!(ending, Ending::Hub(CloseReason::MissedPublications));
        let (code, reason) = d.close_frame(&ending).unwrap();
        assert_eq!((code.0, &*reason), (4500, "missed publications"));
        assert!(!d.end_of(&ending).recoverable());
    }

    #[tokio::test]
    async fn server_side_subscribe_and_unsubscribe_join_and_leave() {
        let shared = shared();
        let (mut d, mut out) = connected(&shared).await;
        let id = d.sockets.conn_ids()[0];
        assert!(shared.hub.send_control(id, Control::Subscribe("s".into())));
        pump(&mut d, &mut out).await.unwrap();
        shared
            .hub
            .publish("s", Payload::text("1"), PublishOptions::default());
        pump(&mut d, &mut out).await.unwrap();
        assert_eq!(frames(&mut out), ["42[\"message\",\"s\",1]"]);
        assert!(shared
            .hub
            .send_control(id, Control::Unsubscribe("s".into())));
        pump(&mut d, &mut out).await.unwrap();
        shared
            .hub
            .publish("s", Payload::text("2"), PublishOptions::default());
        pump(&mut d, &mut out).await.unwrap();
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn endings_map_to_close_codes_and_recovery() {
        let shared = shared();
        let mut d = driver(&shared);
        let mut code = |e: Ending| d.close_frame(&e).map(|(c, r)| (c.0, r.into_owned()));
        assert_eq!(code(Ending::Shutdown).unwrap().0, 1001);
        assert_eq!(
            code(Ending::Hub(CloseReason::SlowConsumer)).unwrap(),
            (1008, "slow consumer".into())
        );
        assert_eq!(code(Ending::Panic("x".into())).unwrap().0, 1011);
        assert_eq!(code(Ending::Dead).unwrap().0, 1000);
        assert_eq!(code(Ending::Lost), None);
        assert_eq!(code(Ending::Stalled), None);
        let mut out = Out::default();
        let broken = send(&mut d, "49[\"x\"]", &mut out).await.unwrap_err();
        assert_eq!(
            d.close_frame(&broken).map(|(c, r)| (c.0, r.into_owned())),
            Some((1002, "protocol error".into()))
        );
        assert!(!d.end_of(&broken).recoverable());
        let mut d = driver(&shared);
        let closed = send(&mut d, "1", &mut out).await.unwrap_err();
        assert!(d.end_of(&closed).recoverable(), "the client's close packet");
        // A `5` outside of an upgrade is refused.
        let mut d = driver(&shared);
        assert!(send(&mut d, "5", &mut out).await.is_err());
    }

    #[tokio::test]
    async fn an_idle_session_stays_small() {
        // Every idle session keeps its driver in its task, and its sockets on the heap:
        // a field that widens them costs every connection (docs/benchmarks.md, idle memory).
        let socket = std::mem::size_of::<super::super::socket::NsSocket>();
        assert!(socket <= 112, "a socket grew to {socket} B");
        let shared = shared();
        let (mut d, mut out) = connected(&shared).await;
        send(&mut d, "421[\"subscribe\",\"r\"]", &mut out)
            .await
            .unwrap();
        let sizes = crate::conn::runtime::ws_connection_sizes(d).await;
        // A connection keeps its state in one box for its whole life (what a parked connection
        // keeps), and while it has work a task whose future holds the loop's state, in a cell
        // tokio rounds up to 128 B (docs/benchmarks.md, idle memory). A field or an await point
        // that widens either costs every connection.
        assert!(
            sizes.parked <= 928,
            "the Socket.IO parked state grew: {sizes:?}"
        );
        assert!(
            sizes.task <= 312,
            "the Socket.IO connection future grew: {sizes:?}"
        );
    }
}
