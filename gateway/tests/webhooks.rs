//! Callbacks: a receiver here (axum on port 0) verifies every webhook with the key the gateway
//! publishes and records what it gets; the gateway, the services, LocalStack and the databases
//! are real. Also the SSRF guard, at submission (422) and at delivery (the address connected to).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::api::GatewayApi;
use testkit::{Backend, DEADLINE, Options, Poll, System, eventually};

testkit::on_both_backends!(
    every_status_change_arrives_signed_and_retries_reach_a_flaky_receiver,
    status_events_without_a_callback_stop_at_the_topic,
    a_410_stops_the_callbacks_and_a_redirect_is_not_followed,
    a_410_also_stops_a_delivery_already_under_way,
    callback_urls_to_private_addresses_are_refused_at_submission,
);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    id: String,
    verified: bool,
    body: Value,
}

#[derive(Default)]
struct Receiver {
    key: String,
    hits: HashMap<String, Vec<Hit>>,
}

type Shared = Arc<Mutex<Receiver>>;

/// `/{behaviour}/{tag}`: `ok` answers 204, `flaky` 503 to the first two attempts of each
/// webhook-id, `gone` 410, `redirect` 307 to `/ok/redirected`, `slowgone` 503 after 1.5 s to the
/// first status change and 410 at once to the others.
async fn receive(
    State(receiver): State<Shared>,
    Path((behaviour, tag)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let raw = body;
    let body: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
    let earlier = {
        let mut receiver = receiver.lock().unwrap();
        let (id, verified) = gateway::webhooks::signing::verify_headers(&receiver.key, &headers, &raw);
        let hits = receiver.hits.entry(format!("{behaviour}/{tag}")).or_default();
        let earlier = hits.iter().filter(|h| h.id == id).count();
        hits.push(Hit {
            id,
            verified,
            body: body.clone(),
        });
        earlier
    };
    match behaviour.as_str() {
        "slowgone" if body["data"]["sequence"] == 1 => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        "slowgone" => StatusCode::GONE.into_response(),
        "flaky" if earlier < 2 => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "gone" => StatusCode::GONE.into_response(),
        "redirect" => (StatusCode::TEMPORARY_REDIRECT, [("location", "/ok/redirected")]).into_response(),
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn start_receiver(key: String) -> (u16, Shared) {
    let shared: Shared = Arc::new(Mutex::new(Receiver {
        key,
        hits: HashMap::new(),
    }));
    let app = axum::Router::new()
        .route("/{behaviour}/{tag}", post(receive))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, shared)
}

/// The system with callbacks to this machine on, and a receiver holding the key it publishes.
async fn start_with_receiver(backend: Backend) -> (System, u16, Shared) {
    let system = System::start(
        backend,
        Options {
            callbacks: true,
            ..Options::default()
        },
    )
    .await;
    let (port, receiver) = start_receiver(published_key(&system).await).await;
    (system, port, receiver)
}

async fn published_key(system: &System) -> String {
    let (status, keys) = system.get_json("/.well-known/webhook-keys").await;
    assert_eq!(status, 200, "{keys}");
    keys["keys"][0].as_str().expect("a published key").to_owned()
}

async fn submit_with_callback(system: &System, callback_url: &str) -> String {
    let response = system
        .http
        .post(system.url("/api/enrollments"))
        .json(&json!({
            "name": "Ada",
            "email": format!("hook-{}@example.com", uuid::Uuid::new_v4().simple()),
            "callback_url": callback_url,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().expect("enrollment id").to_owned()
}

fn hits(receiver: &Shared, path: &str) -> Vec<Hit> {
    receiver.lock().unwrap().hits.get(path).cloned().unwrap_or_default()
}

/// The statuses delivered, in the order of their `sequence`, each once.
fn delivered_statuses(hits: &[Hit]) -> Vec<(i64, String)> {
    let mut seen: Vec<(i64, String)> = hits
        .iter()
        .map(|h| {
            (
                h.body["data"]["sequence"].as_i64().unwrap_or(-1),
                h.body["data"]["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

async fn every_status_change_arrives_signed_and_retries_reach_a_flaky_receiver(backend: Backend) {
    let (system, port, receiver) = start_with_receiver(backend).await;
    let steady = submit_with_callback(&system, &format!("http://127.0.0.1:{port}/ok/steady")).await;
    let flaky = submit_with_callback(&system, &format!("http://127.0.0.1:{port}/flaky/flaky")).await;
    let expected = vec![
        (1, "pending".to_owned()),
        (2, "enrolled".to_owned()),
        (3, "completed".to_owned()),
    ];
    for (id, path, attempts) in [(&steady, "ok/steady", 1), (&flaky, "flaky/flaky", 3)] {
        let got = eventually("every status change to arrive", DEADLINE, || async {
            let got = hits(&receiver, path);
            let ids: std::collections::BTreeSet<&str> = got.iter().map(|h| h.id.as_str()).collect();
            let done = ids.len() == 3 && got.len() == 3 * attempts;
            Poll::ready_if(done, got.clone(), got.len())
        })
        .await
        .unwrap();
        assert!(got.iter().all(|h| h.verified), "a signature did not verify: {got:?}");
        assert!(got.iter().all(|h| h.body["data"]["enrollment_id"] == id.as_str()));
        assert!(got.iter().all(|h| h.body["type"] == "enrollment.status_changed"));
        assert_eq!(delivered_statuses(&got), expected, "{path}");
        // Each webhook-id came exactly `attempts` times: the flaky receiver got its third.
        let mut per_id: HashMap<&str, usize> = HashMap::new();
        for hit in &got {
            *per_id.entry(hit.id.as_str()).or_default() += 1;
        }
        assert!(per_id.values().all(|n| *n == attempts), "{path}: {per_id:?}");
        // Nothing personal travels.
        assert!(!got.iter().any(|h| h.body.to_string().contains("example.com")));
    }
    // The receiver answers before the dispatcher records the outcome: poll for the record.
    eventually(
        "the flaky receiver's deliveries recorded as taking three attempts each",
        DEADLINE,
        async || {
            let delivered: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'delivered' AND attempts = 3",
            )
            .fetch_one(&system.gateway().pool)
            .await
            .unwrap();
            Poll::ready_if(delivered == 3, (), delivered)
        },
    )
    .await
    .unwrap();

    // The operator's view of each enrollment shows its callback, one delivery per status change
    // in sequence order, and every attempt with its result.
    for (id, path, results) in [
        (&steady, "ok/steady", vec![("delivered", 204)]),
        (
            &flaky,
            "flaky/flaky",
            vec![("retry", 503), ("retry", 503), ("delivered", 204)],
        ),
    ] {
        let (status, view) = system.get_json(&format!("/api/sagas/{id}")).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["id"], id.as_str());
        assert_eq!(view["status"], "completed");
        assert_eq!(view["callback_url"], format!("http://127.0.0.1:{port}/{path}"));
        assert_eq!(view["callback_gone_at"], Value::Null);
        let deliveries = view["deliveries"].as_array().expect("deliveries");
        let carried: Vec<(i64, String)> = deliveries
            .iter()
            .map(|d| {
                (
                    d["sequence"].as_i64().unwrap(),
                    d["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(carried, expected, "{view}");
        let received: std::collections::BTreeSet<String> = hits(&receiver, path).into_iter().map(|h| h.id).collect();
        for delivery in deliveries {
            assert!(
                received.contains(delivery["webhook_id"].as_str().unwrap()),
                "{delivery}"
            );
            assert_eq!(delivery["state"], "delivered", "{delivery}");
            assert_eq!(delivery["attempts"], results.len(), "{delivery}");
            assert_eq!(delivery["last_status"], 204, "{delivery}");
            assert_eq!(delivery["last_error"], Value::Null, "{delivery}");
            assert_eq!(delivery["next_attempt_at"], Value::Null, "{delivery}");
            assert!(delivery["finished_at"].is_string(), "{delivery}");
            let log: Vec<(i64, String, i64)> = delivery["attempt_log"]
                .as_array()
                .expect("attempt_log")
                .iter()
                .map(|a| {
                    assert!(a["at"].is_string() && a["duration_ms"].is_i64(), "{a}");
                    (
                        a["attempt"].as_i64().unwrap(),
                        a["result"].as_str().unwrap().to_owned(),
                        a["http_status"].as_i64().unwrap(),
                    )
                })
                .collect();
            let want: Vec<(i64, String, i64)> = results
                .iter()
                .zip(1..)
                .map(|((result, status), n)| (n, (*result).to_owned(), *status))
                .collect();
            assert_eq!(log, want, "{delivery}");
        }
    }
    let (status, _) = system.get_json(&format!("/api/sagas/{}", uuid::Uuid::now_v7())).await;
    assert_eq!(status, 404);

    // And the metrics counted them: 3 + 3 deliveries delivered, after 6 attempts that got a 2xx
    // and the flaky receiver's 6 503s.
    let metrics = eventually("the webhook metrics to count every delivery", DEADLINE, async || {
        let text = gateway_metrics(&system).await;
        let delivered = sample(&text, r#"saga_webhook_deliveries_total{outcome="delivered"}"#);
        Poll::ready_if(delivered == Some(6.0), text, delivered)
    })
    .await
    .unwrap();
    for (name, want) in [
        (r#"saga_webhook_attempts_total{result="delivered"}"#, Some(6.0)),
        (r#"saga_webhook_attempts_total{result="retry"}"#, Some(6.0)),
        (r#"saga_webhook_attempts_total{result="gone"}"#, None),
        (r#"saga_webhook_deliveries_total{outcome="failed"}"#, None),
        ("saga_webhook_attempt_seconds_count", Some(12.0)),
        ("saga_webhook_delivery_seconds_count", Some(6.0)),
        ("saga_webhook_deliveries_pending", Some(0.0)),
    ] {
        assert_eq!(sample(&metrics, name), want, "{name}:\n{metrics}");
    }
    system.stop().await;
}

/// A queue of the test's own subscribed to the status-events topic on `type` alone, as another
/// subscriber (analytics, notifications) would: it gets every status event. Returns its URL.
async fn subscribe_probe(system: &System) -> String {
    let probe = testkit::scratch_queue(&system.bus, &format!("{}-probe", system.stack.params.name_prefix), &[]).await;
    system
        .bus
        .sns()
        .subscribe()
        .topic_arn(system.stack.output("StatusEventsTopicArn"))
        .protocol("sqs")
        .endpoint(probe.arn)
        .attributes("RawMessageDelivery", "true")
        .attributes("FilterPolicyScope", "MessageAttributes")
        .attributes("FilterPolicy", json!({"type": ["EnrollmentStatusChanged"]}).to_string())
        .send()
        .await
        .unwrap();
    probe.url
}

/// An enrollment without a callback (most of them) publishes its status events to the gateway's
/// topic as any other, but they stop there for the webhook deliveries: the gateway's consumer of
/// that queue handles the other enrollment's three and nothing else, and the queue stays empty,
/// while another subscriber of the topic gets all six, each saying whether its enrollment has a
/// callback.
async fn status_events_without_a_callback_stop_at_the_topic(backend: Backend) {
    let (system, port, receiver) = start_with_receiver(backend).await;
    let probe = subscribe_probe(&system).await;
    let plain = system
        .submit("Ada", &format!("plain-{}@example.com", uuid::Uuid::new_v4().simple()))
        .await;
    let hooked = submit_with_callback(&system, &format!("http://127.0.0.1:{port}/ok/hooked")).await;
    system.wait_for_status(&plain, &["completed"]).await;
    system.wait_for_status(&hooked, &["completed"]).await;

    // The other subscriber: every status event of both, `callback` saying which has one.
    // By the envelope's message id: a copy delivered twice counts once.
    let mut seen: HashMap<String, (String, Option<String>)> = HashMap::new();
    let all = eventually("the probe to get all six status events", DEADLINE, async || {
        let received = system
            .bus
            .sqs()
            .receive_message()
            .queue_url(&probe)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        for message in received.messages() {
            let attribute = |name: &str| {
                message
                    .message_attributes()
                    .and_then(|a| a.get(name))
                    .and_then(|v| v.string_value())
                    .map(str::to_owned)
            };
            let body: Value = serde_json::from_str(message.body().unwrap_or_default()).unwrap_or(Value::Null);
            seen.insert(
                body["message_id"].as_str().unwrap_or_default().to_owned(),
                (attribute("correlation_id").unwrap_or_default(), attribute("callback")),
            );
        }
        Poll::ready_if(seen.len() >= 6, seen.clone(), seen.len())
    })
    .await
    .unwrap();
    let mut by_enrollment: HashMap<&str, Vec<Option<&str>>> = HashMap::new();
    for (enrollment, callback) in all.values() {
        by_enrollment.entry(enrollment).or_default().push(callback.as_deref());
    }
    assert_eq!(by_enrollment.len(), 2, "{all:?}");
    assert_eq!(by_enrollment[plain.as_str()], [Some("no"); 3], "{all:?}");
    assert_eq!(by_enrollment[hooked.as_str()], [Some("yes"); 3], "{all:?}");

    // The webhook deliveries: the enrollment with a callback gets its three (each at least once).
    eventually("the callback's three status changes", DEADLINE, || async {
        let got = delivered_statuses(&hits(&receiver, "ok/hooked"));
        Poll::ready_if(got.len() == 3, (), got)
    })
    .await
    .unwrap();
    // What the gateway handled: once the webhook deliveries' queue is empty, the status events
    // its consumer took (each message id once, however often delivered) are the three of the
    // enrollment with a callback, and none of the other.
    let queue_url = system.queue_url("WebhookDeliveriesQueueUrl");
    let pool = system.gateway().pool.clone();
    let handled = |id: String| {
        let pool = pool.clone();
        async move {
            testkit::scalar_i64(
                &pool,
                "SELECT COUNT(*) FROM processed_messages WHERE message_type = 'EnrollmentStatusChanged' \
                 AND correlation_id = $1",
                &id,
            )
            .await
        }
    };
    eventually("the webhook deliveries' queue to be drained", DEADLINE, async || {
        let hooked_handled = handled(hooked.clone()).await;
        let depth = system.bus.queue_depth(&queue_url).await.unwrap();
        Poll::ready_if(hooked_handled == 3 && depth.total() == 0, (), (hooked_handled, depth))
    })
    .await
    .unwrap();
    assert_eq!(
        handled(plain.clone()).await,
        0,
        "the webhook consumer took status events of an enrollment without a callback"
    );
    let (status, view) = system.get_json(&format!("/api/sagas/{plain}")).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["deliveries"], json!([]), "{view}");
    system.bus.sqs().delete_queue().queue_url(&probe).send().await.unwrap();
    system.stop().await;
}

/// The gateway's `/metrics`, as an operator reads it.
async fn gateway_metrics(system: &System) -> String {
    let response = system
        .http
        .get(system.url("/metrics"))
        .bearer_auth(testkit::OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The value of one sample (`name{labels}`) in a metrics text.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A 410 stops the enrollment's other deliveries, also one whose attempt is still under way:
/// that attempt's 503, coming back after the 410, neither brings its delivery back to life (no
/// request after the 410) nor counts it as ending twice.
async fn a_410_also_stops_a_delivery_already_under_way(backend: Backend) {
    let (system, port, receiver) = start_with_receiver(backend).await;
    let id = submit_with_callback(&system, &format!("http://127.0.0.1:{port}/slowgone/s")).await;
    system.wait_for_status(&id, &testkit::TERMINAL).await;
    let pool = system.gateway().pool.clone();
    // The first status change's attempt is recorded once its slow 503 is back.
    let first: (String, i64) = eventually("the slow attempt to be recorded", DEADLINE, || async {
        let first: Option<(String, i64)> = sqlx::query_as(
            "SELECT d.state, d.attempts FROM webhook_deliveries d
             JOIN webhook_attempts a ON a.delivery_id = d.id AND a.http_status = 503
             WHERE d.enrollment_id = $1",
        )
        .bind(&id)
        .fetch_optional(&pool)
        .await
        .unwrap();
        Poll::ready_if(first.is_some(), first.clone().unwrap_or_default(), first)
    })
    .await
    .unwrap();
    assert_eq!(
        first,
        ("stopped".to_owned(), 1),
        "the 503 after the 410 revived the delivery"
    );
    // Retries here come within ~100 ms (WEBHOOK_RETRY_BASE_MS=50): give one ten times that.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = hits(&receiver, "slowgone/s");
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "a webhook was sent again after the 410: {got:?}");
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM webhook_deliveries WHERE enrollment_id = $1")
        .bind(&id)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(states.iter().all(|s| s == "stopped"), "{states:?}");
    let text = gateway_metrics(&system).await;
    assert_eq!(
        sample(&text, r#"saga_webhook_deliveries_total{outcome="stopped"}"#),
        Some(states.len() as f64),
        "each delivery ends once: {text}"
    );
    assert_eq!(
        sample(&text, r#"saga_webhook_deliveries_total{outcome="failed"}"#).unwrap_or(0.0),
        0.0
    );
    system.stop().await;
}

async fn a_410_stops_the_callbacks_and_a_redirect_is_not_followed(backend: Backend) {
    let (system, port, receiver) = start_with_receiver(backend).await;
    let gone = submit_with_callback(&system, &format!("http://127.0.0.1:{port}/gone/g")).await;
    let redirect = submit_with_callback(&system, &format!("http://127.0.0.1:{port}/redirect/r")).await;
    system.wait_for_status(&gone, &testkit::TERMINAL).await;
    system.wait_for_status(&redirect, &testkit::TERMINAL).await;
    let pool = system.gateway().pool.clone();

    // 410: the enrollment's callbacks stop; no webhook-id is tried twice.
    let states = eventually("the gone receiver's deliveries to stop", DEADLINE, || async {
        let states: Vec<String> =
            sqlx::query_scalar("SELECT state FROM webhook_deliveries WHERE enrollment_id = $1 ORDER BY created_at")
                .bind(&gone)
                .fetch_all(&pool)
                .await
                .unwrap();
        let gone_at: Option<String> = sqlx::query_scalar("SELECT callback_gone_at FROM enrollments WHERE id = $1")
            .bind(&gone)
            .fetch_one(&pool)
            .await
            .unwrap();
        Poll::ready_if(
            gone_at.is_some() && !states.is_empty() && states.iter().all(|s| s == "stopped"),
            states.clone(),
            states,
        )
    })
    .await
    .unwrap();
    let got = hits(&receiver, "gone/g");
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "a webhook was retried after 410: {got:?}");
    assert!(got.len() <= states.len());
    // The operator sees the stop: each delivery stopped, those attempted with one `gone` attempt.
    let (status, view) = system.get_json(&format!("/api/sagas/{gone}")).await;
    assert_eq!(status, 200, "{view}");
    assert!(view["callback_gone_at"].is_string(), "{view}");
    let deliveries = view["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), states.len(), "{view}");
    let attempted: Vec<&Value> = deliveries.iter().filter(|d| d["attempts"] != 0).collect();
    assert_eq!(attempted.len(), got.len(), "{view}");
    for delivery in deliveries {
        assert_eq!(delivery["state"], "stopped", "{delivery}");
    }
    for delivery in attempted {
        assert_eq!(delivery["attempt_log"][0]["result"], "gone", "{delivery}");
        assert_eq!(delivery["attempt_log"][0]["http_status"], 410, "{delivery}");
    }

    // A redirect is an unsuccessful attempt, retried, never followed.
    eventually("the redirecting receiver to be tried again", DEADLINE, || async {
        let attempts: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(attempts) FROM webhook_deliveries WHERE enrollment_id = $1 AND last_status = 307",
        )
        .bind(&redirect)
        .fetch_one(&pool)
        .await
        .unwrap();
        Poll::ready_if(attempts.unwrap_or(0) >= 2, (), attempts)
    })
    .await
    .unwrap();
    assert!(hits(&receiver, "redirect/r").len() >= 2);
    assert!(hits(&receiver, "ok/redirected").is_empty(), "the redirect was followed");
    system.stop().await;
}

async fn callback_urls_to_private_addresses_are_refused_at_submission(backend: Backend) {
    let config = gateway::Config {
        webhook_signing_keys: Some(utility::runtime::config::Secret::new(
            testkit::WEBHOOK_TEST_KEY.to_owned(),
        )),
        ..testkit::gateway_config()
    };
    let api = GatewayApi::with_config(backend, config).await;
    for url in [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hook",
        "https://localhost/hook",
        "http://93.184.216.34/hook",
        "https://user:secret@93.184.216.34/hook",
    ] {
        let answer = api.call(submit(url)).await;
        let problem = answer.problem(422);
        assert_eq!(problem["invalid-params"][0]["name"], "callback_url", "{url}: {problem}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM enrollments")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "a refused callback URL must not be accepted");
    let answer = api.call(submit("https://93.184.216.34/hook")).await;
    assert_eq!(answer.status, 202, "{}", answer.body);

    // Callbacks off (no signing key): refused, naming the field.
    let off = GatewayApi::start(backend).await;
    let problem = off.call(submit("https://93.184.216.34/hook")).await;
    assert_eq!(problem.problem(422)["invalid-params"][0]["name"], "callback_url");
    let keys = off
        .call(
            axum::http::Request::get("/.well-known/webhook-keys")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(keys.body, json!({"keys": []}));
}

fn submit(callback_url: &str) -> axum::http::Request<axum::body::Body> {
    let body = json!({"name": "Ada", "email": "ada@example.com", "callback_url": callback_url});
    axum::http::Request::post("/api/enrollments")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap()
}

/// At delivery the address connected to is what counts: names resolving to loopback (as a name
/// that resolved to a public address at submission may now), and private literals, are refused
/// without a request reaching them; an allowed host is reached on loopback, but only on a port
/// the policy allows.
#[tokio::test]
async fn delivery_connects_only_to_public_addresses_unless_the_host_is_allowed() {
    use gateway::webhooks::address::Policy;
    use gateway::webhooks::client::{Client, Outcome};
    let (port, receiver) = start_receiver(String::new()).await;
    let open = Client::new(Arc::new(Policy {
        allow_http: true,
        ..Policy::default()
    }))
    .unwrap();
    for url in [
        format!("http://localhost:{port}/ok/refused"),
        format!("http://127.0.0.1:{port}/ok/refused"),
        format!("http://[::1]:{port}/ok/refused"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
    ] {
        let outcome = open.post(&url.parse().unwrap(), &[], "{}".to_owned()).await;
        assert!(matches!(outcome, Outcome::Refused(_)), "{url}: {outcome:?}");
    }
    assert!(hits(&receiver, "ok/refused").is_empty());
    let allowed = Client::new(Arc::new(Policy {
        allow_http: true,
        allowed_hosts: vec!["localhost".to_owned()],
        ..Policy::default()
    }))
    .unwrap();
    let url = format!("http://localhost:{port}/ok/allowed").parse().unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(15), allowed.post(&url, &[], "{}".to_owned()))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Delivered(204));
    // A port CALLBACK_ALLOWED_PORTS does not name is refused before any connection, allowed
    // host or not.
    let https_port_only = Client::new(Arc::new(Policy {
        allow_http: true,
        allowed_hosts: vec!["localhost".to_owned()],
        allowed_ports: vec![443],
        ..Policy::default()
    }))
    .unwrap();
    let url = format!("http://localhost:{port}/ok/port").parse().unwrap();
    let outcome = https_port_only.post(&url, &[], "{}".to_owned()).await;
    assert_eq!(outcome, Outcome::Refused("must use port 443".to_owned()));
    assert!(hits(&receiver, "ok/port").is_empty());
}

/// A resolver whose answer changes: `first` for the first lookup (the submission's check), `then`
/// for every later one (the delivery's). Counts its lookups.
fn re_pointed(first: &str, then: &str) -> (gateway::webhooks::address::Resolver, Arc<AtomicUsize>) {
    let (first, then): (IpAddr, IpAddr) = (first.parse().unwrap(), then.parse().unwrap());
    let lookups = Arc::new(AtomicUsize::new(0));
    let counted = lookups.clone();
    let resolver = gateway::webhooks::address::Resolver::new(move |_host| {
        let ip = if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            first
        } else {
            then
        };
        Box::pin(async move { Ok(vec![ip]) })
    });
    (resolver, lookups)
}

/// DNS rebinding: a name that resolves to a public address when the enrollment is submitted and
/// to a private one when the webhook is delivered reaches nothing. No DNS server is at hand, so
/// the guard's lookup is one whose answer changes; the receiver listens on 127.0.0.1, where the
/// name points at delivery, and gets no request.
#[tokio::test]
async fn a_name_re_pointed_to_a_private_address_after_submission_reaches_nothing() {
    use gateway::webhooks::address::Policy;
    use gateway::webhooks::client::{Client, Outcome};
    let (port, receiver) = start_receiver(String::new()).await;
    let url = format!("http://rebound.example:{port}/ok/rebound");
    for private in ["127.0.0.1", "::1", "169.254.169.254", "::ffff:127.0.0.1", "10.0.0.1"] {
        let (resolver, lookups) = re_pointed("93.184.216.34", private);
        let policy = Arc::new(Policy {
            allow_http: true,
            resolver,
            ..Policy::default()
        });
        let checked = policy.check(&url).await.expect("public at submission");
        let client = Client::new(policy).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(15), client.post(&checked, &[], "{}".to_owned()))
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::Refused(_)), "{private}: {outcome:?}");
        assert_eq!(
            lookups.load(Ordering::SeqCst),
            2,
            "{private}: looked up at submission and delivery"
        );
    }
    assert!(
        hits(&receiver, "ok/rebound").is_empty(),
        "a re-pointed name reached the receiver"
    );

    // The same name and lookup, the host allowed by name: the delivery goes where the lookup
    // points, so the refusals above are the guard's, not a receiver out of reach.
    let (resolver, _) = re_pointed("127.0.0.1", "127.0.0.1");
    let client = Client::new(Arc::new(Policy {
        allow_http: true,
        allowed_hosts: vec!["rebound.example".to_owned()],
        resolver,
        ..Policy::default()
    }))
    .unwrap();
    let outcome = tokio::time::timeout(
        Duration::from_secs(15),
        client.post(&url.parse().unwrap(), &[], "{}".to_owned()),
    )
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::Delivered(204));
    assert_eq!(hits(&receiver, "ok/rebound").len(), 1);
}
