//! Customers without an address key (written before keys existed, or by an instance of the
//! previous release during a rolling update) get one, and from then on the key refuses a second
//! customer for the same mailbox.

use customer_api::fill_email_keys;
use sqlx::AnyPool;
use testkit::{Backend, TestDb, on_both_backends};
use utility::domain::Subaddresses;

/// A row as the previous release wrote it: the address lower-cased, no key.
async fn insert_legacy(pool: &AnyPool, id: &str, email: &str) {
    sqlx::query(
        "INSERT INTO customers (id, enrollment_id, name, email, status, enrolled_at)
         VALUES ($1, $2, 'Ada', $3, 'active', '2026-12-01T00:00:00Z')",
    )
    .bind(id)
    .bind(format!("enrollment-{id}"))
    .bind(email)
    .execute(pool)
    .await
    .expect("legacy insert");
}

async fn key_of(pool: &AnyPool, id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT email_key FROM customers WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("read key")
}

async fn keys_are_filled_and_then_hold(backend: Backend) {
    let db = TestDb::new(backend, "address_keys").await;
    let pool = utility::storage::connect(&db.url, customer_api::migrations())
        .await
        .expect("database");
    // Before keys: `ada+news@` and `ada@` were two customers; Unicode in its composed form.
    insert_legacy(&pool, "c1", "ada@example.com").await;
    insert_legacy(&pool, "c2", "ada+news@example.com").await;
    insert_legacy(&pool, "c3", "zoe@b\u{fc}cher.example").await;

    let filled = fill_email_keys(&pool, Subaddresses::Fold).await.expect("fill");
    // c1 and c2 fold onto one key: the first keeps it, the second keeps none (and is logged).
    assert_eq!(filled, 2);
    assert_eq!(key_of(&pool, "c1").await.as_deref(), Some("ada@example.com"));
    assert_eq!(key_of(&pool, "c2").await, None);
    // The key is the canonical form, not the address as written (the domain in its ASCII form).
    assert_eq!(key_of(&pool, "c3").await.as_deref(), Some("zoe@xn--bcher-kva.example"));

    // A second pass changes nothing and does not fail on the row that keeps no key.
    assert_eq!(fill_email_keys(&pool, Subaddresses::Fold).await.expect("fill again"), 0);

    // Now the key is there, the same mailbox written another way is refused.
    let second = sqlx::query(
        "INSERT INTO customers (id, enrollment_id, name, email, email_key, status, enrolled_at)
         VALUES ('c4', 'enrollment-c4', 'Zoe', 'zoe+x@xn--bcher-kva.example', 'zoe@xn--bcher-kva.example',
                 'active', '2026-12-02T00:00:00Z') ON CONFLICT DO NOTHING",
    )
    .execute(&pool)
    .await
    .expect("insert");
    assert_eq!(second.rows_affected(), 0, "a second active customer for one mailbox");
    pool.close().await;
}

on_both_backends!(keys_are_filled_and_then_hold);
