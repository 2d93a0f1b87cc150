//! The transaction-api: owns the points ledger. It consumes `PostBonusPoints` from its queue,
//! grants the enrollment bonus while the campaign budget allows, and publishes
//! `BonusPointsPosted` or `BonusPointsFailed` to the transaction events topic through its outbox.

mod http;
mod ledger;

use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use tokio_util::sync::CancellationToken;
use utility::messaging::Endpoint;
use utility::messaging::consumer::Consumer;
use utility::runtime::ServiceCore;
use utility::runtime::config::CommonConfig;

pub use ledger::{Campaign, LedgerHandler};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Points granted per enrollment (`BONUS_POINTS`).
    #[schemars(range(min = 1))]
    pub bonus_points: i64,
    /// Total the campaign may grant (`BONUS_BUDGET_POINTS`); unset means unlimited.
    #[schemars(range(min = 0))]
    pub bonus_budget_points: Option<i64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::new(([127, 0, 0, 1], 8082).into(), "sqlite:data/transaction-api.db"),
            bonus_points: 500,
            bonus_budget_points: None,
        }
    }
}

pub const ENDPOINTS: [Endpoint; 2] = [Endpoint::TransactionCommands, Endpoint::TransactionEvents];

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
    consumer: Consumer<LedgerHandler>,
}

impl Application {
    pub async fn build(config: Config, bus: utility::messaging::bus::Bus) -> anyhow::Result<Self> {
        let campaign = Campaign::new(config.bonus_points, config.bonus_budget_points)?;
        let core = ServiceCore::build(env!("CARGO_PKG_NAME"), config.common, migrations(), &ENDPOINTS, bus).await?;
        let consumer = core.consumer(Endpoint::TransactionCommands, LedgerHandler::new(campaign))?;
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
            .merge(self.core.health_routes(Endpoint::TransactionCommands)?)
            .merge(self.core.metrics_routes());
        self.core.run(router, limits, self.consumer, Vec::new(), shutdown).await
    }
}
