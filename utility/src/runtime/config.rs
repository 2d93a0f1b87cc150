//! Typed, layered configuration: built-in defaults, then an optional TOML file named by
//! `CONFIG_FILE`, then environment variables named like the fields in upper case
//! (`DATABASE_URL`, `HTTP_ADDR`, ...). AWS settings are not here: the SDK reads the standard
//! `AWS_ENDPOINT_URL`, `AWS_REGION` and credential chain itself.
//!
//! A setting is declared once, as a field of a service's `Config` struct (or of [`CommonConfig`],
//! which every service flattens in). Everything else is derived from that declaration through the
//! struct's JSON schema (`schemars`), so it cannot drift:
//!
//! - `--help` lists every field: its variable, its default (from `Config::default()`), its range
//!   and its doc comment;
//! - a key in the `CONFIG_FILE` that is not a field stops the service, naming the key;
//! - a number outside the field's `#[schemars(range(min = .., max = ..))]` stops the service,
//!   naming the variable and where the value came from;
//! - a field of type [`Secret`] is never shown: not by `--help`, not in errors, not by `Debug`;
//! - a value of a type that parses itself (a [`CommaSeparated`] list of CIDRs, say) is parsed
//!   here, so one that does not parse stops the service like any other, naming the variable and
//!   where the value came from, instead of failing later at the first use.
//!
//! A new setting therefore takes a documented field, its default, and a range when it has one.

use super::telemetry::LogFormat;
use crate::messaging::topology::TopologyConfig;
use crate::storage::retention::MIN_PROCESSED_RETENTION_DAYS;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

mod cli;
mod list;
mod schema;

pub use cli::{Invocation, ServiceInfo, from_command_line, help, parse_args};
pub use list::CommaSeparated;
pub use schema::undocumented;
use schema::{Setting, settings};

/// Settings every service has. Services embed it with `#[serde(flatten)]`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CommonConfig {
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// Longest a connection may take from being ready for a request to that request's headers
    /// being complete, in seconds; also how long an idle keep-alive connection stays open.
    /// Behind a load balancer, keep it above the balancer's idle timeout (60 s on an ALB).
    #[schemars(range(min = 1))]
    pub http_header_timeout_seconds: u64,
    /// HTTP connections open at once, at most; further ones wait in the listen backlog. Event
    /// streams and held requests each keep one open.
    #[schemars(range(min = 1))]
    pub http_max_connections: usize,
    /// `sqlite:<file>` (created on first run) or `postgres://user:password@host/database`. Secret:
    /// a PostgreSQL URL carries the password, so no log line or `--help` may show it.
    pub database_url: Secret<String>,
    /// The database owner's URL (`MIGRATE_DATABASE_URL`), read only by `<service> migrate`: that
    /// step migrates as the owner and gives the user of `DATABASE_URL` (created if missing, its
    /// password set from that URL) the right to read and write rows, nothing else. Unset, it
    /// migrates with `DATABASE_URL`. The service itself never reads it.
    pub migrate_database_url: Option<Secret<String>>,
    /// Long-poll wait of each SQS receive, in seconds (SQS accepts 0 to 20).
    #[schemars(range(min = 0, max = 20))]
    pub receive_wait_seconds: i32,
    /// How often the outbox relay looks for rows nobody told it about (crash recovery), in ms.
    #[schemars(range(min = 10))]
    pub relay_interval_ms: u64,
    /// How long sent outbox rows are kept for inspection.
    pub outbox_retention_hours: u64,
    /// How long handled message ids are kept for deduplication: at least 15 days, because a
    /// message may be redriven from its DLQ up to 14 days after it arrived.
    #[schemars(range(min = MIN_PROCESSED_RETENTION_DAYS))]
    pub processed_retention_days: u64,
    /// Longest a message handler may take (its transaction included) before it is abandoned and
    /// the message retried like after a database failure; also PostgreSQL's `statement_timeout`.
    #[schemars(range(min = 1))]
    pub handler_timeout_seconds: u64,
    /// Batches the consumer receives and handles at once, at most: receives in flight grow
    /// towards it while they come back full and fall back to one long poll when the queue is
    /// idle. On PostgreSQL each batch in flight may hold a connection of its own.
    #[schemars(range(min = 1, max = 64))]
    pub max_batches_in_flight: usize,
    /// Start the outbox relay. Only tests turn this off, to simulate a crash before publishing.
    pub relay_enabled: bool,
    /// Log lines as `text` (for a terminal) or `json` (for journald and log shippers); `RUST_LOG`
    /// sets the filter.
    pub log_format: LogFormat,
    /// How often the `gauges` log line (outbox backlog; on the gateway, stalled sagas) is
    /// written, in seconds: what the EC2 deployment's CloudWatch metric filters read.
    #[schemars(range(min = 1))]
    pub gauges_log_seconds: u64,
    #[serde(flatten)]
    pub topology: TopologyConfig,
}

impl CommonConfig {
    pub fn new(http_addr: SocketAddr, database_url: impl Into<String>) -> Self {
        Self {
            http_addr,
            database_url: Secret::new(database_url.into()),
            migrate_database_url: None,
            // Short off a load balancer: a client trickling its headers is cut off within it.
            http_header_timeout_seconds: 10,
            http_max_connections: 2048,
            // The longest long poll SQS allows: an idle poller costs 3 requests a minute.
            receive_wait_seconds: 20,
            relay_interval_ms: 1000,
            outbox_retention_hours: 168,
            processed_retention_days: 30,
            handler_timeout_seconds: 10,
            max_batches_in_flight: crate::messaging::consumer::DEFAULT_MAX_BATCHES,
            relay_enabled: true,
            log_format: LogFormat::default(),
            gauges_log_seconds: 60,
            topology: TopologyConfig::default(),
        }
    }

    pub fn relay_interval(&self) -> Duration {
        Duration::from_millis(self.relay_interval_ms)
    }

    /// The HTTP listener's connection limits.
    pub fn connection_limits(&self) -> crate::http::ConnectionLimits {
        crate::http::ConnectionLimits {
            header_read: Duration::from_secs(self.http_header_timeout_seconds.max(1)),
            max_connections: self.http_max_connections.max(1),
        }
    }

    pub fn gauges_log_every(&self) -> Duration {
        Duration::from_secs(self.gauges_log_seconds.max(1))
    }

    pub fn handler_timeout(&self) -> Duration {
        Duration::from_secs(self.handler_timeout_seconds)
    }

    /// The receive wait (0 to 20 s: [`load`] refuses anything else).
    pub fn receive_wait(&self) -> i32 {
        self.receive_wait_seconds
    }
}

/// A value that must never be shown: `Debug` prints `***`, `--help` shows no default and
/// configuration errors never quote it. It (de)serializes as the bare value; read it with
/// [`Secret::expose`]. Use it for tokens and passwords, e.g. `pub operator_token: Option<Secret<String>>`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<T: JsonSchema> JsonSchema for Secret<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // `writeOnly` is JSON Schema's own word for "accepted, never shown back".
        let mut schema = T::json_schema(generator);
        schema.insert("writeOnly".to_owned(), true.into());
        schema
    }
}

/// What a service's configuration struct must be: defaults, a schema, and serde both ways.
pub trait Settings: Serialize + DeserializeOwned + JsonSchema + Default {}
impl<T: Serialize + DeserializeOwned + JsonSchema + Default> Settings for T {}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file that cannot be read or a value that does not parse (figment names the key and
    /// where it came from).
    #[error(transparent)]
    Unreadable(#[from] Box<figment::Error>),
    /// Unknown keys in the file and values out of range, each named.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl From<figment::Error> for ConfigError {
    fn from(err: figment::Error) -> Self {
        Self::Unreadable(Box::new(err))
    }
}

/// Loads a service's configuration: `defaults`, then `CONFIG_FILE` (TOML) if set, then the
/// environment. A key in the file that is no setting, a value that does not parse and a number
/// out of its setting's range are errors that name them. Unknown environment variables are
/// ignored (the environment holds much else).
pub fn load<T: Settings>(defaults: T) -> Result<T, ConfigError> {
    let file = std::env::var_os("CONFIG_FILE").map(std::path::PathBuf::from);
    load_from(defaults, file.as_deref(), Env::raw().ignore(&["CONFIG_FILE"]))
}

fn load_from<T: Settings>(defaults: T, file: Option<&std::path::Path>, env: impl Provider) -> Result<T, ConfigError> {
    let settings = settings::<T>();
    let defaults = figment::value::Value::serialize(defaults)?;
    let mut problems = Vec::new();
    let mut figment = Figment::from(Serialized::defaults(defaults.clone()));
    if let Some(path) = file {
        let toml = Toml::file_exact(path);
        for dict in toml.data()?.values() {
            for key in dict.keys() {
                if !settings.iter().any(|s| &s.key == key) {
                    problems.push(unknown_key(key, path, &settings));
                }
            }
        }
        figment = figment.merge(toml);
    }
    let figment = figment.merge(env);
    // Ranges are checked on the merged values, so they are reported with a value that does
    // not parse, all in one go.
    for setting in &settings {
        let value = figment.find_value(&setting.key).ok();
        let value = value.and_then(|v| serde_json::to_value(v).ok()).unwrap_or(Value::Null);
        problems.extend(setting.out_of_range(&value, &figment));
    }
    match figment.extract() {
        Err(err) => {
            problems.extend(unparsable::<T>(&err, &figment, &settings, &defaults));
            Err(ConfigError::Invalid(problems))
        }
        Ok(_) if !problems.is_empty() => Err(ConfigError::Invalid(problems)),
        Ok(config) => Ok(config),
    }
}

/// Where a value came from, for messages: ` (from TOML file <path>)`, ` (from the environment)`.
fn origin(metadata: Option<&figment::Metadata>) -> String {
    match metadata {
        Some(md) => match &md.source {
            Some(source) => format!(" (from {} {source})", md.name),
            None if md.name.contains("environment") => " (from the environment)".to_owned(),
            None => String::new(),
        },
        None => String::new(),
    }
}

/// The settings whose values do not parse, each named. serde's `flatten` (how every service
/// embeds [`CommonConfig`]) drops the key from figment's error, so each value that is not the
/// default is tried alone on top of the defaults; the error is kept as is if none fails alone.
fn unparsable<T: Settings>(
    err: &figment::Error,
    figment: &Figment,
    settings: &[Setting],
    defaults: &figment::value::Value,
) -> Vec<String> {
    let mut found = Vec::new();
    for setting in settings {
        let Ok(value) = figment.find_value(&setting.key) else {
            continue;
        };
        if defaults.find_ref(&setting.key) == Some(&value) {
            continue;
        }
        let alone = Figment::from(Serialized::defaults(defaults.clone()))
            .merge(Serialized::default(&setting.key, &value))
            .extract::<T>();
        if let Err(alone) = alone {
            let origin = origin(figment.find_metadata(&setting.key));
            found.push(if setting.secret() {
                format!("{}{origin} does not parse", setting.variable())
            } else {
                format!("{}{origin}: {}", setting.variable(), alone.kind)
            });
        }
    }
    if found.is_empty() {
        found.push(err.to_string());
    }
    found
}

fn unknown_key(key: &str, path: &std::path::Path, settings: &[Setting]) -> String {
    let mut problem = format!("unknown setting `{key}` in {}", path.display());
    let lower = key.to_lowercase();
    let closest = settings
        .iter()
        .map(|s| (edit_distance(&lower, &s.key), &s.key))
        .min()
        .filter(|(distance, _)| *distance <= 2);
    if let Some((_, name)) = closest {
        let _ = write!(problem, " (did you mean `{name}`?)");
    }
    problem
}

/// Levenshtein distance, for "did you mean" on a mistyped key.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb)).min(row[j] + 1).min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub(super) struct Sample {
        #[serde(flatten)]
        common: CommonConfig,
        /// Points per thing.
        #[schemars(range(min = 1))]
        points: i64,
        /// A token nobody may see.
        token: Option<Secret<String>>,
        /// A password with a default.
        password: Secret<String>,
        /// Ports to watch, comma-separated.
        ports: CommaSeparated<u16>,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                common: CommonConfig::new(([127, 0, 0, 1], 8080).into(), "postgres://app:hunter2@db/app"),
                points: 5,
                token: None,
                password: Secret::new("swordfish".to_owned()),
                ports: CommaSeparated::default(),
            }
        }
    }

    pub(super) const INFO: ServiceInfo = ServiceInfo {
        name: "sample",
        version: "1.2.3",
        about: "A sample service.",
    };

    /// Stands in for the environment (the real one is process-global): named as figment's `Env`
    /// names itself, values parsed the way it parses them.
    struct FakeEnv(figment::value::Dict);

    impl Provider for FakeEnv {
        fn metadata(&self) -> figment::Metadata {
            figment::Metadata::named("environment variable(s)")
        }

        fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
            Ok(figment::Profile::Default.collect(self.0.clone()))
        }
    }

    fn env(pairs: &[(&str, &str)]) -> FakeEnv {
        FakeEnv(
            pairs
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.parse::<figment::value::Value>().unwrap()))
                .collect(),
        )
    }

    fn problems(result: Result<Sample, ConfigError>) -> Vec<String> {
        match result {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn every_common_setting_is_documented() {
        assert_eq!(undocumented::<CommonConfig>(), Vec::<String>::new());
    }

    #[test]
    fn debug_never_shows_the_database_url() {
        let config = load_from(
            Sample::default(),
            None,
            env(&[("DATABASE_URL", "postgres://app:swordfish@db/app")]),
        )
        .unwrap();
        assert_eq!(config.common.database_url.expose(), "postgres://app:swordfish@db/app");
        let shown = format!("{config:?} {:#?}", config.common);
        assert!(!shown.contains("swordfish") && !shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn values_from_the_environment_are_taken() {
        let config = load_from(
            Sample::default(),
            None,
            env(&[("RECEIVE_WAIT_SECONDS", "20"), ("TOKEN", "t")]),
        )
        .unwrap();
        assert_eq!(config.common.receive_wait_seconds, 20);
        assert_eq!(config.token.as_ref().map(Secret::expose).map(String::as_str), Some("t"));
    }

    #[test]
    fn out_of_range_values_are_refused_and_named() {
        let found = problems(load_from(
            Sample::default(),
            None,
            env(&[
                ("RECEIVE_WAIT_SECONDS", "25"),
                ("PROCESSED_RETENTION_DAYS", "14"),
                ("POINTS", "0"),
            ]),
        ));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found.contains(&"RECEIVE_WAIT_SECONDS is 25 (from the environment); it must be 0 to 20".to_owned()),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with("PROCESSED_RETENTION_DAYS is 14")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("POINTS is 0") && p.ends_with("at least 1")),
            "{found:?}"
        );
        let negative = problems(load_from(
            Sample::default(),
            None,
            env(&[("RECEIVE_WAIT_SECONDS", "-1")]),
        ));
        assert!(negative[0].starts_with("RECEIVE_WAIT_SECONDS is -1"), "{negative:?}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused_with_a_suggestion() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "recieve_wait_seconds = 5\nRELAY_INTERVAL_MS = 100\nnonsense = 1\npoints = 7\n",
        )
        .unwrap();
        let found = problems(load_from(Sample::default(), Some(&path), env(&[])));
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found[0].contains("`RELAY_INTERVAL_MS`") && found[0].contains("did you mean `relay_interval_ms`?"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("unknown setting `nonsense` in") && !found[1].contains("did you mean"),
            "{found:?}"
        );
        assert!(found[2].contains("did you mean `receive_wait_seconds`?"), "{found:?}");

        std::fs::write(&path, "points = 7\nreceive_wait_seconds = 30\n").unwrap();
        let found = problems(load_from(Sample::default(), Some(&path), env(&[])));
        assert!(
            found[0].starts_with("RECEIVE_WAIT_SECONDS is 30 (from TOML file"),
            "{found:?}"
        );
        assert!(found[0].contains("config.toml"), "{found:?}");

        std::fs::write(&path, "points = 7\n").unwrap();
        let config = load_from(Sample::default(), Some(&path), env(&[("POINTS", "9")])).unwrap();
        assert_eq!(config.points, 9, "the environment wins over the file");
    }

    #[test]
    fn values_that_do_not_parse_are_named() {
        let found = problems(load_from(
            Sample::default(),
            None,
            env(&[("RECEIVE_WAIT_SECONDS", "soon")]),
        ));
        assert_eq!(
            found,
            ["RECEIVE_WAIT_SECONDS (from the environment): invalid type: found string \"soon\", expected i32"]
        );
        // A secret's value is not quoted, even when it does not parse (figment reads `7` as a number).
        let found = problems(load_from(
            Sample::default(),
            None,
            env(&[("HTTP_ADDR", "localhost"), ("PASSWORD", "7")]),
        ));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("HTTP_ADDR (from the environment): invalid socket address"),
            "{found:?}"
        );
        assert_eq!(found[1], "PASSWORD (from the environment) does not parse");
    }

    #[test]
    fn a_list_is_parsed_at_load_and_a_bad_item_named_with_its_setting() {
        let config = load_from(Sample::default(), None, env(&[("PORTS", "80, 443")])).unwrap();
        assert_eq!(*config.ports, [80, 443]);
        let config = load_from(Sample::default(), None, env(&[("PORTS", "80")])).unwrap();
        assert_eq!(*config.ports, [80], "a value the environment reads as a number");
        let found = problems(load_from(Sample::default(), None, env(&[("PORTS", "80, http")])));
        assert_eq!(found, ["PORTS (from the environment): invalid digit found in string"]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "ports = \"80,65536\"\n").unwrap();
        let found = problems(load_from(Sample::default(), Some(&path), env(&[])));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("PORTS (from TOML file")
                && found[0].ends_with("number too large to fit in target type"),
            "{found:?}"
        );
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("recieve", "receive"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("points", "points"), 0);
    }
}
