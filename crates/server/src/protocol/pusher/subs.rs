//! A Pusher connection's subscriptions, in one small list: most connections hold one or a
//! few, and every idle connection keeps this. A hash map of them cost ≈ 560 B for a single
//! public channel (a table of four slots, each wide enough for presence bookkeeping); the
//! list keeps the channel name and its kind, and the presence bookkeeping is boxed and made
//! only for `presence-` channels.
use std::collections::{HashMap, HashSet};

use switchboard_protocols::pusher::{self as wire, ChannelKind};

/// What a presence subscription keeps: this connection's member, and every user's
/// connections (client ids), to announce a user once on their first connection and remove
/// them after their last.
#[derive(Debug)]
pub(super) struct Presence {
    /// This connection's member (from its `channel_data`).
    pub(super) member: wire::Member,
    /// The channel's users and their connections.
    pub(super) users: HashMap<String, HashSet<String>>,
}

/// One subscription.
#[derive(Debug)]
pub(super) struct Sub {
    /// The channel's name.
    pub(super) channel: Box<str>,
    /// What the name says about the channel.
    pub(super) kind: ChannelKind,
    /// Presence channels only.
    pub(super) presence: Option<Box<Presence>>,
}

impl Sub {
    /// A subscription to `channel` without presence.
    pub(super) fn plain(channel: &str, kind: ChannelKind) -> Sub {
        Sub {
            channel: channel.into(),
            kind,
            presence: None,
        }
    }

    /// This connection's member on a presence channel.
    pub(super) fn member(&self) -> Option<&wire::Member> {
        self.presence.as_ref().map(|p| &p.member)
    }
}

/// The subscriptions of one connection, in the order they were made.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    list: Vec<Sub>,
}

impl Subscriptions {
    /// The subscription to `channel`, if any.
    pub(super) fn get(&self, channel: &str) -> Option<&Sub> {
        self.list.iter().find(|s| &*s.channel == channel)
    }

    /// The subscription to `channel`, to change, if any.
    pub(super) fn get_mut(&mut self, channel: &str) -> Option<&mut Sub> {
        self.list.iter_mut().find(|s| &*s.channel == channel)
    }

    /// Whether the connection is subscribed to `channel`.
    pub(super) fn contains(&self, channel: &str) -> bool {
        self.get(channel).is_some()
    }

    /// Records `sub`, replacing a subscription to the same channel.
    pub(super) fn insert(&mut self, sub: Sub) {
        if let Some(old) = self.get_mut(&sub.channel) {
            *old = sub;
            return;
        }
        // One more, not a doubling: connections rarely subscribe in bursts.
        self.list.reserve_exact(1);
        self.list.push(sub);
    }

    /// Forgets the subscription to `channel`; whether there was one.
    pub(super) fn remove(&mut self, channel: &str) -> bool {
        crate::protocol::channels::forget_channel(&mut self.list, channel, |s| &s.channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_found_replaced_and_removed_by_channel() {
        let mut subs = Subscriptions::default();
        subs.insert(Sub::plain("a", ChannelKind::Public));
        subs.insert(Sub::plain("private-b", ChannelKind::Private));
        assert!(subs.contains("a") && subs.contains("private-b") && !subs.contains("c"));
        assert_eq!(subs.get("private-b").unwrap().kind, ChannelKind::Private);
        subs.insert(Sub::plain("a", ChannelKind::Private));
        assert_eq!(subs.list.len(), 2);
        assert_eq!(subs.get("a").unwrap().kind, ChannelKind::Private);
        assert!(subs.get("a").unwrap().member().is_none());
        assert!(subs.remove("a"));
        assert!(!subs.remove("a"));
        assert!(subs.remove("private-b"));
        assert_eq!(subs.list.capacity(), 0);
    }

    #[test]
    fn a_plain_subscription_stays_small() {
        // Every idle connection with one public channel keeps one of these (plus the name).
        assert!(std::mem::size_of::<Sub>() <= 32);
    }
}
