//! Extractors whose rejections are problem documents.

use super::problem::Problem;
use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

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
pub(crate) fn closing(problem: Problem) -> Response {
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
