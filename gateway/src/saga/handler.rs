//! The saga's message handler: applies each event from the gateway's queue through
//! [`super::route`] to the read model ([`crate::store`]), inside the consumer's transaction.

use super::{check_customer, route};
use crate::store;
use sqlx::AnyConnection;
use utility::messaging::consumer::{AfterCommit, Handler, HandlerError};
use utility::messaging::envelope::Envelope;
use utility::messaging::outbox;

/// Applies saga events from the gateway's queue through [`route`].
pub struct SagaHandler {
    pub metrics: crate::metrics::SagaMetrics,
}

impl Handler for SagaHandler {
    async fn handle(&self, tx: &mut AnyConnection, envelope: &Envelope) -> Result<AfterCommit, HandlerError> {
        let id = envelope.correlation_id;
        let saga = store::saga(tx, id)
            .await?
            .ok_or_else(|| HandlerError::Refused(format!("no enrollment {id} for `{}`", envelope.type_name())))?;
        let customer = saga.customer_id.as_deref().and_then(|c| c.parse().ok());
        check_customer(customer, &envelope.message).map_err(HandlerError::Refused)?;
        let current = saga.status;
        let Some(step) = route(current, &envelope.message) else {
            tracing::warn!(status = %current, "event does not apply to the saga in its current status; ignored");
            return Ok(AfterCommit::nothing());
        };
        let now = utility::storage::now();
        let mut after = AfterCommit::nothing();
        if step.next == current {
            // A late event: recorded, its command sent, but the saga, its clock and its stall
            // report stay as they are.
            tracing::warn!(status = %current, "late event recorded; the saga does not move");
            store::record_history(tx, id, step.next, envelope.type_name(), &now).await?;
        } else {
            // Conditional on the status read above: if another instance moved the saga meanwhile,
            // retry against the new status instead of overwriting it.
            let Some(numbered) = store::advance(tx, id, current, &step, &now).await? else {
                return Err(HandlerError::Conflict(format!(
                    "enrollment {id} changed while this event was applied"
                )));
            };
            store::insert_history(tx, id, numbered, step.next, envelope.type_name(), &now).await?;
            tracing::debug!(from = %current, to = %step.next, "saga advanced");
            let moving_again = saga.stall_reported_at.is_some();
            let finished = step.next.is_terminal().then(|| {
                let duration = chrono::DateTime::parse_from_rfc3339(&saga.created_at)
                    .ok()
                    .and_then(|at| (chrono::Utc::now() - at.with_timezone(&chrono::Utc)).to_std().ok())
                    .unwrap_or_default();
                (step.next, duration)
            });
            // Logged and counted once the transaction has committed: once per saga, since the
            // conditional update above moves it to a terminal status once.
            let metrics = self.metrics.clone();
            after = AfterCommit::then(move || {
                if moving_again {
                    tracing::info!(status = %current, "stalled saga is moving again");
                }
                if let Some((outcome, duration)) = finished {
                    metrics.finished(outcome, duration);
                    tracing::info!(
                        %outcome,
                        duration_ms = duration.as_millis() as u64,
                        enrollment_id = %id,
                        "saga finished"
                    );
                }
            });
        }
        if let Some(command) = step.command {
            outbox::enqueue(tx, &envelope.caused(command)).await?;
        }
        Ok(after)
    }
}
