//! Messages the suite puts on the bus itself: copies of envelopes the services already sent
//! (duplicated, shuffled, late), and poison that no service can handle.

use crate::system::{MAX_RECEIVE_COUNT, NAMES, System};
use anyhow::Context;
use rand::seq::SliceRandom;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use testkit::{Patience, Poll, eventually};
use tokio::time::Instant;
use utility::messaging::Endpoint;
use utility::messaging::bus::{Outgoing, QueueDepth};

/// Envelopes the services have published so far (their outbox rows marked sent), by destination.
pub async fn sent_envelopes(system: &System) -> anyhow::Result<Vec<(Endpoint, Outgoing)>> {
    let mut found = Vec::new();
    for i in 0..NAMES.len() {
        let pool = system.pool(i).await?;
        let rows: Vec<(String, String, String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT destination, id, message_type, correlation_id, body, attributes FROM outbox WHERE sent_at IS NOT NULL",
        )
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        for (destination, id, message_type, correlation_id, body, attributes) in rows {
            let endpoint = destination
                .parse::<Endpoint>()
                .with_context(|| format!("outbox destination {destination}"))?;
            let outgoing = Outgoing {
                id,
                message_type,
                correlation_id,
                body,
                traceparent: None,
                // As the relay sent it: a copy passes the same subscription filters.
                extra_attributes: utility::messaging::outbox::stored_attributes(attributes.as_deref()),
            };
            found.push((endpoint, outgoing));
        }
    }
    Ok(found)
}

/// Sends `messages` again, in a random order, to where they first went (commands to their queue,
/// events to their topic, so the subscriptions' filters apply as usual).
pub async fn resend(system: &System, mut messages: Vec<(Endpoint, Outgoing)>) -> anyhow::Result<usize> {
    messages.shuffle(&mut rand::rng());
    let mut sent = 0;
    // Consecutive runs with one destination become batches; ids are unique within each input.
    for chunk in messages.chunk_by(|a, b| a.0 == b.0) {
        let endpoint = chunk[0].0;
        let address = system.output(endpoint.outputs().address)?;
        let batch: Vec<Outgoing> = chunk.iter().map(|(_, m)| m.clone()).collect();
        let accepted = if endpoint.is_topic() {
            system.processes.bus.publish_batch(address, &batch).await?
        } else {
            system.processes.bus.send_batch(address, &batch).await?
        };
        sent += accepted.sent.len();
    }
    Ok(sent)
}

/// Re-sends, shuffled, every envelope published since the last call (tracked in `done`).
pub async fn resend_new(system: &System, done: &mut HashSet<String>) -> anyhow::Result<usize> {
    let fresh: Vec<_> = sent_envelopes(system)
        .await?
        .into_iter()
        .filter(|(_, m)| done.insert(m.id.clone()))
        .collect();
    resend(system, fresh).await
}

/// Messages waiting or in flight in each work queue and dead-letter queue, by output key.
pub async fn queue_depths(system: &System, keys: &[&str]) -> anyhow::Result<HashMap<String, i64>> {
    let mut depths = HashMap::new();
    for key in keys {
        depths.insert((*key).to_owned(), queue_depth(system, key).await?.total());
    }
    Ok(depths)
}

/// Messages received from the queue and not yet deleted (held by a consumer).
pub async fn in_flight(system: &System, key: &str) -> anyhow::Result<i64> {
    Ok(queue_depth(system, key).await?.in_flight)
}

async fn queue_depth(system: &System, key: &str) -> anyhow::Result<QueueDepth> {
    let url = system.output(key)?;
    let depth = system.processes.bus.queue_depth(url).await;
    depth.with_context(|| format!("queue depth of {key}"))
}

/// The output keys of the three work queues (from the endpoint table).
pub fn work_queues() -> Vec<&'static str> {
    <Endpoint as strum::VariantArray>::VARIANTS
        .iter()
        .filter(|e| !e.is_topic())
        .map(|e| e.outputs().address)
        .collect()
}

/// The output keys of the five dead-letter queues (from the endpoint table).
pub fn dead_letter_queues() -> Vec<&'static str> {
    <Endpoint as strum::VariantArray>::VARIANTS
        .iter()
        .map(|e| e.outputs().dead_letter.url)
        .collect()
}

/// Waits until the work queues are empty (nothing waiting, nothing in flight).
pub async fn drain(system: &System, limit: Duration) -> anyhow::Result<()> {
    let patience = Patience::within(limit).every(Duration::from_millis(500));
    eventually("the work queues to drain", patience, async || {
        match queue_depths(system, &work_queues()).await {
            Ok(depths) if depths.values().all(|&d| d == 0) => Poll::Ready(Ok(())),
            Ok(depths) => Poll::Pending(depths),
            Err(err) => Poll::Ready(Err(err)),
        }
    })
    .await?
}

/// One poison message as sent.
pub struct Poison {
    pub kind: &'static str,
    pub queue_key: &'static str,
    pub dlq_key: &'static str,
    pub marker: String,
    pub sqs_message_id: String,
}

/// A well-formed envelope around anything.
fn envelope(kind: &str, version: u32, payload: serde_json::Value) -> String {
    json!({
        "message_id": uuid::Uuid::now_v7(), "type": kind, "schema_version": version,
        "correlation_id": uuid::Uuid::now_v7(), "causation_id": null,
        "occurred_at": "2026-01-01T00:00:00.000Z", "traceparent": null, "payload": payload,
    })
    .to_string()
}

/// Sends poison to each work queue: invalid JSON, an unknown type, an unsupported schema version,
/// an oversize body (300 KB when the queue takes it, else just under the 256 KiB limit with an
/// invalid payload), and a well-formed event for an enrollment that does not exist.
pub async fn send_poison(system: &System) -> anyhow::Result<(Vec<Poison>, String)> {
    let queues = [
        ("CustomerCommandsQueueUrl", "CustomerCommandsDlqUrl", "Enroll"),
        (
            "TransactionCommandsQueueUrl",
            "TransactionCommandsDlqUrl",
            "PostBonusPoints",
        ),
        ("GatewayEventsQueueUrl", "GatewayEventsDlqUrl", "BonusPointsPosted"),
    ];
    let mut sent = Vec::new();
    let mut oversize_note = String::new();
    for (queue_key, dlq_key, own_type) in queues {
        let url = system.output(queue_key)?.to_owned();
        let marker = || format!("poison-{}", uuid::Uuid::new_v4().simple());
        let mut bodies: Vec<(&'static str, String, String)> = Vec::new();
        let m = marker();
        bodies.push(("invalid JSON", format!("{{\"not json\": {m}"), m));
        let m = marker();
        bodies.push(("unknown type", envelope("Bogus", 1, json!({"marker": m})), m));
        let m = marker();
        bodies.push(("schema version 99", envelope(own_type, 99, json!({"marker": m})), m));
        if queue_key == "GatewayEventsQueueUrl" {
            let m = marker();
            let payload = json!({"customer_id": uuid::Uuid::now_v7(), "points": 500, "balance": 500, "marker": m});
            bodies.push(("unknown enrollment", envelope(own_type, 1, payload), m));
        }
        for (kind, body, marker) in bodies {
            let id = send_raw(system, &url, body).await?;
            sent.push(Poison {
                kind,
                queue_key,
                dlq_key,
                marker,
                sqs_message_id: id,
            });
        }
        let m = marker();
        let big = envelope(own_type, 1, json!({"marker": m, "padding": "x".repeat(300_000)}));
        let (kind, id) = match send_raw(system, &url, big).await {
            Ok(id) => ("oversize 300 KB", id),
            Err(err) => {
                oversize_note = format!("the queue refused a 300 KB body ({err:#}); sent 250 KB instead");
                let body = envelope(own_type, 1, json!({"marker": m, "padding": "x".repeat(250_000)}));
                ("oversize 250 KB, invalid payload", send_raw(system, &url, body).await?)
            }
        };
        sent.push(Poison {
            kind,
            queue_key,
            dlq_key,
            marker: m,
            sqs_message_id: id,
        });
    }
    Ok((sent, oversize_note))
}

async fn send_raw(system: &System, url: &str, body: String) -> anyhow::Result<String> {
    let out = system
        .processes
        .bus
        .sqs()
        .send_message()
        .queue_url(url)
        .message_body(body)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
    out.message_id.context("SendMessage returned no message id")
}

/// Receives from the dead-letter queues until every poison message is found (by its marker) or
/// `limit` passes. Returns the markers found. Messages stay in the DLQ (visibility is short).
pub async fn find_in_dlqs(system: &System, poison: &[Poison], limit: Duration) -> anyhow::Result<HashSet<String>> {
    let started = Instant::now();
    let mut found = HashSet::new();
    let dlqs: HashSet<&str> = poison.iter().map(|p| p.dlq_key).collect();
    while found.len() < poison.len() && started.elapsed() < limit {
        for key in &dlqs {
            let out = system
                .processes
                .bus
                .sqs()
                .receive_message()
                .queue_url(system.output(key)?)
                .max_number_of_messages(10)
                .visibility_timeout(2)
                .wait_time_seconds(1)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))?;
            for message in out.messages() {
                let body = message.body().unwrap_or_default();
                for p in poison.iter().filter(|p| p.dlq_key == *key && body.contains(&p.marker)) {
                    found.insert(p.marker.clone());
                }
            }
        }
    }
    Ok(found)
}

/// Counts, in the services' JSON logs, the WARN lines about each poison message (matched by the
/// SQS message id the consumer span carries). One per receive is expected: MAX_RECEIVE_COUNT.
pub fn warn_lines(system: &System, poison: &[Poison]) -> HashMap<String, usize> {
    let ids: HashSet<&str> = poison.iter().map(|p| p.sqs_message_id.as_str()).collect();
    let mut counts: HashMap<String, usize> = poison.iter().map(|p| (p.sqs_message_id.clone(), 0)).collect();
    for service in &system.processes.services {
        for value in service.logs() {
            if value["level"] != "WARN" {
                continue;
            }
            if let Some(id) = value["messaging.message.id"].as_str().filter(|id| ids.contains(id)) {
                *counts.entry(id.to_owned()).or_default() += 1;
            }
        }
    }
    counts
}

pub const EXPECTED_WARNS: usize = MAX_RECEIVE_COUNT as usize;
