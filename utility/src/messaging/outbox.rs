//! The transactional outbox: a message is written to the `outbox` table in the same database
//! transaction as the state change that causes it, and a relay publishes pending rows with the
//! batch APIs afterwards. A crash between commit and publish therefore delays a message but never
//! loses it; a crash between publish and marking the row sent publishes it twice, which the
//! consumers' processed-message check absorbs.
//!
//! The relay works destination by destination, each on its own: it claims up to
//! [`CALLS_IN_FLIGHT`] batches of ten rows by stamping them with a lease (`claimed_until`, in one
//! short statement; on PostgreSQL `FOR UPDATE SKIP LOCKED`, so several instances of a service on
//! one database split the rows instead of each publishing all of them), publishes them with that
//! many calls in flight, and marks what the bus accepted. No transaction or row lock is held while
//! a call is on the wire; if the instance dies meanwhile, its lease runs out ([`LEASE`]) and any
//! relay takes the rows again. A destination that fails backs off alone; the others keep going.
//!
//! A row may also hold message attributes of its own ([`enqueue_with_attributes`]): values its
//! type declares for subscriptions to filter on, known only in the transaction that writes it.
//! The relay sends them beside `type`, `correlation_id` and `traceparent`.
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
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long a stopping relay may spend on its last flush (the bus may be the thing that is down).
const FINAL_FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// Publish calls one destination keeps in flight (ten messages each).
pub const CALLS_IN_FLIGHT: usize = 4;

/// How long a claim keeps other relays off its rows: longer than a publish call may take
/// ([`CALL_LIMIT`]), so a live relay's rows are never published by another; after a crash the
/// rows wait this long before another relay takes them.
const LEASE: Duration = Duration::from_secs(30);

/// Longest one publish call may take, the SDK's retries included.
const CALL_LIMIT: Duration = Duration::from_secs(20);

/// Writes `envelope` on the caller's transaction, for the destination its type declares
/// ([`super::message::MessageType::route`]), with the trace context of an `outbox enqueue` span
/// (a child of the request or message being handled).
pub async fn enqueue(conn: &mut AnyConnection, envelope: &Envelope) -> Result<(), sqlx::Error> {
    enqueue_with_attributes(conn, envelope, &[]).await
}

/// [`enqueue`], with values for the attributes its type declares besides the three every message
/// carries ([`super::message::MessageType::attributes`]), which the relay sends along: what a
/// subscription filters on, known in the transaction that writes the message.
pub async fn enqueue_with_attributes(
    conn: &mut AnyConnection,
    envelope: &Envelope,
    attributes: &[(&str, &str)],
) -> Result<(), sqlx::Error> {
    debug_assert!(
        attributes.iter().all(|(name, value)| {
            envelope
                .message
                .message_type()
                .attributes()
                .iter()
                .any(|a| a.name == *name && a.values.contains(value))
        }),
        "{} declares no such attribute value: {attributes:?}",
        envelope.type_name()
    );
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
    let attributes = (!attributes.is_empty()).then(|| {
        let object: serde_json::Map<String, serde_json::Value> = attributes
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).into()))
            .collect();
        serde_json::Value::Object(object).to_string()
    });
    sqlx::query(
        "INSERT INTO outbox (id, destination, message_type, correlation_id, body, created_at, attributes)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(envelope.message_id.to_string())
    .bind(destination.name())
    .bind(envelope.type_name())
    .bind(envelope.correlation_id.to_string())
    .bind(envelope.to_json())
    .bind(now())
    .bind(attributes)
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

/// The attributes an outbox row holds for its message besides the three every message carries
/// (its `attributes` column: a JSON object of strings, or NULL), as name and value.
pub fn stored_attributes(column: Option<&str>) -> Vec<(String, String)> {
    let Some(text) = column else {
        return Vec::new();
    };
    match serde_json::from_str::<std::collections::BTreeMap<String, String>>(text) {
        Ok(attributes) => attributes.into_iter().collect(),
        Err(err) => {
            // Only `enqueue_with_attributes` writes the column: sent without them, the message
            // still reaches every subscription that does not filter on them.
            tracing::warn!(error = %err, "outbox row with unreadable attributes; sent without them");
            Vec::new()
        }
    }
}

/// A row waiting to be published.
#[derive(sqlx::FromRow)]
struct PendingRow {
    id: String,
    message_type: String,
    correlation_id: String,
    body: String,
    created_at: String,
    attributes: Option<String>,
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
    #[error(transparent)]
    Topology(#[from] super::topology::TopologyError),
    #[error("publishing to {destination} took longer than {}s", CALL_LIMIT.as_secs())]
    TimedOut { destination: &'static str },
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
    /// Where this service's rows go; one loop each.
    destinations: Vec<Endpoint>,
    /// PostgreSQL: claims skip rows another relay is claiming (`FOR UPDATE SKIP LOCKED`).
    skip_locked: bool,
}

impl Relay {
    /// A relay for every endpoint of `topology`; [`Relay::with_destinations`] narrows it to the
    /// ones the service writes to.
    pub fn new(pool: AnyPool, bus: Bus, topology: Arc<Topology>, interval: Duration) -> Self {
        Self {
            bus,
            destinations: topology.endpoints(),
            topology,
            signal: Arc::new(Notify::new()),
            interval,
            metrics: Metrics::new(),
            skip_locked: pool.connect_options().database_url.scheme().starts_with("postgres"),
            pool,
        }
    }

    /// Counts into `metrics` (the service's) instead of a registry of its own.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Publishes only to `destinations` (rows naming any other are set aside as unknown).
    pub fn with_destinations(mut self, destinations: Vec<Endpoint>) -> Self {
        self.destinations = destinations;
        self
    }

    /// Hand this to whoever commits outbox rows; `notify_one` wakes the relay.
    pub fn signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }

    /// Publishes everything pending now, every destination at once. Returns how many messages
    /// went out; the first error, if any destination failed (the others were still published).
    pub async fn flush(&self) -> Result<usize, RelayError> {
        self.set_aside_unknown().await?;
        let drains = self.destinations.iter().map(|destination| self.drain(*destination));
        let mut published = 0;
        let mut first_error = None;
        for result in futures::future::join_all(drains).await {
            match result {
                Ok(n) => published += n,
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(published),
        }
    }

    /// Publishes `destination`'s pending rows until none is left. Returns how many went out.
    #[tracing::instrument(level = "debug", skip(self), fields(destination = destination.name()), err)]
    async fn drain(&self, destination: Endpoint) -> Result<usize, RelayError> {
        let address = self.topology.address(destination)?.to_owned();
        let mut published = 0;
        loop {
            let rows = self.claim(destination).await?;
            if rows.is_empty() {
                return Ok(published);
            }
            let calls = rows
                .chunks(crate::messaging::bus::MAX_BATCH)
                .map(|chunk| self.publish(destination, &address, chunk));
            let mut unsent = 0;
            let mut first_error = None;
            for outcome in futures::future::join_all(calls).await {
                match outcome {
                    Ok((sent, retry)) => {
                        published += sent;
                        unsent += retry;
                    }
                    Err((err, retry)) => {
                        unsent += retry;
                        first_error.get_or_insert(err);
                    }
                }
            }
            if let Some(err) = first_error {
                return Err(err);
            }
            if unsent > 0 {
                return Err(RelayError::Unsent { unsent });
            }
        }
    }

    /// Claims up to [`CALLS_IN_FLIGHT`] batches of `destination`'s oldest pending rows that no
    /// live claim holds, in one statement (see the module's description).
    async fn claim(&self, destination: Endpoint) -> Result<Vec<PendingRow>, sqlx::Error> {
        let now = now();
        let until = crate::storage::timestamp(chrono::Utc::now() + LEASE);
        let skip_locked = if self.skip_locked { "FOR UPDATE SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE outbox SET claimed_until = $1 WHERE id IN (
                 SELECT id FROM outbox
                 WHERE destination = $2 AND sent_at IS NULL AND failed_at IS NULL
                   AND (claimed_until IS NULL OR claimed_until < $3)
                 ORDER BY created_at, id LIMIT $4 {skip_locked})
             RETURNING id, message_type, correlation_id, body, created_at, attributes"
        );
        let mut rows: Vec<PendingRow> = sqlx::query_as(&sql)
            .bind(&until)
            .bind(destination.name())
            .bind(&now)
            .bind((CALLS_IN_FLIGHT * crate::messaging::bus::MAX_BATCH) as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(rows)
    }

    /// One publish call for claimed rows, and what it did to them: `Ok((sent, to retry))`, or the
    /// error with the number of rows to retry. Rows to retry are released from the claim.
    async fn publish(
        &self,
        destination: Endpoint,
        address: &str,
        rows: &[PendingRow],
    ) -> Result<(usize, usize), (RelayError, usize)> {
        let name = destination.name();
        // One span per message, child of the span that wrote its row; the message carries it on.
        let spans: Vec<tracing::Span> = rows
            .iter()
            .map(|row| {
                let span = tracing::info_span!(
                    "publish",
                    otel.name = format!("publish {name}"),
                    otel.kind = "producer",
                    messaging.destination = name,
                    message_type = %row.message_type,
                    correlation_id = %row.correlation_id,
                );
                let written_by = serde_json::from_str::<TraceOf>(&row.body)
                    .ok()
                    .and_then(|t| t.traceparent);
                context::set_parent(&span, written_by.as_deref());
                span
            })
            .collect();
        let messages: Vec<Outgoing> = rows
            .iter()
            .zip(&spans)
            .map(|(row, span)| Outgoing {
                id: row.id.clone(),
                message_type: row.message_type.clone(),
                correlation_id: row.correlation_id.clone(),
                body: row.body.clone(),
                traceparent: context::traceparent(span),
                extra_attributes: stored_attributes(row.attributes.as_deref()),
            })
            .collect();
        let started = std::time::Instant::now();
        let call = async {
            if destination.is_topic() {
                self.bus.publish_batch(address, &messages).await
            } else {
                self.bus.send_batch(address, &messages).await
            }
        };
        let outcome: Result<BatchOutcome, RelayError> = match tokio::time::timeout(CALL_LIMIT, call).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(RelayError::TimedOut { destination: name }),
        };
        drop(spans);
        let all: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::warn!(destination = name, error = %err, pending = rows.len(), "cannot publish to this destination; will retry");
                return Err(match self.release(&all).await {
                    Ok(()) => (err, rows.len()),
                    Err(db) => (db.into(), rows.len()),
                });
            }
        };
        let labels = DestinationLabels {
            destination: name.to_owned(),
        };
        self.metrics
            .relay_publish_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .relay_published
            .get_or_create(&labels)
            .inc_by(outcome.sent.len() as u64);
        let recorded = async {
            self.mark_sent(&outcome.sent).await?;
            let mut retry = Vec::new();
            for failure in &outcome.failed {
                if failure.is_permanent() {
                    self.set_aside(&failure.id, &format!("{}: {}", failure.code, failure.message))
                        .await?;
                } else {
                    tracing::warn!(id = %failure.id, code = %failure.code, message = %failure.message, "bus refused an entry for now; will retry");
                    retry.push(failure.id.clone());
                }
            }
            self.release(&retry).await?;
            Ok::<_, sqlx::Error>(retry.len())
        };
        match recorded.await {
            Ok(retry) => Ok((outcome.sent.len(), retry)),
            // The lease keeps the rows from others until it runs out; then they go out again.
            Err(err) => Err((err.into(), 0)),
        }
    }

    async fn mark_sent(&self, ids: &[String]) -> Result<(), sqlx::Error> {
        self.update_rows(
            "UPDATE outbox SET sent_at = $1, claimed_until = NULL WHERE id IN",
            ids,
            Some(now()),
        )
        .await
    }

    /// Gives claimed rows back at once, for the next attempt.
    async fn release(&self, ids: &[String]) -> Result<(), sqlx::Error> {
        self.update_rows("UPDATE outbox SET claimed_until = NULL WHERE id IN", ids, None)
            .await
    }

    /// `statement ($n, ...)` over `ids`, with `first` bound as `$1` when given.
    async fn update_rows(&self, statement: &str, ids: &[String], first: Option<String>) -> Result<(), sqlx::Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let offset = usize::from(first.is_some());
        let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${}", n + offset)).collect();
        let sql = format!("{statement} ({})", placeholders.join(", "));
        let mut query = sqlx::query(&sql);
        if let Some(first) = first {
            query = query.bind(first);
        }
        for id in ids {
            query = query.bind(id);
        }
        query.execute(&self.pool).await?;
        Ok(())
    }

    async fn set_aside(&self, id: &str, reason: &str) -> Result<(), sqlx::Error> {
        tracing::error!(id, reason, "outbox message set aside: the bus will never accept it");
        sqlx::query("UPDATE outbox SET failed_at = $1, error = $2, claimed_until = NULL WHERE id = $3")
            .bind(now())
            .bind(reason)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets aside pending rows naming a destination this relay does not publish to (a row
    /// written by another build, say), instead of leaving them pending for ever.
    async fn set_aside_unknown(&self) -> Result<(), sqlx::Error> {
        let known: Vec<String> = self.destinations.iter().map(|d| format!("'{}'", d.name())).collect();
        let condition = if known.is_empty() {
            String::new()
        } else {
            format!("AND destination NOT IN ({})", known.join(", "))
        };
        let unknown: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT id, destination FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL {condition} LIMIT 100"
        ))
        .fetch_all(&self.pool)
        .await?;
        for (id, destination) in unknown {
            self.set_aside(
                &id,
                &format!("destination `{destination}` is not known to this service"),
            )
            .await?;
        }
        Ok(())
    }

    /// Runs until `stop` is cancelled: one loop per destination, woken by [`Relay::signal`] and
    /// every `interval`, each backing off on its own when its destination fails. Then one last
    /// flush, so a graceful stop leaves nothing behind when the bus is reachable.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let (wake, _) = watch::channel(0u64);
        let loops = self
            .destinations
            .iter()
            .map(|destination| self.run_destination(*destination, wake.subscribe(), stop.clone()));
        let dispatch = async {
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.signal.notified() => {}
                    () = tokio::time::sleep(self.interval) => {
                        if let Err(err) = self.set_aside_unknown().await {
                            tracing::warn!(error = %err, "outbox relay cannot look for rows it cannot publish");
                        }
                    }
                }
                ticks += 1;
                wake.send_replace(ticks);
            }
        };
        tokio::join!(futures::future::join_all(loops), dispatch);
        match tokio::time::timeout(FINAL_FLUSH_LIMIT, self.flush()).await {
            Ok(Ok(n)) => tracing::info!(published = n, "outbox relay stopped after a final flush"),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "outbox relay stopped with messages pending; they go out on next start")
            }
            Err(_) => tracing::warn!("outbox relay final flush timed out; pending messages go out on next start"),
        }
        Ok(())
    }

    async fn run_destination(&self, destination: Endpoint, mut wake: watch::Receiver<u64>, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = wake.changed() => if changed.is_err() { return },
            }
            match self.drain(destination).await {
                Ok(_) => backoff.reset(),
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(destination = destination.name(), error = %err, retry_in_ms = delay.as_millis() as u64, "outbox relay could not publish; will retry");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    // Whatever woke it meanwhile is served now.
                    wake.mark_changed();
                }
            }
        }
    }
}
