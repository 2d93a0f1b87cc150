//! Moving dead letters back to their source queue once the cause is fixed.
//!
//! Two ways, both at-least-once (a message is deleted from the DLQ only after its source queue
//! accepted it, so a failure in between leaves a copy in both, which consumers absorb):
//! - selected messages: receive them, `SendMessageBatch` them to the source queue with their body
//!   and message attributes, then `DeleteMessageBatch` them from the DLQ;
//! - everything: an SQS message-move task (`StartMessageMoveTask`) for the DLQs that SQS filled
//!   itself, followed until it ends; the same receive/send/delete loop for the SNS subscription
//!   DLQs, which SQS does not know as dead-letter queues of anything, and whenever SQS refuses
//!   to start a task.

use super::{DlqError, Resolved, hold, release, unwrap_sns};
use aws_sdk_sqs::types::{Message, MessageAttributeValue, SendMessageBatchRequestEntry};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;
use utility::messaging::bus::{Bus, BusError};

/// Most messages one selected redrive looks through per DLQ to find the ids it was given.
const SCAN_LIMIT: usize = 10_000;
const POLL: Duration = Duration::from_millis(500);

/// Messages moved from one DLQ.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Moved {
    pub dlq: &'static str,
    pub source: &'static str,
    pub moved: u64,
    /// [`MOVE_TASK`] or [`SEND_DELETE`].
    pub via: &'static str,
}

pub const MOVE_TASK: &str = "message-move task";
pub const SEND_DELETE: &str = "send then delete";

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub moved: Vec<Moved>,
    /// Requested ids found in none of the DLQs looked at.
    pub not_found: Vec<String>,
}

impl Report {
    pub fn total(&self) -> u64 {
        self.moved.iter().map(|m| m.moved).sum()
    }
}

/// Moves the messages with these SQS message ids back to their source queues.
#[tracing::instrument(skip_all, fields(ids = ids.len()), err)]
pub async fn selected(bus: &Bus, queues: &[Resolved], ids: &[String]) -> Result<Report, DlqError> {
    let mut remaining: Vec<String> = ids.to_vec();
    remaining.sort();
    remaining.dedup();
    let mut report = Report::default();
    for queue in queues {
        if remaining.is_empty() {
            break;
        }
        let held = hold(bus, &queue.url, SCAN_LIMIT, |held| {
            remaining
                .iter()
                .all(|id| held.iter().any(|m| m.message_id() == Some(id.as_str())))
        })
        .await?;
        let (wanted, others): (Vec<Message>, Vec<Message>) = held
            .into_iter()
            .partition(|m| m.message_id().is_some_and(|id| remaining.iter().any(|r| r == id)));
        release(bus, &queue.url, &others).await?;
        remaining.retain(|id| !wanted.iter().any(|m| m.message_id() == Some(id.as_str())));
        let moved = send_back(bus, queue, &wanted).await?;
        if moved > 0 {
            report.moved.push(Moved {
                dlq: queue.queue.name,
                source: queue.queue.source.name(),
                moved,
                via: SEND_DELETE,
            });
        }
    }
    report.not_found = remaining;
    Ok(report)
}

/// Moves every message of these DLQs back to its source queue, waiting at most `wait` for each
/// message-move task to finish.
#[tracing::instrument(skip_all, err)]
pub async fn all(bus: &Bus, queues: &[Resolved], wait: Duration) -> Result<Report, DlqError> {
    let mut report = Report::default();
    for queue in queues {
        let task = if queue.queue.of_queue {
            move_task(bus, queue, wait).await?
        } else {
            None
        };
        let (moved, via) = match task {
            Some(moved) => (moved, MOVE_TASK),
            None => (send_all(bus, queue).await?, SEND_DELETE),
        };
        report.moved.push(Moved {
            dlq: queue.queue.name,
            source: queue.queue.source.name(),
            moved,
            via,
        });
    }
    Ok(report)
}

/// Moves every message of a DLQ, ten at a time.
async fn send_all(bus: &Bus, queue: &Resolved) -> Result<u64, DlqError> {
    let mut moved = 0;
    loop {
        let batch = hold(bus, &queue.url, 10, |_| false).await?;
        if batch.is_empty() {
            return Ok(moved);
        }
        moved += send_back(bus, queue, &batch).await?;
    }
}

/// Sends held messages to the source queue and deletes from the DLQ those it accepted. Entries
/// the source refused are made visible again in the DLQ and reported as an error.
async fn send_back(bus: &Bus, queue: &Resolved, messages: &[Message]) -> Result<u64, DlqError> {
    let mut moved = 0u64;
    let mut refused = Vec::new();
    for chunk in messages.chunks(utility::messaging::bus::MAX_BATCH) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| entry(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let output = bus
            .sqs()
            .send_message_batch()
            .queue_url(&queue.source_url)
            .set_entries(Some(entries))
            .send()
            .await;
        let output = match output {
            Ok(output) => output,
            Err(err) => {
                let _ = release(bus, &queue.url, chunk).await;
                return Err(BusError::from_sdk("SendMessageBatch", err).into());
            }
        };
        let accepted: Vec<&str> = output
            .successful
            .iter()
            .filter_map(|s| chunk.get(s.id.parse::<usize>().ok()?)?.receipt_handle())
            .collect();
        bus.delete_batch(&queue.url, &accepted).await?;
        moved += accepted.len() as u64;
        for failure in &output.failed {
            if let Some(m) = failure.id.parse::<usize>().ok().and_then(|i| chunk.get(i)) {
                release(bus, &queue.url, std::slice::from_ref(m)).await?;
                refused.push(format!(
                    "{}: {} {}",
                    m.message_id().unwrap_or_default(),
                    failure.code,
                    failure.message.as_deref().unwrap_or("")
                ));
            }
        }
    }
    if refused.is_empty() {
        Ok(moved)
    } else {
        Err(DlqError::Move {
            dlq: queue.queue.name.to_owned(),
            reason: format!(
                "{moved} moved, {} refused by the source queue: {}",
                refused.len(),
                refused.join("; ")
            ),
        })
    }
}

/// The message as it was first sent: body and message attributes (from the SNS notification
/// when SNS wrapped it).
fn entry(index: usize, message: &Message) -> Result<SendMessageBatchRequestEntry, DlqError> {
    let unwrapped = unwrap_sns(message.body().unwrap_or_default());
    let attributes: HashMap<String, MessageAttributeValue> = match unwrapped.sns_attributes {
        Some(sns) => sns
            .into_iter()
            .map(|(k, v)| {
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .map(|value| (k, value))
            })
            .collect::<Result<_, _>>()
            .map_err(|e| BusError::from_sdk("SendMessageBatch", e))?,
        None => message
            .message_attributes()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                MessageAttributeValue::builder()
                    .data_type(v.data_type())
                    .set_string_value(v.string_value().map(str::to_owned))
                    .set_binary_value(v.binary_value().cloned())
                    .build()
                    .map(|value| (k.clone(), value))
            })
            .collect::<Result<_, _>>()
            .map_err(|e| BusError::from_sdk("SendMessageBatch", e))?,
    };
    SendMessageBatchRequestEntry::builder()
        .id(index.to_string())
        .message_body(unwrapped.body)
        .set_message_attributes((!attributes.is_empty()).then_some(attributes))
        .build()
        .map_err(|e| BusError::from_sdk("SendMessageBatch", e).into())
}

/// Starts an SQS message-move task from the DLQ to its source queue and follows it to the end.
/// `None` when SQS refuses to start one: it only moves from a queue that some queue's redrive
/// policy names, which stops being true when, say, the source queue was deleted and recreated
/// by hand. The caller then moves the messages itself.
async fn move_task(bus: &Bus, queue: &Resolved, wait: Duration) -> Result<Option<u64>, DlqError> {
    let failed = |reason: String| DlqError::Move {
        dlq: queue.queue.name.to_owned(),
        reason,
    };
    let dlq_arn = bus
        .queue_arn(&queue.url)
        .await?
        .ok_or_else(|| failed("SQS did not tell the DLQ's ARN".to_owned()))?;
    let started = bus
        .sqs()
        .start_message_move_task()
        .source_arn(&dlq_arn)
        .destination_arn(&queue.source_arn)
        .send()
        .await;
    let handle = match started {
        Ok(output) => output.task_handle,
        Err(err) => {
            let err = BusError::from_sdk("StartMessageMoveTask", err);
            tracing::warn!(dlq = queue.queue.name, error = %err, "SQS refused a message-move task; moving the messages one by one");
            return Ok(None);
        }
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let tasks = bus
            .sqs()
            .list_message_move_tasks()
            .source_arn(&dlq_arn)
            .send()
            .await
            .map_err(|e| BusError::from_sdk("ListMessageMoveTasks", e))?;
        let results = tasks.results();
        // Newest first; only running tasks carry their handle.
        let task = results
            .iter()
            .find(|t| t.task_handle().is_some() && t.task_handle() == handle.as_deref())
            .or_else(|| results.first());
        match task.and_then(|t| t.status()) {
            Some("COMPLETED") => {
                return Ok(Some(
                    task.map(|t| t.approximate_number_of_messages_moved()).unwrap_or(0) as u64,
                ));
            }
            Some(status @ ("FAILED" | "CANCELLED")) => {
                let reason = task.and_then(|t| t.failure_reason()).unwrap_or("no reason given");
                return Err(failed(format!("message-move task {status}: {reason}")));
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            return Err(failed(format!(
                "the message-move task was still running after {} s; follow it with ListMessageMoveTasks",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}
