//! Several instances of a service on one PostgreSQL database: their outbox relays claim rows
//! with `FOR UPDATE SKIP LOCKED`, so each row is published by one instance, once, however the
//! relays' rounds overlap. (The fault suite's `kill9-pair` phase runs two instances of every
//! service under `kill -9`.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use testkit::{Backend, DEADLINE, Poll, TestDb, eventually};
use utility::messaging::Endpoint;
use utility::messaging::outbox::Relay;
use utility::messaging::topology::Topology;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_of_two_instances_publish_each_row_once() {
    const ROWS: usize = 600;
    let bus = testkit::bus().await;
    let queue = testkit::scratch_queue(&bus, "scale", &[]).await.url;
    let db = TestDb::new(Backend::Postgres, "relays").await;
    let writer = utility::storage::connect(&db.url, sqlx::migrate::Migrator::DEFAULT)
        .await
        .unwrap();
    let now = utility::storage::now();
    for i in 0..ROWS {
        sqlx::query(
            "INSERT INTO outbox (id, destination, message_type, correlation_id, body, created_at)
             VALUES ($1, 'customer-commands', 'Enroll', 'c', $2, $3)",
        )
        .bind(format!("row-{i}"))
        .bind(format!("{{\"row\": {i}}}"))
        .bind(&now)
        .execute(&writer)
        .await
        .unwrap();
    }
    // Two instances: a pool each, a relay each, flushing at the same time, over and over.
    let topology = Arc::new(Topology::from_addresses([(Endpoint::CustomerCommands, queue.clone())]));
    let mut relays = Vec::new();
    for _ in 0..2 {
        let pool = utility::storage::connect(&db.url, sqlx::migrate::Migrator::DEFAULT)
            .await
            .unwrap();
        relays.push(Relay::new(pool, bus.clone(), topology.clone(), Duration::from_secs(1)));
    }
    let flushes = relays.iter().map(|relay| async move {
        let mut published = 0;
        for _ in 0..3 {
            published += relay.flush().await.expect("flush");
        }
        published
    });
    let published: Vec<usize> = futures::future::join_all(flushes).await;
    assert_eq!(
        published.iter().sum::<usize>(),
        ROWS,
        "published by instance: {published:?}"
    );
    assert!(
        published.iter().all(|&n| n > 0),
        "both relays took part (else the test shows nothing): {published:?}"
    );
    assert_eq!(utility::messaging::outbox::pending(&writer).await.unwrap(), 0);

    // What reached the queue: every row, once.
    let mut seen: HashMap<String, usize> = HashMap::new();
    eventually("every row to arrive", DEADLINE, async || {
        let received = bus.receive(&queue, 1).await.unwrap();
        let receipts: Vec<&str> = received.iter().map(|m| m.receipt_handle.as_str()).collect();
        if !receipts.is_empty() {
            bus.delete_batch(&queue, &receipts).await.unwrap();
        }
        for message in &received {
            *seen.entry(message.body.clone()).or_default() += 1;
        }
        let arrived = seen.len();
        Poll::ready_if(
            arrived >= ROWS && seen.values().sum::<usize>() >= ROWS,
            (),
            format!("{arrived} of {ROWS} rows"),
        )
    })
    .await
    .unwrap();
    // A second copy would arrive within a receive or two of the rest.
    for _ in 0..3 {
        for message in bus.receive(&queue, 1).await.unwrap() {
            *seen.entry(message.body.clone()).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    assert_eq!(seen.len(), ROWS);
    let _ = bus.sqs().delete_queue().queue_url(&queue).send().await;
}
