//! Deploys the messaging topology (`messaging.yaml`, embedded at build time) as a CloudFormation
//! stack, waits for it to settle, and removes it. The same code serves `make topology`, the test
//! suites (one isolated stack per test, by name prefix) and AWS. [`app`] and [`release`] add the
//! EC2 deployment (`sagactl deploy-app`) on top of the same stack functions.

pub mod app;
pub mod release;

pub mod dlq;
mod events;
pub mod mail;
pub mod sdk_error;
pub mod target;
pub mod teardown;

use aws_sdk_cloudformation::Client;
use aws_sdk_cloudformation::error::ProvideErrorMetadata;
use aws_sdk_cloudformation::types::{Capability, Parameter, StackStatus};
use events::EventLog;
use sdk_error::describe as sdk_text;
use std::collections::HashMap;
use std::time::Duration;
use utility::messaging::topology::{StackDescription, describe_stack};

/// The messaging template: topics, queues, dead-letter queues, policies, subscriptions.
pub const MESSAGING_TEMPLATE: &str = include_str!("../messaging.yaml");

/// How long a stack may take to settle before we give up by default: creating one RDS instance
/// alone can pass ten minutes, a Multi-AZ one or a rolling update of three groups much more.
pub const DEFAULT_SETTLE_LIMIT: Duration = Duration::from_secs(60 * 60);
/// Status polls start fast (emulators settle in a second) and slow down while nothing happens.
const POLL_MIN: Duration = Duration::from_millis(500);
const POLL_MAX: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error("CloudFormation {operation} on `{stack}` failed: {detail}")]
    Api {
        operation: &'static str,
        stack: String,
        detail: String,
    },
    #[error("stack `{stack}` ended in {status}: {reasons}")]
    Failed {
        stack: String,
        status: String,
        reasons: String,
    },
    #[error("stack `{stack}` did not settle within {seconds} s (last status {status}); it goes on without us")]
    Timeout {
        stack: String,
        seconds: u64,
        status: String,
    },
}

/// Parameters of the messaging template.
#[derive(Debug, Clone)]
pub struct MessagingParams {
    /// Prefix of every topic and queue name.
    pub name_prefix: String,
    /// Receives before a message moves to its dead-letter queue.
    pub max_receive_count: u32,
    pub visibility_timeout_seconds: u32,
    /// The IAM ARN (wildcards allowed) of whoever redrives dead letters with `sagactl dlq
    /// redrive`: besides the producing services, the only principal the queue policies let send.
    /// Empty: nobody else.
    pub redrive_principal_arn: String,
}

impl MessagingParams {
    pub fn new(name_prefix: impl Into<String>) -> Self {
        Self {
            name_prefix: name_prefix.into(),
            max_receive_count: 5,
            visibility_timeout_seconds: 30,
            redrive_principal_arn: String::new(),
        }
    }

    /// The stack name conventionally used for a prefix (`<prefix>-messaging`).
    pub fn stack_name(&self) -> String {
        format!("{}-messaging", self.name_prefix)
    }

    fn parameters(&self) -> Vec<(String, String)> {
        vec![
            ("NamePrefix".to_owned(), self.name_prefix.clone()),
            ("MaxReceiveCount".to_owned(), self.max_receive_count.to_string()),
            (
                "VisibilityTimeoutSeconds".to_owned(),
                self.visibility_timeout_seconds.to_string(),
            ),
            ("RedrivePrincipalArn".to_owned(), self.redrive_principal_arn.clone()),
        ]
    }
}

/// Creates or updates the messaging stack (see [`deploy_stack`]).
pub async fn deploy_messaging(
    client: &Client,
    stack: &str,
    params: &MessagingParams,
) -> Result<HashMap<String, String>, InfraError> {
    deploy_messaging_within(client, stack, params, DEFAULT_SETTLE_LIMIT).await
}

/// [`deploy_messaging`], waiting at most `limit` for the stack to settle.
pub async fn deploy_messaging_within(
    client: &Client,
    stack: &str,
    params: &MessagingParams,
    limit: Duration,
) -> Result<HashMap<String, String>, InfraError> {
    deploy_stack_within(client, stack, MESSAGING_TEMPLATE, &params.parameters(), limit).await
}

/// Creates the stack from `template`, or updates it when it exists; waits until it is complete
/// (at most [`DEFAULT_SETTLE_LIMIT`]), logging each stack event as it comes, and returns its
/// outputs. Running it twice with the same template and parameters is a no-op. IAM resources are
/// acknowledged (`CAPABILITY_IAM`): the application template has roles.
pub async fn deploy_stack(
    client: &Client,
    stack: &str,
    template: &str,
    parameters: &[(String, String)],
) -> Result<HashMap<String, String>, InfraError> {
    deploy_stack_within(client, stack, template, parameters, DEFAULT_SETTLE_LIMIT).await
}

/// [`deploy_stack`], waiting at most `limit` for the stack to settle.
#[tracing::instrument(skip_all, fields(stack = stack))]
pub async fn deploy_stack_within(
    client: &Client,
    stack: &str,
    template: &str,
    parameters: &[(String, String)],
    limit: Duration,
) -> Result<HashMap<String, String>, InfraError> {
    let cfn_parameters: Vec<Parameter> = parameters
        .iter()
        .map(|(k, v)| Parameter::builder().parameter_key(k).parameter_value(v).build())
        .collect();
    let api = |operation: &'static str| {
        let stack = stack.to_owned();
        move |detail: String| InfraError::Api {
            operation,
            stack,
            detail,
        }
    };
    // Another deploy may be running: let it finish before deciding what to do.
    let mut events = EventLog::start(client, stack).await;
    let mut current = current_status(client, stack).await?;
    if current.as_ref().is_some_and(|s| s.as_str().ends_with("_IN_PROGRESS")) {
        tracing::info!("waiting for the operation in progress to finish");
        current = settle(client, stack, limit, &mut events).await?;
    }
    let mut nothing_to_do = false;
    match current {
        None => {
            client
                .create_stack()
                .stack_name(stack)
                .template_body(template)
                .set_parameters(Some(cfn_parameters.clone()))
                .capabilities(Capability::CapabilityIam)
                .send()
                .await
                .map_err(|e| api("CreateStack")(sdk_text(&e)))?;
            tracing::info!("creating");
        }
        Some(StackStatus::RollbackComplete) => {
            // A failed first creation cannot be updated: remove it and start over.
            tracing::info!("removing the stack its failed creation left");
            delete_within(client, stack, limit).await?;
            return Box::pin(deploy_stack_within(client, stack, template, parameters, limit)).await;
        }
        Some(_) => {
            let updated = client
                .update_stack()
                .stack_name(stack)
                .template_body(template)
                .set_parameters(Some(cfn_parameters))
                .capabilities(Capability::CapabilityIam)
                .send()
                .await;
            if let Err(err) = updated {
                nothing_to_do = err
                    .message()
                    .is_some_and(|m| m.contains("No updates are to be performed"));
                if !nothing_to_do {
                    return Err(api("UpdateStack")(sdk_text(&err)));
                }
                tracing::info!("unchanged");
            } else {
                tracing::info!("updating");
            }
        }
    }
    let status = settle(client, stack, limit, &mut events).await?;
    match status {
        Some(StackStatus::CreateComplete | StackStatus::UpdateComplete) => existing_outputs(client, stack).await,
        // Nothing changed, and the stack is usable as it stands (its last update rolled back).
        Some(StackStatus::UpdateRollbackComplete) if nothing_to_do => existing_outputs(client, stack).await,
        other => Err(InfraError::Failed {
            stack: stack.to_owned(),
            status: other
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|| "DELETED".to_owned()),
            reasons: failure_reasons(client, stack).await,
        }),
    }
}

/// Deletes the stack and waits until it is gone (at most [`DEFAULT_SETTLE_LIMIT`]). Deleting a
/// stack that does not exist is fine.
pub async fn delete(client: &Client, stack: &str) -> Result<(), InfraError> {
    delete_within(client, stack, DEFAULT_SETTLE_LIMIT).await
}

/// [`delete`], waiting at most `limit` for the stack to go.
#[tracing::instrument(skip_all, fields(stack = stack))]
pub async fn delete_within(client: &Client, stack: &str, limit: Duration) -> Result<(), InfraError> {
    if current_status(client, stack).await?.is_none() {
        return Ok(());
    }
    let mut events = EventLog::start(client, stack).await;
    client
        .delete_stack()
        .stack_name(stack)
        .send()
        .await
        .map_err(|e| InfraError::Api {
            operation: "DeleteStack",
            stack: stack.to_owned(),
            detail: sdk_text(&e),
        })?;
    tracing::info!("deleting");
    match settle(client, stack, limit, &mut events).await? {
        None | Some(StackStatus::DeleteComplete) => Ok(()),
        Some(other) => Err(InfraError::Failed {
            stack: stack.to_owned(),
            status: other.as_str().to_owned(),
            reasons: failure_reasons(client, stack).await,
        }),
    }
}

/// The stack's outputs by key; `None` when there is no such stack. Read through the one stack
/// reader the services use too ([`describe_stack`]).
pub async fn outputs(client: &Client, stack: &str) -> Result<Option<HashMap<String, String>>, InfraError> {
    Ok(describe(client, stack).await?.map(|s| s.outputs))
}

/// The outputs of a stack that must exist.
pub async fn existing_outputs(client: &Client, stack: &str) -> Result<HashMap<String, String>, InfraError> {
    outputs(client, stack).await?.ok_or_else(|| InfraError::Api {
        operation: "DescribeStacks",
        stack: stack.to_owned(),
        detail: "no such stack".to_owned(),
    })
}

async fn describe(client: &Client, stack: &str) -> Result<Option<StackDescription>, InfraError> {
    describe_stack(client, stack).await.map_err(|err| InfraError::Api {
        operation: "DescribeStacks",
        stack: stack.to_owned(),
        detail: err.detail,
    })
}

/// The stack's parameters by key; `None` when there is no such stack.
pub async fn parameters(client: &Client, stack: &str) -> Result<Option<HashMap<String, String>>, InfraError> {
    let described = match client.describe_stacks().stack_name(stack).send().await {
        Ok(described) => described,
        Err(err) if err.message().is_some_and(|m| m.contains("does not exist")) => return Ok(None),
        Err(err) => {
            return Err(InfraError::Api {
                operation: "DescribeStacks",
                stack: stack.to_owned(),
                detail: sdk_text(&err),
            });
        }
    };
    let found = described.stacks().first().filter(|s| {
        s.stack_status()
            .is_some_and(|status| *status != StackStatus::DeleteComplete)
    });
    Ok(found.map(|s| {
        s.parameters()
            .iter()
            .filter_map(|p| Some((p.parameter_key()?.to_owned(), p.parameter_value()?.to_owned())))
            .collect()
    }))
}

/// `None` when the stack does not exist (or is deleted).
async fn current_status(client: &Client, stack: &str) -> Result<Option<StackStatus>, InfraError> {
    Ok(describe(client, stack)
        .await?
        .map(|s| StackStatus::from(s.status.as_str())))
}

/// Polls until the stack leaves every `*_IN_PROGRESS` state, logging its new events each time.
async fn settle(
    client: &Client,
    stack: &str,
    limit: Duration,
    events: &mut EventLog,
) -> Result<Option<StackStatus>, InfraError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = POLL_MIN;
    loop {
        let status = current_status(client, stack).await?;
        let logged = events.log_new(client, stack).await;
        let busy = status.as_ref().is_some_and(|s| s.as_str().ends_with("_IN_PROGRESS"));
        if !busy {
            return Ok(status);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(InfraError::Timeout {
                stack: stack.to_owned(),
                seconds: limit.as_secs(),
                status: status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
            });
        }
        pause = if logged > 0 {
            POLL_MIN
        } else {
            (pause * 2).min(POLL_MAX)
        };
        tokio::time::sleep(pause).await;
    }
}

/// The reasons CloudFormation gave for failed resources, newest first.
async fn failure_reasons(client: &Client, stack: &str) -> String {
    let Ok(events) = client.describe_stack_events().stack_name(stack).send().await else {
        return "no stack events available".to_owned();
    };
    let reasons: Vec<String> = events
        .stack_events()
        .iter()
        .filter(|e| e.resource_status().is_some_and(|s| s.as_str().ends_with("_FAILED")))
        .filter_map(|e| {
            let reason = sdk_error::one_line(e.resource_status_reason()?);
            Some(format!("{}: {reason}", e.logical_resource_id()?))
        })
        .take(5)
        .collect();
    if reasons.is_empty() {
        "no reason given".to_owned()
    } else {
        reasons.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use serde_norway::Value;
    use std::collections::BTreeSet;

    /// The messaging template has exactly the outputs of the endpoint table, so the services,
    /// `sagactl`, the DLQ tooling and the EC2 deployment find what they look for.
    #[test]
    fn the_template_has_exactly_the_outputs_of_the_endpoint_table() {
        let template: Value = serde_norway::from_str(super::MESSAGING_TEMPLATE).expect("messaging.yaml parses");
        let outputs: BTreeSet<&str> = template["Outputs"]
            .as_mapping()
            .expect("Outputs")
            .keys()
            .filter_map(Value::as_str)
            .collect();
        let table: BTreeSet<&str> = utility::messaging::endpoint::stack_output_keys().into_iter().collect();
        assert_eq!(outputs, table);
    }
}
