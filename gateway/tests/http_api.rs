//! The gateway's HTTP contract for bad input and idempotent retries, in process (the real router
//! over a fresh database, no bus), and start-up checks of the topology (against LocalStack).

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use testkit::Backend;
use testkit::api::GatewayApi;

testkit::on_both_backends!(
    bad_input_gets_problem_details,
    idempotency_key_replays_or_conflicts,
    a_malformed_traceparent_is_ignored,
    an_empty_listing_parameter_is_refused_not_read_as_absent,
    the_listing_names_a_customer_only_where_there_is_one,
    the_public_view_is_addressed_by_a_view_key_not_the_id,
    a_replay_gives_an_enrollment_from_before_view_keys_a_key
);

fn post(body: impl Into<Body>, content_type: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/api/enrollments");
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body(body.into()).unwrap()
}

fn json_post(body: &Value, key: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/api/enrollments").header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(Body::from(body.to_string())).unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

async fn count(api: &GatewayApi, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&api.pool).await.unwrap()
}

async fn bad_input_gets_problem_details(backend: Backend) {
    let api = GatewayApi::start(backend).await;
    let json = Some("application/json");

    let answer = api.call(post("{\"name\": ", json)).await;
    let body = answer.problem(400);
    assert!(body["detail"].as_str().unwrap().contains("not valid JSON"), "{body}");
    api.call(post("{}", None)).await.problem(415);
    api.call(post("name=Ada", Some("text/plain"))).await.problem(415);
    api.call(post("{}", Some("application/json; charset=latin1")))
        .await
        .problem(415);
    api.call(post("\"just a string\"", json)).await.problem(422);

    let answer = api
        .call(post("{\"name\": \"  \", \"email\": \"not-an-email\"}", json))
        .await;
    let body = answer.problem(422);
    let fields: Vec<&str> = body["invalid-params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "email"], "{body}");
    let answer = api.call(post("{\"email\": 42}", json)).await;
    assert!(
        answer.problem(422)["detail"]
            .as_str()
            .unwrap()
            .contains("name: is required")
    );

    // Too large: refused up front when Content-Length says so, and cut off when it does not.
    let huge = format!("{{\"name\": \"{}\", \"email\": \"a@b.co\"}}", "x".repeat(64 * 1024));
    let declared = Request::post("/api/enrollments")
        .header("content-type", "application/json")
        .header("content-length", huge.len())
        .body(Body::from(huge.clone()))
        .unwrap();
    let answer = api.call(declared).await;
    let limit = api.config.max_body_bytes.to_string();
    assert!(
        answer.problem(413)["detail"].as_str().unwrap().contains(&limit),
        "{}",
        answer.body
    );
    assert_eq!(answer.header("connection"), Some("close"));
    let streamed = futures::stream::iter([Ok::<_, std::io::Error>(huge)]);
    let answer = api.call(post(Body::from_stream(streamed), json)).await;
    answer.problem(413);

    api.call(post(vec![b'{', 0xff, 0xfe, b'}'], json)).await.problem(400);
    let mut empty_key = json_post(&json!({"name": "A", "email": "a@b.co"}), None);
    empty_key.headers_mut().insert("idempotency-key", "".parse().unwrap());
    api.call(empty_key).await.problem(400);

    api.call(get("/api/enrollments/not-a-view-key")).await.problem(400);
    api.call(get(&format!("/api/enrollments/{}", "9".repeat(5000))))
        .await
        .problem(400);
    let unknown = "A".repeat(22);
    let answer = api.call(get(&format!("/api/enrollments/{unknown}"))).await;
    assert!(
        answer.problem(404)["detail"]
            .as_str()
            .unwrap()
            .contains("no enrollment")
    );
    api.call(get("/api/customers/nope")).await.problem(401);
    let mut with_token = get("/api/customers/nope");
    with_token.headers_mut().insert(
        "authorization",
        format!("Bearer {}", testkit::OPERATOR_TOKEN).parse().unwrap(),
    );
    api.call(with_token).await.problem(400);
    api.call(get("/no/such/route")).await.problem(404);
    let delete = Request::delete("/api/enrollments").body(Body::empty()).unwrap();
    api.call(delete).await.problem(405);
    let oversized_headers = Request::get(format!("/api/enrollments/{unknown}"))
        .header("x-filler", "x".repeat(20 * 1024))
        .body(Body::empty())
        .unwrap();
    api.call(oversized_headers).await.problem(431);

    // None of it was accepted: no enrollment, nothing waiting for the bus.
    assert_eq!(utility::messaging::outbox::pending(&api.pool).await.unwrap(), 0);
    assert_eq!(count(&api, "SELECT COUNT(*) FROM enrollments").await, 0);
}

async fn idempotency_key_replays_or_conflicts(backend: Backend) {
    let api = GatewayApi::start(backend).await;
    let key = uuid::Uuid::new_v4().to_string();
    let email = format!("idem-{key}@example.com");

    let first = api
        .call(json_post(&json!({"name": "Ada", "email": email}), Some(&key)))
        .await;
    assert_eq!(first.status, 202, "{}", first.body);
    let id = first.body["id"].as_str().unwrap().to_owned();
    // The same request again, with spacing and case a person would not notice: the same enrollment.
    let again = api
        .call(json_post(
            &json!({"name": " Ada ", "email": email.to_uppercase()}),
            Some(&key),
        ))
        .await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.body["id"], id.as_str());
    assert_eq!(again.body["view_key"], first.body["view_key"]);
    assert_eq!(again.header("location"), first.header("location"));

    let conflict = api
        .call(json_post(&json!({"name": "Someone Else", "email": email}), Some(&key)))
        .await;
    let body = conflict.problem(409);
    // It says what is wrong, and nothing about the enrollment the key belongs to: whoever reuses
    // a key must not learn someone else's enrollment id.
    assert!(body["detail"].as_str().unwrap().contains("Idempotency-Key"), "{body}");
    assert!(
        !conflict.body.to_string().contains(&id)
            && !conflict
                .body
                .to_string()
                .contains(first.body["view_key"].as_str().unwrap()),
        "the 409 names the enrollment: {body}"
    );

    // Another key is another enrollment; no key at all is always a new one.
    let other = api
        .call(json_post(&json!({"name": "Ada", "email": email}), Some("another-key")))
        .await;
    assert_eq!(other.status, 202);
    assert_ne!(other.body["id"], id.as_str());

    // One enrollment and one Enroll command per key.
    assert_eq!(count(&api, "SELECT COUNT(*) FROM enrollments").await, 2);
    // Two enrollments: each an `Enroll` and the `EnrollmentStatusChanged` of its first entry.
    assert_eq!(utility::messaging::outbox::pending(&api.pool).await.unwrap(), 4);
}

/// `traceparent` only ever continues a trace: a value that is not W3C trace context starts a new
/// one instead of refusing the submission (and the document declares a plain string).
async fn a_malformed_traceparent_is_ignored(backend: Backend) {
    let api = GatewayApi::start(backend).await;
    for (i, value) in [
        "{}",
        "00-not-a-trace-01",
        "",
        "ff-00000000000000000000000000000000-0000000000000000-00",
    ]
    .into_iter()
    .enumerate()
    {
        let mut request = json_post(&json!({"name": "Ada", "email": format!("trace-{i}@example.com")}), None);
        request.headers_mut().insert("traceparent", value.parse().unwrap());
        let answer = api.call(request).await;
        assert_eq!(answer.status, 202, "traceparent {value:?}: {}", answer.body);
    }
    assert_eq!(count(&api, "SELECT COUNT(*) FROM enrollments").await, 4);
}

/// `cursor=` (a last page's null `next_cursor` passed on) is refused rather than read as "from
/// the start", and so are `status=` and `limit=`: each names itself in one 422, as the document
/// declares a UUID, a status and a number for them.
async fn an_empty_listing_parameter_is_refused_not_read_as_absent(backend: Backend) {
    let api = GatewayApi::start(backend).await;
    let listing = |query: &str| {
        Request::get(format!("/api/enrollments?{query}"))
            .header("authorization", format!("Bearer {}", testkit::OPERATOR_TOKEN))
            .body(Body::empty())
            .unwrap()
    };
    let invalid = |body: &Value| -> Vec<String> {
        body["invalid-params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    for parameter in ["cursor", "status", "limit"] {
        let answer = api.call(listing(&format!("{parameter}="))).await;
        assert_eq!(invalid(answer.problem(422)), [parameter], "{parameter}=");
    }
    let answer = api.call(listing("status=&limit=&cursor=")).await;
    assert_eq!(invalid(answer.problem(422)), ["status", "limit", "cursor"]);
    // Absent, each takes its default.
    let answer = api.call(listing("")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["next_cursor"], Value::Null);
}

/// A row of the operator listing carries `customer_id` only once the saga has enrolled a
/// customer: every id it shows can be followed to `GET /api/customers/{id}`, none is null.
async fn the_listing_names_a_customer_only_where_there_is_one(backend: Backend) {
    let api = GatewayApi::start(backend).await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let answer = api
            .call(json_post(
                &json!({"name": "Ada", "email": format!("listed-{i}@example.com")}),
                None,
            ))
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
        ids.push(answer.body["id"].as_str().unwrap().to_owned());
    }
    let customer = uuid::Uuid::now_v7().to_string();
    sqlx::query("UPDATE enrollments SET customer_id = $1 WHERE id = $2")
        .bind(&customer)
        .bind(&ids[1])
        .execute(&api.pool)
        .await
        .unwrap();
    let listing = Request::get("/api/enrollments")
        .header("authorization", format!("Bearer {}", testkit::OPERATOR_TOKEN))
        .body(Body::empty())
        .unwrap();
    let answer = api.call(listing).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let rows = answer.body["enrollments"].as_array().unwrap();
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap();
    assert_eq!(row(&ids[0]).get("customer_id"), None, "{}", row(&ids[0]));
    assert_eq!(row(&ids[1])["customer_id"], customer.as_str());
}

/// A service refuses to start when its topology is missing, naming what is missing and how to
/// provision it; it creates nothing itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_refuse_to_start_without_their_topology() {
    testkit::init_logs();
    let bus = testkit::bus().await;
    let db = testkit::TestDb::new(Backend::Sqlite, "customer").await;
    let mut common = utility::runtime::config::CommonConfig::new(([127, 0, 0, 1], 0).into(), db.url.clone());
    common.topology.topology_stack = format!("missing-{}", uuid::Uuid::new_v4().simple());
    let err = customer_api::Application::build(
        customer_api::Config {
            common: common.clone(),
            ..Default::default()
        },
        bus.clone(),
    )
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
    let err = customer_api::Application::build(
        customer_api::Config {
            common,
            ..Default::default()
        },
        bus.clone(),
    )
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

/// The public view's address is a view key of 128 random bits, made at acceptance: `Location`
/// and the 202 body carry it, the public routes take it, and the enrollment id (a UUIDv7, which
/// shows when it was made and has few random bits) addresses nothing. Nothing the public routes
/// answer is kept by a cache.
async fn the_public_view_is_addressed_by_a_view_key_not_the_id(backend: Backend) {
    let api = GatewayApi::start(backend).await;
    let accepted = api
        .call(json_post(
            &json!({"name": "Ada", "email": "view-key@example.com"}),
            None,
        ))
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(accepted.header("cache-control"), Some("no-store"));
    let id = accepted.body["id"].as_str().unwrap();
    let view_key = accepted.body["view_key"].as_str().unwrap();
    assert_eq!(view_key.len(), 22, "{view_key}");
    assert!(
        view_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{view_key}"
    );
    let location = format!("/api/enrollments/{view_key}");
    assert_eq!(accepted.header("location"), Some(location.as_str()));
    let stored: String = sqlx::query_scalar("SELECT view_key FROM enrollments WHERE id = $1")
        .bind(id)
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(stored, view_key);

    let shown = api.call(get(&location)).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.body["id"], id, "the id stays, for correlation");
    assert_eq!(shown.header("cache-control"), Some("no-store"));
    let mut waited = get(&location);
    waited.headers_mut().insert("prefer", "wait=1".parse().unwrap());
    let waited = api.call(waited).await;
    assert_eq!(waited.status, 200, "{}", waited.body);
    assert_eq!(waited.header("preference-applied"), Some("wait=1"));
    assert_eq!(waited.header("cache-control"), Some("no-store"));

    // The id no longer opens the view, nor its stream; the refusal says what does.
    for path in [
        format!("/api/enrollments/{id}"),
        format!("/api/enrollments/{id}/events"),
    ] {
        let refused = api.call(get(&path)).await;
        let detail = refused.problem(400)["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("view key"), "{detail}");
        assert_eq!(refused.header("cache-control"), Some("no-store"));
    }
    // Each acceptance makes a new key.
    let other = api
        .call(json_post(
            &json!({"name": "Ada", "email": "view-key-2@example.com"}),
            None,
        ))
        .await;
    assert_ne!(other.body["view_key"], view_key);
}

/// An enrollment accepted before view keys existed has none, so no public view; replaying its
/// submission (the same key and body, which only its submitter has) gives it one.
async fn a_replay_gives_an_enrollment_from_before_view_keys_a_key(backend: Backend) {
    let api = GatewayApi::start(backend).await;
    let body = json!({"name": "Ada", "email": "before-keys@example.com"});
    let first = api.call(json_post(&body, Some("before-keys"))).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let id = first.body["id"].as_str().unwrap();
    sqlx::query("UPDATE enrollments SET view_key = NULL WHERE id = $1")
        .bind(id)
        .execute(&api.pool)
        .await
        .unwrap();
    let old_key = first.body["view_key"].as_str().unwrap();
    api.call(get(&format!("/api/enrollments/{old_key}"))).await.problem(404);

    let again = api.call(json_post(&body, Some("before-keys"))).await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.body["id"], id);
    let new_key = again.body["view_key"].as_str().unwrap();
    assert_ne!(new_key, old_key);
    let shown = api.call(get(&format!("/api/enrollments/{new_key}"))).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    // And it keeps that key.
    let third = api.call(json_post(&body, Some("before-keys"))).await;
    assert_eq!(third.body["view_key"], new_key);
}
