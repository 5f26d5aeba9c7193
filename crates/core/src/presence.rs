//! Presence: who is subscribed to a channel, and the join/leave events sent
//! to the other members.
//!
//! On one node presence is derived from the channel's member list (plus the
//! per-member channel info kept next to it), so it can never disagree with
//! who actually receives publications and costs nothing until asked for.
//! A multi-node deployment would replace [`Channel::presence`](crate::Channel::presence)
//! with a shared store keyed by channel, fed by the same join and leave
//! points in the channel.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::connection::ConnEntry;

/// One subscriber of a channel, as shown by presence and join/leave events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientInfo {
    /// The connection's client id (its [`ConnId`](crate::ConnId) in decimal).
    pub client: String,
    /// The user id; empty for anonymous connections.
    pub user: String,
    /// Connection-wide info given at registration
    /// ([`ConnInfo::conn_info`](crate::ConnInfo::conn_info)), usually JSON.
    pub conn_info: Option<Bytes>,
    /// Info given when subscribing to this channel
    /// ([`SubscribeOptions::chan_info`](crate::SubscribeOptions::chan_info)).
    pub chan_info: Option<Bytes>,
}

impl ClientInfo {
    pub(crate) fn of(entry: &ConnEntry, chan_info: Option<Bytes>) -> ClientInfo {
        ClientInfo {
            client: entry.id.to_string(),
            user: entry.info.user.clone().unwrap_or_default(),
            conn_info: entry.info.conn_info.clone(),
            chan_info,
        }
    }

    /// Approximate bytes this info occupies, for outbox budgets.
    pub(crate) fn size(&self) -> usize {
        self.client.len()
            + self.user.len()
            + self.conn_info.as_ref().map_or(0, Bytes::len)
            + self.chan_info.as_ref().map_or(0, Bytes::len)
    }
}

/// Counts from [`Hub::presence_stats`](crate::Hub::presence_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Subscribed connections.
    pub num_clients: usize,
    /// Distinct user ids among them (anonymous connections count as one
    /// user, the empty id, like in Centrifugo).
    pub num_users: usize,
}

/// A member joined or left a channel; carried by
/// [`Delivery::Join`](crate::Delivery::Join) and
/// [`Delivery::Leave`](crate::Delivery::Leave), shared by every recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEvent {
    /// The channel.
    pub channel: std::sync::Arc<str>,
    /// Who joined or left.
    pub info: ClientInfo,
}

/// Presence of a member list: client id → info.
pub(crate) fn collect<'a>(
    members: impl Iterator<Item = &'a std::sync::Arc<ConnEntry>>,
    chan_info: &HashMap<crate::ConnId, Bytes>,
) -> HashMap<String, ClientInfo> {
    members
        .map(|m| {
            let info = ClientInfo::of(m, chan_info.get(&m.id).cloned());
            (info.client.clone(), info)
        })
        .collect()
}

/// Presence counts of a member list.
pub(crate) fn stats<'a>(
    members: impl Iterator<Item = &'a std::sync::Arc<ConnEntry>>,
) -> PresenceStats {
    let mut users = HashSet::new();
    let mut clients = 0;
    for m in members {
        clients += 1;
        users.insert(m.info.user.as_deref().unwrap_or(""));
    }
    PresenceStats {
        num_clients: clients,
        num_users: users.len(),
    }
}
