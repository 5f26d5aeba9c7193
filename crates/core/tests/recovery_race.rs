//! Recovery racing with concurrent publishers on a multi-threaded runtime:
//! a subscriber that (re)subscribes with recovery must see every
//! publication exactly once and in order, whether it arrives in the
//! recovered list or live through its outbox.

use std::sync::Arc;
use std::time::Duration;

use switchboard_core::{
    ChannelOptions, ConnInfo, Delivery, HistoryQuery, Hub, HubLimits, Namespaces, Outbox, Payload,
    Publication, PublishOptions, StreamPosition,
};

/// Upper bound on the test's run so a deadlock fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(120);
const CHANNEL: &str = "h:race";

fn hub() -> Hub {
    let ns = Namespaces::default().with(
        "h",
        ChannelOptions {
            history_size: 1_000_000,
            history_ttl: Duration::from_secs(3600),
            ..ChannelOptions::default()
        },
    );
    Hub::with_namespaces(
        HubLimits {
            outbox_max_messages: 1 << 20,
            outbox_max_bytes: usize::MAX,
            ..HubLimits::default()
        },
        ns,
    )
}

/// Checks that `p` is the next publication after `*last` and advances it.
fn take(last: &mut StreamPosition, p: &Publication, via: &str) {
    assert_eq!(p.epoch, last.epoch, "epoch changed ({via})");
    assert_eq!(
        p.offset,
        last.offset + 1,
        "after offset {} got {} ({via}): missed or duplicated",
        last.offset,
        p.offset
    );
    last.offset = p.offset;
}

fn drain_into(out: &mut Outbox, last: &mut StreamPosition, batch: &mut Vec<Delivery>) {
    batch.clear();
    out.try_recv_batch(batch, usize::MAX).unwrap();
    for d in batch.drain(..) {
        match d {
            Delivery::Publication(p) => take(last, &p, "live"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resubscribing_with_recovery_under_concurrent_publishers_is_exactly_once() {
    const PUBLISHERS: u64 = 4;
    const PER_PUBLISHER: u64 = 3_000;
    const TOTAL: u64 = PUBLISHERS * PER_PUBLISHER;
    const SUBSCRIBERS: usize = 4;
    let hub = hub();
    // Fix the stream's epoch and starting point before anything races.
    let start = hub
        .history(
            CHANNEL,
            HistoryQuery {
                limit: Some(0),
                ..HistoryQuery::default()
            },
        )
        .unwrap()
        .position;
    assert_eq!(start.offset, 0);

    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let hub = hub.clone();
            tokio::spawn(async move {
                let (conn, mut out) = hub.register(ConnInfo::default()).unwrap();
                let mut last = start;
                let mut batch = Vec::new();
                let mut cycles = 0u64;
                let mut recovered_count = 0usize;
                while last.offset < TOTAL {
                    let (rec, pos) = hub.subscribe_with_recovery(&conn, CHANNEL, last).unwrap();
                    assert!(rec.recovered, "history is large enough to recover");
                    recovered_count += rec.publications.len();
                    for p in &rec.publications {
                        take(&mut last, p, "recovered");
                    }
                    assert_eq!(last, pos, "recovery ends at the join position");
                    // Live for a little while, then leave and come back.
                    for _ in 0..(1 + (cycles as usize + i) % 4) {
                        drain_into(&mut out, &mut last, &mut batch);
                        tokio::task::yield_now().await;
                    }
                    assert!(hub.unsubscribe(&conn, CHANNEL));
                    // Everything queued before the leave is in the outbox now.
                    drain_into(&mut out, &mut last, &mut batch);
                    cycles += 1;
                    if cycles.is_multiple_of(3) {
                        // Stay away a bit so publications pile up in history.
                        tokio::task::yield_now().await;
                        tokio::task::yield_now().await;
                    }
                }
                assert_eq!(last.offset, TOTAL);
                (cycles, recovered_count)
            })
        })
        .collect();

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|id| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for seq in 0..PER_PUBLISHER {
                    let r = hub.publish(
                        CHANNEL,
                        Payload::text(format!("{id}:{seq}")),
                        PublishOptions::default(),
                    );
                    assert_eq!(r.epoch(), Some(start.epoch));
                    if seq.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();

    let run = async {
        for p in publishers {
            p.await.unwrap();
        }
        let mut totals = Vec::new();
        for s in subscribers {
            totals.push(s.await.unwrap());
        }
        totals
    };
    let totals = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("finished in time");
    // The race was real: subscribers left and came back, and got publications through
    // recovery rather than live. Checked over all subscribers: the scheduler may let one
    // of them see the whole run live in a single cycle, which proves nothing but is no bug.
    assert!(
        totals.iter().any(|(cycles, _)| *cycles > 1),
        "no subscriber resubscribed: {totals:?}"
    );
    assert!(
        totals.iter().map(|(_, recovered)| recovered).sum::<usize>() > 0,
        "nothing was recovered: {totals:?}"
    );

    // History holds every publication exactly once, in order, and each is
    // the same shared object subscribers received.
    let h = hub.history(CHANNEL, HistoryQuery::default()).unwrap();
    assert_eq!(h.publications.len() as u64, TOTAL);
    assert!(h
        .publications
        .iter()
        .enumerate()
        .all(|(i, p)| p.offset == i as u64 + 1));
    assert_eq!(h.position, StreamPosition::new(TOTAL, start.epoch));
    let _: &Arc<Publication> = &h.publications[0];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_subscribe_from_a_position_races_publishers_exactly_once() {
    const PUBLISHED: u64 = 5_000;
    const JOINERS: usize = 32;
    let hub = hub();
    let start = hub
        .history(
            CHANNEL,
            HistoryQuery {
                limit: Some(0),
                ..HistoryQuery::default()
            },
        )
        .unwrap()
        .position;
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for seq in 0..PUBLISHED {
                hub.publish(
                    CHANNEL,
                    Payload::text(seq.to_string()),
                    PublishOptions::default(),
                );
                if seq.is_multiple_of(16) {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let joiners: Vec<_> = (0..JOINERS)
        .map(|i| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for _ in 0..i {
                    tokio::task::yield_now().await;
                }
                // A position read earlier, as a client would remember it.
                let since = hub.channel(CHANNEL).unwrap().position();
                for _ in 0..(i % 3) {
                    tokio::task::yield_now().await;
                }
                let (conn, mut out) = hub.register(ConnInfo::default()).unwrap();
                let (rec, _pos) = hub.subscribe_with_recovery(&conn, CHANNEL, since).unwrap();
                assert!(rec.recovered);
                let mut last = since;
                for p in &rec.publications {
                    take(&mut last, p, "recovered");
                }
                let mut batch = Vec::new();
                while last.offset < PUBLISHED {
                    batch.clear();
                    out.recv_batch(&mut batch, 1024).await.unwrap();
                    for d in batch.drain(..) {
                        match d {
                            Delivery::Publication(p) => take(&mut last, &p, "live"),
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
                conn
            })
        })
        .collect();
    let run = async {
        publisher.await.unwrap();
        let mut conns = Vec::new();
        for j in joiners {
            conns.push(j.await.unwrap());
        }
        conns
    };
    let conns = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("finished in time");
    assert_eq!(hub.member_count(CHANNEL), conns.len());
    assert_eq!(hub.channel(CHANNEL).unwrap().last_offset(), PUBLISHED);
    assert_eq!(start.offset, 0);
}
