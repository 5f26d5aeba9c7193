//! Fan-out behaviour of the hub: who receives a publication, what they
//! receive, and how channels and connections come and go.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use switchboard_core::{
    CloseReason, ConnHandle, ConnInfo, Delivery, Hub, HubError, HubLimits, Outbox, OutboxClosed,
    Payload, PayloadKind, Publication, PublishOptions, WireFormat,
};

fn conn(hub: &Hub) -> (ConnHandle, Outbox) {
    hub.register(ConnInfo::new("127.0.0.1:0", "test")).unwrap()
}

fn drain(outbox: &mut Outbox) -> Vec<Delivery> {
    let mut out = Vec::new();
    outbox.try_recv_batch(&mut out, usize::MAX).unwrap();
    out
}

fn publications(outbox: &mut Outbox) -> Vec<Arc<Publication>> {
    drain(outbox)
        .into_iter()
        .map(|d| match d {
            Delivery::Publication(p) => p,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn publish_reaches_every_member_and_only_members() {
    let hub = Hub::new(HubLimits::default());
    let mut members: Vec<_> = (0..5).map(|_| conn(&hub)).collect();
    let (outsider, mut outsider_out) = conn(&hub);
    hub.subscribe(&outsider, "other").unwrap();
    for (h, _) in &members {
        hub.subscribe(h, "room").unwrap();
    }
    let report = hub.publish("room", Payload::text("hello"), PublishOptions::default());
    assert_eq!(report.delivered, 5);
    assert_eq!(report.offset(), Some(1));
    for (_, out) in &mut members {
        let got = publications(out);
        assert_eq!(got.len(), 1);
        assert_eq!(&*got[0].channel, "room");
        assert_eq!(got[0].payload.data, Bytes::from_static(b"hello"));
        assert_eq!(got[0].payload.kind, PayloadKind::Text);
        assert_eq!(got[0].publisher, None);
    }
    assert!(drain(&mut outsider_out).is_empty());
    let stats = hub.stats();
    assert_eq!((stats.published, stats.delivered), (1, 5));
}

#[test]
fn publish_can_exclude_the_publisher() {
    let hub = Hub::new(HubLimits::default());
    let (a, mut a_out) = conn(&hub);
    let (b, mut b_out) = conn(&hub);
    let (c, mut c_out) = conn(&hub);
    for h in [&a, &b, &c] {
        h.subscribe("room").unwrap();
    }
    let report = hub.publish(
        "room",
        Payload::binary(vec![1, 2, 3]),
        PublishOptions::except_sender(a.id()),
    );
    assert_eq!(report.delivered, 2);
    assert!(drain(&mut a_out).is_empty());
    for out in [&mut b_out, &mut c_out] {
        let got = publications(out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].publisher, Some(a.id()));
        assert_eq!(got[0].payload.kind, PayloadKind::Binary);
    }
    // Without exclusion the publisher hears itself.
    hub.publish(
        "room",
        Payload::text("echo"),
        PublishOptions::from_conn(a.id()),
    );
    assert_eq!(publications(&mut a_out).len(), 1);
}

#[test]
fn every_subscriber_gets_the_same_arc() {
    let hub = Hub::new(HubLimits::default());
    let mut conns: Vec<_> = (0..50).map(|_| conn(&hub)).collect();
    for (h, _) in &conns {
        h.subscribe("room").unwrap();
    }
    let report = hub.publish("room", Payload::text("shared"), PublishOptions::default());
    let original = report.publication.unwrap();
    for (_, out) in &mut conns {
        let got = publications(out);
        assert!(Arc::ptr_eq(&got[0], &original));
    }
}

#[test]
fn encoding_runs_once_per_format_for_a_thousand_subscribers() {
    let hub = Hub::new(HubLimits::default());
    let mut conns: Vec<_> = (0..1000).map(|_| conn(&hub)).collect();
    for (h, _) in &conns {
        h.subscribe("room").unwrap();
    }
    hub.publish("room", Payload::text("payload"), PublishOptions::default());
    let raw_calls = AtomicUsize::new(0);
    let json_calls = AtomicUsize::new(0);
    let received: Vec<_> = conns.iter_mut().map(|(_, out)| publications(out)).collect();
    // Half the writers speak one protocol, half another, from several threads.
    std::thread::scope(|s| {
        for chunk in received.chunks(125) {
            let (raw_calls, json_calls) = (&raw_calls, &json_calls);
            s.spawn(move || {
                for (i, pubs) in chunk.iter().enumerate() {
                    let p = &pubs[0];
                    if i % 2 == 0 {
                        let frame: &Bytes = p.encoded(WireFormat::RAW_WEBSOCKET, |p| {
                            raw_calls.fetch_add(1, Ordering::SeqCst);
                            p.payload.data.clone()
                        });
                        assert_eq!(&frame[..], b"payload");
                    } else {
                        let frame: &String = p.encoded(WireFormat::CENTRIFUGO_JSON, |p| {
                            json_calls.fetch_add(1, Ordering::SeqCst);
                            format!("{{\"offset\":{}}}", p.offset)
                        });
                        assert_eq!(frame, "{\"offset\":1}");
                    }
                }
            });
        }
    });
    assert_eq!(raw_calls.load(Ordering::SeqCst), 1);
    assert_eq!(json_calls.load(Ordering::SeqCst), 1);
}

#[test]
fn offsets_count_up_per_channel_with_one_epoch() {
    let hub = Hub::new(HubLimits::default());
    let (a, mut a_out) = conn(&hub);
    a.subscribe("x").unwrap();
    a.subscribe("y").unwrap();
    for _ in 0..3 {
        hub.publish("x", Payload::text("."), PublishOptions::default());
    }
    hub.publish("y", Payload::text("."), PublishOptions::default());
    let got = publications(&mut a_out);
    let xs: Vec<_> = got
        .iter()
        .filter(|p| &*p.channel == "x")
        .map(|p| p.offset)
        .collect();
    let ys: Vec<_> = got
        .iter()
        .filter(|p| &*p.channel == "y")
        .map(|p| p.offset)
        .collect();
    assert_eq!(xs, vec![1, 2, 3]);
    assert_eq!(ys, vec![1]);
    let epoch = got[0].epoch;
    assert!(!epoch.is_empty());
    assert!(got
        .iter()
        .filter(|p| &*p.channel == "x")
        .all(|p| p.epoch == epoch));
    assert_eq!(hub.channel("x").unwrap().epoch(), epoch);
    assert_eq!(hub.channel("x").unwrap().last_offset(), 3);
}

#[test]
fn a_recreated_channel_starts_a_new_epoch() {
    let hub = Hub::new(HubLimits::default());
    let (a, mut a_out) = conn(&hub);
    a.subscribe("x").unwrap();
    hub.publish("x", Payload::text("."), PublishOptions::default());
    let first = publications(&mut a_out)[0].epoch;
    assert!(a.unsubscribe("x"));
    assert!(hub.channel("x").is_none());
    a.subscribe("x").unwrap();
    let report = hub.publish("x", Payload::text("."), PublishOptions::default());
    assert_eq!(
        report.offset(),
        Some(1),
        "offsets restart in a new lifetime"
    );
    assert_ne!(report.epoch(), Some(first));
}

#[test]
fn publish_to_a_channel_without_members_delivers_nothing() {
    let hub = Hub::new(HubLimits::default());
    let report = hub.publish("nobody", Payload::text("?"), PublishOptions::default());
    assert!(report.publication.is_none());
    assert_eq!(report.delivered, 0);
    assert_eq!(hub.channel_count(), 0);
}

#[test]
fn dropping_handles_removes_them_from_every_channel() {
    let hub = Hub::new(HubLimits::default());
    let conns: Vec<_> = (0..20).map(|_| conn(&hub)).collect();
    for (i, (h, _)) in conns.iter().enumerate() {
        h.subscribe("all").unwrap();
        h.subscribe(&format!("own-{i}")).unwrap();
        if i % 2 == 0 {
            h.subscribe("even").unwrap();
        }
    }
    assert_eq!(hub.channel_count(), 22);
    assert_eq!(hub.stats().channels, 22);
    assert_eq!(hub.member_count("even"), 10);
    let mut conns = conns.into_iter();
    let (first, first_out) = conns.next().unwrap();
    drop(first);
    drop(first_out);
    assert_eq!(hub.member_count("all"), 19);
    assert_eq!(hub.member_count("even"), 9);
    assert!(hub.channel("own-0").is_none());
    drop(conns);
    assert_eq!(hub.channel_count(), 0);
    assert_eq!(hub.connection_count(), 0);
    let stats = hub.stats();
    assert_eq!((stats.channels, stats.connections), (0, 0));
}

#[test]
fn subscribe_and_unsubscribe_are_idempotent() {
    let hub = Hub::new(HubLimits::default());
    let (a, mut a_out) = conn(&hub);
    a.subscribe("room").unwrap();
    a.subscribe("room").unwrap();
    assert_eq!(hub.member_count("room"), 1);
    assert_eq!(a.channels(), vec![Arc::<str>::from("room")]);
    assert_eq!(
        hub.publish("room", Payload::text("."), PublishOptions::default())
            .delivered,
        1
    );
    assert_eq!(drain(&mut a_out).len(), 1);
    assert!(a.unsubscribe("room"));
    assert!(!a.unsubscribe("room"));
    assert_eq!(hub.channel_count(), 0);
    assert_eq!(hub.subscribe(&a, ""), Err(HubError::InvalidChannel));
}

#[test]
fn send_direct_reaches_only_that_connection() {
    let hub = Hub::new(HubLimits::default());
    let (a, mut a_out) = conn(&hub);
    let (_b, mut b_out) = conn(&hub);
    a.send_direct(Payload::text("just you")).unwrap();
    let got = drain(&mut a_out);
    assert!(matches!(&got[..], [Delivery::Direct(p)] if p.data == "just you"));
    assert!(drain(&mut b_out).is_empty());
    assert_eq!(hub.stats().delivered, 1);
}

#[test]
fn close_lets_the_writer_drain_then_errors_and_leaves_the_hub() {
    let hub = Hub::new(HubLimits::default());
    let (a, mut a_out) = conn(&hub);
    let (b, _b_out) = conn(&hub);
    a.subscribe("room").unwrap();
    b.subscribe("room").unwrap();
    hub.publish("room", Payload::text("last"), PublishOptions::default());
    a.close(CloseReason::Kicked);
    assert!(a.is_closed());
    assert_eq!(hub.member_count("room"), 1);
    assert_eq!(hub.connection_count(), 1);
    let mut out = Vec::new();
    assert_eq!(a_out.try_recv_batch(&mut out, 10), Ok(1));
    assert_eq!(
        a_out.try_recv_batch(&mut out, 10),
        Err(OutboxClosed {
            reason: CloseReason::Kicked
        })
    );
    assert_eq!(
        a.send_direct(Payload::text("late")),
        Err(OutboxClosed {
            reason: CloseReason::Kicked
        })
    );
    assert_eq!(
        a.subscribe("room"),
        Err(HubError::ConnectionClosed(CloseReason::Kicked))
    );
    drop(a);
    assert_eq!(hub.stats().connections, 1);
}

#[test]
fn connections_of_a_user_whatever_their_protocol() {
    let hub = Hub::new(HubLimits::default());
    let (a, _a_out) = hub
        .register(ConnInfo::new("p1", "socket.io").with_user("ann"))
        .unwrap();
    let (b, _b_out) = hub
        .register(ConnInfo::new("p2", "centrifugo").with_user("ann"))
        .unwrap();
    let (_c, _c_out) = hub
        .register(ConnInfo::new("p3", "raw").with_user("bob"))
        .unwrap();
    let (_d, _d_out) = hub.register(ConnInfo::default()).unwrap();
    let mut ids = hub.connections_of_user("ann");
    ids.sort();
    let mut want = vec![a.id(), b.id()];
    want.sort();
    assert_eq!(ids, want);
    assert!(hub.connections_of_user("nobody").is_empty());
    drop(a);
    assert_eq!(hub.connections_of_user("ann"), vec![b.id()]);
}

#[test]
fn a_connection_that_signs_in_later_is_found_by_its_user() {
    let hub = Hub::new(HubLimits::default());
    let (p, _p_out) = hub.register(ConnInfo::new("p", "pusher")).unwrap();
    assert!(hub.connections_of_user("carol").is_empty());
    assert_eq!(p.signed_in_user(), None);
    assert!(p.sign_in("carol"));
    assert!(!p.sign_in("dave"), "only the first sign-in counts");
    assert_eq!(p.signed_in_user(), Some("carol"));
    assert_eq!(hub.connections_of_user("carol"), vec![p.id()]);
    assert!(hub.connections_of_user("dave").is_empty());
    drop(p);
    assert!(hub.connections_of_user("carol").is_empty());
}

#[test]
fn disconnect_by_id_and_close_all() {
    let hub = Hub::new(HubLimits::default());
    let (a, mut a_out) = conn(&hub);
    let (b, mut b_out) = conn(&hub);
    let (c, _c_out) = conn(&hub);
    for h in [&a, &b, &c] {
        h.subscribe("room").unwrap();
    }
    assert!(hub.disconnect(a.id(), CloseReason::Kicked));
    assert!(!hub.disconnect(a.id(), CloseReason::Kicked));
    assert_eq!(
        a_out.try_recv_batch(&mut Vec::new(), 1),
        Err(OutboxClosed {
            reason: CloseReason::Kicked
        })
    );
    assert_eq!(hub.close_all(CloseReason::Shutdown), 2);
    assert_eq!(
        b_out.try_recv_batch(&mut Vec::new(), 1),
        Err(OutboxClosed {
            reason: CloseReason::Shutdown
        })
    );
    assert_eq!((hub.connection_count(), hub.channel_count()), (0, 0));
}

#[test]
fn a_writer_that_went_away_stops_receiving() {
    let hub = Hub::new(HubLimits::default());
    let (a, a_out) = conn(&hub);
    let (b, mut b_out) = conn(&hub);
    a.subscribe("room").unwrap();
    b.subscribe("room").unwrap();
    drop(a_out);
    let report = hub.publish("room", Payload::text("."), PublishOptions::default());
    assert_eq!(report.delivered, 1);
    assert_eq!(drain(&mut b_out).len(), 1);
    assert!(a.is_closed());
}
