//! Live updates: how a saga's progress reaches a client that waits for it, whichever gateway
//! instance consumed the event.
//!
//! The read model is the source: one poller per gateway instance reads, for the enrollments
//! someone waits for, how many history entries each has (`enrollments.history_seq`, which every
//! new entry increments under the enrollment's row lock), and wakes the waiters of those that
//! gained one (server-sent event streams, `Prefer: wait` requests). For the enrollments that have
//! open streams, the poller also reads the new history itself, once per change in one query for
//! all of them, and hands it to every stream of that enrollment: a thousand streams on one saga
//! cost one history read per step, not a thousand. A held request reads its enrollment again. With two instances on one PostgreSQL database, the instance holding a stream
//! sees an event the other consumed at its next poll; an in-process signal alone could not. No
//! clock is involved, so skew between instances cannot hide a change. The poller runs only while
//! someone waits, and costs one primary-key query per interval (per 500 waited-for enrollments),
//! however busy the system is.
//!
//! Places to wait are bounded twice: in all (`MAX_EVENT_STREAMS`, `MAX_WAITING_REQUESTS`) and per
//! client (`MAX_EVENT_STREAMS_PER_CLIENT`, `MAX_WAITING_REQUESTS_PER_CLIENT`, by the address the
//! submission rate limit keys on), so that one client cannot take every place.

use crate::store::HistoryEntry;
use prometheus_client::metrics::counter::Counter;
use sqlx::AnyPool;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// How many may wait at once, in all and per client; a per-client limit of 0 is no limit.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open event streams (`MAX_EVENT_STREAMS`).
    pub streams: usize,
    /// Requests held by `Prefer: wait` (`MAX_WAITING_REQUESTS`).
    pub waits: usize,
    /// Open event streams of one client (`MAX_EVENT_STREAMS_PER_CLIENT`).
    pub streams_per_client: usize,
    /// Requests of one client held by `Prefer: wait` (`MAX_WAITING_REQUESTS_PER_CLIENT`).
    pub waits_per_client: usize,
}

/// Why there is no place to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every place is taken.
    Full,
    /// This client holds as many as one client may.
    ClientFull,
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
    streams: Places,
    waits: Places,
    /// History reads made for event streams (`saga_follower_history_reads_total`).
    reads: Counter,
    /// Cancelled when the service stops: every waiter returns.
    closed: CancellationToken,
}

struct Watched {
    changes: watch::Sender<Snapshot>,
    waiters: usize,
    /// How many of the waiters are event streams (which the poller reads the history for).
    streams: usize,
}

/// What the poller last saw of an enrollment.
#[derive(Clone, Default)]
struct Snapshot {
    /// The history as the poller read it after a change; `None` when it read none (no stream
    /// was open when it looked).
    history: Option<Arc<Vec<HistoryEntry>>>,
}

/// One kind of place: a global semaphore and a count per client.
struct Places {
    all: Arc<Semaphore>,
    per_client: usize,
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Places {
    fn new(all: usize, per_client: usize) -> Self {
        Self {
            all: Arc::new(Semaphore::new(all)),
            per_client,
            clients: Arc::default(),
        }
    }

    fn take(&self, client: IpAddr) -> Result<Place, Refused> {
        let slot = {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            let held = clients.entry(client).or_insert(0);
            if self.per_client > 0 && *held >= self.per_client {
                if *held == 0 {
                    clients.remove(&client);
                }
                return Err(Refused::ClientFull);
            }
            *held += 1;
            ClientSlot {
                clients: self.clients.clone(),
                client,
            }
        };
        // On refusal the slot is dropped, and given back, here.
        let permit = self.all.clone().try_acquire_owned().map_err(|_| Refused::Full)?;
        Ok(Place {
            _permit: permit,
            _slot: slot,
        })
    }
}

/// A place to wait, given back when dropped.
pub struct Place {
    _permit: OwnedSemaphorePermit,
    _slot: ClientSlot,
}

struct ClientSlot {
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = clients.get_mut(&self.client) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

impl Hub {
    /// `closed` ends every wait and stream (the service's shutdown); `limits` bound the open
    /// event streams and the held requests. Registers `saga_follower_history_reads_total`.
    pub fn new(
        pool: AnyPool,
        interval: Duration,
        limits: Limits,
        metrics: &utility::observe::metrics::Metrics,
        closed: CancellationToken,
    ) -> Self {
        let reads = Counter::default();
        metrics.register(
            "follower_history_reads",
            "History reads made for event streams: one as each opens, then one per change of a followed saga",
            reads.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                pool,
                interval,
                watched: Mutex::new(HashMap::new()),
                someone_waits: Notify::new(),
                poller: std::sync::Once::new(),
                streams: Places::new(limits.streams, limits.streams_per_client),
                waits: Places::new(limits.waits, limits.waits_per_client),
                reads,
                closed,
            }),
        }
    }

    /// A place for one more event stream of `client`.
    pub fn stream_place(&self, client: IpAddr) -> Result<Place, Refused> {
        self.inner.streams.take(client)
    }

    /// A place for one more held request (`Prefer: wait`) of `client`. When every place is
    /// taken the preference is not applied; a held request keeps its place in the gateway's
    /// concurrency limit, so these must stay well below it.
    pub fn wait_place(&self, client: IpAddr) -> Result<Place, Refused> {
        self.inner.waits.take(client)
    }

    /// Counts a history read made for an event stream outside the poller (its first read).
    pub fn count_read(&self) {
        self.inner.reads.inc();
    }

    /// Starts watching an enrollment for a held request. Subscribe before reading it, so no
    /// change falls between.
    pub fn subscribe(&self, enrollment_id: &str) -> Subscription {
        self.watch(enrollment_id, false)
    }

    /// Starts watching an enrollment for an event stream: the poller reads the history after
    /// each change and [`Subscription::history`] hands it over.
    pub fn follow(&self, enrollment_id: &str) -> Subscription {
        self.watch(enrollment_id, true)
    }

    fn watch(&self, enrollment_id: &str, stream: bool) -> Subscription {
        let inner = self.inner.clone();
        inner.poller.call_once(|| {
            tokio::spawn(poll(inner.clone()));
        });
        let changes = {
            let mut watched = inner.watched.lock().unwrap_or_else(|e| e.into_inner());
            let entry = watched.entry(enrollment_id.to_owned()).or_insert_with(|| Watched {
                changes: watch::channel(Snapshot::default()).0,
                waiters: 0,
                streams: 0,
            });
            entry.waiters += 1;
            entry.streams += usize::from(stream);
            entry.changes.subscribe()
        };
        inner.someone_waits.notify_one();
        Subscription {
            hub: inner,
            enrollment_id: enrollment_id.to_owned(),
            stream,
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
    stream: bool,
    changes: watch::Receiver<Snapshot>,
}

impl Subscription {
    /// Waits until the enrollment may have changed. `false`: the service is stopping.
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            () = self.hub.closed.cancelled() => false,
            changed = self.changes.changed() => changed.is_ok(),
        }
    }

    /// The history the poller read at the last change, if it read one.
    pub fn history(&mut self) -> Option<Arc<Vec<HistoryEntry>>> {
        self.changes.borrow_and_update().history.clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watched = self.hub.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = watched.get_mut(&self.enrollment_id) {
            entry.waiters -= 1;
            entry.streams -= usize::from(self.stream);
            if entry.waiters == 0 {
                watched.remove(&self.enrollment_id);
            }
        }
    }
}

/// The poller: while anyone waits, every `interval`, wakes the waiters of the enrollments whose
/// history grew since the last look, with the new history when streams follow them.
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
        let changed: Vec<(String, i64)> = counts
            .into_iter()
            .filter(|(id, count)| seen.get(id).is_none_or(|before| before < count))
            .collect();
        if changed.is_empty() {
            continue;
        }
        let followed: Vec<String> = {
            let watched = hub.watched.lock().unwrap_or_else(|e| e.into_inner());
            changed
                .iter()
                .filter(|(id, _)| watched.get(id).is_some_and(|w| w.streams > 0))
                .map(|(id, _)| id.clone())
                .collect()
        };
        let mut histories = if followed.is_empty() {
            HashMap::new()
        } else {
            match crate::store::histories(&hub.pool, &followed).await {
                Ok(histories) => {
                    hub.reads.inc_by(followed.len() as u64);
                    histories
                }
                // Nothing is marked seen: the next look finds the same changes and reads again.
                Err(err) => {
                    tracing::warn!(error = %err, "live updates could not read the history; will try again");
                    continue;
                }
            }
        };
        let watched = hub.watched.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|id, _| watched.contains_key(id));
        for (id, count) in changed {
            let Some(entry) = watched.get(&id) else { continue };
            let history = histories.remove(&id).map(Arc::new);
            entry.changes.send_modify(|snapshot| snapshot.history = history);
            seen.insert(id, count);
        }
    }
}
