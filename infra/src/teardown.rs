//! Deleting the messaging topology without losing messages by accident.
//!
//! The work queues hold commands and events on their way, the dead-letter queues what an
//! operator has yet to look at (kept 14 days). Deleting them under a running application, or with
//! messages in them, drops sagas half-way: customers enrolled without their bonus, compensations
//! that never run. So [`delete_messaging`] refuses while the application stack exists, and while
//! any queue or DLQ holds a message, unless told to discard them.
//!
//! The DLQs are `DeletionPolicy: Retain` in `infra/messaging.yaml`: deleting the stack any other
//! way (the console, `aws cloudformation delete-stack`) leaves them and their messages. Once the
//! check above has passed (nothing in them, or discarding was asked for), this deletes them after
//! the stack.

use crate::InfraError;
use aws_sdk_cloudformation::Client;
use std::collections::HashMap;
use std::time::Duration;
use strum::VariantArray;
use utility::messaging::Endpoint;
use utility::messaging::bus::{Bus, BusError};

/// The flag that lets [`delete_messaging`] delete queues that hold messages.
pub const DISCARD_FLAG: &str = "--discard-messages";

#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error(
        "the application stack `{app}` still runs on the topology of `{stack}`; \
         remove it first (sagactl destroy-app removes both)"
    )]
    ApplicationRunning { stack: String, app: String },
    #[error(
        "refusing to delete `{stack}`: {} still hold messages that would be lost ({}); \
         `sagactl dlq list` shows the dead letters; add {DISCARD_FLAG} to delete them with the queues",
        held.len(),
        held.iter().map(|(q, n)| format!("{q}: {n}")).collect::<Vec<_>>().join(", ")
    )]
    MessagesHeld { stack: String, held: Vec<(String, i64)> },
    #[error(transparent)]
    Stack(#[from] InfraError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The stack outputs naming every queue of the topology: the work queues, then the DLQs.
fn queue_outputs() -> impl Iterator<Item = &'static str> {
    let work = Endpoint::VARIANTS
        .iter()
        .filter(|e| !e.is_topic())
        .map(|e| e.outputs().address);
    let dead = Endpoint::VARIANTS.iter().map(|e| e.outputs().dead_letter.url);
    work.chain(dead)
}

/// Each queue of the stack (by name) that holds messages, visible or in flight, with how many.
pub async fn held_messages(bus: &Bus, outputs: &HashMap<String, String>) -> Result<Vec<(String, i64)>, BusError> {
    let mut held = Vec::new();
    for output in queue_outputs() {
        let Some(url) = outputs.get(output) else { continue };
        let depth = bus.queue_depth(url).await?.total();
        if depth > 0 {
            let name = utility::messaging::bus::queue_name(url).to_owned();
            held.push((name, depth));
        }
    }
    Ok(held)
}

/// Deletes the messaging stack `stack` and its retained DLQs, waiting at most `limit` for it to
/// go; nothing to do when there is no such stack. Refuses, before it deletes anything, while the
/// application stack `app` exists (`None`: the caller has just removed it), and while a queue or
/// DLQ holds messages, unless `discard`.
pub async fn delete_messaging(
    client: &Client,
    bus: &Bus,
    stack: &str,
    app: Option<&str>,
    discard: bool,
    limit: Duration,
) -> Result<(), TeardownError> {
    let Some(outputs) = crate::outputs(client, stack).await? else {
        return Ok(());
    };
    if let Some(app) = app
        && crate::parameters(client, app).await?.is_some()
    {
        return Err(TeardownError::ApplicationRunning {
            stack: stack.to_owned(),
            app: app.to_owned(),
        });
    }
    let held = held_messages(bus, &outputs).await?;
    if !held.is_empty() {
        if !discard {
            return Err(TeardownError::MessagesHeld {
                stack: stack.to_owned(),
                held,
            });
        }
        tracing::warn!(?held, "discarding the messages still held, as asked");
    }
    crate::delete_within(client, stack, limit).await?;
    for endpoint in Endpoint::VARIANTS {
        if let Some(url) = outputs.get(endpoint.outputs().dead_letter.url) {
            delete_queue(bus, url).await?;
        }
    }
    Ok(())
}

/// Deletes a queue; one already gone is fine.
async fn delete_queue(bus: &Bus, url: &str) -> Result<(), BusError> {
    match bus.sqs().delete_queue().queue_url(url).send().await {
        Ok(_) => Ok(()),
        Err(err)
            if matches!(
                aws_sdk_sqs::error::ProvideErrorMetadata::code(&err),
                Some("QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue")
            ) =>
        {
            Ok(())
        }
        Err(err) => Err(BusError::from_sdk("DeleteQueue", err)),
    }
}
