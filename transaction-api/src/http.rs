//! Read-only HTTP API over the ledger (the gateway proxies it).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::{AnyPool, Row};
use utility::problem::{Problem, ProblemPath};
use uuid::Uuid;

#[derive(Serialize)]
struct Points {
    customer_id: String,
    balance: i64,
    ledger: Vec<Entry>,
}

#[derive(Serialize)]
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
            get(points).fallback(utility::problem::method_not_allowed),
        )
        .with_state(pool)
}

/// A customer the ledger has never seen has a zero balance and an empty ledger.
async fn points(State(pool): State<AnyPool>, ProblemPath(id): ProblemPath<String>) -> Result<Json<Points>, Problem> {
    let id = Uuid::parse_str(&id).map_err(|_| Problem::bad_request("customer id must be a UUID"))?;
    let read = async {
        let balance: i64 = sqlx::query("SELECT points FROM balances WHERE customer_id = $1")
            .bind(id.to_string())
            .fetch_optional(&pool)
            .await?
            .map(|row| row.try_get("points"))
            .transpose()?
            .unwrap_or(0);
        let rows = sqlx::query(
            "SELECT id, enrollment_id, kind, points, posted_at FROM ledger
             WHERE customer_id = $1 ORDER BY posted_at, id",
        )
        .bind(id.to_string())
        .fetch_all(&pool)
        .await?;
        let ledger = rows
            .iter()
            .map(|row| {
                Ok(Entry {
                    id: row.try_get("id")?,
                    enrollment_id: row.try_get("enrollment_id")?,
                    kind: row.try_get("kind")?,
                    points: row.try_get("points")?,
                    posted_at: row.try_get("posted_at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok::<_, sqlx::Error>(Points {
            customer_id: id.to_string(),
            balance,
            ledger,
        })
    };
    read.await.map(Json).map_err(Problem::internal)
}
