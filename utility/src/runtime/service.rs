//! What every service is built from and how it runs: [`ServiceCore`].

use super::config::CommonConfig;
use super::supervisor::{Task, supervise};
use crate::http::RequestLimits;
use crate::http::health::{self, Readiness};
use crate::messaging::bus::Bus;
use crate::messaging::consumer::{Consumer, Handler};
use crate::messaging::endpoint::Endpoint;
use crate::messaging::outbox::Relay;
use crate::messaging::topology::Topology;
use crate::observe::metrics::{self, GaugeSource, Metrics, PoolLabels};
use crate::storage::retention::RetentionSweeper;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a stopping HTTP server waits for in-flight requests.
const HTTP_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// What every service is built from: its database, the bus, the resolved topology, the outbox
/// relay and the bound HTTP listener. Building it verifies the database (migrations applied) and
/// every queue and topic the service needs; running it supervises the HTTP server, the consumer
/// and the relay with the staged shutdown of [`super::supervisor`].
pub struct ServiceCore {
    /// The service's name (logs, metrics).
    pub service: &'static str,
    pub config: CommonConfig,
    /// The HTTP handlers' pool (see [`crate::storage::Pools`]).
    pub http_pool: sqlx::AnyPool,
    /// The consumer's, the relay's and the sweepers' pool (see [`crate::storage::Pools`]).
    pub background_pool: sqlx::AnyPool,
    pub bus: Bus,
    pub topology: Arc<Topology>,
    pub relay: Relay,
    /// The service's metrics: the consumer, the relay and the HTTP layer count into them.
    pub metrics: Metrics,
    listener: tokio::net::TcpListener,
}

impl ServiceCore {
    /// `needs` lists every endpoint the service sends to or consumes from.
    pub async fn build(
        service: &'static str,
        config: CommonConfig,
        migrations: sqlx::migrate::Migrator,
        needs: &[Endpoint],
        bus: Bus,
    ) -> anyhow::Result<Self> {
        let pools = crate::storage::Pools::open(
            config.database_url.expose(),
            migrations,
            config.handler_timeout(),
            config.max_batches_in_flight,
        )
        .await?;
        let topology = Arc::new(Topology::resolve(&bus, &config.topology, needs).await?);
        let metrics = Metrics::new();
        metrics.register(
            "bus_requests",
            "SQS and SNS requests sent, each attempt (what AWS bills)",
            bus.requests().metric(),
        );
        metrics.add_source(database_gauges(&metrics, pools.http.clone(), pools.background.clone()));
        let relay = Relay::new(
            pools.background.clone(),
            bus.clone(),
            topology.clone(),
            config.relay_interval(),
        )
        .with_metrics(metrics.clone());
        // The destinations of what this service sends, as the messages declare them.
        let relay = match service.parse::<crate::messaging::Participant>() {
            Ok(participant) => relay.with_destinations(crate::messaging::message::destinations_of(participant)),
            Err(_) => relay,
        };
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.http_addr))?;
        Ok(Self {
            service,
            config,
            http_pool: pools.http,
            background_pool: pools.background,
            bus,
            topology,
            relay,
            metrics,
            listener,
        })
    }

    /// `GET /metrics`, unprotected: for the services that are not public (the gateway puts its
    /// own behind the operator token).
    pub fn metrics_routes(&self) -> axum::Router {
        let metrics = self.metrics.clone();
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || crate::http::metrics(metrics.clone())),
        )
    }

    /// The port actually bound (tests bind port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// The consumer of `queue`, wired to this service's database and relay.
    pub fn consumer<H: Handler>(&self, queue: Endpoint, handler: H) -> anyhow::Result<Consumer<H>> {
        Ok(Consumer::new(
            self.topology.address(queue)?.to_owned(),
            self.bus.clone(),
            self.background_pool.clone(),
            handler,
            self.relay.signal(),
            self.config.receive_wait(),
        )
        .with_handler_timeout(self.config.handler_timeout())
        .with_max_batches(self.config.max_batches_in_flight)
        .with_metrics(self.metrics.clone()))
    }

    /// The loop answering the lookups (queries) on `queue`, reading from the HTTP pool: a task
    /// for [`super::Service::tasks`].
    pub fn responder<A: crate::messaging::lookup::Answer>(
        &self,
        queue: Endpoint,
        answer: A,
        shutdown: &CancellationToken,
    ) -> Task {
        let responder = crate::messaging::lookup::Responder {
            bus: self.bus.clone(),
            topology: self.topology.clone(),
            queue,
            pool: self.http_pool.clone(),
            answer,
            wait_seconds: self.config.receive_wait(),
        };
        Box::pin(responder.run(shutdown.clone()))
    }

    /// `/health` and `/ready` for a service that consumes `queue`.
    pub fn health_routes(&self, queue: Endpoint) -> anyhow::Result<axum::Router> {
        Ok(health::health_routes(Readiness {
            pool: self.http_pool.clone(),
            bus: self.bus.clone(),
            queue_url: self.topology.address(queue)?.to_owned(),
        }))
    }

    /// Serves `router` (with the common layers of [`crate::http::finish`] and `limits`), runs
    /// `consumer`, any `extra` tasks of the service (which must return when `shutdown` is
    /// cancelled) and the relay, until `shutdown` is cancelled.
    pub async fn run<H: Handler>(
        self,
        router: axum::Router,
        limits: RequestLimits,
        caller_trace: crate::http::CallerTrace,
        consumer: Consumer<H>,
        extra: Vec<(&'static str, Task)>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let router = crate::http::finish(router, limits, self.metrics.clone(), caller_trace);
        let server_stop = shutdown.clone();
        let listener = self.listener;
        let connections = self.config.connection_limits();
        let http: Task = Box::pin(async move {
            let serve = crate::http::serve(listener, router, connections, server_stop.clone());
            // In-flight requests get a bounded time to finish; a stuck client cannot hold the
            // process past it.
            let drain_limit = async {
                server_stop.cancelled().await;
                tokio::time::sleep(HTTP_DRAIN_LIMIT).await;
            };
            tokio::select! {
                () = serve => Ok(()),
                () = drain_limit => {
                    tracing::warn!(limit_s = HTTP_DRAIN_LIMIT.as_secs(), "HTTP requests still open after the drain limit; closing them");
                    Ok(())
                }
            }
        });
        let consumer: Task = Box::pin(consumer.run(shutdown.clone()));
        let sweeper = RetentionSweeper::new(
            self.background_pool.clone(),
            self.config.outbox_retention_hours,
            self.config.processed_retention_days,
        );
        let retention: Task = Box::pin(sweeper.run(shutdown.clone()));
        let relay_stop = CancellationToken::new();
        let mut back: Vec<(&'static str, Task)> = Vec::new();
        if self.config.relay_enabled {
            back.push(("outbox relay", Box::pin(self.relay.run(relay_stop.clone()))));
        }
        tracing::info!(addr = %self.config.http_addr, "service started");
        let gauges: Task = Box::pin({
            let (metrics, service, stop) = (self.metrics.clone(), self.service, shutdown.clone());
            let every = self.config.gauges_log_every();
            async move {
                metrics.log_gauges(service, every, stop).await;
                Ok(())
            }
        });
        let mut front: Vec<(&'static str, Task)> = vec![
            ("http server", http),
            ("consumer", consumer),
            ("retention sweeper", retention),
            ("gauges", gauges),
        ];
        front.extend(extra);
        supervise(front, back, shutdown, relay_stop).await
    }
}

/// The outbox backlog and the pools' connections, read on each scrape and each `gauges` line.
fn database_gauges(metrics: &Metrics, http: sqlx::AnyPool, background: sqlx::AnyPool) -> GaugeSource {
    let metrics = metrics.clone();
    std::sync::Arc::new(move || {
        let (metrics, http, background) = (metrics.clone(), http.clone(), background.clone());
        Box::pin(async move {
            for (name, pool) in [("http", &http), ("background", &background)] {
                let idle = pool.num_idle() as i64;
                let size = i64::from(pool.size());
                let gauge = |state| {
                    metrics
                        .db_connections
                        .get_or_create(&PoolLabels { pool: name, state })
                        .clone()
                };
                gauge("in_use").set(size - idle);
                gauge("idle").set(idle);
            }
            match crate::messaging::outbox::backlog(&background).await {
                Ok((pending, oldest_age)) => {
                    metrics.outbox_pending.set(pending);
                    metrics.outbox_oldest_age.set(oldest_age);
                    vec![
                        (metrics::OUTBOX_PENDING, pending as f64),
                        (metrics::OUTBOX_OLDEST_AGE, oldest_age),
                    ]
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the outbox backlog");
                    Vec::new()
                }
            }
        })
    })
}
