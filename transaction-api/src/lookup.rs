//! The transaction-api's answers to lookups over the bus (`GetPoints`): read-only, from the
//! ledger. The ledger knows customers only by the points posted to them, so a customer it has
//! never seen, whatever the id, has a zero balance and an empty ledger.

use sqlx::AnyPool;
use utility::messaging::lookup::Answer;
use utility::messaging::message::{LedgerEntry, Message, PointsRecord, PointsReply};

pub struct PointsLookups;

impl Answer for PointsLookups {
    async fn answer(&self, pool: &AnyPool, query: &Message) -> Result<Option<Message>, sqlx::Error> {
        let Message::GetPoints(query) = query else {
            return Ok(None);
        };
        let id = query.customer_id.to_string();
        // One connection for both reads: one pool acquisition on the lookup's path, not two.
        let mut conn = pool.acquire().await?;
        let balance: Option<i64> = sqlx::query_scalar("SELECT points FROM balances WHERE customer_id = $1")
            .bind(&id)
            .fetch_optional(&mut *conn)
            .await?;
        let rows: Vec<(String, String, String, i64, String)> = sqlx::query_as(
            "SELECT id, enrollment_id, kind, points, posted_at FROM ledger
             WHERE customer_id = $1 ORDER BY posted_at, id",
        )
        .bind(&id)
        .fetch_all(&mut *conn)
        .await?;
        let ledger = rows
            .into_iter()
            .map(|(id, enrollment_id, kind, points, posted_at)| LedgerEntry {
                id,
                enrollment_id,
                kind,
                points,
                posted_at,
            })
            .collect();
        Ok(Some(Message::PointsReply(PointsReply {
            reply_by: query.reply_by,
            points: PointsRecord {
                customer_id: id,
                balance: balance.unwrap_or(0),
                ledger,
            },
        })))
    }
}
