//! The system under test in this process: the three real services, each with a fresh database,
//! wired through an isolated copy of the messaging stack on a real LocalStack.

use crate::db::{Backend, TestDb};
use crate::poll::{Poll, Shown, eventually};
use crate::stack::TestStack;
use crate::{DEADLINE, OPERATOR_TOKEN};
use serde_json::{Value, json};
use sqlx::AnyPool;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utility::messaging::bus::Bus;
use utility::runtime::config::CommonConfig;

/// A gateway configuration for tests: operator routes on with [`OPERATOR_TOKEN`], no rate limit
/// (tests submit quickly from one address; the limit has tests of its own), and
/// `EMAIL_CONFIRMATION=off`, explicitly: most tests are about the saga's machinery, not about a
/// person following a mailed link. The confirmation tests turn it on
/// ([`Options::email_confirmation`], or the field here).
pub fn gateway_config() -> gateway::Config {
    gateway::Config {
        operator_token: Some(utility::runtime::config::Secret::new(OPERATOR_TOKEN.to_owned())),
        rate_limit_per_minute: 0,
        email_confirmation: gateway::EmailConfirmation::Off,
        ..gateway::Config::default()
    }
}

/// A service running in this process.
pub struct Running {
    pub port: u16,
    pub pool: AnyPool,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Graceful stop, as on SIGTERM; returns what the service returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("service did not stop within 30 s")
            .expect("service task panicked")
    }

    /// Abrupt stop, as on `kill -9`: nothing after this point runs.
    pub async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

pub fn common_config(db: &TestDb, stack: &TestStack) -> CommonConfig {
    let mut common = CommonConfig::new(([127, 0, 0, 1], 0).into(), db.url.clone());
    common.receive_wait_seconds = 1;
    common.relay_interval_ms = 200;
    common.topology.topology_stack = stack.name.clone();
    common
}

#[derive(Debug, Clone)]
pub struct Options {
    pub bonus_points: i64,
    pub bonus_budget_points: Option<i64>,
    pub gateway_relay: bool,
    pub stall_after_seconds: u64,
    /// Long-poll wait of every consumer (tests: 1 s, so stops and restarts are quick).
    pub receive_wait_seconds: i32,
    /// The customer-api's `EMAIL_SUBADDRESSES`.
    pub email_subaddresses: utility::domain::Subaddresses,
    /// The gateway's `EMAIL_CONFIRMATION`: `off` unless a test asks for it ([`gateway_config`]).
    pub email_confirmation: gateway::EmailConfirmation,
    /// The gateway's `CONFIRMATION_TTL_SECONDS`.
    pub confirmation_ttl_seconds: u64,
    /// Callbacks on, to receivers on this machine: the gateway signs with [`WEBHOOK_TEST_KEY`],
    /// reaches 127.0.0.1 over plain http, and retries after tens of milliseconds.
    pub callbacks: bool,
}

/// The webhook signing key of [`Options::callbacks`] (a test key, published by the gateway).
pub const WEBHOOK_TEST_KEY: &str = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The gateway's settings for callbacks to receivers on this machine ([`Options::callbacks`]).
pub fn with_test_callbacks(config: gateway::Config) -> gateway::Config {
    gateway::Config {
        webhook_signing_keys: Some(utility::runtime::config::Secret::new(WEBHOOK_TEST_KEY.to_owned())),
        callback_allow_http: true,
        callback_allowed_hosts: "127.0.0.1".parse().expect("a host list"),
        webhook_retry_base_ms: 50,
        webhook_poll_ms: 50,
        ..config
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bonus_points: 500,
            bonus_budget_points: None,
            gateway_relay: true,
            stall_after_seconds: 120,
            receive_wait_seconds: 1,
            email_subaddresses: utility::domain::Subaddresses::default(),
            email_confirmation: gateway::EmailConfirmation::Off,
            confirmation_ttl_seconds: gateway::Config::default().confirmation_ttl_seconds,
            callbacks: false,
        }
    }
}

/// The three services and everything they stand on.
pub struct System {
    pub backend: Backend,
    pub options: Options,
    pub bus: Bus,
    pub http: reqwest::Client,
    pub gateway: Option<Running>,
    pub customer: Option<Running>,
    pub transaction: Option<Running>,
    transaction_port: Option<u16>,
    pub gateway_db: TestDb,
    pub customer_db: TestDb,
    pub transaction_db: TestDb,
    // Dropped last: the services must be gone before their queues are.
    pub stack: TestStack,
}

impl System {
    pub async fn start(backend: Backend, options: Options) -> Self {
        crate::init_logs();
        let bus = crate::bus().await;
        let stack = TestStack::deploy(&bus).await;
        let gateway_db = TestDb::new(backend, "gateway").await;
        let customer_db = TestDb::new(backend, "customer").await;
        let transaction_db = TestDb::new(backend, "transaction").await;

        let mut system = Self {
            backend,
            options: options.clone(),
            bus,
            // Below the services' 10 s idle limit, so a pooled connection is never closed under
            // a request.
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
            gateway: None,
            customer: None,
            transaction: None,
            transaction_port: None,
            gateway_db,
            customer_db,
            transaction_db,
            stack,
        };
        system.start_customer().await;
        system.start_transaction(options.bonus_budget_points).await;
        system.start_gateway(options.gateway_relay).await;
        system
    }

    /// (Re)starts the customer-api on its existing database.
    pub async fn start_customer(&mut self) {
        let customer = customer_api::Application::build(
            customer_api::Config {
                common: CommonConfig {
                    receive_wait_seconds: self.options.receive_wait_seconds,
                    ..common_config(&self.customer_db, &self.stack)
                },
                email_subaddresses: self.options.email_subaddresses,
                ..customer_api::Config::default()
            },
            self.bus.clone(),
        )
        .await
        .expect("customer-api starts");
        self.customer = Some(spawn(customer.port(), customer.pool().clone(), |s| {
            customer.run_until_stopped(s)
        }));
    }

    /// One more gateway instance on the same database and stack, its relay off (the first
    /// one's publishes): what `INSTANCES=3` runs, in this process.
    pub async fn another_gateway(&self) -> Running {
        self.build_gateway(false).await
    }

    /// A gateway instance on the system's database and stack, started.
    async fn build_gateway(&self, relay: bool) -> Running {
        let mut common = common_config(&self.gateway_db, &self.stack);
        common.receive_wait_seconds = self.options.receive_wait_seconds;
        common.relay_enabled = relay;
        let config = gateway::Config {
            common,
            stall_after_seconds: self.options.stall_after_seconds,
            email_confirmation: self.options.email_confirmation,
            confirmation_ttl_seconds: self.options.confirmation_ttl_seconds,
            ..gateway_config()
        };
        let config = if self.options.callbacks {
            with_test_callbacks(config)
        } else {
            config
        };
        let gateway = gateway::Application::build(config, self.bus.clone())
            .await
            .expect("gateway starts");
        spawn(gateway.port(), gateway.pool().clone(), |s| gateway.run_until_stopped(s))
    }

    /// (Re)starts the transaction-api on its existing database with the given budget.
    /// A restart keeps the previous port, so the gateway's proxy still reaches it.
    pub async fn start_transaction(&mut self, bonus_budget_points: Option<i64>) {
        let mut common = common_config(&self.transaction_db, &self.stack);
        common.receive_wait_seconds = self.options.receive_wait_seconds;
        if let Some(port) = self.transaction_port {
            common.http_addr.set_port(port);
        }
        let transaction = transaction_api::Application::build(
            transaction_api::Config {
                common,
                bonus_points: self.options.bonus_points,
                bonus_budget_points,
            },
            self.bus.clone(),
        )
        .await
        .expect("transaction-api starts");
        let port = transaction.port();
        self.transaction_port = Some(port);
        let pool = transaction.pool().clone();
        self.transaction = Some(spawn(port, pool, |s| transaction.run_until_stopped(s)));
    }

    /// (Re)starts the gateway on its existing database.
    pub async fn start_gateway(&mut self, relay: bool) {
        self.gateway = Some(self.build_gateway(relay).await);
    }

    pub fn gateway(&self) -> &Running {
        self.gateway.as_ref().expect("gateway is running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway().port)
    }

    /// POSTs an enrollment; returns the status code, the body and the `Location` header.
    pub async fn enroll(&self, name: &str, email: &str) -> (u16, Value, Option<String>) {
        let response = self
            .http
            .post(self.url("/api/enrollments"))
            .json(&json!({"name": name, "email": email}))
            .send()
            .await
            .expect("gateway answers");
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (status, response.json().await.expect("JSON body"), location)
    }

    /// Submits an enrollment, checks the 202 contract, and returns its id (its public address is
    /// [`Self::enrollment_path`]).
    pub async fn submit(&self, name: &str, email: &str) -> String {
        let (status, body, location) = self.enroll(name, email).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "pending");
        let id = body["id"].as_str().expect("id").to_owned();
        let view_key = body["view_key"].as_str().expect("view_key");
        assert_eq!(
            location.as_deref(),
            Some(format!("/api/enrollments/{view_key}").as_str())
        );
        id
    }

    /// The view key of enrollment `id`, from the gateway's database (tests correlate by id; the
    /// public routes take only the key).
    pub async fn view_key(&self, id: &str) -> String {
        let pool = sqlx::AnyPool::connect(&self.gateway_db.url)
            .await
            .expect("gateway database");
        let key: Option<String> = sqlx::query_scalar("SELECT view_key FROM enrollments WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("enrollment in the gateway's database");
        pool.close().await;
        key.expect("enrollment with a view key")
    }

    /// `/api/enrollments/{view_key}` of enrollment `id`: its public view.
    pub async fn enrollment_path(&self, id: &str) -> String {
        format!("/api/enrollments/{}", self.view_key(id).await)
    }

    /// GETs `path` as an operator (the token does no harm on public routes).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .expect("gateway answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls the enrollment until its status is one of `statuses`; fails after [`DEADLINE`].
    pub async fn wait_for_status(&self, id: &str, statuses: &[&str]) -> Value {
        let what = format!("enrollment {id} to reach {statuses:?}");
        let path = self.enrollment_path(id).await;
        eventually(&what, DEADLINE, async || {
            let (_, body) = self.get_json(&path).await;
            let reached = body["status"].as_str().is_some_and(|s| statuses.contains(&s));
            Poll::ready_if(reached, body.clone(), Shown(body))
        })
        .await
        .unwrap()
    }

    pub fn queue_url(&self, output: &str) -> String {
        self.stack.output(output).to_owned()
    }

    /// Messages in a queue, visible and in flight.
    pub async fn queue_depth(&self, output: &str) -> i64 {
        self.bus
            .queue_depth(&self.queue_url(output))
            .await
            .expect("queue attributes")
            .total()
    }

    /// Polls the queue of stack output `output` until it holds `depth` messages, visible and in
    /// flight; fails after [`DEADLINE`].
    pub async fn wait_for_queue_depth(&self, output: &str, depth: i64) {
        let what = format!("{output} to hold {depth} messages");
        eventually(&what, DEADLINE, async || {
            let now = self.queue_depth(output).await;
            Poll::ready_if(now == depth, (), now)
        })
        .await
        .unwrap()
    }

    /// Sends raw bodies to a queue, as a misbehaving producer would.
    pub async fn send_raw(&self, output: &str, body: &str) {
        self.bus
            .sqs()
            .send_message()
            .queue_url(self.queue_url(output))
            .message_body(body)
            .send()
            .await
            .expect("send raw message");
    }

    /// Publishes a raw body to the topic of stack output `output` with `type_attribute` as its
    /// `type` message attribute (what the subscriptions' filters read), as a misbehaving
    /// producer would.
    pub async fn publish_raw(&self, output: &str, body: &str, type_attribute: &str) {
        let attribute = aws_sdk_sns::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(type_attribute)
            .build()
            .expect("attribute");
        self.bus
            .sns()
            .publish()
            .topic_arn(self.stack.output(output))
            .message(body)
            .message_attributes("type", attribute)
            .send()
            .await
            .expect("publish raw message");
    }

    pub async fn stop(mut self) {
        for running in [self.gateway.take(), self.customer.take(), self.transaction.take()]
            .into_iter()
            .flatten()
        {
            running.stop().await.expect("service stopped cleanly");
        }
    }
}

fn spawn<F, Fut>(port: u16, pool: AnyPool, run: F) -> Running
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(run(shutdown.clone()));
    Running {
        port,
        pool,
        shutdown,
        handle,
    }
}
