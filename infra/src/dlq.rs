//! Dead-letter queues, operable: see what sits in each DLQ of the messaging stack without
//! consuming it, and move messages back to their source queue once the cause is fixed
//! ([`redrive`]).
//!
//! Inspecting a queue means receiving its messages, so they are received with a short visibility
//! timeout and made visible again at once; nothing here deletes a message that it has not first
//! delivered to its source queue.

pub mod redrive;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName as Attr};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;
use strum::VariantArray;
use utility::messaging::Endpoint;
use utility::messaging::bus::{Bus, BusError};
use utility::messaging::envelope::Envelope;

/// How long a message stays hidden while it is inspected or redriven. Long enough for one pass
/// over a queue, short enough that a crash of this tool delays nothing for long.
const HOLD_SECONDS: i32 = 30;

/// A dead-letter queue of the messaging template and the queue its messages belong back in,
/// read from the endpoint table ([`Endpoint::outputs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterQueue {
    /// The queue name without the stack's prefix, e.g. `customer-commands-dlq`.
    pub name: &'static str,
    /// The stack output holding its URL.
    pub url_output: &'static str,
    /// Where its messages go back to. For the subscription DLQs (what SNS could not deliver) that
    /// is the gateway-events queue, the subscriptions' endpoint.
    pub source: Endpoint,
    /// Whether SQS itself moved the messages here (a queue's redrive policy) rather than SNS.
    /// Only those can be moved back by an SQS message-move task.
    pub of_queue: bool,
}

impl DeadLetterQueue {
    /// The DLQ that catches what `endpoint` could not deliver.
    pub fn of(endpoint: Endpoint) -> Self {
        let dead_letter = endpoint.outputs().dead_letter;
        Self {
            name: dead_letter.name,
            url_output: dead_letter.url,
            source: endpoint.redrive_target(),
            of_queue: !endpoint.is_topic(),
        }
    }
}

/// Every DLQ of `infra/messaging.yaml`, one per endpoint.
pub fn dead_letter_queues() -> Vec<DeadLetterQueue> {
    Endpoint::VARIANTS.iter().map(|&e| DeadLetterQueue::of(e)).collect()
}

/// The queues a redrive may target (the sources of the DLQs).
pub fn source_queues() -> impl Iterator<Item = Endpoint> {
    Endpoint::VARIANTS.iter().copied().filter(|e| !e.is_topic())
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("the messaging stack has no output `{0}`; redeploy it with `sagactl deploy`")]
    MissingOutput(&'static str),
    #[error(
        "`{0}` is not a queue with a dead-letter queue (expected customer-commands, transaction-commands or gateway-events)"
    )]
    NotASource(String),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("moving messages from {dlq} failed: {reason}")]
    Move { dlq: String, reason: String },
}

/// A DLQ of one deployed stack: its URL and its source queue's URL and ARN.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub queue: DeadLetterQueue,
    pub url: String,
    pub source_url: String,
    pub source_arn: String,
}

/// The DLQs of a stack from its outputs, optionally only those whose source is `only`.
pub fn resolve(outputs: &HashMap<String, String>, only: Option<Endpoint>) -> Result<Vec<Resolved>, DlqError> {
    let get = |key: &'static str| outputs.get(key).cloned().ok_or(DlqError::MissingOutput(key));
    dead_letter_queues()
        .into_iter()
        .filter(|q| only.is_none_or(|source| q.source == source))
        .map(|queue| {
            let source = queue.source.outputs();
            Ok(Resolved {
                url: get(queue.url_output)?,
                source_url: get(source.address)?,
                source_arn: get(source.arn)?,
                queue,
            })
        })
        .collect()
}

/// Parses a `--queue` argument: one of the three source queues.
pub fn source_queue(name: &str) -> Result<Endpoint, DlqError> {
    name.parse::<Endpoint>()
        .ok()
        .filter(|e| !e.is_topic())
        .ok_or_else(|| DlqError::NotASource(name.to_owned()))
}

/// One message sitting in a DLQ, as an operator needs to judge it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    /// The DLQ's name without prefix.
    pub dlq: &'static str,
    /// The queue it belongs back in.
    pub source: &'static str,
    /// The queue SQS moved it from, when SQS says so (`DeadLetterQueueSourceArn`).
    pub dead_letter_source_arn: Option<String>,
    pub sqs_message_id: String,
    /// The envelope's type; else the `type` message attribute; else `<malformed: reason>`.
    pub message_type: String,
    pub correlation_id: Option<String>,
    /// Why the body is not a valid envelope, if it is not.
    pub error: Option<String>,
    /// When the message was first sent (kept when SQS moves it to the DLQ).
    pub sent_at: Option<DateTime<Utc>>,
    /// When it was first received from the DLQ.
    pub first_received_at: Option<DateTime<Utc>>,
    /// Receives so far, this inspection included.
    pub receive_count: u32,
}

/// What a message carries once any SNS notification wrapping is removed: the body a consumer of
/// the source queue expects, and its message attributes as plain strings.
pub(crate) struct Unwrapped {
    pub body: String,
    pub sns_attributes: Option<HashMap<String, String>>,
}

/// SNS puts undeliverable messages in a subscription DLQ either raw (raw delivery on) or wrapped
/// in its JSON notification (`{"Type": "Notification", "Message": ..., "MessageAttributes": ...}`).
/// Either way the source queue wants the raw envelope.
pub(crate) fn unwrap_sns(body: &str) -> Unwrapped {
    let raw = || Unwrapped {
        body: body.to_owned(),
        sns_attributes: None,
    };
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str::<serde_json::Value>(body) else {
        return raw();
    };
    let (Some("Notification"), Some(message)) = (
        object.get("Type").and_then(|t| t.as_str()),
        object.get("Message").and_then(|m| m.as_str()),
    ) else {
        return raw();
    };
    let attributes = object
        .get("MessageAttributes")
        .and_then(|a| a.as_object())
        .map(|attrs| {
            attrs
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.get("Value")?.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Unwrapped {
        body: message.to_owned(),
        sns_attributes: Some(attributes),
    }
}

fn millis(message: &Message, attr: Attr) -> Option<DateTime<Utc>> {
    let text = message.attributes()?.get(&attr)?;
    DateTime::from_timestamp_millis(text.parse().ok()?)
}

/// Describes a received DLQ message. Never fails: a body that is not an envelope is itself the
/// finding.
pub fn describe(queue: &DeadLetterQueue, message: &Message) -> DeadLetter {
    let unwrapped = unwrap_sns(message.body().unwrap_or_default());
    let attribute = |name: &str| {
        unwrapped
            .sns_attributes
            .as_ref()
            .and_then(|a| a.get(name).cloned())
            .or_else(|| {
                message
                    .message_attributes()?
                    .get(name)?
                    .string_value()
                    .map(str::to_owned)
            })
    };
    let (message_type, correlation_id, error) = match Envelope::parse(&unwrapped.body) {
        Ok(envelope) => (
            envelope.type_name().to_owned(),
            Some(envelope.correlation_id.to_string()),
            None,
        ),
        Err(err) => (
            attribute("type").unwrap_or_else(|| format!("<malformed: {err}>")),
            attribute("correlation_id"),
            Some(err.to_string()),
        ),
    };
    DeadLetter {
        dlq: queue.name,
        source: queue.source.name(),
        dead_letter_source_arn: message
            .attributes()
            .and_then(|a| a.get(&Attr::DeadLetterQueueSourceArn))
            .cloned(),
        sqs_message_id: message.message_id().unwrap_or_default().to_owned(),
        message_type,
        correlation_id,
        error,
        sent_at: millis(message, Attr::SentTimestamp),
        first_received_at: millis(message, Attr::ApproximateFirstReceiveTimestamp),
        receive_count: message
            .attributes()
            .and_then(|a| a.get(&Attr::ApproximateReceiveCount))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
    }
}

/// Lists what sits in each DLQ, at most `limit` messages per queue, without consuming anything:
/// every message received here is made visible again before this returns.
#[tracing::instrument(skip_all, err)]
pub async fn list(bus: &Bus, queues: &[Resolved], limit: usize) -> Result<Vec<DeadLetter>, DlqError> {
    let mut found = Vec::new();
    for queue in queues {
        let held = hold(bus, &queue.url, limit, |_| false).await?;
        found.extend(held.iter().map(|m| describe(&queue.queue, m)));
        release(bus, &queue.url, &held).await?;
    }
    Ok(found)
}

/// Receives up to `limit` messages of a queue and keeps them hidden ([`HOLD_SECONDS`]), until
/// the queue has nothing more to give or `done` says enough. A message seen twice (its hold ran
/// out during a long pass) is kept once, with its newest receipt. On error, whatever is held is
/// released first.
pub(crate) async fn hold(
    bus: &Bus,
    url: &str,
    limit: usize,
    mut done: impl FnMut(&[Message]) -> bool,
) -> Result<Vec<Message>, DlqError> {
    let mut held: Vec<Message> = Vec::new();
    while held.len() < limit && !done(&held) {
        let received = bus
            .sqs()
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            // A short long poll: it asks every SQS server, so an empty answer means empty.
            .wait_time_seconds(1)
            .visibility_timeout(HOLD_SECONDS)
            .message_system_attribute_names(Attr::All)
            .message_attribute_names("All")
            .send()
            .await;
        let batch = match received {
            Ok(output) => output.messages.unwrap_or_default(),
            Err(err) => {
                let _ = release(bus, url, &held).await;
                return Err(BusError::from_sdk("ReceiveMessage", err).into());
            }
        };
        let mut new = 0;
        for message in batch {
            match held.iter_mut().find(|h| h.message_id == message.message_id) {
                Some(seen) => *seen = message,
                None => {
                    held.push(message);
                    new += 1;
                }
            }
        }
        if new == 0 {
            break;
        }
    }
    Ok(held)
}

/// Makes held messages visible again at once.
pub(crate) async fn release(bus: &Bus, url: &str, held: &[Message]) -> Result<(), DlqError> {
    let changes: Vec<(&str, i32)> = held.iter().filter_map(|m| Some((m.receipt_handle()?, 0))).collect();
    bus.change_visibility_batch(url, &changes).await?;
    Ok(())
}

/// A readable table, one block per DLQ.
pub fn table(queues: &[Resolved], letters: &[DeadLetter]) -> String {
    let time = |t: &Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".to_owned())
    };
    let mut out = String::new();
    for queue in queues {
        let rows: Vec<[String; 6]> = letters
            .iter()
            .filter(|l| l.dlq == queue.queue.name)
            .map(|l| {
                // A `type` attribute on a body that is not an envelope must not pass for a
                // valid message of that type.
                let kind = match &l.error {
                    Some(error) if !l.message_type.starts_with("<malformed") => {
                        format!("{} <malformed: {error}>", l.message_type)
                    }
                    _ => l.message_type.clone(),
                };
                [
                    l.sqs_message_id.clone(),
                    shorten(&kind, 60),
                    l.correlation_id.clone().unwrap_or_else(|| "-".to_owned()),
                    time(&l.sent_at),
                    time(&l.first_received_at),
                    l.receive_count.to_string(),
                ]
            })
            .collect();
        out.push_str(&format!(
            "{} -> {}: {} message{}\n",
            queue.queue.name,
            queue.queue.source.name(),
            rows.len(),
            if rows.len() == 1 { "" } else { "s" }
        ));
        if rows.is_empty() {
            continue;
        }
        let header = [
            "SQS MESSAGE ID",
            "TYPE",
            "CORRELATION ID",
            "SENT",
            "FIRST RECEIVED",
            "RECEIVES",
        ];
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::iter::once(header.map(str::to_owned)).chain(rows) {
            let cells: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
            out.push_str("  ");
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
    }
    out
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests;
