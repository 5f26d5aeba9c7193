//! Namespaces, channel-name validation, permission checks, presence and
//! join/leave events.

use bytes::Bytes;
use switchboard_core::{
    ChannelError, ChannelOptions, ClientCtx, ConnHandle, ConnInfo, Delivery, Hub, HubError,
    HubLimits, Namespaces, Outbox, Payload, PermissionError, PresenceStats, PublishOptions,
    SubscribeOptions,
};

fn hub() -> Hub {
    let ns = Namespaces::new(ChannelOptions {
        allow_subscribe_for_anonymous: true,
        ..ChannelOptions::default()
    })
    .with(
        "chat",
        ChannelOptions {
            presence: true,
            join_leave: true,
            allow_publish_for_subscriber: true,
            allow_presence_for_subscriber: true,
            allow_history_for_subscriber: true,
            history_size: 10,
            history_ttl: std::time::Duration::from_secs(60),
            ..ChannelOptions::default()
        },
    )
    .with(
        "secret",
        ChannelOptions {
            private: true,
            ..ChannelOptions::default()
        },
    )
    .with(
        "open",
        ChannelOptions {
            allow_publish_for_client: true,
            presence: true,
            ..ChannelOptions::default()
        },
    );
    Hub::with_namespaces(HubLimits::default(), ns)
}

fn user(hub: &Hub, name: &str) -> (ConnHandle, Outbox) {
    hub.register(
        ConnInfo::new("127.0.0.1:1", "test")
            .with_user(name)
            .with_conn_info(format!("{{\"name\":\"{name}\"}}")),
    )
    .unwrap()
}

fn anon(hub: &Hub) -> (ConnHandle, Outbox) {
    hub.register(ConnInfo::new("127.0.0.1:1", "test")).unwrap()
}

fn drain(out: &mut Outbox) -> Vec<Delivery> {
    let mut v = Vec::new();
    out.try_recv_batch(&mut v, usize::MAX).unwrap();
    v
}

#[test]
fn subscribe_validates_names_and_namespaces() {
    let hub = hub();
    let (a, _o) = user(&hub, "alice");
    assert_eq!(hub.subscribe(&a, ""), Err(HubError::InvalidChannel));
    assert_eq!(
        hub.subscribe(&a, "with space"),
        Err(HubError::InvalidChannel)
    );
    assert_eq!(
        hub.subscribe(&a, "news:today"),
        Err(HubError::UnknownNamespace("news".into()))
    );
    assert_eq!(hub.channel_count(), 0);
    hub.subscribe(&a, "chat:1").unwrap();
    hub.subscribe(&a, "lobby").unwrap();
    hub.subscribe(&a, "rooms/a/b").unwrap();
    assert_eq!(hub.channel_count(), 3);
    assert_eq!(
        hub.try_publish("news:x", Payload::text("."), PublishOptions::default())
            .unwrap_err(),
        HubError::UnknownNamespace("news".into())
    );
}

#[test]
fn subscribe_permissions() {
    let hub = hub();
    let (a, _ao) = user(&hub, "alice");
    let (n, _no) = anon(&hub);
    let alice = ClientCtx::for_conn(&a);
    let nobody = ClientCtx::for_conn(&n);
    assert!(nobody.is_anonymous());

    assert_eq!(hub.check_subscribe(&alice, "chat:1"), Ok(()));
    // Default namespace allows anonymous subscribers here, `chat` does not.
    assert_eq!(hub.check_subscribe(&nobody, "lobby"), Ok(()));
    assert_eq!(
        hub.check_subscribe(&nobody, "chat:1"),
        Err(PermissionError::Denied)
    );
    // Private channels need a token, which also admits anonymous clients.
    assert_eq!(
        hub.check_subscribe(&alice, "secret:x"),
        Err(PermissionError::TokenRequired)
    );
    assert_eq!(
        hub.check_subscribe(&alice.clone().with_subscription_token(true), "secret:x"),
        Ok(())
    );
    assert_eq!(
        hub.check_subscribe(&nobody.clone().with_subscription_token(true), "chat:1"),
        Ok(())
    );
    assert_eq!(
        hub.check_subscribe(&alice, "nope:x"),
        Err(PermissionError::UnknownChannel)
    );
    assert_eq!(
        hub.check_subscribe(&alice, "bad name"),
        Err(PermissionError::UnknownChannel)
    );
}

#[test]
fn publish_presence_and_history_permissions() {
    let hub = hub();
    let (a, _ao) = user(&hub, "alice");
    let alice = ClientCtx::for_conn(&a);

    // `chat`: subscribers may publish, and ask for presence and history.
    assert_eq!(
        hub.check_publish(&alice, "chat:1"),
        Err(PermissionError::Denied)
    );
    assert_eq!(
        hub.check_presence(&alice, "chat:1"),
        Err(PermissionError::Denied)
    );
    assert_eq!(
        hub.check_history(&alice, "chat:1"),
        Err(PermissionError::Denied)
    );
    hub.subscribe(&a, "chat:1").unwrap();
    assert_eq!(hub.check_publish(&alice, "chat:1"), Ok(()));
    assert_eq!(hub.check_presence(&alice, "chat:1"), Ok(()));
    assert_eq!(hub.check_history(&alice, "chat:1"), Ok(()));
    // Subscribed to another channel of the namespace does not count.
    assert_eq!(
        hub.check_publish(&alice, "chat:2"),
        Err(PermissionError::Denied)
    );
    // No connection at all (e.g. only a user id): not a subscriber.
    let detached = ClientCtx {
        user: "alice".into(),
        ..ClientCtx::default()
    };
    assert_eq!(
        hub.check_publish(&detached, "chat:1"),
        Err(PermissionError::Denied)
    );

    // Default namespace: nobody publishes, no presence or history.
    hub.subscribe(&a, "lobby").unwrap();
    assert_eq!(
        hub.check_publish(&alice, "lobby"),
        Err(PermissionError::Denied)
    );
    assert_eq!(
        hub.check_presence(&alice, "lobby"),
        Err(PermissionError::NotAvailable)
    );
    assert_eq!(
        hub.check_history(&alice, "lobby"),
        Err(PermissionError::NotAvailable)
    );

    // `open`: anyone publishes; presence on but not for subscribers' asking.
    assert_eq!(hub.check_publish(&ClientCtx::default(), "open:x"), Ok(()));
    hub.subscribe(&a, "open:x").unwrap();
    assert_eq!(
        hub.check_presence(&alice, "open:x"),
        Err(PermissionError::Denied)
    );

    // After unsubscribing, subscriber rights are gone.
    assert!(hub.unsubscribe(&a, "chat:1"));
    assert_eq!(
        hub.check_publish(&alice, "chat:1"),
        Err(PermissionError::Denied)
    );
}

#[test]
fn presence_lists_subscribers_with_their_info() {
    let hub = hub();
    let (a, _ao) = user(&hub, "alice");
    let (a2, _a2o) = user(&hub, "alice");
    let (b, _bo) = user(&hub, "bob");
    let (n, _no) = anon(&hub);
    assert_eq!(hub.presence_stats("chat:1"), Ok(PresenceStats::default()));
    assert!(hub.presence("chat:1").unwrap().is_empty());

    hub.subscribe_with(
        &a,
        "chat:1",
        SubscribeOptions {
            chan_info: Some(Bytes::from_static(b"{\"role\":\"admin\"}")),
            ..SubscribeOptions::default()
        },
    )
    .unwrap();
    for c in [&a2, &b] {
        hub.subscribe(c, "chat:1").unwrap();
    }
    // Anonymous clients may subscribe to `open`; presence counts them as one user.
    hub.subscribe(&n, "open:x").unwrap();
    hub.subscribe(&b, "open:x").unwrap();

    let p = hub.presence("chat:1").unwrap();
    assert_eq!(p.len(), 3);
    let ai = &p[&a.id().to_string()];
    assert_eq!(ai.client, a.id().to_string());
    assert_eq!(ai.user, "alice");
    assert_eq!(ai.conn_info.as_deref(), Some(&b"{\"name\":\"alice\"}"[..]));
    assert_eq!(ai.chan_info.as_deref(), Some(&b"{\"role\":\"admin\"}"[..]));
    assert_eq!(p[&b.id().to_string()].chan_info, None);
    assert_eq!(
        hub.presence_stats("chat:1"),
        Ok(PresenceStats {
            num_clients: 3,
            num_users: 2
        })
    );
    assert_eq!(
        hub.presence_stats("open:x"),
        Ok(PresenceStats {
            num_clients: 2,
            num_users: 2
        })
    );

    let a2_id = a2.id().to_string();
    drop(a2);
    assert_eq!(hub.presence_stats("chat:1").unwrap().num_clients, 2);
    assert!(!hub.presence("chat:1").unwrap().contains_key(&a2_id));
    assert_eq!(hub.presence("lobby"), Err(ChannelError::NotAvailable));
    assert_eq!(
        hub.presence("x:y"),
        Err(ChannelError::UnknownNamespace("x".into()))
    );
}

#[test]
fn join_and_leave_events_reach_the_other_members() {
    let hub = hub();
    let (a, mut ao) = user(&hub, "alice");
    let (b, mut bo) = user(&hub, "bob");
    hub.subscribe(&a, "chat:1").unwrap();
    assert!(drain(&mut ao).is_empty(), "no event for the first member");
    hub.subscribe_with(
        &b,
        "chat:1",
        SubscribeOptions {
            chan_info: Some(Bytes::from_static(b"ci")),
            ..SubscribeOptions::default()
        },
    )
    .unwrap();
    assert!(drain(&mut bo).is_empty(), "no event to the joiner itself");
    let got = drain(&mut ao);
    assert_eq!(got.len(), 1);
    let Delivery::Join(ev) = &got[0] else {
        panic!("expected join, got {got:?}")
    };
    assert_eq!(&*ev.channel, "chat:1");
    assert_eq!(ev.info.user, "bob");
    assert_eq!(ev.info.client, b.id().to_string());
    assert_eq!(ev.info.chan_info.as_deref(), Some(&b"ci"[..]));
    // Events count against the outbox byte budget by the size of their info.
    let info_len = ev.info.client.len() + "bob".len() + "{\"name\":\"bob\"}".len() + 2;
    assert_eq!(got[0].payload_len(), info_len);

    // Subscribing again is no join.
    hub.subscribe(&b, "chat:1").unwrap();
    assert!(drain(&mut ao).is_empty());

    // A publication and a leave, in order.
    hub.publish("chat:1", Payload::text("hi"), PublishOptions::default());
    assert!(hub.unsubscribe(&b, "chat:1"));
    let got = drain(&mut ao);
    assert!(matches!(&got[0], Delivery::Publication(p) if p.offset == 1));
    let Delivery::Leave(ev) = &got[1] else {
        panic!("expected leave, got {got:?}")
    };
    assert_eq!(ev.info.user, "bob");
    assert_eq!(ev.info.chan_info.as_deref(), Some(&b"ci"[..]));

    // A disconnect is a leave too.
    hub.subscribe(&b, "chat:1").unwrap();
    drain(&mut ao);
    drop(b);
    let got = drain(&mut ao);
    assert!(matches!(&got[..], [Delivery::Leave(ev)] if ev.info.user == "bob"));
}

#[test]
fn no_events_without_join_leave() {
    let hub = hub();
    let (a, mut ao) = user(&hub, "alice");
    let (b, _bo) = user(&hub, "bob");
    hub.subscribe(&a, "open:x").unwrap();
    hub.subscribe(&b, "open:x").unwrap();
    drop(b);
    assert!(drain(&mut ao).is_empty());
}

#[test]
fn a_slow_member_overflowed_by_join_events_is_closed() {
    let ns = Namespaces::default().with(
        "chat",
        ChannelOptions {
            join_leave: true,
            ..ChannelOptions::default()
        },
    );
    let hub = Hub::with_namespaces(
        HubLimits {
            outbox_max_messages: 2,
            ..HubLimits::default()
        },
        ns,
    );
    let (slow, _slow_out) = hub.register(ConnInfo::default()).unwrap();
    hub.subscribe(&slow, "chat:1").unwrap();
    let mut others: Vec<(ConnHandle, Outbox)> = Vec::new();
    for _ in 0..3 {
        // The others keep up; only `slow` never reads.
        for (_, o) in others.iter_mut() {
            drain(o);
        }
        let (c, o) = hub.register(ConnInfo::default()).unwrap();
        hub.subscribe(&c, "chat:1").unwrap();
        others.push((c, o));
    }
    assert!(slow.is_closed());
    // Its leave reached the others.
    let got = drain(&mut others[0].1);
    assert!(
        matches!(got.last(), Some(Delivery::Leave(ev)) if ev.info.client == slow.id().to_string())
    );
    assert_eq!(hub.stats().slow_consumer_closes, 1);
    assert_eq!(hub.member_count("chat:1"), 3);
    drop(others);
    assert_eq!(hub.channel_count(), 0);
}
