//! The commands and events of the enrollment saga, as typed payloads.
//!
//! Commands name what the receiver is asked to do and travel over SQS straight to one queue;
//! events state what happened and are published to the producer's SNS topic. The correlation id
//! of every message is the enrollment id, so it is not repeated in the payloads.
//!
//! Each type declares its [`Route`] beside it ([`MessageType::route`]): who sends it, who
//! receives it, and so where the outbox sends it. Handlers and the saga's routing table never
//! name a queue or a topic; the messaging template's subscriptions are checked against these
//! declarations (`infra/tests/wire_contract.rs`).

use super::endpoint::{Endpoint, Participant};
use crate::domain::{CustomerName, Email};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Asks the customer-api to create a customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Enroll {
    pub name: CustomerName,
    pub email: Email,
}

/// Asks the customer-api to roll an enrollment back (the compensation step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Unenroll {
    pub customer_id: Uuid,
    pub reason: String,
}

/// Asks the transaction-api to post the enrollment bonus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PostBonusPoints {
    pub customer_id: Uuid,
}

/// Asks the transaction-api to take back an enrollment bonus that was posted after the saga had
/// already failed (a late `BonusPointsPosted`): points are never left on an unenrolled customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReverseBonusPoints {
    pub customer_id: Uuid,
    pub reason: String,
}

/// The customer-api created the customer of this enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerEnrolled {
    pub customer_id: Uuid,
    pub name: CustomerName,
    pub email: Email,
}

/// The customer-api refused the enrollment: its e-mail address already has an active customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EnrollmentRejected {
    pub email: Email,
    pub reason: String,
}

/// The customer-api rolled the enrollment's customer back (the answer to `Unenroll`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerUnenrolled {
    pub customer_id: Uuid,
    pub reason: String,
}

/// The transaction-api posted the enrollment bonus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BonusPointsPosted {
    pub customer_id: Uuid,
    pub points: i64,
    pub balance: i64,
}

/// The transaction-api could not post the enrollment bonus; the gateway compensates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BonusPointsFailed {
    pub customer_id: Uuid,
    /// The transaction-api's own words, for operators.
    pub reason: String,
    /// What kind of failure it was, for words a client may see.
    #[serde(default)]
    pub cause: BonusFailure,
}

/// Why an enrollment bonus could not be posted. Unknown values (from a newer producer) read as
/// `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BonusFailure {
    /// The campaign's budget cannot cover another bonus.
    BudgetExhausted,
    #[default]
    #[serde(other)]
    Other,
}

/// The transaction-api took back a bonus posted after its saga had failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BonusPointsReversed {
    pub customer_id: Uuid,
    pub points: i64,
    pub balance: i64,
}

/// Every message the saga knows: the one declaration of the wire contract's types. The variant
/// name is the wire `type` and its struct the `payload` (serde's adjacent tagging, which the
/// envelope uses for exactly those two fields); [`MessageType`] is derived from it, so adding a
/// message type means adding a variant here and its arm in [`MessageType::route`], and nothing
/// else in this crate (the AsyncAPI document and the payload schemas follow).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, strum::EnumDiscriminants)]
#[serde(tag = "type", content = "payload")]
#[strum_discriminants(
    name(MessageType),
    derive(strum::EnumString, strum::IntoStaticStr, strum::Display, strum::VariantArray, Hash)
)]
pub enum Message {
    Enroll(Enroll),
    Unenroll(Unenroll),
    PostBonusPoints(PostBonusPoints),
    ReverseBonusPoints(ReverseBonusPoints),
    CustomerEnrolled(CustomerEnrolled),
    EnrollmentRejected(EnrollmentRejected),
    CustomerUnenrolled(CustomerUnenrolled),
    BonusPointsPosted(BonusPointsPosted),
    BonusPointsFailed(BonusPointsFailed),
    BonusPointsReversed(BonusPointsReversed),
}

/// A command asks one service to act; an event tells whoever subscribes what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Command,
    Event,
}

/// Who sends a message type and who receives it, and so where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub kind: Kind,
    pub sender: Participant,
    /// A command's one receiver, or the services subscribed to an event.
    pub receivers: &'static [Participant],
    /// A command goes to its receiver's queue, an event to its sender's topic.
    pub destination: Endpoint,
}

impl Route {
    const fn command(sender: Participant, receiver: &'static [Participant; 1]) -> Self {
        Self {
            kind: Kind::Command,
            sender,
            receivers: receiver,
            destination: receiver[0].queue(),
        }
    }

    const fn event(sender: Participant, receivers: &'static [Participant]) -> Self {
        let Some(destination) = sender.topic() else {
            panic!("a service that sends events needs a topic");
        };
        Self {
            kind: Kind::Event,
            sender,
            receivers,
            destination,
        }
    }
}

impl MessageType {
    /// The wire name (`type` in the envelope, the `type` message attribute, the SNS filter
    /// policies in `infra/messaging.yaml`).
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// The one declaration of where this type goes. Each route is built at compile time, so a
    /// route that cannot be (an event from a service without a topic) does not build.
    pub const fn route(self) -> Route {
        use Participant::{CustomerApi, Gateway, TransactionApi};
        match self {
            Self::Enroll | Self::Unenroll => const { Route::command(Gateway, &[CustomerApi]) },
            Self::PostBonusPoints | Self::ReverseBonusPoints => const { Route::command(Gateway, &[TransactionApi]) },
            Self::CustomerEnrolled | Self::EnrollmentRejected | Self::CustomerUnenrolled => {
                const { Route::event(CustomerApi, &[Gateway]) }
            }
            Self::BonusPointsPosted | Self::BonusPointsFailed | Self::BonusPointsReversed => {
                const { Route::event(TransactionApi, &[Gateway]) }
            }
        }
    }

    /// The queue or topic the outbox sends this type to.
    pub const fn destination(self) -> Endpoint {
        self.route().destination
    }

    /// Every type `participant` receives, in declaration order.
    pub fn received_by(participant: Participant) -> impl Iterator<Item = MessageType> {
        <Self as strum::VariantArray>::VARIANTS
            .iter()
            .copied()
            .filter(move |t| t.route().receivers.contains(&participant))
    }
}

/// The queues and topics `sender` sends to, as the routes declare them, each once.
pub fn destinations_of(sender: Participant) -> Vec<Endpoint> {
    let mut destinations: Vec<Endpoint> = <MessageType as strum::VariantArray>::VARIANTS
        .iter()
        .map(|t| t.route())
        .filter(|route| route.sender == sender)
        .map(|route| route.destination)
        .collect();
    destinations.sort();
    destinations.dedup();
    destinations
}

impl Message {
    pub fn message_type(&self) -> MessageType {
        self.into()
    }

    pub fn type_name(&self) -> &'static str {
        self.message_type().name()
    }

    /// Where the outbox sends it ([`MessageType::route`]).
    pub fn destination(&self) -> Endpoint {
        self.message_type().destination()
    }

    /// The customer the message is about, for the messages that name one: receivers compare it
    /// with what they know of the enrollment (the correlation id) before acting on it.
    pub fn customer_id(&self) -> Option<Uuid> {
        match self {
            Self::Enroll(_) | Self::EnrollmentRejected(_) => None,
            Self::Unenroll(m) => Some(m.customer_id),
            Self::PostBonusPoints(m) => Some(m.customer_id),
            Self::ReverseBonusPoints(m) => Some(m.customer_id),
            Self::CustomerEnrolled(m) => Some(m.customer_id),
            Self::CustomerUnenrolled(m) => Some(m.customer_id),
            Self::BonusPointsPosted(m) => Some(m.customer_id),
            Self::BonusPointsFailed(m) => Some(m.customer_id),
            Self::BonusPointsReversed(m) => Some(m.customer_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    #[test]
    fn the_wire_name_is_the_variant_name() {
        let message = Message::PostBonusPoints(PostBonusPoints {
            customer_id: Uuid::nil(),
        });
        assert_eq!(message.type_name(), "PostBonusPoints");
        let wire = serde_json::to_value(&message).unwrap();
        assert_eq!(wire["type"], "PostBonusPoints");
        assert_eq!(wire["payload"]["customer_id"], Uuid::nil().to_string());
        for message_type in MessageType::VARIANTS {
            assert_eq!(message_type.name().parse::<MessageType>().unwrap(), *message_type);
        }
        assert_eq!(MessageType::VARIANTS.len(), 10);
    }

    #[test]
    fn commands_go_to_their_one_receiver_and_events_to_their_sender_s_topic() {
        for message_type in MessageType::VARIANTS {
            let route = message_type.route();
            assert!(
                !route.receivers.contains(&route.sender),
                "{message_type} is sent to itself"
            );
            match route.kind {
                Kind::Command => {
                    assert_eq!(route.receivers.len(), 1, "{message_type}");
                    assert_eq!(route.destination, route.receivers[0].queue());
                    assert!(!route.destination.is_topic());
                }
                Kind::Event => {
                    assert_eq!(Some(route.destination), route.sender.topic());
                    assert!(route.destination.is_topic());
                }
            }
        }
        let gateway: Vec<_> = MessageType::received_by(Participant::Gateway).collect();
        assert!(gateway.contains(&MessageType::CustomerEnrolled));
        assert!(!gateway.contains(&MessageType::Enroll));
    }
}
