//! The live connections as the HTTP API and the other nodes see them, whatever their
//! protocol: found by client id or by user in the hub, and reached through their outbox
//! ([`Control`] deliveries, carried out by each protocol's driver in its own words) or
//! closed through the hub. No protocol is named here.
use switchboard_core::{CloseReason, ConnId, Control, Hub};

/// The connections `user` has on this node (only `client`, when given).
fn of_user(hub: &Hub, user: &str, client: Option<ConnId>) -> Vec<ConnId> {
    hub.connections_of_user(user)
        .into_iter()
        .filter(|id| client.is_none_or(|c| c == *id))
        .collect()
}

/// Closes every connection of `user` (or only `client`) with [`CloseReason::Kicked`];
/// returns how many were closed. Each driver answers a kick its own way (Centrifugo: 3011
/// "force reconnect"; raw rooms: the hub's close code; Socket.IO: the socket leaves its
/// namespace).
pub(crate) fn disconnect_user(hub: &Hub, user: &str, client: Option<ConnId>) -> usize {
    of_user(hub, user, client)
        .into_iter()
        .filter(|id| hub.disconnect(*id, CloseReason::Kicked))
        .count()
}

/// Closes connection `client`; returns whether it was open here.
pub(crate) fn disconnect_client(hub: &Hub, client: ConnId) -> bool {
    hub.disconnect(client, CloseReason::Kicked)
}

/// Asks every connection of `user` (or only `client`) to carry out `control` (a
/// server-side subscribe or unsubscribe); returns how many were asked.
pub(crate) fn tell_user(hub: &Hub, user: &str, client: Option<ConnId>, control: &Control) -> usize {
    of_user(hub, user, client)
        .into_iter()
        .filter(|id| hub.send_control(*id, control.clone()))
        .count()
}

/// The node could not deliver publications of `channel` that its members missed (a gap
/// that history no longer holds): every local member is told, after what it was already
/// sent. Protocols with stream positions let the client recover (Centrifugo: `unsubscribe`
/// push 2500, the SDK resubscribes and learns `recovered: false`); the others close with
/// [`CloseReason::MissedPublications`] (4500), so the application reloads its state.
pub(crate) fn tell_missed(hub: &Hub, channel: &str) {
    let Some(ch) = hub.channel(channel) else {
        return;
    };
    let control = Control::MissedPublications(channel.to_string());
    let told = ch
        .member_ids()
        .into_iter()
        .filter(|id| hub.send_control(*id, control.clone()))
        .count();
    if told > 0 {
        tracing::warn!(channel, told, "members told they missed publications");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::{ConnInfo, Delivery, HubLimits};

    #[test]
    fn controls_reach_the_users_connections_in_order() {
        let hub = Hub::new(HubLimits::default());
        let (alice, mut a_box) = hub
            .register(ConnInfo::new("a", "raw").with_user("alice"))
            .unwrap();
        let (_bob, mut b_box) = hub
            .register(ConnInfo::new("b", "raw").with_user("bob"))
            .unwrap();
        hub.subscribe(&alice, "news").unwrap();
        hub.publish(
            "news",
            switchboard_core::Payload::text("first"),
            Default::default(),
        );
        let sub = Control::Subscribe("x".into());
        assert_eq!(tell_user(&hub, "alice", None, &sub), 1);
        assert_eq!(tell_user(&hub, "alice", Some(alice.id() + 1), &sub), 0);
        let mut got = Vec::new();
        a_box.try_recv_batch(&mut got, 10).unwrap();
        assert!(matches!(&got[0], Delivery::Publication(_)));
        assert!(matches!(&got[1], Delivery::Control(c) if **c == sub));
        assert_eq!(b_box.try_recv_batch(&mut got, 10).unwrap(), 0);
        assert_eq!(disconnect_user(&hub, "alice", None), 1);
        assert_eq!(disconnect_user(&hub, "alice", None), 0);
    }
}
