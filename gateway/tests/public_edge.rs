//! The gateway's edge, in process: operator routes behind the bearer token (and off without
//! one), the per-client submission limit, load shedding, and the operator listing.

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::http::Request;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use testkit::api::{Answer, GatewayApi, call};
use testkit::{Backend, OPERATOR_TOKEN};

testkit::on_both_backends!(operator_listing_pages_and_filters);

fn enrollment(n: usize) -> Value {
    json!({"name": format!("Edge {n}"), "email": format!("edge-{n}-{}@example.com", uuid::Uuid::new_v4())})
}

fn submit_from(peer: &str, forwarded_for: Option<&str>, n: usize) -> Request<Body> {
    let mut request = Request::post("/api/enrollments").header("content-type", "application/json");
    if let Some(forwarded) = forwarded_for {
        request = request.header("x-forwarded-for", forwarded);
    }
    let mut request = request.body(Body::from(enrollment(n).to_string())).unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

fn get_as(uri: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::get(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(Body::empty()).unwrap()
}

fn assert_unauthorized(answer: &Answer, route: &str) {
    assert_eq!(answer.status, 401, "{route}: {}", answer.body);
    answer.problem(401);
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"), "{route}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_routes_need_the_token_and_are_off_without_one() {
    let customer_id = uuid::Uuid::now_v7();
    let config = testkit::gateway_config();
    let api = GatewayApi::with_config(Backend::Sqlite, config.clone()).await;
    let accepted = api.call(submit_from("203.0.113.1:5000", None, 0)).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let view_key = accepted.body["view_key"].as_str().unwrap().to_owned();
    let id = accepted.body["id"].as_str().unwrap().to_owned();

    let operator_routes = [
        "/api/enrollments".to_owned(),
        "/api/enrollments?status=pending&limit=10".to_owned(),
        format!("/api/sagas/{id}"),
        "/api/enrollments/stalled".to_owned(),
        format!("/api/customers/{customer_id}"),
        format!("/api/customers/{customer_id}/points"),
    ];
    for route in &operator_routes {
        assert_unauthorized(&api.call(get_as(route, None)).await, route);
        assert_unauthorized(&api.call(get_as(route, Some("not-the-operator-token"))).await, route);
        let mut basic = get_as(route, None);
        basic
            .headers_mut()
            .insert("authorization", format!("Basic {OPERATOR_TOKEN}").parse().unwrap());
        assert_unauthorized(&api.call(basic).await, route);
        let answer = api.call(get_as(route, Some(OPERATOR_TOKEN))).await;
        // The lookups go over the bus, which the in-process router has none of: past the token,
        // they say so (gateway/tests/lookups.rs answers them through the bus).
        let expected = if route.starts_with("/api/customers/") { 503 } else { 200 };
        assert_eq!(answer.status, expected, "{route} with the token: {}", answer.body);
    }
    // The public routes need no token.
    let public = api.call(get_as(&format!("/api/enrollments/{view_key}"), None)).await;
    assert_eq!(public.status, 200, "{}", public.body);

    // Without OPERATOR_TOKEN the operator routes do not exist, whatever is sent.
    let off = GatewayApi::with_config(
        Backend::Sqlite,
        gateway::Config {
            operator_token: None,
            ..config
        },
    )
    .await;
    for route in &operator_routes {
        for token in [None, Some(OPERATOR_TOKEN), Some("")] {
            let answer = off.call(get_as(route, token)).await;
            assert_eq!(answer.status, 404, "{route} with the routes off: {}", answer.body);
            answer.problem(404);
        }
    }
    let accepted = off.call(submit_from("203.0.113.1:5000", None, 1)).await;
    assert_eq!(accepted.status, 202, "public routes stay on: {}", accepted.body);
    // A token too short to be safe stops the gateway from starting.
    let short = gateway::Config {
        operator_token: Some(utility::runtime::config::Secret::new("short".to_owned())),
        ..testkit::gateway_config()
    };
    let pool = off.pool.clone();
    let err = gateway::router(&short, pool, std::sync::Arc::new(tokio::sync::Notify::new()))
        .expect_err("a short token is refused")
        .to_string();
    assert!(err.contains("OPERATOR_TOKEN"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_are_limited_per_client_address() {
    let api = GatewayApi::with_config(
        Backend::Sqlite,
        gateway::Config {
            // One a minute after the burst: nothing refills while the test runs.
            rate_limit_per_minute: 1,
            rate_limit_burst: 3,
            trusted_proxy_cidrs: "10.0.0.0/16".parse().unwrap(),
            ..testkit::gateway_config()
        },
    )
    .await;
    // A client gets its burst, then 429 with Retry-After.
    for n in 0..3 {
        let answer = api.call(submit_from("203.0.113.7:4000", None, n)).await;
        assert_eq!(answer.status, 202, "submission {n}: {}", answer.body);
    }
    let limited = api.call(submit_from("203.0.113.7:4001", None, 3)).await;
    limited.problem(429);
    let retry_after: u64 = limited.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((50..=60).contains(&retry_after), "Retry-After {retry_after}");
    // Its own X-Forwarded-For does not buy it a new bucket: it is not a trusted proxy.
    api.call(submit_from("203.0.113.7:4002", Some("198.51.100.50"), 4))
        .await
        .problem(429);
    // Another client is not affected.
    let other = api.call(submit_from("203.0.113.8:4000", None, 5)).await;
    assert_eq!(other.status, 202, "{}", other.body);
    // Behind the trusted load balancer, each client is its own: the address the proxy saw.
    for (n, client) in ["198.51.100.1", "198.51.100.2"].into_iter().enumerate() {
        for attempt in 0..3 {
            let answer = api
                .call(submit_from("10.0.1.9:80", Some(client), 10 + 3 * n + attempt))
                .await;
            assert_eq!(answer.status, 202, "{client} #{attempt}: {}", answer.body);
        }
        api.call(submit_from("10.0.1.9:80", Some(client), 20 + n))
            .await
            .problem(429);
    }
    // Refusals stored nothing: 3 + 1 + 6 enrollments.
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM enrollments")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(stored, 10);
    // Reads are not limited.
    for _ in 0..10 {
        let answer = api.call(get_as("/api/enrollments/stalled", Some(OPERATOR_TOKEN))).await;
        assert_eq!(answer.status, 200);
    }
}

/// A body that never arrives holds its request (and its place) open; `reading` fires when the
/// handler starts reading it, which proves the request got past the concurrency limit.
fn never_finishing_submission(reading: tokio::sync::oneshot::Sender<()>) -> Request<Body> {
    let mut reading = Some(reading);
    let stream = futures::stream::poll_fn(move |_| {
        if let Some(reading) = reading.take() {
            let _ = reading.send(());
        }
        std::task::Poll::<Option<Result<Vec<u8>, std::io::Error>>>::Pending
    });
    Request::post("/api/enrollments")
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_capacity_are_shed_at_once() {
    let api = GatewayApi::with_config(
        Backend::Sqlite,
        gateway::Config {
            max_concurrent_requests: 2,
            ..testkit::gateway_config()
        },
    )
    .await;
    // Two requests take both places, one after the other.
    let mut held = Vec::new();
    for _ in 0..2 {
        let (reading, in_handler) = tokio::sync::oneshot::channel();
        let router = api.router.clone();
        held.push(tokio::spawn(async move {
            call(&router, never_finishing_submission(reading)).await
        }));
        tokio::time::timeout(Duration::from_secs(5), in_handler)
            .await
            .expect("the held request reached its handler")
            .unwrap();
    }
    // A third is refused at once, not queued.
    let started = tokio::time::Instant::now();
    let shed = api.call(get_as("/api/enrollments/stalled", Some(OPERATOR_TOKEN))).await;
    assert!(started.elapsed() < Duration::from_secs(1), "shedding waited");
    shed.problem(503);
    assert!(shed.header("retry-after").is_some());
    for request in held {
        request.abort();
        let _ = request.await;
    }
    // Capacity comes back when the held requests go.
    let answer = api.call(get_as("/api/enrollments/stalled", Some(OPERATOR_TOKEN))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

async fn operator_listing_pages_and_filters(backend: Backend) {
    let api = GatewayApi::start(backend).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let answer = api.call(submit_from("203.0.113.1:1", None, n)).await;
        ids.push(answer.body["id"].as_str().unwrap().to_owned());
    }
    ids.reverse(); // newest first
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let uri = match &cursor {
            Some(cursor) => format!("/api/enrollments?limit=2&cursor={cursor}"),
            None => "/api/enrollments?limit=2".to_owned(),
        };
        let page = api.call(get_as(&uri, Some(OPERATOR_TOKEN))).await;
        assert_eq!(page.status, 200, "{}", page.body);
        pages += 1;
        for entry in page.body["enrollments"].as_array().unwrap() {
            assert_eq!(entry["status"], "pending");
            assert!(
                entry["created_at"].is_string() && entry.get("reason").is_some(),
                "{entry}"
            );
            seen.push(entry["id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every enrollment once, newest first");
    let pending = api
        .call(get_as("/api/enrollments?status=pending", Some(OPERATOR_TOKEN)))
        .await;
    assert_eq!(pending.body["enrollments"].as_array().unwrap().len(), 5);
    let completed = api
        .call(get_as("/api/enrollments?status=completed", Some(OPERATOR_TOKEN)))
        .await;
    assert_eq!(completed.body["enrollments"], json!([]));
    assert_eq!(completed.body["next_cursor"], Value::Null);
    let bad = api
        .call(get_as(
            "/api/enrollments?status=done&limit=0&cursor=x",
            Some(OPERATOR_TOKEN),
        ))
        .await;
    let fields: Vec<&str> = bad.problem(422)["invalid-params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["status", "limit", "cursor"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_methods_share_one_metric_label() {
    let api = GatewayApi::start(Backend::Sqlite).await;
    for n in 0..20 {
        let request = Request::builder()
            .method(format!("AAAA{n}").as_str())
            .uri("/api/enrollments")
            .body(Body::empty())
            .unwrap();
        let answer = api.call(request).await;
        assert_eq!(answer.status, 405, "AAAA{n}: {}", answer.body);
    }
    let metrics = api.call(get_as("/metrics", Some(OPERATOR_TOKEN))).await;
    assert_eq!(metrics.status, 200);
    assert!(
        !metrics.text.contains("AAAA"),
        "a client's method became a label:\n{}",
        metrics.text
    );
    let other = metrics
        .text
        .lines()
        .find(|line| line.starts_with("saga_http_requests_total{") && line.contains(r#"method="other""#))
        .unwrap_or_else(|| panic!("no series for other methods:\n{}", metrics.text));
    assert!(other.ends_with(" 20"), "{other}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_client_owns_one_bucket_per_64_not_per_address() {
    let api = GatewayApi::with_config(
        Backend::Sqlite,
        gateway::Config {
            rate_limit_per_minute: 1,
            rate_limit_burst: 1,
            ..testkit::gateway_config()
        },
    )
    .await;
    let accepted = api.call(submit_from("[2001:db8:0:1::1]:4000", None, 0)).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    // Another address of the same /64: the same bucket, already empty.
    let rotated = api
        .call(submit_from("[2001:db8:0:1:dead:beef:0:2]:4000", None, 1))
        .await;
    rotated.problem(429);
    // Another /64 is another client.
    let neighbour = api.call(submit_from("[2001:db8:0:2::1]:4000", None, 2)).await;
    assert_eq!(neighbour.status, 202, "{}", neighbour.body);
    // An IPv4 client seen through an IPv4-mapped address is that IPv4 client.
    let v4 = api.call(submit_from("203.0.113.50:4000", None, 3)).await;
    assert_eq!(v4.status, 202, "{}", v4.body);
    let mapped = api.call(submit_from("[::ffff:203.0.113.50]:4000", None, 4)).await;
    mapped.problem(429);
}
