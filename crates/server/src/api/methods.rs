//! The HTTP API's methods, one function each: parse the body, act through the node (or on
//! every node, see [`super::cluster`]), answer in Centrifugo's server API format.
use serde_json::{json, Value};
use switchboard_core::{Epoch, HistoryQuery, StreamPosition};
use switchboard_protocols::centrifugo as cf;

use super::cluster::{cluster_channels, cluster_command};
use super::*;
use crate::broker::control::Command;
use crate::state::Shared;

/// `publish`.
pub(super) async fn api_publish(shared: &Shared, body: &[u8]) -> Result<Json, Fail> {
    let b: PublishBody = parse(body)?;
    node_outcome(publish(shared, &b.channel, &b.data).await)
}

/// `broadcast`.
pub(super) async fn api_broadcast(shared: &Shared, body: &[u8]) -> Result<Json, Fail> {
    let b: BroadcastBody = parse(body)?;
    let mut responses: Vec<Value> = Vec::with_capacity(b.channels.len());
    for ch in &b.channels {
        // Each channel is answered on its own; a temporary error is marked
        // `"temporary": true` so the caller retries just those channels.
        responses.push(match publish(shared, ch, &b.data).await {
            Ok(r) => json!({ "result": r }),
            Err(e) => json!({ "error": e.body }),
        });
    }
    Ok(json!({ "result": { "responses": responses } }).to_string())
}

/// `presence`.
pub(super) async fn api_presence(shared: &Shared, body: &[u8]) -> Result<Json, Fail> {
    let node = &shared.node;
    let b: ChannelBody = parse(body)?;
    node_outcome(node.presence(&b.channel).await.map(|m| {
        let presence = m
            .into_iter()
            .map(|(k, v)| {
                let info = cf::ClientInfo {
                    user: v.user,
                    client: v.client,
                    conn_info: v.conn_info.as_deref().and_then(json_data),
                    chan_info: v.chan_info.as_deref().and_then(json_data),
                };
                (k, info)
            })
            .collect();
        PresenceAnswer { presence }
    }))
}

/// `presence_stats`.
pub(super) async fn api_presence_stats(shared: &Shared, body: &[u8]) -> Result<Json, Fail> {
    let node = &shared.node;
    let b: ChannelBody = parse(body)?;
    node_outcome(
        node.presence_stats(&b.channel)
            .await
            .map(|s| json!({ "num_clients": s.num_clients, "num_users": s.num_users })),
    )
}

/// `history`.
pub(super) async fn api_history(shared: &Shared, body: &[u8]) -> Result<Json, Fail> {
    let node = &shared.node;
    let b: HistoryBody = parse(body)?;
    let query = HistoryQuery {
        since: b
            .since
            .as_ref()
            .map(|p| StreamPosition::new(p.offset, Epoch::from_client(&p.epoch))),
        // As in Centrifugo: no limit or 0 gives only the position, -1 everything.
        limit: match b.limit {
            None => Some(0),
            Some(n) => usize::try_from(n).ok(),
        },
        reverse: b.reverse,
    };
    node_outcome(node.history(&b.channel, query).await.map(|r| {
        HistoryAnswer {
            publications: r
                .publications
                .iter()
                .map(|p| cf::Publication::from_core(p))
                .collect(),
            offset: r.position.offset,
            epoch: cf::wire_epoch(r.position.epoch),
        }
    }))
}

/// `history_remove`.
pub(super) async fn api_history_remove(shared: &Shared, body: &[u8]) -> Result<Json, Fail> {
    let node = &shared.node;
    let b: ChannelBody = parse(body)?;
    node_outcome(node.history_remove(&b.channel).await.map(|()| json!({})))
}

/// `info`.
pub(super) async fn api_info(shared: &Shared, _body: &[u8]) -> Result<Json, Fail> {
    let node = &shared.node;
    let hub = &shared.hub;
    let nodes = node.nodes().await.map(|list| {
        let stats = hub.stats();
        let me = node.broker().node_id().to_string();
        let nodes: Vec<Value> = list
            .into_iter()
            .map(|n| {
                // This node's own counts are current; the others' are from their
                // latest heartbeat.
                let (clients, channels, uptime) = if n.id == me {
                    (
                        stats.connections,
                        stats.channels,
                        shared.started.elapsed().as_secs(),
                    )
                } else {
                    (n.num_clients, n.num_channels, n.uptime_secs)
                };
                json!({
                    "uid": n.id,
                    "name": n.name,
                    "url": n.url,
                    "version": env!("CARGO_PKG_VERSION"),
                    "num_clients": clients,
                    "num_channels": channels,
                    "uptime": uptime,
                })
            })
            .collect();
        json!({ "nodes": nodes })
    });
    node_outcome(nodes)
}

/// `disconnect`.
pub(super) async fn api_disconnect(shared: &Shared, body: &[u8]) -> Result<Json, Fail> {
    let b: DisconnectBody = parse(body)?;
    let client = b.client.as_deref().and_then(|c| c.parse::<u64>().ok());
    let command = Command::Disconnect {
        user: b.user,
        client,
    };
    node_outcome(cluster_command(shared, command).await)
}

/// `subscribe` and `unsubscribe`.
pub(super) async fn api_subscribe(
    shared: &Shared,
    body: &[u8],
    method: &str,
) -> Result<Json, Fail> {
    let b: UserChannelBody = parse(body)?;
    let client = b.client.as_deref().and_then(|c| c.parse::<u64>().ok());
    let command = if method == "subscribe" {
        Command::Subscribe {
            user: b.user,
            channel: b.channel,
            client,
        }
    } else {
        Command::Unsubscribe {
            user: b.user,
            channel: b.channel,
            client,
        }
    };
    node_outcome(cluster_command(shared, command).await)
}

/// `channels`.
pub(super) async fn api_channels(shared: &Shared, body: &[u8]) -> Result<Json, Fail> {
    let b: ChannelsBody = parse(body)?;
    let pattern = b.pattern.unwrap_or_default();
    node_outcome(cluster_channels(shared, pattern).await.map(|listed| {
        let channels: serde_json::Map<String, Value> = listed
            .into_iter()
            .map(|(name, n)| (name, json!({ "num_clients": n })))
            .collect();
        json!({ "channels": channels })
    }))
}
