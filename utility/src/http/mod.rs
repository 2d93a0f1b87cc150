//! What the three HTTP APIs share: one error type ([`problem`]), extractors that answer with it
//! ([`extract`]), request limits ([`limits`]), `/health` and `/ready` ([`health`]), and
//! [`finish`], which puts the same outer layers on every service's router.

pub mod extract;
pub mod health;
pub mod limits;
pub mod problem;

pub use extract::{ProblemJson, ProblemPath};
pub use limits::RequestLimits;
pub use problem::{PROBLEM_JSON, Problem};

/// The layers every service's router gets, in tests as in production: unknown routes answer a
/// problem document, the request limits apply, and each request is traced.
pub fn finish(router: axum::Router, limits: RequestLimits) -> axum::Router {
    limits::apply(router.fallback(problem::not_found_route), limits)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}
