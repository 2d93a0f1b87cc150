//! What every service binary's command line is held to, before it touches the database or the
//! bus: every setting documented, `--help` listing every setting's variable with its default,
//! `--version`. [`cli_tests!`](crate::cli_tests) makes those tests for a binary; a crate's
//! `tests/cli.rs` adds only the refusals that are its own, with [`run`].

use schemars::JsonSchema;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// The common tests of a service binary's command line:
/// `cli_tests!(env!("CARGO_BIN_EXE_gateway"), gateway::Config, ["  HTTP_ADDR  [default: 127.0.0.1:8080]"])`
/// makes `every_setting_has_a_description`, `help_lists_every_setting_with_its_default` (every
/// variable with a default, and the lines given exactly) and `version`.
#[macro_export]
macro_rules! cli_tests {
    ($binary:expr, $config:ty, [$($line:expr),* $(,)?] $(,)?) => {
        #[test]
        fn every_setting_has_a_description() {
            $crate::cli::assert_documented::<$config>();
        }

        #[test]
        fn help_lists_every_setting_with_its_default() {
            $crate::cli::assert_help::<$config>($binary, &[$($line),*]);
        }

        #[test]
        fn version() {
            $crate::cli::assert_version($binary, env!("CARGO_PKG_VERSION"));
        }
    };
}

/// Runs `binary` with `args` and nothing of this environment but `env`, on an unreachable bus
/// and an in-memory database: a refusal must come before any I/O.
pub fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(binary)
        .args(args)
        .env_clear()
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("DATABASE_URL", "sqlite::memory:")
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{binary} does not run: {e}"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// No setting of `C` lacks a doc comment (which `--help` shows).
pub fn assert_documented<C: JsonSchema>() {
    assert_eq!(utility::runtime::config::undocumented::<C>(), Vec::<String>::new());
}

/// `--help` succeeds and lists every setting of `C` as its variable with a default, and holds
/// each of `lines` as it is.
pub fn assert_help<C: JsonSchema>(binary: &str, lines: &[&str]) {
    let out = run(binary, &["--help"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    let variables = variables::<C>();
    assert!(!variables.is_empty(), "no setting found in the schema");
    for variable in variables {
        let line = format!("  {variable}  [default: ");
        assert!(help.contains(&line), "{line:?} missing from:\n{help}");
    }
    for line in lines {
        assert!(help.contains(line), "{line:?} missing from:\n{help}");
    }
}

/// `--version` and `-V` print `<binary name> <version>` and succeed.
pub fn assert_version(binary: &str, version: &str) {
    let name = Path::new(binary)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a binary name");
    for flag in ["--version", "-V"] {
        let out = run(binary, &[flag], &[]);
        assert!(out.status.success(), "{flag}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{name} {version}\n"), "{flag}");
    }
}

/// The environment variables of `C`'s settings, from the same schema `--help` is made from.
fn variables<C: JsonSchema>() -> Vec<String> {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<C>();
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| properties.keys().map(|key| key.to_uppercase()).collect())
        .unwrap_or_default()
}
