//! The gateway's public HTTP API: enrollments, and read-only proxies to the customer-api and
//! transaction-api.

use crate::store::{self, NewEnrollment};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use sqlx::AnyPool;
use std::sync::Arc;
use tokio::sync::Notify;
use utility::domain::{CustomerName, Email, FieldError};
use utility::http::problem::method_not_allowed;
use utility::http::{Problem, ProblemJson, ProblemPath};
use uuid::Uuid;

/// Longest accepted `Idempotency-Key`.
const MAX_KEY_LEN: usize = 255;

#[derive(Clone)]
pub struct AppState {
    pub pool: AnyPool,
    pub outbox_signal: Arc<Notify>,
    pub http: reqwest::Client,
    pub customer_api_url: String,
    pub transaction_api_url: String,
    pub stall_after: std::time::Duration,
}

/// The gateway's routes; [`utility::http::finish`] adds the fallback and the request limits.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/api/enrollments", post(create).fallback(method_not_allowed))
        .route("/api/enrollments/stalled", get(stalled).fallback(method_not_allowed))
        .route("/api/enrollments/{id}", get(show).fallback(method_not_allowed))
        .route("/api/customers/{id}", get(customer).fallback(method_not_allowed))
        .route("/api/customers/{id}/points", get(points).fallback(method_not_allowed))
        .with_state(state)
}

/// A validated enrollment request.
struct EnrollmentRequest {
    name: CustomerName,
    email: Email,
}

impl EnrollmentRequest {
    /// Collects every field error at once so the client can fix them in one go.
    fn parse(body: &Value) -> Result<Self, Problem> {
        let Some(object) = body.as_object() else {
            return Err(Problem::invalid(vec![FieldError {
                field: "body",
                message: "must be a JSON object with `name` and `email`".into(),
            }]));
        };
        let text = |field: &'static str| match object.get(field) {
            Some(Value::String(s)) => Ok(s.as_str()),
            None | Some(Value::Null) => Err(FieldError {
                field,
                message: "is required".into(),
            }),
            Some(_) => Err(FieldError {
                field,
                message: "must be a string".into(),
            }),
        };
        let name = text("name").and_then(CustomerName::parse);
        let email = text("email").and_then(Email::parse);
        match (name, email) {
            (Ok(name), Ok(email)) => Ok(Self { name, email }),
            (name, email) => Err(Problem::invalid(name.err().into_iter().chain(email.err()).collect())),
        }
    }

    /// What makes two requests "the same" for idempotency: the normalised fields.
    fn fingerprint(&self) -> String {
        json!({"name": self.name.as_str(), "email": self.email.as_str()}).to_string()
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && !k.bytes().any(|b| b.is_ascii_control()))
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// Keeps the caller's W3C trace context when it is well-formed, otherwise starts a new trace.
fn traceparent(headers: &HeaderMap) -> String {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() == 55 && v.split('-').count() == 4 && v.is_ascii())
        .map(str::to_owned)
        .unwrap_or_else(utility::messaging::envelope::new_traceparent)
}

fn accepted(id: impl std::fmt::Display, status: &str) -> Response {
    let location = format!("/api/enrollments/{id}");
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({"id": id.to_string(), "status": status})),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[tracing::instrument(skip_all, fields(enrollment_id = tracing::field::Empty))]
async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ProblemJson(body): ProblemJson<Value>,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let request = EnrollmentRequest::parse(&body)?;
    let fingerprint = request.fingerprint();
    if let Some(key) = key.as_deref()
        && let Some(existing) = replay(&state.pool, key, &fingerprint).await?
    {
        return Ok(existing);
    }
    let id = Uuid::now_v7();
    tracing::Span::current().record("enrollment_id", tracing::field::display(id));
    let new = NewEnrollment {
        id,
        name: &request.name,
        email: &request.email,
        idempotency_key: key.as_deref(),
        fingerprint: &fingerprint,
        traceparent: traceparent(&headers),
    };
    match store::accept(&state.pool, &new).await {
        Ok(()) => {}
        // Another request with the same key won the race: answer as a replay of it.
        Err(err) if utility::storage::is_unique_violation(&err) && key.is_some() => {
            let key = key.as_deref().unwrap_or_default();
            return replay(&state.pool, key, &fingerprint).await?.ok_or_else(|| {
                Problem::internal(anyhow::anyhow!("idempotency key {key} conflicted but is not stored"))
            });
        }
        Err(err) => return Err(err.into()),
    }
    state.outbox_signal.notify_one();
    tracing::info!("enrollment accepted");
    Ok(accepted(id, "pending"))
}

/// The answer to a repeated `Idempotency-Key`: the same enrollment, or 409 if the body differs.
async fn replay(pool: &AnyPool, key: &str, fingerprint: &str) -> Result<Option<Response>, Problem> {
    let Some(existing) = store::find_by_key(pool, key).await? else {
        return Ok(None);
    };
    if existing.fingerprint != fingerprint {
        return Err(Problem::conflict(format!(
            "Idempotency-Key was already used for enrollment {} with a different body",
            existing.id
        )));
    }
    Ok(Some(accepted(existing.id, &existing.status)))
}

fn parse_id(id: &str, what: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(id).map_err(|_| Problem::bad_request(format!("{what} id must be a UUID")))
}

async fn show(
    State(state): State<AppState>,
    ProblemPath(id): ProblemPath<String>,
) -> Result<Json<store::EnrollmentView>, Problem> {
    let id = parse_id(&id, "enrollment")?;
    store::view(&state.pool, id, &utility::storage::cutoff(state.stall_after))
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("no enrollment {id}")))
}

/// Sagas that have not moved for the stall deadline, oldest first.
async fn stalled(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    let stalled = crate::stalls::list(&state.pool, &utility::storage::cutoff(state.stall_after)).await?;
    Ok(Json(json!({
        "stall_after_seconds": state.stall_after.as_secs(),
        "stalled": stalled,
    })))
}

async fn customer(State(state): State<AppState>, ProblemPath(id): ProblemPath<String>) -> Result<Response, Problem> {
    let id = parse_id(&id, "customer")?;
    proxy(
        &state.http,
        format!("{}/customers/{id}", state.customer_api_url),
        "customer-api",
    )
    .await
}

async fn points(State(state): State<AppState>, ProblemPath(id): ProblemPath<String>) -> Result<Response, Problem> {
    let id = parse_id(&id, "customer")?;
    proxy(
        &state.http,
        format!("{}/customers/{id}/points", state.transaction_api_url),
        "transaction-api",
    )
    .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_errors_name_every_bad_field() {
        let problem = EnrollmentRequest::parse(&json!({"name": 5})).err().unwrap();
        assert_eq!(problem.status, StatusCode::UNPROCESSABLE_ENTITY);
        let fields: Vec<_> = problem.invalid_params.iter().map(|p| p.name).collect();
        assert_eq!(fields, ["name", "email"]);
        assert!(EnrollmentRequest::parse(&json!([1])).is_err());
        let ok = EnrollmentRequest::parse(&json!({"name": " Ada ", "email": "ADA@x.io"})).unwrap();
        assert_eq!(ok.fingerprint(), r#"{"email":"ada@x.io","name":"Ada"}"#);
    }
}
