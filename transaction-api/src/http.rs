//! Read-only HTTP API over the ledger (the gateway proxies it).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::AnyPool;
use utility::http::{Problem, ProblemPath};
use uuid::Uuid;

#[derive(Serialize)]
struct Points {
    customer_id: String,
    balance: i64,
    ledger: Vec<Entry>,
}

#[derive(Serialize, sqlx::FromRow)]
struct Entry {
    id: String,
    enrollment_id: String,
    kind: String,
    points: i64,
    posted_at: String,
}

pub fn routes(pool: AnyPool) -> Router {
    Router::new()
        .route(
            "/customers/{id}/points",
            get(points).fallback(utility::http::problem::method_not_allowed),
        )
        .with_state(pool)
}

/// A customer the ledger has never seen has a zero balance and an empty ledger.
async fn points(State(pool): State<AnyPool>, ProblemPath(id): ProblemPath<String>) -> Result<Json<Points>, Problem> {
    let id = Uuid::parse_str(&id).map_err(|_| Problem::bad_request("customer id must be a UUID"))?;
    let balance: Option<i64> = sqlx::query_scalar("SELECT points FROM balances WHERE customer_id = $1")
        .bind(id.to_string())
        .fetch_optional(&pool)
        .await?;
    let ledger: Vec<Entry> = sqlx::query_as(
        "SELECT id, enrollment_id, kind, points, posted_at FROM ledger
         WHERE customer_id = $1 ORDER BY posted_at, id",
    )
    .bind(id.to_string())
    .fetch_all(&pool)
    .await?;
    Ok(Json(Points {
        customer_id: id.to_string(),
        balance: balance.unwrap_or(0),
        ledger,
    }))
}
