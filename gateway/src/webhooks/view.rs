//! What operators see of an enrollment's webhooks: each delivery (one per status change) with
//! its attempts, and the count of deliveries not yet ended for the metrics.

use serde::Serialize;
use sqlx::AnyPool;

/// Attempts shown per delivery, the latest ones. The 24 h schedule bounds a delivery's attempts
/// (a few dozen with the default back-off, whose waits reach an hour); this bounds the answer
/// whatever the settings.
pub const MAX_ATTEMPTS_SHOWN: i64 = 100;

/// One status change's webhook.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WebhookDelivery {
    /// The `webhook-id` it is sent with: the same on every attempt.
    #[schema(format = Uuid)]
    pub webhook_id: String,
    /// The history entry's number it carries (`data.sequence`).
    #[sqlx(skip)]
    pub sequence: Option<i64>,
    /// The status it carries (`data.status`).
    #[sqlx(skip)]
    pub status: Option<String>,
    /// `pending` (due at `next_attempt_at`), `delivered` (2xx), `stopped` (410), or `failed`
    /// (refused address, or still failing 24 h after the status change).
    pub state: String,
    /// Attempts made so far.
    pub attempts: i64,
    /// The last attempt's HTTP status, if it got one.
    pub last_status: Option<i64>,
    /// Why the last attempt did not deliver, if it did not.
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// Its attempts, oldest first: the last 100 at most (`attempts` counts them all).
    #[sqlx(skip)]
    pub attempt_log: Vec<WebhookAttempt>,
    #[serde(skip)]
    #[schema(ignore)]
    body: String,
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WebhookAttempt {
    #[serde(skip)]
    #[schema(ignore)]
    delivery_id: String,
    /// 1 for the first.
    pub attempt: i64,
    #[schema(format = DateTime)]
    pub at: String,
    /// `delivered` (2xx), `retry` (timeout, connection failure, any other status), `gone` (410)
    /// or `refused` (an address or port callbacks may not reach: no request sent).
    pub result: String,
    pub http_status: Option<i64>,
    /// The request's duration (0 when none was sent).
    pub duration_ms: i64,
    pub error: Option<String>,
}

/// The deliveries of `enrollment_id` in the order of the status changes they carry, each with
/// its last [`MAX_ATTEMPTS_SHOWN`] attempts.
pub async fn deliveries(pool: &AnyPool, enrollment_id: &str) -> Result<Vec<WebhookDelivery>, sqlx::Error> {
    let mut deliveries: Vec<WebhookDelivery> = sqlx::query_as(
        "SELECT id AS webhook_id, state, attempts, last_status, last_error, next_attempt_at, finished_at, body
         FROM webhook_deliveries WHERE enrollment_id = $1 ORDER BY created_at, id",
    )
    .bind(enrollment_id)
    .fetch_all(pool)
    .await?;
    let mut attempts: Vec<WebhookAttempt> = sqlx::query_as(
        "SELECT a.delivery_id, a.attempt, a.at, a.result, a.http_status, a.duration_ms, a.error
         FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
         WHERE d.enrollment_id = $1 AND a.attempt > d.attempts - $2
         ORDER BY a.delivery_id, a.attempt",
    )
    .bind(enrollment_id)
    .bind(MAX_ATTEMPTS_SHOWN)
    .fetch_all(pool)
    .await?;
    for delivery in &mut deliveries {
        let body: serde_json::Value = serde_json::from_str(&delivery.body).unwrap_or_default();
        delivery.sequence = body["data"]["sequence"].as_i64();
        delivery.status = body["data"]["status"].as_str().map(str::to_owned);
        let (mine, others) = attempts.into_iter().partition(|a| a.delivery_id == delivery.webhook_id);
        delivery.attempt_log = mine;
        attempts = others;
    }
    deliveries.sort_by_key(|d| d.sequence);
    Ok(deliveries)
}

/// The enrollment's callback as submitted, and when its receiver answered 410 (`None` for an
/// enrollment that does not exist).
pub async fn callback(
    pool: &AnyPool,
    enrollment_id: &str,
) -> Result<Option<(Option<String>, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT callback_url, callback_gone_at FROM enrollments WHERE id = $1")
        .bind(enrollment_id)
        .fetch_optional(pool)
        .await
}

/// Deliveries not yet ended.
pub async fn pending(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'")
        .fetch_one(pool)
        .await
}
