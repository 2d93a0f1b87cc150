//! Read-only HTTP API over the customer database (the gateway proxies it).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::AnyPool;
use utility::http::{Problem, ProblemPath};
use uuid::Uuid;

#[derive(Serialize, sqlx::FromRow)]
struct Customer {
    id: String,
    enrollment_id: String,
    name: String,
    email: String,
    status: String,
    enrolled_at: String,
    unenrolled_at: Option<String>,
    unenroll_reason: Option<String>,
}

pub fn routes(pool: AnyPool) -> Router {
    Router::new()
        .route(
            "/customers/{id}",
            get(customer).fallback(utility::http::problem::method_not_allowed),
        )
        .with_state(pool)
}

async fn customer(
    State(pool): State<AnyPool>,
    ProblemPath(id): ProblemPath<String>,
) -> Result<Json<Customer>, Problem> {
    let id = Uuid::parse_str(&id).map_err(|_| Problem::bad_request("customer id must be a UUID"))?;
    let customer: Customer = sqlx::query_as(
        "SELECT id, enrollment_id, name, email, status, enrolled_at, unenrolled_at, unenroll_reason
         FROM customers WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(&pool)
    .await?
    .ok_or_else(|| Problem::not_found(format!("no customer {id}")))?;
    Ok(Json(customer))
}
