//! Every channel operation of the Socket.IO driver, in one place: registering a socket in
//! the hub, joining its namespace, subscribe / unsubscribe / publish with the same
//! permission checks as the other protocols, and namespace broadcasts.
//!
//! They are `async` although the in-memory hub answers at once, so that a hub facade whose
//! calls wait (a broker between nodes) can replace these bodies without touching callers.
use std::sync::Arc;

use switchboard_core::{
    ClientCtx, ClientInfo, ConnHandle, ConnInfo, HubError, Outbox, Payload, PermissionError,
    PublishOptions,
};
use switchboard_protocols::socketio::namespace_channel;

use crate::server::Shared;

/// Why a channel operation was refused, as told to the client in the ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChanError {
    /// Invalid name, unknown namespace, or a reserved channel.
    UnknownChannel,
    /// The permission checks said no.
    PermissionDenied,
    /// The channel is full.
    LimitExceeded,
    /// The connection is gone.
    Closed,
}

impl ChanError {
    /// The message sent in the ack.
    pub(crate) fn message(self) -> &'static str {
        match self {
            ChanError::UnknownChannel => "unknown channel",
            ChanError::PermissionDenied => "permission denied",
            ChanError::LimitExceeded => "limit exceeded",
            ChanError::Closed => "connection closed",
        }
    }
}

fn hub_error(e: HubError) -> ChanError {
    match e {
        HubError::InvalidChannel | HubError::UnknownNamespace(_) => ChanError::UnknownChannel,
        HubError::RoomFull { .. } | HubError::TooManyConnections { .. } => ChanError::LimitExceeded,
        _ => ChanError::Closed,
    }
}

fn permission_error(e: PermissionError) -> ChanError {
    match e {
        PermissionError::UnknownChannel => ChanError::UnknownChannel,
        _ => ChanError::PermissionDenied,
    }
}

/// Registers one Socket.IO socket (one namespace of one client) in the hub.
pub(crate) async fn register(
    shared: &Shared,
    info: ConnInfo,
) -> Result<(ConnHandle, Outbox), HubError> {
    shared.hub.register(info)
}

/// Makes the socket a member of its namespace's broadcast channel, and of the channels its
/// connection token grants (server-side subscriptions: no permission check).
pub(crate) async fn join_namespace(
    shared: &Shared,
    handle: &ConnHandle,
    nsp: &str,
    token_channels: &[String],
) -> Result<(), ChanError> {
    shared
        .hub
        .subscribe(handle, &namespace_channel(nsp))
        .map_err(hub_error)?;
    for channel in token_channels {
        if let Err(e) = shared.hub.subscribe(handle, channel) {
            tracing::debug!(%channel, "socket.io: token channel not joined: {e}");
        }
    }
    Ok(())
}

/// A client's `subscribe`: the hub's permission check, then the join.
pub(crate) async fn subscribe(
    shared: &Shared,
    handle: &ConnHandle,
    channel: &str,
) -> Result<(), ChanError> {
    let ctx = ClientCtx::for_conn(handle);
    shared
        .hub
        .check_subscribe(&ctx, channel)
        .map_err(permission_error)?;
    shared.hub.subscribe(handle, channel).map_err(hub_error)
}

/// A client's `unsubscribe`. Returns whether it was subscribed.
pub(crate) async fn unsubscribe(shared: &Shared, handle: &ConnHandle, channel: &str) -> bool {
    shared.hub.unsubscribe(handle, channel)
}

/// A client's `publish`: the hub's permission check, then the publication (delivered to the
/// publisher too when it is subscribed, as for the other protocols). Returns the offset when
/// the channel keeps history.
pub(crate) async fn publish(
    shared: &Shared,
    handle: &ConnHandle,
    channel: &str,
    payload: Payload,
) -> Result<(), ChanError> {
    let ctx = ClientCtx::for_conn(handle);
    shared
        .hub
        .check_publish(&ctx, channel)
        .map_err(permission_error)?;
    let info = ClientInfo {
        client: handle.id().to_string(),
        user: ctx.user,
        conn_info: handle.info().conn_info.clone(),
        chan_info: None,
    };
    // The name was validated by the permission check.
    shared.hub.publish_with_info(
        channel,
        payload,
        PublishOptions::from_conn(handle.id()),
        Some(Arc::new(info)),
    );
    Ok(())
}

/// An event broadcast to every socket of namespace `nsp` (the sender too, unless
/// `exclude_sender`). Any connected socket may broadcast in its namespace.
pub(crate) async fn broadcast(
    shared: &Shared,
    handle: &ConnHandle,
    nsp: &str,
    payload: Payload,
    exclude_sender: bool,
) {
    let opts = if exclude_sender {
        PublishOptions::except_sender(handle.id())
    } else {
        PublishOptions::from_conn(handle.id())
    };
    shared.hub.publish(&namespace_channel(nsp), payload, opts);
}
