//! Live updates: how a saga's progress reaches a client that waits for it, whichever gateway
//! instance consumed the event.
//!
//! The read model is the source: one poller per gateway instance asks the database which
//! enrollments gained history entries lately, and wakes the waiters of those enrollments
//! (server-sent event streams, `Prefer: wait` requests), which then read their own enrollment
//! again. With two instances on one PostgreSQL database, the instance holding a stream sees an
//! event the other consumed at its next poll; an in-process signal alone could not. The poller
//! runs only while someone waits, and costs one indexed query per interval however many wait.
//!
//! A history entry is stamped (`at`) before its transaction commits, so a poll may not see it yet;
//! each poll looks back over the longest a handler's transaction may take, and a waiter woken for
//! nothing new simply reads nothing new.

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
    lookback: Duration,
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
    /// event streams and the held requests; `lookback` is the longest a handler's transaction may
    /// take.
    pub fn new(
        pool: AnyPool,
        interval: Duration,
        lookback: Duration,
        limits: Limits,
        closed: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                interval,
                lookback,
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
/// newest history entry is new since the last look (history ids are UUID v7: newer sorts later).
async fn poll(hub: Arc<Inner>) {
    let mut newest: HashMap<String, String> = HashMap::new();
    loop {
        let idle = hub.watched.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
        if idle {
            newest.clear();
            tokio::select! {
                () = hub.closed.cancelled() => return,
                () = hub.someone_waits.notified() => {}
            }
        }
        tokio::select! {
            () = hub.closed.cancelled() => return,
            () = tokio::time::sleep(hub.interval) => {}
        }
        let since = utility::storage::cutoff(hub.lookback + hub.interval);
        let recent: Result<Vec<(String, String)>, sqlx::Error> = sqlx::query_as(
            "SELECT enrollment_id, MAX(id) FROM enrollment_history WHERE at > $1 GROUP BY enrollment_id",
        )
        .bind(&since)
        .fetch_all(&hub.pool)
        .await;
        let recent = match recent {
            Ok(recent) => recent,
            Err(err) => {
                tracing::warn!(error = %err, "live updates could not read the history; will try again");
                continue;
            }
        };
        let watched = hub.watched.lock().unwrap_or_else(|e| e.into_inner());
        newest.retain(|id, _| watched.contains_key(id));
        for (id, latest) in recent {
            let Some(entry) = watched.get(&id) else { continue };
            if newest.get(&id).is_none_or(|seen| *seen < latest) {
                entry.changes.send_modify(|n| *n += 1);
                newest.insert(id, latest);
            }
        }
    }
}
