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
    /// The transaction-api's own words, for operators.
    pub reason: String,
    /// What kind of failure it was, for words a client may see.
    #[serde(default)]
    pub cause: BonusFailure,
}

/// Why an enrollment bonus could not be posted. Unknown values (from a newer producer) read as
/// `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BonusFailure {
    /// The campaign's budget cannot cover another bonus.
    BudgetExhausted,
    #[default]
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BonusPointsReversed {
    pub customer_id: Uuid,
    pub points: i64,
    pub balance: i64,
}

/// Every message the saga knows: the one declaration of the wire contract's types. The variant
/// name is the wire `type` and its struct the `payload` (serde's adjacent tagging, which the
/// envelope uses for exactly those two fields); [`MessageType`] is derived from it, so adding a
/// message type means adding a variant here and nothing else in this crate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, strum::EnumDiscriminants)]
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

impl MessageType {
    /// The wire name (`type` in the envelope, the `type` message attribute, the SNS filter
    /// policies in `infra/messaging.yaml`).
    pub fn name(self) -> &'static str {
        self.into()
    }
}

impl Message {
    pub fn message_type(&self) -> MessageType {
        self.into()
    }

    pub fn type_name(&self) -> &'static str {
        self.message_type().name()
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
}
