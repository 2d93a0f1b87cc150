//! The services' database role (decision 0043): `<service> migrate` applies the migrations as
//! the database's owner and leaves the service's own role the rows and nothing else. On
//! PostgreSQL (SQLite has no roles): the role cannot drop, create or alter a table, while the
//! gateway, connected as that role, accepts and shows enrollments.

use axum::body::Body;
use axum::http::Request;
use sqlx::Connection;
use testkit::{Backend, TestDb};

fn with_user(url: &str, user: &str, password: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_username(user).unwrap();
    url.set_password(Some(password)).unwrap();
    url.to_string()
}

#[tokio::test]
async fn the_application_role_reads_and_writes_rows_but_cannot_change_the_schema() {
    testkit::init_logs();
    let db = TestDb::new(Backend::Postgres, "approle").await;
    let role = format!("saga_app_{}", uuid::Uuid::new_v4().simple());
    let app_url = with_user(&db.url, &role, "app-Pass+word/1");

    utility::storage::migrate_as_owner(&db.url, &app_url, gateway::migrations())
        .await
        .expect("migrated as the owner");
    // Again, as every deployment does: the role exists, its password is set again.
    utility::storage::migrate_as_owner(&db.url, &app_url, gateway::migrations())
        .await
        .expect("migrated again");

    // The service, connected as the role: nothing pending, so it migrates nothing, and works.
    let pool = utility::storage::connect(&app_url, gateway::migrations())
        .await
        .expect("the role connects");
    let notify = std::sync::Arc::new(tokio::sync::Notify::new());
    let router = gateway::router(&testkit::gateway_config(), pool.clone(), notify).unwrap();
    let submitted = testkit::api::call(
        &router,
        Request::post("/api/enrollments")
            .header("content-type", "application/json")
            .header("idempotency-key", "role-test")
            .body(Body::from(r#"{"name": "Ada", "email": "ada@example.com"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(submitted.status, 202, "{}", submitted.text);
    let view_key = submitted.body["view_key"].as_str().unwrap();
    let shown = testkit::api::call(
        &router,
        Request::get(format!("/api/enrollments/{view_key}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(shown.status, 200, "{}", shown.text);

    for ddl in [
        "DROP TABLE enrollment_history",
        "DROP TABLE outbox",
        "CREATE TABLE intruder (x INTEGER)",
        "ALTER TABLE enrollments ADD COLUMN intruder TEXT",
        "TRUNCATE outbox",
        "CREATE ROLE intruder",
    ] {
        let refused = sqlx::query(ddl).execute(&pool).await;
        let Err(sqlx::Error::Database(err)) = refused else {
            panic!("`{ddl}` was not refused: {refused:?}");
        };
        // insufficient_privilege, or must be owner (also 42501)
        assert_eq!(err.code().as_deref(), Some("42501"), "`{ddl}`: {err}");
    }
    let outbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    // The `Enroll` and the saga's first status change (the webhooks' fan-out).
    assert_eq!(outbox, 2);
    pool.close().await;

    // The role goes with the test (roles belong to the server, not to the database).
    let mut owner = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    sqlx::query(&format!("DROP OWNED BY {role}"))
        .execute(&mut owner)
        .await
        .unwrap();
    owner.close().await.unwrap();
    let mut admin = sqlx::AnyConnection::connect(&testkit::db::admin_url()).await.unwrap();
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&mut admin)
        .await
        .unwrap();
    drop(db);
}
