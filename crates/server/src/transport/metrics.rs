//! `GET /metrics`: the server's counters in the Prometheus text format (0.0.4).
//!
//! Nothing is recorded for the scrape: every value is read at scrape time from what the
//! server already counts with relaxed atomics — the runtime's per-protocol traffic
//! ([`ProtocolCounters`](crate::conn::stats::ProtocolCounters)), the server's refusals and
//! closes ([`ServerCounters`](crate::conn::stats::ServerCounters)), the hub's
//! [`HubStats`](switchboard_core::HubStats), the node's gap counters, the broker's status
//! and the process (`/proc/self`). Labels are the protocol and a reason, never a channel
//! or a user, so the number of series stays small and fixed.
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::conn::stats::{CloseKind, LatencySnapshot, LATENCY_BOUNDS};
use crate::state::Shared;
use crate::transport::http::{method_not_allowed, Body};
use crate::transport::{Endpoint, RequestCtx, ResponseFuture, Route};

/// The prefix of every metric name.
pub const PREFIX: &str = "switchboard";

/// `/metrics`.
pub(crate) struct Metrics;

impl Endpoint for Metrics {
    fn route(&self) -> Route {
        Route::Paths {
            paths: &["/metrics"],
            upgrades: false,
        }
    }

    fn handle(&self, req: Request<Incoming>, ctx: RequestCtx) -> ResponseFuture {
        let response = match *req.method() {
            Method::GET | Method::HEAD => response(&ctx.shared),
            _ => method_not_allowed(),
        };
        Box::pin(std::future::ready(response))
    }
}

/// Serves `GET /metrics` alone on `listener` (the `metrics_listen` port) until the task is
/// aborted; any other request is answered 404.
pub(crate) async fn serve_alone(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = match (req.method(), req.uri().path()) {
                    (&Method::GET | &Method::HEAD, "/metrics") => response(&shared),
                    _ => crate::transport::http::text(http::StatusCode::NOT_FOUND, "not found"),
                };
                std::future::ready(Ok::<_, std::convert::Infallible>(r))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// The `/metrics` answer.
pub(crate) fn response(shared: &Arc<Shared>) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(render(shared))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Every metric, as text.
pub(crate) fn render(shared: &Arc<Shared>) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(Scrape(Arc::clone(shared))));
    let mut out = String::with_capacity(8 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// Reads the server's state at scrape time.
struct Scrape(Arc<Shared>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

type Labels = Vec<(&'static str, &'static str)>;

/// Writes one metric family.
struct Families<'a>(DescriptorEncoder<'a>);

impl Families<'_> {
    fn counter(&mut self, name: &str, help: &str, samples: &[(Labels, u64)]) -> std::fmt::Result {
        let metric = ConstCounter::new(0u64);
        let mut family = self
            .0
            .encode_descriptor(name, help, None, metric.metric_type())?;
        for (labels, value) in samples {
            ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels, i64)]) -> std::fmt::Result {
        let metric = ConstGauge::new(0i64);
        let mut family = self
            .0
            .encode_descriptor(name, help, None, metric.metric_type())?;
        for (labels, value) in samples {
            ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }

    /// A histogram family: per label set, the per-bucket (not cumulative) counts of
    /// [`LATENCY_BOUNDS`] then `+Inf`, and the sum.
    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Labels, LatencySnapshot)],
    ) -> std::fmt::Result {
        let mut family = self.0.encode_descriptor(
            name,
            help,
            Some(&Unit::Seconds),
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (labels, h) in samples {
            let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .zip(h.buckets.iter().copied())
                .collect();
            family
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count(), &buckets, None)?;
        }
        Ok(())
    }

    fn gauge_f64(&mut self, name: &str, help: &str, value: f64) -> std::fmt::Result {
        let metric = ConstGauge::new(value);
        let family = self
            .0
            .encode_descriptor(name, help, None, metric.metric_type())?;
        metric.encode(family)
    }

    fn histograms<'h>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl Iterator<Item = (&'static str, &'h Histogram)>,
    ) -> std::fmt::Result {
        let mut family = self.0.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (kind, histogram) in samples {
            histogram.encode(family.encode_family(&[("kind", kind)])?)?;
        }
        Ok(())
    }

    fn counter_f64(&mut self, name: &str, help: &str, value: f64) -> std::fmt::Result {
        let metric = ConstCounter::new(value);
        let family = self
            .0
            .encode_descriptor(name, help, None, metric.metric_type())?;
        metric.encode(family)
    }
}

fn one<T>(value: T) -> [(Labels, T); 1] {
    [(Vec::new(), value)]
}

fn gauge_value(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let shared = &self.0;
        let mut f = Families(encoder);
        let protocols = shared.counters.protocols();
        let server = shared.counters.snapshot();

        // Connections, per protocol.
        let per = |get: &dyn Fn(&crate::conn::stats::ProtocolCounters) -> u64| {
            protocols
                .iter()
                .map(|p| (vec![("protocol", p.name)], get(p)))
                .collect::<Vec<_>>()
        };
        let active: Vec<_> = protocols
            .iter()
            .map(|p| {
                (
                    vec![("protocol", p.name)],
                    gauge_value(p.active.load(Relaxed)),
                )
            })
            .collect();
        f.gauge("connections", "Connections open now, by protocol.", &active)?;
        f.gauge(
            "connections_parked",
            "Open connections parked now: idle, with no task of their own (their sockets wait in the server's own epoll set).",
            &[(Vec::new(), gauge_value(shared.counters.parked()))],
        )?;
        f.counter(
            "connections_resumed",
            "Parked connections that took a task back since start: woken by something they could not do parked (bytes to read, a heartbeat, a write the socket would not take whole). Deliveries alone are written while parked.",
            &[(Vec::new(), shared.counters.resumed())],
        )?;
        f.counter(
            "connections_opened",
            "Connections opened since start (upgrades completed, polling sessions), by protocol.",
            &per(&|p| p.opened.load(Relaxed)),
        )?;
        let mut closed = Vec::new();
        for p in &protocols {
            for kind in CloseKind::ALL {
                closed.push((
                    vec![("protocol", p.name), ("reason", kind.label())],
                    p.closed[kind as usize].load(Relaxed),
                ));
            }
        }
        f.counter(
            "connections_closed",
            "Connections ended since start, by protocol and reason.",
            &closed,
        )?;
        f.counter(
            "messages_received",
            "Data messages read from clients, by protocol.",
            &per(&|p| p.received.messages.load(Relaxed)),
        )?;
        f.counter(
            "received_bytes",
            "Payload bytes of the data messages read from clients, by protocol.",
            &per(&|p| p.received.bytes.load(Relaxed)),
        )?;
        f.counter(
            "messages_sent",
            "Frames written to clients, by protocol.",
            &per(&|p| p.sent.messages.load(Relaxed)),
        )?;
        f.counter(
            "sent_bytes",
            "Payload bytes of the frames written to clients, by protocol.",
            &per(&|p| p.sent.bytes.load(Relaxed)),
        )?;
        let latency: Vec<_> = protocols
            .iter()
            .map(|p| (vec![("protocol", p.name)], p.delivery_latency.snapshot()))
            .collect();
        f.histogram(
            "delivery_latency",
            "Time from a publication entering the hub to its frame being handed to a connection's socket, by protocol (one observation per publication per connection).",
            &latency,
        )?;

        // The network layer.
        f.counter(
            "tcp_connections_accepted",
            "TCP connections accepted since start.",
            &one(server.accepted),
        )?;
        f.counter(
            "websocket_upgrades",
            "WebSocket upgrades completed since start.",
            &one(server.upgraded),
        )?;
        f.counter(
            "handshake_refusals",
            "Connections refused before or during the handshake, by reason.",
            &[
                (vec![("reason", "origin")], server.rejected_origin),
                (
                    vec![("reason", "bad_handshake")],
                    server.rejected_bad_handshake,
                ),
                (
                    vec![("reason", "max_connections")],
                    server.rejected_max_connections,
                ),
                (
                    vec![("reason", "fd_exhausted")],
                    server.rejected_fd_exhausted,
                ),
                (
                    vec![("reason", "handshake_timeout")],
                    server.handshake_timeouts,
                ),
                (vec![("reason", "tls")], server.tls_failures),
                (vec![("reason", "room_full")], server.rejected_room_full),
                (
                    vec![("reason", "ip_connections")],
                    server.rejected_ip_connections,
                ),
                (vec![("reason", "ip_rate")], server.rejected_ip_rate),
                (vec![("reason", "accept_rate")], server.rejected_accept_rate),
                (
                    vec![("reason", "user_connections")],
                    server.rejected_user_connections,
                ),
            ],
        )?;
        f.counter(
            "flood_dropped_messages",
            "Client messages dropped for going over client_message_rate or client_bytes_rate.",
            &one(server.flood_dropped),
        )?;
        f.counter(
            "http_panics",
            "HTTP requests answered 500 after a panic.",
            &one(server.http_panics),
        )?;
        f.gauge(
            "socketio_attachment_bytes",
            "Bytes of Socket.IO binary attachments buffered now.",
            &one(gauge_value(server.socketio_attachment_bytes)),
        )?;

        // The hub.
        let hub = shared.hub.stats();
        f.gauge(
            "hub_connections",
            "Connections registered in the hub now.",
            &one(gauge_value(hub.connections)),
        )?;
        f.gauge(
            "channels",
            "Channels alive now.",
            &one(gauge_value(hub.channels)),
        )?;
        f.counter(
            "publications",
            "Publications since start.",
            &one(hub.published),
        )?;
        f.counter(
            "deliveries",
            "Items queued into connections' outboxes since start.",
            &one(hub.delivered),
        )?;
        f.counter(
            "dropped",
            "Queued items dropped by the drop-oldest slow-consumer policy.",
            &one(hub.dropped),
        )?;
        f.counter(
            "slow_consumer_closes",
            "Connections closed because their outbox overflowed.",
            &one(hub.slow_consumer_closes),
        )?;
        f.counter(
            "hub_rejections",
            "Registrations and subscriptions the hub refused, by reason.",
            &[
                (vec![("reason", "connections")], hub.rejections.connections),
                (vec![("reason", "room_full")], hub.rejections.room_full),
            ],
        )?;
        f.gauge(
            "history_bytes",
            "Bytes held by channel histories now.",
            &one(gauge_value(hub.history_bytes)),
        )?;
        let sizes = shared.hub.channel_sizes();
        f.gauge(
            "subscriptions",
            "Channel memberships now (one per connection per channel).",
            &one(gauge_value(sizes.subscriptions)),
        )?;
        f.gauge(
            "presence_entries",
            "Presence entries on this node now (members of channels that keep presence).",
            &one(gauge_value(sizes.presence_entries)),
        )?;
        f.gauge(
            "history_publications",
            "Publications held in this node's channel histories now.",
            &one(gauge_value(sizes.history_publications)),
        )?;
        f.counter(
            "history_evictions",
            "Channel histories dropped to stay under the history memory cap.",
            &one(hub.history_evictions),
        )?;

        // The broker.
        let broker = shared.node.broker_status();
        f.gauge(
            "broker_connected",
            "1 when the broker is reachable (always with the memory broker).",
            &[(vec![("kind", broker.kind)], i64::from(broker.connected))],
        )?;
        let gaps = shared.node.gap_stats();
        f.counter(
            "gap_fills",
            "Gaps in a channel's stream filled from history (shared broker).",
            &one(gaps.fills),
        )?;
        f.counter(
            "gaps_unfilled",
            "Gaps that could not be filled: subscribers were told they missed publications.",
            &one(gaps.unfilled),
        )?;
        let ops = shared.broker_metrics.snapshot();
        f.counter(
            "broker_operations",
            "Broker operations completed, by operation.",
            &ops.iter()
                .map(|o| (vec![("op", o.op.label())], o.calls))
                .collect::<Vec<_>>(),
        )?;
        f.counter(
            "broker_errors",
            "Broker operations that failed, by operation.",
            &ops.iter()
                .map(|o| (vec![("op", o.op.label())], o.errors))
                .collect::<Vec<_>>(),
        )?;
        f.histogram(
            "broker_round_trip",
            "Time each broker operation took, by operation.",
            &ops.iter()
                .map(|o| (vec![("op", o.op.label())], o.round_trip.clone()))
                .collect::<Vec<_>>(),
        )?;
        let mut recoveries = Vec::new();
        for p in &protocols {
            recoveries.push((
                vec![("protocol", p.name), ("result", "recovered")],
                p.recovered.load(Relaxed),
            ));
            recoveries.push((
                vec![("protocol", p.name), ("result", "not_recovered")],
                p.not_recovered.load(Relaxed),
            ));
        }
        f.counter(
            "recoveries",
            "Clients that asked for what they missed (Centrifugo recover, Socket.IO connection state recovery), by whether they got all of it.",
            &recoveries,
        )?;

        // Webhooks.
        let zero = crate::webhooks::WebhookStats::default();
        let hooks = shared.webhooks.as_ref().map_or(&zero, |w| w.stats());
        f.counter(
            "webhook_sent",
            "Webhook requests answered 2xx.",
            &one(hooks.sent.load(Relaxed)),
        )?;
        f.counter(
            "webhook_events",
            "Webhook events delivered (in requests answered 2xx).",
            &one(hooks.events.load(Relaxed)),
        )?;
        f.counter(
            "webhook_failed",
            "Webhook events given up on after every attempt failed.",
            &one(hooks.failed.load(Relaxed)),
        )?;
        f.counter(
            "webhook_retried",
            "Webhook requests that failed and were retried.",
            &one(hooks.retried.load(Relaxed)),
        )?;
        f.counter(
            "webhook_dropped",
            "Webhook events dropped because a target's queue was full.",
            &one(hooks.dropped.load(Relaxed)),
        )?;
        {
            let family = f.0.encode_descriptor(
                "webhook_duration_seconds",
                "Time each webhook request took, failed ones included.",
                None,
                hooks.duration.metric_type(),
            )?;
            hooks.duration.encode(family)?;
        }

        // Calls to the application's backend.
        let proxy = &shared.proxy.stats;
        let calls: Vec<_> = proxy
            .calls()
            .into_iter()
            .map(|(kind, result, n)| (vec![("kind", kind), ("result", result)], n))
            .collect();
        f.counter(
            "proxy_calls",
            "Calls to the backend's proxy endpoints, by kind and result (ok, rejected, timeout, unreachable, bad_response).",
            &calls,
        )?;
        f.histograms(
            "proxy_call_duration_seconds",
            "Duration of the backend's proxy calls, by kind.",
            proxy.durations(),
        )?;

        // The process.
        f.gauge_f64(
            "uptime_seconds",
            "Seconds since the server started.",
            shared.started.elapsed().as_secs_f64(),
        )?;
        let process = crate::memory::process_stats();
        f.gauge(
            "process_resident_memory_bytes",
            "Resident memory of the process.",
            &one(i64::try_from(crate::memory::rss_bytes()).unwrap_or(i64::MAX)),
        )?;
        f.counter_f64(
            "process_cpu_seconds",
            "User and system CPU time of the process.",
            process.cpu_seconds,
        )?;
        f.gauge(
            "process_open_fds",
            "File descriptors the process has open.",
            &one(gauge_value(process.open_fds)),
        )?;
        f.gauge(
            "process_max_fds",
            "The process's open-files limit.",
            &one(i64::try_from(process.max_fds).unwrap_or(i64::MAX)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_with_labels_and_prefix() {
        #[derive(Debug)]
        struct Fixed;
        impl Collector for Fixed {
            fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
                let mut f = Families(encoder);
                f.counter(
                    "messages_received",
                    "help",
                    &[(vec![("protocol", "raw")], 3)],
                )?;
                f.gauge("connections", "help", &one(2))
            }
        }
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(Fixed));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("switchboard_messages_received_total{protocol=\"raw\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE switchboard_connections gauge\n"),
            "{out}"
        );
        assert!(out.contains("switchboard_connections 2\n"), "{out}");
    }
}
