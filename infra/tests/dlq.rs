//! `sagactl dlq` against a real LocalStack: dead letters made the way production makes them
//! (a poison message received past the redrive count) and put straight into the other DLQs, then
//! listed without being consumed, and redriven one by one and all at once.
//!
//! Environment: `AWS_ENDPOINT_URL` (default `http://127.0.0.1:4566`).

use infra::MessagingParams;
use infra::dlq::{self, DeadLetter};
use testkit::{DEADLINE, Poll, TestStack, bus, emulator_endpoint, eventually};
use utility::domain::{CustomerName, Email};
use utility::messaging::Endpoint;
use utility::messaging::bus::{Bus, Outgoing};
use utility::messaging::envelope::Envelope;
use utility::messaging::message::{CustomerEnrolled, Enroll, EnrollmentRejected, Message};
use uuid::Uuid;

/// An isolated messaging stack (deleted on drop, so also when an assertion fails) whose queues
/// dead-letter a message on its second receive.
async fn dead_lettering_stack(bus: &Bus) -> TestStack {
    let params = MessagingParams {
        max_receive_count: 2,
        ..TestStack::params()
    };
    TestStack::deploy_with(bus, params).await
}

fn name() -> CustomerName {
    CustomerName::parse("Ada").unwrap()
}

fn email() -> Email {
    Email::parse("ada@example.com").unwrap()
}

async fn visible(bus: &Bus, url: &str) -> i64 {
    bus.queue_depth(url).await.expect("queue attributes").waiting
}

/// Receives a message from `work` without deleting it, as a consumer that keeps failing would,
/// until SQS has moved it to `dlq`.
async fn dead_letter_the_real_way(bus: &Bus, work: &str, dlq: &str) {
    eventually(&format!("the message to reach {dlq}"), DEADLINE, async || {
        if visible(bus, dlq).await > 0 {
            return Poll::Ready(());
        }
        let received = bus
            .sqs()
            .receive_message()
            .queue_url(work)
            .visibility_timeout(0)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        Poll::Pending(format!("received {} from {work}", received.messages().len()))
    })
    .await
    .unwrap();
}

/// The bodies and `type` attributes now in a queue (consumed: the test owns the queue).
async fn drain(bus: &Bus, url: &str, expected: usize) -> Vec<(String, Option<String>)> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut found = Vec::new();
    while found.len() < expected && tokio::time::Instant::now() < deadline {
        let received = bus
            .sqs()
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        for m in received.messages() {
            let kind = m
                .message_attributes()
                .and_then(|a| a.get("type"))
                .and_then(|v| v.string_value())
                .map(str::to_owned);
            found.push((m.body().unwrap_or_default().to_owned(), kind));
            let receipt = m.receipt_handle().unwrap_or_default();
            bus.delete_batch(url, &[receipt]).await.expect("delete");
        }
    }
    found
}

fn by_dlq<'a>(letters: &'a [DeadLetter], dlq: &str) -> Vec<&'a DeadLetter> {
    letters.iter().filter(|l| l.dlq == dlq).collect()
}

fn ids(letters: &[DeadLetter]) -> Vec<String> {
    let mut ids: Vec<String> = letters.iter().map(|l| l.sqs_message_id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_without_being_consumed_and_redriven() {
    let bus = bus().await;
    let stack = dead_lettering_stack(&bus).await;

    // A valid command nobody could handle, and a body that is not JSON at all: both the real way.
    let enroll = Envelope::new(
        Message::Enroll(Enroll {
            name: name(),
            email: email(),
            confirmation: None,
        }),
        Uuid::now_v7(),
    );
    let commands = stack.output("CustomerCommandsQueueUrl");
    bus.send_batch(commands, &[Outgoing::from(&enroll)])
        .await
        .expect("send");
    dead_letter_the_real_way(&bus, commands, stack.output("CustomerCommandsDlqUrl")).await;
    let transactions = stack.output("TransactionCommandsQueueUrl");
    bus.sqs()
        .send_message()
        .queue_url(transactions)
        .message_body("{not json")
        .send()
        .await
        .expect("send");
    dead_letter_the_real_way(&bus, transactions, stack.output("TransactionCommandsDlqUrl")).await;

    // An event in the gateway's DLQ and one SNS could not deliver, put there directly.
    let enrolled = Envelope::new(
        Message::CustomerEnrolled(CustomerEnrolled {
            customer_id: Uuid::now_v7(),
            name: name(),
            email: email(),
        }),
        Uuid::now_v7(),
    );
    let rejected = Envelope::new(
        Message::EnrollmentRejected(EnrollmentRejected {
            email: email(),
            reason: "already enrolled".to_owned(),
        }),
        Uuid::now_v7(),
    );
    bus.send_batch(stack.output("GatewayEventsDlqUrl"), &[Outgoing::from(&enrolled)])
        .await
        .expect("send");
    bus.send_batch(
        stack.output("CustomerEventsSubscriptionDlqUrl"),
        &[Outgoing::from(&rejected)],
    )
    .await
    .expect("send");

    let queues = dlq::resolve(&stack.outputs, None).expect("the stack has every DLQ output");
    let first = dlq::list(&bus, &queues, 100).await.expect("list");
    assert_eq!(first.len(), 4, "{first:#?}");
    let [enroll_letter] = by_dlq(&first, "customer-commands-dlq")[..] else {
        panic!("one message in customer-commands-dlq: {first:#?}")
    };
    assert_eq!(enroll_letter.message_type, "Enroll");
    assert_eq!(enroll_letter.source, "customer-commands");
    assert_eq!(enroll_letter.correlation_id, Some(enroll.correlation_id.to_string()));
    assert!(enroll_letter.receive_count >= 3, "{enroll_letter:?}");
    assert!(enroll_letter.sent_at.is_some() && enroll_letter.first_received_at.is_some());
    let [malformed] = by_dlq(&first, "transaction-commands-dlq")[..] else {
        panic!("one message in transaction-commands-dlq: {first:#?}")
    };
    assert!(malformed.message_type.starts_with("<malformed: "), "{malformed:?}");
    assert!(malformed.error.is_some() && malformed.correlation_id.is_none());
    let [event] = by_dlq(&first, "gateway-events-dlq")[..] else {
        panic!("one message in gateway-events-dlq: {first:#?}")
    };
    assert_eq!(event.message_type, "CustomerEnrolled");
    assert_eq!(event.correlation_id, Some(enrolled.correlation_id.to_string()));
    let [undelivered] = by_dlq(&first, "customer-events-subscription-dlq")[..] else {
        panic!("one message in customer-events-subscription-dlq: {first:#?}")
    };
    assert_eq!(undelivered.message_type, "EnrollmentRejected");
    assert_eq!(undelivered.source, "gateway-events");

    // Listing consumed nothing and hid nothing: straight away, the same messages are there.
    let second = dlq::list(&bus, &queues, 100).await.expect("list again");
    assert_eq!(ids(&second), ids(&first));

    // The CLI shows the same, as JSON.
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sagactl"))
            .args(["dlq", "list", "--json", "--stack", &stack.name])
            .env("AWS_ENDPOINT_URL", emulator_endpoint())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output(),
    )
    .await
    .expect("sagactl answers in time")
    .expect("sagactl runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("JSON list");
    let mut cli_ids: Vec<String> = listed
        .iter()
        .map(|l| l["sqs_message_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    cli_ids.sort();
    assert_eq!(cli_ids, ids(&first));

    // One selected message goes back, with its body and attributes, and only that one.
    let report = dlq::redrive::selected(&bus, &queues, std::slice::from_ref(&enroll_letter.sqs_message_id))
        .await
        .expect("redrive one");
    assert_eq!(report.total(), 1, "{report:?}");
    assert!(report.not_found.is_empty());
    let back = drain(&bus, commands, 1).await;
    assert_eq!(back, [(enroll.to_json(), Some("Enroll".to_owned()))]);
    let after_one = dlq::list(&bus, &queues, 100).await.expect("list");
    assert!(by_dlq(&after_one, "customer-commands-dlq").is_empty(), "{after_one:#?}");
    assert_eq!(after_one.len(), 3, "{after_one:#?}");

    // An id that is nowhere is reported, not invented.
    let report = dlq::redrive::selected(&bus, &queues, &["no-such-id".to_owned()])
        .await
        .expect("redrive nothing");
    assert_eq!((report.total(), report.not_found), (0, vec!["no-such-id".to_owned()]));

    // Everything else goes back to its source queue.
    let report = dlq::redrive::all(&bus, &queues, DEADLINE).await.expect("redrive all");
    assert_eq!(report.total(), 3, "{report:?}");
    let via = |dlq: &str| report.moved.iter().find(|m| m.dlq == dlq).map(|m| (m.moved, m.via));
    assert_eq!(via("transaction-commands-dlq"), Some((1, dlq::redrive::MOVE_TASK)));
    assert_eq!(via("gateway-events-dlq"), Some((1, dlq::redrive::MOVE_TASK)));
    assert_eq!(
        via("customer-events-subscription-dlq"),
        Some((1, dlq::redrive::SEND_DELETE))
    );
    assert!(dlq::list(&bus, &queues, 100).await.expect("list").is_empty());
    let back = drain(&bus, transactions, 1).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].0, "{not json");
    let mut events: Vec<String> = drain(&bus, stack.output("GatewayEventsQueueUrl"), 2)
        .await
        .into_iter()
        .map(|(body, kind)| {
            let envelope = Envelope::parse(&body).expect("an envelope came back");
            assert_eq!(kind.as_deref(), Some(envelope.type_name()));
            envelope.correlation_id.to_string()
        })
        .collect();
    events.sort();
    let mut expected = vec![enrolled.correlation_id.to_string(), rejected.correlation_id.to_string()];
    expected.sort();
    assert_eq!(events, expected);
}

/// What SNS could not deliver (the gateway's queue was gone) waits in the subscription DLQ and,
/// once the queue is back, goes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_events_go_back_to_the_gateway_queue() {
    let bus = bus().await;
    let stack = dead_lettering_stack(&bus).await;
    let gateway_events = stack.output("GatewayEventsQueueUrl").to_owned();
    bus.sqs()
        .delete_queue()
        .queue_url(&gateway_events)
        .send()
        .await
        .expect("delete the gateway's queue");
    let event = Envelope::new(
        Message::CustomerEnrolled(CustomerEnrolled {
            customer_id: Uuid::now_v7(),
            name: name(),
            email: email(),
        }),
        Uuid::now_v7(),
    );
    bus.publish_batch(stack.output("CustomerEventsTopicArn"), &[Outgoing::from(&event)])
        .await
        .expect("publish");

    let queues = dlq::resolve(&stack.outputs, Some(Endpoint::GatewayEvents)).expect("DLQ outputs");
    let letters = eventually("SNS to dead-letter the event", DEADLINE, async || {
        let letters = dlq::list(&bus, &queues, 100).await.expect("list");
        Poll::ready_if(!letters.is_empty(), letters, "no dead letter")
    })
    .await
    .unwrap();
    let [letter] = &letters[..] else {
        panic!("one undeliverable event: {letters:#?}")
    };
    assert_eq!(letter.dlq, "customer-events-subscription-dlq");
    assert_eq!(letter.message_type, "CustomerEnrolled");
    assert_eq!(letter.correlation_id, Some(event.correlation_id.to_string()));

    // The cause is fixed by hand: the queue exists again (same name, so the same URL and ARN).
    bus.sqs()
        .create_queue()
        .queue_name(utility::messaging::bus::queue_name(&gateway_events))
        .send()
        .await
        .expect("recreate the gateway's queue");
    let report = dlq::redrive::all(&bus, &queues, DEADLINE).await.expect("redrive");
    assert_eq!(report.total(), 1, "{report:?}");
    // The recreated queue has no redrive policy, so SQS no longer counts gateway-events-dlq as a
    // dead-letter queue and refuses a message-move task for it: the tool moves it by itself.
    let gateway_dlq = report.moved.iter().find(|m| m.dlq == "gateway-events-dlq");
    assert_eq!(gateway_dlq.map(|m| m.via), Some(dlq::redrive::SEND_DELETE));
    let back = drain(&bus, &gateway_events, 1).await;
    assert_eq!(back, [(event.to_json(), Some("CustomerEnrolled".to_owned()))]);
}
