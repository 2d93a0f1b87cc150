//! Customer state changes, each applied inside the consumer's transaction together with the
//! event it causes (written to the outbox).

use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyConnection, AnyPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utility::domain::{CustomerName, Email, Subaddresses};
use utility::messaging::consumer::{AfterCommit, Handler, HandlerError};
use utility::messaging::envelope::Envelope;
use utility::messaging::message::{
    CustomerEnrolled, CustomerUnenrolled, EnrollmentRejected, Message, MessageType, Unenroll,
};
use utility::messaging::outbox;
use uuid::Uuid;

use crate::confirmation::{self, Effect};

pub struct CustomerHandler {
    /// How addresses are compared: one active customer per key ([`utility::domain::Email::key`]).
    pub subaddresses: Subaddresses,
    /// Wakes the mail relay once a transaction that wrote mail has committed.
    pub mail_signal: Arc<Notify>,
}

impl Handler for CustomerHandler {
    async fn handle(&self, tx: &mut AnyConnection, envelope: &Envelope) -> Result<AfterCommit, HandlerError> {
        let id = envelope.correlation_id;
        let Effect { event, mailed } = match &envelope.message {
            Message::Enroll(command) => match &command.confirmation {
                Some(link) => confirmation::request(tx, id, command, link, self.subaddresses).await?,
                None => Effect {
                    event: enroll(
                        tx,
                        id,
                        &command.name,
                        &command.email,
                        &command.email.key(self.subaddresses),
                    )
                    .await?,
                    mailed: false,
                },
            },
            Message::ConfirmEnrollment(_) => confirmation::confirm(tx, id).await?,
            Message::ResendConfirmation(command) => confirmation::resend(tx, id, &command.confirmation).await?,
            Message::ForgetEnrollment(command) => confirmation::forget(tx, id, &command.reason).await?,
            Message::Unenroll(command) => Effect {
                event: unenroll(tx, id, command).await?,
                mailed: false,
            },
            Message::ErasePersonalData(_) => Effect {
                event: erase(tx, id).await?,
                mailed: false,
            },
            other => {
                return Err(HandlerError::Refused(format!(
                    "the customer-api does not handle `{}`",
                    other.type_name()
                )));
            }
        };
        // A compensation is rare and worth a line; enrollments are counted, not logged.
        let unenrolled = match &event {
            Some(Message::CustomerUnenrolled(unenrolled)) => Some((unenrolled.customer_id, unenrolled.reason.clone())),
            _ => None,
        };
        let wake = mailed.then(|| self.mail_signal.clone());
        let after = if unenrolled.is_none() && wake.is_none() {
            AfterCommit::nothing()
        } else {
            AfterCommit::then(move || {
                if let Some((customer_id, reason)) = unenrolled {
                    tracing::info!(%customer_id, %reason, "customer unenrolled");
                }
                if let Some(signal) = wake {
                    signal.notify_one();
                }
            })
        };
        if let Some(event) = event {
            outbox::enqueue(tx, &envelope.caused(event)).await?;
        }
        Ok(after)
    }
}

/// Whether this enrollment was already decided here: it created a customer, or was rejected.
pub async fn decided(tx: &mut AnyConnection, enrollment_id: Uuid) -> Result<bool, sqlx::Error> {
    let decided: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM customers WHERE enrollment_id = $1
         UNION ALL SELECT 1 FROM rejected_enrollments WHERE enrollment_id = $1",
    )
    .bind(enrollment_id.to_string())
    .fetch_optional(&mut *tx)
    .await?;
    Ok(decided.is_some())
}

/// Whether an active customer has this address: by its key, or, for a row an instance of an
/// earlier release wrote without a key, by the address as written.
pub async fn active_with_address(tx: &mut AnyConnection, key: &str, email: &Email) -> Result<bool, sqlx::Error> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM customers WHERE status = 'active' AND (email_key = $1 OR email = $2) LIMIT 1",
    )
    .bind(key)
    .bind(email.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    Ok(found.is_some())
}

/// Creates the customer of this enrollment under the address key `key`: `CustomerEnrolled`, or
/// `EnrollmentRejected` when an active customer has the key already; nothing when the enrollment
/// was decided before (the same command under a new message id).
pub async fn enroll(
    tx: &mut AnyConnection,
    enrollment_id: Uuid,
    name: &CustomerName,
    email: &Email,
    key: &str,
) -> Result<Option<Message>, HandlerError> {
    let rejected_before = sqlx::query("SELECT reason FROM rejected_enrollments WHERE enrollment_id = $1")
        .bind(enrollment_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
    if rejected_before.is_some() {
        // The same enrollment arrived under a new message id; its rejection already went out.
        tracing::debug!("enrollment already rejected; nothing to do");
        return Ok(None);
    }
    let customer_id = Uuid::now_v7();
    // Both unique constraints (one enrollment per saga, one active customer per address key) are
    // handled by the conflict clause, so a race between two instances cannot fail the transaction.
    let inserted = sqlx::query(
        "INSERT INTO customers (id, enrollment_id, name, email, email_key, status, enrolled_at)
         VALUES ($1, $2, $3, $4, $5, 'active', $6) ON CONFLICT DO NOTHING",
    )
    .bind(customer_id.to_string())
    .bind(enrollment_id.to_string())
    .bind(name.as_str())
    .bind(email.as_str())
    .bind(key)
    .bind(utility::storage::now())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        tracing::debug!(%customer_id, "customer enrolled");
        return Ok(Some(Message::CustomerEnrolled(CustomerEnrolled {
            customer_id,
            name: name.clone(),
            email: email.clone(),
        })));
    }
    let same_saga = sqlx::query("SELECT id FROM customers WHERE enrollment_id = $1")
        .bind(enrollment_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
    if same_saga.is_some() {
        // The same enrollment arrived under a new message id; its event already went out.
        tracing::debug!("enrollment already applied; nothing to do");
        return Ok(None);
    }
    tracing::debug!("e-mail already enrolled; rejecting");
    let reason = format!("a customer with e-mail {email} is already enrolled");
    sqlx::query(
        "INSERT INTO rejected_enrollments (enrollment_id, email, reason, rejected_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(enrollment_id.to_string())
    .bind(email.as_str())
    .bind(&reason)
    .bind(utility::storage::now())
    .execute(&mut *tx)
    .await?;
    Ok(Some(Message::EnrollmentRejected(EnrollmentRejected {
        email: email.clone(),
        reason,
    })))
}

/// Rolls back the customer of this enrollment. The command's customer id must be the one this
/// enrollment created: a command naming someone else's customer is refused (it goes to the DLQ
/// for a person to look at) rather than unenrolling a stranger.
async fn unenroll(
    tx: &mut AnyConnection,
    enrollment_id: Uuid,
    command: &Unenroll,
) -> Result<Option<Message>, HandlerError> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM customers WHERE id = $1 AND enrollment_id = $2")
            .bind(command.customer_id.to_string())
            .bind(enrollment_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
    match status.as_deref() {
        None => {
            return Err(HandlerError::Refused(format!(
                "customer {} was not enrolled by enrollment {enrollment_id}",
                command.customer_id
            )));
        }
        // Already rolled back: confirm again so the saga can finish.
        Some("unenrolled") => tracing::debug!("customer already unenrolled"),
        Some(_) => {
            sqlx::query(
                "UPDATE customers SET status = 'unenrolled', unenrolled_at = $1, unenroll_reason = $2
                 WHERE id = $3 AND enrollment_id = $4 AND status = 'active'",
            )
            .bind(utility::storage::now())
            .bind(&command.reason)
            .bind(command.customer_id.to_string())
            .bind(enrollment_id.to_string())
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(Some(Message::CustomerUnenrolled(CustomerUnenrolled {
        customer_id: command.customer_id,
        reason: command.reason.clone(),
    })))
}

/// What a customer's name becomes when an operator erases it.
pub const ERASED_NAME: &str = "(erased)";

/// Erases what this service holds of the enrollment's personal data (decision 0042): the
/// customer's name and address become a tombstone (the address `erased:<customer id>`, unique as
/// the address indexes need, and never an address), and a rejection's address likewise; the
/// sent events that carried them leave the outbox. The rows stay: the customer's id is what the
/// ledger's postings name. An enrollment this service never saw has nothing to erase. No answer.
async fn erase(tx: &mut AnyConnection, enrollment_id: Uuid) -> Result<Option<Message>, HandlerError> {
    let now = utility::storage::now();
    let customers = sqlx::query(
        "UPDATE customers SET name = $1, email = 'erased:' || id, email_key = 'erased:' || id,
                              erased_at = COALESCE(erased_at, $2)
         WHERE enrollment_id = $3",
    )
    .bind(ERASED_NAME)
    .bind(&now)
    .bind(enrollment_id.to_string())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let rejections = sqlx::query(
        "UPDATE rejected_enrollments SET email = 'erased:' || enrollment_id,
                reason = 'the address was already enrolled (erased since)', erased_at = COALESCE(erased_at, $1)
         WHERE enrollment_id = $2",
    )
    .bind(&now)
    .bind(enrollment_id.to_string())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM outbox WHERE correlation_id = $1 AND sent_at IS NOT NULL AND message_type IN ($2, $3)")
        .bind(enrollment_id.to_string())
        .bind(MessageType::CustomerEnrolled.name())
        .bind(MessageType::EnrollmentRejected.name())
        .execute(&mut *tx)
        .await?;
    // An enrollment still waiting for its confirmation: what is held for it, and its mails.
    confirmation::drop_held(tx, enrollment_id).await?;
    tracing::info!(%enrollment_id, customers, rejections, "personal data erased");
    Ok(None)
}

/// How often [`fill_email_keys`] looks for customers without a key.
const KEY_FILL_EVERY: Duration = Duration::from_secs(60);

/// Gives every customer row without an address key its key, at start-up and then every minute
/// until `shutdown`. Rows written before keys existed, and rows an instance of the previous
/// release inserts during a rolling update (or after a rollback), have none; until they do, the
/// key's unique index cannot see them (the index on the address as written still does).
pub async fn keep_email_keys_filled(
    pool: AnyPool,
    subaddresses: Subaddresses,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        if let Err(error) = fill_email_keys(&pool, subaddresses).await {
            tracing::warn!(error = %utility::error::chain(&error), "could not fill customers' address keys; trying again later");
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(KEY_FILL_EVERY) => {}
        }
    }
}

/// One pass of [`keep_email_keys_filled`]: the number of rows given a key. A row whose key an
/// active customer already holds keeps none (two customers of one mailbox from before keys
/// existed): it is logged, and left for an operator to unenroll one of them.
pub async fn fill_email_keys(pool: &AnyPool, subaddresses: Subaddresses) -> Result<u64, sqlx::Error> {
    let mut filled = 0;
    let mut after = String::new();
    loop {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, email FROM customers WHERE email_key IS NULL AND id > $1 ORDER BY id LIMIT 500")
                .bind(&after)
                .fetch_all(pool)
                .await?;
        let Some((last, _)) = rows.last() else {
            return Ok(filled);
        };
        after = last.clone();
        for (id, email) in rows {
            // Every stored address parsed once; one that no longer does (a rule added since) is
            // keyed as it was written.
            let key = Email::parse(&email).map_or_else(|_| email.clone(), |email| email.key(subaddresses));
            let updated = sqlx::query("UPDATE customers SET email_key = $1 WHERE id = $2 AND email_key IS NULL")
                .bind(&key)
                .bind(&id)
                .execute(pool)
                .await;
            match updated {
                Ok(done) => filled += done.rows_affected(),
                Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                    tracing::warn!(customer_id = %id, "another active customer holds this customer's address key; it keeps none");
                }
                Err(error) => return Err(error),
            }
        }
    }
}
