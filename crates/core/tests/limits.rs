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
