use super::*;
use aws_sdk_sqs::types::MessageAttributeValue;
use utility::domain::{CustomerName, Email};
use utility::messaging::message::{Enroll, Message as Payload};
use uuid::Uuid;

fn enroll() -> Envelope {
    Envelope::new(
        Payload::Enroll(Enroll {
            name: CustomerName::parse("Ada").unwrap(),
            email: Email::parse("ada@example.com").unwrap(),
            confirmation: None,
        }),
        Uuid::now_v7(),
    )
}

fn received(body: &str, type_attribute: Option<&str>) -> Message {
    let mut message = Message::builder()
        .message_id("m-1")
        .body(body)
        .attributes(Attr::SentTimestamp, "1795453295346")
        .attributes(Attr::ApproximateFirstReceiveTimestamp, "1795453296623")
        .attributes(Attr::ApproximateReceiveCount, "3");
    if let Some(t) = type_attribute {
        message = message.message_attributes(
            "type",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(t)
                .build()
                .unwrap(),
        );
    }
    message.build()
}

#[test]
fn describes_an_envelope() {
    let envelope = enroll();
    let letter = describe(&dead_letter_queues()[0], &received(&envelope.to_json(), None));
    assert_eq!(letter.message_type, "Enroll");
    assert_eq!(letter.correlation_id, Some(envelope.correlation_id.to_string()));
    assert_eq!(letter.error, None);
    assert_eq!(letter.receive_count, 3);
    assert_eq!(letter.source, "customer-commands");
    assert_eq!(letter.sent_at.unwrap().to_rfc3339(), "2026-11-23T17:01:35.346+00:00");
}

#[test]
fn describes_what_is_not_an_envelope() {
    let letter = describe(&dead_letter_queues()[1], &received("{not json", None));
    assert!(
        letter
            .message_type
            .starts_with("<malformed: body is not a message envelope"),
        "{letter:?}"
    );
    assert!(letter.error.is_some());
    let letter = describe(&dead_letter_queues()[1], &received("{not json", Some("Enroll")));
    assert_eq!(letter.message_type, "Enroll");
    assert!(letter.error.is_some());
}

#[test]
fn unwraps_sns_notifications() {
    let envelope = enroll();
    let wrapped = serde_json::json!({
        "Type": "Notification", "MessageId": "x", "TopicArn": "arn:aws:sns:us-east-1:0:t",
        "Message": envelope.to_json(),
        "MessageAttributes": {"type": {"Type": "String", "Value": "Enroll"}},
    })
    .to_string();
    let unwrapped = unwrap_sns(&wrapped);
    assert_eq!(unwrapped.body, envelope.to_json());
    assert_eq!(unwrapped.sns_attributes.unwrap()["type"], "Enroll");
    let letter = describe(&dead_letter_queues()[3], &received(&wrapped, None));
    assert_eq!(letter.message_type, "Enroll");
    assert_eq!(letter.source, "gateway-events");
    // Anything else is taken as it is.
    for body in ["", "[]", "{\"Type\": \"Notification\"}", "\u{0}"] {
        let unwrapped = unwrap_sns(body);
        assert_eq!(unwrapped.body, body);
        assert!(unwrapped.sns_attributes.is_none());
    }
}

#[test]
fn resolves_and_filters_by_source() {
    let outputs: HashMap<String, String> = dead_letter_queues()
        .iter()
        .map(|q| q.url_output)
        .chain(source_queues().map(|e| e.outputs().address))
        .chain(source_queues().map(|e| e.outputs().arn))
        .map(|k| (k.to_owned(), format!("value-of-{k}")))
        .collect();
    assert_eq!(resolve(&outputs, None).unwrap().len(), 10);
    let gateway = resolve(&outputs, Some(source_queue("gateway-events").unwrap())).unwrap();
    assert_eq!(gateway.len(), 3);
    assert!(gateway.iter().all(|q| q.source_arn == "value-of-GatewayEventsQueueArn"));
    assert!(source_queue("customer-events").is_err());
    let mut partial = outputs.clone();
    partial.remove("TransactionCommandsDlqUrl");
    let err = resolve(&partial, None).unwrap_err().to_string();
    assert!(err.contains("TransactionCommandsDlqUrl"), "{err}");
}

#[test]
fn table_has_one_block_per_queue() {
    let outputs: HashMap<String, String> = HashMap::from_iter(
        [
            "CustomerCommandsDlqUrl",
            "CustomerCommandsQueueUrl",
            "CustomerCommandsQueueArn",
        ]
        .map(|k| (k.to_owned(), k.to_owned())),
    );
    let queues = resolve(&outputs, Some(Endpoint::CustomerCommands)).unwrap();
    let letter = describe(&dead_letter_queues()[0], &received("oops", Some("Enroll")));
    let text = table(&queues, &[letter]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "customer-commands-dlq -> customer-commands: 1 message");
    assert!(lines[1].contains("SQS MESSAGE ID") && lines[1].contains("RECEIVES"));
    assert!(
        lines[2].starts_with("  m-1") && lines[2].contains("2026-11-23 17:01:35"),
        "{text}"
    );
    assert!(lines[2].contains("Enroll <malformed: body is not"), "{text}");
    assert_eq!(
        table(&queues, &[]),
        "customer-commands-dlq -> customer-commands: 0 messages\n"
    );
}
