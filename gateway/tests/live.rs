//! A client that does not poll: server-sent events of a saga's progress (resumable, bounded, ended
//! by the terminal status or by a stopping gateway, and fed across gateway instances), and
//! request/reply with `Prefer: wait`.

use serde_json::{Value, json};
use std::time::Duration;
use testkit::api::{GatewayApi, Served};
use testkit::{Backend, DEADLINE, Options, Poll, System, eventually};

testkit::on_both_backends!(
    events_follow_the_saga_and_resume_without_repeats,
    prefer_wait_answers_with_the_outcome
);

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: String,
    data: Value,
}

/// Reads a stream until it ends or `limit` passes; returns its events and whether it ended.
async fn read_events(response: reqwest::Response, limit: Duration) -> (Vec<Sse>, bool) {
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let mut response = response;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + limit;
    let ended = loop {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => break true,
            Ok(Err(err)) => panic!("stream failed: {err}"),
            Err(_) => break false,
        }
    };
    let events = text
        .split("\n\n")
        .filter_map(|block| {
            let mut event = Sse {
                event: String::new(),
                id: String::new(),
                data: Value::Null,
            };
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    event.event = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("id:") {
                    event.id = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    event.data = serde_json::from_str(value.trim()).unwrap();
                }
            }
            (!event.event.is_empty()).then_some(event)
        })
        .collect();
    (events, ended)
}

fn statuses(events: &[Sse]) -> Vec<&str> {
    events.iter().map(|e| e.data["status"].as_str().unwrap()).collect()
}

async fn open(system: &System, url: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = system.http.get(url);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.unwrap()
}

async fn events_follow_the_saga_and_resume_without_repeats(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let email = format!("live-{}@example.com", uuid::Uuid::new_v4().simple());
    let id = system.submit("Live", &email).await;
    let url = system.url(&format!("{}/events", system.enrollment_path(&id).await));
    let (events, ended) = read_events(open(&system, &url, None).await, DEADLINE).await;
    assert!(ended, "the stream did not end after the terminal status: {events:?}");
    assert_eq!(statuses(&events), ["pending", "enrolled", "completed"]);
    assert!(events.iter().all(|e| e.event == "status" && !e.id.is_empty()));
    assert_eq!(events[0].data["event"], "EnrollmentAccepted");
    assert!(events[1].data["at"].is_string());

    // Resuming after `enrolled` gives what followed it, once.
    let (resumed, ended) = read_events(open(&system, &url, Some(&events[1].id)).await, DEADLINE).await;
    assert!(ended);
    assert_eq!(statuses(&resumed), ["completed"]);
    assert_eq!(resumed[0].id, events[2].id);
    // A client that has the outcome gets 204, which stops an EventSource from reconnecting.
    assert_eq!(open(&system, &url, Some(&events[2].id)).await.status(), 204);
    // Unknown enrollment: a problem, before any stream.
    let unknown = system.url(&format!("/api/enrollments/{}/events", "A".repeat(22)));
    assert_eq!(open(&system, &unknown, None).await.status(), 404);
    // The enrollment id does not address it.
    let by_id = system.url(&format!("/api/enrollments/{id}/events"));
    assert_eq!(open(&system, &by_id, None).await.status(), 400);
    system.stop().await;
}

async fn prefer_wait_answers_with_the_outcome(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let email = format!("wait-{}@example.com", uuid::Uuid::new_v4().simple());
    let response = system
        .http
        .post(system.url("/api/enrollments"))
        .header("prefer", "wait=20")
        .json(&json!({"name": "Waiting", "email": email}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "the saga finished within the wait");
    assert_eq!(response.headers()["preference-applied"], "wait=20");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["bonus_points"], 500);
    assert_eq!(testkit::history(&body), ["pending", "enrolled", "completed"]);
    assert_eq!(location, system.enrollment_path(body["id"].as_str().unwrap()).await);
    // The key of the view comes in the body too, as without the wait.
    assert_eq!(
        Some(location.as_str()),
        body["view_key"]
            .as_str()
            .map(|key| format!("/api/enrollments/{key}"))
            .as_deref(),
        "{body}"
    );
    // A GET that asks to wait for a finished saga answers at once; an absurd wait is capped.
    let started = tokio::time::Instant::now();
    let response = system
        .http
        .get(system.url(&location))
        .header("prefer", "wait=3600")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["preference-applied"], "wait=30");
    assert!(started.elapsed() < Duration::from_secs(5));
    system.stop().await;
}

/// Two gateway instances on one PostgreSQL database: a stream held by the instance that consumes
/// nothing sees every step, which the other instance's consumer wrote. The saga is held until the
/// stream is open (the consuming gateway's relay is off), so every later step reaches the stream
/// through the live-updates poller; a stream resumed meanwhile continues without repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_instance_streams_what_the_first_consumed() {
    let mut system = System::start(
        Backend::Postgres,
        Options {
            gateway_relay: false,
            ..Options::default()
        },
    )
    .await;
    let pool = utility::storage::connect(&system.gateway_db.url, gateway::migrations())
        .await
        .unwrap();
    let second = gateway::router(
        &testkit::gateway_config(),
        pool,
        std::sync::Arc::new(tokio::sync::Notify::new()),
    )
    .unwrap();
    let second = Served::start(second).await;
    let email = format!("second-{}@example.com", uuid::Uuid::new_v4().simple());
    let answer: Value = system
        .http
        .post(second.url("/api/enrollments"))
        .json(&json!({"name": "Second", "email": email}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let view_key = answer["view_key"].as_str().unwrap().to_owned();
    let url = second.url(&format!("/api/enrollments/{view_key}/events"));
    let stream = tokio::spawn(read_events(open(&system, &url, None).await, DEADLINE));
    // Let the saga go: the first instance, restarted with its relay, publishes the held command.
    system.gateway.take().unwrap().stop().await.unwrap();
    system.start_gateway(true).await;
    let (events, ended) = stream.await.unwrap();
    assert!(ended, "{events:?}");
    assert_eq!(statuses(&events), ["pending", "enrolled", "completed"]);
    // Resuming from the first entry gives the rest, once, in order.
    let (resumed, _) = read_events(open(&system, &url, Some(&events[0].id)).await, DEADLINE).await;
    assert_eq!(statuses(&resumed), ["enrolled", "completed"]);
    second.stop().await;
    system.stop().await;
}

/// A saga that cannot move (the gateway's relay is off, so its command never leaves): an open
/// stream stays open, and ends when the gateway stops, without holding the stop up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_end_when_the_gateway_stops() {
    let mut system = System::start(
        Backend::Sqlite,
        Options {
            gateway_relay: false,
            ..Options::default()
        },
    )
    .await;
    let id = system
        .submit("Stuck", &format!("stuck-{}@example.com", uuid::Uuid::new_v4().simple()))
        .await;
    let stream = open(
        &system,
        &system.url(&format!("{}/events", system.enrollment_path(&id).await)),
        None,
    )
    .await;
    let reader = tokio::spawn(read_events(stream, Duration::from_secs(40)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!reader.is_finished(), "the stream ended before the saga did");
    let stopping = tokio::time::Instant::now();
    system.gateway.take().unwrap().stop().await.unwrap();
    let took = stopping.elapsed();
    let (events, ended) = reader.await.unwrap();
    assert!(ended, "the stream outlived the gateway");
    assert_eq!(statuses(&events), ["pending"]);
    assert!(
        took < Duration::from_secs(5),
        "stopping took {took:?}: the stream held it up"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_end_with_the_wait_and_streams_are_bounded() {
    let api = GatewayApi::with_config(
        Backend::Sqlite,
        gateway::Config {
            max_event_streams: 1,
            ..testkit::gateway_config()
        },
    )
    .await;
    let server = Served::start(api.router.clone()).await;
    let http = reqwest::Client::new();
    // With no place to wait, the preference is not applied: the answer comes at once.
    let no_waiting = GatewayApi::with_config(
        Backend::Sqlite,
        gateway::Config {
            max_waiting_requests: 0,
            ..testkit::gateway_config()
        },
    )
    .await;
    let impatient = Served::start(no_waiting.router.clone()).await;
    let started = tokio::time::Instant::now();
    let response = http
        .post(impatient.url("/api/enrollments"))
        .header("prefer", "wait=5")
        .json(&json!({"name": "Impatient", "email": "impatient@example.com"}))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(response.status(), 202);
    assert!(!response.headers().contains_key("preference-applied"));
    impatient.stop().await;
    // No bus here: the saga cannot move, so the wait runs out and the answer is 202 with the
    // enrollment as it stands.
    let started = tokio::time::Instant::now();
    let response = http
        .post(server.url("/api/enrollments"))
        .header("prefer", "respond-async, wait=1")
        .json(&json!({"name": "Patient", "email": "patient@example.com"}))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["preference-applied"], "wait=1");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    assert_eq!(testkit::history(&body), ["pending"]);

    // One stream may be open; the next is refused until it closes.
    let events = server.url(&format!("{location}/events"));
    let first = http.get(&events).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let second = http.get(&events).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert!(second.headers().contains_key("retry-after"));
    drop(first);
    eventually("the closed stream's place to come back", DEADLINE, async || {
        let again = http.get(&events).send().await.unwrap();
        Poll::ready_if(again.status() == 200, (), again.status())
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_after_its_lifetime_and_resumes_where_it_was() {
    let api = GatewayApi::with_config(
        Backend::Sqlite,
        gateway::Config {
            max_stream_seconds: 1,
            ..testkit::gateway_config()
        },
    )
    .await;
    let server = Served::start(api.router.clone()).await;
    let http = reqwest::Client::new();
    // No bus here: the saga stays pending, so only the lifetime can end the stream.
    let accepted: Value = http
        .post(server.url("/api/enrollments"))
        .json(&json!({"name": "Lingering", "email": "lingering@example.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = server.url(&format!(
        "/api/enrollments/{}/events",
        accepted["view_key"].as_str().unwrap()
    ));
    let started = tokio::time::Instant::now();
    let (first, ended) = read_events(http.get(&events).send().await.unwrap(), Duration::from_secs(10)).await;
    assert!(ended, "the stream outlived its lifetime: {first:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(statuses(&first), ["pending"]);
    // Resumed with Last-Event-ID: no repeat, and again bounded.
    let resumed = http
        .get(&events)
        .header("last-event-id", &first[0].id)
        .send()
        .await
        .unwrap();
    let (again, ended) = read_events(resumed, Duration::from_secs(10)).await;
    assert!(ended);
    assert!(again.is_empty(), "{again:?}");
    server.stop().await;
}

/// Streams and held requests are bounded per client (by the address the rate limit keys on), so
/// one client cannot take every place: beyond its share it is refused with 429 and `Retry-After`,
/// while another client still gets a place. A refused submission stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_place_to_follow() {
    let api = GatewayApi::with_config(
        Backend::Sqlite,
        gateway::Config {
            max_event_streams_per_client: 2,
            max_waiting_requests_per_client: 1,
            // The test's requests come from 127.0.0.1, a trusted proxy, so X-Forwarded-For names
            // the client.
            trusted_proxy_cidrs: "127.0.0.1".parse().unwrap(),
            ..testkit::gateway_config()
        },
    )
    .await;
    let server = Served::start(api.router.clone()).await;
    let http = reqwest::Client::new();
    let as_client = |request: reqwest::RequestBuilder, client: &str| request.header("x-forwarded-for", client);
    let (mallory, alice) = ("203.0.113.7", "198.51.100.4");
    // No bus here: the saga stays pending, so streams and waits stay open.
    let accepted = as_client(http.post(server.url("/api/enrollments")), mallory)
        .json(&json!({"name": "Held", "email": "held@example.com"}))
        .send()
        .await
        .unwrap();
    let location = accepted.headers()["location"].to_str().unwrap().to_owned();
    let events = server.url(&format!("{location}/events"));

    let first = as_client(http.get(&events), mallory).send().await.unwrap();
    let second = as_client(http.get(&events), mallory).send().await.unwrap();
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let third = as_client(http.get(&events), mallory).send().await.unwrap();
    assert_eq!(third.status(), 429);
    assert!(third.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(third.headers()["content-type"], "application/problem+json");
    let theirs = as_client(http.get(&events), alice).send().await.unwrap();
    assert_eq!(theirs.status(), 200, "another client is not refused");
    drop(first);
    eventually(
        "the closed stream's place to come back to its client",
        DEADLINE,
        async || {
            let again = as_client(http.get(&events), mallory).send().await.unwrap();
            Poll::ready_if(again.status() == 200, (), again.status())
        },
    )
    .await
    .unwrap();

    // One held request per client: the next is refused, a GET and a submission alike, and the
    // refused submission is not stored.
    let hold = || {
        tokio::spawn(
            as_client(http.get(server.url(&location)), mallory)
                .header("prefer", "wait=5")
                .send(),
        )
    };
    let mut held = hold();
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM enrollments")
            .fetch_one(&api.pool)
            .await
            .unwrap()
    };
    let before = stored().await;
    let refused = eventually("the held request to take the client's place", DEADLINE, async || {
        // The request meant to hold the place can lose the race to this probe (it is refused
        // and the probe holds a second): start it again until it holds first.
        if held.is_finished() {
            held = hold();
            tokio::task::yield_now().await;
        }
        let again = as_client(http.get(server.url(&location)), mallory)
            .header("prefer", "wait=1")
            .send()
            .await
            .unwrap();
        let status = again.status();
        Poll::ready_if(status == 429, again, status)
    })
    .await
    .unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    let submission = as_client(http.post(server.url("/api/enrollments")), mallory)
        .header("prefer", "wait=5")
        .json(&json!({"name": "Refused", "email": "refused@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(submission.status(), 429);
    assert_eq!(stored().await, before, "a refused submission was stored");
    // Without Prefer: wait the same client is answered at once, and another client may wait.
    let plain = as_client(http.get(server.url(&location)), mallory)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    let waited = as_client(http.get(server.url(&location)), alice)
        .header("prefer", "wait=1")
        .send()
        .await
        .unwrap();
    assert_eq!(waited.headers()["preference-applied"], "wait=1");
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    server.stop().await;
}

/// Many streams on one saga cost one history read per change, not one per stream: the
/// live-updates poller reads it and hands it to all of them
/// (`saga_follower_history_reads_total` counts the reads). The saga is held until every stream
/// is open (the consuming gateway's relay is off), as in the test above of two instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_on_one_saga_share_one_history_read_per_change() {
    const STREAMS: u64 = 6;
    let mut system = System::start(
        Backend::Postgres,
        Options {
            gateway_relay: false,
            ..Options::default()
        },
    )
    .await;
    let pool = utility::storage::connect(&system.gateway_db.url, gateway::migrations())
        .await
        .unwrap();
    let follower = gateway::router(
        &testkit::gateway_config(),
        pool,
        std::sync::Arc::new(tokio::sync::Notify::new()),
    )
    .unwrap();
    let follower = Served::start(follower).await;
    let metrics = follower.url("/metrics");
    assert_eq!(history_reads(&system.http, &metrics).await, 0);
    let email = format!("fan-out-{}@example.com", uuid::Uuid::new_v4().simple());
    let answer: Value = system
        .http
        .post(follower.url("/api/enrollments"))
        .json(&json!({"name": "Fan Out", "email": email}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = follower.url(&format!(
        "/api/enrollments/{}/events",
        answer["view_key"].as_str().unwrap()
    ));
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(tokio::spawn(read_events(open(&system, &url, None).await, DEADLINE)));
    }
    system.gateway.take().unwrap().stop().await.unwrap();
    system.start_gateway(true).await;
    for stream in streams {
        let (events, ended) = stream.await.unwrap();
        assert!(ended, "{events:?}");
        assert_eq!(statuses(&events), ["pending", "enrolled", "completed"]);
    }
    // One read as each stream opened, then at most one per change the poller saw: its first
    // look, and the two steps. One read per stream per change would be STREAMS * 2 more at least.
    let after = history_reads(&system.http, &metrics).await - STREAMS;
    assert!(
        (1..=3).contains(&after),
        "{after} history reads after the streams opened"
    );
    follower.stop().await;
    system.stop().await;
}

/// `saga_follower_history_reads_total` of the gateway whose `/metrics` is `url`.
async fn history_reads(http: &reqwest::Client, url: &str) -> u64 {
    let text = http
        .get(url)
        .bearer_auth(testkit::OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("saga_follower_history_reads_total "))
        .map(|value| value.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or_else(|| panic!("saga_follower_history_reads_total is not exported: {text}"))
}
