//! HTTP errors as RFC 9457 `application/problem+json`: the one error type of the three APIs.
//! Handlers return `Result<_, Problem>` and use `?` on database errors: [`From<sqlx::Error>`]
//! decides between 503 (the database cannot be reached; retry) and 500 (logged, never shown).

use crate::domain::FieldError;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One field the request got wrong, and what it must be instead.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InvalidParam {
    /// The field, as named in the request (`name`, `email`, `body`, a query parameter).
    #[schema(value_type = String, example = "email")]
    pub name: &'static str,
    #[schema(example = "must be an e-mail address like ada@example.com")]
    pub reason: String,
}

/// A client or server error as the client sees it. Internal details never reach the body: a 500
/// is logged with its cause chain and answered with a generic text.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the HTTP status says what kind of problem it is.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "about:blank")]
    pub kind: &'static str,
    /// The status's standard phrase.
    #[schema(value_type = String, example = "Unprocessable Content")]
    pub title: &'static str,
    /// The HTTP status code, repeated.
    #[serde(serialize_with = "serialize_status")]
    #[schema(value_type = u16, minimum = 400, maximum = 599, example = 422)]
    pub status: StatusCode,
    /// What went wrong and, where the client can fix it, how.
    pub detail: String,
    /// Every invalid field at once (422 only).
    #[serde(rename = "invalid-params", skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
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

    /// A dependency (the database) is down; the client should retry later. The response carries
    /// `Retry-After`.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", detail)
    }

    pub fn bad_gateway(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "Bad Gateway", detail)
    }

    /// A service asked over the bus did not answer in time.
    pub fn gateway_timeout(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout", detail)
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
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        response
    }
}

impl From<sqlx::Error> for Problem {
    /// The one mapping of database errors for every route: unreachable or overloaded means 503
    /// with `Retry-After` (the client should come back), anything else is our fault: a 500
    /// that is logged with its cause and says nothing about it.
    fn from(err: sqlx::Error) -> Self {
        if crate::storage::is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable; answering 503");
            Self::unavailable("the database is unavailable; retry shortly")
        } else {
            Self::internal(err)
        }
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
