//! A program as a child process, the way tests, the bench and the fault suite run the service
//! binaries (and chromedriver, and moto): in a process group of its own, so a signal reaches only
//! what the harness means it for, and the whole group is killed when the [`Process`] is dropped,
//! so an early return or a panic never leaves one running. Its standard output is kept line by
//! line (the services log JSON there) and can be copied to a file.
//!
//! A group of its own is also out of reach of a terminal's Ctrl-C, which would otherwise stop the
//! children with the test binary; and a test binary killed by a signal runs no `Drop`. So each
//! child gets a watchdog in its group (a shell that checks once a second that the harness still
//! runs) which kills the group once the harness is gone.

use crate::poll::{Patience, Poll, eventually};
use anyhow::{Context as _, bail};
use serde_json::Value;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// A loopback port nobody listens on right now (bound and released; the child binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The signals the harness sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Asks for a graceful stop.
    Term,
    /// `kill -9`: no chance to finish anything.
    Kill,
    /// Freezes the process without it noticing.
    Stop,
    /// Lets a frozen process go on.
    Cont,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Self::Term => "TERM",
            Self::Kill => "KILL",
            Self::Stop => "STOP",
            Self::Cont => "CONT",
        }
    }
}

/// Sends `signal` to the process `pid`, or to its whole group when `group` is set.
pub fn send(signal: Signal, pid: u32, group: bool) -> anyhow::Result<()> {
    let target = if group { format!("-{pid}") } else { pid.to_string() };
    let status = std::process::Command::new("kill")
        .args(["-s", signal.name(), "--", &target])
        .stderr(Stdio::null())
        .status()
        .context("cannot run `kill`")?;
    anyhow::ensure!(status.success(), "kill -s {} {target} failed", signal.name());
    Ok(())
}

/// The directory of the service binaries that go with the running test or bench: the profile
/// directory cargo put this executable's `deps/` in (`target/debug` for tests, `target/release`
/// for `cargo bench`). A crate's tests can only name their own crate's binaries
/// (`CARGO_BIN_EXE_*`), so the binaries are built here, in the same profile, when one is missing.
pub fn binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of this executable");
    let mut dir = exe.parent().expect("a directory").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let services = ["gateway", "customer-api", "transaction-api"];
    if services.iter().any(|name| !dir.join(name).exists()) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        // Every binary of the workspace, as `make` builds them: selecting packages (`-p`) would
        // resolve the dependencies' features differently and compile them a second time.
        build.args(["build", "--workspace", "--bins"]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building the service binaries failed");
    }
    dir
}

/// One program, started and restarted as the harness says.
pub struct Process {
    pub name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_removed: Vec<OsString>,
    port: Option<u16>,
    log_file: Option<PathBuf>,
    /// Standard output, a line each, across restarts.
    lines: Arc<Mutex<Vec<String>>>,
    child: Option<Child>,
    /// The current (or last) child's group, and the watchdog in it.
    group: Option<(u32, Child)>,
}

impl Process {
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_removed: Vec::new(),
            port: None,
            log_file: None,
            lines: Arc::default(),
            child: None,
            group: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn envs<K: Into<OsString>, V: Into<OsString>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        self.env.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Not inherited from the harness's environment (where a value would change what is tested).
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env_removed.push(key.into());
        self
    }

    /// The loopback port it serves on, for [`Process::url`] and readiness.
    pub fn serving_on(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Appends both output streams to `path` as well (restarts share the file); without one,
    /// standard error goes where the harness's goes.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port.expect("a process with a port"))
    }

    pub fn port(&self) -> u16 {
        self.port.expect("a process with a port")
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.log_file.as_deref()
    }

    /// Starts it (again, after it stopped). `TEST_LOG` in the environment echoes its output.
    pub fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.alive(), "{} is already running", self.name);
        self.reap_group();
        let log = match &self.log_file {
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ),
            None => None,
        };
        let mut command = Command::new(&self.program);
        for key in &self.env_removed {
            command.env_remove(key);
        }
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if log.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.program.display()))?;
        let echo = std::env::var_os("TEST_LOG").is_some().then(|| self.name.clone());
        let copy = |log: &Option<File>| log.as_ref().and_then(|f| f.try_clone().ok());
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(keep_lines(stdout, Some(self.lines.clone()), copy(&log), echo));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(keep_lines(stderr, None, log, None));
        }
        let pid = child.id().context("the child has no pid")?;
        self.child = Some(child);
        self.group = Some((pid, watchdog(pid)?));
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` to the process alone.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self.pid().with_context(|| format!("{} is not running", self.name))?;
        send(signal, pid, false)
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        self.signal(if frozen { Signal::Stop } else { Signal::Cont })
    }

    /// `kill -9` of its group, and waits until it is gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = send(Signal::Kill, pid, true);
            }
            child.start_kill().ok();
            child
                .wait()
                .await
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        self.reap_group();
        Ok(())
    }

    /// SIGTERM (and SIGCONT, should it be frozen), then waits up to `limit` for a clean exit
    /// (status 0). Returns how long it took. One that overstays is killed and reported.
    pub async fn terminate(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        let Some(pid) = self.pid() else {
            bail!("{} is not running", self.name)
        };
        let started = Instant::now();
        send(Signal::Term, pid, false)?;
        send(Signal::Cont, pid, false)?;
        let child = self.child.as_mut().context("child vanished")?;
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) => {
                self.child = None;
                self.reap_group();
                anyhow::ensure!(status.success(), "{} exited with {status} after SIGTERM", self.name);
                Ok(started.elapsed())
            }
            Ok(Err(err)) => Err(err).with_context(|| format!("waiting for {}", self.name)),
            Err(_) => {
                self.kill().await?;
                bail!("{} did not exit within {} s of SIGTERM", self.name, limit.as_secs())
            }
        }
    }

    /// The status code of `GET /ready`, or `None` when it does not answer.
    pub async fn ready_status(&self, http: &reqwest::Client) -> Option<u16> {
        let response = http.get(self.url("/ready")).send().await.ok()?;
        Some(response.status().as_u16())
    }

    /// Polls `/ready` until it answers 200; returns how long that took. Fails at once, with the
    /// end of its output, when the process exits instead.
    pub async fn wait_ready(&mut self, http: &reqwest::Client, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let patience = Patience::within(limit).every(Duration::from_millis(200));
        let ready = eventually(&format!("{} to be ready", self.name), patience, async || {
            match self.ready_status(http).await {
                Some(200) => Poll::Ready(true),
                _ if !self.alive() => Poll::Ready(false),
                status => Poll::Pending(status),
            }
        })
        .await?;
        if !ready {
            bail!("{} is not running; its output ends:\n{}", self.name, self.log_tail(15));
        }
        Ok(started.elapsed())
    }

    /// Its standard output so far, a line each.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Its standard output as JSON log lines; a line that is not JSON is kept as a string (which
    /// fails the tests that read it as an object).
    pub fn logs(&self) -> Vec<Value> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| Value::String(line.clone())))
            .collect()
    }

    /// The last `count` lines of its log file (both streams), or of its standard output.
    pub fn log_tail(&self, count: usize) -> String {
        let all = match &self.log_file {
            Some(path) => std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect(),
            None => self.lines(),
        };
        all[all.len().saturating_sub(count)..].join("\n")
    }

    /// Kills what is left of the last child's group once the child is gone: its watchdog.
    fn reap_group(&mut self) {
        if let Some((group, mut watchdog)) = self.group.take() {
            // While the watchdog lives the group's number cannot be handed out again.
            if let Ok(None) = watchdog.try_wait() {
                let _ = send(Signal::Kill, group, true);
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // kill_on_drop reaches the child itself; the group kill also reaches anything it started.
        if let Some(pid) = self.pid() {
            let _ = send(Signal::Kill, pid, true);
        }
        self.reap_group();
    }
}

/// A shell in the group of `pid` that kills the group once this process is gone.
fn watchdog(pid: u32) -> anyhow::Result<Child> {
    let harness = std::process::id().to_string();
    Command::new("sh")
        .args([
            "-c",
            "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; kill -KILL 0",
            "watchdog",
            &harness,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(i32::try_from(pid).context("a pid beyond i32")?)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the watchdog shell")
}

/// Keeps `stream`'s lines in `sink`, appends them to `file`, and echoes them under `echo`'s name.
async fn keep_lines(
    stream: impl AsyncRead + Unpin,
    sink: Option<Arc<Mutex<Vec<String>>>>,
    mut file: Option<File>,
    echo: Option<String>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(name) = &echo {
            eprintln!("[{name}] {line}");
        }
        if let Some(file) = &mut file {
            let _ = writeln!(file, "{line}");
        }
        if let Some(sink) = &sink {
            sink.lock().unwrap().push(line);
        }
    }
}
