//! `fault-test`: runs the real service binaries as separate processes against LocalStack,
//! drives concurrent enrollments through the gateway, injects one fault per phase, and checks
//! that every accepted enrollment ends in exactly one terminal state with no effect applied twice.
//! Prints one table row per phase and exits non-zero when a promise is broken.
//!
//! Every child (services, the suite's own LocalStack and PostgreSQL) is stopped when the suite
//! ends, including on error, panic or Ctrl-C: each is owned by a guard that kills it on drop.

mod callbacks;
mod check;
mod confirm;
mod inject;
mod load;
mod outage;
mod phase;
mod phases;
mod servers;
mod system;

use anyhow::Context as _;
use clap::Parser;
use phase::{Context, Fault, Report};
use std::path::PathBuf;
use std::time::Duration;
use system::{Settings, Storage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Profile {
    /// What CI runs: a few dozen enrollments per phase, the quick faults.
    Short,
    /// Every fault with a few hundred enrollments per phase.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Sqlite,
    /// A PostgreSQL server of the suite's own (initdb in a temporary directory).
    Postgres,
}

#[derive(Debug, Parser)]
#[command(about = "Fault-injection suite for the enrollment saga (runs the real binaries)")]
struct Args {
    #[arg(long, value_enum, default_value = "full")]
    profile: Profile,
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// Enrollments per phase (default: 40 short, 300 full).
    #[arg(long)]
    enrollments: Option<usize>,
    /// Phases to run, comma-separated (default: the profile's list for the backend).
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<Fault>,
    /// Where the service binaries are.
    #[arg(long, default_value = "target/debug")]
    bin_dir: PathBuf,
    /// Where logs and SQLite files go (default: target/fault-test/<run id>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The shared LocalStack (only 127.0.0.1 or localhost is accepted).
    #[arg(long, env = "AWS_ENDPOINT_URL", default_value = "http://127.0.0.1:4566")]
    endpoint: String,
    /// Visibility timeout of the work queues: how soon a message held by a killed service returns.
    #[arg(long, default_value_t = 5)]
    visibility_timeout: u32,
    /// Seconds each outage (bus, database) lasts (default: 12 short, 75 full, beyond the
    /// minute after which retried messages used to reach the DLQ).
    #[arg(long)]
    outage_seconds: Option<u64>,
    /// Seconds every accepted enrollment has to reach a terminal state after the fault.
    #[arg(long, default_value_t = 150)]
    deadline_seconds: u64,
}

fn default_faults(profile: Profile, backend: Backend) -> Vec<Fault> {
    use Fault::*;
    match (profile, backend) {
        (Profile::Short, Backend::Sqlite) => vec![Kill9, Sigterm, Duplicates, Poison, ConfirmKill9],
        (Profile::Short, Backend::Postgres) => vec![DbOutage, Kill9Pair, ConfirmKill9],
        (Profile::Full, Backend::Sqlite) => {
            vec![
                None,
                Kill9,
                Kill9Far,
                Sigterm,
                Duplicates,
                Poison,
                BusOutage,
                ConfirmKill9,
            ]
        }
        (Profile::Full, Backend::Postgres) => {
            vec![
                None,
                Kill9,
                Kill9Far,
                Kill9Pair,
                Sigterm,
                Duplicates,
                Poison,
                DbOutage,
                ConfirmKill9,
            ]
        }
    }
}

fn local_only(endpoint: &str) -> anyhow::Result<()> {
    let host = endpoint
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split([':', '/']).next())
        .unwrap_or_default();
    anyhow::ensure!(
        host == "127.0.0.1" || host == "localhost",
        "the suite only talks to a local LocalStack; {endpoint} is not 127.0.0.1"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Ctrl-C drops the run future, and with it every guard: the children die with the suite.
    let outcome = tokio::select! {
        outcome = run(args) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(err) => {
            eprintln!("fault-test: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs the phases; `Ok(false)` when an invariant broke.
async fn run(args: Args) -> anyhow::Result<bool> {
    local_only(&args.endpoint)?;
    for name in system::NAMES {
        let bin = args.bin_dir.join(name);
        anyhow::ensure!(
            bin.is_file(),
            "{} not found: run `cargo build --bins` first",
            bin.display()
        );
    }
    let run_id = format!(
        "{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/fault-test").join(run_id));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize()?;
    let faults = if args.faults.is_empty() {
        default_faults(args.profile, args.backend)
    } else {
        args.faults.clone()
    };
    let (postgres, storage) = match args.backend {
        Backend::Sqlite => (None, Storage::Sqlite),
        Backend::Postgres => {
            let mut server = servers::OwnPostgres::create(testkit::free_port()).await?;
            server.start().await?;
            let admin_url = server.admin_url();
            (Some(server), Storage::Postgres { admin_url })
        }
    };
    let enrollments = args.enrollments.unwrap_or(match args.profile {
        Profile::Short => 40,
        Profile::Full => 300,
    });
    let mut ctx = Context {
        settings: Settings {
            bin_dir: args.bin_dir.canonicalize()?,
            run_dir: run_dir.clone(),
            visibility_timeout: args.visibility_timeout,
            receive_wait: 1,
        },
        storage,
        endpoint: args.endpoint.clone(),
        enrollments,
        // Slow enough that every fault lands while requests are still arriving.
        spread: Duration::from_millis((enrollments as u64 * 50).clamp(8_000, 30_000)),
        terminal_limit: Duration::from_secs(args.deadline_seconds),
        outage: Duration::from_secs(args.outage_seconds.unwrap_or(match args.profile {
            Profile::Short => 12,
            Profile::Full => 75,
        })),
        postgres,
    };
    eprintln!(
        "fault-test: {:?} profile on {:?}, {enrollments} enrollments per phase, logs in {}",
        args.profile,
        args.backend,
        run_dir.display()
    );
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for fault in faults {
        eprintln!(
            "fault-test: phase {} (EMAIL_CONFIRMATION={})",
            fault.name(),
            fault.email_confirmation()
        );
        match phases::run(&mut ctx, fault).await {
            Ok(report) => reports.push(report),
            Err(err) => errors.push(format!("{}: {err:#}", fault.name())),
        }
    }
    print_table(&reports);
    for err in &errors {
        println!("phase failed to run: {err}");
    }
    Ok(errors.is_empty() && reports.iter().all(|r| r.tally.violations.is_empty()))
}

fn print_table(reports: &[Report]) {
    println!(
        "\n{:<12} {:>9} {:>8} {:>5} {:>10} {:>13}  result",
        "fault", "submitted", "terminal", "lost", "duplicated", "recover (s)"
    );
    let mut totals = (0, 0, 0, 0, 0);
    for r in reports {
        let t = &r.tally;
        let ok = t.violations.is_empty();
        println!(
            "{:<12} {:>9} {:>8} {:>5} {:>10} {:>13}  {}",
            r.fault,
            t.submitted,
            t.terminal,
            t.lost.len(),
            t.duplicated.len(),
            r.recover
                .map(|d| format!("{:.1}", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            if ok { "ok" } else { "FAILED" }
        );
        totals.0 += t.submitted;
        totals.1 += t.terminal;
        totals.2 += t.lost.len();
        totals.3 += t.duplicated.len();
        totals.4 += usize::from(!ok);
    }
    println!(
        "overall: {} phases, {} submitted, {} terminal, {} lost, {} duplicated, {} failed phases",
        reports.len(),
        totals.0,
        totals.1,
        totals.2,
        totals.3,
        totals.4
    );
    for r in reports {
        for note in &r.notes {
            println!("  {}: {note}", r.fault);
        }
    }
    for r in reports {
        for violation in &r.tally.violations {
            println!("  VIOLATION {}: {violation}", r.fault);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_endpoints_are_accepted() {
        assert!(local_only("http://127.0.0.1:4566").is_ok());
        assert!(local_only("http://localhost:4566/").is_ok());
        assert!(local_only("https://sqs.us-east-1.amazonaws.com").is_err());
        assert!(local_only("http://127.0.0.1.example.com:4566").is_err());
        assert!(local_only("not a url").is_err());
    }

    #[test]
    fn the_short_profile_covers_what_ci_needs() {
        let sqlite = default_faults(Profile::Short, Backend::Sqlite);
        for fault in [Fault::Kill9, Fault::Sigterm, Fault::Duplicates, Fault::Poison] {
            assert!(sqlite.contains(&fault), "{fault:?} missing");
        }
        assert_eq!(
            default_faults(Profile::Short, Backend::Postgres),
            [Fault::DbOutage, Fault::Kill9Pair, Fault::ConfirmKill9]
        );
        // Confirmation through the mail under kills, on both backends, in every profile.
        for profile in [Profile::Short, Profile::Full] {
            for backend in [Backend::Sqlite, Backend::Postgres] {
                assert!(default_faults(profile, backend).contains(&Fault::ConfirmKill9));
            }
        }
        assert!(!default_faults(Profile::Full, Backend::Sqlite).contains(&Fault::DbOutage));
        assert!(!default_faults(Profile::Full, Backend::Sqlite).contains(&Fault::Kill9Pair));
        for backend in [Backend::Sqlite, Backend::Postgres] {
            assert!(default_faults(Profile::Full, backend).contains(&Fault::Kill9Far));
        }
    }
}
