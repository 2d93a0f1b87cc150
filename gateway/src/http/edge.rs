//! What stands between the internet and the handlers: the operator token, the per-client rate
//! limit on submissions, and load shedding.
//!
//! - Operator routes require `Authorization: Bearer <OPERATOR_TOKEN>`. The token is compared as a
//!   SHA-256 digest in constant time, so neither its content nor its length leaks through timing.
//!   A missing or wrong token gets 401 with `WWW-Authenticate: Bearer`. Without `OPERATOR_TOKEN`
//!   the operator routes are not mounted at all (404): they are off, never open.
//! - `POST /api/enrollments` is limited per client address (a token bucket: `RATE_LIMIT_PER_MINUTE`
//!   refill, `RATE_LIMIT_BURST` capacity; 429 with `Retry-After`). The client address is the
//!   peer's, or, when the peer is a trusted proxy (`TRUSTED_PROXY_CIDRS`, the load balancer's
//!   subnets), the nearest untrusted address in `X-Forwarded-For`: a client cannot pick its own
//!   bucket by sending the header itself. An IPv4-mapped IPv6 address counts as the IPv4 one,
//!   and an IPv6 client is keyed by its /64, the smallest block a site is given: one host owns
//!   2^64 addresses. The first `X-Forwarded-For` from a peer outside the trusted proxies is
//!   logged at WARN: behind a load balancer whose subnets are missing from
//!   `TRUSTED_PROXY_CIDRS`, every client would share the balancer's few buckets.
//! - At most `MAX_CONCURRENT_REQUESTS` API requests run at once; beyond that a request is refused
//!   at once with 503 and `Retry-After` rather than queued (`/health` and `/ready` are exempt).

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use subtle::ConstantTimeEq;
use utility::http::Problem;

/// The operator token, kept as its digest.
#[derive(Clone)]
pub struct OperatorToken {
    digest: [u8; 32],
}

impl OperatorToken {
    pub fn new(token: &str) -> Self {
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    fn admits(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest.ct_eq(&presented).into()
    }

    /// Whether a request with `headers` carries this token.
    pub fn admits_request(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|presented| self.admits(presented))
    }
}

/// Middleware for the operator routes.
pub async fn require_operator(State(token): State<OperatorToken>, request: Request, next: Next) -> Response {
    let presented = bearer(request.headers());
    match presented {
        Some(presented) if token.admits(presented) => next.run(request).await,
        Some(_) => unauthorized("the bearer token is not the operator token"),
        None => unauthorized("this route is for operators: send `Authorization: Bearer <operator token>`"),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized(detail: &'static str) -> Response {
    let mut response = Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Which peers may tell us the client's address (`X-Forwarded-For`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Arc<Vec<IpNet>>,
    /// Whether an untrusted peer's `X-Forwarded-For` has been reported yet.
    reported: Arc<AtomicBool>,
}

impl TrustedProxies {
    /// The proxies in `nets` (parsed with the configuration: `TRUSTED_PROXY_CIDRS`).
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self {
            nets: Arc::new(nets),
            reported: Arc::default(),
        }
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.nets.iter().any(|net| net.contains(&address))
    }

    /// Logs, once per process, an `X-Forwarded-For` from an untrusted peer; true when it did.
    fn report_untrusted(&self, peer: IpAddr) -> bool {
        let first = !self.reported.swap(true, Ordering::Relaxed);
        if first {
            tracing::warn!(
                %peer,
                "X-Forwarded-For from a peer outside TRUSTED_PROXY_CIDRS, ignored; if this peer is \
                 the load balancer, every client shares its rate-limit bucket: check TRUSTED_PROXY_CIDRS"
            );
        }
        first
    }

    /// The client's address: the peer's, unless the peer is trusted; then the nearest address in
    /// `X-Forwarded-For` that is not itself a trusted proxy (each proxy appends the address it saw,
    /// so everything left of the first untrusted entry may be made up by the client).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            if headers.contains_key("x-forwarded-for") {
                self.report_untrusted(peer);
            }
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(address) if self.trusts(address) => client = address.to_canonical(),
                Ok(address) => return address.to_canonical(),
                // An entry that is not an address: stop at the last one we can vouch for.
                Err(_) => return client,
            }
        }
        client
    }
}

/// The rate-limit bucket of a client address: an IPv4 address itself (mapped or not), an IPv6
/// address its /64.
pub fn bucket(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// The per-client limit on submissions.
#[derive(Clone)]
pub struct RateLimit {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    proxies: TrustedProxies,
    checks: Arc<AtomicU64>,
}

/// How often (in checks) idle clients' buckets are forgotten, so the map stays small.
const FORGET_EVERY: u64 = 4096;

impl RateLimit {
    /// `None` when `per_minute` is 0 (no limit).
    pub fn new(per_minute: u32, burst: u32, proxies: TrustedProxies) -> Option<Self> {
        let rate = NonZeroU32::new(per_minute)?;
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Some(Self {
            limiter: Arc::new(governor::RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))),
            proxies,
            checks: Arc::new(AtomicU64::new(0)),
        })
    }
}

/// The peer address of a request (unspecified for requests that did not come over a socket,
/// as in tests that call the router directly).
pub fn peer(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The client a request comes from, as the rate limit and the live-update limits count it: its
/// address ([`TrustedProxies::client`]) reduced to its bucket ([`bucket`]).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub IpAddr);

/// Middleware for the public enrollment routes: names the request's [`Client`].
pub async fn identify_client(State(proxies): State<TrustedProxies>, mut request: Request, next: Next) -> Response {
    let client = bucket(proxies.client(peer(&request), request.headers()));
    request.extensions_mut().insert(Client(client));
    next.run(request).await
}

/// A 429 that says what was refused, with `Retry-After`.
pub fn too_many(detail: &'static str, retry_after_seconds: u64) -> Response {
    let mut response = Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests", detail).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds.max(1)));
    response
}

/// Middleware for `POST /api/enrollments`.
pub async fn rate_limit(State(limit): State<RateLimit>, request: Request, next: Next) -> Response {
    let client = limit.proxies.client(peer(&request), request.headers());
    if limit.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == 0 {
        limit.limiter.retain_recent();
    }
    match limit.limiter.check_key(&bucket(client)) {
        Ok(()) => next.run(request).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            tracing::info!(%client, retry_after_s = seconds, "submission rate limit reached");
            too_many(
                "too many enrollments from this address; retry after the time in Retry-After",
                seconds,
            )
        }
    }
}

/// The answer to a request refused by load shedding.
pub async fn overloaded(_: tower::BoxError) -> Problem {
    Problem::unavailable("the gateway is at capacity; retry shortly")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    #[test]
    fn the_client_address_is_taken_from_trusted_proxies_only() {
        let proxies = TrustedProxies::new(vec!["10.0.0.0/16".parse().unwrap(), "10.1.0.5/32".parse().unwrap()]);
        let alb: IpAddr = "10.0.3.7".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        // An untrusted peer's header is ignored: it could say anything.
        assert_eq!(proxies.client(stranger, &forwarded("198.51.100.1")), stranger);
        // Through the load balancer: the address it saw.
        assert_eq!(
            proxies.client(alb, &forwarded("198.51.100.1")),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        // A client that sends its own header gets it kept on the left, and ignored.
        assert_eq!(
            proxies.client(alb, &forwarded("1.2.3.4, 198.51.100.1")),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        // Trusted hops are skipped; garbage stops the walk at the last trusted hop.
        assert_eq!(
            proxies.client(alb, &forwarded("198.51.100.1, 10.1.0.5")),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(proxies.client(alb, &forwarded("nonsense")), alb);
        assert_eq!(proxies.client(alb, &HeaderMap::new()), alb);
    }

    #[test]
    fn ipv6_clients_are_bucketed_by_64_and_mapped_addresses_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(bucket(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(bucket(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), ip("2001:db8:1:2::"));
        assert_ne!(bucket(ip("2001:db8:1:3::1")), bucket(ip("2001:db8:1:2::1")));
        assert_eq!(bucket(ip("::ffff:203.0.113.5")), ip("203.0.113.5"));
        assert_eq!(bucket(ip("203.0.113.5")), ip("203.0.113.5"));
        // A mapped peer inside a trusted IPv4 range is trusted.
        let proxies = TrustedProxies::new(vec!["10.0.0.0/16".parse().unwrap()]);
        assert_eq!(
            proxies.client(ip("::ffff:10.0.3.7"), &forwarded("198.51.100.1")),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn forwarding_from_an_untrusted_peer_is_reported_once() {
        let proxies = TrustedProxies::new(vec!["10.0.0.0/16".parse().unwrap()]);
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(proxies.client(stranger, &HeaderMap::new()), stranger);
        assert!(
            !proxies.reported.load(Ordering::Relaxed),
            "no header, nothing to report"
        );
        assert_eq!(proxies.client(stranger, &forwarded("198.51.100.1")), stranger);
        assert!(proxies.reported.load(Ordering::Relaxed));
        assert!(!proxies.report_untrusted(stranger), "reported once per process");
    }

    #[test]
    fn only_the_operator_token_is_admitted() {
        let token = OperatorToken::new("s3cret-token");
        assert!(token.admits("s3cret-token"));
        assert!(!token.admits("s3cret-toke"));
        assert!(!token.admits(""));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
