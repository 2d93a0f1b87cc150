//! The outage phases: the bus (a LocalStack of the suite's own) and the database (the suite's
//! own PostgreSQL) go away under load and come back; services must keep running, say they are
//! not ready, and finish every accepted enrollment once the dependency returns.

use crate::check;
use crate::inject;
use crate::phase::{Context, Fault, Report, TERM_LIMIT, accepted_ids, check_dlqs_empty, finish, log_lines};
use crate::servers::OwnLocalStack;
use crate::system::{NAMES, System, TRANSACTION};
use std::time::Duration;
use testkit::{Patience, Poll, eventually};
use tokio::time::Instant;

/// Polls every service's `/ready` until each has answered `want` at least once.
async fn wait_all_ready_status(system: &System, want: u16, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let services = &system.processes.services;
    let mut seen = vec![false; services.len()];
    let what = format!("every service to answer /ready {want}");
    let patience = Patience::within(limit).every(Duration::from_millis(250));
    eventually(&what, patience, async || {
        for (i, service) in services.iter().enumerate() {
            seen[i] |= service.ready_status(&system.processes.http).await == Some(want);
        }
        Poll::ready_if(seen.iter().all(|s| *s), (), seen.clone())
    })
    .await?;
    Ok(started.elapsed())
}

/// The bus goes away. LocalStack without persistence forgets its queues when it stops, so the
/// phase drains the queues first; what it checks is that enrollments accepted during the outage
/// wait in the gateway's outbox and complete once the bus and the topology are back.
pub async fn bus(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let port = testkit::free_port();
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
    match system.processes.services[TRANSACTION].terminate(TERM_LIMIT).await {
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
    for service in system
        .processes
        .services
        .iter_mut()
        .filter(|s| s.name != NAMES[TRANSACTION])
    {
        if !service.alive() {
            report
                .tally
                .violations
                .push(format!("{} exited during the bus outage", service.name));
            service.start()?;
        }
    }
    localstack.start().await?;
    system.processes.stack.redeploy().await?;
    system.processes.services[TRANSACTION].start()?;
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
pub async fn database(ctx: &mut Context, report: &mut Report) -> anyhow::Result<()> {
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
