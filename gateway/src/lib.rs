//! The gateway: accepts enrollments over HTTP, routes saga events to the next command, and keeps
//! the saga read model that clients poll. It never calls the other services to make progress;
//! everything moves through the bus, the operator's customer and points lookups included
//! (request/reply, [`lookups`]).

mod confirmation;
mod http;
mod live;
mod lookups;
mod metrics;
pub mod saga;
mod settings;
mod stalls;
mod store;
pub mod webhooks;

pub use confirmation::EmailConfirmation;
pub use settings::{Origin, ProxyCidr};

use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utility::http::RequestLimits;
use utility::messaging::Endpoint;
use utility::runtime::config::{CommaSeparated, CommonConfig, Secret, ServiceInfo};
use utility::runtime::{Service, ServiceCore, Task};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// How long an operator lookup waits for the service's reply over the bus before it answers
    /// 504 (`LOOKUP_TIMEOUT_MS`).
    #[schemars(range(min = 1))]
    pub lookup_timeout_ms: u64,
    /// How often an instance looks in the database for replies another instance received for
    /// its waiting lookups (`LOOKUP_POLL_MS`); only while a lookup waits.
    #[schemars(range(min = 1))]
    pub lookup_poll_ms: u64,
    /// Largest accepted request body.
    #[schemars(range(min = 1))]
    pub max_body_bytes: usize,
    /// A saga unchanged for this long without reaching a terminal status is reported stalled.
    #[schemars(range(min = 1))]
    pub stall_after_seconds: u64,
    /// Bearer token of the operator routes (`OPERATOR_TOKEN`, at least 16 characters); unset, the
    /// operator routes are off (404).
    pub operator_token: Option<Secret<String>>,
    /// Enrollments one client address may submit per minute (`RATE_LIMIT_PER_MINUTE`); 0 turns
    /// the limit off.
    pub rate_limit_per_minute: u32,
    /// Submissions a client may make in a burst before the per-minute rate applies.
    pub rate_limit_burst: u32,
    /// Proxies whose `X-Forwarded-For` names the client (`TRUSTED_PROXY_CIDRS`, comma-separated
    /// CIDRs such as `10.0.0.0/16`, or bare addresses; on EC2 the load balancer's subnets).
    /// Empty: the peer is the client.
    pub trusted_proxy_cidrs: CommaSeparated<ProxyCidr>,
    /// API requests handled at once; more are refused at once with 503 (`MAX_CONCURRENT_REQUESTS`).
    pub max_concurrent_requests: usize,
    /// Open event streams at most (`MAX_EVENT_STREAMS`); more are refused with 503.
    pub max_event_streams: usize,
    /// Open event streams of one client at most (`MAX_EVENT_STREAMS_PER_CLIENT`), the client
    /// counted as the submission rate limit counts it (its address, an IPv6 address by its /64);
    /// more are refused with 429 and `Retry-After`. 0 turns the limit off.
    pub max_event_streams_per_client: usize,
    /// Requests held by `Prefer: wait` at most (`MAX_WAITING_REQUESTS`); beyond it the
    /// preference is not applied. Keep it well below `MAX_CONCURRENT_REQUESTS`, whose places
    /// held requests occupy.
    pub max_waiting_requests: usize,
    /// Requests of one client held by `Prefer: wait` at most
    /// (`MAX_WAITING_REQUESTS_PER_CLIENT`, the client counted as for the streams); one more is
    /// refused with 429 and `Retry-After` (a submission before it is stored). 0 turns the limit off.
    pub max_waiting_requests_per_client: usize,
    /// Longest an event stream stays open, in seconds (`MAX_STREAM_SECONDS`): then it ends, and
    /// an EventSource comes back with `Last-Event-ID` and resumes where it was. A stream
    /// therefore holds its place for a bounded time, however stalled its saga.
    #[schemars(range(min = 1))]
    pub max_stream_seconds: u64,
    /// How often the live-updates poller looks for new history while someone waits.
    pub events_poll_ms: u64,
    /// Origins whose pages may call the public API (`CORS_ALLOWED_ORIGINS`, comma-separated, each
    /// `scheme://host[:port]` without a path, e.g. `https://app.example.com`; `*` is refused);
    /// empty, the default: none, only the gateway's own page.
    pub cors_allowed_origins: CommaSeparated<Origin>,
    /// `Strict-Transport-Security: max-age=<this>` on every answer (`HSTS_MAX_AGE_SECONDS`): set
    /// it when the gateway is reached over HTTPS only (on EC2, with a certificate); 0, the
    /// default, sends no such header (a browser would then refuse a plain-HTTP deployment).
    pub hsts_max_age_seconds: u64,
    /// `required` (the default): nothing is enrolled until the owner of the address follows the
    /// link the customer-api mails (decision 0035). `off`: enrolled at once, for a deployment
    /// whose callers verified the addresses themselves; said at start-up.
    pub email_confirmation: EmailConfirmation,
    /// How long the owner of an address has to confirm, in seconds (24 h by default): then the
    /// enrollment ends `expired` and the customer-api forgets the name and address.
    #[schemars(range(min = 1))]
    pub confirmation_ttl_seconds: u64,
    /// The origin people reach the gateway's pages at (`scheme://host[:port]`, no path): the
    /// confirmation links in the mails point to `<PUBLIC_ORIGIN>/confirm`.
    pub public_origin: Origin,
    /// Private keys that sign webhooks (`WEBHOOK_SIGNING_KEYS`, comma-separated `whsk_` + base64
    /// of a 32-byte Ed25519 seed; `make up` generates one). The first signs; all are published at
    /// `/.well-known/webhook-keys`. Unset: callbacks are off, and a `callback_url` is refused.
    pub webhook_signing_keys: Option<Secret<String>>,
    /// Accept plain `http` callback URLs (`CALLBACK_ALLOW_HTTP`): local development and tests only.
    pub callback_allow_http: bool,
    /// The only hosts callbacks may reach, when set (`CALLBACK_ALLOWED_HOSTS`, comma-separated
    /// names or addresses); they are reached even on private or loopback addresses. Empty, the
    /// default: any host whose addresses are all public.
    pub callback_allowed_hosts: CommaSeparated<String>,
    /// The only ports callback URLs may name, when set (`CALLBACK_ALLOWED_PORTS`,
    /// comma-separated; a URL naming none stands for its scheme's port): a URL on another is a
    /// 422. Empty, the default: any port. EC2 sets 443, the one port callbacks can reach there.
    pub callback_allowed_ports: CommaSeparated<u16>,
    /// Bound of the first webhook retry's delay, in ms (`WEBHOOK_RETRY_BASE_MS`); each later
    /// one doubles, up to an hour, with full jitter, for up to 24 h.
    #[schemars(range(min = 1))]
    pub webhook_retry_base_ms: u64,
    /// Webhook deliveries in flight to one host at most (`WEBHOOK_HOST_CONCURRENCY`).
    #[schemars(range(min = 1))]
    pub webhook_host_concurrency: usize,
    /// How often due webhook deliveries are looked for, in ms, besides on each new one
    /// (`WEBHOOK_POLL_MS`).
    #[schemars(range(min = 1))]
    pub webhook_poll_ms: u64,
}

/// Shortest operator token accepted.
const MIN_TOKEN_CHARS: usize = 16;

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::new(([127, 0, 0, 1], 8080).into(), "sqlite:data/gateway.db"),
            lookup_timeout_ms: 3000,
            lookup_poll_ms: 20,
            max_body_bytes: 16 * 1024,
            stall_after_seconds: 120,
            operator_token: None,
            rate_limit_per_minute: 60,
            rate_limit_burst: 20,
            trusted_proxy_cidrs: CommaSeparated::default(),
            max_concurrent_requests: 256,
            max_event_streams: 1000,
            max_event_streams_per_client: 8,
            max_waiting_requests: 64,
            max_waiting_requests_per_client: 4,
            max_stream_seconds: 300,
            events_poll_ms: 250,
            cors_allowed_origins: CommaSeparated::default(),
            hsts_max_age_seconds: 0,
            email_confirmation: EmailConfirmation::Required,
            confirmation_ttl_seconds: 24 * 60 * 60,
            public_origin: "http://127.0.0.1:8080".parse().expect("a valid origin"),
            webhook_signing_keys: None,
            callback_allow_http: false,
            callback_allowed_hosts: CommaSeparated::default(),
            callback_allowed_ports: CommaSeparated::default(),
            webhook_retry_base_ms: 5000,
            webhook_host_concurrency: 8,
            webhook_poll_ms: 1000,
        }
    }
}

impl AsRef<CommonConfig> for Config {
    fn as_ref(&self) -> &CommonConfig {
        &self.common
    }
}

impl Config {
    pub fn limits(&self) -> RequestLimits {
        RequestLimits::new(self.max_body_bytes)
    }

    /// The edge as configured; a token too short is refused here, at start-up, naming the setting
    /// (the proxies and origins were parsed with the configuration).
    fn edge(&self) -> anyhow::Result<http::Edge> {
        let operator = match self.operator_token.as_ref().map(|token| token.expose().as_str()) {
            None | Some("") => None,
            Some(token) => {
                anyhow::ensure!(
                    token.chars().count() >= MIN_TOKEN_CHARS,
                    "OPERATOR_TOKEN must be at least {MIN_TOKEN_CHARS} characters"
                );
                Some(http::edge::OperatorToken::new(token))
            }
        };
        let proxies = http::edge::TrustedProxies::new(self.trusted_proxy_cidrs.iter().map(|p| p.net()).collect());
        let origins: Vec<_> = self.cors_allowed_origins.iter().map(|o| o.header().clone()).collect();
        Ok(http::Edge {
            cors: (!origins.is_empty()).then(|| http::cors(origins)),
            operator,
            rate_limit: http::edge::RateLimit::new(self.rate_limit_per_minute, self.rate_limit_burst, proxies.clone()),
            proxies,
            max_concurrent_requests: self.max_concurrent_requests,
            hsts: (self.hsts_max_age_seconds > 0)
                .then(|| axum::http::HeaderValue::from_str(&format!("max-age={}", self.hsts_max_age_seconds)))
                .transpose()?,
        })
    }

    /// The confirmation settings; `None` when confirmation is off.
    fn confirmation(&self) -> Option<http::Confirmation> {
        (self.email_confirmation == EmailConfirmation::Required).then(|| http::Confirmation {
            origin: self.public_origin.clone(),
            ttl: self.confirmation_ttl(),
        })
    }

    fn confirmation_ttl(&self) -> Duration {
        Duration::from_secs(self.confirmation_ttl_seconds.max(1))
    }

    /// Callbacks as configured: off without a signing key; a malformed key stops the gateway at
    /// start-up, naming the setting.
    fn callbacks(&self) -> anyhow::Result<Option<webhooks::Callbacks>> {
        let Some(keys) = self
            .webhook_signing_keys
            .as_ref()
            .map(|k| k.expose())
            .filter(|k| !k.is_empty())
        else {
            return Ok(None);
        };
        let keys = keys
            .parse::<webhooks::signing::SigningKeys>()
            .map_err(|e| anyhow::anyhow!("WEBHOOK_SIGNING_KEYS: {e}"))?;
        let mut allowed_ports = self.callback_allowed_ports.to_vec();
        if allowed_ports.contains(&0) {
            anyhow::bail!("CALLBACK_ALLOWED_PORTS: 0 is not a port a URL can name");
        }
        allowed_ports.sort_unstable();
        allowed_ports.dedup();
        let policy = webhooks::address::Policy {
            allow_http: self.callback_allow_http,
            allowed_hosts: self
                .callback_allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            allowed_ports,
            resolver: webhooks::address::Resolver::system(),
        };
        Ok(Some(webhooks::Callbacks {
            policy: Arc::new(policy),
            keys,
        }))
    }

    fn api_state(
        &self,
        pool: AnyPool,
        outbox_signal: Arc<Notify>,
        shutdown: CancellationToken,
        metrics: utility::observe::metrics::Metrics,
        lookups: Option<lookups::Lookups>,
    ) -> anyhow::Result<http::AppState> {
        let hub = live::Hub::new(
            pool.clone(),
            Duration::from_millis(self.events_poll_ms.max(10)),
            live::Limits {
                streams: self.max_event_streams,
                waits: self.max_waiting_requests,
                streams_per_client: self.max_event_streams_per_client,
                waits_per_client: self.max_waiting_requests_per_client,
            },
            &metrics,
            shutdown,
        );
        Ok(http::AppState {
            hub,
            metrics,
            pool,
            outbox_signal,
            lookups,
            callbacks: self.callbacks()?,
            stall_after: Duration::from_secs(self.stall_after_seconds),
            max_stream: Duration::from_secs(self.max_stream_seconds.max(1)),
            confirmation: self.confirmation(),
        })
    }
}

/// The gateway's HTTP API as it is served, less `/health` and `/ready` (which need the bus): a
/// database is all it takes, so the HTTP contract is tested in process against this router.
/// Without a bus, the operator's customer and points lookups answer 503.
/// Accepted enrollments wait in the outbox; `outbox_signal` is notified on each.
pub fn router(config: &Config, pool: AnyPool, outbox_signal: Arc<Notify>) -> anyhow::Result<axum::Router> {
    let metrics = utility::observe::metrics::Metrics::new();
    metrics::SagaMetrics::register(&metrics, pool.clone(), Duration::from_secs(config.stall_after_seconds));
    let state = config.api_state(pool, outbox_signal, CancellationToken::new(), metrics.clone(), None)?;
    Ok(utility::http::finish(
        http::routes(state, &config.edge()?),
        config.limits(),
        metrics,
        utility::http::CallerTrace::Link,
    ))
}

/// Consumed queue first, then the command queues it routes to, then the lookups' queues (the
/// replies it consumes, the services' queries it sends to), then its topic of status events and
/// the webhook deliveries' queue subscribed to it.
pub const ENDPOINTS: [Endpoint; 8] = [
    Endpoint::GatewayEvents,
    Endpoint::CustomerCommands,
    Endpoint::TransactionCommands,
    lookups::ENDPOINTS[0],
    lookups::ENDPOINTS[1],
    lookups::ENDPOINTS[2],
    Endpoint::StatusEvents,
    Endpoint::WebhookDeliveries,
];

/// This service's own migrations (the shared outbox and processed-message tables come with
/// [`utility::storage::connect`]).
pub fn migrations() -> sqlx::migrate::Migrator {
    sqlx::migrate!()
}

/// The gateway as a [`Service`]: saga events in, commands out, and the public and operator HTTP
/// API in front.
pub struct Gateway {
    config: Config,
    edge: http::Edge,
    /// Made once, for the routes and the replies' task.
    lookups: std::sync::OnceLock<lookups::Lookups>,
    /// Registered once, for the saga's handler and the expiry scan.
    saga_metrics: std::sync::OnceLock<metrics::SagaMetrics>,
}

impl Gateway {
    fn stall_after(&self) -> Duration {
        Duration::from_secs(self.config.stall_after_seconds)
    }

    fn saga_metrics(&self, core: &ServiceCore) -> metrics::SagaMetrics {
        self.saga_metrics
            .get_or_init(|| {
                metrics::SagaMetrics::register(&core.metrics, core.background_pool.clone(), self.stall_after())
            })
            .clone()
    }

    fn lookups(&self, core: &ServiceCore, shutdown: &CancellationToken) -> lookups::Lookups {
        self.lookups
            .get_or_init(|| {
                lookups::Lookups::new(
                    core.bus.clone(),
                    core.topology.clone(),
                    core.http_pool.clone(),
                    Duration::from_millis(self.config.lookup_timeout_ms),
                    Duration::from_millis(self.config.lookup_poll_ms.max(1)),
                    &core.metrics,
                    shutdown.clone(),
                )
            })
            .clone()
    }
}

impl Gateway {
    /// The webhook deliveries' consumer and dispatcher; with callbacks off, the consumer alone,
    /// which deletes the status events (no enrollment can have a callback then).
    fn webhook_tasks(&self, core: &ServiceCore, shutdown: &CancellationToken) -> Vec<(&'static str, Task)> {
        let mut tasks: Vec<(&'static str, Task)> = Vec::new();
        let callbacks = match self.config.callbacks() {
            Ok(callbacks) => callbacks,
            Err(err) => return vec![("webhook dispatcher", Box::pin(async move { Err(err) }))],
        };
        let dispatch = Arc::new(Notify::new());
        if let Some(callbacks) = callbacks {
            match webhooks::client::Client::new(callbacks.policy.clone()) {
                Ok(client) => {
                    let mut dispatcher = webhooks::delivery::Dispatcher::new(
                        core.background_pool.clone(),
                        client,
                        callbacks.keys,
                        Duration::from_millis(self.config.webhook_retry_base_ms.max(1)),
                        Duration::from_millis(self.config.webhook_poll_ms.max(1)),
                        self.config.webhook_host_concurrency,
                    );
                    dispatcher.signal = dispatch.clone();
                    dispatcher.retention = Duration::from_secs(core.config.outbox_retention_hours.saturating_mul(3600));
                    dispatcher.metrics = metrics::WebhookMetrics::register(&core.metrics, core.background_pool.clone());
                    tasks.push(("webhook dispatcher", Box::pin(dispatcher.run(shutdown.clone()))));
                }
                Err(err) => tasks.push(("webhook dispatcher", Box::pin(async move { Err(err) }))),
            }
        }
        let handler = webhooks::delivery::ScheduleHandler { dispatch };
        match core.consumer(Endpoint::WebhookDeliveries, handler) {
            Ok(consumer) => tasks.push(("webhook deliveries consumer", Box::pin(consumer.run(shutdown.clone())))),
            Err(err) => tasks.push(("webhook deliveries consumer", Box::pin(async move { Err(err) }))),
        }
        tasks
    }
}

impl Service for Gateway {
    const INFO: ServiceInfo = utility::service_info!();
    const QUEUE: Endpoint = Endpoint::GatewayEvents;
    const ENDPOINTS: &'static [Endpoint] = &ENDPOINTS;
    /// Clients choose neither the saga's trace id nor its sampling.
    const CALLER_TRACE: utility::http::CallerTrace = utility::http::CallerTrace::Link;
    type Config = Config;
    type Handler = saga::SagaHandler;

    fn migrations() -> sqlx::migrate::Migrator {
        migrations()
    }

    fn from_config(config: Config) -> anyhow::Result<Self> {
        let edge = config.edge()?;
        if config.callbacks()?.is_none() {
            tracing::info!("callbacks are off: WEBHOOK_SIGNING_KEYS is not set");
        }
        if edge.operator.is_none() {
            tracing::info!("operator routes are off: OPERATOR_TOKEN is not set");
        }
        if config.email_confirmation == EmailConfirmation::Off {
            tracing::warn!(
                "EMAIL_CONFIRMATION=off: enrollments are enrolled without their address's owner confirming it; \
                 only for callers that verified the addresses themselves"
            );
        }
        Ok(Self {
            config,
            edge,
            lookups: std::sync::OnceLock::new(),
            saga_metrics: std::sync::OnceLock::new(),
        })
    }

    fn handler(&self, core: &ServiceCore) -> saga::SagaHandler {
        saga::SagaHandler {
            metrics: self.saga_metrics(core),
        }
    }

    /// `/metrics` is among the operator routes, behind the operator token.
    fn routes(&self, core: &ServiceCore, shutdown: &CancellationToken) -> anyhow::Result<axum::Router> {
        let state = self.config.api_state(
            core.http_pool.clone(),
            core.relay.signal(),
            shutdown.clone(),
            core.metrics.clone(),
            Some(self.lookups(core, shutdown)),
        )?;
        Ok(http::routes(state, &self.edge))
    }

    fn tasks(&self, core: &ServiceCore, shutdown: &CancellationToken) -> Vec<(&'static str, Task)> {
        let watch = stalls::StallWatch::new(core.background_pool.clone(), self.stall_after());
        let replies = self
            .lookups(core, shutdown)
            .receive(shutdown.clone(), core.config.receive_wait());
        let expiry = confirmation::ExpiryWatch {
            pool: core.background_pool.clone(),
            every: confirmation::scan_every(self.config.confirmation_ttl()),
            outbox_signal: core.relay.signal(),
            metrics: self.saga_metrics(core),
        };
        // The scan runs whatever the setting: enrollments accepted while confirmation was
        // required still end at their deadline after it is turned off.
        let mut tasks: Vec<(&'static str, Task)> = vec![
            ("stall sweeper", Box::pin(watch.run(shutdown.clone()))),
            ("confirmation expiry", Box::pin(expiry.run(shutdown.clone()))),
            ("lookup replies", Box::pin(replies)),
        ];
        tasks.extend(self.webhook_tasks(core, shutdown));
        tasks
    }

    fn limits(&self) -> RequestLimits {
        self.config.limits()
    }
}

/// The service built and ready to run: `Application::build(config, bus)`, then `run_until_stopped`.
pub type Application = utility::runtime::Application<Gateway>;

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ports(ports: &str) -> Config {
        Config {
            // `whsk_` and the base64 of a 32-byte seed (all zero: a test key).
            webhook_signing_keys: Some(Secret::new(format!("whsk_{}=", "A".repeat(43)))),
            callback_allowed_ports: ports.parse().unwrap(),
            ..Config::default()
        }
    }

    #[test]
    fn callback_ports_are_listed_once_and_port_0_is_refused() {
        let callbacks = with_ports("8443, 443,443").callbacks().unwrap().expect("callbacks on");
        assert_eq!(callbacks.policy.allowed_ports, [443, 8443]);
        let refused = with_ports("443,0").callbacks().map(|_| ()).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "CALLBACK_ALLOWED_PORTS: 0 is not a port a URL can name"
        );
    }
}
