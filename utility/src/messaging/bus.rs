//! The SNS/SQS client: one SDK client of each kind per process (cloned, never rebuilt), long-poll
//! receives of up to ten messages, and batch APIs for every send, publish, delete and visibility
//! change. Partial batch failures are reported entry by entry, never hidden.

use super::envelope::Envelope;
use aws_config::{BehaviorVersion, SdkConfig, timeout::TimeoutConfig};
use aws_sdk_sns::types::{MessageAttributeValue as SnsAttribute, PublishBatchRequestEntry};
use aws_sdk_sqs::error::BuildError;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue,
    MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use std::collections::HashMap;
use std::time::Duration;

mod requests;

pub use requests::Requests;

/// SQS and SNS take at most ten entries per batch call.
pub const MAX_BATCH: usize = 10;

#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {detail}")]
pub struct BusError {
    pub operation: &'static str,
    detail: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BusError {
    fn sdk<E: std::error::Error + Send + Sync + 'static>(operation: &'static str) -> impl FnOnce(E) -> Self {
        move |err| Self {
            operation,
            detail: crate::error::chain(&err),
            source: Some(Box::new(err)),
        }
    }

    /// Wraps any SDK error, keeping its chain.
    pub fn from_sdk<E: std::error::Error + Send + Sync + 'static>(operation: &'static str, err: E) -> Self {
        Self::sdk(operation)(err)
    }

    /// `Ok` when no entry of a batch call failed, else an error listing each failure.
    fn unless_failed(operation: &'static str, failed: &[EntryFailure]) -> Result<(), Self> {
        if failed.is_empty() {
            return Ok(());
        }
        let each: Vec<String> = failed.iter().map(|f| format!("{}: {}", f.code, f.message)).collect();
        Err(Self {
            operation,
            detail: format!("{} entries failed: {}", failed.len(), each.join("; ")),
            source: None,
        })
    }
}

/// Messages in a queue: visible and waiting, and received but not yet deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    pub waiting: i64,
    pub in_flight: i64,
}

impl QueueDepth {
    pub fn total(self) -> i64 {
        self.waiting + self.in_flight
    }
}

/// A message as received from SQS.
#[derive(Debug, Clone)]
pub struct Received {
    pub sqs_message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// How many times SQS has handed this message out, this time included.
    pub receive_count: u32,
    /// The `traceparent` message attribute: the span that published this message.
    pub traceparent: Option<String>,
    /// The `type` message attribute, which SNS filter policies route on: the consumer refuses a
    /// message whose body says otherwise.
    pub type_attribute: Option<String>,
}

/// What a batch send or publish did, entry by entry.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Ids the bus accepted.
    pub sent: Vec<String>,
    /// Entries the bus refused.
    pub failed: Vec<EntryFailure>,
}

#[derive(Debug, Clone)]
pub struct EntryFailure {
    pub id: String,
    pub code: String,
    pub message: String,
    /// The service says the request itself is at fault.
    pub sender_fault: bool,
}

impl EntryFailure {
    /// Retrying this entry cannot help: the sender is at fault, or the code says the content is
    /// invalid (LocalStack reports `InvalidMessageContents` without the sender-fault flag AWS sets).
    pub fn is_permanent(&self) -> bool {
        const CONTENT_ERRORS: [&str; 6] = [
            "InvalidMessageContents",
            "MessageTooLong",
            "InvalidParameterValue",
            "InvalidParameter",
            "InvalidAttributeValue",
            "ValidationError",
        ];
        self.sender_fault || CONTENT_ERRORS.contains(&self.code.as_str())
    }
}

impl From<aws_sdk_sqs::types::BatchResultErrorEntry> for EntryFailure {
    fn from(f: aws_sdk_sqs::types::BatchResultErrorEntry) -> Self {
        Self {
            id: f.id,
            code: f.code,
            message: f.message.unwrap_or_default(),
            sender_fault: f.sender_fault,
        }
    }
}

impl From<aws_sdk_sns::types::BatchResultErrorEntry> for EntryFailure {
    fn from(f: aws_sdk_sns::types::BatchResultErrorEntry) -> Self {
        Self {
            id: f.id,
            code: f.code,
            message: f.message.unwrap_or_default(),
            sender_fault: f.sender_fault,
        }
    }
}

impl BatchOutcome {
    fn of(sent: impl IntoIterator<Item = String>, failed: impl IntoIterator<Item = impl Into<EntryFailure>>) -> Self {
        Self {
            sent: sent.into_iter().collect(),
            failed: failed.into_iter().map(Into::into).collect(),
        }
    }
}

/// A message ready to go on the bus. `id` is the envelope's message id; it doubles as the batch
/// entry id, which must be unique within a batch.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: String,
    pub message_type: String,
    pub correlation_id: String,
    pub body: String,
    /// The W3C trace context of the span publishing it, sent as the `traceparent` attribute.
    pub traceparent: Option<String>,
    /// Attributes its type declares besides those three, for subscriptions to filter on
    /// ([`super::message::MessageType::attributes`]): name and value, as the outbox row holds them.
    pub extra_attributes: Vec<(String, String)>,
}

impl Outgoing {
    /// The message attributes filter policies, operators and traces rely on (3 of the 10 SQS
    /// and SNS allow, and the few its type adds; SNS passes them on to SQS with raw message
    /// delivery), each a `String` attribute built by `value` (SQS and SNS have a type of their
    /// own for it). An extra attribute never replaces one of the three.
    fn attributes<A>(&self, value: impl Fn(&str) -> Result<A, BuildError>) -> Result<HashMap<String, A>, BuildError> {
        let extra = self
            .extra_attributes
            .iter()
            .map(|(name, text)| (name.as_str(), text.as_str()));
        extra
            .chain([
                ("type", self.message_type.as_str()),
                ("correlation_id", self.correlation_id.as_str()),
            ])
            .chain(self.traceparent.as_deref().map(|t| ("traceparent", t)))
            .map(|(name, text)| Ok((name.to_owned(), value(text)?)))
            .collect()
    }
}

impl From<&Envelope> for Outgoing {
    fn from(envelope: &Envelope) -> Self {
        Self {
            id: envelope.message_id.to_string(),
            message_type: envelope.type_name().to_owned(),
            correlation_id: envelope.correlation_id.to_string(),
            body: envelope.to_json(),
            traceparent: envelope.traceparent.clone(),
            extra_attributes: Vec::new(),
        }
    }
}

/// What a consumer needs to know of its queue's configuration (the template is the truth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Seconds.
    pub visibility_timeout: i32,
    /// Receives before the redrive policy moves a message to the dead-letter queue.
    pub max_receive_count: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct Bus {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    cloudformation: aws_sdk_cloudformation::Client,
    requests: Requests,
    /// What the clients were built from, for a service's clients of other AWS APIs (the
    /// customer-api's SES): same endpoint, region and credentials as the bus.
    sdk: SdkConfig,
}

/// Loads the standard AWS configuration (`AWS_ENDPOINT_URL`, `AWS_REGION`, credential chain).
pub async fn load_aws_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

impl Bus {
    pub async fn from_env() -> Self {
        Self::new(&load_aws_config().await)
    }

    pub fn new(sdk: &SdkConfig) -> Self {
        // A long poll holds its request open for up to 20 s: give each attempt room beyond that,
        // but fail fast when the endpoint does not even accept a connection.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build();
        let requests = Requests::default();
        let sqs = aws_sdk_sqs::config::Builder::from(sdk)
            .timeout_config(timeouts.clone())
            .interceptor(requests.clone())
            .build();
        let sns = aws_sdk_sns::config::Builder::from(sdk)
            .timeout_config(timeouts)
            .interceptor(requests.clone())
            .build();
        Self {
            sqs: aws_sdk_sqs::Client::from_conf(sqs),
            sns: aws_sdk_sns::Client::from_conf(sns),
            cloudformation: aws_sdk_cloudformation::Client::new(sdk),
            requests,
            sdk: sdk.clone(),
        }
    }

    /// The AWS configuration the bus was built from (endpoint, region, credentials).
    pub fn sdk_config(&self) -> &SdkConfig {
        &self.sdk
    }

    /// The SQS and SNS requests this bus (and every clone of it) has sent.
    pub fn requests(&self) -> &Requests {
        &self.requests
    }

    pub fn sqs(&self) -> &aws_sdk_sqs::Client {
        &self.sqs
    }

    pub fn sns(&self) -> &aws_sdk_sns::Client {
        &self.sns
    }

    pub fn cloudformation(&self) -> &aws_sdk_cloudformation::Client {
        &self.cloudformation
    }

    /// One long-poll receive of up to ten messages.
    #[tracing::instrument(level = "debug", skip_all, fields(messaging.system = "aws_sqs", queue = queue_name(queue_url)), err)]
    pub async fn receive(&self, queue_url: &str, wait_seconds: i32) -> Result<Vec<Received>, BusError> {
        let output = self
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(MAX_BATCH as i32)
            .wait_time_seconds(wait_seconds)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(BusError::sdk("ReceiveMessage"))?;
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|message| Received {
                receive_count: message
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|count| count.parse().ok())
                    .unwrap_or(1),
                traceparent: string_attribute(&message, "traceparent"),
                type_attribute: string_attribute(&message, "type"),
                sqs_message_id: message.message_id.unwrap_or_default(),
                receipt_handle: message.receipt_handle.unwrap_or_default(),
                body: message.body.unwrap_or_default(),
            })
            .collect())
    }

    /// Deletes messages by receipt handle, ten per call.
    pub async fn delete_batch(&self, queue_url: &str, receipts: &[&str]) -> Result<(), BusError> {
        const OPERATION: &str = "DeleteMessageBatch";
        let entry = |i: usize, receipt: &&str| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(*receipt)
                .build()
        };
        let call = |entries| {
            let request = self
                .sqs
                .delete_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries));
            async move {
                let output = request.send().await;
                output.map(|output| BatchOutcome::of(output.successful.into_iter().map(|s| s.id), output.failed))
            }
        };
        let outcome = batched(OPERATION, receipts, entry, call).await?;
        BusError::unless_failed(OPERATION, &outcome.failed)
    }

    /// Sets how long each message stays hidden before SQS hands it out again, ten per call.
    pub async fn change_visibility_batch(&self, queue_url: &str, changes: &[(&str, i32)]) -> Result<(), BusError> {
        const OPERATION: &str = "ChangeMessageVisibilityBatch";
        let entry = |i: usize, (receipt, seconds): &(&str, i32)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(*receipt)
                .visibility_timeout(*seconds)
                .build()
        };
        let call = |entries| {
            let request = self
                .sqs
                .change_message_visibility_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries));
            async move {
                let output = request.send().await;
                output.map(|output| BatchOutcome::of(output.successful.into_iter().map(|s| s.id), output.failed))
            }
        };
        let outcome = batched(OPERATION, changes, entry, call).await?;
        BusError::unless_failed(OPERATION, &outcome.failed)
    }

    /// Sends commands to a queue, ten per call, and reports each entry's fate.
    #[tracing::instrument(level = "debug", skip_all, fields(messaging.system = "aws_sqs", queue = queue_name(queue_url), count = messages.len()), err)]
    pub async fn send_batch(&self, queue_url: &str, messages: &[Outgoing]) -> Result<BatchOutcome, BusError> {
        let entry = |_, m: &Outgoing| {
            let attribute = |text: &str| {
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(text)
                    .build()
            };
            SendMessageBatchRequestEntry::builder()
                .id(&m.id)
                .message_body(&m.body)
                .set_message_attributes(Some(m.attributes(attribute)?))
                .build()
        };
        let call = |entries| {
            let request = self
                .sqs
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries));
            async move {
                let output = request.send().await;
                output.map(|output| BatchOutcome::of(output.successful.into_iter().map(|s| s.id), output.failed))
            }
        };
        batched("SendMessageBatch", messages, entry, call).await
    }

    /// Publishes events to a topic, ten per call, and reports each entry's fate.
    #[tracing::instrument(level = "debug", skip_all, fields(messaging.system = "aws_sns", topic = topic_arn, count = messages.len()), err)]
    pub async fn publish_batch(&self, topic_arn: &str, messages: &[Outgoing]) -> Result<BatchOutcome, BusError> {
        let entry = |_, m: &Outgoing| {
            let attribute = |text: &str| SnsAttribute::builder().data_type("String").string_value(text).build();
            PublishBatchRequestEntry::builder()
                .id(&m.id)
                .message(&m.body)
                .set_message_attributes(Some(m.attributes(attribute)?))
                .build()
        };
        let call = |entries| {
            let request = self
                .sns
                .publish_batch()
                .topic_arn(topic_arn)
                .set_publish_batch_request_entries(Some(entries));
            async move {
                let output = request.send().await;
                output.map(|output| {
                    let sent = output.successful.unwrap_or_default().into_iter().filter_map(|s| s.id);
                    BatchOutcome::of(sent, output.failed.unwrap_or_default())
                })
            }
        };
        batched("PublishBatch", messages, entry, call).await
    }

    /// How many messages a queue holds, waiting and in flight (SQS's approximate counts).
    pub async fn queue_depth(&self, queue_url: &str) -> Result<QueueDepth, BusError> {
        use aws_sdk_sqs::types::QueueAttributeName as Name;
        let output = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(Name::ApproximateNumberOfMessages)
            .attribute_names(Name::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(BusError::sdk("GetQueueAttributes"))?;
        let count = |name: Name| {
            output
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            waiting: count(Name::ApproximateNumberOfMessages),
            in_flight: count(Name::ApproximateNumberOfMessagesNotVisible),
        })
    }

    /// Cheap reachability check of one queue, for readiness probes.
    pub async fn ping_queue(&self, queue_url: &str) -> Result<(), BusError> {
        self.sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map(|_| ())
            .map_err(BusError::sdk("GetQueueAttributes"))
    }

    /// The queue's ARN (what a subscription, a redrive policy or a message move names it by);
    /// `None` when SQS does not say.
    pub async fn queue_arn(&self, queue_url: &str) -> Result<Option<String>, BusError> {
        use aws_sdk_sqs::types::QueueAttributeName as Name;
        let output = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(Name::QueueArn)
            .send()
            .await
            .map_err(BusError::sdk("GetQueueAttributes"))?;
        Ok(output.attributes().and_then(|a| a.get(&Name::QueueArn)).cloned())
    }

    /// The queue's visibility timeout and redrive limit.
    pub async fn queue_settings(&self, queue_url: &str) -> Result<QueueSettings, BusError> {
        use aws_sdk_sqs::types::QueueAttributeName as Name;
        let output = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(Name::VisibilityTimeout)
            .attribute_names(Name::RedrivePolicy)
            .send()
            .await
            .map_err(BusError::sdk("GetQueueAttributes"))?;
        let attributes = output.attributes();
        let max_receive_count = attributes
            .and_then(|a| a.get(&Name::RedrivePolicy))
            .and_then(|policy| serde_json::from_str::<serde_json::Value>(policy).ok())
            .and_then(|policy| match &policy["maxReceiveCount"] {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            })
            .and_then(|n| u32::try_from(n).ok());
        Ok(QueueSettings {
            visibility_timeout: attributes
                .and_then(|a| a.get(&Name::VisibilityTimeout))
                .and_then(|v| v.parse().ok())
                .unwrap_or(30),
            max_receive_count,
        })
    }
}

/// A message attribute of type String, if the message has it.
fn string_attribute(message: &aws_sdk_sqs::types::Message, name: &str) -> Option<String> {
    message
        .message_attributes()
        .and_then(|a| a.get(name))
        .and_then(|v| v.string_value())
        .map(str::to_owned)
}

/// The last path segment of a queue URL: its name.
pub fn queue_name(queue_url: &str) -> &str {
    queue_url.rsplit('/').next().unwrap_or(queue_url)
}

/// Sends `items` in calls of at most [`MAX_BATCH`] entries, one call after another: `entry` builds
/// each item's entry (given its index within its call), `call` sends one call's entries and says
/// what became of each. Entries the bus refused are gathered, not errors; a call that fails as a
/// whole (or an entry that cannot be built) stops here with the error, and the calls before it
/// stay made.
async fn batched<T, E, F, SdkErr>(
    operation: &'static str,
    items: &[T],
    entry: impl Fn(usize, &T) -> Result<E, BuildError>,
    call: impl Fn(Vec<E>) -> F,
) -> Result<BatchOutcome, BusError>
where
    F: Future<Output = Result<BatchOutcome, SdkErr>>,
    SdkErr: std::error::Error + Send + Sync + 'static,
{
    let mut outcome = BatchOutcome::default();
    for chunk in items.chunks(MAX_BATCH) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, item)| entry(i, item))
            .collect::<Result<Vec<_>, _>>()
            .map_err(BusError::sdk(operation))?;
        let answer = call(entries).await.map_err(BusError::sdk(operation))?;
        outcome.sent.extend(answer.sent);
        outcome.failed.extend(answer.failed);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An entry that builds: the item itself, with the index it got within its call.
    fn entry(i: usize, item: &u32) -> Result<(usize, u32), BuildError> {
        Ok((i, *item))
    }

    fn refused(id: String) -> EntryFailure {
        EntryFailure {
            id,
            code: "InternalError".to_owned(),
            message: "try again".to_owned(),
            sender_fault: false,
        }
    }

    #[tokio::test]
    async fn calls_carry_at_most_ten_entries_indexed_from_zero_and_gather_every_answer() {
        let items: Vec<u32> = (0..23).collect();
        let calls = Mutex::new(Vec::new());
        let call = |entries: Vec<(usize, u32)>| {
            calls.lock().unwrap().push(entries.clone());
            // The bus refuses every item divisible by 7.
            let (failed, sent): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(_, item)| item % 7 == 0);
            let outcome = BatchOutcome {
                sent: sent.iter().map(|(_, item)| item.to_string()).collect(),
                failed: failed.iter().map(|(_, item)| refused(item.to_string())).collect(),
            };
            async move { Ok::<_, std::io::Error>(outcome) }
        };
        let outcome = batched("Op", &items, entry, call).await.unwrap();
        let calls = calls.into_inner().unwrap();
        assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 3]);
        assert!(
            calls
                .iter()
                .all(|c| c.iter().enumerate().all(|(i, (index, _))| i == *index))
        );
        let failed: Vec<&str> = outcome.failed.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(failed, ["0", "7", "14", "21"]);
        assert_eq!(outcome.sent.len(), 19);
        let err = BusError::unless_failed("Op", &outcome.failed).unwrap_err().to_string();
        assert!(
            err.starts_with("Op failed: 4 entries failed: InternalError: try again; "),
            "{err}"
        );
        assert!(BusError::unless_failed("Op", &[]).is_ok());
    }

    #[tokio::test]
    async fn a_call_that_fails_whole_stops_the_rest_naming_the_operation() {
        let items: Vec<u32> = (0..30).collect();
        let calls = Mutex::new(0);
        let call = |entries: Vec<(usize, u32)>| {
            let n = {
                let mut calls = calls.lock().unwrap();
                *calls += 1;
                *calls
            };
            let answer = if n == 2 {
                Err(std::io::Error::other("connection reset"))
            } else {
                Ok(BatchOutcome::of(
                    entries.iter().map(|(_, item)| item.to_string()),
                    Vec::<EntryFailure>::new(),
                ))
            };
            async move { answer }
        };
        let err = batched("SendMessageBatch", &items, entry, call).await.unwrap_err();
        assert_eq!(*calls.lock().unwrap(), 2, "no call after the failed one");
        assert_eq!(err.to_string(), "SendMessageBatch failed: connection reset");
    }

    #[test]
    fn every_attribute_is_a_string_and_the_trace_context_only_when_there_is_one() {
        let mut message = Outgoing {
            id: "m".to_owned(),
            message_type: "Enroll".to_owned(),
            correlation_id: "c".to_owned(),
            body: "{}".to_owned(),
            traceparent: None,
            extra_attributes: Vec::new(),
        };
        let text = |value: &str| Ok::<_, BuildError>(value.to_owned());
        let attributes = message.attributes(text).unwrap();
        assert_eq!(attributes.len(), 2);
        assert_eq!(attributes["type"], "Enroll");
        assert_eq!(attributes["correlation_id"], "c");
        message.traceparent = Some("00-t-s-01".to_owned());
        assert_eq!(message.attributes(text).unwrap()["traceparent"], "00-t-s-01");
        // Its type's own come along; none replaces one of the three.
        message.extra_attributes = vec![
            ("callback".to_owned(), "yes".to_owned()),
            ("type".to_owned(), "Other".to_owned()),
        ];
        let attributes = message.attributes(text).unwrap();
        assert_eq!(attributes.len(), 4);
        assert_eq!(attributes["callback"], "yes");
        assert_eq!(attributes["type"], "Enroll");
        let built = message
            .attributes(|v| {
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
            })
            .unwrap();
        assert!(built.values().all(|a| a.data_type() == "String"));
    }
}
