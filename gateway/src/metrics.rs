//! The gateway's own metrics, beside the ones every service has ([`utility::observe::metrics`]):
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `saga_sagas` | `status` | enrollments by saga status (read from the read model when scraped) |
//! | `saga_sagas_stalled` | | open sagas unchanged for longer than `STALL_AFTER_SECONDS` |
//! | `saga_duration_seconds` | `outcome` | from acceptance to the terminal status, by outcome |

use crate::saga::Status;
use prometheus_client::encoding::EncodeLabelSet;
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
