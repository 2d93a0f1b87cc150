//! The enrollment saga as a state machine. [`route`] is the one routing table: for the saga's
//! current status and an incoming event it gives the next status, what to record, and the command
//! to send. Anything not in the table (a late, duplicated or out-of-order event) changes nothing.
//!
//! ```text
//! pending --CustomerEnrolled--> enrolled --BonusPointsPosted--> completed
//!    |                              |
//!    +--EnrollmentRejected--> rejected
//!                                   +--BonusPointsFailed--> compensating --CustomerUnenrolled--> rolled_back
//! ```
//!
//! Late events never move a saga backwards. The one late event with an effect to undo is a
//! `BonusPointsPosted` that arrives once the saga is `compensating` or `rolled_back` (a second
//! `PostBonusPoints` succeeded, say after an operator redrove it with a raised budget): the status
//! stays, and a `ReverseBonusPoints` command takes the points back, so an unenrolled customer
//! never keeps them. Its confirmation, `BonusPointsReversed`, is recorded in the history.

mod handler;

pub use handler::SagaHandler;

use serde::{Deserialize, Serialize};
use utility::messaging::Endpoint;
use utility::messaging::message::{BonusFailure, Message, MessageType, PostBonusPoints, ReverseBonusPoints, Unenroll};
use uuid::Uuid;

/// The saga's statuses; the snake-case names are what the API shows and the database stores.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
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
    Enrolled,
    Completed,
    Rejected,
    Compensating,
    RolledBack,
}

impl Status {
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Rejected | Self::RolledBack)
    }
}

/// The event types [`route`] has rows for. The gateway's SNS subscriptions in
/// `infra/messaging.yaml` filter on exactly these (a test parses the template to hold it so).
pub const ROUTED_EVENTS: [MessageType; 6] = [
    MessageType::CustomerEnrolled,
    MessageType::EnrollmentRejected,
    MessageType::CustomerUnenrolled,
    MessageType::BonusPointsPosted,
    MessageType::BonusPointsFailed,
    MessageType::BonusPointsReversed,
];

/// What an event does to a saga.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub next: Status,
    pub customer_id: Option<Uuid>,
    pub bonus_points: Option<i64>,
    /// The services' own words, for operators.
    pub reason: Option<String>,
    /// The same, fit for the public enrollment view: fixed words per outcome, so nothing personal
    /// or internal can reach a URL that leaks through logs and referrers.
    pub public_reason: Option<&'static str>,
    /// The command to send, and where.
    pub command: Option<(Endpoint, Message)>,
}

impl Step {
    fn to(next: Status) -> Self {
        Self {
            next,
            customer_id: None,
            bonus_points: None,
            reason: None,
            public_reason: None,
            command: None,
        }
    }
}

/// The routing table. `None`: the event does not apply to a saga in `status`.
pub fn route(status: Status, event: &Message) -> Option<Step> {
    use Status::*;
    Some(match (status, event) {
        (Pending, Message::CustomerEnrolled(e)) => Step {
            customer_id: Some(e.customer_id),
            command: Some((
                Endpoint::TransactionCommands,
                Message::PostBonusPoints(PostBonusPoints {
                    customer_id: e.customer_id,
                }),
            )),
            ..Step::to(Enrolled)
        },
        (Pending, Message::EnrollmentRejected(e)) => Step {
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
            command: Some((
                Endpoint::CustomerCommands,
                Message::Unenroll(Unenroll {
                    customer_id: e.customer_id,
                    reason: format!("enrollment bonus could not be posted: {}", e.reason),
                }),
            )),
            ..Step::to(Compensating)
        },
        (Compensating, Message::CustomerUnenrolled(_)) => Step::to(RolledBack),
        (Compensating | RolledBack, Message::BonusPointsPosted(e)) => Step {
            command: Some((
                Endpoint::TransactionCommands,
                Message::ReverseBonusPoints(ReverseBonusPoints {
                    customer_id: e.customer_id,
                    reason: format!("bonus posted after the enrollment had failed ({status})"),
                }),
            )),
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
        assert!(matches!(
            step.command,
            Some((Endpoint::TransactionCommands, Message::PostBonusPoints(_)))
        ));
        assert_eq!(route(Status::Enrolled, &e[2]).unwrap().next, Status::Completed);
        let step = route(Status::Enrolled, &e[3]).unwrap();
        assert_eq!(step.next, Status::Compensating);
        assert!(
            matches!(step.command, Some((Endpoint::CustomerCommands, Message::Unenroll(ref u))) if u.customer_id == id)
        );
        assert_eq!(route(Status::Compensating, &e[4]).unwrap().next, Status::RolledBack);
        assert_eq!(route(Status::Pending, &e[1]).unwrap().next, Status::Rejected);
    }

    #[test]
    fn terminal_states_never_move() {
        for status in [Status::Completed, Status::Rejected, Status::RolledBack] {
            assert!(status.is_terminal());
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
            assert!(
                matches!(step.command, Some((Endpoint::TransactionCommands, Message::ReverseBonusPoints(ref r))) if r.customer_id == id)
            );
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
                "enrolled",
                "completed",
                "rejected",
                "compensating",
                "rolled_back"
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
            MessageType::Enroll => Message::Enroll(Enroll { name, email }),
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
        }
    }

    #[test]
    fn routed_events_are_exactly_the_types_the_table_has_rows_for() {
        use strum::VariantArray;
        for message_type in MessageType::VARIANTS {
            let message = sample(*message_type);
            let routed = Status::VARIANTS.iter().any(|status| route(*status, &message).is_some());
            assert_eq!(
                routed,
                ROUTED_EVENTS.contains(message_type),
                "{message_type}: the table and ROUTED_EVENTS disagree"
            );
        }
    }
}
