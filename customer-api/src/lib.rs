//! The customer-api: owns the customer database. It consumes `Enroll` and `Unenroll` commands
//! from its queue and publishes `CustomerEnrolled`, `EnrollmentRejected` and `CustomerUnenrolled`
//! to the customer events topic, always through its outbox.

mod customers;

pub use customers::fill_email_keys;
mod lookup;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utility::domain::Subaddresses;
use utility::messaging::{Endpoint, Participant};
use utility::runtime::config::{CommonConfig, ServiceInfo};
use utility::runtime::{Service, ServiceCore, Task};

pub use customers::CustomerHandler;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Whether `ada+news@example.com` is the customer `ada@example.com` (`fold`) or a customer of
    /// its own (`distinct`). Applies to enrollments from then on: a customer keeps the key it was
    /// enrolled under.
    pub email_subaddresses: Subaddresses,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::new(([127, 0, 0, 1], 8081).into(), "sqlite:data/customer-api.db"),
            email_subaddresses: Subaddresses::default(),
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
pub struct CustomerApi {
    subaddresses: Subaddresses,
}

impl Service for CustomerApi {
    const INFO: ServiceInfo = utility::service_info!();
    const QUEUE: Endpoint = Endpoint::CustomerCommands;
    const ENDPOINTS: &'static [Endpoint] = &ENDPOINTS;
    type Config = Config;
    type Handler = CustomerHandler;

    fn migrations() -> sqlx::migrate::Migrator {
        migrations()
    }

    fn from_config(config: Config) -> anyhow::Result<Self> {
        Ok(Self {
            subaddresses: config.email_subaddresses,
        })
    }

    fn handler(&self, _: &ServiceCore) -> CustomerHandler {
        CustomerHandler {
            subaddresses: self.subaddresses,
        }
    }

    /// `/metrics` only (with `/health` and `/ready`): lookups come over the bus.
    fn routes(&self, core: &ServiceCore, _: &CancellationToken) -> anyhow::Result<axum::Router> {
        Ok(core.metrics_routes())
    }

    fn tasks(&self, core: &ServiceCore, shutdown: &CancellationToken) -> Vec<(&'static str, Task)> {
        let queue = Participant::CustomerApi.lookups();
        let fill = customers::keep_email_keys_filled(core.background_pool.clone(), self.subaddresses, shutdown.clone());
        vec![
            (
                "lookup responder",
                core.responder(queue, lookup::CustomerLookups, shutdown),
            ),
            ("address key filler", Box::pin(fill)),
        ]
    }
}

/// The service built and ready to run: `Application::build(config, bus)`, then `run_until_stopped`.
pub type Application = utility::runtime::Application<CustomerApi>;
