//! Where `sagactl` is about to act. The same commands serve LocalStack, moto and AWS, told apart
//! only by `AWS_ENDPOINT_URL`; a forgotten `source localstack/env.sh` would otherwise point a
//! `destroy` at a real account. So every changing command first says where it acts (endpoint,
//! region, account), and the destructive ones refuse anything but a local endpoint without an
//! explicit `--yes`.

use aws_config::SdkConfig;
use std::fmt;
use std::net::IpAddr;

/// The endpoint a command talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// No endpoint override: the real AWS endpoints of the region.
    Aws,
    /// An override on this machine (loopback address or `localhost`): an emulator.
    Local(String),
    /// An override anywhere else: treated like AWS.
    Remote(String),
}

impl Endpoint {
    /// Classifies an endpoint override (`AWS_ENDPOINT_URL`, or the profile's `endpoint_url`).
    pub fn of(url: Option<&str>) -> Self {
        match url {
            None => Self::Aws,
            Some(url) if is_local(url) => Self::Local(url.to_owned()),
            Some(url) => Self::Remote(url.to_owned()),
        }
    }

    pub fn from_sdk(sdk: &SdkConfig) -> Self {
        Self::of(sdk.endpoint_url())
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local(_))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Aws => f.write_str("AWS"),
            Self::Local(url) | Self::Remote(url) => f.write_str(url),
        }
    }
}

/// True when the URL's host is `localhost` or a loopback address.
fn is_local(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Who and where: printed before anything changes.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: Endpoint,
    pub region: String,
    pub account: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (region {}, account {})",
            self.endpoint, self.region, self.account
        )
    }
}

/// Asks STS who the credentials belong to (`GetCallerIdentity`, which needs no permission).
pub async fn identify(sdk: &SdkConfig) -> Result<Target, String> {
    let endpoint = Endpoint::from_sdk(sdk);
    let region = sdk
        .region()
        .map(ToString::to_string)
        .ok_or_else(|| "no region: set AWS_REGION (or a profile's region)".to_owned())?;
    let identity = aws_sdk_sts::Client::new(sdk)
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot tell which account {endpoint} is: {}",
                crate::sdk_error::describe(&e)
            )
        })?;
    Ok(Target {
        endpoint,
        region,
        account: identity.account().unwrap_or("unknown").to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_localhost_are_local() {
        for local in [
            "http://127.0.0.1:4566",
            "http://localhost:5000/",
            "https://LOCALHOST",
            "http://127.8.9.10",
            "http://[::1]:4566",
            "http://user@127.0.0.1:4566/path",
        ] {
            assert_eq!(Endpoint::of(Some(local)), Endpoint::Local(local.to_owned()), "{local}");
        }
        for remote in [
            "https://cloudformation.eu-west-1.amazonaws.com",
            "http://10.0.0.5:4566",
            "http://localhost.example.com:4566",
            "http://127.0.0.1.example.com",
            "http://192.0.2.1:9",
            "http://[2001:db8::1]:4566",
        ] {
            assert_eq!(
                Endpoint::of(Some(remote)),
                Endpoint::Remote(remote.to_owned()),
                "{remote}"
            );
        }
        assert_eq!(Endpoint::of(None), Endpoint::Aws);
        assert_eq!(Endpoint::Aws.to_string(), "AWS");
    }
}
