//! The gateway's database: enrollments (the saga read model), their history, and the saga event
//! handler that advances them.

use crate::saga::{self, Status};
use serde::Serialize;
use sqlx::{AnyConnection, AnyPool, Row};
use utility::consumer::{Handler, HandlerError};
use utility::domain::{CustomerName, Email};
use utility::envelope::Envelope;
use utility::message::{Enroll, Message};
use utility::outbox;
use utility::topology::Endpoint;
use uuid::Uuid;

#[derive(Debug, Serialize)]
pub struct HistoryEntry {
    pub status: String,
    pub at: String,
    /// What produced the entry: `EnrollmentAccepted` or the event's type.
    pub event: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EnrollmentView {
    pub id: String,
    pub status: String,
    pub customer_id: Option<String>,
    pub bonus_points: Option<i64>,
    pub reason: Option<String>,
    /// Not terminal and unchanged for longer than the stall deadline.
    pub stalled: bool,
    pub history: Vec<HistoryEntry>,
}

/// An enrollment found by its idempotency key.
pub struct Existing {
    pub id: Uuid,
    pub status: String,
    pub fingerprint: String,
}

pub struct NewEnrollment<'a> {
    pub id: Uuid,
    pub name: &'a CustomerName,
    pub email: &'a Email,
    pub idempotency_key: Option<&'a str>,
    pub fingerprint: &'a str,
    pub traceparent: String,
}

/// Stores the enrollment, its first history entry and the `Enroll` command in one transaction,
/// so an accepted enrollment is never lost even if the bus is down when it is accepted.
pub async fn accept(pool: &AnyPool, new: &NewEnrollment<'_>) -> Result<(), sqlx::Error> {
    let now = utility::now();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO enrollments (id, name, email, status, idempotency_key, request_fingerprint, created_at, updated_at)
         VALUES ($1, $2, $3, 'pending', $4, $5, $6, $6)",
    )
    .bind(new.id.to_string())
    .bind(new.name.as_str())
    .bind(new.email.as_str())
    .bind(new.idempotency_key)
    .bind(new.fingerprint)
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    record_history(&mut tx, new.id, Status::Pending, "EnrollmentAccepted", &now).await?;
    let command = Envelope::new(
        Message::Enroll(Enroll {
            name: new.name.clone(),
            email: new.email.clone(),
        }),
        new.id,
    )
    .with_traceparent(Some(new.traceparent.clone()));
    outbox::enqueue(&mut tx, Endpoint::CustomerCommands, &command).await?;
    tx.commit().await
}

pub async fn find_by_key(pool: &AnyPool, key: &str) -> Result<Option<Existing>, sqlx::Error> {
    let Some(row) = sqlx::query("SELECT id, status, request_fingerprint FROM enrollments WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let id: String = row.try_get("id")?;
    Ok(Some(Existing {
        id: Uuid::parse_str(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        status: row.try_get("status")?,
        fingerprint: row.try_get("request_fingerprint")?,
    }))
}

/// The enrollment as clients see it; `stall_cutoff` is the oldest `updated_at` that is not stalled.
pub async fn view(pool: &AnyPool, id: Uuid, stall_cutoff: &str) -> Result<Option<EnrollmentView>, sqlx::Error> {
    let Some(row) =
        sqlx::query("SELECT id, status, customer_id, bonus_points, reason, updated_at FROM enrollments WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(pool)
            .await?
    else {
        return Ok(None);
    };
    let history =
        sqlx::query("SELECT status, at, event FROM enrollment_history WHERE enrollment_id = $1 ORDER BY at, id")
            .bind(id.to_string())
            .fetch_all(pool)
            .await?
            .iter()
            .map(|h| {
                Ok(HistoryEntry {
                    status: h.try_get("status")?,
                    at: h.try_get("at")?,
                    event: h.try_get("event")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let status: String = row.try_get("status")?;
    let updated_at: String = row.try_get("updated_at")?;
    Ok(Some(EnrollmentView {
        id: row.try_get("id")?,
        stalled: is_open(&status) && updated_at.as_str() < stall_cutoff,
        status,
        customer_id: row.try_get("customer_id")?,
        bonus_points: row.try_get("bonus_points")?,
        reason: row.try_get("reason")?,
        history,
    }))
}

fn is_open(status: &str) -> bool {
    Status::parse(status).is_some_and(|s| !s.is_terminal())
}

async fn record_history(
    tx: &mut AnyConnection,
    id: Uuid,
    status: Status,
    event: &str,
    at: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO enrollment_history (id, enrollment_id, status, event, at) VALUES ($1, $2, $3, $4, $5)")
        .bind(Uuid::now_v7().to_string())
        .bind(id.to_string())
        .bind(status.as_str())
        .bind(event)
        .bind(at)
        .execute(tx)
        .await?;
    Ok(())
}

/// Applies saga events from the gateway's queue through [`saga::route`].
pub struct SagaHandler;

impl Handler for SagaHandler {
    async fn handle(&self, tx: &mut AnyConnection, envelope: &Envelope) -> Result<(), HandlerError> {
        let id = envelope.correlation_id;
        let row = sqlx::query("SELECT status, stall_reported_at FROM enrollments WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| HandlerError::Refused(format!("no enrollment {id} for `{}`", envelope.type_name())))?;
        let current: String = row.try_get("status")?;
        let current = Status::parse(&current)
            .ok_or_else(|| HandlerError::Refused(format!("enrollment {id} has unknown status `{current}`")))?;
        let Some(step) = saga::route(current, &envelope.message) else {
            tracing::warn!(status = %current, "event does not apply to the saga in its current status; ignored");
            return Ok(());
        };
        let now = utility::now();
        if step.next == current {
            // A late event: recorded, its command sent, but the saga, its clock and its stall
            // report stay as they are.
            tracing::warn!(status = %current, "late event recorded; the saga does not move");
        } else {
            // Conditional on the status read above: if another instance moved the saga meanwhile,
            // retry against the new status instead of overwriting it.
            let moved = sqlx::query(
                "UPDATE enrollments SET status = $1, customer_id = COALESCE($2, customer_id),
                     bonus_points = COALESCE($3, bonus_points), reason = COALESCE($4, reason), updated_at = $5,
                     stall_reported_at = NULL
                 WHERE id = $6 AND status = $7",
            )
            .bind(step.next.as_str())
            .bind(step.customer_id.map(|c| c.to_string()))
            .bind(step.bonus_points)
            .bind(step.reason.as_deref())
            .bind(&now)
            .bind(id.to_string())
            .bind(current.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved == 0 {
                return Err(HandlerError::Conflict(format!(
                    "enrollment {id} changed while this event was applied"
                )));
            }
            let was_stalled: Option<String> = row.try_get("stall_reported_at")?;
            if was_stalled.is_some() {
                tracing::info!(status = %current, "stalled saga is moving again");
            }
            tracing::info!(from = %current, to = %step.next, "saga advanced");
        }
        record_history(tx, id, step.next, envelope.type_name(), &now).await?;
        if let Some((destination, command)) = step.command {
            outbox::enqueue(tx, destination, &envelope.caused(command)).await?;
        }
        Ok(())
    }
}
