//! Posting the enrollment bonus: budget check, ledger row, balance and the resulting event, all in
//! the consumer's transaction.

use sqlx::AnyConnection;
use utility::messaging::consumer::{AfterCommit, Handler, HandlerError};
use utility::messaging::envelope::Envelope;
use utility::messaging::message::{
    BonusFailure, BonusPointsFailed, BonusPointsPosted, BonusPointsReversed, Message, PostBonusPoints,
    ReverseBonusPoints,
};
use utility::messaging::outbox;
use uuid::Uuid;

pub(crate) const CAMPAIGN_ID: &str = "enrollment-bonus";
const BONUS_KIND: &str = "enrollment-bonus";
const REVERSAL_KIND: &str = "enrollment-bonus-reversal";

/// The enrollment bonus campaign: points per enrollment and the optional total budget.
#[derive(Debug, Clone, Copy)]
pub struct Campaign {
    points: i64,
    budget: Option<i64>,
}

impl Campaign {
    pub fn new(points: i64, budget: Option<i64>) -> anyhow::Result<Self> {
        anyhow::ensure!(points > 0, "BONUS_POINTS must be positive, got {points}");
        if let Some(budget) = budget {
            anyhow::ensure!(budget >= 0, "BONUS_BUDGET_POINTS must not be negative, got {budget}");
        }
        Ok(Self { points, budget })
    }

    /// The total the campaign may grant; `None` is unlimited.
    pub fn budget(&self) -> Option<i64> {
        self.budget
    }
}

pub struct LedgerHandler {
    campaign: Campaign,
}

impl LedgerHandler {
    pub fn new(campaign: Campaign) -> Self {
        Self { campaign }
    }
}

impl Handler for LedgerHandler {
    async fn handle(&self, tx: &mut AnyConnection, envelope: &Envelope) -> Result<AfterCommit, HandlerError> {
        let event = match &envelope.message {
            Message::PostBonusPoints(command) => self.post_bonus(tx, envelope.correlation_id, command).await?,
            Message::ReverseBonusPoints(command) => reverse_bonus(tx, envelope.correlation_id, command).await?,
            other => {
                return Err(HandlerError::Refused(format!(
                    "the transaction-api does not handle `{}`",
                    other.type_name()
                )));
            }
        };
        // Refusals and reversals are rare and worth a line; bonuses are counted, not logged.
        let after = match &event {
            Some(Message::BonusPointsFailed(failed)) => {
                let (customer_id, reason) = (failed.customer_id, failed.reason.clone());
                AfterCommit::then(move || tracing::info!(%customer_id, %reason, "bonus refused"))
            }
            Some(Message::BonusPointsReversed(reversed)) => {
                let (customer_id, points) = (reversed.customer_id, reversed.points);
                AfterCommit::then(move || tracing::info!(%customer_id, points, "late bonus reversed"))
            }
            _ => AfterCommit::nothing(),
        };
        if let Some(event) = event {
            outbox::enqueue(tx, &envelope.caused(event)).await?;
        }
        Ok(after)
    }
}

impl LedgerHandler {
    async fn post_bonus(
        &self,
        tx: &mut AnyConnection,
        enrollment_id: Uuid,
        command: &PostBonusPoints,
    ) -> Result<Option<Message>, HandlerError> {
        let customer_id = command.customer_id;
        let already = sqlx::query("SELECT id FROM ledger WHERE enrollment_id = $1 AND kind = $2")
            .bind(enrollment_id.to_string())
            .bind(BONUS_KIND)
            .fetch_optional(&mut *tx)
            .await?;
        if already.is_some() {
            // A second command for the same enrollment (not a redelivery, which the consumer
            // already filtered): the bonus and its event exist; do nothing more.
            tracing::debug!("enrollment bonus already posted; nothing to do");
            return Ok(None);
        }
        let points = self.campaign.points;
        let granted = match self.campaign.budget {
            Some(budget) => sqlx::query(
                "UPDATE campaigns SET granted_points = granted_points + $1
                 WHERE id = $2 AND granted_points + $1 <= $3",
            )
            .bind(points)
            .bind(CAMPAIGN_ID)
            .bind(budget),
            None => sqlx::query("UPDATE campaigns SET granted_points = granted_points + $1 WHERE id = $2")
                .bind(points)
                .bind(CAMPAIGN_ID),
        }
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !granted {
            let budget = self.campaign.budget.unwrap_or_default();
            let reason =
                format!("campaign budget exhausted: granting {points} points would exceed the budget of {budget}");
            return Ok(Some(Message::BonusPointsFailed(BonusPointsFailed {
                customer_id,
                reason,
                cause: BonusFailure::BudgetExhausted,
            })));
        }
        sqlx::query(
            "INSERT INTO ledger (id, customer_id, enrollment_id, kind, points, posted_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(customer_id.to_string())
        .bind(enrollment_id.to_string())
        .bind(BONUS_KIND)
        .bind(points)
        .bind(utility::storage::now())
        .execute(&mut *tx)
        .await?;
        let balance = add_to_balance(tx, customer_id, points).await?;
        tracing::debug!(%customer_id, points, balance, "bonus posted");
        Ok(Some(Message::BonusPointsPosted(BonusPointsPosted {
            customer_id,
            points,
            balance,
        })))
    }
}

/// Takes back an enrollment bonus posted after its saga had failed: a negative ledger row, the
/// balance and the campaign budget restored, and `BonusPointsReversed`. Reversing twice is a no-op.
async fn reverse_bonus(
    tx: &mut AnyConnection,
    enrollment_id: Uuid,
    command: &ReverseBonusPoints,
) -> Result<Option<Message>, HandlerError> {
    // The ledger row of this enrollment is the truth; the command must agree with it about whose
    // bonus it is, or it is refused rather than moving points on a stranger's balance.
    let (bonus_customer, points): (String, i64) =
        sqlx::query_as("SELECT customer_id, points FROM ledger WHERE enrollment_id = $1 AND kind = $2")
            .bind(enrollment_id.to_string())
            .bind(BONUS_KIND)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                HandlerError::Refused(format!("no enrollment bonus was posted for enrollment {enrollment_id}"))
            })?;
    let customer_id = command.customer_id;
    if bonus_customer != customer_id.to_string() {
        return Err(HandlerError::Refused(format!(
            "the bonus of enrollment {enrollment_id} was posted to customer {bonus_customer}, not {customer_id}"
        )));
    }
    let inserted = sqlx::query(
        "INSERT INTO ledger (id, customer_id, enrollment_id, kind, points, posted_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(customer_id.to_string())
    .bind(enrollment_id.to_string())
    .bind(REVERSAL_KIND)
    .bind(-points)
    .bind(utility::storage::now())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tracing::debug!("enrollment bonus already reversed; nothing to do");
        return Ok(None);
    }
    sqlx::query("UPDATE campaigns SET granted_points = granted_points - $1 WHERE id = $2")
        .bind(points)
        .bind(CAMPAIGN_ID)
        .execute(&mut *tx)
        .await?;
    let balance = add_to_balance(tx, customer_id, -points).await?;
    tracing::debug!(%customer_id, points, balance, reason = %command.reason, "bonus reversed");
    Ok(Some(Message::BonusPointsReversed(BonusPointsReversed {
        customer_id,
        points,
        balance,
    })))
}

async fn add_to_balance(tx: &mut AnyConnection, customer_id: Uuid, points: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO balances (customer_id, points) VALUES ($1, $2)
         ON CONFLICT (customer_id) DO UPDATE SET points = balances.points + excluded.points
         RETURNING points",
    )
    .bind(customer_id.to_string())
    .bind(points)
    .fetch_one(tx)
    .await
}
