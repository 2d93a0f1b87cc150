//! HTTP errors as RFC 9457 `application/problem+json`, shared by the three APIs, plus the
//! `/health` and `/ready` endpoints every service exposes.

use crate::bus::Bus;
use crate::domain::FieldError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
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

    /// A dependency (the database) is down; the client should retry later. The response carries
    /// `Retry-After`.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", detail)
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
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
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

/// How long a client may take to send a request body. Without a bound, a client that declares
/// a body and never sends it would hold its connection and task forever.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// `Json<T>` whose rejections are problem documents. Stricter than axum's `Json` on the media
/// type: only `application/json`, and only in UTF-8 (a `charset` parameter other than UTF-8 is
/// refused rather than misread); `+json` types of other APIs are refused too.
pub struct ProblemJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ProblemJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_utf8_json(req.headers()) {
            return Err(closing(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Media Type",
                "expected a body with `Content-Type: application/json` in UTF-8",
            )));
        }
        match tokio::time::timeout(BODY_TIMEOUT, Json::<T>::from_request(req, state)).await {
            Ok(Ok(Json(value))) => Ok(Self(value)),
            Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(closing(Problem::from(rejection)))
            }
            Ok(Err(rejection)) => Err(Problem::from(rejection).into_response()),
            Err(_) => Err(closing(Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "Request Timeout",
                format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
            ))),
        }
    }
}

/// A refusal sent before the request body was read to its end: the rest of the body may still
/// be on its way, so the connection cannot carry another request. `Connection: close` makes
/// hyper close it and tells the client not to reuse it (rather than finding it closed later).
fn closing(problem: Problem) -> Response {
    let mut response = problem.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

/// `application/json`, in any letter case, with no `charset` or `charset=utf-8`.
fn is_utf8_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.all(|param| match param.split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
                let value = value.trim().trim_matches('"');
                value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
            }
            Some(_) => true,
            None => param.trim().is_empty(),
        })
}

/// `Path<T>` whose rejections are problem documents (a percent-encoded segment that is not
/// UTF-8, say, is the client's mistake and gets a 400 like any other bad id).
pub struct ProblemPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ProblemPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) if rejection.status().is_client_error() => Err(Problem::bad_request(format!(
                "the path is not valid: {}",
                rejection.body_text()
            ))),
            // A route whose parameters do not fit `T`: our mistake, not the client's.
            Err(rejection) => Err(Problem::internal(anyhow::anyhow!(
                "path extraction: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// Limits checked before a handler runs, so an oversized request is refused before its body is
/// read: a declared `Content-Length` above the body limit (413), or headers above
/// [`RequestLimits::max_header_bytes`] in total (431). hyper itself refuses header sections above
/// about 400 KiB and more than 100 headers, without a problem document; this catches what is
/// below that but still unreasonable.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
}

impl RequestLimits {
    pub fn new(max_body_bytes: usize) -> Self {
        Self {
            max_body_bytes,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Middleware enforcing [`RequestLimits`] (`axum::middleware::from_fn_with_state`).
pub async fn enforce_limits(State(limits): State<RequestLimits>, request: Request, next: Next) -> Response {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return closing(Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request Header Fields Too Large",
            format!(
                "the headers take {header_bytes} bytes; at most {} are accepted",
                limits.max_header_bytes
            ),
        ));
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body_bytes as u64) {
        return closing(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Content Too Large",
            format!("the body may be at most {} bytes", limits.max_body_bytes),
        ));
    }
    next.run(request).await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
        headers
    }

    #[test]
    fn only_utf8_json_is_json() {
        for ok in [
            "application/json",
            "APPLICATION/Json",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/json; charset=utf8; q=1",
        ] {
            assert!(is_utf8_json(&content_type(ok)), "{ok}");
        }
        for refused in [
            "application/json; charset=latin1",
            "application/json; charset=",
            "application/vnd.foo+json",
            "application/jsonx",
            "text/json",
            "application/json; garbage",
            "",
            ";;;",
        ] {
            assert!(!is_utf8_json(&content_type(refused)), "{refused}");
        }
        assert!(!is_utf8_json(&HeaderMap::new()));
    }
}
