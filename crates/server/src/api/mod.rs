//! The server HTTP API, shaped like Centrifugo's: `POST /api/<method>` with a JSON body and
//! the key in `X-API-Key` (or `Authorization: apikey <key>`), so an application backend can
//! publish and inspect channels.
//!
//! Answers: `{"result": {...}}` on success, `{"error": {"code": N, "message": "..."}}` for a
//! request the method refuses (both HTTP 200, as Centrifugo does). HTTP errors: 401 for a
//! missing or wrong key (and whenever no key is configured: the API is then off), 404 for an
//! unknown method, 405 for anything but `POST`, 400 for a body that is not the method's JSON,
//! 413 for a body larger than the largest message.
//!
//! Methods: `publish`, `broadcast`, `presence`, `presence_stats`, `history`,
//! `history_remove`, `info`, `disconnect` (by `user` and/or `client` id; a Centrifugo client is
//! told to reconnect, any other connection is closed), `subscribe` and `unsubscribe` (server-side, for every Centrifugo-protocol
//! connection of `user`, told with a push), and `channels`: the channels with at least one
//! subscriber and their `num_clients`, optionally only those whose name matches `pattern`.
//!
//! With a shared broker every method covers the whole cluster, whichever node answers:
//! `disconnect`, `subscribe` and `unsubscribe` are applied here and sent to the other nodes
//! as control commands (a single `client` found on this node is handled here alone: client
//! ids are unique across nodes); `channels` asks every other live node for its channels and
//! sums the counts ([`crate::broker::control`]). When the broker cannot be reached they
//! answer 503 like the other broker-backed methods, having done nothing.
//!
//! A `channels` pattern is a glob with one wildcard: `*` matches any run of characters
//! (including none, and including `:`), every other character matches itself, and the whole
//! name must match (`chat:*` lists every channel of the `chat` namespace, `*room*` any name
//! containing `room`). An empty or missing pattern lists every channel. Centrifugo's fuller
//! glob syntax (`?`, `[...]`, `{a,b}`, `\` escapes) is not supported: those characters match
//! themselves.
//!
//! Answers are serialised straight to text, never through a [`Value`] tree: published data
//! is embedded as raw JSON exactly as it was published, however deeply it nests (a tree
//! would re-parse it and hit serde_json's nesting limit).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::collections::BTreeMap;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use switchboard_core::{ChannelError, Epoch, NodeError, PublishOptions, StreamPosition};
use switchboard_protocols::centrifugo::{self as cf, Data};

use crate::broker::control::glob_match;
use crate::state::Shared;
use crate::transport::http::{read_body, Body, BodyError};
use crate::transport::{Endpoint, RequestCtx, ResponseFuture, Route};

pub(crate) mod cluster;
mod methods;

/// Path prefix of the API.
pub const PREFIX: &str = "/api/";

#[derive(Deserialize)]
struct PublishBody {
    channel: String,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
struct BroadcastBody {
    channels: Vec<String>,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
struct ChannelBody {
    channel: String,
}

#[derive(Deserialize)]
struct HistoryBody {
    channel: String,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    since: Option<cf::StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct ChannelsBody {
    #[serde(default)]
    pattern: Option<String>,
}

#[derive(Deserialize)]
struct DisconnectBody {
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct UserChannelBody {
    user: String,
    channel: String,
    #[serde(default)]
    client: Option<String>,
}

/// The API's methods (`POST /api/<method>`).
pub const METHODS: &[&str] = &[
    "publish",
    "broadcast",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "disconnect",
    "subscribe",
    "unsubscribe",
];

/// The HTTP API endpoint: every request under [`PREFIX`].
pub(crate) struct Api;

impl Endpoint for Api {
    fn route(&self) -> Route {
        Route::Prefix(PREFIX)
    }

    fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture {
        Box::pin(async move { handle(req, &ctx.shared).await })
    }
}

/// Answer one request under [`PREFIX`].
pub(crate) async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let method = req.uri().path()[PREFIX.len()..].to_string();
    // An unknown path under /api/ is a 404 whatever the HTTP method, like any other path.
    if !METHODS.contains(&method.as_str()) {
        return plain(StatusCode::NOT_FOUND, "unknown method");
    }
    if req.method() != Method::POST {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if !authorized(req.headers(), shared.config.api_key.as_deref()) {
        return plain(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let limit = shared.config.max_message_size.saturating_add(64 * 1024);
    let body = match read_body(req.into_body(), limit, shared.config.body_timeout).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        Err(BodyError::TimedOut) => return body_timed_out(),
        Err(BodyError::Broken) => return plain(StatusCode::BAD_REQUEST, "body not received"),
    };
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    match call(&method, body, shared).await {
        Ok(answer) => json_response(answer),
        Err(Fail::BadJson(e)) => plain_owned(StatusCode::BAD_REQUEST, format!("bad request: {e}")),
        Err(Fail::Unavailable(e)) => {
            let mut r = json_response(json!({ "error": e }).to_string());
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

/// 408 for a body that did not arrive in time; the connection is closed after it (the rest
/// of the body may still come and cannot be told apart from a next request).
pub(crate) fn body_timed_out() -> Response<Body> {
    let mut r = plain(
        StatusCode::REQUEST_TIMEOUT,
        "request body not received in time",
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A JSON answer, already serialised.
type Json = String;

/// `{"result": ...}`.
#[derive(Serialize)]
struct Success<T> {
    result: T,
}

/// The `history` result: publications with their data embedded verbatim.
#[derive(Serialize)]
struct HistoryAnswer {
    publications: Vec<cf::Publication>,
    offset: u64,
    epoch: String,
}

/// The `presence` result, by client id.
#[derive(Serialize)]
struct PresenceAnswer {
    presence: BTreeMap<String, cf::ClientInfo>,
}

/// `v` as JSON text. Serialising to text cannot fail for the answer types above (string map
/// keys, raw values written as they are); should it anyway, the caller gets an internal error
/// rather than a dropped connection.
fn to_json(v: &impl Serialize) -> Json {
    serde_json::to_string(v).unwrap_or_else(|e| {
        tracing::error!("API answer not serialisable: {e}");
        json!({ "error": cf_error(&cf::Error::INTERNAL) }).to_string()
    })
}

/// Why a call gets an HTTP error rather than a JSON answer.
pub(crate) enum Fail {
    /// A body that does not parse as the method's request (400).
    BadJson(serde_json::Error),
    /// The broker cannot be reached: nothing was done, retry later (503). Carries the
    /// JSON error object (with `"temporary": true`).
    Unavailable(Value),
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Fail> {
    serde_json::from_slice(body).map_err(Fail::BadJson)
}

/// A refused call: its JSON error, and whether it is temporary (an unreachable broker).
struct ApiError {
    body: Value,
    temporary: bool,
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        ApiError {
            body: node_error(&e),
            temporary: e.is_temporary(),
        }
    }
}

/// The JSON answer for a node result: a temporary broker failure becomes a 503.
fn node_outcome<T: Serialize>(r: Result<T, impl Into<ApiError>>) -> Result<Json, Fail> {
    match r.map_err(Into::into) {
        Ok(v) => Ok(to_json(&Success { result: v })),
        Err(e) if e.temporary => Err(Fail::Unavailable(e.body)),
        Err(e) => Ok(json!({ "error": e.body }).to_string()),
    }
}

/// Runs API method `method` (one of [`METHODS`]) with its JSON `body`.
pub(crate) async fn call(method: &str, body: &[u8], shared: &Shared) -> Result<Json, Fail> {
    use methods::*;
    match method {
        "publish" => api_publish(shared, body).await,
        "broadcast" => api_broadcast(shared, body).await,
        "presence" => api_presence(shared, body).await,
        "presence_stats" => api_presence_stats(shared, body).await,
        "history" => api_history(shared, body).await,
        "history_remove" => api_history_remove(shared, body).await,
        "info" => api_info(shared, body).await,
        "disconnect" => api_disconnect(shared, body).await,
        "subscribe" | "unsubscribe" => api_subscribe(shared, body, method).await,
        "channels" => api_channels(shared, body).await,
        // `handle` only lets the methods matched above through.
        _ => Ok(json!({ "error": cf_error(&cf::Error::NOT_AVAILABLE) }).to_string()),
    }
}

async fn publish(shared: &Shared, channel: &str, data: &RawValue) -> Result<Value, ApiError> {
    shared
        .hub
        .namespaces()
        .options(channel)
        .map_err(NodeError::from)?;
    let payload = Data::from_json(data.get().to_owned())
        .map_err(|_| ApiError {
            body: cf_error(&cf::Error::BAD_REQUEST),
            temporary: false,
        })?
        .into_payload();
    let position = shared
        .node
        .publish(channel, payload, PublishOptions::default(), None)
        .await
        .map_err(ApiError::from)?;
    Ok(match position {
        Some(p) if p.offset > 0 => json!({ "offset": p.offset, "epoch": cf::wire_epoch(p.epoch) }),
        _ => json!({}),
    })
}

/// Parses `body` as the request of API method `method` and derives from it what the handler
/// derives before it touches the hub (publication data, the history query, client ids, the
/// channel pattern applied to a name). `Err` carries the reason when the request would be
/// answered `400`. Public for the fuzz targets (`crates/server/fuzz`): the body handling of
/// every method, without a server.
#[doc(hidden)]
pub fn check_request(method: &str, body: &[u8]) -> Result<(), String> {
    let bad = |f: Fail| match f {
        Fail::BadJson(e) => e.to_string(),
        Fail::Unavailable(v) => v.to_string(),
    };
    let data = |raw: &RawValue| {
        Data::from_json(raw.get().to_owned())
            .map(Data::into_payload)
            .map_err(|e| e.to_string())
    };
    match method {
        "publish" => {
            let b: PublishBody = parse(body).map_err(bad)?;
            data(&b.data)?;
        }
        "broadcast" => {
            let b: BroadcastBody = parse(body).map_err(bad)?;
            data(&b.data)?;
        }
        "history" => {
            let b: HistoryBody = parse(body).map_err(bad)?;
            let _ = b.limit.map(usize::try_from);
            let _ = b
                .since
                .map(|p| StreamPosition::new(p.offset, Epoch::from_client(&p.epoch)));
            let _ = b.reverse;
        }
        "channels" => {
            let b: ChannelsBody = parse(body).map_err(bad)?;
            let pattern = b.pattern.unwrap_or_default();
            glob_match(&pattern, "chat:room1");
            glob_match(&pattern, &pattern);
        }
        "disconnect" => {
            let b: DisconnectBody = parse(body).map_err(bad)?;
            let _ = b.client.as_deref().map(str::parse::<u64>);
            let _ = b.user;
        }
        "subscribe" | "unsubscribe" => {
            let b: UserChannelBody = parse(body).map_err(bad)?;
            let _ = b.client.as_deref().map(str::parse::<u64>);
            let _ = (b.user, b.channel);
        }
        "info" => {}
        _ => {
            let b: ChannelBody = parse(body).map_err(bad)?;
            let _ = b.channel;
        }
    }
    Ok(())
}

/// The JSON error of a failed node operation.
fn node_error(e: &NodeError) -> Value {
    match e {
        NodeError::Channel(c) => channel_error(c.clone()),
        NodeError::Hub(_) => cf_error(&cf::Error::UNKNOWN_CHANNEL),
        NodeError::Broker(b) if b.is_temporary() => json!({
            "code": cf::Error::INTERNAL.code,
            "message": format!("broker unavailable, retry later ({b})"),
            "temporary": true,
        }),
        NodeError::Broker(b) => {
            json!({ "code": cf::Error::INTERNAL.code, "message": b.to_string() })
        }
    }
}

fn cf_error(e: &cf::Error) -> Value {
    json!({ "code": e.code, "message": e.message })
}

fn channel_error(e: ChannelError) -> Value {
    cf_error(&match e {
        ChannelError::NotAvailable => cf::Error::NOT_AVAILABLE,
        ChannelError::UnrecoverablePosition => cf::Error::UNRECOVERABLE_POSITION,
        _ => cf::Error::UNKNOWN_CHANNEL,
    })
}

fn json_data(bytes: &[u8]) -> Option<Data> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| Data::from_json(s.to_owned()).ok())
}

/// Constant-time comparison of the presented key with the configured one.
fn authorized(headers: &http::HeaderMap, key: Option<&str>) -> bool {
    let Some(key) = key else { return false };
    let presented = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("apikey "))
        });
    let Some(presented) = presented else {
        return false;
    };
    let (a, b) = (presented.as_bytes(), key.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_response(body: Json) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    plain_owned(status, body.to_string())
}

fn plain_owned(status: StatusCode, body: String) -> Response<Body> {
    let v = json!({ "error": { "code": status.as_u16(), "message": body } });
    let mut r = json_response(v.to_string());
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn deeply_nested_data_is_embedded_verbatim() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let publication = cf::Publication {
            data: Some(Data::from_json(deep.clone()).unwrap()),
            ..Default::default()
        };
        // A `Value` tree cannot hold it (serde_json's nesting limit)...
        assert!(serde_json::to_value(&publication).is_err());
        // ... the answer written as text embeds it as published.
        let text = to_json(&Success {
            result: HistoryAnswer {
                publications: vec![publication],
                offset: 0,
                epoch: String::new(),
            },
        });
        assert!(text.starts_with(r#"{"result":{"publications":[{"data":[[["#));
        assert!(text.contains(&deep));
    }

    #[test]
    fn glob_patterns() {
        // Empty pattern: everything.
        assert!(glob_match("", "a"));
        assert!(glob_match("", ""));
        // Literal: the whole name, nothing more or less.
        assert!(glob_match("chat", "chat"));
        assert!(!glob_match("chat", "chats"));
        assert!(!glob_match("chat", "cha"));
        // Prefix, suffix, infix.
        assert!(glob_match("chat:*", "chat:room1"));
        assert!(glob_match("chat:*", "chat:"));
        assert!(!glob_match("chat:*", "chat"));
        assert!(!glob_match("chat:*", "news:chat:x"));
        assert!(glob_match("*:1", "news:1"));
        assert!(!glob_match("*:1", "news:12"));
        assert!(glob_match("*room*", "my-room-7"));
        assert!(!glob_match("*room*", "roo"));
        // `*` spans namespace separators; several stars need backtracking.
        assert!(glob_match("a*b*c", "a:x:b:y:c"));
        assert!(glob_match("a*b*c", "abbbc"));
        assert!(!glob_match("a*b*c", "a:x:c:b"));
        assert!(glob_match("*a*a", "aaa"));
        assert!(!glob_match("*a*ab", "aaa"));
        assert!(glob_match("***", "x"));
        // Other glob syntax is literal.
        assert!(glob_match("a?c", "a?c"));
        assert!(!glob_match("a?c", "abc"));
        assert!(!glob_match("[ab]", "a"));
        // Multi-byte names match byte-wise, which is exact for UTF-8.
        assert!(glob_match("çà*", "çà:é"));
        assert!(!glob_match("*é", "e"));
    }

    #[test]
    fn key_checks() {
        assert!(authorized(&headers(&[("x-api-key", "k1")]), Some("k1")));
        assert!(authorized(
            &headers(&[("authorization", "apikey k1")]),
            Some("k1")
        ));
        assert!(!authorized(&headers(&[("x-api-key", "k2")]), Some("k1")));
        assert!(!authorized(&headers(&[("x-api-key", "k1x")]), Some("k1")));
        assert!(!authorized(&headers(&[]), Some("k1")));
        assert!(
            !authorized(&headers(&[("x-api-key", "")]), None),
            "no configured key: the API is off"
        );
    }
}
