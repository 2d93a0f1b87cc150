//! The items of the gateway's list settings, parsed when the configuration is loaded (see
//! [`utility::runtime::config::CommaSeparated`]): a value that breaks a rule here stops the
//! gateway at start-up, naming the setting and where the value came from.

use axum::http::HeaderValue;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A network of proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXY_CIDRS`): a CIDR such
/// as `10.0.0.0/16`, or a bare address, which is a /32 or a /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyCidr(IpNet);

impl ProxyCidr {
    pub fn net(self) -> IpNet {
        self.0
    }
}

impl FromStr for ProxyCidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map(Self)
            .map_err(|_| format!("`{text}` is not a CIDR such as 10.0.0.0/16"))
    }
}

impl fmt::Display for ProxyCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An origin whose pages may call the public API (`CORS_ALLOWED_ORIGINS`):
/// `scheme://host[:port]`, without a path, not even `/`. `*` is refused: each origin is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    text: String,
    header: HeaderValue,
}

impl Origin {
    /// As the `Access-Control-Allow-Origin` value it is compared with.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
}

impl FromStr for Origin {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "*" || text.ends_with('/') || !text.contains("://") {
            return Err(format!("{text:?} is not an origin (scheme://host[:port], no path)"));
        }
        let header = HeaderValue::from_str(text).map_err(|_| format!("{text:?} is not a valid header value"))?;
        Ok(Self {
            text: text.to_owned(),
            header,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A setting of its own (`PUBLIC_ORIGIN`): parsed when the configuration is loaded.
impl serde::Serialize for Origin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Origin {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Origin {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Origin".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utility::runtime::config::CommaSeparated;

    #[test]
    fn proxies_are_cidrs_or_bare_addresses() {
        let list: CommaSeparated<ProxyCidr> = "10.0.0.0/16, 10.1.0.5,2001:db8::/32".parse().unwrap();
        let nets: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/16", "10.1.0.5/32", "2001:db8::/32"]);
        assert_eq!(list.to_string().parse::<CommaSeparated<ProxyCidr>>().unwrap(), list);
        assert!("".parse::<CommaSeparated<ProxyCidr>>().unwrap().is_empty());
        for bad in ["10.0.0.0/33", "lb.internal", "10.0.0"] {
            let err = bad.parse::<ProxyCidr>().unwrap_err();
            assert_eq!(err, format!("`{bad}` is not a CIDR such as 10.0.0.0/16"));
        }
    }

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        let list: CommaSeparated<Origin> = "https://app.example.com, http://localhost:3000".parse().unwrap();
        assert_eq!(list[0].header(), "https://app.example.com");
        assert_eq!(list.to_string(), "https://app.example.com,http://localhost:3000");
        for bad in ["*", "app.example.com", "https://app.example.com/"] {
            let err = bad.parse::<Origin>().unwrap_err();
            assert!(
                err.ends_with("is not an origin (scheme://host[:port], no path)"),
                "{bad}: {err}"
            );
        }
        let err = "https://app\u{7f}.example.com".parse::<Origin>().unwrap_err();
        assert!(err.ends_with("is not a valid header value"), "{err}");
    }
}
