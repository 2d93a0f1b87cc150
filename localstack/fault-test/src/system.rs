//! One system under test: an isolated copy of the messaging stack (unique prefix), one fresh
//! database per service, and the three service binaries as child processes (or several instances
//! of each, sharing their service's database). Every fault phase gets a system of its own, so one
//! phase's leftovers never explain another's result.

use crate::procs::{Service, free_port};
use anyhow::Context;
use infra::MessagingParams;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use utility::messaging::bus::Bus;

/// How long a service may take to become ready after it is started.
pub const READY_LIMIT: Duration = Duration::from_secs(45);
/// Points per enrollment: the transaction-api's default, repeated here to size the budget.
pub const BONUS_POINTS: i64 = 500;
pub const MAX_RECEIVE_COUNT: u32 = 5;

pub const GATEWAY: usize = 0;
pub const CUSTOMER: usize = 1;
pub const TRANSACTION: usize = 2;
pub const NAMES: [&str; 3] = ["gateway", "customer-api", "transaction-api"];

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

/// A bus on the suite's emulator at `endpoint`.
pub async fn bus_for(endpoint: &str) -> Bus {
    Bus::for_emulator(endpoint).await
}

pub struct System {
    pub bus: Bus,
    pub params: MessagingParams,
    pub outputs: HashMap<String, String>,
    pub http: reqwest::Client,
    /// Instance `k` of service `i` (`GATEWAY`, `CUSTOMER`, `TRANSACTION`) is `services[i + 3 * k]`.
    pub services: Vec<Service>,
    pub db_urls: [String; 3],
    pub budget_points: i64,
    stack_deleted: bool,
}

impl System {
    /// Deploys the stack, creates the databases and starts `instances` instances of each of the
    /// three services; returns once all are ready. `budget_points` is the transaction-api's
    /// campaign budget.
    pub async fn start(
        settings: &Settings,
        phase: &str,
        endpoint: &str,
        storage: &Storage,
        budget_points: i64,
        instances: usize,
    ) -> anyhow::Result<Self> {
        let dir = settings.run_dir.join(phase);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let prefix = format!("ft{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let bus = bus_for(endpoint).await;
        let params = MessagingParams {
            max_receive_count: MAX_RECEIVE_COUNT,
            visibility_timeout_seconds: settings.visibility_timeout,
            ..MessagingParams::new(&prefix)
        };
        let outputs = infra::deploy_messaging(bus.cloudformation(), &params.stack_name(), &params)
            .await
            .context("cannot deploy the messaging stack")?;
        let db_urls = databases(storage, &dir, &prefix).await?;
        let instances = instances.max(1);
        let ports = (0..3 * instances)
            .map(|_| free_port())
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let addr = |index: usize| std::net::SocketAddr::from(([127, 0, 0, 1], ports[index]));
        let env = |index: usize| -> Vec<(String, String)> {
            let i = index % 3;
            let mut env: Vec<(String, String)> = [
                ("AWS_ENDPOINT_URL", endpoint.to_owned()),
                ("AWS_REGION", "us-east-1".to_owned()),
                ("AWS_ACCESS_KEY_ID", "test".to_owned()),
                ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
                ("TOPOLOGY_STACK", params.stack_name()),
                ("RECEIVE_WAIT_SECONDS", settings.receive_wait.to_string()),
                ("LOG_FORMAT", "json".to_owned()),
                ("HTTP_ADDR", addr(index).to_string()),
                ("DATABASE_URL", db_urls[i].clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            match i {
                GATEWAY => {
                    env.push(("CUSTOMER_API_URL".into(), format!("http://{}", addr(CUSTOMER))));
                    env.push(("TRANSACTION_API_URL".into(), format!("http://{}", addr(TRANSACTION))));
                    // The load comes from one address, faster than a person would submit.
                    env.push(("RATE_LIMIT_PER_MINUTE".into(), "0".into()));
                }
                TRANSACTION => env.push(("BONUS_BUDGET_POINTS".into(), budget_points.to_string())),
                _ => {}
            }
            env
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()?;
        let services = (0..3 * instances)
            .map(|index| {
                let (i, k) = (index % 3, index / 3);
                let log = if k == 0 {
                    format!("{}.log", NAMES[i])
                } else {
                    format!("{}-{}.log", NAMES[i], k + 1)
                };
                Service::new(
                    NAMES[i],
                    settings.bin_dir.join(NAMES[i]),
                    addr(index),
                    env(index),
                    dir.join(log),
                )
            })
            .collect();
        let mut system = Self {
            bus,
            params,
            outputs,
            http,
            services,
            db_urls,
            budget_points,
            stack_deleted: false,
        };
        for k in 0..instances {
            for i in [CUSTOMER, TRANSACTION, GATEWAY] {
                system.services[i + 3 * k].start()?;
            }
        }
        for service in &mut system.services {
            service.wait_ready(&system.http, READY_LIMIT).await?;
        }
        Ok(system)
    }

    pub fn gateway_url(&self) -> String {
        format!("http://{}", self.services[GATEWAY].addr)
    }

    /// Every gateway instance's address, first instance first.
    pub fn gateway_urls(&self) -> Vec<String> {
        self.services
            .iter()
            .skip(GATEWAY)
            .step_by(3)
            .map(|s| format!("http://{}", s.addr))
            .collect()
    }

    /// Starts service `i` again and waits until it is ready.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<Duration> {
        self.services[i].start()?;
        self.services[i].wait_ready(&self.http, READY_LIMIT).await
    }

    /// A read connection to service `i`'s database (any instance of the service: they share it).
    pub async fn pool(&self, i: usize) -> anyhow::Result<AnyPool> {
        sqlx::any::install_default_drivers();
        let i = i % 3;
        let url = &self.db_urls[i];
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
        self.outputs
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("stack output {key} missing"))
    }

    /// Stops the services (kill: the phase is over) and deletes the stack.
    pub async fn teardown(mut self) -> anyhow::Result<()> {
        for service in &mut self.services {
            service.kill9().await?;
        }
        self.stack_deleted = true;
        infra::delete(self.bus.cloudformation(), &self.params.stack_name())
            .await
            .context("cannot delete the messaging stack")
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if self.stack_deleted {
            return;
        }
        // Dropped without teardown (error or Ctrl-C): delete the stack from a thread with its own
        // runtime, since this may run inside one.
        let (client, stack) = (self.bus.cloudformation().clone(), self.params.stack_name());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            // The timer must be created inside the runtime.
            let _ = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(60), infra::delete(&client, &stack)).await
            });
        })
        .join();
    }
}

/// One database URL per service (gateway, customer-api, transaction-api).
async fn databases(storage: &Storage, dir: &std::path::Path, prefix: &str) -> anyhow::Result<[String; 3]> {
    match storage {
        Storage::Sqlite => Ok(NAMES.map(|name| format!("sqlite:{}/{name}.db", dir.display()))),
        Storage::Postgres { admin_url } => {
            use sqlx::Connection;
            sqlx::any::install_default_drivers();
            let mut admin = sqlx::AnyConnection::connect(admin_url)
                .await
                .with_context(|| format!("cannot connect to {admin_url}"))?;
            let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin_url);
            let mut urls = Vec::new();
            for name in NAMES {
                let db = format!("{prefix}_{}", name.replace('-', "_"));
                sqlx::query(&format!("CREATE DATABASE {db}"))
                    .execute(&mut admin)
                    .await?;
                urls.push(format!("{base}/{db}"));
            }
            urls.try_into().map_err(|_| anyhow::anyhow!("three databases expected"))
        }
    }
}
