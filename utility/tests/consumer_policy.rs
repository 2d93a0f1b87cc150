//! The consumer's retry policy, branch by branch, against a real LocalStack queue and a real
//! SQLite file: transient failures come back after a delay and are handled once; slow work keeps
//! its message invisible; a concurrent change is retried the same way; refusals are bounded by the
//! redrive count and end in the DLQ; an unreachable bus is retried without the consumer giving
//! up, and shutdown stays prompt. A receive batch shares one transaction with a savepoint per
//! message: a failing message is rolled back alone, a hung one breaks the batch without losing or
//! doubling any effect.

use aws_sdk_sqs::types::QueueAttributeName;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{Poll, bus_at, eventually};
use tokio_util::sync::CancellationToken;
use utility::domain::{CustomerName, Email};
use utility::messaging::bus::Bus;
use utility::messaging::consumer::{AfterCommit, Consumer, Handler, HandlerError};
use utility::messaging::envelope::Envelope;
use utility::messaging::message::{Enroll, Message};
use utility::storage::AnyConnection;

const DEADLINE: Duration = Duration::from_secs(60);
const MAX_RECEIVES: u32 = 3;
/// The visibility a transient failure sets on a first receive (the consumer's policy: 5, 15,
/// 45, ... s by receive count).
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The handlers' time limit in these tests, beyond their scripted work.
const HANDLER_LIMIT: Duration = Duration::from_secs(2);

/// A work queue with its DLQ; both deleted on drop.
struct Queues {
    bus: Bus,
    work: String,
    dlq: String,
}

impl Queues {
    async fn create(bus: &Bus, visibility_timeout: u32) -> Self {
        let dlq = testkit::scratch_queue(bus, "policy-dlq", &[]).await;
        let redrive = serde_json::json!({"deadLetterTargetArn": dlq.arn, "maxReceiveCount": MAX_RECEIVES}).to_string();
        let work = testkit::scratch_queue(
            bus,
            "policy",
            &[
                (QueueAttributeName::VisibilityTimeout, visibility_timeout.to_string()),
                (QueueAttributeName::RedrivePolicy, redrive),
            ],
        )
        .await
        .url;
        let dlq = dlq.url;
        Self {
            bus: bus.clone(),
            work,
            dlq,
        }
    }

    async fn send(&self, envelope: &Envelope) {
        self.bus.send_batch(&self.work, &[envelope.into()]).await.unwrap();
    }

    async fn depth(&self, url: &str) -> usize {
        let depth = self.bus.queue_depth(url).await.unwrap();
        usize::try_from(depth.total()).unwrap_or(0)
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        let (bus, urls) = (self.bus.clone(), [self.work.clone(), self.dlq.clone()]);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                for url in urls {
                    let _ = bus.sqs().delete_queue().queue_url(url).send().await;
                }
            });
        })
        .join();
    }
}

/// A handler whose behaviour the test scripts; it records when it was called.
#[derive(Clone, Default)]
struct Scripted {
    calls: Arc<Mutex<Vec<Instant>>>,
    fail_first: usize,
    conflict_first: usize,
    hang_first: usize,
    work_for: Duration,
    refuse: bool,
}

impl Scripted {
    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().clone()
    }
}

impl Handler for Scripted {
    async fn handle(&self, _tx: &mut AnyConnection, _envelope: &Envelope) -> Result<AfterCommit, HandlerError> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Instant::now());
            calls.len()
        };
        if n <= self.fail_first {
            return Err(HandlerError::Database(sqlx::Error::PoolTimedOut));
        }
        if n <= self.conflict_first {
            return Err(HandlerError::Conflict("scripted concurrent change".into()));
        }
        if n <= self.hang_first {
            // A query that never returns.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.work_for).await;
        if self.refuse {
            return Err(HandlerError::Refused("scripted refusal".into()));
        }
        Ok(AfterCommit::nothing())
    }
}

fn envelope() -> Envelope {
    Envelope::new(
        Message::Enroll(Enroll {
            name: CustomerName::parse("Policy").unwrap(),
            email: Email::parse("policy@example.com").unwrap(),
            confirmation: None,
        }),
        uuid::Uuid::now_v7(),
    )
}

struct Running {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    pool: sqlx::AnyPool,
    _dir: tempfile::TempDir,
}

async fn start(bus: &Bus, queue: &str, handler: Scripted) -> Running {
    // Scripted slow work is within the limit; a scripted hang is not.
    let limit = handler.work_for + HANDLER_LIMIT;
    start_with(bus, queue, handler, limit).await
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.handle)
            .await
            .expect("consumer stops within 5 s")
            .unwrap()
            .unwrap();
    }
}

/// Waits until `check` holds; fails after [`DEADLINE`].
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    eventually(what, DEADLINE, async || Poll::ready_if(check().await, (), ()))
        .await
        .unwrap();
}

/// A message whose first attempt fails transiently comes back after [`FIRST_RETRY`] (not at
/// once, and not after the queue's 30 s timeout), is handled on the second attempt, and is
/// recorded once: the failed attempt's transaction left nothing behind.
async fn retried_once_after_the_first_retry_delay(handler: Scripted) {
    let bus = testkit::bus().await;
    let queues = Queues::create(&bus, 30).await;
    let running = start(&bus, &queues.work, handler.clone()).await;
    let sent = envelope();
    queues.send(&sent).await;

    until("the message to be handled and deleted", async || {
        handler.calls().len() >= 2 && queues.depth(&queues.work).await == 0
    })
    .await;
    let calls = handler.calls();
    assert_eq!(calls.len(), 2, "handled exactly once after one failure");
    let gap = calls[1] - calls[0];
    assert!(
        gap >= FIRST_RETRY,
        "retried after {gap:?}, before the {FIRST_RETRY:?} the policy sets"
    );
    assert!(
        gap < FIRST_RETRY + Duration::from_secs(7),
        "retried after {gap:?}: the retry delay was not applied (the queue's own timeout is 30 s)"
    );
    let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_messages WHERE message_id = $1")
        .bind(sent.message_id.to_string())
        .fetch_one(&running.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 1);
    assert_eq!(queues.depth(&queues.dlq).await, 0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failure_comes_back_after_a_delay_and_is_handled_once() {
    retried_once_after_the_first_retry_delay(Scripted {
        fail_first: 1,
        ..Scripted::default()
    })
    .await;
}

/// `HandlerError::Conflict` (another instance moved the state first) is retried like a database
/// failure, against the new state: the same delay, never the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_change_is_retried_after_a_delay_and_handled_once() {
    retried_once_after_the_first_retry_delay(Scripted {
        conflict_first: 1,
        ..Scripted::default()
    })
    .await;
}

/// A handler that never returns (a hung query) is abandoned at its time limit and its message
/// retried like after a database failure, instead of being held invisible forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_its_time_limit_is_abandoned_and_retried() {
    let handler = Scripted {
        hang_first: 1,
        ..Scripted::default()
    };
    let bus = testkit::bus().await;
    let queues = Queues::create(&bus, 30).await;
    let running = start(&bus, &queues.work, handler.clone()).await;
    queues.send(&envelope()).await;
    until("the message to be handled and deleted", async || {
        handler.calls().len() >= 2 && queues.depth(&queues.work).await == 0
    })
    .await;
    let calls = handler.calls();
    assert_eq!(calls.len(), 2);
    let gap = calls[1] - calls[0];
    assert!(
        gap >= HANDLER_LIMIT + FIRST_RETRY,
        "retried after {gap:?}: before the time limit and the retry delay"
    );
    assert_eq!(queues.depth(&queues.dlq).await, 0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_work_keeps_its_message_invisible() {
    let bus = testkit::bus().await;
    let queues = Queues::create(&bus, 4).await;
    let handler = Scripted {
        work_for: Duration::from_secs(10),
        ..Scripted::default()
    };
    let running = start(&bus, &queues.work, handler.clone()).await;
    queues.send(&envelope()).await;
    until("the handler to start", async || !handler.calls().is_empty()).await;

    // While the handler works (2.5 times the visibility timeout), nobody else may see the
    // message: a competing receive must come back empty every time.
    let started = handler.calls()[0];
    let mut probes = 0;
    while started.elapsed() < Duration::from_secs(9) {
        let seen = bus
            .sqs()
            .receive_message()
            .queue_url(&queues.work)
            .visibility_timeout(0)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        assert!(
            seen.messages().is_empty(),
            "the message became visible while it was being handled"
        );
        probes += 1;
    }
    assert!(probes >= 5);
    until("the message to be deleted", async || {
        queues.depth(&queues.work).await == 0
    })
    .await;
    assert_eq!(handler.calls().len(), 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_bounded_by_the_redrive_count() {
    let bus = testkit::bus().await;
    let queues = Queues::create(&bus, 30).await;
    let handler = Scripted {
        refuse: true,
        ..Scripted::default()
    };
    let running = start(&bus, &queues.work, handler.clone()).await;
    queues.send(&envelope()).await;

    until("the message to reach the DLQ", async || {
        queues.depth(&queues.dlq).await == 1
    })
    .await;
    assert_eq!(handler.calls().len(), MAX_RECEIVES as usize, "one attempt per receive");
    assert_eq!(queues.depth(&queues.work).await, 0);
    running.stop().await;
}

/// A "bus" that accepts connections and closes them at once, counting them.
async fn refusing_bus() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (endpoint, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bus_is_retried_and_shutdown_stays_prompt() {
    let (endpoint, connections) = refusing_bus().await;
    let bus = bus_at(&endpoint).await;
    let running = start(
        &bus,
        &format!("{endpoint}/queue/us-east-1/000000000000/nowhere"),
        Scripted::default(),
    )
    .await;
    // The SDK makes 3 attempts per receive; more than that means the consumer itself came back
    // for another round after its back-off, and again after that.
    until("the consumer to retry the receive", async || {
        connections.load(Ordering::SeqCst) > 6
    })
    .await;
    assert!(
        !running.handle.is_finished(),
        "the consumer gave up while the bus was unreachable"
    );
    let stopping = Instant::now();
    running.stop().await;
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "stopping took {took:?}; a consumer backing off must stop at once"
    );
}

/// A handler that writes its effect (a row named after the message) and then, for the messages
/// the test picks, fails in the way the test picks: the effect of a failed attempt must vanish
/// with it, and the others' must commit once.
#[derive(Clone, Default)]
struct Writing {
    /// Message id -> how its first attempt ends (a refusal: every attempt).
    first_attempt: Arc<Mutex<std::collections::HashMap<String, Fault>>>,
    attempts: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    /// When set, each attempt first counts the effects committed so far, through this second
    /// connection (what another reader of the database sees), into `log`, and each commit is
    /// logged after it happened.
    reader: Arc<std::sync::OnceLock<sqlx::AnyPool>>,
    log: Arc<Mutex<Vec<Logged>>>,
}

/// What the `Writing` handler saw, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logged {
    /// An attempt began; another reader saw this many effects committed.
    Attempt { committed_seen: i64 },
    /// An attempt's transaction committed.
    Committed,
}

#[derive(Clone, Copy)]
enum Fault {
    Database,
    Refuse,
    Hang,
}

impl Writing {
    fn attempts(&self, envelope: &Envelope) -> usize {
        let id = envelope.message_id.to_string();
        self.attempts.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

impl Handler for Writing {
    async fn handle(&self, tx: &mut AnyConnection, envelope: &Envelope) -> Result<AfterCommit, HandlerError> {
        let id = envelope.message_id.to_string();
        *self.attempts.lock().unwrap().entry(id.clone()).or_default() += 1;
        if let Some(reader) = self.reader.get() {
            let committed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM effects")
                .fetch_one(reader)
                .await?;
            self.log.lock().unwrap().push(Logged::Attempt {
                committed_seen: committed,
            });
        }
        sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        // A refusal stands on every attempt; the other faults hit the first attempt only.
        let fault = {
            let mut faults = self.first_attempt.lock().unwrap();
            match faults.get(&id) {
                Some(Fault::Refuse) => Some(Fault::Refuse),
                _ => faults.remove(&id),
            }
        };
        match fault {
            None => {
                let log = self.log.clone();
                Ok(AfterCommit::then(move || log.lock().unwrap().push(Logged::Committed)))
            }
            Some(Fault::Database) => Err(HandlerError::Database(sqlx::Error::PoolTimedOut)),
            Some(Fault::Refuse) => Err(HandlerError::Refused("scripted refusal".into())),
            Some(Fault::Hang) => std::future::pending().await,
        }
    }
}

/// Sends `count` messages in one batch, so that one receive returns them together, and starts a
/// consumer over a database with an `effects` table. The envelopes come back in send order.
async fn batch_of(count: usize, faults: &[(usize, Fault)]) -> (Queues, Writing, Running, Vec<Envelope>) {
    let bus = testkit::bus().await;
    let queues = Queues::create(&bus, 30).await;
    let sent: Vec<Envelope> = (0..count).map(|_| envelope()).collect();
    let handler = Writing::default();
    for (i, fault) in faults {
        handler
            .first_attempt
            .lock()
            .unwrap()
            .insert(sent[*i].message_id.to_string(), *fault);
    }
    let outgoing: Vec<_> = sent.iter().map(Into::into).collect();
    bus.send_batch(&queues.work, &outgoing).await.unwrap();
    let running = start_with(&bus, &queues.work, handler.clone(), HANDLER_LIMIT).await;
    (queues, handler, running, sent)
}

/// A consumer of `queue` over a fresh SQLite database that also has an `effects` table.
async fn start_with<H: Handler>(bus: &Bus, queue: &str, handler: H, limit: Duration) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}/policy.db", dir.path().display());
    let pool = utility::storage::connect(&url, sqlx::migrate::Migrator::DEFAULT)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE effects (message_id TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let consumer = Consumer::new(
        queue.to_owned(),
        bus.clone(),
        pool.clone(),
        handler,
        Arc::new(tokio::sync::Notify::new()),
        1,
    )
    .with_handler_timeout(limit);
    let stop = CancellationToken::new();
    let handle = tokio::spawn(consumer.run(stop.clone()));
    Running {
        stop,
        handle,
        pool,
        _dir: dir,
    }
}

/// How many effect rows each envelope left, in order.
async fn effects(pool: &sqlx::AnyPool, sent: &[Envelope]) -> Vec<i64> {
    let mut counts = Vec::new();
    for envelope in sent {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM effects WHERE message_id = $1")
            .bind(envelope.message_id.to_string())
            .fetch_one(pool)
            .await
            .unwrap();
        counts.push(n);
    }
    counts
}

/// One transaction per receive batch, a savepoint per message: a message that fails (here the
/// third of six, with a database error) is rolled back alone, while the other five commit on the
/// first attempt and are neither failed nor run again; the failed one comes back after its
/// retry delay and commits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_message_in_a_batch_neither_fails_nor_reruns_the_others() {
    let (queues, handler, running, sent) = batch_of(6, &[(2, Fault::Database)]).await;
    until("the five others to be handled and deleted", async || {
        queues.depth(&queues.work).await == 1
    })
    .await;
    assert_eq!(
        effects(&running.pool, &sent).await,
        [1, 1, 0, 1, 1, 1],
        "the failed attempt's effect was rolled back, the others' kept"
    );
    until("the failed message to come back and be handled", async || {
        queues.depth(&queues.work).await == 0
    })
    .await;
    assert_eq!(effects(&running.pool, &sent).await, [1; 6]);
    let attempts: Vec<usize> = sent.iter().map(|e| handler.attempts(e)).collect();
    assert_eq!(attempts, [1, 1, 2, 1, 1, 1], "only the failed message ran twice");
    running.stop().await;
}

/// A refused message in a batch is rolled back to its savepoint and ends in the DLQ; the others
/// commit once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_in_a_batch_goes_alone_to_the_dlq() {
    let (queues, handler, running, sent) = batch_of(4, &[(0, Fault::Refuse)]).await;
    until("the refused message to reach the DLQ", async || {
        queues.depth(&queues.dlq).await == 1 && queues.depth(&queues.work).await == 0
    })
    .await;
    assert_eq!(effects(&running.pool, &sent).await, [0, 1, 1, 1]);
    assert_eq!(
        sent[1..].iter().map(|e| handler.attempts(e)).collect::<Vec<_>>(),
        [1, 1, 1]
    );
    running.stop().await;
}

/// A handler over its time limit breaks its batch's transaction: nothing of the batch committed,
/// so the others are handled again, one transaction each, and every effect is there exactly once;
/// the slow message is retried after its delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_handler_in_a_batch_loses_and_doubles_nothing() {
    let (queues, _handler, running, sent) = batch_of(5, &[(3, Fault::Hang)]).await;
    until("every message to be handled and deleted", async || {
        queues.depth(&queues.work).await == 0
    })
    .await;
    assert_eq!(effects(&running.pool, &sent).await, [1; 5]);
    let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_messages")
        .fetch_one(&running.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 5);
    assert_eq!(queues.depth(&queues.dlq).await, 0);
    running.stop().await;
}

/// The same message twice in one receive (a redelivery racing its original): the second is a
/// duplicate of the first's uncommitted effect, within the same transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_twice_in_one_batch_takes_effect_once() {
    let bus = testkit::bus().await;
    let queues = Queues::create(&bus, 30).await;
    let twice = envelope();
    let handler = Writing::default();
    let original = utility::messaging::bus::Outgoing::from(&twice);
    let copy = utility::messaging::bus::Outgoing {
        id: "copy".into(),
        ..original.clone()
    };
    bus.send_batch(&queues.work, &[original, copy]).await.unwrap();
    let running = start_with(&bus, &queues.work, handler.clone(), HANDLER_LIMIT).await;
    until("both copies to be deleted", async || {
        queues.depth(&queues.work).await == 0
    })
    .await;
    assert_eq!(effects(&running.pool, std::slice::from_ref(&twice)).await, [1]);
    assert_eq!(handler.attempts(&twice), 1);
    running.stop().await;
}

/// The batch commits once, at its end: while its messages are handled, another reader of the
/// database sees none of their effects, only those of earlier batches (with a transaction per
/// message it would see each earlier message of the batch as it commits). One batch at a time,
/// so the attempts between two commits are one batch's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_commits_once_after_all_its_messages() {
    let bus = testkit::bus().await;
    let queues = Queues::create(&bus, 30).await;
    let sent: Vec<Envelope> = (0..6).map(|_| envelope()).collect();
    let outgoing: Vec<_> = sent.iter().map(Into::into).collect();
    bus.send_batch(&queues.work, &outgoing).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}/commits.db", dir.path().display());
    let pool = utility::storage::connect(&url, sqlx::migrate::Migrator::DEFAULT)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE effects (message_id TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let handler = Writing::default();
    let reader = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{url}?mode=ro"))
        .await
        .unwrap();
    handler.reader.set(reader).unwrap();
    let consumer = Consumer::new(
        queues.work.clone(),
        bus.clone(),
        pool.clone(),
        handler.clone(),
        Arc::new(tokio::sync::Notify::new()),
        1,
    )
    .with_max_batches(1);
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    until("every message to be handled", async || {
        effects(&pool, &sent).await == [1; 6]
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();

    let log = handler.log.lock().unwrap().clone();
    let mut committed = 0;
    let mut batch = Vec::new();
    let mut largest_batch = 0;
    for entry in &log {
        match entry {
            Logged::Attempt { committed_seen } => batch.push(*committed_seen),
            Logged::Committed => {
                if !batch.is_empty() {
                    assert!(
                        batch.iter().all(|&seen| seen == committed),
                        "another reader saw effects of a batch before its end: {batch:?} with {committed} committed before it ({log:?})"
                    );
                    largest_batch = largest_batch.max(batch.len());
                    batch.clear();
                }
                committed += 1;
            }
        }
    }
    assert_eq!(committed, 6, "{log:?}");
    assert!(
        largest_batch >= 2,
        "the messages never came in one receive; nothing was shown: {log:?}"
    );
}

/// Messages the consumer has committed (its processed-message table).
async fn processed(pool: &sqlx::AnyPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM processed_messages")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `run` gathers the deletes of several receives into one call: messages that trickle in one at
/// a time come back one or two per receive, yet are deleted several per `DeleteMessageBatch`
/// (one delete per receive would make the two counts equal). Each is handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_gathered_across_receives() {
    let producer = testkit::bus().await;
    let queues = Queues::create(&producer, 30).await;
    // The consumer's own bus, so its request counter holds its calls alone.
    let consumer_bus = testkit::bus().await;
    let handler = Scripted::default();
    let running = start(&consumer_bus, &queues.work, handler.clone()).await;
    const SENT: i64 = 40;
    for _ in 0..SENT {
        queues.send(&envelope()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    until("every message to be handled and deleted", async || {
        processed(&running.pool).await == SENT && queues.depth(&queues.work).await == 0
    })
    .await;
    let pool = running.pool.clone();
    running.stop().await;
    assert_eq!(processed(&pool).await, SENT);
    assert_eq!(handler.calls().len(), SENT as usize, "each message handled once");
    let calls = consumer_bus.requests().snapshot();
    let receives = calls.get("SQS.ReceiveMessage").copied().unwrap_or(0);
    let deletes = calls.get("SQS.DeleteMessageBatch").copied().unwrap_or(0);
    // One delete per receive would be about as many deletes as receives (40 and 41, measured
    // with no linger); gathering makes it a fraction, smaller the faster the emulator answers.
    assert!(
        deletes > 0 && deletes * 4 <= receives * 3,
        "{deletes} delete calls for {receives} receives: deletes were not gathered across receives ({calls:?})"
    );
}

/// With a cloud region's round trip to the bus, delete calls overlap instead of queueing behind
/// each other: 300 messages need 30 calls, which one at a time take at least 30 round trips, so
/// the queue empties sooner than that only when several are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_calls_overlap_when_the_bus_is_far() {
    let producer = testkit::bus().await;
    let queues = Queues::create(&producer, 30).await;
    const SENT: i64 = 300;
    let all: Vec<utility::messaging::bus::Outgoing> = (0..SENT).map(|_| (&envelope()).into()).collect();
    for call in all.chunks(10) {
        producer.send_batch(&queues.work, call).await.unwrap();
    }
    let one_way = Duration::from_millis(50);
    let endpoint = testkit::emulator_endpoint();
    let relay = testkit::proxy::Delayed::start(testkit::proxy::server_address(&endpoint), one_way).unwrap();
    let far = bus_at(&relay.url_through(&endpoint)).await;
    let started = Instant::now();
    let running = start(&far, &queues.work, Scripted::default()).await;
    until("every message to be handled and deleted", async || {
        processed(&running.pool).await == SENT && queues.depth(&queues.work).await == 0
    })
    .await;
    let took = started.elapsed();
    running.stop().await;
    let one_call_at_a_time = 2 * one_way * (SENT as u32 / 10);
    assert!(
        took < one_call_at_a_time,
        "the queue took {took:?} to empty, no less than {one_call_at_a_time:?} of delete calls one at a time"
    );
}

/// A graceful stop finishes the batch being handled and the one received ahead of it, and
/// deletes what committed: afterwards every message is either committed and gone from the queue,
/// or not handled and still in it; none is both, and none is neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_finishes_the_batch_received_ahead() {
    let bus = testkit::bus().await;
    let queues = Queues::create(&bus, 30).await;
    const SENT: usize = 20;
    let sent: Vec<Envelope> = (0..SENT).map(|_| envelope()).collect();
    for chunk in sent.chunks(10) {
        let outgoing: Vec<_> = chunk.iter().map(Into::into).collect();
        bus.send_batch(&queues.work, &outgoing).await.unwrap();
    }
    let handler = Scripted {
        work_for: Duration::from_millis(100),
        ..Scripted::default()
    };
    let running = start(&testkit::bus().await, &queues.work, handler.clone()).await;
    // Nothing left to receive (the emulator returns ten a receive when it has them): the first
    // batch is being handled and the second is held ahead of it.
    until("both batches to be received", async || {
        !handler.calls().is_empty() && bus.queue_depth(&queues.work).await.unwrap().waiting == 0
    })
    .await;
    let pool = running.pool.clone();
    running.stop().await;
    let committed = usize::try_from(processed(&pool).await).unwrap();
    assert!(
        committed > 10,
        "only {committed} committed: the batch received ahead was not finished"
    );
    assert_eq!(handler.calls().len(), committed, "each message handled once");
    assert_eq!(
        queues.depth(&queues.work).await,
        SENT - committed,
        "a committed message was left undeleted, or one was lost"
    );
}

/// Counts how many handler calls run at once, and how many ran in all.
#[derive(Clone, Default)]
struct Overlapping {
    now: Arc<std::sync::atomic::AtomicUsize>,
    peak: Arc<std::sync::atomic::AtomicUsize>,
    done: Arc<std::sync::atomic::AtomicUsize>,
    work_for: Duration,
}

impl Handler for Overlapping {
    async fn handle(&self, _tx: &mut AnyConnection, _envelope: &Envelope) -> Result<AfterCommit, HandlerError> {
        use std::sync::atomic::Ordering::SeqCst;
        let running = self.now.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(running, SeqCst);
        tokio::time::sleep(self.work_for).await;
        self.now.fetch_sub(1, SeqCst);
        self.done.fetch_add(1, SeqCst);
        Ok(AfterCommit::nothing())
    }
}

/// Runs a consumer allowed `max_batches` over a full queue of slow messages, on PostgreSQL (one
/// connection per batch, so batches really run at the same time); returns the most handler calls
/// seen at once, and the empty receives counted in a quiet window once the queue is drained.
async fn overlap(max_batches: usize) -> (usize, f64) {
    use std::sync::atomic::Ordering::SeqCst;
    let bus = testkit::bus().await;
    let queues = Queues::create(&bus, 30).await;
    let sent: Vec<Envelope> = (0..40).map(|_| envelope()).collect();
    for chunk in sent.chunks(10) {
        let outgoing: Vec<_> = chunk.iter().map(Into::into).collect();
        bus.send_batch(&queues.work, &outgoing).await.unwrap();
    }
    let db = testkit::TestDb::new(testkit::Backend::Postgres, "overlap").await;
    let pool = utility::storage::Pools::open(
        &db.url,
        sqlx::migrate::Migrator::DEFAULT,
        Duration::from_secs(10),
        max_batches,
    )
    .await
    .unwrap()
    .background;
    let handler = Overlapping {
        work_for: Duration::from_millis(200),
        ..Overlapping::default()
    };
    let metrics = utility::observe::metrics::Metrics::new();
    let consumer = Consumer::new(
        queues.work.clone(),
        bus.clone(),
        pool,
        handler.clone(),
        Arc::new(tokio::sync::Notify::new()),
        1,
    )
    .with_max_batches(max_batches)
    .with_metrics(metrics.clone());
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    until("every message to be handled", async || handler.done.load(SeqCst) >= 40).await;
    until("the queue to be empty", async || queues.depth(&queues.work).await == 0).await;
    let empty = || {
        let labels = utility::observe::metrics::QueueLabels {
            queue: utility::messaging::bus::queue_name(&queues.work).to_owned(),
        };
        metrics.empty_receives.get_or_create(&labels).get() as f64
    };
    // Pollers retire on their first receive that comes back short; then a quiet window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = empty();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let idle = empty() - before;
    stop.cancel();
    running.await.unwrap().unwrap();
    (handler.peak.load(SeqCst), idle)
}

/// With room for several batches, several are handled at once (the next ones do not wait for a
/// slow one's commit), never more than the bound; once the queue is drained the consumer falls
/// back to one long poll (a 1 s wait here: about four empty receives in four seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_run_side_by_side_up_to_the_bound_and_an_idle_queue_costs_one_poller() {
    let (peak, idle) = overlap(4).await;
    assert!(peak >= 2, "at most {peak} handler call at once: the batches took turns");
    assert!(peak <= 4, "{peak} handler calls at once, beyond the bound of 4 batches");
    assert!(
        idle <= 6.0,
        "{idle} empty receives in 4 s: more than one poller stayed after the load"
    );
    let (peak, _) = overlap(1).await;
    assert_eq!(peak, 1, "one batch at a time runs one handler call at a time");
}
