//! The binary's command line and configuration checks, before it touches the database or the
//! bus: `--help` lists every setting, `--version`, and refusals that name the bad setting.

use std::process::{Command, Output};

fn gateway(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .env_clear()
        // Nothing may be reached: a refusal must come before any I/O.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("DATABASE_URL", "sqlite::memory:")
        .envs(env.iter().copied())
        .output()
        .expect("the gateway binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_setting_has_a_description() {
    assert_eq!(
        utility::runtime::config::undocumented::<gateway::Config>(),
        Vec::<String>::new()
    );
}

#[test]
fn help_lists_every_setting_with_its_default() {
    let out = gateway(&["--help"], &[]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for line in [
        "  HTTP_ADDR  [default: 127.0.0.1:8080]",
        "  CUSTOMER_API_URL  [default: http://127.0.0.1:8081]",
        "  MAX_BODY_BYTES  [default: 16384; at least 1]",
        "  RECEIVE_WAIT_SECONDS  [default: 20; 0 to 20]",
        "  TOPOLOGY_STACK  [default: saga-messaging]",
    ] {
        assert!(help.contains(line), "{line:?} missing from:\n{help}");
    }
}

#[test]
fn version() {
    let out = gateway(&["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), format!("gateway {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn an_unknown_argument_is_refused() {
    let out = gateway(&["--port", "80"], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown argument `--port`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn out_of_range_values_and_unknown_file_keys_are_refused_by_name() {
    let out = gateway(&[], &[("RECEIVE_WAIT_SECONDS", "25"), ("STALL_AFTER_SECONDS", "0")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("RECEIVE_WAIT_SECONDS is 25 (from the environment); it must be 0 to 20"),
        "{err}"
    );
    assert!(err.contains("STALL_AFTER_SECONDS is 0"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, "max_body_byte = 100\n").unwrap();
    let out = gateway(&[], &[("CONFIG_FILE", file.to_str().unwrap())]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown setting `max_body_byte`") && err.contains("did you mean `max_body_bytes`?"),
        "{err}"
    );
}
