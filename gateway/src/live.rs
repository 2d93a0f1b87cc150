//! Live updates: how a saga's progress reaches a client that waits for it, whichever gateway
//! instance consumed the event.
//!
//! The read model is the source: one poller per gateway instance reads, for the enrollments
//! someone waits for, how many history entries each has (`enrollments.history_seq`, which every
//! new entry increments under the enrollment's row lock), and wakes the waiters of those that
//! gained one (server-sent event streams, `Prefer: wait` requests); they then read their own
//! enrollment again. With two instances on one PostgreSQL database, the instance holding a stream
//! sees an event the other consumed at its next poll; an in-process signal alone could not. No
//! clock is involved, so skew between instances cannot hide a change. The poller runs only while
//! someone waits, and costs one primary-key query per interval (per 500 waited-for enrollments),
//! however busy the system is.

use sqlx::AnyPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// How many may wait at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open event streams (`MAX_EVENT_STREAMS`).
    pub streams: usize,
    /// Requests held by `Prefer: wait` (`MAX_WAITING_REQUESTS`).
    pub waits: usize,
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    interval: Duration,
    watched: Mutex<HashMap<String, Watched>>,
    /// Wakes the poller when the first waiter arrives.
    someone_waits: Notify,
    poller: std::sync::Once,
    streams: Arc<Semaphore>,
    waits: Arc<Semaphore>,
    /// Cancelled when the service stops: every waiter returns.
    closed: CancellationToken,
}

struct Watched {
    changes: watch::Sender<u64>,
    waiters: usize,
}

impl Hub {
    /// `closed` ends every wait and stream (the service's shutdown); `limits` bound the open
    /// event streams and the held requests.
    pub fn new(pool: AnyPool, interval: Duration, limits: Limits, closed: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                interval,
                watched: Mutex::new(HashMap::new()),
                someone_waits: Notify::new(),
                poller: std::sync::Once::new(),
                streams: Arc::new(Semaphore::new(limits.streams)),
                waits: Arc::new(Semaphore::new(limits.waits)),
                closed,
            }),
        }
    }

    /// A place for one more event stream, or `None` when `MAX_EVENT_STREAMS` are open.
    pub fn stream_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.inner.streams.clone().try_acquire_owned().ok()
    }

    /// A place for one more held request (`Prefer: wait`), or `None` when `MAX_WAITING_REQUESTS`
    /// are held: the preference is then not applied. A held request keeps its place in the
    /// gateway's concurrency limit, so these must stay well below it.
    pub fn wait_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.inner.waits.clone().try_acquire_owned().ok()
    }

    /// Starts watching an enrollment. Subscribe before reading it, so no change falls between.
    pub fn subscribe(&self, enrollment_id: &str) -> Subscription {
        let inner = self.inner.clone();
        inner.poller.call_once(|| {
            tokio::spawn(poll(inner.clone()));
        });
        let changes = {
            let mut watched = inner.watched.lock().unwrap_or_else(|e| e.into_inner());
            let entry = watched.entry(enrollment_id.to_owned()).or_insert_with(|| Watched {
                changes: watch::channel(0).0,
                waiters: 0,
            });
            entry.waiters += 1;
            entry.changes.subscribe()
        };
        inner.someone_waits.notify_one();
        Subscription {
            hub: inner,
            enrollment_id: enrollment_id.to_owned(),
            changes,
        }
    }

    /// Resolves when the service stops.
    pub async fn closed(&self) {
        self.inner.closed.cancelled().await;
    }

    /// True once the service is stopping.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }
}

/// One waiter's view of one enrollment.
pub struct Subscription {
    hub: Arc<Inner>,
    enrollment_id: String,
    changes: watch::Receiver<u64>,
}

impl Subscription {
    /// Waits until the enrollment may have changed. `false`: the service is stopping.
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            () = self.hub.closed.cancelled() => false,
            changed = self.changes.changed() => changed.is_ok(),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watched = self.hub.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = watched.get_mut(&self.enrollment_id) {
            entry.waiters -= 1;
            if entry.waiters == 0 {
                watched.remove(&self.enrollment_id);
            }
        }
    }
}

/// The poller: while anyone waits, every `interval`, wakes the waiters of the enrollments whose
/// history grew since the last look.
async fn poll(hub: Arc<Inner>) {
    let mut seen: HashMap<String, i64> = HashMap::new();
    loop {
        let idle = hub.watched.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
        if idle {
            seen.clear();
            tokio::select! {
                () = hub.closed.cancelled() => return,
                () = hub.someone_waits.notified() => {}
            }
        }
        tokio::select! {
            () = hub.closed.cancelled() => return,
            () = tokio::time::sleep(hub.interval) => {}
        }
        let ids: Vec<String> = hub
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let counts = match crate::store::history_counts(&hub.pool, &ids).await {
            Ok(counts) => counts,
            Err(err) => {
                tracing::warn!(error = %err, "live updates could not read the history; will try again");
                continue;
            }
        };
        let watched = hub.watched.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|id, _| watched.contains_key(id));
        for (id, count) in counts {
            let Some(entry) = watched.get(&id) else { continue };
            if seen.get(&id).is_none_or(|before| *before < count) {
                entry.changes.send_modify(|n| *n += 1);
                seen.insert(id, count);
            }
        }
    }
}
