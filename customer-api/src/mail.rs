//! Mail, through an outbox of its own (decision 0038): a handler writes the mail into
//! `mail_outbox` in its transaction ([`enqueue`]), and the [`MailRelay`] sends it after the
//! commit with SES `SendEmail`, then deletes the row. At least once: a crash between SES's answer
//! and the delete sends the mail again once the row's lease has run out, and nothing worse.
//!
//! A mail's body holds the confirmation link, which confirms an enrollment: no log line shows a
//! body, a subject or a link, and none shows the recipient either (the mail's id and its
//! enrollment say which mail a line is about).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ses::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ses::operation::send_email::SendEmailError;
use aws_sdk_ses::types::{Body, Content, Destination, Message};
use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::{AnyConnection, AnyPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utility::backoff::Backoff;
use utility::domain::Email;
use utility::observe::metrics::{GaugeSource, Metrics};
use utility::storage::{now, timestamp};
use uuid::Uuid;

/// How long a claim keeps other relays off a mail: longer than a send may take
/// ([`SEND_LIMIT`]), so a live relay's mail is never sent by another; after a crash the mail
/// waits this long before another relay sends it (again).
const LEASE: Duration = Duration::from_secs(60);

/// Longest one `SendEmail` may take, the SDK's retries included.
const SEND_LIMIT: Duration = Duration::from_secs(20);

/// Longest a mail waits between two attempts SES failed for now.
const RETRY_CAP: Duration = Duration::from_secs(15 * 60);

/// Mails claimed at once by one relay.
const CLAIM: i64 = 10;

/// SES error codes that say this mail will never be accepted as it is: sending it again cannot
/// help, so it is set aside (an address SES cannot take, an unverified recipient in the SES
/// sandbox, a sender identity that is not verified).
const PERMANENT: [&str; 5] = [
    "MessageRejected",
    "MailFromDomainNotVerifiedException",
    "InvalidParameterValue",
    "ValidationError",
    "ConfigurationSetDoesNotExistException",
];

/// A mail to write into the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub recipient: String,
    pub subject: String,
    pub body: String,
}

/// The mail that offers the owner of a new address to confirm the enrollment. It names neither
/// the name given nor anything else the enrolling party typed: whoever enrolls an address writes
/// to its owner with our name on the mail, so nothing of theirs goes into it.
pub fn confirmation(recipient: &Email, url: &str, expires_at: DateTime<Utc>) -> Mail {
    let deadline = expires_at.format("%Y-%m-%d %H:%M UTC");
    Mail {
        recipient: recipient.as_str().to_owned(),
        subject: "Confirm your enrollment".to_owned(),
        body: format!(
            "Hello,\n\n\
             someone asked to enroll this address ({recipient}) in our loyalty programme. If it was \
             you, open the link below and press the button on the page to confirm:\n\n\
             {url}\n\n\
             The link works once, until {deadline}.\n\n\
             If it was not you, ignore this mail: nothing is enrolled without the confirmation, and \
             we forget this address after that time.\n"
        ),
    }
}

/// The note to an address that already has a customer: no link, nothing to confirm.
pub fn already_enrolled(recipient: &Email) -> Mail {
    Mail {
        recipient: recipient.as_str().to_owned(),
        subject: "Your enrollment".to_owned(),
        body: format!(
            "Hello,\n\n\
             someone asked to enroll this address ({recipient}) in our loyalty programme. It is \
             already enrolled, so nothing was changed and there is nothing to confirm.\n\n\
             If it was you, you need do nothing: your account is as it was. If it was not you, \
             ignore this mail.\n"
        ),
    }
}

/// Writes `mail` for `enrollment_id` on the caller's transaction. Wake the relay after the
/// commit ([`MailRelay::signal`]).
pub async fn enqueue(conn: &mut AnyConnection, enrollment_id: Uuid, mail: &Mail) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO mail_outbox (id, enrollment_id, recipient, subject, body, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(enrollment_id.to_string())
    .bind(&mail.recipient)
    .bind(&mail.subject)
    .bind(&mail.body)
    .bind(now())
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes every mail of `enrollment_id`, sent or set aside alike (its pending enrollment is
/// gone). A mail on the wire at that moment still goes out.
pub async fn discard(conn: &mut AnyConnection, enrollment_id: Uuid) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM mail_outbox WHERE enrollment_id = $1")
        .bind(enrollment_id.to_string())
        .execute(conn)
        .await?
        .rows_affected())
}

/// Mails not yet sent and not set aside.
pub async fn pending(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM mail_outbox WHERE failed_at IS NULL")
        .fetch_one(pool)
        .await
}

/// The relay's counters, registered in the service's metrics.
#[derive(Clone, Default)]
pub struct MailMetrics {
    /// Mails SES accepted.
    pub sent: Counter,
    /// Mails SES refused for good (set aside).
    pub failed: Counter,
    /// Mails waiting to be sent, as last read.
    pub pending: Gauge,
}

impl MailMetrics {
    pub fn register(&self, metrics: &Metrics) {
        metrics.register("mails_sent", "Mails SES accepted", self.sent.clone());
        metrics.register(
            "mails_failed",
            "Mails SES refused for good, set aside in the mail outbox",
            self.failed.clone(),
        );
        metrics.register(
            "mail_outbox_pending",
            "Mails not yet sent (set-aside ones not counted)",
            self.pending.clone(),
        );
    }
}

/// The `mail_outbox_pending` gauge, read on each scrape and each `gauges` log line.
pub fn pending_gauge(metrics: &MailMetrics, pool: AnyPool) -> GaugeSource {
    let gauge = metrics.pending.clone();
    Arc::new(move || {
        let (gauge, pool) = (gauge.clone(), pool.clone());
        Box::pin(async move {
            match pending(&pool).await {
                Ok(count) => {
                    gauge.set(count);
                    vec![("mail_outbox_pending", count as f64)]
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the mail outbox backlog");
                    Vec::new()
                }
            }
        })
    })
}

/// A mail claimed for sending.
#[derive(sqlx::FromRow)]
struct Claimed {
    id: String,
    enrollment_id: String,
    /// This one included.
    attempts: i64,
    recipient: String,
    subject: String,
    body: String,
    created_at: String,
}

/// Why a send did not go through.
#[derive(Debug)]
enum SendFailure {
    /// SES will never take this mail: set it aside with the reason.
    Permanent { code: String, message: String },
    /// SES (or the way to it) failed for now: try again later.
    Transient(String),
}

/// Sends what the mail outbox holds through SES, from one sender identity. Woken by
/// [`MailRelay::signal`] after a commit that wrote mail, and every `interval` regardless (a
/// crash's leftovers, another instance's claims that ran out).
#[derive(Clone)]
pub struct MailRelay {
    pool: AnyPool,
    ses: aws_sdk_ses::Client,
    from: String,
    signal: Arc<Notify>,
    interval: Duration,
    metrics: MailMetrics,
    /// PostgreSQL: claims skip rows another relay is claiming.
    skip_locked: bool,
}

impl MailRelay {
    pub fn new(
        pool: AnyPool,
        ses: aws_sdk_ses::Client,
        from: String,
        signal: Arc<Notify>,
        interval: Duration,
        metrics: MailMetrics,
    ) -> Self {
        Self {
            skip_locked: pool.connect_options().database_url.scheme().starts_with("postgres"),
            pool,
            ses,
            from,
            signal,
            interval,
            metrics,
        }
    }

    /// Sends every mail that is due now. Returns how many SES accepted; an error when SES or the
    /// database failed for now (the mails not sent stay for the next attempt).
    pub async fn flush(&self) -> anyhow::Result<usize> {
        let mut sent = 0;
        loop {
            let claimed = self.claim().await?;
            if claimed.is_empty() {
                return Ok(sent);
            }
            let mut rows = claimed.into_iter();
            while let Some(mail) = rows.next() {
                match self.send(&mail).await {
                    Ok(()) => {
                        self.metrics.sent.inc();
                        sent += 1;
                        sqlx::query("DELETE FROM mail_outbox WHERE id = $1")
                            .bind(&mail.id)
                            .execute(&self.pool)
                            .await?;
                    }
                    Err(SendFailure::Permanent { code, message }) => {
                        self.metrics.failed.inc();
                        self.set_aside(&mail, &code, &message).await?;
                    }
                    Err(SendFailure::Transient(reason)) => {
                        // This mail waits longer the more often it failed, so one SES keeps
                        // refusing for now does not hold back the mails behind it; the relay
                        // backs off as a whole, since SES itself may be what fails.
                        self.postpone(&mail).await?;
                        let rest: Vec<String> = rows.map(|r| r.id).collect();
                        self.release(&rest).await?;
                        anyhow::bail!("SES did not take a mail: {reason}");
                    }
                }
            }
        }
    }

    /// Claims up to [`CLAIM`] of the oldest mails no live claim holds, in one statement.
    async fn claim(&self) -> Result<Vec<Claimed>, sqlx::Error> {
        let until = timestamp(Utc::now() + LEASE);
        let skip_locked = if self.skip_locked { "FOR UPDATE SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE mail_outbox SET claimed_until = $1, attempts = attempts + 1 WHERE id IN (
                 SELECT id FROM mail_outbox
                 WHERE failed_at IS NULL AND (claimed_until IS NULL OR claimed_until < $2)
                 ORDER BY created_at, id LIMIT $3 {skip_locked})
             RETURNING id, enrollment_id, attempts, recipient, subject, body, created_at"
        );
        let mut rows: Vec<Claimed> = sqlx::query_as(&sql)
            .bind(&until)
            .bind(now())
            .bind(CLAIM)
            .fetch_all(&self.pool)
            .await?;
        rows.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(rows)
    }

    async fn send(&self, mail: &Claimed) -> Result<(), SendFailure> {
        let text = |data: &str| {
            Content::builder()
                .data(data)
                .charset("UTF-8")
                .build()
                .map_err(|e| SendFailure::Transient(e.to_string()))
        };
        let message = Message::builder()
            .subject(text(&mail.subject)?)
            .body(Body::builder().text(text(&mail.body)?).build())
            .build();
        let call = self
            .ses
            .send_email()
            .source(&self.from)
            .destination(Destination::builder().to_addresses(&mail.recipient).build())
            .message(message)
            .send();
        match tokio::time::timeout(SEND_LIMIT, call).await {
            Ok(Ok(_)) => {
                tracing::debug!(mail_id = %mail.id, enrollment_id = %mail.enrollment_id, "mail sent");
                Ok(())
            }
            Ok(Err(err)) => Err(classify(&err, &mail.recipient)),
            Err(_) => Err(SendFailure::Transient(format!(
                "SendEmail took longer than {} s",
                SEND_LIMIT.as_secs()
            ))),
        }
    }

    /// Keeps a mail SES will never take out of the way, with SES's reason (which may name the
    /// recipient: the row holds it anyway, and goes with its enrollment; the log line does not).
    async fn set_aside(&self, mail: &Claimed, code: &str, message: &str) -> Result<(), sqlx::Error> {
        tracing::error!(
            mail_id = %mail.id,
            enrollment_id = %mail.enrollment_id,
            code,
            reason = %message.replace(&mail.recipient, "<recipient>"),
            "SES refused a mail for good; it is set aside in the mail outbox"
        );
        sqlx::query("UPDATE mail_outbox SET failed_at = $1, error = $2, claimed_until = NULL WHERE id = $3")
            .bind(now())
            .bind(format!("{code}: {message}"))
            .bind(&mail.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keeps a mail SES failed to take from the next attempts for a while: twice as long after
    /// each failed attempt, from 2 s up to [`RETRY_CAP`].
    async fn postpone(&self, mail: &Claimed) -> Result<(), sqlx::Error> {
        let exponent = u32::try_from(mail.attempts.clamp(1, 16)).unwrap_or(16);
        let delay = Duration::from_secs(2u64.pow(exponent)).min(RETRY_CAP);
        let until = Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        sqlx::query("UPDATE mail_outbox SET claimed_until = $1 WHERE id = $2")
            .bind(timestamp(until))
            .bind(&mail.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives claimed mails back at once, for the next attempt.
    async fn release(&self, ids: &[String]) -> Result<(), sqlx::Error> {
        for id in ids {
            sqlx::query("UPDATE mail_outbox SET claimed_until = NULL WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Hand this to whoever commits mail; `notify_one` wakes the relay.
    pub fn signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }

    /// Sends until `stop` is cancelled, backing off while SES or the database fails.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        loop {
            match self.flush().await {
                Ok(_) => {
                    backoff.reset();
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = self.signal.notified() => {}
                        () = tokio::time::sleep(self.interval) => {}
                    }
                }
                Err(err) => {
                    // New mail does not cut the wait short: SES is given its time.
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %format!("{err:#}"), retry_in_ms = delay.as_millis() as u64, "mail relay could not send; will retry");
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// What an SES error means for the mail: refused for good, or failed for now. Only SES's own
/// answers can be permanent; a connection or timeout failure is always worth another try.
fn classify(err: &SdkError<SendEmailError>, recipient: &str) -> SendFailure {
    match err {
        SdkError::ServiceError(service) => {
            let error = service.err();
            let code = error.code().unwrap_or("Unknown").to_owned();
            let message = error.message().unwrap_or_default().to_owned();
            if PERMANENT.contains(&code.as_str()) {
                SendFailure::Permanent { code, message }
            } else {
                SendFailure::Transient(format!("{code}: {}", message.replace(recipient, "<recipient>")))
            }
        }
        other => SendFailure::Transient(utility::error::chain(other)),
    }
}
