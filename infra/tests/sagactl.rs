//! `sagactl` as a user runs it: the destructive commands refuse a non-local endpoint without
//! `--yes` before they call anything, and errors read as one line per cause. No AWS and no
//! emulator needed: the endpoints here either refuse before any call or answer nothing.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs sagactl with a clean AWS environment plus `env`.
fn sagactl(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sagactl"));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_") || key == "NAME_PREFIX" || key == "TOPOLOGY_STACK" {
            command.env_remove(key);
        }
    }
    command
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied());
    let started = Instant::now();
    let output = command.output().expect("run sagactl");
    (output, started.elapsed())
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A TEST-NET address (RFC 5737): nothing answers there, so a call would hang until its timeout.
const REMOTE: &str = "http://192.0.2.1:4566";

#[test]
fn destroy_refuses_aws_and_remote_endpoints_without_yes_before_any_call() {
    for (command, endpoint) in [
        ("destroy", None),
        ("destroy", Some(REMOTE)),
        ("destroy-app", None),
        ("destroy-app", Some(REMOTE)),
    ] {
        let env: Vec<(&str, &str)> = endpoint.map(|e| ("AWS_ENDPOINT_URL", e)).into_iter().collect();
        let (output, took) = sagactl(&[command, "--prefix", "saga"], &env);
        let text = stderr(&output);
        assert!(!output.status.success(), "{command} {endpoint:?} succeeded: {text}");
        assert!(
            text.contains("refusing to") && text.contains("--yes"),
            "{command}: {text}"
        );
        let shown = endpoint.unwrap_or("AWS");
        assert!(text.contains(shown), "{command} does not name {shown}: {text}");
        assert!(output.stdout.is_empty(), "{command} printed results");
        assert!(
            took < Duration::from_secs(2),
            "{command} took {took:?}: did it call the endpoint?"
        );
    }
}

/// With a local endpoint the guard lets the command through: it goes on to ask who the account
/// is, and the failure to reach it is one readable line per cause, printed once.
#[test]
fn a_local_endpoint_needs_no_yes_and_failures_read_as_one_line_per_cause() {
    let endpoint = format!("http://127.0.0.1:{}", testkit::free_port());
    let (output, _) = sagactl(
        &["destroy", "--prefix", "saga"],
        &[("AWS_ENDPOINT_URL", &endpoint), ("AWS_MAX_ATTEMPTS", "1")],
    );
    let text = stderr(&output);
    assert!(!output.status.success(), "{text}");
    assert!(!text.contains("refusing"), "{text}");
    assert!(text.contains("cannot tell which account"), "{text}");
    assert_eq!(text.matches("sagactl: error:").count(), 1, "{text}");
    assert!(text.lines().count() <= 4, "more than a line per cause: {text}");
    assert!(!text.contains("SdkBody") && !text.contains("extensions"), "{text}");
}
