//! How a service finds its queues and topics: explicit configuration first, otherwise the
//! outputs of the messaging CloudFormation stack (`infra/messaging.yaml`). At start-up every
//! address a service needs is checked against the bus; a missing one stops the service with a
//! message that names it and the command that provisions it. Services never create resources.

use super::bus::{Bus, BusError};
use super::endpoint::Endpoint;
use aws_sdk_cloudformation::error::{DisplayErrorContext, ProvideErrorMetadata};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The command README and errors point at to provision the topology.
pub const PROVISION_HINT: &str = "provision it with `make topology` (or `sagactl deploy` with the same AWS settings)";

/// Where to find the topology. Each address may be given directly (`CUSTOMER_COMMANDS_QUEUE_URL`
/// and so on); whatever is not given comes from the outputs of `TOPOLOGY_STACK`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TopologyConfig {
    /// CloudFormation stack whose outputs name the queues and topics not given below.
    pub topology_stack: String,
    /// URL of the customer-commands queue, instead of the stack's output.
    pub customer_commands_queue_url: Option<String>,
    /// URL of the transaction-commands queue, instead of the stack's output.
    pub transaction_commands_queue_url: Option<String>,
    /// URL of the gateway-events queue, instead of the stack's output.
    pub gateway_events_queue_url: Option<String>,
    /// ARN of the customer-events topic, instead of the stack's output.
    pub customer_events_topic_arn: Option<String>,
    /// ARN of the transaction-events topic, instead of the stack's output.
    pub transaction_events_topic_arn: Option<String>,
    /// URL of the customer-queries queue, instead of the stack's output.
    pub customer_queries_queue_url: Option<String>,
    /// URL of the transaction-queries queue, instead of the stack's output.
    pub transaction_queries_queue_url: Option<String>,
    /// URL of the gateway-replies queue, instead of the stack's output.
    pub gateway_replies_queue_url: Option<String>,
    /// ARN of the status-events topic, instead of the stack's output.
    pub status_events_topic_arn: Option<String>,
    /// URL of the webhook-deliveries queue, instead of the stack's output.
    pub webhook_deliveries_queue_url: Option<String>,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            topology_stack: "saga-messaging".to_owned(),
            customer_commands_queue_url: None,
            transaction_commands_queue_url: None,
            gateway_events_queue_url: None,
            customer_events_topic_arn: None,
            transaction_events_topic_arn: None,
            customer_queries_queue_url: None,
            transaction_queries_queue_url: None,
            gateway_replies_queue_url: None,
            status_events_topic_arn: None,
            webhook_deliveries_queue_url: None,
        }
    }
}

impl TopologyConfig {
    fn explicit(&self, endpoint: Endpoint) -> Option<&str> {
        match endpoint {
            Endpoint::CustomerCommands => self.customer_commands_queue_url.as_deref(),
            Endpoint::TransactionCommands => self.transaction_commands_queue_url.as_deref(),
            Endpoint::GatewayEvents => self.gateway_events_queue_url.as_deref(),
            Endpoint::CustomerEvents => self.customer_events_topic_arn.as_deref(),
            Endpoint::TransactionEvents => self.transaction_events_topic_arn.as_deref(),
            Endpoint::CustomerQueries => self.customer_queries_queue_url.as_deref(),
            Endpoint::TransactionQueries => self.transaction_queries_queue_url.as_deref(),
            Endpoint::GatewayReplies => self.gateway_replies_queue_url.as_deref(),
            Endpoint::StatusEvents => self.status_events_topic_arn.as_deref(),
            Endpoint::WebhookDeliveries => self.webhook_deliveries_queue_url.as_deref(),
        }
        .filter(|s| !s.is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("messaging stack `{stack}` was not found; {PROVISION_HINT}")]
    StackNotFound { stack: String },
    #[error("cannot read messaging stack `{stack}`: {source}")]
    Unreadable {
        stack: String,
        #[source]
        source: DescribeError,
    },
    #[error("messaging stack `{stack}` is {status}, not complete; {PROVISION_HINT}")]
    StackNotReady { stack: String, status: String },
    #[error("messaging stack `{stack}` has no output `{key}` for {endpoint}; redeploy it: {PROVISION_HINT}")]
    MissingOutput {
        stack: String,
        key: &'static str,
        endpoint: &'static str,
    },
    #[error("{kind} `{endpoint}` at {address} is missing or unreachable ({source}); {PROVISION_HINT}")]
    Missing {
        kind: &'static str,
        endpoint: &'static str,
        address: String,
        #[source]
        source: BusError,
    },
    #[error("{0} was not resolved at start-up")]
    NotResolved(&'static str),
}

/// Resolved addresses: queue URLs and topic ARNs.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    addresses: HashMap<Endpoint, String>,
}

impl Topology {
    /// Resolves and verifies the endpoints a service needs.
    #[tracing::instrument(skip_all, fields(stack = %config.topology_stack), err)]
    pub async fn resolve(bus: &Bus, config: &TopologyConfig, needs: &[Endpoint]) -> Result<Self, TopologyError> {
        let mut outputs: Option<HashMap<String, String>> = None;
        let mut addresses = HashMap::new();
        for &endpoint in needs {
            let address = match config.explicit(endpoint) {
                Some(address) => address.to_owned(),
                None => {
                    if outputs.is_none() {
                        outputs = Some(usable_outputs(bus, &config.topology_stack).await?);
                    }
                    let key = endpoint.outputs().address;
                    outputs
                        .as_ref()
                        .and_then(|o| o.get(key))
                        .cloned()
                        .ok_or(TopologyError::MissingOutput {
                            stack: config.topology_stack.clone(),
                            key,
                            endpoint: endpoint.name(),
                        })?
                }
            };
            verify(bus, endpoint, &address).await?;
            addresses.insert(endpoint, address);
        }
        Ok(Self { addresses })
    }

    /// Builds a topology from known addresses, unverified (tests and tools).
    pub fn from_addresses(addresses: impl IntoIterator<Item = (Endpoint, String)>) -> Self {
        Self {
            addresses: addresses.into_iter().collect(),
        }
    }

    /// Every endpoint resolved, in table order.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut endpoints: Vec<Endpoint> = self.addresses.keys().copied().collect();
        endpoints.sort();
        endpoints
    }

    pub fn address(&self, endpoint: Endpoint) -> Result<&str, TopologyError> {
        self.addresses
            .get(&endpoint)
            .map(String::as_str)
            .ok_or(TopologyError::NotResolved(endpoint.name()))
    }
}

/// A CloudFormation stack as far as anyone here needs to know it.
#[derive(Debug, Clone)]
pub struct StackDescription {
    /// `CREATE_COMPLETE`, `UPDATE_IN_PROGRESS`, ...
    pub status: String,
    /// Outputs by key.
    pub outputs: HashMap<String, String>,
}

impl StackDescription {
    /// An update in progress still has every resource and output; only stacks that failed to
    /// come into being, or are going away, are unusable.
    pub fn is_usable(&self) -> bool {
        let status = self.status.as_str();
        !(status.ends_with("_FAILED")
            || status.starts_with("ROLLBACK_")
            || status.starts_with("DELETE_")
            || matches!(status, "CREATE_IN_PROGRESS" | "REVIEW_IN_PROGRESS"))
    }
}

/// `DescribeStacks` failed for another reason than the stack not existing.
#[derive(Debug, thiserror::Error)]
#[error("DescribeStacks failed: {detail}")]
pub struct DescribeError {
    pub code: Option<String>,
    pub detail: String,
}

/// The one reader of stack outputs (services, `sagactl`, the deployment code): the stack's
/// status and outputs, or `None` when no such stack exists (or it is deleted).
pub async fn describe_stack(
    cloudformation: &aws_sdk_cloudformation::Client,
    stack: &str,
) -> Result<Option<StackDescription>, DescribeError> {
    let described = match cloudformation.describe_stacks().stack_name(stack).send().await {
        Ok(described) => described,
        Err(err) if err.message().is_some_and(|m| m.contains("does not exist")) => return Ok(None),
        Err(err) => {
            return Err(DescribeError {
                code: err.code().map(str::to_owned),
                detail: DisplayErrorContext(&err).to_string(),
            });
        }
    };
    let Some(found) = described.stacks().first() else {
        return Ok(None);
    };
    let status = found.stack_status().map(|s| s.as_str().to_owned()).unwrap_or_default();
    if status == "DELETE_COMPLETE" {
        return Ok(None);
    }
    Ok(Some(StackDescription {
        status,
        outputs: found
            .outputs()
            .iter()
            .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
            .collect(),
    }))
}

/// The outputs of the messaging stack, which must exist and be usable.
async fn usable_outputs(bus: &Bus, stack: &str) -> Result<HashMap<String, String>, TopologyError> {
    let described = describe_stack(bus.cloudformation(), stack)
        .await
        .map_err(|source| TopologyError::Unreadable {
            stack: stack.to_owned(),
            source,
        })?
        .ok_or_else(|| TopologyError::StackNotFound {
            stack: stack.to_owned(),
        })?;
    if !described.is_usable() {
        return Err(TopologyError::StackNotReady {
            stack: stack.to_owned(),
            status: described.status,
        });
    }
    Ok(described.outputs)
}

async fn verify(bus: &Bus, endpoint: Endpoint, address: &str) -> Result<(), TopologyError> {
    let missing = |kind, source| TopologyError::Missing {
        kind,
        endpoint: endpoint.name(),
        address: address.to_owned(),
        source,
    };
    if endpoint.is_topic() {
        bus.sns()
            .get_topic_attributes()
            .topic_arn(address)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| missing("topic", BusError::from_sdk("GetTopicAttributes", err)))
    } else {
        bus.ping_queue(address).await.map_err(|err| missing("queue", err))
    }
}
