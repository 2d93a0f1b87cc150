//! The customer-api's answers to lookups over the bus (`GetCustomer`): read-only, from the
//! customer database. The gateway's operator route passes the record on unchanged.

use sqlx::AnyPool;
use utility::messaging::lookup::Answer;
use utility::messaging::message::{CustomerRecord, CustomerReply, Message};

pub struct CustomerLookups;

impl Answer for CustomerLookups {
    async fn answer(&self, pool: &AnyPool, query: &Message) -> Result<Option<Message>, sqlx::Error> {
        let Message::GetCustomer(query) = query else {
            return Ok(None);
        };
        let row: Option<(
            String,
            String,
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
        )> = sqlx::query_as(
            "SELECT id, enrollment_id, name, email, status, enrolled_at, unenrolled_at, unenroll_reason
                 FROM customers WHERE id = $1",
        )
        .bind(query.customer_id.to_string())
        .fetch_optional(pool)
        .await?;
        let customer = row.map(
            |(id, enrollment_id, name, email, status, enrolled_at, unenrolled_at, unenroll_reason)| CustomerRecord {
                id,
                enrollment_id,
                name,
                email,
                status,
                enrolled_at,
                unenrolled_at,
                unenroll_reason,
            },
        );
        Ok(Some(Message::CustomerReply(CustomerReply {
            reply_by: query.reply_by,
            customer,
        })))
    }
}
