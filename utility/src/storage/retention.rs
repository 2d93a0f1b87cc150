//! Keeps the two bookkeeping tables from growing forever.
//!
//! - Sent outbox rows are kept `OUTBOX_RETENTION_HOURS` (default a week) for inspection, then
//!   deleted. Pending rows are never touched.
//! - Processed-message ids must outlive every possible redelivery of their message: SQS keeps a
//!   message at most 4 days in a work queue and 14 days in a DLQ, from where an operator may redrive
//!   it. They are kept `PROCESSED_RETENTION_DAYS` (default 30, never less than 15).

use sqlx::AnyPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Shortest processed-id retention that still covers a redrive from a 14-day DLQ.
pub const MIN_PROCESSED_RETENTION_DAYS: u64 = 15;
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Rows per DELETE statement.
const DELETE_BATCH: i64 = 500;

pub struct RetentionSweeper {
    pool: AnyPool,
    outbox_keep: Duration,
    processed_keep: Duration,
}

impl RetentionSweeper {
    pub fn new(pool: AnyPool, outbox_retention_hours: u64, processed_retention_days: u64) -> Self {
        let days = processed_retention_days.max(MIN_PROCESSED_RETENTION_DAYS);
        Self {
            pool,
            outbox_keep: Duration::from_secs(outbox_retention_hours.saturating_mul(3600)),
            processed_keep: Duration::from_secs(days.saturating_mul(86_400)),
        }
    }

    /// Deletes what is past its retention, a bounded batch per statement so the sweep never holds
    /// the database for long; returns (outbox rows, processed ids) deleted.
    pub async fn sweep(&self) -> Result<(u64, u64), sqlx::Error> {
        let outbox = self
            .delete_in_batches(
                "DELETE FROM outbox WHERE id IN
                 (SELECT id FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1 LIMIT $2)",
                super::cutoff(self.outbox_keep),
            )
            .await?;
        let processed = self
            .delete_in_batches(
                "DELETE FROM processed_messages WHERE message_id IN
                 (SELECT message_id FROM processed_messages WHERE processed_at < $1 LIMIT $2)",
                super::cutoff(self.processed_keep),
            )
            .await?;
        Ok((outbox, processed))
    }

    async fn delete_in_batches(&self, sql: &str, cutoff: String) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        loop {
            let deleted = sqlx::query(sql)
                .bind(&cutoff)
                .bind(DELETE_BATCH)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += deleted;
            if deleted < DELETE_BATCH as u64 {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        loop {
            match self.sweep().await {
                Ok((0, 0)) => {}
                Ok((outbox, processed)) => tracing::info!(outbox, processed, "old bookkeeping rows deleted"),
                Err(err) => tracing::warn!(error = %err, "retention sweep failed; will try again"),
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(SWEEP_EVERY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_old_sent_rows_and_old_ids_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}/r.db", dir.path().display());
        let pool = crate::storage::connect(&url, sqlx::migrate::Migrator::DEFAULT)
            .await
            .unwrap();
        let old = crate::storage::timestamp(chrono::Utc::now() - chrono::Duration::days(400));
        let new = crate::storage::now();
        for (id, sent_at) in [
            ("old-sent", Some(&old)),
            ("new-sent", Some(&new)),
            ("old-pending", None),
        ] {
            sqlx::query(
                "INSERT INTO outbox (id, destination, message_type, correlation_id, body, created_at, sent_at)
                 VALUES ($1, 'customer-events', 'T', 'c', '{}', $2, $3)",
            )
            .bind(id)
            .bind(&old)
            .bind(sent_at)
            .execute(&pool)
            .await
            .unwrap();
        }
        for (id, at) in [("old-id", &old), ("new-id", &new)] {
            sqlx::query("INSERT INTO processed_messages (message_id, message_type, correlation_id, processed_at) VALUES ($1, 'T', 'c', $2)")
                .bind(id)
                .bind(at)
                .execute(&pool)
                .await
                .unwrap();
        }
        // A too-short processed retention is raised to the minimum (15 days keeps "new-id").
        let sweeper = RetentionSweeper::new(pool.clone(), 24, 1);
        assert_eq!(sweeper.sweep().await.unwrap(), (1, 1));
        let left: Vec<String> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(left, ["new-sent", "old-pending"]);
        let ids: Vec<String> = sqlx::query_scalar("SELECT message_id FROM processed_messages")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(ids, ["new-id"]);
    }
}
