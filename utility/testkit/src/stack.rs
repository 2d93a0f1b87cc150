//! An isolated copy of the messaging topology for one test (or one fault phase): a stack of its
//! own under a unique name prefix, deleted when dropped, also when the test panics, with its
//! (retained) dead-letter queues and whatever messages are left in it.

use aws_sdk_cloudformation::Client;
use infra::{InfraError, MessagingParams};
use std::collections::HashMap;
use std::time::Duration;
use utility::messaging::bus::Bus;

/// How long a stack dropped without [`TestStack::delete`] may take to go.
const DROP_LIMIT: Duration = Duration::from_secs(60);

pub struct TestStack {
    pub name: String,
    pub params: MessagingParams,
    pub outputs: HashMap<String, String>,
    client: Client,
    bus: Bus,
    deleted: bool,
}

impl TestStack {
    /// A unique prefix, and a visibility timeout of 10 s so a message a stopped consumer held
    /// comes back within a test's patience.
    pub fn params() -> MessagingParams {
        MessagingParams {
            visibility_timeout_seconds: 10,
            ..MessagingParams::new(format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]))
        }
    }

    /// Deploys [`TestStack::params`] on `bus`'s emulator; panics when it cannot.
    pub async fn deploy(bus: &Bus) -> Self {
        Self::deploy_with(bus, Self::params()).await
    }

    /// Deploys `params`; panics when it cannot.
    pub async fn deploy_with(bus: &Bus, params: MessagingParams) -> Self {
        Self::create(bus, params)
            .await
            .unwrap_or_else(|e| panic!("deploying the test stack failed (is LocalStack running?): {e}"))
    }

    /// Deploys `params` and waits until the stack is complete; verifies the customer-api's
    /// default sender address in the emulator's SES, as `sagactl deploy` does locally.
    pub async fn create(bus: &Bus, params: MessagingParams) -> Result<Self, InfraError> {
        let client = bus.cloudformation().clone();
        let name = params.stack_name();
        let outputs = infra::deploy_messaging(&client, &name, &params).await?;
        if let Err(err) = infra::mail::verify_sender(bus.sdk_config(), infra::mail::DEFAULT_MAIL_FROM).await {
            // Only the tests that send mail need it; they fail on the mail that never comes.
            eprintln!("{err}");
        }
        Ok(Self {
            name,
            params,
            outputs,
            client,
            bus: bus.clone(),
            deleted: false,
        })
    }

    /// Deploys the same stack again, as after the emulator lost it.
    pub async fn redeploy(&mut self) -> Result<(), InfraError> {
        self.outputs = infra::deploy_messaging(&self.client, &self.name, &self.params).await?;
        Ok(())
    }

    /// The output `key`; panics when the stack has none.
    pub fn output(&self, key: &str) -> &str {
        self.try_output(key)
            .unwrap_or_else(|| panic!("stack output {key} missing"))
    }

    pub fn try_output(&self, key: &str) -> Option<&str> {
        self.outputs.get(key).map(String::as_str)
    }

    /// Deletes the stack now, saying why when it cannot (dropping it only tries).
    pub async fn delete(mut self) -> Result<(), InfraError> {
        self.deleted = true;
        discard(&self.client, &self.bus, &self.name).await
    }
}

impl Drop for TestStack {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let (client, bus, name) = (self.client.clone(), self.bus.clone(), self.name.clone());
        // Drop may run inside a runtime that cannot be blocked on: delete from a thread of its own.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime {
                // The timer must be created inside the runtime.
                Ok(runtime) => runtime.block_on(async {
                    match tokio::time::timeout(DROP_LIMIT, discard(&client, &bus, &name)).await {
                        Ok(deleted) => deleted.map_err(|e| e.to_string()),
                        Err(_) => Err(format!("not gone within {} s", DROP_LIMIT.as_secs())),
                    }
                }),
                Err(err) => Err(err.to_string()),
            }
        })
        .join();
        if let Ok(Err(err)) = deleted {
            eprintln!("could not delete the test stack {}: {err}", self.name);
        }
    }
}

/// Deletes a test stack with its retained DLQs, whatever its queues hold.
async fn discard(client: &Client, bus: &Bus, name: &str) -> Result<(), InfraError> {
    let limit = infra::DEFAULT_SETTLE_LIMIT;
    match infra::teardown::delete_messaging(client, bus, name, None, true, limit).await {
        Ok(()) => Ok(()),
        Err(infra::teardown::TeardownError::Stack(err)) => Err(err),
        Err(other) => Err(InfraError::Api {
            operation: "DeleteQueue",
            stack: name.to_owned(),
            detail: other.to_string(),
        }),
    }
}
