//! The Pusher Channels protocol, version 7: JSON text frames `{event, channel?, data}`.
//!
//! * Client frames ([`decode`]): `pusher:ping`, `pusher:pong`, `pusher:subscribe`
//!   (`{channel, auth?, channel_data?}`), `pusher:unsubscribe`, `pusher:signin`, and client
//!   events (`client-*`) on private and presence channels.
//! * Server frames: the builders below (`pusher:connection_established`, `pusher:error`,
//!   `pusher_internal:subscription_succeeded`, `pusher_internal:member_added`/`removed`, …).
//!   Their `data` is a JSON-encoded string, as Pusher sends it, except `pusher:error`'s and
//!   `pusher:subscription_error`'s, which are objects.
//! * Channel publications: a Pusher event is stored in the core as the text payload
//!   `{"event":name,"data":data}` (plus `"user_id"` for a client event on a presence
//!   channel); see [`envelope`] and [`event_of`]. Any other payload (from a raw client, the
//!   Centrifugo or Socket.IO side) reaches Pusher clients as the event [`MESSAGE_EVENT`]
//!   with the payload's text as `data` (binary: standard base64). A publication's frame is
//!   built once and shared under [`WireFormat::PUSHER`].
//! * Signatures: [`auth`].
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use switchboard_core::{Payload, PayloadKind, Publication, WireFormat};
use switchboard_websocket::{Message, PreparedMessage};

pub mod auth;

/// The protocol name recorded in the hub for Pusher connections.
pub const PROTOCOL: &str = "pusher";
/// The oldest protocol version served.
pub const MIN_PROTOCOL_VERSION: u32 = 7;
/// The event a publication that is not a Pusher event is delivered as.
pub const MESSAGE_EVENT: &str = "message";
/// Most bytes of an event's `data` (Pusher's limit: 10 KB).
pub const MAX_EVENT_DATA: usize = 10 * 1024;
/// Longest channel name.
pub const MAX_CHANNEL_LENGTH: usize = 200;

/// `pusher:error` and close codes (4000–4099: do not reconnect; 4100–4199: reconnect after
/// a while; 4200–4299: reconnect at once; 4300–4399: other).
pub mod code {
    /// Unknown app key.
    pub const APP_NOT_FOUND: u16 = 4001;
    /// The `protocol` query parameter is not a number.
    pub const INVALID_VERSION: u16 = 4006;
    /// Protocol version not supported.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    /// No `protocol` query parameter.
    pub const NO_VERSION: u16 = 4008;
    /// Subscription or client event not authorized.
    pub const UNAUTHORIZED: u16 = 4009;
    /// Over a connection limit: try again later.
    pub const OVER_CAPACITY: u16 = 4100;
    /// Generic reconnect: the server is closing, or the connection fell behind.
    pub const RECONNECT: u16 = 4200;
    /// No pong received in time.
    pub const PONG_TIMEOUT: u16 = 4201;
    /// Closed after too long without activity.
    pub const INACTIVITY: u16 = 4202;
    /// A client event was rejected (rate limit, wrong channel, too large).
    pub const CLIENT_EVENT_REJECTED: u16 = 4301;
    /// A message that is not understood: an unknown event (refused alone), or a frame that
    /// is not a JSON object with an `event` (the connection is closed with this code;
    /// `pusher-js` does not reconnect after 4300–4399).
    pub const BAD_MESSAGE: u16 = 4300;
}

/// The prefix of the channel a signed-in user's connections receive server-to-user events
/// on: `#server-to-user-{user id}` (the server SDKs' `sendToUser` triggers on it).
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// The server-to-user channel of `user`.
pub fn user_channel(user: &str) -> String {
    format!("{USER_CHANNEL_PREFIX}{user}")
}

/// The prefixes of cache channels (the last event is kept and replayed to new subscribers),
/// most specific first.
pub const CACHE_PREFIXES: [&str; 4] = [
    "presence-cache-",
    "private-encrypted-cache-",
    "private-cache-",
    "cache-",
];

/// Whether `channel` is a cache channel (`cache-`, `private-cache-`,
/// `private-encrypted-cache-`, `presence-cache-`).
pub fn is_cache(channel: &str) -> bool {
    CACHE_PREFIXES.iter().any(|p| channel.starts_with(p))
}

/// Whether `user` can name a user here: 1–200 bytes without whitespace, control
/// characters or `:` (its server-to-user channel must be a channel name of the default
/// namespace).
pub fn valid_user_id(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_CHANNEL_LENGTH
        && !user
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':')
}

/// Whether events may be triggered on `name` through the HTTP API: a valid channel name, or
/// a server-to-user channel of a valid user id.
pub fn valid_event_channel(name: &str) -> bool {
    valid_channel_name(name)
        || name
            .strip_prefix(USER_CHANNEL_PREFIX)
            .is_some_and(valid_user_id)
}

/// What a channel name says about its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Anyone may subscribe.
    Public,
    /// `private-`: subscribing needs a signature.
    Private,
    /// `private-encrypted-`: like private; payloads are end-to-end encrypted, opaque here.
    PrivateEncrypted,
    /// `presence-`: a signature over the member's `channel_data`; members are listed.
    Presence,
}

impl ChannelKind {
    /// The kind of `channel` (`cache-` variants are their base kind).
    pub fn of(channel: &str) -> ChannelKind {
        if channel.starts_with("private-encrypted-") {
            ChannelKind::PrivateEncrypted
        } else if channel.starts_with("private-") {
            ChannelKind::Private
        } else if channel.starts_with("presence-") {
            ChannelKind::Presence
        } else {
            ChannelKind::Public
        }
    }

    /// Whether subscribing needs a signature.
    pub fn needs_auth(self) -> bool {
        self != ChannelKind::Public
    }

    /// Whether clients may send `client-*` events here.
    pub fn allows_client_events(self) -> bool {
        matches!(self, ChannelKind::Private | ChannelKind::Presence)
    }
}

/// Whether `name` is a valid Pusher channel name: 1–200 of `A-Za-z0-9_-=@,.;`.
pub fn valid_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_LENGTH
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// One frame from a client.
#[derive(Debug, Deserialize)]
pub struct ClientFrame {
    /// The event name.
    pub event: String,
    /// The channel, for channel events.
    #[serde(default)]
    pub channel: Option<String>,
    /// The event's data (an object, or a JSON-encoded string).
    #[serde(default)]
    pub data: Value,
}

/// Decodes a client frame.
pub fn decode(text: &[u8]) -> Result<ClientFrame, serde_json::Error> {
    serde_json::from_slice(text)
}

/// What `pusher:subscribe` carries.
#[derive(Debug, Default, Deserialize)]
pub struct Subscribe {
    /// The channel.
    pub channel: String,
    /// `key:signature`, for private and presence channels.
    #[serde(default)]
    pub auth: Option<String>,
    /// Presence: the JSON (as a string) the signature covers, with `user_id` and
    /// `user_info`.
    #[serde(default)]
    pub channel_data: Option<String>,
}

/// What `pusher:signin` carries.
#[derive(Debug, Default, Deserialize)]
pub struct Signin {
    /// `key:signature` over `socket_id::user::user_data`.
    pub auth: String,
    /// The user as JSON (as a string), with `id`.
    pub user_data: String,
}

/// `data` as an object, also when the client sent it as a JSON-encoded string.
pub fn data_object<T: for<'de> Deserialize<'de>>(data: &Value) -> Option<T> {
    match data {
        Value::String(s) => serde_json::from_str(s).ok(),
        other => T::deserialize(other).ok(),
    }
}

/// A presence member as `channel_data` gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The user id (numbers are kept as their decimal text).
    pub user_id: String,
    /// `user_info`, if any.
    pub user_info: Option<Value>,
}

/// Parses presence `channel_data`: it must have `user_id` (a string or a number).
pub fn parse_member(channel_data: &[u8]) -> Option<Member> {
    let v: Value = serde_json::from_slice(channel_data).ok()?;
    let user_id = match v.get("user_id")? {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let user_info = v.get("user_info").filter(|i| !i.is_null()).cloned();
    Some(Member { user_id, user_info })
}

/// Parses sign-in `user_data`: it must have a string `id` that is a [`valid_user_id`].
pub fn parse_user(user_data: &str) -> Option<String> {
    let v: Value = serde_json::from_str(user_data).ok()?;
    match v.get("id")? {
        Value::String(s) if valid_user_id(s) => Some(s.clone()),
        _ => None,
    }
}

fn frame(event: &str, channel: Option<&str>, data: Value) -> Message {
    let mut obj = serde_json::Map::new();
    obj.insert("event".into(), Value::String(event.into()));
    if let Some(c) = channel {
        obj.insert("channel".into(), Value::String(c.into()));
    }
    obj.insert("data".into(), data);
    Message::text(Value::Object(obj).to_string())
}

/// `pusher:connection_established`.
pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> Message {
    let data = json!({"socket_id": socket_id, "activity_timeout": activity_timeout_secs});
    frame(
        "pusher:connection_established",
        None,
        Value::String(data.to_string()),
    )
}

/// `pusher:error` with `code` (`None` for errors that do not end anything) and `message`.
pub fn error(code: Option<u16>, message: &str) -> Message {
    frame(
        "pusher:error",
        None,
        json!({"code": code, "message": message}),
    )
}

/// `pusher:ping`.
pub fn ping() -> Message {
    frame("pusher:ping", None, Value::String("{}".into()))
}

/// `pusher:pong`.
pub fn pong() -> Message {
    frame("pusher:pong", None, Value::String("{}".into()))
}

/// `pusher_internal:subscription_succeeded` on a channel without presence.
pub fn subscription_succeeded(channel: &str) -> Message {
    frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        Value::String("{}".into()),
    )
}

/// `pusher_internal:subscription_succeeded` on a presence channel, with its members (one
/// per user id).
pub fn presence_succeeded(channel: &str, members: &BTreeMap<String, Option<Value>>) -> Message {
    frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        Value::String(presence_data(members).to_string()),
    )
}

/// `{presence: {ids, hash, count}}`.
pub fn presence_data(members: &BTreeMap<String, Option<Value>>) -> Value {
    let ids: Vec<&String> = members.keys().collect();
    let hash: serde_json::Map<String, Value> = members
        .iter()
        .map(|(id, info)| (id.clone(), info.clone().unwrap_or(Value::Null)))
        .collect();
    json!({"presence": {"ids": ids, "hash": hash, "count": members.len()}})
}

/// `pusher:subscription_error` (the subscription was refused).
pub fn subscription_error(channel: &str, error: &str, status: u16) -> Message {
    frame(
        "pusher:subscription_error",
        Some(channel),
        json!({"type": "AuthError", "error": error, "status": status}),
    )
}

/// `pusher_internal:member_added`.
pub fn member_added(channel: &str, member: &Member) -> Message {
    let data = json!({"user_id": member.user_id, "user_info": member.user_info});
    frame(
        "pusher_internal:member_added",
        Some(channel),
        Value::String(data.to_string()),
    )
}

/// `pusher_internal:member_removed`.
pub fn member_removed(channel: &str, user_id: &str) -> Message {
    let data = json!({ "user_id": user_id });
    frame(
        "pusher_internal:member_removed",
        Some(channel),
        Value::String(data.to_string()),
    )
}

/// `pusher:signin_success` with the user data as signed.
pub fn signin_success(user_data: &str) -> Message {
    frame(
        "pusher:signin_success",
        None,
        json!({ "user_data": user_data }),
    )
}

/// `pusher:cache_miss` (a cache channel with nothing cached).
pub fn cache_miss(channel: &str) -> Message {
    frame(
        "pusher:cache_miss",
        Some(channel),
        Value::String("{}".into()),
    )
}

/// An event's data as the string the wire carries (a string stays itself; anything else
/// is its JSON text).
pub fn data_string(data: &Value) -> String {
    match data {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(serde::Serialize, Deserialize)]
struct Envelope<'a> {
    event: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    user_id: Option<&'a str>,
}

/// The core payload of a Pusher event: `{"event":name,"data":…}` as text, with `user_id`
/// when given. A `data` string holding a JSON object or array is embedded as that JSON (so
/// other protocols see the structure); any other `data` as a JSON string.
pub fn envelope(event: &str, data: &str, user_id: Option<&str>) -> Payload {
    let embedded = data.trim_start().starts_with(['{', '['])
        && serde_json::from_str::<&RawValue>(data).is_ok();
    let raw: Box<RawValue> = if embedded {
        RawValue::from_string(data.to_string())
    } else {
        serde_json::value::to_raw_value(data)
    }
    .unwrap_or_default();
    let env = Envelope {
        event,
        data: &raw,
        user_id,
    };
    Payload::text(serde_json::to_string(&env).unwrap_or_default())
}

/// A payload as a Pusher event: `(event, data, user_id)`. A Pusher envelope gives its own;
/// anything else is [`MESSAGE_EVENT`] with the text (binary: base64) as data.
pub fn event_of(payload: &Payload) -> (String, String, Option<String>) {
    if payload.kind == PayloadKind::Text && payload.data.first() == Some(&b'{') {
        if let Ok(env) = serde_json::from_slice::<Envelope<'_>>(&payload.data) {
            let data = match serde_json::from_str::<String>(env.data.get()) {
                Ok(s) => s,
                Err(_) => env.data.get().to_string(),
            };
            return (env.event.to_string(), data, env.user_id.map(str::to_string));
        }
    }
    let data = match payload.kind {
        PayloadKind::Text => String::from_utf8_lossy(&payload.data).into_owned(),
        PayloadKind::Binary => base64::engine::general_purpose::STANDARD.encode(&payload.data),
    };
    (MESSAGE_EVENT.to_string(), data, None)
}

/// The frame of a publication for Pusher subscribers, built once and shared.
pub fn encode(publication: &Publication) -> &PreparedMessage {
    publication.encoded(WireFormat::PUSHER, |p| {
        let (event, data, user_id) = event_of(&p.payload);
        let mut obj = serde_json::Map::new();
        obj.insert("event".into(), Value::String(event));
        obj.insert("channel".into(), Value::String(p.channel.to_string()));
        obj.insert("data".into(), Value::String(data));
        if let Some(u) = user_id {
            obj.insert("user_id".into(), Value::String(u));
        }
        PreparedMessage::new(Message::text(Value::Object(obj).to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn json_of(m: &Message) -> Value {
        match m {
            Message::Text(t) => serde_json::from_slice(t).unwrap(),
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn channel_kinds_and_names() {
        assert_eq!(ChannelKind::of("news"), ChannelKind::Public);
        assert_eq!(ChannelKind::of("cache-news"), ChannelKind::Public);
        assert_eq!(ChannelKind::of("private-a"), ChannelKind::Private);
        assert_eq!(
            ChannelKind::of("private-encrypted-a"),
            ChannelKind::PrivateEncrypted
        );
        assert_eq!(ChannelKind::of("presence-a"), ChannelKind::Presence);
        assert!(!ChannelKind::PrivateEncrypted.allows_client_events());
        assert!(ChannelKind::Presence.allows_client_events());
        assert!(!ChannelKind::Public.needs_auth());
        assert!(valid_channel_name("private-a_b-c=d@e,f.g;h"));
        assert!(!valid_channel_name("a b"));
        assert!(!valid_channel_name("ns:chan"));
        assert!(!valid_channel_name(""));
        assert!(!valid_channel_name(&"a".repeat(201)));
    }

    #[test]
    fn cache_and_user_channels() {
        for c in [
            "cache-a",
            "private-cache-a",
            "private-encrypted-cache-a",
            "presence-cache-a",
        ] {
            assert!(is_cache(c), "{c}");
        }
        assert!(!is_cache("news-cache-a"));
        assert!(!is_cache("private-a"));
        assert_eq!(ChannelKind::of("presence-cache-a"), ChannelKind::Presence);
        assert_eq!(user_channel("u1"), "#server-to-user-u1");
        assert!(valid_event_channel("#server-to-user-u1"));
        assert!(valid_event_channel("news"));
        assert!(!valid_event_channel("#server-to-user-"));
        assert!(!valid_event_channel("#server-to-user-a:b"));
        assert!(!valid_event_channel("#other"));
        assert_eq!(parse_user(r#"{"id":"u1","name":"x"}"#), Some("u1".into()));
        assert_eq!(parse_user(r#"{"id":"a b"}"#), None);
        assert_eq!(parse_user(r#"{"id":""}"#), None);
        assert_eq!(parse_user(r#"{"id":7}"#), None);
    }

    #[test]
    fn client_frames_decode_with_object_or_string_data() {
        let f =
            decode(br#"{"event":"pusher:subscribe","data":{"channel":"private-a","auth":"k:s"}}"#)
                .unwrap();
        assert_eq!(f.event, "pusher:subscribe");
        let s: Subscribe = data_object(&f.data).unwrap();
        assert_eq!(
            (s.channel.as_str(), s.auth.as_deref()),
            ("private-a", Some("k:s"))
        );
        let f = decode(br#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#).unwrap();
        let s: Subscribe = data_object(&f.data).unwrap();
        assert_eq!(s.channel, "a");
        let f = decode(br#"{"event":"client-x","channel":"private-a","data":{"n":1}}"#).unwrap();
        assert_eq!(f.channel.as_deref(), Some("private-a"));
        assert_eq!(data_string(&f.data), r#"{"n":1}"#);
        assert!(decode(b"nope").is_err());
    }

    #[test]
    fn members_from_channel_data() {
        let m = parse_member(br#"{"user_id":42,"user_info":{"name":"A"}}"#).unwrap();
        assert_eq!(m.user_id, "42");
        assert_eq!(m.user_info, Some(json!({"name":"A"})));
        assert_eq!(parse_member(br#"{"user_id":"u"}"#).unwrap().user_info, None);
        assert!(parse_member(br#"{"user_info":{}}"#).is_none());
        assert!(parse_member(br#"{"user_id":""}"#).is_none());
        assert_eq!(
            parse_user(r#"{"id":"u1","name":"x"}"#).as_deref(),
            Some("u1")
        );
        assert!(parse_user(r#"{"name":"x"}"#).is_none());
    }

    #[test]
    fn server_frames() {
        let v = json_of(&connection_established("1.2", 120));
        assert_eq!(v["event"], "pusher:connection_established");
        let d: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(d, json!({"socket_id":"1.2","activity_timeout":120}));
        let v = json_of(&error(Some(4001), "no app"));
        assert_eq!(v["data"], json!({"code":4001,"message":"no app"}));
        assert_eq!(json_of(&pong())["event"], "pusher:pong");
        let mut members = BTreeMap::new();
        members.insert("1".to_string(), Some(json!({"name":"a"})));
        members.insert("2".to_string(), None);
        let v = json_of(&presence_succeeded("presence-x", &members));
        assert_eq!(v["channel"], "presence-x");
        let d: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            d,
            json!({"presence":{"ids":["1","2"],"hash":{"1":{"name":"a"},"2":null},"count":2}})
        );
        let m = Member {
            user_id: "7".into(),
            user_info: None,
        };
        let v = json_of(&member_added("presence-x", &m));
        assert_eq!(v["event"], "pusher_internal:member_added");
        let v = json_of(&member_removed("presence-x", "7"));
        assert_eq!(v["data"], r#"{"user_id":"7"}"#);
        let v = json_of(&subscription_error("private-x", "bad", 401));
        assert_eq!(v["data"]["status"], 401);
    }

    #[test]
    fn envelopes_round_trip_and_embed_json_objects() {
        let p = envelope("my-event", r#"{"message":"hi"}"#, None);
        assert_eq!(
            &p.data[..],
            br#"{"event":"my-event","data":{"message":"hi"}}"#
        );
        assert_eq!(
            event_of(&p),
            ("my-event".into(), r#"{"message":"hi"}"#.into(), None)
        );
        let p = envelope("client-x", "plain", Some("u1"));
        assert_eq!(
            &p.data[..],
            br#"{"event":"client-x","data":"plain","user_id":"u1"}"#
        );
        assert_eq!(
            event_of(&p),
            ("client-x".into(), "plain".into(), Some("u1".into()))
        );
        // A number stays a string: it round-trips exactly.
        let p = envelope("e", "42", None);
        assert_eq!(event_of(&p).1, "42");
        // Broken JSON that looks like an object is carried as a string.
        let p = envelope("e", "{oops", None);
        assert_eq!(event_of(&p).1, "{oops");
    }

    #[test]
    fn foreign_payloads_become_message_events() {
        assert_eq!(
            event_of(&Payload::text("hello")),
            ("message".into(), "hello".into(), None)
        );
        assert_eq!(
            event_of(&Payload::text(r#"{"a":1}"#)).1,
            r#"{"a":1}"#,
            "JSON without an event name is data"
        );
        assert_eq!(event_of(&Payload::binary(vec![1u8, 2, 3])).1, "AQID");
    }

    #[test]
    fn publications_are_framed_once() {
        let p = Publication::new(
            Arc::from("news"),
            envelope("e", r#"{"a":1}"#, None),
            1,
            7,
            None,
        );
        let a = encode(&p);
        assert!(std::ptr::eq(a, encode(&p)));
        let v: Value = serde_json::from_slice(a.payload()).unwrap();
        assert_eq!(v, json!({"event":"e","channel":"news","data":"{\"a\":1}"}));
    }
}
