//! One shutdown path and supervised tasks.
//!
//! Shutdown is staged. SIGTERM or Ctrl-C cancels the `front` token: the HTTP server stops
//! accepting and drains, the consumer finishes and deletes the batch it holds. Only when every
//! front task has returned is the relay told to stop, so its final flush publishes what those last
//! transactions wrote.

use std::future::Future;
use std::pin::Pin;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

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
