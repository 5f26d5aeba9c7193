//! What the admin page shows: the page itself, the counters its charts are drawn from,
//! the connection lookup and the configuration with its secrets masked.
use bytes::Bytes;
use http::{header, HeaderValue, Response};
use serde_json::{json, Value};
use switchboard_core::Hub;

use crate::config::ServerConfig;
use crate::conn::stats::LATENCY_BOUNDS;
use crate::state::Shared;
use crate::transport::http::Body;

/// What a masked secret reads as.
const MASK: &str = "••••••";

/// The page, with headers that keep it from being framed or from loading anything but
/// itself.
pub(super) fn response() -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(super::ADMIN_HTML.as_bytes())));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The counters behind the charts, read now: the page turns two readings a second apart
/// into rates, and the latency buckets into a p99.
pub(super) fn stats(shared: &Shared) -> Value {
    let hub = shared.hub.stats();
    let protocols: Vec<Value> = shared
        .counters
        .protocols()
        .iter()
        .map(|p| {
            use std::sync::atomic::Ordering::Relaxed;
            let latency = p.delivery_latency.snapshot();
            json!({
                "name": p.name,
                "connections": p.active.load(Relaxed),
                "received": p.received.messages.load(Relaxed),
                "sent": p.sent.messages.load(Relaxed),
                "latency_buckets": latency.buckets,
                "latency_sum": latency.sum_seconds,
            })
        })
        .collect();
    let broker = shared.node.broker_status();
    json!({
        "uptime_secs": shared.started.elapsed().as_secs_f64(),
        "draining": shared.admission.is_draining(),
        "connections": shared.counters.active(),
        "channels": hub.channels,
        "published": hub.published,
        "delivered": hub.delivered,
        "dropped": hub.dropped,
        "latency_bounds": LATENCY_BOUNDS,
        "protocols": protocols,
        "broker": { "kind": broker.kind, "connected": broker.connected },
        "rss_bytes": crate::memory::rss_bytes(),
    })
}

/// Connections on this node whose id is `query`, or whose user or address contains it
/// (an empty query lists the first ones), at most `limit`.
pub(super) fn lookup(hub: &Hub, query: &str, limit: usize) -> Value {
    let query = query.trim();
    let id: Option<u64> = query.parse().ok();
    let found = hub.find_connections(
        |conn, info| {
            query.is_empty()
                || id == Some(conn)
                || info.user.as_deref().is_some_and(|u| u.contains(query))
                || info.remote_addr.contains(query)
        },
        limit,
    );
    let list: Vec<Value> = found
        .into_iter()
        .map(|(conn, info)| {
            json!({
                "client": conn.to_string(),
                "user": info.user,
                "protocol": info.protocol,
                "address": info.remote_addr,
            })
        })
        .collect();
    json!({ "connections": list })
}

/// `url` with the password of its user part (`scheme://user:password@host`) masked.
fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((auth, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{MASK}@{host}"),
        None => url.to_owned(),
    }
}

/// The effective configuration as text, every secret replaced by a mask (public keys and
/// file paths are not secrets and stay).
pub(super) fn masked_config(config: &ServerConfig) -> String {
    let mut c = config.clone();
    let mask = |v: &mut Option<String>| {
        if v.is_some() {
            *v = Some(MASK.to_owned());
        }
    };
    mask(&mut c.token_hmac_secret);
    mask(&mut c.api_key);
    mask(&mut c.admin_password);
    c.broker = c.broker.as_deref().map(mask_url_password);
    for app in &mut c.pusher.apps {
        app.secret = MASK.to_owned();
    }
    format!("{c:#?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        let mut c = ServerConfig {
            token_hmac_secret: Some("hmac-s3cret".into()),
            api_key: Some("api-s3cret".into()),
            admin_password: Some("admin-s3cret".into()),
            broker: Some("redis://u:redis-s3cret@h:6379/0".into()),
            ..Default::default()
        };
        c.pusher.set_app(crate::config::PusherApp {
            id: "1".into(),
            key: "k".into(),
            secret: "pusher-s3cret".into(),
            webhooks: Vec::new(),
        });
        let text = masked_config(&c);
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("redis://u:••••••@h:6379/0"), "{text}");
        assert!(text.contains("listen"), "{text}");
        assert_eq!(mask_url_password("redis://h:1/0"), "redis://h:1/0");
    }
}
