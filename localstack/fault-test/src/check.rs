//! The promises, checked after each phase against the gateway's API and the three databases:
//! every accepted enrollment reaches exactly one terminal state; no e-mail has two active
//! customers; no enrollment has two customers or two bonus rows; completed means an active
//! customer with its bonus posted; rolled back means an unenrolled customer without points;
//! rejected means no customer and no bonus; the campaign never grants more than its budget.

use crate::load::Accepted;
use crate::system::{CUSTOMER, GATEWAY, System, TRANSACTION};
use gateway::saga::Status;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A status the saga ends in, as the gateway declares its statuses.
pub fn is_terminal(status: &str) -> bool {
    status.parse::<Status>().is_ok_and(|s| s.is_terminal())
}

/// What one phase's enrollments ended as.
#[derive(Debug, Default)]
pub struct Tally {
    pub submitted: usize,
    pub terminal: usize,
    /// Accepted but not terminal by the deadline (or unknown to the gateway).
    pub lost: Vec<String>,
    /// An effect applied twice: two terminal entries, two customers, two bonuses.
    pub duplicated: Vec<String>,
    /// Every broken promise, each naming the enrollment(s).
    pub violations: Vec<String>,
    /// Terminal states reached, by name.
    pub by_status: BTreeMap<String, usize>,
}

/// Polls the gateway's database until every id is terminal or `limit` passes. Returns how many
/// are terminal and when the last one got there (measured from the call).
pub async fn wait_terminal(system: &System, ids: &[String], limit: Duration) -> anyhow::Result<(usize, Duration)> {
    let started = Instant::now();
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    loop {
        let pool = system.pool(GATEWAY).await;
        let done = match &pool {
            Ok(pool) => sqlx::query_as::<_, (String, String)>("SELECT id, status FROM enrollments")
                .fetch_all(pool)
                .await
                .map(|rows| {
                    rows.iter()
                        .filter(|(id, status)| wanted.contains(id.as_str()) && is_terminal(status))
                        .count()
                })
                .ok(),
            Err(_) => None,
        };
        if let Ok(pool) = pool {
            pool.close().await;
        }
        let done = done.unwrap_or(0);
        if done == wanted.len() || started.elapsed() > limit {
            return Ok((done, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(sqlx::FromRow)]
struct Enrollment {
    id: String,
    status: String,
    customer_id: Option<String>,
    bonus_points: Option<i64>,
}

/// Runs every check. `accepted` are the enrollments the gateway answered 202 for.
pub async fn invariants(system: &System, accepted: &[Accepted]) -> anyhow::Result<Tally> {
    let mut tally = Tally {
        submitted: accepted.len(),
        ..Tally::default()
    };
    let gateway = system.pool(GATEWAY).await?;
    let customers = system.pool(CUSTOMER).await?;
    let ledger = system.pool(TRANSACTION).await?;

    let enrollments: HashMap<String, Enrollment> =
        sqlx::query_as::<_, Enrollment>("SELECT id, status, customer_id, bonus_points FROM enrollments")
            .fetch_all(&gateway)
            .await?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
    let mut history: HashMap<String, Vec<String>> = HashMap::new();
    for (enrollment_id, status) in
        sqlx::query_as::<_, (String, String)>("SELECT enrollment_id, status FROM enrollment_history")
            .fetch_all(&gateway)
            .await?
    {
        history.entry(enrollment_id).or_default().push(status);
    }
    // customer rows by enrollment: (customer id, e-mail, status)
    let mut customer_rows: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
    for (id, enrollment_id, email, status) in
        sqlx::query_as::<_, (String, String, String, String)>("SELECT id, enrollment_id, email, status FROM customers")
            .fetch_all(&customers)
            .await?
    {
        customer_rows
            .entry(enrollment_id)
            .or_default()
            .push((id, email, status));
    }
    let mut bonus_rows: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for (enrollment_id, customer_id, points) in
        sqlx::query_as::<_, (String, String, i64)>("SELECT enrollment_id, customer_id, points FROM ledger")
            .fetch_all(&ledger)
            .await?
    {
        bonus_rows.entry(enrollment_id).or_default().push((customer_id, points));
    }
    let balances: HashMap<String, i64> = sqlx::query_as("SELECT customer_id, points FROM balances")
        .fetch_all(&ledger)
        .await?
        .into_iter()
        .collect();
    let granted: i64 = sqlx::query_scalar("SELECT granted_points FROM campaigns")
        .fetch_one(&ledger)
        .await?;
    for pool in [gateway, customers, ledger] {
        pool.close().await;
    }

    let mut violate = |what: String| tally.violations.push(what);
    let accepted_ids: HashSet<&str> = accepted.iter().map(|a| a.id.as_str()).collect();
    for Accepted { id, email, .. } in accepted {
        let Some(enrollment) = enrollments.get(id) else {
            violate(format!("{id}: accepted (202) but unknown to the gateway's database"));
            tally.lost.push(id.clone());
            continue;
        };
        let steps = history.get(id).cloned().unwrap_or_default();
        let terminal_steps = steps.iter().filter(|s| is_terminal(s)).count();
        let customers_of = customer_rows.get(id).cloned().unwrap_or_default();
        let bonuses = bonus_rows.get(id).cloned().unwrap_or_default();
        let mut repeated: BTreeMap<&str, usize> = BTreeMap::new();
        for step in &steps {
            *repeated.entry(step.as_str()).or_default() += 1;
        }
        if terminal_steps > 1 || repeated.values().any(|&n| n > 1) || customers_of.len() > 1 || bonuses.len() > 1 {
            tally.duplicated.push(id.clone());
            violate(format!(
                "{id}: effect applied twice (history {steps:?}, {} customers, {} bonus rows)",
                customers_of.len(),
                bonuses.len()
            ));
        }
        let outcome = match enrollment.status.parse::<Status>() {
            Ok(status) if status.is_terminal() => status,
            _ => {
                tally.lost.push(id.clone());
                violate(format!("{id} ({email}): still `{}` at the deadline", enrollment.status));
                continue;
            }
        };
        tally.terminal += 1;
        *tally.by_status.entry(enrollment.status.clone()).or_default() += 1;
        let customer = customers_of.first();
        // What each outcome means in the three databases; a new terminal status must say what
        // it means here (the match is exhaustive).
        match outcome {
            Status::Completed => {
                let active = customer.is_some_and(|(cid, _, status)| {
                    status == "active" && enrollment.customer_id.as_deref() == Some(cid.as_str())
                });
                if !active {
                    violate(format!("{id}: completed but its customer is not active ({customer:?})"));
                }
                match bonuses.first() {
                    Some((_, points)) if Some(*points) == enrollment.bonus_points => {}
                    other => violate(format!(
                        "{id}: completed with {:?} points but the ledger has {other:?}",
                        enrollment.bonus_points
                    )),
                }
            }
            Status::RolledBack => {
                match customer {
                    Some((_, _, status)) if status == "unenrolled" => {}
                    other => violate(format!("{id}: rolled back but its customer is {other:?}")),
                }
                if !bonuses.is_empty() {
                    violate(format!("{id}: rolled back but has a bonus row {bonuses:?}"));
                }
                let balance = customer.and_then(|(cid, _, _)| balances.get(cid)).copied().unwrap_or(0);
                if balance != 0 {
                    violate(format!("{id}: rolled back but its customer holds {balance} points"));
                }
            }
            Status::Rejected => {
                if customer.is_some() || !bonuses.is_empty() {
                    violate(format!(
                        "{id}: rejected but has a customer {customer:?} or bonus {bonuses:?}"
                    ));
                }
            }
            // Never confirmed: nothing was enrolled, nothing granted.
            Status::Expired => {
                if customer.is_some() || !bonuses.is_empty() {
                    violate(format!(
                        "{id}: expired but has a customer {customer:?} or bonus {bonuses:?}"
                    ));
                }
            }
            // Open statuses were counted as lost above.
            Status::Pending
            | Status::AwaitingConfirmation
            | Status::Confirmed
            | Status::Enrolled
            | Status::Compensating => {}
        }
    }
    let mut active_by_email: HashMap<&str, Vec<&str>> = HashMap::new();
    for (enrollment_id, rows) in &customer_rows {
        for (_, email, status) in rows {
            if status == "active" {
                active_by_email.entry(email).or_default().push(enrollment_id);
            }
        }
    }
    for (email, ids) in active_by_email.iter().filter(|(_, ids)| ids.len() > 1) {
        violate(format!("{email}: {} active customers (enrollments {ids:?})", ids.len()));
    }
    for enrollment_id in bonus_rows.keys().filter(|id| !accepted_ids.contains(id.as_str())) {
        violate(format!(
            "{enrollment_id}: bonus posted for an enrollment nobody submitted"
        ));
    }
    let posted: i64 = bonus_rows.values().flatten().map(|(_, p)| p).sum();
    if posted != granted || granted > system.budget_points {
        violate(format!(
            "campaign: granted {granted}, ledger holds {posted}, budget {}",
            system.budget_points
        ));
    }
    compare_api(system, accepted, &enrollments, &mut tally).await;
    Ok(tally)
}

/// What clients see must match the database: `GET /api/enrollments/{view_key}` for every
/// enrollment.
async fn compare_api(
    system: &System,
    accepted: &[Accepted],
    enrollments: &HashMap<String, Enrollment>,
    tally: &mut Tally,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for Accepted { id, view_key, .. } in accepted {
        let (http, url, id) = (
            system.processes.http.clone(),
            format!("{}/api/enrollments/{view_key}", system.gateway_url()),
            id.clone(),
        );
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let status = async {
                let response = http.get(&url).send().await.ok()?;
                let body: serde_json::Value = response.json().await.ok()?;
                body["status"].as_str().map(str::to_owned)
            }
            .await;
            (id, status)
        });
    }
    while let Some(Ok((id, status))) = tasks.join_next().await {
        let stored = enrollments.get(&id).map(|e| e.status.as_str());
        if status.as_deref() != stored {
            tally
                .violations
                .push(format!("{id}: the API says {status:?}, the database {stored:?}"));
        }
    }
}
