//! Every channel operation of the Socket.IO driver, in one place: registering a socket in
//! the hub, joining its namespace, subscribe / unsubscribe / publish with the same
//! permission checks as the other protocols, and namespace broadcasts.
//!
//! Everything goes through the node facade ([`switchboard_core::Node`]), so with a shared
//! broker a Socket.IO publication reaches every node, and a subscription makes this node
//! listen to the channel. Permission checks are the hub's, as for the other protocols.

use switchboard_core::{
    ConnHandle, ConnInfo, HubError, NodeError, Outbox, Payload, PublishOptions, StreamPosition,
    SubscribeOptions,
};
use switchboard_protocols::socketio::namespace_channel;

use crate::protocol::channels::{ClientOps, OpError};
use crate::state::Shared;

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
    /// The shared broker cannot be reached right now; retrying later may work.
    Unavailable,
}

impl ChanError {
    /// The message sent in the ack.
    pub(crate) fn message(self) -> &'static str {
        match self {
            ChanError::UnknownChannel => "unknown channel",
            ChanError::PermissionDenied => "permission denied",
            ChanError::LimitExceeded => "limit exceeded",
            ChanError::Closed => "connection closed",
            ChanError::Unavailable => "temporarily unavailable",
        }
    }
}

impl From<OpError> for ChanError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::InvalidChannel
            | OpError::UnknownChannel
            | OpError::NotAvailable
            | OpError::UnrecoverablePosition => ChanError::UnknownChannel,
            OpError::PermissionDenied => ChanError::PermissionDenied,
            OpError::LimitExceeded => ChanError::LimitExceeded,
            OpError::Closed => ChanError::Closed,
            OpError::Unavailable => ChanError::Unavailable,
        }
    }
}

fn node_error(e: NodeError) -> ChanError {
    OpError::from(e).into()
}

/// Registers one Socket.IO socket (one namespace of one client) in the hub.
pub(crate) async fn register(
    shared: &Shared,
    info: ConnInfo,
) -> Result<(ConnHandle, Outbox), HubError> {
    let registered = shared.hub.register(info);
    if let Err(HubError::TooManyUserConnections { .. }) = registered {
        shared
            .counters
            .bump(crate::conn::stats::Counter::RejectedUserConnections);
    }
    registered
}

/// Makes the socket a member of its namespace's broadcast channel, and of the channels its
/// connection token grants (server-side subscriptions: no permission check). Returns each
/// channel joined with the position the join reported (see [`subscribe`]).
pub(crate) async fn join_namespace(
    shared: &Shared,
    handle: &ConnHandle,
    nsp: &str,
    token_channels: &[String],
) -> Result<Vec<(String, StreamPosition)>, ChanError> {
    let ns_channel = namespace_channel(nsp);
    let mut joined = vec![(
        ns_channel.clone(),
        join_channel(shared, handle, &ns_channel).await?,
    )];
    for channel in token_channels {
        match join_channel(shared, handle, channel).await {
            Ok(position) => joined.push((channel.clone(), position)),
            Err(e) => tracing::debug!(%channel, "socket.io: token channel not joined: {e:?}"),
        }
    }
    Ok(joined)
}

/// Joins `channel` without a permission check (a server-side subscription). Returns the
/// position the join reported (see [`subscribe`]).
pub(crate) async fn join_channel(
    shared: &Shared,
    handle: &ConnHandle,
    channel: &str,
) -> Result<StreamPosition, ChanError> {
    Ok(ClientOps::new(shared, handle)
        .join(channel, SubscribeOptions::default())
        .await?
        .position)
}

/// A client's `subscribe`: the hub's permission check, then the join. Returns the
/// channel's position at the join: with a shared broker, publications at or below it may
/// also have been queued live and are to be skipped (the node facade's rule).
pub(crate) async fn subscribe(
    shared: &Shared,
    handle: &ConnHandle,
    channel: &str,
) -> Result<StreamPosition, ChanError> {
    Ok(ClientOps::new(shared, handle)
        .subscribe(channel, SubscribeOptions::default(), false)
        .await?
        .position)
}

/// A client's `unsubscribe`. Returns whether it was subscribed.
pub(crate) async fn unsubscribe(shared: &Shared, handle: &ConnHandle, channel: &str) -> bool {
    ClientOps::new(shared, handle).unsubscribe(channel).await
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
    ClientOps::new(shared, handle)
        .publish(channel, payload)
        .await?;
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
) -> Result<(), ChanError> {
    let opts = if exclude_sender {
        PublishOptions::except_sender(handle.id())
    } else {
        PublishOptions::from_conn(handle.id())
    };
    shared
        .node
        .publish(&namespace_channel(nsp), payload, opts, None)
        .await
        .map(|_| ())
        .map_err(node_error)
}
