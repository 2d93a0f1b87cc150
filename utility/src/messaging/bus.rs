//! The SNS/SQS client: one SDK client of each kind per process (cloned, never rebuilt), long-poll
//! receives of up to ten messages, and batch APIs for every send, publish, delete and visibility
//! change. Partial batch failures are reported entry by entry, never hidden.

use super::envelope::Envelope;
use aws_config::{BehaviorVersion, SdkConfig, timeout::TimeoutConfig};
use aws_sdk_sns::types::{MessageAttributeValue as SnsAttribute, PublishBatchRequestEntry};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue,
    MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use std::time::Duration;

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
            detail: aws_smithy_types_display(&err),
            source: Some(Box::new(err)),
        }
    }

    /// Wraps any SDK error, keeping its chain.
    pub fn from_sdk<E: std::error::Error + Send + Sync + 'static>(operation: &'static str, err: E) -> Self {
        Self::sdk(operation)(err)
    }

    /// `Ok` when no entry of a batch call failed, else an error listing each failure.
    fn unless_failed(operation: &'static str, failed: Vec<String>) -> Result<(), Self> {
        if failed.is_empty() {
            return Ok(());
        }
        Err(Self {
            operation,
            detail: format!("{} entries failed: {}", failed.len(), failed.join("; ")),
            source: None,
        })
    }
}

fn describe_failure(failure: &aws_sdk_sqs::types::BatchResultErrorEntry) -> String {
    format!("{}: {}", failure.code, failure.message.as_deref().unwrap_or(""))
}

/// The SDK's own `Display` for service errors is terse; this includes the error code and message.
fn aws_smithy_types_display(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
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
}

impl Outgoing {
    /// The message attributes filter policies, operators and traces rely on (3 of the 10 SQS
    /// and SNS allow; SNS passes them on to SQS with raw message delivery).
    fn attributes(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("type", self.message_type.as_str()),
            ("correlation_id", self.correlation_id.as_str()),
        ]
        .into_iter()
        .chain(self.traceparent.as_deref().map(|t| ("traceparent", t)))
    }
}

fn sqs_entry(m: &Outgoing) -> Result<SendMessageBatchRequestEntry, BusError> {
    let error = BusError::sdk("SendMessageBatch");
    let mut entry = SendMessageBatchRequestEntry::builder().id(&m.id).message_body(&m.body);
    for (name, value) in m.attributes() {
        let attribute = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(BusError::sdk("SendMessageBatch"))?;
        entry = entry.message_attributes(name, attribute);
    }
    entry.build().map_err(error)
}

fn sns_entry(m: &Outgoing) -> Result<PublishBatchRequestEntry, BusError> {
    let error = BusError::sdk("PublishBatch");
    let mut entry = PublishBatchRequestEntry::builder().id(&m.id).message(&m.body);
    for (name, value) in m.attributes() {
        let attribute = SnsAttribute::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(BusError::sdk("PublishBatch"))?;
        entry = entry.message_attributes(name, attribute);
    }
    entry.build().map_err(error)
}

impl From<&Envelope> for Outgoing {
    fn from(envelope: &Envelope) -> Self {
        Self {
            id: envelope.message_id.to_string(),
            message_type: envelope.type_name().to_owned(),
            correlation_id: envelope.correlation_id.to_string(),
            body: envelope.to_json(),
            traceparent: envelope.traceparent.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Bus {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    cloudformation: aws_sdk_cloudformation::Client,
    requests: Requests,
}

/// Every SQS and SNS request the bus sends, by operation: each HTTP attempt, retries included,
/// since that is what AWS bills. Counted by an SDK interceptor just before each attempt goes out.
#[derive(Clone, Debug, Default)]
pub struct Requests {
    by_operation: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
    metric: prometheus_client::metrics::family::Family<
        crate::observe::metrics::OperationLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl Requests {
    /// Requests so far, by `Service.Operation` (e.g. `SQS.ReceiveMessage`).
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        self.by_operation.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// All requests so far.
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }

    /// The Prometheus family (`saga_bus_requests_total{operation}`) a service registers.
    pub fn metric(
        &self,
    ) -> prometheus_client::metrics::family::Family<
        crate::observe::metrics::OperationLabels,
        prometheus_client::metrics::counter::Counter,
    > {
        self.metric.clone()
    }

    fn count(&self, operation: String) {
        self.metric
            .get_or_create(&crate::observe::metrics::OperationLabels {
                operation: operation.clone(),
            })
            .inc();
        if let Ok(mut map) = self.by_operation.lock() {
            *map.entry(operation).or_default() += 1;
        }
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for Requests {
    fn name(&self) -> &'static str {
        "BusRequests"
    }

    fn read_before_transmit(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_sdk_sqs::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map_or_else(|| "unknown".to_owned(), |m| format!("{}.{}", m.service(), m.name()));
        self.count(operation);
        Ok(())
    }
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
        }
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
                traceparent: message
                    .message_attributes()
                    .and_then(|a| a.get("traceparent"))
                    .and_then(|v| v.string_value())
                    .map(str::to_owned),
                sqs_message_id: message.message_id.unwrap_or_default(),
                receipt_handle: message.receipt_handle.unwrap_or_default(),
                body: message.body.unwrap_or_default(),
            })
            .collect())
    }

    /// Deletes messages by receipt handle, ten per call.
    pub async fn delete_batch(&self, queue_url: &str, receipts: &[&str]) -> Result<(), BusError> {
        let mut failed = Vec::new();
        for chunk in receipts.chunks(MAX_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*receipt)
                        .build()
                        .map_err(BusError::sdk("DeleteMessageBatch"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = self
                .sqs
                .delete_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(BusError::sdk("DeleteMessageBatch"))?;
            failed.extend(output.failed.iter().map(describe_failure));
        }
        BusError::unless_failed("DeleteMessageBatch", failed)
    }

    /// Sets how long each message stays hidden before SQS hands it out again.
    pub async fn change_visibility_batch(&self, queue_url: &str, changes: &[(&str, i32)]) -> Result<(), BusError> {
        let mut failed = Vec::new();
        for chunk in changes.chunks(MAX_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (receipt, seconds))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*receipt)
                        .visibility_timeout(*seconds)
                        .build()
                        .map_err(BusError::sdk("ChangeMessageVisibilityBatch"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = self
                .sqs
                .change_message_visibility_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(BusError::sdk("ChangeMessageVisibilityBatch"))?;
            failed.extend(output.failed.iter().map(describe_failure));
        }
        BusError::unless_failed("ChangeMessageVisibilityBatch", failed)
    }

    /// Sends commands to a queue, ten per call, and reports each entry's fate.
    #[tracing::instrument(level = "debug", skip_all, fields(messaging.system = "aws_sqs", queue = queue_name(queue_url), count = messages.len()), err)]
    pub async fn send_batch(&self, queue_url: &str, messages: &[Outgoing]) -> Result<BatchOutcome, BusError> {
        let mut outcome = BatchOutcome::default();
        for chunk in messages.chunks(MAX_BATCH) {
            let entries = chunk.iter().map(sqs_entry).collect::<Result<Vec<_>, _>>()?;
            let output = self
                .sqs
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(BusError::sdk("SendMessageBatch"))?;
            outcome.failed.extend(output.failed.into_iter().map(|f| EntryFailure {
                id: f.id,
                code: f.code,
                message: f.message.unwrap_or_default(),
                sender_fault: f.sender_fault,
            }));
            outcome.sent.extend(output.successful.into_iter().map(|s| s.id));
        }
        Ok(outcome)
    }

    /// Publishes events to a topic, ten per call, and reports each entry's fate.
    #[tracing::instrument(level = "debug", skip_all, fields(messaging.system = "aws_sns", topic = topic_arn, count = messages.len()), err)]
    pub async fn publish_batch(&self, topic_arn: &str, messages: &[Outgoing]) -> Result<BatchOutcome, BusError> {
        let mut outcome = BatchOutcome::default();
        for chunk in messages.chunks(MAX_BATCH) {
            let entries = chunk.iter().map(sns_entry).collect::<Result<Vec<_>, _>>()?;
            let output = self
                .sns
                .publish_batch()
                .topic_arn(topic_arn)
                .set_publish_batch_request_entries(Some(entries))
                .send()
                .await
                .map_err(BusError::sdk("PublishBatch"))?;
            outcome.failed.extend(output.failed().iter().map(|f| EntryFailure {
                id: f.id.clone(),
                code: f.code.clone(),
                message: f.message.clone().unwrap_or_default(),
                sender_fault: f.sender_fault,
            }));
            outcome
                .sent
                .extend(output.successful().iter().filter_map(|s| s.id.clone()));
        }
        Ok(outcome)
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
}

/// What a consumer needs to know of its queue's configuration (the template is the truth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Seconds.
    pub visibility_timeout: i32,
    /// Receives before the redrive policy moves a message to the dead-letter queue.
    pub max_receive_count: Option<u32>,
}

impl Bus {
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

/// The last path segment of a queue URL: its name.
pub fn queue_name(queue_url: &str) -> &str {
    queue_url.rsplit('/').next().unwrap_or(queue_url)
}
