//! The gateway's HTTP contract for bad input and idempotent retries, and start-up checks of the
//! topology.

mod support;

use serde_json::{Value, json};
use support::{Backend, Options, System};

on_both_backends!(bad_input_gets_problem_details, idempotency_key_replays_or_conflicts);

/// Asserts a problem+json answer with `status` and returns its body.
async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string() && body["detail"].is_string(), "{body}");
    body
}

async fn bad_input_gets_problem_details(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let http = &system.http;
    let enrollments = system.url("/api/enrollments");
    let post = |body: &'static str, content_type: Option<&'static str>| {
        let mut request = http.post(&enrollments).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };

    let body = problem(post("{\"name\": ", Some("application/json")).await.unwrap(), 400).await;
    assert!(body["detail"].as_str().unwrap().contains("not valid JSON"), "{body}");
    problem(post("{}", None).await.unwrap(), 415).await;
    problem(post("name=Ada", Some("text/plain")).await.unwrap(), 415).await;
    problem(post("\"just a string\"", Some("application/json")).await.unwrap(), 422).await;

    let body = problem(
        post(
            "{\"name\": \"  \", \"email\": \"not-an-email\"}",
            Some("application/json"),
        )
        .await
        .unwrap(),
        422,
    )
    .await;
    let fields: Vec<&str> = body["invalid-params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "email"], "{body}");
    let body = problem(post("{\"email\": 42}", Some("application/json")).await.unwrap(), 422).await;
    assert!(body["detail"].as_str().unwrap().contains("name: is required"), "{body}");

    let huge = format!("{{\"name\": \"{}\", \"email\": \"a@b.co\"}}", "x".repeat(64 * 1024));
    let response = http
        .post(&enrollments)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    problem(response, 413).await;

    let invalid_utf8 = http
        .post(&enrollments)
        .header("content-type", "application/json")
        .body(vec![b'{', 0xff, 0xfe, b'}'])
        .send()
        .await
        .unwrap();
    problem(invalid_utf8, 400).await;

    let response = http
        .post(&enrollments)
        .header("idempotency-key", "")
        .json(&json!({"name": "A", "email": "a@b.co"}))
        .send()
        .await
        .unwrap();
    problem(response, 400).await;

    problem(
        http.get(system.url("/api/enrollments/not-a-uuid"))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    problem(
        http.get(system.url(&format!("/api/enrollments/{}", "9".repeat(5000))))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    let unknown = uuid::Uuid::now_v7();
    let body = problem(
        http.get(system.url(&format!("/api/enrollments/{unknown}")))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains(&unknown.to_string()));
    problem(http.get(system.url("/api/customers/nope")).send().await.unwrap(), 400).await;
    problem(
        http.get(system.url(&format!("/api/customers/{unknown}")))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    problem(http.get(system.url("/no/such/route")).send().await.unwrap(), 404).await;
    problem(http.delete(&enrollments).send().await.unwrap(), 405).await;

    // None of it reached the bus: nothing was accepted.
    assert_eq!(
        utility::messaging::outbox::pending(&system.gateway().pool)
            .await
            .unwrap(),
        0
    );
    let accepted = support::scalar_i64(
        &system.gateway().pool,
        "SELECT COUNT(*) FROM enrollments WHERE id <> $1",
        "",
    )
    .await;
    assert_eq!(accepted, 0);
    system.stop().await;
}

async fn idempotency_key_replays_or_conflicts(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let key = uuid::Uuid::new_v4().to_string();
    let email = format!("idem-{key}@example.com");
    let send = |body: Value| {
        system
            .http
            .post(system.url("/api/enrollments"))
            .header("idempotency-key", &key)
            .json(&body)
            .send()
    };

    let first = send(json!({"name": "Ada", "email": email})).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // The same request again, with spacing and case a person would not notice: the same enrollment.
    let again = send(json!({"name": " Ada ", "email": email.to_uppercase()}))
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    let location = again.headers().get("location").unwrap().to_str().unwrap().to_owned();
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(location, format!("/api/enrollments/{}", first["id"].as_str().unwrap()));

    let conflict = send(json!({"name": "Someone Else", "email": email})).await.unwrap();
    let body = problem(conflict, 409).await;
    assert!(
        body["detail"].as_str().unwrap().contains(first["id"].as_str().unwrap()),
        "{body}"
    );

    let done = system
        .wait_for_status(first["id"].as_str().unwrap(), &support::TERMINAL)
        .await;
    assert_eq!(done["status"], "completed");
    let enrollments = support::scalar_i64(
        &system.gateway().pool,
        "SELECT COUNT(*) FROM enrollments WHERE email = $1",
        &email,
    )
    .await;
    assert_eq!(enrollments, 1);
    system.stop().await;
}

/// A service refuses to start when its topology is missing, naming what is missing and how to
/// provision it; it creates nothing itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_refuse_to_start_without_their_topology() {
    support::init_logs();
    let bus = support::bus().await;
    let db = support::TestDb::new(Backend::Sqlite, "customer").await;
    let mut common = utility::runtime::config::CommonConfig::new(([127, 0, 0, 1], 0).into(), db.url.clone());
    common.topology.topology_stack = format!("missing-{}", uuid::Uuid::new_v4().simple());
    let err = customer_api::Application::build(customer_api::Config { common: common.clone() }, bus.clone())
        .await
        .err()
        .expect("start-up must fail")
        .to_string();
    assert!(
        err.contains(&common.topology.topology_stack) && err.contains("make topology"),
        "{err}"
    );

    let missing_queue = "http://127.0.0.1:4566/queue/us-east-1/000000000000/no-such-queue-for-saga-tests";
    common.topology.customer_commands_queue_url = Some(missing_queue.to_owned());
    common.topology.customer_events_topic_arn = Some("arn:aws:sns:us-east-1:000000000000:no-such-topic".to_owned());
    let err = customer_api::Application::build(customer_api::Config { common }, bus.clone())
        .await
        .err()
        .expect("start-up must fail")
        .to_string();
    assert!(
        err.contains("queue `customer-commands`") && err.contains(missing_queue),
        "{err}"
    );
    let exists = bus
        .sqs()
        .get_queue_url()
        .queue_name("no-such-queue-for-saga-tests")
        .send()
        .await;
    assert!(exists.is_err(), "the service created a queue");
}
