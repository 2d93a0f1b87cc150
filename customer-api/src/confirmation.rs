//! Enrollments waiting for the owner of their address (decision 0035): the customer-api holds the
//! name and address of an `Enroll` that carries a confirmation link, mails the owner, and creates
//! the customer only on `ConfirmEnrollment`. Each function runs inside the consumer's transaction
//! and says what it caused: the event to publish and whether it wrote mail.

use std::time::Duration;

use chrono::Utc;
use sqlx::{AnyConnection, AnyPool};
use tokio_util::sync::CancellationToken;
use utility::domain::{CustomerName, Email, Subaddresses};
use utility::messaging::consumer::HandlerError;
use utility::messaging::message::{ConfirmationLapsed, ConfirmationLink, ConfirmationRequested, Enroll, Message};
use utility::storage::{now, timestamp};
use uuid::Uuid;

use crate::customers;
use crate::mail;

/// How long after its deadline a pending enrollment is still kept: a `ConfirmEnrollment` the
/// gateway accepted just before the deadline may reach the customer-api a little after it.
pub const FORGET_GRACE: Duration = Duration::from_secs(10 * 60);

/// How often [`keep_forgetting_expired`] looks for pending enrollments past their deadline.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// What a command did: the event to publish, and whether mail was written (the relay is woken
/// after the commit).
#[derive(Debug, Default)]
pub struct Effect {
    pub event: Option<Message>,
    pub mailed: bool,
}

/// `Enroll` with a confirmation: holds the enrollment and mails the owner of the address the
/// link, or, when an active customer already has the address's key, a note without one; the
/// event (`ConfirmationRequested`) differs only in its flag. The same enrollment arriving again
/// (a new message id) finds its row and does nothing, so it mails once.
pub async fn request(
    tx: &mut AnyConnection,
    enrollment_id: Uuid,
    command: &Enroll,
    link: &ConfirmationLink,
    subaddresses: Subaddresses,
) -> Result<Effect, HandlerError> {
    if customers::decided(tx, enrollment_id).await? {
        tracing::debug!("enrollment already confirmed or rejected; nothing to do");
        return Ok(Effect::default());
    }
    if link.expires_at <= Utc::now() {
        // Held now, it would only be forgotten: the gateway has ended this enrollment.
        tracing::debug!("enrollment past its confirmation deadline; nothing held, nothing mailed");
        return Ok(Effect::default());
    }
    let key = command.email.key(subaddresses);
    let already_enrolled = customers::active_with_address(tx, &key, &command.email).await?;
    let held = sqlx::query(
        "INSERT INTO pending_enrollments (enrollment_id, name, email, email_key, already_enrolled, expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(enrollment_id.to_string())
    .bind(command.name.as_str())
    .bind(command.email.as_str())
    .bind(&key)
    .bind(i64::from(already_enrolled))
    .bind(timestamp(link.expires_at))
    .bind(now())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if held == 0 {
        tracing::debug!("enrollment already waiting for its confirmation; nothing to do");
        return Ok(Effect::default());
    }
    mail::enqueue(tx, enrollment_id, &mail_for(&command.email, already_enrolled, link)).await?;
    tracing::debug!(already_enrolled, "enrollment held until its confirmation");
    Ok(Effect {
        event: Some(Message::ConfirmationRequested(ConfirmationRequested {
            already_enrolled,
        })),
        mailed: true,
    })
}

fn mail_for(email: &Email, already_enrolled: bool, link: &ConfirmationLink) -> mail::Mail {
    if already_enrolled {
        mail::already_enrolled(email)
    } else {
        mail::confirmation(email, &link.url, link.expires_at)
    }
}

/// A pending enrollment as held.
#[derive(sqlx::FromRow)]
struct Pending {
    name: String,
    email: String,
    email_key: String,
    already_enrolled: i64,
}

async fn pending(tx: &mut AnyConnection, enrollment_id: Uuid) -> Result<Option<Pending>, sqlx::Error> {
    sqlx::query_as("SELECT name, email, email_key, already_enrolled FROM pending_enrollments WHERE enrollment_id = $1")
        .bind(enrollment_id.to_string())
        .fetch_optional(&mut *tx)
        .await
}

/// Forgets what is held for `enrollment_id`: its row and every mail of it.
pub(crate) async fn drop_held(tx: &mut AnyConnection, enrollment_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM pending_enrollments WHERE enrollment_id = $1")
        .bind(enrollment_id.to_string())
        .execute(&mut *tx)
        .await?;
    mail::discard(tx, enrollment_id).await?;
    Ok(())
}

/// `ConfirmEnrollment`: creates the customer from the held enrollment, exactly as an `Enroll`
/// without confirmation does (`CustomerEnrolled`, or `EnrollmentRejected` when the address's key
/// has an active customer by now), and forgets the held row. Nothing held: if the enrollment was
/// applied before (a second `ConfirmEnrollment`), its event already went out and nothing is
/// done; otherwise it was forgotten (past its deadline and the sweep's grace, or erased) before
/// the command arrived, and `ConfirmationLapsed` tells the saga, which would otherwise wait in
/// `confirmed` for ever.
pub async fn confirm(tx: &mut AnyConnection, enrollment_id: Uuid) -> Result<Effect, HandlerError> {
    let Some(held) = pending(tx, enrollment_id).await? else {
        if customers::decided(tx, enrollment_id).await? {
            tracing::debug!("enrollment confirmed before; nothing to do");
            return Ok(Effect::default());
        }
        tracing::warn!(
            "a confirmation arrived for an enrollment no longer held (forgotten past its deadline, or erased); \
             its saga ends expired"
        );
        return Ok(Effect {
            event: Some(Message::ConfirmationLapsed(ConfirmationLapsed {})),
            mailed: false,
        });
    };
    // Both were checked when the enrollment arrived; a rule added since is not applied to it.
    let name = CustomerName::parse(&held.name)
        .map_err(|e| HandlerError::Refused(format!("the held name no longer parses: {}", e.message)))?;
    let email = Email::parse(&held.email)
        .map_err(|e| HandlerError::Refused(format!("the held address no longer parses: {}", e.message)))?;
    let event = customers::enroll(tx, enrollment_id, &name, &email, &held.email_key).await?;
    drop_held(tx, enrollment_id).await?;
    Ok(Effect { event, mailed: false })
}

/// `ResendConfirmation`: mails the new link (or the note again), replacing any mail of the
/// enrollment not yet on its way (its link no longer confirms), and moves the deadline to the
/// link's. Nothing held means nothing to mail.
pub async fn resend(
    tx: &mut AnyConnection,
    enrollment_id: Uuid,
    link: &ConfirmationLink,
) -> Result<Effect, HandlerError> {
    let Some(held) = pending(tx, enrollment_id).await? else {
        tracing::debug!("no enrollment held to mail again (confirmed, forgotten or expired); nothing to do");
        return Ok(Effect::default());
    };
    let email = Email::parse(&held.email)
        .map_err(|e| HandlerError::Refused(format!("the held address no longer parses: {}", e.message)))?;
    sqlx::query(
        "DELETE FROM mail_outbox WHERE enrollment_id = $1 AND failed_at IS NULL
           AND (claimed_until IS NULL OR claimed_until < $2)",
    )
    .bind(enrollment_id.to_string())
    .bind(now())
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE pending_enrollments SET expires_at = $1 WHERE enrollment_id = $2")
        .bind(timestamp(link.expires_at))
        .bind(enrollment_id.to_string())
        .execute(&mut *tx)
        .await?;
    mail::enqueue(tx, enrollment_id, &mail_for(&email, held.already_enrolled != 0, link)).await?;
    tracing::debug!("confirmation mailed again");
    Ok(Effect {
        event: None,
        mailed: true,
    })
}

/// `ForgetEnrollment`: deletes the held name and address and every mail of the enrollment.
pub async fn forget(tx: &mut AnyConnection, enrollment_id: Uuid, reason: &str) -> Result<Effect, HandlerError> {
    drop_held(tx, enrollment_id).await?;
    tracing::debug!(reason, "held enrollment forgotten");
    Ok(Effect::default())
}

/// Deletes the pending enrollments more than [`FORGET_GRACE`] past their deadline, with their
/// mails, whether or not their `ForgetEnrollment` ever arrives. Returns how many went.
pub async fn forget_expired(pool: &AnyPool) -> Result<u64, sqlx::Error> {
    forget_expired_before(pool, utility::storage::cutoff(FORGET_GRACE)).await
}

/// [`forget_expired`] with the cutoff given: rows whose deadline is before `cutoff` go.
pub async fn forget_expired_before(pool: &AnyPool, cutoff: String) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "DELETE FROM mail_outbox WHERE enrollment_id IN
           (SELECT enrollment_id FROM pending_enrollments WHERE expires_at < $1)",
    )
    .bind(&cutoff)
    .execute(&mut *tx)
    .await?;
    let forgotten = sqlx::query("DELETE FROM pending_enrollments WHERE expires_at < $1")
        .bind(&cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(forgotten)
}

/// Runs [`forget_expired`] at start-up and every minute until `shutdown`.
pub async fn keep_forgetting_expired(pool: AnyPool, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        match forget_expired(&pool).await {
            Ok(0) => {}
            Ok(forgotten) => tracing::info!(forgotten, "pending enrollments past their deadline forgotten"),
            Err(error) => {
                tracing::warn!(error = %error, "could not forget expired pending enrollments; trying again later")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(FORGET_EVERY) => {}
        }
    }
}
