//! Confirmation by e-mail, the gateway's half (decision 0035): the token minted on acceptance and
//! sent only inside the `Enroll` command, the confirmation page that confirms nothing by itself,
//! the single-use POST, the deadline (410 even before the expiry scan), the resend limits, and the
//! expiry scan that ends an unconfirmed enrollment `expired` and tells the customer-api to forget
//! it. The route tests run the real router over a fresh database (no bus): what would be relayed
//! is read from the outbox. The others run the three services on LocalStack, the mail going
//! through LocalStack's SES and read back from it (`testkit::mail`).

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use std::time::Duration;
use testkit::api::{Answer, GatewayApi};
use testkit::{Backend, DEADLINE, Options, Poll, Shown, System, eventually, history};

testkit::on_both_backends!(
    the_link_is_sent_once_in_the_command_and_a_get_confirms_nothing,
    a_token_confirms_once,
    a_confirmation_after_the_deadline_is_refused_before_the_scan_ran,
    resends_replace_the_token_and_are_limited,
    an_unconfirmed_enrollment_expires_and_its_data_is_forgotten,
    the_owner_confirms_through_the_mail_and_the_saga_goes_on,
    an_enrolled_address_looks_like_any_other_until_its_deadline,
    past_its_deadline_an_enrollment_is_forgotten_and_never_enrolled,
    a_confirmation_the_customer_api_can_no_longer_honour_ends_the_enrollment,
    an_erasure_before_the_confirmation_ends_the_enrollment_and_its_link,
);

fn required(ttl_seconds: u64) -> gateway::Config {
    gateway::Config {
        email_confirmation: gateway::EmailConfirmation::Required,
        confirmation_ttl_seconds: ttl_seconds,
        public_origin: "https://enroll.example.com".parse().unwrap(),
        ..testkit::gateway_config()
    }
}

fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::new_v4().simple())
}

fn submit(email: &str) -> Request<Body> {
    Request::post("/api/enrollments")
        .header("content-type", "application/json")
        .body(Body::from(json!({"name": "Ada Lovelace", "email": email}).to_string()))
        .unwrap()
}

fn confirm(token: &str) -> Request<Body> {
    confirm_body(json!({ "token": token }))
}

fn confirm_body(body: Value) -> Request<Body> {
    Request::post("/api/confirmations")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// The view keys the submissions answered, by enrollment id: the public routes take the key,
/// the tests correlate by id.
static VIEW_KEYS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
    std::sync::LazyLock::new(Default::default);

/// The public address segment of enrollment `id`: its view key when this test submitted it, else
/// `id` itself (a malformed or unknown address, as a test means it).
fn address(id: &str) -> String {
    VIEW_KEYS
        .lock()
        .unwrap()
        .get(id)
        .cloned()
        .unwrap_or_else(|| id.to_owned())
}

fn resend(id: &str) -> Request<Body> {
    Request::post(format!("/api/enrollments/{}/resend", address(id)))
        .body(Body::empty())
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

async fn enroll(api: &GatewayApi, email: &str) -> String {
    let answer = api.call(submit(email)).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer.body["id"].as_str().unwrap().to_owned();
    let key = answer.body["view_key"].as_str().unwrap().to_owned();
    VIEW_KEYS.lock().unwrap().insert(id.clone(), key);
    id
}

async fn view(api: &GatewayApi, id: &str) -> Value {
    let answer = api.call(get(&format!("/api/enrollments/{}", address(id)))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// The payloads of the enrollment's commands of `message_type` in the outbox (what the relay
/// sends to the customer-api), oldest first.
async fn commands(pool: &sqlx::AnyPool, id: &str, message_type: &str) -> Vec<Value> {
    let bodies: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM outbox WHERE correlation_id = $1 AND message_type = $2 ORDER BY created_at, id",
    )
    .bind(id)
    .bind(message_type)
    .fetch_all(pool)
    .await
    .unwrap();
    bodies
        .iter()
        .map(|body| serde_json::from_str::<Value>(body).unwrap()["payload"].clone())
        .collect()
}

/// The token of the link in the latest command of `message_type`.
async fn token_sent(pool: &sqlx::AnyPool, id: &str, message_type: &str) -> String {
    let sent = commands(pool, id, message_type).await;
    let url = sent.last().expect("a command with a link")["confirmation"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let (page, token) = url.split_once('#').expect("the token is in the fragment");
    assert_eq!(page, "https://enroll.example.com/confirm");
    token.to_owned()
}

async fn set_status(pool: &sqlx::AnyPool, id: &str, status: &str) {
    sqlx::query("UPDATE enrollments SET status = $1 WHERE id = $2")
        .bind(status)
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

async fn the_link_is_sent_once_in_the_command_and_a_get_confirms_nothing(backend: Backend) {
    let api = GatewayApi::with_config(backend, required(3600)).await;
    let id = enroll(&api, "Ada.Lovelace@Example.com").await;
    let shown = view(&api, &id).await;
    assert_eq!(shown["status"], "pending", "{shown}");
    assert_eq!(shown["mailed_to"], "a…@example.com", "{shown}");
    let confirm_by = chrono::DateTime::parse_from_rfc3339(shown["confirm_by"].as_str().unwrap()).unwrap();
    let ttl = confirm_by.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        ttl > chrono::Duration::minutes(59) && ttl <= chrono::Duration::hours(1),
        "{ttl}"
    );

    let sent = commands(&api.pool, &id, "Enroll").await;
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0]["confirmation"]["expires_at"].as_str().map(|at| &at[..19]),
        Some(&shown["confirm_by"].as_str().unwrap()[..19])
    );
    let token = token_sent(&api.pool, &id, "Enroll").await;
    assert_eq!(token.len(), 43, "256 bits in base64url: {token}");
    // Only the token's hash is stored with the enrollment.
    let row: Vec<Option<String>> = sqlx::query_scalar("SELECT confirmation_token_hash FROM enrollments WHERE id = $1")
        .bind(&id)
        .fetch_all(&api.pool)
        .await
        .unwrap();
    let stored = row[0].clone().expect("a hash");
    assert_eq!(stored.len(), 64);
    assert!(!stored.contains(&token));

    // What a mail scanner does with the link: GETs, with or without the token, confirm nothing.
    for uri in [
        "/confirm",
        &format!("/confirm?token={token}"),
        &format!("/confirm/{token}"),
    ] {
        let answer = api.call(get(uri)).await;
        assert!(answer.status == 200 || answer.status == 404, "{uri}: {}", answer.status);
    }
    let page = api.call(get("/confirm")).await;
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(
        page.text.contains(r#"<script src="/assets/confirm.js""#),
        "{}",
        page.text
    );
    let script = api.call(get("/assets/confirm.js")).await;
    assert_eq!(script.status, 200);
    assert!(
        script.text.contains("history.replaceState"),
        "the page removes the token from the address bar"
    );
    assert!(script.text.contains("/api/confirmations"));
    assert_eq!(view(&api, &id).await["status"], "pending");
    assert!(commands(&api.pool, &id, "ConfirmEnrollment").await.is_empty());

    // Bad requests say what is wrong.
    api.call(confirm_body(json!({}))).await.problem(422);
    api.call(confirm_body(json!({"token": 5}))).await.problem(422);
    let unknown = api.call(confirm(&"A".repeat(43))).await;
    assert!(unknown.problem(404)["detail"].as_str().unwrap().contains("not valid"));
    api.call(confirm("not a token")).await.problem(404);
}

async fn a_token_confirms_once(backend: Backend) {
    let api = GatewayApi::with_config(backend, required(3600)).await;
    let (first, second) = (
        enroll(&api, &unique_email("first")).await,
        enroll(&api, &unique_email("second")).await,
    );
    for id in [&first, &second] {
        set_status(&api.pool, id, "awaiting_confirmation").await;
    }
    let token = token_sent(&api.pool, &first, "Enroll").await;

    let answer = api.call(confirm(&token)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["id"], first.as_str(), "the token names its own enrollment");
    assert_eq!(answer.body["status"], "confirmed");
    assert_eq!(
        answer.header("location"),
        Some(format!("/api/enrollments/{}", address(&first)).as_str())
    );
    assert_eq!(history(&answer.body), ["pending", "confirmed"]);
    assert_eq!(commands(&api.pool, &first, "ConfirmEnrollment").await, [json!({})]);
    // The other enrollment is untouched.
    assert_eq!(view(&api, &second).await["status"], "awaiting_confirmation");
    assert!(commands(&api.pool, &second, "ConfirmEnrollment").await.is_empty());

    // Single use: the second press is refused and sends nothing more.
    api.call(confirm(&token)).await.problem(404);
    assert_eq!(commands(&api.pool, &first, "ConfirmEnrollment").await.len(), 1);
    assert_eq!(view(&api, &first).await["status"], "confirmed");
    // Not waiting for anyone's confirmation any more: nothing to resend.
    api.call(resend(&first)).await.problem(409);
}

async fn a_confirmation_after_the_deadline_is_refused_before_the_scan_ran(backend: Backend) {
    let api = GatewayApi::with_config(backend, required(1)).await;
    let id = enroll(&api, &unique_email("late")).await;
    set_status(&api.pool, &id, "awaiting_confirmation").await;
    let token = token_sent(&api.pool, &id, "Enroll").await;
    let confirm_by =
        chrono::DateTime::parse_from_rfc3339(view(&api, &id).await["confirm_by"].as_str().unwrap()).unwrap();
    // A deadline, not a condition: wait until it has passed.
    let left = (confirm_by.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(50)).await;

    // The in-process router runs no expiry scan: the deadline alone refuses.
    let answer = api.call(confirm(&token)).await;
    let problem = answer.problem(410);
    assert!(problem["detail"].as_str().unwrap().contains("expired"), "{problem}");
    api.call(resend(&id)).await.problem(410);
    assert_eq!(view(&api, &id).await["status"], "awaiting_confirmation");
    assert!(commands(&api.pool, &id, "ConfirmEnrollment").await.is_empty());
}

/// Moves the enrollment's last mail back by more than the resend interval, as if a minute had
/// passed.
async fn a_minute_passes(pool: &sqlx::AnyPool, id: &str) {
    let earlier = utility::storage::timestamp(chrono::Utc::now() - chrono::Duration::seconds(61));
    sqlx::query("UPDATE enrollments SET last_mailed_at = $1 WHERE id = $2")
        .bind(earlier)
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

fn retry_after(answer: &Answer) -> Option<u64> {
    answer.header("retry-after").map(|s| s.parse().unwrap())
}

async fn resends_replace_the_token_and_are_limited(backend: Backend) {
    let api = GatewayApi::with_config(backend, required(3600)).await;
    let id = enroll(&api, &unique_email("resend")).await;
    // The mail has not gone out yet (no ConfirmationRequested): nothing to resend.
    api.call(resend(&id)).await.problem(409);
    api.call(resend("AAAAAAAAAAAAAAAAAAAAAA")).await.problem(404);
    api.call(resend(&uuid::Uuid::now_v7().to_string())).await.problem(400);
    set_status(&api.pool, &id, "awaiting_confirmation").await;

    // The first mail went out just now: too soon.
    let answer = api.call(resend(&id)).await;
    answer.problem(429);
    assert!(
        retry_after(&answer).is_some_and(|s| (1..=60).contains(&s)),
        "{:?}",
        answer.headers
    );

    let mut tokens = vec![token_sent(&api.pool, &id, "Enroll").await];
    for left in (0..5).rev() {
        a_minute_passes(&api.pool, &id).await;
        let answer = api.call(resend(&id)).await;
        assert_eq!(answer.status, 202, "{}", answer.body);
        assert_eq!(answer.body["resends_left"], left);
        let again = api.call(resend(&id)).await;
        again.problem(429);
        // One a minute; after the fifth, none at all.
        assert_eq!(retry_after(&again).is_some(), left > 0, "{:?}", again.headers);
        let sent = commands(&api.pool, &id, "ResendConfirmation").await;
        assert_eq!(sent.len(), 5 - left as usize);
        assert_eq!(
            sent.last().unwrap()["confirmation"]["expires_at"],
            commands(&api.pool, &id, "Enroll").await[0]["confirmation"]["expires_at"],
            "a resend keeps the deadline"
        );
        tokens.push(token_sent(&api.pool, &id, "ResendConfirmation").await);
    }
    a_minute_passes(&api.pool, &id).await;
    let exhausted = api.call(resend(&id)).await;
    assert!(
        exhausted.problem(429)["detail"]
            .as_str()
            .unwrap()
            .contains("no more resends")
    );
    assert_eq!(retry_after(&exhausted), None, "no wait makes another resend possible");
    assert_eq!(commands(&api.pool, &id, "ResendConfirmation").await.len(), 5);

    // Each resend replaced the token: only the last one confirms.
    let (latest, older) = tokens.split_last().unwrap();
    for token in older {
        api.call(confirm(token)).await.problem(404);
    }
    let answer = api.call(confirm(latest)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["status"], "confirmed");
    let shown = view(&api, &id).await;
    let mut expected = vec!["pending"];
    expected.extend(["awaiting_confirmation"; 5]);
    expected.push("confirmed");
    assert_eq!(history(&shown), expected, "each resend is a step of the timeline");
}

/// The confirmation event of the customer-api, as it publishes it.
fn requested(id: &str, already_enrolled: bool) -> String {
    json!({
        "message_id": uuid::Uuid::now_v7(),
        "type": "ConfirmationRequested",
        "schema_version": 1,
        "correlation_id": id,
        "occurred_at": chrono::Utc::now(),
        "payload": {"already_enrolled": already_enrolled},
    })
    .to_string()
}

/// Two enrollments wait for their owners, one for an address that is already a customer's:
/// their public views cannot be told apart (the operator listing can), neither stalls, and at
/// the deadline both end `expired` and the customer-api is told to forget them.
async fn an_unconfirmed_enrollment_expires_and_its_data_is_forgotten(backend: Backend) {
    let options = Options {
        email_confirmation: gateway::EmailConfirmation::Required,
        confirmation_ttl_seconds: 10,
        stall_after_seconds: 1,
        ..Options::default()
    };
    let mut system = System::start(backend, options).await;
    // The customer-api is stopped: what it would publish is published by hand, and the commands
    // the gateway sends it wait in its queue to be read.
    system.customer.take().unwrap().stop().await.unwrap();
    // Masked, both addresses read `a…@example.com`.
    let fresh = system.submit("Fresh", &unique_email("ada-fresh")).await;
    let known = system.submit("Known", &unique_email("ada-known")).await;
    for (id, already) in [(&fresh, false), (&known, true)] {
        system
            .publish_raw(
                "CustomerEventsTopicArn",
                &requested(id, already),
                "ConfirmationRequested",
            )
            .await;
    }
    let public = |body: &Value| {
        let mut body = body.clone();
        let object = body.as_object_mut().unwrap();
        for varying in ["id", "confirm_by"] {
            object.remove(varying);
        }
        let steps: Vec<Value> = object["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|step| json!({"status": step["status"], "event": step["event"]}))
            .collect();
        object.insert("history".into(), Value::Array(steps));
        body
    };
    let fresh_view = system.wait_for_status(&fresh, &["awaiting_confirmation"]).await;
    system.wait_for_status(&known, &["awaiting_confirmation"]).await;
    assert_eq!(history(&fresh_view), ["pending", "awaiting_confirmation"]);
    // Waiting on a person past the stall deadline is not a stall.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, fresh_view) = system.get_json(&system.enrollment_path(&fresh).await).await;
    let (_, known_view) = system.get_json(&system.enrollment_path(&known).await).await;
    assert_eq!(fresh_view["stalled"], false, "{fresh_view}");
    assert_eq!(public(&fresh_view), public(&known_view), "the public view is an oracle");
    let (_, stalled) = system.get_json("/api/enrollments/stalled").await;
    assert_eq!(stalled["stalled"], json!([]), "{stalled}");
    let (_, listing) = system.get_json("/api/enrollments?status=awaiting_confirmation").await;
    let flag = |id: &str| {
        listing["enrollments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["already_enrolled"].clone())
    };
    assert_eq!(flag(&fresh), Some(json!(false)), "{listing}");
    assert_eq!(flag(&known), Some(json!(true)), "{listing}");

    for id in [&fresh, &known] {
        let done = system.wait_for_status(id, &testkit::TERMINAL).await;
        assert_eq!(done["status"], "expired", "{done}");
        assert_eq!(done["reason"], "the e-mail address was not confirmed in time");
        assert_eq!(history(&done), ["pending", "awaiting_confirmation", "expired"]);
        assert_eq!(done["customer_id"], Value::Null);
    }
    // Two `Enroll`s and two `ForgetEnrollment`s wait for the customer-api.
    system.wait_for_queue_depth("CustomerCommandsQueueUrl", 4).await;
    let mut bodies: Vec<Value> = Vec::new();
    eventually("the customer-api's commands to be read", DEADLINE, async || {
        let received = system
            .bus
            .sqs()
            .receive_message()
            .queue_url(system.queue_url("CustomerCommandsQueueUrl"))
            .max_number_of_messages(10)
            .visibility_timeout(120)
            .send()
            .await
            .unwrap();
        bodies.extend(
            received
                .messages()
                .iter()
                .filter_map(|m| serde_json::from_str(m.body()?).ok()),
        );
        Poll::ready_if(bodies.len() >= 4, (), Shown(json!(bodies)))
    })
    .await
    .unwrap();
    let of_type = |kind: &str| -> Vec<Value> {
        let mut ids: Vec<Value> = bodies
            .iter()
            .filter(|b| b["type"] == kind)
            .map(|b| b["correlation_id"].clone())
            .collect();
        ids.sort_by_key(|id| id.to_string());
        ids
    };
    let mut both = vec![json!(fresh), json!(known)];
    both.sort_by_key(|id| id.to_string());
    assert_eq!(of_type("ForgetEnrollment"), both, "{bodies:?}");
    assert_eq!(of_type("Enroll"), both, "{bodies:?}");
    system.stop().await;
}

fn with_confirmation(ttl_seconds: u64) -> Options {
    Options {
        email_confirmation: gateway::EmailConfirmation::Required,
        confirmation_ttl_seconds: ttl_seconds,
        ..Options::default()
    }
}

/// POSTs an enrollment with `Prefer: wait=20`; returns the status code and the body.
async fn submit_and_wait(system: &System, name: &str, email: &str) -> (u16, Value) {
    let response = system
        .http
        .post(system.url("/api/enrollments"))
        .header("prefer", "wait=20")
        .json(&json!({"name": name, "email": email}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn confirm_over_http(system: &System, token: &str) -> (u16, Value) {
    let response = system
        .http
        .post(system.url("/api/confirmations"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn held_by_the_customer_api(system: &System, id: &str) -> i64 {
    testkit::scalar_i64(
        &system.customer.as_ref().unwrap().pool,
        "SELECT COUNT(*) FROM pending_enrollments WHERE enrollment_id = $1",
        id,
    )
    .await
}

async fn customers_of(system: &System, id: &str) -> i64 {
    testkit::scalar_i64(
        &system.customer.as_ref().unwrap().pool,
        "SELECT COUNT(*) FROM customers WHERE enrollment_id = $1",
        id,
    )
    .await
}

/// The whole flow: the submission waits until the saga waits on the person, the customer-api
/// mails the link through SES, opening the link confirms nothing, pressing the button does, once,
/// and the saga goes on as without confirmation. Another enrollment's token confirms that one only.
async fn the_owner_confirms_through_the_mail_and_the_saga_goes_on(backend: Backend) {
    let system = System::start(backend, with_confirmation(3600)).await;
    let email = unique_email("ada");
    let other_email = unique_email("bob");

    let (status, body) = submit_and_wait(&system, "Ada Lovelace", &email).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["status"], "awaiting_confirmation",
        "Prefer: wait ends where a person is next: {body}"
    );
    assert_eq!(body["mailed_to"], "a…@example.com");
    let id = body["id"].as_str().unwrap().to_owned();
    let other = system.submit("Bob", &other_email).await;

    let mail = testkit::mail::wait_for_one(&email).await;
    let link = mail.link().expect("a link").to_owned();
    let token = mail.token().expect("a token").to_owned();
    assert!(link.ends_with(&format!("/confirm#{token}")), "{link}");
    // What a mail scanner does: fetch the page the link names (the fragment is never sent).
    let page = system.http.get(system.url("/confirm")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let (_, still) = system.get_json(&system.enrollment_path(&id).await).await;
    assert_eq!(still["status"], "awaiting_confirmation", "{still}");

    let (status, confirmed) = confirm_over_http(&system, &token).await;
    assert_eq!(status, 200, "{confirmed}");
    assert_eq!(confirmed["id"], id.as_str());
    assert_eq!(confirmed["status"], "confirmed");
    let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["bonus_points"], 500);
    assert_eq!(
        history(&done),
        ["pending", "awaiting_confirmation", "confirmed", "enrolled", "completed"]
    );
    assert_eq!(customers_of(&system, &id).await, 1);
    assert_eq!(
        held_by_the_customer_api(&system, &id).await,
        0,
        "the held enrollment became the customer"
    );

    // Once only, and never for another enrollment.
    let (status, again) = confirm_over_http(&system, &token).await;
    assert_eq!(status, 404, "{again}");
    let (_, other_view) = system.get_json(&system.enrollment_path(&other).await).await;
    assert!(
        ["pending", "awaiting_confirmation"].contains(&other_view["status"].as_str().unwrap()),
        "{other_view}"
    );
    let other_token = testkit::mail::wait_for_token(&other_email).await;
    assert_ne!(other_token, token);
    let (status, confirmed) = confirm_over_http(&system, &other_token).await;
    assert_eq!(status, 200, "{confirmed}");
    assert_eq!(confirmed["id"], other.as_str());
    let done = system.wait_for_status(&other, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(customers_of(&system, &id).await, 1);
    system.stop().await;
}

/// Someone enrolls an address that is already a customer's: its public view is the same as a
/// new address's (status, fields, steps), the owner gets a note without a link, and only the
/// operator listing tells the two apart. Neither is enrolled; both expire.
async fn an_enrolled_address_looks_like_any_other_until_its_deadline(backend: Backend) {
    let system = System::start(backend, with_confirmation(20)).await;
    let taken = unique_email("ada-taken");
    let (_, first) = submit_and_wait(&system, "Ada Lovelace", &taken).await;
    let first = first["id"].as_str().unwrap().to_owned();
    let token = testkit::mail::wait_for_token(&taken).await;
    assert_eq!(confirm_over_http(&system, &token).await.0, 200);
    assert_eq!(
        system.wait_for_status(&first, &testkit::TERMINAL).await["status"],
        "completed"
    );

    let fresh_email = unique_email("ada-fresh");
    let (squat_status, squat) = submit_and_wait(&system, "Mallory", &taken).await;
    let (fresh_status, fresh) = submit_and_wait(&system, "Mallory", &fresh_email).await;
    assert_eq!((squat_status, fresh_status), (202, 202));
    let public = |body: &Value| {
        let mut body = body.clone();
        let object = body.as_object_mut().unwrap();
        object.remove("id");
        object.remove("view_key");
        object.remove("confirm_by");
        let steps: Vec<Value> = object["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|step| json!({"status": step["status"], "event": step["event"]}))
            .collect();
        object.insert("history".into(), Value::Array(steps));
        body
    };
    assert_eq!(squat["status"], "awaiting_confirmation", "{squat}");
    assert_eq!(public(&squat), public(&fresh), "the public view is an oracle");
    let (squat, fresh) = (
        squat["id"].as_str().unwrap().to_owned(),
        fresh["id"].as_str().unwrap().to_owned(),
    );

    // The owner of the taken address is told, without a link.
    let mails = testkit::mail::wait_for(&taken, 2, DEADLINE).await;
    assert!(mails[1].token().is_none(), "{:?}", mails[1]);
    testkit::mail::wait_for_token(&fresh_email).await;
    let (_, listing) = system.get_json("/api/enrollments?status=awaiting_confirmation").await;
    let flag = |id: &str| {
        listing["enrollments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["already_enrolled"].clone())
    };
    assert_eq!(flag(&squat), Some(json!(true)), "{listing}");
    assert_eq!(flag(&fresh), Some(json!(false)), "{listing}");

    for id in [&squat, &fresh] {
        let done = system.wait_for_status(id, &testkit::TERMINAL).await;
        assert_eq!(done["status"], "expired", "{done}");
    }
    assert_eq!(customers_of(&system, &squat).await, 0);
    system.stop().await;
}

/// Not confirmed by its deadline, the enrollment ends `expired`, the customer-api forgets the
/// name and address it held, nothing is enrolled, and the link is refused clearly afterwards.
async fn past_its_deadline_an_enrollment_is_forgotten_and_never_enrolled(backend: Backend) {
    let system = System::start(backend, with_confirmation(8)).await;
    let email = unique_email("late");
    let (_, body) = submit_and_wait(&system, "Late Larry", &email).await;
    let id = body["id"].as_str().unwrap().to_owned();
    let token = testkit::mail::wait_for_token(&email).await;
    assert_eq!(held_by_the_customer_api(&system, &id).await, 1);

    let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "expired", "{done}");
    assert_eq!(history(&done), ["pending", "awaiting_confirmation", "expired"]);
    eventually("the customer-api to forget the enrollment", DEADLINE, async || {
        let held = held_by_the_customer_api(&system, &id).await;
        Poll::ready_if(held == 0, (), held)
    })
    .await
    .unwrap();
    let (status, refused) = confirm_over_http(&system, &token).await;
    assert_eq!(status, 410, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("expired"), "{refused}");
    assert_eq!(customers_of(&system, &id).await, 0);
    let (_, still) = system.get_json(&system.enrollment_path(&id).await).await;
    assert_eq!(still["status"], "expired");
    system.stop().await;
}

/// The owner confirms in time, but the customer-api has forgotten the enrollment by the time the
/// command reaches it (here its sweep ran first, as after an outage longer than its grace): the
/// saga ends `expired` with the reason, instead of waiting in `confirmed` for ever.
async fn a_confirmation_the_customer_api_can_no_longer_honour_ends_the_enrollment(backend: Backend) {
    let system = System::start(backend, with_confirmation(3600)).await;
    let email = unique_email("slow");
    let (_, body) = submit_and_wait(&system, "Slow Sam", &email).await;
    let id = body["id"].as_str().unwrap().to_owned();
    let token = testkit::mail::wait_for_token(&email).await;
    let customers = &system.customer.as_ref().unwrap().pool;
    sqlx::query("DELETE FROM pending_enrollments WHERE enrollment_id = $1")
        .bind(&id)
        .execute(customers)
        .await
        .unwrap();

    let (status, confirmed) = confirm_over_http(&system, &token).await;
    assert_eq!(status, 200, "{confirmed}");
    let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "expired", "{done}");
    assert_eq!(
        history(&done),
        ["pending", "awaiting_confirmation", "confirmed", "expired"]
    );
    assert_eq!(done["reason"], gateway::saga::LAPSED_REASON, "{done}");
    assert_eq!(customers_of(&system, &id).await, 0);
    system.stop().await;
}

/// An operator erases an enrollment still waiting for its owner: it ends `expired` at once, the
/// mailed link no longer confirms anything, the masked address leaves the public view, and the
/// customer-api keeps nothing of it.
async fn an_erasure_before_the_confirmation_ends_the_enrollment_and_its_link(backend: Backend) {
    let system = System::start(backend, with_confirmation(3600)).await;
    let email = unique_email("erased");
    let (status, body) = submit_and_wait(&system, "Ada Lovelace", &email).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "awaiting_confirmation", "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let token = testkit::mail::wait_for_token(&email).await;

    let erased = system
        .http
        .delete(system.url(&format!("/api/enrollments/{id}/personal-data")))
        .bearer_auth(testkit::OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 202);
    let (_, view) = system.get_json(&system.enrollment_path(&id).await).await;
    assert_eq!(view["status"], "expired", "{view}");
    assert!(
        view["mailed_to"].is_null(),
        "the masked address outlived the erasure: {view}"
    );

    let (status, refused) = confirm_over_http(&system, &token).await;
    assert_eq!(
        status, 404,
        "the mailed link still confirms after the erasure: {refused}"
    );
    eventually(
        "the customer-api to forget the erased enrollment",
        DEADLINE,
        async || {
            let held = held_by_the_customer_api(&system, &id).await;
            Poll::ready_if(held == 0, (), held)
        },
    )
    .await
    .unwrap();
    assert_eq!(customers_of(&system, &id).await, 0);
}
