//! The command line of a service binary: `--help` (generated from the configuration struct),
//! `--version`, and the start-up that loads the configuration or refuses it.

use super::schema::{Setting, settings};
use super::{CommonConfig, ConfigError, Settings, load};
use serde_json::Value;
use std::ffi::OsString;
use std::fmt::Write as _;

/// What `--help` and `--version` say about a binary; [`service_info!`](crate::service_info)
/// builds it from the binary's own package.
#[derive(Debug, Clone, Copy)]
pub struct ServiceInfo {
    pub name: &'static str,
    pub version: &'static str,
    pub about: &'static str,
}

/// The [`ServiceInfo`] of the package this is expanded in.
#[macro_export]
macro_rules! service_info {
    () => {
        $crate::runtime::config::ServiceInfo {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            about: env!("CARGO_PKG_DESCRIPTION"),
        }
    };
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Invocation {
    Run,
    /// `migrate`: apply the migrations as the database's owner, set up the application role,
    /// and exit (see `CommonConfig::migrate_database_url`).
    Migrate,
    Help,
    Version,
}

/// Reads the command line: no argument runs the service; `--help`/`-h` and `--version`/`-V` ask
/// for those; anything else is an error naming it.
pub fn parse_args(info: &ServiceInfo, args: impl IntoIterator<Item = OsString>) -> anyhow::Result<Invocation> {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Ok(Invocation::Run);
    };
    let invocation = match first.to_str() {
        Some("--help" | "-h") => Invocation::Help,
        Some("--version" | "-V") => Invocation::Version,
        Some("migrate") => Invocation::Migrate,
        _ => anyhow::bail!(
            "unknown argument `{}`: {} takes no argument but `migrate`; its settings come from the environment",
            first.to_string_lossy(),
            info.name
        ),
    };
    if let Some(extra) = args.next() {
        anyhow::bail!("unexpected argument `{}`", extra.to_string_lossy());
    }
    Ok(invocation)
}

/// The start of every service's `main`: answers `--help` and `--version` on stdout (then `None`:
/// the caller returns), or loads and checks the configuration. A bad argument or configuration
/// is printed to stderr, one line per problem, and the process exits with status 2.
pub fn from_command_line<T: Settings>(info: ServiceInfo) -> Option<(Invocation, T)> {
    let refuse = |what: &str, problems: Vec<String>| -> ! {
        eprintln!("{}: {what} (`{} --help` lists every setting):", info.name, info.name);
        for problem in problems {
            eprintln!("  {problem}");
        }
        std::process::exit(2)
    };
    match parse_args(&info, std::env::args_os().skip(1)) {
        Ok(Invocation::Help) => {
            print!("{}", help::<T>(&info));
            None
        }
        Ok(Invocation::Version) => {
            println!("{} {}", info.name, info.version);
            None
        }
        Ok(invocation @ (Invocation::Run | Invocation::Migrate)) => match load(T::default()) {
            Ok(config) => Some((invocation, config)),
            Err(ConfigError::Invalid(problems)) => refuse("invalid configuration", problems),
            Err(err) => refuse("invalid configuration", vec![err.to_string()]),
        },
        Err(err) => refuse("invalid command line", vec![err.to_string()]),
    }
}

/// The `--help` text: every setting of `T` with its variable, default, range and description;
/// the service's own settings first, then those every service has.
pub fn help<T: Settings>(info: &ServiceInfo) -> String {
    let defaults = serde_json::to_value(T::default()).unwrap_or(Value::Null);
    let common: Vec<String> = settings::<CommonConfig>().into_iter().map(|s| s.key).collect();
    let (shared, own): (Vec<Setting>, Vec<Setting>) =
        settings::<T>().into_iter().partition(|s| common.contains(&s.key));
    let mut out = format!(
        "{name} {version}: {about}\n\n\
         Usage: {name} [migrate | --help | --version]\n\n\
         `migrate` applies the migrations as the database owner (the URL below) and exits.\n\n\
         Settings come from environment variables, or from the TOML file named by CONFIG_FILE with\n\
         the same names in lower case (`receive_wait_seconds = 5`); the environment wins. An unknown\n\
         key in that file, or a value out of range, stops {name} at start-up.\n",
        name = info.name,
        version = info.version,
        about = info.about,
    );
    for (title, group) in [
        (format!("{} settings", info.name), own),
        ("Settings of every service".to_owned(), shared),
    ] {
        if group.is_empty() {
            continue;
        }
        let _ = write!(out, "\n{title}:\n");
        for setting in group {
            let mut facts = vec![format!("default: {}", setting.default_text(&defaults[&setting.key]))];
            facts.extend(setting.range_text());
            let choices = setting.choices();
            if !choices.is_empty() {
                facts.push(format!("one of: {}", choices.join(", ")));
            }
            let _ = writeln!(out, "  {}  [{}]", setting.variable(), facts.join("; "));
            let _ = writeln!(out, "{}", wrap(&setting.description(), 6, 100));
        }
    }
    out.push_str(
        "\nAlso read: CONFIG_FILE (above); RUST_LOG (log filter, e.g. `info,sqlx=warn`); and the AWS SDK's\n\
         standard variables (AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID, ...): with no\n\
         AWS_ENDPOINT_URL the service talks to AWS itself.\n",
    );
    out
}

/// `text` in lines of at most `width` columns, each indented by `indent` spaces.
fn wrap(text: &str, indent: usize, width: usize) -> String {
    let pad = " ".repeat(indent);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent + line.len() + 1 + word.len() > width {
            lines.push(format!("{pad}{line}"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(format!("{pad}{line}"));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::config::Secret;
    use crate::runtime::config::tests::{INFO, Sample};

    #[test]
    fn help_lists_every_setting_with_variable_default_and_range() {
        let help = help::<Sample>(&INFO);
        for setting in settings::<Sample>() {
            assert!(
                help.contains(&format!("  {}  [default: ", setting.variable())),
                "{} missing:\n{help}",
                setting.key
            );
        }
        assert!(help.starts_with("sample 1.2.3: A sample service."));
        assert!(help.contains("RECEIVE_WAIT_SECONDS  [default: 20; 0 to 20]"), "{help}");
        assert!(
            help.contains("PROCESSED_RETENTION_DAYS  [default: 30; at least 15]"),
            "{help}"
        );
        assert!(help.contains("POINTS  [default: 5; at least 1]"), "{help}");
        assert!(
            help.contains("LOG_FORMAT  [default: text; one of: text, json]"),
            "{help}"
        );
        assert!(help.contains("CUSTOMER_COMMANDS_QUEUE_URL  [default: unset]"), "{help}");
        // The service's own settings come before the shared ones.
        assert!(help.find("POINTS  [").unwrap() < help.find("DATABASE_URL").unwrap());
    }

    #[test]
    fn help_never_shows_a_secret() {
        let help = help::<Sample>(&INFO);
        assert!(!help.contains("swordfish") && !help.contains("hunter2"), "{help}");
        assert!(help.contains("PASSWORD  [default: (secret, not shown)]"), "{help}");
        assert!(help.contains("TOKEN  [default: unset]"), "{help}");
        assert!(
            help.contains("DATABASE_URL  [default: postgres://app:***@db/app]"),
            "{help}"
        );
        assert_eq!(format!("{:?}", Secret::new("swordfish")), "Secret(***)");
    }

    #[test]
    fn arguments() {
        let args = |list: &[&str]| parse_args(&INFO, list.iter().map(OsString::from));
        assert!(matches!(args(&[]).unwrap(), Invocation::Run));
        assert!(matches!(args(&["--help"]).unwrap(), Invocation::Help));
        assert!(matches!(args(&["-V"]).unwrap(), Invocation::Version));
        let err = args(&["--port", "80"]).unwrap_err().to_string();
        assert!(err.contains("unknown argument `--port`"), "{err}");
        assert!(args(&["--help", "x"]).is_err());
    }
}
