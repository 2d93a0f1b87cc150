//! Request/reply over the bus: the queues that carry lookups, and the answering half.
//!
//! A query ([`super::message::Kind::Query`]) asks a service for what it holds; the service reads
//! the answer and sends the reply straight to the asker's reply queue, the one the reply type's
//! route declares ([`super::message::MessageType::route`]). A reply address carried in the
//! query would let whoever can send a query direct a service's answers, names and e-mail
//! addresses included, to any queue; the declared route lets IAM allow each service exactly one
//! reply queue. Nothing here writes to a database: a lookup changes no state, so it needs no
//! outbox and no processed-message record, and answering a query twice does no harm.
//!
//! Both ends drain their queue with [`drain`]: a long poll, each batch sorted message by
//! message, then one delete call for what is done and one visibility change for what is refused
//! (malformed, or of a type that does not belong on the queue), which goes the dead-letter way
//! after `maxReceiveCount` receives, as on the saga's queues. A query whose `reply_by` has
//! passed is deleted unanswered: nobody waits for it any more, and a service coming back after
//! an outage does not answer a backlog of lookups nobody reads.

use super::bus::{Bus, Outgoing, Received, queue_name};
use super::endpoint::Endpoint;
use super::envelope::Envelope;
use super::message::{Kind, Message};
use super::topology::Topology;
use crate::backoff::Backoff;
use sqlx::AnyPool;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What became of one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Handled, or dropped on purpose (late, expired): deleted.
    Done,
    /// Cannot be handled, ever: made visible again at once, so the redrive policy moves it to
    /// the dead-letter queue after `maxReceiveCount` receives.
    Refused,
    /// Could not be handled now (the database, the bus): left to come back after the queue's
    /// visibility timeout.
    Retry,
}

/// Parses `received` as a message of `kind` that belongs on `queue` (its body and `type`
/// attribute agreeing, as on the saga's queues), or logs why not.
pub fn parse(received: &Received, queue: Endpoint, kind: Kind) -> Option<Envelope> {
    let envelope = match Envelope::parse_received(&received.body, received.type_attribute.as_deref()) {
        Ok(envelope) => envelope,
        Err(err) => {
            tracing::warn!(
                queue = queue.name(),
                sqs_message_id = %received.sqs_message_id,
                receive_count = received.receive_count,
                reason = %err,
                "malformed message; it goes to the dead-letter queue after its last receive"
            );
            return None;
        }
    };
    let route = envelope.message.message_type().route();
    if route.kind != kind || route.destination != queue {
        tracing::warn!(
            queue = queue.name(),
            sqs_message_id = %received.sqs_message_id,
            receive_count = received.receive_count,
            r#type = envelope.type_name(),
            "message does not belong on this queue; it goes to the dead-letter queue after its last receive"
        );
        return None;
    }
    Some(envelope)
}

/// Receives from `queue_url` until `shutdown`, handing each batch to `sort` and settling each
/// message as it says. Bus failures back off and try again; nothing here ends the service.
pub async fn drain<F, Fut>(bus: Bus, queue_url: String, wait_seconds: i32, shutdown: CancellationToken, sort: F)
where
    F: Fn(Vec<Received>) -> Fut,
    Fut: Future<Output = Vec<(String, Disposition)>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = bus.receive(&queue_url, wait_seconds) => received,
        };
        let batch = match received {
            Ok(batch) => {
                backoff.reset();
                batch
            }
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(queue = queue_name(&queue_url), error = %err, delay_ms = delay.as_millis() as u64, "receive failed; will try again");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if batch.is_empty() {
            continue;
        }
        let settled = sort(batch).await;
        // `sort` may have woken the requests waiting for these messages (the gateway's lookups).
        // Tokio runs a task woken from a worker on that worker, after the task that woke it
        // yields: without this, each waiting request would wait for the deletes below to be
        // built, signed and sent before it could answer.
        tokio::task::yield_now().await;
        let done: Vec<&str> = settled
            .iter()
            .filter(|(_, d)| *d == Disposition::Done)
            .map(|(r, _)| r.as_str())
            .collect();
        let refused: Vec<(&str, i32)> = settled
            .iter()
            .filter(|(_, d)| *d == Disposition::Refused)
            .map(|(r, _)| (r.as_str(), 0))
            .collect();
        if !done.is_empty()
            && let Err(err) = bus.delete_batch(&queue_url, &done).await
        {
            // They come back after the visibility timeout and are settled again.
            tracing::warn!(queue = queue_name(&queue_url), error = %err, "delete failed");
        }
        if !refused.is_empty()
            && let Err(err) = bus.change_visibility_batch(&queue_url, &refused).await
        {
            tracing::warn!(queue = queue_name(&queue_url), error = %err, "visibility change failed");
        }
    }
}

/// What a service answers: the reply to each query type it receives, read from its database.
pub trait Answer: Send + Sync + 'static {
    /// The reply to `query`; `None` when this service does not answer that type.
    fn answer(
        &self,
        pool: &AnyPool,
        query: &Message,
    ) -> impl Future<Output = Result<Option<Message>, sqlx::Error>> + Send;
}

/// A service's answering loop over its queries queue.
pub struct Responder<A> {
    pub bus: Bus,
    pub topology: Arc<Topology>,
    /// The queue it answers from (its [`super::Participant::lookups`]).
    pub queue: Endpoint,
    /// Where it reads the answers (the HTTP pool, which no longer serves an API of its own).
    pub pool: AnyPool,
    pub answer: A,
    pub wait_seconds: i32,
}

impl<A: Answer> Responder<A> {
    /// Answers until `shutdown`. A query that is being answered when it comes is answered (the
    /// reply is sent before the query is deleted), so a stop loses no lookup that was read.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let queue_url = self.topology.address(self.queue)?.to_owned();
        let this = Arc::new(self);
        let sorter = this.clone();
        drain(this.bus.clone(), queue_url, this.wait_seconds, shutdown, move |batch| {
            let this = sorter.clone();
            async move { this.answer_batch(batch).await }
        })
        .await;
        Ok(())
    }

    async fn answer_batch(&self, batch: Vec<Received>) -> Vec<(String, Disposition)> {
        let mut settled = Vec::with_capacity(batch.len());
        // Replies by destination, each with the receipt of its query.
        let mut replies: HashMap<Endpoint, Vec<(Outgoing, String)>> = HashMap::new();
        for received in batch {
            let Some(query) = parse(&received, self.queue, Kind::Query) else {
                settled.push((received.receipt_handle, Disposition::Refused));
                continue;
            };
            if query.message.reply_by().is_none_or(|by| by < chrono::Utc::now()) {
                tracing::debug!(r#type = query.type_name(), query_id = %query.message_id, "query expired unanswered");
                settled.push((received.receipt_handle, Disposition::Done));
                continue;
            }
            match self.answer.answer(&self.pool, &query.message).await {
                Ok(Some(reply)) => {
                    let reply = query.reply(reply);
                    replies
                        .entry(reply.message.destination())
                        .or_default()
                        .push((Outgoing::from(&reply), received.receipt_handle));
                }
                Ok(None) => {
                    tracing::warn!(r#type = query.type_name(), "this service does not answer that query");
                    settled.push((received.receipt_handle, Disposition::Refused));
                }
                Err(err) => {
                    tracing::warn!(r#type = query.type_name(), error = %err, "cannot read the answer; the query comes back");
                    settled.push((received.receipt_handle, Disposition::Retry));
                }
            }
        }
        for (destination, pending) in replies {
            let (outgoing, receipts): (Vec<Outgoing>, Vec<String>) = pending.into_iter().unzip();
            let sent = match self.topology.address(destination) {
                Ok(address) => match self.bus.send_batch(address, &outgoing).await {
                    Ok(outcome) => outcome.sent,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot send replies; their queries come back");
                        Vec::new()
                    }
                },
                Err(err) => {
                    tracing::warn!(error = %err, "no address for replies");
                    Vec::new()
                }
            };
            for (message, receipt) in outgoing.iter().zip(receipts) {
                let disposition = if sent.contains(&message.id) {
                    Disposition::Done
                } else {
                    Disposition::Retry
                };
                settled.push((receipt, disposition));
            }
        }
        settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messaging::message::GetPoints;

    fn received(body: String, type_attribute: Option<&str>) -> Received {
        Received {
            sqs_message_id: "m-1".to_owned(),
            receipt_handle: "r-1".to_owned(),
            body,
            receive_count: 1,
            traceparent: None,
            type_attribute: type_attribute.map(str::to_owned),
        }
    }

    #[test]
    fn a_query_is_read_only_where_it_belongs_and_under_its_own_name() {
        let query = Envelope::new(
            Message::GetPoints(GetPoints {
                customer_id: uuid::Uuid::now_v7(),
                reply_by: chrono::Utc::now(),
            }),
            uuid::Uuid::now_v7(),
        );
        let queue = query.message.destination();
        let body = query.to_json();
        assert!(parse(&received(body.clone(), Some("GetPoints")), queue, Kind::Query).is_some());
        assert!(parse(&received(body.clone(), None), queue, Kind::Query).is_some());
        // A type attribute naming another message: refused, as on the saga's queues.
        assert!(parse(&received(body.clone(), Some("GetCustomer")), queue, Kind::Query).is_none());
        // Not a query, or not this queue's.
        assert!(parse(&received(body.clone(), Some("GetPoints")), queue, Kind::Reply).is_none());
        assert!(
            parse(
                &received(body, Some("GetPoints")),
                Endpoint::CustomerCommands,
                Kind::Query
            )
            .is_none()
        );
    }
}
