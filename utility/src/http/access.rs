//! The outermost layer of every service's router: one span and one access log line per
//! request, a request id, and the HTTP metrics.
//!
//! - The span, `<METHOD> <route>` (the matched route, not the path, so ids do not explode the
//!   names; the method one of [`method_label`]'s closed set, since hyper accepts any token as a
//!   method and this layer runs before routing and auth). With [`CallerTrace::Continue`] (the
//!   services the gateway calls) it continues the caller's W3C `traceparent`; with
//!   [`CallerTrace::Link`] (the public edge) it starts a trace of its own and links the
//!   caller's, so a client chooses neither the saga's trace id nor its sampling.
//! - The request id is the caller's `x-request-id` when it is sane (1 to 128 visible ASCII
//!   characters), otherwise a new UUID; it is in the span (so in every log line of the request)
//!   and returned in the response's `x-request-id`.
//! - The access line: method, route, status, latency and request id. At INFO only for what an
//!   operator needs to read: server errors (5xx) and slow requests (longer than
//!   [`SLOW_REQUEST`], unless they were held on purpose by `Prefer: wait`); every other request at
//!   DEBUG, since the HTTP metrics count them all. A log line per request would cost more than
//!   the rest of a saga's logs together.

use crate::observe::context;
use crate::observe::metrics::{HttpLabels, Metrics, RouteLabels};
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;
use tracing::Instrument;

const REQUEST_ID: &str = "x-request-id";

/// A request that takes longer than this (and was not held by `Prefer: wait`) is logged at INFO.
pub const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_secs(1);

fn request_id(request: &Request) -> String {
    request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// What a request's span makes of the caller's `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerTrace {
    /// Continue it: the caller is one of ours.
    Continue,
    /// Start a new trace and link it: the caller is anyone.
    Link,
}

/// The middleware; [`crate::http::finish`] installs it with the service's metrics.
pub async fn observe(
    State((metrics, caller_trace)): State<(Metrics, CallerTrace)>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method()).to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let id = request_id(&request);
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        request_id = %id,
        http.response.status_code = tracing::field::Empty,
    );
    let caller = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match caller_trace {
        CallerTrace::Continue => context::set_parent(&span, caller.as_deref()),
        CallerTrace::Link => context::link_caller(&span, caller.as_deref()),
    }
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    let held = response.headers().contains_key("preference-applied");
    span.in_scope(|| {
        if notable(status, elapsed, held) {
            tracing::info!(method, route, status, latency_ms, "request");
        } else {
            tracing::debug!(method, route, status, latency_ms, "request");
        }
    });
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method: method.clone(),
            route: route.clone(),
            status,
        })
        .inc();
    metrics
        .http_duration
        .get_or_create(&RouteLabels { method, route })
        .observe(elapsed.as_secs_f64());
    response
}

/// The method as a label and in span names: the standard methods by name, any other token
/// `other`. The client picks the method, and every distinct label is a metric series kept for
/// the life of the process.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Whether a request's access line is worth INFO: a server error, or slow without having been
/// held on purpose (`held`: the answer says `Preference-Applied`).
fn notable(status: u16, elapsed: std::time::Duration, held: bool) -> bool {
    status >= 500 || (elapsed > SLOW_REQUEST && !held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn methods_outside_the_standard_set_share_one_label() {
        use axum::http::Method;
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        for odd in ["AAAA1", "AAAA2", "TRACE", "CONNECT", "get"] {
            assert_eq!(
                method_label(&Method::from_bytes(odd.as_bytes()).unwrap()),
                "other",
                "{odd}"
            );
        }
    }

    #[test]
    fn only_server_errors_and_unheld_slow_requests_are_notable() {
        let quick = Duration::from_millis(20);
        let slow = SLOW_REQUEST + Duration::from_millis(1);
        assert!(!notable(202, quick, false));
        assert!(!notable(404, quick, false));
        assert!(notable(503, quick, false));
        assert!(notable(200, slow, false));
        assert!(
            !notable(200, slow, true),
            "a request held by Prefer: wait is slow on purpose"
        );
        assert!(notable(500, slow, true));
    }
}
