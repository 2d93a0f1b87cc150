//! The enrollment saga as a state machine. [`route`] is the one routing table: for the saga's
//! current status and an incoming event it gives the next status, what to record, and the command
//! to send. Anything not in the table (a late, duplicated or out-of-order event) changes nothing.
//!
//! ```text
//! pending --ConfirmationRequested--> awaiting_confirmation --(the person confirms)--> confirmed
//!    |                                      |                                           |
//!    |                                      +--(deadline passes)--> expired             |
//!    |                                   expired <--ConfirmationLapsed (held no more)---+
//!    |                                                                                  |
//!    +--CustomerEnrolled (EMAIL_CONFIRMATION=off)--+      +--CustomerEnrolled-----------+
//!    +--EnrollmentRejected--> rejected             |      |   (confirmed --EnrollmentRejected--> rejected)
//!                                                  v      v
//!                                                  enrolled --BonusPointsPosted--> completed
//!                                                     +--BonusPointsFailed--> compensating --CustomerUnenrolled--> rolled_back
//! ```
//!
//! Two moves are not events: a person's confirmation (`POST /api/confirmations`, which sends
//! `ConfirmEnrollment`) and the confirmation deadline (the expiry scan, [`crate::expiry`], which
//! sends `ForgetEnrollment`). Both take the saga out of a status conditionally, as the handler
//! does, so a late event and either of them cannot both move it.
//!
//! Late events never move a saga backwards. The one late event with an effect to undo is a
//! `BonusPointsPosted` that arrives once the saga is `compensating` or `rolled_back` (a second
//! `PostBonusPoints` succeeded, say after an operator redrove it with a raised budget): the status
//! stays, and a `ReverseBonusPoints` command takes the points back, so an unenrolled customer
//! never keeps them. Its confirmation, `BonusPointsReversed`, is recorded in the history.

mod handler;

pub use handler::SagaHandler;

use serde::{Deserialize, Serialize};
use utility::messaging::message::{BonusFailure, Message, MessageType, PostBonusPoints, ReverseBonusPoints, Unenroll};

/// What an open status waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaits {
    /// A service to handle this command (its receiver, [`MessageType::route`]): a saga waiting
    /// on one longer than the stall deadline is stalled.
    Command(MessageType),
    /// A person: the owner of the address, to follow the link mailed to them. Hours are normal
    /// here, so such a saga is never stalled; its confirmation deadline ends it instead.
    Person,
}
use uuid::Uuid;

/// The saga's statuses: the one declaration. The snake-case names are what the API shows and the
/// database stores; everything else said of a status (terminal or open, what an open one waits
/// for, its label on the enrollment page, the SQL that lists open sagas, the metric filters of
/// `infra/app.yaml`) is derived from, or checked against, the methods below.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    strum::VariantArray,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Status {
    Pending,
    AwaitingConfirmation,
    Confirmed,
    Enrolled,
    Completed,
    Rejected,
    Compensating,
    RolledBack,
    Expired,
}

impl Status {
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// What an open saga waits for: a command to be handled, or a person; `None` for a terminal
    /// status, which waits for nothing.
    pub fn waiting_for(self) -> Option<Awaits> {
        match self {
            Self::Pending => Some(Awaits::Command(MessageType::Enroll)),
            Self::AwaitingConfirmation => Some(Awaits::Person),
            Self::Confirmed => Some(Awaits::Command(MessageType::ConfirmEnrollment)),
            Self::Enrolled => Some(Awaits::Command(MessageType::PostBonusPoints)),
            Self::Compensating => Some(Awaits::Command(MessageType::Unenroll)),
            Self::Completed | Self::Rejected | Self::RolledBack | Self::Expired => None,
        }
    }

    /// The command an open saga waits to see handled; `None` when it waits on a person or for
    /// nothing.
    pub fn awaited_command(self) -> Option<MessageType> {
        match self.waiting_for() {
            Some(Awaits::Command(command)) => Some(command),
            Some(Awaits::Person) | None => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        self.waiting_for().is_none()
    }

    /// Waits on a person rather than on the system.
    pub fn waits_on_person(self) -> bool {
        self.waiting_for() == Some(Awaits::Person)
    }

    /// Can stall: open and waiting on a command. The stall scan looks at these only.
    pub fn can_stall(self) -> bool {
        self.awaited_command().is_some()
    }

    /// How the enrollment page names the status.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "Received",
            Self::AwaitingConfirmation => "Waiting for the e-mail confirmation",
            Self::Confirmed => "Confirmed",
            Self::Enrolled => "Customer created",
            Self::Completed => "Completed",
            Self::Rejected => "Rejected",
            Self::Compensating => "Undoing the enrollment",
            Self::RolledBack => "Rolled back",
            Self::Expired => "Expired (not confirmed in time)",
        }
    }

    /// Every status, in declaration order.
    pub fn all() -> &'static [Status] {
        <Self as strum::VariantArray>::VARIANTS
    }

    /// The terminal statuses: the outcomes a saga can end in.
    pub fn terminal() -> impl Iterator<Item = Status> {
        Self::all().iter().copied().filter(|s| s.is_terminal())
    }

    /// The open statuses: a saga in one of them is still moving (or stalled, or waiting on a
    /// person).
    pub fn open() -> impl Iterator<Item = Status> {
        Self::all().iter().copied().filter(|s| !s.is_terminal())
    }

    /// The statuses a saga can stall in: those that wait on a command.
    pub fn stallable() -> impl Iterator<Item = Status> {
        Self::all().iter().copied().filter(|s| s.can_stall())
    }

    /// The statuses a person's confirmation takes a saga out of (to [`Status::Confirmed`]), and
    /// the confirmation deadline (to [`Status::Expired`]): waiting for the mail to be sent, or for
    /// the person. A link can be followed before the gateway heard that its mail went out.
    pub fn confirmable() -> [Status; 2] {
        [Self::Pending, Self::AwaitingConfirmation]
    }
}

impl TryFrom<String> for Status {
    type Error = strum::ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

/// What an event does to a saga.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub next: Status,
    pub customer_id: Option<Uuid>,
    pub bonus_points: Option<i64>,
    /// The services' own words, for operators.
    pub reason: Option<String>,
    /// Whether the address already had a customer (`ConfirmationRequested`): operator view only.
    pub already_enrolled: Option<bool>,
    /// The same, fit for the public enrollment view: fixed words per outcome, so nothing personal
    /// or internal can reach a URL that leaks through logs and referrers.
    pub public_reason: Option<&'static str>,
    /// The command to send (its route says where).
    pub command: Option<Message>,
}

impl Step {
    fn to(next: Status) -> Self {
        Self {
            next,
            customer_id: None,
            bonus_points: None,
            reason: None,
            already_enrolled: None,
            public_reason: None,
            command: None,
        }
    }
}

/// Whether `event` may be applied to a saga whose customer is `customer` (`None` until
/// `CustomerEnrolled`): an event naming another customer than the one the saga recorded is
/// refused (it goes to the DLQ with this reason), whatever the saga's status. Only the
/// customer-api and transaction-api may publish to the topics, but a producer with a bug, or one
/// an attacker controls, must not move a saga with another saga's customer.
pub fn check_customer(customer: Option<Uuid>, event: &Message) -> Result<(), String> {
    match (customer, event.customer_id()) {
        (Some(known), Some(named)) if known != named => Err(format!(
            "`{}` names customer {named}, but the enrollment's customer is {known}",
            event.type_name()
        )),
        _ => Ok(()),
    }
}

/// Why a confirmed enrollment ended `expired` after all, for the public view.
pub const LAPSED_REASON: &str = "the confirmation arrived after the enrollment had been forgotten; please enroll again";

/// The routing table. `None`: the event does not apply to a saga in `status`.
pub fn route(status: Status, event: &Message) -> Option<Step> {
    use Status::*;
    Some(match (status, event) {
        (Pending, Message::ConfirmationRequested(e)) => Step {
            already_enrolled: Some(e.already_enrolled),
            ..Step::to(AwaitingConfirmation)
        },
        (Confirmed, Message::ConfirmationLapsed(_)) => Step {
            reason: Some(String::from(
                "the customer-api no longer held the enrollment when the confirmation reached it",
            )),
            public_reason: Some(LAPSED_REASON),
            ..Step::to(Expired)
        },
        (Pending | Confirmed, Message::CustomerEnrolled(e)) => Step {
            customer_id: Some(e.customer_id),
            command: Some(Message::PostBonusPoints(PostBonusPoints {
                customer_id: e.customer_id,
            })),
            ..Step::to(Enrolled)
        },
        (Pending | Confirmed, Message::EnrollmentRejected(e)) => Step {
            reason: Some(e.reason.clone()),
            public_reason: Some("this e-mail address is already enrolled"),
            ..Step::to(Rejected)
        },
        (Enrolled, Message::BonusPointsPosted(e)) => Step {
            bonus_points: Some(e.points),
            ..Step::to(Completed)
        },
        (Enrolled, Message::BonusPointsFailed(e)) => Step {
            reason: Some(e.reason.clone()),
            public_reason: Some(match e.cause {
                BonusFailure::BudgetExhausted => {
                    "the enrollment bonus could not be granted: the campaign's budget is spent"
                }
                BonusFailure::Other => "the enrollment bonus could not be granted",
            }),
            command: Some(Message::Unenroll(Unenroll {
                customer_id: e.customer_id,
                reason: format!("enrollment bonus could not be posted: {}", e.reason),
            })),
            ..Step::to(Compensating)
        },
        (Compensating, Message::CustomerUnenrolled(_)) => Step::to(RolledBack),
        (Compensating | RolledBack, Message::BonusPointsPosted(e)) => Step {
            command: Some(Message::ReverseBonusPoints(ReverseBonusPoints {
                customer_id: e.customer_id,
                reason: format!("bonus posted after the enrollment had failed ({status})"),
            })),
            ..Step::to(status)
        },
        (Compensating | RolledBack, Message::BonusPointsReversed(_)) => Step::to(status),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use utility::domain::{CustomerName, Email};
    use utility::messaging::message::*;

    fn events(customer_id: Uuid) -> Vec<Message> {
        let email = Email::parse("a@b.co").unwrap();
        vec![
            Message::CustomerEnrolled(CustomerEnrolled {
                customer_id,
                name: CustomerName::parse("A").unwrap(),
                email: email.clone(),
            }),
            Message::EnrollmentRejected(EnrollmentRejected {
                email,
                reason: "dup".into(),
            }),
            Message::BonusPointsPosted(BonusPointsPosted {
                customer_id,
                points: 500,
                balance: 500,
            }),
            Message::BonusPointsFailed(BonusPointsFailed {
                customer_id,
                reason: "budget".into(),
                cause: BonusFailure::BudgetExhausted,
            }),
            Message::CustomerUnenrolled(CustomerUnenrolled {
                customer_id,
                reason: "budget".into(),
            }),
        ]
    }

    #[test]
    fn happy_path_and_rollback_follow_the_table() {
        let id = Uuid::now_v7();
        let e = events(id);
        let step = route(Status::Pending, &e[0]).unwrap();
        assert_eq!(step.next, Status::Enrolled);
        assert_eq!(step.customer_id, Some(id));
        assert!(matches!(step.command, Some(Message::PostBonusPoints(_))));
        assert_eq!(route(Status::Enrolled, &e[2]).unwrap().next, Status::Completed);
        let step = route(Status::Enrolled, &e[3]).unwrap();
        assert_eq!(step.next, Status::Compensating);
        assert!(matches!(step.command, Some(Message::Unenroll(ref u)) if u.customer_id == id));
        assert_eq!(route(Status::Compensating, &e[4]).unwrap().next, Status::RolledBack);
        assert_eq!(route(Status::Pending, &e[1]).unwrap().next, Status::Rejected);
    }

    #[test]
    fn confirmation_waits_on_a_person_and_then_goes_on_as_before() {
        let id = Uuid::now_v7();
        let requested = |already_enrolled| Message::ConfirmationRequested(ConfirmationRequested { already_enrolled });
        let step = route(Status::Pending, &requested(true)).unwrap();
        assert_eq!(step.next, Status::AwaitingConfirmation);
        assert_eq!(step.already_enrolled, Some(true));
        assert_eq!(step.public_reason, None, "the public view must not tell the two apart");
        assert_eq!(
            route(Status::Pending, &requested(false)).unwrap().already_enrolled,
            Some(false)
        );
        assert!(Status::AwaitingConfirmation.waits_on_person());
        assert!(!Status::AwaitingConfirmation.can_stall());
        assert!(!Status::AwaitingConfirmation.is_terminal());
        // Nothing an event brings confirms: only a person does (outside the table).
        for event in events(id).iter().chain([&requested(false)]) {
            assert_eq!(
                route(Status::AwaitingConfirmation, event),
                None,
                "{}",
                event.type_name()
            );
        }
        let e = events(id);
        let step = route(Status::Confirmed, &e[0]).unwrap();
        assert_eq!(step.next, Status::Enrolled);
        assert!(matches!(step.command, Some(Message::PostBonusPoints(_))));
        assert_eq!(route(Status::Confirmed, &e[1]).unwrap().next, Status::Rejected);
        assert_eq!(route(Status::Confirmed, &requested(false)), None);
        assert_eq!(
            Status::Confirmed.waiting_for(),
            Some(Awaits::Command(MessageType::ConfirmEnrollment))
        );
        assert!(Status::Expired.is_terminal());
        assert_eq!(route(Status::Expired, &requested(false)), None);
        // A confirmation the customer-api could no longer honour ends the saga, and only then.
        let lapsed = Message::ConfirmationLapsed(ConfirmationLapsed {});
        let step = route(Status::Confirmed, &lapsed).unwrap();
        assert_eq!(step.next, Status::Expired);
        assert_eq!(step.public_reason, Some(LAPSED_REASON));
        for status in Status::all().iter().filter(|s| **s != Status::Confirmed) {
            assert_eq!(route(*status, &lapsed), None, "{status}");
        }
    }

    #[test]
    fn terminal_states_never_move() {
        for status in Status::terminal() {
            for event in events(Uuid::now_v7()) {
                if let Some(step) = route(status, &event) {
                    assert_eq!(step.next, status, "{status} moved on {}", event.type_name());
                }
            }
        }
    }

    #[test]
    fn a_late_bonus_after_failure_is_reversed_without_moving_the_saga() {
        let id = Uuid::now_v7();
        let late = &events(id)[2];
        for status in [Status::Compensating, Status::RolledBack] {
            let step = route(status, late).unwrap();
            assert_eq!(step.next, status);
            assert!(matches!(step.command, Some(Message::ReverseBonusPoints(ref r)) if r.customer_id == id));
        }
        assert_eq!(route(Status::Completed, late), None);
        let reversed = Message::BonusPointsReversed(BonusPointsReversed {
            customer_id: id,
            points: 500,
            balance: 0,
        });
        assert_eq!(route(Status::RolledBack, &reversed).unwrap().command, None);
    }

    #[test]
    fn events_naming_another_customer_are_refused() {
        let (saga_customer, stranger) = (Uuid::now_v7(), Uuid::now_v7());
        for event in events(stranger).iter().filter(|e| e.customer_id().is_some()) {
            let refused = check_customer(Some(saga_customer), event).unwrap_err();
            assert!(refused.contains(&stranger.to_string()), "{refused}");
            assert_eq!(check_customer(None, event), Ok(()));
        }
        for event in events(saga_customer) {
            assert_eq!(check_customer(Some(saga_customer), &event), Ok(()));
        }
    }

    #[test]
    fn events_out_of_order_change_nothing() {
        let e = events(Uuid::now_v7());
        assert_eq!(route(Status::Pending, &e[2]), None);
        assert_eq!(route(Status::Pending, &e[4]), None);
        assert_eq!(route(Status::Enrolled, &e[0]), None);
        assert_eq!(route(Status::Enrolled, &e[4]), None);
        assert_eq!(route(Status::Compensating, &e[0]), None);
    }

    #[test]
    fn statuses_round_trip_their_names() {
        use strum::VariantArray;
        let names: Vec<&str> = Status::VARIANTS.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "pending",
                "awaiting_confirmation",
                "confirmed",
                "enrolled",
                "completed",
                "rejected",
                "compensating",
                "rolled_back",
                "expired"
            ]
        );
        for status in Status::VARIANTS {
            assert_eq!(status.name().parse::<Status>().unwrap(), *status);
            assert_eq!(serde_json::to_value(status).unwrap(), status.name());
        }
        assert!("done".parse::<Status>().is_err());
    }

    /// One message of each type, whatever its payload.
    fn sample(message_type: MessageType) -> Message {
        let id = Uuid::now_v7();
        let name = CustomerName::parse("A").unwrap();
        let email = Email::parse("a@b.co").unwrap();
        let reason = String::from("r");
        match message_type {
            MessageType::Enroll => Message::Enroll(Enroll {
                name,
                email,
                confirmation: None,
            }),
            MessageType::ResendConfirmation => Message::ResendConfirmation(ResendConfirmation {
                confirmation: ConfirmationLink {
                    url: String::from("https://example.com/confirm#t"),
                    expires_at: chrono::Utc::now(),
                },
            }),
            MessageType::ConfirmEnrollment => Message::ConfirmEnrollment(ConfirmEnrollment {}),
            MessageType::ForgetEnrollment => Message::ForgetEnrollment(ForgetEnrollment { reason: reason.clone() }),
            MessageType::ErasePersonalData => Message::ErasePersonalData(ErasePersonalData {}),
            MessageType::ConfirmationRequested => Message::ConfirmationRequested(ConfirmationRequested {
                already_enrolled: false,
            }),
            MessageType::ConfirmationLapsed => Message::ConfirmationLapsed(ConfirmationLapsed {}),
            MessageType::Unenroll => Message::Unenroll(Unenroll {
                customer_id: id,
                reason,
            }),
            MessageType::PostBonusPoints => Message::PostBonusPoints(PostBonusPoints { customer_id: id }),
            MessageType::ReverseBonusPoints => Message::ReverseBonusPoints(ReverseBonusPoints {
                customer_id: id,
                reason,
            }),
            MessageType::CustomerEnrolled => Message::CustomerEnrolled(CustomerEnrolled {
                customer_id: id,
                name,
                email,
            }),
            MessageType::EnrollmentRejected => Message::EnrollmentRejected(EnrollmentRejected { email, reason }),
            MessageType::CustomerUnenrolled => Message::CustomerUnenrolled(CustomerUnenrolled {
                customer_id: id,
                reason,
            }),
            MessageType::BonusPointsPosted => Message::BonusPointsPosted(BonusPointsPosted {
                customer_id: id,
                points: 1,
                balance: 1,
            }),
            MessageType::BonusPointsFailed => Message::BonusPointsFailed(BonusPointsFailed {
                customer_id: id,
                reason,
                cause: BonusFailure::Other,
            }),
            MessageType::BonusPointsReversed => Message::BonusPointsReversed(BonusPointsReversed {
                customer_id: id,
                points: 1,
                balance: 0,
            }),
            MessageType::EnrollmentStatusChanged => {
                Message::EnrollmentStatusChanged(utility::messaging::message::EnrollmentStatusChanged {
                    sequence: 1,
                    status: String::from("pending"),
                    at: String::from("2026-12-06T00:00:00.000Z"),
                    event: String::from("EnrollmentAccepted"),
                })
            }
            MessageType::GetCustomer => Message::GetCustomer(GetCustomer {
                customer_id: id,
                reply_by: chrono::Utc::now(),
            }),
            MessageType::GetPoints => Message::GetPoints(GetPoints {
                customer_id: id,
                reply_by: chrono::Utc::now(),
            }),
            MessageType::CustomerReply => Message::CustomerReply(CustomerReply {
                reply_by: chrono::Utc::now(),
                customer: None,
            }),
            MessageType::PointsReply => Message::PointsReply(PointsReply {
                reply_by: chrono::Utc::now(),
                points: PointsRecord {
                    customer_id: id.to_string(),
                    balance: 0,
                    ledger: Vec::new(),
                },
            }),
        }
    }

    /// The table has rows for exactly the saga types the gateway is declared to receive, so the
    /// subscriptions (held to the declarations by `infra/tests/wire_contract.rs`) bring it every
    /// event it routes and nothing else; the replies to its lookups never enter it.
    #[test]
    fn the_table_routes_exactly_the_types_the_gateway_receives() {
        use strum::VariantArray;
        use utility::messaging::Participant;
        let received: Vec<MessageType> = MessageType::received_by(Participant::Gateway).collect();
        for message_type in MessageType::VARIANTS {
            let message = sample(*message_type);
            let routed = Status::all().iter().any(|status| route(*status, &message).is_some());
            assert_eq!(
                routed,
                received.contains(message_type),
                "{message_type}: the routing table and the message's declared receivers disagree"
            );
        }
    }

    /// Every command the table sends is one the gateway is declared to send, and every open
    /// status waits for a command the table sends on the way into it.
    #[test]
    fn commands_and_waits_agree_with_the_declarations() {
        use utility::messaging::Participant;
        use utility::messaging::message::Kind;
        let mut sent = Vec::new();
        for status in Status::all() {
            for message_type in <MessageType as strum::VariantArray>::VARIANTS {
                if let Some(step) = route(*status, &sample(*message_type))
                    && let Some(command) = step.command
                {
                    let declared = command.message_type().route();
                    assert_eq!(declared.kind, Kind::Command, "{}", command.type_name());
                    assert_eq!(declared.sender, Participant::Gateway, "{}", command.type_name());
                    sent.push(command.message_type());
                }
            }
        }
        sent.push(MessageType::Enroll); // sent on acceptance, outside the table
        sent.push(MessageType::ConfirmEnrollment); // sent on a person's confirmation, outside it
        for status in Status::stallable() {
            let awaited = status
                .awaited_command()
                .expect("a status that can stall waits for a command");
            assert!(
                sent.contains(&awaited),
                "{status} waits for {awaited}, which nothing sends"
            );
        }
    }
}
