//! Property test: random sequences of register / subscribe / unsubscribe /
//! publish / close / drop, checked against a simple model (a set of members
//! per channel).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use switchboard_core::{
    CloseReason, ConnHandle, ConnInfo, Delivery, Hub, HubError, HubLimits, Outbox, Payload,
    PublishOptions,
};

const SLOTS: usize = 6;
const CHANNELS: usize = 4;
const ROOM_LIMIT: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Register(usize),
    Subscribe(usize, usize),
    Unsubscribe(usize, usize),
    Publish(usize, Option<usize>),
    Close(usize),
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..SLOTS).prop_map(Op::Register),
        4 => (0..SLOTS, 0..CHANNELS).prop_map(|(s, c)| Op::Subscribe(s, c)),
        2 => (0..SLOTS, 0..CHANNELS).prop_map(|(s, c)| Op::Unsubscribe(s, c)),
        4 => (0..CHANNELS, proptest::option::of(0..SLOTS)).prop_map(|(c, x)| Op::Publish(c, x)),
        1 => (0..SLOTS).prop_map(Op::Close),
        1 => (0..SLOTS).prop_map(Op::Drop),
    ]
}

struct Slot {
    handle: ConnHandle,
    outbox: Outbox,
    /// `None` once closed: a closed connection is in no channel.
    channels: Option<BTreeSet<usize>>,
}

/// Per-channel lifetime in the model: offsets restart when it disappears.
#[derive(Default)]
struct ModelChannel {
    last_offset: u64,
    epoch: Option<switchboard_core::Epoch>,
}

fn name(c: usize) -> String {
    format!("ch{c}")
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let hub = Hub::new(HubLimits {
        max_room_members: Some(ROOM_LIMIT),
        ..HubLimits::default()
    });
    let mut slots: Vec<Option<Slot>> = (0..SLOTS).map(|_| None).collect();
    let mut model_channels: BTreeMap<usize, ModelChannel> = BTreeMap::new();
    let mut next_tag = 0u64;

    let members = |slots: &Vec<Option<Slot>>, c: usize| -> BTreeSet<usize> {
        (0..SLOTS)
            .filter(|&s| {
                slots[s]
                    .as_ref()
                    .and_then(|sl| sl.channels.as_ref())
                    .is_some_and(|chs| chs.contains(&c))
            })
            .collect()
    };

    for op in ops {
        match op {
            Op::Register(s) => {
                if slots[s].is_none() {
                    let (handle, outbox) = hub.register(ConnInfo::default()).unwrap();
                    slots[s] = Some(Slot {
                        handle,
                        outbox,
                        channels: Some(BTreeSet::new()),
                    });
                }
            }
            Op::Subscribe(s, c) => {
                let current = members(&slots, c);
                if let Some(slot) = slots[s].as_mut() {
                    let res = hub.subscribe(&slot.handle, &name(c));
                    match slot.channels.as_mut() {
                        None => prop_assert!(matches!(res, Err(HubError::ConnectionClosed(_)))),
                        Some(chs) if chs.contains(&c) => prop_assert_eq!(res, Ok(())),
                        Some(_) if current.len() >= ROOM_LIMIT => {
                            prop_assert_eq!(res, Err(HubError::RoomFull { limit: ROOM_LIMIT }))
                        }
                        Some(chs) => {
                            prop_assert_eq!(res, Ok(()));
                            chs.insert(c);
                        }
                    }
                }
            }
            Op::Unsubscribe(s, c) => {
                if let Some(slot) = slots[s].as_mut() {
                    let was = slot.channels.as_mut().is_some_and(|chs| chs.remove(&c));
                    prop_assert_eq!(hub.unsubscribe(&slot.handle, &name(c)), was);
                }
            }
            Op::Publish(c, exclude) => {
                let exclude_id = exclude.and_then(|x| slots[x].as_ref().map(|sl| sl.handle.id()));
                let tag = next_tag;
                next_tag += 1;
                let report = hub.publish(
                    &name(c),
                    Payload::binary(tag.to_le_bytes().to_vec()),
                    PublishOptions {
                        exclude: exclude_id,
                        publisher: None,
                        skip_history: false,
                    },
                );
                let current = members(&slots, c);
                let expected: BTreeSet<usize> = current
                    .iter()
                    .copied()
                    .filter(|&s| exclude_id != Some(slots[s].as_ref().unwrap().handle.id()))
                    .collect();
                prop_assert_eq!(report.delivered, expected.len());
                if current.is_empty() {
                    prop_assert!(report.publication.is_none());
                } else {
                    let mc = model_channels.entry(c).or_default();
                    mc.last_offset += 1;
                    prop_assert_eq!(report.offset(), Some(mc.last_offset));
                    let epoch = report.epoch().unwrap();
                    prop_assert_eq!(*mc.epoch.get_or_insert(epoch), epoch);
                }
                // Exactly the expected connections received exactly this publication.
                for (s, slot) in slots.iter_mut().enumerate() {
                    let Some(slot) = slot else { continue };
                    let mut got = Vec::new();
                    let _ = slot.outbox.try_recv_batch(&mut got, usize::MAX);
                    if expected.contains(&s) {
                        prop_assert_eq!(got.len(), 1);
                        let Delivery::Publication(p) = &got[0] else {
                            return Err(TestCaseError::fail("direct delivery"));
                        };
                        prop_assert_eq!(&p.payload.data[..], &tag.to_le_bytes()[..]);
                        let expected_name = name(c);
                        prop_assert_eq!(&*p.channel, expected_name.as_str());
                    } else {
                        prop_assert!(got.is_empty(), "slot {} got {:?}", s, got);
                    }
                }
            }
            Op::Close(s) => {
                if let Some(slot) = slots[s].as_mut() {
                    slot.handle.close(CloseReason::Kicked);
                    slot.channels = None;
                }
            }
            Op::Drop(s) => {
                slots[s] = None;
            }
        }

        // Channels exist exactly while they have members; a channel that
        // disappeared starts a new lifetime.
        let mut live = 0;
        for c in 0..CHANNELS {
            let m = members(&slots, c);
            prop_assert_eq!(hub.member_count(&name(c)), m.len());
            prop_assert_eq!(hub.channel(&name(c)).is_some(), !m.is_empty());
            if m.is_empty() {
                model_channels.remove(&c);
            } else {
                live += 1;
            }
        }
        prop_assert_eq!(hub.channel_count(), live);
        prop_assert_eq!(hub.stats().channels, live);
        let open = slots
            .iter()
            .filter(|s| s.as_ref().is_some_and(|s| s.channels.is_some()))
            .count();
        prop_assert_eq!(hub.connection_count(), open);
    }
    drop(slots);
    prop_assert_eq!(hub.channel_count(), 0);
    prop_assert_eq!(hub.connection_count(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn hub_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
