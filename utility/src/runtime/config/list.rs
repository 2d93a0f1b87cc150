//! Settings that are lists: one string, items separated by commas.

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// A list setting, written as one string with the items separated by commas
/// (`TRUSTED_PROXY_CIDRS=10.0.0.0/24, 10.0.1.0/24`); spaces around an item and empty items are
/// ignored, so an empty string is an empty list. Each item is parsed as a `T` when the
/// configuration is loaded: the first that does not parse stops the service, with `T`'s error,
/// the setting's name and where the value came from. `--help` shows it as the string it is read
/// from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommaSeparated<T>(Vec<T>);

impl<T> Default for CommaSeparated<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> std::ops::Deref for CommaSeparated<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T> From<Vec<T>> for CommaSeparated<T> {
    fn from(items: Vec<T>) -> Self {
        Self(items)
    }
}

impl<T: FromStr> FromStr for CommaSeparated<T> {
    /// The error of the first item that does not parse.
    type Err = T::Err;

    fn from_str(list: &str) -> Result<Self, T::Err> {
        list.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl<T: fmt::Display> fmt::Display for CommaSeparated<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
    }
}

impl<T: fmt::Display> Serialize for CommaSeparated<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de, T> Deserialize<'de> for CommaSeparated<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;

        impl Visitor<'_> for Text {
            type Value = String;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a comma-separated list")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<String, E> {
                Ok(text.to_owned())
            }

            // The environment's values are read as numbers or booleans when they look like one
            // (`PORTS=80`): a list of one such item.
            fn visit_u64<E: de::Error>(self, number: u64) -> Result<String, E> {
                Ok(number.to_string())
            }

            fn visit_i64<E: de::Error>(self, number: i64) -> Result<String, E> {
                Ok(number.to_string())
            }

            fn visit_f64<E: de::Error>(self, number: f64) -> Result<String, E> {
                Ok(number.to_string())
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<String, E> {
                Ok(value.to_string())
            }
        }

        deserializer.deserialize_any(Text)?.parse().map_err(de::Error::custom)
    }
}

impl<T> JsonSchema for CommaSeparated<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "CommaSeparated".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_trimmed_and_empty_ones_skipped() {
        let list: CommaSeparated<u16> = " 80, 443 ,,8080 ".parse().unwrap();
        assert_eq!(*list, [80, 443, 8080]);
        assert!("".parse::<CommaSeparated<u16>>().unwrap().is_empty());
        assert!(" , ".parse::<CommaSeparated<u16>>().unwrap().is_empty());
    }

    #[test]
    fn the_first_bad_item_is_the_error() {
        let err = "80, http, x".parse::<CommaSeparated<u16>>().unwrap_err();
        assert_eq!(err, "http".parse::<u16>().unwrap_err());
    }

    #[test]
    fn it_is_written_as_the_string_it_is_read_from() {
        let list = CommaSeparated::from(vec![80u16, 443]);
        assert_eq!(serde_json::to_value(&list).unwrap(), "80,443");
        let back: CommaSeparated<u16> = serde_json::from_value(serde_json::json!("80,443")).unwrap();
        assert_eq!(back, list);
        assert_eq!(serde_json::to_value(CommaSeparated::<u16>::default()).unwrap(), "");
        let one: CommaSeparated<u16> = serde_json::from_value(serde_json::json!(80)).unwrap();
        assert_eq!(*one, [80]);
        let err = serde_json::from_value::<CommaSeparated<u16>>(serde_json::json!([80])).unwrap_err();
        assert!(err.to_string().contains("expected a comma-separated list"), "{err}");
    }
}
