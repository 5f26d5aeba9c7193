//! Switchboard channel core: the hub, channels (rooms), fan-out through
//! bounded per-connection outboxes, and limits. Pure logic, no sockets: the
//! server crate owns the I/O and drives this crate.
//!
//! # Model
//!
//! * A [`Hub`] holds every registered connection and every live channel.
//!   [`Hub::register`] returns a [`ConnHandle`] (the application's grip on
//!   the connection; dropping it disconnects) and an [`Outbox`] (the queue
//!   the connection's writer task reads from).
//! * A [`Channel`] (room) is created by the first [`Hub::subscribe`] to its
//!   name and removed when its last member leaves. When it is created it gets
//!   an *epoch*, a 32-bit value that identifies this lifetime of the channel.
//! * [`Hub::publish`] builds **one** [`Publication`] and queues an
//!   `Arc<Publication>` (a pointer and a reference-count increment) into every
//!   member's outbox, optionally excluding the publisher. The payload bytes
//!   are never copied per subscriber. Each publication gets the channel's next
//!   *offset* (1, 2, 3, … without gaps) together with the channel's epoch;
//!   publications in one channel are serialised, so every member sees them in
//!   offset order even with many concurrent publishers. Offset + epoch is what
//!   a client needs to detect gaps and, with a history buffer, to recover
//!   missed messages after a reconnect.
//! * Registries are sharded (`parking_lot` locks around hash maps, chosen
//!   by hashing the key), so unrelated channels do not contend, and no lock is
//!   held while doing anything slow: a publish looks the channel up, then
//!   walks its member vector under the channel's read lock and pushes into
//!   each outbox, which never blocks.
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

mod channel;
mod connection;
mod error;
mod hub;
mod limits;
mod outbox;
mod publication;
mod stats;

pub use channel::Channel;
pub use connection::{ConnHandle, ConnInfo};
pub use error::{CloseReason, HubError, OutboxClosed};
pub use hub::{Hub, PublishOptions, PublishReport};
pub use limits::{HubLimits, SlowConsumerPolicy};
pub use outbox::Outbox;
pub use publication::{ConnId, Delivery, Payload, PayloadKind, Publication, WireFormat};
pub use stats::{HubStats, Rejections};
