//! The commands and events of the enrollment saga, as typed payloads.
//!
//! Commands name what the receiver is asked to do and travel over SQS straight to one queue;
//! events state what happened and are published to the producer's SNS topic. The correlation id
//! of every message is the enrollment id, so it is not repeated in the payloads.
//!
//! Queries and replies are the request/reply half: the gateway asks a service for what it holds
//! (an operator's lookup) and the service answers on the gateway's reply queue. Their
//! correlation id is the query's message id, not an enrollment; they change no state, never go
//! through an outbox and never enter the saga's routing table. Each travels on queues of its
//! own ([`Participant::lookups`]), so a lookup never waits behind a backlog of saga commands.
//!
//! Each type declares its [`Route`] beside it ([`MessageType::route`]): who sends it, who
//! receives it, and so where the outbox sends it. Handlers and the saga's routing table never
//! name a queue or a topic; the messaging template's subscriptions are checked against these
//! declarations (`infra/tests/wire_contract.rs`).

use super::endpoint::{Endpoint, Participant};
use crate::domain::{CustomerName, Email};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Asks the customer-api to create a customer. With a `confirmation`, it creates nothing yet: it
/// holds the enrollment until `ConfirmEnrollment` or `ForgetEnrollment`, mails the address's
/// owner the link (or, to an address that is already enrolled, a note without one) and publishes
/// `ConfirmationRequested`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Enroll {
    pub name: CustomerName,
    pub email: Email,
    /// Absent when the deployment does not ask owners to confirm (`EMAIL_CONFIRMATION=off`), and
    /// in messages from before confirmation existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<ConfirmationLink>,
}

/// What a confirmation mail offers: the gateway's page that confirms this enrollment, with its
/// single-use token in the URL's fragment (never sent to a server by a browser), and when the
/// offer ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfirmationLink {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// Asks the customer-api to mail the confirmation again, with a new link (the gateway replaced
/// the token, so the old link no longer confirms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResendConfirmation {
    pub confirmation: ConfirmationLink,
}

/// The address's owner confirmed: asks the customer-api to create the customer it holds for this
/// enrollment. Answered as an `Enroll` without confirmation is: `CustomerEnrolled` or
/// `EnrollmentRejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfirmEnrollment {}

/// The enrollment's confirmation deadline passed: asks the customer-api to forget the name and
/// address it holds for it. Nothing answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ForgetEnrollment {
    pub reason: String,
}

/// An operator erased the enrollment's personal data (decision 0042): asks the customer-api to
/// replace the name and address it holds for this enrollment (its customer, or its rejection)
/// with a tombstone, keeping the customer's row and id for the ledger. Nothing answers it; it may
/// come again, and changes nothing the second time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErasePersonalData {}

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

/// The customer-api mailed the owner of the enrollment's address: the confirmation link, or, when
/// the address already has a customer, a note saying so. Both look the same to the public
/// (no oracle); `already_enrolled` is for the operator view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfirmationRequested {
    pub already_enrolled: bool,
}

/// The customer-api got `ConfirmEnrollment` but no longer holds the enrollment: it was forgotten
/// after its deadline (the sweep's grace ran out while the command was delayed, by an outage of
/// the customer-api or of the bus) or erased. Nothing was created; the saga ends `expired`
/// instead of waiting for ever in `confirmed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfirmationLapsed {}

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

/// The gateway recorded a step of the saga: its history entry, as the event stream shows it, and
/// nothing personal. An integration event for whoever subscribes to the gateway's topic (the
/// webhook delivery, analytics), never routed by the saga's table. `sequence` numbers an
/// enrollment's entries 1, 2, 3, ... in the order the saga took them, so a subscriber receiving
/// them out of order (or twice) can tell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EnrollmentStatusChanged {
    pub sequence: i64,
    /// The saga's status after the step (`pending`, `completed`, ...).
    pub status: String,
    /// When the gateway recorded it (RFC 3339, UTC).
    pub at: String,
    /// What produced it: `EnrollmentAccepted` or the event's type.
    pub event: String,
}

/// A message attribute beside the three every message carries (`type`, `correlation_id`,
/// `traceparent`: [`super::bus::Outgoing`]), which a type declares ([`MessageType::attributes`])
/// so that a subscription of its topic can filter on it ([`subscription_filter`]) and leave out,
/// unreceived, what its consumer has no use for. A String attribute, one of `values`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute {
    pub name: &'static str,
    pub values: &'static [&'static str],
    pub description: &'static str,
}

/// `EnrollmentStatusChanged`'s `callback`: whether the enrollment has a callback its status
/// events are delivered to (a `callback_url` whose receiver has not answered 410), as the
/// gateway's transaction that wrote the event saw it.
pub const CALLBACK: Attribute = Attribute {
    name: "callback",
    values: &[CALLBACK_YES, CALLBACK_NO],
    description: "`yes` when the enrollment has a callback its status events are delivered to, `no` when it has none (or its receiver answered 410): what the webhook deliveries' subscription filters on.",
};
pub const CALLBACK_YES: &str = "yes";
pub const CALLBACK_NO: &str = "no";

/// What the subscription of `queue`, a queue subscribed to integration events, requires of a
/// message besides its `type`: an attribute and the one value it admits (a message without the
/// attribute is left out too). Other subscriptions of the topic still get every message: the
/// attribute only spares this consumer the receives it has no use for, and the consumer still
/// checks for itself.
pub const fn subscription_filter(queue: Endpoint) -> Option<(Attribute, &'static str)> {
    match queue {
        Endpoint::WebhookDeliveries => Some((CALLBACK, CALLBACK_YES)),
        _ => None,
    }
}

/// Asks the customer-api for a customer's record. Answered with `CustomerReply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GetCustomer {
    pub customer_id: Uuid,
    /// When the asking gateway stops waiting: a query received later is dropped unanswered.
    pub reply_by: DateTime<Utc>,
}

/// Asks the transaction-api for a customer's balance and ledger. Answered with `PointsReply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GetPoints {
    pub customer_id: Uuid,
    /// When the asking gateway stops waiting: a query received later is dropped unanswered.
    pub reply_by: DateTime<Utc>,
}

/// The customer-api's answer to `GetCustomer`: the record, or null when there is no such
/// customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerReply {
    /// The query's `reply_by`, echoed: whichever gateway instance receives the reply tells a
    /// late one without asking the others.
    pub reply_by: DateTime<Utc>,
    pub customer: Option<CustomerRecord>,
}

/// A customer as the customer-api holds it (times as stored: RFC 3339, UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerRecord {
    pub id: String,
    pub enrollment_id: String,
    pub name: String,
    pub email: String,
    pub status: String,
    pub enrolled_at: String,
    pub unenrolled_at: Option<String>,
    pub unenroll_reason: Option<String>,
}

/// The transaction-api's answer to `GetPoints`. A customer the ledger has never seen has a zero
/// balance and an empty ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PointsReply {
    /// The query's `reply_by`, echoed (see `CustomerReply`).
    pub reply_by: DateTime<Utc>,
    pub points: PointsRecord,
}

/// A customer's balance and ledger, oldest entry first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PointsRecord {
    pub customer_id: String,
    pub balance: i64,
    pub ledger: Vec<LedgerEntry>,
}

/// One row of the ledger: a bonus or its reversal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LedgerEntry {
    pub id: String,
    pub enrollment_id: String,
    pub kind: String,
    pub points: i64,
    pub posted_at: String,
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
    ResendConfirmation(ResendConfirmation),
    ConfirmEnrollment(ConfirmEnrollment),
    ForgetEnrollment(ForgetEnrollment),
    ErasePersonalData(ErasePersonalData),
    Unenroll(Unenroll),
    PostBonusPoints(PostBonusPoints),
    ReverseBonusPoints(ReverseBonusPoints),
    ConfirmationRequested(ConfirmationRequested),
    ConfirmationLapsed(ConfirmationLapsed),
    CustomerEnrolled(CustomerEnrolled),
    EnrollmentRejected(EnrollmentRejected),
    CustomerUnenrolled(CustomerUnenrolled),
    BonusPointsPosted(BonusPointsPosted),
    BonusPointsFailed(BonusPointsFailed),
    BonusPointsReversed(BonusPointsReversed),
    EnrollmentStatusChanged(EnrollmentStatusChanged),
    GetCustomer(GetCustomer),
    GetPoints(GetPoints),
    CustomerReply(CustomerReply),
    PointsReply(PointsReply),
}

/// A command asks one service to act; an event tells whoever subscribes what happened. A query
/// asks one service what it holds, and its reply answers the one that asked. An integration
/// event tells the world outside the saga what the saga did: published to its sender's topic for
/// queues that are no service's saga queue ([`Route::subscribers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Command,
    Event,
    Query,
    Reply,
    Integration,
}

impl Kind {
    /// Commands, events and integration events: sent through an outbox. Only commands and
    /// events are routed by the gateway's table (an integration event has no receiving
    /// service). Queries and replies are neither.
    pub const fn is_saga(self) -> bool {
        matches!(self, Self::Command | Self::Event | Self::Integration)
    }
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
    /// The queues subscribed to an integration event (no service's saga queue); empty for the
    /// other kinds, whose receivers' queues say where they arrive.
    pub subscribers: &'static [Endpoint],
}

impl Route {
    const fn command(sender: Participant, receiver: &'static [Participant; 1]) -> Self {
        Self {
            kind: Kind::Command,
            sender,
            receivers: receiver,
            destination: receiver[0].queue(),
            subscribers: &[],
        }
    }

    /// To the receiver's request/reply queue; `kind` is a query or its reply.
    const fn lookup(kind: Kind, sender: Participant, receiver: &'static [Participant; 1]) -> Self {
        Self {
            kind,
            sender,
            receivers: receiver,
            destination: receiver[0].lookups(),
            subscribers: &[],
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
            subscribers: &[],
        }
    }

    /// To the sender's topic, for the queues `subscribers`, which belong to no service's saga.
    const fn integration(sender: Participant, subscribers: &'static [Endpoint]) -> Self {
        let Some(destination) = sender.topic() else {
            panic!("a service that sends events needs a topic");
        };
        Self {
            kind: Kind::Integration,
            sender,
            receivers: &[],
            destination,
            subscribers,
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
            Self::Enroll
            | Self::ResendConfirmation
            | Self::ConfirmEnrollment
            | Self::ForgetEnrollment
            | Self::ErasePersonalData
            | Self::Unenroll => const { Route::command(Gateway, &[CustomerApi]) },
            Self::PostBonusPoints | Self::ReverseBonusPoints => const { Route::command(Gateway, &[TransactionApi]) },
            Self::ConfirmationRequested
            | Self::ConfirmationLapsed
            | Self::CustomerEnrolled
            | Self::EnrollmentRejected
            | Self::CustomerUnenrolled => const { Route::event(CustomerApi, &[Gateway]) },
            Self::BonusPointsPosted | Self::BonusPointsFailed | Self::BonusPointsReversed => {
                const { Route::event(TransactionApi, &[Gateway]) }
            }
            Self::EnrollmentStatusChanged => const { Route::integration(Gateway, &[Endpoint::WebhookDeliveries]) },
            Self::GetCustomer => const { Route::lookup(Kind::Query, Gateway, &[CustomerApi]) },
            Self::GetPoints => const { Route::lookup(Kind::Query, Gateway, &[TransactionApi]) },
            Self::CustomerReply => const { Route::lookup(Kind::Reply, CustomerApi, &[Gateway]) },
            Self::PointsReply => const { Route::lookup(Kind::Reply, TransactionApi, &[Gateway]) },
        }
    }

    /// The attributes it carries beside `type`, `correlation_id` and `traceparent` ([`Attribute`]).
    pub const fn attributes(self) -> &'static [Attribute] {
        match self {
            Self::EnrollmentStatusChanged => &[CALLBACK],
            _ => &[],
        }
    }

    /// The queue or topic the outbox sends this type to.
    pub const fn destination(self) -> Endpoint {
        self.route().destination
    }

    /// Every saga type (command or event) `participant` receives, in declaration order.
    pub fn received_by(participant: Participant) -> impl Iterator<Item = MessageType> {
        <Self as strum::VariantArray>::VARIANTS
            .iter()
            .copied()
            .filter(move |t| t.route().kind.is_saga() && t.route().receivers.contains(&participant))
    }
}

/// The queues and topics `sender`'s outbox sends to (commands and events), each once. Queries
/// and replies are sent straight to the bus, not through an outbox.
pub fn destinations_of(sender: Participant) -> Vec<Endpoint> {
    let mut destinations: Vec<Endpoint> = <MessageType as strum::VariantArray>::VARIANTS
        .iter()
        .map(|t| t.route())
        .filter(|route| route.sender == sender && route.kind.is_saga())
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

    /// Where it goes ([`MessageType::route`]).
    pub fn destination(&self) -> Endpoint {
        self.message_type().destination()
    }

    /// The customer the message is about, for the messages that name one: receivers compare it
    /// with what they know of the enrollment (the correlation id) before acting on it.
    pub fn customer_id(&self) -> Option<Uuid> {
        match self {
            Self::Enroll(_)
            | Self::ResendConfirmation(_)
            | Self::ConfirmEnrollment(_)
            | Self::ForgetEnrollment(_)
            | Self::ErasePersonalData(_)
            | Self::ConfirmationRequested(_)
            | Self::ConfirmationLapsed(_)
            | Self::EnrollmentRejected(_)
            | Self::EnrollmentStatusChanged(_) => None,
            Self::Unenroll(m) => Some(m.customer_id),
            Self::PostBonusPoints(m) => Some(m.customer_id),
            Self::ReverseBonusPoints(m) => Some(m.customer_id),
            Self::CustomerEnrolled(m) => Some(m.customer_id),
            Self::CustomerUnenrolled(m) => Some(m.customer_id),
            Self::BonusPointsPosted(m) => Some(m.customer_id),
            Self::BonusPointsFailed(m) => Some(m.customer_id),
            Self::BonusPointsReversed(m) => Some(m.customer_id),
            // Lookups change nothing; their answers name whom they are about.
            Self::GetCustomer(_) | Self::GetPoints(_) | Self::CustomerReply(_) | Self::PointsReply(_) => None,
        }
    }

    /// A query's or a reply's deadline: when the asker stops waiting. `None` for the saga's
    /// messages.
    pub fn reply_by(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::GetCustomer(q) => Some(q.reply_by),
            Self::GetPoints(q) => Some(q.reply_by),
            Self::CustomerReply(r) => Some(r.reply_by),
            Self::PointsReply(r) => Some(r.reply_by),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    /// A subscription filters on an attribute every type it receives declares, admitting one of
    /// its values; no type declares one of the three every message carries, or one twice.
    #[test]
    fn subscription_filters_read_attributes_their_types_declare() {
        for endpoint in Endpoint::VARIANTS {
            let Some((attribute, admitted)) = subscription_filter(*endpoint) else {
                continue;
            };
            assert!(attribute.values.contains(&admitted), "{endpoint}: {admitted}");
            let carried: Vec<&MessageType> = MessageType::VARIANTS
                .iter()
                .filter(|t| t.route().subscribers.contains(endpoint))
                .collect();
            assert!(!carried.is_empty(), "{endpoint} filters but nothing is routed to it");
            for message_type in carried {
                assert!(
                    message_type.attributes().contains(&attribute),
                    "{message_type} lacks {}",
                    attribute.name
                );
            }
        }
        for message_type in MessageType::VARIANTS {
            let names: Vec<&str> = message_type.attributes().iter().map(|a| a.name).collect();
            for (i, name) in names.iter().enumerate() {
                assert!(
                    !["type", "correlation_id", "traceparent"].contains(name),
                    "{message_type}: {name}"
                );
                assert!(!names[..i].contains(name), "{message_type}: {name} twice");
            }
        }
    }

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
        assert_eq!(MessageType::VARIANTS.len(), 21);
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
                Kind::Integration => {
                    assert!(route.receivers.is_empty(), "{message_type}");
                    assert_eq!(Some(route.destination), route.sender.topic());
                    assert!(!route.subscribers.is_empty(), "{message_type}: nobody subscribes");
                    let saga_queues: Vec<Endpoint> = Participant::VARIANTS.iter().map(|p| p.queue()).collect();
                    assert!(route.subscribers.iter().all(|q| !saga_queues.contains(q)));
                }
                Kind::Query | Kind::Reply => {
                    assert_eq!(route.receivers.len(), 1, "{message_type}");
                    assert_eq!(route.destination, route.receivers[0].lookups());
                    let saga_queues = Participant::VARIANTS.iter().map(|p| p.queue());
                    assert!(!saga_queues.into_iter().any(|q| q == route.destination));
                }
            }
        }
        let lookups: Vec<_> = MessageType::received_by(Participant::Gateway).collect();
        assert!(!lookups.contains(&MessageType::CustomerReply));
        assert!(!destinations_of(Participant::Gateway).contains(&Endpoint::CustomerQueries));
        let gateway: Vec<_> = MessageType::received_by(Participant::Gateway).collect();
        assert!(gateway.contains(&MessageType::CustomerEnrolled));
        assert!(!gateway.contains(&MessageType::Enroll));
    }
}
