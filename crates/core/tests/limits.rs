//! Connection and room limits, and their rejection counters.

use switchboard_core::{ConnInfo, Hub, HubError, HubLimits};

#[test]
fn max_connections_refuses_and_counts_then_frees_on_drop() {
    let hub = Hub::new(HubLimits {
        max_connections: Some(3),
        ..HubLimits::default()
    });
    let mut held: Vec<_> = (0..3)
        .map(|_| hub.register(ConnInfo::new("a", "raw")).unwrap())
        .collect();
    for _ in 0..2 {
        assert_eq!(
            hub.register(ConnInfo::new("b", "raw")).unwrap_err(),
            HubError::TooManyConnections { limit: 3 }
        );
    }
    let stats = hub.stats();
    assert_eq!(stats.connections, 3);
    assert_eq!(stats.rejections.connections, 2);
    assert_eq!(stats.rejections.total(), 2);
    held.pop();
    assert!(hub
        .register(ConnInfo::new("c", "raw").with_user("u1"))
        .is_ok());
}

#[test]
fn room_full_refuses_and_counts_while_other_rooms_stay_open() {
    let hub = Hub::new(HubLimits {
        max_room_members: Some(2),
        ..HubLimits::default()
    });
    let conns: Vec<_> = (0..3)
        .map(|_| hub.register(ConnInfo::default()).unwrap())
        .collect();
    hub.subscribe(&conns[0].0, "room").unwrap();
    hub.subscribe(&conns[1].0, "room").unwrap();
    assert_eq!(
        hub.subscribe(&conns[2].0, "room"),
        Err(HubError::RoomFull { limit: 2 })
    );
    // Re-subscribing an existing member is not refused.
    hub.subscribe(&conns[1].0, "room").unwrap();
    hub.subscribe(&conns[2].0, "other").unwrap();
    assert_eq!(hub.member_count("room"), 2);
    assert_eq!(hub.stats().rejections.room_full, 1);
    assert!(conns[2].0.channels().iter().all(|c| &**c != "room"));
    // A member leaving makes room.
    conns[0].0.unsubscribe("room");
    hub.subscribe(&conns[2].0, "room").unwrap();
}

#[test]
fn zero_member_limit_creates_no_channel() {
    let hub = Hub::new(HubLimits {
        max_room_members: Some(0),
        ..HubLimits::default()
    });
    let (a, _out) = hub.register(ConnInfo::default()).unwrap();
    assert_eq!(
        hub.subscribe(&a, "room"),
        Err(HubError::RoomFull { limit: 0 })
    );
    assert_eq!(hub.channel_count(), 0);
}

#[test]
fn max_connections_per_user_counts_each_user_apart_and_frees_on_drop() {
    let hub = Hub::new(HubLimits {
        max_connections_per_user: Some(2),
        ..HubLimits::default()
    });
    let user = |u: &str| ConnInfo::new("a", "raw").with_user(u);
    let a1 = hub.register(user("alice")).unwrap();
    let _a2 = hub.register(user("alice")).unwrap();
    assert_eq!(
        hub.register(user("alice")).unwrap_err(),
        HubError::TooManyUserConnections { limit: 2 }
    );
    assert!(hub.register(user("bob")).is_ok());
    // Anonymous connections are not counted against anyone.
    for _ in 0..3 {
        assert!(hub.register(ConnInfo::new("a", "raw")).is_ok());
    }
    assert_eq!(hub.stats().rejections.connections, 1);
    drop(a1);
    assert!(hub.register(user("alice")).is_ok());
}

#[test]
fn max_subscriptions_per_connection_refuses_the_next_channel_only() {
    let hub = Hub::new(HubLimits {
        max_subscriptions_per_connection: Some(2),
        ..HubLimits::default()
    });
    let (conn, _outbox) = hub.register(ConnInfo::new("a", "raw")).unwrap();
    hub.subscribe(&conn, "one").unwrap();
    hub.subscribe(&conn, "two").unwrap();
    assert_eq!(
        hub.subscribe(&conn, "three").unwrap_err(),
        HubError::TooManySubscriptions { limit: 2 }
    );
    // Subscribing again to a channel it is in is not a new subscription.
    hub.subscribe(&conn, "two").unwrap();
    hub.unsubscribe(&conn, "one");
    hub.subscribe(&conn, "three").unwrap();
}
