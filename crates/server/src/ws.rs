//! The WebSocket upgrade: every check that can refuse a client happens here, before the
//! `101 Switching Protocols`, so refusals are plain HTTP answers a client can read.
//!
//! Order: origin (403) → handshake validity (400/405/426) → connection limit (503) → hub
//! registration → room join → 101. A full room is reported after the upgrade as close 1008
//! "room full". The connection itself is then run by [`crate::connection`] on its own
//! task once hyper hands over the socket.
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use switchboard_core::{ConnInfo, HubError, NodeError, SubscribeOptions};
use switchboard_protocols::raw;
use switchboard_websocket::handshake::{validate_server_request, ServerHandshake};

use crate::connection::{self, ConnParams};
use crate::http::{text, Body};
use crate::server::Shared;
use crate::shutdown::ShutdownToken;
use crate::stats::{ConnectionSlot, Counter};

/// Answer an upgrade request for raw room `room`.
pub(crate) async fn upgrade(
    mut req: Request<Incoming>,
    room: String,
    shared: Arc<Shared>,
    peer: SocketAddr,
    token: ShutdownToken,
) -> Response<Body> {
    let (handshake, slot) = match admit(&req, &shared, peer) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };

    let (handle, outbox) = match shared
        .hub
        .register(ConnInfo::new(peer.to_string(), raw::PROTOCOL))
    {
        Ok(pair) => pair,
        Err(e) => {
            // Only reachable when an embedder supplied a hub with its own connection limit.
            shared.counters.bump(Counter::RejectedMaxConnections);
            tracing::info!(%peer, "upgrade refused by the hub: {e}");
            return text(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
        }
    };

    // Join before answering 101: once the client sees its connection open it is a member,
    // so a message sent right after `open` by anyone in the room reaches it.
    let joined = match shared
        .node
        .subscribe(&handle, &room, SubscribeOptions::default())
        .await
    {
        Ok(_) => true,
        Err(NodeError::Hub(e @ (HubError::InvalidChannel | HubError::UnknownNamespace(_)))) => {
            // The path itself is not a usable room name: nothing to upgrade to.
            shared.counters.bump(Counter::RejectedBadHandshake);
            tracing::info!(%peer, %room, "upgrade refused: {e}");
            return text(StatusCode::BAD_REQUEST, "invalid room name");
        }
        Err(e) if e.is_temporary() => {
            // With a shared broker that cannot be reached, the member would miss what
            // other nodes publish: refuse now, the client retries.
            tracing::info!(%peer, %room, "upgrade refused: {e}");
            let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable");
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        Err(e) => {
            // Refused after the upgrade with close 1008 "room full" rather than with an HTTP
            // status, because browsers hide handshake statuses from scripts but show close
            // codes and reasons.
            shared.counters.bump(Counter::RejectedRoomFull);
            tracing::info!(%peer, %room, "join refused: {e}");
            false
        }
    };
    let echo = !query_flag_is_false(req.uri().query(), "echo");
    let params = ConnParams {
        room: room.into(),
        joined,
        echo,
        deflate: handshake.deflate.as_ref().map(|(params, _)| *params),
        peer,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let timeout = shared.config.handshake_timeout;
    tokio::spawn(async move {
        let upgraded = match tokio::time::timeout(timeout, on_upgrade).await {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "upgrade failed: {e}");
                return;
            }
            Err(_) => {
                shared.counters.bump(Counter::HandshakeTimeout);
                tracing::debug!(%peer, "upgrade did not complete in time");
                return;
            }
        };
        shared.counters.bump(Counter::Upgraded);
        connection::spawn(
            TokioIo::new(upgraded),
            handle,
            outbox,
            params,
            shared,
            token,
            slot,
        );
    });

    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = handshake.response_headers();
    response
}

/// Whether the query string sets `name` to a false value (`false`, `0`, `no`, `off`).
pub fn query_flag_is_false(query: Option<&str>, name: &str) -> bool {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .any(|(k, v)| {
            k == name
                && matches!(
                    v.to_ascii_lowercase().as_str(),
                    "false" | "0" | "no" | "off"
                )
        })
}

/// The checks every WebSocket endpoint makes before the `101`, in order: origin (403),
/// handshake validity (400/405/426), connection limit (503, with `Retry-After`). Each
/// refusal is counted and logged once. On success the caller holds a connection slot.
pub(crate) fn admit(
    req: &Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
) -> Result<(ServerHandshake, ConnectionSlot), Box<Response<Body>>> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if !shared.origins.allows(origin) {
        shared.counters.bump(Counter::RejectedOrigin);
        tracing::info!(%peer, origin = origin.unwrap_or(""), "upgrade refused: origin not allowed");
        return Err(Box::new(text(StatusCode::FORBIDDEN, "origin not allowed")));
    }

    let handshake = match validate_server_request(
        req.method(),
        req.version(),
        req.headers(),
        &shared.deflate,
        &|_offered| None,
    ) {
        Ok(h) => h,
        Err(rejection) => {
            shared.counters.bump(Counter::RejectedBadHandshake);
            tracing::debug!(%peer, reason = rejection.reason, "upgrade refused: bad handshake");
            let mut r = Response::new(Full::new(bytes::Bytes::from_static(
                rejection.reason.as_bytes(),
            )));
            *r.status_mut() = rejection.status;
            for (name, value) in rejection.extra_headers {
                r.headers_mut().insert(name, value);
            }
            return Err(Box::new(r));
        }
    };

    let Some(slot) = shared
        .counters
        .try_acquire_slot(shared.config.max_connections)
    else {
        shared.counters.bump(Counter::RejectedMaxConnections);
        tracing::info!(%peer, limit = shared.config.max_connections, "upgrade refused: too many connections");
        let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return Err(Box::new(r));
    };
    Ok((handshake, slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_flag() {
        assert!(query_flag_is_false(Some("echo=false"), "echo"));
        assert!(query_flag_is_false(Some("a=1&echo=0"), "echo"));
        assert!(!query_flag_is_false(Some("echo=true"), "echo"));
        assert!(!query_flag_is_false(Some("echoes=false"), "echo"));
        assert!(!query_flag_is_false(None, "echo"));
    }
}
