//! Domain values that cross service boundaries. Each one can only be built through its parser,
//! so a value of the type is valid wherever it travels (HTTP body, command payload, database).

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use unicode_normalization::UnicodeNormalization;

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

/// The address the customer-api sends mail from unless `MAIL_FROM` says otherwise: a local one,
/// which `sagactl deploy` on an emulator and the tests' stacks verify as SES's sender identity.
pub const DEFAULT_MAIL_FROM: &str = "no-reply@enrollment.local";

/// An e-mail address in its one written form, so that an address means one mailbox wherever it
/// is compared or stored:
///
/// - trimmed, and in Unicode NFC (a composed and a decomposed accent are one address);
/// - the local part in lower case (no mail provider in use treats `Ada` and `ada` as two people);
/// - the domain in its ASCII form (UTS 46 mapping, lower case, Punycode: `Bücher.example` is
///   `xn--bcher-kva.example`), limited to letters, digits and hyphens as mail domains are.
///
/// A sub-address (`ada+news@`) is kept, since mail goes to it as written; whether it is the same
/// customer as `ada@` is a policy ([`Subaddresses`]) applied by [`Email::key`].
///
/// Beyond that the check is deliberately modest (one `@`, a dotted domain, no spaces, at most
/// 254 characters): the only real proof of an address is mail that arrives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

/// Whether `local+tag@domain` is the same customer as `local@domain`: `fold` (the default) makes
/// it so, since every large provider delivers both to one mailbox and a tag per sign-up would
/// otherwise be a customer (and a bonus) per tag; `distinct` keeps them apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Subaddresses {
    /// `ada+news@example.com` is `ada@example.com`.
    #[default]
    Fold,
    /// `ada+news@example.com` is an address of its own.
    Distinct,
}

impl Email {
    pub const MAX_CHARS: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let invalid = |why: &str| Err(FieldError::new("email", why.to_owned()));
        let candidate = raw.trim();
        if candidate.is_empty() {
            return invalid("must not be empty");
        }
        // Bounded before any work: the checks below scale with the input.
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
        let local: String = local.to_lowercase().nfc().collect();
        if domain.split('.').any(str::is_empty) {
            return invalid("must have a domain such as example.com after '@'");
        }
        let Ok(domain) = idna::domain_to_ascii_cow(domain.as_bytes(), idna::AsciiDenyList::STD3) else {
            return invalid("must have a domain of letters, digits and hyphens after '@'");
        };
        if domain.split('.').count() < 2 || domain.split('.').any(str::is_empty) {
            return invalid("must have a domain such as example.com after '@'");
        }
        let address = format!("{local}@{domain}");
        // Punycode makes a domain longer than it was typed.
        if address.chars().count() > Self::MAX_CHARS {
            return invalid("must be at most 254 characters");
        }
        if address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || !bus_safe(c))
        {
            return invalid("must not contain spaces, control characters or noncharacters");
        }
        Ok(Self(address))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address as compared for uniqueness: this written form, with the sub-address taken off
    /// when `subaddresses` folds them (`ada+news@example.com` -> `ada@example.com`). A local part
    /// that starts with `+` has no base to fold onto and stays as it is.
    pub fn key(&self, subaddresses: Subaddresses) -> String {
        let Some((local, domain)) = self.0.split_once('@') else {
            return self.0.clone();
        };
        match (subaddresses, local.split_once('+')) {
            (Subaddresses::Fold, Some((base, _))) if !base.is_empty() => format!("{base}@{domain}"),
            _ => self.0.clone(),
        }
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
            "description": "An e-mail address; compared trimmed, in NFC, in lower case, with its domain in ASCII (IDNA).",
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
    fn one_address_has_one_written_form() {
        let one = |raw: &str| Email::parse(raw).unwrap().as_str().to_owned();
        // Composed and decomposed accents, any case: one NFC, lower-case local part.
        assert_eq!(one("Caf\u{E9}@example.com"), "caf\u{E9}@example.com");
        assert_eq!(one("CAFE\u{301}@example.com"), "caf\u{E9}@example.com");
        // The domain in its ASCII form, however it was typed.
        assert_eq!(one("ada@B\u{FC}cher.Example"), "ada@xn--bcher-kva.example");
        assert_eq!(one("ada@bu\u{308}cher.example"), "ada@xn--bcher-kva.example");
        assert_eq!(one("ada@XN--BCHER-KVA.example"), "ada@xn--bcher-kva.example");
        // Mail domains are letters, digits and hyphens.
        assert!(Email::parse("ada@exa_mple.com").is_err());
        assert!(Email::parse("ada@exa%mple.com").is_err());
        // Punycode lengthens a domain: the limit holds for the written form.
        let varied: String = (0..80u32).filter_map(|i| char::from_u32(0x4E00 + i * 97)).collect();
        let long = format!("{}@{varied}.com", "a".repeat(160));
        assert!(long.chars().count() <= Email::MAX_CHARS);
        assert_eq!(Email::parse(&long).unwrap_err().field, "email");
    }

    #[test]
    fn sub_addresses_fold_onto_the_base_address_unless_kept_distinct() {
        let tagged = Email::parse("Ada+News@Example.com").unwrap();
        assert_eq!(
            tagged.as_str(),
            "ada+news@example.com",
            "mail goes to the address as written"
        );
        assert_eq!(tagged.key(Subaddresses::Fold), "ada@example.com");
        assert_eq!(tagged.key(Subaddresses::Distinct), "ada+news@example.com");
        let two_tags = Email::parse("ada+a+b@example.com").unwrap();
        assert_eq!(two_tags.key(Subaddresses::Fold), "ada@example.com");
        // Nothing before the `+`: no base address to fold onto.
        let no_base = Email::parse("+news@example.com").unwrap();
        assert_eq!(no_base.key(Subaddresses::Fold), "+news@example.com");
        assert_eq!(Subaddresses::default(), Subaddresses::Fold);
        assert_eq!(serde_json::to_value(Subaddresses::Distinct).unwrap(), "distinct");
    }

    #[test]
    fn serde_goes_through_the_parser() {
        let err = serde_json::from_str::<Email>("\"nope\"").unwrap_err();
        assert!(err.to_string().contains("email"), "{err}");
        let ok: Email = serde_json::from_str("\"A@B.CO\"").unwrap();
        assert_eq!(ok.as_str(), "a@b.co");
    }
}
