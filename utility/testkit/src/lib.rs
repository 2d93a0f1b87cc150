//! The one test harness of the workspace, for its tests, the bench and the fault suite:
//!
//! | module | what |
//! |---|---|
//! | [`poll`] | [`eventually`]: wait for a condition with a deadline, failing with what was seen last |
//! | [`db`] | [`TestDb`]: a fresh SQLite file or PostgreSQL database per service, dropped after |
//! | [`stack`] | [`TestStack`]: an isolated copy of the messaging stack, deleted after |
//! | [`emulator`] | [`bus`]: the bus on LocalStack (or another emulator) with its dummy credentials |
//! | [`mail`] | the mail SES sent, read back from LocalStack (`/_aws/ses`): per address, its link and token |
//! | [`process`] | [`Process`]: a binary as a child in a process group of its own, its output kept; [`free_port`], [`binaries`] |
//! | [`processes`] | [`Processes`]: the three service binaries (one or more instances each) on a stack and databases |
//! | [`system`] | [`System`]: the three services in this process (feature `services`) |
//! | [`api`] | a router called in process ([`api::call`]) or served on a port ([`api::Served`]); the gateway's ([`api::GatewayApi`], feature `services`) |
//! | [`raw`], [`proxy`] | raw HTTP/1.1 bytes on a socket; TCP relays: one a test can cut, one that adds a fixed delay each way |
//! | [`cli`] | the checks every service binary's command line gets |
//!
//! Environment: `AWS_ENDPOINT_URL` (default `http://127.0.0.1:4566`), `TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`, an admin connection used to create and
//! drop one database per service per test), `TEST_LOG` to see the services' logs.

pub mod api;
pub mod cli;
pub mod db;
pub mod emulator;
pub mod mail;
pub mod otlp;
pub mod poll;
pub mod process;
pub mod processes;
pub mod proxy;
pub mod raw;
pub mod stack;
#[cfg(feature = "services")]
pub mod system;

pub use db::{Backend, TestDb};
pub use emulator::{ScratchQueue, bus, bus_at, emulator_endpoint, scratch_queue};
pub use poll::{Patience, Poll, Shown, TimedOut, eventually};
pub use process::{Process, Signal, binaries, free_port};
pub use processes::{Layout, Processes};
pub use stack::TestStack;
#[cfg(feature = "services")]
pub use system::{Options, Running, System, WEBHOOK_TEST_KEY, gateway_config, with_test_callbacks};

use serde_json::Value;
use sqlx::{AnyPool, Row};
use std::time::Duration;

/// How long any eventual condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(45);
/// The saga's terminal statuses, as `gateway::saga::Status` declares them (the gateway's
/// `tests/statuses.rs` holds the two together; the harness cannot depend on the gateway for
/// every crate that uses it).
pub const TERMINAL: [&str; 4] = ["completed", "rejected", "rolled_back", "expired"];
/// The operator token of every test gateway.
pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";

/// With `TEST_LOG` set, this process's logs (the services in process) go to stderr.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        // Nothing is exported from in-process tests (the OTLP test runs the real binaries).
        let _ = utility::runtime::telemetry::init(utility::runtime::telemetry::LogFormat::Text, "tests");
    }
}

/// The integer in the first column of the one row `sql` returns with `bind` bound.
pub async fn scalar_i64(pool: &AnyPool, sql: &str, bind: &str) -> i64 {
    sqlx::query(sql)
        .bind(bind)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .try_get::<i64, _>(0)
        .expect("integer column")
}

/// The statuses of an enrollment's history, in order.
pub fn history(body: &Value) -> Vec<String> {
    body["history"]
        .as_array()
        .expect("history array")
        .iter()
        .map(|h| h["status"].as_str().unwrap_or_default().to_owned())
        .collect()
}
