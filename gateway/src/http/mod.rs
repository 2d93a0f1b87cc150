//! The gateway's HTTP API, in two surfaces.
//!
//! | surface | routes | who |
//! |---|---|---|
//! | public | `POST /api/enrollments` (rate-limited per client), `GET /api/enrollments/{id}` (both with `Prefer: wait`), `GET /api/enrollments/{id}/events`, `/health` | anyone holding an enrollment id |
//! | operator | `GET /api/enrollments` (listing), `GET /api/enrollments/stalled`, `GET /api/customers/{id}`, `GET /api/customers/{id}/points` | bearer of `OPERATOR_TOKEN`; off (404) without it |
//!
//! Both are behind load shedding ([`edge`]). `GET /` and `/assets/*` serve the enrollment page
//! ([`page`]); origins in `CORS_ALLOWED_ORIGINS` may call the public routes from a page of theirs.

pub mod edge;
mod enrollments;
mod events;
mod operator;
mod page;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodRouter, any, get, post};
use edge::{OperatorToken, RateLimit};
use sqlx::AnyPool;
use std::sync::Arc;
use tokio::sync::Notify;
use utility::http::problem::{method_not_allowed, not_found_route};

#[derive(Clone)]
pub struct AppState {
    pub pool: AnyPool,
    pub outbox_signal: Arc<Notify>,
    pub http: reqwest::Client,
    pub customer_api_url: String,
    pub transaction_api_url: String,
    pub stall_after: std::time::Duration,
    pub hub: crate::live::Hub,
}

/// How the edge is set up (from the gateway's configuration).
#[derive(Clone)]
pub struct Edge {
    pub operator: Option<OperatorToken>,
    pub rate_limit: Option<RateLimit>,
    pub max_concurrent_requests: usize,
    /// Cross-origin access to the API; `None`: same origin only (no CORS headers at all).
    pub cors: Option<tower_http::cors::CorsLayer>,
}

/// CORS for `origins`: the public routes' methods and request headers, and the response headers
/// a client reads. No credentials: the public API needs none, and the operator token stays
/// same-origin (`Authorization` is not an allowed header).
pub fn cors(origins: Vec<axum::http::HeaderValue>) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, Method, header};
    tower_http::cors::CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("prefer"),
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::LOCATION, HeaderName::from_static("preference-applied")])
        .max_age(std::time::Duration::from_secs(600))
}

/// The gateway's routes; [`utility::http::finish`] adds the fallback and the request limits.
pub fn routes(state: AppState, edge: &Edge) -> Router {
    let mut submit: MethodRouter<AppState> = post(enrollments::create);
    if let Some(limit) = &edge.rate_limit {
        submit = submit.layer(from_fn_with_state(limit.clone(), edge::rate_limit));
    }
    // An operator route behind the token, or, without a token, no route at all (404 whatever the
    // method).
    let operator = |route: MethodRouter<AppState>| -> MethodRouter<AppState> {
        match &edge.operator {
            Some(token) => route
                .layer(from_fn_with_state(token.clone(), edge::require_operator))
                .fallback(method_not_allowed),
            None => any(not_found_route),
        }
    };
    let enrollments = match &edge.operator {
        Some(token) => {
            submit.merge(get(operator::list).layer(from_fn_with_state(token.clone(), edge::require_operator)))
        }
        None => submit.get(not_found_route),
    };
    let shedding = tower::ServiceBuilder::new()
        .layer(HandleErrorLayer::new(edge::overloaded))
        .layer(tower::load_shed::LoadShedLayer::new())
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            edge.max_concurrent_requests.max(1),
        ));
    let router = Router::new()
        .route("/", get(page::index).fallback(method_not_allowed))
        .route("/assets/{file}", get(page::assets).fallback(method_not_allowed))
        .route("/api/enrollments", enrollments.fallback(method_not_allowed))
        .route("/api/enrollments/stalled", operator(get(operator::stalled)))
        .route(
            "/api/enrollments/{id}",
            get(enrollments::show).fallback(method_not_allowed),
        )
        .route(
            "/api/enrollments/{id}/events",
            get(events::events).fallback(method_not_allowed),
        )
        .route("/api/customers/{id}", operator(get(operator::customer)))
        .route("/api/customers/{id}/points", operator(get(operator::points)))
        .layer(shedding);
    match &edge.cors {
        Some(cors) => router.layer(cors.clone()),
        None => router,
    }
    .with_state(state)
}
