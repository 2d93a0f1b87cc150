//! The service binaries as child processes. Each child runs in a process group of its own, so a
//! Ctrl-C in the terminal reaches the suite only, and the suite decides what each service gets.
//! Dropping a [`Service`] kills its whole group: an early return, a panic or Ctrl-C never leaves
//! a service running.

use anyhow::{Context, bail};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Configuration variables the suite sets itself; inherited values would change what it tests.
const OWNED_VARS: [&str; 9] = [
    "CONFIG_FILE",
    "CUSTOMER_COMMANDS_QUEUE_URL",
    "TRANSACTION_COMMANDS_QUEUE_URL",
    "GATEWAY_EVENTS_QUEUE_URL",
    "CUSTOMER_EVENTS_TOPIC_ARN",
    "TRANSACTION_EVENTS_TOPIC_ARN",
    "RELAY_ENABLED",
    "BONUS_POINTS",
    "RUST_LOG",
];

/// Sends `signal` (a `kill -s` name) to a process, or to its group when `group` is set.
pub fn signal(pid: u32, name: &str, group: bool) -> anyhow::Result<()> {
    let target = if group { format!("-{pid}") } else { pid.to_string() };
    let status = std::process::Command::new("kill")
        .args(["-s", name, "--", &target])
        .stderr(Stdio::null())
        .status()
        .context("cannot run `kill`")?;
    anyhow::ensure!(status.success(), "kill -s {name} {target} failed");
    Ok(())
}

pub struct Service {
    pub name: &'static str,
    pub addr: SocketAddr,
    program: PathBuf,
    env: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Service {
    pub fn new(
        name: &'static str,
        program: PathBuf,
        addr: SocketAddr,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> Self {
        Self {
            name,
            addr,
            program,
            env,
            log,
            child: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts the binary; its output is appended to its log file, so restarts share one file.
    pub fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is already running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let mut command = Command::new(&self.program);
        for var in OWNED_VARS {
            command.env_remove(var);
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn().with_context(|| {
            format!(
                "cannot start {} (build it with `cargo build --bins`)",
                self.program.display()
            )
        })?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): freezes the process without it noticing.
    pub fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        let pid = self.pid().with_context(|| format!("{} is not running", self.name))?;
        signal(pid, if frozen { "STOP" } else { "CONT" }, false)
    }

    /// `kill -9`: no chance to finish anything.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill().ok();
            child
                .wait()
                .await
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `limit` for a clean exit (status 0). Returns how long it took.
    /// A service that overstays is killed and reported.
    pub async fn terminate(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        let Some(pid) = self.pid() else {
            bail!("{} is not running", self.name)
        };
        let started = Instant::now();
        signal(pid, "TERM", false)?;
        // It may have been frozen (SIGSTOP) to be caught mid-batch: let it handle the signal.
        signal(pid, "CONT", false)?;
        let child = self.child.as_mut().context("child vanished")?;
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) => {
                self.child = None;
                anyhow::ensure!(status.success(), "{} exited with {status} after SIGTERM", self.name);
                Ok(started.elapsed())
            }
            Ok(Err(err)) => Err(err).context("waiting for the service"),
            Err(_) => {
                self.kill9().await?;
                bail!("{} did not exit within {} s of SIGTERM", self.name, limit.as_secs())
            }
        }
    }

    /// The status code of `GET /ready`, or `None` when the service does not answer.
    pub async fn ready_status(&self, http: &reqwest::Client) -> Option<u16> {
        let response = http.get(self.url("/ready")).send().await.ok()?;
        Some(response.status().as_u16())
    }

    /// Polls `/ready` until it answers 200. Fails early, with the end of the log, if the process
    /// exits.
    pub async fn wait_ready(&mut self, http: &reqwest::Client, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if self.ready_status(http).await == Some(200) {
                return Ok(started.elapsed());
            }
            if !self.alive() {
                bail!(
                    "{} is not running; end of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail(15)
                );
            }
            if started.elapsed() > limit {
                bail!(
                    "{} not ready within {} s; see {}",
                    self.name,
                    limit.as_secs(),
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last lines of the log file.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // kill_on_drop reaches the child itself; the group kill also reaches anything it started.
        if let Some(pid) = self.pid() {
            let _ = signal(pid, "KILL", true);
        }
    }
}

/// A port nobody listens on right now (bound and released; good enough on a test machine).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a free port")?;
    Ok(listener.local_addr()?.port())
}
