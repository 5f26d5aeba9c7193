//! Property test: random publishes, clock advances, (un)subscribes,
//! history removals, sweeps and recoveries on one channel with history,
//! checked against a simple model of its stream (offsets, epoch changes,
//! entries bounded by size and TTL, retention without members).

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use switchboard_core::{
    ChannelOptions, ConnInfo, Epoch, HistoryQuery, Hub, HubLimits, ManualClock, Namespaces,
    Payload, PublishOptions, StreamPosition,
};

const SIZE: usize = 4;
const TTL_SECS: u64 = 10;
const CH: &str = "h:x";

#[derive(Debug, Clone)]
enum Op {
    Publish,
    Advance(u64),
    Subscribe,
    Unsubscribe,
    RemoveHistory,
    Sweep,
    Recover(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Publish),
        3 => (1..8u64).prop_map(Op::Advance),
        2 => Just(Op::Subscribe),
        2 => Just(Op::Unsubscribe),
        1 => Just(Op::RemoveHistory),
        2 => Just(Op::Sweep),
        3 => (0..12u64).prop_map(Op::Recover),
    ]
}

/// The model of the channel's stream; `None` when the channel is gone.
#[derive(Debug, Clone)]
struct Stream {
    generation: u64,
    top: u64,
    /// (offset, published at), oldest first.
    entries: Vec<(u64, u64)>,
    retain_until: u64,
}

struct Model {
    now: u64,
    stream: Option<Stream>,
    subscribed: bool,
    generations: u64,
}

impl Model {
    fn ensure(&mut self) -> &mut Stream {
        if self.stream.is_none() {
            self.generations += 1;
            self.stream = Some(Stream {
                generation: self.generations,
                top: 0,
                entries: Vec::new(),
                retain_until: self.now + TTL_SECS,
            });
        }
        let now = self.now;
        let s = self.stream.as_mut().unwrap();
        s.entries.retain(|&(_, t)| t + TTL_SECS > now);
        s
    }

    fn may_remove(&mut self) {
        if !self.subscribed
            && self
                .stream
                .as_ref()
                .is_some_and(|s| self.now >= s.retain_until)
        {
            self.stream = None;
        }
    }
}

/// Checks that model generation `generation` always shows the same real
/// epoch, and that a new generation shows a never-seen one.
fn check_epoch(epochs: &mut Vec<Epoch>, generation: u64, real: Epoch) -> Result<(), TestCaseError> {
    let i = generation as usize - 1;
    if i == epochs.len() {
        prop_assert!(!epochs.contains(&real), "epoch reused");
        epochs.push(real);
    }
    prop_assert_eq!(epochs[i], real, "epoch of generation {}", generation);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::new());
    let ns = Namespaces::default().with(
        "h",
        ChannelOptions {
            history_size: SIZE,
            history_ttl: Duration::from_secs(TTL_SECS),
            ..ChannelOptions::default()
        },
    );
    let hub = Hub::with_clock(HubLimits::default(), ns, clock.clone());
    let (conn, _out) = hub.register(ConnInfo::default()).unwrap();
    let mut m = Model {
        now: 0,
        stream: None,
        subscribed: false,
        generations: 0,
    };
    // Real epoch seen for each model generation.
    let mut epochs: Vec<Epoch> = Vec::new();

    for op in ops {
        match op {
            Op::Publish => {
                let now = m.now;
                let s = m.ensure();
                s.top += 1;
                let top = s.top;
                s.entries.push((top, now));
                if s.entries.len() > SIZE {
                    s.entries.remove(0);
                }
                s.retain_until = now + TTL_SECS;
                let generation = s.generation;
                let p = hub
                    .publish(CH, Payload::text("."), PublishOptions::default())
                    .publication
                    .unwrap();
                prop_assert_eq!(p.offset, top);
                check_epoch(&mut epochs, generation, p.epoch)?;
            }
            Op::Advance(secs) => {
                m.now += secs;
                clock.advance(Duration::from_secs(secs));
            }
            Op::Subscribe => {
                let generation = m.ensure().generation;
                m.subscribed = true;
                hub.subscribe(&conn, CH).unwrap();
                check_epoch(&mut epochs, generation, hub.channel(CH).unwrap().epoch())?;
            }
            Op::Unsubscribe => {
                let was = m.subscribed;
                m.subscribed = false;
                prop_assert_eq!(hub.unsubscribe(&conn, CH), was);
                if was {
                    // The last leave removes a channel with nothing to retain.
                    m.may_remove();
                }
            }
            Op::RemoveHistory => {
                if let Some(s) = m.stream.as_mut() {
                    m.generations += 1;
                    s.generation = m.generations;
                    s.entries.clear();
                }
                hub.history_remove(CH).unwrap();
            }
            Op::Sweep => {
                let before = m.stream.is_some();
                m.may_remove();
                let removed = before && m.stream.is_none();
                prop_assert_eq!(hub.sweep(), usize::from(removed));
            }
            Op::Recover(offset) => {
                let s = m.ensure().clone();
                let first = s.entries.first().map(|e| e.0);
                let expect =
                    offset <= s.top && (offset == s.top || first.is_some_and(|f| f <= offset + 1));
                let since = StreamPosition::new(
                    offset,
                    epochs
                        .get(s.generation as usize - 1)
                        .copied()
                        .unwrap_or(Epoch::EMPTY),
                );
                let r = hub.recover(CH, since).unwrap();
                check_epoch(&mut epochs, s.generation, r.position.epoch)?;
                if since.epoch == r.position.epoch {
                    prop_assert_eq!(r.recovered, expect, "recover from {} in {:?}", offset, s);
                    let got: Vec<u64> = r.publications.iter().map(|p| p.offset).collect();
                    let want: Vec<u64> = if offset <= s.top {
                        s.entries
                            .iter()
                            .map(|e| e.0)
                            .filter(|&o| o > offset)
                            .collect()
                    } else {
                        Vec::new()
                    };
                    prop_assert_eq!(got, want);
                } else {
                    prop_assert!(!r.recovered);
                }
            }
        }
        // After every step: the history is exactly the model's entries.
        if let Some(s) = m.stream.clone() {
            let h = hub.history(CH, HistoryQuery::default()).unwrap();
            let now = m.now;
            let live: Vec<u64> = s
                .entries
                .iter()
                .filter(|&&(_, t)| t + TTL_SECS > now)
                .map(|e| e.0)
                .collect();
            let got: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
            prop_assert_eq!(got, live);
            prop_assert_eq!(h.position.offset, s.top);
            check_epoch(&mut epochs, s.generation, h.position.epoch)?;
        } else {
            prop_assert!(hub.channel(CH).is_none(), "channel should be gone");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn history_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
