//! Fan-out cost: one publication to 10,000 in-memory subscribers, and a
//! publish to a one-member room. Outboxes are drained between iterations,
//! outside the timed region, so every iteration sees empty queues.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchboard_core::{ConnHandle, ConnInfo, Hub, HubLimits, Outbox, Payload, PublishOptions};

fn room(hub: &Hub, name: &str, members: usize) -> Vec<(ConnHandle, Outbox)> {
    (0..members)
        .map(|_| {
            let (h, o) = hub.register(ConnInfo::new("bench", "raw")).unwrap();
            hub.subscribe(&h, name).unwrap();
            (h, o)
        })
        .collect()
}

fn drain(conns: &mut [(ConnHandle, Outbox)], scratch: &mut Vec<switchboard_core::Delivery>) {
    for (_, o) in conns.iter_mut() {
        o.try_recv_batch(scratch, usize::MAX).unwrap();
        scratch.clear();
    }
}

fn bench_publish(c: &mut Criterion, id: &str, members: usize) {
    let hub = Hub::new(HubLimits::default());
    let mut conns = room(&hub, "room", members);
    let payload = Payload::text("x".repeat(64));
    let mut scratch = Vec::new();
    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(members as u64));
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let report = hub.publish("room", payload.clone(), PublishOptions::default());
                timed += start.elapsed();
                assert_eq!(black_box(report).delivered, members);
                drain(&mut conns, &mut scratch);
            }
            timed
        })
    });
    group.finish();
}

fn fanout(c: &mut Criterion) {
    bench_publish(c, "fanout_10k_subscribers", 10_000);
    bench_publish(c, "one_member_room", 1);
}

criterion_group!(benches, fanout);
criterion_main!(benches);
