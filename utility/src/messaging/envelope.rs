//! The one versioned envelope every command and event travels in.
//!
//! Wire form (JSON body):
//! `{"message_id", "type", "schema_version", "correlation_id", "causation_id", "occurred_at",
//!   "traceparent", "payload": {...}}`,
//! plus SQS/SNS message attributes `type` and `correlation_id` so that filter policies can route
//! and operators can see what a message is without reading bodies. Parsing never panics: any byte string gives an
//! [`Envelope`] or an [`EnvelopeError`] that says what is wrong.

use super::message::{Message, MessageType};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The schema versions this build reads: its own and the next. A change to a message ships in
/// two releases: the first only reads version N+1 (this range), the second writes it, so an
/// instance of the older release still running during a rolling upgrade never dead-letters what
/// a newer one sends. Version N+1 may therefore only add fields, which version N ignores.
pub const READABLE_VERSIONS: std::ops::RangeInclusive<u32> = SCHEMA_VERSION..=SCHEMA_VERSION + 1;

/// SQS refuses bodies above 256 KiB; anything larger cannot have come from us.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub message_id: Uuid,
    pub schema_version: u32,
    /// The enrollment this message belongs to.
    pub correlation_id: Uuid,
    /// The message that caused this one (absent for the first command of a saga).
    pub causation_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    /// W3C trace context (`traceparent`), carried so one enrollment's logs can be joined.
    pub traceparent: Option<String>,
    pub message: Message,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is {0} bytes, above the {MAX_BODY_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("body is not a message envelope: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error(
        "`{message_type}` schema version {version} is not supported (this build reads {} to {})",
        READABLE_VERSIONS.start(),
        READABLE_VERSIONS.end()
    )]
    UnsupportedVersion { message_type: String, version: u32 },
    /// SNS filter policies route on the `type` attribute, handlers act on the body: a message
    /// whose two disagree got past a filter under a false name.
    #[error("the `type` attribute says `{attribute}` but the body is `{body}`")]
    TypeAttributeMismatch { attribute: String, body: &'static str },
    #[error("invalid `{message_type}` payload: {source}")]
    InvalidPayload {
        message_type: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The envelope as read from the wire, before the type and payload are checked.
#[derive(Deserialize)]
struct Wire {
    message_id: Uuid,
    #[serde(rename = "type")]
    message_type: String,
    schema_version: u32,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
    #[serde(default)]
    traceparent: Option<String>,
    payload: serde_json::Value,
}

/// The envelope as written: the message's `type` and `payload` come from its serde tagging. Its
/// JSON schema is the one the bus document gives ([`super::asyncapi`]).
#[derive(Serialize, schemars::JsonSchema)]
pub(super) struct WireOut<'a> {
    /// Unique per message; a redelivery or a duplicate publish repeats it, and consumers
    /// recognise it by this id.
    message_id: Uuid,
    /// The version of the envelope and payload schemas.
    schema_version: u32,
    /// The enrollment this message belongs to.
    correlation_id: Uuid,
    /// The message that caused this one (absent for the first command of a saga).
    causation_id: Option<Uuid>,
    /// When the producer wrote it (RFC 3339, UTC).
    occurred_at: DateTime<Utc>,
    /// W3C trace context of the enrollment's trace.
    traceparent: Option<&'a str>,
    #[serde(flatten)]
    message: &'a Message,
}

impl Envelope {
    /// A new message that starts a saga step; `correlation_id` is the enrollment id.
    pub fn new(message: Message, correlation_id: Uuid) -> Self {
        Self {
            message_id: Uuid::now_v7(),
            schema_version: SCHEMA_VERSION,
            correlation_id,
            causation_id: None,
            occurred_at: Utc::now(),
            traceparent: None,
            message,
        }
    }

    /// A message caused by `self`: same saga, same trace, `causation_id` pointing back here.
    pub fn caused(&self, message: Message) -> Self {
        Self {
            causation_id: Some(self.message_id),
            traceparent: self.traceparent.clone(),
            ..Self::new(message, self.correlation_id)
        }
    }

    /// The reply to `self`, a query: its correlation id is the query's message id, which is how
    /// the asker finds it; same trace.
    pub fn reply(&self, message: Message) -> Self {
        Self {
            causation_id: Some(self.message_id),
            traceparent: self.traceparent.clone(),
            ..Self::new(message, self.message_id)
        }
    }

    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    pub fn type_name(&self) -> &'static str {
        self.message.type_name()
    }

    /// Parses a received body, then checks it against the `type` message attribute it came with
    /// (if any): the two must name the same type.
    pub fn parse_received(body: &str, type_attribute: Option<&str>) -> Result<Self, EnvelopeError> {
        let envelope = Self::parse(body)?;
        match type_attribute {
            Some(attribute) if attribute != envelope.type_name() => Err(EnvelopeError::TypeAttributeMismatch {
                attribute: attribute.to_owned(),
                body: envelope.type_name(),
            }),
            _ => Ok(envelope),
        }
    }

    pub fn parse(body: &str) -> Result<Self, EnvelopeError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(EnvelopeError::TooLarge(body.len()));
        }
        let wire: Wire = serde_json::from_str(body).map_err(EnvelopeError::Malformed)?;
        if !READABLE_VERSIONS.contains(&wire.schema_version) {
            return Err(EnvelopeError::UnsupportedVersion {
                message_type: wire.message_type,
                version: wire.schema_version,
            });
        }
        if wire.message_type.parse::<MessageType>().is_err() {
            return Err(EnvelopeError::UnknownType(wire.message_type));
        }
        let tagged = serde_json::json!({"type": &wire.message_type, "payload": wire.payload});
        let message = Message::deserialize(tagged).map_err(|source| EnvelopeError::InvalidPayload {
            message_type: wire.message_type,
            source,
        })?;
        Ok(Self {
            message_id: wire.message_id,
            schema_version: wire.schema_version,
            correlation_id: wire.correlation_id,
            causation_id: wire.causation_id,
            occurred_at: wire.occurred_at,
            traceparent: wire.traceparent,
            message,
        })
    }

    pub fn to_json(&self) -> String {
        let wire = WireOut {
            message_id: self.message_id,
            schema_version: self.schema_version,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            occurred_at: self.occurred_at,
            traceparent: self.traceparent.as_deref(),
            message: &self.message,
        };
        // Only JSON-representable values: ids, times, strings and numbers.
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

/// A fresh W3C `traceparent` (version 00, sampled) for a saga that starts here.
pub fn new_traceparent() -> String {
    let trace = Uuid::new_v4().simple().to_string();
    let span = &Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CustomerName, Email};
    use crate::messaging::message::{Enroll, PostBonusPoints};
    use proptest::prelude::*;
    use strum::VariantArray;

    const MESSAGE_TYPES: &[MessageType] = MessageType::VARIANTS;

    fn enroll() -> Envelope {
        Envelope::new(
            Message::Enroll(Enroll {
                name: CustomerName::parse("Ada").unwrap(),
                email: Email::parse("ada@example.com").unwrap(),
                confirmation: None,
            }),
            Uuid::now_v7(),
        )
        .with_traceparent(Some(new_traceparent()))
    }

    #[test]
    fn round_trips() {
        let original = enroll();
        assert_eq!(Envelope::parse(&original.to_json()).unwrap(), original);
    }

    #[test]
    fn a_type_attribute_naming_another_type_is_refused() {
        let body = enroll().to_json();
        assert!(Envelope::parse_received(&body, Some("Enroll")).is_ok());
        assert!(Envelope::parse_received(&body, None).is_ok());
        let err = Envelope::parse_received(&body, Some("CustomerEnrolled")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the `type` attribute says `CustomerEnrolled` but the body is `Enroll`"
        );
    }

    /// What the next release will send (version N+1, which may only add fields) reads as the
    /// message this release knows, so a rolling upgrade dead-letters nothing.
    #[test]
    fn the_next_schema_version_is_read_and_its_added_fields_ignored() {
        let original = enroll();
        let mut next: serde_json::Value = serde_json::from_str(&original.to_json()).unwrap();
        next["schema_version"] = (SCHEMA_VERSION + 1).into();
        next["payload"]["preferred_language"] = "en".into();
        next["tenant"] = "added-to-the-envelope".into();
        let read = Envelope::parse(&next.to_string()).unwrap();
        assert_eq!(read.message, original.message);
        assert_eq!(read.message_id, original.message_id);
        assert_eq!(read.schema_version, SCHEMA_VERSION + 1);
    }

    #[test]
    fn caused_keeps_saga_and_trace() {
        let first = enroll();
        let next = first.caused(Message::PostBonusPoints(PostBonusPoints {
            customer_id: Uuid::now_v7(),
        }));
        assert_eq!(next.correlation_id, first.correlation_id);
        assert_eq!(next.causation_id, Some(first.message_id));
        assert_eq!(next.traceparent, first.traceparent);
        assert_ne!(next.message_id, first.message_id);
    }

    fn reparse(edit: impl FnOnce(&mut serde_json::Value)) -> EnvelopeError {
        let mut value: serde_json::Value = serde_json::from_str(&enroll().to_json()).unwrap();
        edit(&mut value);
        Envelope::parse(&value.to_string()).unwrap_err()
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(matches!(
            Envelope::parse("{not json").unwrap_err(),
            EnvelopeError::Malformed(_)
        ));
        let err = reparse(|v| v["type"] = "Explode".into());
        assert_eq!(err.to_string(), "unknown message type `Explode`");
        let err = reparse(|v| v["schema_version"] = 7.into());
        assert!(matches!(err, EnvelopeError::UnsupportedVersion { version: 7, .. }));
        let err = reparse(|v| v["schema_version"] = (SCHEMA_VERSION + 2).into());
        assert!(matches!(err, EnvelopeError::UnsupportedVersion { .. }), "{err}");
        let err = reparse(|v| v["payload"]["email"] = "not-an-email".into());
        assert!(err.to_string().starts_with("invalid `Enroll` payload"), "{err}");
        let err = reparse(|v| {
            v.as_object_mut().unwrap().remove("correlation_id");
        });
        assert!(err.to_string().contains("correlation_id"), "{err}");
        let huge = "x".repeat(MAX_BODY_BYTES + 1);
        assert!(matches!(
            Envelope::parse(&huge).unwrap_err(),
            EnvelopeError::TooLarge(_)
        ));
    }

    fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,24}".prop_map(Value::from),
            Just(Value::from(Uuid::now_v7().to_string())),
            Just(Value::from("2026-01-01T00:00:00Z")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Whatever parses must serialise back to something that parses to the same envelope.
    fn assert_stable(body: &str) {
        if let Ok(envelope) = Envelope::parse(body) {
            assert_eq!(Envelope::parse(&envelope.to_json()).unwrap(), envelope);
        }
    }

    proptest! {
        #[test]
        fn any_field_values_give_a_value_or_an_error(
            fields in proptest::collection::vec(proptest::option::of(arbitrary_json()), 8),
            type_index in 0usize..MESSAGE_TYPES.len(),
        ) {
            let keys = ["message_id", "type", "schema_version", "correlation_id", "causation_id", "occurred_at", "traceparent", "payload"];
            let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&enroll().to_json()).unwrap();
            object.insert("type".into(), MESSAGE_TYPES[type_index].name().into());
            for (key, value) in keys.iter().zip(fields) {
                if let Some(value) = value {
                    object.insert((*key).to_owned(), value);
                }
            }
            assert_stable(&serde_json::Value::Object(object).to_string());
        }

        #[test]
        fn byte_edits_of_a_valid_envelope_give_a_value_or_an_error(
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = enroll().to_json().into_bytes();
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            assert_stable(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn any_bytes_give_a_value_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = Envelope::parse(&text);
        }

        #[test]
        fn any_type_and_payload_give_a_value_or_an_error(
            type_index in 0usize..MESSAGE_TYPES.len(),
            payload in "\\PC{0,200}",
        ) {
            let body = serde_json::json!({
                "message_id": Uuid::now_v7(), "type": MESSAGE_TYPES[type_index].name(),
                "schema_version": 1, "correlation_id": Uuid::now_v7(), "causation_id": null,
                "occurred_at": "2026-01-01T00:00:00Z",
                "payload": serde_json::from_str::<serde_json::Value>(&payload).unwrap_or(payload.into()),
            });
            let _ = Envelope::parse(&body.to_string());
        }
    }
}
