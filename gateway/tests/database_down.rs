//! One error path: while its database is down, every route of the gateway that reads or writes
//! it answers 503 problem+json with `Retry-After`, and says nothing about the cause (no driver
//! message, no address). The database "stops" by cutting the connection relay in front of a real
//! PostgreSQL server: open connections drop, new ones are refused.
//!
//! The routes come from the gateway's API document: each documented operation must say what it
//! answers while the database is down ([`while_down`]), so a new route cannot escape the test.

use axum::body::Body;
use axum::http::Request;
use serde_json::json;
use sqlx::any::AnyPoolOptions;
use std::sync::Arc;
use std::time::Duration;
use testkit::api::{Answer, call};
use testkit::proxy::{Cuttable, server_address};
use testkit::{Backend, TestDb};
use tokio::sync::Notify;

/// A pool through the relay, quick to give up so the test stays short (production waits 10 s).
async fn pool_through(relay: &Cuttable, db: &TestDb, migrations: sqlx::migrate::Migrator) -> sqlx::AnyPool {
    // Migrate directly first; the services' own start-up does the same through `connect`.
    utility::storage::connect(&db.url, migrations)
        .await
        .expect("migrations");
    AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&relay.url_through(&db.url))
        .await
        .expect("pool through the relay")
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("authorization", format!("Bearer {}", testkit::OPERATOR_TOKEN))
        .body(Body::empty())
        .unwrap()
}

fn post_enrollment(key: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/api/enrollments").header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let body = json!({"name": "Down", "email": format!("down-{}@example.com", uuid::Uuid::new_v4())});
    request.body(Body::from(body.to_string())).unwrap()
}

fn assert_unavailable(answer: &Answer, route: &str) {
    assert_eq!(answer.status, 503, "{route}: {}", answer.body);
    let body = answer.problem(503);
    assert_eq!(
        body["detail"], "the database is unavailable; retry shortly",
        "{route}: the answer must not describe the failure"
    );
    assert!(answer.header("retry-after").is_some(), "{route}: no Retry-After");
}

/// What a documented operation answers while the database is down.
enum WhileDown {
    /// 503, as [`assert_unavailable`] checks, to each of these requests.
    Unavailable(Vec<(&'static str, Request<Body>)>),
    /// 200 as usual, to each of these requests: the route needs nothing from the database.
    Answers(Vec<Request<Body>>),
    /// Not served by the gateway's router (the arm says where its outage is tested).
    Elsewhere,
}

/// What `method path` answers while the database is down; `view_key` is a stored enrollment's.
/// Panics for an operation it does not know, so a route
/// added to the document must be added here.
fn while_down(method: &str, path: &str, view_key: &str) -> WhileDown {
    use WhileDown::{Answers, Elsewhere, Unavailable};
    match (method, path) {
        ("POST", "/api/enrollments") => Unavailable(vec![
            ("POST /api/enrollments", post_enrollment(None)),
            ("POST /api/enrollments with a new key", post_enrollment(Some("new-key"))),
            (
                "POST /api/enrollments with a used key",
                post_enrollment(Some("down-key")),
            ),
        ]),
        ("GET", "/api/enrollments/{view_key}") => Unavailable(vec![(
            "GET /api/enrollments/{view_key}",
            get(&format!("/api/enrollments/{view_key}")),
        )]),
        ("GET", "/api/enrollments/{view_key}/events") => Unavailable(vec![(
            "GET /api/enrollments/{view_key}/events",
            get(&format!("/api/enrollments/{view_key}/events")),
        )]),
        ("POST", "/api/enrollments/{view_key}/resend") => Unavailable(vec![(
            "POST /api/enrollments/{view_key}/resend",
            Request::post(format!("/api/enrollments/{view_key}/resend"))
                .body(Body::empty())
                .unwrap(),
        )]),
        ("POST", "/api/confirmations") => Unavailable(vec![(
            "POST /api/confirmations",
            Request::post("/api/confirmations")
                .header("content-type", "application/json")
                .body(Body::from(json!({"token": "A".repeat(43)}).to_string()))
                .unwrap(),
        )]),
        ("DELETE", "/api/enrollments/{id}/personal-data") => Unavailable(vec![(
            "DELETE /api/enrollments/{id}/personal-data",
            Request::delete(format!("/api/enrollments/{}/personal-data", uuid::Uuid::now_v7()))
                .header("authorization", format!("Bearer {}", testkit::OPERATOR_TOKEN))
                .body(Body::empty())
                .unwrap(),
        )]),
        ("GET", "/api/enrollments/stalled") => {
            Unavailable(vec![("GET /api/enrollments/stalled", get("/api/enrollments/stalled"))])
        }
        ("GET", "/api/enrollments") => Unavailable(vec![(
            "GET /api/enrollments (listing)",
            get("/api/enrollments?limit=5"),
        )]),
        ("GET", "/api/sagas/{id}") => Unavailable(vec![(
            "GET /api/sagas/{id} (one saga with its webhook deliveries)",
            get(&format!("/api/sagas/{}", uuid::Uuid::now_v7())),
        )]),
        // Asked over the bus, answered from the customer-api's and the transaction-api's
        // databases: a service that cannot read leaves the lookup unanswered, a 504 within
        // LOOKUP_TIMEOUT_MS (gateway/tests/lookups.rs stops a service for it).
        ("GET", "/api/customers/{id}" | "/api/customers/{id}/points") => Elsewhere,
        // Compiled into the binary.
        ("GET", "/" | "/openapi.json" | "/asyncapi.json" | "/docs") => Answers(vec![get(path)]),
        // The confirmation page and the webhooks' public keys: compiled in, or from the settings.
        ("GET", "/confirm" | "/.well-known/webhook-keys") => Answers(vec![get(path)]),
        ("GET", "/assets/{file}") => Answers(vec![get("/assets/app.css"), get("/assets/app.js")]),
        // Scraped during an outage most of all: the saga gauges keep their last reading.
        ("GET", "/metrics") => Answers(vec![get("/metrics")]),
        // Mounted by the service around this router; /ready during an outage is the fault
        // suite's (its outage phase waits for every service's /ready to answer 503, then 200).
        ("GET", "/health" | "/ready") => Elsewhere,
        (method, path) => panic!(
            "{method} {path} is documented, but this test does not say what it answers while the \
             database is down: add it to while_down"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_503_while_the_database_is_down() {
    testkit::init_logs();
    let gateway_db = TestDb::new(Backend::Postgres, "gateway").await;
    let relay = Cuttable::start(server_address(&gateway_db.url)).await;

    let config = testkit::gateway_config();
    let gateway_pool = pool_through(&relay, &gateway_db, gateway::migrations()).await;
    let gateway = gateway::router(&config, gateway_pool, Arc::new(Notify::new())).unwrap();

    // Up: every route answers from the database.
    let accepted = call(&gateway, post_enrollment(Some("down-key"))).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let view_key = accepted.body["view_key"].as_str().unwrap().to_owned();
    let up = [
        (post_enrollment(None), 202),
        (post_enrollment(Some("down-key")), 409),
        (get(&format!("/api/enrollments/{view_key}")), 200),
        (get("/api/enrollments/stalled"), 200),
        (get("/api/enrollments?limit=5"), 200),
    ];
    for (request, status) in up {
        let route = request.uri().to_string();
        let answer = call(&gateway, request).await;
        assert_eq!(answer.status, status, "{route} while up: {}", answer.body);
    }

    // Every documented operation, from the document the gateway serves.
    let document = call(&gateway, get("/openapi.json")).await;
    assert_eq!(document.status, 200);
    let operations: Vec<(String, String)> = document.body["paths"]
        .as_object()
        .expect("documented paths")
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("path item").keys();
            methods.map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let (mut unavailable, mut answering) = (Vec::new(), Vec::new());
    for (method, path) in &operations {
        match while_down(method, path, &view_key) {
            WhileDown::Unavailable(requests) => unavailable.extend(requests),
            WhileDown::Answers(requests) => answering.extend(requests),
            WhileDown::Elsewhere => {}
        }
    }
    // Submission (three ways), status, events, stalled and listing: the gateway's own database.
    assert!(
        unavailable.len() >= 7,
        "the document lost database routes: {operations:?}"
    );

    relay.cut().await;

    // Down: the same routes, with and without an idempotency key, all at once (each waits for
    // the pool's acquire timeout).
    let down = futures::future::join_all(unavailable.into_iter().map(|(route, request)| {
        let gateway = gateway.clone();
        async move { (route, call(&gateway, request).await) }
    }));
    let others = futures::future::join_all(answering.into_iter().map(|request| {
        let gateway = gateway.clone();
        async move { (request.uri().to_string(), call(&gateway, request).await) }
    }));
    let (answers, others) = futures::join!(down, others);
    for (route, answer) in &answers {
        assert_unavailable(answer, route);
    }
    for (route, answer) in &others {
        assert_eq!(answer.status, 200, "{route} while down: {}", answer.text);
    }
}
