//! The binary's command line and configuration checks, before it touches the database or the
//! bus: every setting documented and listed by `--help` with its default, `--version`
//! (`testkit::cli_tests!`), and refusals that name the bad setting.

use testkit::cli::{run, text};

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

testkit::cli_tests!(
    GATEWAY,
    gateway::Config,
    [
        "  HTTP_ADDR  [default: 127.0.0.1:8080]",
        "  LOOKUP_TIMEOUT_MS  [default: 3000; at least 1]",
        "  MAX_BODY_BYTES  [default: 16384; at least 1]",
        "  RECEIVE_WAIT_SECONDS  [default: 20; 0 to 20]",
        "  TOPOLOGY_STACK  [default: saga-messaging]",
    ]
);

#[test]
fn an_unknown_argument_is_refused() {
    let out = run(GATEWAY, &["--port", "80"], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown argument `--port`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn out_of_range_values_and_unknown_file_keys_are_refused_by_name() {
    let out = run(
        GATEWAY,
        &[],
        &[("RECEIVE_WAIT_SECONDS", "25"), ("STALL_AFTER_SECONDS", "0")],
    );
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
    let out = run(GATEWAY, &[], &[("CONFIG_FILE", file.to_str().unwrap())]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown setting `max_body_byte`") && err.contains("did you mean `max_body_bytes`?"),
        "{err}"
    );
}
