//! A Centrifugo connection's subscriptions and what it keeps per subscription, in one small
//! list: most connections hold one or a few, and a list of them costs one allocation where a
//! map per property cost one each (plus a copy of the channel name in each). What only
//! some subscriptions need (stream positions, expiry) is boxed apart and made on first use,
//! so a subscription to a channel without history or expiry is a name and a null pointer.
use switchboard_core::{Epoch, StreamPosition};

/// One subscription.
#[derive(Debug)]
struct Sub {
    channel: Box<str>,
    /// Made when one of its fields is first set; dropped when all are unset again.
    kept: Option<Box<Kept>>,
}

/// What a subscription keeps beyond its channel, when it keeps anything.
#[derive(Debug, Default)]
struct Kept {
    /// The epoch the client's positions refer to, when it tracks positions (told about
    /// gaps); [`Epoch::EMPTY`] until the stream's first publication names it.
    positioned: Option<Epoch>,
    /// The position the subscribe reply reported: queued publications at or below it were
    /// already recovered (or predate the subscription) and are skipped; forgotten once a
    /// later publication passes (only happens with a shared broker).
    live_from: Option<StreamPosition>,
    /// Unix time at which the subscription ends unless `sub_refresh` moves it.
    expiry: Option<u64>,
}

impl Kept {
    fn is_empty(&self) -> bool {
        self.positioned.is_none() && self.live_from.is_none() && self.expiry.is_none()
    }
}

impl Sub {
    fn kept(&self) -> Option<&Kept> {
        self.kept.as_deref()
    }

    /// Changes what is kept with `change`, making it first if needed and dropping it when
    /// nothing is left.
    fn keep(&mut self, change: impl FnOnce(&mut Kept)) {
        let kept = self.kept.get_or_insert_with(Box::default);
        change(kept);
        if kept.is_empty() {
            self.kept = None;
        }
    }
}

/// The subscriptions of one connection, in the order they were made.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    list: Vec<Sub>,
}

impl Subscriptions {
    fn find(&self, channel: &str) -> Option<&Sub> {
        self.list.iter().find(|s| &*s.channel == channel)
    }

    fn find_mut(&mut self, channel: &str) -> Option<&mut Sub> {
        self.list.iter_mut().find(|s| &*s.channel == channel)
    }

    /// Whether the connection is subscribed to `channel`.
    pub(super) fn contains(&self, channel: &str) -> bool {
        self.find(channel).is_some()
    }

    /// Records a subscription to `channel` (nothing when it exists).
    pub(super) fn insert(&mut self, channel: &str) {
        if !self.contains(channel) {
            // One more, not a doubling: connections rarely subscribe in bursts.
            self.list.reserve_exact(1);
            self.list.push(Sub {
                channel: channel.into(),
                kept: None,
            });
        }
    }

    /// Forgets the subscription to `channel` and all kept for it; whether there was one.
    pub(super) fn remove(&mut self, channel: &str) -> bool {
        crate::protocol::channels::forget_channel(&mut self.list, channel, |s| &s.channel)
    }

    /// The epoch a positioned subscription's client refers to.
    pub(super) fn positioned_mut(&mut self, channel: &str) -> Option<&mut Epoch> {
        self.find_mut(channel)
            .and_then(|s| s.kept.as_deref_mut())
            .and_then(|k| k.positioned.as_mut())
    }

    /// Whether the subscription to `channel` tracks stream positions.
    pub(super) fn is_positioned(&self, channel: &str) -> bool {
        self.find(channel)
            .and_then(Sub::kept)
            .is_some_and(|k| k.positioned.is_some())
    }

    /// Marks the subscription to `channel` as positioned in `epoch`.
    pub(super) fn set_positioned(&mut self, channel: &str, epoch: Epoch) {
        if let Some(s) = self.find_mut(channel) {
            s.keep(|k| k.positioned = Some(epoch));
        }
    }

    /// Where live delivery of `channel` starts (see [`Sub::live_from`]).
    pub(super) fn live_from(&self, channel: &str) -> Option<StreamPosition> {
        self.find(channel)
            .and_then(Sub::kept)
            .and_then(|k| k.live_from)
    }

    /// Sets or clears where live delivery of `channel` starts.
    pub(super) fn set_live_from(&mut self, channel: &str, from: Option<StreamPosition>) {
        if let Some(s) = self.find_mut(channel) {
            s.keep(|k| k.live_from = from);
        }
    }

    /// Sets or lifts the expiry of the subscription to `channel`.
    pub(super) fn set_expiry(&mut self, channel: &str, at: Option<u64>) {
        if let Some(s) = self.find_mut(channel) {
            s.keep(|k| k.expiry = at);
        }
    }

    /// The earliest subscription expiry.
    pub(super) fn earliest_expiry(&self) -> Option<u64> {
        self.list
            .iter()
            .filter_map(|s| s.kept().and_then(|k| k.expiry))
            .min()
    }

    /// The channels whose subscription expired before `now`.
    pub(super) fn expired(&self, now: u64) -> Vec<String> {
        self.list
            .iter()
            .filter(|s| s.kept().and_then(|k| k.expiry).is_some_and(|at| at < now))
            .map(|s| s.channel.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_subscription_state_goes_with_the_subscription() {
        let mut subs = Subscriptions::default();
        subs.insert("a");
        subs.insert("b");
        subs.insert("a");
        assert!(subs.contains("a") && subs.contains("b") && !subs.contains("c"));
        subs.set_positioned("a", Epoch::EMPTY);
        subs.set_live_from("a", Some(StreamPosition::new(3, Epoch::EMPTY)));
        subs.set_expiry("a", Some(100));
        subs.set_expiry("b", Some(50));
        subs.set_expiry("c", Some(1));
        assert!(subs.is_positioned("a") && !subs.is_positioned("b"));
        assert_eq!(subs.earliest_expiry(), Some(50));
        assert_eq!(subs.expired(60), ["b"]);
        assert!(subs.remove("a"));
        assert!(!subs.remove("a"));
        subs.insert("a");
        assert!(
            !subs.is_positioned("a"),
            "nothing kept from the earlier subscription"
        );
        assert_eq!(subs.live_from("a"), None);
        assert_eq!(subs.earliest_expiry(), Some(50));
    }

    #[test]
    fn a_subscription_keeps_nothing_apart_until_it_needs_to() {
        // Every idle connection keeps one of these per subscription (plus the name).
        assert!(std::mem::size_of::<Sub>() <= 24);
        let mut subs = Subscriptions::default();
        subs.insert("a");
        assert!(subs.find("a").unwrap().kept.is_none());
        subs.set_expiry("a", Some(10));
        subs.set_live_from("a", Some(StreamPosition::new(3, Epoch::EMPTY)));
        assert_eq!(subs.earliest_expiry(), Some(10));
        subs.set_expiry("a", None);
        assert!(subs.find("a").unwrap().kept.is_some());
        subs.set_live_from("a", None);
        assert!(
            subs.find("a").unwrap().kept.is_none(),
            "dropped once nothing is kept"
        );
        assert_eq!(subs.earliest_expiry(), None);
    }
}
