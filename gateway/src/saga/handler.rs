//! The saga's message handler: applies each event from the gateway's queue through
//! [`super::route`] to the read model, inside the consumer's transaction.

use super::{Status, route};
use crate::store::record_history;
use sqlx::AnyConnection;
use utility::messaging::consumer::{Handler, HandlerError};
use utility::messaging::envelope::Envelope;
use utility::messaging::outbox;

/// The row the handler reads before it decides.
#[derive(sqlx::FromRow)]
struct SagaRow {
    status: String,
    stall_reported_at: Option<String>,
    created_at: String,
}

/// Applies saga events from the gateway's queue through [`route`].
pub struct SagaHandler {
    pub metrics: crate::metrics::SagaMetrics,
}

impl Handler for SagaHandler {
    async fn handle(&self, tx: &mut AnyConnection, envelope: &Envelope) -> Result<(), HandlerError> {
        let id = envelope.correlation_id;
        let row: SagaRow =
            sqlx::query_as("SELECT status, stall_reported_at, created_at FROM enrollments WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| HandlerError::Refused(format!("no enrollment {id} for `{}`", envelope.type_name())))?;
        let current: Status = row
            .status
            .parse()
            .map_err(|_| HandlerError::Refused(format!("enrollment {id} has unknown status `{}`", row.status)))?;
        let Some(step) = route(current, &envelope.message) else {
            tracing::warn!(status = %current, "event does not apply to the saga in its current status; ignored");
            return Ok(());
        };
        let now = utility::storage::now();
        if step.next == current {
            // A late event: recorded, its command sent, but the saga, its clock and its stall
            // report stay as they are.
            tracing::warn!(status = %current, "late event recorded; the saga does not move");
        } else {
            // Conditional on the status read above: if another instance moved the saga meanwhile,
            // retry against the new status instead of overwriting it.
            let moved = sqlx::query(
                "UPDATE enrollments SET status = $1, customer_id = COALESCE($2, customer_id),
                     bonus_points = COALESCE($3, bonus_points), reason = COALESCE($4, reason),
                     public_reason = COALESCE($5, public_reason), updated_at = $6, stall_reported_at = NULL
                 WHERE id = $7 AND status = $8",
            )
            .bind(step.next.name())
            .bind(step.customer_id.map(|c| c.to_string()))
            .bind(step.bonus_points)
            .bind(step.reason.as_deref())
            .bind(step.public_reason)
            .bind(&now)
            .bind(id.to_string())
            .bind(current.name())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved == 0 {
                return Err(HandlerError::Conflict(format!(
                    "enrollment {id} changed while this event was applied"
                )));
            }
            if row.stall_reported_at.is_some() {
                tracing::info!(status = %current, "stalled saga is moving again");
            }
            tracing::info!(from = %current, to = %step.next, "saga advanced");
            if step.next.is_terminal() {
                // Once per saga: the conditional update above moves it to a terminal status once.
                let duration = chrono::DateTime::parse_from_rfc3339(&row.created_at)
                    .ok()
                    .and_then(|at| (chrono::Utc::now() - at.with_timezone(&chrono::Utc)).to_std().ok())
                    .unwrap_or_default();
                self.metrics.finished(step.next, duration);
                tracing::info!(
                    outcome = %step.next,
                    duration_ms = duration.as_millis() as u64,
                    enrollment_id = %id,
                    "saga finished"
                );
            }
        }
        record_history(tx, id, step.next, envelope.type_name(), &now).await?;
        if let Some((destination, command)) = step.command {
            outbox::enqueue(tx, destination, &envelope.caused(command)).await?;
        }
        Ok(())
    }
}
