//! The HTTP client that delivers webhooks, and nothing else: it connects only to addresses
//! [`is_public`] admits (or to hosts `CALLBACK_ALLOWED_HOSTS` names), checked on the addresses it
//! actually connects to. Its resolver is ours: a name that resolved to a public address when the
//! enrollment was submitted and resolves to a private one now reaches nothing. It follows no
//! redirect, gives up after [`CONNECT_TIMEOUT`] to connect and [`TOTAL_TIMEOUT`] in all, and
//! reads at most [`MAX_ANSWER_BYTES`] of an answer, which it ignores.

use super::address::{Policy, is_public};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: delivered.
    Delivered(u16),
    /// 410 Gone: the receiver wants no more.
    Gone,
    /// Worth another attempt later: a timeout, a connection failure, 429, 5xx, any other status
    /// (a redirect included: it is not followed).
    Retry { status: Option<u16>, reason: String },
    /// The URL leads to an address or port callbacks may not reach: never attempted again.
    Refused(String),
}

/// Refuses every address a callback may not reach.
struct GuardedResolver {
    policy: Arc<Policy>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0} resolves to no address callbacks may reach")]
struct NotPublic(String);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let policy = self.policy.clone();
        Box::pin(async move {
            let found = policy.resolver.lookup(&host).await?;
            let any = policy.admits_any_address(&host);
            let reachable: Vec<SocketAddr> = found
                .into_iter()
                .filter(|ip| any || is_public(*ip))
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if reachable.is_empty() {
                return Err(Box::new(NotPublic(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(reachable.into_iter()) as Addrs)
        })
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    policy: Arc<Policy>,
}

impl Client {
    pub fn new(policy: Arc<Policy>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy: policy.clone() }))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TOTAL_TIMEOUT)
            .no_proxy()
            .user_agent(concat!("enrollment-saga-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, policy })
    }

    /// Whether the URL's host, when it is an IP literal (which no resolver sees), may be reached.
    fn literal_refused(&self, url: &Url) -> Option<String> {
        let host = url.host_str()?;
        let ip: IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
        (!self.policy.admits_any_address(host) && !is_public(ip)).then(|| format!("{ip} is not a public address"))
    }

    /// POSTs `body` with `headers`; the answer's body is read up to the cap and dropped.
    pub async fn post(&self, url: &Url, headers: &[(&'static str, String)], body: String) -> Outcome {
        if let Some(reason) = self.policy.port_refused(url).or_else(|| self.literal_refused(url)) {
            return Outcome::Refused(reason);
        }
        let mut request = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(err) if is_refused(&err) => return Outcome::Refused(cause_chain(&err.without_url())),
            Err(err) => {
                return Outcome::Retry {
                    status: None,
                    reason: cause_chain(&err.without_url()),
                };
            }
        };
        let status = response.status().as_u16();
        // Read a little of the answer (so the connection can be reused), never all of it.
        let mut read = 0;
        while read < MAX_ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
        match status {
            200..=299 => Outcome::Delivered(status),
            410 => Outcome::Gone,
            _ => Outcome::Retry {
                status: Some(status),
                reason: format!("answered {status}"),
            },
        }
    }
}

fn is_refused(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<NotPublic>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The error and its causes, without the URL (which may carry the receiver's own secret in its
/// query): this text is logged and shown in the operator view.
fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
