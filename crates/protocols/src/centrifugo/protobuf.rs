//! The Protobuf encoding of the Centrifugo client protocol: the same commands, replies and
//! pushes as the JSON encoding, as Protobuf messages.
//!
//! # Sources
//!
//! The schema `centrifugal/protocol` `client.proto` (message and field names and numbers),
//! restated for the fields we use in `proto/centrifugo_client.proto` beside this crate; the
//! framing from the Centrifugo docs ("Client protocol", Protobuf section) and the JS SDK's
//! Protobuf codec (`centrifuge/build/protobuf`): each WebSocket binary message holds one or
//! more *length-delimited* messages (a base-128 varint byte count, then the message),
//! `Command`s from the client and `Reply`s from the server. The server's ping is an empty
//! `Reply` (the single byte `0x00`), the client's pong an empty `Command`.
//!
//! # Data
//!
//! Every `bytes` field carries the bytes themselves: a publication's payload goes out as its
//! own bytes whatever its kind (text published by a raw, JSON, Socket.IO or Pusher client
//! arrives as its UTF-8 bytes), and the `data` of a Protobuf client's `publish` becomes a
//! *binary* payload, so raw-room clients receive a binary message and Protobuf subscribers
//! the same bytes. (JSON subscribers get binary data as a base64 string, see the module
//! docs of [`super`].)
//!
//! # Decoding
//!
//! [`commands`] decodes a frame lazily, in order, with the same rules as the JSON decoder
//! (a command with two requests, a non-`send` command without id, a request without its
//! channel, …, are [`DecodeError`]s) plus the framing's own: a truncated or overlong varint,
//! a length past the end of the frame, or bytes that are not a `Command`. Unknown fields
//! are skipped, as every Protobuf decoder does (newer SDKs send fields we do not use).

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use switchboard_core::{Publication as CorePublication, WireFormat};

use super::command::validate;
use super::{
    ClientInfo, Command, ConnectRequest, ConnectResult, Data, DecodeError, Error, HistoryRequest,
    Method, PingRequest, PresenceRequest, PresenceStatsRequest, Publication, PublishRequest, Push,
    PushBody, RefreshRequest, Reply, ReplyResult, RpcRequest, SendRequest, StreamPosition,
    SubRefreshRequest, SubscribeRequest, SubscribeResult, UnsubscribeRequest,
};

/// The protocol name recorded in the hub for connections speaking this encoding.
pub const PROTOCOL: &str = "centrifugo-protobuf";

/// The WebSocket subprotocol Centrifugo SDKs offer for this encoding.
pub const SUBPROTOCOL: &str = "centrifuge-protobuf";

/// The server's ping: an empty `Reply`, length-delimited.
pub const PING: &[u8] = &[0];

/// The Protobuf messages, field for field as in `proto/centrifugo_client.proto`.
pub(crate) mod wire {
    #![allow(missing_docs)]
    use std::collections::BTreeMap;

    use bytes::Bytes;

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Error {
        #[prost(uint32, tag = "1")]
        pub code: u32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(bool, tag = "3")]
        pub temporary: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Command {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(message, optional, tag = "4")]
        pub connect: Option<ConnectRequest>,
        #[prost(message, optional, tag = "5")]
        pub subscribe: Option<SubscribeRequest>,
        #[prost(message, optional, tag = "6")]
        pub unsubscribe: Option<ChannelRequest>,
        #[prost(message, optional, tag = "7")]
        pub publish: Option<PublishRequest>,
        #[prost(message, optional, tag = "8")]
        pub presence: Option<ChannelRequest>,
        #[prost(message, optional, tag = "9")]
        pub presence_stats: Option<ChannelRequest>,
        #[prost(message, optional, tag = "10")]
        pub history: Option<HistoryRequest>,
        #[prost(message, optional, tag = "11")]
        pub ping: Option<Empty>,
        #[prost(message, optional, tag = "12")]
        pub send: Option<DataOnly>,
        #[prost(message, optional, tag = "13")]
        pub rpc: Option<RpcRequest>,
        #[prost(message, optional, tag = "14")]
        pub refresh: Option<RefreshRequest>,
        #[prost(message, optional, tag = "15")]
        pub sub_refresh: Option<SubRefreshRequest>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Reply {
        #[prost(uint32, tag = "1")]
        pub id: u32,
        #[prost(message, optional, tag = "2")]
        pub error: Option<Error>,
        #[prost(message, optional, tag = "4")]
        pub push: Option<Push>,
        #[prost(message, optional, tag = "5")]
        pub connect: Option<ConnectResult>,
        #[prost(message, optional, tag = "6")]
        pub subscribe: Option<SubscribeResult>,
        #[prost(message, optional, tag = "7")]
        pub unsubscribe: Option<Empty>,
        #[prost(message, optional, tag = "8")]
        pub publish: Option<Empty>,
        #[prost(message, optional, tag = "9")]
        pub presence: Option<PresenceResult>,
        #[prost(message, optional, tag = "10")]
        pub presence_stats: Option<PresenceStatsResult>,
        #[prost(message, optional, tag = "11")]
        pub history: Option<HistoryResult>,
        #[prost(message, optional, tag = "12")]
        pub ping: Option<Empty>,
        #[prost(message, optional, tag = "13")]
        pub rpc: Option<DataOnly>,
        #[prost(message, optional, tag = "14")]
        pub refresh: Option<RefreshResult>,
        #[prost(message, optional, tag = "15")]
        pub sub_refresh: Option<ExpiryOnly>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Push {
        #[prost(string, tag = "2")]
        pub channel: String,
        #[prost(message, optional, tag = "4")]
        pub publication: Option<Publication>,
        #[prost(message, optional, tag = "5")]
        pub join: Option<InfoOnly>,
        #[prost(message, optional, tag = "6")]
        pub leave: Option<InfoOnly>,
        #[prost(message, optional, tag = "7")]
        pub unsubscribe: Option<Unsubscribe>,
        #[prost(message, optional, tag = "8")]
        pub message: Option<DataOnly>,
        #[prost(message, optional, tag = "9")]
        pub subscribe: Option<Subscribe>,
        #[prost(message, optional, tag = "10")]
        pub connect: Option<Connect>,
        #[prost(message, optional, tag = "11")]
        pub disconnect: Option<Disconnect>,
        #[prost(message, optional, tag = "12")]
        pub refresh: Option<ExpiryOnly>,
    }

    /// `PingRequest`, `PingResult`, `UnsubscribeResult`, `PublishResult`: no fields.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Empty {}

    /// `UnsubscribeRequest`, `PresenceRequest`, `PresenceStatsRequest`: `channel = 1`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct ChannelRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
    }

    /// `SendRequest`, `RPCResult`, `Message`: `data = 1`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct DataOnly {
        #[prost(bytes = "bytes", tag = "1")]
        pub data: Bytes,
    }

    /// `Join`, `Leave`: `info = 1`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct InfoOnly {
        #[prost(message, optional, tag = "1")]
        pub info: Option<ClientInfo>,
    }

    /// `SubRefreshResult`, `Refresh`: `expires = 1`, `ttl = 2`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct ExpiryOnly {
        #[prost(bool, tag = "1")]
        pub expires: bool,
        #[prost(uint32, tag = "2")]
        pub ttl: u32,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct ClientInfo {
        #[prost(string, tag = "1")]
        pub user: String,
        #[prost(string, tag = "2")]
        pub client: String,
        #[prost(bytes = "bytes", tag = "3")]
        pub conn_info: Bytes,
        #[prost(bytes = "bytes", tag = "4")]
        pub chan_info: Bytes,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Publication {
        #[prost(bytes = "bytes", tag = "4")]
        pub data: Bytes,
        #[prost(message, optional, tag = "5")]
        pub info: Option<ClientInfo>,
        #[prost(uint64, tag = "6")]
        pub offset: u64,
        #[prost(btree_map = "string, string", tag = "7")]
        pub tags: BTreeMap<String, String>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Unsubscribe {
        #[prost(uint32, tag = "2")]
        pub code: u32,
        #[prost(string, tag = "3")]
        pub reason: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Subscribe {
        #[prost(bool, tag = "1")]
        pub recoverable: bool,
        #[prost(string, tag = "4")]
        pub epoch: String,
        #[prost(uint64, tag = "5")]
        pub offset: u64,
        #[prost(bool, tag = "6")]
        pub positioned: bool,
        #[prost(bytes = "bytes", tag = "7")]
        pub data: Bytes,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Disconnect {
        #[prost(uint32, tag = "1")]
        pub code: u32,
        #[prost(string, tag = "2")]
        pub reason: String,
        #[prost(bool, tag = "3")]
        pub reconnect: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct ConnectRequest {
        #[prost(string, tag = "1")]
        pub token: String,
        #[prost(bytes = "bytes", tag = "2")]
        pub data: Bytes,
        #[prost(btree_map = "string, message", tag = "3")]
        pub subs: BTreeMap<String, SubscribeRequest>,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "5")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct ConnectResult {
        #[prost(string, tag = "1")]
        pub client: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(bool, tag = "3")]
        pub expires: bool,
        #[prost(uint32, tag = "4")]
        pub ttl: u32,
        #[prost(bytes = "bytes", tag = "5")]
        pub data: Bytes,
        #[prost(btree_map = "string, message", tag = "6")]
        pub subs: BTreeMap<String, SubscribeResult>,
        #[prost(uint32, tag = "7")]
        pub ping: u32,
        #[prost(bool, tag = "8")]
        pub pong: bool,
        #[prost(string, tag = "9")]
        pub session: String,
        #[prost(string, tag = "10")]
        pub node: String,
    }

    /// The `connect` push: the fields of `ConnectResult`, numbered differently.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Connect {
        #[prost(string, tag = "1")]
        pub client: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(bytes = "bytes", tag = "3")]
        pub data: Bytes,
        #[prost(btree_map = "string, message", tag = "4")]
        pub subs: BTreeMap<String, SubscribeResult>,
        #[prost(bool, tag = "5")]
        pub expires: bool,
        #[prost(uint32, tag = "6")]
        pub ttl: u32,
        #[prost(uint32, tag = "7")]
        pub ping: u32,
        #[prost(bool, tag = "8")]
        pub pong: bool,
        #[prost(string, tag = "9")]
        pub session: String,
        #[prost(string, tag = "10")]
        pub node: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RefreshRequest {
        #[prost(string, tag = "1")]
        pub token: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RefreshResult {
        #[prost(string, tag = "1")]
        pub client: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(bool, tag = "3")]
        pub expires: bool,
        #[prost(uint32, tag = "4")]
        pub ttl: u32,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SubscribeRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(string, tag = "2")]
        pub token: String,
        #[prost(bool, tag = "3")]
        pub recover: bool,
        #[prost(string, tag = "6")]
        pub epoch: String,
        #[prost(uint64, tag = "7")]
        pub offset: u64,
        #[prost(bytes = "bytes", tag = "8")]
        pub data: Bytes,
        #[prost(bool, tag = "9")]
        pub positioned: bool,
        #[prost(bool, tag = "10")]
        pub recoverable: bool,
        #[prost(bool, tag = "11")]
        pub join_leave: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SubscribeResult {
        #[prost(bool, tag = "1")]
        pub expires: bool,
        #[prost(uint32, tag = "2")]
        pub ttl: u32,
        #[prost(bool, tag = "3")]
        pub recoverable: bool,
        #[prost(string, tag = "6")]
        pub epoch: String,
        #[prost(message, repeated, tag = "7")]
        pub publications: Vec<Publication>,
        #[prost(bool, tag = "8")]
        pub recovered: bool,
        #[prost(uint64, tag = "9")]
        pub offset: u64,
        #[prost(bool, tag = "10")]
        pub positioned: bool,
        #[prost(bytes = "bytes", tag = "11")]
        pub data: Bytes,
        #[prost(bool, tag = "12")]
        pub was_recovering: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SubRefreshRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(string, tag = "2")]
        pub token: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PublishRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(bytes = "bytes", tag = "2")]
        pub data: Bytes,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PresenceResult {
        #[prost(btree_map = "string, message", tag = "1")]
        pub presence: BTreeMap<String, ClientInfo>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PresenceStatsResult {
        #[prost(uint32, tag = "1")]
        pub num_clients: u32,
        #[prost(uint32, tag = "2")]
        pub num_users: u32,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct StreamPosition {
        #[prost(uint64, tag = "1")]
        pub offset: u64,
        #[prost(string, tag = "2")]
        pub epoch: String,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct HistoryRequest {
        #[prost(string, tag = "1")]
        pub channel: String,
        #[prost(int32, tag = "7")]
        pub limit: i32,
        #[prost(message, optional, tag = "8")]
        pub since: Option<StreamPosition>,
        #[prost(bool, tag = "9")]
        pub reverse: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct HistoryResult {
        #[prost(message, repeated, tag = "1")]
        pub publications: Vec<Publication>,
        #[prost(string, tag = "2")]
        pub epoch: String,
        #[prost(uint64, tag = "3")]
        pub offset: u64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct RpcRequest {
        #[prost(bytes = "bytes", tag = "1")]
        pub data: Bytes,
        #[prost(string, tag = "2")]
        pub method: String,
    }
}

// ---------------------------------------------------------------------------------------
// Model → wire (what the server sends).

fn data_bytes(data: &Option<Data>) -> Bytes {
    data.as_ref().map(Data::wire_bytes).unwrap_or_default()
}

fn client_info_to_wire(info: &ClientInfo) -> wire::ClientInfo {
    wire::ClientInfo {
        user: info.user.clone(),
        client: info.client.clone(),
        conn_info: data_bytes(&info.conn_info),
        chan_info: data_bytes(&info.chan_info),
    }
}

fn publication_to_wire(p: &Publication) -> wire::Publication {
    wire::Publication {
        data: data_bytes(&p.data),
        info: p.info.as_ref().map(client_info_to_wire),
        offset: p.offset,
        tags: p.tags.clone(),
    }
}

/// A core publication straight to the wire: its payload's bytes, no JSON detour.
fn core_publication_to_wire(p: &CorePublication) -> wire::Publication {
    wire::Publication {
        data: p.payload.data.clone(),
        info: p
            .info
            .as_deref()
            .map(|info| client_info_to_wire(&ClientInfo::from_core(info))),
        offset: p.offset,
        tags: BTreeMap::new(),
    }
}

fn subscribe_result_to_wire(r: &SubscribeResult) -> wire::SubscribeResult {
    wire::SubscribeResult {
        expires: r.expires,
        ttl: r.ttl,
        recoverable: r.recoverable,
        epoch: r.epoch.clone(),
        publications: r.publications.iter().map(publication_to_wire).collect(),
        recovered: r.recovered,
        offset: r.offset,
        positioned: r.positioned,
        data: data_bytes(&r.data),
        was_recovering: r.was_recovering,
    }
}

fn connect_result_to_wire(r: &ConnectResult) -> wire::ConnectResult {
    wire::ConnectResult {
        client: r.client.clone(),
        version: r.version.clone(),
        expires: r.expires,
        ttl: r.ttl,
        data: data_bytes(&r.data),
        subs: r
            .subs
            .iter()
            .map(|(k, v)| (k.clone(), subscribe_result_to_wire(v)))
            .collect(),
        ping: r.ping,
        pong: r.pong,
        session: r.session.clone(),
        node: r.node.clone(),
    }
}

fn error_to_wire(e: &Error) -> wire::Error {
    wire::Error {
        code: e.code,
        message: e.message.to_string(),
        temporary: e.temporary,
    }
}

fn push_to_wire(push: &Push) -> wire::Push {
    let mut w = wire::Push {
        channel: push.channel.clone(),
        ..Default::default()
    };
    match &push.body {
        PushBody::Pub(p) => w.publication = Some(publication_to_wire(p)),
        PushBody::Join(j) => {
            w.join = Some(wire::InfoOnly {
                info: Some(client_info_to_wire(&j.info)),
            })
        }
        PushBody::Leave(l) => {
            w.leave = Some(wire::InfoOnly {
                info: Some(client_info_to_wire(&l.info)),
            })
        }
        PushBody::Unsubscribe(u) => {
            w.unsubscribe = Some(wire::Unsubscribe {
                code: u.code,
                reason: u.reason.clone(),
            })
        }
        PushBody::Message(m) => {
            w.message = Some(wire::DataOnly {
                data: data_bytes(&m.data),
            })
        }
        PushBody::Subscribe(s) => {
            w.subscribe = Some(wire::Subscribe {
                recoverable: s.recoverable,
                epoch: s.epoch.clone(),
                offset: s.offset,
                positioned: s.positioned,
                data: data_bytes(&s.data),
            })
        }
        PushBody::Connect(c) => {
            let r = connect_result_to_wire(c);
            w.connect = Some(wire::Connect {
                client: r.client,
                version: r.version,
                data: r.data,
                subs: r.subs,
                expires: r.expires,
                ttl: r.ttl,
                ping: r.ping,
                pong: r.pong,
                session: r.session,
                node: r.node,
            })
        }
        PushBody::Disconnect(d) => {
            w.disconnect = Some(wire::Disconnect {
                code: d.code,
                reason: d.reason.clone(),
                reconnect: d.reconnect,
            })
        }
        PushBody::Refresh(r) => {
            w.refresh = Some(wire::ExpiryOnly {
                expires: r.expires,
                ttl: r.ttl,
            })
        }
    }
    w
}

fn reply_to_wire(reply: &Reply) -> wire::Reply {
    let mut w = wire::Reply {
        id: reply.id,
        ..Default::default()
    };
    let result = match &reply.outcome {
        Err(e) => {
            w.error = Some(error_to_wire(e));
            return w;
        }
        Ok(result) => result,
    };
    match result {
        ReplyResult::Connect(r) => w.connect = Some(connect_result_to_wire(r)),
        ReplyResult::Subscribe(r) => w.subscribe = Some(subscribe_result_to_wire(r)),
        ReplyResult::Unsubscribe(_) => w.unsubscribe = Some(wire::Empty {}),
        ReplyResult::Publish(_) => w.publish = Some(wire::Empty {}),
        ReplyResult::Presence(r) => {
            w.presence = Some(wire::PresenceResult {
                presence: r
                    .presence
                    .iter()
                    .map(|(k, v)| (k.clone(), client_info_to_wire(v)))
                    .collect(),
            })
        }
        ReplyResult::PresenceStats(r) => {
            w.presence_stats = Some(wire::PresenceStatsResult {
                num_clients: r.num_clients,
                num_users: r.num_users,
            })
        }
        ReplyResult::History(r) => {
            w.history = Some(wire::HistoryResult {
                publications: r.publications.iter().map(publication_to_wire).collect(),
                epoch: r.epoch.clone(),
                offset: r.offset,
            })
        }
        ReplyResult::Ping(_) => w.ping = Some(wire::Empty {}),
        ReplyResult::Rpc(r) => {
            w.rpc = Some(wire::DataOnly {
                data: data_bytes(&r.data),
            })
        }
        ReplyResult::Refresh(r) => {
            w.refresh = Some(wire::RefreshResult {
                client: r.client.clone(),
                version: r.version.clone(),
                expires: r.expires,
                ttl: r.ttl,
            })
        }
        ReplyResult::SubRefresh(r) => {
            w.sub_refresh = Some(wire::ExpiryOnly {
                expires: r.expires,
                ttl: r.ttl,
            })
        }
    }
    w
}

/// `message` length-delimited: the varint length, then the message.
fn delimited(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(len + prost::length_delimiter_len(len));
    // Writing into a `BytesMut` grows it as needed: encoding cannot run out of room.
    let _ = message.encode_length_delimited(&mut out);
    out.freeze()
}

/// A reply, length-delimited (ready to be put in a frame with others).
pub fn encode_reply(reply: &Reply) -> Bytes {
    delimited(&reply_to_wire(reply))
}

/// A push, wrapped in a `Reply` without id and length-delimited.
pub fn encode_push(push: &Push) -> Bytes {
    delimited(&wire::Reply {
        push: Some(push_to_wire(push)),
        ..Default::default()
    })
}

/// The `pub` push for `publication`, encoded once per publication and shared by all
/// Protobuf subscribers (cached under [`WireFormat::CENTRIFUGO_PROTOBUF`]). The payload's
/// bytes go out as they are, whatever its kind.
pub fn encode_publication_push(publication: &CorePublication) -> Bytes {
    publication
        .encoded(WireFormat::CENTRIFUGO_PROTOBUF, |p| {
            delimited(&wire::Reply {
                push: Some(wire::Push {
                    channel: p.channel.to_string(),
                    publication: Some(core_publication_to_wire(p)),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .clone()
}

/// Several length-delimited messages in one frame: they are simply put one after another.
pub fn encode_batch<I>(messages: I) -> Bytes
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let mut out = BytesMut::new();
    for message in messages {
        out.put_slice(message.as_ref());
    }
    out.freeze()
}

// ---------------------------------------------------------------------------------------
// Wire → model (what the server reads).

fn opt_data(bytes: Bytes) -> Option<Data> {
    (!bytes.is_empty()).then(|| Data::from_bytes(bytes))
}

fn subscribe_request_from_wire(r: wire::SubscribeRequest) -> SubscribeRequest {
    SubscribeRequest {
        channel: r.channel,
        token: r.token,
        recover: r.recover,
        epoch: r.epoch,
        offset: r.offset,
        data: opt_data(r.data),
        positioned: r.positioned,
        recoverable: r.recoverable,
        join_leave: r.join_leave,
    }
}

fn methods_from_wire(c: wire::Command) -> Vec<Method> {
    let mut methods = Vec::with_capacity(1);
    methods.extend(c.connect.map(|r| {
        Method::Connect(ConnectRequest {
            token: r.token,
            data: opt_data(r.data),
            subs: r
                .subs
                .into_iter()
                .map(|(k, v)| (k, subscribe_request_from_wire(v)))
                .collect(),
            name: r.name,
            version: r.version,
        })
    }));
    methods.extend(
        c.subscribe
            .map(|r| Method::Subscribe(subscribe_request_from_wire(r))),
    );
    methods.extend(
        c.unsubscribe
            .map(|r| Method::Unsubscribe(UnsubscribeRequest { channel: r.channel })),
    );
    methods.extend(c.publish.map(|r| {
        Method::Publish(PublishRequest {
            channel: r.channel,
            data: opt_data(r.data),
        })
    }));
    methods.extend(
        c.presence
            .map(|r| Method::Presence(PresenceRequest { channel: r.channel })),
    );
    methods.extend(
        c.presence_stats
            .map(|r| Method::PresenceStats(PresenceStatsRequest { channel: r.channel })),
    );
    methods.extend(c.history.map(|r| {
        Method::History(HistoryRequest {
            channel: r.channel,
            limit: r.limit,
            since: r.since.map(|s| StreamPosition {
                offset: s.offset,
                epoch: s.epoch,
            }),
            reverse: r.reverse,
        })
    }));
    methods.extend(c.ping.map(|_| Method::Ping(PingRequest {})));
    methods.extend(c.send.map(|r| {
        Method::Send(SendRequest {
            data: opt_data(r.data),
        })
    }));
    methods.extend(c.rpc.map(|r| {
        Method::Rpc(RpcRequest {
            data: opt_data(r.data),
            method: r.method,
        })
    }));
    methods.extend(
        c.refresh
            .map(|r| Method::Refresh(RefreshRequest { token: r.token })),
    );
    methods.extend(c.sub_refresh.map(|r| {
        Method::SubRefresh(SubRefreshRequest {
            channel: r.channel,
            token: r.token,
        })
    }));
    methods
}

/// Reads a varint length prefix at the start of `buf`: `(length, prefix size)`.
fn read_length(buf: &[u8], index: usize) -> Result<(usize, usize), DecodeError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let len = usize::try_from(value).map_err(|_| DecodeError::Protobuf {
                index,
                message: "length prefix too large".into(),
            })?;
            return Ok((len, i + 1));
        }
    }
    Err(DecodeError::Protobuf {
        index,
        message: if buf.len() < 10 {
            "truncated length prefix".into()
        } else {
            "length prefix longer than 10 bytes".into()
        },
    })
}

/// Iterator over the commands of one Protobuf frame; see [`commands`].
#[derive(Debug, Clone)]
pub struct Commands {
    frame: Bytes,
    index: usize,
    done: bool,
}

impl Commands {
    fn next_command(&mut self) -> Result<Command, DecodeError> {
        let index = self.index;
        let (len, prefix) = read_length(&self.frame, index)?;
        if len > self.frame.len() - prefix {
            return Err(DecodeError::Protobuf {
                index,
                message: format!(
                    "length {len} runs past the end of the frame ({} bytes left)",
                    self.frame.len() - prefix
                ),
            });
        }
        self.frame.advance(prefix);
        // A slice of the frame: `bytes` fields are decoded without copying.
        let body = self.frame.split_to(len);
        let wire = wire::Command::decode(body).map_err(|e| DecodeError::Protobuf {
            index,
            message: e.to_string(),
        })?;
        validate(wire.id, methods_from_wire(wire), index)
    }
}

impl Iterator for Commands {
    type Item = Result<Command, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.frame.is_empty() {
            self.done = true;
            return (self.index == 0).then_some(Err(DecodeError::Empty));
        }
        self.index += 1;
        let result = self.next_command();
        // As in the JSON decoder: nothing after a bad command is looked at.
        self.done = result.is_err();
        Some(result)
    }
}

impl std::iter::FusedIterator for Commands {}

/// The commands of one binary WebSocket message, lazily, in order: the same contract as
/// the JSON [`super::commands`] (the first bad command yields an `Err` and ends the
/// iteration; an empty frame yields a single [`DecodeError::Empty`]). The errors' `line`
/// is the 1-based index of the command in the frame.
pub fn commands(frame: Bytes) -> Commands {
    Commands {
        frame,
        index: 0,
        done: false,
    }
}

/// All the commands of one frame (see [`commands`]).
pub fn decode_commands(frame: Bytes) -> Vec<Result<Command, DecodeError>> {
    commands(frame).collect()
}

// ---------------------------------------------------------------------------------------
// The client's side, for tests and tools.

fn subscribe_request_to_wire(r: &SubscribeRequest) -> wire::SubscribeRequest {
    wire::SubscribeRequest {
        channel: r.channel.clone(),
        token: r.token.clone(),
        recover: r.recover,
        epoch: r.epoch.clone(),
        offset: r.offset,
        data: data_bytes(&r.data),
        positioned: r.positioned,
        recoverable: r.recoverable,
        join_leave: r.join_leave,
    }
}

fn command_to_wire(c: &Command) -> wire::Command {
    let mut w = wire::Command {
        id: c.id,
        ..Default::default()
    };
    let channel = |channel: &String| wire::ChannelRequest {
        channel: channel.clone(),
    };
    match &c.method {
        Method::Connect(r) => {
            w.connect = Some(wire::ConnectRequest {
                token: r.token.clone(),
                data: data_bytes(&r.data),
                subs: r
                    .subs
                    .iter()
                    .map(|(k, v)| (k.clone(), subscribe_request_to_wire(v)))
                    .collect(),
                name: r.name.clone(),
                version: r.version.clone(),
            })
        }
        Method::Subscribe(r) => w.subscribe = Some(subscribe_request_to_wire(r)),
        Method::Unsubscribe(r) => w.unsubscribe = Some(channel(&r.channel)),
        Method::Publish(r) => {
            w.publish = Some(wire::PublishRequest {
                channel: r.channel.clone(),
                data: data_bytes(&r.data),
            })
        }
        Method::Presence(r) => w.presence = Some(channel(&r.channel)),
        Method::PresenceStats(r) => w.presence_stats = Some(channel(&r.channel)),
        Method::History(r) => {
            w.history = Some(wire::HistoryRequest {
                channel: r.channel.clone(),
                limit: r.limit,
                since: r.since.as_ref().map(|s| wire::StreamPosition {
                    offset: s.offset,
                    epoch: s.epoch.clone(),
                }),
                reverse: r.reverse,
            })
        }
        Method::Ping(_) => w.ping = Some(wire::Empty {}),
        Method::Send(r) => {
            w.send = Some(wire::DataOnly {
                data: data_bytes(&r.data),
            })
        }
        Method::Rpc(r) => {
            w.rpc = Some(wire::RpcRequest {
                data: data_bytes(&r.data),
                method: r.method.clone(),
            })
        }
        Method::Refresh(r) => {
            w.refresh = Some(wire::RefreshRequest {
                token: r.token.clone(),
            })
        }
        Method::SubRefresh(r) => {
            w.sub_refresh = Some(wire::SubRefreshRequest {
                channel: r.channel.clone(),
                token: r.token.clone(),
            })
        }
        Method::Pong => {}
    }
    w
}

/// A frame of commands as a Protobuf client sends it.
pub fn encode_commands(commands: &[Command]) -> Bytes {
    encode_batch(commands.iter().map(|c| delimited(&command_to_wire(c))))
}

/// One message of a server frame as a Protobuf client reads it: the raw decoded `Reply`
/// (`id`, `error`, one result or a push). Bytes fields stay bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerReply(pub(crate) wire::Reply);

impl ServerReply {
    /// The command id (0 for pushes and the ping).
    pub fn id(&self) -> u32 {
        self.0.id
    }

    /// Whether this is the server's ping (an empty reply).
    pub fn is_ping(&self) -> bool {
        self.0 == wire::Reply::default()
    }

    /// The error code, if the reply is an error.
    pub fn error_code(&self) -> Option<u32> {
        self.0.error.as_ref().map(|e| e.code)
    }

    /// The push's channel and publication data, if this is a `pub` push.
    pub fn publication(&self) -> Option<(&str, &Bytes, u64)> {
        let push = self.0.push.as_ref()?;
        let p = push.publication.as_ref()?;
        Some((&push.channel, &p.data, p.offset))
    }

    /// The publications of a `history` result.
    pub fn history(&self) -> Option<Vec<(Bytes, u64)>> {
        let h = self.0.history.as_ref()?;
        Some(
            h.publications
                .iter()
                .map(|p| (p.data.clone(), p.offset))
                .collect(),
        )
    }

    /// The client id of a `connect` result.
    pub fn connected_client(&self) -> Option<&str> {
        self.0.connect.as_ref().map(|c| c.client.as_str())
    }
}

/// Decodes a server frame as a Protobuf client does (for tests and tools).
pub fn decode_server_frame(frame: &[u8]) -> Result<Vec<ServerReply>, DecodeError> {
    let mut rest = Bytes::copy_from_slice(frame);
    let mut replies = Vec::new();
    let mut index = 0;
    while !rest.is_empty() {
        index += 1;
        let (len, prefix) = read_length(&rest, index)?;
        if len > rest.len() - prefix {
            return Err(DecodeError::Protobuf {
                index,
                message: "truncated reply".into(),
            });
        }
        rest.advance(prefix);
        let body = rest.split_to(len);
        let reply = wire::Reply::decode(body).map_err(|e| DecodeError::Protobuf {
            index,
            message: e.to_string(),
        })?;
        replies.push(ServerReply(reply));
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    //! The prost structs against `proto/centrifugo_client.proto`: every message is encoded
    //! with every field set, and the bytes are walked with the `.proto` file as the only
    //! guide, so a field number or type that differs between the two fails here.

    use std::collections::{BTreeMap, HashMap, HashSet};

    use bytes::Bytes;
    use prost::Message as _;

    use super::wire;

    const PROTO: &str = include_str!("../../proto/centrifugo_client.proto");

    /// message name → field number → (type, name). Map fields have type `map<K,V>`.
    type Schema = HashMap<String, BTreeMap<u64, (String, String)>>;

    fn parse_schema() -> Schema {
        let mut schema = Schema::new();
        let mut current: Option<String> = None;
        for line in PROTO.lines() {
            let line = line.split("//").next().unwrap_or("").trim();
            if let Some(rest) = line.strip_prefix("message ") {
                let name = rest.trim_end_matches(['{', '}', ' ']).to_string();
                schema.entry(name.clone()).or_default();
                current = (!rest.ends_with("{}")).then_some(name);
            } else if line == "}" {
                current = None;
            } else if let (Some(msg), Some((decl, number))) = (&current, line.split_once('=')) {
                let number: u64 = number.trim().trim_end_matches(';').parse().unwrap();
                let decl = decl
                    .trim()
                    .trim_start_matches("repeated ")
                    .replace(", ", ",");
                let (ty, name) = decl.rsplit_once(' ').unwrap();
                let fields = schema.get_mut(msg).unwrap();
                assert!(
                    fields
                        .insert(number, (ty.to_string(), name.to_string()))
                        .is_none(),
                    "{msg}: field {number} twice"
                );
            }
        }
        schema
    }

    fn varint(buf: &[u8], pos: &mut usize) -> u64 {
        let mut n = 0;
        let mut shift = 0;
        loop {
            let b = buf[*pos];
            *pos += 1;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return n;
            }
            shift += 7;
        }
    }

    /// Walks `buf` as message `msg` of the schema, recording every field met.
    fn walk(schema: &Schema, msg: &str, buf: &[u8], seen: &mut HashSet<(String, u64)>) {
        let fields = schema
            .get(msg)
            .unwrap_or_else(|| panic!("{msg} not in the .proto"));
        let mut pos = 0;
        while pos < buf.len() {
            let key = varint(buf, &mut pos);
            let (number, wire_type) = (key >> 3, key & 7);
            let (ty, name) = fields
                .get(&number)
                .unwrap_or_else(|| panic!("Rust writes {msg} field {number}, the .proto has none"));
            seen.insert((msg.to_string(), number));
            let scalar = matches!(ty.as_str(), "bool" | "uint32" | "uint64" | "int32");
            assert_eq!(
                wire_type,
                if scalar { 0 } else { 2 },
                "{msg}.{name} ({ty}) has wire type {wire_type}"
            );
            if scalar {
                varint(buf, &mut pos);
                continue;
            }
            let len = varint(buf, &mut pos) as usize;
            let value = &buf[pos..pos + len];
            pos += len;
            if let Some(kv) = ty.strip_prefix("map<").and_then(|t| t.strip_suffix('>')) {
                let (k, v) = kv.split_once(',').unwrap();
                let mut entry = Schema::new();
                let mut entry_fields = BTreeMap::new();
                entry_fields.insert(1, (k.to_string(), "key".to_string()));
                entry_fields.insert(2, (v.to_string(), "value".to_string()));
                entry.insert("entry".to_string(), entry_fields);
                // The entry's value may be a message of the schema: walk it with both.
                let mut both = schema.clone();
                both.extend(entry);
                walk(&both, "entry", value, seen);
            } else if !matches!(ty.as_str(), "string" | "bytes") {
                walk(schema, ty, value, seen);
            }
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn client_info() -> wire::ClientInfo {
        wire::ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: b("{}"),
            chan_info: b("[]"),
        }
    }

    fn publication() -> wire::Publication {
        wire::Publication {
            data: b("d"),
            info: Some(client_info()),
            offset: 1,
            tags: BTreeMap::from([("k".into(), "v".into())]),
        }
    }

    fn subscribe_request() -> wire::SubscribeRequest {
        wire::SubscribeRequest {
            channel: "ch".into(),
            token: "t".into(),
            recover: true,
            epoch: "e".into(),
            offset: 2,
            data: b("x"),
            positioned: true,
            recoverable: true,
            join_leave: true,
        }
    }

    fn subscribe_result() -> wire::SubscribeResult {
        wire::SubscribeResult {
            expires: true,
            ttl: 3,
            recoverable: true,
            epoch: "e".into(),
            publications: vec![publication()],
            recovered: true,
            offset: 4,
            positioned: true,
            data: b("x"),
            was_recovering: true,
        }
    }

    fn connect_result() -> wire::ConnectResult {
        wire::ConnectResult {
            client: "c".into(),
            version: "v".into(),
            expires: true,
            ttl: 5,
            data: b("x"),
            subs: BTreeMap::from([("s".into(), subscribe_result())]),
            ping: 25,
            pong: true,
            session: "s".into(),
            node: "n".into(),
        }
    }

    fn full_command() -> wire::Command {
        let channel = || {
            Some(wire::ChannelRequest {
                channel: "ch".into(),
            })
        };
        wire::Command {
            id: 1,
            connect: Some(wire::ConnectRequest {
                token: "t".into(),
                data: b("x"),
                subs: BTreeMap::from([("s".into(), subscribe_request())]),
                name: "n".into(),
                version: "v".into(),
            }),
            subscribe: Some(subscribe_request()),
            unsubscribe: channel(),
            publish: Some(wire::PublishRequest {
                channel: "ch".into(),
                data: b("x"),
            }),
            presence: channel(),
            presence_stats: channel(),
            history: Some(wire::HistoryRequest {
                channel: "ch".into(),
                limit: 7,
                since: Some(wire::StreamPosition {
                    offset: 1,
                    epoch: "e".into(),
                }),
                reverse: true,
            }),
            ping: Some(wire::Empty {}),
            send: Some(wire::DataOnly { data: b("x") }),
            rpc: Some(wire::RpcRequest {
                data: b("x"),
                method: "m".into(),
            }),
            refresh: Some(wire::RefreshRequest { token: "t".into() }),
            sub_refresh: Some(wire::SubRefreshRequest {
                channel: "ch".into(),
                token: "t".into(),
            }),
        }
    }

    fn full_reply() -> wire::Reply {
        let c = connect_result();
        wire::Reply {
            id: 1,
            error: Some(wire::Error {
                code: 100,
                message: "m".into(),
                temporary: true,
            }),
            push: Some(wire::Push {
                channel: "ch".into(),
                publication: Some(publication()),
                join: Some(wire::InfoOnly {
                    info: Some(client_info()),
                }),
                leave: Some(wire::InfoOnly {
                    info: Some(client_info()),
                }),
                unsubscribe: Some(wire::Unsubscribe {
                    code: 2500,
                    reason: "r".into(),
                }),
                message: Some(wire::DataOnly { data: b("x") }),
                subscribe: Some(wire::Subscribe {
                    recoverable: true,
                    epoch: "e".into(),
                    offset: 1,
                    positioned: true,
                    data: b("x"),
                }),
                connect: Some(wire::Connect {
                    client: c.client.clone(),
                    version: c.version.clone(),
                    data: c.data.clone(),
                    subs: c.subs.clone(),
                    expires: true,
                    ttl: 1,
                    ping: 1,
                    pong: true,
                    session: "s".into(),
                    node: "n".into(),
                }),
                disconnect: Some(wire::Disconnect {
                    code: 3000,
                    reason: "r".into(),
                    reconnect: true,
                }),
                refresh: Some(wire::ExpiryOnly {
                    expires: true,
                    ttl: 1,
                }),
            }),
            connect: Some(c),
            subscribe: Some(subscribe_result()),
            unsubscribe: Some(wire::Empty {}),
            publish: Some(wire::Empty {}),
            presence: Some(wire::PresenceResult {
                presence: BTreeMap::from([("c".into(), client_info())]),
            }),
            presence_stats: Some(wire::PresenceStatsResult {
                num_clients: 1,
                num_users: 1,
            }),
            history: Some(wire::HistoryResult {
                publications: vec![publication()],
                epoch: "e".into(),
                offset: 1,
            }),
            ping: Some(wire::Empty {}),
            rpc: Some(wire::DataOnly { data: b("x") }),
            refresh: Some(wire::RefreshResult {
                client: "c".into(),
                version: "v".into(),
                expires: true,
                ttl: 1,
            }),
            sub_refresh: Some(wire::ExpiryOnly {
                expires: true,
                ttl: 1,
            }),
        }
    }

    #[test]
    fn schema_matches_the_proto_file() {
        let schema = parse_schema();
        let mut seen = HashSet::new();
        walk(
            &schema,
            "Command",
            &full_command().encode_to_vec(),
            &mut seen,
        );
        walk(&schema, "Reply", &full_reply().encode_to_vec(), &mut seen);
        // Every field of the .proto was written by a Rust struct.
        let mut missing = Vec::new();
        for (msg, fields) in &schema {
            for (number, (_, name)) in fields {
                if !seen.contains(&(msg.clone(), *number)) {
                    missing.push(format!("{msg}.{name} = {number}"));
                }
            }
        }
        missing.sort();
        assert!(missing.is_empty(), "never written: {missing:?}");
        // And the walk covered the messages it should (a sanity check of the parser).
        assert!(schema["SubscribeRequest"].contains_key(&11));
        assert!(seen.contains(&("Connect".to_string(), 10)));
        assert!(seen.contains(&("ConnectResult".to_string(), 6)));
    }
}
