//! Configurable limits of a hub: connection and room caps, outbox bounds and
//! the slow-consumer policy.

/// What to do when a connection's outbox is full.
///
/// An outbox is full when adding the next item would exceed
/// [`HubLimits::outbox_max_messages`] or [`HubLimits::outbox_max_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowConsumerPolicy {
    /// Close the connection (the default): its outbox is closed with
    /// [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer), the
    /// queued items are discarded, the connection leaves every channel and the
    /// hub. The server then closes the socket (WebSocket close 1008 "slow consumer").
    /// The client can reconnect and recover missed publications by offset.
    #[default]
    Close,
    /// Keep the connection and evict the oldest queued items until the new one
    /// fits. Suited to feeds where only the latest values matter (tickers,
    /// game state). Evictions are counted in [`HubStats::dropped`](crate::HubStats::dropped).
    DropOldest,
}

/// Limits applied by a [`Hub`](crate::Hub).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubLimits {
    /// Maximum registered connections; `None` for no limit.
    pub max_connections: Option<usize>,
    /// Maximum members of one channel; `None` for no limit.
    pub max_room_members: Option<usize>,
    /// Maximum items queued in one connection's outbox (at least 1 is used).
    pub outbox_max_messages: usize,
    /// Maximum payload bytes queued in one connection's outbox. A single item
    /// larger than this is still accepted into an *empty* outbox, so the
    /// bound is `max(outbox_max_bytes, largest message)`; the server should
    /// cap message size well below this value.
    pub outbox_max_bytes: usize,
    /// What to do when an outbox is full.
    pub slow_consumer: SlowConsumerPolicy,
    /// Maximum registered connections of one authenticated user; `None` for no limit.
    pub max_connections_per_user: Option<usize>,
    /// Maximum channels one connection is a member of at once; `None` for no limit.
    pub max_subscriptions_per_connection: Option<usize>,
}

impl HubLimits {
    /// Default for [`outbox_max_messages`](Self::outbox_max_messages).
    pub const DEFAULT_OUTBOX_MAX_MESSAGES: usize = 4096;
    /// Default for [`outbox_max_bytes`](Self::outbox_max_bytes): 1 MiB.
    pub const DEFAULT_OUTBOX_MAX_BYTES: usize = 1 << 20;
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            max_connections: None,
            max_room_members: None,
            outbox_max_messages: Self::DEFAULT_OUTBOX_MAX_MESSAGES,
            outbox_max_bytes: Self::DEFAULT_OUTBOX_MAX_BYTES,
            slow_consumer: SlowConsumerPolicy::Close,
            max_connections_per_user: None,
            max_subscriptions_per_connection: None,
        }
    }
}
