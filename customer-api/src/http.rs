//! Read-only HTTP API over the customer database (the gateway proxies it).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::{AnyPool, Row};
use utility::problem::{Problem, ProblemPath};
use uuid::Uuid;

#[derive(Serialize)]
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
            get(customer).fallback(utility::problem::method_not_allowed),
        )
        .with_state(pool)
}

async fn customer(
    State(pool): State<AnyPool>,
    ProblemPath(id): ProblemPath<String>,
) -> Result<Json<Customer>, Problem> {
    let id = Uuid::parse_str(&id).map_err(|_| Problem::bad_request("customer id must be a UUID"))?;
    let row = sqlx::query(
        "SELECT id, enrollment_id, name, email, status, enrolled_at, unenrolled_at, unenroll_reason
         FROM customers WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(&pool)
    .await
    .map_err(Problem::internal)?
    .ok_or_else(|| Problem::not_found(format!("no customer {id}")))?;
    let customer = (|| -> Result<Customer, sqlx::Error> {
        Ok(Customer {
            id: row.try_get("id")?,
            enrollment_id: row.try_get("enrollment_id")?,
            name: row.try_get("name")?,
            email: row.try_get("email")?,
            status: row.try_get("status")?,
            enrolled_at: row.try_get("enrolled_at")?,
            unenrolled_at: row.try_get("unenrolled_at")?,
            unenroll_reason: row.try_get("unenroll_reason")?,
        })
    })()
    .map_err(Problem::internal)?;
    Ok(Json(customer))
}
