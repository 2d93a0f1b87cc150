//! The commands and events of the enrollment saga, as typed payloads.
//!
//! Commands name what the receiver is asked to do and travel over SQS straight to one queue;
//! events state what happened and are published to the producer's SNS topic. The correlation id
//! of every message is the enrollment id, so it is not repeated in the payloads.

use crate::domain::{CustomerName, Email};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Asks the customer-api to create a customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enroll {
    pub name: CustomerName,
    pub email: Email,
}

/// Asks the customer-api to roll an enrollment back (the compensation step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unenroll {
    pub customer_id: Uuid,
    pub reason: String,
}

/// Asks the transaction-api to post the enrollment bonus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostBonusPoints {
    pub customer_id: Uuid,
}

/// Asks the transaction-api to take back an enrollment bonus that was posted after the saga had
/// already failed (a late `BonusPointsPosted`): points are never left on an unenrolled customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReverseBonusPoints {
    pub customer_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerEnrolled {
    pub customer_id: Uuid,
    pub name: CustomerName,
    pub email: Email,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentRejected {
    pub email: Email,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerUnenrolled {
    pub customer_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BonusPointsPosted {
    pub customer_id: Uuid,
    pub points: i64,
    pub balance: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BonusPointsFailed {
    pub customer_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BonusPointsReversed {
    pub customer_id: Uuid,
    pub points: i64,
    pub balance: i64,
}

/// Every message the saga knows. The variant name is the wire `type`.
#[derive(Debug, Clone, PartialEq)]
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

/// The wire names, in one place; the SNS filter policies in `infra/messaging.yaml` use them too.
pub const MESSAGE_TYPES: [&str; 10] = [
    "Enroll",
    "Unenroll",
    "PostBonusPoints",
    "ReverseBonusPoints",
    "CustomerEnrolled",
    "EnrollmentRejected",
    "CustomerUnenrolled",
    "BonusPointsPosted",
    "BonusPointsFailed",
    "BonusPointsReversed",
];

impl Message {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Enroll(_) => "Enroll",
            Self::Unenroll(_) => "Unenroll",
            Self::PostBonusPoints(_) => "PostBonusPoints",
            Self::ReverseBonusPoints(_) => "ReverseBonusPoints",
            Self::CustomerEnrolled(_) => "CustomerEnrolled",
            Self::EnrollmentRejected(_) => "EnrollmentRejected",
            Self::CustomerUnenrolled(_) => "CustomerUnenrolled",
            Self::BonusPointsPosted(_) => "BonusPointsPosted",
            Self::BonusPointsFailed(_) => "BonusPointsFailed",
            Self::BonusPointsReversed(_) => "BonusPointsReversed",
        }
    }

    pub(crate) fn payload_json(&self) -> serde_json::Value {
        let value = match self {
            Self::Enroll(p) => serde_json::to_value(p),
            Self::Unenroll(p) => serde_json::to_value(p),
            Self::PostBonusPoints(p) => serde_json::to_value(p),
            Self::ReverseBonusPoints(p) => serde_json::to_value(p),
            Self::CustomerEnrolled(p) => serde_json::to_value(p),
            Self::EnrollmentRejected(p) => serde_json::to_value(p),
            Self::CustomerUnenrolled(p) => serde_json::to_value(p),
            Self::BonusPointsPosted(p) => serde_json::to_value(p),
            Self::BonusPointsFailed(p) => serde_json::to_value(p),
            Self::BonusPointsReversed(p) => serde_json::to_value(p),
        };
        // The payload structs hold only strings, numbers and UUIDs: serialising them cannot fail.
        value.unwrap_or(serde_json::Value::Null)
    }

    /// Builds the typed message from its wire name and payload. `None` means the name is unknown.
    pub(crate) fn from_payload(type_name: &str, payload: serde_json::Value) -> Option<Result<Self, serde_json::Error>> {
        use serde_json::from_value as from;
        Some(match type_name {
            "Enroll" => from(payload).map(Self::Enroll),
            "Unenroll" => from(payload).map(Self::Unenroll),
            "PostBonusPoints" => from(payload).map(Self::PostBonusPoints),
            "ReverseBonusPoints" => from(payload).map(Self::ReverseBonusPoints),
            "CustomerEnrolled" => from(payload).map(Self::CustomerEnrolled),
            "EnrollmentRejected" => from(payload).map(Self::EnrollmentRejected),
            "CustomerUnenrolled" => from(payload).map(Self::CustomerUnenrolled),
            "BonusPointsPosted" => from(payload).map(Self::BonusPointsPosted),
            "BonusPointsFailed" => from(payload).map(Self::BonusPointsFailed),
            "BonusPointsReversed" => from(payload).map(Self::BonusPointsReversed),
            _ => return None,
        })
    }
}
