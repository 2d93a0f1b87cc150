//! The operator surface, behind `Authorization: Bearer <OPERATOR_TOKEN>` (see `edge`): every
//! enrollment with the detailed reasons, one enrollment's saga with its webhooks, the stalled sagas, and lookups of the customer-api's
//! records (names, e-mails) and the transaction-api's ledgers, asked over the bus.

use super::AppState;
use super::enrollments::parse_id;
use crate::lookups::LookupError;
use crate::saga::Status;
use crate::store;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utility::domain::FieldError;
use utility::http::{Problem, ProblemPath};
use uuid::Uuid;

/// Page size of the listing, and its upper bound.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// The listing's query. Read as text and checked by [`Listing::parse`], so that every bad
/// parameter is named in one 422; the document shows what each must be. A parameter given with
/// an empty value is refused, not read as absent: `cursor=` is what a client sends when it
/// passes a last page's null `next_cursor` on, and reading it as "from the start" would have
/// that client page through the listing forever.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only enrollments with this status.
    #[param(value_type = Option<Status>)]
    status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page (omit it for the first page).
    #[param(value_type = Option<Uuid>)]
    cursor: Option<String>,
}

/// A page of the listing, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct EnrollmentPage {
    enrollments: Vec<store::OperatorEntry>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(format = Uuid)]
    next_cursor: Option<String>,
}

/// One enrollment as operators see it: the listing's entry, its callback, and the webhook of
/// each status change with its attempts.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct SagaView {
    #[serde(flatten)]
    enrollment: store::OperatorEntry,
    /// The `callback_url` it was submitted with; null without one.
    #[schema(format = "uri")]
    callback_url: Option<String>,
    /// When its receiver answered 410 Gone, which stopped its callbacks; null until then.
    #[schema(format = DateTime)]
    callback_gone_at: Option<String>,
    /// One per status change to call back, in the order of their `sequence`; empty without a
    /// callback. A delivery's attempts are bounded by its 24 h schedule, and the last 100 at
    /// most are shown.
    deliveries: Vec<crate::webhooks::view::WebhookDelivery>,
}

/// The sagas that have not moved for the stall deadline, oldest first (at most 500).
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct StalledList {
    stall_after_seconds: u64,
    stalled: Vec<crate::stalls::StalledSaga>,
}

/// The customer id in the path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct CustomerId {
    /// A customer id (UUID), as an enrollment's `customer_id` shows it.
    id: Uuid,
}

/// A validated listing request.
struct Listing {
    status: Option<Status>,
    limit: i64,
    /// The last id of the previous page: ids are UUID v7, so newest first is id order.
    before: Option<Uuid>,
}

impl Listing {
    fn parse(query: ListQuery) -> Result<Self, Problem> {
        let mut errors = Vec::new();
        let status = match query.status.as_deref() {
            None => None,
            Some(text) => match text.parse::<Status>() {
                Ok(status) => Some(status),
                Err(_) => {
                    let known: Vec<&str> = <Status as strum::VariantArray>::VARIANTS
                        .iter()
                        .map(|s| s.name())
                        .collect();
                    errors.push(FieldError::new(
                        "status",
                        format!("must be one of {}", known.join(", ")),
                    ));
                    None
                }
            },
        };
        let limit = match query.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    errors.push(FieldError::new(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LIMIT}"),
                    ));
                    DEFAULT_LIMIT
                }
            },
        };
        let before = match query.cursor.as_deref() {
            None => None,
            Some(text) => match Uuid::parse_str(text) {
                Ok(id) => Some(id),
                Err(_) => {
                    errors.push(FieldError::new(
                        "cursor",
                        "must be the `next_cursor` of an earlier page",
                    ));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(Problem::invalid(errors));
        }
        Ok(Self { status, limit, before })
    }
}

/// List enrollments (operator).
///
/// Newest first, a page at a time, with the detailed reasons.
#[utoipa::path(
    get,
    path = "/api/enrollments",
    tag = "operator",
    operation_id = "listEnrollments",
    params(ListQuery),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "A page of enrollments.", body = EnrollmentPage),
        (status = 400, description = "The query string is malformed.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is invalid (an empty one included); `invalid-params` names each one.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<EnrollmentPage>, Problem> {
    let listing = Listing::parse(query)?;
    let cutoff = utility::storage::cutoff(state.stall_after);
    let mut page = store::list(&state.pool, listing.status, listing.before, listing.limit + 1, &cutoff).await?;
    let more = page.len() as i64 > listing.limit;
    page.truncate(listing.limit as usize);
    let next_cursor = more.then(|| page.last().map(|e| e.id.clone())).flatten();
    Ok(Json(EnrollmentPage {
        enrollments: page,
        next_cursor,
    }))
}

/// Read an enrollment's saga (operator).
///
/// The enrollment with the detailed reasons, as the listing shows it, and its callbacks: the
/// `callback_url`, and for each status change its webhook's delivery (state, attempts, the last
/// status or error, when it is due again or ended) with each attempt's result, HTTP status and
/// duration. By the enrollment's id, not its view key.
#[utoipa::path(
    get,
    path = "/api/sagas/{id}",
    tag = "operator",
    operation_id = "getSaga",
    params(EnrollmentId),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "The enrollment and its callbacks.", body = SagaView),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such enrollment.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(super) async fn saga(
    State(state): State<AppState>,
    ProblemPath(id): ProblemPath<String>,
) -> Result<Json<SagaView>, Problem> {
    let id = parse_id(&id, "enrollment")?;
    let cutoff = utility::storage::cutoff(state.stall_after);
    let not_found = || Problem::not_found(format!("no enrollment {id}"));
    let enrollment = store::operator_entry(&state.pool, id, &cutoff)
        .await?
        .ok_or_else(not_found)?;
    let (callback_url, callback_gone_at) = crate::webhooks::view::callback(&state.pool, &enrollment.id)
        .await?
        .ok_or_else(not_found)?;
    let deliveries = crate::webhooks::view::deliveries(&state.pool, &enrollment.id).await?;
    Ok(Json(SagaView {
        enrollment,
        callback_url,
        callback_gone_at,
        deliveries,
    }))
}

/// Stalled sagas (operator).
///
/// Sagas that have not moved for the stall deadline, oldest first, each with what it waits for.
#[utoipa::path(
    get,
    path = "/api/enrollments/stalled",
    tag = "operator",
    operation_id = "listStalledSagas",
    security(("operator_token" = [])),
    responses((status = 200, description = "The stalled sagas.", body = StalledList)),
)]
pub(super) async fn stalled(State(state): State<AppState>) -> Result<Json<StalledList>, Problem> {
    let stalled = crate::stalls::list(&state.pool, &utility::storage::cutoff(state.stall_after)).await?;
    Ok(Json(StalledList {
        stall_after_seconds: state.stall_after.as_secs(),
        stalled,
    }))
}

/// The gateway's metrics (operator).
///
/// Prometheus metrics in the OpenMetrics text format: messages by queue, type and outcome,
/// handler and HTTP latency, the outbox backlog, database pools, the sagas by status,
/// stalled, and their durations by outcome, and the webhooks' attempts, deliveries and latency.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operator",
    operation_id = "metrics",
    security(("operator_token" = [])),
    responses((status = 200, description = "The metrics.", body = String,
        content_type = "application/openmetrics-text")),
)]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    utility::http::metrics(state.metrics.clone()).await
}

/// Erase an enrollment's personal data (operator).
///
/// The gateway keeps no name or address once the `Enroll` is relayed; this also forgets the
/// request's fingerprint (a replay of its `Idempotency-Key` is then refused with 409) and the
/// relayed command, and sends `ErasePersonalData` to the customer-api, which replaces the
/// customer's name and address with a tombstone and keeps the row, so the ledger's postings
/// still name a customer. The saga, its status and history stay. Asynchronous for the
/// customer-api's part; repeating it is harmless.
#[utoipa::path(
    delete,
    path = "/api/enrollments/{id}/personal-data",
    tag = "operator",
    operation_id = "erasePersonalData",
    params(EnrollmentId),
    security(("operator_token" = [])),
    responses(
        (status = 202, description = "Erased here; the customer-api's erasure is on its way."),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such enrollment.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The enrollment's `Enroll` is not relayed yet, or its owner has just confirmed it; retry in a moment.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(super) async fn erase_personal_data(
    State(state): State<AppState>,
    ProblemPath(id): ProblemPath<String>,
) -> Result<StatusCode, Problem> {
    let id = parse_id(&id, "enrollment")?;
    match store::erase_personal_data(&state.pool, id, super::enrollments::traceparent()).await? {
        store::Erasure::Done => {
            state.outbox_signal.notify_one();
            tracing::info!(enrollment_id = %id, "personal data erased; customer-api asked to erase");
            Ok(StatusCode::ACCEPTED)
        }
        store::Erasure::NotFound => Err(Problem::not_found(format!("no enrollment {id}"))),
        store::Erasure::BeingConfirmed => Err(Problem::conflict(
            "the address's owner has just confirmed and the customer is being created; retry in a moment",
        )),
        store::Erasure::NotRelayedYet => Err(Problem::conflict(
            "the enrollment's Enroll command has not been relayed yet; retry in a moment",
        )),
    }
}

/// Read a customer (operator).
///
/// The customer-api's record: name, e-mail, status. Asked over the bus (`GetCustomer`), answered
/// with the record unchanged.
#[utoipa::path(
    get,
    path = "/api/customers/{id}",
    tag = "operator",
    operation_id = "getCustomer",
    params(CustomerId),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "The customer.", body = Object),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such customer.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The query could not be sent (the bus is unreachable).", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The customer-api did not answer within `LOOKUP_TIMEOUT_MS`.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(super) async fn customer(
    State(state): State<AppState>,
    ProblemPath(id): ProblemPath<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    let id = parse_id(&id, "customer")?;
    let lookups = lookups(&state)?;
    match lookups.customer(id).await.map_err(|e| unanswered(e, "customer-api"))? {
        Some(customer) => Ok(Json(customer)),
        None => Err(Problem::not_found(format!("no customer {id}"))),
    }
}

/// Read a customer's points (operator).
///
/// The transaction-api's ledger for the customer, asked over the bus (`GetPoints`).
/// The ledger knows customers only by the points posted to them, so a customer it has never
/// seen, whatever the id, has a zero balance and an empty ledger: there is no 404.
#[utoipa::path(
    get,
    path = "/api/customers/{id}/points",
    tag = "operator",
    operation_id = "getCustomerPoints",
    params(CustomerId),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "The customer's balance and ledger; for a customer the ledger has never seen, a zero balance and an empty ledger.", body = Object),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The query could not be sent (the bus is unreachable).", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The transaction-api did not answer within `LOOKUP_TIMEOUT_MS`.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(super) async fn points(
    State(state): State<AppState>,
    ProblemPath(id): ProblemPath<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    let id = parse_id(&id, "customer")?;
    let lookups = lookups(&state)?;
    Ok(Json(
        lookups.points(id).await.map_err(|e| unanswered(e, "transaction-api"))?,
    ))
}

fn lookups(state: &AppState) -> Result<&crate::lookups::Lookups, Problem> {
    state
        .lookups
        .as_ref()
        .ok_or_else(|| Problem::unavailable("lookups need the bus, which this gateway has none of"))
}

/// A lookup without an answer: 504 when the service did not reply in time, else 503.
fn unanswered(err: LookupError, service: &str) -> Problem {
    match err {
        LookupError::Timeout(limit) => {
            tracing::warn!(
                service,
                limit_ms = limit.as_millis() as u64,
                "lookup unanswered in time"
            );
            Problem::gateway_timeout(format!("the {service} did not answer in time"))
        }
        LookupError::Send(reason) => {
            tracing::warn!(service, %reason, "lookup query not sent");
            Problem::unavailable("the lookup could not be sent; try again")
        }
        LookupError::Closed => Problem::unavailable("the gateway is stopping"),
    }
}

/// The enrollment id in an operator's path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct EnrollmentId {
    /// The id the submission answered (UUID), as logs and the listing show it.
    id: uuid::Uuid,
}
