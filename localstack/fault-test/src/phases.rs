//! The fault phases. Each starts a system of its own, drives load through the gateway while it
//! injects its fault, waits for every accepted enrollment to reach a terminal state, and checks
//! the invariants. "Time to recover" is measured from the end of the last fault (the restart,
//! the server back) until every accepted enrollment is terminal.

use crate::check::{self, Tally};
use crate::inject;
use crate::load::{self, Accepted, LoadResult};
use crate::servers::{OwnLocalStack, OwnPostgres};
use crate::system::{BONUS_POINTS, CUSTOMER, GATEWAY, NAMES, Settings, Storage, System, TRANSACTION};
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

/// How long a service may take to exit after SIGTERM.
const TERM_LIMIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// No fault: the baseline.
    None,
    /// kill -9 of each service in turn, mid-load, then restart.
    Kill9,
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
}

impl Fault {
    /// The name on the command line and in the table.
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

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
    fn budget(&self, enrollments: usize) -> i64 {
        BONUS_POINTS * (enrollments as i64 * 7 / 10).max(1)
    }

    async fn system(&self, fault: Fault, endpoint: &str, enrollments: usize) -> anyhow::Result<System> {
        System::start(
            &self.settings,
            &fault.name(),
            endpoint,
            &self.storage,
            self.budget(enrollments),
        )
        .await
    }

    fn start_load(
        &self,
        system: &System,
        count: usize,
        spread: Duration,
        tag: &str,
    ) -> tokio::task::JoinHandle<LoadResult> {
        let tag = format!("{tag}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        tokio::spawn(load::run(system.http.clone(), system.gateway_url(), count, spread, tag))
    }
}

pub async fn run(ctx: &mut Context, fault: Fault) -> anyhow::Result<Report> {
    let mut report = Report {
        fault: fault.name(),
        ..Report::default()
    };
    match fault {
        Fault::BusOutage => bus_outage(ctx, &mut report).await?,
        Fault::DbOutage => db_outage(ctx, &mut report).await?,
        _ => under_load(ctx, fault, &mut report).await?,
    }
    Ok(report)
}

/// Load, the fault while it runs, then the checks. Covers every fault that does not need a
/// server of the suite's own.
async fn under_load(ctx: &Context, fault: Fault, report: &mut Report) -> anyhow::Result<()> {
    let mut system = ctx.system(fault, &ctx.endpoint, ctx.enrollments).await?;
    let load = ctx.start_load(&system, ctx.enrollments, ctx.spread, &report.fault);
    let step = ctx.spread / 5;
    let mut poison = Vec::new();
    let mut replayed = HashSet::new();
    let mut resent = 0;
    match fault {
        Fault::Kill9 => {
            for i in [GATEWAY, CUSTOMER, TRANSACTION] {
                tokio::time::sleep(step).await;
                let holding = wait_until_holding(&system, i, step).await?;
                system.services[i].kill9().await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let ready = system.restart(i).await?;
                report.notes.push(format!(
                    "{} killed {}, ready again {:.1} s after restart",
                    NAMES[i],
                    holding_text(holding),
                    ready.as_secs_f64()
                ));
            }
        }
        Fault::Sigterm => {
            for i in [GATEWAY, CUSTOMER, TRANSACTION] {
                tokio::time::sleep(step).await;
                let holding = wait_until_holding(&system, i, step).await?;
                match system.services[i].terminate(TERM_LIMIT).await {
                    Ok(took) => report.notes.push(format!(
                        "{} stopped {}, exited 0 {:.1} s after SIGTERM",
                        NAMES[i],
                        holding_text(holding),
                        took.as_secs_f64()
                    )),
                    Err(err) => report.tally.violations.push(format!("{}: {err:#}", NAMES[i])),
                }
                let unsent = unsent_outbox_rows(&system, i).await?;
                if unsent > 0 {
                    report
                        .tally
                        .violations
                        .push(format!("{} stopped with {unsent} outbox rows unsent", NAMES[i]));
                }
                system.restart(i).await?;
            }
        }
        Fault::Duplicates => {
            while !load.is_finished() {
                resent += inject::resend_new(&system, &mut replayed).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Fault::Poison => {
            let (sent, oversize) = inject::send_poison(&system).await?;
            poison = sent;
            if !oversize.is_empty() {
                report.notes.push(oversize);
            }
        }
        Fault::None | Fault::BusOutage | Fault::DbOutage => {}
    }
    let loaded = load.await?;
    // Recovery counts from when both the last fault and the load are over.
    let fault_end = Instant::now();
    let ids = accepted_ids(&loaded, report);
    let (_, _) = check::wait_terminal(&system, &ids, ctx.terminal_limit).await?;
    report.recover = Some(fault_end.elapsed());
    if fault == Fault::Duplicates {
        // Late copies: everything again (the second or third delivery of each), shuffled.
        resent += inject::resend_new(&system, &mut replayed).await?;
        resent += inject::resend(&system, inject::sent_envelopes(&system).await?).await?;
        inject::drain(&system, ctx.terminal_limit).await?;
        report.notes.push(format!(
            "{resent} envelopes re-sent (each published one at least twice more)"
        ));
    }
    if matches!(fault, Fault::Kill9 | Fault::Sigterm) {
        report.notes.push(format!(
            "{} messages were delivered more than once and handled once",
            log_count(&system, |v| {
                v["span"]["receive_count"].as_u64().is_some_and(|n| n > 1)
                    && (v["message"] == "message handled"
                        || v["message"] == "duplicate delivery; effect already committed")
            })
        ));
    }
    if fault == Fault::Poison {
        check_poison(&system, &poison, ctx.terminal_limit, report).await?;
    } else {
        check_dlqs_empty(&system, report).await?;
    }
    finish(system, &loaded.accepted, report).await
}

/// The work queue each service consumes, by service index.
const CONSUMES: [&str; 3] = [
    "GatewayEventsQueueUrl",
    "CustomerCommandsQueueUrl",
    "TransactionCommandsQueueUrl",
];

/// Catches service `i` mid-batch: freezes it (SIGSTOP) and looks at its queue; if it holds
/// received, undeleted messages it is left frozen for the fault that follows, otherwise it is
/// resumed and tried again, up to `limit`. Returns how many it held (0: never caught, running).
async fn wait_until_holding(system: &System, i: usize, limit: Duration) -> anyhow::Result<i64> {
    let started = Instant::now();
    let service = &system.services[i];
    loop {
        service.freeze(true)?;
        let held = inject::in_flight(system, CONSUMES[i]).await;
        if matches!(held, Ok(n) if n > 0) {
            return held;
        }
        service.freeze(false)?;
        if started.elapsed() > limit {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn holding_text(held: i64) -> String {
    if held > 0 {
        format!("holding {held} received messages")
    } else {
        "while idle (no message in flight)".to_owned()
    }
}

/// Ids of what the gateway accepted; requests never accepted are violations.
fn accepted_ids(loaded: &LoadResult, report: &mut Report) -> Vec<String> {
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
async fn finish(system: System, accepted: &[Accepted], report: &mut Report) -> anyhow::Result<()> {
    let tally = check::invariants(&system, accepted).await?;
    report.notes.push(format!("terminal states {:?}", tally.by_status));
    let violations = std::mem::take(&mut report.tally.violations);
    report.tally = tally;
    report.tally.violations.extend(violations);
    system.teardown().await
}

async fn unsent_outbox_rows(system: &System, i: usize) -> anyhow::Result<i64> {
    use sqlx::Row;
    let pool = system.pool(i).await?;
    let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE sent_at IS NULL")
        .fetch_one(&pool)
        .await?
        .try_get("n")?;
    pool.close().await;
    Ok(count)
}

async fn check_dlqs_empty(system: &System, report: &mut Report) -> anyhow::Result<()> {
    let depths = inject::queue_depths(system, &inject::DEAD_LETTER_QUEUES).await?;
    for (queue, depth) in depths.into_iter().filter(|(_, d)| *d > 0) {
        report
            .tally
            .violations
            .push(format!("{queue}: {depth} messages dead-lettered"));
    }
    Ok(())
}

async fn check_poison(
    system: &System,
    poison: &[inject::Poison],
    limit: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let found = inject::find_in_dlqs(system, poison, limit).await?;
    let warns = inject::warn_lines(system, poison);
    for p in poison {
        if !found.contains(&p.marker) {
            report
                .tally
                .violations
                .push(format!("poison `{}` on {} never reached its DLQ", p.kind, p.queue_key));
        }
        let lines = warns.get(&p.sqs_message_id).copied().unwrap_or(0);
        if lines != inject::EXPECTED_WARNS {
            report.tally.violations.push(format!(
                "poison `{}` on {} (SQS id {}): {lines} WARN log lines, expected one per receive ({})",
                p.kind,
                p.queue_key,
                p.sqs_message_id,
                inject::EXPECTED_WARNS
            ));
        }
    }
    report.notes.push(format!(
        "{}/{} poison messages in their DLQ, {} WARN lines each expected",
        found.len(),
        poison.len(),
        inject::EXPECTED_WARNS
    ));
    Ok(())
}

/// Polls every service's `/ready` until each has answered `want` at least once.
async fn wait_all_ready_status(system: &System, want: u16, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut seen = [false; 3];
    while !seen.iter().all(|s| *s) {
        for (i, service) in system.services.iter().enumerate() {
            seen[i] |= service.ready_status(&system.http).await == Some(want);
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "not every service answered /ready {want} within {} s (seen: {seen:?})",
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(started.elapsed())
}

/// The bus goes away. LocalStack without persistence forgets its queues when it stops, so the
/// phase drains the queues first; what it checks is that enrollments accepted during the outage
/// wait in the gateway's outbox and complete once the bus and the topology are back.
async fn bus_outage(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let port = crate::procs::free_port()?;
    let mut localstack = OwnLocalStack::new(port, ctx.settings.run_dir.join("bus_outage-localstack"));
    localstack.start().await?;
    let mut system = ctx
        .system(Fault::BusOutage, &localstack.endpoint, ctx.enrollments)
        .await?;
    let before = ctx
        .start_load(&system, ctx.enrollments / 2, ctx.spread / 2, "before")
        .await?;
    let mut ids = accepted_ids(&before, report);
    check::wait_terminal(&system, &ids, ctx.terminal_limit).await?;
    inject::drain(&system, ctx.terminal_limit).await?;

    let outage_start = Instant::now();
    localstack.stop().await?;
    let not_ready = wait_all_ready_status(&system, 503, Duration::from_secs(60)).await?;
    report.notes.push(format!(
        "all services reported not ready {:.1} s into the outage",
        not_ready.as_secs_f64()
    ));
    let during = ctx
        .start_load(&system, ctx.enrollments / 2, Duration::from_secs(2), "during")
        .await?;
    if during.retried > 0 || !during.refused.is_empty() {
        report.tally.violations.push(format!(
            "during the outage {} requests needed retries and {} were refused; the gateway must accept from its outbox",
            during.retried,
            during.refused.len()
        ));
    }
    ids.extend(during.accepted.iter().map(|a| a.id.clone()));
    // A stop during the outage must still be clean and quick (the relay's last flush is
    // bounded); the service comes back once the bus is there, since start-up needs the topology.
    match system.services[TRANSACTION].terminate(TERM_LIMIT).await {
        Ok(took) => report.notes.push(format!(
            "transaction-api exited 0 {:.1} s after SIGTERM during the outage",
            took.as_secs_f64()
        )),
        Err(err) => report
            .tally
            .violations
            .push(format!("SIGTERM during the bus outage: {err:#}")),
    }
    let remaining = ctx.outage.saturating_sub(outage_start.elapsed());
    tokio::time::sleep(remaining).await;
    for service in system.services.iter_mut().filter(|s| s.name != NAMES[TRANSACTION]) {
        if !service.alive() {
            report
                .tally
                .violations
                .push(format!("{} exited during the bus outage", service.name));
            service.start()?;
        }
    }
    localstack.start().await?;
    infra::deploy_messaging(system.bus.cloudformation(), &system.params.stack_name(), &system.params).await?;
    system.services[TRANSACTION].start()?;
    let fault_end = Instant::now();
    report.notes.push(format!(
        "bus down for {:.1} s (LocalStack stop, start, topology redeployed)",
        outage_start.elapsed().as_secs_f64()
    ));
    let ready = wait_all_ready_status(&system, 200, ctx.terminal_limit).await?;
    report.notes.push(format!(
        "all services ready again {:.1} s after the topology was back",
        ready.as_secs_f64()
    ));
    check::wait_terminal(&system, &ids, ctx.terminal_limit).await?;
    report.recover = Some(fault_end.elapsed());
    check_dlqs_empty(&system, report).await?;
    let mut accepted = before.accepted;
    accepted.extend(during.accepted);
    finish(system, &accepted, report).await?;
    localstack.stop().await
}

/// The database goes away under load: messages must not be deleted, are retried, and nothing is
/// lost. Requests to the gateway fail meanwhile (it cannot commit); the client retries them.
async fn db_outage(ctx: &mut Context, report: &mut Report) -> anyhow::Result<()> {
    anyhow::ensure!(ctx.postgres.is_some(), "the database outage needs --backend postgres");
    let system = ctx.system(Fault::DbOutage, &ctx.endpoint, ctx.enrollments).await?;
    // A burst first, so the queues hold work when the database goes: the consumers must then
    // fail, leave those messages undeleted, and handle them once it is back.
    let burst = ctx
        .start_load(&system, ctx.enrollments / 2, Duration::from_secs(1), "burst")
        .await?;
    let postgres = ctx.postgres.as_mut().expect("checked above");
    let outage_start = Instant::now();
    postgres.stop().await?;
    // The rest arrives during the outage: the gateway cannot commit (5xx), the client retries.
    let load = ctx.start_load(&system, ctx.enrollments - ctx.enrollments / 2, ctx.outage, "db");
    match wait_all_ready_status(&system, 503, ctx.outage).await {
        Ok(took) => report.notes.push(format!(
            "all services reported not ready {:.1} s into the outage",
            took.as_secs_f64()
        )),
        Err(err) => report
            .tally
            .violations
            .push(format!("readiness during the database outage: {err:#}")),
    }
    tokio::time::sleep(ctx.outage.saturating_sub(outage_start.elapsed())).await;
    let postgres = ctx.postgres.as_mut().expect("checked above");
    postgres.start().await?;
    report.notes.push(format!(
        "database down for {:.1} s",
        outage_start.elapsed().as_secs_f64()
    ));
    let mut loaded = load.await?;
    let fault_end = Instant::now();
    loaded.accepted.extend(burst.accepted);
    loaded.refused.extend(burst.refused);
    let ids = accepted_ids(&loaded, report);
    check::wait_terminal(&system, &ids, ctx.terminal_limit).await?;
    report.recover = Some(fault_end.elapsed());
    report.notes.push(format!(
        "{} consumer database errors, each message left for a retry",
        log_lines(&system, "database error; message will be retried")
    ));
    check_dlqs_empty(&system, report).await?;
    finish(system, &loaded.accepted, report).await
}

/// Lines of the services' JSON logs whose message is `message`.
fn log_lines(system: &System, message: &str) -> usize {
    log_count(system, |v| v["message"] == message)
}

/// Lines of the services' JSON logs that match.
fn log_count(system: &System, matches: impl Fn(&serde_json::Value) -> bool) -> usize {
    system
        .services
        .iter()
        .map(|s| {
            std::fs::read_to_string(&s.log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| matches(v))
                .count()
        })
        .sum()
}
