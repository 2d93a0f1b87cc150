//! HTTP errors as RFC 9457 `application/problem+json`, shared by the three APIs, plus the
//! `/health` and `/ready` endpoints every service exposes.

use crate::bus::Bus;
use crate::domain::FieldError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::AnyPool;
use std::time::Duration;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Serialize)]
pub struct InvalidParam {
    pub name: &'static str,
    pub reason: String,
}

/// A client or server error as the client sees it. Internal details never reach the body: a 500
/// is logged with its cause chain and answered with a generic text.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    #[serde(serialize_with = "serialize_status")]
    pub status: StatusCode,
    pub detail: String,
    #[serde(rename = "invalid-params", skip_serializing_if = "Vec::is_empty")]
    pub invalid_params: Vec<InvalidParam>,
}

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank",
            title,
            status,
            detail: detail.into(),
            invalid_params: Vec::new(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad Request", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not Found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", detail)
    }

    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        Self {
            invalid_params: errors
                .into_iter()
                .map(|e| InvalidParam {
                    name: e.field,
                    reason: e.message,
                })
                .collect(),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable Content", detail)
        }
    }

    pub fn bad_gateway(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "Bad Gateway", detail)
    }

    /// Logs `err` with its whole cause chain; the client only learns that something failed.
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        let err = err.into();
        tracing::error!(error = format!("{err:#}"), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "the server failed to handle the request; it has been logged",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut response = (status, Json(self)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let detail = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "expected a body with `Content-Type: application/json`".to_owned()
            }
            JsonRejection::JsonSyntaxError(_) => format!("the body is not valid JSON: {}", rejection.body_text()),
            _ => rejection.body_text(),
        };
        let title = match status {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "Unsupported Media Type",
            StatusCode::PAYLOAD_TOO_LARGE => "Content Too Large",
            StatusCode::UNPROCESSABLE_ENTITY => "Unprocessable Content",
            _ => "Bad Request",
        };
        Self::new(status, title, detail)
    }
}

/// `Json<T>` whose rejections are problem documents.
pub struct ProblemJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ProblemJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(value)| Self(value))
            .map_err(Problem::from)
    }
}

/// Fallback for unknown routes.
pub async fn not_found_route() -> Problem {
    Problem::not_found("no such route")
}

/// Fallback for known routes called with the wrong method.
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed",
        "this route does not accept that method",
    )
}

/// What `/ready` checks: the database answers and the service's own queue is reachable.
#[derive(Clone)]
pub struct Readiness {
    pub pool: AnyPool,
    pub bus: Bus,
    pub queue_url: String,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

impl Readiness {
    pub async fn check(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let db = tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await;
        match db {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => failures.push(format!("database: {err}")),
            Err(_) => failures.push("database: no answer within 3 s".to_owned()),
        }
        match tokio::time::timeout(PROBE_TIMEOUT, self.bus.ping_queue(&self.queue_url)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => failures.push(format!("bus: {err}")),
            Err(_) => failures.push("bus: no answer within 3 s".to_owned()),
        }
        failures
    }
}

/// `/health` (the process answers) and `/ready` (its dependencies answer).
pub fn health_routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .with_state(readiness)
}

async fn ready(State(readiness): State<Readiness>) -> Response {
    let failures = readiness.check().await;
    if failures.is_empty() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        tracing::warn!(?failures, "not ready");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            failures.join("; "),
        )
        .into_response()
    }
}
