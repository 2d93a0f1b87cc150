//! The operator surface, behind `Authorization: Bearer <OPERATOR_TOKEN>` (see `edge`): every
//! enrollment with the detailed reasons, the stalled sagas, and read-only proxies to the
//! customer-api (names, e-mails) and the transaction-api (ledgers).

use super::AppState;
use super::enrollments::parse_id;
use crate::saga::Status;
use crate::store;
use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
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
/// handler and HTTP latency, the outbox backlog, database pools, and the sagas by status,
/// stalled, and their durations by outcome.
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

/// Read a customer (operator).
///
/// The customer-api's record: name, e-mail, status. The answer is the customer-api's, passed on.
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
        (status = 502, description = "The customer-api did not answer.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(super) async fn customer(
    State(state): State<AppState>,
    ProblemPath(id): ProblemPath<String>,
) -> Result<Response, Problem> {
    let url = format!("{}/customers/{}", state.customer_api_url, parse_id(&id, "customer")?);
    proxy(&state.http, url, "customer-api").await
}

/// Read a customer's points (operator).
///
/// The transaction-api's ledger for the customer. The answer is the transaction-api's, passed on.
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
        (status = 502, description = "The transaction-api did not answer.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(super) async fn points(
    State(state): State<AppState>,
    ProblemPath(id): ProblemPath<String>,
) -> Result<Response, Problem> {
    let url = format!(
        "{}/customers/{}/points",
        state.transaction_api_url,
        parse_id(&id, "customer")?
    );
    proxy(&state.http, url, "transaction-api").await
}

/// Forwards a GET and passes status, content type, `Retry-After` and body back unchanged.
async fn proxy(http: &reqwest::Client, url: String, service: &str) -> Result<Response, Problem> {
    let upstream = http.get(&url).send().await.map_err(|err| {
        tracing::warn!(error = %err, %url, "upstream request failed");
        Problem::bad_gateway(format!("the {service} did not answer"))
    })?;
    let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    // What the client needs to read the answer and to know when to come back.
    let passed: Vec<(header::HeaderName, HeaderValue)> = [header::CONTENT_TYPE, header::RETRY_AFTER]
        .into_iter()
        .filter_map(|name| {
            let value = upstream.headers().get(name.as_str())?;
            Some((name, HeaderValue::from_bytes(value.as_bytes()).ok()?))
        })
        .collect();
    let body = upstream.bytes().await.map_err(|err| {
        tracing::warn!(error = %err, %url, "upstream body failed");
        Problem::bad_gateway(format!("the {service} answer was cut off"))
    })?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().extend(passed);
    Ok(response)
}
