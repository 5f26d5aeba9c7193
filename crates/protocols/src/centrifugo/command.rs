//! Client-to-server commands and the decoding of a frame of them.
//!
//! A frame holds one or more commands, one JSON object per line:
//!
//! ```text
//! {"id":1,"connect":{"token":"..."}}
//! {"id":2,"subscribe":{"channel":"chat"}}
//! ```
//!
//! Each command has an `id` (echoed in its reply) and exactly one request field named after
//! the method. The empty object `{}` is not a command but the client's pong to a server ping.

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::{is_false, is_zero_i32, is_zero_u64, Data, Disconnect, StreamPosition};

/// `connect`: authenticate the connection. Sent once, first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectRequest {
    /// Connection token (JWT); empty for anonymous connections.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Custom data for the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    /// Server-side subscriptions the client wants to recover, by channel (the SDK sends the
    /// position it last saw in each; `channel` inside is empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subs: BTreeMap<String, SubscribeRequest>,
    /// Client name (SDK name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Client version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// `subscribe`: start receiving a channel's publications, optionally recovering missed ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// The channel (required for a `subscribe` command).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    /// Subscription token, for private channels.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Recover publications since `offset`/`epoch`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recover: bool,
    /// Epoch of the last seen position (with `recover`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// Offset of the last seen publication (with `recover`).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    /// Custom data for the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    /// The client asks for positioned publications (offsets checked for gaps).
    #[serde(default, skip_serializing_if = "is_false")]
    pub positioned: bool,
    /// The client asks for a recoverable subscription.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recoverable: bool,
    /// The client asks for join/leave pushes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub join_leave: bool,
}

/// `unsubscribe`: stop receiving a channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeRequest {
    /// The channel.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
}

/// `publish`: publish `data` into a channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// The channel.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    /// The data; always present in a decoded command (decoding rejects a publish without
    /// data, as Centrifugo does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
}

/// `presence`: who is subscribed to a channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRequest {
    /// The channel.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
}

/// `presence_stats`: how many clients and users are subscribed to a channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStatsRequest {
    /// The channel.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
}

/// `history`: publications kept in a channel's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// The channel.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    /// How many publications: 0 returns only the current stream position, a negative value
    /// asks for everything (up to the server's limit).
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub limit: i32,
    /// Only publications after this position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<StreamPosition>,
    /// Newest first.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reverse: bool,
}

/// `ping`: the client's own liveness check; answered with an empty `ping` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingRequest {}

/// `send`: an asynchronous message to the server; never answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    /// The message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
}

/// `rpc`: call a server-side method.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcRequest {
    /// Call data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    /// Method name (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
}

/// `refresh`: a new connection token before the current one expires.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRequest {
    /// The new token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
}

/// `sub_refresh`: a new subscription token for a private channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubRefreshRequest {
    /// The channel.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
    /// The new subscription token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `connect`.
    Connect(ConnectRequest),
    /// `subscribe`.
    Subscribe(SubscribeRequest),
    /// `unsubscribe`.
    Unsubscribe(UnsubscribeRequest),
    /// `publish`.
    Publish(PublishRequest),
    /// `presence`.
    Presence(PresenceRequest),
    /// `presence_stats`.
    PresenceStats(PresenceStatsRequest),
    /// `history`.
    History(HistoryRequest),
    /// `ping`.
    Ping(PingRequest),
    /// `send` (no reply).
    Send(SendRequest),
    /// `rpc`.
    Rpc(RpcRequest),
    /// `refresh`.
    Refresh(RefreshRequest),
    /// `sub_refresh`.
    SubRefresh(SubRefreshRequest),
    /// The empty command `{}`: the client's pong to a server ping (id 0, no reply).
    Pong,
}

impl Method {
    /// The JSON field name of the request (`"pong"` for [`Method::Pong`], which has none).
    pub fn name(&self) -> &'static str {
        match self {
            Method::Connect(_) => "connect",
            Method::Subscribe(_) => "subscribe",
            Method::Unsubscribe(_) => "unsubscribe",
            Method::Publish(_) => "publish",
            Method::Presence(_) => "presence",
            Method::PresenceStats(_) => "presence_stats",
            Method::History(_) => "history",
            Method::Ping(_) => "ping",
            Method::Send(_) => "send",
            Method::Rpc(_) => "rpc",
            Method::Refresh(_) => "refresh",
            Method::SubRefresh(_) => "sub_refresh",
            Method::Pong => "pong",
        }
    }

    /// Whether the server answers this command with a reply (`send` and the pong are not).
    pub fn expects_reply(&self) -> bool {
        !matches!(self, Method::Send(_) | Method::Pong)
    }
}

/// One client command: `{"id":2,"subscribe":{"channel":"chat"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Echoed in the reply. Always above 0, except for `send` (may be 0) and the pong (0).
    pub id: u32,
    /// The request.
    pub method: Method,
}

impl Command {
    /// The client's pong, `{}`.
    pub const PONG: Command = Command {
        id: 0,
        method: Method::Pong,
    };

    /// The JSON text of this command (one line; what a client sends).
    #[allow(
        clippy::expect_used,
        reason = "string keys and raw JSON values only: serialising to text cannot fail"
    )]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("commands always serialise")
    }
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if self.id != 0 {
            map.serialize_entry("id", &self.id)?;
        }
        let name = self.method.name();
        match &self.method {
            Method::Connect(r) => map.serialize_entry(name, r)?,
            Method::Subscribe(r) => map.serialize_entry(name, r)?,
            Method::Unsubscribe(r) => map.serialize_entry(name, r)?,
            Method::Publish(r) => map.serialize_entry(name, r)?,
            Method::Presence(r) => map.serialize_entry(name, r)?,
            Method::PresenceStats(r) => map.serialize_entry(name, r)?,
            Method::History(r) => map.serialize_entry(name, r)?,
            Method::Ping(r) => map.serialize_entry(name, r)?,
            Method::Send(r) => map.serialize_entry(name, r)?,
            Method::Rpc(r) => map.serialize_entry(name, r)?,
            Method::Refresh(r) => map.serialize_entry(name, r)?,
            Method::SubRefresh(r) => map.serialize_entry(name, r)?,
            Method::Pong => {}
        }
        map.end()
    }
}

/// A command as it is on the wire: every request optional. Unknown fields (newer SDKs send
/// e.g. `headers`, `delta`, `flag`) are ignored, as by Centrifugo.
#[derive(Deserialize)]
struct WireCommand {
    #[serde(default)]
    id: u32,
    connect: Option<ConnectRequest>,
    subscribe: Option<SubscribeRequest>,
    unsubscribe: Option<UnsubscribeRequest>,
    publish: Option<PublishRequest>,
    presence: Option<PresenceRequest>,
    presence_stats: Option<PresenceStatsRequest>,
    history: Option<HistoryRequest>,
    ping: Option<PingRequest>,
    send: Option<SendRequest>,
    rpc: Option<RpcRequest>,
    refresh: Option<RefreshRequest>,
    sub_refresh: Option<SubRefreshRequest>,
}

impl WireCommand {
    fn into_methods(self) -> Vec<Method> {
        let mut methods = Vec::with_capacity(1);
        methods.extend(self.connect.map(Method::Connect));
        methods.extend(self.subscribe.map(Method::Subscribe));
        methods.extend(self.unsubscribe.map(Method::Unsubscribe));
        methods.extend(self.publish.map(Method::Publish));
        methods.extend(self.presence.map(Method::Presence));
        methods.extend(self.presence_stats.map(Method::PresenceStats));
        methods.extend(self.history.map(Method::History));
        methods.extend(self.ping.map(Method::Ping));
        methods.extend(self.send.map(Method::Send));
        methods.extend(self.rpc.map(Method::Rpc));
        methods.extend(self.refresh.map(Method::Refresh));
        methods.extend(self.sub_refresh.map(Method::SubRefresh));
        methods
    }
}

/// Why a frame could not be decoded. Every variant is a protocol violation: the server
/// closes the connection with [`Disconnect::BAD_REQUEST`] (3501), as Centrifugo does.
///
/// `line` is the 1-based line of the frame the problem is on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame holds no command at all.
    Empty,
    /// A line is not a JSON object of the command's shape.
    Json {
        /// Line number.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A command with an id but no request.
    NoMethod {
        /// Line number.
        line: usize,
    },
    /// A command with more than one request.
    SeveralMethods {
        /// Line number.
        line: usize,
    },
    /// A command other than `send` without an id (or with id 0).
    MissingId {
        /// Line number.
        line: usize,
    },
    /// A request without a field it cannot do without (e.g. `subscribe` without `channel`).
    MissingField {
        /// Line number.
        line: usize,
        /// The request (`"subscribe"`, ...).
        method: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// Protobuf encoding: a length prefix that is truncated, too long or runs past the end
    /// of the frame, or bytes that are not a `Command`.
    Protobuf {
        /// 1-based index of the command in the frame.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

impl DecodeError {
    /// How the server closes the connection: always `3501 bad request`.
    pub fn disconnect(&self) -> Disconnect {
        Disconnect::BAD_REQUEST
    }

    /// The 1-based line of the frame the error is on (`None` for an empty frame).
    pub fn line(&self) -> Option<usize> {
        match self {
            DecodeError::Empty => None,
            DecodeError::Json { line, .. }
            | DecodeError::NoMethod { line }
            | DecodeError::SeveralMethods { line }
            | DecodeError::MissingId { line }
            | DecodeError::MissingField { line, .. }
            | DecodeError::Protobuf { index: line, .. } => Some(*line),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty frame: no command"),
            DecodeError::Json { line, message } => write!(f, "line {line}: {message}"),
            DecodeError::NoMethod { line } => write!(f, "line {line}: command has no request"),
            DecodeError::SeveralMethods { line } => {
                write!(f, "line {line}: command has more than one request")
            }
            DecodeError::MissingId { line } => write!(f, "line {line}: command needs an id"),
            DecodeError::MissingField {
                line,
                method,
                field,
            } => write!(f, "line {line}: {method} needs {field}"),
            DecodeError::Protobuf { index, message } => write!(f, "command {index}: {message}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one line (one JSON command).
fn decode_line(line_text: &[u8], line: usize) -> Result<Command, DecodeError> {
    let wire: WireCommand = serde_json::from_slice(line_text).map_err(|e| DecodeError::Json {
        line,
        message: e.to_string(),
    })?;
    validate(wire.id, wire.into_methods(), line)
}

/// The command made of `id` and the requests found in it, checked by the rules both
/// encodings share: exactly one request (none with id 0 is the pong), an id for all but
/// `send`, and the fields Centrifugo cannot do without. `line` locates the command in its
/// frame for the error.
pub(super) fn validate(
    id: u32,
    mut methods: Vec<Method>,
    line: usize,
) -> Result<Command, DecodeError> {
    if methods.len() > 1 {
        return Err(DecodeError::SeveralMethods { line });
    }
    let method = match methods.pop() {
        None if id == 0 => return Ok(Command::PONG),
        None => return Err(DecodeError::NoMethod { line }),
        Some(method) => method,
    };
    if id == 0 && !matches!(method, Method::Send(_)) {
        return Err(DecodeError::MissingId { line });
    }
    // The fields Centrifugo answers with a "bad request" disconnect when missing; checking
    // them here keeps every protocol violation in one place.
    let missing = |method: &'static str, field: &'static str| {
        Err(DecodeError::MissingField {
            line,
            method,
            field,
        })
    };
    match &method {
        Method::Subscribe(r) if r.channel.is_empty() => return missing("subscribe", "channel"),
        Method::Unsubscribe(r) if r.channel.is_empty() => return missing("unsubscribe", "channel"),
        Method::Publish(r) if r.channel.is_empty() => return missing("publish", "channel"),
        Method::Publish(r) if r.data.is_none() => return missing("publish", "data"),
        Method::Presence(r) if r.channel.is_empty() => return missing("presence", "channel"),
        Method::PresenceStats(r) if r.channel.is_empty() => {
            return missing("presence_stats", "channel")
        }
        Method::History(r) if r.channel.is_empty() => return missing("history", "channel"),
        Method::Refresh(r) if r.token.is_empty() => return missing("refresh", "token"),
        Method::SubRefresh(r) if r.channel.is_empty() => return missing("sub_refresh", "channel"),
        _ => {}
    }
    Ok(Command { id, method })
}

/// Iterator over the commands of one frame; see [`commands`].
#[derive(Debug, Clone)]
pub struct Commands<'a> {
    frame: &'a [u8],
    pos: usize,
    line: usize,
    seen_command: bool,
    done: bool,
}

impl Iterator for Commands<'_> {
    type Item = Result<Command, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if self.pos >= self.frame.len() {
                self.done = true;
                return (!self.seen_command).then_some(Err(DecodeError::Empty));
            }
            let rest = &self.frame[self.pos..];
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let text = &rest[..end];
            self.pos += end + 1;
            self.line += 1;
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.seen_command = true;
            let result = decode_line(text, self.line);
            // Like Centrifugo, nothing after a bad line is looked at: the connection is
            // about to be closed.
            self.done = result.is_err();
            return Some(result);
        }
        None
    }
}

impl std::iter::FusedIterator for Commands<'_> {}

/// The commands of one WebSocket message, lazily, in order.
///
/// Mirrors Centrifugo's reading loop: each line is decoded and can be handled before the
/// next one is looked at; the first bad line yields an `Err` and ends the iteration (the
/// server handles the commands before it, then disconnects with 3501). A frame without any
/// command yields a single [`DecodeError::Empty`]. Blank lines are skipped (Centrifugo
/// tolerates only a trailing newline; skipping any blank line is harmless and matches how
/// the JS SDK reads the server's batches).
pub fn commands(frame: &[u8]) -> Commands<'_> {
    Commands {
        frame,
        pos: 0,
        line: 0,
        seen_command: false,
        done: false,
    }
}

/// All the commands of one frame: `Ok`s in order, and at most one `Err`, always last (see
/// [`commands`]).
pub fn decode_commands(frame: &[u8]) -> Vec<Result<Command, DecodeError>> {
    commands(frame).collect()
}

/// A frame of commands as a client sends it: one JSON object per line.
pub fn encode_commands(commands: &[Command]) -> String {
    let lines: Vec<String> = commands.iter().map(Command::to_json).collect();
    lines.join("\n")
}
