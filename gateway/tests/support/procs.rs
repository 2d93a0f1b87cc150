//! The whole system as separate processes: the three real service binaries, each with its own
//! database (SQLite, or PostgreSQL with several instances per service sharing it) and its JSON
//! log lines collected, on an isolated copy of the messaging stack, optionally exporting spans to
//! an OTLP receiver in this process. For what only real processes show: each binary's
//! `service.name`, its memory and CPU, several instances of one service.

use super::{Backend, OPERATOR_TOKEN, TestDb, TestStack, eventually};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Spans received over OTLP/HTTP (JSON), flattened: one object per span with its service.
#[derive(Clone, Default)]
pub struct Collector(Arc<Mutex<Vec<Value>>>);

impl Collector {
    pub fn spans(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }
}

async fn receive(State(collector): State<Collector>, body: Bytes) -> &'static str {
    let Ok(export) = serde_json::from_slice::<Value>(&body) else {
        return "{}";
    };
    let mut spans = collector.0.lock().unwrap();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or("")
            .to_owned();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let mut span = span.clone();
                span["service"] = Value::String(service.clone());
                spans.push(span);
            }
        }
    }
    "{}"
}

/// A free loopback port (bound and released; the service binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The three service binaries, built by this test run's cargo when they are missing.
pub fn binaries() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_gateway")).parent().unwrap().to_owned();
    if !dir.join("customer-api").exists() || !dir.join("transaction-api").exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "-p", "customer-api", "-p", "transaction-api", "--bins"]);
        // `cargo bench` runs against release binaries: build the others the same way.
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building the service binaries failed");
    }
    dir
}

/// One service binary, its JSON log lines collected.
pub struct Service {
    pub child: Child,
    pub port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Service {
    pub fn logs(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }
}

/// How to start the processes.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Spans exported to [`Processes::collector`].
    pub traces: bool,
    pub receive_wait_seconds: i32,
    pub backend: Backend,
    /// Instances of each service (more than one needs [`Backend::Postgres`]).
    pub instances: usize,
}

/// The whole system as separate processes, exporting spans to `collector`.
pub struct Processes {
    /// The first instance of each service.
    pub gateway: Service,
    pub customer: Service,
    pub transaction: Service,
    /// Further instances, by service name.
    pub more: Vec<(&'static str, Service)>,
    receiver: tokio::task::JoinHandle<()>,
    pub collector: Collector,
    pub http: reqwest::Client,
    pub stack: TestStack,
    /// The databases of the customer-api, the transaction-api and the gateway, in that order.
    pub dbs: Vec<TestDb>,
}

impl Processes {
    /// One instance of each service on SQLite; with spans exported to [`Processes::collector`]
    /// when `traces`; consumers long-poll for `receive_wait_seconds`.
    pub async fn start(traces: bool, receive_wait_seconds: i32) -> Self {
        Self::start_with(Layout {
            traces,
            receive_wait_seconds,
            backend: Backend::Sqlite,
            instances: 1,
        })
        .await
    }

    pub async fn start_with(layout: Layout) -> Self {
        let Layout {
            traces,
            receive_wait_seconds,
            backend,
            instances,
        } = layout;
        assert!(
            instances == 1 || matches!(backend, Backend::Postgres),
            "several instances share a database: PostgreSQL only"
        );
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let otlp = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(collector.clone());
        let receiver = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let bus = super::bus().await;
        let stack = TestStack::deploy(&bus).await;
        let dir = binaries();
        let mut dbs = Vec::new();
        for name in ["customer-api", "transaction-api", "gateway"] {
            dbs.push(TestDb::new(backend, &name.replace('-', "_")).await);
        }
        let (customer_port, transaction_port, gateway_port) = (free_port(), free_port(), free_port());
        let spawn = |name: &str, db: &TestDb, port: u16, extra: &[(&str, String)]| {
            let mut command = Command::new(dir.join(name));
            command
                .env("DATABASE_URL", &db.url)
                .env("TOPOLOGY_STACK", &stack.name)
                .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
                .env("RECEIVE_WAIT_SECONDS", receive_wait_seconds.to_string())
                .env("RELAY_INTERVAL_MS", "200")
                .env("LOG_FORMAT", "json")
                .env("GAUGES_LOG_SECONDS", "1")
                .env("RUST_LOG", "info")
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
                .env("OTEL_BSP_SCHEDULE_DELAY", "100")
                .env_remove("OTEL_SERVICE_NAME")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            for (key, default) in [
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
            ] {
                command.env(key, std::env::var(key).unwrap_or_else(|_| default.to_owned()));
            }
            if traces {
                command.env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp);
            }
            let mut child = command.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
            let lines = Arc::new(Mutex::new(Vec::new()));
            let stdout = child.stdout.take().unwrap();
            let sink = lines.clone();
            let echo = std::env::var_os("TEST_LOG").is_some();
            let label = name.to_owned();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if echo {
                        eprintln!("[{label}] {line}");
                    }
                    // A line that is not JSON is kept as a string, which fails the tests that read it.
                    let value = serde_json::from_str::<Value>(&line).unwrap_or(Value::String(line));
                    sink.lock().unwrap().push(value);
                }
            });
            Service { child, port, lines }
        };
        let gateway_env = [
            ("OPERATOR_TOKEN", OPERATOR_TOKEN.to_owned()),
            ("RATE_LIMIT_PER_MINUTE", "0".to_owned()),
            ("CUSTOMER_API_URL", format!("http://127.0.0.1:{customer_port}")),
            ("TRANSACTION_API_URL", format!("http://127.0.0.1:{transaction_port}")),
        ];
        let customer = spawn("customer-api", &dbs[0], customer_port, &[]);
        let transaction = spawn("transaction-api", &dbs[1], transaction_port, &[]);
        let gateway = spawn("gateway", &dbs[2], gateway_port, &gateway_env);
        let mut more = Vec::new();
        for _ in 1..instances {
            more.push(("customer-api", spawn("customer-api", &dbs[0], free_port(), &[])));
            more.push(("transaction-api", spawn("transaction-api", &dbs[1], free_port(), &[])));
            more.push(("gateway", spawn("gateway", &dbs[2], free_port(), &gateway_env)));
        }
        let processes = Self {
            gateway,
            customer,
            transaction,
            more,
            receiver,
            collector,
            http: reqwest::Client::new(),
            stack,
            dbs,
        };
        for service in processes.all() {
            let url = format!("http://127.0.0.1:{}/ready", service.port);
            let http = processes.http.clone();
            eventually("a service to be ready", || {
                let (http, url) = (http.clone(), url.clone());
                async move { http.get(&url).send().await.ok().filter(|r| r.status().is_success()) }
            })
            .await
            .expect("service ready");
        }
        processes
    }

    /// Every instance of every service.
    pub fn all(&self) -> impl Iterator<Item = &Service> {
        [&self.gateway, &self.customer, &self.transaction]
            .into_iter()
            .chain(self.more.iter().map(|(_, s)| s))
    }

    /// Every gateway instance, the first one first.
    pub fn gateways(&self) -> Vec<&Service> {
        std::iter::once(&self.gateway)
            .chain(self.more.iter().filter(|(n, _)| *n == "gateway").map(|(_, s)| s))
            .collect()
    }

    pub fn url(&self, service: &Service, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", service.port)
    }

    /// Submits an enrollment and waits for its terminal status; returns the id and the body.
    pub async fn enroll(&self, email: &str, headers: &[(&str, &str)]) -> (String, reqwest::Response) {
        let mut request = self
            .http
            .post(self.url(&self.gateway, "/api/enrollments"))
            .json(&json!({"name": "Ada Lovelace", "email": email}));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 202);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let id = location.rsplit('/').next().unwrap().to_owned();
        let url = self.url(&self.gateway, &location);
        let http = self.http.clone();
        eventually("the saga to finish", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let body: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                super::TERMINAL.contains(&body["status"].as_str()?).then_some(())
            }
        })
        .await
        .expect("saga finished");
        (id, response)
    }

    /// Submits an enrollment to `gateway` (any gateway instance) without waiting for it.
    pub async fn submit(&self, gateway: &Service, email: &str) -> String {
        let response = self
            .http
            .post(self.url(gateway, "/api/enrollments"))
            .json(&json!({"name": "Ada Lovelace", "email": email}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn metrics(&self, service: &Service) -> String {
        self.http
            .get(self.url(service, "/metrics"))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        let more = self.more.iter_mut().map(|(_, s)| s);
        for service in [&mut self.gateway, &mut self.customer, &mut self.transaction]
            .into_iter()
            .chain(more)
        {
            if let Some(pid) = service.child.id() {
                let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(20), service.child.wait()).await;
        }
        self.receiver.abort();
    }
}
