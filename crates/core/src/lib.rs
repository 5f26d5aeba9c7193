//! Switchboard channel core: the hub, channels (rooms) in namespaces,
//! fan-out through bounded per-connection outboxes, history with stream
//! positions, recovery, presence, permissions and limits. Pure logic, no sockets: the
//! server crate owns the I/O and drives this crate.
//!
//! # Model
//!
//! * A [`Hub`] holds every registered connection and every live channel.
//!   [`Hub::register`] returns a [`ConnHandle`] (the application's grip on
//!   the connection; dropping it disconnects) and an [`Outbox`] (the queue
//!   the connection's writer task reads from).
//! * A [`Channel`] (room) is created by the first [`Hub::subscribe`] to its
//!   name and removed when its last member leaves (channels with history
//!   stay longer, see below). Its *epoch*, a short random string, identifies
//!   one continuous history of the channel.
//! * [`Hub::publish`] builds **one** [`Publication`] and queues an
//!   `Arc<Publication>` (a pointer and a reference-count increment) into every
//!   member's outbox, optionally excluding the publisher. The payload bytes
//!   are never copied per subscriber. Each publication gets the channel's next
//!   *offset* (1, 2, 3, … without gaps) together with the channel's epoch;
//!   publications in one channel are serialised, so every member sees them in
//!   offset order even with many concurrent publishers. Offset + epoch (a
//!   [`StreamPosition`]) is what a client needs to detect gaps and to
//!   recover missed messages after a reconnect.
//! * Registries are sharded (`parking_lot` locks around hash maps, chosen
//!   by hashing the key), so unrelated channels do not contend, and no lock is
//!   held while doing anything slow: a publish looks the channel up, then
//!   walks its member vector under the channel's read lock and pushes into
//!   each outbox, which never blocks.
//!
//! # Namespaces and permissions
//!
//! A channel `chat:room1` is in namespace `chat`; `room1` is in the default
//! namespace. [`Hub::with_namespaces`] configures [`ChannelOptions`] per
//! namespace ([`Namespaces`], deserializable from TOML); [`Hub::new`] has
//! only the default namespace with default options (a plain room). Names
//! are validated on subscribe (length, no control characters or
//! whitespace, known namespace).
//!
//! The hub does not enforce client permissions by itself (the server API
//! may do anything); protocols call [`Hub::check_subscribe`],
//! [`Hub::check_publish`], [`Hub::check_presence`] and
//! [`Hub::check_history`] with a [`ClientCtx`] before acting for a client.
//! Each method documents its rule.
//!
//! # History
//!
//! In a namespace with `history_size` and `history_ttl`, each channel keeps
//! its latest publications (the same `Arc<Publication>`s that went to the
//! outboxes), at most `history_size` of them and none older than
//! `history_ttl`. A publish into such a channel stores the publication even
//! when nobody is subscribed, and the channel outlives its last member
//! until `history_ttl` after its last publication, so a client that
//! reconnects within that time finds the same stream. [`Hub::history`]
//! queries it (since a position, limit, reverse); [`Hub::history_remove`]
//! drops it.
//!
//! Memory is bounded per channel by `history_size` (times the largest
//! message the server accepts) and overall by
//! [`Namespaces::history_max_bytes`]: past that, the histories of the
//! channels that published least recently are dropped. Expiry is lazy (on
//! publish, query, recovery) plus [`Hub::sweep`], which the server calls
//! periodically; time comes from a [`Clock`] ([`ManualClock`] in tests).
//!
//! The epoch changes whenever history is lost: the channel disappeared and
//! is created again, its history was removed, or dropped for the memory
//! cap. Offsets never go back within a channel's lifetime.
//!
//! # Recovery
//!
//! [`Hub::recover`] tells a client at a position what it missed:
//! `recovered` is true when the epoch matches and every later publication is
//! still in history. [`Hub::subscribe_with_recovery`] does this *and* the
//! join under the channel's publish sequence lock, so every publication is
//! either in the recovered list or queued to the new member, exactly once:
//! a publication racing with the (re)subscribe is neither lost nor
//! duplicated.
//!
//! # Presence
//!
//! With `presence`, [`Hub::presence`] lists the members' [`ClientInfo`]
//! (client id, user id, connection info from [`ConnInfo::conn_info`],
//! channel info from [`SubscribeOptions::chan_info`]), and
//! [`Hub::presence_stats`] counts clients and distinct users. With
//! `join_leave`, joining and leaving (unsubscribe or disconnect) queue a
//! [`Delivery::Join`] / [`Delivery::Leave`] event into the other members'
//! outboxes, under the same bounds as publications. Protocols without such
//! events skip them.
//!
//! History (a small buffer type in `history.rs`) and presence (derived from
//! the member list, `presence.rs`) sit behind the channel's join, leave and
//! publish points, so a shared store for several nodes can replace them
//! without touching the fan-out.
//!
//! # Several nodes
//!
//! A [`Broker`] is what several nodes share (fan-out across nodes, offsets,
//! history, presence, node liveness). [`Node`] is the facade protocol
//! drivers call: with the default [`MemoryBroker`] it is the hub's own
//! synchronous path; with a shared broker (Redis, in the server crate) it
//! publishes through the broker and delivers what arrives with
//! [`Hub::deliver`]. See the `node` and `broker` modules.
//!
//! # Outboxes and slow consumers
//!
//! Each connection has a bounded outbox, limited both by item count
//! ([`HubLimits::outbox_max_messages`]) and by queued payload bytes
//! ([`HubLimits::outbox_max_bytes`]). A push takes a short uncontended lock,
//! appends to a ring buffer (no allocation beyond its amortised growth) and
//! wakes the writer only when the queue goes from empty to non-empty. The
//! writer calls [`Outbox::recv_batch`], which drains everything pending (up
//! to a maximum) in one call, so it can emit the whole batch with one
//! vectored write.
//!
//! When a push finds the outbox full, the hub's [`SlowConsumerPolicy`]
//! decides:
//!
//! * [`SlowConsumerPolicy::Close`] (default): the outbox is closed with
//!   [`CloseReason::SlowConsumer`] and its queue freed, the connection leaves
//!   every channel and the hub, and [`HubStats::slow_consumer_closes`] counts
//!   it. Its writer's next `recv_batch` returns `Err`; the server then closes
//!   the socket, for WebSocket with close code **1008 "slow consumer"**
//!   ([`CloseReason::close_code`]); the core only records the reason, the
//!   server chooses the wire signal. Other members are unaffected: one slow
//!   peer can never hold up a publish or grow memory without bound.
//! * [`SlowConsumerPolicy::DropOldest`]: the oldest queued items are evicted
//!   until the new one fits, counted in [`HubStats::dropped`]; the connection
//!   stays, and sees the newest messages (and an offset gap it can detect).
//!
//! Memory per connection is therefore bounded by the outbox limits, whatever
//! the publish rate.
//!
//! # Encoding once
//!
//! Several wire protocols (raw WebSocket, Centrifugo JSON/Protobuf,
//! Socket.IO) can be subscribed to the same channel. Each publication carries
//! a small cache with one slot per [`WireFormat`]:
//! [`Publication::encoded`] runs the protocol's encoder the first time a
//! writer asks for that format and returns the cached value to every other
//! writer. A publication to 10,000 subscribers is thus framed once per
//! protocol in use, not 10,000 times.
//!
//! # Limits
//!
//! [`HubLimits::max_connections`] makes [`Hub::register`] fail with
//! [`HubError::TooManyConnections`]; [`HubLimits::max_room_members`] makes
//! [`Hub::subscribe`] fail with [`HubError::RoomFull`]. Both are counted in
//! [`HubStats::rejections`].
//!
//! # Example
//!
//! ```
//! use switchboard_core::{ConnInfo, Delivery, Hub, HubLimits, Payload, PublishOptions};
//!
//! let hub = Hub::new(HubLimits::default());
//! let (alice, mut alice_out) = hub.register(ConnInfo::new("127.0.0.1:1", "raw")).unwrap();
//! let (bob, mut bob_out) = hub.register(ConnInfo::new("127.0.0.1:2", "raw")).unwrap();
//! hub.subscribe(&alice, "chat").unwrap();
//! hub.subscribe(&bob, "chat").unwrap();
//!
//! // Alice broadcasts to everyone else in the room.
//! let report = hub.publish("chat", Payload::text("hi"), PublishOptions::except_sender(alice.id()));
//! assert_eq!(report.delivered, 1);
//!
//! let mut batch = Vec::new();
//! assert_eq!(bob_out.try_recv_batch(&mut batch, 64), Ok(1));
//! assert!(matches!(&batch[0], Delivery::Publication(p) if p.offset == 1));
//! assert_eq!(alice_out.try_recv_batch(&mut batch, 64), Ok(0));
//!
//! drop((alice, bob));
//! assert_eq!(hub.channel_count(), 0);
//! ```

#![warn(missing_docs)]

mod broker;
mod broker_memory;
mod channel;
mod clock;
mod connection;
mod error;
mod history;
mod hub;
mod limits;
mod namespace;
mod node;
mod outbox;
mod presence;
mod publication;
mod stats;

pub use broker::{
    ready, BoxFuture, Broker, BrokerError, BrokerHandler, BrokerPublication, BrokerStatus,
    NodeInfo, StreamSlice, SurveyAnswer,
};
pub use broker_memory::MemoryBroker;
pub use channel::Channel;
pub use clock::{Clock, ManualClock, SystemClock};
pub use connection::{ConnHandle, ConnInfo};
pub use error::{ChannelError, CloseReason, HubError, OutboxClosed, PermissionError};
pub use history::{Epoch, HistoryQuery, HistoryResult, Recovery, StreamPosition};
pub use hub::{
    ChannelSizes, ClientCtx, Hub, HubListener, HubObserver, PublishOptions, PublishReport,
    SubscribeOptions, SubscribeResult,
};
pub use limits::{HubLimits, SlowConsumerPolicy};
pub use namespace::{ChannelOptions, Namespaces, NAMESPACE_SEPARATOR};
pub use node::{ControlHandler, GapHandler, GapStats, Node, NodeError};
pub use outbox::Outbox;
pub use presence::{ClientInfo, MemberEvent, PresenceStats};
pub use publication::{ConnId, Control, Delivery, Payload, PayloadKind, Publication, WireFormat};
pub use stats::{HubStats, Rejections};
