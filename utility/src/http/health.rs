//! `/health` (the process answers) and `/ready` (its database and its queue answer), on every
//! service.

use super::problem::Problem;
use crate::messaging::bus::Bus;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sqlx::AnyPool;
use std::time::Duration;

/// What `/ready` checks: the database answers and the service's own queue is reachable.
#[derive(Clone)]
pub struct Readiness {
    pub pool: AnyPool,
    pub bus: Bus,
    pub queue_url: String,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

impl Readiness {
    /// What does not answer, as (public name, detail for the log).
    pub async fn check(&self) -> Vec<(&'static str, String)> {
        let mut failures = Vec::new();
        let db = tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await;
        match db {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => failures.push(("database", err.to_string())),
            Err(_) => failures.push(("database", "no answer within 3 s".to_owned())),
        }
        match tokio::time::timeout(PROBE_TIMEOUT, self.bus.ping_queue(&self.queue_url)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => failures.push(("bus", err.to_string())),
            Err(_) => failures.push(("bus", "no answer within 3 s".to_owned())),
        }
        failures
    }
}

/// `/health` (the process answers) and `/ready` (its dependencies answer).
pub fn health_routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(readiness)
}

/// The body of `/health` and `/ready`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Liveness {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// The process answers (load balancers' health check).
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses((status = 200, description = "The process answers.", body = Liveness)),
)]
pub async fn health() -> Json<Liveness> {
    Json(Liveness { status: "ok" })
}

/// The database and the service's own queue answer. The answer names what is not ready, never
/// why: the causes (SDK error chains, addresses) go to the log, where operators read them.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready: the database and the queue answer.", body = Liveness),
        (status = 503, description = "Not ready; the detail names what does not answer.",
            body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn ready(State(readiness): State<Readiness>) -> Response {
    let failures = readiness.check().await;
    if failures.is_empty() {
        return Json(Liveness { status: "ready" }).into_response();
    }
    for (what, detail) in &failures {
        tracing::warn!(dependency = what, %detail, "not ready");
    }
    let names: Vec<&str> = failures.iter().map(|(what, _)| *what).collect();
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        format!("not ready: {} unreachable", names.join(" and ")),
    )
    .into_response()
}
