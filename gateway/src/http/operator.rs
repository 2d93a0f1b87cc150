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
use serde::Deserialize;
use serde_json::{Value, json};
use utility::domain::FieldError;
use utility::http::{Problem, ProblemPath};
use uuid::Uuid;

/// Page size of the listing, and its upper bound.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
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
            None | Some("") => None,
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
            None | Some("") => DEFAULT_LIMIT,
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
            None | Some("") => None,
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

/// `GET /api/enrollments?status=&limit=&cursor=`: newest first, a page at a time.
pub(super) async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, Problem> {
    let listing = Listing::parse(query)?;
    let cutoff = utility::storage::cutoff(state.stall_after);
    let mut page = store::list(&state.pool, listing.status, listing.before, listing.limit + 1, &cutoff).await?;
    let more = page.len() as i64 > listing.limit;
    page.truncate(listing.limit as usize);
    let next_cursor = more.then(|| page.last().map(|e| e.id.clone())).flatten();
    Ok(Json(json!({"enrollments": page, "next_cursor": next_cursor})))
}

/// Sagas that have not moved for the stall deadline, oldest first.
pub(super) async fn stalled(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    let stalled = crate::stalls::list(&state.pool, &utility::storage::cutoff(state.stall_after)).await?;
    Ok(Json(json!({
        "stall_after_seconds": state.stall_after.as_secs(),
        "stalled": stalled,
    })))
}

pub(super) async fn customer(
    State(state): State<AppState>,
    ProblemPath(id): ProblemPath<String>,
) -> Result<Response, Problem> {
    let url = format!("{}/customers/{}", state.customer_api_url, parse_id(&id, "customer")?);
    proxy(&state.http, url, "customer-api").await
}

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
