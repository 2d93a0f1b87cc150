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
    let queue = testkit::scratch_queue(&bus, "relay", &[]).await.url;
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

async fn queue(bus: &utility::messaging::bus::Bus, name: &str) -> String {
    testkit::scratch_queue(bus, name, &[]).await.url
}

async fn sent(pool: &sqlx::AnyPool, destination: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT COUNT(sent_at), COUNT(*) - COUNT(sent_at) FROM outbox WHERE destination = $1 AND failed_at IS NULL",
    )
    .bind(destination)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// One destination that keeps failing (its queue deleted by hand) holds none of the others, even
/// with more of its rows pending, and older, than a relay reads at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_destination_does_not_hold_the_others() {
    let bus = testkit::bus().await;
    let good = queue(&bus, "relay-good").await;
    let gone = queue(&bus, "relay-gone").await;
    bus.sqs().delete_queue().queue_url(&gone).send().await.unwrap();
    let db = testkit::TestDb::new(testkit::Backend::Postgres, "relay").await;
    let pool = utility::storage::connect(&db.url, sqlx::migrate::Migrator::DEFAULT)
        .await
        .unwrap();
    for n in 0..150 {
        insert(&pool, &format!("a-{n:03}"), "transaction-commands", "{}").await;
    }
    for n in 0..5 {
        insert(&pool, &format!("b-{n}"), "customer-commands", "{}").await;
    }
    let topology = Arc::new(Topology::from_addresses([
        (Endpoint::CustomerCommands, good.clone()),
        (Endpoint::TransactionCommands, gone),
    ]));
    let relay = Relay::new(pool.clone(), bus.clone(), topology, Duration::from_secs(1));
    assert!(relay.flush().await.is_err(), "the failing destination is reported");
    assert_eq!(
        sent(&pool, "customer-commands").await,
        (5, 0),
        "the healthy destination's rows went out"
    );
    assert_eq!(
        sent(&pool, "transaction-commands").await,
        (0, 150),
        "the failing one's rows wait"
    );
    // Released at once for the next attempt, not left claimed until the lease runs out.
    let claimed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE claimed_until IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(claimed, 0);
    let _ = bus.sqs().delete_queue().queue_url(&good).send().await;
}

/// While a publish call is on the wire, the relay holds no transaction and no row lock: another
/// connection can lock the rows being published at once (here the bus never answers, so the call
/// stays on the wire as long as the test likes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_transaction_or_row_lock_is_held_across_a_bus_call() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let bus = testkit::bus_at(&endpoint).await;
    let db = testkit::TestDb::new(testkit::Backend::Postgres, "relay").await;
    let pool = utility::storage::connect(&db.url, sqlx::migrate::Migrator::DEFAULT)
        .await
        .unwrap();
    insert(&pool, "waiting", "customer-commands", "{}").await;
    let topology = Arc::new(Topology::from_addresses([(
        Endpoint::CustomerCommands,
        format!("{endpoint}/000000000000/nowhere"),
    )]));
    let relay = Relay::new(pool.clone(), bus, topology, Duration::from_secs(1));
    let flushing = tokio::spawn(async move { relay.flush().await });
    testkit::eventually("the row to be claimed", testkit::DEADLINE, async || {
        let claimed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE claimed_until IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
        testkit::Poll::ready_if(claimed == 1, (), claimed)
    })
    .await
    .unwrap();
    let in_transaction: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()
         AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_transaction, 0, "a transaction is held open across the bus call");
    let mut tx = pool.begin().await.unwrap();
    let locked: Vec<String> = sqlx::query_scalar("SELECT id FROM outbox FOR UPDATE NOWAIT")
        .fetch_all(&mut *tx)
        .await
        .expect("the row being published is not locked");
    assert_eq!(locked, ["waiting"]);
    tx.rollback().await.unwrap();
    flushing.abort();
    accepting.abort();
}
