//! The gateway's database: enrollments (the saga read model) and their history. Every statement
//! on these tables is here; the saga's handler (`saga/handler.rs`), the stall sweeper, live
//! updates and the metrics call these functions. Statuses are typed ([`Status`]) from the row to
//! the answer.

use crate::saga::{Status, Step};
use serde::Serialize;
use sqlx::{AnyConnection, AnyPool};
use std::sync::LazyLock;
use utility::domain::{CustomerName, Email};
use utility::messaging::envelope::Envelope;
use utility::messaging::message::{
    CALLBACK, CALLBACK_NO, CALLBACK_YES, ConfirmEnrollment, ConfirmationLink, Enroll, EnrollmentStatusChanged,
    ErasePersonalData, ForgetEnrollment, Message, MessageType, ResendConfirmation,
};
use utility::messaging::outbox;
use uuid::Uuid;

/// One step of the saga. The id is the SSE event id a client resumes from; the public view's
/// history leaves it out.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct HistoryEntry {
    #[serde(skip)]
    pub id: String,
    #[sqlx(try_from = "String")]
    pub status: Status,
    /// When the gateway recorded it (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub at: String,
    /// What produced the entry: `EnrollmentAccepted` or the event's type.
    pub event: Option<String>,
}

/// An enrollment as its submitter sees it: nothing personal, no operator detail.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublicView {
    #[schema(format = Uuid)]
    pub id: String,
    pub status: Status,
    /// The customer this enrollment created (the submitter's own id; what it names is
    /// operator-only).
    #[schema(format = Uuid)]
    pub customer_id: Option<String>,
    pub bonus_points: Option<i64>,
    /// Why it was rejected or rolled back, in words fit for the public (see `saga::Step`).
    pub reason: Option<String>,
    /// Waiting for a service and unchanged for longer than the stall deadline (a saga that
    /// waits for its address's owner is never stalled).
    pub stalled: bool,
    /// Where the confirmation mail went, masked (`a…@example.com`); absent when the deployment
    /// does not ask for confirmation.
    #[schema(example = "a…@example.com")]
    pub mailed_to: Option<String>,
    /// The confirmation deadline (RFC 3339, UTC): unconfirmed by then, the enrollment ends
    /// `expired`. Absent without confirmation.
    #[schema(format = DateTime)]
    pub confirm_by: Option<String>,
    pub history: Vec<HistoryEntry>,
}

/// An enrollment as an operator sees it in the listing.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OperatorEntry {
    #[schema(format = Uuid)]
    pub id: String,
    #[sqlx(try_from = "String")]
    pub status: Status,
    /// The customer the saga enrolled; absent until there is one, so that every `customer_id`
    /// of the listing is an id to follow to `GET /api/customers/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Uuid, nullable = false)]
    pub customer_id: Option<String>,
    pub bonus_points: Option<i64>,
    /// The detailed reason, as the services gave it.
    pub reason: Option<String>,
    /// The reason as the submitter sees it.
    pub public_reason: Option<String>,
    /// With confirmation: whether the address already had a customer when the enrollment was
    /// submitted (its owner got a note instead of a link). Operators only: the public view of
    /// both is the same.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub already_enrolled: Option<bool>,
    #[serde(skip)]
    #[sqlx(rename = "already_enrolled")]
    pub already_enrolled_flag: Option<i64>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[sqlx(skip)]
    pub stalled: bool,
}

/// The enrollment an earlier request with the same idempotency key created.
#[derive(sqlx::FromRow)]
pub struct PriorSubmission {
    pub id: String,
    /// `None` for an enrollment accepted before view keys existed (migration 160).
    pub view_key: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: Status,
    #[sqlx(rename = "request_fingerprint")]
    pub fingerprint: String,
}

/// The enrollments row behind [`PublicView`].
#[derive(sqlx::FromRow)]
struct EnrollmentRow {
    id: String,
    #[sqlx(try_from = "String")]
    status: Status,
    customer_id: Option<String>,
    bonus_points: Option<i64>,
    public_reason: Option<String>,
    updated_at: String,
    mailed_to: Option<String>,
    confirm_by: Option<String>,
}

/// What the enrollment row keeps of a keyed request's body: the SHA-256 of the key and the
/// normalised fields, enough to tell a replay from a different body without holding the name
/// and address (decision 0042). Salted by the key, so equal bodies under different keys differ.
pub fn fingerprint_hash(key: &str, fields: &str) -> String {
    format!("sha256:{}", crate::confirmation::hash(&format!("{key}\n{fields}")))
}

pub struct NewEnrollment<'a> {
    pub id: Uuid,
    /// The public view's address (`http::view_key`).
    pub view_key: &'a str,
    pub name: &'a CustomerName,
    pub email: &'a Email,
    pub idempotency_key: Option<&'a str>,
    /// [`fingerprint_hash`] of the body under the key; empty without a key.
    pub fingerprint: &'a str,
    pub traceparent: String,
    /// Where to send its status changes, checked.
    pub callback_url: Option<&'a str>,
    /// With confirmation required: the token's link, deadline and masked address.
    pub confirmation: Option<NewConfirmation>,
}

/// A confirmation token as the gateway keeps it (its hash) and sends it (its link, once).
pub struct NewConfirmation {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// `<public origin>/confirm#<token>`.
    pub url: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The address, masked for the public view.
    pub mailed_to: String,
}

/// Stores the enrollment, its first history entry and the `Enroll` command in one transaction,
/// so an accepted enrollment is never lost even if the bus is down when it is accepted. The name
/// and address go only into the command: the outbox holds them until the relay sends it; the
/// enrollment row keeps empty `name` and `email` columns (decision 0042: kept, not yet dropped,
/// so that the release before this one still runs against the schema).
pub async fn accept(pool: &AnyPool, new: &NewEnrollment<'_>) -> Result<(), sqlx::Error> {
    let now = utility::storage::now();
    let mut tx = pool.begin().await?;
    let confirmation = new.confirmation.as_ref();
    sqlx::query(
        "INSERT INTO enrollments (id, name, email, status, idempotency_key, request_fingerprint, created_at, updated_at,
                                  history_seq, view_key, confirmation_token_hash, confirm_by, mailed_to, last_mailed_at,
                                  callback_url)
         VALUES ($1, '', '', $2, $3, $4, $5, $5, 1, $6, $7, $8, $9, $10, $11)",
    )
    .bind(new.id.to_string())
    .bind(Status::Pending.name())
    .bind(new.idempotency_key)
    .bind(new.fingerprint)
    .bind(&now)
    .bind(new.view_key)
    .bind(confirmation.map(|c| c.token_hash.as_str()))
    .bind(confirmation.map(|c| utility::storage::timestamp(c.expires_at)))
    .bind(confirmation.map(|c| c.mailed_to.as_str()))
    .bind(confirmation.map(|_| now.as_str()))
    .bind(new.callback_url)
    .execute(&mut *tx)
    .await?;
    let first = Numbered {
        seq: 1,
        callback: new.callback_url.is_some(),
    };
    insert_history(&mut tx, new.id, first, Status::Pending, "EnrollmentAccepted", &now).await?;
    let command = Envelope::new(
        Message::Enroll(Enroll {
            name: new.name.clone(),
            email: new.email.clone(),
            confirmation: confirmation.map(|c| ConfirmationLink {
                url: c.url.clone(),
                expires_at: c.expires_at,
            }),
        }),
        new.id,
    )
    .with_traceparent(Some(new.traceparent.clone()));
    outbox::enqueue(&mut tx, &command).await?;
    tx.commit().await
}

pub async fn find_by_key(pool: &AnyPool, key: &str) -> Result<Option<PriorSubmission>, sqlx::Error> {
    sqlx::query_as("SELECT id, view_key, status, request_fingerprint FROM enrollments WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// Gives an enrollment accepted before view keys existed the key `view_key`, unless it has one
/// by now; returns the key it has.
pub async fn give_view_key(pool: &AnyPool, id: &str, view_key: &str) -> Result<String, sqlx::Error> {
    sqlx::query("UPDATE enrollments SET view_key = $1 WHERE id = $2 AND view_key IS NULL")
        .bind(view_key)
        .bind(id)
        .execute(pool)
        .await?;
    sqlx::query_scalar("SELECT view_key FROM enrollments WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// The enrollment whose public view `view_key` addresses.
pub async fn enrollment_by_view_key(pool: &AnyPool, view_key: &str) -> Result<Option<Uuid>, sqlx::Error> {
    let id: Option<String> = sqlx::query_scalar("SELECT id FROM enrollments WHERE view_key = $1")
        .bind(view_key)
        .fetch_optional(pool)
        .await?;
    Ok(id.and_then(|id| Uuid::parse_str(&id).ok()))
}

/// The enrollment as its submitter sees it; `stall_cutoff` is the oldest `updated_at` that is not
/// stalled.
pub async fn view(pool: &AnyPool, id: Uuid, stall_cutoff: &str) -> Result<Option<PublicView>, sqlx::Error> {
    let row: Option<EnrollmentRow> = sqlx::query_as(
        "SELECT id, status, customer_id, bonus_points, public_reason, updated_at, mailed_to, confirm_by
         FROM enrollments WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let history = history(pool, id).await?;
    Ok(Some(PublicView {
        stalled: row.status.can_stall() && row.updated_at.as_str() < stall_cutoff,
        mailed_to: row.mailed_to,
        confirm_by: row.confirm_by,
        id: row.id,
        status: row.status,
        customer_id: row.customer_id,
        bonus_points: row.bonus_points,
        reason: row.public_reason,
        history,
    }))
}

/// An enrollment's history, oldest first; empty when there is no such enrollment (every
/// enrollment has its acceptance entry).
pub async fn history(pool: &AnyPool, id: Uuid) -> Result<Vec<HistoryEntry>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT id, status, at, event FROM enrollment_history WHERE enrollment_id = $1 {HISTORY_ORDER}"
    ))
    .bind(id.to_string())
    .fetch_all(pool)
    .await
}

/// The histories of `ids`, one query per 500 ids, each oldest first; an id without
/// history is absent.
pub async fn histories(
    pool: &AnyPool,
    ids: &[String],
) -> Result<std::collections::HashMap<String, Vec<HistoryEntry>>, sqlx::Error> {
    let mut histories = std::collections::HashMap::<String, Vec<HistoryEntry>>::new();
    for chunk in ids.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT enrollment_id, id, status, at, event FROM enrollment_history WHERE enrollment_id IN ({}) \
             {HISTORY_ORDER_BY_ENROLLMENT}",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_as::<_, EnrollmentHistoryRow>(&sql);
        for id in chunk {
            query = query.bind(id);
        }
        for row in query.fetch_all(pool).await? {
            histories.entry(row.enrollment_id).or_default().push(row.entry);
        }
    }
    Ok(histories)
}

#[derive(sqlx::FromRow)]
struct EnrollmentHistoryRow {
    enrollment_id: String,
    #[sqlx(flatten)]
    entry: HistoryEntry,
}

/// How many history entries each of `ids` has: what live updates compare to see a change.
pub async fn history_counts(pool: &AnyPool, ids: &[String]) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let mut counts = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT id, history_seq FROM enrollments WHERE id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_as(&sql);
        for id in chunk {
            query = query.bind(id);
        }
        counts.extend(query.fetch_all(pool).await?);
    }
    Ok(counts)
}

/// Holds a lookup reply for the instance that waits for it (`lookups.rs`). A redelivered reply
/// is already there: nothing more to do.
pub async fn store_lookup_reply(
    pool: &AnyPool,
    query_id: Uuid,
    body: &str,
    reply_by: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO lookup_replies (query_id, body, reply_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(query_id.to_string())
        .bind(body)
        .bind(utility::storage::timestamp(reply_by))
        .execute(pool)
        .await?;
    Ok(())
}

/// Takes the stored replies of these queries (read, then deleted): at most one instance waits
/// for each, so what it reads is its own.
pub async fn take_lookup_replies(pool: &AnyPool, query_ids: &[Uuid]) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let mut found = Vec::new();
    for chunk in query_ids.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT query_id, body FROM lookup_replies WHERE query_id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_as::<_, (String, String)>(&sql);
        for id in chunk {
            query = query.bind(id.to_string());
        }
        for (id, body) in query.fetch_all(pool).await? {
            let Ok(id) = Uuid::parse_str(&id) else { continue };
            sqlx::query("DELETE FROM lookup_replies WHERE query_id = $1")
                .bind(id.to_string())
                .execute(pool)
                .await?;
            found.push((id, body));
        }
    }
    Ok(found)
}

/// Deletes the stored replies whose asker stopped waiting; returns how many.
pub async fn sweep_lookup_replies(pool: &AnyPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM lookup_replies WHERE reply_by < $1")
        .bind(utility::storage::now())
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// A page of the operator listing, newest first: enrollments in `status` (any when `None`) older
/// than `before` (the cursor), at most `limit`.
pub async fn list(
    pool: &AnyPool,
    status: Option<Status>,
    before: Option<Uuid>,
    limit: i64,
    stall_cutoff: &str,
) -> Result<Vec<OperatorEntry>, sqlx::Error> {
    // Ids are UUID v7 in canonical text, so their order is the order of acceptance. The two
    // optional filters are bound as NULL when absent, which keeps the SQL one portable statement.
    let mut entries: Vec<OperatorEntry> = sqlx::query_as(
        "SELECT id, status, customer_id, bonus_points, reason, public_reason, already_enrolled, created_at, updated_at
         FROM enrollments
         WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(status.map(Status::name))
    .bind(before.map(|id| id.to_string()))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    for entry in &mut entries {
        entry.stalled = entry.status.can_stall() && entry.updated_at.as_str() < stall_cutoff;
        entry.already_enrolled = entry.already_enrolled_flag.map(|flag| flag != 0);
    }
    Ok(entries)
}

/// One enrollment as an operator sees it, by id.
pub async fn operator_entry(
    pool: &AnyPool,
    id: Uuid,
    stall_cutoff: &str,
) -> Result<Option<OperatorEntry>, sqlx::Error> {
    let entry: Option<OperatorEntry> = sqlx::query_as(
        "SELECT id, status, customer_id, bonus_points, reason, public_reason, already_enrolled, created_at, updated_at
         FROM enrollments WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?;
    Ok(entry.map(|mut entry| {
        entry.stalled = entry.status.can_stall() && entry.updated_at.as_str() < stall_cutoff;
        entry.already_enrolled = entry.already_enrolled_flag.map(|flag| flag != 0);
        entry
    }))
}

/// What the saga's handler reads of an enrollment before it applies an event.
#[derive(sqlx::FromRow)]
pub struct SagaState {
    #[sqlx(try_from = "String")]
    pub status: Status,
    /// When the stall sweeper reported it, if it has not moved since.
    pub stall_reported_at: Option<String>,
    pub created_at: String,
    /// The customer `CustomerEnrolled` named, once it has.
    pub customer_id: Option<String>,
}

/// The saga `id` as the handler's transaction sees it.
pub async fn saga(tx: &mut AnyConnection, id: Uuid) -> Result<Option<SagaState>, sqlx::Error> {
    sqlx::query_as("SELECT status, stall_reported_at, created_at, customer_id FROM enrollments WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(tx)
        .await
}

/// Moves the saga from `from` to `step.next` with what the step records, clears any stall report
/// and takes the history's next number (one statement). Empties `name` and `email`, which only
/// an instance of the release before decision 0042 still writes (during a roll-out). Conditional on `from`: `None` when
/// another writer moved the saga first; else the number of the history entry to write ([`Numbered`]).
pub async fn advance(
    tx: &mut AnyConnection,
    id: Uuid,
    from: Status,
    step: &Step,
    now: &str,
) -> Result<Option<Numbered>, sqlx::Error> {
    let numbered: Option<(i64, i64)> = sqlx::query_as(&format!(
        "UPDATE enrollments SET status = $1, customer_id = COALESCE($2, customer_id),
             bonus_points = COALESCE($3, bonus_points), reason = COALESCE($4, reason),
             public_reason = COALESCE($5, public_reason), updated_at = $6, stall_reported_at = NULL,
             history_seq = history_seq + 1, name = '', email = '',
             already_enrolled = COALESCE($9, already_enrolled)
         WHERE id = $7 AND status = $8
         {RETURNING_NUMBERED}"
    ))
    .bind(step.next.name())
    .bind(step.customer_id.map(|c| c.to_string()))
    .bind(step.bonus_points)
    .bind(step.reason.as_deref())
    .bind(step.public_reason)
    .bind(now)
    .bind(id.to_string())
    .bind(from.name())
    .bind(step.already_enrolled.map(i64::from))
    .fetch_optional(tx)
    .await?;
    Ok(numbered.map(Numbered::from))
}

/// Why an enrollment still waiting for its owner's confirmation ended: its personal data was
/// erased (fixed words, shown publicly).
const ERASED_BEFORE_CONFIRMATION: &str = "its personal data was erased before the address was confirmed";

/// What [`erase_personal_data`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Erasure {
    /// Erased here, and `ErasePersonalData` is in the outbox for the customer-api.
    Done,
    NotFound,
    /// The address's owner confirmed and the customer is being created: erasing now could
    /// overtake the creation. Retry shortly.
    BeingConfirmed,
    /// The `Enroll` carrying the name and address has not been relayed yet: erasing now would
    /// either strand the saga or let the customer-api store what was just erased. Retry shortly.
    NotRelayedYet,
}

/// An operator's erasure of an enrollment's personal data (decision 0042), in one transaction:
/// the row's fingerprint becomes `erased` (a replay of its key is then refused, as a different
/// body is), the sent `Enroll` rows of the outbox (which hold the name and address until the
/// retention sweeper would delete them) are deleted, and `ErasePersonalData` goes into the
/// outbox for the customer-api. The saga itself, its status and history stay.
pub async fn erase_personal_data(pool: &AnyPool, id: Uuid, traceparent: String) -> Result<Erasure, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let erased =
        sqlx::query("UPDATE enrollments SET name = '', email = '', request_fingerprint = 'erased' WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
    if erased.rows_affected() == 0 {
        return Ok(Erasure::NotFound);
    }
    let unsent: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE correlation_id = $1 AND message_type = $2 AND sent_at IS NULL",
    )
    .bind(id.to_string())
    .bind(MessageType::Enroll.name())
    .fetch_one(&mut *tx)
    .await?;
    if unsent > 0 {
        return Ok(Erasure::NotRelayedYet);
    }
    // A confirmation in progress: its owner's link must not confirm an enrollment whose data is
    // gone (the customer-api forgets what it holds for it), so one still waiting for the owner
    // ends `expired` now, and one the owner confirmed is left to finish first.
    let status: String = sqlx::query_scalar("SELECT status FROM enrollments WHERE id = $1")
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
    let status: Status = status.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    if status == Status::Confirmed {
        return Ok(Erasure::BeingConfirmed);
    }
    let now = utility::storage::now();
    let ended: Option<(i64, i64)> = sqlx::query_as(&format!(
        "UPDATE enrollments SET status = $1, updated_at = $2, stall_reported_at = NULL, public_reason = $3,
             reason = $3, history_seq = history_seq + 1
         WHERE id = $4 AND confirm_by IS NOT NULL AND status IN ($5, $6)
         {RETURNING_NUMBERED}"
    ))
    .bind(Status::Expired.name())
    .bind(&now)
    .bind(ERASED_BEFORE_CONFIRMATION)
    .bind(id.to_string())
    .bind(Status::Pending.name())
    .bind(Status::AwaitingConfirmation.name())
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(numbered) = ended {
        insert_history(
            &mut tx,
            id,
            numbered.into(),
            Status::Expired,
            "PersonalDataErased",
            &now,
        )
        .await?;
    }
    sqlx::query("UPDATE enrollments SET confirmation_token_hash = NULL, mailed_to = NULL WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    // The relayed commands that carried the name, the address or a confirmation link.
    sqlx::query("DELETE FROM outbox WHERE correlation_id = $1 AND message_type IN ($2, $3)")
        .bind(id.to_string())
        .bind(MessageType::Enroll.name())
        .bind(MessageType::ResendConfirmation.name())
        .execute(&mut *tx)
        .await?;
    let command =
        Envelope::new(Message::ErasePersonalData(ErasePersonalData {}), id).with_traceparent(Some(traceparent));
    outbox::enqueue(&mut tx, &command).await?;
    tx.commit().await?;
    Ok(Erasure::Done)
}

/// Replaces the fingerprints that still hold a request's fields (rows from before decision 0042,
/// or from an instance of that release during a roll-out) with their hash, and empties those
/// rows' `name` and `email`; returns how many. Run by the stall sweeper when it starts.
pub async fn hash_plain_fingerprints(pool: &AnyPool) -> Result<u64, sqlx::Error> {
    let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT id, idempotency_key, request_fingerprint FROM enrollments WHERE request_fingerprint LIKE '{%'",
    )
    .fetch_all(pool)
    .await?;
    let mut done = 0;
    for (id, key, fields) in rows {
        // Without a key the fingerprint is never compared: nothing to keep.
        let hashed = key.map(|key| fingerprint_hash(&key, &fields)).unwrap_or_default();
        done += sqlx::query(
            "UPDATE enrollments SET request_fingerprint = $1, name = '', email = ''
             WHERE id = $2 AND request_fingerprint = $3",
        )
        .bind(hashed)
        .bind(&id)
        .bind(&fields)
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok(done)
}

/// `status IN (...)` over the statuses that can stall (those waiting for a command), as
/// [`Status`] declares them: a saga waiting on a person is not stalled.
static OPEN: LazyLock<String> = LazyLock::new(|| {
    let names: Vec<String> = Status::stallable().map(|s| format!("'{}'", s.name())).collect();
    format!("status IN ({})", names.join(", "))
});

/// `status IN (...)` over [`Status::confirmable`].
static CONFIRMABLE: LazyLock<String> = LazyLock::new(|| {
    let names: Vec<String> = Status::confirmable()
        .iter()
        .map(|s| format!("'{}'", s.name()))
        .collect();
    format!("status IN ({})", names.join(", "))
});

/// The enrollment a confirmation token's hash names.
#[derive(Debug, sqlx::FromRow)]
pub struct TokenHolder {
    pub id: String,
    /// The public view's address (`None` only for an enrollment from before view keys, which
    /// never had a token either).
    pub view_key: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub confirm_by: Option<String>,
}

pub async fn by_token(pool: &AnyPool, token_hash: &str) -> Result<Option<TokenHolder>, sqlx::Error> {
    sqlx::query_as("SELECT id, view_key, status, confirm_by FROM enrollments WHERE confirmation_token_hash = $1")
        .bind(token_hash)
        .fetch_optional(pool)
        .await
}

/// The person confirmed: moves the saga from `from` to `confirmed`, clears the token (single
/// use) and sends `ConfirmEnrollment` through the outbox, in one transaction. Conditional on the
/// status, the token and the deadline: `false` when the saga moved, the token was used or
/// replaced, or the deadline passed meanwhile (nothing is changed then).
pub async fn confirm(
    pool: &AnyPool,
    id: Uuid,
    from: Status,
    token_hash: &str,
    traceparent: String,
) -> Result<bool, sqlx::Error> {
    let now = utility::storage::now();
    let mut tx = pool.begin().await?;
    let numbered: Option<(i64, i64)> = sqlx::query_as(&format!(
        "UPDATE enrollments SET status = $1, confirmation_token_hash = NULL, updated_at = $2, stall_reported_at = NULL,
             history_seq = history_seq + 1
         WHERE id = $3 AND status = $4 AND confirmation_token_hash = $5 AND confirm_by > $2
         {RETURNING_NUMBERED}"
    ))
    .bind(Status::Confirmed.name())
    .bind(&now)
    .bind(id.to_string())
    .bind(from.name())
    .bind(token_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(numbered) = numbered else {
        return Ok(false);
    };
    insert_history(
        &mut tx,
        id,
        numbered.into(),
        Status::Confirmed,
        "EnrollmentConfirmed",
        &now,
    )
    .await?;
    let command =
        Envelope::new(Message::ConfirmEnrollment(ConfirmEnrollment {}), id).with_traceparent(Some(traceparent));
    outbox::enqueue(&mut tx, &command).await?;
    tx.commit().await?;
    Ok(true)
}

/// What a resend finds of an enrollment.
#[derive(Debug, sqlx::FromRow)]
pub struct ResendState {
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub confirm_by: Option<String>,
    pub resends: i64,
    pub last_mailed_at: Option<String>,
}

pub async fn resend_state(pool: &AnyPool, id: Uuid) -> Result<Option<ResendState>, sqlx::Error> {
    sqlx::query_as("SELECT status, confirm_by, resends, last_mailed_at FROM enrollments WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(pool)
        .await
}

/// Replaces the token with a new one and sends `ResendConfirmation` through the outbox, in one
/// transaction. Conditional on what the caller read (`seen`: the status, the resend count): `false`
/// when another request resent or the saga moved meanwhile.
pub async fn resend(
    pool: &AnyPool,
    id: Uuid,
    seen: &ResendState,
    token_hash: &str,
    link: ConfirmationLink,
    traceparent: String,
) -> Result<bool, sqlx::Error> {
    let now = utility::storage::now();
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE enrollments SET confirmation_token_hash = $1, resends = resends + 1, last_mailed_at = $2
         WHERE id = $3 AND status = $4 AND resends = $5",
    )
    .bind(token_hash)
    .bind(&now)
    .bind(id.to_string())
    .bind(seen.status.name())
    .bind(seen.resends)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    record_history(&mut tx, id, seen.status, "ConfirmationResent", &now).await?;
    let command = Envelope::new(
        Message::ResendConfirmation(ResendConfirmation { confirmation: link }),
        id,
    )
    .with_traceparent(Some(traceparent));
    outbox::enqueue(&mut tx, &command).await?;
    tx.commit().await?;
    Ok(true)
}

/// An enrollment past its confirmation deadline, not confirmed.
#[derive(Debug, sqlx::FromRow)]
pub struct Unconfirmed {
    pub id: String,
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub created_at: String,
}

/// Enrollments still waiting for their confirmation whose deadline is before `now`, oldest
/// deadline first, at most `limit`.
pub async fn past_deadline(pool: &AnyPool, now: &str, limit: i64) -> Result<Vec<Unconfirmed>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT id, status, created_at FROM enrollments WHERE {} AND confirm_by < $1 ORDER BY confirm_by, id LIMIT $2",
        *CONFIRMABLE
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Ends an unconfirmed enrollment `expired` and sends `ForgetEnrollment` through the outbox, in
/// one transaction. Conditional on its status (and deadline): `false` when it was confirmed, or
/// another instance expired it, meanwhile.
pub async fn expire(pool: &AnyPool, saga: &Unconfirmed, public_reason: &str) -> Result<bool, sqlx::Error> {
    let now = utility::storage::now();
    let id = Uuid::parse_str(&saga.id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let mut tx = pool.begin().await?;
    let numbered: Option<(i64, i64)> = sqlx::query_as(&format!(
        "UPDATE enrollments SET status = $1, updated_at = $2, stall_reported_at = NULL, public_reason = $3,
             reason = $3, history_seq = history_seq + 1
         WHERE id = $4 AND status = $5 AND confirm_by < $2
         {RETURNING_NUMBERED}"
    ))
    .bind(Status::Expired.name())
    .bind(&now)
    .bind(public_reason)
    .bind(&saga.id)
    .bind(saga.status.name())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(numbered) = numbered else {
        return Ok(false);
    };
    insert_history(
        &mut tx,
        id,
        numbered.into(),
        Status::Expired,
        "ConfirmationExpired",
        &now,
    )
    .await?;
    let command = Envelope::new(
        Message::ForgetEnrollment(ForgetEnrollment {
            reason: public_reason.to_owned(),
        }),
        id,
    )
    .with_traceparent(Some(utility::messaging::envelope::new_traceparent()));
    outbox::enqueue(&mut tx, &command).await?;
    tx.commit().await?;
    Ok(true)
}

/// An open saga that has not moved since a cutoff.
#[derive(Debug, sqlx::FromRow)]
pub struct OpenSaga {
    pub id: String,
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub updated_at: String,
}

/// How many open sagas have not moved since `cutoff`.
pub async fn count_stalled(pool: &AnyPool, cutoff: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM enrollments WHERE {} AND updated_at < $1",
        *OPEN
    ))
    .bind(cutoff)
    .fetch_one(pool)
    .await
}

/// Open sagas that have not moved since `cutoff`, oldest first, at most `limit`; with
/// `unreported`, only those the stall sweeper has not reported yet.
pub async fn stalled(pool: &AnyPool, cutoff: &str, unreported: bool, limit: i64) -> Result<Vec<OpenSaga>, sqlx::Error> {
    let unreported = if unreported {
        "AND stall_reported_at IS NULL"
    } else {
        ""
    };
    sqlx::query_as(&format!(
        "SELECT id, status, updated_at FROM enrollments WHERE {} AND updated_at < $1 {unreported}
         ORDER BY updated_at, id LIMIT $2",
        *OPEN
    ))
    .bind(cutoff)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Notes that `saga` was reported stalled at `now`, unless it has moved since it was read.
pub async fn mark_stall_reported(pool: &AnyPool, saga: &OpenSaga, now: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE enrollments SET stall_reported_at = $1 WHERE id = $2 AND updated_at = $3")
        .bind(now)
        .bind(&saga.id)
        .bind(&saga.updated_at)
        .execute(pool)
        .await?;
    Ok(())
}

/// Enrollments by status (statuses without any are left out).
pub async fn count_by_status(pool: &AnyPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, COUNT(*) FROM enrollments GROUP BY status")
        .fetch_all(pool)
        .await
}

/// Appends a history entry with the enrollment's next sequence number. Taking the number locks
/// the enrollment's row until the transaction ends, so two writers of one enrollment's history
/// (a late event beside a moving one) queue up, and the numbers follow the commit order.
pub(crate) async fn record_history(
    tx: &mut AnyConnection,
    id: Uuid,
    status: Status,
    event: &str,
    at: &str,
) -> Result<(), sqlx::Error> {
    let numbered: (i64, i64) = sqlx::query_as(&format!(
        "UPDATE enrollments SET history_seq = history_seq + 1 WHERE id = $1 {RETURNING_NUMBERED}"
    ))
    .bind(id.to_string())
    .fetch_one(&mut *tx)
    .await?;
    insert_history(tx, id, numbered.into(), status, event, at).await
}

/// A history entry's number, taken under the enrollment's row lock, and whether the enrollment's
/// status events are for a callback (it has a `callback_url` whose receiver has not answered
/// 410), read in the same statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbered {
    pub seq: i64,
    pub callback: bool,
}

/// What every statement that takes an enrollment's next history number returns: the number and
/// whether it has a callback (1 or 0: SQLite has no booleans), as [`Numbered`].
const RETURNING_NUMBERED: &str =
    "RETURNING history_seq, CASE WHEN callback_url IS NOT NULL AND callback_gone_at IS NULL THEN 1 ELSE 0 END";

impl From<(i64, i64)> for Numbered {
    fn from((seq, callback): (i64, i64)) -> Self {
        Self {
            seq,
            callback: callback != 0,
        }
    }
}

/// Writes history entry `numbered.seq` (taken under the enrollment's row lock, by
/// [`record_history`], [`advance`] or the enrollment's insert), and in the same transaction the
/// `EnrollmentStatusChanged` that tells the gateway's topic about it (webhooks, any subscriber),
/// with its `callback` attribute: the webhook deliveries' subscription admits only those of an
/// enrollment with a callback.
pub(crate) async fn insert_history(
    tx: &mut AnyConnection,
    id: Uuid,
    numbered: Numbered,
    status: Status,
    event: &str,
    at: &str,
) -> Result<(), sqlx::Error> {
    let Numbered { seq, callback } = numbered;
    sqlx::query(
        "INSERT INTO enrollment_history (id, enrollment_id, status, event, at, seq) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(id.to_string())
    .bind(status.name())
    .bind(event)
    .bind(at)
    .bind(seq)
    .execute(&mut *tx)
    .await?;
    let changed = Message::EnrollmentStatusChanged(EnrollmentStatusChanged {
        sequence: seq,
        status: status.name().to_owned(),
        at: at.to_owned(),
        event: event.to_owned(),
    });
    let callback = if callback { CALLBACK_YES } else { CALLBACK_NO };
    outbox::enqueue_with_attributes(tx, &Envelope::new(changed, id), &[(CALLBACK.name, callback)]).await
}

/// History in the order the saga took (entries written before sequence numbers existed first,
/// by time).
const HISTORY_ORDER: &str = "ORDER BY COALESCE(seq, 0), at, id";
/// [`HISTORY_ORDER`] within each enrollment.
const HISTORY_ORDER_BY_ENROLLMENT: &str = "ORDER BY enrollment_id, COALESCE(seq, 0), at, id";
