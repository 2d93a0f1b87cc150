//! The transactional outbox: a message is written to the `outbox` table in the same database
//! transaction as the state change that causes it, and a relay publishes pending rows with the
//! batch APIs afterwards. A crash between commit and publish therefore delays a message but never
//! loses it; a crash between publish and marking the row sent publishes it twice, which the
//! consumers' processed-message check absorbs. On PostgreSQL, where several instances of a
//! service share one database, each relay claims the rows it publishes (`FOR UPDATE SKIP
//! LOCKED`), so the instances split the rows instead of each publishing all of them.
//!
//! Traces: [`enqueue`] writes the row in an `outbox enqueue` span and stores that span's
//! `traceparent` in the envelope; the relay publishes each row in a `publish <destination>` span
//! whose parent is that one, and sends its own `traceparent` as a message attribute, which the
//! consumer's span continues.

use super::bus::{BatchOutcome, Bus, BusError, Outgoing};
use super::endpoint::Endpoint;
use super::envelope::Envelope;
use super::topology::Topology;
use crate::backoff::Backoff;
use crate::observe::context;
use crate::observe::metrics::{DestinationLabels, Metrics};
use crate::storage::now;
use sqlx::{AnyConnection, AnyPool};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long a stopping relay may spend on its last flush (the bus may be the thing that is down).
const FINAL_FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// Rows read per relay round.
const PAGE: i64 = 100;

/// Writes `envelope` on the caller's transaction, for the destination its type declares
/// ([`super::message::MessageType::route`]), with the trace context of an `outbox enqueue` span
/// (a child of the request or message being handled).
pub async fn enqueue(conn: &mut AnyConnection, envelope: &Envelope) -> Result<(), sqlx::Error> {
    let destination = envelope.message.destination();
    let span = tracing::info_span!(
        "outbox enqueue",
        otel.name = format!("outbox enqueue {}", envelope.type_name()),
        destination = destination.name(),
        message_type = envelope.type_name(),
    );
    let traced;
    let envelope = match context::traceparent(&span) {
        Some(traceparent) => {
            traced = envelope.clone().with_traceparent(Some(traceparent));
            &traced
        }
        None => envelope,
    };
    sqlx::query(
        "INSERT INTO outbox (id, destination, message_type, correlation_id, body, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(envelope.message_id.to_string())
    .bind(destination.name())
    .bind(envelope.type_name())
    .bind(envelope.correlation_id.to_string())
    .bind(envelope.to_json())
    .bind(now())
    .execute(conn)
    .instrument(span)
    .await?;
    Ok(())
}

/// Number of rows not yet published and not set aside (readiness, tests, operators).
pub async fn pending(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL")
        .fetch_one(pool)
        .await
}

/// The backlog: rows not yet published, and the age of the oldest in seconds (0 when none).
pub async fn backlog(pool: &AnyPool) -> Result<(i64, f64), sqlx::Error> {
    let (count, oldest): (i64, Option<String>) =
        sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL")
            .fetch_one(pool)
            .await?;
    let age = oldest
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok())
        .map(|at| {
            (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
                .num_milliseconds()
                .max(0) as f64
                / 1000.0
        })
        .unwrap_or(0.0);
    Ok((count, age))
}

/// A row waiting to be published.
#[derive(sqlx::FromRow)]
struct PendingRow {
    id: String,
    destination: String,
    message_type: String,
    correlation_id: String,
    body: String,
}

/// The only envelope field the relay reads: the span that wrote the row.
#[derive(serde::Deserialize)]
struct TraceOf {
    traceparent: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("{unsent} outbox messages were not accepted by the bus")]
    Unsent { unsent: usize },
}

/// Publishes pending outbox rows. Woken by [`Relay::signal`] right after a commit, and every
/// `interval` regardless, which picks up rows left by a crash.
#[derive(Clone)]
pub struct Relay {
    pool: AnyPool,
    bus: Bus,
    topology: Arc<Topology>,
    signal: Arc<Notify>,
    interval: Duration,
    metrics: Metrics,
    /// PostgreSQL: rows are claimed with `FOR UPDATE SKIP LOCKED` (see [`Relay::claim`]).
    claims_rows: bool,
}

impl Relay {
    pub fn new(pool: AnyPool, bus: Bus, topology: Arc<Topology>, interval: Duration) -> Self {
        Self {
            bus,
            topology,
            signal: Arc::new(Notify::new()),
            interval,
            metrics: Metrics::new(),
            claims_rows: pool.connect_options().database_url.scheme().starts_with("postgres"),
            pool,
        }
    }

    /// Counts into `metrics` (the service's) instead of a registry of its own.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Hand this to whoever commits outbox rows; `notify_one` wakes the relay.
    pub fn signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }

    /// Publishes everything pending now. Returns how many messages went out.
    ///
    /// Each destination is published and stamped on its own, so one unreachable queue neither
    /// blocks nor re-publishes the others. Rows the bus refuses as the sender's fault, and rows
    /// naming a destination this build does not know, are set aside (`failed_at`, `error`) and
    /// logged as errors instead of being retried forever.
    #[tracing::instrument(level = "debug", skip_all, err)]
    pub async fn flush(&self) -> Result<usize, RelayError> {
        let mut published = 0;
        loop {
            let (mut claim, rows) = self.claim().await?;
            if rows.is_empty() {
                claim.release().await?;
                return Ok(published);
            }
            let mut by_destination: BTreeMap<String, Vec<Outgoing>> = BTreeMap::new();
            for row in rows {
                by_destination.entry(row.destination).or_default().push(Outgoing {
                    id: row.id,
                    message_type: row.message_type,
                    correlation_id: row.correlation_id,
                    body: row.body,
                    traceparent: None,
                });
            }
            let mut first_error = None;
            let mut retry_later = 0;
            for (destination, messages) in &by_destination {
                match self.publish(&mut claim, destination, messages).await {
                    Ok(outcome) => {
                        published += outcome.sent.len();
                        retry_later += outcome.failed.iter().filter(|f| !f.is_permanent()).count();
                    }
                    Err(err) => {
                        tracing::warn!(%destination, error = %err, pending = messages.len(), "cannot publish to this destination; will retry");
                        retry_later += messages.len();
                        first_error.get_or_insert(err);
                    }
                }
            }
            // What was published is marked even when another destination failed.
            claim.release().await?;
            if let Some(err) = first_error {
                return Err(err);
            }
            if retry_later > 0 {
                return Err(RelayError::Unsent { unsent: retry_later });
            }
        }
    }

    /// Reads a page of pending rows. On PostgreSQL, where several instances of a service share
    /// the database, the rows are claimed: locked `FOR UPDATE SKIP LOCKED` by a transaction held
    /// until they are marked, so another instance's relay passes over them instead of publishing
    /// them a second time. If this instance dies meanwhile, the lock goes with its connection and
    /// another relay takes the rows. SQLite has one instance per file and one connection per pool,
    /// which a transaction held across the bus call would take from the consumer: it reads
    /// without a claim.
    async fn claim(&self) -> Result<(Claim, Vec<PendingRow>), sqlx::Error> {
        const PENDING: &str = "SELECT id, destination, message_type, correlation_id, body FROM outbox
             WHERE sent_at IS NULL AND failed_at IS NULL ORDER BY created_at, id LIMIT $1";
        if self.claims_rows {
            let mut tx = self.pool.begin().await?;
            let rows = sqlx::query_as(&format!("{PENDING} FOR UPDATE SKIP LOCKED"))
                .bind(PAGE)
                .fetch_all(&mut *tx)
                .await?;
            Ok((Claim::Held(tx), rows))
        } else {
            let rows = sqlx::query_as(PENDING).bind(PAGE).fetch_all(&self.pool).await?;
            Ok((Claim::Free(self.pool.clone()), rows))
        }
    }

    /// Publishes one destination's rows and records the outcome of each.
    async fn publish(
        &self,
        claim: &mut Claim,
        destination: &str,
        messages: &[Outgoing],
    ) -> Result<BatchOutcome, RelayError> {
        let resolved = destination
            .parse::<Endpoint>()
            .ok()
            .and_then(|endpoint| Some((endpoint, self.topology.address(endpoint).ok()?.to_owned())));
        let Some((endpoint, address)) = resolved else {
            let reason = format!("destination `{destination}` is not known to this service");
            for message in messages {
                claim.set_aside(&message.id, &reason).await?;
            }
            return Ok(BatchOutcome::default());
        };
        // One span per message, child of the span that wrote its row; the message carries it on.
        let spans: Vec<tracing::Span> = messages
            .iter()
            .map(|message| {
                let span = tracing::info_span!(
                    "publish",
                    otel.name = format!("publish {destination}"),
                    otel.kind = "producer",
                    messaging.destination = destination,
                    message_type = %message.message_type,
                    correlation_id = %message.correlation_id,
                );
                let written_by = serde_json::from_str::<TraceOf>(&message.body)
                    .ok()
                    .and_then(|t| t.traceparent);
                context::set_parent(&span, written_by.as_deref());
                span
            })
            .collect();
        let traced: Vec<Outgoing> = messages
            .iter()
            .zip(&spans)
            .map(|(message, span)| Outgoing {
                traceparent: context::traceparent(span),
                ..message.clone()
            })
            .collect();
        let started = std::time::Instant::now();
        let outcome = if endpoint.is_topic() {
            self.bus.publish_batch(&address, &traced).await?
        } else {
            self.bus.send_batch(&address, &traced).await?
        };
        let labels = DestinationLabels {
            destination: destination.to_owned(),
        };
        self.metrics
            .relay_publish_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .relay_published
            .get_or_create(&labels)
            .inc_by(outcome.sent.len() as u64);
        drop(spans);
        claim.mark_sent(&outcome.sent).await?;
        for failure in &outcome.failed {
            if failure.is_permanent() {
                let reason = format!("{}: {}", failure.code, failure.message);
                claim.set_aside(&failure.id, &reason).await?;
            } else {
                tracing::warn!(id = %failure.id, code = %failure.code, message = %failure.message, "bus refused an entry for now; will retry");
            }
        }
        Ok(outcome)
    }

    /// Runs until `stop` is cancelled, then makes one last flush so a graceful stop leaves
    /// nothing behind when the bus is reachable.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.signal.notified() => {}
                () = tokio::time::sleep(self.interval) => {}
            }
            match self.flush().await {
                Ok(_) => backoff.reset(),
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "outbox relay could not publish; will retry");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        match tokio::time::timeout(FINAL_FLUSH_LIMIT, self.flush()).await {
            Ok(Ok(n)) => tracing::info!(published = n, "outbox relay stopped after a final flush"),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "outbox relay stopped with messages pending; they go out on next start")
            }
            Err(_) => tracing::warn!("outbox relay final flush timed out; pending messages go out on next start"),
        }
        Ok(())
    }
}

/// Where the relay records what became of the rows it read: the transaction holding their
/// claim (PostgreSQL), or the pool (SQLite).
enum Claim {
    Held(sqlx::Transaction<'static, sqlx::Any>),
    Free(AnyPool),
}

impl Claim {
    async fn mark_sent(&mut self, ids: &[String]) -> Result<(), sqlx::Error> {
        async fn mark(conn: &mut AnyConnection, ids: &[String]) -> Result<(), sqlx::Error> {
            let now = now();
            for id in ids {
                sqlx::query("UPDATE outbox SET sent_at = $1 WHERE id = $2")
                    .bind(&now)
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        }
        match self {
            _ if ids.is_empty() => Ok(()),
            Self::Held(tx) => mark(tx, ids).await,
            Self::Free(pool) => {
                let mut tx = pool.begin().await?;
                mark(&mut tx, ids).await?;
                tx.commit().await
            }
        }
    }

    async fn set_aside(&mut self, id: &str, reason: &str) -> Result<(), sqlx::Error> {
        tracing::error!(id, reason, "outbox message set aside: the bus will never accept it");
        let query = sqlx::query("UPDATE outbox SET failed_at = $1, error = $2 WHERE id = $3")
            .bind(now())
            .bind(reason)
            .bind(id);
        match self {
            Self::Held(tx) => query.execute(&mut **tx).await?,
            Self::Free(pool) => query.execute(&*pool).await?,
        };
        Ok(())
    }

    /// Commits the marks and lets go of the claim.
    async fn release(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Held(tx) => tx.commit().await,
            Self::Free(_) => Ok(()),
        }
    }
}
