//! Domain values that cross service boundaries. Each one can only be built through its parser,
//! so a value of the type is valid wherever it travels (HTTP body, command payload, database).

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// Why a field was refused. `field` names the JSON field so HTTP errors can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Characters SQS accepts in a message body: tab, line feed, carriage return, and U+0020 to
/// U+10FFFF except U+FFFE and U+FFFF (Rust strings cannot hold surrogates). A value that travels in
/// a message must not contain anything else, or the bus refuses the message.
pub fn bus_safe(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// A customer's display name: trimmed, 1 to 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerName(String);

impl CustomerName {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err(FieldError::new(
                "name",
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        if trimmed.chars().any(|c| c.is_control() || !bus_safe(c)) {
            return Err(FieldError::new(
                "name",
                "must not contain control characters or noncharacters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CustomerName {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<CustomerName> for String {
    fn from(value: CustomerName) -> Self {
        value.0
    }
}

impl JsonSchema for CustomerName {
    fn schema_name() -> Cow<'static, str> {
        "CustomerName".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": Self::MAX_CHARS,
            "description": "A customer's name: trimmed, no control characters.",
        })
    }
}

impl fmt::Display for CustomerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An e-mail address, normalised to lower case so that uniqueness means what a person expects.
///
/// The check is deliberately modest (one `@`, a dotted domain, no spaces, at most 254
/// characters): the only real proof of an address is mail that arrives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let candidate = raw.trim().to_lowercase();
        let invalid = |why: &str| Err(FieldError::new("email", why.to_owned()));
        if candidate.is_empty() {
            return invalid("must not be empty");
        }
        if candidate.chars().count() > Self::MAX_CHARS {
            return invalid("must be at most 254 characters");
        }
        if candidate
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || !bus_safe(c))
        {
            return invalid("must not contain spaces, control characters or noncharacters");
        }
        let Some((local, domain)) = candidate.split_once('@') else {
            return invalid("must contain '@'");
        };
        if local.is_empty() || domain.contains('@') {
            return invalid("must have exactly one '@' with text before it");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 || labels.iter().any(|label| label.is_empty()) {
            return invalid("must have a domain such as example.com after '@'");
        }
        Ok(Self(candidate))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0
    }
}

impl JsonSchema for Email {
    fn schema_name() -> Cow<'static, str> {
        "Email".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "email",
            "maxLength": Self::MAX_CHARS,
            "description": "An e-mail address, lower-cased.",
        })
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(CustomerName::parse("  Ada  ").unwrap().as_str(), "Ada");
        assert_eq!(CustomerName::parse("   ").unwrap_err().field, "name");
        assert!(CustomerName::parse(&"x".repeat(201)).is_err());
        assert!(CustomerName::parse(&"é".repeat(200)).is_ok());
        assert!(CustomerName::parse("a\u{0}b").is_err());
        assert!(CustomerName::parse("a\u{FFFF}").is_err());
        assert!(Email::parse("a\u{FFFE}@b.co").is_err());
        assert!(bus_safe('\n') && bus_safe('é') && bus_safe('\u{10FFFF}') && !bus_safe('\u{1}'));
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(Email::parse(" Ada@Example.COM ").unwrap().as_str(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "ada@@example.com",
            "a b@example.com",
            "ada@example..com",
        ] {
            let err = Email::parse(bad).unwrap_err();
            assert_eq!(err.field, "email", "{bad:?} should be refused");
        }
    }

    #[test]
    fn serde_goes_through_the_parser() {
        let err = serde_json::from_str::<Email>("\"nope\"").unwrap_err();
        assert!(err.to_string().contains("email"), "{err}");
        let ok: Email = serde_json::from_str("\"A@B.CO\"").unwrap();
        assert_eq!(ok.as_str(), "a@b.co");
    }
}
