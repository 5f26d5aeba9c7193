//! Stream positions (offset + epoch), the per-channel history buffer, and
//! the query and recovery types built on it.
//!
//! [`HistoryBuf`] is the in-memory store of one channel's recent
//! publications. It is deliberately small and self-contained (push, trim,
//! read by offset) so that a shared store (e.g. Redis streams, for several
//! nodes) can later take its place behind the same operations in
//! [`Channel`](crate::Channel).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::publication::Publication;

/// Identifies one continuous history of a channel.
///
/// Offsets are only comparable within one epoch. A channel gets a new epoch
/// when it is created and whenever its history is lost or reset (expired
/// while the channel had no members, removed with
/// [`Hub::history_remove`](crate::Hub::history_remove), dropped to stay under
/// the history memory cap), so "same epoch" means "nothing was lost".
///
/// A short string (at most [`Epoch::MAX_LEN`] bytes) stored inline: copying
/// it costs no allocation. Epochs made by the hub are 8 random letters and
/// digits; epochs received from clients can be parsed with
/// [`Epoch::parse`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Epoch {
    len: u8,
    bytes: [u8; Epoch::MAX_LEN],
}

impl Epoch {
    /// Longest epoch string.
    pub const MAX_LEN: usize = 16;
    /// The empty epoch: never the epoch of a channel, so it never matches.
    pub const EMPTY: Epoch = Epoch {
        len: 0,
        bytes: [0; Epoch::MAX_LEN],
    };

    /// The epoch spelled `s`, or `None` if it is longer than
    /// [`MAX_LEN`](Self::MAX_LEN) (such an epoch cannot be one of ours).
    pub fn parse(s: &str) -> Option<Epoch> {
        if s.len() > Self::MAX_LEN {
            return None;
        }
        let mut bytes = [0; Self::MAX_LEN];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Some(Epoch {
            len: s.len() as u8,
            bytes,
        })
    }

    /// Parses a client-supplied epoch; one that is too long becomes
    /// [`Epoch::EMPTY`], which matches no channel (so recovery reports
    /// "not recovered" rather than failing).
    pub fn from_client(s: &str) -> Epoch {
        Epoch::parse(s).unwrap_or(Epoch::EMPTY)
    }

    /// An 8-character alphanumeric epoch derived from `seed` (random bits).
    pub(crate) fn from_seed(mut seed: u64) -> Epoch {
        const ALPHABET: &[u8; 62] =
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut bytes = [0; Self::MAX_LEN];
        for b in bytes.iter_mut().take(8) {
            *b = ALPHABET[(seed % 62) as usize];
            seed /= 62;
        }
        Epoch { len: 8, bytes }
    }

    /// The epoch as a string.
    pub fn as_str(&self) -> &str {
        // Built only from `&str` prefixes or ASCII, so always valid UTF-8;
        // `parse` may cut nothing mid-character because it copies whole strings.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }

    /// Whether this is the empty epoch.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl From<u32> for Epoch {
    /// The decimal spelling of `n` (kept for code that used numeric epochs).
    fn from(n: u32) -> Epoch {
        Epoch::from_client(&n.to_string())
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for Epoch {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Epoch {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A place in a channel's stream: the offset of a publication (0 = before
/// the first) in a given epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StreamPosition {
    /// Offset of the last publication seen (0 if none).
    pub offset: u64,
    /// Epoch the offset belongs to.
    pub epoch: Epoch,
}

impl StreamPosition {
    /// The position `offset` in `epoch`.
    pub fn new(offset: u64, epoch: Epoch) -> StreamPosition {
        StreamPosition { offset, epoch }
    }
}

/// What [`Hub::history`](crate::Hub::history) should return.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Without `reverse`: only publications after this position (offset >
    /// `since.offset`), oldest first. With `reverse`: only publications
    /// before it (offset < `since.offset`), newest first. The epoch must be
    /// the channel's current one, otherwise the query fails with
    /// [`ChannelError::UnrecoverablePosition`](crate::ChannelError::UnrecoverablePosition).
    pub since: Option<StreamPosition>,
    /// At most this many publications; `None` for all, `Some(0)` for just
    /// the stream position.
    pub limit: Option<usize>,
    /// Newest first instead of oldest first.
    pub reverse: bool,
}

/// Answer of [`Hub::history`](crate::Hub::history).
#[derive(Debug, Clone, Default)]
pub struct HistoryResult {
    /// The publications, in the order asked for.
    pub publications: Vec<Arc<Publication>>,
    /// The channel's current top: offset of its latest publication and its epoch.
    pub position: StreamPosition,
}

/// Answer of a recovery ([`Hub::recover`](crate::Hub::recover),
/// [`Hub::subscribe_with_recovery`](crate::Hub::subscribe_with_recovery)).
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Publications after the client's position, oldest first, with no
    /// gaps when `recovered`. When not recovered but the epoch matched, the
    /// ones still in history are included (the client can show them, with a
    /// notice that some were lost); on an epoch mismatch it is empty.
    pub publications: Vec<Arc<Publication>>,
    /// True when the client missed nothing beyond `publications`: the epoch
    /// is the current one and every publication after its offset is still
    /// in history (or there was none).
    pub recovered: bool,
    /// The channel's current top.
    pub position: StreamPosition,
}

/// One publication held in history.
struct Entry {
    publication: Arc<Publication>,
    expires: Instant,
    size: usize,
}

/// Accounted size of one history entry: payload plus a fixed overhead for
/// the publication record and the queue slot.
pub(crate) fn entry_size(p: &Publication) -> usize {
    p.payload.len() + std::mem::size_of::<Publication>() + std::mem::size_of::<Entry>()
}

/// The in-memory history of one channel: its most recent publications,
/// bounded by count and age. Offsets in it are consecutive.
#[derive(Default)]
pub(crate) struct HistoryBuf {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl HistoryBuf {
    /// Appends `p` (whose offset must follow the last one), then drops the
    /// oldest entries beyond `max_len`. Returns (bytes added, bytes removed).
    pub(crate) fn push(
        &mut self,
        p: Arc<Publication>,
        now: Instant,
        ttl: Duration,
        max_len: usize,
    ) -> (usize, usize) {
        let size = entry_size(&p);
        self.entries.push_back(Entry {
            publication: p,
            expires: now + ttl,
            size,
        });
        self.bytes += size;
        let mut removed = 0;
        while self.entries.len() > max_len {
            removed += self.pop_front();
        }
        (size, removed)
    }

    fn pop_front(&mut self) -> usize {
        match self.entries.pop_front() {
            Some(e) => {
                self.bytes -= e.size;
                e.size
            }
            None => 0,
        }
    }

    /// Drops entries that expired at `now`. Returns the bytes freed.
    pub(crate) fn trim_expired(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        while self.entries.front().is_some_and(|e| e.expires <= now) {
            removed += self.pop_front();
        }
        removed
    }

    /// Drops everything. Returns the bytes freed.
    pub(crate) fn clear(&mut self) -> usize {
        let freed = self.bytes;
        self.entries = VecDeque::new();
        self.bytes = 0;
        freed
    }

    /// Bytes accounted to this buffer.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of publications held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Offset of the oldest publication held.
    pub(crate) fn first_offset(&self) -> Option<u64> {
        self.entries.front().map(|e| e.publication.offset)
    }

    /// Publications with offset > `after`, oldest first, at most `limit`.
    pub(crate) fn after(&self, after: u64, limit: usize) -> Vec<Arc<Publication>> {
        let Some(first) = self.first_offset() else {
            return Vec::new();
        };
        // Offsets are consecutive, so the start index is arithmetic.
        let skip = after.saturating_add(1).saturating_sub(first);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.entries
            .iter()
            .skip(skip)
            .take(limit)
            .map(|e| Arc::clone(&e.publication))
            .collect()
    }

    /// Publications with offset < `before`, newest first, at most `limit`.
    pub(crate) fn before_reversed(&self, before: u64, limit: usize) -> Vec<Arc<Publication>> {
        self.entries
            .iter()
            .rev()
            .skip_while(|e| e.publication.offset >= before)
            .take(limit)
            .map(|e| Arc::clone(&e.publication))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publication::Payload;

    fn publ(offset: u64) -> Arc<Publication> {
        Arc::new(Publication::new(
            Arc::from("c"),
            Payload::text(offset.to_string()),
            offset,
            Epoch::from_client("e"),
            None,
        ))
    }

    fn offsets(v: &[Arc<Publication>]) -> Vec<u64> {
        v.iter().map(|p| p.offset).collect()
    }

    #[test]
    fn epoch_roundtrips_and_rejects_long_strings() {
        let e = Epoch::parse("abcd").unwrap();
        assert_eq!(e.as_str(), "abcd");
        assert_eq!(e, "abcd");
        assert!(Epoch::parse(&"x".repeat(17)).is_none());
        assert_eq!(Epoch::from_client(&"x".repeat(17)), Epoch::EMPTY);
        assert_eq!(Epoch::from(7).as_str(), "7");
        let g = Epoch::from_seed(123_456_789_012);
        assert_eq!(g.as_str().len(), 8);
        assert!(g.as_str().bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(g, Epoch::from_seed(123_456_789_013));
    }

    #[test]
    fn bounded_by_count_and_age() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut h = HistoryBuf::default();
        for i in 1..=5 {
            h.push(publ(i), t0 + Duration::from_secs(i), ttl, 3);
        }
        assert_eq!((h.len(), h.first_offset()), (3, Some(3)));
        assert_eq!(
            h.bytes(),
            offsets(&h.after(0, 10)).len() * entry_size(&publ(3))
        );
        // Entry 3 was pushed at t0+3 and expires at t0+13.
        assert!(h.trim_expired(t0 + Duration::from_secs(13)) > 0);
        assert_eq!(h.first_offset(), Some(4));
        assert_eq!(h.clear(), 2 * entry_size(&publ(4)));
        assert_eq!((h.len(), h.bytes()), (0, 0));
    }

    #[test]
    fn reads_by_offset_both_ways() {
        let t0 = Instant::now();
        let mut h = HistoryBuf::default();
        for i in 11..=20 {
            h.push(publ(i), t0, Duration::from_secs(1), 100);
        }
        assert_eq!(offsets(&h.after(0, 3)), vec![11, 12, 13]);
        assert_eq!(offsets(&h.after(15, 100)), vec![16, 17, 18, 19, 20]);
        assert!(h.after(20, 100).is_empty());
        assert_eq!(offsets(&h.before_reversed(u64::MAX, 2)), vec![20, 19]);
        assert_eq!(offsets(&h.before_reversed(13, 100)), vec![12, 11]);
    }
}
