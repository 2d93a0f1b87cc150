//! The gateway: accepts enrollments over HTTP, routes saga events to the next command, and keeps
//! the saga read model that clients poll. It never calls the other services to make progress;
//! everything moves through the bus (the two GET proxies are read-only conveniences).

mod http;
pub mod saga;
mod stalls;
mod store;

use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use utility::config::CommonConfig;
use utility::consumer::Consumer;
use utility::service::ServiceCore;
use utility::topology::Endpoint;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Base URL of the customer-api's HTTP API (`CUSTOMER_API_URL`).
    pub customer_api_url: String,
    /// Base URL of the transaction-api's HTTP API (`TRANSACTION_API_URL`).
    pub transaction_api_url: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// A saga unchanged for this long without reaching a terminal status is reported stalled.
    pub stall_after_seconds: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::new(([127, 0, 0, 1], 8080).into(), "sqlite:data/gateway.db"),
            customer_api_url: "http://127.0.0.1:8081".to_owned(),
            transaction_api_url: "http://127.0.0.1:8082".to_owned(),
            max_body_bytes: 16 * 1024,
            stall_after_seconds: 120,
        }
    }
}

/// Consumed queue first, then the command queues it routes to.
pub const ENDPOINTS: [Endpoint; 3] = [
    Endpoint::GatewayEvents,
    Endpoint::CustomerCommands,
    Endpoint::TransactionCommands,
];

pub struct Application {
    core: ServiceCore,
    consumer: Consumer<store::SagaHandler>,
    config: Config,
}

impl Application {
    pub async fn build(config: Config, bus: utility::bus::Bus) -> anyhow::Result<Self> {
        let core = ServiceCore::build(config.common.clone(), sqlx::migrate!(), &ENDPOINTS, bus).await?;
        let consumer = core.consumer(Endpoint::GatewayEvents, store::SagaHandler)?;
        Ok(Self { core, consumer, config })
    }

    pub fn port(&self) -> u16 {
        self.core.port()
    }

    pub fn pool(&self) -> &AnyPool {
        &self.core.pool
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        let state = http::AppState {
            pool: self.core.pool.clone(),
            outbox_signal: self.core.relay.signal(),
            http,
            customer_api_url: self.config.customer_api_url.trim_end_matches('/').to_owned(),
            transaction_api_url: self.config.transaction_api_url.trim_end_matches('/').to_owned(),
            stall_after: Duration::from_secs(self.config.stall_after_seconds),
        };
        let watch = stalls::StallWatch::new(self.core.pool.clone(), state.stall_after);
        let sweeper: utility::service::Task = Box::pin(watch.run(shutdown.clone()));
        let router =
            http::routes(state, self.config.max_body_bytes).merge(self.core.health_routes(Endpoint::GatewayEvents)?);
        self.core
            .run(router, self.consumer, vec![("stall sweeper", sweeper)], shutdown)
            .await
    }
}
