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
use utility::messaging::message::{Enroll, EnrollmentStatusChanged, Message};
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
    /// Not terminal and unchanged for longer than the stall deadline.
    pub stalled: bool,
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
}

pub struct NewEnrollment<'a> {
    pub id: Uuid,
    pub name: &'a CustomerName,
    pub email: &'a Email,
    pub idempotency_key: Option<&'a str>,
    pub fingerprint: &'a str,
    pub traceparent: String,
    /// Where to send its status changes, checked.
    pub callback_url: Option<&'a str>,
}

/// Stores the enrollment, its first history entry and the `Enroll` command in one transaction,
/// so an accepted enrollment is never lost even if the bus is down when it is accepted.
pub async fn accept(pool: &AnyPool, new: &NewEnrollment<'_>) -> Result<(), sqlx::Error> {
    let now = utility::storage::now();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO enrollments (id, name, email, status, idempotency_key, request_fingerprint, created_at, updated_at,
                                  history_seq, callback_url)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, 1, $8)",
    )
    .bind(new.id.to_string())
    .bind(new.name.as_str())
    .bind(new.email.as_str())
    .bind(Status::Pending.name())
    .bind(new.idempotency_key)
    .bind(new.fingerprint)
    .bind(&now)
    .bind(new.callback_url)
    .execute(&mut *tx)
    .await?;
    insert_history(&mut tx, new.id, 1, Status::Pending, "EnrollmentAccepted", &now).await?;
    let command = Envelope::new(
        Message::Enroll(Enroll {
            name: new.name.clone(),
            email: new.email.clone(),
            confirmation: None,
        }),
        new.id,
    )
    .with_traceparent(Some(new.traceparent.clone()));
    outbox::enqueue(&mut tx, &command).await?;
    tx.commit().await
}

pub async fn find_by_key(pool: &AnyPool, key: &str) -> Result<Option<PriorSubmission>, sqlx::Error> {
    sqlx::query_as("SELECT id, status, request_fingerprint FROM enrollments WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// The enrollment as its submitter sees it; `stall_cutoff` is the oldest `updated_at` that is not
/// stalled.
pub async fn view(pool: &AnyPool, id: Uuid, stall_cutoff: &str) -> Result<Option<PublicView>, sqlx::Error> {
    let row: Option<EnrollmentRow> = sqlx::query_as(
        "SELECT id, status, customer_id, bonus_points, public_reason, updated_at FROM enrollments WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let history = history(pool, id).await?;
    Ok(Some(PublicView {
        stalled: !row.status.is_terminal() && row.updated_at.as_str() < stall_cutoff,
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
        "SELECT id, status, customer_id, bonus_points, reason, public_reason, created_at, updated_at
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
        entry.stalled = !entry.status.is_terminal() && entry.updated_at.as_str() < stall_cutoff;
    }
    Ok(entries)
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
/// and takes the history's next number (one statement). Conditional on `from`: `None` when
/// another writer moved the saga first; else the number of the history entry to write.
pub async fn advance(
    tx: &mut AnyConnection,
    id: Uuid,
    from: Status,
    step: &Step,
    now: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE enrollments SET status = $1, customer_id = COALESCE($2, customer_id),
             bonus_points = COALESCE($3, bonus_points), reason = COALESCE($4, reason),
             public_reason = COALESCE($5, public_reason), updated_at = $6, stall_reported_at = NULL,
             history_seq = history_seq + 1
         WHERE id = $7 AND status = $8
         RETURNING history_seq",
    )
    .bind(step.next.name())
    .bind(step.customer_id.map(|c| c.to_string()))
    .bind(step.bonus_points)
    .bind(step.reason.as_deref())
    .bind(step.public_reason)
    .bind(now)
    .bind(id.to_string())
    .bind(from.name())
    .fetch_optional(tx)
    .await
}

/// `status IN (...)` over the open statuses, as [`Status`] declares them.
static OPEN: LazyLock<String> = LazyLock::new(|| {
    let names: Vec<String> = Status::open().map(|s| format!("'{}'", s.name())).collect();
    format!("status IN ({})", names.join(", "))
});

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
    let seq: i64 =
        sqlx::query_scalar("UPDATE enrollments SET history_seq = history_seq + 1 WHERE id = $1 RETURNING history_seq")
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
    insert_history(tx, id, seq, status, event, at).await
}

/// Writes history entry number `seq` (taken under the enrollment's row lock, by
/// [`record_history`], [`advance`] or the enrollment's insert), and in the same transaction the
/// `EnrollmentStatusChanged` that tells the gateway's topic about it (webhooks, any subscriber).
pub(crate) async fn insert_history(
    tx: &mut AnyConnection,
    id: Uuid,
    seq: i64,
    status: Status,
    event: &str,
    at: &str,
) -> Result<(), sqlx::Error> {
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
    outbox::enqueue(tx, &Envelope::new(changed, id)).await
}

/// History in the order the saga took (entries written before sequence numbers existed first,
/// by time).
const HISTORY_ORDER: &str = "ORDER BY COALESCE(seq, 0), at, id";
