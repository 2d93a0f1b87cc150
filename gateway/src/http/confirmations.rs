//! Confirmation by e-mail, the person's half (decision 0035): the page the mailed link opens,
//! the POST its button makes, and the resend of a lost mail.
//!
//! A GET confirms nothing (mail scanners fetch links): the page reads the token from the
//! fragment, which no server sees, and POSTs it when the button is pressed. The token alone
//! names its enrollment; it is single use, and refused after the deadline even before the
//! expiry scan has ended the enrollment.

use super::{AppState, enrollments, page};
use crate::confirmation::{self, Token};
use crate::saga::Status;
use crate::store;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::time::Duration;
use utility::domain::FieldError;
use utility::http::{Problem, ProblemJson, ProblemPath};
use utility::messaging::message::ConfirmationLink;

/// Shortest time between two mails of one enrollment (the first one included).
pub(super) const RESEND_INTERVAL: Duration = Duration::from_secs(60);
/// Resends one enrollment may have in all.
pub(super) const MAX_RESENDS: i64 = 5;

const CONFIRM_HTML: &str = include_str!("../../assets/confirm.html");

/// The body of `POST /api/confirmations`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct ConfirmationInput {
    /// The token from the mailed link's fragment (`/confirm#<token>`): 43 base64url characters.
    #[schema(min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    token: String,
}

/// The answer to a resend.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Resent {
    /// Resends this enrollment has left.
    resends_left: i64,
    /// Seconds until the next resend is possible.
    next_resend_after: u64,
}

/// The confirmation page.
///
/// What the mailed link opens: one button that confirms the enrollment named by the token in
/// the link's fragment. Fetching it confirms nothing.
#[utoipa::path(
    get,
    path = "/confirm",
    tag = "page",
    operation_id = "confirmationPage",
    responses((status = 200, description = "The page.", body = String, content_type = "text/html")),
)]
pub(super) async fn page() -> Response {
    page::asset("text/html; charset=utf-8", CONFIRM_HTML)
}

fn not_valid() -> Problem {
    Problem::not_found("this confirmation link is not valid, or it was already used")
}

fn too_late(confirm_by: &str) -> Problem {
    Problem::new(
        StatusCode::GONE,
        "Gone",
        format!("this confirmation link expired at {confirm_by}; the enrollment was not confirmed, submit it again"),
    )
}

/// Whether the deadline stored as `confirm_by` has passed.
fn past(confirm_by: &str) -> bool {
    confirm_by <= utility::storage::now().as_str()
}

/// Confirm an enrollment.
///
/// The person who received the mail presses the page's button: the enrollment goes on
/// (`confirmed`, then as without confirmation), and the token is used up.
#[utoipa::path(
    post,
    path = "/api/confirmations",
    tag = "enrollments",
    operation_id = "confirmEnrollment",
    request_body(content = ConfirmationInput, content_type = "application/json"),
    responses(
        (status = 200, description = "Confirmed: the enrollment as it stands.", body = store::PublicView, headers(
            ("Location" = String, description = "The enrollment's address."))),
        (status = 400, description = "Malformed JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The token is not valid, or was already used.", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The confirmation deadline has passed.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body has no `token` string.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this client; retry after `Retry-After` seconds.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
#[tracing::instrument(skip_all, fields(enrollment_id = tracing::field::Empty))]
pub(super) async fn confirm(
    State(state): State<AppState>,
    ProblemJson(body): ProblemJson<Value>,
) -> Result<Response, Problem> {
    let token = match body.get("token") {
        Some(Value::String(token)) => token,
        _ => {
            return Err(Problem::invalid(vec![FieldError {
                field: "token",
                message: "is required: the text after `#` in the mailed link".into(),
            }]));
        }
    };
    if !confirmation::looks_like_token(token) {
        return Err(not_valid());
    }
    let token_hash = confirmation::hash(token);
    let holder = store::by_token(&state.pool, &token_hash).await?.ok_or_else(not_valid)?;
    tracing::Span::current().record("enrollment_id", holder.id.as_str());
    let confirm_by = holder.confirm_by.as_deref().unwrap_or_default();
    if holder.status == Status::Expired || past(confirm_by) {
        return Err(too_late(confirm_by));
    }
    if !Status::confirmable().contains(&holder.status) {
        return Err(not_valid());
    }
    let id = enrollments::parse_id(&holder.id, "enrollment")?;
    let mut from = holder.status;
    // The saga may move from `pending` to `awaiting_confirmation` (the mail went out) between the
    // read and the update; the token is still good then, so the update is tried from there.
    let mut tries = Status::confirmable().len();
    while !store::confirm(&state.pool, id, from, &token_hash, enrollments::traceparent()).await? {
        // Used, replaced or expired between the read and the update, or the saga moved on.
        match store::by_token(&state.pool, &token_hash).await? {
            Some(now) if now.status == Status::Expired || past(confirm_by) => return Err(too_late(confirm_by)),
            Some(now) if now.status != from && Status::confirmable().contains(&now.status) && tries > 1 => {
                from = now.status;
                tries -= 1;
            }
            _ => return Err(not_valid()),
        }
    }
    state.outbox_signal.notify_one();
    tracing::info!("enrollment confirmed by its address's owner");
    let cutoff = utility::storage::cutoff(state.stall_after);
    let view = store::view(&state.pool, id, &cutoff)
        .await?
        .ok_or_else(|| Problem::internal(anyhow::anyhow!("confirmed enrollment {id} is gone")))?;
    let mut response = Json(view).into_response();
    if let Some(location) = holder
        .view_key
        .as_deref()
        .and_then(|key| HeaderValue::from_str(&format!("/api/enrollments/{key}")).ok())
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Mail the confirmation again.
///
/// A new link replaces the previous one (which no longer confirms); the deadline stays. At most
/// one mail a minute (the first one included) and five resends per enrollment.
#[utoipa::path(
    post,
    path = "/api/enrollments/{view_key}/resend",
    tag = "enrollments",
    operation_id = "resendConfirmation",
    params(enrollments::ViewKey),
    responses(
        (status = 202, description = "A new mail is on its way.", body = Resent),
        (status = 400, description = "This is not a view key (an enrollment id is not one).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No enrollment has this view key.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The enrollment does not wait for a confirmation.", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The confirmation deadline has passed.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too soon after the last mail (retry after `Retry-After` seconds), or no resends left (no `Retry-After`).",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
#[tracing::instrument(skip_all, fields(enrollment_id = tracing::field::Empty))]
pub(super) async fn resend(
    State(state): State<AppState>,
    ProblemPath(view_key): ProblemPath<String>,
) -> Result<Response, Problem> {
    let id = enrollments::resolve(&state.pool, &view_key).await?;
    tracing::Span::current().record("enrollment_id", tracing::field::display(id));
    let seen = store::resend_state(&state.pool, id)
        .await?
        .ok_or_else(|| Problem::not_found("no enrollment at this address"))?;
    let (Some(settings), Some(confirm_by)) = (state.confirmation.as_ref(), seen.confirm_by.as_deref()) else {
        return Err(Problem::conflict(
            "this enrollment does not wait for an e-mail confirmation",
        ));
    };
    if seen.status == Status::Expired || past(confirm_by) {
        return Err(too_late(confirm_by));
    }
    if seen.status != Status::AwaitingConfirmation {
        return Err(Problem::conflict(format!(
            "this enrollment does not wait for an e-mail confirmation (it is {})",
            seen.status
        )));
    }
    if seen.resends >= MAX_RESENDS {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
            format!("the confirmation was already sent again {MAX_RESENDS} times; no more resends"),
        ));
    }
    let wait = seen.last_mailed_at.as_deref().map_or(0, seconds_until_next);
    if wait > 0 {
        return Ok(too_soon(wait));
    }
    let token = Token::new();
    let expires_at = chrono::DateTime::parse_from_rfc3339(confirm_by)
        .map_err(Problem::internal)?
        .with_timezone(&chrono::Utc);
    let link = ConfirmationLink {
        url: token.url(&settings.origin),
        expires_at,
    };
    if !store::resend(&state.pool, id, &seen, &token.hash, link, enrollments::traceparent()).await? {
        // Another resend (or a confirmation) got there first.
        return Ok(too_soon(RESEND_INTERVAL.as_secs()));
    }
    state.outbox_signal.notify_one();
    tracing::info!("confirmation mail to be sent again");
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Resent {
            resends_left: MAX_RESENDS - seen.resends - 1,
            next_resend_after: RESEND_INTERVAL.as_secs(),
        }),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Seconds until a mail last sent at `last` may be followed by another (0: now).
fn seconds_until_next(last: &str) -> u64 {
    let Ok(last) = chrono::DateTime::parse_from_rfc3339(last) else {
        return 0;
    };
    let next = last.with_timezone(&chrono::Utc) + chrono::Duration::from_std(RESEND_INTERVAL).unwrap_or_default();
    let left = next - chrono::Utc::now();
    let millis = left.num_milliseconds();
    if millis <= 0 { 0 } else { (millis as u64).div_ceil(1000) }
}

/// 429 with `Retry-After`: the last mail is too recent.
fn too_soon(seconds: u64) -> Response {
    let mut response = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "Too Many Requests",
        format!("a confirmation mail was sent less than a minute ago; retry after {seconds} s (Retry-After)"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}
