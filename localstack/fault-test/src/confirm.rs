//! The person of the confirmation phase: reads the mail the customer-api sent through the
//! emulator's SES to the phase's addresses and POSTs every link's token to the gateway, as the
//! confirmation page's button does. Every fourth token is POSTed a second time once the first
//! answer is in, every fourth (another one) twice at once: a token confirms once, whatever the
//! timing. A POST the gateway never answered (it was killed) is sent again, as a person presses
//! the button again; that retry may find the token used by the unanswered one.

use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use testkit::mail::SentMail;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long one POST is retried while the gateway is down or failing.
const ANSWER_LIMIT: Duration = Duration::from_secs(60);
/// How often the emulator's list of sent mail is read.
const EVERY: Duration = Duration::from_millis(500);
/// POSTs in flight at once.
const CONCURRENCY: usize = 8;

/// What the person saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The phase's mails, oldest first.
    pub mails: Vec<SentMail>,
    /// Distinct tokens POSTed.
    pub tokens: usize,
    /// 200 answers, by the enrollment they confirmed.
    pub confirmed: BTreeMap<String, usize>,
    /// Tokens whose answered POST came after one the gateway never answered, and said "used":
    /// the unanswered one confirmed (the enrollment is then not known from an answer).
    pub unanswered: usize,
    /// Second POSTs of a token refused as used (sequential and simultaneous).
    pub refused_again: usize,
    /// POSTs that needed more than one attempt.
    pub retried: usize,
    /// Links answered 410 once their deadline had passed, whose mail came less than
    /// [`MAIL_LEAD`] before it (or after it: the mail relay does not look at deadlines), or
    /// whose second POST came after it.
    pub late: Vec<String>,
    pub violations: Vec<String>,
}

/// The running person; [`Confirmer::finish`] stops it and returns what it saw.
pub struct Confirmer {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Outcome>,
}

impl Confirmer {
    /// Follows the mails sent to `*.<tag>@fault.test` on the emulator at `emulator` and POSTs
    /// their tokens to `gateway`.
    pub fn start(http: reqwest::Client, emulator: String, gateway: String, tag: &str) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let suffix = format!(".{tag}@fault.test").to_ascii_lowercase();
        let task = tokio::spawn(follow(http, emulator, gateway, suffix, stopped));
        Self { stop, task }
    }

    /// One more read of the mail (so nothing sent before the call is missed), then stops.
    pub async fn finish(self) -> anyhow::Result<Outcome> {
        let _ = self.stop.send(true);
        Ok(self.task.await?)
    }
}

fn ours(mail: &SentMail, suffix: &str) -> bool {
    mail.to.iter().any(|to| to.to_ascii_lowercase().ends_with(suffix))
}

async fn follow(
    http: reqwest::Client,
    emulator: String,
    gateway: String,
    suffix: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Outcome {
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut seen: HashSet<String> = HashSet::new();
    let mut posts = JoinSet::new();
    let mut last_error = None;
    loop {
        let last_round = *stop.borrow();
        match testkit::mail::all_sent(&emulator).await {
            Ok(mut mails) => {
                mails.retain(|m| ours(m, &suffix));
                for mail in &mails {
                    let Some(token) = mail.token() else { continue };
                    if !seen.insert(token.to_owned()) {
                        continue;
                    }
                    let n = seen.len();
                    let (http, url, token) = (http.clone(), format!("{gateway}/api/confirmations"), token.to_owned());
                    let (outcome, permits, mailed_at) = (outcome.clone(), permits.clone(), mail.timestamp.clone());
                    posts.spawn(async move {
                        let _permit = permits.acquire_owned().await;
                        let result = use_token(&http, &url, &token, n % 4).await;
                        result.record(&mut *outcome.lock().await, &token, &mailed_at);
                    });
                }
                outcome.lock().await.mails = mails;
            }
            Err(err) => last_error = Some(err),
        }
        if last_round {
            break;
        }
        tokio::select! {
            changed = stop.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(EVERY) => {}
        }
    }
    while posts.join_next().await.is_some() {}
    let mut outcome = std::mem::take(&mut *outcome.lock().await);
    outcome.tokens = seen.len();
    if outcome.mails.is_empty()
        && let Some(err) = last_error
    {
        outcome
            .violations
            .push(format!("the emulator's sent mail could not be read: {err}"));
    }
    outcome
}

/// One POST, as answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The confirmed enrollment's id (200 only).
    id: Option<String>,
    /// The problem's `detail` (refusals only).
    detail: String,
    /// When the answer was in, in the gateway's stored form (same clock as its deadlines).
    answered_at: String,
    attempts: u32,
}

impl Answer {
    /// The deadline a 410 names (`... expired at <confirm_by>; ...`).
    fn deadline(&self) -> Option<&str> {
        self.detail.split_once("expired at ")?.1.split(';').next()
    }
}

/// POSTs `token` until the gateway answers other than 5xx, or [`ANSWER_LIMIT`] passes.
async fn post(http: &reqwest::Client, url: &str, token: &str) -> Result<Answer, String> {
    let started = Instant::now();
    let mut attempts = 0;
    let mut last = String::new();
    while started.elapsed() < ANSWER_LIMIT {
        attempts += 1;
        match http.post(url).json(&json!({ "token": token })).send().await {
            Ok(response) if response.status().is_server_error() => last = format!("HTTP {}", response.status()),
            Ok(response) => {
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                return Ok(Answer {
                    status,
                    id: body["id"].as_str().map(str::to_owned),
                    detail: body["detail"].as_str().unwrap_or_default().to_owned(),
                    answered_at: utility::storage::now(),
                    attempts,
                });
            }
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("no answer within {} s (last: {last})", ANSWER_LIMIT.as_secs()))
}

/// What became of one token: its first POST, and the second one when there was one.
struct Used {
    first: Result<Answer, String>,
    second: Option<Result<Answer, String>>,
    at_once: bool,
}

/// `mode` 1: a second POST after the first answer; 2: two POSTs at once; else one POST.
async fn use_token(http: &reqwest::Client, url: &str, token: &str, mode: usize) -> Used {
    match mode {
        1 => {
            let first = post(http, url, token).await;
            let second = Some(post(http, url, token).await);
            Used {
                first,
                second,
                at_once: false,
            }
        }
        2 => {
            let (first, second) = tokio::join!(post(http, url, token), post(http, url, token));
            Used {
                first,
                second: Some(second),
                at_once: true,
            }
        }
        _ => Used {
            first: post(http, url, token).await,
            second: None,
            at_once: false,
        },
    }
}

/// How long before its deadline a mail must have been sent for its link to be confirmed
/// whatever the phase does: the person reads the mail every [`EVERY`], and a POST that finds the
/// gateway killed waits out its restart (about a second) before it is answered.
pub(crate) const MAIL_LEAD: Duration = Duration::from_secs(20);

/// Seconds from `mailed_at` (the emulator's stamp, `2026-12-06T21:49:04`, UTC) to `deadline`
/// (the gateway's RFC 3339); `None` when either does not parse.
fn lead_seconds(mailed_at: &str, deadline: &str) -> Option<f64> {
    let mailed = mailed_at.trim_end_matches('Z');
    let mailed = chrono::NaiveDateTime::parse_from_str(mailed, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(mailed, "%Y-%m-%dT%H:%M:%S"))
        .ok()?
        .and_utc();
    let deadline = chrono::DateTime::parse_from_rfc3339(deadline).ok()?;
    Some((deadline.with_timezone(&chrono::Utc) - mailed).as_seconds_f64())
}

impl Used {
    fn record(self, outcome: &mut Outcome, token: &str, mailed_at: &str) {
        let short = &token[..token.len().min(8)];
        let answers: Vec<&Answer> = std::iter::once(&self.first)
            .chain(self.second.as_ref())
            .filter_map(|a| match a {
                Ok(answer) => Some(answer),
                Err(why) => {
                    outcome.violations.push(format!("token {short}…: {why}"));
                    None
                }
            })
            .collect();
        outcome.retried += answers.iter().filter(|a| a.attempts > 1).count();
        let ok: Vec<&&Answer> = answers.iter().filter(|a| a.status == 200).collect();
        for answer in &ok {
            match &answer.id {
                Some(id) => *outcome.confirmed.entry(id.clone()).or_default() += 1,
                None => outcome
                    .violations
                    .push(format!("token {short}…: 200 without the enrollment's id")),
            }
        }
        if ok.len() > 1 {
            outcome.violations.push(format!(
                "token {short}…: accepted {} times (single use broken)",
                ok.len()
            ));
        }
        let used = answers.iter().filter(|a| a.status == 404).count();
        let retried = answers.iter().any(|a| a.attempts > 1);
        // Gone is right only once the deadline has passed (the answer came after it), and only
        // for a link mailed too close to it to be followed in time; a second POST after a 200
        // may find the deadline passed whenever it was mailed. One verdict per token (two POSTs
        // at once are refused alike).
        if let Some(answer) = answers.iter().find(|a| a.status == 410) {
            let deadline = answer.deadline().unwrap_or_default();
            let lead = lead_seconds(mailed_at, deadline);
            let in_time = lead.is_some_and(|lead| lead > MAIL_LEAD.as_secs_f64());
            if deadline.is_empty() || deadline > answer.answered_at.as_str() || (in_time && ok.is_empty()) {
                outcome.violations.push(format!(
                    "token {short}…: mailed at {mailed_at}, answered 410 at {} ({:?}): a link mailed and \
                     followed within its deadline is confirmed",
                    answer.answered_at, answer.detail
                ));
            } else if lead.is_none() {
                outcome.violations.push(format!(
                    "token {short}…: the mail's stamp {mailed_at:?} or the deadline {deadline:?} does not parse"
                ));
            } else {
                outcome.late.push(format!(
                    "{short}… (mailed {mailed_at}, deadline {deadline}, answered {})",
                    answer.answered_at
                ));
            }
        }
        if let Some(other) = answers.iter().find(|a| ![200, 404, 410].contains(&a.status)) {
            outcome.violations.push(format!(
                "token {short}…: answered {} (a mailed link within its deadline is confirmed, or refused as used)",
                other.status
            ));
        }
        match (ok.len(), used) {
            (1, refused) => outcome.refused_again += refused,
            // Every answer "used": only a POST the gateway never answered can have used it.
            (0, refused) if refused > 0 && retried => {
                outcome.unanswered += 1;
                outcome.refused_again += refused - 1;
            }
            (0, refused) if refused > 0 => outcome.violations.push(format!(
                "token {short}…: refused as used at its first use{}",
                if self.at_once {
                    " (two POSTs at once, neither accepted)"
                } else {
                    ""
                }
            )),
            _ => {}
        }
    }
}

/// Counts, per address (lower-cased), of the mails sent to it and of those with a link.
pub fn mails_by_address(mails: &[SentMail]) -> HashMap<String, (usize, usize)> {
    let mut by: HashMap<String, (usize, usize)> = HashMap::new();
    for mail in mails {
        for to in &mail.to {
            let entry = by.entry(to.to_ascii_lowercase()).or_default();
            entry.0 += 1;
            entry.1 += usize::from(mail.token().is_some());
        }
    }
    by
}
