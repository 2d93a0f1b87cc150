//! The SQS consumer loop: receive a batch, handle each message in its own database transaction,
//! delete what committed. The shape every service shares:
//!
//! 1. Parse the body into an [`Envelope`]. A body that does not parse is logged with its reason
//!    and made visible again at once; after `maxReceiveCount` receives the queue's redrive policy
//!    moves it to the dead-letter queue. The service keeps serving.
//! 2. In one transaction: record the envelope's `message_id` in `processed_messages` (a conflict
//!    means the effect is already committed: a redelivery, so nothing more is done), apply the
//!    handler, which writes state and outbox rows on the same transaction, then commit.
//! 3. Delete the message only after its transaction committed. Transient failures (database) leave
//!    the message to come back after a growing visibility timeout; refusals (a message this service
//!    cannot act on) go the dead-letter way like malformed ones.

use crate::bus::{Bus, BusError, Received, queue_name};
use crate::envelope::Envelope;
use crate::service::Backoff;
use sqlx::{AnyConnection, AnyPool};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What a service does with one message, inside the transaction the consumer opened.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        tx: &mut AnyConnection,
        envelope: &Envelope,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The message is well-formed but this service cannot act on it (wrong queue, unknown
    /// entity). Retrying will not help: it goes to the dead-letter queue for a person to look at.
    #[error("refused: {0}")]
    Refused(String),
    /// The database failed; the message is retried after a delay.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// What happened to one batch; tests drive [`Consumer::poll_once`] and read this.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub received: usize,
    pub handled: usize,
    pub duplicates: usize,
    /// Malformed or refused: left for the dead-letter queue.
    pub rejected: usize,
    /// Transient failure: left to be received again.
    pub retried: usize,
}

enum Outcome {
    Handled,
    Duplicate,
    Rejected,
    Retry,
}

pub struct Consumer<H> {
    queue_url: String,
    bus: Bus,
    pool: AnyPool,
    handler: H,
    outbox_signal: Arc<Notify>,
    wait_seconds: i32,
}

impl<H: Handler> Consumer<H> {
    pub fn new(
        queue_url: String,
        bus: Bus,
        pool: AnyPool,
        handler: H,
        outbox_signal: Arc<Notify>,
        wait_seconds: i32,
    ) -> Self {
        Self {
            queue_url,
            bus,
            pool,
            handler,
            outbox_signal,
            wait_seconds,
        }
    }

    /// Polls until `stop` is cancelled. A receive in flight when `stop` fires is abandoned (any
    /// messages it was about to return reappear after their visibility timeout); a batch already
    /// received is finished and deleted before returning.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        tracing::info!(queue = queue_name(&self.queue_url), "consumer started");
        while !stop.is_cancelled() {
            let received = tokio::select! {
                () = stop.cancelled() => break,
                received = self.bus.receive(&self.queue_url, self.wait_seconds) => received,
            };
            let result = match received {
                Ok(messages) => self.process_batch(messages).await,
                Err(err) => Err(err),
            };
            match result {
                Ok(report) => {
                    backoff.reset();
                    if report.retried > 0 {
                        // Receiving more while the database is down would only spend receives
                        // toward the dead-letter queue: pause until it answers again.
                        self.wait_for_database(&stop).await;
                    }
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "consumer cannot reach the bus; will retry");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!(queue = queue_name(&self.queue_url), "consumer stopped");
        Ok(())
    }

    /// Returns once the database answers (or `stop` fires), probing with back-off.
    async fn wait_for_database(&self, stop: &CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            let probe = tokio::time::timeout(Duration::from_secs(3), sqlx::query("SELECT 1").execute(&self.pool)).await;
            if matches!(probe, Ok(Ok(_))) {
                return;
            }
            let delay = backoff.next_delay();
            tracing::warn!(
                retry_in_ms = delay.as_millis() as u64,
                "database unreachable; consumer paused"
            );
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One receive and the handling of what it returned.
    pub async fn poll_once(&self) -> Result<BatchReport, BusError> {
        let messages = self.bus.receive(&self.queue_url, self.wait_seconds).await?;
        self.process_batch(messages).await
    }

    async fn process_batch(&self, messages: Vec<Received>) -> Result<BatchReport, BusError> {
        let mut report = BatchReport {
            received: messages.len(),
            ..BatchReport::default()
        };
        if messages.is_empty() {
            return Ok(report);
        }
        let mut delete = Vec::new();
        let mut visibility = Vec::new();
        for message in &messages {
            if report.retried > 0 {
                // The database just failed: give the rest back untried rather than wait out
                // the pool's acquire timeout once per message.
                report.retried += 1;
                visibility.push((
                    message.receipt_handle.as_str(),
                    retry_delay_seconds(message.receive_count),
                ));
                continue;
            }
            match self.process(message).await {
                Outcome::Handled => {
                    report.handled += 1;
                    delete.push(message.receipt_handle.as_str());
                }
                Outcome::Duplicate => {
                    report.duplicates += 1;
                    delete.push(message.receipt_handle.as_str());
                }
                Outcome::Rejected => {
                    report.rejected += 1;
                    // Visible again at once: the redrive policy counts receives, not time.
                    visibility.push((message.receipt_handle.as_str(), 0));
                }
                Outcome::Retry => {
                    report.retried += 1;
                    visibility.push((
                        message.receipt_handle.as_str(),
                        retry_delay_seconds(message.receive_count),
                    ));
                }
            }
        }
        if report.handled > 0 {
            self.outbox_signal.notify_one();
        }
        if !delete.is_empty() {
            self.bus.delete_batch(&self.queue_url, &delete).await?;
        }
        if !visibility.is_empty() {
            // Best effort: if this fails the messages simply come back after the queue's timeout.
            if let Err(err) = self.bus.change_visibility_batch(&self.queue_url, &visibility).await {
                tracing::warn!(error = %err, "could not reset visibility of failed messages");
            }
        }
        Ok(report)
    }

    async fn process(&self, message: &Received) -> Outcome {
        let span = tracing::info_span!(
            "message",
            messaging.system = "aws_sqs",
            messaging.destination = queue_name(&self.queue_url),
            messaging.message.id = %message.sqs_message_id,
            receive_count = message.receive_count,
            message_type = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
            message_id = tracing::field::Empty,
        );
        async {
            let envelope = match Envelope::parse(&message.body) {
                Ok(envelope) => envelope,
                Err(err) => {
                    tracing::warn!(reason = %err, body_bytes = message.body.len(), "malformed message left for the dead-letter queue");
                    return Outcome::Rejected;
                }
            };
            let span = tracing::Span::current();
            span.record("message_type", envelope.type_name());
            span.record("correlation_id", tracing::field::display(envelope.correlation_id));
            span.record("message_id", tracing::field::display(envelope.message_id));
            match self.apply(&envelope).await {
                Ok(true) => {
                    tracing::info!("message handled");
                    Outcome::Handled
                }
                Ok(false) => {
                    tracing::info!("duplicate delivery; effect already committed");
                    Outcome::Duplicate
                }
                Err(HandlerError::Refused(reason)) => {
                    tracing::warn!(%reason, "message refused; left for the dead-letter queue");
                    Outcome::Rejected
                }
                Err(HandlerError::Database(err)) => {
                    tracing::warn!(error = %err, "database error; message will be retried");
                    Outcome::Retry
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Returns `Ok(false)` when the message had already been handled.
    async fn apply(&self, envelope: &Envelope) -> Result<bool, HandlerError> {
        let mut tx = self.pool.begin().await?;
        let first = sqlx::query(
            "INSERT INTO processed_messages (message_id, message_type, correlation_id, processed_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(envelope.message_id.to_string())
        .bind(envelope.type_name())
        .bind(envelope.correlation_id.to_string())
        .bind(crate::now())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !first {
            tx.rollback().await?;
            return Ok(false);
        }
        self.handler.handle(&mut tx, envelope).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Visibility timeout after a transient failure: 2, 4, 8 ... seconds by receive count, at most 60.
fn retry_delay_seconds(receive_count: u32) -> i32 {
    2i32.saturating_pow(receive_count.clamp(1, 6)).min(60)
}

#[cfg(test)]
mod tests {
    use super::retry_delay_seconds;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay_seconds(1), 2);
        assert_eq!(retry_delay_seconds(3), 8);
        assert_eq!(retry_delay_seconds(50), 60);
    }
}
