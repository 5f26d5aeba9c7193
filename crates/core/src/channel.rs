//! A channel (room): its members and its publication sequence.
//!
//! Members live in a `Vec` so fan-out is a linear scan over contiguous
//! pointers; a side index maps connection ids to positions so leaving is
//! O(1) (`swap_remove`).
//!
//! This struct is also where per-channel features will attach: namespace
//! options, a history buffer (publications kept by offset for recovery),
//! presence, and a broker subscription when several nodes share channels.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::connection::ConnEntry;
use crate::outbox::PushOutcome;
use crate::publication::{ConnId, Delivery, Payload, Publication};

pub(crate) struct Members {
    list: Vec<Arc<ConnEntry>>,
    index: HashMap<ConnId, usize>,
    /// Set when the last member left. A dead channel is about to be removed
    /// from the hub's map; nobody may join it (they create a fresh one).
    dead: bool,
}

/// Why a connection could not join.
pub(crate) enum JoinError {
    /// The channel emptied and is being removed; retry with a fresh one.
    Dead,
    /// The channel has `limit` members already.
    Full(usize),
}

/// Counts from one fan-out.
#[derive(Default)]
pub(crate) struct FanOut {
    pub(crate) delivered: usize,
    pub(crate) evicted: usize,
    /// Members whose outbox overflowed under the Close policy; the caller
    /// removes them from the hub once no channel lock is held.
    pub(crate) slow: Vec<Arc<ConnEntry>>,
}

/// A channel (room): a named set of connections that receive every
/// publication in it, in offset order.
///
/// Channels are created by the first subscribe and removed when the last
/// member leaves; a channel created again later gets a new epoch.
pub struct Channel {
    name: Arc<str>,
    epoch: u32,
    /// Serialises publications so that offsets are assigned without gaps and
    /// every member receives them in offset order, even with concurrent
    /// publishers. Holds the last offset used.
    sequence: Mutex<u64>,
    members: RwLock<Members>,
}

impl Channel {
    pub(crate) fn new(name: Arc<str>, epoch: u32) -> Channel {
        Channel {
            name,
            epoch,
            sequence: Mutex::new(0),
            members: RwLock::new(Members {
                list: Vec::new(),
                index: HashMap::new(),
                dead: false,
            }),
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The epoch chosen when this channel was created.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Offset of the latest publication (0 if none yet).
    pub fn last_offset(&self) -> u64 {
        *self.sequence.lock()
    }

    /// Current number of members.
    pub fn member_count(&self) -> usize {
        self.members.read().list.len()
    }

    /// Ids of the current members (in no particular order).
    pub fn member_ids(&self) -> Vec<ConnId> {
        self.members.read().list.iter().map(|m| m.id).collect()
    }

    /// Adds `conn`. `Ok(false)` if it was already a member.
    pub(crate) fn join(
        &self,
        conn: &Arc<ConnEntry>,
        limit: Option<usize>,
    ) -> Result<bool, JoinError> {
        let mut m = self.members.write();
        if m.dead {
            return Err(JoinError::Dead);
        }
        if m.index.contains_key(&conn.id) {
            return Ok(false);
        }
        if let Some(limit) = limit {
            if m.list.len() >= limit {
                return Err(JoinError::Full(limit));
            }
        }
        let pos = m.list.len();
        m.list.push(Arc::clone(conn));
        m.index.insert(conn.id, pos);
        Ok(true)
    }

    /// Removes member `id`. Returns `(was_member, now_dead)`; `now_dead` means
    /// this removal emptied the channel and the caller must unlink it.
    pub(crate) fn leave(&self, id: ConnId) -> (bool, bool) {
        let mut m = self.members.write();
        let Some(pos) = m.index.remove(&id) else {
            return (false, false);
        };
        m.list.swap_remove(pos);
        if let Some(moved) = m.list.get(pos) {
            let moved_id = moved.id;
            m.index.insert(moved_id, pos);
        }
        if m.list.is_empty() {
            m.dead = true;
            // Give the memory back now: a 10k-member room that emptied
            // should not keep its arrays while the map entry goes away.
            m.list = Vec::new();
            m.index = HashMap::new();
            return (true, true);
        }
        (true, false)
    }

    /// Assigns the next offset, builds the one shared publication and pushes
    /// it into every member's outbox except `exclude`.
    pub(crate) fn publish(
        &self,
        payload: Payload,
        publisher: Option<ConnId>,
        exclude: Option<ConnId>,
    ) -> (Arc<Publication>, FanOut) {
        let mut seq = self.sequence.lock();
        *seq += 1;
        let publication = Arc::new(Publication::new(
            Arc::clone(&self.name),
            payload,
            *seq,
            self.epoch,
            publisher,
        ));
        let mut out = FanOut::default();
        let members = self.members.read();
        for member in &members.list {
            if Some(member.id) == exclude {
                continue;
            }
            match member
                .outbox
                .push(Delivery::Publication(Arc::clone(&publication)))
            {
                PushOutcome::Queued { evicted } => {
                    out.delivered += 1;
                    out.evicted += evicted;
                }
                PushOutcome::ClosedSlow => out.slow.push(Arc::clone(member)),
                PushOutcome::Closed(_) => {}
            }
        }
        drop(members);
        drop(seq);
        (publication, out)
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}
