//! Turns the hub's connections, joins and leaves into webhook events.
//!
//! The hub reports every join and leave ([`HubObserver`]); this observer counts them per
//! channel and per (channel, user) on this node. When the node's count of a channel goes
//! 0 → 1 or 1 → 0 (or a user's in a presence channel), it asks the broker whether the whole
//! cluster flipped with it ([`Broker::occupancy`](switchboard_core::Broker::occupancy),
//! [`Broker::user_occupancy`](switchboard_core::Broker::user_occupancy)): on one node it
//! always did; on Redis a script decides atomically, so exactly one node reports each
//! `channel_occupied`, `channel_vacated`, `member_added` and `member_removed`. Those
//! questions go, in order, through one bounded queue to one task, so the hub's threads never
//! wait on Redis; a full queue drops the change (counted as a dropped webhook, logged).
//!
//! Counting instead of trusting the hub's "first member"/"emptied" flags matters because a
//! join and a leave of one channel may be reported from different threads in either order:
//! counts add up to the same result whatever the order.
//!
//! A user is who Pusher calls `user_id`: the `user_id` of the member's channel data
//! (`presence-` channels), else the connection's user (a token's `sub`). Anonymous members
//! are not members for these events.
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use switchboard_core::{ClientInfo, ConnId, ConnInfo, Hub, HubObserver, Node};
use tokio::sync::mpsc;

use super::{Event, EventKind, Webhooks};

/// A change of this node's occupancy, to be checked against the cluster.
#[derive(Debug)]
enum Change {
    Channel {
        channel: String,
        occupied: bool,
    },
    User {
        channel: String,
        user: String,
        present: bool,
    },
}

#[derive(Default)]
struct Counts {
    channels: HashMap<String, i64>,
    users: HashMap<(String, String), i64>,
}

/// The [`HubObserver`] that feeds the webhooks.
pub struct WebhookObserver {
    webhooks: Arc<Webhooks>,
    hub: Hub,
    counts: Mutex<Counts>,
    changes: mpsc::Sender<Change>,
    occupancy: bool,
    members: bool,
}

impl WebhookObserver {
    /// Installs an observer on `node`'s hub that reports to `webhooks`, and starts the task
    /// that checks changes with `node`'s broker (on the current tokio runtime). Does
    /// nothing when no target wants hub events.
    pub fn install(webhooks: &Arc<Webhooks>, node: &Node, queue: usize) {
        let occupancy =
            webhooks.wants(EventKind::ChannelOccupied) || webhooks.wants(EventKind::ChannelVacated);
        let members =
            webhooks.wants(EventKind::MemberAdded) || webhooks.wants(EventKind::MemberRemoved);
        let connections =
            webhooks.wants(EventKind::Connect) || webhooks.wants(EventKind::Disconnect);
        if !(occupancy || members || connections) {
            return;
        }
        let (tx, rx) = mpsc::channel(queue.max(1));
        let observer = Arc::new(WebhookObserver {
            webhooks: Arc::clone(webhooks),
            hub: node.hub().clone(),
            counts: Mutex::default(),
            changes: tx,
            occupancy,
            members,
        });
        node.hub().set_observer(observer);
        tokio::spawn(decide(Arc::clone(webhooks), node.clone(), rx));
    }

    fn change(&self, change: Change) {
        if let Err(e) = self.changes.try_send(change) {
            self.webhooks.stats().dropped.fetch_add(1, Relaxed);
            tracing::warn!(
                "webhook occupancy queue full: change dropped ({:?})",
                e.into_inner()
            );
        }
    }

    /// The member's user id for member events, when the channel has presence.
    fn user_of(&self, channel: &str, member: &ClientInfo) -> Option<String> {
        let presence = self
            .hub
            .namespaces()
            .options(channel)
            .is_ok_and(|o| o.presence);
        if !presence {
            return None;
        }
        let from_data = member.chan_info.as_deref().and_then(|d| {
            let v: serde_json::Value = serde_json::from_slice(d).ok()?;
            match v.get("user_id")? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        });
        from_data
            .or_else(|| Some(member.user.clone()))
            .filter(|u| !u.is_empty())
    }

    fn count(&self, channel: &str, member: &ClientInfo, delta: i64) {
        let user = if self.members {
            self.user_of(channel, member)
        } else {
            None
        };
        let mut changes = Vec::new();
        {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            if self.occupancy {
                if let Some(flip) = bump(&mut counts.channels, channel.to_string(), delta) {
                    changes.push(Change::Channel {
                        channel: channel.to_string(),
                        occupied: flip,
                    });
                }
            }
            if let Some(user) = user {
                if let Some(flip) = bump(
                    &mut counts.users,
                    (channel.to_string(), user.clone()),
                    delta,
                ) {
                    changes.push(Change::User {
                        channel: channel.to_string(),
                        user,
                        present: flip,
                    });
                }
            }
            // Pusher's order: occupied before the first member_added, the last
            // member_removed before vacated.
            if delta < 0 {
                changes.reverse();
            }
            // Queued under the lock: two flips of one channel reach the task in the order
            // they happened.
            for c in changes {
                self.change(c);
            }
        }
    }

    fn connection(&self, kind: EventKind, conn: ConnId, info: &ConnInfo) {
        if !self.webhooks.wants(kind) {
            return;
        }
        let mut e = Event {
            kind,
            channel: None,
            app: None,
            fields: Default::default(),
        }
        .with("client_id", conn.to_string())
        .with("protocol", info.protocol);
        if let Some(user) = &info.user {
            e = e.with("user_id", user.as_str());
        }
        self.webhooks.emit(e);
    }
}

/// Adds `delta` to `key`'s count; answers `Some(true)` when it went 0 → positive,
/// `Some(false)` when it went back to 0.
fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, i64>, key: K, delta: i64) -> Option<bool> {
    let before = map.get(&key).copied().unwrap_or(0);
    let after = before + delta;
    if after == 0 {
        // Dropped so that the maps hold only live channels.
        map.remove(&key);
    } else {
        map.insert(key, after);
    }
    match (before, after) {
        (0, 1) => Some(true),
        (1, 0) => Some(false),
        _ => None,
    }
}

impl HubObserver for WebhookObserver {
    fn connected(&self, conn: ConnId, info: &ConnInfo) {
        self.connection(EventKind::Connect, conn, info);
    }

    fn disconnected(&self, conn: ConnId, info: &ConnInfo) {
        self.connection(EventKind::Disconnect, conn, info);
    }

    fn member_joined(&self, channel: &str, member: &ClientInfo) {
        self.count(channel, member, 1);
    }

    fn member_left(&self, channel: &str, member: &ClientInfo) {
        self.count(channel, member, -1);
    }
}

/// What to do when a survivor reaped a dead node's occupancy (the Redis broker's
/// [`OccupancyLost`](crate::broker::redis::OccupancyLost)): send the `channel_vacated` and
/// `member_removed` events that node can no longer send.
pub fn lost_reporter(webhooks: &Arc<Webhooks>) -> crate::broker::redis::OccupancyLost {
    let webhooks = Arc::clone(webhooks);
    Arc::new(move |channel: &str, vacated: bool, users: &[String]| {
        for user in users {
            webhooks.emit(
                Event::channel(EventKind::MemberRemoved, channel).with("user_id", user.as_str()),
            );
        }
        if vacated {
            webhooks.emit(Event::channel(EventKind::ChannelVacated, channel));
        }
    })
}

/// Checks each change with the broker, in order, and sends the events the cluster flipped.
async fn decide(webhooks: Arc<Webhooks>, node: Node, mut rx: mpsc::Receiver<Change>) {
    while let Some(change) = rx.recv().await {
        let broker = node.broker();
        match change {
            Change::Channel { channel, occupied } => {
                match broker.occupancy(&channel, occupied).await {
                    Ok(true) => {
                        let kind = if occupied {
                            EventKind::ChannelOccupied
                        } else {
                            EventKind::ChannelVacated
                        };
                        webhooks.emit(Event::channel(kind, &channel));
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(%channel, "channel occupancy not recorded: {e}"),
                }
            }
            Change::User {
                channel,
                user,
                present,
            } => match broker.user_occupancy(&channel, &user, present).await {
                Ok(true) => {
                    let kind = if present {
                        EventKind::MemberAdded
                    } else {
                        EventKind::MemberRemoved
                    };
                    webhooks.emit(Event::channel(kind, &channel).with("user_id", user));
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(%channel, "member occupancy not recorded: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_flip_only_at_zero_whatever_the_order() {
        let mut m: HashMap<&str, i64> = HashMap::new();
        assert_eq!(bump(&mut m, "a", 1), Some(true));
        assert_eq!(bump(&mut m, "a", 1), None);
        assert_eq!(bump(&mut m, "a", -1), None);
        assert_eq!(bump(&mut m, "a", -1), Some(false));
        assert!(m.is_empty());
        // A leave reported before its join: nothing flips, nothing is left over.
        assert_eq!(bump(&mut m, "b", -1), None);
        assert_eq!(bump(&mut m, "b", 1), None);
        assert!(m.is_empty());
    }
}
