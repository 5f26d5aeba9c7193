//! History with stream positions, its bounds (size, TTL, memory cap),
//! retention of memberless channels, and recovery.

use std::sync::Arc;
use std::time::Duration;

use switchboard_core::{
    ChannelError, ChannelOptions, ConnHandle, ConnInfo, Delivery, Epoch, HistoryQuery, Hub,
    HubLimits, ManualClock, Namespaces, Outbox, Payload, Publication, PublishOptions,
    StreamPosition,
};

const TTL: Duration = Duration::from_secs(60);

fn history_opts(size: usize) -> ChannelOptions {
    ChannelOptions {
        history_size: size,
        history_ttl: TTL,
        ..ChannelOptions::default()
    }
}

fn hub_with(size: usize) -> (Hub, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let ns = Namespaces::default().with("h", history_opts(size));
    let hub = Hub::with_clock(HubLimits::default(), ns, clock.clone());
    (hub, clock)
}

fn publish(hub: &Hub, ch: &str, text: &str) -> Arc<Publication> {
    hub.publish(ch, Payload::text(text), PublishOptions::default())
        .publication
        .expect("published")
}

fn texts(pubs: &[Arc<Publication>]) -> Vec<String> {
    pubs.iter()
        .map(|p| String::from_utf8(p.payload.data.to_vec()).unwrap())
        .collect()
}

fn offsets(pubs: &[Arc<Publication>]) -> Vec<u64> {
    pubs.iter().map(|p| p.offset).collect()
}

fn all() -> HistoryQuery {
    HistoryQuery::default()
}

fn drain(out: &mut Outbox) -> Vec<Delivery> {
    let mut v = Vec::new();
    out.try_recv_batch(&mut v, usize::MAX).unwrap();
    v
}

fn conn(hub: &Hub) -> (ConnHandle, Outbox) {
    hub.register(ConnInfo::new("test", "raw")).unwrap()
}

#[test]
fn publishing_without_members_keeps_history_and_the_channel() {
    let (hub, _clock) = hub_with(10);
    let p1 = publish(&hub, "h:a", "one");
    let p2 = publish(&hub, "h:a", "two");
    assert_eq!((p1.offset, p2.offset), (1, 2));
    assert_eq!(p1.epoch, p2.epoch);
    assert_eq!(hub.channel_count(), 1);

    let h = hub.history("h:a", all()).unwrap();
    assert_eq!(texts(&h.publications), ["one", "two"]);
    assert_eq!(h.position, StreamPosition::new(2, p1.epoch));
    // The very same publications are shared, not copied.
    assert!(Arc::ptr_eq(&h.publications[0], &p1));

    // Default namespace keeps no history: publishing into an empty channel
    // goes nowhere, as before.
    assert!(hub
        .publish("plain", Payload::text("x"), PublishOptions::default())
        .publication
        .is_none());
    assert_eq!(
        hub.history("plain", all()).unwrap_err(),
        ChannelError::NotAvailable
    );
    assert_eq!(
        hub.history("nope:x", all()).unwrap_err(),
        ChannelError::UnknownNamespace("nope".into())
    );
}

#[test]
fn history_is_bounded_by_size_and_queryable_both_ways() {
    let (hub, _clock) = hub_with(5);
    for i in 1..=8 {
        publish(&hub, "h:a", &format!("m{i}"));
    }
    let h = hub.history("h:a", all()).unwrap();
    assert_eq!(offsets(&h.publications), [4, 5, 6, 7, 8]);
    let epoch = h.position.epoch;

    let q = |since: Option<u64>, limit: Option<usize>, reverse: bool| {
        let h = hub
            .history(
                "h:a",
                HistoryQuery {
                    since: since.map(|o| StreamPosition::new(o, epoch)),
                    limit,
                    reverse,
                },
            )
            .unwrap();
        offsets(&h.publications)
    };
    assert_eq!(q(None, Some(2), false), [4, 5]);
    assert_eq!(q(None, Some(2), true), [8, 7]);
    assert_eq!(q(Some(6), None, false), [7, 8]);
    assert_eq!(q(Some(6), None, true), [5, 4]);
    assert_eq!(q(Some(8), None, false), Vec::<u64>::new());
    assert_eq!(q(None, Some(0), false), Vec::<u64>::new());

    // A position from another epoch, or beyond the top, cannot be used.
    let bad = |pos| {
        hub.history(
            "h:a",
            HistoryQuery {
                since: Some(pos),
                ..all()
            },
        )
        .unwrap_err()
    };
    assert_eq!(
        bad(StreamPosition::new(6, Epoch::from_client("zzz"))),
        ChannelError::UnrecoverablePosition
    );
    assert_eq!(
        bad(StreamPosition::new(9, epoch)),
        ChannelError::UnrecoverablePosition
    );
}

#[test]
fn history_expires_by_ttl_and_memberless_channels_go_away() {
    let (hub, clock) = hub_with(100);
    let first = publish(&hub, "h:a", "old");
    clock.advance(TTL / 2);
    publish(&hub, "h:a", "new");
    clock.advance(TTL / 2);
    // "old" has reached its TTL, "new" has not.
    assert_eq!(
        texts(&hub.history("h:a", all()).unwrap().publications),
        ["new"]
    );
    assert_eq!(hub.sweep(), 0, "retained for TTL after the last publish");
    assert_eq!(hub.channel_count(), 1);

    clock.advance(TTL / 2);
    assert_eq!(hub.sweep(), 1);
    assert_eq!(hub.channel_count(), 0);
    assert_eq!(hub.stats().history_bytes, 0);

    // The next publication starts a new stream: new epoch, offset 1.
    let again = publish(&hub, "h:a", "again");
    assert_eq!(again.offset, 1);
    assert_ne!(again.epoch, first.epoch);
}

#[test]
fn a_channel_with_history_outlives_its_last_member() {
    let (hub, clock) = hub_with(100);
    let (a, _a_out) = conn(&hub);
    hub.subscribe(&a, "h:room").unwrap();
    let p = publish(&hub, "h:room", "x");
    drop(a);
    assert_eq!(hub.channel_count(), 1, "kept for its history");
    assert_eq!(hub.member_count("h:room"), 0);

    // A member coming back within the TTL finds the same stream.
    let (b, _b_out) = conn(&hub);
    let (rec, pos) = hub
        .subscribe_with_recovery(&b, "h:room", StreamPosition::new(0, p.epoch))
        .unwrap();
    assert!(rec.recovered);
    assert_eq!(texts(&rec.publications), ["x"]);
    assert_eq!(pos, StreamPosition::new(1, p.epoch));
    drop(b);

    // Without publications the channel lapses TTL after the last one;
    // the last leave after that removes it at once.
    clock.advance(TTL);
    let (c, _c_out) = conn(&hub);
    hub.subscribe(&c, "h:room").unwrap();
    drop(c);
    assert_eq!(hub.channel_count(), 0);
}

#[test]
fn recovery_reports_gaps_and_epoch_changes() {
    let (hub, _clock) = hub_with(3);
    for i in 1..=5 {
        publish(&hub, "h:a", &format!("m{i}"));
    }
    let epoch = hub.channel("h:a").unwrap().epoch();
    let rec = |offset: u64, epoch: Epoch| {
        hub.recover("h:a", StreamPosition::new(offset, epoch))
            .unwrap()
    };

    // History holds 3, 4, 5.
    let r = rec(2, epoch);
    assert!(r.recovered);
    assert_eq!(offsets(&r.publications), [3, 4, 5]);
    assert_eq!(r.position, StreamPosition::new(5, epoch));
    let r = rec(5, epoch);
    assert!(r.recovered && r.publications.is_empty());
    // Offset 2 was evicted: not recovered, but what is left is returned.
    let r = rec(1, epoch);
    assert!(!r.recovered);
    assert_eq!(offsets(&r.publications), [3, 4, 5]);
    // Wrong epoch or a position from the future: nothing can be said.
    let r = rec(4, Epoch::from_client("other"));
    assert!(!r.recovered && r.publications.is_empty());
    let r = rec(6, epoch);
    assert!(!r.recovered);

    // Removing the history changes the epoch; offsets continue.
    hub.history_remove("h:a").unwrap();
    let r = rec(5, epoch);
    assert!(!r.recovered);
    assert_ne!(r.position.epoch, epoch);
    assert_eq!(r.position.offset, 5);
    assert!(hub.history("h:a", all()).unwrap().publications.is_empty());
    let p = publish(&hub, "h:a", "m6");
    assert_eq!((p.offset, p.epoch), (6, r.position.epoch));
    assert_eq!(hub.history_remove("plain"), Err(ChannelError::NotAvailable));
}

#[test]
fn recovery_without_history_only_knows_nothing_was_missed() {
    let hub = Hub::new(HubLimits::default());
    let (a, mut a_out) = conn(&hub);
    hub.subscribe(&a, "room").unwrap();
    let p = publish(&hub, "room", "x");
    drain(&mut a_out);
    let (b, _b) = conn(&hub);
    let (r, pos) = hub
        .subscribe_with_recovery(&b, "room", StreamPosition::new(1, p.epoch))
        .unwrap();
    assert!(r.recovered);
    assert_eq!(pos, p.position());
    let r = hub
        .recover("room", StreamPosition::new(0, p.epoch))
        .unwrap();
    assert!(!r.recovered);
    let r = hub.recover("gone", StreamPosition::default()).unwrap();
    assert!(!r.recovered);
}

#[test]
fn subscribe_with_recovery_then_live_delivery_continues_without_gap() {
    let (hub, _clock) = hub_with(100);
    for i in 1..=3 {
        publish(&hub, "h:a", &format!("m{i}"));
    }
    let epoch = hub.channel("h:a").unwrap().epoch();
    let (a, mut a_out) = conn(&hub);
    let (rec, pos) = hub
        .subscribe_with_recovery(&a, "h:a", StreamPosition::new(1, epoch))
        .unwrap();
    assert!(rec.recovered);
    assert_eq!(offsets(&rec.publications), [2, 3]);
    assert_eq!(pos.offset, 3);
    publish(&hub, "h:a", "m4");
    let live: Vec<u64> = drain(&mut a_out)
        .iter()
        .map(|d| match d {
            Delivery::Publication(p) => p.offset,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(live, [4]);
}

#[test]
fn history_memory_cap_drops_least_recently_published_histories() {
    let clock = Arc::new(ManualClock::new());
    let payload = "x".repeat(1000);
    let ns = Namespaces {
        // Room for about 10 entries of ~1 KB.
        history_max_bytes: 11_000,
        ..Namespaces::default().with("h", history_opts(1000))
    };
    let hub = Hub::with_clock(HubLimits::default(), ns, clock.clone());
    let old_epoch = publish(&hub, "h:old", &payload).epoch;
    clock.advance(Duration::from_secs(1));
    for _ in 0..4 {
        publish(&hub, "h:mid", &payload);
    }
    clock.advance(Duration::from_secs(1));
    for i in 0..6 {
        publish(&hub, "h:new", &payload);
        assert!(
            hub.stats().history_bytes <= 11_000 + 1200,
            "over the cap after publish {i}: {}",
            hub.stats().history_bytes
        );
    }
    let stats = hub.stats();
    assert!(stats.history_evictions >= 1);
    // The least recently published channel lost its history first.
    let old = hub.history("h:old", all()).unwrap();
    assert!(old.publications.is_empty());
    assert_ne!(old.position.epoch, old_epoch);
    assert_eq!(hub.history("h:new", all()).unwrap().publications.len(), 6);
    // Accounting matches what is held.
    let held: usize = ["h:old", "h:mid", "h:new"]
        .iter()
        .map(|c| hub.channel(c).unwrap().history_len().1)
        .sum();
    assert_eq!(held, stats.history_bytes);
}
