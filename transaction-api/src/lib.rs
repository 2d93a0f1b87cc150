//! The transaction-api: owns the points ledger. It consumes `PostBonusPoints` from its queue,
//! grants the enrollment bonus while the campaign budget allows, and publishes
//! `BonusPointsPosted` or `BonusPointsFailed` to the transaction events topic through its outbox.

mod ledger;
mod lookup;
mod metrics;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utility::messaging::{Endpoint, Participant};
use utility::runtime::config::{CommonConfig, ServiceInfo};
use utility::runtime::{Service, ServiceCore, Task};

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

impl AsRef<CommonConfig> for Config {
    fn as_ref(&self) -> &CommonConfig {
        &self.common
    }
}

/// Consumed queue first, then what the service publishes to, then its lookups: the queries it
/// answers and the gateway's reply queue it answers on.
pub const ENDPOINTS: [Endpoint; 4] = [
    Endpoint::TransactionCommands,
    Endpoint::TransactionEvents,
    Endpoint::TransactionQueries,
    Endpoint::GatewayReplies,
];

/// This service's own migrations (the shared outbox and processed-message tables come with
/// [`utility::storage::connect`]).
pub fn migrations() -> sqlx::migrate::Migrator {
    sqlx::migrate!()
}

/// The transaction-api as a [`Service`]: bonus commands in, transaction events out, within the
/// campaign's budget.
pub struct TransactionApi {
    campaign: Campaign,
}

impl Service for TransactionApi {
    const INFO: ServiceInfo = utility::service_info!();
    const QUEUE: Endpoint = Endpoint::TransactionCommands;
    const ENDPOINTS: &'static [Endpoint] = &ENDPOINTS;
    type Config = Config;
    type Handler = LedgerHandler;

    fn migrations() -> sqlx::migrate::Migrator {
        migrations()
    }

    fn from_config(config: Config) -> anyhow::Result<Self> {
        let campaign = Campaign::new(config.bonus_points, config.bonus_budget_points)?;
        Ok(Self { campaign })
    }

    fn handler(&self, core: &ServiceCore) -> LedgerHandler {
        metrics::register(&core.metrics, core.background_pool.clone(), self.campaign);
        LedgerHandler::new(self.campaign)
    }

    /// `/metrics` only (with `/health` and `/ready`): lookups come over the bus.
    fn routes(&self, core: &ServiceCore, _: &CancellationToken) -> anyhow::Result<axum::Router> {
        Ok(core.metrics_routes())
    }

    fn tasks(&self, core: &ServiceCore, shutdown: &CancellationToken) -> Vec<(&'static str, Task)> {
        let queue = Participant::TransactionApi.lookups();
        vec![(
            "lookup responder",
            core.responder(queue, lookup::PointsLookups, shutdown),
        )]
    }
}

/// The service built and ready to run: `Application::build(config, bus)`, then `run_until_stopped`.
pub type Application = utility::runtime::Application<TransactionApi>;
