//! The bus as an AsyncAPI 3.0 document, generated from the declarations it describes, so it
//! cannot drift from them: channels are the queues and topics ([`Endpoint`]), messages are the
//! envelope around each payload ([`Message`], its JSON schema derived from the Rust types), and
//! operations say who sends and who receives ([`MessageType::route`]). The SNS subscriptions
//! appear as each topic's consumers, with the filter policy the declarations imply; a test holds
//! them and the channel names to `infra/messaging.yaml`, and validates the document with the
//! AsyncAPI parser. The gateway serves it at `/asyncapi.json`: what a team adding a consumer
//! reads first.

use super::endpoint::{Endpoint, Participant};
use super::envelope::{SCHEMA_VERSION, WireOut};
use super::message::{Kind, Message, MessageType, subscription_filter};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use strum::VariantArray;

/// The message attributes every message carries beside its body (SNS passes them on to SQS with
/// raw delivery; the subscriptions' filter policies read `type`). A type may declare more
/// ([`MessageType::attributes`]), which its headers list too.
const ATTRIBUTES: [(&str, &str); 3] = [
    (
        "type",
        "The message type, as in the body: what the SNS filter policies route on.",
    ),
    (
        "correlation_id",
        "The enrollment id, as in the body: what operators search by.",
    ),
    (
        "traceparent",
        "W3C trace context of the span that published the message (absent when tracing is off).",
    ),
];

/// The document, as JSON. `version` is the version of the code that describes itself.
pub fn document(version: &str) -> Value {
    let schemas = PayloadSchemas::new();
    let mut channels = Map::new();
    for endpoint in Endpoint::VARIANTS {
        channels.insert(endpoint.name().to_owned(), channel(*endpoint));
    }
    let mut messages = Map::new();
    for message_type in MessageType::VARIANTS {
        messages.insert(message_type.name().to_owned(), schemas.message(*message_type));
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Enrollment saga: the bus",
            "version": version,
            "description": DESCRIPTION,
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations(),
        "components": {
            "messages": messages,
            "parameters": {
                "prefix": {
                    "description": "The messaging stack's `NamePrefix`: `saga` by default; tests deploy copies under prefixes of their own.",
                    "default": "saga",
                    "examples": ["saga"],
                },
            },
        },
    })
}

const DESCRIPTION: &str = "How the services of the enrollment saga talk: commands go to the \
receiving service's SQS queue, events to the producing service's SNS topic, from which \
subscriptions with filter policies on the `type` message attribute deliver them to the queues of \
the services that receive them (raw delivery: the SQS body is the envelope). Every message is one \
JSON envelope around a typed payload, written to the sender's outbox in the transaction that \
caused it and published after commit: delivery is at least once, and receivers deduplicate by \
`message_id`. Queries and their replies are the request/reply half: the gateway sends a query \
to the answering service's queries queue, the service answers on the gateway's replies queue \
with the query's message id as the reply's `correlation_id`; they change no state and are sent \
straight to the bus. A message a receiver cannot parse or refuses goes to its queue's dead-letter queue \
after `maxReceiveCount` receives. Queue and topic names are the stack's `NamePrefix` followed by \
the channel's name; their settings (visibility timeout, retention, redrive) are in \
`infra/messaging.yaml`.";

/// The types that travel on `endpoint`: what is sent to it, and for a queue also the events its
/// subscriptions deliver to it.
fn carried(endpoint: Endpoint) -> Vec<MessageType> {
    MessageType::VARIANTS
        .iter()
        .copied()
        .filter(|t| {
            let route = t.route();
            route.destination == endpoint
                || (route.kind == Kind::Event && route.receivers.iter().any(|r| r.queue() == endpoint))
                || (route.kind == Kind::Integration && route.subscribers.contains(&endpoint))
        })
        .collect()
}

fn address(name: &str) -> String {
    format!("{{prefix}}-{name}")
}

fn message_refs(endpoint: Endpoint, types: impl IntoIterator<Item = MessageType>) -> Vec<Value> {
    types
        .into_iter()
        .map(|t| json!({"$ref": format!("#/channels/{}/messages/{}", endpoint.name(), t.name())}))
        .collect()
}

fn channel(endpoint: Endpoint) -> Value {
    let dead_letter = address(endpoint.outputs().dead_letter.name);
    let messages: Map<String, Value> = carried(endpoint)
        .into_iter()
        .map(|t| {
            let reference = json!({"$ref": format!("#/components/messages/{}", t.name())});
            (t.name().to_owned(), reference)
        })
        .collect();
    let (title, description, bindings) = if endpoint.is_topic() {
        let owner = owner(endpoint, |p| p.topic() == Some(endpoint));
        (
            format!("{} (SNS topic)", endpoint.name()),
            format!(
                "The {owner}'s events. Each subscription has a dead-letter queue of its own for what SNS cannot deliver ({dead_letter} for the subscription shown in the publishing operation)."
            ),
            json!({"sns": {"name": address(endpoint.name()), "bindingVersion": "0.1.0"}}),
        )
    } else {
        let owner = owner(endpoint, |p| {
            p.queue() == endpoint || p.lookups() == endpoint || p.subscriptions().contains(&endpoint)
        });
        (
            format!("{} (SQS queue)", endpoint.name()),
            format!(
                "What the {owner} receives. Long polling; a message it cannot handle goes to {dead_letter} after maxReceiveCount receives."
            ),
            json!({"sqs": {
                "queue": {"name": address(endpoint.name()), "fifoQueue": false},
                "deadLetterQueue": {"name": dead_letter, "fifoQueue": false},
                "bindingVersion": "0.2.0",
            }}),
        )
    };
    json!({
        "address": address(endpoint.name()),
        "title": title,
        "description": description,
        "messages": messages,
        "parameters": {"prefix": {"$ref": "#/components/parameters/prefix"}},
        "bindings": bindings,
    })
}

/// The service whose queue or topic `endpoint` is.
fn owner(endpoint: Endpoint, owns: impl Fn(&Participant) -> bool) -> &'static str {
    Participant::VARIANTS
        .iter()
        .find(|p| owns(p))
        .map_or_else(|| endpoint.name(), |p| p.name())
}

/// For each service: what it sends (per destination) and what it receives (its queue).
fn operations() -> Map<String, Value> {
    let mut operations = Map::new();
    for participant in Participant::VARIANTS {
        for destination in Endpoint::VARIANTS {
            let sent: Vec<MessageType> = MessageType::VARIANTS
                .iter()
                .copied()
                .filter(|t| t.route().sender == *participant && t.route().destination == *destination)
                .collect();
            if sent.is_empty() {
                continue;
            }
            let verb = if destination.is_topic() { "publishes" } else { "sends" };
            let names: Vec<&str> = sent.iter().map(|t| t.name()).collect();
            let how = if sent.iter().all(|t| t.route().kind.is_saga()) {
                format!("through the {participant}'s outbox")
            } else {
                "straight to the bus, outside any transaction (a lookup changes nothing)".to_owned()
            };
            let mut operation = json!({
                "action": "send",
                "channel": {"$ref": format!("#/channels/{}", destination.name())},
                "title": format!("The {participant} {verb} to {destination}"),
                "summary": format!("{}, {how}.", names.join(", ")),
                "messages": message_refs(*destination, sent.iter().copied()),
                "tags": [{"name": participant.name()}],
            });
            if destination.is_topic() {
                operation["bindings"] = json!({"sns": {
                    "consumers": consumers(*destination),
                    "bindingVersion": "0.1.0",
                }});
            }
            operations.insert(format!("{participant}-{verb}-to-{destination}"), operation);
        }
        let queue = participant.queue();
        operations.insert(
            format!("{participant}-receives-from-{queue}"),
            json!({
                "action": "receive",
                "channel": {"$ref": format!("#/channels/{}", queue.name())},
                "title": format!("The {participant} receives from {queue}"),
                "summary": "Long polls, handles each message in a database transaction with its effects and outbox rows, deletes it after the commit.",
                "messages": message_refs(queue, carried(queue)),
                "tags": [{"name": participant.name()}],
            }),
        );
        let lookups = participant.lookups();
        let summary = if *participant == Participant::Gateway {
            "Long polls on every instance; a reply goes to the waiting request, held in memory or in the database for the instance that asked, and is deleted; a late one is dropped and counted."
        } else {
            "Long polls, reads the answer and sends the reply, then deletes the query; a query past its `reply_by` is deleted unanswered."
        };
        operations.insert(
            format!("{participant}-receives-from-{lookups}"),
            json!({
                "action": "receive",
                "channel": {"$ref": format!("#/channels/{}", lookups.name())},
                "title": format!("The {participant} receives from {lookups}"),
                "summary": summary,
                "messages": message_refs(lookups, carried(lookups)),
                "tags": [{"name": participant.name()}],
            }),
        );
        for queue in participant.subscriptions() {
            operations.insert(
                format!("{participant}-receives-from-{queue}"),
                json!({
                    "action": "receive",
                    "channel": {"$ref": format!("#/channels/{}", queue.name())},
                    "title": format!("The {participant} receives from {queue}"),
                    "summary": "Long polls; its subscription admits only the events of enrollments with a callback (`callback` = `yes`), and each becomes a scheduled, signed webhook delivery (in the same transaction as its processed-message row), then the message is deleted.",
                    "messages": message_refs(*queue, carried(*queue)),
                    "tags": [{"name": participant.name()}],
                }),
            );
        }
    }
    operations
}

/// The SNS subscriptions of `topic`: one per receiving service, to its queue, admitting exactly
/// the types declared for that pair; and one per queue subscribed to its integration events.
fn consumers(topic: Endpoint) -> Vec<Value> {
    let mut subscribers: Vec<Endpoint> = Vec::new();
    for message_type in MessageType::VARIANTS {
        let route = message_type.route();
        if route.destination == topic {
            for queue in route.subscribers {
                if !subscribers.contains(queue) {
                    subscribers.push(*queue);
                }
            }
        }
    }
    let integration = subscribers.into_iter().map(|queue| {
        let types: Vec<&str> = MessageType::VARIANTS
            .iter()
            .filter(|t| t.route().destination == topic && t.route().subscribers.contains(&queue))
            .map(|t| t.name())
            .collect();
        subscription(topic, queue, &types)
    });
    let mut all = services(topic);
    all.extend(integration);
    all
}

/// One subscription: the types it admits, and for a queue subscribed to integration events the
/// attribute value it requires ([`subscription_filter`]).
fn subscription(topic: Endpoint, queue: Endpoint, types: &[&str]) -> Value {
    let mut filter = json!({"type": types});
    if let Some((attribute, admitted)) = subscription_filter(queue) {
        filter[attribute.name] = json!([admitted]);
    }
    json!({
        "protocol": "sqs",
        "endpoint": {"name": address(queue.name())},
        "filterPolicy": filter,
        "filterPolicyScope": "MessageAttributes",
        "rawMessageDelivery": true,
        "redrivePolicy": {"deadLetterQueue": {"name": address(topic.outputs().dead_letter.name)}},
    })
}

/// The subscriptions of the services that receive `topic`'s events.
fn services(topic: Endpoint) -> Vec<Value> {
    let mut receivers: Vec<Participant> = Vec::new();
    for message_type in MessageType::VARIANTS {
        let route = message_type.route();
        if route.destination == topic {
            for receiver in route.receivers {
                if !receivers.contains(receiver) {
                    receivers.push(*receiver);
                }
            }
        }
    }
    receivers
        .into_iter()
        .map(|receiver| {
            let types: Vec<&str> = MessageType::VARIANTS
                .iter()
                .filter(|t| t.route().destination == topic && t.route().receivers.contains(&receiver))
                .map(|t| t.name())
                .collect();
            subscription(topic, receiver.queue(), &types)
        })
        .collect()
}

/// The JSON schemas of the envelope and of each message type's `type` and `payload`, derived from
/// the Rust types (draft 07, which AsyncAPI's schema format extends; subschemas inlined so each
/// message stands alone).
struct PayloadSchemas {
    envelope: Map<String, Value>,
    variants: Vec<Value>,
}

impl PayloadSchemas {
    fn new() -> Self {
        let mut generator = SchemaSettings::draft07()
            .with(|s| s.inline_subschemas = true)
            .into_generator();
        let envelope = generator.root_schema_for::<WireOut<'static>>().to_value();
        let message = generator.root_schema_for::<Message>().to_value();
        let variants = message["oneOf"].as_array().cloned().unwrap_or_default();
        let mut envelope = envelope.as_object().cloned().unwrap_or_default();
        // The flattened message adds its variants; each message below takes only its own.
        for key in ["$schema", "title", "oneOf", "description"] {
            envelope.remove(key);
        }
        if let Some(version) = envelope.get_mut("properties").and_then(|p| p.get_mut("schema_version")) {
            *version = json!({"const": SCHEMA_VERSION, "description": "The version of the envelope and payload schemas; a receiver refuses one it does not read."});
        }
        Self { envelope, variants }
    }

    /// The `type` and `payload` schema of `message_type` (the variant whose tag is its name).
    fn variant(&self, message_type: MessageType) -> Map<String, Value> {
        self.variants
            .iter()
            .find(|v| v["properties"]["type"]["const"] == message_type.name())
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    fn message(&self, message_type: MessageType) -> Value {
        let variant = self.variant(message_type);
        let mut schema = self.envelope.clone();
        let mut properties = schema
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut required: Vec<Value> = schema
            .get("required")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(own) = variant.get("properties").and_then(Value::as_object) {
            properties.extend(own.clone());
        }
        if let Some(own) = variant.get("required").and_then(Value::as_array) {
            required.extend(own.iter().cloned());
        }
        schema.insert("properties".into(), Value::Object(properties));
        schema.insert("required".into(), Value::Array(required));
        let summary = variant["properties"]["payload"]["description"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let route = message_type.route();
        let kind = match route.kind {
            Kind::Command => "command",
            Kind::Event => "event",
            Kind::Query => "query",
            Kind::Reply => "reply",
            Kind::Integration => "integration event",
        };
        let correlation = if route.kind.is_saga() {
            "The enrollment id: every message of one saga carries it."
        } else {
            "The query's message id: a reply carries its query's, which is how the asker finds it."
        };
        let mut receivers: Vec<&str> = route.receivers.iter().map(|r| r.name()).collect();
        receivers.extend(route.subscribers.iter().map(|q| q.name()));
        let mut headers: Map<String, Value> = ATTRIBUTES
            .iter()
            .map(|(name, description)| {
                let schema = match *name {
                    "type" => json!({"type": "string", "const": message_type.name(), "description": description}),
                    _ => json!({"type": "string", "description": description}),
                };
                ((*name).to_owned(), schema)
            })
            .collect();
        let mut required = vec!["type", "correlation_id"];
        for attribute in message_type.attributes() {
            headers.insert(
                attribute.name.to_owned(),
                json!({"type": "string", "enum": attribute.values, "description": attribute.description}),
            );
            required.push(attribute.name);
        }
        json!({
            "name": message_type.name(),
            "title": message_type.name(),
            "summary": summary,
            "description": format!(
                "{} {kind} from the {} to the {}. The body is the envelope; its `payload` is the {} payload.",
                if kind.starts_with(['e', 'i']) { "An" } else { "A" },
                route.sender,
                receivers.join(", the "),
                message_type.name()
            ),
            "contentType": "application/json",
            "correlationId": {
                "description": correlation,
                "location": "$message.payload#/correlation_id",
            },
            "headers": {
                "type": "object",
                "description": "SQS/SNS message attributes (all of type String).",
                "properties": headers,
                "required": required,
            },
            "payload": schema,
            "tags": [{"name": kind}],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_has_its_payload_schema_and_every_channel_its_messages() {
        let document = document("0.0.0");
        for message_type in MessageType::VARIANTS {
            let message = &document["components"]["messages"][message_type.name()];
            let payload = &message["payload"]["properties"];
            assert_eq!(payload["type"]["const"], message_type.name());
            assert_eq!(payload["payload"]["type"], "object", "{message_type}: {payload}");
            assert!(payload["message_id"].is_object() && payload["correlation_id"].is_object());
            assert!(
                !message["summary"].as_str().unwrap_or_default().is_empty(),
                "{message_type} has no doc"
            );
            let destination = message_type.destination().name();
            assert!(document["channels"][destination]["messages"][message_type.name()].is_object());
        }
        let enroll = &document["components"]["messages"]["Enroll"]["payload"]["properties"]["payload"];
        assert_eq!(
            enroll["properties"]["email"]["maxLength"],
            crate::domain::Email::MAX_CHARS
        );
        let status = &document["components"]["messages"]["EnrollmentStatusChanged"]["headers"];
        assert_eq!(status["properties"]["callback"]["enum"], json!(["yes", "no"]));
        assert_eq!(status["required"], json!(["type", "correlation_id", "callback"]));
        let webhooks = &document["operations"]["gateway-publishes-to-status-events"]["bindings"]["sns"]["consumers"];
        assert_eq!(
            webhooks[0]["filterPolicy"],
            json!({"type": ["EnrollmentStatusChanged"], "callback": ["yes"]})
        );
        let consumers =
            &document["operations"]["customer-api-publishes-to-customer-events"]["bindings"]["sns"]["consumers"];
        assert_eq!(
            consumers[0]["filterPolicy"]["type"],
            json!([
                "ConfirmationRequested",
                "ConfirmationLapsed",
                "CustomerEnrolled",
                "EnrollmentRejected",
                "CustomerUnenrolled"
            ])
        );
    }
}
