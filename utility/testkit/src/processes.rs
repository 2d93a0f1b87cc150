//! The whole system as separate processes: the three real service binaries (one or several
//! instances of each), each service with its own database (its instances share it), on an
//! isolated copy of the messaging stack, optionally exporting spans to an OTLP receiver in this
//! process. For what only real processes show: each binary's `service.name`, its memory and CPU,
//! signals, crashes, several instances of one service. Tests, the bench and the fault suite start
//! it the same way; what differs is the [`Layout`].

use crate::db::{Backend, TestDb, admin_url};
use crate::otlp::Collector;
use crate::poll::{Poll, Shown, eventually};
use crate::process::{Process, binaries, free_port};
use crate::stack::TestStack;
use crate::{DEADLINE, OPERATOR_TOKEN, TERMINAL};
use anyhow::Context as _;
use infra::MessagingParams;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use utility::messaging::bus::Bus;

/// Index of a service in [`NAMES`] and [`Processes::services`].
pub const GATEWAY: usize = 0;
pub const CUSTOMER: usize = 1;
pub const TRANSACTION: usize = 2;
/// The binaries, by service index.
pub const NAMES: [&str; 3] = ["gateway", "customer-api", "transaction-api"];

/// Configuration the harness sets itself, whatever the environment it runs in holds: an
/// inherited value would change what is tested.
const OWNED_VARS: [&str; 17] = [
    "CONFIG_FILE",
    "CUSTOMER_COMMANDS_QUEUE_URL",
    "TRANSACTION_COMMANDS_QUEUE_URL",
    "GATEWAY_EVENTS_QUEUE_URL",
    "CUSTOMER_EVENTS_TOPIC_ARN",
    "TRANSACTION_EVENTS_TOPIC_ARN",
    "CUSTOMER_QUERIES_QUEUE_URL",
    "TRANSACTION_QUERIES_QUEUE_URL",
    "GATEWAY_REPLIES_QUEUE_URL",
    "STATUS_EVENTS_TOPIC_ARN",
    "WEBHOOK_DELIVERIES_QUEUE_URL",
    "RELAY_ENABLED",
    "BONUS_POINTS",
    "RUST_LOG",
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// How to start the processes. [`Layout::default`] is what tests want: one instance of each on
/// fresh SQLite files, consumers long-polling 1 s, quick relays and gauges, the operator token
/// [`OPERATOR_TOKEN`], against the emulator at `AWS_ENDPOINT_URL`.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Spans exported to [`Processes::collector`].
    pub traces: bool,
    pub receive_wait_seconds: u32,
    pub backend: Backend,
    /// Instances of each service (more than one shares a database: [`Backend::Postgres`] only).
    pub instances: usize,
    /// The emulator, for the services and for the harness's own bus.
    pub endpoint: String,
    pub stack: MessagingParams,
    /// The server the PostgreSQL databases are created on (an admin URL).
    pub postgres_admin_url: String,
    /// Where the SQLite files and a log file per process are kept; without one, SQLite goes to
    /// temporary directories and the output is only kept in memory.
    pub dir: Option<PathBuf>,
    /// Where the binaries are (default: [`binaries`]).
    pub bin_dir: Option<PathBuf>,
    /// Variables every service gets, beyond those the harness sets.
    pub env: Vec<(String, String)>,
    /// Variables one service gets (by index: [`GATEWAY`], [`CUSTOMER`], [`TRANSACTION`]).
    pub service_env: Vec<(usize, String, String)>,
    /// How long a started service may take to become ready.
    pub ready_within: Duration,
}

impl Default for Layout {
    fn default() -> Self {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        Self {
            traces: false,
            receive_wait_seconds: 1,
            backend: Backend::Sqlite,
            instances: 1,
            endpoint: crate::emulator_endpoint(),
            stack: TestStack::params(),
            postgres_admin_url: admin_url(),
            dir: None,
            bin_dir: None,
            env: pairs(&[
                ("RELAY_INTERVAL_MS", "200"),
                ("GAUGES_LOG_SECONDS", "1"),
                ("RUST_LOG", "info"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ]),
            // Confirmation by e-mail off, explicitly: the suites that run the binaries are about
            // the saga's machinery. A layout asks for it with a later `EMAIL_CONFIRMATION` entry.
            service_env: vec![
                (GATEWAY, "OPERATOR_TOKEN".to_owned(), OPERATOR_TOKEN.to_owned()),
                (GATEWAY, "EMAIL_CONFIRMATION".to_owned(), "off".to_owned()),
            ],
            ready_within: DEADLINE,
        }
    }
}

/// The services' processes and everything they stand on. Dropping it kills the processes, then
/// deletes the stack and the databases.
pub struct Processes {
    /// Instance `k` of service `i` is `services[i + 3 * k]`.
    pub services: Vec<Process>,
    pub collector: Collector,
    _receiver: Option<AbortOnDrop>,
    pub http: reqwest::Client,
    pub bus: Bus,
    pub stack: TestStack,
    /// The databases of the gateway, the customer-api and the transaction-api, in that order.
    pub dbs: Vec<TestDb>,
    ready_within: Duration,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Processes {
    /// One instance of each service on SQLite; spans exported to [`Processes::collector`] when
    /// `traces`; consumers long-poll for `receive_wait_seconds`. Panics when it cannot start.
    pub async fn start(traces: bool, receive_wait_seconds: u32) -> Self {
        Self::start_with(Layout {
            traces,
            receive_wait_seconds,
            ..Layout::default()
        })
        .await
        .expect("the services start")
    }

    /// Deploys the stack, creates the databases, starts every instance and returns once all
    /// answer `/ready`.
    pub async fn start_with(layout: Layout) -> anyhow::Result<Self> {
        let instances = layout.instances.max(1);
        anyhow::ensure!(
            instances == 1 || layout.backend == Backend::Postgres,
            "several instances share a database: PostgreSQL only"
        );
        let bus = crate::bus_at(&layout.endpoint).await;
        let stack = TestStack::create(&bus, layout.stack.clone())
            .await
            .context("cannot deploy the messaging stack")?;
        let collector = Collector::default();
        let (otlp, receiver) = if layout.traces {
            let (endpoint, task) = collector.serve().await?;
            (Some(endpoint), Some(AbortOnDrop(task)))
        } else {
            (None, None)
        };
        let mut dbs = Vec::new();
        for name in NAMES {
            let label = name.replace('-', "_");
            dbs.push(match (layout.backend, &layout.dir) {
                (Backend::Sqlite, Some(dir)) => TestDb::sqlite_in(dir, &label),
                (Backend::Sqlite, None) => TestDb::new(Backend::Sqlite, &label).await,
                (Backend::Postgres, _) => TestDb::postgres_on(&layout.postgres_admin_url, &label).await?,
            });
        }
        let bin_dir = layout.bin_dir.clone().unwrap_or_else(binaries);
        for name in NAMES {
            let binary = bin_dir.join(name);
            anyhow::ensure!(
                binary.is_file(),
                "{} not found: run `cargo build --bins` first",
                binary.display()
            );
        }
        let ports: Vec<u16> = (0..3 * instances).map(|_| free_port()).collect();
        let services = (0..3 * instances)
            .map(|index| {
                let (i, k) = (index % 3, index / 3);
                let fixed = [
                    ("AWS_ENDPOINT_URL", layout.endpoint.clone()),
                    ("AWS_REGION", "us-east-1".to_owned()),
                    ("AWS_ACCESS_KEY_ID", "test".to_owned()),
                    ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
                    ("TOPOLOGY_STACK", stack.name.clone()),
                    ("RECEIVE_WAIT_SECONDS", layout.receive_wait_seconds.to_string()),
                    ("LOG_FORMAT", "json".to_owned()),
                    ("HTTP_ADDR", format!("127.0.0.1:{}", ports[index])),
                    ("DATABASE_URL", dbs[i].url.clone()),
                ];
                let mut process = Process::new(NAMES[i], bin_dir.join(NAMES[i]))
                    .serving_on(ports[index])
                    .envs(fixed)
                    .envs(layout.env.iter().cloned())
                    .envs(
                        layout
                            .service_env
                            .iter()
                            .filter(|(service, _, _)| *service == i)
                            .map(|(_, k, v)| (k.clone(), v.clone())),
                    );
                for var in OWNED_VARS {
                    process = process.env_remove(var);
                }
                if i == GATEWAY {
                    // Tests and load come from one address, faster than a person submits.
                    process = process.env("RATE_LIMIT_PER_MINUTE", "0");
                }
                if let Some(endpoint) = &otlp {
                    process = process.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
                }
                if let Some(dir) = &layout.dir {
                    let file = match k {
                        0 => format!("{}.log", NAMES[i]),
                        _ => format!("{}-{}.log", NAMES[i], k + 1),
                    };
                    process = process.log_file(dir.join(file));
                }
                process
            })
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            // Below the services' 10 s idle limit, so a pooled connection is never closed under
            // a request.
            .pool_idle_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()?;
        let mut processes = Self {
            services,
            collector,
            _receiver: receiver,
            http,
            bus,
            stack,
            dbs,
            ready_within: layout.ready_within,
        };
        for k in 0..instances {
            for i in [CUSTOMER, TRANSACTION, GATEWAY] {
                processes.services[i + 3 * k].start()?;
            }
        }
        for service in &mut processes.services {
            service.wait_ready(&processes.http, layout.ready_within).await?;
        }
        Ok(processes)
    }

    /// The first instance of each service.
    pub fn gateway(&self) -> &Process {
        &self.services[GATEWAY]
    }

    pub fn customer(&self) -> &Process {
        &self.services[CUSTOMER]
    }

    pub fn transaction(&self) -> &Process {
        &self.services[TRANSACTION]
    }

    /// Every gateway instance, the first one first.
    pub fn gateways(&self) -> Vec<&Process> {
        self.services.iter().skip(GATEWAY).step_by(3).collect()
    }

    /// Starts service instance `index` again; returns how long it took to be ready.
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<Duration> {
        self.services[index].start()?;
        self.services[index].wait_ready(&self.http, self.ready_within).await
    }

    /// Submits an enrollment and waits for its terminal status; returns the id and the answer.
    pub async fn enroll(&self, email: &str, headers: &[(&str, &str)]) -> (String, reqwest::Response) {
        let mut request = self
            .http
            .post(self.gateway().url("/api/enrollments"))
            .json(&json!({"name": "Ada Lovelace", "email": email}));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 202);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let url = self.gateway().url(&location);
        let id = eventually("the saga to finish", DEADLINE, async || {
            let body: Option<Value> = match self.http.get(&url).send().await {
                Ok(answer) => answer.json().await.ok(),
                Err(_) => None,
            };
            let status = body.as_ref().and_then(|b| b["status"].as_str()).map(str::to_owned);
            let id = body
                .as_ref()
                .and_then(|b| b["id"].as_str())
                .unwrap_or_default()
                .to_owned();
            Poll::ready_if(
                status.as_deref().is_some_and(|s| TERMINAL.contains(&s)),
                id,
                body.map(Shown),
            )
        })
        .await
        .unwrap();
        (id, response)
    }

    /// Submits an enrollment to `gateway` (any gateway instance) without waiting for it.
    pub async fn submit(&self, gateway: &Process, email: &str) -> String {
        let response = self
            .http
            .post(gateway.url("/api/enrollments"))
            .json(&json!({"name": "Ada Lovelace", "email": email}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// A service's `/metrics`, as the operator.
    pub async fn metrics(&self, service: &Process) -> String {
        self.http
            .get(service.url("/metrics"))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// SIGTERM to every instance, each given 20 s to finish.
    pub async fn stop(mut self) {
        for service in &mut self.services {
            let _ = service.terminate(Duration::from_secs(20)).await;
        }
    }

    /// `kill -9` of every instance, then the stack deleted (saying so when it cannot be).
    pub async fn teardown(mut self) -> anyhow::Result<()> {
        for service in &mut self.services {
            service.kill().await?;
        }
        let Self { stack, .. } = self;
        stack.delete().await.context("cannot delete the messaging stack")
    }
}
