//! The enrollment saga end to end: the three services, a real LocalStack, real databases.

mod support;

use serde_json::Value;
use support::{Backend, Options, System, history, scalar_i64};

on_both_backends!(
    enrollment_completes_with_customer_active_and_points_posted,
    exhausted_budget_rolls_the_enrollment_back,
    duplicate_email_is_rejected,
    redelivered_commands_have_one_effect,
    outbox_row_written_before_a_crash_is_published_after_restart,
    malformed_messages_reach_the_dead_letter_queue_while_the_service_keeps_serving,
    stalled_saga_is_visible_and_completes_when_the_service_returns,
    late_bonus_after_a_rollback_is_reversed,
    a_rejected_enrollment_never_gains_a_customer,
);

fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::new_v4().simple())
}

async fn enrollment_completes_with_customer_active_and_points_posted(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let email = unique_email("happy");

    let id = system.submit("Ada Lovelace", &email).await;
    let done = system.wait_for_status(&id, &support::TERMINAL).await;

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
    let done = system.wait_for_status(&first, &support::TERMINAL).await;
    assert_eq!(done["status"], "completed", "{done}");

    // ...so the second cannot get its bonus and is rolled back.
    let second = system.submit("Second", &unique_email("second")).await;
    let done = system.wait_for_status(&second, &support::TERMINAL).await;
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

async fn duplicate_email_is_rejected(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let email = unique_email("twice");

    let first = system.submit("Grace", &email).await;
    assert_eq!(
        system.wait_for_status(&first, &support::TERMINAL).await["status"],
        "completed"
    );

    let second = system.submit("Grace Again", &email.to_uppercase()).await;
    let done = system.wait_for_status(&second, &support::TERMINAL).await;
    assert_eq!(done["status"], "rejected", "{done}");
    assert_eq!(history(&done), ["pending", "rejected"]);
    assert_eq!(done["customer_id"], Value::Null);
    assert!(
        done["reason"].as_str().is_some_and(|r| r.contains("already enrolled")),
        "{done}"
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

/// Re-sends, twice each, the exact `Enroll` and `PostBonusPoints` commands of a finished saga (as
/// SQS may redeliver them) and checks that nothing changes.
async fn redelivered_commands_have_one_effect(backend: Backend) {
    let system = System::start(backend, Options::default()).await;
    let email = unique_email("again");
    let id = system.submit("Alan", &email).await;
    let done = system.wait_for_status(&id, &support::TERMINAL).await;
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
        let drained =
            support::eventually(queue, || async { (system.queue_depth(queue).await == 0).then_some(()) }).await;
        assert!(drained.is_some(), "{queue} still holds the duplicates");
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
    let (_, after) = system.get_json(&format!("/api/enrollments/{id}")).await;
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
    assert_eq!(
        utility::messaging::outbox::pending(&system.gateway().pool)
            .await
            .unwrap(),
        1
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
    let done = system.wait_for_status(&id, &support::TERMINAL).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        utility::messaging::outbox::pending(&system.gateway().pool)
            .await
            .unwrap(),
        0
    );
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

    let arrived = support::eventually("poison messages in the DLQ", || async {
        (system.queue_depth("CustomerCommandsDlqUrl").await == poison.len() as i64).then_some(())
    })
    .await;
    assert!(arrived.is_some(), "not every poison message reached the DLQ");
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
        system.wait_for_status(&id, &support::TERMINAL).await["status"],
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
    let stalled = support::eventually("the saga to be reported stalled", || async {
        let (_, body) = system.get_json(&format!("/api/enrollments/{id}")).await;
        (body["stalled"] == true).then_some(body)
    })
    .await
    .expect("the saga is shown stalled");
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
    let done = system.wait_for_status(&id, &support::TERMINAL).await;
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
    let done = system.wait_for_status(&id, &support::TERMINAL).await;
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

    let reversed = support::eventually("the late bonus to be reversed", || async {
        let (_, body) = system.get_json(&format!("/api/enrollments/{id}")).await;
        body["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["event"] == "BonusPointsReversed"))
            .then_some(body)
    })
    .await
    .expect("a BonusPointsReversed entry in the history");
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
    let done = system.wait_for_status(&first, &support::TERMINAL).await;
    assert_eq!(done["status"], "completed");
    let second = system.submit("Second", &email).await;
    assert_eq!(
        system.wait_for_status(&second, &support::TERMINAL).await["status"],
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
    let freed = support::eventually("the first customer to be unenrolled", || async {
        let active = scalar_i64(
            &customer_pool,
            "SELECT COUNT(*) FROM customers WHERE email = $1 AND status = 'active'",
            &email,
        )
        .await;
        (active == 0).then_some(())
    })
    .await;
    assert!(freed.is_some());

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
    let drained = support::eventually("the command to be handled", || async {
        (system.queue_depth("CustomerCommandsQueueUrl").await == 0).then_some(())
    })
    .await;
    assert!(drained.is_some());
    assert_eq!(system.queue_depth("CustomerCommandsDlqUrl").await, 0);
    let customers = scalar_i64(
        &customer_pool,
        "SELECT COUNT(*) FROM customers WHERE enrollment_id = $1",
        &second,
    )
    .await;
    assert_eq!(customers, 0, "the rejected enrollment gained a customer");
    let (_, view) = system.get_json(&format!("/api/enrollments/{second}")).await;
    assert_eq!(view["status"], "rejected");
    system.stop().await;
}
