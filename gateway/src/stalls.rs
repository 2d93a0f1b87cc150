//! Stalled sagas are visible, never silent. A saga that has not reached a terminal status and
//! has not changed for `STALL_AFTER_SECONDS` is *stalled*: `GET /api/enrollments/{id}` says so,
//! `GET /api/enrollments/stalled` lists them with the service the saga waits for, and a sweeper
//! logs each one once (again if it stalls again after moving). Nothing is cancelled: the saga
//! finishes normally when the service it waits for comes back.

use crate::saga::Status;
use serde::Serialize;
use sqlx::{AnyPool, Row};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Statuses a saga can stall in, with who it is waiting for.
const OPEN: [(Status, &str); 3] = [
    (Status::Pending, "customer-api to handle Enroll"),
    (Status::Enrolled, "transaction-api to handle PostBonusPoints"),
    (Status::Compensating, "customer-api to handle Unenroll"),
];

const OPEN_SQL: &str = "status IN ('pending', 'enrolled', 'compensating')";

/// Listing size limit; the oldest come first.
const LIST_LIMIT: i64 = 500;

#[derive(Debug, Serialize)]
pub struct StalledSaga {
    pub id: String,
    pub status: String,
    pub updated_at: String,
    pub waiting_for: &'static str,
}

fn waiting_for(status: &str) -> &'static str {
    OPEN.iter()
        .find(|(s, _)| s.as_str() == status)
        .map(|(_, who)| *who)
        .unwrap_or("nothing")
}

/// The stored-timestamp form of "now minus `after`": anything updated before it is stalled.
pub fn cutoff(after: Duration) -> String {
    let after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
    utility::timestamp(
        chrono::Utc::now()
            .checked_sub_signed(after)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC),
    )
}

pub async fn list(pool: &AnyPool, cutoff: &str) -> Result<Vec<StalledSaga>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT id, status, updated_at FROM enrollments WHERE {OPEN_SQL} AND updated_at < $1
         ORDER BY updated_at, id LIMIT $2"
    ))
    .bind(cutoff)
    .bind(LIST_LIMIT)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            Ok(StalledSaga {
                id: row.try_get("id")?,
                waiting_for: waiting_for(&status),
                status,
                updated_at: row.try_get("updated_at")?,
            })
        })
        .collect()
}

/// Logs newly stalled sagas, once each.
pub struct StallWatch {
    pool: AnyPool,
    after: Duration,
}

impl StallWatch {
    pub fn new(pool: AnyPool, after: Duration) -> Self {
        Self { pool, after }
    }

    /// How often the sweeper looks: a quarter of the deadline, between 1 s and 30 s.
    fn every(&self) -> Duration {
        (self.after / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.every()) => {}
            }
            if let Err(err) = self.sweep().await {
                tracing::warn!(error = %err, "stall sweep failed; will try again");
            }
        }
    }

    async fn sweep(&self) -> Result<(), sqlx::Error> {
        let cutoff = cutoff(self.after);
        let rows = sqlx::query(&format!(
            "SELECT id, status, updated_at FROM enrollments
             WHERE {OPEN_SQL} AND updated_at < $1 AND stall_reported_at IS NULL
             ORDER BY updated_at LIMIT $2"
        ))
        .bind(&cutoff)
        .bind(LIST_LIMIT)
        .fetch_all(&self.pool)
        .await?;
        let now = utility::now();
        for row in rows {
            let id: String = row.try_get("id")?;
            let status: String = row.try_get("status")?;
            let updated_at: String = row.try_get("updated_at")?;
            tracing::warn!(
                enrollment_id = %id,
                %status,
                since = %updated_at,
                waiting_for = waiting_for(&status),
                "saga stalled"
            );
            // Only if it has not moved meanwhile; a saga that moved is no longer stalled.
            sqlx::query("UPDATE enrollments SET stall_reported_at = $1 WHERE id = $2 AND updated_at = $3")
                .bind(&now)
                .bind(&id)
                .bind(&updated_at)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_open_status_names_what_it_waits_for() {
        for status in [Status::Pending, Status::Enrolled, Status::Compensating] {
            assert!(!status.is_terminal());
            assert_ne!(waiting_for(status.as_str()), "nothing");
            assert!(OPEN_SQL.contains(&format!("'{}'", status.as_str())));
        }
    }

    #[test]
    fn cutoff_is_in_the_past_and_sortable() {
        let now = utility::now();
        let cut = cutoff(Duration::from_secs(60));
        assert!(cut < now, "{cut} !< {now}");
        assert_eq!(cut.len(), now.len());
    }
}
