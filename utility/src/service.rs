//! Running a service: one shutdown path, supervised tasks, and retry back-off.
//!
//! Shutdown is staged. SIGTERM or Ctrl-C cancels the `front` token: the HTTP server stops
//! accepting and drains, the consumer finishes and deletes the batch it holds. Only when every
//! front task has returned is the relay told to stop, so its final flush publishes what those last
//! transactions wrote.

use rand::Rng;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a stopping HTTP server waits for in-flight requests.
const HTTP_DRAIN_LIMIT: Duration = Duration::from_secs(10);

pub type Task = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Cancels the returned token on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
            () = term => tracing::info!("SIGTERM received; shutting down"),
        }
        cancel.cancel();
    });
    token
}

/// Runs `front` tasks until `shutdown` is cancelled or one of them ends; then stops the others,
/// waits for them, and only then cancels `back` and waits for the `back` tasks (the relay).
/// A task that ends on its own before shutdown is an error: it is logged by name with its cause
/// and the whole service stops, so a supervisor (systemd) can restart it.
pub async fn supervise(
    front: Vec<(&'static str, Task)>,
    back: Vec<(&'static str, Task)>,
    shutdown: CancellationToken,
    back_stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut failed = None;
    let mut front_set = JoinSet::new();
    for (name, task) in front {
        front_set.spawn(async move { (name, task.await) });
    }
    let mut back_set = JoinSet::new();
    for (name, task) in back {
        back_set.spawn(async move { (name, task.await) });
    }
    // Front and back tasks are both watched: a relay that dies early must stop the service too.
    while !front_set.is_empty() {
        let joined = tokio::select! {
            Some(joined) = front_set.join_next() => joined,
            Some(joined) = back_set.join_next() => joined,
        };
        let early = !shutdown.is_cancelled();
        record(joined, early, &mut failed);
        shutdown.cancel();
    }
    back_stop.cancel();
    while let Some(joined) = back_set.join_next().await {
        record(joined, false, &mut failed);
    }
    match failed {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!(why)),
    }
}

/// Logs how a task ended; keeps the first failure. `early`: it ended before shutdown was asked.
fn record(
    joined: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
    early: bool,
    failed: &mut Option<String>,
) {
    match joined {
        Ok((name, Ok(()))) if early => {
            tracing::error!(task = name, "task ended before shutdown");
            failed.get_or_insert_with(|| format!("{name} ended before shutdown"));
        }
        Ok((name, Ok(()))) => tracing::info!(task = name, "task stopped"),
        Ok((name, Err(err))) => {
            tracing::error!(task = name, error = format!("{err:#}"), "task failed");
            failed.get_or_insert_with(|| format!("{name} failed: {err:#}"));
        }
        Err(join) => {
            tracing::error!(error = %join, "task panicked or was aborted");
            failed.get_or_insert_with(|| format!("a task panicked: {join}"));
        }
    }
}

/// Exponential back-off with full jitter: each delay is uniform in `[0, min(cap, base * 2^n))`,
/// which spreads retries of many instances instead of synchronising them.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, attempt: 0 }
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(self.attempt.min(20)))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// What every service is built from: its database, the bus, the resolved topology, the outbox
/// relay and the bound HTTP listener. Building it verifies the database (migrations applied) and
/// every queue and topic the service needs; running it supervises the HTTP server, the consumer
/// and the relay with the staged shutdown described above.
pub struct ServiceCore {
    pub config: crate::config::CommonConfig,
    pub pool: sqlx::AnyPool,
    pub bus: crate::bus::Bus,
    pub topology: std::sync::Arc<crate::topology::Topology>,
    pub relay: crate::outbox::Relay,
    listener: tokio::net::TcpListener,
}

impl ServiceCore {
    /// `needs` lists every endpoint the service sends to or consumes from.
    pub async fn build(
        config: crate::config::CommonConfig,
        migrations: sqlx::migrate::Migrator,
        needs: &[crate::topology::Endpoint],
        bus: crate::bus::Bus,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let pool = crate::db::connect(&config.database_url, migrations).await?;
        let topology = crate::topology::Topology::resolve(&bus, &config.topology, needs).await?;
        let topology = std::sync::Arc::new(topology);
        let relay = crate::outbox::Relay::new(pool.clone(), bus.clone(), topology.clone(), config.relay_interval());
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.http_addr))?;
        Ok(Self {
            config,
            pool,
            bus,
            topology,
            relay,
            listener,
        })
    }

    /// The port actually bound (tests bind port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// The consumer of `queue`, wired to this service's database and relay.
    pub fn consumer<H: crate::consumer::Handler>(
        &self,
        queue: crate::topology::Endpoint,
        handler: H,
    ) -> anyhow::Result<crate::consumer::Consumer<H>> {
        Ok(crate::consumer::Consumer::new(
            self.topology.address(queue)?.to_owned(),
            self.bus.clone(),
            self.pool.clone(),
            handler,
            self.relay.signal(),
            self.config.receive_wait(),
        ))
    }

    /// `/health` and `/ready` for a service that consumes `queue`.
    pub fn health_routes(&self, queue: crate::topology::Endpoint) -> anyhow::Result<axum::Router> {
        Ok(crate::problem::health_routes(crate::problem::Readiness {
            pool: self.pool.clone(),
            bus: self.bus.clone(),
            queue_url: self.topology.address(queue)?.to_owned(),
        }))
    }

    /// Serves `router`, runs `consumer`, any `extra` tasks of the service (which must return when
    /// `shutdown` is cancelled) and the relay, until `shutdown` is cancelled.
    pub async fn run<H: crate::consumer::Handler>(
        self,
        router: axum::Router,
        consumer: crate::consumer::Consumer<H>,
        extra: Vec<(&'static str, Task)>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let router = router
            .fallback(crate::problem::not_found_route)
            .layer(tower_http::trace::TraceLayer::new_for_http());
        let server_stop = shutdown.clone();
        let listener = self.listener;
        let http: Task = Box::pin(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(server_stop.clone().cancelled_owned());
            // In-flight requests get a bounded time to finish; a stuck client cannot hold the
            // process past it.
            let drain_limit = async {
                server_stop.cancelled().await;
                tokio::time::sleep(HTTP_DRAIN_LIMIT).await;
            };
            tokio::select! {
                served = serve => served.map_err(anyhow::Error::from),
                () = drain_limit => {
                    tracing::warn!(limit_s = HTTP_DRAIN_LIMIT.as_secs(), "HTTP requests still open after the drain limit; closing them");
                    Ok(())
                }
            }
        });
        let consumer: Task = Box::pin(consumer.run(shutdown.clone()));
        let sweeper = crate::retention::RetentionSweeper::new(
            self.pool.clone(),
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
        let mut front: Vec<(&'static str, Task)> = vec![
            ("http server", http),
            ("consumer", consumer),
            ("retention sweeper", retention),
        ];
        front.extend(extra);
        supervise(front, back, shutdown, relay_stop).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..50 {
            assert!(backoff.next_delay() <= Duration::from_secs(2));
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_task_that_fails_stops_the_others_then_the_back_tasks() {
        let shutdown = CancellationToken::new();
        let back_stop = CancellationToken::new();
        let (s, b) = (shutdown.clone(), back_stop.clone());
        let front_done = Arc::new(AtomicBool::new(false));
        let (done, seen) = (front_done.clone(), front_done.clone());
        let waits: Task = Box::pin(async move {
            s.cancelled().await;
            // Slow to finish: the back task must still wait for it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            done.store(true, Ordering::SeqCst);
            Ok(())
        });
        let fails: Task = Box::pin(async { Err(anyhow::anyhow!("boom")) });
        let back: Task = Box::pin(async move {
            b.cancelled().await;
            anyhow::ensure!(seen.load(Ordering::SeqCst), "back task stopped before the front tasks");
            Ok(())
        });
        let result = supervise(
            vec![("waits", waits), ("fails", fails)],
            vec![("back", back)],
            shutdown.clone(),
            back_stop,
        )
        .await;
        assert_eq!(result.unwrap_err().to_string(), "fails failed: boom");
        assert!(shutdown.is_cancelled());
        assert!(front_done.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_back_task_that_ends_early_stops_the_service() {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let front: Task = Box::pin(async move {
            s.cancelled().await;
            Ok(())
        });
        let back: Task = Box::pin(async { Ok(()) });
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            supervise(
                vec![("front", front)],
                vec![("relay", back)],
                shutdown.clone(),
                CancellationToken::new(),
            ),
        )
        .await
        .expect("the service stopped");
        assert_eq!(result.unwrap_err().to_string(), "relay ended before shutdown");
    }
}
