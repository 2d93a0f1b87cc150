//! Stalled sagas are visible, never silent. A saga that has not reached a terminal status and
//! has not changed for `STALL_AFTER_SECONDS` is *stalled*: `GET /api/enrollments/{id}` says so,
//! `GET /api/enrollments/stalled` lists them with the service the saga waits for, and a sweeper
//! logs each one once (again if it stalls again after moving). Nothing is cancelled: the saga
//! finishes normally when the service it waits for comes back.

use crate::saga::Status;
use serde::Serialize;
use sqlx::AnyPool;
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

/// A saga that has not moved for the stall deadline.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StalledSaga {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(value_type = Status)]
    pub status: String,
    /// When it last moved (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The service and message it waits for.
    #[schema(value_type = String, example = "transaction-api to handle PostBonusPoints")]
    pub waiting_for: &'static str,
}

/// An open saga as read from the database.
#[derive(sqlx::FromRow)]
struct OpenRow {
    id: String,
    status: String,
    updated_at: String,
}

fn waiting_for(status: &str) -> &'static str {
    OPEN.iter()
        .find(|(s, _)| s.name() == status)
        .map(|(_, who)| *who)
        .unwrap_or("nothing")
}

/// How many open sagas have not moved since `cutoff`.
pub async fn count(pool: &AnyPool, cutoff: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM enrollments WHERE {OPEN_SQL} AND updated_at < $1"
    ))
    .bind(cutoff)
    .fetch_one(pool)
    .await
}

pub async fn list(pool: &AnyPool, cutoff: &str) -> Result<Vec<StalledSaga>, sqlx::Error> {
    let rows: Vec<OpenRow> = sqlx::query_as(&format!(
        "SELECT id, status, updated_at FROM enrollments WHERE {OPEN_SQL} AND updated_at < $1
         ORDER BY updated_at, id LIMIT $2"
    ))
    .bind(cutoff)
    .bind(LIST_LIMIT)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| StalledSaga {
            waiting_for: waiting_for(&row.status),
            id: row.id,
            status: row.status,
            updated_at: row.updated_at,
        })
        .collect())
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
        let cutoff = utility::storage::cutoff(self.after);
        let rows: Vec<OpenRow> = sqlx::query_as(&format!(
            "SELECT id, status, updated_at FROM enrollments
             WHERE {OPEN_SQL} AND updated_at < $1 AND stall_reported_at IS NULL
             ORDER BY updated_at LIMIT $2"
        ))
        .bind(&cutoff)
        .bind(LIST_LIMIT)
        .fetch_all(&self.pool)
        .await?;
        let now = utility::storage::now();
        for row in rows {
            tracing::warn!(
                enrollment_id = %row.id,
                status = %row.status,
                since = %row.updated_at,
                waiting_for = waiting_for(&row.status),
                "saga stalled"
            );
            // Only if it has not moved meanwhile; a saga that moved is no longer stalled.
            sqlx::query("UPDATE enrollments SET stall_reported_at = $1 WHERE id = $2 AND updated_at = $3")
                .bind(&now)
                .bind(&row.id)
                .bind(&row.updated_at)
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
        use strum::VariantArray;
        for status in Status::VARIANTS.iter().filter(|s| !s.is_terminal()) {
            assert_ne!(waiting_for(status.name()), "nothing");
            assert!(OPEN_SQL.contains(&format!("'{}'", status.name())));
        }
        assert_eq!(OPEN.len(), Status::VARIANTS.iter().filter(|s| !s.is_terminal()).count());
    }
}
