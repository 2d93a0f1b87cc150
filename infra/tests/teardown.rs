//! `sagactl destroy` against a real LocalStack: it deletes no queue that holds a message, and no
//! topology an application stack still runs on, unless told so by name; when it does delete, the
//! retained dead-letter queues go too.
//!
//! Environment: `AWS_ENDPOINT_URL` (default `http://127.0.0.1:4566`).

use std::process::{Command, Output};
use testkit::{TestStack, bus, emulator_endpoint};
use utility::messaging::bus::Bus;

/// Runs sagactl against the emulator, as `source localstack/env.sh` would set it up.
fn sagactl(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sagactl"));
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_") || key == "NAME_PREFIX" || key == "TOPOLOGY_STACK" {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .env("AWS_ENDPOINT_URL", emulator_endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run sagactl")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn exists(bus: &Bus, stack: &str) -> bool {
    infra::outputs(bus.cloudformation(), stack).await.unwrap().is_some()
}

async fn queue_exists(bus: &Bus, url: &str) -> bool {
    bus.sqs().get_queue_attributes().queue_url(url).send().await.is_ok()
}

#[tokio::test]
async fn destroy_keeps_queues_holding_messages_unless_told_to_discard_them() {
    let bus = bus().await;
    let stack = TestStack::deploy(&bus).await;
    let prefix = stack.params.name_prefix.clone();
    let dlq = stack.output("TransactionCommandsDlqUrl").to_owned();
    bus.sqs()
        .send_message()
        .queue_url(&dlq)
        .message_body("a dead letter nobody has looked at")
        .send()
        .await
        .unwrap();

    let refused = sagactl(&["destroy", "--prefix", &prefix]);
    let text = stderr(&refused);
    assert!(!refused.status.success(), "{text}");
    assert!(text.contains("--discard-messages"), "the way out is not named: {text}");
    assert!(
        text.contains(&format!("{prefix}-transaction-commands-dlq: 1")),
        "the queue is not named: {text}"
    );
    assert!(exists(&bus, &stack.name).await, "the stack was deleted");
    assert_eq!(bus.queue_depth(&dlq).await.unwrap().total(), 1);

    let discarded = sagactl(&["destroy", "--prefix", &prefix, "--discard-messages"]);
    assert!(discarded.status.success(), "{}", stderr(&discarded));
    assert!(!exists(&bus, &stack.name).await, "the stack is still there");
    // The DLQs outlive a stack deletion (Retain); sagactl deletes them itself.
    for output in [
        "TransactionCommandsDlqUrl",
        "GatewayEventsDlqUrl",
        "CustomerEventsSubscriptionDlqUrl",
    ] {
        let url = stack.output(output);
        assert!(!queue_exists(&bus, url).await, "{url} is still there");
    }
}

#[tokio::test]
async fn destroy_refuses_while_the_application_stack_exists() {
    let bus = bus().await;
    let stack = TestStack::deploy(&bus).await;
    let prefix = stack.params.name_prefix.clone();
    // Stands in for the application stack: only its name matters here.
    let app = format!("{prefix}-app");
    let template = "Resources:\n  Marker:\n    Type: AWS::SNS::Topic\n";
    infra::deploy_stack(bus.cloudformation(), &app, template, &[])
        .await
        .expect("deploy the stand-in application stack");

    let refused = sagactl(&["destroy", "--prefix", &prefix, "--discard-messages"]);
    let text = stderr(&refused);
    assert!(!refused.status.success(), "{text}");
    assert!(text.contains(&app) && text.contains("destroy-app"), "{text}");
    assert!(
        exists(&bus, &stack.name).await,
        "the stack was deleted under the application"
    );

    infra::delete(bus.cloudformation(), &app).await.unwrap();
    let deleted = sagactl(&["destroy", "--prefix", &prefix]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(!exists(&bus, &stack.name).await);
    assert!(!queue_exists(&bus, stack.output("GatewayEventsDlqUrl")).await);
}
