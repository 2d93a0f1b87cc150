//! [`Consumer::run`]: several batches in flight at once, so the round trips to the bus and to the
//! database overlap instead of taking turns. That matters most where a round trip is long: on
//! AWS a receive takes 10-20 ms, and a batch's transaction a few dozen database round trips.
//!
//! ```text
//! pollers (1..max) ──batch──> handling task per batch (one transaction) ──receipts──> delete (ten per call)
//!      └──────── a slot each, max in all: received and not yet handled ────────┘
//! ```
//!
//! - **Pollers** long-poll the queue. There is one while the queue is idle (three receives a
//!   minute at the 20 s wait); a receive that comes back full adds a poller, up to the consumer's
//!   `max_batches`, and one that comes back less than half full retires its poller, down to one.
//!   A poller takes a slot before it receives; the slot goes with the batch to its handling task
//!   and is freed when the batch is handled, so at most `max_batches` batches are received and not
//!   yet handled, however many pollers there are.
//! - **Handling**: each batch in a task of its own ([`Consumer::settle`], one transaction), kept
//!   invisible by its own heartbeat until it is handled. A message too slow for the batch is
//!   handled alone after its batch-mates commit. When the database fails, the task closes the
//!   pollers' gate and waits until the database answers: batches already in flight finish (each of
//!   their messages spends at most this one receive), and nothing new is received meanwhile.
//! - **Delete** collects the receipts of committed messages across batches and deletes them ten
//!   per call, waiting at most [`DELETE_LINGER`] for a call to fill, with up to `max_batches`
//!   calls in flight. A delete that is late only
//!   keeps a committed message invisible a little longer; one that never happens (a crash) makes
//!   it come back as a duplicate, which the processed-message table recognises.
//!
//! The same message in two batches at once (a redelivery) takes effect once: both transactions
//! insert its id into `processed_messages`, and the second waits for the first on the primary key
//! (PostgreSQL) or the database's one writer (SQLite), then sees it there.
//!
//! Stopping: pollers abandon a receive in flight (what it would have returned comes back after its
//! visibility timeout); batches in flight get [`Consumer::stop_limit`] to finish, after which they
//! are abandoned, their transactions rolled back, and their messages come back the same way; then
//! the delete stage deletes everything handed to it, and the consumer returns.

use super::{Consumer, Handler, Settled};
use crate::backoff::Backoff;
use crate::messaging::bus::{Bus, MAX_BATCH, Received, queue_name};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

/// Longest the delete stage waits for a call to fill up to ten receipts. At 100 messages a
/// second on a queue that fills most calls; at low load it costs nothing but a committed
/// message's staying invisible a little longer.
const DELETE_LINGER: Duration = Duration::from_millis(50);

/// Attempts at one delete call before its receipts are left to come back as duplicates.
const DELETE_ATTEMPTS: u32 = 4;

/// What the pollers and handling tasks of one running consumer share.
struct Lanes {
    /// One per batch received and not yet handled.
    slots: Arc<Semaphore>,
    pollers: AtomicUsize,
    max: usize,
    /// Closed (false) while the database does not answer.
    gate: watch::Sender<bool>,
    receipts: mpsc::UnboundedSender<Vec<String>>,
    /// A poller asks [`Consumer::run`] for one more poller here.
    more: mpsc::UnboundedSender<()>,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Cancelled when batches still in flight at the stop limit are given up.
    abandon: CancellationToken,
}

impl Lanes {
    /// Counts one more poller, unless there are `max` already.
    fn add_poller(&self) -> bool {
        self.pollers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.max).then_some(n + 1))
            .is_ok()
    }

    /// Counts one poller less, unless it is the last.
    fn retire_poller(&self) -> bool {
        self.pollers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n > 1).then_some(n - 1))
            .is_ok()
    }
}

/// A received batch on its way to being handled, kept invisible until then.
struct Held {
    messages: Vec<Received>,
    /// Dropped (and so stopped) before anyone else sets the messages' visibility, so that a
    /// late extension cannot undo it.
    heartbeat: AbortOnDropHandle<()>,
    _slot: OwnedSemaphorePermit,
}

impl<H: Handler> Consumer<H> {
    /// Polls until `stop` is cancelled (see the module's description). Returns once the batches in
    /// flight are handled (or abandoned at the stop limit) and their deletes are done.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let queue = queue_name(&self.queue_url).to_owned();
        if !self.read_settings(&stop).await {
            return Ok(());
        }
        tracing::info!(queue, max_batches = self.max_batches, "consumer started");
        let consumer = Arc::new(self);
        let (receipts, deletions) = mpsc::unbounded_channel();
        let (gate, _) = watch::channel(true);
        let (more, mut more_wanted) = mpsc::unbounded_channel();
        let lanes = Arc::new(Lanes {
            slots: Arc::new(Semaphore::new(consumer.max_batches)),
            pollers: AtomicUsize::new(1),
            max: consumer.max_batches,
            gate,
            receipts,
            more,
            tasks: TaskTracker::new(),
            stop: stop.clone(),
            abandon: CancellationToken::new(),
        });
        let deleter = tokio::spawn(consumer.clone().delete_stage(deletions));
        lanes.tasks.spawn(consumer.clone().poll(lanes.clone()));
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(()) = more_wanted.recv() => {
                    lanes.tasks.spawn(consumer.clone().poll(lanes.clone()));
                }
            }
        }
        lanes.tasks.close();
        if tokio::time::timeout(consumer.stop_limit(), lanes.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                queue,
                limit_ms = consumer.stop_limit().as_millis() as u64,
                "batches still being handled at the stop limit are abandoned; they come back after their visibility timeout"
            );
            lanes.abandon.cancel();
            lanes.tasks.wait().await;
        }
        // The last sender of receipts: the delete stage ends once it has deleted what it holds.
        drop(lanes);
        deleter.await?;
        tracing::info!(queue, "consumer stopped");
        Ok(())
    }

    /// How long batches in flight may take to finish once the consumer is told to stop.
    fn stop_limit(&self) -> Duration {
        self.handler_timeout
    }

    /// One poller: takes a slot, receives, hands the batch to a handling task; adds a poller when
    /// receives come back full, retires when they come back less than half full (not the last).
    async fn poll(self: Arc<Self>, lanes: Arc<Lanes>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut open = lanes.gate.subscribe();
        loop {
            let slot = tokio::select! {
                () = lanes.stop.cancelled() => return,
                slot = lanes.slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
            };
            tokio::select! {
                () = lanes.stop.cancelled() => return,
                opened = open.wait_for(|open| *open) => if opened.is_err() { return },
            }
            // A slot, an open gate and the stop signal can all be ready at once: no new receive
            // after the stop, whichever the selects above picked.
            if lanes.stop.is_cancelled() {
                return;
            }
            // `biased`: a receive that has already returned messages is handed on, never dropped
            // in favour of the stop signal.
            let received = tokio::select! {
                biased;
                received = self.bus.receive(&self.queue_url, self.wait_seconds) => received,
                () = lanes.stop.cancelled() => return,
            };
            match received {
                Ok(messages) => {
                    backoff.reset();
                    let count = messages.len();
                    if count == 0 {
                        self.count_receive(0);
                        drop(slot);
                    } else {
                        let held = self.hold(messages, slot).await;
                        lanes.tasks.spawn(self.clone().handle(held, lanes.clone()));
                    }
                    if count >= MAX_BATCH {
                        if lanes.add_poller() {
                            tracing::debug!(
                                pollers = lanes.pollers.load(Ordering::SeqCst),
                                "receives come back full; one more poller"
                            );
                            // Refused only once the consumer has stopped, when no poller is wanted.
                            let _ = lanes.more.send(());
                        }
                    } else if count < MAX_BATCH / 2 && lanes.retire_poller() {
                        return;
                    }
                }
                Err(err) => {
                    drop(slot);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "consumer cannot reach the bus; will retry");
                    tokio::select! {
                        () = lanes.stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Starts the heartbeat that keeps `messages` invisible until the batch is handled.
    async fn hold(&self, messages: Vec<Received>, slot: OwnedSemaphorePermit) -> Held {
        let receipts = messages.iter().map(|m| m.receipt_handle.clone()).collect();
        Held {
            heartbeat: self.heartbeat(receipts).await,
            messages,
            _slot: slot,
        }
    }

    async fn heartbeat(&self, receipts: Vec<String>) -> AbortOnDropHandle<()> {
        let timeout = self.settings().await.visibility_timeout;
        let (bus, queue_url) = (self.bus.clone(), self.queue_url.clone());
        let beat = tokio::spawn(async move { keep_invisible(&bus, &queue_url, &receipts, timeout).await });
        AbortOnDropHandle::new(beat)
    }

    /// Handles one batch (a task of its own), then its slow messages alone; gives up when the
    /// stop limit abandons it (its transaction rolls back, its messages come back later).
    async fn handle(self: Arc<Self>, held: Held, lanes: Arc<Lanes>) {
        let Held {
            messages,
            heartbeat,
            _slot,
        } = held;
        let work = async {
            let items = self.open(&messages);
            let (settled, slow) = self.settle(&items).await;
            drop(heartbeat);
            let still_held = slow.iter().map(|&i| items[i].message.receipt_handle.clone()).collect();
            let heartbeat = (!slow.is_empty()).then_some(self.heartbeat(still_held).await);
            self.finish(settled, &lanes).await;
            if let Some(heartbeat) = heartbeat {
                let settled = self.settle_alone(&items, &slow).await;
                drop(heartbeat);
                self.finish(settled, &lanes).await;
            }
        };
        tokio::select! {
            biased;
            () = lanes.abandon.cancelled() => {}
            () = work => {}
        }
    }

    /// Hands the committed receipts to the delete stage, sets the others' visibility, and when
    /// the database failed closes the gate until it answers again.
    async fn finish(&self, settled: Settled, lanes: &Lanes) {
        if !settled.delete.is_empty() {
            // The delete stage outlives every handling task; a send cannot fail while it runs.
            let _ = lanes.receipts.send(settled.delete);
        }
        self.reset_visibility(&settled.visibility).await;
        if settled.database_failed {
            // Receiving more now would only spend other messages' receive counts.
            lanes.gate.send_replace(false);
            if self.wait_for_database(&lanes.stop).await {
                lanes.gate.send_replace(true);
            }
        }
    }

    /// Gathers receipts into calls of ten and sends them, up to `max_batches` calls in flight (on
    /// AWS a call takes 10-20 ms: one at a time would cap a consumer at a few hundred messages a
    /// second); returns once every receipt handed to it has had its call.
    async fn delete_stage(self: Arc<Self>, mut deletions: mpsc::UnboundedReceiver<Vec<String>>) {
        let mut pending: VecDeque<String> = VecDeque::new();
        let mut calls = tokio::task::JoinSet::new();
        let mut open = true;
        while open || !pending.is_empty() {
            if pending.is_empty() {
                match deletions.recv().await {
                    Some(receipts) => pending.extend(receipts),
                    None => break,
                }
            }
            let linger = tokio::time::Instant::now() + DELETE_LINGER;
            while open && pending.len() < MAX_BATCH {
                match tokio::time::timeout_at(linger, deletions.recv()).await {
                    Ok(Some(receipts)) => pending.extend(receipts),
                    // Stopping: delete what is left without waiting.
                    Ok(None) => open = false,
                    Err(_) => break,
                }
            }
            while calls.len() >= self.max_batches {
                calls.join_next().await;
            }
            let call: Vec<String> = pending.drain(..pending.len().min(MAX_BATCH)).collect();
            let consumer = self.clone();
            calls.spawn(async move { consumer.delete(&call).await });
        }
        while calls.join_next().await.is_some() {}
    }

    /// One delete call, retried a few times with back-off. Receipts it cannot delete come back
    /// after their visibility timeout and are recognised as duplicates.
    async fn delete(&self, receipts: &[String]) {
        let receipts: Vec<&str> = receipts.iter().map(String::as_str).collect();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        for attempt in 1..=DELETE_ATTEMPTS {
            match self.bus.delete_batch(&self.queue_url, &receipts).await {
                Ok(()) => return,
                Err(err) if attempt == DELETE_ATTEMPTS => {
                    tracing::warn!(error = %err, messages = receipts.len(), "cannot delete handled messages; they will come back and be recognised as duplicates");
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "cannot delete handled messages; will retry");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Extends the visibility of the held messages every third of the visibility timeout (room for
/// a slow extension call). Never returns; the caller drops it when the batch is done.
async fn keep_invisible(bus: &Bus, queue_url: &str, held: &[String], timeout: i32) {
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
