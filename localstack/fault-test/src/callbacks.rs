//! Callbacks under faults: every enrollment of a phase that has them carries a `callback_url`
//! to one of [`RECEIVERS`] receivers in this process (axum on 127.0.0.1, port 0), the gateway
//! signing with a key generated for the run. Each receiver verifies every webhook's signature
//! with the key the gateway publishes and records what it got; one of them answers 500 to the
//! first attempt of every [`FLAKY_EVERY`]th webhook it has not seen, so retries are part of the
//! run. Once every saga is terminal, [`Receivers::check`] waits until each enrollment's receiver
//! has every entry of the enrollment's public history, then checks that nothing is missing,
//! nothing was delivered that the saga did not record, and every signature verified.

use crate::load::Accepted;
use crate::phase::Report;
use crate::system::System;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use base64::Engine as _;
use rand::RngExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Receiver servers per phase; enrollment `i` calls back to receiver `i % RECEIVERS`.
pub const RECEIVERS: usize = 4;
/// The receiver that sometimes fails.
const FLAKY: usize = RECEIVERS - 1;
/// The flaky receiver answers 500 to the first attempt of every this-many-th new webhook-id.
/// Rare enough that the gateway's circuit for the host (five failures in a row) stays shut.
const FLAKY_EVERY: usize = 3;
/// The gateway's first retry within this many milliseconds (its default is seconds).
const RETRY_BASE_MS: &str = "250";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Hit {
    /// The callback URL it came to.
    url: String,
    webhook_id: String,
    verified: bool,
    enrollment_id: Option<String>,
    sequence: Option<i64>,
    status: Option<String>,
    at: Option<String>,
    /// What the receiver answered.
    answered: u16,
}

#[derive(Default)]
struct Inbox {
    /// The gateway's published key (`whpk_...`), once read.
    key: Option<String>,
    hits: Vec<Hit>,
    /// Webhook-ids the flaky receiver has seen.
    flaky_seen: HashSet<String>,
}

type Shared = Arc<Mutex<Inbox>>;

/// The phase's receivers, and the private key the gateway signs with.
pub struct Receivers {
    signing_key: String,
    ports: Vec<u16>,
    inbox: Shared,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Receivers {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

async fn receive(
    State((inbox, receiver, port)): State<(Shared, usize, u16)>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let data = &json["data"];
    let text = |field: &str| data[field].as_str().map(str::to_owned);
    let mut inbox = inbox.lock().unwrap_or_else(|e| e.into_inner());
    // Before the key is read nothing verifies (an empty key is no key).
    let key = inbox.key.as_deref().unwrap_or_default();
    let (webhook_id, verified) = gateway::webhooks::signing::verify_headers(key, &headers, &body);
    let answered = if receiver == FLAKY && inbox.flaky_seen.insert(webhook_id.clone()) {
        if inbox.flaky_seen.len().is_multiple_of(FLAKY_EVERY) {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::NO_CONTENT
        }
    } else {
        StatusCode::NO_CONTENT
    };
    inbox.hits.push(Hit {
        url: format!("http://127.0.0.1:{port}{}", uri.path()),
        webhook_id,
        verified,
        enrollment_id: text("enrollment_id"),
        sequence: data["sequence"].as_i64(),
        status: text("status"),
        at: text("at"),
        answered: answered.as_u16(),
    });
    answered
}

/// One entry of an enrollment's public history: (status, at).
type Entry = (String, String);

impl Receivers {
    /// Starts the receivers and makes a signing key for the gateway.
    pub async fn start() -> anyhow::Result<Self> {
        let seed: [u8; 32] = rand::rng().random();
        let signing_key = format!("whsk_{}", base64::engine::general_purpose::STANDARD.encode(seed));
        let inbox = Shared::default();
        let mut ports = Vec::new();
        let mut servers = Vec::new();
        for receiver in 0..RECEIVERS {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let app = axum::Router::new()
                .fallback(receive)
                .with_state((inbox.clone(), receiver, port));
            servers.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
            ports.push(port);
        }
        Ok(Self {
            signing_key,
            ports,
            inbox,
            servers,
        })
    }

    /// The gateway's settings: the run's key, plain http to 127.0.0.1, quick retries.
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        [
            ("WEBHOOK_SIGNING_KEYS", self.signing_key.as_str()),
            ("CALLBACK_ALLOWED_HOSTS", "127.0.0.1"),
            ("CALLBACK_ALLOW_HTTP", "true"),
            ("WEBHOOK_RETRY_BASE_MS", RETRY_BASE_MS),
            ("WEBHOOK_POLL_MS", "200"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The callback URL of the load's `count` enrollments, by index.
    pub fn urls(&self, count: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("http://127.0.0.1:{}/hooks/{i}", self.ports[i % RECEIVERS]))
            .collect()
    }

    /// Reads the key the gateway publishes, which the receivers verify with from now on.
    pub async fn trust_published_key(&self, system: &System) -> anyhow::Result<()> {
        let url = format!("{}/.well-known/webhook-keys", system.gateway_url());
        let keys: Value = system
            .processes
            .http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let key = keys["keys"][0]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("{url} publishes no key: {keys}"))?;
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).key = Some(key.to_owned());
        Ok(())
    }

    fn hits(&self) -> Vec<Hit> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).hits.clone()
    }

    /// After every saga is terminal: waits up to `limit` until each enrollment's receiver has
    /// acknowledged (2xx, signature verified) every entry of its public history, then checks.
    pub async fn check(
        &self,
        system: &System,
        accepted: &[Accepted],
        limit: Duration,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let histories = public_histories(system, accepted).await;
        let started = Instant::now();
        let missing = loop {
            let missing = missing(&self.hits(), accepted, &histories);
            if missing.is_empty() || started.elapsed() > limit {
                break missing;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let waited = started.elapsed();
        let hits = self.hits();
        let violations = &mut report.tally.violations;
        for (id, sequences) in &missing {
            violations.push(format!(
                "{id}: callback never received for history entries {sequences:?} within {} s",
                limit.as_secs()
            ));
        }
        let by_url: HashMap<&str, &Accepted> = accepted
            .iter()
            .filter_map(|a| a.callback_url.as_deref().map(|url| (url, a)))
            .collect();
        for (id, _) in histories.iter().filter(|(_, h)| h.is_none()) {
            violations.push(format!("{id}: its public view could not be read"));
        }
        let mut bad_signatures = 0;
        let mut not_made = 0;
        // What each webhook-id carried, and the webhook-ids each history entry came under.
        let mut carried: HashMap<&str, (Option<&str>, Option<i64>)> = HashMap::new();
        let mut ids_of_entry: BTreeMap<(&str, i64), HashSet<&str>> = BTreeMap::new();
        for hit in &hits {
            if !hit.verified {
                bad_signatures += 1;
                violations.push(format!(
                    "{}: webhook {} whose signature does not verify with the published key",
                    hit.url, hit.webhook_id
                ));
            }
            let Some(owner) = by_url.get(hit.url.as_str()) else {
                violations.push(format!("{}: a callback to a URL no enrollment gave", hit.url));
                continue;
            };
            if hit.enrollment_id.as_deref() != Some(owner.id.as_str()) {
                violations.push(format!(
                    "{}: {}'s receiver got a webhook about {:?}",
                    hit.url, owner.id, hit.enrollment_id
                ));
                continue;
            }
            let entry = hit
                .sequence
                .and_then(|s| usize::try_from(s).ok()?.checked_sub(1))
                .and_then(|i| histories.get(&owner.id)?.as_ref()?.get(i));
            let delivered = (hit.status.as_deref(), hit.at.as_deref());
            if entry.map(|(status, at)| (Some(status.as_str()), Some(at.as_str()))) != Some(delivered) {
                not_made += 1;
                let history = histories.get(&owner.id).and_then(Option::as_ref).map(|h| {
                    h.iter()
                        .map(|(status, at)| format!("{status} at {at}"))
                        .collect::<Vec<_>>()
                });
                violations.push(format!(
                    "{}: delivered {:?} at {:?} as sequence {:?}, which is not in its history {history:?}",
                    owner.id, hit.status, hit.at, hit.sequence
                ));
            }
            let what = (hit.enrollment_id.as_deref(), hit.sequence);
            if *carried.entry(&hit.webhook_id).or_insert(what) != what {
                violations.push(format!("webhook-id {} carried two different changes", hit.webhook_id));
            }
            if let Some(sequence) = hit.sequence {
                ids_of_entry
                    .entry((owner.id.as_str(), sequence))
                    .or_default()
                    .insert(&hit.webhook_id);
            }
        }
        for ((id, sequence), ids) in ids_of_entry.iter().filter(|(_, ids)| ids.len() > 1) {
            violations.push(format!(
                "{id}: history entry {sequence} came under {} webhook-ids (a receiver deduplicating by webhook-id sees it twice)",
                ids.len()
            ));
        }
        let (again, retries) = repeats(&hits);
        // Once every entry is acknowledged, what the gateway has not recorded as delivered is
        // mostly what a killed instance had claimed and posted: sent again once its 60 s lease
        // runs out (at least once), after the phase.
        let pool = system.pool(crate::system::GATEWAY).await?;
        let unrecorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE state <> 'delivered'")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        let changes: usize = histories.values().flatten().map(Vec::len).sum();
        report.notes.push(format!(
            "callbacks: {} deliveries received for {changes} status changes of {} enrollments \
             ({} webhook-ids), {again} received again after a 2xx (at least once), \
             {retries} retries after the flaky receiver's 500, {} missing, {not_made} not made by the saga, \
             {bad_signatures} bad signatures; all in {:.1} s after the last saga ended, when \
             the gateway had yet to record {unrecorded} as delivered (a killed instance's claims \
             wait out a 60 s lease, then go again)",
            hits.len(),
            accepted.len(),
            carried.len(),
            missing.values().map(Vec::len).sum::<usize>(),
            waited.as_secs_f64()
        ));
        Ok(())
    }
}

/// Every enrollment's public history, as `GET /api/enrollments/{view_key}` shows it (`None`
/// when it could not be read: its entries then all count as missing).
async fn public_histories(system: &System, accepted: &[Accepted]) -> HashMap<String, Option<Vec<Entry>>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for a in accepted {
        let (http, url, id) = (
            system.processes.http.clone(),
            format!("{}/api/enrollments/{}", system.gateway_url(), a.view_key),
            a.id.clone(),
        );
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let history = async {
                let view: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                view["history"]
                    .as_array()?
                    .iter()
                    .map(|e| Some((e["status"].as_str()?.to_owned(), e["at"].as_str()?.to_owned())))
                    .collect::<Option<Vec<Entry>>>()
            }
            .await;
            (id, history)
        });
    }
    let mut histories = HashMap::new();
    while let Some(Ok((id, history))) = tasks.join_next().await {
        histories.insert(id, history);
    }
    histories
}

/// By enrollment, the sequences of its history no verified 2xx-answered webhook brought yet.
fn missing(
    hits: &[Hit],
    accepted: &[Accepted],
    histories: &HashMap<String, Option<Vec<Entry>>>,
) -> BTreeMap<String, Vec<i64>> {
    let mut acknowledged: HashMap<&str, HashSet<(&str, i64)>> = HashMap::new();
    for hit in hits.iter().filter(|h| h.verified && (200..300).contains(&h.answered)) {
        if let (Some(id), Some(sequence)) = (hit.enrollment_id.as_deref(), hit.sequence) {
            acknowledged.entry(hit.url.as_str()).or_default().insert((id, sequence));
        }
    }
    let mut missing = BTreeMap::new();
    for a in accepted {
        let Some(url) = a.callback_url.as_deref() else {
            continue;
        };
        let length = match histories.get(&a.id) {
            Some(Some(history)) => history.len() as i64,
            // Unreadable: at least the first entry is owed.
            _ => 1,
        };
        let got = acknowledged.get(url);
        let owed: Vec<i64> = (1..=length)
            .filter(|s| !got.is_some_and(|got| got.contains(&(a.id.as_str(), *s))))
            .collect();
        if !owed.is_empty() {
            missing.insert(a.id.clone(), owed);
        }
    }
    missing
}

/// Deliveries of a webhook-id received again after one answered 2xx, and after one answered 500.
fn repeats(hits: &[Hit]) -> (usize, usize) {
    let mut last: HashMap<&str, u16> = HashMap::new();
    let (mut again, mut retries) = (0, 0);
    for hit in hits {
        match last.insert(&hit.webhook_id, hit.answered) {
            Some(answered) if (200..300).contains(&answered) => again += 1,
            Some(_) => retries += 1,
            None => {}
        }
    }
    (again, retries)
}
