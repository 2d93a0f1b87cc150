//! The load: enrollments submitted through the gateway at a steady pace, with bounded
//! concurrency, as a careful client would: each request carries an `Idempotency-Key` and is
//! retried with the same key while the gateway is down or failing (5xx), so a crash between
//! commit and answer cannot create a second enrollment. A share of the requests reuse an earlier
//! e-mail, so some sagas end `rejected`. With several gateway instances, requests take turns, and
//! a retry goes to the next instance, as behind a load balancer.

use rand::RngExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Requests in flight at once.
const CONCURRENCY: usize = 16;
/// How long one enrollment may keep being retried before the client gives up.
const SUBMIT_LIMIT: Duration = Duration::from_secs(120);
/// Share of requests that reuse an earlier e-mail.
const DUPLICATE_SHARE: f64 = 0.08;

#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: String,
    /// The public view's key: `GET /api/enrollments/{view_key}`.
    pub view_key: String,
    pub email: String,
    /// The `callback_url` it was submitted with, if any.
    pub callback_url: Option<String>,
}

#[derive(Debug, Default)]
pub struct LoadResult {
    pub accepted: Vec<Accepted>,
    /// Requests that never got a 202, with why.
    pub refused: Vec<String>,
    /// 202 answers that needed more than one attempt.
    pub retried: usize,
}

/// `count` distinct requests; e-mails are unique to `tag` except the deliberate duplicates.
fn emails(count: usize, tag: &str) -> Vec<String> {
    let mut rng = rand::rng();
    let mut emails: Vec<String> = Vec::with_capacity(count);
    for i in 0..count {
        if i >= 5 && rng.random_bool(DUPLICATE_SHARE) {
            let earlier = emails[rng.random_range(0..i)].clone();
            emails.push(earlier);
        } else {
            emails.push(format!("u{i}.{tag}@fault.test"));
        }
    }
    emails
}

/// Submits `count` enrollments spread evenly over `spread`, and returns when each has an answer.
/// Enrollment `i` carries `callbacks[i]` as its `callback_url`, when there is one.
pub async fn run(
    http: reqwest::Client,
    gateways: Vec<String>,
    count: usize,
    spread: Duration,
    tag: String,
    callbacks: Vec<String>,
) -> LoadResult {
    let emails = emails(count, &tag);
    let interval = spread.checked_div(count.max(1) as u32).unwrap_or_default();
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, email) in emails.into_iter().enumerate() {
        tokio::time::sleep_until(started + interval * i as u32).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (http, gateways, callback) = (http.clone(), gateways.clone(), callbacks.get(i).cloned());
        tasks.spawn(async move {
            let result = submit(
                &http,
                &gateways,
                i,
                &format!("Fault Test {i}"),
                &email,
                callback.as_deref(),
            )
            .await;
            drop(permit);
            (email, callback, result)
        });
    }
    let mut result = LoadResult::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((email, callback_url, Ok((id, view_key, attempts)))) => {
                result.retried += usize::from(attempts > 1);
                result.accepted.push(Accepted {
                    id,
                    view_key,
                    email,
                    callback_url,
                });
            }
            Ok((email, _, Err(why))) => result.refused.push(format!("{email}: {why}")),
            Err(join) => result.refused.push(format!("a submit task failed: {join}")),
        }
    }
    result
}

/// POSTs one enrollment until it is accepted, to `gateways[turn]` first and then to the next ones
/// in turn. Returns its id and the number of attempts.
async fn submit(
    http: &reqwest::Client,
    gateways: &[String],
    turn: usize,
    name: &str,
    email: &str,
    callback_url: Option<&str>,
) -> Result<(String, String, u32), String> {
    let key = uuid::Uuid::new_v4().to_string();
    let mut body = json!({"name": name, "email": email});
    if let Some(url) = callback_url {
        body["callback_url"] = json!(url);
    }
    let started = Instant::now();
    let mut attempts = 0;
    let mut last = String::new();
    while started.elapsed() < SUBMIT_LIMIT {
        let gateway = &gateways[(turn + attempts as usize) % gateways.len().max(1)];
        attempts += 1;
        let sent = http
            .post(format!("{gateway}/api/enrollments"))
            .header("idempotency-key", &key)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().as_u16() == 202 => {
                let answer: Value = response.json().await.map_err(|e| format!("202 without JSON: {e}"))?;
                let id = answer["id"].as_str().ok_or("202 without an id")?;
                let view_key = answer["view_key"].as_str().ok_or("202 without a view key")?;
                return Ok((id.to_owned(), view_key.to_owned(), attempts));
            }
            Ok(response) if response.status().is_server_error() => last = format!("HTTP {}", response.status()),
            Ok(response) => {
                let status = response.status();
                return Err(format!("HTTP {status}: {}", response.text().await.unwrap_or_default()));
            }
            Err(err) => last = format!("{err}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!(
        "not accepted within {} s (last: {last})",
        SUBMIT_LIMIT.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::emails;
    use std::collections::HashSet;

    #[test]
    fn duplicates_reuse_earlier_addresses_only() {
        let all = emails(400, "t");
        assert_eq!(all.len(), 400);
        let unique: HashSet<&String> = all.iter().collect();
        assert!(
            unique.len() < all.len(),
            "some e-mails must repeat so that `rejected` occurs"
        );
        assert!(unique.len() > all.len() * 3 / 4, "most e-mails are unique");
        for (i, email) in all.iter().enumerate() {
            assert!(all[..=i].contains(email));
            let n: usize = email[1..email.find('.').unwrap()].parse().unwrap();
            assert!(n <= i, "{email} at {i} refers to a later request");
        }
    }
}
