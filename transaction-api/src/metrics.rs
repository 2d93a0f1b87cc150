//! The campaign's own figures, beside the ones every service has ([`utility::observe::metrics`]),
//! read from the `campaigns` table at each scrape and each `gauges` line:
//!
//! | metric | what |
//! |---|---|
//! | `saga_bonus_points_granted` | points the campaign has granted so far (reversals give them back) |
//! | `saga_bonus_budget_remaining_points` | what is left of `BONUS_BUDGET_POINTS` (absent without a budget) |
//!
//! Scripted enrollments drain the budget; the remaining points falling fast (the EC2 stack alarms
//! below `BonusBudgetAlarmPoints`) is how that is seen before real enrollments start rolling back.

use crate::ledger::{CAMPAIGN_ID, Campaign};
use prometheus_client::metrics::gauge::Gauge;
use sqlx::AnyPool;
use std::sync::Arc;
use utility::observe::metrics::{BONUS_BUDGET_REMAINING, BONUS_POINTS_GRANTED, Metrics};

/// Registers the campaign gauges in `metrics`, read from `pool`.
pub fn register(metrics: &Metrics, pool: AnyPool, campaign: Campaign) {
    let granted: Gauge = Gauge::default();
    let remaining: Gauge = Gauge::default();
    metrics.register(
        "bonus_points_granted",
        "Points the enrollment bonus campaign has granted so far",
        granted.clone(),
    );
    if campaign.budget().is_some() {
        metrics.register(
            "bonus_budget_remaining_points",
            "Points left in the campaign's budget",
            remaining.clone(),
        );
    }
    metrics.add_source(Arc::new(move || {
        let (pool, granted, remaining) = (pool.clone(), granted.clone(), remaining.clone());
        Box::pin(async move {
            let read = sqlx::query_scalar::<_, i64>("SELECT granted_points FROM campaigns WHERE id = $1")
                .bind(CAMPAIGN_ID)
                .fetch_one(&pool)
                .await;
            match read {
                Ok(points) => {
                    granted.set(points);
                    let mut figures = vec![(BONUS_POINTS_GRANTED, points as f64)];
                    if let Some(budget) = campaign.budget() {
                        // Never below zero: a budget lowered under what was already granted is
                        // empty, and the alarm must see it so (its filter drops negative values).
                        let left = (budget - points).max(0);
                        remaining.set(left);
                        figures.push((BONUS_BUDGET_REMAINING, left as f64));
                    }
                    figures
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the campaign gauges");
                    Vec::new()
                }
            }
        })
    }));
}
