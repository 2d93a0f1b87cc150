//! The SQS consumer: receive a batch, handle it in one database transaction, delete what
//! committed. The shape every service shares:
//!
//! 1. Parse the body into an [`Envelope`]. A body that does not parse is logged with its reason
//!    and made visible again at once; after `maxReceiveCount` receives the queue's redrive policy
//!    moves it to the dead-letter queue. The service keeps serving.
//! 2. For each message, in a savepoint of the batch's one transaction: record the envelope's
//!    `message_id` in `processed_messages` (a conflict means the effect is already committed, or
//!    is earlier in this batch: a redelivery, so nothing more is done), apply the handler, which
//!    writes state and outbox rows on the same transaction. A message that fails is rolled back
//!    to its savepoint alone. Then one commit for the batch. If the batch's transaction cannot be
//!    carried through (a handler over its time limit, a failed commit), nothing of it committed,
//!    and its messages are handled again one transaction each.
//! 3. Delete the message only after its transaction committed. Transient failures (database) leave
//!    the message to come back after a growing visibility timeout, and the consumer stops
//!    receiving until the database answers again; refusals (a message this service cannot act on)
//!    go the dead-letter way like malformed ones.
//! 4. From its receive until it is handled, a heartbeat keeps a batch invisible.
//!
//! [`Consumer::run`] overlaps these steps ([`pipeline`]): the next batch is received while the
//! current one commits, and deletes are gathered across batches. [`Consumer::poll_once`] takes
//! them one after the other, for tests.
//!
//! Each message is handled in a `process <queue>` span whose parent is the span that published
//! it (the `traceparent` message attribute, else the envelope's), and counted in the service's
//! [`Metrics`] by outcome.

mod pipeline;

use super::bus::{Bus, BusError, QueueSettings, Received, queue_name};
use super::envelope::Envelope;
use crate::backoff::Backoff;
use crate::observe::context;
use crate::observe::metrics::{HandlerLabels, Metrics, QueueLabels};
use sqlx::{AnyConnection, AnyPool, Connection};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, OnceCell};
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
    /// The state changed under the handler (another instance got there first); retrying against
    /// the new state will decide.
    #[error("conflict: {0}")]
    Conflict(String),
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
    /// A transient conflict: try again later.
    Retry,
    /// The database failed: try again later, and pause receiving until it answers.
    DatabaseFailed,
}

pub struct Consumer<H> {
    queue_url: String,
    bus: Bus,
    pool: AnyPool,
    handler: H,
    outbox_signal: Arc<Notify>,
    wait_seconds: i32,
    handler_timeout: Duration,
    settings: OnceCell<QueueSettings>,
    metrics: Metrics,
}

/// Longest a handler may take unless [`Consumer::with_handler_timeout`] says otherwise.
const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(10);

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
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            settings: OnceCell::new(),
            metrics: Metrics::new(),
        }
    }

    /// Counts into `metrics` (the service's) instead of a registry of its own.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Bounds each message's handling (its transaction included). A handler that takes longer
    /// is abandoned, its transaction rolled back, and the message retried like after a database
    /// failure: a hung query cannot hold a message, kept invisible by the heartbeat, forever.
    pub fn with_handler_timeout(mut self, limit: Duration) -> Self {
        self.handler_timeout = limit;
        self
    }

    /// Returns when the database answers (`true`) or when `stop` fires (`false`).
    async fn wait_for_database(&self, stop: &CancellationToken) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let probe = tokio::time::timeout(Duration::from_secs(3), sqlx::query("SELECT 1").execute(&self.pool)).await;
            if matches!(probe, Ok(Ok(_))) {
                return true;
            }
            let delay = backoff.next_delay();
            tracing::warn!(
                retry_in_ms = delay.as_millis() as u64,
                "database unavailable; receiving paused"
            );
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One receive, the handling of what it returned and its delete, one step after the other:
    /// what tests drive to see a batch's outcome. [`Consumer::run`] overlaps these steps.
    pub async fn poll_once(&self) -> Result<BatchReport, BusError> {
        let messages = self.bus.receive(&self.queue_url, self.wait_seconds).await?;
        if messages.is_empty() {
            self.count_receive(0);
            return Ok(BatchReport::default());
        }
        let receipts: Vec<String> = messages.iter().map(|m| m.receipt_handle.clone()).collect();
        let timeout = self.settings().await.visibility_timeout;
        let settled = tokio::select! {
            settled = self.settle(&messages) => settled,
            never = keep_invisible(&self.bus, &self.queue_url, &receipts, timeout) => match never {},
        };
        if !settled.delete.is_empty() {
            let delete: Vec<&str> = settled.delete.iter().map(String::as_str).collect();
            self.bus.delete_batch(&self.queue_url, &delete).await?;
        }
        self.reset_visibility(&settled.visibility).await;
        Ok(settled.report)
    }

    /// Counts one receive of `messages` messages.
    fn count_receive(&self, messages: usize) {
        let queue = QueueLabels {
            queue: queue_name(&self.queue_url).to_owned(),
        };
        if messages == 0 {
            self.metrics.empty_receives.get_or_create(&queue).inc();
        } else {
            self.metrics
                .receive_batch_size
                .get_or_create(&queue)
                .observe(messages as f64);
        }
    }

    /// Handles a received batch (not empty) and says what is to become of each message: the
    /// receipts to delete (committed, or duplicates) and the visibility to give the others.
    /// Wakes the relay when something committed.
    async fn settle(&self, messages: &[Received]) -> Settled {
        self.count_receive(messages.len());
        let mut settled = Settled {
            report: BatchReport {
                received: messages.len(),
                ..BatchReport::default()
            },
            delete: Vec::new(),
            visibility: Vec::new(),
        };
        let outcomes = self.handle_batch(messages).await;
        let report = &mut settled.report;
        for (message, outcome) in messages.iter().zip(outcomes) {
            let receipt = message.receipt_handle.clone();
            match outcome {
                Outcome::Handled => {
                    report.handled += 1;
                    settled.delete.push(receipt);
                }
                Outcome::Duplicate => {
                    report.duplicates += 1;
                    settled.delete.push(receipt);
                }
                Outcome::Rejected => {
                    report.rejected += 1;
                    // Visible again at once: the redrive policy counts receives, not time.
                    settled.visibility.push((receipt, 0));
                }
                Outcome::Retry | Outcome::DatabaseFailed => {
                    report.retried += 1;
                    settled
                        .visibility
                        .push((receipt, retry_delay_seconds(message.receive_count)));
                }
            }
        }
        if report.handled > 0 {
            self.outbox_signal.notify_one();
        }
        settled
    }

    /// Best effort: if this fails the messages simply come back after the queue's timeout.
    async fn reset_visibility(&self, changes: &[(String, i32)]) {
        if changes.is_empty() {
            return;
        }
        let changes: Vec<(&str, i32)> = changes.iter().map(|(r, s)| (r.as_str(), *s)).collect();
        if let Err(err) = self.bus.change_visibility_batch(&self.queue_url, &changes).await {
            tracing::warn!(error = %err, "could not reset visibility of failed messages");
        }
    }

    /// The queue's visibility timeout and redrive limit, read once from SQS (the template is the
    /// truth).
    async fn settings(&self) -> QueueSettings {
        *self
            .settings
            .get_or_init(|| async {
                self.bus.queue_settings(&self.queue_url).await.unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "cannot read the queue's settings; assuming a 30 s visibility timeout");
                    QueueSettings {
                        visibility_timeout: 30,
                        max_receive_count: None,
                    }
                })
            })
            .await
    }

    /// Handles a received batch and returns each message's outcome, in order.
    ///
    /// The well-formed messages share one transaction, each inside a savepoint: a message the
    /// handler refuses or cannot apply is rolled back to its savepoint alone, and the others
    /// commit together (one commit, one fsync on SQLite, for the batch). When the batch's
    /// transaction itself fails (a handler over its time limit, a failed commit, a lost
    /// connection), nothing of it committed: the messages are handled again one transaction
    /// each, the one over its time limit excepted.
    async fn handle_batch(&self, messages: &[Received]) -> Vec<Outcome> {
        let queue = queue_name(&self.queue_url);
        let items: Vec<Item> = messages.iter().map(|message| Item::open(queue, message)).collect();
        for item in &items {
            self.metrics.message(queue, item.kind, "received");
        }
        let well_formed: Vec<usize> = (0..items.len()).filter(|&i| items[i].envelope.is_ok()).collect();
        let mut verdicts: Vec<Option<(Verdict, Duration)>> = vec![None; items.len()];
        match self.apply_batch(&items, &well_formed).await {
            Ok(applied) => {
                for (i, verdict) in applied {
                    verdicts[i] = Some(verdict);
                }
            }
            Err(broken) => {
                if let Some(item) = broken.culprit.and_then(|i| items.get(i)) {
                    item.span.in_scope(|| {
                        tracing::warn!(
                            limit_ms = self.handler_timeout.as_millis() as u64,
                            "handler exceeded its time limit; message will be retried"
                        )
                    });
                }
                tracing::warn!(
                    queue,
                    reason = broken.reason,
                    messages = well_formed.len(),
                    "batch transaction abandoned; handling its messages one transaction each"
                );
                for &i in &well_formed {
                    let verdict = if Some(i) == broken.culprit {
                        (Verdict::TimedOut, self.handler_timeout)
                    } else if verdicts
                        .iter()
                        .flatten()
                        .any(|(v, _)| matches!(v, Verdict::Database(_) | Verdict::TimedOut))
                    {
                        // Once the database has failed, hand the rest back untried instead of
                        // waiting out the pool's acquire timeout once per message.
                        (
                            Verdict::Database("not tried: the database failed".into()),
                            Duration::ZERO,
                        )
                    } else {
                        self.apply_alone(&items[i]).await
                    };
                    verdicts[i] = Some(verdict);
                }
            }
        }
        let max_receive_count = self.settings().await.max_receive_count;
        items
            .iter()
            .zip(verdicts)
            .map(|(item, verdict)| {
                let (verdict, took) = verdict.unwrap_or((Verdict::Malformed, Duration::ZERO));
                self.conclude(queue, item, verdict, took, max_receive_count)
            })
            .collect()
    }

    /// The well-formed messages in one transaction, a savepoint each. `Err` when the transaction
    /// could not be carried through; nothing of it committed then.
    async fn apply_batch(
        &self,
        items: &[Item<'_>],
        indexes: &[usize],
    ) -> Result<Vec<(usize, (Verdict, Duration))>, Broken> {
        if indexes.is_empty() {
            return Ok(Vec::new());
        }
        let broken = |reason, culprit| Broken { reason, culprit };
        let mut tx = match tokio::time::timeout(self.handler_timeout, self.pool.begin()).await {
            Ok(Ok(tx)) => tx,
            _ => return Err(broken("cannot begin", None)),
        };
        let mut applied = Vec::with_capacity(indexes.len());
        for &i in indexes {
            let item = &items[i];
            let Ok(envelope) = &item.envelope else { continue };
            let started = std::time::Instant::now();
            let step = tokio::time::timeout(self.handler_timeout, self.apply_in_savepoint(&mut tx, envelope))
                .instrument(item.span.clone())
                .await;
            match step {
                Ok(Ok(verdict)) => applied.push((i, (verdict, started.elapsed()))),
                Ok(Err(_)) => return Err(broken("savepoint lost", None)),
                Err(_) => return Err(broken("time limit", Some(i))),
            }
        }
        match tokio::time::timeout(self.handler_timeout, tx.commit()).await {
            Ok(Ok(())) => Ok(applied),
            _ => Err(broken("commit failed", None)),
        }
    }

    /// One message inside the batch's transaction. `Err` only when the savepoint itself could
    /// not be set or undone (the transaction is then unusable).
    async fn apply_in_savepoint(&self, tx: &mut AnyConnection, envelope: &Envelope) -> Result<Verdict, sqlx::Error> {
        let mut savepoint = tx.begin().await?;
        match self.record_and_apply(&mut savepoint, envelope).await {
            Ok(first) => {
                savepoint.commit().await?;
                Ok(if first { Verdict::Handled } else { Verdict::Duplicate })
            }
            Err(err) => {
                savepoint.rollback().await?;
                Ok(Verdict::from(err))
            }
        }
    }

    /// One message in a transaction of its own (when its batch's could not be carried through).
    async fn apply_alone(&self, item: &Item<'_>) -> (Verdict, Duration) {
        let Ok(envelope) = &item.envelope else {
            return (Verdict::Malformed, Duration::ZERO);
        };
        let started = std::time::Instant::now();
        let applied = async {
            let mut tx = self.pool.begin().await?;
            let first = self.record_and_apply(&mut tx, envelope).await?;
            tx.commit().await?;
            Ok::<_, HandlerError>(first)
        };
        let verdict = match tokio::time::timeout(self.handler_timeout, applied.instrument(item.span.clone())).await {
            Ok(Ok(true)) => Verdict::Handled,
            Ok(Ok(false)) => Verdict::Duplicate,
            Ok(Err(err)) => Verdict::from(err),
            Err(_) => {
                item.span.in_scope(|| {
                    tracing::warn!(
                        limit_ms = self.handler_timeout.as_millis() as u64,
                        "handler exceeded its time limit; message will be retried"
                    )
                });
                Verdict::TimedOut
            }
        };
        (verdict, started.elapsed())
    }

    /// Records the envelope's `message_id` and applies the handler on `conn`. `Ok(false)` when
    /// the message had already been handled (nothing is applied then).
    async fn record_and_apply(&self, conn: &mut AnyConnection, envelope: &Envelope) -> Result<bool, HandlerError> {
        let first = sqlx::query(
            "INSERT INTO processed_messages (message_id, message_type, correlation_id, processed_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(envelope.message_id.to_string())
        .bind(envelope.type_name())
        .bind(envelope.correlation_id.to_string())
        .bind(crate::storage::now())
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1;
        if first {
            self.handler.handle(conn, envelope).await?;
        }
        Ok(first)
    }

    /// Logs a message's outcome in its span (after the commit that made it true) and counts it.
    fn conclude(
        &self,
        queue: &str,
        item: &Item<'_>,
        verdict: Verdict,
        took: Duration,
        max_receive_count: Option<u32>,
    ) -> Outcome {
        let _entered = item.span.enter();
        let outcome = match verdict {
            Verdict::Handled => {
                tracing::info!("message handled");
                Outcome::Handled
            }
            Verdict::Duplicate => {
                tracing::info!("duplicate delivery; effect already committed");
                Outcome::Duplicate
            }
            Verdict::Malformed => {
                let reason = item
                    .envelope
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                tracing::warn!(%reason, body_bytes = item.message.body.len(), "malformed message left for the dead-letter queue");
                Outcome::Rejected
            }
            Verdict::Refused(reason) => {
                tracing::warn!(%reason, "message refused; left for the dead-letter queue");
                Outcome::Rejected
            }
            Verdict::Database(error) => {
                tracing::warn!(%error, "database error; message will be retried");
                Outcome::DatabaseFailed
            }
            Verdict::Conflict(reason) => {
                tracing::warn!(%reason, "concurrent change; message will be retried");
                Outcome::Retry
            }
            Verdict::TimedOut => Outcome::DatabaseFailed,
        };
        self.metrics
            .handler_duration
            .get_or_create(&HandlerLabels {
                queue: queue.to_owned(),
                r#type: item.kind.to_owned(),
            })
            .observe(took.as_secs_f64());
        let counted = match outcome {
            Outcome::Handled => "handled",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected => "failed",
            Outcome::Retry | Outcome::DatabaseFailed => "retried",
        };
        self.metrics.message(queue, item.kind, counted);
        let last_receive = max_receive_count.is_some_and(|max| item.message.receive_count >= max);
        if !matches!(outcome, Outcome::Handled | Outcome::Duplicate) && last_receive {
            self.metrics.message(queue, item.kind, "dead_lettered");
        }
        outcome
    }
}

/// Extends the visibility of the held messages every third of the visibility timeout (room for
/// a slow extension call). Never returns; the caller drops it when the batch is done.
async fn keep_invisible(bus: &Bus, queue_url: &str, held: &[String], timeout: i32) -> Infallible {
    let every = Duration::from_millis(u64::from(timeout.unsigned_abs()) * 1000 / 3).max(Duration::from_millis(300));
    let extend: Vec<(&str, i32)> = held.iter().map(|receipt| (receipt.as_str(), timeout)).collect();
    loop {
        tokio::time::sleep(every).await;
        match bus.change_visibility_batch(queue_url, &extend).await {
            Ok(()) => tracing::debug!(messages = extend.len(), timeout, "visibility extended for slow work"),
            Err(err) => tracing::warn!(error = %err, "could not extend visibility; messages may be redelivered"),
        }
    }
}

/// What is to become of a handled batch's messages.
struct Settled {
    report: BatchReport,
    /// Receipts of the messages whose effect is committed.
    delete: Vec<String>,
    /// Receipts of the others, with the seconds until each is received again.
    visibility: Vec<(String, i32)>,
}

/// One received message on its way through a batch: its parsed envelope and its `process` span,
/// whose parent is the span that published it.
struct Item<'m> {
    message: &'m Received,
    envelope: Result<Envelope, super::envelope::EnvelopeError>,
    kind: &'static str,
    span: tracing::Span,
}

impl<'m> Item<'m> {
    fn open(queue: &str, message: &'m Received) -> Self {
        let envelope = Envelope::parse(&message.body);
        let span = tracing::info_span!(
            "process",
            otel.name = format!("process {queue}"),
            otel.kind = "consumer",
            messaging.system = "aws_sqs",
            messaging.destination = queue,
            messaging.message.id = %message.sqs_message_id,
            receive_count = message.receive_count,
            message_type = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
            message_id = tracing::field::Empty,
        );
        let published_by = message
            .traceparent
            .as_deref()
            .or_else(|| envelope.as_ref().ok().and_then(|e| e.traceparent.as_deref()));
        context::set_parent(&span, published_by);
        if let Ok(envelope) = &envelope {
            span.record("message_type", envelope.type_name());
            span.record("correlation_id", tracing::field::display(envelope.correlation_id));
            span.record("message_id", tracing::field::display(envelope.message_id));
        }
        let kind = envelope.as_ref().map(|e| e.type_name()).unwrap_or("malformed");
        Self {
            message,
            envelope,
            kind,
            span,
        }
    }
}

/// What became of one message, before it is logged and counted.
#[derive(Debug, Clone)]
enum Verdict {
    Handled,
    Duplicate,
    Malformed,
    Refused(String),
    Conflict(String),
    Database(String),
    TimedOut,
}

impl From<HandlerError> for Verdict {
    fn from(err: HandlerError) -> Self {
        match err {
            HandlerError::Refused(reason) => Self::Refused(reason),
            HandlerError::Conflict(reason) => Self::Conflict(reason),
            HandlerError::Database(err) => Self::Database(err.to_string()),
        }
    }
}

/// Why a batch's transaction could not be carried through, and the message over its time limit
/// if that was the cause.
struct Broken {
    reason: &'static str,
    culprit: Option<usize>,
}

/// Visibility timeout after a transient failure, by receive count: 5, 15, 45, 135, 405 s (at most
/// 15 minutes), so the five receives before the DLQ span about ten minutes of outage.
fn retry_delay_seconds(receive_count: u32) -> i32 {
    5i32.saturating_mul(3i32.saturating_pow(receive_count.clamp(1, 7) - 1))
        .min(900)
}

#[cfg(test)]
mod tests {
    use super::retry_delay_seconds;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay_seconds(0), 5);
        assert_eq!(retry_delay_seconds(1), 5);
        assert_eq!(retry_delay_seconds(3), 45);
        assert_eq!(retry_delay_seconds(5), 405);
        assert_eq!(retry_delay_seconds(50), 900);
    }
}
