//! What an operator sees, from the three real binaries (not in-process: each is its own
//! `service.name`, configured by the standard `OTEL_*` variables as in production) on a real
//! LocalStack:
//! - one enrollment is one trace: the spans the services export over OTLP (to a receiver in
//!   this test) share the client's trace id and form one parent chain across the bus, in causal
//!   order;
//! - their JSON log lines carry that trace id, and the access log line says who asked what;
//! - `/metrics` of each service counts what happened, and the `gauges` line reports the backlog.

mod support;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Backend, OPERATOR_TOKEN, TestDb, TestStack, eventually};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Spans received over OTLP/HTTP (JSON), flattened: one object per span with its service.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Value>>>);

impl Collector {
    fn spans(&self) -> Vec<Value> {
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

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key)?["value"]["stringValue"].as_str()
}

/// A free loopback port (bound and released; the service binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The three service binaries, built by this test run's cargo when they are missing.
fn binaries() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_gateway")).parent().unwrap().to_owned();
    if !dir.join("customer-api").exists() || !dir.join("transaction-api").exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "customer-api", "-p", "transaction-api", "--bins"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the service binaries failed");
    }
    dir
}

/// One service binary, its JSON log lines collected.
struct Service {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Service {
    fn logs(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }
}

/// The whole system as separate processes, exporting spans to `collector`.
struct Processes {
    gateway: Service,
    customer: Service,
    transaction: Service,
    receiver: tokio::task::JoinHandle<()>,
    collector: Collector,
    http: reqwest::Client,
    _stack: TestStack,
    _dbs: Vec<TestDb>,
}

impl Processes {
    async fn start() -> Self {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let otlp = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(collector.clone());
        let receiver = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let bus = support::bus().await;
        let stack = TestStack::deploy(&bus).await;
        let dir = binaries();
        let mut dbs = Vec::new();
        for name in ["customer-api", "transaction-api", "gateway"] {
            dbs.push(TestDb::new(Backend::Sqlite, name).await);
        }
        let (customer_port, transaction_port, gateway_port) = (free_port(), free_port(), free_port());
        let spawn = |name: &str, db: &TestDb, port: u16, extra: &[(&str, String)]| {
            let mut command = Command::new(dir.join(name));
            command
                .env("DATABASE_URL", &db.url)
                .env("TOPOLOGY_STACK", &stack.name)
                .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
                .env("RECEIVE_WAIT_SECONDS", "1")
                .env("RELAY_INTERVAL_MS", "200")
                .env("LOG_FORMAT", "json")
                .env("GAUGES_LOG_SECONDS", "1")
                .env("RUST_LOG", "info")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
                .env("OTEL_BSP_SCHEDULE_DELAY", "100")
                .env_remove("OTEL_SERVICE_NAME")
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
        let customer = spawn("customer-api", &dbs[0], customer_port, &[]);
        let transaction = spawn("transaction-api", &dbs[1], transaction_port, &[]);
        let gateway = spawn(
            "gateway",
            &dbs[2],
            gateway_port,
            &[
                ("OPERATOR_TOKEN", OPERATOR_TOKEN.to_owned()),
                ("RATE_LIMIT_PER_MINUTE", "0".to_owned()),
                ("CUSTOMER_API_URL", format!("http://127.0.0.1:{customer_port}")),
                ("TRANSACTION_API_URL", format!("http://127.0.0.1:{transaction_port}")),
            ],
        );
        let processes = Self {
            gateway,
            customer,
            transaction,
            receiver,
            collector,
            http: reqwest::Client::new(),
            _stack: stack,
            _dbs: dbs,
        };
        for service in [&processes.gateway, &processes.customer, &processes.transaction] {
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

    fn url(&self, service: &Service, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", service.port)
    }

    /// Submits an enrollment and waits for its terminal status; returns the id and the body.
    async fn enroll(&self, email: &str, headers: &[(&str, &str)]) -> (String, reqwest::Response) {
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
                support::TERMINAL.contains(&body["status"].as_str()?).then_some(())
            }
        })
        .await
        .expect("saga finished");
        (id, response)
    }

    async fn metrics(&self, service: &Service) -> String {
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

    async fn stop(mut self) {
        for service in [&mut self.gateway, &mut self.customer, &mut self.transaction] {
            if let Some(pid) = service.child.id() {
                let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(20), service.child.wait()).await;
        }
        self.receiver.abort();
    }
}

/// The value of the sample `name{labels}` in Prometheus text, if present.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_enrollment_is_one_trace_across_the_three_services_and_its_logs_join() {
    let system = Processes::start().await;
    let client_trace = uuid::Uuid::new_v4().simple().to_string();
    let client_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let traceparent = format!("00-{client_trace}-{client_span}-01");
    let email = format!("trace-{}@example.com", uuid::Uuid::new_v4().simple());
    let (id, response) = system
        .enroll(
            &email,
            &[("traceparent", &traceparent), ("x-request-id", "req-observability-1")],
        )
        .await;
    assert_eq!(response.headers()["x-request-id"], "req-observability-1");

    // The hops a completed saga makes, as (service, span name), in causal order.
    let hops = [
        ("gateway", "POST /api/enrollments"),
        ("gateway", "outbox enqueue Enroll"),
        ("gateway", "publish customer-commands"),
        ("customer-api", "process customer-commands"),
        ("customer-api", "outbox enqueue CustomerEnrolled"),
        ("customer-api", "publish customer-events"),
        ("gateway", "process gateway-events"),
        ("gateway", "outbox enqueue PostBonusPoints"),
        ("gateway", "publish transaction-commands"),
        ("transaction-api", "process transaction-commands"),
        ("transaction-api", "outbox enqueue BonusPointsPosted"),
        ("transaction-api", "publish transaction-events"),
        ("gateway", "process gateway-events"),
    ];
    // Wait until the terminal hop's span has been exported, then read the chain up from it.
    let chain = eventually("the saga's spans to arrive over OTLP", || {
        let spans = system.collector.spans();
        let client_trace = client_trace.clone();
        let client_span = client_span.to_owned();
        async move {
            let trace: Vec<Value> = spans
                .into_iter()
                .filter(|s| s["traceId"] == client_trace.as_str())
                .collect();
            let terminal = trace
                .iter()
                .find(|s| s["service"] == "gateway" && attribute(s, "message_type") == Some("BonusPointsPosted"))?;
            let by_id: HashMap<&str, &Value> = trace.iter().map(|s| (s["spanId"].as_str().unwrap_or(""), s)).collect();
            let mut chain = vec![terminal.clone()];
            let mut parent = terminal["parentSpanId"].as_str().unwrap_or("");
            while let Some(span) = by_id.get(parent) {
                chain.push((*span).clone());
                parent = span["parentSpanId"].as_str().unwrap_or("");
            }
            chain.reverse();
            // Complete once the root is reached: the span whose parent is the client's.
            (chain[0]["parentSpanId"] == client_span.as_str()).then_some(chain)
        }
    })
    .await
    .unwrap_or_else(|| {
        let spans = system.collector.spans();
        let names: Vec<String> = spans
            .iter()
            .map(|s| {
                format!(
                    "{} {} {} <- {}",
                    s["service"], s["name"], s["spanId"], s["parentSpanId"]
                )
            })
            .collect();
        panic!(
            "no complete chain in trace {client_trace}; spans received:\n{}",
            names.join("\n")
        )
    });

    // One trace, the client's; spans from all three services.
    let services: BTreeSet<&str> = chain.iter().filter_map(|s| s["service"].as_str()).collect();
    assert_eq!(services, BTreeSet::from(["customer-api", "gateway", "transaction-api"]));
    // The hops appear in the chain in causal order (the chain may hold spans between them,
    // such as the handler's own).
    let names: Vec<(String, String)> = chain
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap().to_owned(),
                s["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut position = 0;
    for (service, name) in hops {
        // A consumer's span names its queue, which carries the stack's prefix.
        let matches = |n: &str| {
            n == name
                || name
                    .strip_prefix("process ")
                    .is_some_and(|q| n.ends_with(&format!("-{q}")))
        };
        let found = names[position..].iter().position(|(s, n)| s == service && matches(n));
        let Some(offset) = found else {
            panic!("hop {service} `{name}` missing after position {position} in the chain {names:#?}");
        };
        position += offset + 1;
    }
    // Causal order in time as well: every span starts no earlier than its parent.
    let starts: Vec<u128> = chain
        .iter()
        .map(|s| {
            s["startTimeUnixNano"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "start times {starts:?}");

    // Every line is JSON.
    for service in [&system.gateway, &system.customer, &system.transaction] {
        for line in service.logs() {
            assert!(line.is_object(), "not a JSON log line: {line}");
        }
    }
    // Logs join: every line that names this enrollment carries the trace id.
    let mut joined = 0;
    for service in [&system.gateway, &system.customer, &system.transaction] {
        for line in service.logs() {
            let names_it = line["correlation_id"] == id.as_str() || line["enrollment_id"] == id.as_str();
            if names_it {
                assert_eq!(line["trace_id"], client_trace.as_str(), "{line}");
                assert!(line["span_id"].as_str().is_some_and(|s| s.len() == 16), "{line}");
                joined += 1;
            }
        }
    }
    assert!(joined >= 6, "only {joined} log lines named the enrollment");
    // The access log line of the submission, at INFO.
    let access = system
        .gateway
        .logs()
        .into_iter()
        .find(|l| l["message"] == "request" && l["request_id"] == "req-observability-1")
        .expect("the access log line");
    assert_eq!(access["level"], "INFO");
    assert_eq!(access["method"], "POST");
    assert_eq!(access["route"], "/api/enrollments");
    assert_eq!(access["status"], 202);
    assert!(access["latency_ms"].as_f64().is_some(), "{access}");
    assert_eq!(access["trace_id"], client_trace.as_str());
    // And the saga's end.
    let finished = system
        .gateway
        .logs()
        .into_iter()
        .find(|l| l["message"] == "saga finished" && l["enrollment_id"] == id.as_str())
        .expect("the saga finished line");
    assert_eq!(finished["outcome"], "completed");
    assert!(finished["duration_ms"].as_u64().is_some(), "{finished}");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let system = Processes::start().await;
    let n = 3;
    for _ in 0..n {
        let email = format!("metrics-{}@example.com", uuid::Uuid::new_v4().simple());
        system.enroll(&email, &[]).await;
    }
    let gateway = system.metrics(&system.gateway).await;
    assert_eq!(
        sample(&gateway, r#"saga_sagas{status="completed"}"#),
        Some(f64::from(n)),
        "{gateway}"
    );
    assert_eq!(sample(&gateway, r#"saga_sagas{status="rolled_back"}"#), Some(0.0));
    assert_eq!(sample(&gateway, "saga_sagas_stalled"), Some(0.0));
    assert_eq!(
        sample(&gateway, r#"saga_duration_seconds_count{outcome="completed"}"#),
        Some(f64::from(n))
    );
    let queue = |name: &str| system._stack.output(name).rsplit('/').next().unwrap().to_owned();
    let events = queue("GatewayEventsQueueUrl");
    for kind in ["CustomerEnrolled", "BonusPointsPosted"] {
        let labels = format!(r#"saga_messages_total{{queue="{events}",type="{kind}",outcome="handled"}}"#);
        assert_eq!(sample(&gateway, &labels), Some(f64::from(n)), "{labels}\n{gateway}");
    }
    assert_eq!(
        sample(
            &gateway,
            r#"saga_http_requests_total{method="POST",route="/api/enrollments",status="202"}"#
        ),
        Some(f64::from(n))
    );
    assert!(
        gateway.contains(r#"saga_db_connections{pool="http",state="in_use"}"#),
        "{gateway}"
    );
    assert!(
        gateway.contains("saga_relay_publish_duration_seconds_count"),
        "{gateway}"
    );
    // Every outbox row went out: the backlog returns to zero on each service.
    for service in [&system.gateway, &system.customer, &system.transaction] {
        let url = system.url(service, "/metrics");
        let http = system.http.clone();
        eventually("the outbox backlog to drain", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let text = http
                    .get(&url)
                    .bearer_auth(OPERATOR_TOKEN)
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                (sample(&text, "saga_outbox_pending") == Some(0.0)
                    && sample(&text, "saga_outbox_oldest_pending_age_seconds") == Some(0.0))
                .then_some(())
            }
        })
        .await
        .expect("backlog drained");
    }
    let customer = system.metrics(&system.customer).await;
    let commands = queue("CustomerCommandsQueueUrl");
    let labels = format!(r#"saga_messages_total{{queue="{commands}",type="Enroll",outcome="handled"}}"#);
    assert_eq!(sample(&customer, &labels), Some(f64::from(n)), "{customer}");
    // The gateway's /metrics is an operator route.
    let anonymous = system
        .http
        .get(system.url(&system.gateway, "/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // The gauges line, every GAUGES_LOG_SECONDS: the backlog, and on the gateway the stalled sagas.
    let gauges = eventually("a gauges line after the sagas", || {
        let logs = system.gateway.logs();
        async move {
            logs.into_iter()
                .rev()
                .find(|l| l["message"] == "gauges" && l["outbox_pending"] == 0)
        }
    })
    .await
    .expect("gauges line");
    assert_eq!(gauges["service"], "gateway");
    assert_eq!(gauges["stalled_sagas"], 0);
    assert!(gauges["outbox_oldest_age_seconds"].is_number(), "{gauges}");
    system.stop().await;
}
