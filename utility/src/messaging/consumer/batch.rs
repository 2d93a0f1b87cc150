//! A received batch's transaction. The well-formed messages share one: their ids go into
//! `processed_messages` in one statement (those already there are duplicates, applied once
//! before), then each new message's handler runs after a savepoint of its own, so one that fails
//! is rolled back alone (its id is taken out again) and the others commit together. On
//! PostgreSQL a batch of ten new messages costs `BEGIN`, one insert, ten savepoints, the handlers'
//! statements and `COMMIT`; savepoints are never released, since the commit ends them all.
//!
//! Two ways a batch's transaction is given up, nothing of it committed:
//! - a message's handler runs past the in-batch budget ([`Consumer::in_batch_budget`]): it is
//!   taken out, the others are applied again as a batch without it, and it is handled alone
//!   afterwards with the full time limit, so a slow message does not hold its batch-mates (a
//!   message alone in its batch has the full limit at once, and is abandoned past it);
//! - the transaction itself fails (it cannot begin, a savepoint is lost, the commit fails): the
//!   messages are handled again one transaction each, and once the database has failed the rest
//!   are handed back untried instead of each waiting out the pool's acquire timeout.

use super::{Consumer, Handler, HandlerError, Item, Outcome};
use crate::messaging::envelope::Envelope;
use sqlx::AnyConnection;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Why a batch's transaction was given up.
enum Broken {
    /// The message at this index ran past the in-batch budget.
    Slow(usize),
    /// The transaction could not be carried through.
    Transaction(&'static str),
}

/// The outcome of the message at an index, and how long its handling took.
pub(super) type Applied = (usize, (Outcome, Duration));

impl<H: Handler> Consumer<H> {
    /// How long one message may run inside a batch before it is handled alone instead.
    pub(super) fn in_batch_budget(&self) -> Duration {
        (self.handler_timeout / 5).max(Duration::from_millis(100))
    }

    /// Handles the batch's well-formed messages (`indexes` into `items`) in one transaction.
    /// Returns the outcomes of those that were decided, and the indexes of those too slow for the
    /// batch, which [`Consumer::apply_alone`] handles next.
    pub(super) async fn handle_batch(&self, items: &[Item<'_>], indexes: &[usize]) -> (Vec<Applied>, Vec<usize>) {
        let mut pending: Vec<usize> = indexes.to_vec();
        let mut slow = Vec::new();
        loop {
            match self.apply_batch(items, &pending).await {
                Ok(applied) => return (applied, slow),
                Err(Broken::Slow(i)) => {
                    items[i].span.in_scope(|| {
                        tracing::warn!(
                            budget_ms = self.in_batch_budget().as_millis() as u64,
                            "message slower than the batch allows; its batch-mates go on without it, it is handled alone"
                        )
                    });
                    slow.push(i);
                    pending.retain(|&j| j != i);
                }
                Err(Broken::Transaction(reason)) => {
                    tracing::warn!(
                        reason,
                        messages = pending.len(),
                        "batch transaction abandoned; handling its messages one transaction each"
                    );
                    let mut applied = Vec::with_capacity(pending.len());
                    for i in pending {
                        let failed = applied
                            .iter()
                            .any(|(_, (o, _))| matches!(o, Outcome::DatabaseFailed(_) | Outcome::TimedOut));
                        let outcome = if failed {
                            let untried = "not tried: the database failed".to_owned();
                            (Outcome::DatabaseFailed(untried), Duration::ZERO)
                        } else {
                            self.apply_alone(&items[i]).await
                        };
                        applied.push((i, outcome));
                    }
                    return (applied, slow);
                }
            }
        }
    }

    /// The messages at `indexes` in one transaction (see the module's description).
    async fn apply_batch(&self, items: &[Item<'_>], indexes: &[usize]) -> Result<Vec<Applied>, Broken> {
        let envelopes: Vec<(usize, &Envelope)> = indexes
            .iter()
            .filter_map(|&i| Some((i, items[i].envelope.as_ref().ok()?)))
            .collect();
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        let limit = self.handler_timeout;
        let mut tx = match tokio::time::timeout(limit, self.pool.begin()).await {
            Ok(Ok(tx)) => tx,
            _ => return Err(Broken::Transaction("cannot begin")),
        };
        let all: Vec<&Envelope> = envelopes.iter().map(|(_, e)| *e).collect();
        let mut fresh = match tokio::time::timeout(limit, record(&mut tx, &all)).await {
            Ok(Ok(fresh)) => fresh,
            _ => return Err(Broken::Transaction("cannot record the batch's message ids")),
        };
        // Alone in its batch, a message has no batch-mates to hold: it gets the full limit.
        let budget = if envelopes.len() == 1 {
            limit
        } else {
            self.in_batch_budget()
        };
        let alone = envelopes.len() == 1;
        let mut applied = Vec::with_capacity(envelopes.len());
        let mut undo = Vec::new();
        for (n, (i, envelope)) in envelopes.into_iter().enumerate() {
            let id = envelope.message_id.to_string();
            // Taken out of the set when applied, so a second copy in the same batch is a duplicate.
            if !fresh.remove(&id) {
                applied.push((i, (Outcome::Duplicate, Duration::ZERO)));
                continue;
            }
            let started = Instant::now();
            let savepoint = format!("message_{n}");
            let step = async {
                sqlx::query(&format!("SAVEPOINT {savepoint}")).execute(&mut *tx).await?;
                match self.handler.handle(&mut tx, envelope).await {
                    Ok(after) => Ok(Outcome::Handled(after)),
                    Err(err) => {
                        sqlx::query(&format!("ROLLBACK TO SAVEPOINT {savepoint}"))
                            .execute(&mut *tx)
                            .await?;
                        Ok::<_, sqlx::Error>(Outcome::from(err))
                    }
                }
            };
            match tokio::time::timeout(budget, step.instrument(items[i].span.clone())).await {
                Ok(Ok(outcome)) => {
                    if !matches!(outcome, Outcome::Handled(_)) {
                        undo.push(id);
                    }
                    applied.push((i, (outcome, started.elapsed())));
                }
                Ok(Err(_)) => return Err(Broken::Transaction("savepoint lost")),
                // Past the full limit: abandoned with its transaction, nothing of it committed.
                Err(_) if alone => return Ok(vec![(i, (Outcome::TimedOut, started.elapsed()))]),
                Err(_) => return Err(Broken::Slow(i)),
            }
        }
        let finish = async {
            forget(&mut tx, &undo).await?;
            tx.commit().await
        };
        match tokio::time::timeout(limit, finish).await {
            Ok(Ok(())) => Ok(applied),
            _ => Err(Broken::Transaction("commit failed")),
        }
    }

    /// One message in a transaction of its own, with the full time limit.
    pub(super) async fn apply_alone(&self, item: &Item<'_>) -> (Outcome, Duration) {
        let envelope = match &item.envelope {
            Ok(envelope) => envelope,
            Err(err) => return (Outcome::Malformed(err.to_string()), Duration::ZERO),
        };
        let started = Instant::now();
        let applied = async {
            let mut tx = self.pool.begin().await?;
            if record(&mut tx, &[envelope]).await?.is_empty() {
                return Ok(Outcome::Duplicate);
            }
            let after = self.handler.handle(&mut tx, envelope).await?;
            tx.commit().await?;
            Ok::<_, HandlerError>(Outcome::Handled(after))
        };
        let outcome = match tokio::time::timeout(self.handler_timeout, applied.instrument(item.span.clone())).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(err)) => Outcome::from(err),
            Err(_) => Outcome::TimedOut,
        };
        (outcome, started.elapsed())
    }
}

/// Records the envelopes' message ids as processed, in one statement; returns the ids that were
/// new (the others were applied before).
async fn record(conn: &mut AnyConnection, envelopes: &[&Envelope]) -> Result<HashSet<String>, sqlx::Error> {
    let rows: Vec<String> = (0..envelopes.len())
        .map(|n| format!("(${}, ${}, ${}, ${})", 4 * n + 1, 4 * n + 2, 4 * n + 3, 4 * n + 4))
        .collect();
    let sql = format!(
        "INSERT INTO processed_messages (message_id, message_type, correlation_id, processed_at) VALUES {}
         ON CONFLICT DO NOTHING RETURNING message_id",
        rows.join(", ")
    );
    let now = crate::storage::now();
    let mut query = sqlx::query_scalar(&sql);
    for envelope in envelopes {
        query = query
            .bind(envelope.message_id.to_string())
            .bind(envelope.type_name())
            .bind(envelope.correlation_id.to_string())
            .bind(now.clone());
    }
    Ok(query.fetch_all(conn).await?.into_iter().collect())
}

/// Takes out again the ids of messages whose handling was rolled back, so they are applied when
/// they come back.
async fn forget(conn: &mut AnyConnection, ids: &[String]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
    let sql = format!(
        "DELETE FROM processed_messages WHERE message_id IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(id);
    }
    query.execute(conn).await?;
    Ok(())
}
