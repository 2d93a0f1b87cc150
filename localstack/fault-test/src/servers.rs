//! Servers the suite owns so it can stop and start them: a LocalStack on a port of its own (the
//! shared one must never be stopped) and a PostgreSQL cluster in a temporary directory. Both are
//! stopped when their guard is dropped.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `localstack/localstack.sh`, next to this crate's directory.
fn localstack_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../localstack.sh")
}

/// A LocalStack of the suite's own, run through `localstack/localstack.sh` (which honours
/// `LOCALSTACK_VENV` for an existing virtual environment).
pub struct OwnLocalStack {
    pub endpoint: String,
    listen: String,
    state_dir: PathBuf,
    running: bool,
}

impl OwnLocalStack {
    pub fn new(port: u16, state_dir: PathBuf) -> Self {
        let listen = format!("127.0.0.1:{port}");
        Self {
            endpoint: format!("http://{listen}"),
            listen,
            state_dir,
            running: false,
        }
    }

    /// Starts it and waits until healthy (LocalStack takes 10-20 s).
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let said = self.run_script("start").await?;
        anyhow::ensure!(
            said.starts_with("started"),
            "something already answers on {}: {said}",
            self.listen
        );
        self.running = true;
        Ok(())
    }

    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.run_script("stop").await?;
        self.running = false;
        Ok(())
    }

    async fn run_script(&self, action: &'static str) -> anyhow::Result<String> {
        let (listen, state_dir) = (self.listen.clone(), self.state_dir.clone());
        tokio::task::spawn_blocking(move || localstack_script_run(&listen, &state_dir, action)).await?
    }
}

fn localstack_script_run(listen: &str, state_dir: &Path, action: &str) -> anyhow::Result<String> {
    let output = Command::new("bash")
        .arg(localstack_script())
        .arg(action)
        .env("LOCALSTACK_LISTEN", listen)
        .env("LOCALSTACK_STATE_DIR", state_dir)
        .stdin(Stdio::null())
        .output()
        .context("cannot run localstack.sh")?;
    if !output.status.success() {
        bail!(
            "localstack.sh {action} on {listen} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl Drop for OwnLocalStack {
    fn drop(&mut self) {
        if self.running {
            let _ = localstack_script_run(&self.listen, &self.state_dir, "stop");
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install the PostgreSQL server package")?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A throw-away PostgreSQL cluster (trust auth, fsync off) listening on 127.0.0.1:`port`.
/// initdb refuses to run as root, so as root the tools run as the `postgres` user.
pub struct OwnPostgres {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
    running: bool,
}

impl OwnPostgres {
    pub async fn create(port: u16) -> anyhow::Result<Self> {
        let bin = postgres_bin_dir()?;
        let dir = std::env::temp_dir().join(format!("fault-test-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let as_postgres = running_as_root();
        if as_postgres {
            let status = Command::new("chown").arg("postgres:").arg(&dir).status()?;
            anyhow::ensure!(status.success(), "cannot chown {} to postgres", dir.display());
        }
        let this = Self {
            port,
            bin,
            dir,
            as_postgres,
            running: false,
        };
        let data = this.dir.join("data");
        let data = data.to_string_lossy().into_owned();
        let init = this.tool(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        );
        tokio::task::spawn_blocking(init).await??;
        Ok(this)
    }

    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A blocking closure running one PostgreSQL tool (as `postgres` when we are root).
    fn tool(&self, name: &str, args: &[&str]) -> impl FnOnce() -> anyhow::Result<()> + Send + 'static {
        let program = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command.args(args).stdin(Stdio::null());
        let name = name.to_owned();
        move || {
            let output = command.output().with_context(|| format!("cannot run {name}"))?;
            anyhow::ensure!(
                output.status.success(),
                "{name} failed: {}{}",
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
            Ok(())
        }
    }

    pub async fn start(&mut self) -> anyhow::Result<()> {
        let data = self.dir.join("data").to_string_lossy().into_owned();
        let log = self.dir.join("postgres.log").to_string_lossy().into_owned();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        tokio::task::spawn_blocking(self.tool(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "60", "-o", &options, "start"],
        ))
        .await??;
        self.running = true;
        Ok(())
    }

    /// A fast shutdown: open connections are cut, as when a database server goes away.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let data = self.dir.join("data").to_string_lossy().into_owned();
        tokio::task::spawn_blocking(self.tool("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])).await??;
        self.running = false;
        Ok(())
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.dir.join("data").to_string_lossy().into_owned();
            let _ = self.tool("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
