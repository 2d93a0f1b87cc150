//! Throughput and latency of the pipeline, against the raw bus measured in the same run.
//!
//! `make bench` (or `cargo bench -p gateway --bench pipeline`) with LocalStack running. It prints:
//! 1. raw SQS: `SendMessageBatch`, then `ReceiveMessage` + `DeleteMessageBatch`, messages/s;
//! 2. the consumer loop (parse, dedup insert, handler, commit, delete) on SQLite, messages/s, and
//!    its ratio to the raw receive+delete rate;
//! 3. whole sagas through the three services (gateway -> customer-api -> gateway ->
//!    transaction-api -> gateway), enrollments/s and p50/p95/max latency from acceptance to
//!    `completed`, taken from the stored history timestamps;
//! 4. the peak resident memory of this process (all three services run in it).
//!
//! `BENCH_MESSAGES` (default 2000) and `BENCH_ENROLLMENTS` (default 300) set the sizes. Figures from
//! an emulator on a shared 2-core machine are relative, not absolute: read the ratios.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Backend, Options, System};
use utility::messaging::bus::{Bus, Outgoing};
use utility::messaging::consumer::{Consumer, Handler, HandlerError};
use utility::messaging::envelope::Envelope;
use utility::storage::AnyConnection;

fn size(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn envelopes(n: usize) -> Vec<Outgoing> {
    (0..n)
        .map(|i| {
            let message =
                utility::messaging::message::Message::PostBonusPoints(utility::messaging::message::PostBonusPoints {
                    customer_id: uuid::Uuid::now_v7(),
                });
            let mut envelope = Envelope::new(message, uuid::Uuid::now_v7());
            envelope.traceparent = Some(format!("bench-{i}"));
            Outgoing::from(&envelope)
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

    // 3. Whole sagas.
    let system = System::start(Backend::Sqlite, Options::default()).await;
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
        if done as usize >= enrollments {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {enrollments} sagas completed in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sagas = started.elapsed();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.at, c.at FROM enrollment_history p JOIN enrollment_history c
         ON c.enrollment_id = p.enrollment_id AND c.status = 'completed'
         WHERE p.status = 'pending'",
    )
    .fetch_all(&pool)
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
    system.stop().await;

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
    if let Some(rss) = peak_rss_mib() {
        println!(
            "{:<48} {:>8.1} MiB",
            "peak RSS of this process (3 services + client)", rss
        );
    }
    assert_eq!(ids.len(), enrollments);
}
