//! The SQS consumer: receive a batch, handle it in one database transaction, delete what
//! committed. The shape every service shares:
//!
//! 1. Parse the body into an [`Envelope`]. A body that does not parse is logged with its reason
//!    and made visible again at once; after `maxReceiveCount` receives the queue's redrive policy
//!    moves it to the dead-letter queue. The service keeps serving.
//! 2. Handle the batch's well-formed messages in one transaction ([`batch`]): record their
//!    `message_id`s in `processed_messages` (a conflict means the effect is already committed, or
//!    is earlier in this batch: a redelivery, so nothing more is done), then apply the handler to
//!    each new one after a savepoint of its own, so a message that fails is rolled back alone.
//!    One commit for the batch.
//! 3. Delete a message only after its transaction committed. Transient failures (database) leave
//!    the message to come back after a growing visibility timeout, and the consumer stops
//!    receiving until the database answers again; refusals (a message this service cannot act on)
//!    go the dead-letter way like malformed ones.
//! 4. From its receive until it is handled, a heartbeat keeps a batch invisible.
//!
//! [`Consumer::run`] runs several batches at once ([`pipeline`]): receives in flight while
//! earlier batches commit, up to [`Consumer::with_max_batches`], and deletes gathered across
//! batches.
//!
//! Each message is handled in a `process <queue>` span whose parent is the span that published
//! it (the `traceparent` message attribute, else the envelope's). Its [`Outcome`] is logged in that
//! span after the commit that makes it true, and counted in the service's [`Metrics`].

mod batch;
mod pipeline;

use super::bus::{Bus, QueueSettings, Received, queue_name};
use super::envelope::{Envelope, EnvelopeError};
use crate::backoff::Backoff;
use crate::observe::context;
use crate::observe::metrics::{HandlerLabels, Metrics, QueueLabels};
use sqlx::{AnyConnection, AnyPool};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::CancellationToken;

/// What a service does with one message, inside the transaction the consumer opened.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        tx: &mut AnyConnection,
        envelope: &Envelope,
    ) -> impl Future<Output = Result<AfterCommit, HandlerError>> + Send;
}

/// What a handler leaves to be done once its transaction has committed: logging an outcome,
/// counting it. Run only after the commit that makes it true, so an abandoned transaction (which
/// is applied again later) neither logs nor counts twice. Nothing that correctness needs.
#[derive(Default)]
#[must_use = "return it from the handler, or nothing is done after the commit"]
pub struct AfterCommit(Option<Box<dyn FnOnce() + Send>>);

impl AfterCommit {
    /// Nothing to do after the commit.
    pub fn nothing() -> Self {
        Self(None)
    }

    /// `action`, once the transaction has committed.
    pub fn then(action: impl FnOnce() + Send + 'static) -> Self {
        Self(Some(Box::new(action)))
    }

    fn run(self) {
        if let Some(action) = self.0 {
            action();
        }
    }
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

/// What became of one message. Its log line, its metric label and what is done with it next
/// ([`Outcome::next`]) all follow from this one value.
#[derive(Debug)]
enum Outcome {
    /// Its effect committed.
    Handled(AfterCommit),
    /// Its effect was already committed (a redelivery, a duplicate publish).
    Duplicate,
    /// The body is not an envelope this build reads.
    Malformed(String),
    /// Well-formed, but this service will not act on it.
    Refused(String),
    /// Another writer changed the state first.
    Conflict(String),
    /// The database failed, or the message was not tried because it had.
    DatabaseFailed(String),
    /// The handler ran past its time limit.
    TimedOut,
}

impl std::fmt::Debug for AfterCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "AfterCommit(..)"
        } else {
            "AfterCommit"
        })
    }
}

/// What is done with a message once its outcome is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Its effect is committed: delete it.
    Delete,
    /// It will never succeed here: visible again at once, so the redrive policy (which counts
    /// receives, not time) moves it to the dead-letter queue soon.
    DeadLetter,
    /// Try again after a delay that grows with its receive count.
    Retry,
    /// As [`Next::Retry`], and stop receiving until the database answers.
    RetryWhenDatabaseAnswers,
}

impl Outcome {
    fn next(&self) -> Next {
        match self {
            Self::Handled(_) | Self::Duplicate => Next::Delete,
            Self::Malformed(_) | Self::Refused(_) => Next::DeadLetter,
            Self::Conflict(_) => Next::Retry,
            Self::DatabaseFailed(_) | Self::TimedOut => Next::RetryWhenDatabaseAnswers,
        }
    }

    /// The `outcome` label of `saga_messages_total`.
    fn label(&self) -> &'static str {
        match self.next() {
            Next::Delete if matches!(self, Self::Duplicate) => "duplicate",
            Next::Delete => "handled",
            Next::DeadLetter => "rejected",
            Next::Retry | Next::RetryWhenDatabaseAnswers => "retried",
        }
    }
}

impl From<HandlerError> for Outcome {
    fn from(err: HandlerError) -> Self {
        match err {
            HandlerError::Refused(reason) => Self::Refused(reason),
            HandlerError::Conflict(reason) => Self::Conflict(reason),
            HandlerError::Database(err) => Self::DatabaseFailed(err.to_string()),
        }
    }
}

pub struct Consumer<H> {
    queue_url: String,
    bus: Bus,
    pool: AnyPool,
    handler: H,
    outbox_signal: Arc<Notify>,
    wait_seconds: i32,
    handler_timeout: Duration,
    max_batches: usize,
    settings: OnceCell<QueueSettings>,
    metrics: Metrics,
}

/// Longest a handler may take unless [`Consumer::with_handler_timeout`] says otherwise.
const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(10);

/// Batches in flight at most unless [`Consumer::with_max_batches`] says otherwise.
pub const DEFAULT_MAX_BATCHES: usize = 8;

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
            max_batches: DEFAULT_MAX_BATCHES,
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

    /// Batches received or being handled at once, at most (at least 1). Receives in flight grow
    /// towards it while they come back full and shrink to one long poll when the queue is idle.
    pub fn with_max_batches(mut self, max: usize) -> Self {
        self.max_batches = max.max(1);
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

    fn queue_labels(&self) -> QueueLabels {
        QueueLabels {
            queue: queue_name(&self.queue_url).to_owned(),
        }
    }

    /// Counts one receive of `messages` messages.
    fn count_receive(&self, messages: usize) {
        if messages == 0 {
            self.metrics.empty_receives.get_or_create(&self.queue_labels()).inc();
        } else {
            self.metrics
                .receive_batch_size
                .get_or_create(&self.queue_labels())
                .observe(messages as f64);
        }
    }

    /// The received messages as items of a batch: each parsed, in its `process` span, counted.
    fn open<'m>(&self, messages: &'m [Received]) -> Vec<Item<'m>> {
        self.count_receive(messages.len());
        let queue = queue_name(&self.queue_url);
        let items: Vec<Item> = messages.iter().map(|message| Item::open(queue, message)).collect();
        for item in &items {
            self.metrics.message(queue, item.kind, "received");
        }
        items
    }

    /// Handles a received batch (not empty) in one transaction and says what is to become of
    /// each message it decided: the receipts to delete (committed, or duplicates) and the
    /// visibility to give the others. Also returns the indexes of messages too slow for the batch,
    /// for [`Consumer::settle_alone`]. Wakes the relay when something committed.
    async fn settle(&self, items: &[Item<'_>]) -> (Settled, Vec<usize>) {
        let (well_formed, malformed): (Vec<usize>, Vec<usize>) =
            (0..items.len()).partition(|&i| items[i].envelope.is_ok());
        let (mut decided, slow) = self.handle_batch(items, &well_formed).await;
        for i in malformed {
            let reason = items[i]
                .envelope
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            decided.push((i, (Outcome::Malformed(reason), Duration::ZERO)));
        }
        (self.conclude_all(items, decided).await, slow)
    }

    /// Handles each of `slow` in a transaction of its own, with the full time limit.
    async fn settle_alone(&self, items: &[Item<'_>], slow: &[usize]) -> Settled {
        let mut decided = Vec::with_capacity(slow.len());
        for &i in slow {
            decided.push((i, self.apply_alone(&items[i]).await));
        }
        self.conclude_all(items, decided).await
    }

    async fn conclude_all(&self, items: &[Item<'_>], decided: Vec<batch::Applied>) -> Settled {
        let queue = queue_name(&self.queue_url);
        let max_receive_count = self.settings().await.max_receive_count;
        let mut settled = Settled::default();
        for (i, (outcome, took)) in decided {
            let item = &items[i];
            let receipt = item.message.receipt_handle.clone();
            match self.conclude(queue, item, outcome, took, max_receive_count) {
                Next::Delete => settled.delete.push(receipt),
                Next::DeadLetter => settled.visibility.push((receipt, 0)),
                next @ (Next::Retry | Next::RetryWhenDatabaseAnswers) => {
                    settled.database_failed |= next == Next::RetryWhenDatabaseAnswers;
                    let delay = retry_delay_seconds(item.message.receive_count);
                    settled.visibility.push((receipt, delay));
                }
            }
        }
        if !settled.delete.is_empty() {
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

    /// The queue's visibility timeout and redrive limit, as [`Consumer::read_settings`] read them
    /// before the first receive.
    async fn settings(&self) -> QueueSettings {
        match self.settings.get() {
            Some(settings) => *settings,
            // Not reached from `run`, which reads them first; a heartbeat every 10 s is then
            // the safe side of the shortest timeout the template allows.
            None => QueueSettings {
                visibility_timeout: 30,
                max_receive_count: None,
            },
        }
    }

    /// Reads the queue's settings from SQS (the template is the truth), retrying while the bus
    /// does not answer: a heartbeat paced for a guessed timeout could let messages reappear while
    /// they are handled. `false` when `stop` fired first.
    async fn read_settings(&self, stop: &CancellationToken) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let read = tokio::select! {
                read = self.bus.queue_settings(&self.queue_url) => read,
                () = stop.cancelled() => return false,
            };
            match read {
                Ok(settings) => {
                    let _ = self.settings.set(settings);
                    return true;
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "cannot read the queue's settings; will retry");
                    tokio::select! {
                        () = stop.cancelled() => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Logs a message's outcome in its span (after the commit that made it true), runs what its
    /// handler left for after the commit, counts it, and says what is to become of it.
    fn conclude(
        &self,
        queue: &str,
        item: &Item<'_>,
        outcome: Outcome,
        took: Duration,
        max_receive_count: Option<u32>,
    ) -> Next {
        let _entered = item.span.enter();
        let next = outcome.next();
        let label = outcome.label();
        match outcome {
            Outcome::Handled(after) => {
                tracing::debug!("message handled");
                after.run();
            }
            Outcome::Duplicate => tracing::debug!("duplicate delivery; effect already committed"),
            Outcome::Malformed(reason) => {
                tracing::warn!(%reason, body_bytes = item.message.body.len(), "malformed message left for the dead-letter queue");
            }
            Outcome::Refused(reason) => tracing::warn!(%reason, "message refused; left for the dead-letter queue"),
            Outcome::DatabaseFailed(error) => tracing::warn!(%error, "database error; message will be retried"),
            Outcome::Conflict(reason) => tracing::warn!(%reason, "concurrent change; message will be retried"),
            Outcome::TimedOut => tracing::warn!(
                limit_ms = self.handler_timeout.as_millis() as u64,
                "handler exceeded its time limit; message will be retried"
            ),
        }
        self.metrics
            .handler_duration
            .get_or_create(&HandlerLabels {
                queue: queue.to_owned(),
                r#type: item.kind.to_owned(),
            })
            .observe(took.as_secs_f64());
        self.metrics.message(queue, item.kind, label);
        let last_receive = max_receive_count.is_some_and(|max| item.message.receive_count >= max);
        if next != Next::Delete && last_receive {
            self.metrics.message(queue, item.kind, "dead_lettered");
        }
        next
    }
}

/// What is to become of a handled batch's messages.
#[derive(Default)]
struct Settled {
    /// Receipts of the messages whose effect is committed.
    delete: Vec<String>,
    /// Receipts of the others, with the seconds until each is received again.
    visibility: Vec<(String, i32)>,
    /// The database failed on one of them: stop receiving until it answers.
    database_failed: bool,
}

/// One received message on its way through a batch: its parsed envelope and its `process` span,
/// whose parent is the span that published it.
struct Item<'m> {
    message: &'m Received,
    envelope: Result<Envelope, EnvelopeError>,
    kind: &'static str,
    span: tracing::Span,
}

impl<'m> Item<'m> {
    fn open(queue: &str, message: &'m Received) -> Self {
        let envelope = Envelope::parse_received(&message.body, message.type_attribute.as_deref());
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

/// Visibility timeout after a transient failure, by receive count: 5, 15, 45, 135, 405 s (at most
/// 15 minutes), so the five receives before the DLQ span about ten minutes of outage.
fn retry_delay_seconds(receive_count: u32) -> i32 {
    5i32.saturating_mul(3i32.saturating_pow(receive_count.clamp(1, 7) - 1))
        .min(900)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay_seconds(0), 5);
        assert_eq!(retry_delay_seconds(1), 5);
        assert_eq!(retry_delay_seconds(3), 45);
        assert_eq!(retry_delay_seconds(5), 405);
        assert_eq!(retry_delay_seconds(50), 900);
    }

    #[test]
    fn each_outcome_names_its_label_and_what_comes_next() {
        let cases = [
            (Outcome::Handled(AfterCommit::nothing()), "handled", Next::Delete),
            (Outcome::Duplicate, "duplicate", Next::Delete),
            (Outcome::Malformed("x".into()), "rejected", Next::DeadLetter),
            (Outcome::Refused("x".into()), "rejected", Next::DeadLetter),
            (Outcome::Conflict("x".into()), "retried", Next::Retry),
            (
                Outcome::DatabaseFailed("x".into()),
                "retried",
                Next::RetryWhenDatabaseAnswers,
            ),
            (Outcome::TimedOut, "retried", Next::RetryWhenDatabaseAnswers),
        ];
        for (outcome, label, next) in cases {
            assert_eq!((outcome.label(), outcome.next()), (label, next), "{outcome:?}");
        }
    }
}
