//! The binary's command line and configuration checks, before it touches the database or the
//! bus: the checks every service gets (`testkit::cli_tests!`) and its own refusals (the
//! mechanism itself is tested in `utility::runtime::config` and `gateway/tests/cli.rs`).

use testkit::cli::{run, text};

const CUSTOMER_API: &str = env!("CARGO_BIN_EXE_customer-api");

testkit::cli_tests!(
    CUSTOMER_API,
    customer_api::Config,
    ["  DATABASE_URL  [default: sqlite:data/customer-api.db]"]
);

#[test]
fn a_short_processed_retention_is_refused_by_name() {
    let out = run(CUSTOMER_API, &[], &[("PROCESSED_RETENTION_DAYS", "14")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("PROCESSED_RETENTION_DAYS is 14 (from the environment); it must be at least 15"),
        "{err}"
    );
}
