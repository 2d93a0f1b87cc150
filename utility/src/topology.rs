//! How a service finds its queues and topics: explicit configuration first, otherwise the
//! outputs of the messaging CloudFormation stack (`infra/messaging.yaml`). At start-up every
//! address a service needs is checked against the bus; a missing one stops the service with a
//! message that names it and the command that provisions it. Services never create resources.

use crate::bus::{Bus, BusError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The command README and errors point at to provision the topology.
pub const PROVISION_HINT: &str = "provision it with `make topology` (or `cargo run -p infra --bin sagactl -- deploy`)";

/// Every queue and topic of the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    CustomerCommands,
    TransactionCommands,
    GatewayEvents,
    CustomerEvents,
    TransactionEvents,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Self::CustomerCommands,
        Self::TransactionCommands,
        Self::GatewayEvents,
        Self::CustomerEvents,
        Self::TransactionEvents,
    ];

    /// Stable logical name, stored in outbox rows so that a topology change never strands them.
    pub fn name(self) -> &'static str {
        match self {
            Self::CustomerCommands => "customer-commands",
            Self::TransactionCommands => "transaction-commands",
            Self::GatewayEvents => "gateway-events",
            Self::CustomerEvents => "customer-events",
            Self::TransactionEvents => "transaction-events",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    pub fn is_topic(self) -> bool {
        matches!(self, Self::CustomerEvents | Self::TransactionEvents)
    }

    /// The output of the messaging stack that holds this endpoint's URL or ARN.
    pub fn output_key(self) -> &'static str {
        match self {
            Self::CustomerCommands => "CustomerCommandsQueueUrl",
            Self::TransactionCommands => "TransactionCommandsQueueUrl",
            Self::GatewayEvents => "GatewayEventsQueueUrl",
            Self::CustomerEvents => "CustomerEventsTopicArn",
            Self::TransactionEvents => "TransactionEventsTopicArn",
        }
    }

    /// The output holding the URL of this queue's dead-letter queue (queues only).
    pub fn dlq_output_key(self) -> Option<&'static str> {
        match self {
            Self::CustomerCommands => Some("CustomerCommandsDlqUrl"),
            Self::TransactionCommands => Some("TransactionCommandsDlqUrl"),
            Self::GatewayEvents => Some("GatewayEventsDlqUrl"),
            Self::CustomerEvents | Self::TransactionEvents => None,
        }
    }
}

/// Where to find the topology. Each address may be given directly (`CUSTOMER_COMMANDS_QUEUE_URL`
/// and so on); whatever is not given comes from the outputs of `TOPOLOGY_STACK`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopologyConfig {
    pub topology_stack: String,
    pub customer_commands_queue_url: Option<String>,
    pub transaction_commands_queue_url: Option<String>,
    pub gateway_events_queue_url: Option<String>,
    pub customer_events_topic_arn: Option<String>,
    pub transaction_events_topic_arn: Option<String>,
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
        }
        .filter(|s| !s.is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("messaging stack `{stack}` was not found ({detail}); {PROVISION_HINT}")]
    StackNotFound { stack: String, detail: String },
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
                        outputs = Some(stack_outputs(bus, &config.topology_stack).await?);
                    }
                    let key = endpoint.output_key();
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

    pub fn address(&self, endpoint: Endpoint) -> Result<&str, TopologyError> {
        self.addresses
            .get(&endpoint)
            .map(String::as_str)
            .ok_or(TopologyError::NotResolved(endpoint.name()))
    }
}

/// All outputs of a CloudFormation stack, by output key.
pub async fn stack_outputs(bus: &Bus, stack: &str) -> Result<HashMap<String, String>, TopologyError> {
    let described = bus
        .cloudformation()
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .map_err(|err| TopologyError::StackNotFound {
            stack: stack.to_owned(),
            detail: aws_sdk_cloudformation::error::DisplayErrorContext(&err).to_string(),
        })?;
    let Some(found) = described.stacks().first() else {
        return Err(TopologyError::StackNotFound {
            stack: stack.to_owned(),
            detail: "no such stack".to_owned(),
        });
    };
    let status = found.stack_status().map(|s| s.as_str().to_owned()).unwrap_or_default();
    // An update in progress still has every resource and output; only stacks that failed to come
    // into being, or are going away, are unusable.
    let unusable = status.ends_with("_FAILED")
        || status.starts_with("ROLLBACK_")
        || status.starts_with("DELETE_")
        || matches!(status.as_str(), "CREATE_IN_PROGRESS" | "REVIEW_IN_PROGRESS");
    if unusable {
        return Err(TopologyError::StackNotReady {
            stack: stack.to_owned(),
            status,
        });
    }
    Ok(found
        .outputs()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
        .collect())
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
