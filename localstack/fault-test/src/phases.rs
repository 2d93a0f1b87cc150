//! The fault phases. Each starts a system of its own, drives load through the gateway while it
//! injects its fault, waits for every accepted enrollment to reach a terminal state, and checks
//! the invariants. "Time to recover" is measured from the end of the last fault (the restart,
//! the server back) until every accepted enrollment is terminal.

use crate::callbacks::Receivers;
use crate::check;
use crate::confirm::{self, Confirmer, Outcome};
use crate::inject;
use crate::outage;
use crate::phase::{
    CONFIRMATION_TTL, Context, Fault, Report, TERM_LIMIT, accepted_ids, check_dlqs_empty, finish, load_tag, log_count,
};
use crate::system::{CUSTOMER, GATEWAY, NAMES, System, TRANSACTION};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

pub async fn run(ctx: &mut Context, fault: Fault) -> anyhow::Result<Report> {
    let mut report = Report {
        fault: fault.name(),
        ..Report::default()
    };
    match fault {
        Fault::BusOutage => outage::bus(ctx, &mut report).await?,
        Fault::DbOutage => outage::database(ctx, &mut report).await?,
        Fault::ConfirmKill9 => confirm_under_kills(ctx, &mut report).await?,
        _ => under_load(ctx, fault, &mut report).await?,
    }
    Ok(report)
}

/// Load, the fault while it runs, then the checks. Covers every fault that does not need a
/// server of the suite's own.
async fn under_load(ctx: &Context, fault: Fault, report: &mut Report) -> anyhow::Result<()> {
    anyhow::ensure!(
        fault != Fault::Kill9Pair || matches!(ctx.storage, crate::system::Storage::Postgres { .. }),
        "kill9-pair runs two instances of each service on one database: PostgreSQL backend only"
    );
    let receivers = if fault.has_callbacks() {
        Some(Receivers::start().await?)
    } else {
        None
    };
    let gateway_env = receivers.as_ref().map(Receivers::gateway_env).unwrap_or_default();
    let mut system = ctx
        .system_with(fault, &ctx.endpoint, ctx.enrollments, gateway_env)
        .await?;
    let callback_urls = match &receivers {
        Some(receivers) => {
            receivers.trust_published_key(&system).await?;
            receivers.urls(ctx.enrollments)
        }
        None => Vec::new(),
    };
    let load = ctx.start_load_with(
        &system,
        ctx.enrollments,
        ctx.spread,
        load_tag(&report.fault),
        callback_urls,
    );
    let step = ctx.spread / 5;
    let mut poison = Vec::new();
    let mut replayed = HashSet::new();
    let mut resent = 0;
    match fault {
        Fault::Kill9 | Fault::Kill9Far => {
            for i in [GATEWAY, CUSTOMER, TRANSACTION] {
                tokio::time::sleep(step).await;
                let holding = wait_until_holding(&system, i, step).await?;
                system.processes.services[i].kill().await?;
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
        Fault::Kill9Pair => {
            // One instance of each service at a time, the first instances then the second ones;
            // the other instance goes on meanwhile (the load's retries go to it).
            let step = ctx.spread / 7;
            for index in [GATEWAY, CUSTOMER, TRANSACTION].into_iter().flat_map(|i| [i, i + 3]) {
                tokio::time::sleep(step).await;
                let holding = wait_until_holding(&system, index, step).await?;
                system.processes.services[index].kill().await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let ready = system.restart(index).await?;
                // The queue's in-flight count includes what the other instance holds.
                let queue = if holding > 0 {
                    format!("{holding} messages in flight on its queue")
                } else {
                    "nothing in flight on its queue".to_owned()
                };
                report.notes.push(format!(
                    "{} instance {} killed with {queue}, ready again {:.1} s after restart",
                    NAMES[index % 3],
                    index / 3 + 1,
                    ready.as_secs_f64()
                ));
            }
        }
        Fault::Sigterm => {
            for i in [GATEWAY, CUSTOMER, TRANSACTION] {
                tokio::time::sleep(step).await;
                let holding = wait_until_holding(&system, i, step).await?;
                match system.processes.services[i].terminate(TERM_LIMIT).await {
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
        Fault::None | Fault::BusOutage | Fault::DbOutage | Fault::ConfirmKill9 => {}
    }
    let loaded = load.await?;
    // Recovery counts from when both the last fault and the load are over.
    let fault_end = Instant::now();
    let ids = accepted_ids(&loaded, report);
    let (_, _) = check::wait_terminal(&system, &ids, ctx.terminal_limit).await?;
    report.recover = Some(fault_end.elapsed());
    if let Some(receivers) = &receivers {
        receivers
            .check(&system, &loaded.accepted, ctx.terminal_limit, report)
            .await?;
    }
    if fault == Fault::Duplicates {
        // Late copies: everything again (the second or third delivery of each), shuffled.
        resent += inject::resend_new(&system, &mut replayed).await?;
        resent += inject::resend(&system, inject::sent_envelopes(&system).await?).await?;
        inject::drain(&system, ctx.terminal_limit).await?;
        report.notes.push(format!(
            "{resent} envelopes re-sent (each published one at least twice more)"
        ));
    }
    if matches!(
        fault,
        Fault::Kill9 | Fault::Kill9Far | Fault::Kill9Pair | Fault::Sigterm
    ) {
        report.notes.push(format!(
            "{} messages were delivered more than once and handled once",
            log_count(&system, |v| {
                v["receive_count"].as_u64().is_some_and(|n| n > 1)
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

/// Confirmation by e-mail under kill -9: the load's enrollments wait for their mail; the
/// [`Confirmer`] follows every link mailed while the gateway (answering the confirmations) and
/// then the customer-api (sending the mail) are killed mid-batch and restarted. Then: every
/// enrollment terminal, nothing duplicated (the common checks), every address mailed, each
/// enrollment confirmed at most once and none enrolled without a confirmation.
async fn confirm_under_kills(ctx: &Context, report: &mut Report) -> anyhow::Result<()> {
    let fault = Fault::ConfirmKill9;
    let mut system = ctx.system(fault, &ctx.endpoint, ctx.enrollments).await?;
    let tag = load_tag(&report.fault);
    let confirmer = Confirmer::start(
        system.processes.http.clone(),
        ctx.endpoint.clone(),
        system.gateway_url(),
        &tag,
    );
    let load = ctx.start_load_as(&system, ctx.enrollments, ctx.spread, tag);
    let step = ctx.spread / 4;
    for i in [GATEWAY, CUSTOMER] {
        tokio::time::sleep(step).await;
        let holding = wait_until_holding(&system, i, step).await?;
        system.processes.services[i].kill().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ready = system.restart(i).await?;
        report.notes.push(format!(
            "{} killed {}, ready again {:.1} s after restart",
            NAMES[i],
            holding_text(holding),
            ready.as_secs_f64()
        ));
    }
    let loaded = load.await?;
    let fault_end = Instant::now();
    let ids = accepted_ids(&loaded, report);
    // Unconfirmable enrollments (the address was enrolled: its mail has no link) end at the deadline.
    let limit = ctx.terminal_limit.max(CONFIRMATION_TTL * 2);
    check::wait_terminal(&system, &ids, limit).await?;
    report.recover = Some(fault_end.elapsed());
    let seen = confirmer.finish().await?;
    check_confirmations(&system, &loaded.accepted, &seen, report).await?;
    check_dlqs_empty(&system, report).await?;
    finish(system, &loaded.accepted, report).await
}

/// What the confirmation phase promises beyond the common checks.
async fn check_confirmations(
    system: &System,
    accepted: &[crate::load::Accepted],
    seen: &Outcome,
    report: &mut Report,
) -> anyhow::Result<()> {
    let violations = &mut report.tally.violations;
    violations.extend(seen.violations.iter().map(|v| format!("confirmation: {v}")));
    for (id, times) in seen.confirmed.iter().filter(|(_, n)| **n > 1) {
        violations.push(format!("{id}: confirmed {times} times"));
    }
    let accepted_ids: HashSet<&str> = accepted.iter().map(|a| a.id.as_str()).collect();
    for id in seen.confirmed.keys().filter(|id| !accepted_ids.contains(id.as_str())) {
        violations.push(format!("{id}: a mailed link confirmed an enrollment nobody submitted"));
    }
    // Every enrollment, one mail at least (a link to a new address, a note to an enrolled one).
    let mails = confirm::mails_by_address(&seen.mails);
    let mut wanted: HashMap<String, usize> = HashMap::new();
    for a in accepted {
        *wanted.entry(a.email.to_ascii_lowercase()).or_default() += 1;
    }
    let mut extra = 0;
    for (address, enrollments) in &wanted {
        let (sent, links) = mails.get(address).copied().unwrap_or_default();
        if sent < *enrollments || links == 0 {
            violations.push(format!(
                "{address}: {enrollments} enrollments but {sent} mails ({links} with a link)"
            ));
        }
        extra += sent.saturating_sub(*enrollments);
    }
    // Nothing goes past `awaiting_confirmation` unless its link was followed.
    let pool = system.pool(GATEWAY).await?;
    let passed: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT enrollment_id FROM enrollment_history WHERE status = 'confirmed'")
            .fetch_all(&pool)
            .await?;
    pool.close().await;
    let unknown = passed
        .iter()
        .filter(|id| accepted_ids.contains(id.as_str()) && !seen.confirmed.contains_key(*id))
        .count();
    if unknown > seen.unanswered {
        violations.push(format!(
            "{unknown} enrollments confirmed without a 200 for their link, \
             but only {} POSTs went unanswered",
            seen.unanswered
        ));
    }
    if !seen.late.is_empty() {
        report.notes.push(format!(
            "{} links answered 410 once their deadline had passed, mailed less than {} s before it: {}",
            seen.late.len(),
            confirm::MAIL_LEAD.as_secs(),
            seen.late.join(", ")
        ));
    }
    report.notes.push(format!(
        "EMAIL_CONFIRMATION=required: {} mails ({extra} beyond one per enrollment), {} links POSTed, \
         {} confirmed with a 200, {} by a POST the killed gateway never answered, \
         {} second POSTs refused as used, {} POSTs retried",
        seen.mails.len(),
        seen.tokens,
        seen.confirmed.len(),
        seen.unanswered,
        seen.refused_again,
        seen.retried
    ));
    Ok(())
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
/// With two instances of the service, the queue's count includes what the other one holds.
async fn wait_until_holding(system: &System, i: usize, limit: Duration) -> anyhow::Result<i64> {
    let started = Instant::now();
    let service = &system.processes.services[i];
    loop {
        service.freeze(true)?;
        let held = inject::in_flight(system, CONSUMES[i % 3]).await;
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

async fn unsent_outbox_rows(system: &System, i: usize) -> anyhow::Result<i64> {
    let pool = system.pool(i).await?;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(count)
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
