//! Migrations that rebuild a table keep every row. 105 rebuilds `enrollments` and
//! `enrollment_history` without the status CHECK: a database written by the earlier schema is
//! migrated with its rows, the history still references its enrollment, and a status the old
//! CHECK did not list can now be stored (the statuses are declared in code, which writes them).

use sqlx::Row;
use testkit::{Backend, TestDb};

testkit::on_both_backends!(the_status_check_goes_and_every_row_stays);

/// The gateway's migrations before `version`, as a migrator of their own.
async fn migrations_before(version: i64) -> (sqlx::migrate::Migrator, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&source).expect("migrations directory") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let number: i64 = name.split('_').next().unwrap().parse().expect("numbered migration");
        if number < version {
            std::fs::copy(&path, dir.path().join(&name)).expect("copy migration");
        }
    }
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.expect("migrator");
    (migrator, dir)
}

async fn the_status_check_goes_and_every_row_stays(backend: Backend) {
    let db = TestDb::new(backend, "migrations").await;
    let (before, _dir) = migrations_before(105).await;
    let pool = utility::storage::connect(&db.url, before)
        .await
        .expect("schema before 105");
    for (id, status, key) in [("e1", "completed", Some("key-1")), ("e2", "pending", None)] {
        sqlx::query(
            "INSERT INTO enrollments (id, name, email, status, idempotency_key, request_fingerprint, created_at,
                                      updated_at, history_seq)
             VALUES ($1, 'Ada', 'ada@example.com', $2, $3, 'fp', '2026-12-01T00:00:00.000Z', '2026-12-01T00:00:01.000Z', 1)",
        )
        .bind(id)
        .bind(status)
        .bind(key)
        .execute(&pool)
        .await
        .expect("insert enrollment");
        sqlx::query(
            "INSERT INTO enrollment_history (id, enrollment_id, status, at, event, seq)
             VALUES ($1, $2, 'pending', '2026-12-01T00:00:00.000Z', 'EnrollmentAccepted', 1)",
        )
        .bind(format!("h-{id}"))
        .bind(id)
        .execute(&pool)
        .await
        .expect("insert history");
    }
    let refused = sqlx::query("UPDATE enrollments SET status = 'awaiting_something' WHERE id = 'e2'")
        .execute(&pool)
        .await;
    assert!(refused.is_err(), "before 105 the CHECK refuses an unlisted status");
    pool.close().await;

    let pool = utility::storage::connect(&db.url, gateway::migrations())
        .await
        .expect("migrated");
    let rows = sqlx::query("SELECT id, status, idempotency_key, history_seq FROM enrollments ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("read enrollments");
    let read: Vec<(String, String, Option<String>, i64)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(
        read,
        [
            ("e1".into(), "completed".into(), Some("key-1".into()), 1),
            ("e2".into(), "pending".into(), None, 1)
        ]
    );
    let history: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM enrollment_history WHERE enrollment_id IN ('e1', 'e2')")
            .fetch_one(&pool)
            .await
            .expect("read history");
    assert_eq!(history, 2);
    sqlx::query("UPDATE enrollments SET status = 'awaiting_something' WHERE id = 'e2'")
        .execute(&pool)
        .await
        .expect("after 105 the column takes any status the code writes");
    let orphan = sqlx::query(
        "INSERT INTO enrollment_history (id, enrollment_id, status, at) VALUES ('h-x', 'nobody', 'pending', 'x')",
    )
    .execute(&pool)
    .await;
    assert!(orphan.is_err(), "the history still references its enrollment");
    let duplicate_key = sqlx::query(
        "INSERT INTO enrollments (id, name, email, status, idempotency_key, request_fingerprint, created_at, updated_at)
         VALUES ('e3', 'B', 'b@example.com', 'pending', 'key-1', 'fp', 'x', 'x')",
    )
    .execute(&pool)
    .await;
    assert!(duplicate_key.is_err(), "idempotency keys stay unique");
    pool.close().await;
}
