//! Asynchronous server pushes: `{"push":{"channel":"chat","pub":{"data":{...},"offset":3}}}`.
//!
//! A push has no id; it names its channel (when it concerns one) and carries exactly one
//! body field: `pub`, `join`, `leave`, `unsubscribe`, `message`, `subscribe`, `connect`,
//! `disconnect` or `refresh`. Zero values are omitted, as by the reference encoder.

use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::{is_false, is_zero_u32, is_zero_u64, ClientInfo, ConnectResult, Data, Publication};

/// `join`: someone subscribed to the channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// Who.
    pub info: ClientInfo,
}

/// `leave`: someone unsubscribed from the channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    /// Who.
    pub info: ClientInfo,
}

/// `unsubscribe`: the server ended the client's subscription to the channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribePush {
    /// Code: 2500 and above make the SDK resubscribe (see
    /// [`unsubscribe_code`](super::unsubscribe_code)).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub code: u32,
    /// Human-readable reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// `message`: an asynchronous message to this client (no channel).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePush {
    /// The message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
}

/// `subscribe`: the server subscribed the client to the channel (server-side subscription
/// made after connect).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribePush {
    /// Whether the channel keeps recoverable positions.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recoverable: bool,
    /// Current epoch.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// Current offset.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    /// Whether publications are positioned.
    #[serde(default, skip_serializing_if = "is_false")]
    pub positioned: bool,
    /// Custom data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
}

/// `disconnect`: why the server is about to close the connection (over WebSocket the same
/// advice travels in the close frame).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisconnectPush {
    /// Disconnect code.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub code: u32,
    /// Human-readable reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Whether to reconnect (redundant with the code in protocol v2; kept for old clients).
    #[serde(default, skip_serializing_if = "is_false")]
    pub reconnect: bool,
}

/// `refresh`: the server refreshed the connection's expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshPush {
    /// Whether the connection still expires.
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until expiry.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// The one body of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushBody {
    /// `pub`: a publication in the channel.
    Pub(Publication),
    /// `join`.
    Join(Join),
    /// `leave`.
    Leave(Leave),
    /// `unsubscribe`.
    Unsubscribe(UnsubscribePush),
    /// `message`.
    Message(MessagePush),
    /// `subscribe`.
    Subscribe(SubscribePush),
    /// `connect` (unidirectional transports).
    Connect(ConnectResult),
    /// `disconnect`.
    Disconnect(DisconnectPush),
    /// `refresh`.
    Refresh(RefreshPush),
}

impl PushBody {
    /// The JSON field name of this body.
    pub fn name(&self) -> &'static str {
        match self {
            PushBody::Pub(_) => "pub",
            PushBody::Join(_) => "join",
            PushBody::Leave(_) => "leave",
            PushBody::Unsubscribe(_) => "unsubscribe",
            PushBody::Message(_) => "message",
            PushBody::Subscribe(_) => "subscribe",
            PushBody::Connect(_) => "connect",
            PushBody::Disconnect(_) => "disconnect",
            PushBody::Refresh(_) => "refresh",
        }
    }
}

/// An asynchronous push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The channel it concerns (`""` for `message`, `connect`, `disconnect`, `refresh`).
    pub channel: String,
    /// What happened.
    pub body: PushBody,
}

impl Push {
    /// A push about `channel`.
    pub fn new(channel: impl Into<String>, body: PushBody) -> Push {
        Push {
            channel: channel.into(),
            body,
        }
    }

    /// The JSON line of this push, wrapped as a reply: `{"push":{...}}`.
    #[allow(
        clippy::expect_used,
        reason = "string keys and raw JSON values only: serialising to text cannot fail"
    )]
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(&PushReply(self)).expect("pushes always serialise"))
    }
}

/// The push itself (the inner object, without the `{"push": ...}` wrapper).
impl Serialize for Push {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if !self.channel.is_empty() {
            map.serialize_entry("channel", &self.channel)?;
        }
        let name = self.body.name();
        match &self.body {
            PushBody::Pub(b) => map.serialize_entry(name, b)?,
            PushBody::Join(b) => map.serialize_entry(name, b)?,
            PushBody::Leave(b) => map.serialize_entry(name, b)?,
            PushBody::Unsubscribe(b) => map.serialize_entry(name, b)?,
            PushBody::Message(b) => map.serialize_entry(name, b)?,
            PushBody::Subscribe(b) => map.serialize_entry(name, b)?,
            PushBody::Connect(b) => map.serialize_entry(name, b)?,
            PushBody::Disconnect(b) => map.serialize_entry(name, b)?,
            PushBody::Refresh(b) => map.serialize_entry(name, b)?,
        }
        map.end()
    }
}

/// `{"push": <push>}`: how a push travels in a bidirectional connection.
struct PushReply<'a>(&'a Push);

impl Serialize for PushReply<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("push", self.0)?;
        map.end()
    }
}

/// A push as it is on the wire: every body optional.
#[derive(Deserialize)]
pub(super) struct WirePush {
    #[serde(default)]
    channel: String,
    #[serde(rename = "pub")]
    publication: Option<Publication>,
    join: Option<Join>,
    leave: Option<Leave>,
    unsubscribe: Option<UnsubscribePush>,
    message: Option<MessagePush>,
    subscribe: Option<SubscribePush>,
    connect: Option<ConnectResult>,
    disconnect: Option<DisconnectPush>,
    refresh: Option<RefreshPush>,
}

impl WirePush {
    /// The push, if it has exactly one body.
    pub(super) fn into_push(self) -> Option<Push> {
        let mut bodies = Vec::with_capacity(1);
        bodies.extend(self.publication.map(PushBody::Pub));
        bodies.extend(self.join.map(PushBody::Join));
        bodies.extend(self.leave.map(PushBody::Leave));
        bodies.extend(self.unsubscribe.map(PushBody::Unsubscribe));
        bodies.extend(self.message.map(PushBody::Message));
        bodies.extend(self.subscribe.map(PushBody::Subscribe));
        bodies.extend(self.connect.map(PushBody::Connect));
        bodies.extend(self.disconnect.map(PushBody::Disconnect));
        bodies.extend(self.refresh.map(PushBody::Refresh));
        if bodies.len() != 1 {
            return None;
        }
        let body = bodies.pop()?;
        Some(Push {
            channel: self.channel,
            body,
        })
    }
}
