//! The asking half of request/reply over the bus: the operator's customer and points lookups.
//!
//! A lookup sends a query (`GetCustomer`, `GetPoints`) straight to the answering service's
//! queries queue and waits, at most `LOOKUP_TIMEOUT_MS`, for the reply whose correlation id is
//! the query's message id. Every gateway instance long-polls the one replies queue they share,
//! so the reply may reach any of them:
//!
//! - the instance that asked hands it to the waiting request at once (in memory);
//! - another instance stores it in the read model's database (`lookup_replies`), where the asking
//!   instance finds it the way live updates find new history ([`crate::live`]): one poller per
//!   instance, running only while a lookup waits, one primary-key query per `LOOKUP_POLL_MS` for
//!   all of them;
//! - a reply past its `reply_by` (the asker has answered 504 already, or was killed) is deleted
//!   and counted (`saga_lookup_replies_late_total`), never dead-lettered. A stored reply nobody
//!   collected is swept once its `reply_by` has passed, and counted the same way.
//!
//! No instance creates a queue, so nothing is left behind by an instance that dies: its pending
//! replies are ordinary rows that expire. Why not a queue per instance: ARCHITECTURE.md and
//! decision 0034.

use prometheus_client::metrics::counter::Counter;
use sqlx::AnyPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use utility::messaging::bus::{Bus, Outgoing, Received};
use utility::messaging::envelope::Envelope;
use utility::messaging::lookup::{self, Disposition};
use utility::messaging::message::{GetCustomer, GetPoints, Kind, Message};
use utility::messaging::topology::Topology;
use utility::messaging::{Endpoint, Participant};
use utility::observe::metrics::Metrics;
use uuid::Uuid;

/// Why a lookup has no answer.
#[derive(Debug)]
pub enum LookupError {
    /// No reply within the bound.
    Timeout(Duration),
    /// The query could not be sent (the reason, for the log).
    Send(String),
    /// The gateway is stopping.
    Closed,
}

#[derive(Clone)]
pub struct Lookups {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    topology: Arc<Topology>,
    pool: AnyPool,
    timeout: Duration,
    poll: Duration,
    /// Requests of this instance waiting for a reply, by query id.
    waiting: Mutex<HashMap<Uuid, oneshot::Sender<Envelope>>>,
    someone_waits: Notify,
    poller: std::sync::Once,
    late: Counter,
    closed: CancellationToken,
}

impl Lookups {
    pub fn new(
        bus: Bus,
        topology: Arc<Topology>,
        pool: AnyPool,
        timeout: Duration,
        poll: Duration,
        metrics: &Metrics,
        closed: CancellationToken,
    ) -> Self {
        let late = Counter::default();
        metrics.register(
            "lookup_replies_late",
            "Lookup replies that came after their asker stopped waiting, dropped",
            late.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                bus,
                topology,
                pool,
                timeout,
                poll,
                waiting: Mutex::new(HashMap::new()),
                someone_waits: Notify::new(),
                poller: std::sync::Once::new(),
                late,
                closed,
            }),
        }
    }

    /// The customer-api's record of `customer_id` (`None`: no such customer).
    pub async fn customer(&self, customer_id: Uuid) -> Result<Option<serde_json::Value>, LookupError> {
        let reply_by = self.reply_by();
        let reply = self
            .ask(Message::GetCustomer(GetCustomer { customer_id, reply_by }))
            .await?;
        match reply.message {
            Message::CustomerReply(reply) => Ok(reply.customer.map(|c| serde_json::to_value(c).unwrap_or_default())),
            other => Err(LookupError::Send(format!("unexpected reply `{}`", other.type_name()))),
        }
    }

    /// The transaction-api's balance and ledger of `customer_id`.
    pub async fn points(&self, customer_id: Uuid) -> Result<serde_json::Value, LookupError> {
        let reply_by = self.reply_by();
        let reply = self
            .ask(Message::GetPoints(GetPoints { customer_id, reply_by }))
            .await?;
        match reply.message {
            Message::PointsReply(reply) => Ok(serde_json::to_value(reply.points).unwrap_or_default()),
            other => Err(LookupError::Send(format!("unexpected reply `{}`", other.type_name()))),
        }
    }

    fn reply_by(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + chrono::Duration::from_std(self.inner.timeout).unwrap_or(chrono::Duration::zero())
    }

    /// Sends `query` and waits for its reply, until its `reply_by`.
    async fn ask(&self, query: Message) -> Result<Envelope, LookupError> {
        let envelope = Envelope::new(query, Uuid::nil());
        // A query is its own correlation: the reply carries the query's id.
        let envelope = Envelope {
            correlation_id: envelope.message_id,
            ..envelope
        };
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter::register(&self.inner, envelope.message_id, tx);
        let address = self
            .inner
            .topology
            .address(envelope.message.destination())
            .map_err(|e| LookupError::Send(e.to_string()))?;
        let outcome = self
            .inner
            .bus
            .send_batch(address, &[Outgoing::from(&envelope)])
            .await
            .map_err(|e| LookupError::Send(e.to_string()))?;
        if outcome.sent.is_empty() {
            let reason = outcome.failed.first().map(|f| f.message.clone()).unwrap_or_default();
            return Err(LookupError::Send(reason));
        }
        let result = tokio::select! {
            reply = rx => reply.map_err(|_| LookupError::Closed),
            () = tokio::time::sleep(self.inner.timeout) => Err(LookupError::Timeout(self.inner.timeout)),
            () = self.inner.closed.cancelled() => Err(LookupError::Closed),
        };
        drop(waiter);
        result
    }

    /// Drains the replies queue until `shutdown` (a task of the gateway).
    pub async fn receive(self, shutdown: CancellationToken, wait_seconds: i32) -> anyhow::Result<()> {
        let queue = Participant::Gateway.lookups();
        let queue_url = self.inner.topology.address(queue)?.to_owned();
        let this = self.clone();
        let sweeper = tokio::spawn(sweep(self.inner.clone(), shutdown.clone()));
        lookup::drain(
            self.inner.bus.clone(),
            queue_url,
            wait_seconds,
            shutdown,
            move |batch| {
                let this = this.clone();
                async move { this.settle(batch).await }
            },
        )
        .await;
        sweeper.abort();
        Ok(())
    }

    async fn settle(&self, batch: Vec<Received>) -> Vec<(String, Disposition)> {
        let queue = Participant::Gateway.lookups();
        let mut settled = Vec::with_capacity(batch.len());
        for received in batch {
            let disposition = match lookup::parse(&received, queue, Kind::Reply) {
                None => Disposition::Refused,
                Some(reply) => self.deliver(reply, &received.body).await,
            };
            settled.push((received.receipt_handle, disposition));
        }
        settled
    }

    /// Hands `reply` to its waiter here, or stores it for the instance that waits, or drops it
    /// as late.
    async fn deliver(&self, reply: Envelope, body: &str) -> Disposition {
        let query_id = reply.correlation_id;
        let waiter = self.inner.lock().remove(&query_id);
        if let Some(waiter) = waiter {
            // The request may have given up a moment ago; then it is late.
            if waiter.send(reply).is_err() {
                self.inner.late.inc();
            }
            return Disposition::Done;
        }
        let Some(reply_by) = reply.message.reply_by() else {
            return Disposition::Refused;
        };
        if reply_by <= chrono::Utc::now() {
            tracing::debug!(%query_id, "late lookup reply dropped");
            self.inner.late.inc();
            return Disposition::Done;
        }
        match crate::store::store_lookup_reply(&self.inner.pool, query_id, body, reply_by).await {
            Ok(()) => Disposition::Done,
            Err(err) => {
                tracing::warn!(error = %err, %query_id, "cannot store a lookup reply; it comes back");
                Disposition::Retry
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<Envelope>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A waiting request's place; leaving it (answered, timed out, or the client gone) frees it.
struct Waiter {
    inner: Arc<Inner>,
    query_id: Uuid,
}

impl Waiter {
    fn register(inner: &Arc<Inner>, query_id: Uuid, tx: oneshot::Sender<Envelope>) -> Self {
        inner.lock().insert(query_id, tx);
        let poller = inner.clone();
        inner.poller.call_once(|| {
            tokio::spawn(poll(poller));
        });
        inner.someone_waits.notify_one();
        Self {
            inner: inner.clone(),
            query_id,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.inner.lock().remove(&self.query_id);
    }
}

/// While lookups wait here, every `poll` interval: the replies other instances stored for them.
async fn poll(inner: Arc<Inner>) {
    loop {
        let ids: Vec<Uuid> = inner.lock().keys().copied().collect();
        if ids.is_empty() {
            tokio::select! {
                () = inner.closed.cancelled() => return,
                () = inner.someone_waits.notified() => continue,
            }
        }
        tokio::select! {
            () = inner.closed.cancelled() => return,
            () = tokio::time::sleep(inner.poll) => {}
        }
        let found = match crate::store::take_lookup_replies(&inner.pool, &ids).await {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read stored lookup replies; will try again");
                continue;
            }
        };
        for (query_id, body) in found {
            let Ok(reply) = Envelope::parse(&body) else { continue };
            let waiter = inner.lock().remove(&query_id);
            if waiter.is_none_or(|waiter| waiter.send(reply).is_err()) {
                inner.late.inc();
            }
        }
    }
}

/// Deletes stored replies nobody collected (their asker timed out or died), counting them late.
async fn sweep(inner: Arc<Inner>, shutdown: CancellationToken) {
    let every = inner.timeout.max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match crate::store::sweep_lookup_replies(&inner.pool).await {
            Ok(0) => {}
            Ok(swept) => {
                inner.late.inc_by(swept);
            }
            Err(err) => tracing::warn!(error = %err, "cannot sweep stored lookup replies"),
        }
    }
}

/// The queues a lookup uses, for the gateway's [`utility::runtime::Service::ENDPOINTS`].
pub const ENDPOINTS: [Endpoint; 3] = [
    Endpoint::GatewayReplies,
    Endpoint::CustomerQueries,
    Endpoint::TransactionQueries,
];
