//! The outermost layer of every service's router: one span and one access log line per
//! request, a request id, and the HTTP metrics.
//!
//! - The span, `<METHOD> <route>` (the matched route, not the path, so ids do not explode the
//!   names), continues the caller's W3C `traceparent` when it sends one: a client's trace, or the
//!   gateway's when it calls the other services.
//! - The request id is the caller's `x-request-id` when it is sane (1 to 128 visible ASCII
//!   characters), otherwise a new UUID; it is in the span (so in every log line of the request)
//!   and returned in the response's `x-request-id`.
//! - The access line, at INFO: method, route, status, latency and request id (probes of
//!   `/health`, `/ready` and `/metrics` at DEBUG, to keep the log about traffic).

use crate::observe::context;
use crate::observe::metrics::{HttpLabels, Metrics, RouteLabels};
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;
use tracing::Instrument;

const REQUEST_ID: &str = "x-request-id";

fn request_id(request: &Request) -> String {
    request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The middleware; [`crate::http::finish`] installs it with the service's metrics.
pub async fn observe(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
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
    context::set_parent(&span, caller.as_deref());
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if matches!(route.as_str(), "/health" | "/ready" | "/metrics") {
            tracing::debug!(method, route, status, latency_ms, "request");
        } else {
            tracing::info!(method, route, status, latency_ms, "request");
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
