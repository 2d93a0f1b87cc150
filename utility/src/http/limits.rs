//! Request limits, applied before any handler runs.
//!
//! - The body: `tower_http`'s [`RequestBodyLimitLayer`] refuses a declared `Content-Length` above
//!   the limit up front and cuts off a streamed body that grows past it (413 either way).
//! - The headers: above [`RequestLimits::max_header_bytes`] in total, 431. hyper itself refuses
//!   header sections above the connection's read buffer ([`super::serve::MAX_BUF_BYTES`]) and
//!   more than 100 headers; this catches what is below that but still unreasonable.
//! - The time to send a body is bounded by [`super::extract::BODY_TIMEOUT`] in the extractor, as a
//!   total: `tower_http`'s `RequestBodyTimeoutLayer` only bounds the wait for each chunk, which a
//!   client trickling one byte at a time never exceeds.
//!
//! Refusals made by layers are plain text; [`problem_for_bare_errors`] turns every error response
//! that is not already a problem document into one, so a client sees one error format.

use super::extract::closing;
use super::problem::{PROBLEM_JSON, Problem};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::limit::RequestBodyLimitLayer;

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

impl Default for RequestLimits {
    /// The limits of the internal APIs, which take no bodies.
    fn default() -> Self {
        Self::new(16 * 1024)
    }
}

/// Wraps `router` in the limits (outermost last).
pub fn apply(router: Router, limits: RequestLimits) -> Router {
    router
        // One body limit in force: the layer's, not axum's 2 MB default.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(limits, limit_headers))
        .layer(middleware::map_response_with_state(limits, problem_for_bare_errors))
}

async fn limit_headers(State(limits): State<RequestLimits>, request: Request, next: Next) -> Response {
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
    next.run(request).await
}

/// An error response that is not a problem document (a layer's plain-text refusal) becomes one
/// with the same status. A 413 made before the body was read closes the connection, since the
/// rest of the body may still be on its way.
async fn problem_for_bare_errors(State(limits): State<RequestLimits>, response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let title = status.canonical_reason().unwrap_or("Error");
    let problem = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            return closing(Problem::new(
                status,
                "Content Too Large",
                format!("the body may be at most {} bytes", limits.max_body_bytes),
            ));
        }
        _ => Problem::new(status, title, title.to_lowercase()),
    };
    axum::response::IntoResponse::into_response(problem)
}
