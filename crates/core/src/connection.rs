//! Registered connections: the per-connection record the hub keeps, and the
//! [`ConnHandle`] the server holds for as long as the socket lives.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{CloseReason, HubError, OutboxClosed};
use crate::hub::Hub;
use crate::outbox::{OutboxShared, PushOutcome};
use crate::publication::{ConnId, Delivery, Payload};

/// What the hub knows about a connection, supplied at registration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// Peer address as text (e.g. `"127.0.0.1:53211"`), for logs and admin APIs.
    /// Boxed: fixed once registered, so no spare capacity or length field is kept.
    pub remote_addr: Box<str>,
    /// Authenticated user id, if any.
    pub user: Option<String>,
    /// Name of the wire protocol the connection speaks (e.g. `"raw"`, `"centrifugo-json"`).
    /// A constant of the protocol's code, so every connection points at it rather than
    /// keeping a copy.
    pub protocol: &'static str,
    /// Application data about the connection (e.g. the `info` claim of its
    /// token, usually JSON), shown in presence and join/leave events.
    pub conn_info: Option<Bytes>,
}

impl ConnInfo {
    /// Info for an anonymous connection.
    pub fn new(remote_addr: impl Into<Box<str>>, protocol: &'static str) -> ConnInfo {
        ConnInfo {
            remote_addr: remote_addr.into(),
            user: None,
            protocol,
            conn_info: None,
        }
    }

    /// Sets the connection info shown in presence.
    pub fn with_conn_info(mut self, info: impl Into<Bytes>) -> ConnInfo {
        self.conn_info = Some(info.into());
        self
    }

    /// Sets the authenticated user id.
    pub fn with_user(mut self, user: impl Into<String>) -> ConnInfo {
        self.user = Some(user.into());
        self
    }
}

/// The channels a connection joined, guarded together with its "removed"
/// flag so that a subscribe racing with a removal can never leave the
/// connection behind in a channel.
#[derive(Default)]
pub(crate) struct Subscriptions {
    pub(crate) removed: bool,
    pub(crate) channels: ChannelSet,
}

/// Above this many channels a connection's set becomes a hash set: a scan of
/// this many names costs about what hashing one does.
const FEW_CHANNELS: usize = 16;

/// The names of the channels one connection joined.
///
/// Most connections join one channel or a few, and every registered connection
/// keeps its set for its whole life: a list sized to its contents holds one
/// name in 16 bytes of heap, where a hash set took 84 (and 48 bytes inline
/// instead of 24). Past [`FEW_CHANNELS`] names it becomes a (boxed) hash set,
/// so a connection with many subscriptions still joins and leaves in O(1).
pub(crate) enum ChannelSet {
    Few(Vec<Arc<str>>),
    // Boxed so that the usual short list keeps the enum at a `Vec`'s 24 bytes.
    #[allow(clippy::box_collection)]
    Many(Box<HashSet<Arc<str>>>),
}

impl Default for ChannelSet {
    fn default() -> ChannelSet {
        ChannelSet::Few(Vec::new())
    }
}

impl ChannelSet {
    pub(crate) fn len(&self) -> usize {
        match self {
            ChannelSet::Few(list) => list.len(),
            ChannelSet::Many(set) => set.len(),
        }
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        match self {
            ChannelSet::Few(list) => list.iter().any(|n| **n == *name),
            ChannelSet::Many(set) => set.contains(name),
        }
    }

    /// Adds `name`; false if it was already there.
    pub(crate) fn insert(&mut self, name: Arc<str>) -> bool {
        match self {
            ChannelSet::Few(list) => {
                if list.contains(&name) {
                    return false;
                }
                if list.len() < FEW_CHANNELS {
                    if list.len() == list.capacity() {
                        // Grow 1, 2, 4, …: the usual single channel takes one slot, not
                        // the four a `Vec` starts with.
                        list.reserve_exact(list.len().max(1));
                    }
                    list.push(name);
                } else {
                    let mut set: HashSet<Arc<str>> = list.drain(..).collect();
                    set.insert(name);
                    *self = ChannelSet::Many(Box::new(set));
                }
                true
            }
            ChannelSet::Many(set) => set.insert(name),
        }
    }

    /// Removes `name` and returns the stored name, if it was there.
    pub(crate) fn take(&mut self, name: &str) -> Option<Arc<str>> {
        match self {
            ChannelSet::Few(list) => {
                let at = list.iter().position(|n| **n == *name)?;
                Some(list.swap_remove(at))
            }
            ChannelSet::Many(set) => set.take(name),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        let (few, many) = match self {
            ChannelSet::Few(list) => (Some(list.iter()), None),
            ChannelSet::Many(set) => (None, Some(set.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

/// The hub's record of one connection; shared by the registry, every channel
/// it is a member of, its [`ConnHandle`] and its [`Outbox`](crate::Outbox).
pub(crate) struct ConnEntry {
    pub(crate) id: ConnId,
    pub(crate) info: ConnInfo,
    /// The user the connection signed in as after registering (see
    /// [`ConnHandle::sign_in`]).
    pub(crate) signed_in: OnceLock<Box<str>>,
    pub(crate) outbox: OutboxShared,
    pub(crate) subs: Mutex<Subscriptions>,
}

/// The application's handle on a registered connection.
///
/// Dropping it disconnects: the connection leaves every channel and the hub,
/// and its outbox is closed with [`CloseReason::Normal`] (the writer still
/// receives what was already queued).
pub struct ConnHandle {
    pub(crate) entry: Arc<ConnEntry>,
    pub(crate) hub: Hub,
}

impl ConnHandle {
    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.entry.id
    }

    /// What was supplied at registration.
    pub fn info(&self) -> &ConnInfo {
        &self.entry.info
    }

    /// Names the user the connection authenticated as after it registered (a protocol
    /// whose clients sign in on an open connection, like Pusher's `pusher:signin`). From
    /// then on [`Hub::connections_of_user`] finds the connection, so administrative calls by
    /// user (disconnect) reach it whatever its protocol. Only the first call counts; returns
    /// whether this one did. Registration-time limits (`max_connections_per_user`) are not
    /// applied again.
    pub fn sign_in(&self, user: &str) -> bool {
        self.entry.signed_in.set(user.into()).is_ok()
    }

    /// The user the connection signed in as after registering, if it did.
    pub fn signed_in_user(&self) -> Option<&str> {
        self.entry.signed_in.get().map(|u| &**u)
    }

    /// Queues a message for this connection only, under the same bounds and
    /// slow-consumer policy as channel publications.
    ///
    /// Errors if the outbox is closed, including when this very push
    /// overflowed it under [`SlowConsumerPolicy::Close`](crate::SlowConsumerPolicy::Close)
    /// (the connection is then removed from the hub).
    pub fn send_direct(&self, payload: Payload) -> Result<(), OutboxClosed> {
        let outcome = self
            .entry
            .outbox
            .push(Delivery::Direct(Box::new(payload)), self.hub.limits());
        self.hub.account_push(&self.entry, outcome);
        match outcome {
            PushOutcome::Queued { .. } => Ok(()),
            PushOutcome::ClosedSlow => Err(OutboxClosed {
                reason: CloseReason::SlowConsumer,
            }),
            PushOutcome::Closed(reason) => Err(OutboxClosed { reason }),
        }
    }

    /// Closes the connection: its outbox is closed with `reason` (the writer
    /// sees `Err` once it has drained what was queued, or at once for
    /// [`CloseReason::SlowConsumer`]), and it leaves every channel and the hub.
    /// Later calls on this handle fail or do nothing.
    pub fn close(&self, reason: CloseReason) {
        self.hub.remove_conn(&self.entry, reason);
    }

    /// Why the connection was closed, if it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.entry.outbox.close_reason()
    }

    /// Whether the connection was closed (by [`close`](Self::close), by the
    /// hub as a slow consumer, or because its writer went away).
    pub fn is_closed(&self) -> bool {
        self.close_reason().is_some()
    }

    /// The channels this connection is currently a member of.
    pub fn channels(&self) -> Vec<Arc<str>> {
        self.entry.subs.lock().channels.iter().cloned().collect()
    }

    /// Joins `channel`; same as [`Hub::subscribe`].
    pub fn subscribe(&self, channel: &str) -> Result<(), HubError> {
        self.hub.subscribe(self, channel)
    }

    /// Leaves `channel`; same as [`Hub::unsubscribe`].
    pub fn unsubscribe(&self, channel: &str) -> bool {
        self.hub.unsubscribe(self, channel)
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.hub.remove_conn(&self.entry, CloseReason::Normal);
    }
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle")
            .field("id", &self.entry.id)
            .field("info", &self.entry.info)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_set_stays_a_list_until_it_is_long_then_hashes() {
        let mut set = ChannelSet::default();
        assert!(set.insert("a".into()));
        assert!(!set.insert("a".into()));
        assert!(matches!(&set, ChannelSet::Few(list) if list.capacity() == 1));
        for i in 1..FEW_CHANNELS {
            assert!(set.insert(format!("c{i}").into()));
        }
        assert!(matches!(set, ChannelSet::Few(_)));
        assert!(set.insert("last".into()));
        assert!(matches!(set, ChannelSet::Many(_)));
        assert_eq!(set.len(), FEW_CHANNELS + 1);
        assert!(set.contains("a") && set.contains("last") && !set.contains("b"));
        assert_eq!(set.take("a").as_deref(), Some("a"));
        assert_eq!(set.take("a"), None);
        let mut names: Vec<_> = set.iter().map(|n| n.to_string()).collect();
        names.sort();
        assert_eq!(names.len(), FEW_CHANNELS);
        assert_eq!(names[0], "c1");

        let mut few = ChannelSet::default();
        few.insert("x".into());
        few.insert("y".into());
        assert_eq!(few.take("x").as_deref(), Some("x"));
        assert!(!few.contains("x") && few.contains("y"));
        assert_eq!(few.iter().count(), 1);
    }

    #[test]
    fn a_connection_record_stays_small() {
        // One `Vec` inline instead of a hash set's 48 bytes.
        assert_eq!(std::mem::size_of::<ChannelSet>(), 24);
        // What every registered connection keeps in the hub (plus the `Arc`'s two counts).
        assert!(
            std::mem::size_of::<ConnEntry>() <= 232,
            "{}",
            std::mem::size_of::<ConnEntry>()
        );
    }
}
