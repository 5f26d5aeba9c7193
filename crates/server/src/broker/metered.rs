//! A [`Broker`] that counts what it is asked: every operation, its failures and its
//! round-trip time, by operation, for `/metrics`. It wraps whichever broker the server uses
//! (memory or Redis) and changes nothing else: each call goes straight to the inner broker.
//! The cost is one clock read before and after each operation and a few relaxed atomic
//! adds; broker operations are network round trips, so it does not show.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use switchboard_core::{
    BoxFuture, Broker, BrokerError, BrokerHandler, BrokerPublication, BrokerStatus, ChannelOptions,
    ClientInfo, HistoryQuery, NodeInfo, StreamPosition, StreamSlice, SurveyAnswer,
};

use crate::conn::stats::{LatencyHistogram, LatencySnapshot};

/// The operations counted, in label order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Publish,
    PublishBatch,
    Subscribe,
    Unsubscribe,
    ReadStream,
    RemoveHistory,
    AddPresence,
    RemovePresence,
    Presence,
    MemberEvent,
    Occupancy,
    UserOccupancy,
    Nodes,
    Control,
    Survey,
}

impl Op {
    /// Every operation, in label order.
    pub(crate) const ALL: [Op; 15] = [
        Op::Publish,
        Op::PublishBatch,
        Op::Subscribe,
        Op::Unsubscribe,
        Op::ReadStream,
        Op::RemoveHistory,
        Op::AddPresence,
        Op::RemovePresence,
        Op::Presence,
        Op::MemberEvent,
        Op::Occupancy,
        Op::UserOccupancy,
        Op::Nodes,
        Op::Control,
        Op::Survey,
    ];

    /// The `op` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Op::Publish => "publish",
            Op::PublishBatch => "publish_batch",
            Op::Subscribe => "subscribe",
            Op::Unsubscribe => "unsubscribe",
            Op::ReadStream => "read_stream",
            Op::RemoveHistory => "remove_history",
            Op::AddPresence => "add_presence",
            Op::RemovePresence => "remove_presence",
            Op::Presence => "presence",
            Op::MemberEvent => "member_event",
            Op::Occupancy => "occupancy",
            Op::UserOccupancy => "user_occupancy",
            Op::Nodes => "nodes",
            Op::Control => "control",
            Op::Survey => "survey",
        }
    }
}

/// One operation's counts.
#[derive(Debug, Default)]
struct OpCounters {
    calls: AtomicU64,
    errors: AtomicU64,
    round_trip: LatencyHistogram,
}

/// What [`BrokerMetrics::snapshot`] reads for one operation.
#[derive(Debug, Clone)]
pub(crate) struct OpSnapshot {
    /// The operation.
    pub(crate) op: Op,
    /// Calls that completed (successfully or not).
    pub(crate) calls: u64,
    /// Calls that failed.
    pub(crate) errors: u64,
    /// Their round-trip times.
    pub(crate) round_trip: LatencySnapshot,
}

/// The broker's counters, shared by the wrapper and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct BrokerMetrics {
    ops: [OpCounters; Op::ALL.len()],
}

impl BrokerMetrics {
    fn record(&self, op: Op, started: Instant, failed: bool) {
        let c = &self.ops[op as usize];
        c.calls.fetch_add(1, Relaxed);
        if failed {
            c.errors.fetch_add(1, Relaxed);
        }
        c.round_trip.observe(started.elapsed());
    }

    /// Every operation's counts.
    pub(crate) fn snapshot(&self) -> Vec<OpSnapshot> {
        Op::ALL
            .iter()
            .map(|&op| {
                let c = &self.ops[op as usize];
                OpSnapshot {
                    op,
                    calls: c.calls.load(Relaxed),
                    errors: c.errors.load(Relaxed),
                    round_trip: c.round_trip.snapshot(),
                }
            })
            .collect()
    }
}

/// A broker whose operations are counted in a [`BrokerMetrics`].
pub(crate) struct Metered {
    inner: Arc<dyn Broker>,
    metrics: Arc<BrokerMetrics>,
}

impl Metered {
    /// Counts `inner`'s operations in `metrics`.
    pub(crate) fn new(inner: Arc<dyn Broker>, metrics: Arc<BrokerMetrics>) -> Metered {
        Metered { inner, metrics }
    }

    /// Runs `fut` (operation `op`) and records it.
    fn timed<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        fut: BoxFuture<'a, Result<T, BrokerError>>,
    ) -> BoxFuture<'a, Result<T, BrokerError>> {
        let started = Instant::now();
        Box::pin(async move {
            let r = fut.await;
            self.metrics.record(op, started, r.is_err());
            r
        })
    }
}

impl Broker for Metered {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    fn node_id(&self) -> &str {
        self.inner.node_id()
    }

    fn status(&self) -> BrokerStatus {
        self.inner.status()
    }

    fn start(&self, handler: Arc<dyn BrokerHandler>) {
        self.inner.start(handler)
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ChannelOptions,
        publication: BrokerPublication,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        self.timed(
            Op::Publish,
            self.inner.publish(channel, options, publication),
        )
    }

    fn publish_batch<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ChannelOptions,
        publications: Vec<BrokerPublication>,
    ) -> BoxFuture<'a, Result<Vec<StreamPosition>, BrokerError>> {
        self.timed(
            Op::PublishBatch,
            self.inner.publish_batch(channel, options, publications),
        )
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.timed(Op::Subscribe, self.inner.subscribe(channel))
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.timed(Op::Unsubscribe, self.inner.unsubscribe(channel))
    }

    fn read_stream<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ChannelOptions,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<StreamSlice, BrokerError>> {
        self.timed(
            Op::ReadStream,
            self.inner.read_stream(channel, options, query),
        )
    }

    fn remove_history<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.timed(
            Op::RemoveHistory,
            self.inner.remove_history(channel, options),
        )
    }

    fn add_presence<'a>(
        &'a self,
        channel: &'a str,
        info: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.timed(Op::AddPresence, self.inner.add_presence(channel, info))
    }

    fn remove_presence<'a>(
        &'a self,
        channel: &'a str,
        client: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.timed(
            Op::RemovePresence,
            self.inner.remove_presence(channel, client),
        )
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, ClientInfo>, BrokerError>> {
        self.timed(Op::Presence, self.inner.presence(channel))
    }

    fn member_event<'a>(
        &'a self,
        channel: &'a str,
        join: bool,
        info: ClientInfo,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.timed(
            Op::MemberEvent,
            self.inner.member_event(channel, join, info),
        )
    }

    fn occupancy<'a>(
        &'a self,
        channel: &'a str,
        occupied: bool,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        self.timed(Op::Occupancy, self.inner.occupancy(channel, occupied))
    }

    fn user_occupancy<'a>(
        &'a self,
        channel: &'a str,
        user: &'a str,
        present: bool,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        self.timed(
            Op::UserOccupancy,
            self.inner.user_occupancy(channel, user, present),
        )
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, BrokerError>> {
        self.timed(Op::Nodes, self.inner.nodes())
    }

    fn control(&self, command: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.timed(Op::Control, self.inner.control(command))
    }

    fn survey(&self, request: Bytes) -> BoxFuture<'_, Result<Vec<SurveyAnswer>, BrokerError>> {
        self.timed(Op::Survey, self.inner.survey(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker whose `nodes` fails and whose `subscribe` succeeds.
    struct Fixed;

    impl Broker for Fixed {
        fn kind(&self) -> &'static str {
            "fixed"
        }
        fn is_shared(&self) -> bool {
            true
        }
        fn node_id(&self) -> &str {
            "n"
        }
        fn status(&self) -> BrokerStatus {
            BrokerStatus {
                kind: "fixed",
                connected: true,
                masters: Vec::new(),
            }
        }
        fn start(&self, _handler: Arc<dyn BrokerHandler>) {}
        fn publish<'a>(
            &'a self,
            _channel: &'a str,
            _options: &'a ChannelOptions,
            _publication: BrokerPublication,
        ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
            switchboard_core::ready(Err(BrokerError::Unavailable("down".into())))
        }
        fn subscribe<'a>(&'a self, _channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
            Box::pin(async {
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
                Ok(())
            })
        }
        fn unsubscribe<'a>(&'a self, _channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
            switchboard_core::ready(Ok(()))
        }
        fn read_stream<'a>(
            &'a self,
            _channel: &'a str,
            _options: &'a ChannelOptions,
            _query: HistoryQuery,
        ) -> BoxFuture<'a, Result<StreamSlice, BrokerError>> {
            switchboard_core::ready(Err(BrokerError::Unavailable("down".into())))
        }
        fn remove_history<'a>(
            &'a self,
            _channel: &'a str,
            _options: &'a ChannelOptions,
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            switchboard_core::ready(Ok(()))
        }
        fn add_presence<'a>(
            &'a self,
            _channel: &'a str,
            _info: ClientInfo,
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            switchboard_core::ready(Ok(()))
        }
        fn remove_presence<'a>(
            &'a self,
            _channel: &'a str,
            _client: &'a str,
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            switchboard_core::ready(Ok(()))
        }
        fn presence<'a>(
            &'a self,
            _channel: &'a str,
        ) -> BoxFuture<'a, Result<HashMap<String, ClientInfo>, BrokerError>> {
            switchboard_core::ready(Ok(HashMap::new()))
        }
        fn member_event<'a>(
            &'a self,
            _channel: &'a str,
            _join: bool,
            _info: ClientInfo,
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            switchboard_core::ready(Ok(()))
        }
        fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, BrokerError>> {
            switchboard_core::ready(Err(BrokerError::Unavailable("down".into())))
        }
    }

    #[tokio::test]
    async fn counts_calls_errors_and_round_trips_by_operation() {
        let metrics = Arc::new(BrokerMetrics::default());
        let b = Metered::new(Arc::new(Fixed), Arc::clone(&metrics));
        b.subscribe("a").await.unwrap();
        b.subscribe("b").await.unwrap();
        assert!(b.nodes().await.is_err());
        assert_eq!(b.kind(), "fixed");
        let snap = metrics.snapshot();
        let of = |op: Op| snap.iter().find(|s| s.op == op).unwrap().clone();
        let sub = of(Op::Subscribe);
        assert_eq!((sub.calls, sub.errors), (2, 0));
        assert_eq!(sub.round_trip.count(), 2);
        assert!(
            sub.round_trip.sum_seconds >= 0.006,
            "{}",
            sub.round_trip.sum_seconds
        );
        let nodes = of(Op::Nodes);
        assert_eq!((nodes.calls, nodes.errors), (1, 1));
        assert_eq!(of(Op::Publish).calls, 0);
    }
}
