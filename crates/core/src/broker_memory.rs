//! The in-memory broker: one node, nothing shared, no dependency.
//!
//! Everything is answered by the node's own [`Hub`]: its channels number publications and
//! keep history, presence is derived from members. The [`Node`](crate::Node) facade calls
//! the hub directly in this mode (the synchronous path, no boxed future per publish);
//! this type exists so that code holding an `Arc<dyn Broker>` sees one consistent view.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::broker::{
    ready, BoxFuture, Broker, BrokerError, BrokerHandler, BrokerPublication, BrokerStatus,
    NodeInfo, StreamSlice, SurveyAnswer,
};
use crate::history::{HistoryQuery, StreamPosition};
use crate::hub::{Hub, PublishOptions};
use crate::namespace::ChannelOptions;
use crate::presence::ClientInfo;

/// The single-node broker. See the module documentation.
pub struct MemoryBroker {
    hub: Hub,
    info: NodeInfo,
    started: Instant,
}

impl MemoryBroker {
    /// A broker answering from `hub`, registered as `info` (its counts are filled in
    /// from the hub when asked).
    pub fn new(hub: Hub, info: NodeInfo) -> MemoryBroker {
        MemoryBroker {
            hub,
            info,
            started: Instant::now(),
        }
    }
}

fn not_available() -> BrokerError {
    BrokerError::Protocol("not available in this channel".to_string())
}

impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn is_shared(&self) -> bool {
        false
    }

    fn node_id(&self) -> &str {
        &self.info.id
    }

    fn status(&self) -> BrokerStatus {
        BrokerStatus {
            kind: "memory",
            connected: true,
            masters: Vec::new(),
        }
    }

    fn start(&self, _handler: Arc<dyn BrokerHandler>) {}

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        _options: &'a ChannelOptions,
        p: BrokerPublication,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        let report = self.hub.publish_with_info(
            channel,
            p.payload,
            PublishOptions {
                exclude: p.exclude,
                publisher: p.publisher,
                skip_history: false,
            },
            p.info,
        );
        ready(Ok(report.position().unwrap_or_default()))
    }

    fn subscribe<'a>(&'a self, _channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        // The hub's own membership is the subscription.
        ready(Ok(()))
    }

    fn unsubscribe<'a>(&'a self, _channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        ready(Ok(()))
    }

    fn read_stream<'a>(
        &'a self,
        channel: &'a str,
        _options: &'a ChannelOptions,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<StreamSlice, BrokerError>> {
        // Read in the channel's own epoch: this broker compares nothing itself.
        let top = self
            .hub
            .history(
                channel,
                HistoryQuery {
                    limit: Some(0),
                    ..HistoryQuery::default()
                },
            )
            .map(|r| r.position);
        let result = top.and_then(|top| {
            let query = HistoryQuery {
                since: query
                    .since
                    .map(|s| StreamPosition::new(s.offset, top.epoch)),
                ..query
            };
            self.hub.history(channel, query)
        });
        ready(match result {
            Ok(r) => {
                let oldest = self
                    .hub
                    .history(
                        channel,
                        HistoryQuery {
                            limit: Some(1),
                            ..HistoryQuery::default()
                        },
                    )
                    .ok()
                    .and_then(|h| h.publications.first().map(|p| p.offset));
                Ok(StreamSlice {
                    publications: r.publications,
                    top: r.position,
                    oldest,
                    // One node needs no gap detection: nothing reads it.
                    start: 0,
                })
            }
            Err(_) => Err(not_available()),
        })
    }

    fn remove_history<'a>(
        &'a self,
        channel: &'a str,
        _options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        ready(
            self.hub
                .history_remove(channel)
                .map_err(|_| not_available()),
        )
    }

    fn add_presence<'a>(
        &'a self,
        _channel: &'a str,
        _info: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        // Presence is derived from the hub's members.
        ready(Ok(()))
    }

    fn remove_presence<'a>(
        &'a self,
        _channel: &'a str,
        _client: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        ready(Ok(()))
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, ClientInfo>, BrokerError>> {
        ready(self.hub.presence(channel).map_err(|_| not_available()))
    }

    fn member_event<'a>(
        &'a self,
        _channel: &'a str,
        _join: bool,
        _info: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        // The hub already told the local members; there is no other node.
        ready(Ok(()))
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, BrokerError>> {
        let stats = self.hub.stats();
        let info = NodeInfo {
            num_clients: stats.connections,
            num_channels: stats.channels,
            uptime_secs: self.started.elapsed().as_secs(),
            ..self.info.clone()
        };
        ready(Ok(vec![info]))
    }

    fn control(&self, _command: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        // Commands go to the *other* nodes; the caller applied it here already.
        ready(Ok(()))
    }

    fn survey(&self, _request: Bytes) -> BoxFuture<'_, Result<Vec<SurveyAnswer>, BrokerError>> {
        // No other node to ask; the caller answers for this one.
        ready(Ok(Vec::new()))
    }
}
