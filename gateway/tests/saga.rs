//! The enrollment saga end to end: the three services, a real LocalStack, real databases.

use serde_json::Value;
use testkit::{Backend, DEADLINE, Options, Poll, Shown, System, eventually, history, scalar_i64};

testkit::on_both_backends!(
    enrollment_completes_with_customer_active_and_points_posted,
    exhausted_budget_rolls_the_enrollment_back,
    the_campaign_budget_is_measured_as_it_drains,
    duplicate_email_is_rejected,
    sub_address_and_unicode_variants_land_on_one_customer,
    sub_addresses_are_customers_of_their_own_when_kept_distinct,
    redelivered_commands_have_one_effect,
    outbox_row_written_before_a_crash_is_published_after_restart,
    malformed_messages_reach_the_dead_letter_queue_while_the_service_keeps_serving,
    stalled_saga_is_visible_and_completes_when_the_service_returns,
    late_bonus_after_a_rollback_is_reversed,
    a_rejected_enrollment_never_gains_a_customer,
    commands_naming_another_enrollments_customer_are_refused,
    events_disagreeing_with_the_saga_or_their_type_attribute_are_refused,
    an_http_flood_costs_no_message_its_receive,
    sagas_complete_while_every_http_connection_is_taken,
);

fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::new_v4().simple())
}

async fn enrollment_completes_with_customer_active_and_points_posted(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let email = unique_email("happy");

    let id = system.submit("Ada Lovelace", &email).await;
    let done = system.wait_for_status(&id, &testkit::TERMINAL).await;

    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["bonus_points"], 500);
    assert_eq!(done["reason"], Value::Null);
    assert_eq!(history(&done), ["pending", "enrolled", "completed"]);
    let customer_id = done["customer_id"].as_str().expect("customer id");

    let (status, customer) = system.get_json(&format!("/api/customers/{customer_id}")).await;
    assert_eq!(status, 200, "{customer}");
    assert_eq!(customer["status"], "active");
    assert_eq!(customer["email"], email);
    assert_eq!(customer["enrollment_id"], id.as_str());

    let (status, points) = system.get_json(&format!("/api/customers/{customer_id}/points")).await;
    assert_eq!(status, 200, "{points}");
    assert_eq!(points["balance"], 500);
    assert_eq!(points["ledger"].as_array().map(Vec::len), Some(1));
    assert_eq!(points["ledger"][0]["enrollment_id"], id.as_str());

    for port in [
        system.gateway().port,
        system.customer.as_ref().unwrap().port,
        system.transaction.as_ref().unwrap().port,
    ] {
        let ready = system
            .http
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "service on port {port} is not ready");
    }
    system.stop().await;
}

async fn exhausted_budget_rolls_the_enrollment_back(backend: Backend) {
    let options = Options {
        bonus_budget_points: Some(500),
        ..Options::default()
    };
    let system = System::start(backend, options).await;

    // The first enrollment takes the whole budget...
    let first = system.submit("First", &unique_email("first")).await;
    let done = system.wait_for_status(&first, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "completed", "{done}");

    // ...so the second cannot get its bonus and is rolled back.
    let second = system.submit("Second", &unique_email("second")).await;
    let done = system.wait_for_status(&second, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "rolled_back", "{done}");
    assert_eq!(history(&done), ["pending", "enrolled", "compensating", "rolled_back"]);
    assert_eq!(done["bonus_points"], Value::Null);
    let reason = done["reason"].as_str().expect("a reason");
    assert!(reason.contains("budget"), "{reason}");

    let customer_id = done["customer_id"].as_str().expect("customer id");
    let (_, customer) = system.get_json(&format!("/api/customers/{customer_id}")).await;
    assert_eq!(customer["status"], "unenrolled", "{customer}");
    assert!(
        customer["unenroll_reason"]
            .as_str()
            .is_some_and(|r| r.contains("budget")),
        "{customer}"
    );
    assert!(customer["unenrolled_at"].is_string());

    let (_, points) = system.get_json(&format!("/api/customers/{customer_id}/points")).await;
    assert_eq!(points["balance"], 0, "{points}");
    assert_eq!(points["ledger"], serde_json::json!([]));
    system.stop().await;
}

/// The transaction-api's figure of a campaign, from its `/metrics`.
async fn campaign_figure(system: &System, name: &str) -> Option<f64> {
    let port = system.transaction.as_ref().expect("transaction-api running").port;
    let text = system
        .http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("a text body");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Draining shows before the budget is gone: the transaction-api reports the points granted and
/// what is left (the EC2 stack alarms on the latter).
async fn the_campaign_budget_is_measured_as_it_drains(backend: Backend) {
    let options = Options {
        bonus_budget_points: Some(1200),
        ..Options::default()
    };
    let system = System::start(backend, options).await;
    assert_eq!(
        campaign_figure(&system, "saga_bonus_budget_remaining_points").await,
        Some(1200.0)
    );
    assert_eq!(campaign_figure(&system, "saga_bonus_points_granted").await, Some(0.0));
    for (tag, outcome) in [("one", "completed"), ("two", "completed"), ("three", "rolled_back")] {
        let id = system.submit("Drain", &unique_email(tag)).await;
        let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
        assert_eq!(done["status"], outcome, "{done}");
    }
    assert_eq!(
        campaign_figure(&system, "saga_bonus_points_granted").await,
        Some(1000.0)
    );
    assert_eq!(
        campaign_figure(&system, "saga_bonus_budget_remaining_points").await,
        Some(200.0)
    );
    system.stop().await;
}

async fn duplicate_email_is_rejected(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let email = unique_email("twice");

    let first = system.submit("Grace", &email).await;
    assert_eq!(
        system.wait_for_status(&first, &testkit::TERMINAL).await["status"],
        "completed"
    );

    let second = system.submit("Grace Again", &email.to_uppercase()).await;
    let done = system.wait_for_status(&second, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "rejected", "{done}");
    assert_eq!(history(&done), ["pending", "rejected"]);
    assert_eq!(done["customer_id"], Value::Null);
    assert!(
        done["reason"].as_str().is_some_and(|r| r.contains("already enrolled")),
        "{done}"
    );
    // The public view is reachable by anyone holding the id: it names no person.
    let public = done.to_string().to_lowercase();
    assert!(
        !public.contains(&email) && !public.contains("grace"),
        "personal data in the public view: {done}"
    );

    let customers = scalar_i64(
        &system.customer.as_ref().unwrap().pool,
        "SELECT COUNT(*) FROM customers WHERE email = $1",
        &email,
    )
    .await;
    assert_eq!(customers, 1);
    system.stop().await;
}

/// The variants of one address a script would use to farm bonuses (a sub-address, upper case, a
/// decomposed accent, the domain typed in Unicode or in Punycode, stray spaces) are one customer:
/// the first enrollment makes it, every variant after it is rejected.
async fn sub_address_and_unicode_variants_land_on_one_customer(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let tag = uuid::Uuid::new_v4().simple();
    let first = system
        .submit("Zo\u{EB}", &format!("zo\u{EB}-{tag}@b\u{FC}cher.example"))
        .await;
    let done = system.wait_for_status(&first, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "completed", "{done}");

    for variant in [
        format!("ZOE\u{308}-{tag}+news@B\u{DC}CHER.example"),
        format!("zo\u{EB}-{tag}+1@xn--bcher-kva.example"),
        format!("  Zo\u{EB}-{tag}@bu\u{308}cher.EXAMPLE "),
        format!("zo\u{EB}-{tag}+2@XN--BCHER-KVA.EXAMPLE"),
    ] {
        let id = system.submit("Zo\u{EB} again", &variant).await;
        let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
        assert_eq!(done["status"], "rejected", "{variant:?} gained a customer: {done}");
    }

    let pool = &system.customer.as_ref().unwrap().pool;
    let key = format!("zo\u{EB}-{tag}@xn--bcher-kva.example");
    assert_eq!(
        scalar_i64(pool, "SELECT COUNT(*) FROM customers WHERE email_key = $1", &key).await,
        1
    );
    assert_eq!(
        scalar_i64(pool, "SELECT COUNT(*) FROM customers WHERE status <> $1", "").await,
        1
    );
    system.stop().await;
}

/// With `EMAIL_SUBADDRESSES=distinct` each sub-address is a customer of its own; the rest of the
/// canonical form (case, here) still holds.
async fn sub_addresses_are_customers_of_their_own_when_kept_distinct(backend: Backend) {
    let options = Options {
        email_subaddresses: utility::domain::Subaddresses::Distinct,
        ..Options::default()
    };
    let system = System::start(backend, options).await;
    let tag = uuid::Uuid::new_v4().simple();
    for (address, expected) in [
        (format!("kept-{tag}+1@example.com"), "completed"),
        (format!("kept-{tag}+2@example.com"), "completed"),
        (format!("KEPT-{tag}+1@Example.com"), "rejected"),
    ] {
        let id = system.submit("Kept", &address).await;
        let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
        assert_eq!(done["status"], expected, "{address}: {done}");
    }
    let pool = &system.customer.as_ref().unwrap().pool;
    assert_eq!(
        scalar_i64(pool, "SELECT COUNT(*) FROM customers WHERE status <> $1", "").await,
        2
    );
    system.stop().await;
}

/// Re-sends, twice each, the exact `Enroll` and `PostBonusPoints` commands of a finished saga (as
/// SQS may redeliver them) and checks that nothing changes.
async fn redelivered_commands_have_one_effect(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let email = unique_email("again");
    let id = system.submit("Alan", &email).await;
    let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "completed");
    let customer_id = done["customer_id"].as_str().unwrap().to_owned();

    let gateway_pool = system.gateway().pool.clone();
    for (message_type, queue) in [
        ("Enroll", "CustomerCommandsQueueUrl"),
        ("PostBonusPoints", "TransactionCommandsQueueUrl"),
    ] {
        let body: String =
            sqlx::query_scalar("SELECT body FROM outbox WHERE correlation_id = $1 AND message_type = $2")
                .bind(&id)
                .bind(message_type)
                .fetch_one(&gateway_pool)
                .await
                .unwrap();
        system.send_raw(queue, &body).await;
        system.send_raw(queue, &body).await;
    }
    // Both copies of each were received and deleted (not left to retry, not dead-lettered).
    for queue in ["CustomerCommandsQueueUrl", "TransactionCommandsQueueUrl"] {
        system.wait_for_queue_depth(queue, 0).await;
    }
    for dlq in ["CustomerCommandsDlqUrl", "TransactionCommandsDlqUrl"] {
        assert_eq!(system.queue_depth(dlq).await, 0, "{dlq}");
    }

    let customer_pool = &system.customer.as_ref().unwrap().pool;
    assert_eq!(
        scalar_i64(customer_pool, "SELECT COUNT(*) FROM customers WHERE email = $1", &email).await,
        1
    );
    let (_, points) = system.get_json(&format!("/api/customers/{customer_id}/points")).await;
    assert_eq!(points["balance"], 500, "{points}");
    assert_eq!(points["ledger"].as_array().map(Vec::len), Some(1), "{points}");
    let (_, after) = system.get_json(&system.enrollment_path(&id).await).await;
    assert_eq!(history(&after), ["pending", "enrolled", "completed"]);
    system.stop().await;
}

async fn outbox_row_written_before_a_crash_is_published_after_restart(backend: Backend) {
    // The gateway's relay is off: the enrollment and its command are committed but never sent.
    let options = Options {
        gateway_relay: false,
        ..Options::default()
    };
    let mut system = System::start(backend, options).await;
    let email = unique_email("crash");
    let id = system.submit("Barbara", &email).await;
    // `Enroll`, and the `EnrollmentStatusChanged` of the first history entry.
    assert_eq!(
        utility::messaging::outbox::pending(&system.gateway().pool)
            .await
            .unwrap(),
        2
    );

    system.gateway.take().unwrap().crash().await;
    let customer_pool = system.customer.as_ref().unwrap().pool.clone();
    assert_eq!(
        scalar_i64(
            &customer_pool,
            "SELECT COUNT(*) FROM customers WHERE email = $1",
            &email
        )
        .await,
        0
    );

    // A new gateway process on the same database publishes what the old one left.
    system.start_gateway(true).await;
    let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "completed", "{done}");
    // The `completed` entry's status event is committed with it and relayed just after.
    let pool = system.gateway().pool.clone();
    eventually("the new gateway's outbox to be empty", DEADLINE, async || {
        let pending = utility::messaging::outbox::pending(&pool).await.unwrap();
        Poll::ready_if(pending == 0, (), pending)
    })
    .await
    .unwrap();
    system.stop().await;
}

async fn malformed_messages_reach_the_dead_letter_queue_while_the_service_keeps_serving(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let envelope = |message_type: &str, version: u32| {
        serde_json::json!({
            "message_id": uuid::Uuid::now_v7(), "type": message_type, "schema_version": version,
            "correlation_id": uuid::Uuid::now_v7(), "causation_id": null,
            "occurred_at": "2026-01-01T00:00:00Z", "payload": {"name": "X", "email": "x@example.com"},
        })
        .to_string()
    };
    let poison = [
        "this is not JSON".to_owned(),
        envelope("Explode", 1),
        envelope("Enroll", 99),
        envelope("BonusPointsPosted", 1), // well-formed, but not a command this service handles
    ];
    for body in &poison {
        system.send_raw("CustomerCommandsQueueUrl", body).await;
    }

    system
        .wait_for_queue_depth("CustomerCommandsDlqUrl", poison.len() as i64)
        .await;
    let received = system
        .bus
        .sqs()
        .receive_message()
        .queue_url(system.queue_url("CustomerCommandsDlqUrl"))
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    let mut bodies: Vec<String> = received.messages().iter().filter_map(|m| m.body.clone()).collect();
    let mut expected = poison.to_vec();
    bodies.sort();
    expected.sort();
    assert_eq!(bodies, expected);
    assert_eq!(system.queue_depth("CustomerCommandsQueueUrl").await, 0);

    // The customer-api kept serving throughout.
    let id = system.submit("After Poison", &unique_email("after")).await;
    assert_eq!(
        system.wait_for_status(&id, &testkit::TERMINAL).await["status"],
        "completed"
    );
    system.stop().await;
}

async fn stalled_saga_is_visible_and_completes_when_the_service_returns(backend: Backend) {
    let options = Options {
        stall_after_seconds: 1,
        ..Options::default()
    };
    let mut system = System::start(backend, options).await;
    system.transaction.take().unwrap().stop().await.unwrap();

    let id = system.submit("Patient", &unique_email("stall")).await;
    system.wait_for_status(&id, &["enrolled"]).await;
    let path = system.enrollment_path(&id).await;
    let stalled = eventually("the saga to be shown stalled", DEADLINE, async || {
        let (_, body) = system.get_json(&path).await;
        Poll::ready_if(body["stalled"] == true, body.clone(), Shown(body))
    })
    .await
    .unwrap();
    assert_eq!(stalled["status"], "enrolled");
    let (status, listing) = system.get_json("/api/enrollments/stalled").await;
    assert_eq!(status, 200, "{listing}");
    let entry = listing["stalled"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{id} missing from {listing}"));
    assert_eq!(entry["status"], "enrolled");
    assert!(
        entry["waiting_for"].as_str().unwrap().contains("transaction-api"),
        "{entry}"
    );

    // The transaction-api comes back: the saga finishes by itself and is no longer stalled.
    system.start_transaction(None).await;
    let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["stalled"], false);
    let (_, listing) = system.get_json("/api/enrollments/stalled").await;
    assert!(
        !listing["stalled"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str())
    );
    system.stop().await;
}

/// A bonus posted after its saga was rolled back (here: the command is sent again by hand once the
/// budget was raised, as an operator redriving it would) is reversed; the saga stays rolled back.
async fn late_bonus_after_a_rollback_is_reversed(backend: Backend) {
    let options = Options {
        bonus_budget_points: Some(0),
        ..Options::default()
    };
    let mut system = System::start(backend, options).await;
    let id = system.submit("Late", &unique_email("late")).await;
    let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "rolled_back", "{done}");
    let customer_id = done["customer_id"].as_str().unwrap().to_owned();

    system.transaction.take().unwrap().stop().await.unwrap();
    system.start_transaction(None).await;
    let body: String = sqlx::query_scalar("SELECT body FROM outbox WHERE correlation_id = $1 AND message_type = $2")
        .bind(&id)
        .bind("PostBonusPoints")
        .fetch_one(&system.gateway().pool)
        .await
        .unwrap();
    let mut resent: Value = serde_json::from_str(&body).unwrap();
    resent["message_id"] = uuid::Uuid::now_v7().to_string().into();
    system
        .send_raw("TransactionCommandsQueueUrl", &resent.to_string())
        .await;

    let path = system.enrollment_path(&id).await;
    let reversed = eventually("a BonusPointsReversed entry in the history", DEADLINE, async || {
        let (_, body) = system.get_json(&path).await;
        let reversed = body["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["event"] == "BonusPointsReversed"));
        Poll::ready_if(reversed, body.clone(), Shown(body))
    })
    .await
    .unwrap();
    assert_eq!(reversed["status"], "rolled_back");
    let events: Vec<&str> = reversed["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "EnrollmentAccepted",
            "CustomerEnrolled",
            "BonusPointsFailed",
            "CustomerUnenrolled",
            "BonusPointsPosted",
            "BonusPointsReversed"
        ]
    );
    assert!(history(&reversed).iter().skip(3).all(|s| s == "rolled_back"));

    let (_, points) = system.get_json(&format!("/api/customers/{customer_id}/points")).await;
    assert_eq!(points["balance"], 0, "{points}");
    let movements: Vec<i64> = points["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["points"].as_i64().unwrap())
        .collect();
    assert_eq!(movements, [500, -500]);
    let (_, customer) = system.get_json(&format!("/api/customers/{customer_id}")).await;
    assert_eq!(customer["status"], "unenrolled");
    system.stop().await;
}

/// A rejected enrollment's `Enroll`, arriving again under a new message id after the e-mail was
/// freed, must not create a customer for the rejected saga.
async fn a_rejected_enrollment_never_gains_a_customer(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let email = unique_email("freed");
    let first = system.submit("First", &email).await;
    let done = system.wait_for_status(&first, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "completed");
    let second = system.submit("Second", &email).await;
    assert_eq!(
        system.wait_for_status(&second, &testkit::TERMINAL).await["status"],
        "rejected"
    );

    // Free the e-mail: unenroll the first customer (as a compensation would).
    let unenroll = serde_json::json!({
        "message_id": uuid::Uuid::now_v7(), "type": "Unenroll", "schema_version": 1,
        "correlation_id": first, "causation_id": null, "occurred_at": "2026-01-01T00:00:00Z",
        "payload": {"customer_id": done["customer_id"], "reason": "test frees the e-mail"},
    });
    system.send_raw("CustomerCommandsQueueUrl", &unenroll.to_string()).await;
    let customer_pool = system.customer.as_ref().unwrap().pool.clone();
    eventually("the first customer to be unenrolled", DEADLINE, async || {
        let active = scalar_i64(
            &customer_pool,
            "SELECT COUNT(*) FROM customers WHERE email = $1 AND status = 'active'",
            &email,
        )
        .await;
        Poll::ready_if(active == 0, (), format!("{active} active"))
    })
    .await
    .unwrap();

    // The rejected enrollment's command again, with a new message id.
    let body: String =
        sqlx::query_scalar("SELECT body FROM outbox WHERE correlation_id = $1 AND message_type = 'Enroll'")
            .bind(&second)
            .fetch_one(&system.gateway().pool)
            .await
            .unwrap();
    let mut again: Value = serde_json::from_str(&body).unwrap();
    again["message_id"] = uuid::Uuid::now_v7().to_string().into();
    system.send_raw("CustomerCommandsQueueUrl", &again.to_string()).await;
    // Handled: gone from the queue.
    system.wait_for_queue_depth("CustomerCommandsQueueUrl", 0).await;
    assert_eq!(system.queue_depth("CustomerCommandsDlqUrl").await, 0);
    let customers = scalar_i64(
        &customer_pool,
        "SELECT COUNT(*) FROM customers WHERE enrollment_id = $1",
        &second,
    )
    .await;
    assert_eq!(customers, 0, "the rejected enrollment gained a customer");
    let (_, view) = system.get_json(&system.enrollment_path(&second).await).await;
    assert_eq!(view["status"], "rejected");
    system.stop().await;
}

/// A raw command as a misbehaving producer (or an attacker with send rights) would put it on a
/// queue: the receivers check it against their own records.
fn command(kind: &str, enrollment: &str, payload: Value) -> String {
    serde_json::json!({
        "message_id": uuid::Uuid::now_v7(), "type": kind, "schema_version": 1,
        "correlation_id": enrollment, "causation_id": null, "occurred_at": "2026-01-01T00:00:00Z",
        "payload": payload,
    })
    .to_string()
}

/// `Unenroll` and `ReverseBonusPoints` act only on the customer of their own enrollment (the
/// correlation id): naming another enrollment's customer sends the command to the DLQ and
/// changes nothing.
async fn commands_naming_another_enrollments_customer_are_refused(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let victim = system.submit("Victim", &unique_email("victim")).await;
    let victim = system.wait_for_status(&victim, &testkit::TERMINAL).await;
    let other = system.submit("Other", &unique_email("other")).await;
    let other = system.wait_for_status(&other, &testkit::TERMINAL).await;
    assert_eq!(
        (victim["status"].as_str(), other["status"].as_str()),
        (Some("completed"), Some("completed"))
    );
    let victim_customer = victim["customer_id"].as_str().unwrap();
    let other_enrollment = other["id"].as_str().unwrap();

    let payload = serde_json::json!({"customer_id": victim_customer, "reason": "not yours"});
    system
        .send_raw(
            "CustomerCommandsQueueUrl",
            &command("Unenroll", other_enrollment, payload.clone()),
        )
        .await;
    system
        .send_raw(
            "TransactionCommandsQueueUrl",
            &command("ReverseBonusPoints", other_enrollment, payload),
        )
        .await;
    // Each refused command reached its DLQ.
    for dlq in ["CustomerCommandsDlqUrl", "TransactionCommandsDlqUrl"] {
        system.wait_for_queue_depth(dlq, 1).await;
    }
    let (_, customer) = system.get_json(&format!("/api/customers/{victim_customer}")).await;
    assert_eq!(customer["status"], "active", "{customer}");
    let (_, points) = system
        .get_json(&format!("/api/customers/{victim_customer}/points"))
        .await;
    assert_eq!(points["balance"], 500, "{points}");
    let (_, other_points) = system
        .get_json(&format!(
            "/api/customers/{}/points",
            other["customer_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(other_points["balance"], 500, "{other_points}");
    system.stop().await;
}

/// The gateway moves a saga only on events about its own customer whose body is the type the
/// subscription's filter let through: a `BonusPointsPosted` naming another customer, and a
/// `BonusPointsFailed` labelled `CustomerEnrolled` (which passes the customer-events filter),
/// reach the gateway's DLQ and change nothing.
async fn events_disagreeing_with_the_saga_or_their_type_attribute_are_refused(backend: Backend) {
    let mut system = System::start(backend, Options::default()).await;
    system.transaction.take().unwrap().stop().await.unwrap();
    let id = system.submit("Careful", &unique_email("careful")).await;
    let enrolled = system.wait_for_status(&id, &["enrolled"]).await;
    let customer = enrolled["customer_id"].as_str().unwrap().to_owned();

    let stranger = uuid::Uuid::now_v7().to_string();
    let posted = serde_json::json!({"customer_id": stranger, "points": 1_000_000, "balance": 1_000_000});
    system
        .publish_raw(
            "TransactionEventsTopicArn",
            &command("BonusPointsPosted", &id, posted),
            "BonusPointsPosted",
        )
        .await;
    let failed = serde_json::json!({"customer_id": customer, "reason": "forged", "cause": "other"});
    system
        .publish_raw(
            "CustomerEventsTopicArn",
            &command("BonusPointsFailed", &id, failed),
            "CustomerEnrolled",
        )
        .await;
    system.wait_for_queue_depth("GatewayEventsDlqUrl", 2).await;
    let (_, still) = system.get_json(&system.enrollment_path(&id).await).await;
    assert_eq!(history(&still), ["pending", "enrolled"], "{still}");

    // The real bonus still completes the saga.
    system.start_transaction(None).await;
    let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["bonus_points"], 500);
    system.stop().await;
}

/// Many clients hammer the gateway (reads, operator listings, refused and accepted submissions)
/// while sagas run: the consumers and the relay have connections of their own, so every saga
/// completes and nothing is dead-lettered.
async fn an_http_flood_costs_no_message_its_receive(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let flood_for = std::time::Duration::from_secs(8);
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut flood = tokio::task::JoinSet::new();
    for worker in 0..48usize {
        let (client, stop) = (client.clone(), stop.clone());
        let (show, list, post) = (
            system.url(&format!("/api/enrollments/{worker:022}")),
            system.url("/api/enrollments?limit=500"),
            system.url("/api/enrollments"),
        );
        flood.spawn(async move {
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                let request = match worker % 3 {
                    0 => client.get(&show),
                    1 => client.get(&list).bearer_auth(testkit::OPERATOR_TOKEN),
                    _ => client
                        .post(&post)
                        .json(&serde_json::json!({"name": "", "email": "flood"})),
                };
                let _ = request.send().await;
                sent += 1;
            }
            sent
        });
    }
    let mut ids = Vec::new();
    let started = tokio::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < flood_for {
        ids.push(system.submit("Flooded", &unique_email(&format!("flood{n}"))).await);
        n += 1;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut done = Vec::new();
    for id in &ids {
        done.push(system.wait_for_status(id, &testkit::TERMINAL).await["status"].clone());
    }
    stop.cancel();
    let mut requests = 0;
    while let Some(sent) = flood.join_next().await {
        requests += sent.unwrap();
    }
    assert!(requests > 500, "the flood sent only {requests} requests");
    assert!(ids.len() >= 10, "only {} sagas ran during the flood", ids.len());
    assert!(done.iter().all(|s| s == "completed"), "{done:?}");
    for dlq in [
        "CustomerCommandsDlqUrl",
        "TransactionCommandsDlqUrl",
        "GatewayEventsDlqUrl",
        "CustomerEventsSubscriptionDlqUrl",
        "TransactionEventsSubscriptionDlqUrl",
    ] {
        assert_eq!(system.queue_depth(dlq).await, 0, "{dlq}");
    }
    system.stop().await;
}

/// The consumers and relays have connections of their own: with every connection of the three
/// services' HTTP pools held (as a flood of slow requests would), accepted sagas still finish.
/// With one shared pool they could not even start their transactions.
async fn sagas_complete_while_every_http_connection_is_taken(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(system.submit("Starved", &unique_email(&format!("starved{n}"))).await);
    }
    let mut held = Vec::new();
    for running in [&system.gateway, &system.customer, &system.transaction] {
        let pool = &running.as_ref().unwrap().pool;
        for _ in 0..pool.options().get_max_connections() {
            held.push(pool.acquire().await.expect("an HTTP connection"));
        }
    }
    // Watch through a connection of the test's own: the gateway's HTTP side is starved.
    let watcher = utility::storage::connect(&system.gateway_db.url, gateway::migrations())
        .await
        .unwrap();
    eventually("every saga to finish with the HTTP pools taken", DEADLINE, async || {
        let done: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM enrollments WHERE status IN ('completed', 'rejected', 'rolled_back')",
        )
        .fetch_one(&watcher)
        .await
        .unwrap();
        Poll::ready_if(
            done == ids.len() as i64,
            (),
            format!("{done} of {} finished", ids.len()),
        )
    })
    .await
    .expect("sagas stalled while the HTTP pools were taken");
    drop(held);
    for id in &ids {
        assert_eq!(
            system.wait_for_status(id, &testkit::TERMINAL).await["status"],
            "completed"
        );
    }
    system.stop().await;
}
