//! Throughput, latency and cost of the pipeline, "near" (the emulator and PostgreSQL on loopback)
//! and "far" (a cloud region's round trips injected), against the raw bus and the targets.
//!
//! `make bench` (or `cargo bench -p gateway --bench pipeline`) with LocalStack running. Every
//! request the measured code sends to the bus or to PostgreSQL goes through a
//! [`testkit::proxy::Delayed`] relay: "near" relays add nothing, "far" ones add [`FAR_BUS`] each
//! way to the emulator and [`FAR_DATABASE`] each way to PostgreSQL (AWS in one region). Both go
//! through a relay, so the relay's own cost cancels in the far / near ratios, and near and far
//! runs alternate within the run, so the emulator's drift does too. The phases:
//!
//! 1. [`consumer_rounds`]: the consumer loop as the services run it (parse, dedup insert, a no-op
//!    handler, a transaction per batch, several batches in flight) draining a queue, near on
//!    SQLite and PostgreSQL against raw receive + delete in the same shape, and far on
//!    PostgreSQL; `BENCH_ROUNDS` (5) interleaved rounds, the median reported;
//! 2. [`hops`]: the bus's hop latencies one message at a time (SQS send -> receive, SNS publish ->
//!    SQS receive through a subscription), near and far;
//! 3. [`saga_run`]: whole sagas through the three release binaries (one instance each, on
//!    PostgreSQL, default log level, JSON logs), near and far alternately (`BENCH_SAGA_ROUNDS`,
//!    2): sagas one after another (latency at low load against the hop sum), then
//!    `BENCH_ENROLLMENTS` at once (throughput, billed requests, CPU, memory, log bytes), and once
//!    nothing at all (idle receives);
//! 4. [`lookup_phase`]: an operator lookup over the bus at idle against one SQS hop plus one reply
//!    hop measured between the lookups (`BENCH_LOOKUPS`, 40).
//!
//! Then [`TARGETS`], issue 20's table, is filled in: each figure beside its target. `make bench`
//! writes the run to `docs/performance.md` with the capacity plan of `docs/capacity.md` computed
//! from the far figures. Under `cargo test` (no `--bench`) it is a smoke run of a twentieth of
//! the size, one round, and writes nothing. `BENCH_MESSAGES` (2000), `BENCH_ENROLLMENTS` (400),
//! `BENCH_SEQUENTIAL` (100), `BENCH_HOPS` (40), `BENCH_IDLE_SECONDS` (40) set the sizes, and
//! `BENCH_MAX_BATCHES` the consumer loop's batches in flight (the services' default otherwise);
//! `BENCH_ONLY=consumer` stops after phase 1; `BENCH_ONLY=sagas` runs phase 3 alone (without the
//! idle measure) and `BENCH_ONLY=lookup` phase 4, printing their figures and writing nothing.

#[path = "pipeline/lookups.rs"]
mod lookups;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::processes::{CUSTOMER, GATEWAY, NAMES, TRANSACTION};
use testkit::proxy::{Delayed, server_address};
use testkit::{Backend, Layout, Patience, Poll, Processes, TestDb, TestStack, eventually};
use utility::messaging::bus::{Bus, Outgoing};
use utility::messaging::consumer::{AfterCommit, Consumer, DEFAULT_MAX_BATCHES, Handler, HandlerError};
use utility::messaging::envelope::Envelope;
use utility::storage::AnyConnection;

/// Added each way to every request to the emulator in "far" runs: SQS or SNS in one AWS region.
const FAR_BUS: Duration = testkit::proxy::REGION_BUS;
/// Added each way to every round trip to PostgreSQL in "far" runs: RDS in the same region.
const FAR_DATABASE: Duration = testkit::proxy::REGION_DATABASE;
/// Bus messages of a completed saga besides its status events: `Enroll`, `CustomerEnrolled`,
/// `PostBonusPoints`, `BonusPointsPosted`, each sent or published, received and deleted. Each
/// history entry adds one more, the `EnrollmentStatusChanged` the gateway publishes with it to
/// its status-events topic: [`SagaRun::messages_per_saga`] counts them. The topic delivers it to
/// the webhook-deliveries queue, to be received and deleted, only when the enrollment has a
/// callback ([`SagaRun::received_per_saga`]); the bench's enrollments have none.
const SAGA_MESSAGES: f64 = 4.0;
/// The receive loops that long-poll while nothing happens: the gateway's events consumer, its
/// webhook-deliveries consumer and its lookup replies; each service's commands consumer and
/// lookup responder.
const IDLE_POLLERS: f64 = 7.0;
/// The services' long poll in the whole-saga runs, as deployed.
const RECEIVE_WAIT_SECONDS: u64 = 20;

// ---------------------------------------------------------------------------------------------
// The targets (issue 20), stated once.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Id {
    ConsumerFarNear,
    SagasFarNear,
    ConsumerSqliteRaw,
    ConsumerPostgresRaw,
    BilledNear,
    BilledFar,
    IdleReceives,
    P50Near,
    P99Near,
    P50Far,
    P99Far,
    LogBytes,
    Cpu(usize),
    Rss(usize),
    Lookup,
}

struct Target {
    id: Id,
    measure: &'static str,
    /// The figure must be at most `limit` (else at least).
    at_most: bool,
    limit: f64,
    /// How the target reads, e.g. ">= 0.8".
    shown: &'static str,
}

const fn target(id: Id, measure: &'static str, at_most: bool, limit: f64, shown: &'static str) -> Target {
    Target {
        id,
        measure,
        at_most,
        limit,
        shown,
    }
}

const TARGETS: [Target; 19] = [
    target(
        Id::ConsumerFarNear,
        "consumer loop on PostgreSQL, far / near",
        false,
        0.8,
        ">= 0.8",
    ),
    target(
        Id::SagasFarNear,
        "whole sagas, one instance per service, far / near",
        false,
        0.8,
        ">= 0.8",
    ),
    target(
        Id::ConsumerSqliteRaw,
        "consumer loop near / raw receive+delete, SQLite",
        false,
        0.8,
        ">= 0.8",
    ),
    target(
        Id::ConsumerPostgresRaw,
        "consumer loop near / raw receive+delete, PostgreSQL",
        false,
        0.8,
        ">= 0.8",
    ),
    target(
        Id::BilledNear,
        "billed requests per saga / batching floor, near",
        true,
        1.17,
        "<= 1.17x",
    ),
    target(
        Id::BilledFar,
        "billed requests per saga / batching floor, far",
        true,
        1.17,
        "<= 1.17x",
    ),
    target(
        Id::IdleReceives,
        "idle ReceiveMessage calls per consumer per minute",
        true,
        3.0,
        "<= 3",
    ),
    target(Id::P50Near, "low-load saga p50 / hop sum, near", true, 1.1, "<= 1.1x"),
    target(Id::P99Near, "low-load saga p99 / hop sum, near", true, 1.5, "<= 1.5x"),
    target(Id::P50Far, "low-load saga p50 / hop sum, far", true, 1.1, "<= 1.1x"),
    target(Id::P99Far, "low-load saga p99 / hop sum, far", true, 1.5, "<= 1.5x"),
    target(
        Id::LogBytes,
        "JSON log bytes per completed saga, three services",
        true,
        1500.0,
        "<= 1.5 KB",
    ),
    target(Id::Cpu(GATEWAY), "CPU ms per saga, gateway", true, 1.5, "<= 1.5"),
    target(Id::Cpu(CUSTOMER), "CPU ms per saga, customer-api", true, 0.6, "<= 0.6"),
    target(
        Id::Cpu(TRANSACTION),
        "CPU ms per saga, transaction-api",
        true,
        0.6,
        "<= 0.6",
    ),
    target(
        Id::Lookup,
        "operator lookup p50 at idle / (query hop + reply hop)",
        true,
        1.5,
        "<= 1.5x",
    ),
    target(Id::Rss(GATEWAY), "peak RSS, gateway", true, 25.0, "<= 25 MiB"),
    target(Id::Rss(CUSTOMER), "peak RSS, customer-api", true, 25.0, "<= 25 MiB"),
    target(
        Id::Rss(TRANSACTION),
        "peak RSS, transaction-api",
        true,
        25.0,
        "<= 25 MiB",
    ),
];

/// A figure for a target: its value (what the target bounds) and how it is shown.
struct Measured {
    id: Id,
    value: f64,
    shown: String,
}

// ---------------------------------------------------------------------------------------------
// Sizes and small helpers.

/// Run by `cargo bench` (else by `cargo test`, as a smoke run).
fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The number `var` (a `BENCH_*` setting) holds, or `default` when it is unset or not a number.
fn setting(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `BENCH_*` or the default; under `cargo test` (which runs this without `--bench`), a smoke run
/// of a twentieth of the size, so `make test` checks that the benchmark works without paying for it.
fn size(var: &str, default: usize) -> usize {
    setting(var, if benching() { default } else { (default / 20).max(2) })
}

/// Rounds of an interleaved phase: `BENCH_*` or the default; one in a smoke run.
fn rounds(var: &str, default: usize) -> usize {
    setting(var, if benching() { default } else { 1 }).max(1)
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn envelopes(n: usize) -> Vec<Outgoing> {
    use utility::messaging::message::{Message, PostBonusPoints};
    (0..n)
        .map(|_| {
            let message = Message::PostBonusPoints(PostBonusPoints {
                customer_id: uuid::Uuid::now_v7(),
            });
            Outgoing::from(&Envelope::new(message, uuid::Uuid::now_v7()))
        })
        .collect()
}

/// Sends with up to 8 batch calls in flight.
async fn send_all(bus: &Bus, queue: &str, messages: &[Outgoing]) {
    let mut chunks = messages.chunks(10);
    let mut set = tokio::task::JoinSet::new();
    loop {
        while set.len() < 8 {
            let Some(chunk) = chunks.next() else { break };
            let (bus, queue, chunk) = (bus.clone(), queue.to_owned(), chunk.to_vec());
            set.spawn(async move { bus.send_batch(&queue, &chunk).await.expect("send").sent.len() });
        }
        if set.join_next().await.is_none() {
            break;
        }
    }
}

struct NoOp;

impl Handler for NoOp {
    async fn handle(&self, _tx: &mut AnyConnection, _envelope: &Envelope) -> Result<AfterCommit, HandlerError> {
        Ok(AfterCommit::nothing())
    }
}

/// A `SELECT COUNT(*)` the benchmark polls until a phase is over.
struct Count {
    rows: &'static str,
    every: Duration,
    /// Past this the run fails.
    limit: Duration,
}

/// Enrollments `completed` in a gateway's database.
const COMPLETED: Count = Count {
    rows: "SELECT COUNT(*) FROM enrollments WHERE status = 'completed'",
    every: Duration::from_millis(20),
    limit: Duration::from_secs(600),
};

impl Count {
    /// Returns once the count on `pool` reaches `count`; panics after `limit`.
    async fn until(&self, pool: &sqlx::AnyPool, count: usize) {
        let what = format!("{count} rows of `{}`", self.rows);
        eventually(&what, Patience::within(self.limit).every(self.every), async || {
            let n: i64 = sqlx::query_scalar(self.rows).fetch_one(pool).await.expect("count");
            Poll::ready_if(n as usize >= count, (), format!("only {n} of {count}"))
        })
        .await
        .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Near and far.

/// The way to the emulator and to PostgreSQL: relays that add `bus` and `database` each way.
struct Route {
    name: &'static str,
    /// The emulator, through the relay.
    endpoint: String,
    /// PostgreSQL's admin URL, through the relay.
    postgres_admin: String,
    bus: Bus,
    _relays: [Delayed; 2],
}

impl Route {
    async fn start(name: &'static str, bus: Duration, database: Duration) -> Self {
        let (emulator, admin) = (testkit::emulator_endpoint(), testkit::db::admin_url());
        let to_bus = Delayed::start(server_address(&emulator), bus).expect("bus relay");
        let to_database = Delayed::start(server_address(&admin), database).expect("database relay");
        let endpoint = to_bus.url_through(&emulator);
        Self {
            name,
            bus: testkit::bus_at(&endpoint).await,
            endpoint,
            postgres_admin: to_database.url_through(&admin),
            _relays: [to_bus, to_database],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 1: the consumer loop against raw receive + delete.

/// The raw bus in the consumer's shape without a database: receives one batch ahead of a delete
/// stage that deletes receipts ten per call as they come. How long it takes to drain the
/// `messages` sent to `queue` first.
async fn raw_pipelined(bus: &Bus, queue: &str, messages: usize) -> Duration {
    send_all(bus, queue, &envelopes(messages)).await;
    let started = Instant::now();
    let (receipts, mut deletions) = tokio::sync::mpsc::channel::<Vec<String>>(1);
    let receiving = async {
        let mut received = 0;
        while received < messages {
            let batch = bus.receive(queue, 1).await.expect("receive");
            received += batch.len();
            if !batch.is_empty() {
                let handles = batch.into_iter().map(|m| m.receipt_handle).collect();
                receipts.send(handles).await.expect("delete stage");
            }
        }
        drop(receipts);
    };
    let deleting = async {
        while let Some(mut pending) = deletions.recv().await {
            while pending.len() < 10 {
                match deletions.try_recv() {
                    Ok(more) => pending.extend(more),
                    Err(_) => break,
                }
            }
            for call in pending.chunks(10) {
                let call: Vec<&str> = call.iter().map(String::as_str).collect();
                bus.delete_batch(queue, &call).await.expect("delete");
            }
        }
    };
    tokio::join!(receiving, deleting);
    started.elapsed()
}

/// The consumer as services run it ([`Consumer::run`]) over `messages` sent to `queue` first,
/// through `route`, on a fresh database: how long until all are handled and deleted.
async fn consumer_loop(route: &Route, queue: &str, backend: Backend, messages: usize) -> Duration {
    let bus = &route.bus;
    send_all(bus, queue, &envelopes(messages)).await;
    let db = match backend {
        Backend::Sqlite => TestDb::new(backend, "bench").await,
        Backend::Postgres => TestDb::postgres_on(&route.postgres_admin, "bench")
            .await
            .expect("database"),
    };
    // The pool a service's consumer uses: one connection per batch in flight and a few more.
    let batches = setting("BENCH_MAX_BATCHES", DEFAULT_MAX_BATCHES);
    let pool = utility::storage::Pools::open(
        &db.url,
        sqlx::migrate::Migrator::DEFAULT,
        Duration::from_secs(10),
        batches,
    )
    .await
    .expect("db")
    .background;
    // The bench watches on a connection of its own: on SQLite the consumer's pool has one, and
    // polling through it would make the consumer's transactions wait for the bench.
    let watcher = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .expect("watching connection");
    let consumer = Consumer::new(
        queue.to_owned(),
        bus.clone(),
        pool,
        NoOp,
        Arc::new(tokio::sync::Notify::new()),
        1,
    )
    .with_max_batches(batches);
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(consumer.run(stop.clone()));
    let handled = Count {
        rows: "SELECT COUNT(*) FROM processed_messages",
        every: Duration::from_millis(5),
        limit: Duration::from_secs(300),
    };
    handled.until(&watcher, messages).await;
    // Stopping makes the consumer delete what it still holds; it returns when that is done.
    stop.cancel();
    running.await.expect("consumer task").expect("consumer");
    let elapsed = started.elapsed();
    let left = bus.queue_depth(queue).await.expect("depth");
    assert_eq!(left.total(), 0, "the consumer left messages behind: {left:?}");
    // A receive the stop abandoned is still open in the emulator for its 1 s wait, and would
    // take (and hide for a visibility timeout) whatever the next measure sends.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    watcher.close().await;
    elapsed
}

/// Messages/s, medians over the rounds.
struct ConsumerFigures {
    messages: usize,
    rounds: usize,
    raw: f64,
    sqlite: f64,
    postgres_near: f64,
    postgres_far: f64,
    /// Medians of the rounds' ratios.
    sqlite_to_raw: f64,
    postgres_to_raw: f64,
    far_to_near: f64,
}

async fn consumer_rounds(near: &Route, far: &Route, queue: &str) -> ConsumerFigures {
    let messages = size("BENCH_MESSAGES", 2000);
    let rounds = rounds("BENCH_ROUNDS", 5);
    let mut measured: Vec<[f64; 4]> = Vec::new();
    for round in 0..rounds {
        let m = [
            rate(messages, raw_pipelined(&near.bus, queue, messages).await),
            rate(messages, consumer_loop(near, queue, Backend::Sqlite, messages).await),
            rate(messages, consumer_loop(near, queue, Backend::Postgres, messages).await),
            rate(messages, consumer_loop(far, queue, Backend::Postgres, messages).await),
        ];
        println!(
            "round {round}: raw {:.0}, SQLite {:.0}, PostgreSQL near {:.0}, far {:.0} msg/s",
            m[0], m[1], m[2], m[3]
        );
        measured.push(m);
    }
    let column = |i: usize| median(measured.iter().map(|m| m[i]).collect());
    let ratio = |a: usize, b: usize| median(measured.iter().map(|m| m[a] / m[b]).collect());
    ConsumerFigures {
        messages,
        rounds,
        raw: column(0),
        sqlite: column(1),
        postgres_near: column(2),
        postgres_far: column(3),
        sqlite_to_raw: ratio(1, 0),
        postgres_to_raw: ratio(2, 0),
        far_to_near: ratio(3, 2),
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 2: hop latencies.

/// One message at a time: from the send (or publish) call to the receive that returns it, ms.
async fn hop_latencies(bus: &Bus, send_to: &str, receive_from: &str, n: usize, topic: bool) -> Vec<f64> {
    use utility::messaging::message::{CustomerEnrolled, Message};
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let message = Outgoing::from(&Envelope::new(
            Message::CustomerEnrolled(CustomerEnrolled {
                customer_id: uuid::Uuid::now_v7(),
                name: utility::domain::CustomerName::parse("Hop").expect("name"),
                email: utility::domain::Email::parse("hop@example.com").expect("email"),
            }),
            uuid::Uuid::now_v7(),
        ));
        let receiver = {
            let (bus, queue) = (bus.clone(), receive_from.to_owned());
            tokio::spawn(async move {
                loop {
                    let received = bus.receive(&queue, 20).await.expect("receive");
                    if !received.is_empty() {
                        let at = Instant::now();
                        let receipts: Vec<&str> = received.iter().map(|m| m.receipt_handle.as_str()).collect();
                        bus.delete_batch(&queue, &receipts).await.expect("delete");
                        return at;
                    }
                }
            })
        };
        // Let the long poll reach the emulator first, as a consumer's would be.
        tokio::time::sleep(Duration::from_millis(40)).await;
        let sent = Instant::now();
        if topic {
            bus.publish_batch(send_to, std::slice::from_ref(&message))
                .await
                .expect("publish");
        } else {
            bus.send_batch(send_to, std::slice::from_ref(&message))
                .await
                .expect("send");
        }
        let received = receiver.await.expect("receiver");
        latencies.push(received.duration_since(sent).as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// p50 of each hop, ms, and a saga's sum of them (2 SQS sends + 2 SNS publishes).
struct Hops {
    sqs: f64,
    sns: f64,
}

impl Hops {
    fn sum(&self) -> f64 {
        2.0 * self.sqs + 2.0 * self.sns
    }
}

async fn hops(route: &Route, stack: &TestStack) -> Hops {
    let n = size("BENCH_HOPS", 40);
    let queue = stack.output("CustomerCommandsQueueUrl");
    let sqs = hop_latencies(&route.bus, queue, queue, n, false).await;
    let sns = hop_latencies(
        &route.bus,
        stack.output("CustomerEventsTopicArn"),
        stack.output("GatewayEventsQueueUrl"),
        n,
        true,
    )
    .await;
    Hops {
        sqs: percentile(&sqs, 50.0),
        sns: percentile(&sns, 50.0),
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 3: whole sagas through the release binaries.

/// What one run of whole sagas through one route measured.
#[derive(Default)]
struct SagaRun {
    /// Accepted -> completed, ms, sorted: sagas one after another.
    sequential_ms: Vec<f64>,
    /// Sagas submitted at once, per second until the last completed.
    per_second: f64,
    /// Accepted -> completed, ms, sorted: sagas submitted at once.
    concurrent_ms: Vec<f64>,
    /// Requests the three services sent per completed saga (submitted at once), by operation.
    billed: BTreeMap<String, f64>,
    /// Bus messages per completed saga (submitted at once): [`SAGA_MESSAGES`] and one status
    /// event per history entry, as the gateway's database shows them.
    messages_per_saga: f64,
    /// Of those, the messages that reach a queue, each received and deleted once:
    /// [`SAGA_MESSAGES`] and the status events of enrollments with a callback (the others stop
    /// at the topic).
    received_per_saga: f64,
    /// Per service (by index): CPU ms per saga (submitted at once), peak RSS MiB.
    cpu_ms: [f64; 3],
    rss_mib: [f64; 3],
    /// The three services' JSON log, per completed saga (submitted at once).
    log_bytes: f64,
    log_lines: f64,
    /// `ReceiveMessage` calls per consumer per minute with nothing to do, when measured.
    idle_receives: Option<f64>,
}

impl SagaRun {
    fn billed_total(&self) -> f64 {
        self.billed.values().sum()
    }

    /// Billed requests per saga if every request carried ten messages: each message is sent or
    /// published once, and each that reaches a queue received once and deleted once.
    fn batching_floor(&self) -> f64 {
        (self.messages_per_saga + self.received_per_saga * 2.0) / 10.0
    }
}

/// `pending -> completed` of every saga accepted from `since` on that completed, in ms, sorted.
async fn saga_latencies(pool: &sqlx::AnyPool, since: &str) -> Vec<f64> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.at, c.at FROM enrollment_history p JOIN enrollment_history c
         ON c.enrollment_id = p.enrollment_id AND c.status = 'completed'
         WHERE p.status = 'pending' AND p.at >= $1",
    )
    .bind(since)
    .fetch_all(pool)
    .await
    .expect("history");
    let mut latencies: Vec<f64> = rows
        .iter()
        .filter_map(|(p, c)| {
            let p = chrono::DateTime::parse_from_rfc3339(p).ok()?;
            let c = chrono::DateTime::parse_from_rfc3339(c).ok()?;
            Some((c - p).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// History entries of the sagas accepted from `since` on: one `EnrollmentStatusChanged` each,
/// published; and of those, the entries of enrollments with a callback, which the topic delivers
/// to the webhook-deliveries queue.
async fn status_events(pool: &sqlx::AnyPool, since: &str) -> (f64, f64) {
    let (entries, delivered): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(e.callback_url) FROM enrollment_history h JOIN enrollments e ON e.id = h.enrollment_id
         WHERE h.enrollment_id IN
         (SELECT p.enrollment_id FROM enrollment_history p WHERE p.status = 'pending' AND p.at >= $1)",
    )
    .bind(since)
    .fetch_one(pool)
    .await
    .expect("history entries");
    (entries as f64, delivered as f64)
}

/// Peak RSS (MiB) and CPU time (ms, user + system, at Linux's 100 ticks a second) of `pid`.
fn process_figures(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let rss_kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((rss_kib / 1024.0, ticks * 10.0))
}

/// `saga_bus_requests_total` by operation, summed over the three services.
async fn bus_requests(processes: &Processes) -> BTreeMap<String, f64> {
    let mut requests = BTreeMap::new();
    for service in [processes.gateway(), processes.customer(), processes.transaction()] {
        for line in processes.metrics(service).await.lines() {
            let Some(rest) = line.strip_prefix("saga_bus_requests_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let Some(operation) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("operation=\""))
                .map(|o| o.trim_end_matches('"'))
            else {
                continue;
            };
            *requests.entry(operation.to_owned()).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    requests
}

/// Lines and bytes (with their newlines) of the three services' output so far.
fn log_volume(processes: &Processes) -> (usize, usize) {
    let services = [processes.gateway(), processes.customer(), processes.transaction()];
    services.iter().fold((0, 0), |(lines, bytes), service| {
        let all = service.lines();
        (
            lines + all.len(),
            bytes + all.iter().map(|l| l.len() + 1).sum::<usize>(),
        )
    })
}

fn cpu_and_rss(processes: &Processes) -> [(f64, f64); 3] {
    [processes.gateway(), processes.customer(), processes.transaction()]
        .map(|s| s.pid().and_then(process_figures).unwrap_or((f64::NAN, f64::NAN)))
}

/// The three binaries, one instance each, on PostgreSQL, through `route`: `sequential` sagas one
/// after another, then `concurrent` submitted at once, then, when `idle_seconds` is given,
/// nothing for that long.
async fn saga_run(route: &Route, sequential: usize, concurrent: usize, idle_seconds: Option<u64>) -> SagaRun {
    let processes = Processes::start_with(Layout {
        receive_wait_seconds: RECEIVE_WAIT_SECONDS as u32,
        backend: Backend::Postgres,
        endpoint: route.endpoint.clone(),
        postgres_admin_url: route.postgres_admin.clone(),
        // The services' own defaults: log level, relay interval, no gauge lines.
        env: Vec::new(),
        ..Layout::default()
    })
    .await
    .expect("the services start");
    let gateway = processes.gateway();
    let gateway_db = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&processes.dbs[GATEWAY].url)
        .await
        .expect("gateway database");
    let mut run = SagaRun::default();

    let since = utility::storage::now();
    for i in 0..sequential {
        let email = format!("seq-{i}-{}@example.com", uuid::Uuid::new_v4().simple());
        processes.submit(gateway, &email).await;
        let one_by_one = Count {
            every: Duration::from_millis(2),
            limit: Duration::from_secs(60),
            ..COMPLETED
        };
        one_by_one.until(&gateway_db, i + 1).await;
    }
    run.sequential_ms = saga_latencies(&gateway_db, &since).await;

    let (requests, logs, cpu) = (
        bus_requests(&processes).await,
        log_volume(&processes),
        cpu_and_rss(&processes),
    );
    let since = utility::storage::now();
    let started = Instant::now();
    for chunk in (0..concurrent).collect::<Vec<_>>().chunks(16) {
        futures::future::join_all(chunk.iter().map(|i| {
            let email = format!("burst-{i}-{}@example.com", uuid::Uuid::new_v4().simple());
            let processes = &processes;
            async move { processes.submit(gateway, &email).await }
        }))
        .await;
    }
    COMPLETED.until(&gateway_db, sequential + concurrent).await;
    run.per_second = rate(concurrent, started.elapsed());
    run.concurrent_ms = saga_latencies(&gateway_db, &since).await;
    let (published, delivered) = status_events(&gateway_db, &since).await;
    run.messages_per_saga = SAGA_MESSAGES + published / concurrent as f64;
    run.received_per_saga = SAGA_MESSAGES + delivered / concurrent as f64;
    // The last deletes are gathered for a moment before they are sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = concurrent as f64;
    run.billed = bus_requests(&processes)
        .await
        .into_iter()
        .map(|(operation, after)| {
            let before = requests.get(&operation).copied().unwrap_or(0.0);
            (operation, (after - before) / n)
        })
        .filter(|(_, per_saga)| *per_saga > 0.0)
        .collect();
    let (lines, bytes) = log_volume(&processes);
    run.log_lines = (lines - logs.0) as f64 / n;
    run.log_bytes = (bytes - logs.1) as f64 / n;
    for (i, (after, before)) in cpu_and_rss(&processes).iter().zip(cpu).enumerate() {
        run.cpu_ms[i] = (after.1 - before.1) / n;
        run.rss_mib[i] = after.0;
    }

    if let Some(seconds) = idle_seconds {
        let receives = async || {
            bus_requests(&processes)
                .await
                .get("SQS.ReceiveMessage")
                .copied()
                .unwrap_or(0.0)
        };
        // The pollers a burst added retire on their first receive that comes back empty, up to
        // one long poll after the burst: idle starts once they have.
        tokio::time::sleep(Duration::from_secs(RECEIVE_WAIT_SECONDS + 2)).await;
        let before = receives().await;
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        run.idle_receives = Some((receives().await - before) / IDLE_POLLERS * 60.0 / seconds as f64);
    }
    gateway_db.close().await;
    processes.stop().await;
    run
}

// ---------------------------------------------------------------------------------------------
// The results.

/// Everything the run measured.
struct Results {
    consumer: ConsumerFigures,
    hops_near: Hops,
    hops_far: Hops,
    near: Vec<SagaRun>,
    far: Vec<SagaRun>,
    /// Far / near of whole sagas, the median of the rounds'.
    sagas_far_to_near: f64,
    idle_receives: f64,
    /// An operator lookup over the bus at idle, near.
    lookup: lookups::LookupLatency,
}

/// The median over runs of one figure.
fn over(runs: &[SagaRun], figure: impl Fn(&SagaRun) -> f64) -> f64 {
    median(runs.iter().map(figure).collect())
}

/// All the runs' latencies together, sorted.
fn pooled(runs: &[SagaRun], latencies: impl Fn(&SagaRun) -> &Vec<f64>) -> Vec<f64> {
    let mut all: Vec<f64> = runs.iter().flat_map(|r| latencies(r).iter().copied()).collect();
    all.sort_by(f64::total_cmp);
    all
}

impl Results {
    fn measured(&self) -> Vec<Measured> {
        let c = &self.consumer;
        let mut m = vec![
            Measured {
                id: Id::ConsumerFarNear,
                value: c.far_to_near,
                shown: format!(
                    "{:.2} ({:.0} / {:.0} msg/s)",
                    c.far_to_near, c.postgres_far, c.postgres_near
                ),
            },
            Measured {
                id: Id::SagasFarNear,
                value: self.sagas_far_to_near,
                shown: format!(
                    "{:.2} ({:.1} / {:.1} sagas/s)",
                    self.sagas_far_to_near,
                    over(&self.far, |r| r.per_second),
                    over(&self.near, |r| r.per_second)
                ),
            },
            Measured {
                id: Id::ConsumerSqliteRaw,
                value: c.sqlite_to_raw,
                shown: format!("{:.2} ({:.0} / {:.0} msg/s)", c.sqlite_to_raw, c.sqlite, c.raw),
            },
            Measured {
                id: Id::ConsumerPostgresRaw,
                value: c.postgres_to_raw,
                shown: format!("{:.2} ({:.0} / {:.0} msg/s)", c.postgres_to_raw, c.postgres_near, c.raw),
            },
        ];
        m.push(Measured {
            id: Id::Lookup,
            value: self.lookup.ratio(),
            shown: format!(
                "{:.2}x ({:.1} ms; one hop {:.1} ms; the first lookup after start {:.1} ms)",
                self.lookup.ratio(),
                self.lookup.lookup_ms,
                self.lookup.hop_ms,
                self.lookup.first_ms
            ),
        });
        for (id, runs) in [(Id::BilledNear, &self.near), (Id::BilledFar, &self.far)] {
            let (billed, floor) = (over(runs, SagaRun::billed_total), over(runs, SagaRun::batching_floor));
            m.push(Measured {
                id,
                value: billed / floor,
                shown: format!("{:.2}x ({billed:.2} requests, floor {floor:.1})", billed / floor),
            });
        }
        m.push(Measured {
            id: Id::IdleReceives,
            value: self.idle_receives,
            shown: format!("{:.1}", self.idle_receives),
        });
        for (p50, p99, runs, hops) in [
            (Id::P50Near, Id::P99Near, &self.near, &self.hops_near),
            (Id::P50Far, Id::P99Far, &self.far, &self.hops_far),
        ] {
            let latencies = pooled(runs, |r| &r.sequential_ms);
            for (id, p) in [(p50, 50.0), (p99, 99.0)] {
                let ms = percentile(&latencies, p);
                m.push(Measured {
                    id,
                    value: ms / hops.sum(),
                    shown: format!("{:.2}x ({ms:.1} ms / {:.1} ms)", ms / hops.sum(), hops.sum()),
                });
            }
        }
        let all: Vec<&SagaRun> = self.near.iter().chain(&self.far).collect();
        let log_bytes = median(all.iter().map(|r| r.log_bytes).collect());
        m.push(Measured {
            id: Id::LogBytes,
            value: log_bytes,
            shown: format!(
                "{log_bytes:.0} B ({:.1} lines)",
                median(all.iter().map(|r| r.log_lines).collect())
            ),
        });
        for i in 0..3 {
            let (near, far) = (over(&self.near, |r| r.cpu_ms[i]), over(&self.far, |r| r.cpu_ms[i]));
            m.push(Measured {
                id: Id::Cpu(i),
                value: near.max(far),
                shown: format!("{near:.2} near, {far:.2} far"),
            });
            let rss = all.iter().map(|r| r.rss_mib[i]).fold(0.0, f64::max);
            m.push(Measured {
                id: Id::Rss(i),
                value: rss,
                shown: format!("{rss:.1} MiB"),
            });
        }
        m
    }

    /// `| measure | figure | target | verdict |` rows, in [`TARGETS`]' order.
    fn against_targets(&self) -> (String, usize) {
        let measured = self.measured();
        let mut table = String::from("| measure | figure | target | |\n|---|---|---|---|\n");
        let mut unmet = 0;
        for t in &TARGETS {
            let Some(m) = measured.iter().find(|m| m.id == t.id) else {
                continue;
            };
            let met = if t.at_most {
                m.value <= t.limit
            } else {
                m.value >= t.limit
            };
            unmet += usize::from(!met);
            let verdict = if met { "met" } else { "**not met**" };
            let _ = writeln!(table, "| {} | {} | {} | {verdict} |", t.measure, m.shown, t.shown);
        }
        (table, unmet)
    }

    /// Every other figure of the run, near and far side by side.
    fn details(&self) -> String {
        let c = &self.consumer;
        let mut t = String::from("| figure | near | far | far / near |\n|---|---|---|---|\n");
        let mut row = |what: &str, near: f64, far: f64, unit: &str| {
            let _ = writeln!(t, "| {what} | {near:.1} {unit} | {far:.1} {unit} | {:.2} |", far / near);
        };
        row(
            "consumer loop, PostgreSQL (no-op handler)",
            c.postgres_near,
            c.postgres_far,
            "msg/s",
        );
        row(
            "whole sagas, submitted at once",
            over(&self.near, |r| r.per_second),
            over(&self.far, |r| r.per_second),
            "sagas/s",
        );
        for (what, p) in [("p50", 50.0), ("p99", 99.0)] {
            row(
                &format!("saga latency {what}, submitted at once"),
                percentile(&pooled(&self.near, |r| &r.concurrent_ms), p),
                percentile(&pooled(&self.far, |r| &r.concurrent_ms), p),
                "ms",
            );
            row(
                &format!("saga latency {what}, one after another"),
                percentile(&pooled(&self.near, |r| &r.sequential_ms), p),
                percentile(&pooled(&self.far, |r| &r.sequential_ms), p),
                "ms",
            );
        }
        row("SQS send -> receive, p50", self.hops_near.sqs, self.hops_far.sqs, "ms");
        row(
            "SNS publish -> SQS receive, p50",
            self.hops_near.sns,
            self.hops_far.sns,
            "ms",
        );
        row("hop sum of a saga", self.hops_near.sum(), self.hops_far.sum(), "ms");
        let operations: std::collections::BTreeSet<&String> = self
            .near
            .iter()
            .chain(&self.far)
            .flat_map(|r| r.billed.keys())
            .collect();
        for operation in operations {
            let of = |r: &SagaRun| r.billed.get(operation).copied().unwrap_or(0.0);
            let _ = writeln!(
                t,
                "| billed {operation} per saga | {:.2} | {:.2} | |",
                over(&self.near, of),
                over(&self.far, of)
            );
        }
        for (i, name) in NAMES.iter().enumerate() {
            let _ = writeln!(
                t,
                "| CPU ms per saga, {name} | {:.2} | {:.2} | |",
                over(&self.near, |r| r.cpu_ms[i]),
                over(&self.far, |r| r.cpu_ms[i])
            );
        }
        let _ = writeln!(
            t,
            "| JSON log per saga | {:.0} B | {:.0} B | |",
            over(&self.near, |r| r.log_bytes),
            over(&self.far, |r| r.log_bytes)
        );
        let _ = writeln!(
            t,
            "| raw receive + delete (the consumer's shape, no database) | {:.0} msg/s | | |",
            c.raw
        );
        let _ = writeln!(t, "| consumer loop, SQLite | {:.0} msg/s | | |", c.sqlite);
        t
    }
}

// ---------------------------------------------------------------------------------------------
// Capacity: docs/capacity.md's model applied to the far figures.

/// Instances of each service and dollars per million enrollments at `per_second`.
struct Plan {
    instances: [usize; 3],
    instance_type: &'static str,
    database_class: &'static str,
    bus: f64,
    logs: f64,
    nat: f64,
    alb: f64,
    ec2: f64,
    rds: f64,
}

impl Plan {
    fn total(&self) -> f64 {
        self.bus + self.logs + self.nat + self.alb + self.ec2 + self.rds
    }
}

/// `messages/s per consumer` is the far consumer loop's rate; the rest as docs/capacity.md says.
fn plan(results: &Results, per_second: f64) -> Plan {
    let far = &results.far;
    let consumer_rate = results.consumer.postgres_far;
    // Messages consumed per saga: the gateway takes both events and the status events of
    // enrollments with a callback, the others a command each.
    let messages = over(far, |r| r.messages_per_saga);
    let received = over(far, |r| r.received_per_saga);
    let consumed = [2.0 + (received - SAGA_MESSAGES), 1.0, 1.0];
    let cpu_ms = [0, 1, 2].map(|i| over(far, |r| r.cpu_ms[i]));
    let least = if per_second >= 100.0 { 2 } else { 1 };
    // What a t3 sustains: its baseline (10 % of 2 vCPU on a t3.micro, 20 % on a t3.small).
    let count = |sustained_vcpu: f64| {
        [0, 1, 2].map(|i| {
            let for_consumers = (per_second * consumed[i] / consumer_rate).ceil() as usize;
            let for_cpu = (per_second * cpu_ms[i] / 1000.0 / sustained_vcpu).ceil() as usize;
            for_consumers.max(for_cpu).max(least)
        })
    };
    let (micro, small) = (count(0.2), count(0.4));
    let hourly = |counts: [usize; 3], price: f64| counts.iter().sum::<usize>() as f64 * price;
    let (instances, instance_type, ec2_hourly) = if hourly(micro, 0.0104) <= hourly(small, 0.0208) {
        (micro, "t3.micro", hourly(micro, 0.0104))
    } else {
        (small, "t3.small", hourly(small, 0.0208))
    };
    let (database_class, database_hourly) = match per_second {
        r if r < 50.0 => ("db.t4g.micro", 0.016),
        r if r < 500.0 => ("db.t4g.medium", 0.065),
        _ => ("db.m7g.large", 0.168),
    };
    // Millions of enrollments an hour.
    let millions_an_hour = per_second * 3600.0 / 1e6;
    let of_operations = |prefix: &str| {
        over(far, |r| {
            r.billed
                .iter()
                .filter(|(o, _)| o.starts_with(prefix))
                .map(|(_, n)| n)
                .sum()
        })
    };
    let log_kb = over(far, |r| r.log_bytes) / 1000.0;
    Plan {
        instances,
        instance_type,
        database_class,
        bus: of_operations("SQS.") * 0.40 + of_operations("SNS.") * 0.50,
        logs: log_kb * 0.50 * 1.06,
        // Each message crosses the NAT at ~2 KB with its request when sent or published, and
        // again when received, plus the log bytes; $0.045/GB.
        nat: ((messages + received) * 2.0 + log_kb) * 0.045,
        alb: 0.09,
        ec2: ec2_hourly / millions_an_hour,
        rds: 3.0 * database_hourly / millions_an_hour,
    }
}

fn capacity(results: &Results) -> String {
    let plans: Vec<Plan> = [10.0, 100.0, 1000.0].iter().map(|r| plan(results, *r)).collect();
    let mut t = String::from("| | 10/s | 100/s | 1,000/s |\n|---|---|---|---|\n");
    let mut row = |what: &str, cell: &dyn Fn(&Plan) -> String| {
        let cells: Vec<String> = plans.iter().map(cell).collect();
        let _ = writeln!(t, "| {what} | {} |", cells.join(" | "));
    };
    for (i, name) in NAMES.iter().enumerate() {
        row(&format!("{name} instances"), &|p| p.instances[i].to_string());
    }
    row("instance type", &|p| p.instance_type.to_owned());
    row("database class (each of 3)", &|p| p.database_class.to_owned());
    row("$ per million: bus (SQS + SNS)", &|p| format!("{:.2}", p.bus));
    row("$ per million: CloudWatch Logs", &|p| format!("{:.2}", p.logs));
    row("$ per million: NAT data", &|p| format!("{:.2}", p.nat));
    row("$ per million: public ALB", &|p| format!("{:.2}", p.alb));
    row("$ per million: EC2", &|p| format!("{:.2}", p.ec2));
    row("$ per million: RDS", &|p| format!("{:.2}", p.rds));
    row("**$ per million enrollments**", &|p| format!("**{:.2}**", p.total()));
    t
}

// ---------------------------------------------------------------------------------------------
// The page.

/// `git` in the workspace, trimmed; empty when it fails.
fn git(args: &[&str]) -> String {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::process::Command::new("git")
        .args(args)
        .current_dir(workspace)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, Linux {}", kernel.trim())
}

fn page(results: &Results, run: &str) -> String {
    let (targets, unmet) = results.against_targets();
    let c = &results.consumer;
    format!(
        "# Performance\n\n\
         Written by `make bench` (`gateway/benches/pipeline.rs`); do not edit by hand. How it \
         measures and how to read it: [testing.md, The benchmark](testing.md#the-benchmark). The \
         model behind the capacity table: [capacity.md](capacity.md).\n\n\
         ## Run\n\n{run}\n\
         \"Near\": the emulator (LocalStack) and PostgreSQL on loopback, through a relay that adds \
         nothing. \"Far\": the same relays adding {} ms each way to the emulator and {} ms each way \
         to PostgreSQL, the round trips of AWS in one region. Near and far alternate within the \
         run. The consumer loop: {} messages, {} interleaved rounds, medians. Whole sagas: the \
         three release binaries, one instance each, on PostgreSQL, default log level, JSON logs; \
         {} rounds each way.\n\n\
         ## Figures against targets\n\n{targets}\n{unmet} of {} targets not met.\n\n\
         ### Near and far\n\n{}\n\
         ## Capacity\n\n\
         [capacity.md](capacity.md)'s model with this run's far figures: messages per second per \
         consumer {:.0} (the far consumer loop on PostgreSQL, against one emulator on this \
         machine: a floor, not AWS's ceiling), CPU ms per saga per service, billed requests per \
         saga and log bytes per saga, all far. Instances: the most of the consumers' and the \
         CPU's count, at least 2 from 100/s; a t3 is held to its baseline. Dollars per million \
         enrollments: the bus and the logs as measured, the NAT, ALB, EC2 and RDS as the model \
         prices them (storage not counted).\n\n{}",
        FAR_BUS.as_secs_f64() * 1000.0,
        FAR_DATABASE.as_secs_f64() * 1000.0,
        c.messages,
        c.rounds,
        results.near.len(),
        TARGETS.len(),
        results.details(),
        c.postgres_far,
        capacity(results),
    )
}

/// Phase 3, near and far alternately, each run's figures printed as it ends: `idle`, the seconds
/// of idle receives measured after the first near run.
async fn saga_rounds(near: &Route, far: &Route, idle: Option<u64>) -> (Vec<SagaRun>, Vec<SagaRun>) {
    let (sequential, concurrent) = (size("BENCH_SEQUENTIAL", 100), size("BENCH_ENROLLMENTS", 400));
    let (mut near_runs, mut far_runs) = (Vec::new(), Vec::new());
    for round in 0..rounds("BENCH_SAGA_ROUNDS", 2) {
        for route in [near, far] {
            let idle = idle.filter(|_| round == 0 && route.name == "near");
            let run = saga_run(route, sequential, concurrent, idle).await;
            println!(
                "round {round}, {}: one after another p50 {:.1} ms, p99 {:.1} ms; {:.1} sagas/s, {:.2} billed requests \
                 (floor {:.2}), {:.0} log bytes per saga; CPU ms per saga {:.2} / {:.2} / {:.2}, peak RSS {:.1} / \
                 {:.1} / {:.1} MiB",
                route.name,
                percentile(&run.sequential_ms, 50.0),
                percentile(&run.sequential_ms, 99.0),
                run.per_second,
                run.billed_total(),
                run.batching_floor(),
                run.log_bytes,
                run.cpu_ms[GATEWAY],
                run.cpu_ms[CUSTOMER],
                run.cpu_ms[TRANSACTION],
                run.rss_mib[GATEWAY],
                run.rss_mib[CUSTOMER],
                run.rss_mib[TRANSACTION],
            );
            (if route.name == "near" {
                &mut near_runs
            } else {
                &mut far_runs
            })
            .push(run);
        }
    }
    (near_runs, far_runs)
}

/// Phase 4: an operator lookup over the bus at idle, on its own system.
async fn lookup_phase() -> lookups::LookupLatency {
    let system = testkit::System::start(Backend::Postgres, testkit::Options::default()).await;
    let lookup = lookups::measure(&system, size("BENCH_LOOKUPS", 40)).await;
    system.stop().await;
    lookup
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let started = chrono::Utc::now();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    if std::env::var("BENCH_ONLY").as_deref() == Ok("lookup") {
        let lookup = lookup_phase().await;
        println!(
            "lookup p50 {:.1} ms, one hop {:.1} ms: {:.2}x the two hops; the first lookup {:.1} ms",
            lookup.lookup_ms,
            lookup.hop_ms,
            lookup.ratio(),
            lookup.first_ms
        );
        return;
    }
    let near = Route::start("near", Duration::ZERO, Duration::ZERO).await;
    let far = Route::start("far", FAR_BUS, FAR_DATABASE).await;
    if std::env::var("BENCH_ONLY").as_deref() == Ok("sagas") {
        saga_rounds(&near, &far, None).await;
        return;
    }
    let stack = TestStack::deploy(&near.bus).await;
    let queue = stack.output("TransactionCommandsQueueUrl").to_owned();

    println!("1. the consumer loop");
    let consumer = consumer_rounds(&near, &far, &queue).await;
    if std::env::var("BENCH_ONLY").as_deref() == Ok("consumer") {
        println!(
            "median: raw {:.0} msg/s; SQLite {:.2}, PostgreSQL {:.2} of raw; PostgreSQL far / near {:.2}",
            consumer.raw, consumer.sqlite_to_raw, consumer.postgres_to_raw, consumer.far_to_near
        );
        return;
    }

    println!("2. hop latencies");
    let (hops_near, hops_far) = (hops(&near, &stack).await, hops(&far, &stack).await);

    println!("3. whole sagas");
    // The idle window waits out one long poll first (20 s): the smoke run under `cargo test` skips it.
    let idle = benching().then(|| size("BENCH_IDLE_SECONDS", 40) as u64);
    let (near_runs, far_runs) = saga_rounds(&near, &far, idle).await;
    println!("4. an operator lookup over the bus, at idle");
    let lookup = lookup_phase().await;
    let sagas_far_to_near = median(
        near_runs
            .iter()
            .zip(&far_runs)
            .map(|(n, f)| f.per_second / n.per_second)
            .collect(),
    );
    let idle_receives = near_runs.iter().find_map(|r| r.idle_receives).unwrap_or(f64::NAN);
    let results = Results {
        consumer,
        hops_near,
        hops_far,
        near: near_runs,
        far: far_runs,
        sagas_far_to_near,
        idle_receives,
        lookup,
    };

    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = if git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        ""
    } else {
        " with uncommitted changes"
    };
    let run = format!(
        "| | |\n|---|---|\n| date | {} |\n| machine | {}, {} cores, load average at the start {} |\n\
         | commit | `{commit}`{dirty} |\n| command | `make bench` |\n\
         | e-mail confirmation | `EMAIL_CONFIRMATION=off`: sagas run without waiting on a person |\n",
        started.format("%Y-%m-%d %H:%M UTC"),
        machine(),
        std::thread::available_parallelism().map_or(1, usize::from),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    let page = page(&results, &run);
    println!("\n{page}");
    // Only a real run is kept; the smoke run under `cargo test` writes nothing.
    if benching() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/performance.md");
        std::fs::write(&path, page).expect("write docs/performance.md");
        println!("written: docs/performance.md");
    }
}
