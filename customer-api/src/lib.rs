//! The customer-api: owns the customer database. It consumes `Enroll` and `Unenroll` commands
//! from its queue and publishes `CustomerEnrolled`, `EnrollmentRejected` and `CustomerUnenrolled`
//! to the customer events topic, always through its outbox.

mod customers;
mod lookup;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utility::messaging::{Endpoint, Participant};
use utility::runtime::config::{CommonConfig, ServiceInfo};
use utility::runtime::{Service, ServiceCore, Task};

pub use customers::CustomerHandler;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::new(([127, 0, 0, 1], 8081).into(), "sqlite:data/customer-api.db"),
        }
    }
}

impl AsRef<CommonConfig> for Config {
    fn as_ref(&self) -> &CommonConfig {
        &self.common
    }
}

/// Consumed queue first, then what the service publishes to, then its lookups: the queries it
/// answers and the gateway's reply queue it answers on.
pub const ENDPOINTS: [Endpoint; 4] = [
    Endpoint::CustomerCommands,
    Endpoint::CustomerEvents,
    Endpoint::CustomerQueries,
    Endpoint::GatewayReplies,
];

/// This service's own migrations (the shared outbox and processed-message tables come with
/// [`utility::storage::connect`]).
pub fn migrations() -> sqlx::migrate::Migrator {
    sqlx::migrate!()
}

/// The customer-api as a [`Service`]: customer commands in, customer events out.
pub struct CustomerApi;

impl Service for CustomerApi {
    const INFO: ServiceInfo = utility::service_info!();
    const QUEUE: Endpoint = Endpoint::CustomerCommands;
    const ENDPOINTS: &'static [Endpoint] = &ENDPOINTS;
    type Config = Config;
    type Handler = CustomerHandler;

    fn migrations() -> sqlx::migrate::Migrator {
        migrations()
    }

    fn from_config(_: Config) -> anyhow::Result<Self> {
        Ok(Self)
    }

    fn handler(&self, _: &ServiceCore) -> CustomerHandler {
        CustomerHandler
    }

    /// `/metrics` only (with `/health` and `/ready`): lookups come over the bus.
    fn routes(&self, core: &ServiceCore, _: &CancellationToken) -> anyhow::Result<axum::Router> {
        Ok(core.metrics_routes())
    }

    fn tasks(&self, core: &ServiceCore, shutdown: &CancellationToken) -> Vec<(&'static str, Task)> {
        let queue = Participant::CustomerApi.lookups();
        vec![(
            "lookup responder",
            core.responder(queue, lookup::CustomerLookups, shutdown),
        )]
    }
}

/// The service built and ready to run: `Application::build(config, bus)`, then `run_until_stopped`.
pub type Application = utility::runtime::Application<CustomerApi>;
