//! [`Consumer::run`]: the consumer as three stages that overlap, so the bus and the database work
//! at the same time instead of taking turns.
//!
//! ```text
//! receive ──(one batch ahead)──> handle (one transaction) ──(receipts)──> delete (ten per call)
//! ```
//!
//! - **Receive** asks for the next batch while the current one is handled and committed, and
//!   holds at most one batch ahead: it does not receive again until the handling stage has taken
//!   that one. From its receive on, a batch is kept invisible by a heartbeat of its own until it
//!   is handled, so waiting its turn costs it nothing.
//! - **Handle** is [`Consumer::settle`]: one transaction per batch, a savepoint per message. When
//!   the database fails it closes the gate of the receive stage and waits until the database
//!   answers; a batch already received waits invisible meanwhile and is handled once it does, so
//!   an outage still costs a message one receive.
//! - **Delete** collects the receipts of committed messages across batches and deletes them ten
//!   per call, waiting at most [`DELETE_LINGER`] for a call to fill. A delete that is late only
//!   keeps a committed message invisible a little longer; one that never happens (a crash) makes
//!   it come back as a duplicate, which the processed-message table recognises.
//!
//! Stopping: the receive stage abandons a receive in flight; the handling stage finishes what it
//! holds and what is queued for it (or, when the database is down, makes it visible again at
//! once); the delete stage deletes everything handed to it, then the consumer returns.

use super::{Consumer, Handler, keep_invisible};
use crate::backoff::Backoff;
use crate::messaging::bus::{MAX_BATCH, Received, queue_name};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Longest the delete stage waits for a call to fill up to ten receipts. At 100 messages a
/// second on a queue that fills most calls; at low load it costs nothing but a committed
/// message's staying invisible a little longer.
const DELETE_LINGER: Duration = Duration::from_millis(50);

/// Attempts at one delete call before its receipts are left to come back as duplicates.
const DELETE_ATTEMPTS: u32 = 4;

/// A received batch on its way to the handling stage, kept invisible until it is handled.
struct Held {
    messages: Vec<Received>,
    /// Dropped (and so stopped) before anyone else sets the messages' visibility, so that a
    /// late extension cannot undo it.
    heartbeat: AbortOnDropHandle<()>,
}

impl<H: Handler> Consumer<H> {
    /// Polls until `stop` is cancelled (see the module's description of the stages). A receive
    /// in flight when `stop` fires is abandoned (any messages it was about to return reappear
    /// after their visibility timeout); batches already received are finished and deleted
    /// before returning.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(queue = queue_name(&self.queue_url), "consumer started");
        let (batches, inbox) = mpsc::channel(1);
        let (receipts, deletions) = mpsc::unbounded_channel();
        let (gate, open) = watch::channel(true);
        tokio::join!(
            self.receive_stage(batches, open, &stop),
            self.handle_stage(inbox, receipts, gate, &stop),
            self.delete_stage(deletions),
        );
        tracing::info!(queue = queue_name(&self.queue_url), "consumer stopped");
        Ok(())
    }

    async fn receive_stage(
        &self,
        batches: mpsc::Sender<Held>,
        mut open: watch::Receiver<bool>,
        stop: &CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            // A free place means the handling stage has taken the batch before this one.
            let place = tokio::select! {
                () = stop.cancelled() => return,
                place = batches.reserve() => match place {
                    Ok(place) => place,
                    Err(_) => return,
                },
            };
            // Closed while the database does not answer.
            tokio::select! {
                () = stop.cancelled() => return,
                opened = open.wait_for(|open| *open) => if opened.is_err() { return },
            }
            // A free place, an open gate and the stop signal can all be ready at once: no new
            // receive after the stop, whichever the selects above picked.
            if stop.is_cancelled() {
                return;
            }
            // `biased`: a receive that has already returned messages is handed on, never dropped
            // in favour of the stop signal.
            let received = tokio::select! {
                biased;
                received = self.bus.receive(&self.queue_url, self.wait_seconds) => received,
                () = stop.cancelled() => return,
            };
            match received {
                Ok(messages) if messages.is_empty() => {
                    backoff.reset();
                    self.count_receive(0);
                }
                Ok(messages) => {
                    backoff.reset();
                    place.send(self.hold(messages).await);
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "consumer cannot reach the bus; will retry");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Starts the heartbeat that keeps `messages` invisible until the batch is dropped.
    async fn hold(&self, messages: Vec<Received>) -> Held {
        let timeout = self.settings().await.visibility_timeout;
        let (bus, queue_url) = (self.bus.clone(), self.queue_url.clone());
        let receipts: Vec<String> = messages.iter().map(|m| m.receipt_handle.clone()).collect();
        let heartbeat =
            tokio::spawn(async move { match keep_invisible(&bus, &queue_url, &receipts, timeout).await {} });
        Held {
            messages,
            heartbeat: AbortOnDropHandle::new(heartbeat),
        }
    }

    async fn handle_stage(
        &self,
        mut inbox: mpsc::Receiver<Held>,
        receipts: mpsc::UnboundedSender<Vec<String>>,
        gate: watch::Sender<bool>,
        stop: &CancellationToken,
    ) {
        while let Some(Held { messages, heartbeat }) = inbox.recv().await {
            let settled = self.settle(&messages).await;
            drop(heartbeat);
            if !settled.delete.is_empty() {
                // The delete stage outlives this one; a send cannot fail while it runs.
                let _ = receipts.send(settled.delete);
            }
            self.reset_visibility(&settled.visibility).await;
            if settled.report.retried > 0 {
                // The database failed: receiving more now would only spend other messages'
                // receive counts. Wait until it answers again.
                gate.send_replace(false);
                if !self.wait_for_database(stop).await {
                    // Stopping with the database down: what was received for this stage goes
                    // back to the queue at once, untried.
                    inbox.close();
                    while let Some(Held { messages, heartbeat }) = inbox.recv().await {
                        drop(heartbeat);
                        let back: Vec<(String, i32)> = messages.iter().map(|m| (m.receipt_handle.clone(), 0)).collect();
                        self.reset_visibility(&back).await;
                    }
                    return;
                }
                gate.send_replace(true);
            }
        }
    }

    async fn delete_stage(&self, mut deletions: mpsc::UnboundedReceiver<Vec<String>>) {
        let mut pending: VecDeque<String> = VecDeque::new();
        let mut open = true;
        while open || !pending.is_empty() {
            if pending.is_empty() {
                match deletions.recv().await {
                    Some(receipts) => pending.extend(receipts),
                    None => return,
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
            let call: Vec<String> = pending.drain(..pending.len().min(MAX_BATCH)).collect();
            self.delete(&call).await;
        }
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
