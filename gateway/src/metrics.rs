//! The gateway's own metrics, beside the ones every service has ([`utility::observe::metrics`]):
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `saga_sagas` | `status` | enrollments by saga status (read from the read model when scraped) |
//! | `saga_sagas_stalled` | | open sagas unchanged for longer than `STALL_AFTER_SECONDS` |
//! | `saga_duration_seconds` | `outcome` | from acceptance to the terminal status, by outcome |
//! | `saga_webhook_attempts_total` | `result` | webhook attempts: `delivered` (2xx), `retry` (timeout, connection failure, any other status), `gone` (410), `refused` (an address or port callbacks may not reach: no request sent) |
//! | `saga_webhook_deliveries_total` | `outcome` | webhook deliveries that ended: `delivered`, `stopped` (410, the enrollment's others with it), `failed` (refused, or still failing 24 h on) |
//! | `saga_webhook_delivery_seconds` | | from the status change to its 2xx: the lag a receiver sees, retries included |
//! | `saga_webhook_attempt_seconds` | | one attempt's request, from connecting to the answer's status |
//! | `saga_webhook_deliveries_pending` | | deliveries not yet ended (read from the database when scraped) |

use crate::saga::Status;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use sqlx::AnyPool;
use std::sync::Arc;
use std::time::Duration;
use utility::observe::metrics::{Metrics, STALLED_SAGAS};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Saga durations from 10 ms to about 80 min.
fn saga_durations() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 20))
}

#[derive(Clone)]
pub struct SagaMetrics {
    sagas: Family<StatusLabels, Gauge>,
    stalled: Gauge,
    durations: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
}

impl SagaMetrics {
    /// Registers the saga metrics in `metrics`, with the read model as the gauges' source.
    pub fn register(metrics: &Metrics, pool: AnyPool, stall_after: Duration) -> Self {
        let saga = Self {
            sagas: Family::default(),
            stalled: Gauge::default(),
            durations: Family::new_with_constructor(saga_durations),
        };
        metrics.register("sagas", "Enrollments by saga status", saga.sagas.clone());
        metrics.register(
            "sagas_stalled",
            "Open sagas unchanged for longer than the stall deadline",
            saga.stalled.clone(),
        );
        metrics.register(
            "duration_seconds",
            "Time from acceptance to the terminal status, by outcome",
            saga.durations.clone(),
        );
        let source = saga.clone();
        metrics.add_source(Arc::new(move || {
            let (saga, pool) = (source.clone(), pool.clone());
            Box::pin(async move {
                match saga.refresh(&pool, stall_after).await {
                    Ok(stalled) => vec![(STALLED_SAGAS, stalled as f64)],
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot read the saga gauges");
                        Vec::new()
                    }
                }
            })
        }));
        saga
    }

    /// Reads the read model into the gauges; returns the stalled count.
    async fn refresh(&self, pool: &AnyPool, stall_after: Duration) -> Result<i64, sqlx::Error> {
        let counts = crate::store::count_by_status(pool).await?;
        for status in Status::all() {
            let count = counts
                .iter()
                .find(|(name, _)| name == status.name())
                .map_or(0, |(_, n)| *n);
            self.sagas
                .get_or_create(&StatusLabels { status: status.name() })
                .set(count);
        }
        let stalled = crate::stalls::count(pool, &utility::storage::cutoff(stall_after)).await?;
        self.stalled.set(stalled);
        Ok(stalled)
    }

    /// A saga reached `outcome` after `duration`.
    pub fn finished(&self, outcome: Status, duration: Duration) {
        self.durations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.name(),
            })
            .observe(duration.as_secs_f64());
    }
}

/// Webhook delivery lags from 10 ms to about 29 h (retries last up to 24 h).
fn delivery_lags() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 24))
}

/// Webhook request durations from 5 ms to about 20 s (the client gives up after 10 s).
fn attempt_durations() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// The webhooks' figures. [`Default`] counts into families no registry holds (a dispatcher
/// built without [`WebhookMetrics::register`]).
#[derive(Clone)]
pub struct WebhookMetrics {
    attempts: Family<ResultLabels, Counter>,
    deliveries: Family<OutcomeLabels, Counter>,
    delivery_seconds: Histogram,
    attempt_seconds: Histogram,
    pending: Gauge,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self {
            attempts: Family::default(),
            deliveries: Family::default(),
            delivery_seconds: delivery_lags(),
            attempt_seconds: attempt_durations(),
            pending: Gauge::default(),
        }
    }
}

impl WebhookMetrics {
    /// Registers the webhook metrics in `metrics`; the pending gauge is read from `pool` at each
    /// scrape (one count on the deliveries' `(state, next_attempt_at)` index).
    pub fn register(metrics: &Metrics, pool: AnyPool) -> Self {
        let webhooks = Self::default();
        metrics.register(
            "webhook_attempts",
            "Webhook attempts by result (delivered, retry, gone, refused)",
            webhooks.attempts.clone(),
        );
        metrics.register(
            "webhook_deliveries",
            "Webhook deliveries that ended, by outcome (delivered, stopped, failed)",
            webhooks.deliveries.clone(),
        );
        metrics.register(
            "webhook_delivery_seconds",
            "Time from a status change to its webhook's 2xx, retries included",
            webhooks.delivery_seconds.clone(),
        );
        metrics.register(
            "webhook_attempt_seconds",
            "Time of one webhook request, to the answer's status",
            webhooks.attempt_seconds.clone(),
        );
        metrics.register(
            "webhook_deliveries_pending",
            "Webhook deliveries not yet ended",
            webhooks.pending.clone(),
        );
        let pending = webhooks.pending.clone();
        metrics.add_source(Arc::new(move || {
            let (pending, pool) = (pending.clone(), pool.clone());
            Box::pin(async move {
                match crate::webhooks::view::pending(&pool).await {
                    Ok(count) => {
                        pending.set(count);
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot count the pending webhook deliveries"),
                }
                Vec::new()
            })
        }));
        webhooks
    }

    /// One attempt came to `result` (`delivered`, `retry`, `gone`, `refused`); `took` is its
    /// request's duration, `None` when no request was sent.
    pub fn attempted(&self, result: &'static str, took: Option<Duration>) {
        self.attempts.get_or_create(&ResultLabels { result }).inc();
        if let Some(took) = took {
            self.attempt_seconds.observe(took.as_secs_f64());
        }
    }

    /// `count` deliveries ended with `outcome` (`delivered`, `stopped`, `failed`).
    pub fn ended(&self, outcome: &'static str, count: u64) {
        if count > 0 {
            self.deliveries.get_or_create(&OutcomeLabels { outcome }).inc_by(count);
        }
    }

    /// A webhook reached its receiver `lag` after its status change.
    pub fn delivered_after(&self, lag: Duration) {
        self.delivery_seconds.observe(lag.as_secs_f64());
    }
}
