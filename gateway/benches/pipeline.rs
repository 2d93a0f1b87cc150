//! Throughput and latency of the pipeline, against the raw bus measured in the same run.
//!
//! `make bench` (or `cargo bench -p gateway --bench pipeline`) with LocalStack running. It prints:
//! 1. raw SQS: `SendMessageBatch`, then `ReceiveMessage` + `DeleteMessageBatch`, messages/s;
//! 2. the consumer loop (parse, dedup insert, handler, commit, delete) on SQLite, messages/s, and
//!    its ratio to the raw receive+delete rate;
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
//!    CPU time each spent per saga (from `/proc`).
//!
//! Every figure with a target is printed with it (issue "close to the bus ceiling").
//! `BENCH_MESSAGES` (default 2000), `BENCH_ENROLLMENTS` (default 300), `BENCH_SEQUENTIAL` (200),
//! `BENCH_HOPS` (50) and `BENCH_IDLE_SECONDS` (40) set the sizes (`cargo test` runs a twentieth). Figures from an emulator on a
//! shared 2-core machine are relative, not absolute: read the ratios.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Backend, Options, System};
use utility::messaging::bus::{Bus, Outgoing};
use utility::messaging::consumer::{Consumer, Handler, HandlerError};
use utility::messaging::envelope::Envelope;
use utility::storage::AnyConnection;

/// `BENCH_*` or the default; under `cargo test` (which runs this without `--bench`), a smoke run
/// of a twentieth of the size, so `make test` checks that the benchmark works without paying for it.
fn size(var: &str, default: usize) -> usize {
    let benching = std::env::args().any(|a| a == "--bench");
    let default = if benching { default } else { (default / 20).max(2) };
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
    async fn handle(&self, _tx: &mut AnyConnection, _envelope: &Envelope) -> Result<(), HandlerError> {
        Ok(())
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

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let messages = size("BENCH_MESSAGES", 2000);
    let enrollments = size("BENCH_ENROLLMENTS", 300);
    let bus = support::bus().await;
    let stack = support::TestStack::deploy(&bus).await;
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
    let raw_drain = started.elapsed();

    // 2. The consumer loop on SQLite, same queue, same volume.
    send_all(&bus, &queue, &envelopes(messages)).await;
    let db = support::TestDb::new(Backend::Sqlite, "bench").await;
    let pool = utility::storage::connect(&db.url, sqlx::migrate::Migrator::DEFAULT)
        .await
        .expect("db");
    let consumer = Consumer::new(
        queue.clone(),
        bus.clone(),
        pool,
        NoOp,
        Arc::new(tokio::sync::Notify::new()),
        1,
    );
    let started = Instant::now();
    let mut handled = 0;
    while handled < messages {
        let report = consumer.poll_once().await.expect("poll");
        handled += report.handled + report.duplicates;
    }
    let consumed = started.elapsed();

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
    let started = Instant::now();
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
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM enrollments WHERE status = 'completed'")
            .fetch_one(&pool)
            .await
            .expect("count");
        if done as usize >= enrollments + sequential {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {enrollments} sagas completed in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sagas = started.elapsed();
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
    let processes = support::procs::Processes::start(false, 20).await;
    let services = [
        ("gateway", &processes.gateway),
        ("customer-api", &processes.customer),
        ("transaction-api", &processes.transaction),
    ];
    let cpu_before: Vec<f64> = services
        .iter()
        .map(|(_, s)| s.child.id().and_then(process_figures).map_or(0.0, |f| f.1))
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
            let (rss, cpu) = s.child.id().and_then(process_figures).unwrap_or((f64::NAN, f64::NAN));
            (*name, rss, (cpu - before) / process_sagas as f64)
        })
        .collect();
    processes.stop().await;

    let send_rate = rate(messages, raw_send);
    let drain_rate = rate(messages, raw_drain);
    let consume_rate = rate(messages, consumed);
    println!("{:<48} {:>12}", "measure", "figure");
    println!("{:<48} {:>10.0}/s", "raw SendMessageBatch (8 in flight)", send_rate);
    println!(
        "{:<48} {:>10.0}/s",
        "raw ReceiveMessage + DeleteMessageBatch", drain_rate
    );
    println!(
        "{:<48} {:>10.0}/s",
        "consumer loop (dedup + commit + delete, SQLite)", consume_rate
    );
    println!(
        "{:<48} {:>11.2}",
        "  ratio consumer / raw receive+delete",
        consume_rate / drain_rate
    );
    println!(
        "{:<48} {:>10.1}/s",
        "whole sagas (3 services, SQLite)",
        rate(enrollments, sagas)
    );
    println!(
        "{:<48} {:>11.2}",
        "  ratio saga messages / raw receive+delete",
        rate(enrollments * 4, sagas) / drain_rate
    );
    println!(
        "{:<48} {:>9.0} ms",
        "saga latency p50 (accepted -> completed)",
        percentile(&latencies, 50.0)
    );
    println!("{:<48} {:>9.0} ms", "saga latency p95", percentile(&latencies, 95.0));
    println!("{:<48} {:>9.0} ms", "saga latency max", percentile(&latencies, 100.0));
    println!();
    println!("{:<48} {:>12}   target", "measure", "figure");
    let consumer_ratio = consume_rate / drain_rate;
    println!(
        "{:<48} {:>12.2}   >= 0.8: {}",
        "consumer loop / raw receive+delete (SQLite)",
        consumer_ratio,
        verdict(consumer_ratio >= 0.8)
    );
    let saga_ratio = rate(enrollments * 4, sagas) / drain_rate;
    println!(
        "{:<48} {:>12.2}   >= 0.8: {}",
        "saga messages/s / raw receive+delete",
        saga_ratio,
        verdict(saga_ratio >= 0.8)
    );
    println!(
        "{:<48} {:>9.1} ms",
        "SQS send -> receive, p50 (one at a time)",
        percentile(&sqs_hops, 50.0)
    );
    println!(
        "{:<48} {:>9.1} ms",
        "SNS publish -> SQS receive, p50",
        percentile(&sns_hops, 50.0)
    );
    println!("{:<48} {:>9.1} ms", "hop sum of a saga (2 SQS + 2 SNS->SQS)", hop_sum);
    let (p50, p99) = (
        percentile(&sequential_latencies, 50.0),
        percentile(&sequential_latencies, 99.0),
    );
    println!(
        "{:<48} {:>9.0} ms   {:.2}x of hop sum, <= 1.1x: {}",
        format!("saga p50, {sequential} one after another"),
        p50,
        p50 / hop_sum,
        verdict(p50 <= 1.1 * hop_sum)
    );
    println!(
        "{:<48} {:>9.0} ms   {:.2}x of hop sum, <= 1.5x: {}",
        "saga p99, one after another",
        p99,
        p99 / hop_sum,
        verdict(p99 <= 1.5 * hop_sum)
    );
    let per_saga = billed as f64 / enrollments as f64;
    println!(
        "{:<48} {:>12.2}   <= 1.5 (floor 1.2): {}",
        format!(
            "billed SQS+SNS requests per saga ({:.0} sagas/s)",
            rate(enrollments, sagas)
        ),
        per_saga,
        verdict(per_saga <= 1.5)
    );
    for (operation, n) in &by_operation {
        println!(
            "{:<48} {:>12.2}",
            format!("  of which {operation}"),
            *n as f64 / enrollments as f64
        );
    }
    println!(
        "{:<48} {:>12.1}   <= 3: {}",
        "idle ReceiveMessage calls per poller per minute",
        idle_per_poller_minute,
        verdict(idle_per_poller_minute <= 3.0)
    );
    for (name, rss, cpu) in &per_process {
        println!(
            "{:<48} {:>8.1} MiB   <= 25 MiB: {}",
            format!("peak RSS of the {name} binary"),
            rss,
            verdict(*rss <= 25.0)
        );
        println!(
            "{:<48} {:>9.2} ms",
            format!("CPU per saga, {name} ({process_sagas} sagas)"),
            cpu
        );
    }
    if let Some(rss) = peak_rss_mib() {
        println!(
            "{:<48} {:>8.1} MiB",
            "peak RSS of this process (3 services + client)", rss
        );
    }
    assert_eq!(ids.len(), enrollments);
}
