//! The Pusher HTTP API, `/apps/{id}/…`, signed with the app's secret (see
//! [`switchboard_protocols::pusher::auth::verify_api_request`]): trigger events, list
//! channels and presence users, terminate a user's connections. A bad signature or a stale
//! timestamp is 401; an unknown app 404. Everything covers every node: channel counts come
//! from a survey of the nodes (`crate::api::cluster`), presence from the core, and
//! `terminate_connections` is the server API's disconnect-by-user, sent to every node.
//! That call is also served at `/users/{id}/terminate_connections` (the app named by the
//! request's `auth_key`), where the PyPI `pusher` SDK sends it.
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_core::{NodeError, PublishOptions};
use switchboard_protocols::pusher::{self as wire, auth, ChannelKind};

use super::{conn_of_socket, PusherState};
use crate::api::cluster::{cluster_channels, cluster_command};
use crate::broker::control::Command;
use crate::state::Shared;
use crate::transport::http::{read_body, text, Body};
use crate::transport::{Endpoint, RequestCtx, ResponseFuture, Route};

/// Most channels of one event.
const MAX_CHANNELS: usize = 100;
/// Most events of one batch.
const MAX_BATCH: usize = 10;

/// The endpoint `/apps/`.
pub(crate) struct PusherApi(pub(crate) Arc<PusherState>);

impl Endpoint for PusherApi {
    fn route(&self) -> Route {
        Route::Prefix("/apps/")
    }

    fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture {
        Box::pin(handle(Arc::clone(&self.0), req, ctx.shared))
    }
}

/// The endpoint `/users/`: `terminate_connections` without the `/apps/{id}` prefix, as the
/// PyPI `pusher` SDK (3.3) sends it. The app is the one whose key signed the request.
pub(crate) struct PusherUserApi(pub(crate) Arc<PusherState>);

impl Endpoint for PusherUserApi {
    fn route(&self) -> Route {
        Route::Prefix("/users/")
    }

    fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            let params = req.uri().query().map(auth::parse_query).unwrap_or_default();
            let key = params.iter().find(|(k, _)| k == "auth_key").map(|(_, v)| v);
            let Some(app) = key.and_then(|k| state.by_key(k)).cloned() else {
                return text(StatusCode::NOT_FOUND, "not found");
            };
            let tail = req.uri().path().trim_start_matches('/').to_string();
            serve(app, tail, req, ctx.shared).await
        })
    }
}

fn json_response(status: StatusCode, v: Value) -> Response<Body> {
    let mut r = Response::new(crate::transport::http::Body::new(Bytes::from(
        v.to_string(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: String) -> Response<Body> {
    json_response(status, json!({ "error": message }))
}

/// 503 when the broker is unreachable (retry), 400 for anything else the core refused.
fn node_error(e: NodeError) -> Response<Body> {
    let status = if e.is_temporary() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    };
    error(status, e.to_string())
}

async fn handle(
    state: Arc<PusherState>,
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Response<Body> {
    let path = req.uri().path();
    let rest = path.trim_start_matches("/apps/");
    let (app_id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(app) = state.by_id(app_id).cloned() else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let tail = tail.to_string();
    serve(app, tail, req, shared).await
}

/// Answers one signed request of `app`; `tail` is the path after the app's prefix.
async fn serve(
    app: Arc<crate::config::PusherApp>,
    tail: String,
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let params = req.uri().query().map(auth::parse_query).unwrap_or_default();
    let limit = shared.config.max_message_size.saturating_add(64 * 1024);
    let body = match read_body(req.into_body(), limit, shared.config.body_timeout).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::BAD_REQUEST, "body not received".into()),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    if let Err(e) = auth::verify_api_request(
        &app.key,
        &app.secret,
        method.as_str(),
        &path,
        &params,
        &body,
        now,
    ) {
        return error(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let segments: Vec<&str> = tail.split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::POST, ["events"]) => match serde_json::from_slice::<Event>(&body) {
            Ok(ev) => trigger(&shared, vec![ev], false).await,
            Err(e) => error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
        },
        (&Method::POST, ["batch_events"]) => match serde_json::from_slice::<Batch>(&body) {
            Ok(b) if b.batch.len() <= MAX_BATCH => trigger(&shared, b.batch, true).await,
            Ok(_) => error(StatusCode::BAD_REQUEST, "at most 10 events".into()),
            Err(e) => error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
        },
        (&Method::GET, ["channels"]) => {
            channels(&shared, param("filter_by_prefix"), param("info")).await
        }
        (&Method::GET, ["channels", channel]) => {
            channel_info(&shared, channel, param("info")).await
        }
        (&Method::GET, ["channels", channel, "users"]) => users(&shared, channel).await,
        (&Method::POST, ["users", user, "terminate_connections"]) => {
            let command = Command::Disconnect {
                user: Some(user.to_string()),
                client: None,
            };
            match cluster_command(&shared, command).await {
                Ok(_) => json_response(StatusCode::OK, json!({})),
                Err(e) => node_error(e),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

#[derive(Deserialize)]
struct Event {
    name: String,
    data: Value,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
}

#[derive(Deserialize)]
struct Batch {
    batch: Vec<Event>,
}

async fn trigger(shared: &Shared, events: Vec<Event>, batch: bool) -> Response<Body> {
    for ev in &events {
        let count = ev.channels.len() + usize::from(ev.channel.is_some());
        if count == 0 || count > MAX_CHANNELS {
            return error(StatusCode::BAD_REQUEST, "1 to 100 channels".into());
        }
        let data = wire::data_string(&ev.data);
        if data.len() > wire::MAX_EVENT_DATA {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "data over 10 KB".into());
        }
        if ev.name.len() > 200 {
            return error(StatusCode::BAD_REQUEST, "event name too long".into());
        }
        if let Some(c) = ev
            .channels
            .iter()
            .chain(ev.channel.iter())
            .find(|c| !wire::valid_event_channel(c))
        {
            return error(StatusCode::BAD_REQUEST, format!("invalid channel {c:?}"));
        }
    }
    for ev in events {
        let data = wire::data_string(&ev.data);
        let opts = PublishOptions {
            exclude: ev.socket_id.as_deref().and_then(conn_of_socket),
            publisher: None,
            skip_history: false,
        };
        for channel in ev.channels.iter().chain(ev.channel.iter()) {
            let payload = wire::envelope(&ev.name, &data, None);
            if let Err(e) = shared.node.publish(channel, payload, opts, None).await {
                return node_error(e);
            }
        }
    }
    if batch {
        json_response(StatusCode::OK, json!({ "batch": [] }))
    } else {
        json_response(StatusCode::OK, json!({}))
    }
}

fn wants(info: Option<&str>, what: &str) -> bool {
    info.is_some_and(|i| i.split(',').any(|x| x.trim() == what))
}

/// Presence subscriptions and distinct user ids of a presence channel (the core's own user
/// count is by connection user; Pusher members are named by their `channel_data`).
async fn presence_counts(shared: &Shared, channel: &str) -> (usize, usize) {
    let presence = shared.node.presence(channel).await.unwrap_or_default();
    let users: std::collections::HashSet<String> = presence
        .values()
        .filter_map(|i| i.chan_info.as_deref().and_then(wire::parse_member))
        .map(|m| m.user_id)
        .collect();
    (presence.len(), users.len())
}

async fn user_count(shared: &Shared, channel: &str) -> usize {
    presence_counts(shared, channel).await.1
}

async fn channels(shared: &Shared, prefix: Option<&str>, info: Option<&str>) -> Response<Body> {
    let prefix = prefix.unwrap_or("");
    let with_users = wants(info, "user_count");
    if with_users && !prefix.starts_with(super::PRESENCE_PREFIX) {
        return error(
            StatusCode::BAD_REQUEST,
            "user_count needs filter_by_prefix=presence-".into(),
        );
    }
    // Pusher names have no `*`: the prefix is a glob as it stands.
    let listed = match cluster_channels(shared, format!("{prefix}*")).await {
        Ok(listed) => listed,
        Err(e) => return node_error(e),
    };
    let mut out = BTreeMap::new();
    for (name, members) in listed {
        if members == 0 || !name.starts_with(prefix) || !wire::valid_channel_name(&name) {
            continue;
        }
        let mut attrs = serde_json::Map::new();
        if with_users {
            attrs.insert("user_count".into(), json!(user_count(shared, &name).await));
        }
        if wants(info, "subscription_count") {
            attrs.insert("subscription_count".into(), json!(members));
        }
        out.insert(name.to_string(), Value::Object(attrs));
    }
    json_response(StatusCode::OK, json!({ "channels": out }))
}

async fn channel_info(shared: &Shared, channel: &str, info: Option<&str>) -> Response<Body> {
    if !wire::valid_channel_name(channel) {
        return error(StatusCode::BAD_REQUEST, "invalid channel".into());
    }
    let presence = ChannelKind::of(channel) == ChannelKind::Presence;
    let (subs, users) = if presence {
        presence_counts(shared, channel).await
    } else {
        // Channel names have no `*`: the name is a glob matching itself alone.
        match cluster_channels(shared, channel.to_string()).await {
            Ok(listed) => (listed.get(channel).copied().unwrap_or(0), 0),
            Err(e) => return node_error(e),
        }
    };
    let mut v = serde_json::Map::new();
    v.insert("occupied".into(), json!(subs > 0));
    if wants(info, "subscription_count") {
        v.insert("subscription_count".into(), json!(subs));
    }
    if wants(info, "user_count") {
        if !presence {
            return error(
                StatusCode::BAD_REQUEST,
                "user_count is only for presence channels".into(),
            );
        }
        v.insert("user_count".into(), json!(users));
    }
    json_response(StatusCode::OK, Value::Object(v))
}

async fn users(shared: &Shared, channel: &str) -> Response<Body> {
    if ChannelKind::of(channel) != ChannelKind::Presence || !wire::valid_channel_name(channel) {
        return error(
            StatusCode::BAD_REQUEST,
            "users are only listed for presence channels".into(),
        );
    }
    let presence = shared.node.presence(channel).await.unwrap_or_default();
    let mut ids: Vec<String> = presence
        .values()
        .filter_map(|i| i.chan_info.as_deref().and_then(wire::parse_member))
        .map(|m| m.user_id)
        .collect();
    ids.sort();
    ids.dedup();
    let users: Vec<Value> = ids.into_iter().map(|id| json!({ "id": id })).collect();
    json_response(StatusCode::OK, json!({ "users": users }))
}
