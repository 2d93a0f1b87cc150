//! One shape for every service. A service says what it is made of by implementing [`Service`];
//! [`Application`] builds and runs any of them the same way, and [`main`] is a binary's whole
//! `main`. A new service is therefore an implementation of [`Service`] and one line:
//!
//! ```ignore
//! fn main() -> anyhow::Result<()> {
//!     utility::runtime::main::<my_service::MyService>()
//! }
//! ```

use super::config::{self, CommonConfig, ServiceInfo, Settings};
use super::service::ServiceCore;
use super::supervisor::{Task, shutdown_on_signal};
use super::telemetry;
use crate::http::RequestLimits;
use crate::messaging::bus::Bus;
use crate::messaging::consumer::{Consumer, Handler};
use crate::messaging::endpoint::Endpoint;
use tokio_util::sync::CancellationToken;

/// What a service is made of, beyond what every service has ([`ServiceCore`]: the database, the
/// bus, the outbox relay, the HTTP listener, `/health`, `/ready` and the retention sweeper).
pub trait Service: Sized + Send + Sync + 'static {
    /// Its name (logs, metrics, `--version`) and description (`--help`): `utility::service_info!()`
    /// written in the service's crate.
    const INFO: ServiceInfo;
    /// The queue it consumes.
    const QUEUE: Endpoint;
    /// Every queue and topic it consumes from or sends to, [`Self::QUEUE`] among them: each must
    /// exist for the service to start.
    const ENDPOINTS: &'static [Endpoint];

    /// Its settings: its own, with [`CommonConfig`] flattened in.
    type Config: Settings + AsRef<CommonConfig> + Send;
    /// What it does with each message of [`Self::QUEUE`].
    type Handler: Handler;

    /// Its own migrations (the outbox and processed-message tables come with every database).
    fn migrations() -> sqlx::migrate::Migrator;

    /// Takes from `config` what the service keeps, refusing what the settings' types could not
    /// (a combination, a rule of the service's). Called before the database or the bus is touched.
    fn from_config(config: Self::Config) -> anyhow::Result<Self>;

    /// The handler of [`Self::QUEUE`]; `core` holds the pools and metrics it may need.
    fn handler(&self, core: &ServiceCore) -> Self::Handler;

    /// Its HTTP API, less `/health` and `/ready` (added for every service). Responses that stay
    /// open (streams, waits) end when `shutdown` is cancelled.
    fn routes(&self, core: &ServiceCore, shutdown: &CancellationToken) -> anyhow::Result<axum::Router>;

    /// What a request's span makes of the caller's `traceparent`: continue it (the default, for
    /// services only the gateway calls), or link it from a trace of its own (a public edge).
    const CALLER_TRACE: crate::http::CallerTrace = crate::http::CallerTrace::Continue;

    /// Tasks supervised beside the HTTP server, the consumer and the relay, by name; each must
    /// return when `shutdown` is cancelled. None by default.
    fn tasks(&self, core: &ServiceCore, shutdown: &CancellationToken) -> Vec<(&'static str, Task)> {
        let _ = (core, shutdown);
        Vec::new()
    }

    /// The limits on its HTTP requests.
    fn limits(&self) -> RequestLimits {
        RequestLimits::default()
    }
}

/// A service built and ready to run: the listener is bound (read [`Application::port`]), the
/// migrations are applied and every endpoint it needs was found. Tests build it with port 0.
pub struct Application<S: Service> {
    core: ServiceCore,
    service: S,
    consumer: Consumer<S::Handler>,
}

impl<S: Service> Application<S> {
    pub async fn build(config: S::Config, bus: Bus) -> anyhow::Result<Self> {
        let common = config.as_ref().clone();
        let service = S::from_config(config)?;
        let core = ServiceCore::build(S::INFO.name, common, S::migrations(), S::ENDPOINTS, bus).await?;
        let consumer = core.consumer(S::QUEUE, service.handler(&core))?;
        Ok(Self {
            core,
            service,
            consumer,
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.core.port()
    }

    /// The HTTP handlers' pool ([`ServiceCore::http_pool`]), for tests to read the database.
    pub fn pool(&self) -> &sqlx::AnyPool {
        &self.core.http_pool
    }

    /// Serves, consumes and relays until `shutdown` is cancelled, then stops in stages.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            core,
            service,
            consumer,
        } = self;
        let router = service.routes(&core, &shutdown)?.merge(core.health_routes(S::QUEUE)?);
        let tasks = service.tasks(&core, &shutdown);
        let limits = service.limits();
        core.run(router, limits, S::CALLER_TRACE, consumer, tasks, shutdown)
            .await
    }
}

/// A service binary's `main`: answers `--help` and `--version`, or loads the configuration
/// (a bad one is refused, naming each problem, with exit status 2); then starts the logs and
/// traces, builds the service on the bus the standard AWS variables name, and runs it until
/// SIGTERM or Ctrl-C. A failed start-up is logged, then returned.
pub fn main<S: Service>() -> anyhow::Result<()> {
    let Some((invocation, config)) = config::from_command_line::<S::Config>(S::INFO) else {
        return Ok(()); // --help or --version
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match invocation {
        config::Invocation::Migrate => runtime.block_on(migrate::<S>(config)),
        _ => runtime.block_on(run::<S>(config)),
    }
}

/// `<service> migrate`: the migrations as the database's owner, then the application role's
/// rights ([`crate::storage::migrate_as_owner`]).
async fn migrate<S: Service>(config: S::Config) -> anyhow::Result<()> {
    let telemetry = telemetry::init(config.as_ref().log_format, S::INFO.name);
    let common = config.as_ref();
    let owner = common.migrate_database_url.as_ref().unwrap_or(&common.database_url);
    let done = crate::storage::migrate_as_owner(owner.expose(), common.database_url.expose(), S::migrations()).await;
    match &done {
        Ok(()) => tracing::info!("migrations applied; the application role may read and write rows"),
        Err(err) => tracing::error!(error = format!("{err:#}"), "migration failed"),
    }
    telemetry.shutdown();
    Ok(done?)
}

async fn run<S: Service>(config: S::Config) -> anyhow::Result<()> {
    let telemetry = telemetry::init(config.as_ref().log_format, S::INFO.name);
    let shutdown = shutdown_on_signal();
    let bus = Bus::from_env().await;
    let stopped = match Application::<S>::build(config, bus).await {
        Ok(app) => app.run_until_stopped(shutdown).await,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "start-up failed");
            Err(err)
        }
    };
    telemetry.shutdown();
    stopped
}
