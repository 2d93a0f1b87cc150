//! Which addresses a callback may reach, and the check of a callback URL at submission.
//!
//! A public caller chooses the URL, so the gateway must not become its proxy into places the
//! caller cannot reach: loopback, private networks, link-local (the instance metadata address
//! 169.254.169.254 above all), shared address space, multicast, and their IPv6 equivalents. The
//! same test ([`is_public`]) runs at submission, on every address the host resolves to, and at
//! delivery, on the addresses the client actually connects to ([`super::client`]).

use reqwest::Url;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;

/// Longest accepted `callback_url`, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// Whether `ip` is an ordinary public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let segments = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // unique local fc00::/7
                || (segments[0] & 0xfe00) == 0xfc00
                // link-local fe80::/10
                || (segments[0] & 0xffc0) == 0xfe80
                // site-local fec0::/10 (deprecated, still routed by some)
                || (segments[0] & 0xffc0) == 0xfec0
                // documentation 2001:db8::/32
                || (segments[0] == 0x2001 && segments[1] == 0x0db8)
                // IPv4-compatible ::a.b.c.d and NAT64 64:ff9b::/96: judge the embedded address
                || (segments[..6] == [0, 0, 0, 0, 0, 0])
                || (segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && !is_public_v4(embedded_v4(v6)))
                // 6to4 2002::/16 embeds an IPv4 address
                || (segments[0] == 0x2002 && !is_public_v4(Ipv4Addr::from(((segments[1] as u32) << 16) | segments[2] as u32))))
        }
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Ipv4Addr {
    let s = v6.segments();
    Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32)
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        // shared address space (carrier-grade NAT) 100.64.0.0/10
        || (a == 100 && (b & 0xc0) == 64)
        // IETF protocol assignments 192.0.0.0/24
        || (a == 192 && b == 0 && c == 0)
        // benchmarking 198.18.0.0/15
        || (a == 198 && (b & 0xfe) == 18)
        // reserved 240.0.0.0/4
        || a >= 240)
}

/// What a name lookup answers: the addresses a host name stands for.
pub type Lookup = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// How a host name becomes addresses, for both checks: the submission's ([`Policy::check`]) and
/// the delivery client's resolver ([`super::client`]). The system's resolver in production
/// ([`Resolver::system`]); a test gives one whose answers it chooses (no DNS server is at hand),
/// e.g. a name that is public at submission and loopback at delivery.
#[derive(Clone)]
pub struct Resolver(Arc<dyn Fn(&str) -> Lookup + Send + Sync>);

impl Resolver {
    /// `tokio::net::lookup_host`, the system's resolver.
    pub fn system() -> Self {
        Self::new(|host| {
            let host = host.to_owned();
            Box::pin(async move {
                Ok(tokio::net::lookup_host((host.as_str(), 0))
                    .await?
                    .map(|a| a.ip())
                    .collect())
            })
        })
    }

    /// A resolver that asks `lookup`.
    pub fn new(lookup: impl Fn(&str) -> Lookup + Send + Sync + 'static) -> Self {
        Self(Arc::new(lookup))
    }

    /// The addresses `host` (a name, not an IP literal) stands for now.
    pub fn lookup(&self, host: &str) -> Lookup {
        (self.0)(host)
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

/// What callbacks may reach, from the settings.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `CALLBACK_ALLOW_HTTP`: plain `http` accepted (local development, tests).
    pub allow_http: bool,
    /// `CALLBACK_ALLOWED_HOSTS`, lower case: when not empty, the only hosts callbacks may reach,
    /// on any address.
    pub allowed_hosts: Vec<String>,
    /// `CALLBACK_ALLOWED_PORTS`: when not empty, the only ports callback URLs may name (their
    /// scheme's default port when they name none). On EC2, 443: the only port the instances'
    /// security group lets callbacks reach, so a URL on another port is refused at submission
    /// rather than retried for a day.
    pub allowed_ports: Vec<u16>,
    /// How host names are looked up, at submission and at delivery.
    pub resolver: Resolver,
}

impl Policy {
    /// Whether `host` is named by `CALLBACK_ALLOWED_HOSTS` (and so exempt from the address test).
    pub fn admits_any_address(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.allowed_hosts.contains(&host)
    }

    /// Why the URL's port may not be reached (`None`: it may), by `CALLBACK_ALLOWED_PORTS`.
    pub fn port_refused(&self, url: &Url) -> Option<String> {
        if self.allowed_ports.is_empty()
            || url
                .port_or_known_default()
                .is_some_and(|p| self.allowed_ports.contains(&p))
        {
            return None;
        }
        let ports: Vec<String> = self.allowed_ports.iter().map(u16::to_string).collect();
        Some(format!("must use port {}", ports.join(" or ")))
    }

    /// The URL's form: scheme, no credentials, a host, a length limit, and the allow-lists. Says
    /// what is wrong in words for the client.
    pub fn parse(&self, text: &str) -> Result<Url, String> {
        if text.len() > MAX_URL_LEN {
            return Err(format!("must be at most {MAX_URL_LEN} characters"));
        }
        let url = Url::parse(text).map_err(|_| "must be an absolute URL".to_owned())?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err("must be an https URL".to_owned()),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain credentials".to_owned());
        }
        if url.fragment().is_some() {
            return Err("must not contain a fragment".to_owned());
        }
        let Some(host) = url.host_str() else {
            return Err("must name a host".to_owned());
        };
        if !self.allowed_hosts.is_empty() && !self.admits_any_address(host) {
            return Err("names a host callbacks may not reach".to_owned());
        }
        if let Some(refused) = self.port_refused(&url) {
            return Err(refused);
        }
        Ok(url)
    }

    /// [`Self::parse`], then every address its host resolves to must be public (unless the host
    /// is allowed by name): checked before the enrollment is accepted.
    pub async fn check(&self, text: &str) -> Result<Url, String> {
        let url = self.parse(text)?;
        let host = url.host_str().unwrap_or_default().to_owned();
        if self.admits_any_address(&host) {
            return Ok(url);
        }
        let addresses = resolve(&url, &self.resolver).await?;
        if addresses.is_empty() {
            return Err("names a host that does not resolve".to_owned());
        }
        if addresses.iter().any(|ip| !is_public(*ip)) {
            return Err("resolves to an address that is not public".to_owned());
        }
        Ok(url)
    }
}

/// The addresses `url`'s host stands for: itself when it is an IP literal, else what the
/// resolver says.
async fn resolve(url: &Url, resolver: &Resolver) -> Result<Vec<IpAddr>, String> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => Ok(vec![IpAddr::V4(ip)]),
        Some(url::Host::Ipv6(ip)) => Ok(vec![IpAddr::V6(ip)]),
        Some(url::Host::Domain(name)) => tokio::time::timeout(std::time::Duration::from_secs(3), resolver.lookup(name))
            .await
            .map_err(|_| "names a host that did not resolve in time".to_owned())?
            .map_err(|_| "names a host that does not resolve".to_owned()),
        None => Err("must name a host".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private} taken for public");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(public.parse().unwrap()), "{public} taken for private");
        }
    }

    #[tokio::test]
    async fn a_callback_url_is_https_without_credentials_to_a_public_address() {
        let policy = Policy::default();
        for (url, why) in [
            ("http://93.184.216.34/hook", "must be an https URL"),
            ("ftp://93.184.216.34/hook", "must be an https URL"),
            ("hook", "must be an absolute URL"),
            ("https://user:pw@93.184.216.34/", "must not contain credentials"),
            ("https://127.0.0.1/hook", "resolves to an address that is not public"),
            ("https://10.0.0.8/hook", "resolves to an address that is not public"),
            (
                "https://169.254.169.254/latest/meta-data",
                "resolves to an address that is not public",
            ),
            ("https://[::1]:8443/hook", "resolves to an address that is not public"),
            ("https://localhost/hook", "resolves to an address that is not public"),
        ] {
            assert_eq!(policy.check(url).await.unwrap_err(), why, "{url}");
        }
        let long = format!("https://93.184.216.34/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(
            policy.check(&long).await.unwrap_err(),
            "must be at most 2048 characters"
        );
        assert!(policy.check("https://93.184.216.34/hook?x=1").await.is_ok());

        let local = Policy {
            allow_http: true,
            allowed_hosts: vec!["127.0.0.1".to_owned()],
            ..Policy::default()
        };
        assert!(local.check("http://127.0.0.1:9/hook").await.is_ok());
        assert_eq!(
            local.check("https://93.184.216.34/").await.unwrap_err(),
            "names a host callbacks may not reach"
        );

        let https_only = Policy {
            allowed_ports: vec![443],
            ..Policy::default()
        };
        assert!(https_only.check("https://93.184.216.34/hook").await.is_ok());
        assert!(https_only.check("https://93.184.216.34:443/hook").await.is_ok());
        for url in ["https://93.184.216.34:8443/hook", "https://93.184.216.34:25/"] {
            assert_eq!(https_only.check(url).await.unwrap_err(), "must use port 443", "{url}");
        }
        let two = Policy {
            allowed_ports: vec![443, 8443],
            ..Policy::default()
        };
        assert!(two.check("https://93.184.216.34:8443/hook").await.is_ok());
        assert_eq!(
            two.check("https://93.184.216.34:80/").await.unwrap_err(),
            "must use port 443 or 8443"
        );
    }
}
