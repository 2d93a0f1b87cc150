//! The customer-api's answers to lookups over the bus (`GetCustomer`): read-only, from the
//! customer database. The gateway's operator route passes the record on unchanged.

use sqlx::AnyPool;
use utility::messaging::lookup::Answer;
use utility::messaging::message::{CustomerRecord, CustomerReply, Message};

pub struct CustomerLookups;

/// A row of `customers` as the record shows it.
#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    enrollment_id: String,
    name: String,
    email: String,
    status: String,
    enrolled_at: String,
    unenrolled_at: Option<String>,
    unenroll_reason: Option<String>,
}

impl Answer for CustomerLookups {
    async fn answer(&self, pool: &AnyPool, query: &Message) -> Result<Option<Message>, sqlx::Error> {
        let Message::GetCustomer(query) = query else {
            return Ok(None);
        };
        let row: Option<Row> = sqlx::query_as(
            "SELECT id, enrollment_id, name, email, status, enrolled_at, unenrolled_at, unenroll_reason
             FROM customers WHERE id = $1",
        )
        .bind(query.customer_id.to_string())
        .fetch_optional(pool)
        .await?;
        let customer = row.map(|r| CustomerRecord {
            id: r.id,
            enrollment_id: r.enrollment_id,
            name: r.name,
            email: r.email,
            status: r.status,
            enrolled_at: r.enrolled_at,
            unenrolled_at: r.unenrolled_at,
            unenroll_reason: r.unenroll_reason,
        });
        Ok(Some(Message::CustomerReply(CustomerReply {
            reply_by: query.reply_by,
            customer,
        })))
    }
}
