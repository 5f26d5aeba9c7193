//! Connection state recovery: sockets kept for a while after their transport dropped, so a
//! client that reconnects with `auth: {pid, offset}` gets them back.
//!
//! A kept socket stays registered in the hub with its subscriptions: publications keep
//! being queued in its outbox (bounded; an overflow applies the slow-consumer policy and
//! the socket can no longer be recovered). Each socket also remembers the last events it
//! sent, with their offsets ([`Ring`]): what was written just before the transport dropped
//! may never have reached the client. On recovery the events after the client's last
//! offset are sent again, then the outbox continues — every event once, in order.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_protocols::socketio::EncodedEvent;

use super::socket::NsSocket;

/// The last events a socket sent, with their offsets.
#[derive(Debug)]
pub(crate) struct Ring {
    items: VecDeque<(String, Arc<EncodedEvent>)>,
    cap: usize,
    /// Whether an event was ever dropped to make room.
    evicted: bool,
}

impl Ring {
    /// An empty ring keeping up to `cap` events.
    pub(crate) fn new(cap: usize) -> Ring {
        Ring {
            items: VecDeque::new(),
            cap,
            evicted: false,
        }
    }

    /// Records an event just sent.
    pub(crate) fn push(&mut self, offset: String, event: Arc<EncodedEvent>) {
        if self.cap == 0 {
            self.evicted = true;
            return;
        }
        if self.items.len() == self.cap {
            self.items.pop_front();
            self.evicted = true;
        }
        self.items.push_back((offset, event));
    }

    /// The events sent after `offset` (the last offset the client saw; `None` if it saw
    /// none), or `None` when they are not all known any more.
    pub(crate) fn after(&self, offset: Option<&str>) -> Option<Vec<Arc<EncodedEvent>>> {
        let start = match offset {
            None if !self.evicted => 0,
            None => return None,
            Some(o) => self.items.iter().position(|(off, _)| off == o)? + 1,
        };
        Some(
            self.items
                .iter()
                .skip(start)
                .map(|(_, e)| Arc::clone(e))
                .collect(),
        )
    }
}

struct Kept {
    socket: NsSocket,
    generation: u64,
}

/// The sockets kept for recovery by one server's Socket.IO endpoint, by pid.
#[derive(Default)]
pub(crate) struct Store {
    kept: Mutex<HashMap<String, Kept>>,
    generation: AtomicU64,
}

impl Store {
    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `socket` (which has a pid) for `ttl`; after that it is dropped (leaving the
    /// hub).
    pub(crate) fn keep(self: &Arc<Self>, socket: NsSocket, ttl: Duration) {
        let Some(pid) = socket.pid().map(String::from) else {
            return;
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        self.kept().insert(pid.clone(), Kept { socket, generation });
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let Some(store) = store.upgrade() else {
                return;
            };
            let expired = {
                let mut map = store.kept();
                match map.get(&pid) {
                    Some(k) if k.generation == generation => map.remove(&pid),
                    _ => None,
                }
            };
            // Dropped outside the lock: leaving the hub takes the hub's locks.
            drop(expired);
        });
    }

    /// Takes back the socket kept under `pid` for namespace `nsp`, if any.
    pub(crate) fn take(&self, pid: &str, nsp: &str) -> Option<NsSocket> {
        let mut map = self.kept();
        match map.get(pid) {
            Some(k) if k.socket.nsp == nsp => map.remove(pid).map(|k| k.socket),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ev(n: u8) -> Arc<EncodedEvent> {
        Arc::new(EncodedEvent::new(Bytes::from(vec![n]), Vec::new()))
    }

    #[test]
    fn ring_replays_after_an_offset() {
        let mut r = Ring::new(3);
        assert_eq!(r.after(None).unwrap().len(), 0);
        r.push("a".into(), ev(1));
        r.push("b".into(), ev(2));
        assert_eq!(r.after(None).unwrap().len(), 2);
        assert_eq!(r.after(Some("a")).unwrap(), vec![ev(2)]);
        assert_eq!(r.after(Some("b")).unwrap(), vec![]);
        assert!(r.after(Some("zz")).is_none());
        r.push("c".into(), ev(3));
        r.push("d".into(), ev(4));
        // "a" fell out: a client that saw nothing, or only "a", cannot be served.
        assert!(r.after(None).is_none());
        assert!(r.after(Some("a")).is_none());
        assert_eq!(r.after(Some("b")).unwrap(), vec![ev(3), ev(4)]);
        let mut none = Ring::new(0);
        none.push("x".into(), ev(1));
        assert!(none.after(Some("x")).is_none());
    }
}
