//! Error and close-reason types shared by the hub, connections and outboxes.

use thiserror::Error;

/// Why a connection's outbox was closed.
///
/// The core only records the reason; the server decides how to tell the peer
/// (for WebSocket, [`CloseReason::close_code`] is the recommended mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// Ordinary end of the connection: the handle was dropped or closed by the
    /// application, or the writer went away.
    Normal,
    /// The connection could not keep up: its outbox overflowed under
    /// [`SlowConsumerPolicy::Close`](crate::SlowConsumerPolicy::Close).
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// The application disconnected this connection on purpose (an admin kick,
    /// an expired credential, a policy violation).
    Kicked,
    /// The connection's channel lost publications that the server could not deliver
    /// (a gap in a shared stream that history no longer holds): the client must reload
    /// what it shows and reconnect.
    MissedPublications,
    /// The server is draining before a restart: the client should reconnect (to
    /// another node) at once.
    Restart,
}

impl CloseReason {
    /// Recommended WebSocket close code (RFC 6455 §7.4.1) for this reason.
    ///
    /// A slow consumer gets 1008 (policy violation) so that clients can tell a
    /// deliberate server-side disconnect from a network failure.
    pub const fn close_code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::SlowConsumer => 1008,
            CloseReason::Shutdown => 1001,
            CloseReason::Kicked => 1008,
            // Private-use range (RFC 6455 §7.4.2), documented in the README.
            CloseReason::MissedPublications => 4500,
            CloseReason::Restart => 1012,
        }
    }

    /// Recommended close reason text to send with [`close_code`](Self::close_code).
    pub const fn close_text(self) -> &'static str {
        match self {
            CloseReason::Normal => "",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::Kicked => "disconnected",
            CloseReason::MissedPublications => "missed publications",
            CloseReason::Restart => "service restart",
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            CloseReason::Normal => "normal",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Kicked => "kicked",
            CloseReason::MissedPublications => "missed publications",
            CloseReason::Restart => "restart",
        };
        f.write_str(s)
    }
}

/// Errors returned by [`Hub`](crate::Hub) operations.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HubError {
    /// `register` was refused because [`HubLimits::max_connections`](crate::HubLimits::max_connections)
    /// connections are already registered.
    #[error("too many connections (limit {limit})")]
    TooManyConnections {
        /// The configured limit.
        limit: usize,
    },
    /// `subscribe` was refused because the channel already has
    /// [`HubLimits::max_room_members`](crate::HubLimits::max_room_members) members.
    #[error("room is full (limit {limit})")]
    RoomFull {
        /// The configured limit.
        limit: usize,
    },
    /// `register` was refused because the user already has
    /// [`HubLimits::max_connections_per_user`](crate::HubLimits::max_connections_per_user)
    /// connections.
    #[error("too many connections of this user (limit {limit})")]
    TooManyUserConnections {
        /// The configured limit.
        limit: usize,
    },
    /// `subscribe` was refused because the connection is already a member of
    /// [`HubLimits::max_subscriptions_per_connection`](crate::HubLimits::max_subscriptions_per_connection)
    /// channels.
    #[error("too many subscriptions (limit {limit})")]
    TooManySubscriptions {
        /// The configured limit.
        limit: usize,
    },
    /// The connection has already been closed or removed from the hub.
    #[error("connection closed ({0})")]
    ConnectionClosed(CloseReason),
    /// The channel name is not acceptable: empty, too long, or with control
    /// characters or whitespace (see [`Namespaces::resolve`](crate::Namespaces::resolve)).
    #[error("invalid channel name")]
    InvalidChannel,
    /// The channel's namespace is not configured.
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),
}

impl From<ChannelError> for HubError {
    fn from(e: ChannelError) -> HubError {
        match e {
            ChannelError::UnknownNamespace(ns) => HubError::UnknownNamespace(ns),
            _ => HubError::InvalidChannel,
        }
    }
}

/// Errors of the channel features: history, recovery, presence, names.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The channel name is empty, too long, or contains control characters
    /// or whitespace.
    #[error("invalid channel name")]
    InvalidName,
    /// The channel's namespace is not configured.
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),
    /// The feature (history or presence) is disabled for this channel's namespace.
    #[error("not available")]
    NotAvailable,
    /// A history query's `since` position is from another epoch or beyond
    /// the stream's top: the publications after it cannot be listed.
    #[error("unrecoverable position")]
    UnrecoverablePosition,
}

/// Why a client may not do something in a channel (see the `check_*`
/// methods of [`Hub`](crate::Hub)).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PermissionError {
    /// The channel name is invalid or its namespace is not configured.
    #[error("unknown channel")]
    UnknownChannel,
    /// The channel is private and no valid subscription token was given.
    #[error("subscription token required")]
    TokenRequired,
    /// The namespace's options do not allow this client to do this.
    #[error("permission denied")]
    Denied,
    /// The feature (history or presence) is disabled for this namespace.
    #[error("not available")]
    NotAvailable,
}

/// The outbox was closed; no more deliveries will arrive.
///
/// Returned by [`Outbox::recv_batch`](crate::Outbox::recv_batch) once the
/// queue is empty and closed, and by [`ConnHandle::send_direct`](crate::ConnHandle::send_direct).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("outbox closed: {reason}")]
pub struct OutboxClosed {
    /// Why the outbox was closed.
    pub reason: CloseReason,
}
