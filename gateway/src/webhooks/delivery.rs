//! From status event to delivered webhook, in two halves:
//!
//! - [`ScheduleHandler`], the consumer of the `webhook-deliveries` queue: each
//!   `EnrollmentStatusChanged` of an enrollment with a callback becomes a `webhook_deliveries` row
//!   in the consumer's transaction (its id the event's message id: a redelivered event finds it
//!   there). Events of enrollments without a callback do not come here: the subscription admits
//!   only those whose `callback` attribute is `yes`. One that still comes (its callback answered
//!   410 since) is just deleted.
//! - [`Dispatcher`], a task: claims due rows with a lease, posts each (signed, through the
//!   guarded [`Client`]), and writes what came of it: delivered (2xx), stopped (410, with the
//!   enrollment's later deliveries), failed (refused address, or still failing 24 h after the
//!   event), or due again after an exponential back-off with full jitter. Each attempt is a
//!   `webhook_attempts` row, written in the transaction that records its outcome, and counted in
//!   the metrics ([`crate::metrics::WebhookMetrics`]).
//!
//! Each host has at most `WEBHOOK_HOST_CONCURRENCY` deliveries in flight and a circuit that opens
//! after [`CIRCUIT_FAILURES`] failures in a row: while open, that host's rows are put back for
//! [`CIRCUIT_OPEN`] without a request, so one dead receiver costs the others nothing.

use super::client::{Client, Outcome};
use super::signing::SigningKeys;
use rand::RngExt;
use serde_json::json;
use sqlx::{AnyConnection, AnyPool};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use utility::messaging::consumer::{AfterCommit, Handler, HandlerError};
use utility::messaging::envelope::Envelope;
use utility::messaging::message::Message;
use utility::storage::timestamp;

/// A delivery still failing this long after its event is given up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest wait between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(60 * 60);
/// How long a dispatcher holds the rows it claimed before another may take them.
const LEASE: Duration = Duration::from_secs(60);
/// Rows claimed at once.
const CLAIM: i64 = 32;
/// How often finished deliveries past their retention are deleted, and how many per statement.
const FORGET_EVERY: Duration = Duration::from_secs(3600);
const FORGET_BATCH: i64 = 500;
/// Failures in a row that open a host's circuit, and how long it stays open.
const CIRCUIT_FAILURES: u32 = 5;
const CIRCUIT_OPEN: Duration = Duration::from_secs(30);

/// The webhook's body: Standard Webhooks' `type`, `timestamp`, `data`; `data` is the event
/// stream's entry with the enrollment id and the entry's `sequence`.
pub fn body(enrollment_id: &str, event: &utility::messaging::message::EnrollmentStatusChanged) -> String {
    json!({
        "type": "enrollment.status_changed",
        "timestamp": event.at,
        "data": {
            "enrollment_id": enrollment_id,
            "sequence": event.sequence,
            "status": event.status,
            "at": event.at,
            "event": event.event,
        },
    })
    .to_string()
}

/// Consumes `webhook-deliveries`.
pub struct ScheduleHandler {
    pub dispatch: Arc<Notify>,
}

impl Handler for ScheduleHandler {
    async fn handle(&self, tx: &mut AnyConnection, envelope: &Envelope) -> Result<AfterCommit, HandlerError> {
        let Message::EnrollmentStatusChanged(event) = &envelope.message else {
            return Err(HandlerError::Refused(format!(
                "`{}` does not belong on the webhook deliveries queue",
                envelope.type_name()
            )));
        };
        let id = envelope.correlation_id.to_string();
        let callback: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT callback_url, callback_gone_at FROM enrollments WHERE id = $1")
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?;
        let url = match callback {
            None => return Err(HandlerError::Refused(format!("no enrollment {id}"))),
            Some((Some(url), None)) => url,
            // No callback, or its receiver said 410: nothing to deliver.
            Some(_) => return Ok(AfterCommit::nothing()),
        };
        let now = utility::storage::now();
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, enrollment_id, url, body, created_at, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(envelope.message_id.to_string())
        .bind(&id)
        .bind(url)
        .bind(body(&id, event))
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        let dispatch = self.dispatch.clone();
        Ok(AfterCommit::then(move || dispatch.notify_one()))
    }
}

#[derive(sqlx::FromRow)]
struct Due {
    id: String,
    enrollment_id: String,
    url: String,
    body: String,
    created_at: String,
    attempts: i64,
}

/// Per host: deliveries in flight and the circuit.
#[derive(Default)]
struct Hosts(HashMap<String, HostState>);

struct HostState {
    in_flight: Arc<Semaphore>,
    failures: u32,
    open_until: Option<Instant>,
}

/// Posts due deliveries.
#[derive(Clone)]
pub struct Dispatcher {
    pub pool: AnyPool,
    pub client: Client,
    pub keys: SigningKeys,
    pub signal: Arc<Notify>,
    /// First retry's bound; each later one doubles, up to an hour.
    pub retry_base: Duration,
    /// How often due rows are looked for when nothing signals.
    pub interval: Duration,
    pub host_concurrency: usize,
    /// How long a finished delivery (delivered, stopped, failed) and its attempts are kept for
    /// the operator view: `OUTBOX_RETENTION_HOURS`, like the sent messages they came from.
    pub retention: Duration,
    pub skip_locked: bool,
    /// Counted into the service's registry once the gateway sets it
    /// ([`crate::metrics::WebhookMetrics::register`]).
    pub(crate) metrics: crate::metrics::WebhookMetrics,
    hosts: Arc<Mutex<Hosts>>,
}

impl Dispatcher {
    pub fn new(
        pool: AnyPool,
        client: Client,
        keys: SigningKeys,
        retry_base: Duration,
        interval: Duration,
        host_concurrency: usize,
    ) -> Self {
        let skip_locked = pool.connect_options().database_url.scheme().starts_with("postgres");
        Self {
            pool,
            client,
            keys,
            signal: Arc::new(Notify::new()),
            retry_base,
            interval,
            host_concurrency: host_concurrency.max(1),
            retention: Duration::from_secs(7 * 24 * 3600),
            skip_locked,
            metrics: crate::metrics::WebhookMetrics::default(),
            hosts: Arc::default(),
        }
    }

    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut in_flight = tokio::task::JoinSet::new();
        let mut forgotten_at: Option<Instant> = None;
        loop {
            if forgotten_at.is_none_or(|at| at.elapsed() >= FORGET_EVERY) {
                forgotten_at = Some(Instant::now());
                match forget_finished(&self.pool, &utility::storage::cutoff(self.retention)).await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(deleted, "finished webhook deliveries past their retention deleted"),
                    Err(err) => tracing::warn!(error = %err, "cannot delete old webhook deliveries; will try again"),
                }
            }
            match self.claim().await {
                Ok(rows) => {
                    for row in rows {
                        let this = self.clone();
                        in_flight.spawn(async move { this.attempt(row).await });
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot read due webhook deliveries"),
            }
            while in_flight.try_join_next().is_some() {}
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.signal.notified() => {}
                () = tokio::time::sleep(self.interval) => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        }
        // Attempts under way finish (each within the client's total timeout); unfinished rows
        // are due again once their lease runs out.
        while in_flight.join_next().await.is_some() {}
        Ok(())
    }

    async fn claim(&self) -> Result<Vec<Due>, sqlx::Error> {
        let now = utility::storage::now();
        let until = timestamp(chrono::Utc::now() + LEASE);
        let skip_locked = if self.skip_locked { "FOR UPDATE SKIP LOCKED" } else { "" };
        sqlx::query_as(&format!(
            "UPDATE webhook_deliveries SET claimed_until = $1 WHERE id IN (
                 SELECT id FROM webhook_deliveries
                 WHERE state = 'pending' AND next_attempt_at <= $2
                   AND (claimed_until IS NULL OR claimed_until < $2)
                 ORDER BY next_attempt_at, id LIMIT $3 {skip_locked})
             RETURNING id, enrollment_id, url, body, created_at, attempts"
        ))
        .bind(&until)
        .bind(&now)
        .bind(CLAIM)
        .fetch_all(&self.pool)
        .await
    }

    /// A place among the host's deliveries in flight, unless its circuit is open or its places
    /// are taken: then `Err` with when to look again.
    fn enter(&self, host: &str) -> Result<OwnedSemaphorePermit, Duration> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let state = hosts.0.entry(host.to_owned()).or_insert_with(|| HostState {
            in_flight: Arc::new(Semaphore::new(self.host_concurrency)),
            failures: 0,
            open_until: None,
        });
        if let Some(until) = state.open_until {
            let now = Instant::now();
            if until > now {
                return Err(until - now);
            }
            state.open_until = None;
        }
        state.in_flight.clone().try_acquire_owned().map_err(|_| self.interval)
    }

    /// Counts an attempt's result against its host's circuit.
    fn record_host(&self, host: &str, failed: bool) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = hosts.0.get_mut(host) {
            if failed {
                state.failures += 1;
                if state.failures >= CIRCUIT_FAILURES {
                    tracing::warn!(host, "webhook receiver keeps failing; its circuit opens");
                    state.open_until = Some(Instant::now() + CIRCUIT_OPEN);
                    state.failures = 0;
                }
            } else {
                state.failures = 0;
            }
        }
    }

    #[tracing::instrument(skip_all, fields(webhook_id = %row.id, enrollment_id = %row.enrollment_id))]
    async fn attempt(&self, row: Due) {
        let result = self.try_attempt(&row).await;
        if let Err(err) = result {
            // The lease runs out and the row is attempted again.
            tracing::warn!(error = %err, "cannot record a webhook attempt");
        }
    }

    async fn try_attempt(&self, row: &Due) -> Result<(), sqlx::Error> {
        let Ok(url) = reqwest::Url::parse(&row.url) else {
            let attempt = Attempt::refused("the stored URL does not parse".to_owned());
            return self.record(row, attempt, Ending::Failed).await;
        };
        let host = url.host_str().unwrap_or_default().to_owned();
        let _permit = match self.enter(&host) {
            Ok(permit) => permit,
            Err(wait) => return self.put_back(row, wait).await,
        };
        let sent_at = chrono::Utc::now().timestamp();
        let headers = [
            ("webhook-id", row.id.clone()),
            ("webhook-timestamp", sent_at.to_string()),
            ("webhook-signature", self.keys.sign(&row.id, sent_at, &row.body)),
        ];
        let started = Instant::now();
        let outcome = self.client.post(&url, &headers, row.body.clone()).await;
        let took = started.elapsed();
        self.record_host(&host, !matches!(outcome, Outcome::Delivered(_) | Outcome::Gone));
        let attempt = |result, status: Option<u16>, error: Option<String>| Attempt {
            result,
            status,
            error,
            took: Some(took),
        };
        match outcome {
            Outcome::Delivered(status) => {
                self.record(row, attempt("delivered", Some(status), None), Ending::Delivered)
                    .await
            }
            Outcome::Gone => {
                self.record(row, attempt("gone", Some(410), None), Ending::Stopped)
                    .await
            }
            Outcome::Refused(reason) => {
                tracing::warn!(%reason, "webhook refused: the URL leads to an address or port callbacks may not reach");
                self.record(row, Attempt::refused(format!("refused: {reason}")), Ending::Failed)
                    .await
            }
            Outcome::Retry { status, reason } => {
                let created = chrono::DateTime::parse_from_rfc3339(&row.created_at)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .unwrap_or_else(|_| chrono::Utc::now());
                let next = chrono::Utc::now() + delay(self.retry_base, row.attempts);
                let give_up =
                    next - created > chrono::Duration::from_std(GIVE_UP_AFTER).unwrap_or(chrono::Duration::MAX);
                let ending = if give_up {
                    Ending::Failed
                } else {
                    tracing::info!(%reason, attempts = row.attempts + 1, "webhook attempt failed; retried later");
                    Ending::RetryAt(timestamp(next))
                };
                self.record(row, attempt("retry", status, Some(reason)), ending).await
            }
        }
    }

    /// Records one attempt and what it made of the delivery, in one transaction: the delivery's
    /// row (its `attempts` numbers the attempt), the attempt's row, and after a 410 the
    /// enrollment's callback gone with its other pending deliveries. Metrics and the outcome's
    /// log line follow the commit.
    async fn record(&self, row: &Due, attempt: Attempt, ending: Ending) -> Result<(), sqlx::Error> {
        let now = utility::storage::now();
        let (state, finished_at, next_attempt_at) = match &ending {
            Ending::Delivered => ("delivered", Some(now.as_str()), None),
            Ending::Stopped => ("stopped", Some(now.as_str()), None),
            Ending::Failed => ("failed", Some(now.as_str()), None),
            Ending::RetryAt(at) => ("pending", None, Some(at.as_str())),
        };
        let took_ms = attempt
            .took
            .map_or(0, |t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX));
        let mut tx = self.pool.begin().await?;
        // Only a delivery still pending takes this attempt's ending: one a sibling's 410 stopped
        // while this attempt was under way (or another instance finished after a lapsed lease)
        // stays as it ended, and is neither counted nor logged as ending twice.
        let ended_here: Option<i64> = sqlx::query_scalar(
            "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, last_status = $2,
                 last_error = $3, finished_at = $4, next_attempt_at = $5, claimed_until = NULL
             WHERE id = $6 AND state = 'pending' RETURNING attempts",
        )
        .bind(state)
        .bind(attempt.status.map(i64::from))
        .bind(attempt.error.as_deref())
        .bind(finished_at)
        .bind(next_attempt_at)
        .bind(&row.id)
        .fetch_optional(&mut *tx)
        .await?;
        let number = match ended_here {
            Some(number) => number,
            None => {
                let counted: Option<i64> = sqlx::query_scalar(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1 WHERE id = $1 RETURNING attempts",
                )
                .bind(&row.id)
                .fetch_optional(&mut *tx)
                .await?;
                // Gone altogether (past its retention): nothing to record.
                let Some(number) = counted else { return Ok(()) };
                number
            }
        };
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, at, result, http_status, duration_ms, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&row.id)
        .bind(number)
        .bind(&now)
        .bind(attempt.result)
        .bind(attempt.status.map(i64::from))
        .bind(took_ms)
        .bind(attempt.error.as_deref())
        .execute(&mut *tx)
        .await?;
        let mut also_stopped = 0;
        if matches!(ending, Ending::Stopped) {
            sqlx::query("UPDATE enrollments SET callback_gone_at = $1 WHERE id = $2")
                .bind(&now)
                .bind(&row.enrollment_id)
                .execute(&mut *tx)
                .await?;
            also_stopped = sqlx::query(
                "UPDATE webhook_deliveries SET state = 'stopped', finished_at = $1, next_attempt_at = NULL,
                     claimed_until = NULL
                 WHERE enrollment_id = $2 AND state = 'pending'",
            )
            .bind(&now)
            .bind(&row.enrollment_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;

        self.metrics.attempted(attempt.result, attempt.took);
        self.metrics.ended("stopped", also_stopped);
        if ended_here.is_none() {
            return Ok(());
        }
        let outcome = match ending {
            Ending::RetryAt(_) => return Ok(()),
            Ending::Delivered => {
                if let Some(lag) = since_status_change(&row.body) {
                    self.metrics.delivered_after(lag);
                }
                "delivered"
            }
            Ending::Stopped => "stopped",
            Ending::Failed => "failed",
        };
        self.metrics.ended(outcome, 1);
        // One line per delivery that ends (`outcome` as in `saga_webhook_deliveries_total`):
        // what a log-based metric counts.
        let (status, error) = (attempt.status, attempt.error.as_deref().unwrap_or_default());
        match outcome {
            "delivered" => tracing::debug!(outcome, attempts = number, status, "webhook delivery finished"),
            "stopped" => tracing::info!(
                outcome,
                attempts = number,
                also_stopped,
                "webhook delivery finished: the receiver answered 410, its enrollment's callbacks stop"
            ),
            _ => tracing::warn!(outcome, attempts = number, status, error, "webhook delivery finished"),
        }
        Ok(())
    }

    /// Not attempted (the host's circuit is open or its places are taken): due again after `wait`.
    async fn put_back(&self, row: &Due, wait: Duration) -> Result<(), sqlx::Error> {
        let at = timestamp(chrono::Utc::now() + wait);
        sqlx::query("UPDATE webhook_deliveries SET next_attempt_at = $1, claimed_until = NULL WHERE id = $2")
            .bind(at)
            .bind(&row.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// One attempt, as recorded.
struct Attempt {
    /// `delivered`, `retry`, `gone` or `refused`.
    result: &'static str,
    status: Option<u16>,
    error: Option<String>,
    /// The request's duration; `None` when none was sent.
    took: Option<Duration>,
}

impl Attempt {
    fn refused(reason: String) -> Self {
        Self {
            result: "refused",
            status: None,
            error: Some(reason),
            took: None,
        }
    }
}

/// What an attempt made of its delivery.
enum Ending {
    Delivered,
    /// 410: this delivery and the enrollment's other pending ones.
    Stopped,
    /// Refused, or still failing 24 h after the event.
    Failed,
    /// Due again at this time.
    RetryAt(String),
}

/// How long ago the status change a webhook body carries (`data.at`) happened.
fn since_status_change(body: &str) -> Option<Duration> {
    let body: serde_json::Value = serde_json::from_str(body).ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(body["data"]["at"].as_str()?).ok()?;
    (chrono::Utc::now() - at.with_timezone(&chrono::Utc)).to_std().ok()
}

/// Full jitter: uniform in `[0, min(1 h, base x 2^attempts)]`.
fn delay(base: Duration, attempts: i64) -> chrono::Duration {
    let exponent = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
    let ceiling = base.saturating_mul(2u32.saturating_pow(exponent)).min(MAX_DELAY);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX).max(1);
    chrono::Duration::milliseconds(rand::rng().random_range(0..=millis) as i64)
}

/// Deletes the deliveries that finished before `cutoff`, with their attempts, a bounded batch
/// per transaction; returns how many deliveries went. Pending ones are never touched. The
/// attempts deleted are exactly those of the deliveries this transaction deleted, so two
/// instances sweeping at once leave no attempt without its delivery.
pub async fn forget_finished(pool: &AnyPool, cutoff: &str) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let gone: Vec<String> = sqlx::query_scalar(
            "DELETE FROM webhook_deliveries WHERE id IN (
                 SELECT id FROM webhook_deliveries
                 WHERE finished_at IS NOT NULL AND finished_at < $1 ORDER BY id LIMIT $2)
             RETURNING id",
        )
        .bind(cutoff)
        .bind(FORGET_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if !gone.is_empty() {
            let placeholders: Vec<String> = (1..=gone.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "DELETE FROM webhook_attempts WHERE delivery_id IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for id in &gone {
                query = query.bind(id);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        total += gone.len() as u64;
        if (gone.len() as i64) < FORGET_BATCH {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_deliveries_finished_before_the_cutoff_go_with_their_attempts() {
        for backend in [testkit::Backend::Sqlite, testkit::Backend::Postgres] {
            finished_deliveries_are_forgotten(backend).await;
        }
    }

    async fn finished_deliveries_are_forgotten(backend: testkit::Backend) {
        let db = testkit::TestDb::new(backend, "webhook_retention").await;
        let pool = utility::storage::connect(&db.url, crate::migrations()).await.unwrap();
        let old = timestamp(chrono::Utc::now() - chrono::Duration::days(30));
        let new = utility::storage::now();
        for (id, state, finished_at) in [
            ("old-delivered", "delivered", Some(old.as_str())),
            ("old-failed", "failed", Some(old.as_str())),
            ("new-delivered", "delivered", Some(new.as_str())),
            ("pending", "pending", None),
        ] {
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, enrollment_id, url, body, state, created_at, finished_at)
                 VALUES ($1, 'e', 'https://example.com/hook', '{}', $2, $3, $4)",
            )
            .bind(id)
            .bind(state)
            .bind(&old)
            .bind(finished_at)
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO webhook_attempts (delivery_id, attempt, at, result, duration_ms) VALUES ($1, 1, $2, 'retry', 3)",
            )
            .bind(id)
            .bind(&old)
            .execute(&pool)
            .await
            .unwrap();
        }
        let cutoff = timestamp(chrono::Utc::now() - chrono::Duration::days(7));
        assert_eq!(forget_finished(&pool, &cutoff).await.unwrap(), 2);
        let left: Vec<String> = sqlx::query_scalar("SELECT id FROM webhook_deliveries ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(left, ["new-delivered", "pending"]);
        let attempts: Vec<String> = sqlx::query_scalar("SELECT delivery_id FROM webhook_attempts ORDER BY delivery_id")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(attempts, left, "an attempt outlived its delivery, or went before it");
        assert_eq!(forget_finished(&pool, &cutoff).await.unwrap(), 0);
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_an_hour() {
        let base = Duration::from_secs(5);
        for attempts in 0..30 {
            let bound = base
                .saturating_mul(2u32.saturating_pow(attempts.min(20) as u32))
                .min(MAX_DELAY);
            for _ in 0..50 {
                let d = delay(base, attempts).to_std().unwrap();
                assert!(d <= bound, "{d:?} above {bound:?}");
            }
        }
        let spread: std::collections::BTreeSet<i64> = (0..50).map(|_| delay(base, 10).num_milliseconds()).collect();
        assert!(spread.len() > 10, "no jitter: {spread:?}");
    }
}
