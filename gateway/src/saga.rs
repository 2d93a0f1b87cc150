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

use serde::{Deserialize, Serialize};
use std::fmt;
use utility::message::{Message, PostBonusPoints, ReverseBonusPoints, Unenroll};
use utility::topology::Endpoint;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Enrolled,
    Completed,
    Rejected,
    Compensating,
    RolledBack,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Enrolled => "enrolled",
            Self::Completed => "completed",
            Self::Rejected => "rejected",
            Self::Compensating => "compensating",
            Self::RolledBack => "rolled_back",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Enrolled,
            Self::Completed,
            Self::Rejected,
            Self::Compensating,
            Self::RolledBack,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Rejected | Self::RolledBack)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an event does to a saga.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub next: Status,
    pub customer_id: Option<Uuid>,
    pub bonus_points: Option<i64>,
    pub reason: Option<String>,
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
            ..Step::to(Rejected)
        },
        (Enrolled, Message::BonusPointsPosted(e)) => Step {
            bonus_points: Some(e.points),
            ..Step::to(Completed)
        },
        (Enrolled, Message::BonusPointsFailed(e)) => Step {
            reason: Some(e.reason.clone()),
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
    use utility::message::*;

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
        for name in [
            "pending",
            "enrolled",
            "completed",
            "rejected",
            "compensating",
            "rolled_back",
        ] {
            assert_eq!(Status::parse(name).unwrap().as_str(), name);
        }
        assert_eq!(Status::parse("done"), None);
    }
}
