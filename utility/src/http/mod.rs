//! What the three HTTP APIs share: one error type ([`problem`]), extractors that answer with it
//! ([`extract`]), request limits ([`limits`]), `/health` and `/ready` ([`health`]), the access
//! log, request span and HTTP metrics ([`access`]), `/metrics` ([`metrics`]), the server with
//! its connection limits ([`serve`]), and [`finish`], which puts the same outer layers on every
//! service's router.

pub mod access;
pub mod extract;
pub mod health;
pub mod limits;
pub mod problem;
pub mod serve;

pub use access::CallerTrace;
pub use extract::{ProblemJson, ProblemPath};
pub use limits::RequestLimits;
pub use problem::{PROBLEM_JSON, Problem};
pub use serve::{ConnectionLimits, serve};

/// The layers every service's router gets, in tests as in production: unknown routes answer a
/// problem document, the request limits apply, and each request is traced (continuing or linking
/// the caller's trace, as `caller_trace` says), logged and counted in `metrics`.
pub fn finish(
    router: axum::Router,
    limits: RequestLimits,
    metrics: crate::observe::metrics::Metrics,
    caller_trace: access::CallerTrace,
) -> axum::Router {
    limits::apply(router.fallback(problem::not_found_route), limits).layer(axum::middleware::from_fn_with_state(
        (metrics, caller_trace),
        access::observe,
    ))
}

/// `GET /metrics` of `metrics`, in the OpenMetrics text format; the gauges are read first.
pub async fn metrics(metrics: crate::observe::metrics::Metrics) -> axum::response::Response {
    use axum::response::IntoResponse;
    metrics.refresh().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response()
}
