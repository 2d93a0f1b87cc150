//! The outbox relay against a real LocalStack queue: good rows go out and are stamped; a row the
//! bus refuses as the sender's fault, and a row for a destination this build does not know, are set
//! aside with their reason instead of blocking the rows behind them.

use std::sync::Arc;
use std::time::Duration;
use utility::messaging::Endpoint;
use utility::messaging::outbox::Relay;
use utility::messaging::topology::Topology;

async fn insert(pool: &sqlx::AnyPool, id: &str, destination: &str, body: &str) {
    sqlx::query(
        "INSERT INTO outbox (id, destination, message_type, correlation_id, body, created_at)
         VALUES ($1, $2, 'Enroll', 'c', $3, $4)",
    )
    .bind(id)
    .bind(destination)
    .bind(body)
    .bind(utility::storage::now())
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rows_are_set_aside_and_do_not_block_the_others() {
    let bus = testkit::bus().await;
    let name = format!("relay-{}", uuid::Uuid::new_v4().simple());
    let queue = bus
        .sqs()
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pool = utility::storage::connect(
        &format!("sqlite:{}/r.db", dir.path().display()),
        sqlx::migrate::Migrator::DEFAULT,
    )
    .await
    .unwrap();
    insert(&pool, "a-bad-body", "customer-commands", "{\"x\": \"\u{FFFF}\"}").await;
    insert(&pool, "b-unknown", "somewhere-else", "{}").await;
    insert(&pool, "c-good", "customer-commands", "{\"ok\": true}").await;

    let topology = Arc::new(Topology::from_addresses([(Endpoint::CustomerCommands, queue.clone())]));
    let relay = Relay::new(pool.clone(), bus.clone(), topology, Duration::from_secs(1));
    let published = relay.flush().await.expect("flush succeeds");
    assert_eq!(published, 1);

    let rows: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT id, sent_at, error FROM outbox ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        rows[0].1.is_none() && rows[0].2.is_some(),
        "bad body set aside: {rows:?}"
    );
    assert!(
        rows[1].1.is_none() && rows[1].2.as_deref().unwrap().contains("somewhere-else"),
        "{rows:?}"
    );
    assert!(rows[2].1.is_some() && rows[2].2.is_none(), "good row sent: {rows:?}");
    assert_eq!(utility::messaging::outbox::pending(&pool).await.unwrap(), 0);
    // A second flush has nothing left to do and does not resend anything.
    assert_eq!(relay.flush().await.unwrap(), 0);
    let received = bus.receive(&queue, 1).await.unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, "{\"ok\": true}");
    let _ = bus.sqs().delete_queue().queue_url(&queue).send().await;
}
