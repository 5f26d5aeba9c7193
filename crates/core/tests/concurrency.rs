//! The hub under concurrent publishers, subscribers and disconnects on a
//! multi-threaded runtime.

use std::time::Duration;

use switchboard_core::{ConnInfo, Delivery, Hub, HubLimits, Payload, PublishOptions};

/// Upper bound on each test's run so a deadlock fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(60);

fn roomy_limits() -> HubLimits {
    HubLimits {
        outbox_max_messages: 1 << 20,
        outbox_max_bytes: usize::MAX,
        ..HubLimits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_get_gap_free_offsets_seen_in_order() {
    const PUBLISHERS: u64 = 8;
    const PER_PUBLISHER: u64 = 500;
    const TOTAL: usize = (PUBLISHERS * PER_PUBLISHER) as usize;
    let hub = Hub::new(roomy_limits());

    let mut readers = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..4 {
        let (h, mut outbox) = hub.register(ConnInfo::default()).unwrap();
        h.subscribe("room").unwrap();
        handles.push(h);
        readers.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(TOTAL);
            let mut batch = Vec::new();
            while got.len() < TOTAL {
                batch.clear();
                outbox.recv_batch(&mut batch, 256).await.unwrap();
                for d in batch.drain(..) {
                    let Delivery::Publication(p) = d else {
                        panic!("direct")
                    };
                    let mut tag = [0u8; 16];
                    tag.copy_from_slice(&p.payload.data);
                    let publisher = u64::from_le_bytes(tag[..8].try_into().unwrap());
                    let seq = u64::from_le_bytes(tag[8..].try_into().unwrap());
                    got.push((p.offset, p.epoch, publisher, seq));
                }
            }
            got
        }));
    }

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|id| {
            let hub = hub.clone();
            tokio::spawn(async move {
                let mut offsets = Vec::new();
                for seq in 0..PER_PUBLISHER {
                    let mut body = id.to_le_bytes().to_vec();
                    body.extend_from_slice(&seq.to_le_bytes());
                    let r = hub.publish("room", Payload::binary(body), PublishOptions::default());
                    assert_eq!(r.delivered, 4);
                    offsets.push(r.offset().unwrap());
                    if seq % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                offsets
            })
        })
        .collect();

    let run = async {
        let mut all_offsets = Vec::new();
        for p in publishers {
            let offsets = p.await.unwrap();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]));
            all_offsets.extend(offsets);
        }
        all_offsets.sort_unstable();
        assert_eq!(all_offsets, (1..=TOTAL as u64).collect::<Vec<_>>());
        for r in readers {
            let got = r.await.unwrap();
            let offsets: Vec<u64> = got.iter().map(|g| g.0).collect();
            assert_eq!(offsets, (1..=TOTAL as u64).collect::<Vec<_>>());
            assert!(got.iter().all(|g| g.1 == got[0].1), "one epoch");
            // Each publisher's own messages arrive in the order it sent them.
            for id in 0..PUBLISHERS {
                let seqs: Vec<u64> = got.iter().filter(|g| g.2 == id).map(|g| g.3).collect();
                assert_eq!(seqs, (0..PER_PUBLISHER).collect::<Vec<_>>());
            }
        }
    };
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("no deadlock");
    assert_eq!(hub.stats().published, TOTAL as u64);
    assert_eq!(hub.stats().delivered, 4 * TOTAL as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joining_while_the_last_member_leaves_never_strands_a_member() {
    const TASKS: usize = 8;
    let hub = Hub::new(roomy_limits());
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let hub = hub.clone();
            tokio::spawn(async move {
                let (h, outbox) = hub.register(ConnInfo::default()).unwrap();
                for i in 0..2000 {
                    hub.subscribe(&h, "hot").unwrap();
                    hub.publish("hot", Payload::text("x"), PublishOptions::default());
                    hub.unsubscribe(&h, "hot");
                    if i % 100 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                (h, outbox)
            })
        })
        .collect();
    let conns = tokio::time::timeout(DEADLINE, async {
        let mut conns = Vec::new();
        for t in tasks {
            conns.push(t.await.unwrap());
        }
        conns
    })
    .await
    .expect("no deadlock");
    assert_eq!(hub.channel_count(), 0);
    assert_eq!(hub.stats().channels, 0);
    // Everyone joins once more: they must all land in the same live channel.
    for (h, _) in &conns {
        h.subscribe("hot").unwrap();
    }
    let report = hub.publish("hot", Payload::text("final"), PublishOptions::default());
    assert_eq!(report.delivered, TASKS);
    assert_eq!(hub.member_count("hot"), TASKS);
    assert_eq!(hub.channel_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_of_connects_subscribes_and_drops_leaks_nothing() {
    let hub = Hub::new(HubLimits {
        outbox_max_messages: 16,
        ..HubLimits::default()
    });
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let hub = hub.clone();
            tokio::spawn(async move {
                let mut live = Vec::new();
                for i in 0..400u64 {
                    let (h, outbox) = hub.register(ConnInfo::default()).unwrap();
                    for c in 0..3 {
                        h.subscribe(&format!("ch-{}", (t + i + c) % 10))
                            .unwrap_or(());
                    }
                    hub.publish(
                        &format!("ch-{}", i % 10),
                        Payload::text("x"),
                        PublishOptions::except_sender(h.id()),
                    );
                    live.push((h, outbox));
                    // Keep a few around, drop others in varying order; never
                    // drain, so some become slow consumers and are closed.
                    if live.len() > 5 {
                        live.remove((i as usize * 7) % live.len());
                    }
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                drop(live);
            })
        })
        .collect();
    tokio::time::timeout(DEADLINE, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("no deadlock");
    let stats = hub.stats();
    assert_eq!(hub.channel_count(), 0);
    assert_eq!(hub.connection_count(), 0);
    assert_eq!((stats.channels, stats.connections), (0, 0));
    assert!(
        stats.slow_consumer_closes > 0,
        "the test did exercise slow-consumer removal"
    );
}
