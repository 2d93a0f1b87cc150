//! The gateway: accepts enrollments over HTTP, routes saga events to the next command, and keeps
//! the saga read model that clients poll. It never calls the other services to make progress;
//! everything moves through the bus (the two GET proxies are read-only conveniences).

mod http;
pub mod saga;
mod stalls;
mod store;

use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utility::http::RequestLimits;
use utility::messaging::Endpoint;
use utility::messaging::consumer::Consumer;
use utility::runtime::ServiceCore;
use utility::runtime::config::CommonConfig;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Base URL of the customer-api's HTTP API (`CUSTOMER_API_URL`).
    pub customer_api_url: String,
    /// Base URL of the transaction-api's HTTP API (`TRANSACTION_API_URL`).
    pub transaction_api_url: String,
    /// Largest accepted request body.
    #[schemars(range(min = 1))]
    pub max_body_bytes: usize,
    /// A saga unchanged for this long without reaching a terminal status is reported stalled.
    #[schemars(range(min = 1))]
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

impl Config {
    pub fn limits(&self) -> RequestLimits {
        RequestLimits::new(self.max_body_bytes)
    }

    fn api_state(&self, pool: AnyPool, outbox_signal: Arc<Notify>) -> anyhow::Result<http::AppState> {
        Ok(http::AppState {
            pool,
            outbox_signal,
            http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?,
            customer_api_url: self.customer_api_url.trim_end_matches('/').to_owned(),
            transaction_api_url: self.transaction_api_url.trim_end_matches('/').to_owned(),
            stall_after: Duration::from_secs(self.stall_after_seconds),
        })
    }
}

/// The gateway's HTTP API as it is served, less `/health` and `/ready` (which need the bus): a
/// database is all it takes, so the HTTP contract is tested in process against this router.
/// Accepted enrollments wait in the outbox; `outbox_signal` is notified on each.
pub fn router(config: &Config, pool: AnyPool, outbox_signal: Arc<Notify>) -> anyhow::Result<axum::Router> {
    let state = config.api_state(pool, outbox_signal)?;
    Ok(utility::http::finish(http::routes(state), config.limits()))
}

/// Consumed queue first, then the command queues it routes to.
pub const ENDPOINTS: [Endpoint; 3] = [
    Endpoint::GatewayEvents,
    Endpoint::CustomerCommands,
    Endpoint::TransactionCommands,
];

/// This service's own migrations (the shared outbox and processed-message tables come with
/// [`utility::storage::connect`]).
pub fn migrations() -> sqlx::migrate::Migrator {
    sqlx::migrate!()
}

pub struct Application {
    core: ServiceCore,
    consumer: Consumer<saga::SagaHandler>,
    config: Config,
}

impl Application {
    pub async fn build(config: Config, bus: utility::messaging::bus::Bus) -> anyhow::Result<Self> {
        let core = ServiceCore::build(config.common.clone(), migrations(), &ENDPOINTS, bus).await?;
        let consumer = core.consumer(Endpoint::GatewayEvents, saga::SagaHandler)?;
        Ok(Self { core, consumer, config })
    }

    pub fn port(&self) -> u16 {
        self.core.port()
    }

    pub fn pool(&self) -> &AnyPool {
        &self.core.pool
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let state = self
            .config
            .api_state(self.core.pool.clone(), self.core.relay.signal())?;
        let watch = stalls::StallWatch::new(self.core.pool.clone(), state.stall_after);
        let sweeper: utility::runtime::Task = Box::pin(watch.run(shutdown.clone()));
        let router = http::routes(state).merge(self.core.health_routes(Endpoint::GatewayEvents)?);
        let limits = self.config.limits();
        self.core
            .run(
                router,
                limits,
                self.consumer,
                vec![("stall sweeper", sweeper)],
                shutdown,
            )
            .await
    }
}
