//! Personal data (decision 0042): the gateway keeps no name or address once the `Enroll` is
//! relayed, only a hash of what idempotency compares; an operator erases an enrollment's personal
//! data here and, over the bus, in the customer-api. The three services, LocalStack, real
//! databases.

use serde_json::{Value, json};
use testkit::{Backend, DEADLINE, OPERATOR_TOKEN, Options, Poll, System, eventually};

testkit::on_both_backends!(
    the_gateway_keeps_no_name_or_address_once_the_enroll_is_relayed,
    fingerprints_written_before_hashing_are_hashed_and_still_recognise_a_replay,
    an_operator_erases_an_enrollment_s_personal_data_here_and_in_the_customer_api,
);

fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// POSTs an enrollment under `key`; the status code and the body.
async fn submit_with_key(system: &System, key: &str, name: &str, email: &str) -> (u16, Value) {
    let response = system
        .http
        .post(system.url("/api/enrollments"))
        .header("idempotency-key", key)
        .json(&json!({"name": name, "email": email}))
        .send()
        .await
        .expect("gateway answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// What the gateway's enrollment row holds that could be personal.
async fn stored(system: &System, id: &str) -> (String, String, String) {
    sqlx::query_as("SELECT name, email, request_fingerprint FROM enrollments WHERE id = $1")
        .bind(id)
        .fetch_one(&system.gateway().pool)
        .await
        .unwrap()
}

async fn enroll_rows(system: &System, id: &str) -> i64 {
    testkit::scalar_i64(
        &system.gateway().pool,
        "SELECT COUNT(*) FROM outbox WHERE message_type = 'Enroll' AND correlation_id = $1",
        id,
    )
    .await
}

async fn the_gateway_keeps_no_name_or_address_once_the_enroll_is_relayed(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let email = unique_email("kept");
    let key = uuid::Uuid::new_v4().to_string();

    let (status, body) = submit_with_key(&system, &key, "Grace Hopper", &email).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "completed", "{done}");

    let (name, stored_email, fingerprint) = stored(&system, &id).await;
    assert_eq!((name.as_str(), stored_email.as_str()), ("", ""));
    assert!(fingerprint.starts_with("sha256:"), "{fingerprint}");
    assert!(
        !fingerprint.contains("Grace") && !fingerprint.contains(&email),
        "{fingerprint}"
    );

    // Idempotency still works on the hash: the same body under the key is the same enrollment,
    // another body is refused.
    let (status, again) = submit_with_key(&system, &key, "Grace Hopper", &email).await;
    assert!(status == 201 || status == 202, "{status} {again}");
    assert_eq!(again["id"], id.as_str());
    let (status, other) = submit_with_key(&system, &key, "Grace Hopper", &unique_email("other")).await;
    assert_eq!(status, 409, "{other}");
    system.stop().await;
}

async fn fingerprints_written_before_hashing_are_hashed_and_still_recognise_a_replay(backend: Backend) {
    // The stall sweeper, which hashes them when the gateway starts, looks every second.
    let options = Options {
        stall_after_seconds: 4,
        ..Options::default()
    };
    let mut system = System::start(backend, options).await;
    let email = unique_email("legacy");
    let key = uuid::Uuid::new_v4().to_string();
    let id = uuid::Uuid::now_v7().to_string();
    // A row as the release before decision 0042 wrote it (a finished saga); then a start, whose
    // sweeper hashes it.
    let now = utility::storage::now();
    sqlx::query(
        "INSERT INTO enrollments (id, name, email, status, idempotency_key, request_fingerprint, created_at, updated_at)
         VALUES ($1, 'Old Row', $2, 'completed', $3, $4, $5, $5)",
    )
    .bind(&id)
    .bind(&email)
    .bind(&key)
    .bind(json!({"name": "Old Row", "email": email}).to_string())
    .bind(&now)
    .execute(&system.gateway().pool)
    .await
    .unwrap();
    system.gateway.take().unwrap().stop().await.unwrap();
    system.start_gateway(true).await;

    let (name, stored_email, fingerprint) =
        eventually("the old row's fingerprint to be hashed", DEADLINE, async || {
            let row = stored(&system, &id).await;
            Poll::ready_if(row.2.starts_with("sha256:"), row.clone(), row)
        })
        .await
        .unwrap();
    assert_eq!((name.as_str(), stored_email.as_str()), ("", ""), "{fingerprint}");
    let (status, again) = submit_with_key(&system, &key, "Old Row", &email).await;
    assert!(status == 201 || status == 202, "{status} {again}");
    assert_eq!(again["id"], id.as_str());
    system.stop().await;
}

async fn an_operator_erases_an_enrollment_s_personal_data_here_and_in_the_customer_api(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let email = unique_email("erase");
    let key = uuid::Uuid::new_v4().to_string();
    let (status, body) = submit_with_key(&system, &key, "Ada Erased", &email).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "completed", "{done}");
    let customer_id = done["customer_id"].as_str().unwrap().to_owned();
    // A second enrollment of the address is rejected: the customer-api holds its address too.
    let rejected = system.submit("Ada Again", &email).await;
    let done = system.wait_for_status(&rejected, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "rejected", "{done}");
    assert_eq!(enroll_rows(&system, &id).await, 1);

    let erase = |id: String, token: Option<&'static str>| {
        let request = system
            .http
            .delete(system.url(&format!("/api/enrollments/{id}/personal-data")));
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move { request.send().await.expect("gateway answers").status().as_u16() }
    };
    assert_eq!(erase(id.clone(), None).await, 401);
    assert_eq!(erase(uuid::Uuid::now_v7().to_string(), Some(OPERATOR_TOKEN)).await, 404);
    assert_eq!(erase(id.clone(), Some(OPERATOR_TOKEN)).await, 202);
    assert_eq!(erase(rejected.clone(), Some(OPERATOR_TOKEN)).await, 202);

    // Here: the relayed command that carried the name and address is gone, and the key's
    // fingerprint with it, so a replay of the key is refused rather than compared.
    assert_eq!(enroll_rows(&system, &id).await, 0);
    assert_eq!(stored(&system, &id).await.2, "erased");
    let (status, replay) = submit_with_key(&system, &key, "Ada Erased", &email).await;
    assert_eq!(status, 409, "{replay}");

    // There: the customer keeps its row and id (the ledger names it) with a tombstone, and the
    // rejection its reason without the address.
    let customer_pool = &system.customer.as_ref().unwrap().pool;
    let customer = eventually("the customer-api to erase both", DEADLINE, async || {
        let (status, customer) = system.get_json(&format!("/api/customers/{customer_id}")).await;
        let rejection: String = sqlx::query_scalar("SELECT email FROM rejected_enrollments WHERE enrollment_id = $1")
            .bind(&rejected)
            .fetch_one(customer_pool)
            .await
            .unwrap();
        Poll::ready_if(
            status == 200 && customer["name"] == "(erased)" && rejection == format!("erased:{rejected}"),
            customer.clone(),
            format!("{customer} {rejection}"),
        )
    })
    .await
    .unwrap();
    assert_eq!(customer["email"], format!("erased:{customer_id}"));
    assert_eq!(customer["enrollment_id"], id.as_str());
    let kept_events = testkit::scalar_i64(
        customer_pool,
        "SELECT COUNT(*) FROM outbox WHERE correlation_id = $1 AND message_type = 'CustomerEnrolled'",
        &id,
    )
    .await;
    assert_eq!(kept_events, 0);
    let (status, points) = system.get_json(&format!("/api/customers/{customer_id}/points")).await;
    assert_eq!(status, 200, "{points}");
    assert_eq!(points["balance"], 500);
    system.stop().await;
}
