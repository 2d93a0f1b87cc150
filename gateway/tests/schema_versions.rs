//! A message's schema upgraded with instances of both releases running (security review L17):
//! this build writes version N and reads N and N+1, so while a newer release (writing N+1,
//! which may only add fields) runs beside it, nothing it receives is dead-lettered; a version it
//! cannot read (N+2) is. The three services, LocalStack, real databases.

use serde_json::{Value, json};
use testkit::{Backend, Options, System, history};
use utility::messaging::envelope::{READABLE_VERSIONS, SCHEMA_VERSION};

testkit::on_both_backends!(consumers_of_version_n_handle_what_a_release_writing_n_plus_1_sends);

fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// `body` as the next release would write it: version N+1, with a field added to the envelope
/// and one to the payload.
fn as_next_version(body: &str, version: u32) -> String {
    let mut envelope: Value = serde_json::from_str(body).unwrap();
    envelope["schema_version"] = version.into();
    envelope["message_id"] = uuid::Uuid::now_v7().to_string().into();
    envelope["tenant"] = "added-in-n-plus-1".into();
    envelope["payload"]["added_in_n_plus_1"] = json!({"nested": [1, 2, 3]});
    envelope.to_string()
}

async fn consumers_of_version_n_handle_what_a_release_writing_n_plus_1_sends(backend: Backend) {
    assert_eq!(READABLE_VERSIONS, SCHEMA_VERSION..=SCHEMA_VERSION + 1);
    // The gateway relays nothing: the newer release's instance (this test) sends its commands.
    let options = Options {
        gateway_relay: false,
        ..Options::default()
    };
    let system = System::start(backend, options).await;
    let id = system.submit("Version Two", &unique_email("v2")).await;
    let gateway_pool = &system.gateway().pool;
    let enroll: String =
        sqlx::query_scalar("SELECT body FROM outbox WHERE correlation_id = $1 AND message_type = 'Enroll'")
            .bind(&id)
            .fetch_one(gateway_pool)
            .await
            .unwrap();
    // Writers of this build stay at N until every reader reads N+1.
    let written: Value = serde_json::from_str(&enroll).unwrap();
    assert_eq!(written["schema_version"], SCHEMA_VERSION, "{written}");

    // A command at N+1 to the customer-api (built with N): handled, its event moves the saga.
    system
        .send_raw(
            "CustomerCommandsQueueUrl",
            &as_next_version(&enroll, SCHEMA_VERSION + 1),
        )
        .await;
    let enrolled = system.wait_for_status(&id, &["enrolled"]).await;
    let customer_id = enrolled["customer_id"].as_str().unwrap().to_owned();

    // An event at N+1 to the gateway (built with N): handled, the saga completes.
    let posted = json!({
        "message_id": uuid::Uuid::now_v7(), "type": "BonusPointsPosted", "schema_version": SCHEMA_VERSION,
        "correlation_id": id, "causation_id": null, "occurred_at": "2026-12-06T12:00:00Z",
        "payload": {"customer_id": customer_id, "points": 500, "balance": 500},
    });
    system
        .publish_raw(
            "TransactionEventsTopicArn",
            &as_next_version(&posted.to_string(), SCHEMA_VERSION + 1),
            "BonusPointsPosted",
        )
        .await;
    let done = system.wait_for_status(&id, &testkit::TERMINAL).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(history(&done), ["pending", "enrolled", "completed"]);

    // N+2 is a release too far ahead: refused to the DLQ, as before.
    system
        .send_raw(
            "CustomerCommandsQueueUrl",
            &as_next_version(&enroll, SCHEMA_VERSION + 2),
        )
        .await;
    system.wait_for_queue_depth("CustomerCommandsDlqUrl", 1).await;
    for dlq in ["GatewayEventsDlqUrl", "CustomerCommandsDlqUrl"] {
        let expected = i64::from(dlq == "CustomerCommandsDlqUrl");
        assert_eq!(system.queue_depth(dlq).await, expected, "{dlq}");
    }
    // What the customer-api wrote in answer is at N too.
    let event: String =
        sqlx::query_scalar("SELECT body FROM outbox WHERE correlation_id = $1 AND message_type = 'CustomerEnrolled'")
            .bind(&id)
            .fetch_one(&system.customer.as_ref().unwrap().pool)
            .await
            .unwrap();
    let event: Value = serde_json::from_str(&event).unwrap();
    assert_eq!(event["schema_version"], SCHEMA_VERSION, "{event}");
    system.stop().await;
}
