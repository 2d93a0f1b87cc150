//! A messaging stack that deletes itself when dropped, also when a test panics: for test suites
//! and throw-away runs that each need an isolated copy of the topology.

use crate::{InfraError, MessagingParams};
use aws_sdk_cloudformation::Client;
use std::collections::HashMap;

pub struct EphemeralStack {
    pub name: String,
    pub outputs: HashMap<String, String>,
    client: Client,
}

impl EphemeralStack {
    /// Deploys `params`'s messaging stack (`<prefix>-messaging`) and waits until it is complete.
    pub async fn deploy(client: &Client, params: &MessagingParams) -> Result<Self, InfraError> {
        let name = params.stack_name();
        let outputs = crate::deploy_messaging(client, &name, params).await?;
        Ok(Self {
            name,
            outputs,
            client: client.clone(),
        })
    }

    pub fn output(&self, key: &str) -> Option<&str> {
        self.outputs.get(key).map(String::as_str)
    }
}

impl Drop for EphemeralStack {
    fn drop(&mut self) {
        let (client, name) = (self.client.clone(), self.name.clone());
        // Drop may run inside a runtime that cannot be blocked on: delete from a thread of its own.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime {
                Ok(runtime) => runtime
                    .block_on(crate::delete(&client, &name))
                    .map_err(|e| e.to_string()),
                Err(err) => Err(err.to_string()),
            }
        })
        .join();
        if let Ok(Err(err)) = deleted {
            tracing::warn!(stack = %self.name, error = %err, "could not delete the ephemeral stack");
        }
    }
}
