//! One system under test: the harness's [`Processes`] (an isolated copy of the messaging stack,
//! one fresh database per service, the three service binaries as child processes, or several
//! instances of each sharing their service's database) as the suite configures it. Every fault
//! phase gets a system of its own, so one phase's leftovers never explain another's result.

use anyhow::Context;
use infra::MessagingParams;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use std::path::PathBuf;
use std::time::Duration;
use testkit::processes::{Layout, Processes};
use testkit::{Backend, TestStack};

pub use testkit::processes::{CUSTOMER, GATEWAY, NAMES, TRANSACTION};

/// How long a service may take to become ready after it is started.
pub const READY_LIMIT: Duration = Duration::from_secs(45);
/// Points per enrollment: the transaction-api's default, repeated here to size the budget.
pub const BONUS_POINTS: i64 = 500;
pub const MAX_RECEIVE_COUNT: u32 = 5;

/// Where the services keep their data.
#[derive(Debug, Clone)]
pub enum Storage {
    /// SQLite files in the phase directory.
    Sqlite,
    /// One new database per service on this server (admin URL, database `postgres`).
    Postgres { admin_url: String },
}

/// What does not change from one phase to the next.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bin_dir: PathBuf,
    pub run_dir: PathBuf,
    pub visibility_timeout: u32,
    pub receive_wait: u32,
}

pub struct System {
    /// Instance `k` of service `i` (`GATEWAY`, `CUSTOMER`, `TRANSACTION`) is `services[i + 3 * k]`.
    pub processes: Processes,
    pub budget_points: i64,
    /// Relays the services reach the bus and the database through, when the phase has them.
    pub relays: Vec<testkit::proxy::Delayed>,
}

impl System {
    /// Deploys the stack, creates the databases and starts `instances` instances of each of the
    /// three services; returns once all are ready. `budget_points` is the transaction-api's
    /// campaign budget; `gateway_env` the phase's settings for the gateway (`EMAIL_CONFIRMATION`,
    /// callbacks). Logs and SQLite files go to the phase's directory.
    pub async fn start(
        settings: &Settings,
        phase: &str,
        endpoint: &str,
        storage: &Storage,
        budget_points: i64,
        instances: usize,
        gateway_env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let dir = settings.run_dir.join(phase);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (backend, postgres_admin_url) = match storage {
            Storage::Sqlite => (Backend::Sqlite, String::new()),
            Storage::Postgres { admin_url } => (Backend::Postgres, admin_url.clone()),
        };
        let mut service_env = vec![
            (TRANSACTION, "BONUS_BUDGET_POINTS".to_owned(), budget_points.to_string()),
            (
                GATEWAY,
                "CONFIRMATION_TTL_SECONDS".to_owned(),
                crate::phase::CONFIRMATION_TTL.as_secs().to_string(),
            ),
        ];
        service_env.extend(gateway_env.into_iter().map(|(k, v)| (GATEWAY, k, v)));
        // The services' own defaults, but for the budget: what the suite tests is the default
        // configuration.
        let layout = Layout {
            receive_wait_seconds: settings.receive_wait,
            backend,
            instances,
            endpoint: endpoint.to_owned(),
            stack: MessagingParams {
                max_receive_count: MAX_RECEIVE_COUNT,
                visibility_timeout_seconds: settings.visibility_timeout,
                ..TestStack::params()
            },
            postgres_admin_url,
            dir: Some(dir),
            bin_dir: Some(settings.bin_dir.clone()),
            env: Vec::new(),
            service_env,
            ready_within: READY_LIMIT,
            ..Layout::default()
        };
        Ok(Self {
            processes: Processes::start_with(layout).await?,
            budget_points,
            relays: Vec::new(),
        })
    }

    pub fn gateway_url(&self) -> String {
        self.processes.gateway().url("")
    }

    /// Every gateway instance's address, first instance first.
    pub fn gateway_urls(&self) -> Vec<String> {
        self.processes.gateways().iter().map(|s| s.url("")).collect()
    }

    /// Starts service instance `i` again and waits until it is ready.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<Duration> {
        self.processes.restart(i).await
    }

    /// A read connection to service `i`'s database (any instance of the service: they share it).
    pub async fn pool(&self, i: usize) -> anyhow::Result<AnyPool> {
        sqlx::any::install_default_drivers();
        let i = i % 3;
        let url = &self.processes.dbs[i].url;
        let url = if url.starts_with("sqlite:") {
            format!("{url}?mode=ro")
        } else {
            url.clone()
        };
        AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .with_context(|| format!("cannot open the {} database", NAMES[i]))
    }

    pub fn output(&self, key: &str) -> anyhow::Result<&str> {
        self.processes
            .stack
            .try_output(key)
            .with_context(|| format!("stack output {key} missing"))
    }

    /// Stops the services (kill: the phase is over) and deletes the stack.
    pub async fn teardown(self) -> anyhow::Result<()> {
        self.processes.teardown().await
    }
}
