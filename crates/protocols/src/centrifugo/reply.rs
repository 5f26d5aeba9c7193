//! Server-to-client replies: one per command (except `send` and the pong), carrying the
//! command's id and either its result or an error.
//!
//! `{"id":2,"subscribe":{"recoverable":true,"epoch":"7","offset":4}}`,
//! `{"id":3,"error":{"code":103,"message":"permission denied"}}`.
//!
//! Field omission follows the reference encoder (`centrifugal/protocol`, generated JSON
//! code): zero values are left out, except the fields it always writes — `presence`,
//! `num_clients`/`num_users`, and the history result's `publications`/`epoch`/`offset`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::{
    is_false, is_zero_u32, is_zero_u64, ClientInfo, Data, Error, Publication, StreamPosition,
};

/// Result of `connect` (also the body of the `connect` push of unidirectional transports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectResult {
    /// The connection's client id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    /// Server version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Whether the connection expires (then the SDK refreshes its token `ttl` seconds on).
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until expiry.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    /// Custom data for the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    /// Server-side subscriptions, by channel.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subs: BTreeMap<String, SubscribeResult>,
    /// Server ping interval in seconds; the SDK considers the connection dead when no ping
    /// arrives within this plus its own allowance.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ping: u32,
    /// Whether the client must answer pings with `{}`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pong: bool,
    /// Session id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// Node name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
}

/// Result of `subscribe` (and of each server-side subscription in [`ConnectResult::subs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// Whether the subscription expires.
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until expiry.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    /// Whether the channel keeps positions the client can recover from.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recoverable: bool,
    /// Current epoch of the channel's stream.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// Publications missed since the client's position (when recovering), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
    /// Whether every missed publication was recovered.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recovered: bool,
    /// Current offset of the channel's stream.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    /// Whether publications are positioned (the SDK tracks offsets).
    #[serde(default, skip_serializing_if = "is_false")]
    pub positioned: bool,
    /// Custom data for the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    /// Whether the client asked to recover (so `recovered: false` means "could not").
    #[serde(default, skip_serializing_if = "is_false")]
    pub was_recovering: bool,
}

/// Result of `unsubscribe`: `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeResult {}

/// Result of `publish`: `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResult {}

/// Result of `presence`: client id → who.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceResult {
    /// Subscribed clients by client id. Always written, `{}` when nobody is there.
    #[serde(default)]
    pub presence: BTreeMap<String, ClientInfo>,
}

/// Result of `presence_stats`. Both counts are always written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStatsResult {
    /// Subscribed connections.
    #[serde(default)]
    pub num_clients: u32,
    /// Distinct users among them.
    #[serde(default)]
    pub num_users: u32,
}

/// Result of `history`. All three fields are always written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryResult {
    /// The publications asked for (`[]` when none).
    #[serde(default)]
    pub publications: Vec<Publication>,
    /// Current epoch of the stream.
    #[serde(default)]
    pub epoch: String,
    /// Current offset of the stream.
    #[serde(default)]
    pub offset: u64,
}

impl HistoryResult {
    /// A result at stream position `top`.
    pub fn new(publications: Vec<Publication>, top: StreamPosition) -> HistoryResult {
        HistoryResult {
            publications,
            epoch: top.epoch,
            offset: top.offset,
        }
    }
}

/// Result of `ping`: `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResult {}

/// Result of `rpc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcResult {
    /// Data returned by the method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
}

/// Result of `refresh`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshResult {
    /// Client id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    /// Server version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Whether the connection still expires.
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until the new expiry.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// Result of `sub_refresh`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubRefreshResult {
    /// Whether the subscription still expires.
    #[serde(default, skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until the new expiry.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// The successful result of a command, named like the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyResult {
    /// `connect`.
    Connect(ConnectResult),
    /// `subscribe`.
    Subscribe(SubscribeResult),
    /// `unsubscribe`.
    Unsubscribe(UnsubscribeResult),
    /// `publish`.
    Publish(PublishResult),
    /// `presence`.
    Presence(PresenceResult),
    /// `presence_stats`.
    PresenceStats(PresenceStatsResult),
    /// `history`.
    History(HistoryResult),
    /// `ping`.
    Ping(PingResult),
    /// `rpc`.
    Rpc(RpcResult),
    /// `refresh`.
    Refresh(RefreshResult),
    /// `sub_refresh`.
    SubRefresh(SubRefreshResult),
}

impl ReplyResult {
    /// The JSON field name of this result.
    pub fn name(&self) -> &'static str {
        match self {
            ReplyResult::Connect(_) => "connect",
            ReplyResult::Subscribe(_) => "subscribe",
            ReplyResult::Unsubscribe(_) => "unsubscribe",
            ReplyResult::Publish(_) => "publish",
            ReplyResult::Presence(_) => "presence",
            ReplyResult::PresenceStats(_) => "presence_stats",
            ReplyResult::History(_) => "history",
            ReplyResult::Ping(_) => "ping",
            ReplyResult::Rpc(_) => "rpc",
            ReplyResult::Refresh(_) => "refresh",
            ReplyResult::SubRefresh(_) => "sub_refresh",
        }
    }

    fn serialize_entry<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        let name = self.name();
        match self {
            ReplyResult::Connect(r) => map.serialize_entry(name, r),
            ReplyResult::Subscribe(r) => map.serialize_entry(name, r),
            ReplyResult::Unsubscribe(r) => map.serialize_entry(name, r),
            ReplyResult::Publish(r) => map.serialize_entry(name, r),
            ReplyResult::Presence(r) => map.serialize_entry(name, r),
            ReplyResult::PresenceStats(r) => map.serialize_entry(name, r),
            ReplyResult::History(r) => map.serialize_entry(name, r),
            ReplyResult::Ping(r) => map.serialize_entry(name, r),
            ReplyResult::Rpc(r) => map.serialize_entry(name, r),
            ReplyResult::Refresh(r) => map.serialize_entry(name, r),
            ReplyResult::SubRefresh(r) => map.serialize_entry(name, r),
        }
    }
}

/// The reply to the command with id `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The command's id.
    pub id: u32,
    /// Its result, or why it failed.
    pub outcome: Result<ReplyResult, Error>,
}

impl Reply {
    /// A successful reply.
    pub fn ok(id: u32, result: ReplyResult) -> Reply {
        Reply {
            id,
            outcome: Ok(result),
        }
    }

    /// An error reply.
    pub fn error(id: u32, error: Error) -> Reply {
        Reply {
            id,
            outcome: Err(error),
        }
    }

    /// The JSON line of this reply.
    #[allow(
        clippy::expect_used,
        reason = "string keys and raw JSON values only: serialising to text cannot fail"
    )]
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("replies always serialise"))
    }
}

impl Serialize for Reply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if self.id != 0 {
            map.serialize_entry("id", &self.id)?;
        }
        match &self.outcome {
            Ok(result) => result.serialize_entry(&mut map)?,
            Err(error) => map.serialize_entry("error", error)?,
        }
        map.end()
    }
}

/// Any top-level server message as it is on the wire: every field optional.
#[derive(Deserialize)]
pub(super) struct WireReply {
    #[serde(default)]
    pub(super) id: u32,
    pub(super) error: Option<Error>,
    pub(super) push: Option<super::push::WirePush>,
    pub(super) connect: Option<ConnectResult>,
    pub(super) subscribe: Option<SubscribeResult>,
    pub(super) unsubscribe: Option<UnsubscribeResult>,
    pub(super) publish: Option<PublishResult>,
    pub(super) presence: Option<PresenceResult>,
    pub(super) presence_stats: Option<PresenceStatsResult>,
    pub(super) history: Option<HistoryResult>,
    pub(super) ping: Option<PingResult>,
    pub(super) rpc: Option<RpcResult>,
    pub(super) refresh: Option<RefreshResult>,
    pub(super) sub_refresh: Option<SubRefreshResult>,
}

impl WireReply {
    pub(super) fn into_results(self) -> Vec<ReplyResult> {
        let mut results = Vec::with_capacity(1);
        results.extend(self.connect.map(ReplyResult::Connect));
        results.extend(self.subscribe.map(ReplyResult::Subscribe));
        results.extend(self.unsubscribe.map(ReplyResult::Unsubscribe));
        results.extend(self.publish.map(ReplyResult::Publish));
        results.extend(self.presence.map(ReplyResult::Presence));
        results.extend(self.presence_stats.map(ReplyResult::PresenceStats));
        results.extend(self.history.map(ReplyResult::History));
        results.extend(self.ping.map(ReplyResult::Ping));
        results.extend(self.rpc.map(ReplyResult::Rpc));
        results.extend(self.refresh.map(ReplyResult::Refresh));
        results.extend(self.sub_refresh.map(ReplyResult::SubRefresh));
        results
    }
}
