//! Every queue and topic of the saga, and the one table that maps each to the outputs of the
//! messaging stack (`infra/messaging.yaml`). The services' topology lookup, `sagactl`, the
//! dead-letter tooling and the EC2 deployment all read output names from here; a test parses the
//! template and checks that it has exactly these outputs.

use serde::{Deserialize, Serialize};

/// A queue or topic, by its stable logical name (`customer-commands`, ...), which outbox rows
/// store so that a topology change never strands them.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    strum::VariantArray,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Endpoint {
    CustomerCommands,
    TransactionCommands,
    GatewayEvents,
    CustomerEvents,
    TransactionEvents,
    CustomerQueries,
    TransactionQueries,
    GatewayReplies,
    StatusEvents,
    WebhookDeliveries,
}

/// What the messaging stack outputs for one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackOutputs {
    /// The queue URL or topic ARN that services send to and receive from.
    pub address: &'static str,
    /// The ARN (IAM policies, redrive tasks); a topic's address is already its ARN.
    pub arn: &'static str,
    /// The dead-letter queue that catches what this endpoint could not deliver: a queue's own
    /// DLQ (after `maxReceiveCount` receives), or for a topic the DLQ of its subscription.
    pub dead_letter: DeadLetterOutputs,
}

/// A dead-letter queue's name (without the stack's prefix) and the outputs naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterOutputs {
    pub name: &'static str,
    /// Output holding its URL (DLQ tooling).
    pub url: &'static str,
    /// Output holding its queue name (the dimension of its CloudWatch alarm).
    pub queue_name: &'static str,
}

impl Endpoint {
    /// The stable logical name.
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn is_topic(self) -> bool {
        matches!(
            self,
            Self::CustomerEvents | Self::TransactionEvents | Self::StatusEvents
        )
    }

    /// The table: this endpoint's outputs in the messaging stack.
    pub const fn outputs(self) -> StackOutputs {
        const fn dlq(name: &'static str, url: &'static str, queue_name: &'static str) -> DeadLetterOutputs {
            DeadLetterOutputs { name, url, queue_name }
        }
        match self {
            Self::CustomerCommands => StackOutputs {
                address: "CustomerCommandsQueueUrl",
                arn: "CustomerCommandsQueueArn",
                dead_letter: dlq(
                    "customer-commands-dlq",
                    "CustomerCommandsDlqUrl",
                    "CustomerCommandsDlqName",
                ),
            },
            Self::TransactionCommands => StackOutputs {
                address: "TransactionCommandsQueueUrl",
                arn: "TransactionCommandsQueueArn",
                dead_letter: dlq(
                    "transaction-commands-dlq",
                    "TransactionCommandsDlqUrl",
                    "TransactionCommandsDlqName",
                ),
            },
            Self::GatewayEvents => StackOutputs {
                address: "GatewayEventsQueueUrl",
                arn: "GatewayEventsQueueArn",
                dead_letter: dlq("gateway-events-dlq", "GatewayEventsDlqUrl", "GatewayEventsDlqName"),
            },
            Self::CustomerEvents => StackOutputs {
                address: "CustomerEventsTopicArn",
                arn: "CustomerEventsTopicArn",
                dead_letter: dlq(
                    "customer-events-subscription-dlq",
                    "CustomerEventsSubscriptionDlqUrl",
                    "CustomerEventsSubscriptionDlqName",
                ),
            },
            Self::TransactionEvents => StackOutputs {
                address: "TransactionEventsTopicArn",
                arn: "TransactionEventsTopicArn",
                dead_letter: dlq(
                    "transaction-events-subscription-dlq",
                    "TransactionEventsSubscriptionDlqUrl",
                    "TransactionEventsSubscriptionDlqName",
                ),
            },
            Self::CustomerQueries => StackOutputs {
                address: "CustomerQueriesQueueUrl",
                arn: "CustomerQueriesQueueArn",
                dead_letter: dlq(
                    "customer-queries-dlq",
                    "CustomerQueriesDlqUrl",
                    "CustomerQueriesDlqName",
                ),
            },
            Self::TransactionQueries => StackOutputs {
                address: "TransactionQueriesQueueUrl",
                arn: "TransactionQueriesQueueArn",
                dead_letter: dlq(
                    "transaction-queries-dlq",
                    "TransactionQueriesDlqUrl",
                    "TransactionQueriesDlqName",
                ),
            },
            Self::GatewayReplies => StackOutputs {
                address: "GatewayRepliesQueueUrl",
                arn: "GatewayRepliesQueueArn",
                dead_letter: dlq("gateway-replies-dlq", "GatewayRepliesDlqUrl", "GatewayRepliesDlqName"),
            },
            Self::StatusEvents => StackOutputs {
                address: "StatusEventsTopicArn",
                arn: "StatusEventsTopicArn",
                dead_letter: dlq(
                    "status-events-subscription-dlq",
                    "StatusEventsSubscriptionDlqUrl",
                    "StatusEventsSubscriptionDlqName",
                ),
            },
            Self::WebhookDeliveries => StackOutputs {
                address: "WebhookDeliveriesQueueUrl",
                arn: "WebhookDeliveriesQueueArn",
                dead_letter: dlq(
                    "webhook-deliveries-dlq",
                    "WebhookDeliveriesDlqUrl",
                    "WebhookDeliveriesDlqName",
                ),
            },
        }
    }

    /// Where the messages of this endpoint's dead-letter queue belong back: the queue itself, or
    /// for a topic the queue its subscription delivers to (the gateway's for the services'
    /// topics, the webhook deliveries' for the gateway's).
    pub fn redrive_target(self) -> Endpoint {
        match self {
            Self::StatusEvents => Self::WebhookDeliveries,
            topic if topic.is_topic() => Self::GatewayEvents,
            queue => queue,
        }
    }
}

/// The services that take part in the saga, by the name each runs under. Each consumes one
/// queue of saga traffic and one of request/reply traffic ([`Participant::lookups`]); a service
/// that publishes events has a topic of its own.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    strum::VariantArray,
)]
#[strum(serialize_all = "kebab-case")]
pub enum Participant {
    Gateway,
    CustomerApi,
    TransactionApi,
}

impl Participant {
    /// The name the service runs under (its binary, its logs' `service.name`).
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// The queue it consumes.
    pub const fn queue(self) -> Endpoint {
        match self {
            Self::Gateway => Endpoint::GatewayEvents,
            Self::CustomerApi => Endpoint::CustomerCommands,
            Self::TransactionApi => Endpoint::TransactionCommands,
        }
    }

    /// Its queue of request/reply traffic: the queries a service answers, or the replies the
    /// gateway waits for. Apart from [`Self::queue`], so that a lookup never waits behind a
    /// backlog of saga messages.
    pub const fn lookups(self) -> Endpoint {
        match self {
            Self::Gateway => Endpoint::GatewayReplies,
            Self::CustomerApi => Endpoint::CustomerQueries,
            Self::TransactionApi => Endpoint::TransactionQueries,
        }
    }

    /// The topic it publishes its events to; `None` for a service that publishes none.
    pub const fn topic(self) -> Option<Endpoint> {
        match self {
            Self::Gateway => Some(Endpoint::StatusEvents),
            Self::CustomerApi => Some(Endpoint::CustomerEvents),
            Self::TransactionApi => Some(Endpoint::TransactionEvents),
        }
    }
}

impl Participant {
    /// The queues it consumes besides its saga and lookups queues: subscriptions to integration
    /// events (the gateway's webhook deliveries).
    pub const fn subscriptions(self) -> &'static [Endpoint] {
        match self {
            Self::Gateway => &[Endpoint::WebhookDeliveries],
            Self::CustomerApi | Self::TransactionApi => &[],
        }
    }
}

/// Every output key the messaging stack has, each once, in table order.
pub fn stack_output_keys() -> Vec<&'static str> {
    let mut keys = Vec::new();
    for endpoint in <Endpoint as strum::VariantArray>::VARIANTS {
        let outputs = endpoint.outputs();
        let dead_letter = outputs.dead_letter;
        for key in [outputs.address, outputs.arn, dead_letter.url, dead_letter.queue_name] {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    #[test]
    fn names_round_trip_and_outputs_are_distinct() {
        for endpoint in Endpoint::VARIANTS {
            assert_eq!(endpoint.name().parse::<Endpoint>().unwrap(), *endpoint);
            assert_eq!(
                serde_json::to_value(endpoint).unwrap(),
                serde_json::Value::from(endpoint.name())
            );
        }
        assert_eq!(Endpoint::CustomerCommands.name(), "customer-commands");
        assert!("nowhere".parse::<Endpoint>().is_err());
        // 7 queues x (URL, ARN) + 3 topic ARNs + 10 DLQs x (URL, name).
        assert_eq!(stack_output_keys().len(), 37);
    }
}
