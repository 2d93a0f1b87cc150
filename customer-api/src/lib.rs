//! The customer-api: owns the customer database. It consumes `Enroll` and `Unenroll` commands
//! from its queue and publishes `CustomerEnrolled`, `EnrollmentRejected` and `CustomerUnenrolled`
//! to the customer events topic, always through its outbox.

mod customers;
mod http;

use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use tokio_util::sync::CancellationToken;
use utility::messaging::Endpoint;
use utility::messaging::consumer::Consumer;
use utility::runtime::ServiceCore;
use utility::runtime::config::CommonConfig;

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

/// Consumed queue first, then what the service publishes to.
pub const ENDPOINTS: [Endpoint; 2] = [Endpoint::CustomerCommands, Endpoint::CustomerEvents];

/// The HTTP API as it is served, less `/health` and `/ready` (which need the bus).
pub fn router(pool: AnyPool) -> axum::Router {
    utility::http::finish(
        http::routes(pool),
        utility::http::RequestLimits::default(),
        utility::observe::metrics::Metrics::new(),
    )
}

/// This service's own migrations (the shared outbox and processed-message tables come with
/// [`utility::storage::connect`]).
pub fn migrations() -> sqlx::migrate::Migrator {
    sqlx::migrate!()
}

pub struct Application {
    core: ServiceCore,
    consumer: Consumer<CustomerHandler>,
}

impl Application {
    pub async fn build(config: Config, bus: utility::messaging::bus::Bus) -> anyhow::Result<Self> {
        let core = ServiceCore::build(env!("CARGO_PKG_NAME"), config.common, migrations(), &ENDPOINTS, bus).await?;
        let consumer = core.consumer(Endpoint::CustomerCommands, CustomerHandler)?;
        Ok(Self { core, consumer })
    }

    pub fn port(&self) -> u16 {
        self.core.port()
    }

    pub fn pool(&self) -> &AnyPool {
        &self.core.pool
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let limits = utility::http::RequestLimits::default();
        let router = http::routes(self.core.pool.clone())
            .merge(self.core.health_routes(Endpoint::CustomerCommands)?)
            .merge(self.core.metrics_routes());
        self.core.run(router, limits, self.consumer, Vec::new(), shutdown).await
    }
}
