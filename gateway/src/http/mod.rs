//! The gateway's HTTP API, in two surfaces.
//!
//! | surface | routes | who |
//! |---|---|---|
//! | public | `POST /api/enrollments` (rate-limited per client), `GET /api/enrollments/{view_key}` (both with `Prefer: wait`), `GET /api/enrollments/{view_key}/events`, `POST /api/enrollments/{view_key}/resend` (rate-limited), `/health` | anyone holding an enrollment's view key (not its id) |
//! | public | `GET /confirm` (the page a mailed link opens), `POST /api/confirmations` (rate-limited) | anyone holding a confirmation token |
//! | operator | `GET /api/enrollments` (listing), `GET /api/sagas/{id}` (one, with its webhooks), `GET /api/enrollments/stalled`, `GET /api/customers/{id}`, `GET /api/customers/{id}/points`, `DELETE /api/enrollments/{id}/personal-data`, `GET /metrics` | bearer of `OPERATOR_TOKEN`; off (404) without it |
//!
//! Both are behind load shedding ([`edge`]). `GET /` and `/assets/*` serve the enrollment page
//! ([`page`]); `/openapi.json` and `/docs` the API document ([`reference`]; its operator part
//! only to a request with the operator token), `/asyncapi.json` the bus's ([`bus`]); origins in `CORS_ALLOWED_ORIGINS` may call the public routes from a page of theirs.

mod bus;
mod confirmations;
pub mod edge;
mod enrollments;
mod events;
mod operator;
mod page;
mod prefer;
mod reference;
mod webhook_keys;

use axum::error_handling::HandleErrorLayer;
use axum::middleware::from_fn_with_state;
use axum::routing::{any, get};
use axum::{Extension, Router};
use edge::{OperatorToken, RateLimit};
use sqlx::AnyPool;
use std::sync::Arc;
use tokio::sync::Notify;
use utility::http::problem::{method_not_allowed, not_found_route};
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

#[derive(Clone)]
pub struct AppState {
    pub pool: AnyPool,
    pub outbox_signal: Arc<Notify>,
    /// The operator's lookups over the bus; `None` in the in-process router, which has no bus.
    pub lookups: Option<crate::lookups::Lookups>,
    /// The callback URL policy and webhook keys; `None` when callbacks are off.
    pub callbacks: Option<crate::webhooks::Callbacks>,
    pub stall_after: std::time::Duration,
    /// Longest an event stream stays open.
    pub max_stream: std::time::Duration,
    pub hub: crate::live::Hub,
    pub metrics: utility::observe::metrics::Metrics,
    /// Confirmation by e-mail; `None` when it is off (`EMAIL_CONFIRMATION=off`).
    pub confirmation: Option<Confirmation>,
}

/// What the public routes need of the confirmation settings.
#[derive(Clone)]
pub struct Confirmation {
    /// Where the mailed links point.
    pub origin: crate::Origin,
    /// How long the owner has to confirm.
    pub ttl: std::time::Duration,
}

/// How the edge is set up (from the gateway's configuration).
#[derive(Clone)]
pub struct Edge {
    pub operator: Option<OperatorToken>,
    pub rate_limit: Option<RateLimit>,
    /// Who a client is, for the rate limit and the live-update limits.
    pub proxies: edge::TrustedProxies,
    pub max_concurrent_requests: usize,
    /// Cross-origin access to the API; `None`: same origin only (no CORS headers at all).
    pub cors: Option<tower_http::cors::CorsLayer>,
    /// `Strict-Transport-Security` for every answer, when the gateway is reached over HTTPS only.
    pub hsts: Option<axum::http::HeaderValue>,
}

/// `Cache-Control: no-store` on an answer that carries an enrollment (or may): neither the
/// browser nor a shared cache keeps it.
async fn no_store(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
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

/// The gateway's routes, and the API document that describes them.
///
/// Every route is registered with `routes!`, which takes its method and path from the handler's
/// `#[utoipa::path]`: a route and its documentation are one declaration. The only routes outside
/// the document are the operator paths when the operator routes are off, which answer 404 as if
/// they did not exist. [`utility::http::finish`] adds the fallback and the request limits.
pub fn routes(state: AppState, edge: &Edge) -> Router {
    let rate_limit = edge.rate_limit.clone();
    let limited = |route: UtoipaMethodRouter<AppState>| {
        let rate_limit = rate_limit.clone();
        route.map(|route| match rate_limit {
            Some(limit) => route.layer(from_fn_with_state(limit, edge::rate_limit)),
            None => route,
        })
    };
    let submit = limited(routes!(enrollments::create));
    let public = |route: UtoipaMethodRouter<AppState>| route.map(|r| r.fallback(method_not_allowed));
    // The routes that carry an enrollment: who the client is (for the per-client limits), and
    // answers no cache keeps.
    let proxies = edge.proxies.clone();
    let enrollment = move |route: UtoipaMethodRouter<AppState>| {
        route
            .layer(from_fn_with_state(proxies.clone(), edge::identify_client))
            .layer(axum::middleware::map_response(no_store))
    };
    let mut api = OpenApiRouter::with_openapi(reference::Frame::openapi())
        .routes(public(routes!(page::index)))
        .routes(public(routes!(page::assets)))
        .routes(public(routes!(reference::openapi_json)))
        .routes(public(routes!(bus::asyncapi_json)))
        .routes(public(routes!(reference::docs)))
        .routes(public(enrollment(submit)))
        .routes(public(enrollment(routes!(enrollments::show))))
        .routes(public(enrollment(routes!(events::events))))
        .routes(public(routes!(confirmations::page)))
        .routes(public(enrollment(limited(routes!(confirmations::confirm)))))
        .routes(public(enrollment(limited(routes!(confirmations::resend)))))
        .routes(public(routes!(webhook_keys::webhook_keys)));
    api = match &edge.operator {
        Some(token) => {
            let operator = |route: UtoipaMethodRouter<AppState>| {
                route.layer(from_fn_with_state(token.clone(), edge::require_operator))
            };
            // `/api/enrollments` has its fallback from the public POST already.
            api.routes(operator(routes!(operator::list)))
                .routes(public(operator(routes!(operator::stalled))))
                .routes(public(operator(routes!(operator::saga))))
                .routes(public(operator(routes!(operator::customer))))
                .routes(public(operator(routes!(operator::points))))
                .routes(public(operator(routes!(operator::metrics))))
                .routes(public(operator(routes!(operator::erase_personal_data))))
        }
        // Off: no route at all (404 whatever the method); the stalled listing's path is held so
        // that it is not read as a view key.
        None => api
            .route("/api/enrollments", get(not_found_route))
            .route("/api/enrollments/stalled", any(not_found_route))
            .route("/metrics", any(not_found_route)),
    };
    let (router, mut openapi) = api.split_for_parts();
    reference::layer_responses(&mut openapi);
    let reference = Arc::new(reference::Reference::new(&openapi, edge.operator.clone()));
    let shedding = tower::ServiceBuilder::new()
        .layer(HandleErrorLayer::new(edge::overloaded))
        .layer(tower::load_shed::LoadShedLayer::new())
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            edge.max_concurrent_requests.max(1),
        ));
    let router = router.layer(Extension(reference)).layer(shedding);
    let router = match &edge.cors {
        Some(cors) => router.layer(cors.clone()),
        None => router,
    };
    match edge.hsts.clone() {
        Some(hsts) => router.layer(axum::middleware::map_response(
            move |mut response: axum::response::Response| {
                let hsts = hsts.clone();
                async move {
                    response
                        .headers_mut()
                        .insert(axum::http::header::STRICT_TRANSPORT_SECURITY, hsts);
                    response
                }
            },
        )),
        None => router,
    }
    .with_state(state)
}
