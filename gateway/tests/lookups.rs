//! The operator's lookups over the bus (request/reply): the gateway asks the customer-api and the
//! transaction-api through their queries queues and waits for the reply on the replies queue all
//! gateway instances share. Real services, a real LocalStack, real databases.

use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use testkit::{Backend, DEADLINE, OPERATOR_TOKEN, Options, Poll, Running, System, eventually};

testkit::on_both_backends!(
    a_lookup_returns_the_services_document_and_an_unknown_customer_is_404,
    a_stopped_customer_api_gives_504_within_the_bound,
    three_gateway_instances_each_get_their_own_answers,
    a_reply_to_a_killed_instance_leaves_nothing_behind,
);

/// The gateway's default bound (`LOOKUP_TIMEOUT_MS`).
const BOUND: Duration = Duration::from_millis(3000);

async fn completed_customer(system: &System, tag: &str) -> (String, String) {
    let email = format!("{tag}-{}@example.com", uuid::Uuid::new_v4().simple());
    let id = system.submit("Ada Lovelace", &email).await;
    let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "completed", "{done}");
    (id, done["customer_id"].as_str().expect("customer id").to_owned())
}

async fn get_at(system: &System, port: u16, path: &str) -> (u16, Option<String>, Value) {
    let response = system
        .http
        .get(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .expect("gateway answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, content_type, response.json().await.unwrap_or(Value::Null))
}

/// `saga_lookup_replies_late_total` on the gateway at `port`.
async fn late_replies(system: &System, port: u16) -> f64 {
    let text = system
        .http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix("saga_lookup_replies_late_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn stored_replies(system: &System) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM lookup_replies")
        .fetch_one(&system.gateway().pool)
        .await
        .expect("count stored replies")
}

async fn a_lookup_returns_the_services_document_and_an_unknown_customer_is_404(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let (enrollment_id, customer_id) = completed_customer(&system, "lookup").await;

    let (status, _, customer) = get_at(&system, system.gateway().port, &format!("/api/customers/{customer_id}")).await;
    assert_eq!(status, 200, "{customer}");
    // The document the customer-api's HTTP route gave before: the same fields, the same values.
    let fields: BTreeSet<&str> = customer.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        BTreeSet::from([
            "id",
            "enrollment_id",
            "name",
            "email",
            "status",
            "enrolled_at",
            "unenrolled_at",
            "unenroll_reason"
        ])
    );
    assert_eq!(customer["id"], customer_id.as_str());
    assert_eq!(customer["enrollment_id"], enrollment_id.as_str());
    assert_eq!(customer["name"], "Ada Lovelace");
    assert_eq!(customer["status"], "active");
    assert_eq!(customer["unenrolled_at"], Value::Null);

    let (status, _, points) = get_at(
        &system,
        system.gateway().port,
        &format!("/api/customers/{customer_id}/points"),
    )
    .await;
    assert_eq!(status, 200, "{points}");
    assert_eq!(points["customer_id"], customer_id.as_str());
    assert_eq!(points["balance"], 500);
    let entry = &points["ledger"][0];
    let fields: BTreeSet<&str> = entry.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        BTreeSet::from(["id", "enrollment_id", "kind", "points", "posted_at"])
    );

    let unknown = uuid::Uuid::now_v7();
    let (status, content_type, problem) =
        get_at(&system, system.gateway().port, &format!("/api/customers/{unknown}")).await;
    assert_eq!(status, 404, "{problem}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let (status, _, points) = get_at(
        &system,
        system.gateway().port,
        &format!("/api/customers/{unknown}/points"),
    )
    .await;
    assert_eq!(status, 200, "{points}");
    assert_eq!(points["balance"], 0);
    assert_eq!(points["ledger"], serde_json::json!([]));
    // Every reply went to the instance that asked: nothing stored, nothing dead-lettered.
    assert_eq!(stored_replies(&system).await, 0);
    assert_eq!(system.queue_depth("GatewayRepliesDlqUrl").await, 0);
    system.stop().await;
}

async fn a_stopped_customer_api_gives_504_within_the_bound(backend: Backend) {
    let mut system = System::start(backend, Options::default()).await;
    let (_, customer_id) = completed_customer(&system, "stopped").await;
    system.customer.take().unwrap().stop().await.unwrap();

    let started = Instant::now();
    let (status, content_type, problem) =
        get_at(&system, system.gateway().port, &format!("/api/customers/{customer_id}")).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{problem}");
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    assert!(
        took >= BOUND && took < BOUND + Duration::from_secs(2),
        "answered after {took:?}, the bound is {BOUND:?}"
    );
    // The points lookup does not depend on the customer-api.
    let (status, _, _) = get_at(
        &system,
        system.gateway().port,
        &format!("/api/customers/{customer_id}/points"),
    )
    .await;
    assert_eq!(status, 200);

    // Back after the bound: the query that waited for it has expired and is dropped unanswered;
    // nothing reaches a dead-letter queue, and a new lookup is answered.
    system.start_customer().await;
    system.wait_for_queue_depth("CustomerQueriesQueueUrl", 0).await;
    let (status, _, customer) = get_at(&system, system.gateway().port, &format!("/api/customers/{customer_id}")).await;
    assert_eq!(status, 200, "{customer}");
    for dlq in ["CustomerQueriesDlqUrl", "GatewayRepliesDlqUrl"] {
        assert_eq!(system.queue_depth(dlq).await, 0, "{dlq}");
    }
    system.stop().await;
}

async fn three_gateway_instances_each_get_their_own_answers(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let mut customers = Vec::new();
    for n in 0..3 {
        customers.push(completed_customer(&system, &format!("three-{n}")).await);
    }
    let others: Vec<Running> = vec![system.another_gateway().await, system.another_gateway().await];
    let ports = [system.gateway().port, others[0].port, others[1].port];

    // 30 lookups at once, spread over the instances and the customers; the replies land on
    // whichever instance polls first, so most reach an instance that did not ask.
    let lookups = (0..30).map(|n| {
        let port = ports[n % 3];
        let (enrollment_id, customer_id) = customers[(n / 3) % 3].clone();
        let system = &system;
        async move {
            let (status, _, customer) = get_at(system, port, &format!("/api/customers/{customer_id}")).await;
            (status, customer, customer_id, enrollment_id)
        }
    });
    for (status, customer, customer_id, enrollment_id) in futures::future::join_all(lookups).await {
        assert_eq!(status, 200, "{customer}");
        assert_eq!(customer["id"], customer_id.as_str(), "an answer to another lookup");
        assert_eq!(customer["enrollment_id"], enrollment_id.as_str());
    }
    // Every stored reply was collected by its asker.
    assert_eq!(stored_replies(&system).await, 0);
    for other in others {
        other.stop().await.unwrap();
    }
    system.stop().await;
}

/// What `kill -9` of the asking instance leaves is its query on the bus with nobody waiting for
/// the reply (its requests, its memory and its poller are gone; it created no queue). That query
/// is sent here as the dead instance sent it.
async fn a_reply_to_a_killed_instance_leaves_nothing_behind(backend: Backend) {
    use utility::messaging::bus::Outgoing;
    use utility::messaging::envelope::Envelope;
    use utility::messaging::message::{GetCustomer, Message};
    let system = System::start(backend, Options::default()).await;
    let (_, customer_id) = completed_customer(&system, "killed").await;
    let survivor = system.another_gateway().await;
    let reply_by = chrono::Utc::now() + chrono::Duration::seconds(3);
    let query = Envelope::new(
        Message::GetCustomer(GetCustomer {
            customer_id: customer_id.parse().unwrap(),
            reply_by,
        }),
        uuid::Uuid::nil(),
    );
    let query = Envelope {
        correlation_id: query.message_id,
        ..query
    };
    let sent = system
        .bus
        .send_batch(&system.queue_url("CustomerQueriesQueueUrl"), &[Outgoing::from(&query)])
        .await
        .unwrap();
    assert_eq!(sent.sent.len(), 1);

    // The customer-api answers; a surviving instance receives the reply, holds it for an asker
    // that never comes, sweeps it once its reply_by has passed and counts it late. No queue
    // keeps anything, no dead-letter queue receives anything.
    let ports = [system.gateway().port, survivor.port];
    eventually("the orphaned reply to be dropped and counted", DEADLINE, async || {
        let late = late_replies(&system, ports[0]).await + late_replies(&system, ports[1]).await;
        let stored = stored_replies(&system).await;
        let queued =
            system.queue_depth("GatewayRepliesQueueUrl").await + system.queue_depth("CustomerQueriesQueueUrl").await;
        Poll::ready_if(late >= 1.0 && stored == 0 && queued == 0, (), (late, stored, queued))
    })
    .await
    .unwrap();
    assert!(chrono::Utc::now() > reply_by, "swept before its reply_by");
    for dlq in ["CustomerQueriesDlqUrl", "GatewayRepliesDlqUrl"] {
        assert_eq!(system.queue_depth(dlq).await, 0, "{dlq}");
    }
    survivor.stop().await.unwrap();
    system.stop().await;
}
