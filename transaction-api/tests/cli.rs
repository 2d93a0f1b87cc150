//! The binary's command line and configuration checks, before it touches the database or the
//! bus: the checks every service gets (`testkit::cli_tests!`) and its own refusals (the
//! mechanism itself is tested in `utility::runtime::config` and `gateway/tests/cli.rs`).

use testkit::cli::{run, text};

const TRANSACTION_API: &str = env!("CARGO_BIN_EXE_transaction-api");

testkit::cli_tests!(
    TRANSACTION_API,
    transaction_api::Config,
    ["  DATABASE_URL  [default: sqlite:data/transaction-api.db]"]
);

#[test]
fn a_bonus_below_one_point_is_refused_by_name() {
    let out = run(
        TRANSACTION_API,
        &[],
        &[("BONUS_POINTS", "0"), ("BONUS_BUDGET_POINTS", "-5")],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("BONUS_POINTS is 0 (from the environment); it must be at least 1"),
        "{err}"
    );
    assert!(err.contains("BONUS_BUDGET_POINTS is -5"), "{err}");
}
