//! Prometheus metrics of one service, in the text exposition format at `/metrics`.
//!
//! Each service owns a [`Metrics`] (its own registry, not a process-wide one: the tests run the
//! three services in one process). Counters and histograms move where the work happens (the
//! consumer, the relay, the HTTP layer); gauges that describe the database (outbox backlog, pool
//! use, the gateway's sagas) are read when scraped, and every minute for the `gauges` log line
//! that CloudWatch turns into metrics on EC2.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `saga_messages_total` | `queue`, `type`, `outcome` | every received message by outcome: `received`, `handled`, `duplicate`, `failed` (refused or malformed), `retried`, `dead_lettered` (failed on its last allowed receive) |
//! | `saga_handler_duration_seconds` | `queue`, `type` | time to handle one message, database transaction included |
//! | `saga_receive_batch_size` | `queue` | messages per non-empty receive |
//! | `saga_empty_receives_total` | `queue` | long polls that returned nothing |
//! | `saga_outbox_pending` | | outbox rows not yet published |
//! | `saga_outbox_oldest_pending_age_seconds` | | age of the oldest of them (0 when none) |
//! | `saga_relay_publish_duration_seconds` | `destination` | one batch publish call |
//! | `saga_relay_published_total` | `destination` | messages the bus accepted |
//! | `saga_http_requests_total` | `method`, `route`, `status` | HTTP requests by matched route |
//! | `saga_http_request_duration_seconds` | `method`, `route` | their latency |
//! | `saga_db_connections` | `pool`, `state` | connections in use and idle, per pool |
//! | `saga_bus_requests_total` | `operation` | SQS and SNS requests sent (each attempt: what AWS bills), e.g. `SQS.ReceiveMessage` |
//!
//! The gateway adds the saga read model's figures (`saga_sagas`, `saga_sagas_stalled`,
//! `saga_duration_seconds`) through [`Metrics::register`] and a [`GaugeSource`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub queue: String,
    pub r#type: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    pub queue: String,
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: &'static str,
    pub state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 1 ms to about 33 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn batch_sizes() -> Histogram {
    Histogram::new([1.0, 2.0, 3.0, 5.0, 8.0, 10.0])
}

/// Database figures read on demand (scrape, the minute's log line): `(name, value)` pairs for
/// the log line; setting the gauges is the source's own business.
pub type GaugeSource =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Vec<(&'static str, f64)>> + Send>> + Send + Sync>;

/// The metric families of one service. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    sources: Arc<Mutex<Vec<GaugeSource>>>,
    pub messages: Family<MessageLabels, Counter>,
    pub handler_duration: Histograms<HandlerLabels>,
    pub receive_batch_size: Histograms<QueueLabels>,
    pub empty_receives: Family<QueueLabels, Counter>,
    pub outbox_pending: Gauge,
    pub outbox_oldest_age: Gauge<f64, AtomicU64>,
    pub relay_publish_duration: Histograms<DestinationLabels>,
    pub relay_published: Family<DestinationLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Histograms<RouteLabels>,
    pub db_connections: Family<PoolLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let metrics = Self {
            registry: Arc::new(Mutex::new(Registry::with_prefix("saga"))),
            sources: Arc::default(),
            messages: Family::default(),
            handler_duration: Family::new_with_constructor(latency),
            receive_batch_size: Family::new_with_constructor(batch_sizes),
            empty_receives: Family::default(),
            outbox_pending: Gauge::default(),
            outbox_oldest_age: Gauge::default(),
            relay_publish_duration: Family::new_with_constructor(latency),
            relay_published: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency),
            db_connections: Family::default(),
        };
        metrics.register(
            "messages",
            "Received messages by queue, type and outcome",
            metrics.messages.clone(),
        );
        metrics.register(
            "handler_duration_seconds",
            "Time to handle one message, its database transaction included",
            metrics.handler_duration.clone(),
        );
        metrics.register(
            "receive_batch_size",
            "Messages per non-empty receive",
            metrics.receive_batch_size.clone(),
        );
        metrics.register(
            "empty_receives",
            "Long polls that returned no message",
            metrics.empty_receives.clone(),
        );
        metrics.register(
            "outbox_pending",
            "Outbox rows not yet published",
            metrics.outbox_pending.clone(),
        );
        metrics.register(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none)",
            metrics.outbox_oldest_age.clone(),
        );
        metrics.register(
            "relay_publish_duration_seconds",
            "Time of one batch publish to the bus",
            metrics.relay_publish_duration.clone(),
        );
        metrics.register(
            "relay_published",
            "Messages the bus accepted from the outbox",
            metrics.relay_published.clone(),
        );
        metrics.register(
            "http_requests",
            "HTTP requests by method, matched route and status",
            metrics.http_requests.clone(),
        );
        metrics.register(
            "http_request_duration_seconds",
            "HTTP request latency by method and matched route",
            metrics.http_duration.clone(),
        );
        metrics.register(
            "db_connections",
            "Database connections by pool and state",
            metrics.db_connections.clone(),
        );
        metrics
    }

    /// Adds a metric of the service's own to the registry (`saga_` is prefixed to `name`).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register(name, help, metric);
        }
    }

    /// Adds figures to read before each scrape and each minute's `gauges` line.
    pub fn add_source(&self, source: GaugeSource) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.push(source);
        }
    }

    /// Counts one message outcome.
    pub fn message(&self, queue: &str, kind: &str, outcome: &'static str) {
        self.messages
            .get_or_create(&MessageLabels {
                queue: queue.to_owned(),
                r#type: kind.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Reads every gauge source; returns the figures for the log line.
    pub async fn refresh(&self) -> Vec<(&'static str, f64)> {
        let sources: Vec<GaugeSource> = self.sources.lock().map(|s| s.clone()).unwrap_or_default();
        let mut figures = Vec::new();
        for source in sources {
            figures.extend(source().await);
        }
        figures
    }

    /// The registry in the Prometheus text format (gauges as last refreshed).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        }
        text
    }

    /// Every minute until `stop`: refresh the gauges and log them as one `gauges` line (what
    /// the EC2 deployment's metric filters read).
    pub async fn log_gauges(self, service: &'static str, every: Duration, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let figures = self.refresh().await;
            let figure = |name: &str| figures.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
            tracing::info!(
                service,
                outbox_pending = figure(OUTBOX_PENDING).map(|v| v as i64),
                outbox_oldest_age_seconds = figure(OUTBOX_OLDEST_AGE),
                stalled_sagas = figure(STALLED_SAGAS).map(|v| v as i64),
                bonus_points_granted = figure(BONUS_POINTS_GRANTED).map(|v| v as i64),
                bonus_budget_remaining_points = figure(BONUS_BUDGET_REMAINING).map(|v| v as i64),
                "gauges"
            );
        }
    }
}

/// The names of the `gauges` line's figures (the EC2 metric filters read them).
pub const OUTBOX_PENDING: &str = "outbox_pending";
pub const OUTBOX_OLDEST_AGE: &str = "outbox_oldest_age_seconds";
pub const STALLED_SAGAS: &str = "stalled_sagas";
/// The transaction-api's: points granted, and what is left of the budget when there is one.
pub const BONUS_POINTS_GRANTED: &str = "bonus_points_granted";
pub const BONUS_BUDGET_REMAINING: &str = "bonus_budget_remaining_points";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_exposed_under_the_saga_prefix() {
        let metrics = Metrics::new();
        metrics.message("gateway-events", "CustomerEnrolled", "handled");
        metrics.outbox_pending.set(3);
        let text = metrics.encode();
        assert!(
            text.contains(r#"saga_messages_total{queue="gateway-events",type="CustomerEnrolled",outcome="handled"} 1"#),
            "{text}"
        );
        assert!(text.contains("saga_outbox_pending 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
