//! Stalled sagas are visible, never silent. A saga that waits for a command to be handled and
//! has not changed for `STALL_AFTER_SECONDS` is *stalled*: `GET /api/enrollments/{view_key}` says so,
//! `GET /api/enrollments/stalled` lists them with the service the saga waits for, and a sweeper
//! logs each one once (again if it stalls again after moving). Nothing is cancelled: the saga
//! finishes normally when the service it waits for comes back.

use crate::saga::{Awaits, Status};
use crate::store;
use serde::Serialize;
use sqlx::AnyPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Listing size limit; the oldest come first.
const LIST_LIMIT: i64 = 500;

/// A saga that has not moved for the stall deadline.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StalledSaga {
    #[schema(format = Uuid)]
    pub id: String,
    pub status: Status,
    /// When it last moved (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The service and message it waits for.
    #[schema(example = "transaction-api to handle PostBonusPoints")]
    pub waiting_for: String,
}

/// Who an open saga waits for, in words: the receiver of the command its status waits for.
fn waiting_for(status: Status) -> String {
    match status.waiting_for() {
        Some(Awaits::Command(command)) => {
            let receivers: Vec<&str> = command.route().receivers.iter().map(|p| p.name()).collect();
            format!("{} to handle {command}", receivers.join(", "))
        }
        Some(Awaits::Person) => "the owner of the address to confirm it".to_owned(),
        None => "nothing".to_owned(),
    }
}

/// How many open sagas have not moved since `cutoff`.
pub async fn count(pool: &AnyPool, cutoff: &str) -> Result<i64, sqlx::Error> {
    store::count_stalled(pool, cutoff).await
}

pub async fn list(pool: &AnyPool, cutoff: &str) -> Result<Vec<StalledSaga>, sqlx::Error> {
    let sagas = store::stalled(pool, cutoff, false, LIST_LIMIT).await?;
    Ok(sagas
        .into_iter()
        .map(|saga| StalledSaga {
            waiting_for: waiting_for(saga.status),
            id: saga.id,
            status: saga.status,
            updated_at: saga.updated_at,
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

    /// Also hashes, once per start, the idempotency fingerprints written before they were
    /// hashed ([`store::hash_plain_fingerprints`]).
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut fingerprints_hashed = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.every()) => {}
            }
            if !fingerprints_hashed {
                match store::hash_plain_fingerprints(&self.pool).await {
                    Ok(n) => {
                        fingerprints_hashed = true;
                        if n > 0 {
                            tracing::info!(
                                enrollments = n,
                                "idempotency fingerprints hashed, names and addresses dropped"
                            );
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "hashing fingerprints failed; will try again"),
                }
            }
            if let Err(err) = self.sweep().await {
                tracing::warn!(error = %err, "stall sweep failed; will try again");
            }
        }
    }

    async fn sweep(&self) -> Result<(), sqlx::Error> {
        let cutoff = utility::storage::cutoff(self.after);
        let sagas = store::stalled(&self.pool, &cutoff, true, LIST_LIMIT).await?;
        let now = utility::storage::now();
        for saga in sagas {
            tracing::warn!(
                enrollment_id = %saga.id,
                status = %saga.status,
                since = %saga.updated_at,
                waiting_for = waiting_for(saga.status),
                "saga stalled"
            );
            // Only if it has not moved meanwhile; a saga that moved is no longer stalled.
            store::mark_stall_reported(&self.pool, &saga, &now).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_open_status_names_what_it_waits_for() {
        for status in Status::stallable() {
            assert!(waiting_for(status).ends_with(&format!("to handle {}", status.awaited_command().unwrap())));
        }
        // Waiting on a person is not a stall (the stall scan leaves it alone), but it is said.
        assert!(!Status::stallable().any(|s| s == Status::AwaitingConfirmation));
        assert_eq!(
            waiting_for(Status::AwaitingConfirmation),
            "the owner of the address to confirm it"
        );
        assert_eq!(
            waiting_for(Status::Enrolled),
            "transaction-api to handle PostBonusPoints"
        );
        assert_eq!(waiting_for(Status::Completed), "nothing");
    }
}
