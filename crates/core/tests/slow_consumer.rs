//! Slow-consumer handling: bounded outboxes, the Close and DropOldest
//! policies, and isolation of healthy members from a slow one.

use std::sync::Arc;

use switchboard_core::{
    CloseReason, ConnInfo, Delivery, Hub, HubLimits, Outbox, OutboxClosed, Payload, PublishOptions,
    SlowConsumerPolicy,
};

fn offsets(outbox: &mut Outbox) -> Vec<u64> {
    let mut out = Vec::new();
    outbox.try_recv_batch(&mut out, usize::MAX).unwrap();
    out.iter()
        .map(|d| match d {
            Delivery::Publication(p) => p.offset,
            _ => 0,
        })
        .collect()
}

#[test]
fn close_policy_disconnects_only_the_slow_member() {
    let hub = Hub::new(HubLimits {
        outbox_max_messages: 8,
        ..HubLimits::default()
    });
    let (slow, mut slow_out) = hub.register(ConnInfo::new("slow", "raw")).unwrap();
    let mut fast: Vec<_> = (0..4)
        .map(|_| hub.register(ConnInfo::new("fast", "raw")).unwrap())
        .collect();
    slow.subscribe("room").unwrap();
    slow.subscribe("side").unwrap();
    for (h, _) in &fast {
        h.subscribe("room").unwrap();
    }
    let mut received = vec![Vec::new(); fast.len()];
    let mut slow_closed = 0;
    for _ in 0..20 {
        let report = hub.publish("room", Payload::text("tick"), PublishOptions::default());
        slow_closed += report.slow_closed;
        // The fast members keep up; the slow one never reads.
        for (i, (_, out)) in fast.iter_mut().enumerate() {
            received[i].extend(offsets(out));
        }
    }
    assert_eq!(slow_closed, 1);
    let mut batch = Vec::new();
    assert_eq!(
        slow_out.try_recv_batch(&mut batch, 100),
        Err(OutboxClosed {
            reason: CloseReason::SlowConsumer
        })
    );
    assert!(batch.is_empty());
    assert!(slow.is_closed());
    assert_eq!(slow.close_reason(), Some(CloseReason::SlowConsumer));
    assert_eq!(hub.member_count("room"), 4);
    assert!(
        hub.channel("side").is_none(),
        "the slow member left every channel"
    );
    assert_eq!(hub.connection_count(), 4);
    for r in &received {
        assert_eq!(r, &(1..=20).collect::<Vec<_>>());
    }
    let stats = hub.stats();
    assert_eq!(stats.slow_consumer_closes, 1);
    assert_eq!(stats.connections, 4);
    assert_eq!(stats.delivered, 4 * 20 + 8);
    drop(slow);
    assert_eq!(hub.stats().connections, 4, "no double count on drop");
}

#[tokio::test]
async fn slow_consumer_writer_is_woken_with_the_error() {
    let hub = Hub::new(HubLimits {
        outbox_max_messages: 2,
        ..HubLimits::default()
    });
    let (h, mut out) = hub.register(ConnInfo::default()).unwrap();
    h.subscribe("room").unwrap();
    for _ in 0..3 {
        hub.publish("room", Payload::text("x"), PublishOptions::default());
    }
    let mut batch = Vec::new();
    let res = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        out.recv_batch(&mut batch, 16),
    )
    .await
    .expect("not left waiting");
    assert_eq!(
        res,
        Err(OutboxClosed {
            reason: CloseReason::SlowConsumer
        })
    );
    assert_eq!(CloseReason::SlowConsumer.close_code(), 1008);
    assert_eq!(CloseReason::SlowConsumer.close_text(), "slow consumer");
}

#[test]
fn drop_oldest_keeps_the_newest_and_counts_drops() {
    let hub = Hub::new(HubLimits {
        outbox_max_messages: 5,
        slow_consumer: SlowConsumerPolicy::DropOldest,
        ..HubLimits::default()
    });
    let (lagging, mut lagging_out) = hub.register(ConnInfo::default()).unwrap();
    let (fast, mut fast_out) = hub.register(ConnInfo::default()).unwrap();
    lagging.subscribe("ticker").unwrap();
    fast.subscribe("ticker").unwrap();
    let mut fast_got = Vec::new();
    let mut dropped = 0;
    for _ in 0..12 {
        dropped += hub
            .publish("ticker", Payload::text("px"), PublishOptions::default())
            .dropped;
        fast_got.extend(offsets(&mut fast_out));
    }
    assert_eq!(offsets(&mut lagging_out), vec![8, 9, 10, 11, 12]);
    assert_eq!(fast_got, (1..=12).collect::<Vec<_>>());
    assert_eq!(dropped, 7);
    let stats = hub.stats();
    assert_eq!(stats.dropped, 7);
    assert_eq!(stats.slow_consumer_closes, 0);
    assert!(!lagging.is_closed());
    assert_eq!(hub.member_count("ticker"), 2);
}

#[test]
fn byte_bound_applies_to_publications() {
    let hub = Hub::new(HubLimits {
        outbox_max_messages: 1000,
        outbox_max_bytes: 1000,
        slow_consumer: SlowConsumerPolicy::DropOldest,
        ..HubLimits::default()
    });
    let (h, mut out) = hub.register(ConnInfo::default()).unwrap();
    h.subscribe("room").unwrap();
    for _ in 0..50 {
        hub.publish(
            "room",
            Payload::binary(vec![0u8; 300]),
            PublishOptions::default(),
        );
        assert!(out.queued_bytes() <= 1000);
    }
    assert_eq!(out.len(), 3);
    assert_eq!(offsets(&mut out), vec![48, 49, 50]);
    assert_eq!(hub.stats().dropped, 47);
}

#[test]
fn byte_bound_closes_under_close_policy() {
    let hub = Hub::new(HubLimits {
        outbox_max_messages: 1000,
        outbox_max_bytes: 1000,
        ..HubLimits::default()
    });
    let (h, mut out) = hub.register(ConnInfo::default()).unwrap();
    h.subscribe("room").unwrap();
    let payload = Payload::binary(vec![0u8; 300]);
    let reports: Vec<_> = (0..4)
        .map(|_| hub.publish("room", payload.clone(), PublishOptions::default()))
        .collect();
    assert_eq!(
        reports.iter().map(|r| r.slow_closed).collect::<Vec<_>>(),
        vec![0, 0, 0, 1]
    );
    assert_eq!(
        out.try_recv_batch(&mut Vec::new(), 10),
        Err(OutboxClosed {
            reason: CloseReason::SlowConsumer
        })
    );
    assert_eq!(hub.channel_count(), 0);
}

#[test]
fn direct_sends_share_the_bound() {
    let hub = Hub::new(HubLimits {
        outbox_max_messages: 3,
        ..HubLimits::default()
    });
    let (h, _out) = hub.register(ConnInfo::default()).unwrap();
    h.subscribe("room").unwrap();
    for _ in 0..3 {
        h.send_direct(Payload::text("r")).unwrap();
    }
    assert_eq!(
        h.send_direct(Payload::text("r")),
        Err(OutboxClosed {
            reason: CloseReason::SlowConsumer
        })
    );
    assert_eq!(hub.stats().slow_consumer_closes, 1);
    assert_eq!(hub.channel_count(), 0);
    assert_eq!(hub.connection_count(), 0);
}

#[test]
fn discarded_publications_are_freed() {
    let hub = Hub::new(HubLimits {
        outbox_max_messages: 4,
        ..HubLimits::default()
    });
    let (h, _out) = hub.register(ConnInfo::default()).unwrap();
    h.subscribe("room").unwrap();
    let first = hub
        .publish("room", Payload::text("x"), PublishOptions::default())
        .publication
        .unwrap();
    assert_eq!(Arc::strong_count(&first), 2);
    for _ in 0..4 {
        hub.publish("room", Payload::text("x"), PublishOptions::default());
    }
    assert!(h.is_closed());
    assert_eq!(
        Arc::strong_count(&first),
        1,
        "the closed outbox let go of it"
    );
}
