//! A channel (room): its members, its publication stream (offsets, epoch,
//! history) and its presence.
//!
//! Members live in a `Vec` so fan-out is a linear scan over contiguous
//! pointers; a side index maps connection ids to positions so leaving is
//! O(1) (`swap_remove`). Per-member channel info (for presence) is kept in a
//! separate map so it does not widen the vector the fan-out walks.
//!
//! Two locks, always taken in this order: `stream` (the publish sequence:
//! offset, epoch, history) then `members`. Publishing holds both while it
//! assigns an offset, appends to history and queues into outboxes, so a
//! subscriber added under the same two locks sees every publication exactly
//! once: either it was published before (and is in history) or after (and
//! is queued to it). Channels without history skip the `stream` lock when
//! members leave, since there is no stream state to keep consistent then.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::connection::ConnEntry;
use crate::error::ChannelError;
use crate::history::{Epoch, HistoryBuf, HistoryQuery, HistoryResult, Recovery, StreamPosition};
use crate::hub::{HubInner, PublishOptions};
use crate::limits::HubLimits;
use crate::namespace::ChannelOptions;
use crate::outbox::PushOutcome;
use crate::presence::{self, ClientInfo, MemberEvent, PresenceStats};
use crate::publication::{ConnId, Delivery, Payload, Publication};

pub(crate) struct Members {
    list: Vec<Arc<ConnEntry>>,
    index: HashMap<ConnId, usize>,
    /// Channel info given at subscribe, only for members that gave one.
    chan_info: HashMap<ConnId, Bytes>,
    /// Set when the channel is being removed (no members, nothing to
    /// retain). A dead channel is about to leave the hub's map; nobody may
    /// join or publish into it (they create a fresh one).
    dead: bool,
}

/// The publish sequence of a channel.
struct Stream {
    epoch: Epoch,
    /// Offset of the latest publication (0 if none yet).
    offset: u64,
    history: HistoryBuf,
    /// Until when a channel with history is kept without members.
    retain_until: Instant,
    /// Latest publish (or creation): orders channels for eviction under
    /// the history memory cap.
    last_active: Instant,
}

/// Why a connection could not join.
pub(crate) enum JoinError {
    /// The channel emptied and is being removed; retry with a fresh one.
    Dead,
    /// The channel has `limit` members already.
    Full(usize),
}

/// The channel is being removed; retry with a fresh one.
pub(crate) struct Dead;

/// Counts from one fan-out.
#[derive(Default)]
pub(crate) struct FanOut {
    pub(crate) delivered: usize,
    pub(crate) evicted: usize,
    /// Members whose outbox overflowed under the Close policy; the caller
    /// removes them from the hub once no channel or connection lock is held.
    pub(crate) slow: Vec<Arc<ConnEntry>>,
}

impl FanOut {
    fn push(&mut self, member: &Arc<ConnEntry>, item: Delivery, limits: &HubLimits) {
        match member.outbox.push(item, limits) {
            PushOutcome::Queued { evicted } => {
                self.delivered += 1;
                self.evicted += evicted;
            }
            PushOutcome::ClosedSlow => self.slow.push(Arc::clone(member)),
            PushOutcome::Closed(_) => {}
        }
    }
}

/// What a successful join did.
pub(crate) struct Joined {
    /// False if the connection was already a member.
    pub(crate) added: bool,
    pub(crate) position: StreamPosition,
    pub(crate) recovery: Option<Recovery>,
    /// The join event's fan-out.
    pub(crate) fan: FanOut,
}

/// What a leave did.
#[derive(Default)]
pub(crate) struct Left {
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) was_member: bool,
    /// This removal made the channel dead; the caller must unlink it.
    pub(crate) now_dead: bool,
    /// This removal left the channel without members (dead or kept for its history).
    pub(crate) emptied: bool,
    /// Who left, when the channel's namespace has presence or join/leave events (a
    /// shared store of several nodes must learn about it).
    pub(crate) info: Option<ClientInfo>,
    /// The leave event's fan-out.
    pub(crate) fan: FanOut,
}

/// What a publish did.
pub(crate) struct Published {
    pub(crate) publication: Arc<Publication>,
    pub(crate) fan: FanOut,
    /// The publication was added to history (memory cap may need enforcing).
    pub(crate) stored: bool,
}

/// A channel (room): a named set of connections that receive every
/// publication in it, in offset order, plus (depending on its namespace's
/// [`ChannelOptions`]) its history and presence.
///
/// Channels are created by the first subscribe (or, with history, the first
/// publish) and removed when the last member leaves, unless they have
/// history: those stay, without members, until `history_ttl` after their
/// last publication. A channel created again later gets a new epoch.
pub struct Channel {
    name: Arc<str>,
    options: Arc<ChannelOptions>,
    stream: Mutex<Stream>,
    members: RwLock<Members>,
}

impl Channel {
    pub(crate) fn new(name: Arc<str>, options: Arc<ChannelOptions>, hub: &HubInner) -> Channel {
        let now = if options.history_enabled() {
            hub.now()
        } else {
            // Never read for channels without history; avoid the clock call.
            hub.created
        };
        Channel {
            name,
            stream: Mutex::new(Stream {
                epoch: hub.new_epoch(),
                offset: 0,
                history: HistoryBuf::default(),
                retain_until: now + options.history_ttl,
                last_active: now,
            }),
            options,
            members: RwLock::new(Members {
                list: Vec::new(),
                index: HashMap::new(),
                chan_info: HashMap::new(),
                dead: false,
            }),
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The options of the channel's namespace.
    pub fn options(&self) -> &Arc<ChannelOptions> {
        &self.options
    }

    /// The current epoch: chosen when the channel was created, changed when
    /// its history is lost.
    pub fn epoch(&self) -> Epoch {
        self.stream.lock().epoch
    }

    /// Offset of the latest publication (0 if none yet).
    pub fn last_offset(&self) -> u64 {
        self.stream.lock().offset
    }

    /// The current top of the stream: latest offset and epoch.
    pub fn position(&self) -> StreamPosition {
        let st = self.stream.lock();
        StreamPosition::new(st.offset, st.epoch)
    }

    /// Current number of members.
    pub fn member_count(&self) -> usize {
        self.members.read().list.len()
    }

    /// Ids of the current members (in no particular order).
    pub fn member_ids(&self) -> Vec<ConnId> {
        self.members.read().list.iter().map(|m| m.id).collect()
    }

    /// Who is subscribed: client id → info. Computed from the member list
    /// whether or not the namespace enables presence (the hub checks that).
    pub fn presence(&self) -> HashMap<String, ClientInfo> {
        let m = self.members.read();
        presence::collect(m.list.iter(), &m.chan_info)
    }

    /// Member and distinct-user counts.
    pub fn presence_stats(&self) -> PresenceStats {
        presence::stats(self.members.read().list.iter())
    }

    /// Publications held in history and the bytes accounted to them.
    pub fn history_len(&self) -> (usize, usize) {
        let st = self.stream.lock();
        (st.history.len(), st.history.bytes())
    }

    // ---- crate internals -------------------------------------------------

    fn history_enabled(&self) -> bool {
        self.options.history_enabled()
    }

    /// Drops expired history entries.
    fn trim(&self, st: &mut Stream, hub: &HubInner, now: Instant) {
        let freed = st.history.trim_expired(now);
        hub.history_freed(freed);
    }

    /// Adds `conn` (with optional channel info), and if `since` is given,
    /// computes what it missed after that position, atomically with respect
    /// to publications: each publication is either in the recovery or
    /// queued to `conn` afterwards, never both or neither.
    pub(crate) fn join(
        &self,
        conn: &Arc<ConnEntry>,
        limit: Option<usize>,
        chan_info: Option<Bytes>,
        since: Option<StreamPosition>,
        hub: &HubInner,
    ) -> Result<Joined, JoinError> {
        let mut st = self.stream.lock();
        if self.history_enabled() {
            self.trim(&mut st, hub, hub.now());
        }
        let mut m = self.members.write();
        if m.dead {
            return Err(JoinError::Dead);
        }
        let position = StreamPosition::new(st.offset, st.epoch);
        let recovery = since.map(|s| recover_locked(&st, s));
        if m.index.contains_key(&conn.id) {
            return Ok(Joined {
                added: false,
                position,
                recovery,
                fan: FanOut::default(),
            });
        }
        if let Some(limit) = limit {
            if m.list.len() >= limit {
                return Err(JoinError::Full(limit));
            }
        }
        let pos = m.list.len();
        m.list.push(Arc::clone(conn));
        m.index.insert(conn.id, pos);
        if let Some(info) = &chan_info {
            m.chan_info.insert(conn.id, info.clone());
        }
        // The publish sequence is no longer needed: a join event need not be
        // ordered with publications.
        drop(st);
        let mut fan = FanOut::default();
        if self.options.join_leave && m.list.len() > 1 {
            let event = Arc::new(MemberEvent {
                channel: Arc::clone(&self.name),
                info: ClientInfo::of(conn, chan_info),
            });
            for member in m.list.iter().filter(|x| x.id != conn.id) {
                fan.push(member, Delivery::Join(Arc::clone(&event)), &hub.limits);
            }
        }
        Ok(Joined {
            added: true,
            position,
            recovery,
            fan,
        })
    }

    /// Removes member `id`. When that empties the channel and there is no
    /// history to retain, the channel becomes dead and the caller must
    /// unlink it.
    pub(crate) fn leave(&self, id: ConnId, hub: &HubInner) -> Left {
        let mut st = self.history_enabled().then(|| self.stream.lock());
        let mut m = self.members.write();
        let Some(pos) = m.index.remove(&id) else {
            return Left::default();
        };
        let entry = m.list.swap_remove(pos);
        if let Some(moved) = m.list.get(pos) {
            let moved_id = moved.id;
            m.index.insert(moved_id, pos);
        }
        let chan_info = m.chan_info.remove(&id);
        let info = (self.options.presence || self.options.join_leave)
            .then(|| ClientInfo::of(&entry, chan_info.clone()));
        if m.list.is_empty() {
            let retained = match st.as_deref_mut() {
                Some(st) => {
                    let now = hub.now();
                    self.trim(st, hub, now);
                    now < st.retain_until
                }
                None => false,
            };
            // Give the memory back now: a 10k-member room that emptied
            // should not keep its arrays while it waits or goes away.
            m.list = Vec::new();
            m.index = HashMap::new();
            m.chan_info = HashMap::new();
            if !retained {
                m.dead = true;
                if let Some(st) = st.as_deref_mut() {
                    hub.history_freed(st.history.clear());
                }
            }
            return Left {
                was_member: true,
                now_dead: !retained,
                emptied: true,
                info,
                fan: FanOut::default(),
            };
        }
        drop(st);
        let mut fan = FanOut::default();
        if self.options.join_leave {
            let event = Arc::new(MemberEvent {
                channel: Arc::clone(&self.name),
                info: ClientInfo::of(&entry, chan_info),
            });
            for member in &m.list {
                fan.push(member, Delivery::Leave(Arc::clone(&event)), &hub.limits);
            }
        }
        Left {
            was_member: true,
            now_dead: false,
            emptied: false,
            info,
            fan,
        }
    }

    /// Assigns the next offset, builds the one shared publication, stores
    /// it in history (if enabled) and pushes it into every member's outbox
    /// except `opts.exclude`. With `opts.skip_history` it takes no offset
    /// (0: outside the stream) and is not stored.
    pub(crate) fn publish(
        &self,
        payload: Payload,
        opts: PublishOptions,
        info: Option<Arc<ClientInfo>>,
        hub: &HubInner,
    ) -> Result<Published, Dead> {
        let PublishOptions {
            exclude,
            publisher,
            skip_history,
        } = opts;
        let mut st = self.stream.lock();
        let members = self.members.read();
        if members.dead {
            return Err(Dead);
        }
        let offset = if skip_history {
            0
        } else {
            st.offset += 1;
            st.offset
        };
        let publication = Arc::new(
            Publication::new(Arc::clone(&self.name), payload, offset, st.epoch, publisher)
                .with_info(info),
        );
        let stored = self.history_enabled() && !skip_history;
        if stored {
            let now = hub.now();
            let expired = st.history.trim_expired(now);
            let (added, removed) = st.history.push(
                Arc::clone(&publication),
                now,
                self.options.history_ttl,
                self.options.history_size,
            );
            hub.history_bytes.fetch_add(added, Ordering::Relaxed);
            hub.history_freed(expired + removed);
            st.retain_until = now + self.options.history_ttl;
            st.last_active = now;
        }
        let mut fan = FanOut::default();
        for member in &members.list {
            if Some(member.id) == exclude {
                continue;
            }
            fan.push(
                member,
                Delivery::Publication(Arc::clone(&publication)),
                &hub.limits,
            );
        }
        drop(members);
        drop(st);
        Ok(Published {
            publication,
            fan,
            stored,
        })
    }

    /// Queues a publication numbered elsewhere (by a broker shared by several
    /// nodes) into every member's outbox except `exclude`. No offset is
    /// assigned and nothing is stored: the broker owns the stream. Callers
    /// deliver one channel's publications from one task, in offset order.
    pub(crate) fn fan_out(
        &self,
        publication: &Arc<Publication>,
        exclude: Option<ConnId>,
        limits: &HubLimits,
    ) -> FanOut {
        let members = self.members.read();
        let mut fan = FanOut::default();
        for member in &members.list {
            if Some(member.id) == exclude {
                continue;
            }
            fan.push(
                member,
                Delivery::Publication(Arc::clone(publication)),
                limits,
            );
        }
        fan
    }

    /// Queues a join or leave event that happened on another node into every
    /// member's outbox (only in namespaces with `join_leave`).
    pub(crate) fn member_event(&self, join: bool, info: ClientInfo, limits: &HubLimits) -> FanOut {
        let mut fan = FanOut::default();
        if !self.options.join_leave {
            return fan;
        }
        let members = self.members.read();
        let event = Arc::new(MemberEvent {
            channel: Arc::clone(&self.name),
            info,
        });
        for member in &members.list {
            let item = if join {
                Delivery::Join(Arc::clone(&event))
            } else {
                Delivery::Leave(Arc::clone(&event))
            };
            fan.push(member, item, limits);
        }
        fan
    }

    /// Whether connection `id` is a member.
    pub fn has_member(&self, id: ConnId) -> bool {
        self.members.read().index.contains_key(&id)
    }

    /// Answers a history query (the caller checked history is enabled).
    pub(crate) fn history(
        &self,
        query: HistoryQuery,
        hub: &HubInner,
    ) -> Result<HistoryResult, ChannelError> {
        let mut st = self.stream.lock();
        self.trim(&mut st, hub, hub.now());
        let position = StreamPosition::new(st.offset, st.epoch);
        if let Some(since) = query.since {
            if since.epoch != st.epoch || since.offset > st.offset {
                return Err(ChannelError::UnrecoverablePosition);
            }
        }
        let limit = query.limit.unwrap_or(usize::MAX);
        let publications = match (query.reverse, query.since) {
            (false, since) => st.history.after(since.map_or(0, |s| s.offset), limit),
            (true, since) => st
                .history
                .before_reversed(since.map_or(u64::MAX, |s| s.offset), limit),
        };
        Ok(HistoryResult {
            publications,
            position,
        })
    }

    /// What a client at `since` missed, without joining.
    pub(crate) fn recover(&self, since: StreamPosition, hub: &HubInner) -> Recovery {
        let mut st = self.stream.lock();
        if self.history_enabled() {
            self.trim(&mut st, hub, hub.now());
        }
        recover_locked(&st, since)
    }

    /// Drops the history and starts a new epoch (offsets continue).
    /// Returns the bytes freed.
    pub(crate) fn reset_history(&self, hub: &HubInner) -> usize {
        let mut st = self.stream.lock();
        let freed = st.history.clear();
        hub.history_freed(freed);
        st.epoch = hub.new_epoch();
        freed
    }

    /// Bytes held in history and the time of the latest publish.
    pub(crate) fn history_usage(&self) -> (usize, Instant) {
        let st = self.stream.lock();
        (st.history.bytes(), st.last_active)
    }

    /// Drops expired history; if the channel has no members and nothing to
    /// retain any more, makes it dead. Returns whether it is dead.
    pub(crate) fn expire(&self, hub: &HubInner) -> bool {
        let mut st = self.stream.lock();
        let now = hub.now();
        self.trim(&mut st, hub, now);
        let mut m = self.members.write();
        if !m.dead && m.list.is_empty() && now >= st.retain_until {
            m.dead = true;
            hub.history_freed(st.history.clear());
        }
        m.dead
    }

    /// Marks an empty, never-used channel dead (test staging only).
    #[cfg(test)]
    pub(crate) fn is_dead(&self) -> bool {
        self.members.read().dead
    }
}

/// Recovery of a client at `since`, under the stream lock.
fn recover_locked(st: &Stream, since: StreamPosition) -> Recovery {
    let position = StreamPosition::new(st.offset, st.epoch);
    if since.epoch != st.epoch || since.offset > st.offset {
        return Recovery {
            publications: Vec::new(),
            recovered: false,
            position,
        };
    }
    if since.offset == st.offset {
        return Recovery {
            publications: Vec::new(),
            recovered: true,
            position,
        };
    }
    let publications = st.history.after(since.offset, usize::MAX);
    // Complete when history still starts at or before the first missed offset.
    let recovered = st
        .history
        .first_offset()
        .is_some_and(|first| first <= since.offset + 1);
    Recovery {
        publications,
        recovered,
        position,
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}
