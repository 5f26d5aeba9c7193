//! The client operations every protocol offers, in one place: subscribe, unsubscribe,
//! publish, history and presence, each with the hub's permission checks, carried out
//! through the node facade ([`switchboard_core::Node`]) so they work on one node or many.
//! They fail with one error type, [`OpError`], which each protocol maps to its own codes
//! (Centrifugo's error replies, Socket.IO's ack messages, …).
use std::collections::HashMap;
use std::sync::Arc;

use switchboard_core::{
    ChannelError, ClientCtx, ClientInfo, ConnHandle, HistoryQuery, HistoryResult, HubError,
    NodeError, Payload, PermissionError, PresenceStats, PublishOptions, StreamPosition,
    SubscribeOptions, SubscribeResult,
};

use crate::state::Shared;

/// Drops the entries of a connection's subscription list that are for `channel`, and the
/// list's buffer once it is empty (an idle connection keeps no spare room); whether there was
/// one. Protocols keep a connection's subscriptions in such lists, sized to them.
pub(crate) fn forget_channel<T>(
    list: &mut Vec<T>,
    channel: &str,
    name: impl Fn(&T) -> &str,
) -> bool {
    let before = list.len();
    list.retain(|s| name(s) != channel);
    if list.is_empty() {
        *list = Vec::new();
    }
    list.len() != before
}

/// Why a client operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpError {
    /// A name no channel can have (empty, too long, control characters).
    #[error("invalid channel name")]
    InvalidChannel,
    /// No namespace holds the channel, or it is reserved.
    #[error("unknown channel")]
    UnknownChannel,
    /// The permission checks said no.
    #[error("permission denied")]
    PermissionDenied,
    /// The channel's namespace does not offer this (history, presence).
    #[error("not available")]
    NotAvailable,
    /// The channel or the server is full.
    #[error("limit exceeded")]
    LimitExceeded,
    /// A position the stream no longer holds (another epoch, or past its top).
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    /// The shared broker cannot be reached now; retrying later may work.
    #[error("temporarily unavailable")]
    Unavailable,
    /// The connection is gone.
    #[error("connection closed")]
    Closed,
}

impl From<HubError> for OpError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::InvalidChannel | HubError::UnknownNamespace(_) => OpError::UnknownChannel,
            HubError::RoomFull { .. }
            | HubError::TooManyConnections { .. }
            | HubError::TooManyUserConnections { .. }
            | HubError::TooManySubscriptions { .. } => OpError::LimitExceeded,
            _ => OpError::Closed,
        }
    }
}

impl From<NodeError> for OpError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Hub(e) => e.into(),
            NodeError::Channel(ChannelError::UnrecoverablePosition) => {
                OpError::UnrecoverablePosition
            }
            NodeError::Channel(ChannelError::NotAvailable) => OpError::NotAvailable,
            NodeError::Channel(_) => OpError::UnknownChannel,
            e if e.is_temporary() => OpError::Unavailable,
            NodeError::Broker(_) => OpError::Unavailable,
        }
    }
}

impl From<PermissionError> for OpError {
    fn from(e: PermissionError) -> Self {
        match e {
            PermissionError::UnknownChannel => OpError::UnknownChannel,
            PermissionError::NotAvailable => OpError::NotAvailable,
            _ => OpError::PermissionDenied,
        }
    }
}

/// Fails with [`OpError::InvalidChannel`] for a name no channel can have: a malformed
/// request, told apart from a refusal before any other check.
pub(crate) fn check_name(shared: &Shared, channel: &str) -> Result<(), OpError> {
    match shared.hub.namespaces().resolve(channel) {
        Err(ChannelError::InvalidName) => Err(OpError::InvalidChannel),
        _ => Ok(()),
    }
}

/// The operations of one client connection.
pub(crate) struct ClientOps<'a> {
    shared: &'a Shared,
    handle: &'a ConnHandle,
}

impl<'a> ClientOps<'a> {
    /// Operations on behalf of the connection `handle`.
    pub(crate) fn new(shared: &'a Shared, handle: &'a ConnHandle) -> Self {
        ClientOps { shared, handle }
    }

    /// Whether the client may subscribe to `channel` (`token_verified` when it presented a
    /// valid subscription token for it).
    pub(crate) fn check_subscribe(
        &self,
        channel: &str,
        token_verified: bool,
    ) -> Result<(), OpError> {
        let ctx = ClientCtx::for_conn(self.handle).with_subscription_token(token_verified);
        Ok(self.shared.hub.check_subscribe(&ctx, channel)?)
    }

    /// A client's subscription: [`check_subscribe`](Self::check_subscribe), then
    /// [`join`](Self::join).
    pub(crate) async fn subscribe(
        &self,
        channel: &str,
        opts: SubscribeOptions,
        token_verified: bool,
    ) -> Result<SubscribeResult, OpError> {
        self.check_subscribe(channel, token_verified)?;
        self.join(channel, opts).await
    }

    /// Joins `channel` without a permission check (server-side subscriptions: granted by a
    /// connection token or the API). With a shared broker, publications at or below the
    /// reported position may also be queued live and are to be skipped (the node's rule).
    pub(crate) async fn join(
        &self,
        channel: &str,
        opts: SubscribeOptions,
    ) -> Result<SubscribeResult, OpError> {
        Ok(self
            .shared
            .node
            .subscribe(self.handle, channel, opts)
            .await?)
    }

    /// Leaves `channel`; whether the connection was subscribed.
    pub(crate) async fn unsubscribe(&self, channel: &str) -> bool {
        self.shared.node.unsubscribe(self.handle, channel).await
    }

    /// A client's publication: the permission check, then the publish on every node, with
    /// the publisher's info (delivered to the publisher too when it is subscribed).
    pub(crate) async fn publish(
        &self,
        channel: &str,
        payload: Payload,
    ) -> Result<Option<StreamPosition>, OpError> {
        let ctx = ClientCtx::for_conn(self.handle);
        self.shared.hub.check_publish(&ctx, channel)?;
        self.publish_approved(channel, payload, false).await
    }

    /// A client's publication the application's backend accepted (the publish proxy stands
    /// in for the permission check): the publish on every node, with the publisher's info.
    /// `skip_history` (the backend's `skip_history`): delivered but not stored in history.
    pub(crate) async fn publish_approved(
        &self,
        channel: &str,
        payload: Payload,
        skip_history: bool,
    ) -> Result<Option<StreamPosition>, OpError> {
        let ctx = ClientCtx::for_conn(self.handle);
        let info = ClientInfo {
            client: self.handle.id().to_string(),
            user: ctx.user,
            conn_info: self.handle.info().conn_info.clone(),
            chan_info: None,
        };
        let opts = PublishOptions {
            skip_history,
            ..PublishOptions::from_conn(self.handle.id())
        };
        Ok(self
            .shared
            .node
            .publish(channel, payload, opts, Some(Arc::new(info)))
            .await?)
    }

    /// A client's history query, after the permission check.
    pub(crate) async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, OpError> {
        let ctx = ClientCtx::for_conn(self.handle);
        self.shared.hub.check_history(&ctx, channel)?;
        Ok(self.shared.node.history(channel, query).await?)
    }

    /// Who is in `channel` on every node, after the permission check.
    pub(crate) async fn presence(
        &self,
        channel: &str,
    ) -> Result<HashMap<String, ClientInfo>, OpError> {
        let ctx = ClientCtx::for_conn(self.handle);
        self.shared.hub.check_presence(&ctx, channel)?;
        Ok(self.shared.node.presence(channel).await?)
    }

    /// How many connections and users are in `channel` on every node, after the
    /// permission check.
    pub(crate) async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, OpError> {
        let ctx = ClientCtx::for_conn(self.handle);
        self.shared.hub.check_presence(&ctx, channel)?;
        Ok(self.shared.node.presence_stats(channel).await?)
    }
}
