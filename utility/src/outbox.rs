//! The transactional outbox: a message is written to the `outbox` table in the same database
//! transaction as the state change that causes it, and a relay publishes pending rows with the
//! batch APIs afterwards. A crash between commit and publish therefore delays a message but never
//! loses it; a crash between publish and marking the row sent publishes it twice, which the
//! consumers' processed-message check absorbs.

use crate::bus::{Bus, Outgoing};
use crate::envelope::Envelope;
use crate::service::Backoff;
use crate::topology::{Endpoint, Topology};
use sqlx::{AnyConnection, AnyPool, Row};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a stopping relay may spend on its last flush (the bus may be the thing that is down).
const FINAL_FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// Rows read per relay round.
const PAGE: i64 = 100;

/// Writes `envelope` for `destination` on the caller's transaction.
pub async fn enqueue(conn: &mut AnyConnection, destination: Endpoint, envelope: &Envelope) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (id, destination, message_type, correlation_id, body, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(envelope.message_id.to_string())
    .bind(destination.name())
    .bind(envelope.type_name())
    .bind(envelope.correlation_id.to_string())
    .bind(envelope.to_json())
    .bind(crate::now())
    .execute(conn)
    .await?;
    Ok(())
}

/// Number of rows not yet published (readiness, tests, operators).
pub async fn pending(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE sent_at IS NULL")
        .fetch_one(pool)
        .await?
        .try_get("n")
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error("{unsent} outbox messages were not accepted by the bus")]
    Unsent { unsent: usize },
    #[error("outbox row {id} names unknown destination `{destination}`")]
    UnknownDestination { id: String, destination: String },
    #[error(transparent)]
    Topology(#[from] crate::topology::TopologyError),
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
}

impl Relay {
    pub fn new(pool: AnyPool, bus: Bus, topology: Arc<Topology>, interval: Duration) -> Self {
        Self {
            pool,
            bus,
            topology,
            signal: Arc::new(Notify::new()),
            interval,
        }
    }

    /// Hand this to whoever commits outbox rows; `notify_one` wakes the relay.
    pub fn signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }

    /// Publishes everything pending now. Returns how many messages went out.
    #[tracing::instrument(skip_all, err)]
    pub async fn flush(&self) -> Result<usize, RelayError> {
        let mut published = 0;
        loop {
            let rows = sqlx::query(
                "SELECT id, destination, message_type, correlation_id, body FROM outbox
                 WHERE sent_at IS NULL ORDER BY created_at, id LIMIT $1",
            )
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(published);
            }
            let mut by_destination: BTreeMap<String, Vec<Outgoing>> = BTreeMap::new();
            for row in &rows {
                by_destination
                    .entry(row.try_get("destination")?)
                    .or_default()
                    .push(Outgoing {
                        id: row.try_get("id")?,
                        message_type: row.try_get("message_type")?,
                        correlation_id: row.try_get("correlation_id")?,
                        body: row.try_get("body")?,
                    });
            }
            let mut sent = Vec::with_capacity(rows.len());
            for (destination, messages) in &by_destination {
                let endpoint = Endpoint::from_name(destination).ok_or_else(|| RelayError::UnknownDestination {
                    id: messages[0].id.clone(),
                    destination: destination.clone(),
                })?;
                let address = self.topology.address(endpoint)?;
                let accepted = if endpoint.is_topic() {
                    self.bus.publish_batch(address, messages).await?
                } else {
                    self.bus.send_batch(address, messages).await?
                };
                sent.extend(accepted);
            }
            self.mark_sent(&sent).await?;
            published += sent.len();
            if sent.len() < rows.len() {
                return Err(RelayError::Unsent {
                    unsent: rows.len() - sent.len(),
                });
            }
        }
    }

    async fn mark_sent(&self, ids: &[String]) -> Result<(), sqlx::Error> {
        let now = crate::now();
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query("UPDATE outbox SET sent_at = $1 WHERE id = $2")
                .bind(&now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
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
