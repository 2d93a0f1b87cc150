//! Typed, layered configuration: built-in defaults, then an optional TOML file named by
//! `CONFIG_FILE`, then environment variables named like the fields in upper case
//! (`DATABASE_URL`, `HTTP_ADDR`, ...). AWS settings are not here: the SDK reads the standard
//! `AWS_ENDPOINT_URL`, `AWS_REGION` and credential chain itself.

use super::telemetry::LogFormat;
use crate::messaging::topology::TopologyConfig;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::net::SocketAddr;
use std::time::Duration;

/// Settings every service has. Services embed it with `#[serde(flatten)]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommonConfig {
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// `sqlite:<file>` (created on first run) or `postgres://...`.
    pub database_url: String,
    /// Long-poll wait of each SQS receive, 0 to 20 seconds.
    pub receive_wait_seconds: i32,
    /// How often the outbox relay looks for rows nobody told it about (crash recovery).
    pub relay_interval_ms: u64,
    /// How long sent outbox rows are kept for inspection.
    pub outbox_retention_hours: u64,
    /// How long handled message ids are kept for deduplication (at least 15 days; see `retention`).
    pub processed_retention_days: u64,
    /// Longest a message handler may take (its transaction included) before it is abandoned and
    /// the message retried like after a database failure; also PostgreSQL's `statement_timeout`.
    pub handler_timeout_seconds: u64,
    /// Start the outbox relay. Only tests turn this off, to simulate a crash before publishing.
    pub relay_enabled: bool,
    pub log_format: LogFormat,
    #[serde(flatten)]
    pub topology: TopologyConfig,
}

impl CommonConfig {
    pub fn new(http_addr: SocketAddr, database_url: impl Into<String>) -> Self {
        Self {
            http_addr,
            database_url: database_url.into(),
            receive_wait_seconds: 10,
            relay_interval_ms: 1000,
            outbox_retention_hours: 168,
            processed_retention_days: 30,
            handler_timeout_seconds: 10,
            relay_enabled: true,
            log_format: LogFormat::default(),
            topology: TopologyConfig::default(),
        }
    }

    pub fn relay_interval(&self) -> Duration {
        Duration::from_millis(self.relay_interval_ms.max(10))
    }

    pub fn handler_timeout(&self) -> Duration {
        Duration::from_secs(self.handler_timeout_seconds.max(1))
    }

    /// The receive wait, clamped to what SQS accepts.
    pub fn receive_wait(&self) -> i32 {
        self.receive_wait_seconds.clamp(0, 20)
    }
}

/// A setting that must never be printed: `Debug` shows `***`. Read it with [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Loads a service's configuration: `defaults`, then `CONFIG_FILE` (TOML) if set, then the
/// environment. Unknown variables are ignored; a variable that does not parse is an error that
/// names it.
pub fn load<T: Serialize + DeserializeOwned>(defaults: T) -> Result<T, Box<figment::Error>> {
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Ok(path) = std::env::var("CONFIG_FILE") {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(Env::raw().ignore(&["CONFIG_FILE"]))
        .extract()
        .map_err(Box::new)
}
