//! Fan-out cost: one publication to 10,000 in-memory subscribers, and a
//! publish to a one-member room, each without and with history (bounded to
//! 100 publications, so every publish also evicts one). Outboxes are
//! drained between iterations, outside the timed region, so every iteration
//! sees empty queues.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchboard_core::{
    ChannelOptions, ConnHandle, ConnInfo, Hub, HubLimits, Namespaces, Outbox, Payload,
    PublishOptions,
};

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

fn bench_publish(c: &mut Criterion, id: &str, members: usize, history: bool) {
    let ns = Namespaces::new(ChannelOptions {
        history_size: if history { 100 } else { 0 },
        history_ttl: Duration::from_secs(3600),
        ..ChannelOptions::default()
    });
    let hub = Hub::with_namespaces(HubLimits::default(), ns);
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
    bench_publish(c, "fanout_10k_subscribers", 10_000, false);
    bench_publish(c, "one_member_room", 1, false);
    bench_publish(c, "fanout_10k_subscribers_history", 10_000, true);
    bench_publish(c, "one_member_room_history", 1, true);
}

criterion_group!(benches, fanout);
criterion_main!(benches);
