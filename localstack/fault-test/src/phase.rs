//! What every fault phase shares, whatever its fault: the faults themselves, the context phases
//! run in, the report each fills, and the checks every phase ends with. Both the in-load phases
//! (`phases`) and the outage phases (`outage`) build on this module; it builds on neither.

use crate::check::{self, Tally};
use crate::inject;
use crate::load::{self, Accepted, LoadResult};
use crate::servers::OwnPostgres;
use crate::system::{BONUS_POINTS, Settings, Storage, System};
use std::time::Duration;
use testkit::proxy::{Delayed, REGION_BUS, REGION_DATABASE, server_address};

/// How long a service may take to exit after SIGTERM.
pub(crate) const TERM_LIMIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// No fault: the baseline.
    None,
    /// kill -9 of each service in turn, mid-load, then restart.
    Kill9,
    /// Two instances of every service on one database (PostgreSQL backend only): kill -9 of one
    /// instance at a time, mid-load, while the other goes on, then restart.
    Kill9Pair,
    /// kill -9 of each service in turn, mid-load, then restart, while every request to the bus
    /// and to PostgreSQL goes through a relay that adds an AWS region's round trip.
    Kill9Far,
    /// SIGTERM of each service in turn under load: exit 0 within 15 s, then restart.
    Sigterm,
    /// Published envelopes re-sent, shuffled, during and after the load.
    Duplicates,
    /// Poison messages on every work queue while the load runs.
    Poison,
    /// The suite's own LocalStack stopped and started again (queues drained first).
    BusOutage,
    /// The suite's own PostgreSQL stopped and started again (PostgreSQL backend only).
    DbOutage,
    /// `EMAIL_CONFIRMATION=required`: every link mailed is read from the emulator's SES and
    /// POSTed (some twice, some twice at once), while the gateway and then the customer-api are
    /// killed with kill -9 mid-load and restarted.
    ConfirmKill9,
}

impl Fault {
    /// The name on the command line and in the table.
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }

    /// Whether the phase's enrollments carry a `callback_url` ([`crate::callbacks`]): the kill -9
    /// phases, where the gateway that delivers them dies mid-load.
    pub fn has_callbacks(self) -> bool {
        matches!(self, Fault::Kill9 | Fault::Kill9Pair)
    }

    /// The gateway's `EMAIL_CONFIRMATION` in this phase: only the confirmation phase waits on
    /// the mail; the others test the saga's machinery without that step.
    pub fn email_confirmation(self) -> &'static str {
        if self == Fault::ConfirmKill9 { "required" } else { "off" }
    }
}

/// The gateway's `CONFIRMATION_TTL_SECONDS` when confirmation is required: long enough for every
/// link to be followed despite the kills (the killed gateway's claimed outbox rows wait out the
/// relay's 30 s lease before the mail is asked for, and a loaded CI machine, with both backends'
/// phases at once, adds tens of seconds: 60 s was seen to be too short once), short enough that an
/// enrollment whose address was already enrolled (its mail has no link) ends `expired` within the
/// phase's deadline. A link answered 410 after its deadline, mailed too close to it to be
/// followed in time, is reported, not a violation (`confirm::MAIL_LEAD`).
pub(crate) const CONFIRMATION_TTL: Duration = Duration::from_secs(90);

/// The environment phases run in.
pub struct Context {
    pub settings: Settings,
    pub storage: Storage,
    pub endpoint: String,
    pub enrollments: usize,
    pub spread: Duration,
    pub terminal_limit: Duration,
    pub outage: Duration,
    pub postgres: Option<OwnPostgres>,
}

/// One line of the table, plus what the phase noticed.
#[derive(Default)]
pub struct Report {
    pub fault: String,
    pub tally: Tally,
    pub recover: Option<Duration>,
    pub notes: Vec<String>,
}

impl Context {
    /// A budget that covers about 70 % of the enrollments, so the rest roll back.
    pub(crate) fn budget(&self, enrollments: usize) -> i64 {
        BONUS_POINTS * (enrollments as i64 * 7 / 10).max(1)
    }

    pub(crate) async fn system(&self, fault: Fault, endpoint: &str, enrollments: usize) -> anyhow::Result<System> {
        self.system_with(fault, endpoint, enrollments, Vec::new()).await
    }

    /// [`Context::system`] with more settings for the gateway (callbacks: [`crate::callbacks`]).
    pub(crate) async fn system_with(
        &self,
        fault: Fault,
        endpoint: &str,
        enrollments: usize,
        mut gateway_env: Vec<(String, String)>,
    ) -> anyhow::Result<System> {
        let instances = if fault == Fault::Kill9Pair { 2 } else { 1 };
        // kill9-far: the services (and the suite) reach the bus and the database through relays
        // that add a region's round trips, so more is in flight when a service dies.
        let mut relays = Vec::new();
        let (endpoint, storage) = if fault == Fault::Kill9Far {
            let bus = Delayed::start(server_address(endpoint), REGION_BUS)?;
            let storage = match &self.storage {
                Storage::Sqlite => Storage::Sqlite,
                Storage::Postgres { admin_url } => {
                    let database = Delayed::start(server_address(admin_url), REGION_DATABASE)?;
                    let admin_url = database.url_through(admin_url);
                    relays.push(database);
                    Storage::Postgres { admin_url }
                }
            };
            let endpoint = bus.url_through(endpoint);
            relays.push(bus);
            (endpoint, storage)
        } else {
            (endpoint.to_owned(), self.storage.clone())
        };
        // Confirmation by e-mail stated per phase (the gateway's own default is `required`).
        gateway_env.push(("EMAIL_CONFIRMATION".to_owned(), fault.email_confirmation().to_owned()));
        let mut system = System::start(
            &self.settings,
            &fault.name(),
            &endpoint,
            &storage,
            self.budget(enrollments),
            instances,
            gateway_env,
        )
        .await?;
        system.relays = relays;
        Ok(system)
    }

    pub(crate) fn start_load(
        &self,
        system: &System,
        count: usize,
        spread: Duration,
        tag: &str,
    ) -> tokio::task::JoinHandle<LoadResult> {
        self.start_load_as(system, count, spread, load_tag(tag))
    }

    /// [`Context::start_load`] with the addresses' tag chosen by the caller (see [`load_tag`]):
    /// `u<i>.<tag>@fault.test`.
    pub(crate) fn start_load_as(
        &self,
        system: &System,
        count: usize,
        spread: Duration,
        tag: String,
    ) -> tokio::task::JoinHandle<LoadResult> {
        self.start_load_with(system, count, spread, tag, Vec::new())
    }

    /// [`Context::start_load_as`] where enrollment `i` carries `callbacks[i]` as its `callback_url`.
    pub(crate) fn start_load_with(
        &self,
        system: &System,
        count: usize,
        spread: Duration,
        tag: String,
        callbacks: Vec<String>,
    ) -> tokio::task::JoinHandle<LoadResult> {
        tokio::spawn(load::run(
            system.processes.http.clone(),
            system.gateway_urls(),
            count,
            spread,
            tag,
            callbacks,
        ))
    }
}

/// A tag for one load's addresses, unique to the run: the phase's name and a random suffix.
pub(crate) fn load_tag(phase: &str) -> String {
    format!("{phase}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
}

/// Ids of what the gateway accepted; requests never accepted are violations.
pub(crate) fn accepted_ids(loaded: &LoadResult, report: &mut Report) -> Vec<String> {
    for refused in &loaded.refused {
        report
            .tally
            .violations
            .push(format!("request never accepted: {refused}"));
    }
    if loaded.retried > 0 {
        report.notes.push(format!(
            "{} requests needed a retry (same Idempotency-Key)",
            loaded.retried
        ));
    }
    loaded.accepted.iter().map(|a| a.id.clone()).collect()
}

/// Runs the invariants, merges them into the report, and tears the system down.
pub(crate) async fn finish(system: System, accepted: &[Accepted], report: &mut Report) -> anyhow::Result<()> {
    let tally = check::invariants(&system, accepted).await?;
    report.notes.push(format!("terminal states {:?}", tally.by_status));
    let violations = std::mem::take(&mut report.tally.violations);
    report.tally = tally;
    report.tally.violations.extend(violations);
    system.teardown().await
}

pub(crate) async fn check_dlqs_empty(system: &System, report: &mut Report) -> anyhow::Result<()> {
    let depths = inject::queue_depths(system, &inject::dead_letter_queues()).await?;
    for (queue, depth) in depths.into_iter().filter(|(_, d)| *d > 0) {
        report
            .tally
            .violations
            .push(format!("{queue}: {depth} messages dead-lettered"));
    }
    Ok(())
}

/// Lines of the services' JSON logs whose message is `message`.
pub(crate) fn log_lines(system: &System, message: &str) -> usize {
    log_count(system, |v| v["message"] == message)
}

/// Lines of the services' JSON logs that match.
pub(crate) fn log_count(system: &System, matches: impl Fn(&serde_json::Value) -> bool) -> usize {
    system
        .processes
        .services
        .iter()
        .map(|s| s.logs().iter().filter(|v| v.is_object() && matches(v)).count())
        .sum()
}
