//! The Centrifugo client protocol, version 2: pure encode/decode, no I/O. This module is
//! the JSON encoding and the model both encodings share; [`protobuf`] is the Protobuf
//! encoding, and [`Encoding`] is how a connection picks one.
//!
//! Real `centrifuge` SDKs (JS, Dart, Swift, Java, Python, Go, .NET) speak this protocol over
//! a WebSocket at `/connection/websocket`. This module turns the client's frames into
//! [`Command`]s and the server's answers into bytes: [`Reply`] for each command, [`Push`]
//! for asynchronous events, [`PING`] for the server's heartbeat.
//!
//! # Sources
//!
//! Built from the published protocol facts (no code taken from them):
//!
//! * the schema, which is the source of truth: `centrifugal/protocol`, `client.proto`
//!   (`Command`, `Reply`, `Push`, `ConnectRequest/Result`, `SubscribeRequest/Result`,
//!   `Publication`, `ClientInfo`, `StreamPosition`, `HistoryRequest/Result`, ...);
//! * the JSON field names and omission rules of the reference encoder, generated in the
//!   same repository (`client.pb_cfjson.go`, earlier `client.pb_easyjson.go`): every zero
//!   value is omitted except `ClientInfo.user`/`client`, `PresenceResult.presence`,
//!   `PresenceStatsResult.num_clients`/`num_users` and all three fields of
//!   `HistoryResult`; `bytes` fields are embedded raw JSON;
//! * the framing doc (Centrifugo docs, "Client protocol"): commands and replies are
//!   newline-delimited JSON, one message per line, several per WebSocket frame; async
//!   pushes are replies without `id`; the server pings with an empty message `{}` and the
//!   client answers `{}`;
//! * the code list (Centrifugo docs, "Client protocol codes"; `centrifugal/centrifuge`,
//!   `errors.go`, `disconnect.go`): see [`Error`] and [`Disconnect`];
//! * the reference server's reading loop (`centrifugal/centrifuge`, `handler_websocket.go`
//!   `HandleReadFrame` and `client.go` `dispatchCommand`): commands of a frame are handled
//!   in order; on the first undecodable line, an empty frame, a command without an id (other
//!   than `send`) or a command without a method, the connection is closed with `3501 bad
//!   request`; `{}` is the client's pong;
//! * the JS SDK (`centrifugal/centrifuge-js`, `src/json.ts`, `src/centrifuge.ts`,
//!   `src/subscription.ts`): commands are `JSON.stringify`'d and joined with `\n`; replies
//!   are split on `\n`, blank lines skipped; a message with an `id` is a reply, without one
//!   it is a push if it has `push`, else a server ping; the SDK answers pings only when the
//!   connect result says `pong: true` and gives up after `ping` seconds plus its allowance;
//!   it sends only the fields it has (`recover`, `offset`, `epoch`, `positioned`,
//!   `recoverable`, `join_leave`, ...) and newer versions add fields such as `headers`,
//!   `delta`, `flag` which we ignore.
//!
//! # Decoding client frames
//!
//! [`commands`] / [`decode_commands`] decode a frame line by line. Decoding follows
//! Centrifugo: the commands before a bad line are valid and handled in order; the bad line
//! is a [`DecodeError`] (always last); the server then closes with [`Disconnect::BAD_REQUEST`]
//! (3501). Decoding also rejects, as Centrifugo does by disconnecting, a command with two
//! requests, a non-`send` command without id, and requests missing their channel (or
//! `publish` without `data`, `refresh` without `token`). Blank lines are skipped.
//!
//! # Data mapping
//!
//! In the JSON protocol `data` is embedded JSON ([`Data`] keeps it as raw text, never as a
//! parsed tree). Between Centrifugo clients and the channel core's [`Payload`]:
//!
//! * **client → core**: the `data` of `publish` becomes a *text* payload whose bytes are
//!   the raw JSON exactly as the client sent it. A raw-room WebSocket client therefore
//!   receives the JSON text verbatim (`{"text":"hi"}`, or `"hi"` with its quotes).
//! * **core → client, text that is valid JSON**: embedded as is, so JSON published by a
//!   raw client or the HTTP API reaches SDK clients as the same JSON value. Surrounding
//!   whitespace is dropped; inner whitespace is dropped only if the text has a line break
//!   (it would split the newline-delimited frame).
//! * **core → client, other text**: embedded as a JSON string (`hello` → `"hello"`).
//! * **core → client, binary**: embedded as a JSON string of standard base64 with padding.
//!   Centrifugo itself closes JSON clients that would receive binary (3506 "inappropriate
//!   protocol"); we prefer delivering every message. The [`protobuf`] encoding carries
//!   the bytes natively.
//!
//! Text that happens to be valid JSON is ambiguous: a raw client sending `42` publishes
//! the number 42 to SDK clients, not the string `"42"`.
//!
//! # Fan-out
//!
//! [`encode_publication_push`] encodes a publication's `pub` push once per publication,
//! cached in the publication under [`WireFormat::CENTRIFUGO_JSON`], so every subscriber's
//! writer shares the same bytes.

mod codes;
mod command;
mod data;
mod encoding;
pub mod protobuf;
mod push;
mod reply;
mod types;

use bytes::{BufMut, Bytes, BytesMut};
use switchboard_core::{Payload, Publication as CorePublication, WireFormat};

pub use codes::{unsubscribe_code, Disconnect, Error};
pub use command::{
    commands, decode_commands, encode_commands, Command, Commands, ConnectRequest, DecodeError,
    HistoryRequest, Method, PingRequest, PresenceRequest, PresenceStatsRequest, PublishRequest,
    RefreshRequest, RpcRequest, SendRequest, SubRefreshRequest, SubscribeRequest,
    UnsubscribeRequest,
};
pub use data::{binary_to_data, data_to_payload, payload_to_data, text_to_data, Data};
pub use encoding::{EncodedCommands, Encoding};
pub use push::{
    DisconnectPush, Join, Leave, MessagePush, Push, PushBody, RefreshPush, SubscribePush,
    UnsubscribePush,
};
pub use reply::{
    ConnectResult, HistoryResult, PingResult, PresenceResult, PresenceStatsResult, PublishResult,
    RefreshResult, Reply, ReplyResult, RpcResult, SubRefreshResult, SubscribeResult,
    UnsubscribeResult,
};
pub use types::{ClientInfo, Publication, StreamPosition};

/// The protocol name recorded in the hub for connections speaking this protocol.
pub const PROTOCOL: &str = "centrifugo-json";

/// The server's ping (and the client's pong): an empty JSON object.
pub const PING: &[u8] = b"{}";

/// The server ping as a frame.
pub fn ping_frame() -> Bytes {
    Bytes::from_static(PING)
}

/// A channel epoch as the protocol's string.
///
/// The only place the core's epoch type is converted, so a change of that type is a
/// one-line change here (anything displayable works today, a number or a string).
pub fn wire_epoch(epoch: impl std::fmt::Display) -> String {
    epoch.to_string()
}

/// The `pub` push for `publication`, encoded once per publication and shared by all
/// subscribers (cached under [`WireFormat::CENTRIFUGO_JSON`]; cloning [`Bytes`] is cheap).
pub fn encode_publication_push(publication: &CorePublication) -> Bytes {
    publication
        .encoded(WireFormat::CENTRIFUGO_JSON, |p| {
            Push::new(&*p.channel, PushBody::Pub(Publication::from_core(p))).encode()
        })
        .clone()
}

/// A frame holding several replies/pushes, one per line (the SDKs split on `\n`).
pub fn encode_batch<I>(messages: I) -> Bytes
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let mut out = BytesMut::new();
    for (i, message) in messages.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(b'\n');
        }
        out.put_slice(message.as_ref());
    }
    out.freeze()
}

/// The text payload a Centrifugo client's `publish` puts into the channel.
pub fn publish_payload(request: PublishRequest) -> Option<Payload> {
    request.data.map(Data::into_payload)
}

/// One message of a server frame, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// A reply to a command.
    Reply(Reply),
    /// An asynchronous push.
    Push(Push),
    /// The server's ping, `{}`.
    Ping,
}

/// Decodes a server frame the way the SDKs do (split on `\n`, blank lines skipped). For
/// tests and tools; the server never needs it.
pub fn decode_server_frame(frame: &[u8]) -> Result<Vec<ServerMessage>, DecodeError> {
    let mut messages = Vec::new();
    for (index, line_text) in frame.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        if line_text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut wire: reply::WireReply =
            serde_json::from_slice(line_text).map_err(|e| DecodeError::Json {
                line,
                message: e.to_string(),
            })?;
        if let Some(push) = wire.push.take() {
            let push = push
                .into_push()
                .ok_or(DecodeError::SeveralMethods { line })?;
            messages.push(ServerMessage::Push(push));
            continue;
        }
        let id = wire.id;
        let error = wire.error.take();
        let mut results = wire.into_results();
        let message = match (error, results.len()) {
            (Some(error), 0) => ServerMessage::Reply(Reply::error(id, error)),
            (None, 1) => match results.pop() {
                Some(result) => ServerMessage::Reply(Reply::ok(id, result)),
                None => return Err(DecodeError::NoMethod { line }),
            },
            (None, 0) if id == 0 => ServerMessage::Ping,
            (None, 0) => return Err(DecodeError::NoMethod { line }),
            _ => return Err(DecodeError::SeveralMethods { line }),
        };
        messages.push(message);
    }
    Ok(messages)
}

// Omission predicates for `skip_serializing_if` (the reference encoder omits zero values).
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}
fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}
fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}
