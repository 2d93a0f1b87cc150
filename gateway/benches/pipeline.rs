//! Throughput and latency of the pipeline, against the raw bus measured in the same run.
//!
//! `make bench` (or `cargo bench -p gateway --bench pipeline`) with LocalStack running. It prints:
//! 1. raw SQS: `SendMessageBatch`, then `ReceiveMessage` + `DeleteMessageBatch`, messages/s, and
//!    the two together (a message's whole life: the ceiling for whole sagas);
//! 2. the consumer loop as services run it (parse, dedup insert, handler, one commit per receive
//!    batch, the next receive while it commits, deletes gathered across receives) on SQLite and on
//!    PostgreSQL, messages/s, and its ratio to raw receive+delete in the same shape: `BENCH_ROUNDS`
//!    (5) interleaved rounds, the median reported, and where the CPU went (this process, the
//!    emulator, the PostgreSQL server);
//! 3. whole sagas through the three services (gateway -> customer-api -> gateway ->
//!    transaction-api -> gateway), enrollments/s and p50/p95/max latency from acceptance to
//!    `completed`, taken from the stored history timestamps;
//! 4. the peak resident memory of this process (all three services run in it);
//! 5. the hop latencies of the bus (SQS send -> receive, SNS publish -> SQS receive through a
//!    subscription), one message at a time, and the latency of sagas submitted one after another
//!    against the sum of a saga's four hops (two of each);
//! 6. billed requests: every SQS and SNS request the three services sent (the bus's request
//!    interceptor, retries, empty receives and visibility changes included) per completed saga
//!    during the concurrent run;
//! 7. idle cost: `ReceiveMessage` calls per poller per minute with nothing to do, at the default
//!    20 s long poll;
//! 8. the real binaries, one process each: peak RSS of each under the concurrent load, and the
//!    CPU time each spent per saga (from `/proc`);
//! 9. scale-out: the real binaries on PostgreSQL with one, then `INSTANCES` (3) instances of every
//!    service (competing consumers, relays claiming rows with `SKIP LOCKED`), sagas/s side by side.
//!
//! Every figure with a target is printed with it (issue "close to the bus ceiling").
//! `BENCH_MESSAGES` (default 2000), `BENCH_ENROLLMENTS` (default 300), `BENCH_SEQUENTIAL` (200),
//! `BENCH_HOPS` (50), `BENCH_IDLE_SECONDS` (40) and `BENCH_SCALE_ENROLLMENTS` (300) set the sizes
//! (`cargo test` runs a twentieth); `BENCH_ONLY=consumer` stops after step 2. Figures from an
//! emulator on a shared 2-core machine are relative, not absolute: read the ratios. The run is
//! also written as a page, `target/bench/pipeline.html`.

#[path = "pipeline/report.rs"]
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::{Backend, Layout, Options, Patience, Poll, Processes, System, TestDb, TestStack, eventually};
use utility::messaging::bus::{Bus, Outgoing};
use utility::messaging::consumer::{AfterCommit, Consumer, Handler, HandlerError};
use utility::messaging::envelope::Envelope;
use utility::storage::AnyConnection;

/// Run by `cargo bench` (else by `cargo test`, as a smoke run).
fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// `BENCH_*` or the default; under `cargo test` (which runs this without `--bench`), a smoke run
/// of a twentieth of the size, so `make test` checks that the benchmark works without paying for it.
fn size(var: &str, default: usize) -> usize {
    let default = if benching() { default } else { (default / 20).max(2) };
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn envelopes(n: usize) -> Vec<Outgoing> {
    (0..n)
        .map(|_| {
            let message =
                utility::messaging::message::Message::PostBonusPoints(utility::messaging::message::PostBonusPoints {
                    customer_id: uuid::Uuid::now_v7(),
                });
            Outgoing::from(&Envelope::new(message, uuid::Uuid::now_v7()))
        })
        .collect()
}

/// Sends with up to 8 batch calls in flight.
async fn send_all(bus: &Bus, queue: &str, messages: &[Outgoing]) {
    let mut chunks = messages.chunks(10 * 4);
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

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// One message at a time: from the send (or publish) call to the receive that returns it.
async fn hop_latencies(bus: &Bus, send_to: &str, receive_from: &str, n: usize, topic: bool) -> Vec<f64> {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let message = Outgoing::from(&Envelope::new(
            utility::messaging::message::Message::CustomerEnrolled(utility::messaging::message::CustomerEnrolled {
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
                        let receipts: Vec<&str> = received.iter().map(|m| m.receipt_handle.as_str()).collect();
                        bus.delete_batch(&queue, &receipts).await.expect("delete");
                        return Instant::now();
                    }
                }
            })
        };
        // Let the long poll reach the emulator first, as a consumer's would be.
        tokio::time::sleep(Duration::from_millis(20)).await;
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
            Some((c - p).num_milliseconds() as f64)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    latencies
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

/// CPU time (ms, user + system) spent so far by this process, by the emulator (LocalStack's
/// Python process) and by the PostgreSQL server (its processes, with the backends that have
/// exited, which the postmaster has collected): where a run's cores go. On a small machine the
/// three share the same cores, so what the services spend the emulator cannot.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    bench: f64,
    emulator: f64,
    postgres: f64,
    /// Bus requests sent meanwhile, where the caller counts them.
    requests: f64,
}

impl Cpu {
    /// Now, with the requests `bus` has sent so far.
    fn of(bus: &Bus) -> Self {
        Self {
            requests: bus.requests().total() as f64,
            ..Self::now()
        }
    }

    fn now() -> Self {
        let mut cpu = Self {
            bench: cpu_ms("self", false).unwrap_or(f64::NAN),
            ..Self::default()
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return cpu;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "postgres" {
                cpu.postgres += cpu_ms(pid, true).unwrap_or(0.0);
            } else if comm.starts_with("python") {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("localstack.runtime") {
                    cpu.emulator += cpu_ms(pid, false).unwrap_or(0.0);
                }
            }
        }
        cpu
    }

    fn since(self, before: Self) -> Self {
        Self {
            bench: self.bench - before.bench,
            emulator: self.emulator - before.emulator,
            postgres: (self.postgres - before.postgres).max(0.0),
            requests: self.requests - before.requests,
        }
    }

    fn plus(self, other: Self) -> Self {
        Self {
            bench: self.bench + other.bench,
            emulator: self.emulator + other.emulator,
            postgres: self.postgres + other.postgres,
            requests: self.requests + other.requests,
        }
    }

    fn total(self) -> f64 {
        self.bench + self.emulator + self.postgres
    }

    /// Each part divided by `n` (at least 1), printed.
    fn per(self, n: usize) -> String {
        let n = n.max(1) as f64;
        format!(
            "this process {:.1} ms, emulator {:.1} ms, PostgreSQL {:.1} ms, {:.1} bus requests",
            self.bench / n,
            self.emulator / n,
            self.postgres / n,
            self.requests / n
        )
    }

    /// Cores kept busy over `took`.
    fn cores(self, took: Duration) -> f64 {
        self.total() / 1000.0 / took.as_secs_f64()
    }
}

/// The cores this machine gives the run.
fn cores_here() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// CPU time (ms) of `pid` (or `self`), with its collected children's when `children`.
fn cpu_ms(pid: &str, children: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let upto = if children { 15 } else { 13 };
    let ticks: f64 = fields.get(11..upto)?.iter().filter_map(|f| f.parse::<f64>().ok()).sum();
    // Linux reports in clock ticks, 100 a second.
    Some(ticks * 10.0)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// The raw bus in the consumer's shape without a database: a receive stage one batch ahead of a
/// delete stage that deletes receipts ten per call as they come. How long it takes to drain the
/// `messages` sent to `queue` first.
async fn raw_pipelined(bus: &Bus, queue: &str, messages: usize) -> (Duration, Cpu) {
    send_all(bus, queue, &envelopes(messages)).await;
    let (started, cpu) = (Instant::now(), Cpu::of(bus));
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
    (started.elapsed(), Cpu::of(bus).since(cpu))
}

/// The consumer as services run it ([`Consumer::run`]: parse, dedup insert, handler, one
/// transaction per receive batch, deletes gathered across batches) over `messages` sent to
/// `queue` first: how long until all are handled and deleted.
async fn consumer_loop(bus: &Bus, queue: &str, backend: Backend, messages: usize) -> (Duration, Cpu) {
    send_all(bus, queue, &envelopes(messages)).await;
    let db = TestDb::new(backend, "bench").await;
    let pool = utility::storage::connect(&db.url, sqlx::migrate::Migrator::DEFAULT)
        .await
        .expect("db");
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
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let (started, cpu) = (Instant::now(), Cpu::of(bus));
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
    let (elapsed, cpu) = (started.elapsed(), Cpu::of(bus).since(cpu));
    let left = bus.queue_depth(queue).await.expect("depth");
    assert_eq!(left.total(), 0, "the consumer left messages behind: {left:?}");
    // The receive that the stop abandoned is still open in the emulator for its 1 s wait, and
    // would take (and hide for a visibility timeout) whatever the next measure sends.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (elapsed, cpu)
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
    every: Duration::from_millis(50),
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

/// Sagas per second through the real binaries on PostgreSQL with `instances` instances of each
/// service: `count` enrollments submitted at once, spread over the gateways, until the last one
/// is `completed`.
async fn scale_out(instances: usize, count: usize) -> f64 {
    let processes = Processes::start_with(Layout {
        receive_wait_seconds: 20,
        backend: Backend::Postgres,
        instances,
        ..Layout::default()
    })
    .await
    .expect("the services start");
    let gateways = processes.gateways();
    let gateway_db = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&processes.dbs[testkit::processes::GATEWAY].url)
        .await
        .expect("gateway database");
    let started = Instant::now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(16) {
        futures::future::join_all(chunk.iter().map(|i| {
            let email = format!("scale-{i}-{}@example.com", uuid::Uuid::new_v4().simple());
            let (processes, gateway) = (&processes, gateways[i % gateways.len()]);
            async move { processes.submit(gateway, &email).await }
        }))
        .await;
    }
    COMPLETED.until(&gateway_db, count).await;
    let elapsed = started.elapsed();
    gateway_db.close().await;
    processes.stop().await;
    rate(count, elapsed)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let messages = size("BENCH_MESSAGES", 2000);
    let enrollments = size("BENCH_ENROLLMENTS", 300);
    let bus = testkit::bus().await;
    let stack = TestStack::deploy(&bus).await;
    let queue = stack.output("TransactionCommandsQueueUrl").to_owned();
    println!("pipeline benchmark: {messages} messages, {enrollments} enrollments\n");

    // 1. Raw bus.
    let batch = envelopes(messages);
    let started = Instant::now();
    send_all(&bus, &queue, &batch).await;
    let raw_send = started.elapsed();
    let started = Instant::now();
    let mut drained = 0;
    while drained < messages {
        let received = bus.receive(&queue, 1).await.expect("receive");
        let receipts: Vec<&str> = received.iter().map(|m| m.receipt_handle.as_str()).collect();
        bus.delete_batch(&queue, &receipts).await.expect("delete");
        drained += received.len();
    }
    let raw_serial = started.elapsed();

    // 2. The raw ceiling and the consumer loop on SQLite and on PostgreSQL, same queue, same
    // volume, in interleaved rounds: the emulator's speed drifts within a run, so each round's
    // ratios compare figures taken seconds apart, and the median round is reported.
    let rounds = size("BENCH_ROUNDS", 5);
    let mut measured: Vec<[(Duration, Cpu); 3]> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        measured.push([
            raw_pipelined(&bus, &queue, messages).await,
            consumer_loop(&bus, &queue, Backend::Sqlite, messages).await,
            consumer_loop(&bus, &queue, Backend::Postgres, messages).await,
        ]);
    }
    // The median of each column; the ratios are the medians of the rounds' ratios.
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let column = |i: usize| median(measured.iter().map(|m| rate(messages, m[i].0)).collect());
    let ratio_of = |i: usize| {
        median(
            measured
                .iter()
                .map(|m| m[0].0.as_secs_f64() / m[i].0.as_secs_f64())
                .collect(),
        )
    };
    // Where the CPU went in each column, over all rounds: per 1,000 messages, and cores busy.
    let cpu_of = |i: usize| {
        let (took, cpu) = measured.iter().fold((Duration::ZERO, Cpu::default()), |(t, c), m| {
            (t + m[i].0, c.plus(m[i].1))
        });
        (cpu.per(messages * measured.len() / 1000), cpu.cores(took))
    };
    let (drain_rate, consume_rate, consume_pg_rate) = (column(0), column(1), column(2));
    let (consumer_ratio, consumer_pg_ratio) = (ratio_of(1), ratio_of(2));
    if std::env::var("BENCH_ONLY").as_deref() == Ok("consumer") {
        println!(
            "raw receive+delete, one after the other  {:>8.0} msg/s",
            rate(messages, raw_serial)
        );
        for (i, m) in measured.iter().enumerate() {
            let [raw, sqlite, postgres] = m.map(|(d, _)| rate(messages, d));
            println!(
                "round {i}: raw {raw:.0}, SQLite {sqlite:.0} ({:.2}), PostgreSQL {postgres:.0} ({:.2}) msg/s",
                sqlite / raw,
                postgres / raw
            );
        }
        println!("median: raw {drain_rate:.0}, SQLite {consumer_ratio:.2}, PostgreSQL {consumer_pg_ratio:.2} of raw");
        for (i, name) in ["raw", "SQLite", "PostgreSQL"].iter().enumerate() {
            let (per_thousand, cores) = cpu_of(i);
            println!("CPU per 1000 messages, {name}: {per_thousand}; {cores:.2} cores busy");
        }
        return;
    }

    // Hop latencies, on queues no consumer reads yet.
    let hops = size("BENCH_HOPS", 50);
    let sqs_hops = hop_latencies(&bus, &queue, &queue, hops, false).await;
    let sns_hops = hop_latencies(
        &bus,
        stack.output("CustomerEventsTopicArn"),
        stack.output("GatewayEventsQueueUrl"),
        hops,
        true,
    )
    .await;
    let hop_sum = 2.0 * percentile(&sqs_hops, 50.0) + 2.0 * percentile(&sns_hops, 50.0);

    // 3. Whole sagas: first one after another (latency at low load), then all at once
    // (throughput and billed requests), then nothing (idle cost). Default long polls.
    let options = Options {
        receive_wait_seconds: 20,
        ..Options::default()
    };
    let system = System::start(Backend::Sqlite, options).await;
    let sequential = size("BENCH_SEQUENTIAL", 200);
    let sequential_since = utility::storage::now();
    for i in 0..sequential {
        let email = format!("seq-{i}-{}@example.com", uuid::Uuid::new_v4().simple());
        let id = system.submit("Bench", &email).await;
        system.wait_for_status(&id, &["completed"]).await;
    }
    let sequential_latencies = saga_latencies(&system.gateway().pool, &sequential_since).await;
    let requests_before = system.bus.requests().snapshot();
    let concurrent_since = utility::storage::now();
    let (started, saga_cpu) = (Instant::now(), Cpu::of(&system.bus));
    let mut ids = Vec::with_capacity(enrollments);
    for chunk in (0..enrollments).collect::<Vec<_>>().chunks(16) {
        let submitted = futures::future::join_all(chunk.iter().map(|i| {
            let email = format!("bench-{i}-{}@example.com", uuid::Uuid::new_v4().simple());
            let system = &system;
            async move { system.submit("Bench", &email).await }
        }))
        .await;
        ids.extend(submitted);
    }
    let pool = system.gateway().pool.clone();
    COMPLETED.until(&pool, enrollments + sequential).await;
    let sagas = started.elapsed();
    let saga_cpu = Cpu::of(&system.bus).since(saga_cpu);
    let requests_after = system.bus.requests().snapshot();
    let by_operation: Vec<(String, u64)> = requests_after
        .iter()
        .map(|(op, n)| (op.clone(), n - requests_before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let billed: u64 = by_operation.iter().map(|(_, n)| n).sum();
    let latencies = saga_latencies(&pool, &concurrent_since).await;

    // Idle: three pollers (one per service) and nothing to receive.
    let idle_seconds = size("BENCH_IDLE_SECONDS", 40);
    let receives = |bus: &Bus| {
        bus.requests()
            .snapshot()
            .get("SQS.ReceiveMessage")
            .copied()
            .unwrap_or(0)
    };
    let idle_before = receives(&system.bus);
    tokio::time::sleep(Duration::from_secs(idle_seconds as u64)).await;
    let idle_receives = receives(&system.bus) - idle_before;
    let idle_per_poller_minute = idle_receives as f64 / 3.0 * 60.0 / idle_seconds as f64;
    system.stop().await;

    // 8. The real binaries under the same concurrent load (no span export).
    let processes = Processes::start(false, 20).await;
    let services = [
        ("gateway", processes.gateway()),
        ("customer-api", processes.customer()),
        ("transaction-api", processes.transaction()),
    ];
    let cpu_before: Vec<f64> = services
        .iter()
        .map(|(_, s)| s.pid().and_then(process_figures).map_or(0.0, |f| f.1))
        .collect();
    let process_sagas = enrollments;
    for chunk in (0..process_sagas).collect::<Vec<_>>().chunks(16) {
        futures::future::join_all(chunk.iter().map(|i| {
            let email = format!("proc-{i}-{}@example.com", uuid::Uuid::new_v4().simple());
            let processes = &processes;
            async move { processes.enroll(&email, &[]).await }
        }))
        .await;
    }
    let per_process: Vec<(&str, f64, f64)> = services
        .iter()
        .zip(&cpu_before)
        .map(|((name, s), before)| {
            let (rss, cpu) = s.pid().and_then(process_figures).unwrap_or((f64::NAN, f64::NAN));
            (*name, rss, (cpu - before) / process_sagas as f64)
        })
        .collect();
    processes.stop().await;

    // 9. Scale-out on PostgreSQL: 1 and 3 instances of every service, same load.
    let scale_sagas = size("BENCH_SCALE_ENROLLMENTS", 300);
    let scaled: Vec<(usize, f64)> = {
        let mut scaled = Vec::new();
        // `INSTANCES` (as for `make up`) sets the larger count; 3 unless it says otherwise.
        let most = std::env::var("INSTANCES")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(3)
            .max(1);
        let counts: Vec<usize> = if most == 1 { vec![1] } else { vec![1, most] };
        for instances in counts {
            scaled.push((instances, scale_out(instances, scale_sagas).await));
        }
        scaled
    };

    let send_rate = rate(messages, raw_send);
    // A message's whole life on the raw bus: sent, then received and deleted.
    let full_rate = 1.0 / (1.0 / send_rate + 1.0 / drain_rate);
    let saga_rate = rate(enrollments, sagas);
    // Every figure is printed and kept for the report, with its target when it has one.
    let mut table: Vec<(String, String, String)> = Vec::new();
    let mut row = |measure: String, figure: String, target: String| {
        println!("{measure:<52} {figure:>14}   {target}");
        table.push((measure, figure, target));
    };
    println!("{:<52} {:>14}   target", "measure", "figure");
    row(
        "raw SendMessageBatch (8 in flight)".into(),
        format!("{send_rate:.0} msg/s"),
        String::new(),
    );
    row(
        format!("raw ReceiveMessage + DeleteMessageBatch (median of {rounds})"),
        format!("{drain_rate:.0} msg/s"),
        String::new(),
    );
    row(
        "raw send + receive + delete".into(),
        format!("{full_rate:.0} msg/s"),
        String::new(),
    );
    let ratio_row = |name: &str, per_second: f64, ratio: f64| {
        (
            name.to_owned(),
            format!("{per_second:.0}/s, {ratio:.2}"),
            format!(">= 0.8: {}", verdict(ratio >= 0.8)),
        )
    };
    let saga_ratio = saga_rate * 4.0 / full_rate;
    for (name, per_second, ratio) in [
        (
            "consumer loop, SQLite / raw receive+delete",
            consume_rate,
            consumer_ratio,
        ),
        (
            "consumer loop, PostgreSQL / raw receive+delete",
            consume_pg_rate,
            consumer_pg_ratio,
        ),
        (
            "saga messages (4 per saga) / raw send+receive+delete",
            saga_rate * 4.0,
            saga_ratio,
        ),
    ] {
        let (measure, figure, target) = ratio_row(name, per_second, ratio);
        row(measure, figure, target);
    }
    for (i, name) in [
        "raw receive+delete",
        "consumer loop, SQLite",
        "consumer loop, PostgreSQL",
    ]
    .iter()
    .enumerate()
    {
        let (per_thousand, cores) = cpu_of(i);
        row(
            format!("  CPU per 1000 msg, {name}"),
            per_thousand,
            format!("{cores:.2} of {} cores busy", cores_here()),
        );
    }
    row(
        format!("whole sagas, {enrollments} at once (3 services, SQLite)"),
        format!("{saga_rate:.1} sagas/s"),
        String::new(),
    );
    row(
        "  CPU per saga (services in this process)".into(),
        saga_cpu.per(enrollments).replace("this process", "services"),
        format!("{:.2} of {} cores busy", saga_cpu.cores(sagas), cores_here()),
    );
    for p in [50.0, 95.0, 100.0] {
        row(
            format!("  saga latency p{p:.0} (accepted -> completed)"),
            format!("{:.0} ms", percentile(&latencies, p)),
            String::new(),
        );
    }
    row(
        "SQS send -> receive, p50 (one at a time)".into(),
        format!("{:.1} ms", percentile(&sqs_hops, 50.0)),
        String::new(),
    );
    row(
        "SNS publish -> SQS receive, p50".into(),
        format!("{:.1} ms", percentile(&sns_hops, 50.0)),
        String::new(),
    );
    row(
        "hop sum of a saga (2 SQS + 2 SNS->SQS)".into(),
        format!("{hop_sum:.1} ms"),
        String::new(),
    );
    let (p50, p99) = (
        percentile(&sequential_latencies, 50.0),
        percentile(&sequential_latencies, 99.0),
    );
    row(
        format!("saga p50, {sequential} one after another"),
        format!("{p50:.0} ms, {:.2}x", p50 / hop_sum),
        format!("<= 1.1x hop sum: {}", verdict(p50 <= 1.1 * hop_sum)),
    );
    row(
        "saga p99, one after another".into(),
        format!("{p99:.0} ms, {:.2}x", p99 / hop_sum),
        format!("<= 1.5x hop sum: {}", verdict(p99 <= 1.5 * hop_sum)),
    );
    let per_saga = billed as f64 / enrollments as f64;
    row(
        format!("billed SQS+SNS requests per saga ({saga_rate:.0} sagas/s)"),
        format!("{per_saga:.2}"),
        format!("<= 1.5 (floor 1.2): {}", verdict(per_saga <= 1.5)),
    );
    for (operation, n) in &by_operation {
        row(
            format!("  of which {operation}"),
            format!("{:.2}", *n as f64 / enrollments as f64),
            String::new(),
        );
    }
    row(
        "idle ReceiveMessage calls per poller per minute".into(),
        format!("{idle_per_poller_minute:.1}"),
        format!("<= 3: {}", verdict(idle_per_poller_minute <= 3.0)),
    );
    for (name, rss, cpu) in &per_process {
        row(
            format!("peak RSS of the {name} binary"),
            format!("{rss:.1} MiB"),
            format!("<= 25 MiB: {}", verdict(*rss <= 25.0)),
        );
        row(
            format!("CPU per saga, {name} ({process_sagas} sagas)"),
            format!("{cpu:.2} ms"),
            String::new(),
        );
    }
    for (instances, per_second) in &scaled {
        row(
            format!("sagas, real binaries on PostgreSQL, {instances} instance(s)"),
            format!("{per_second:.1} sagas/s"),
            format!("{:.2}x one instance", per_second / scaled[0].1),
        );
    }
    if let Some(rss) = peak_rss_mib() {
        row(
            "peak RSS of this process (3 services + client)".into(),
            format!("{rss:.1} MiB"),
            String::new(),
        );
    }

    // The same run as a page: target/bench/pipeline.html (under CARGO_TARGET_DIR when set;
    // pipeline-smoke.html for the smoke run).
    let mut throughput = vec![
        report::Throughput {
            label: "consumer loop, SQLite".into(),
            per_second: consume_rate,
            unit: "msg/s",
            ratio_to_raw: consumer_ratio,
        },
        report::Throughput {
            label: "consumer loop, PostgreSQL".into(),
            per_second: consume_pg_rate,
            unit: "msg/s",
            ratio_to_raw: consumer_pg_ratio,
        },
        report::Throughput {
            label: "sagas, SQLite, in process".into(),
            per_second: saga_rate,
            unit: "sagas/s",
            ratio_to_raw: saga_ratio,
        },
    ];
    throughput.extend(scaled.iter().map(|(instances, per_second)| report::Throughput {
        label: format!("sagas, PostgreSQL, {instances} inst."),
        per_second: *per_second,
        unit: "sagas/s",
        ratio_to_raw: per_second * 4.0 / full_rate,
    }));
    let figures = report::Figures {
        title: format!(
            "pipeline benchmark, {}, {messages} messages, {enrollments} sagas",
            chrono::Utc::now().format("%Y-%m-%d %H:%MZ")
        ),
        raw_receive_delete: drain_rate,
        raw_send: send_rate,
        raw_full: full_rate,
        throughput,
        ratio_target: 0.8,
        hop_sum_ms: hop_sum,
        sequential_ms: sequential_latencies.clone(),
        concurrent_ms: latencies.clone(),
        billed: by_operation
            .iter()
            .map(|(operation, n)| report::Billed {
                operation: operation.clone(),
                per_saga: *n as f64 / enrollments as f64,
            })
            .collect(),
        billed_target: 1.5,
        billed_floor: 1.2,
        processes: per_process
            .iter()
            .map(|(name, rss, cpu)| report::Process {
                name: (*name).to_owned(),
                peak_rss_mib: *rss,
                cpu_ms_per_saga: *cpu,
            })
            .collect(),
        rss_target_mib: 25.0,
        table,
    };
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent();
            workspace.unwrap_or(std::path::Path::new(".")).join("target")
        });
    // The smoke run's page goes beside the real one, never over it.
    let page = target_dir.join(if benching() {
        "bench/pipeline.html"
    } else {
        "bench/pipeline-smoke.html"
    });
    match report::write(&page, &figures) {
        Ok(()) => println!("\nreport: {}", page.display()),
        Err(err) => println!("\nreport not written to {}: {err}", page.display()),
    }
    assert_eq!(ids.len(), enrollments);
}
