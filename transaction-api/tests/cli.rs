//! The binary's command line and configuration checks, before it touches the database or the
//! bus (the mechanism itself is tested in `utility::runtime::config` and `gateway/tests/cli.rs`).

use std::process::{Command, Output};

fn service(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_transaction-api"))
        .args(args)
        .env_clear()
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("DATABASE_URL", "sqlite::memory:")
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

#[test]
fn every_setting_has_a_description() {
    assert_eq!(
        utility::runtime::config::undocumented::<transaction_api::Config>(),
        Vec::<String>::new()
    );
}

#[test]
fn help_and_version() {
    let help = service(&["--help"], &[]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("  DATABASE_URL  [default: sqlite:data/transaction-api.db]"),
        "{help}"
    );
    let version = service(&["-V"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("transaction-api {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bonus_below_one_point_is_refused_by_name() {
    let out = service(&[], &[("BONUS_POINTS", "0"), ("BONUS_BUDGET_POINTS", "-5")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("BONUS_POINTS is 0 (from the environment); it must be at least 1"),
        "{err}"
    );
    assert!(err.contains("BONUS_BUDGET_POINTS is -5"), "{err}");
}
