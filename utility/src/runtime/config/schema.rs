//! The settings of a configuration struct, read from its JSON schema: names, doc comments,
//! ranges, choices and secrecy, for `--help` and for the checks in [`super::load`].

use figment::Figment;
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

/// One setting as the schema of a configuration struct describes it.
#[derive(Debug)]
pub(super) struct Setting {
    /// The field name: the key in the file; upper case, the environment variable.
    pub(super) key: String,
    schema: Map<String, Value>,
}

/// Every setting of `T`, flattened structs included, in name order.
pub(super) fn settings<T: JsonSchema>() -> Vec<Setting> {
    let schema = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>();
    let Some(Value::Object(properties)) = schema.get("properties") else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(key, schema)| Setting {
            key: key.clone(),
            schema: schema.as_object().cloned().unwrap_or_default(),
        })
        .collect()
}

impl Setting {
    pub(super) fn variable(&self) -> String {
        self.key.to_uppercase()
    }

    pub(super) fn secret(&self) -> bool {
        self.schema.get("writeOnly") == Some(&Value::Bool(true))
    }

    pub(super) fn text(&self, name: &str) -> Option<String> {
        self.schema.get(name).and_then(Value::as_str).map(str::to_owned)
    }

    /// The bounds the schema sets beyond what the type already implies.
    fn range(&self) -> (Option<f64>, Option<f64>) {
        let bound = |name: &str| self.schema.get(name).and_then(Value::as_f64);
        let (min, max) = (bound("minimum"), bound("maximum"));
        let implied = match self.text("format").as_deref() {
            Some("uint8") => (Some(0.0), Some(f64::from(u8::MAX))),
            Some("uint16") => (Some(0.0), Some(f64::from(u16::MAX))),
            Some("int8") => (Some(f64::from(i8::MIN)), Some(f64::from(i8::MAX))),
            Some("int16") => (Some(f64::from(i16::MIN)), Some(f64::from(i16::MAX))),
            Some(format) if format.starts_with("uint") => (Some(0.0), None),
            _ => (None, None),
        };
        (min.filter(|_| min != implied.0), max.filter(|_| max != implied.1))
    }

    pub(super) fn range_text(&self) -> Option<String> {
        match self.range() {
            (Some(min), Some(max)) => Some(format!("{min} to {max}")),
            (Some(min), None) => Some(format!("at least {min}")),
            (None, Some(max)) => Some(format!("at most {max}")),
            (None, None) => None,
        }
    }

    /// The values an enumeration accepts (`enum`, or `oneOf` of `const`s with their docs).
    pub(super) fn choices(&self) -> Vec<String> {
        if let Some(Value::Array(values)) = self.schema.get("enum") {
            return values.iter().filter_map(Value::as_str).map(str::to_owned).collect();
        }
        let Some(Value::Array(variants)) = self.schema.get("oneOf") else {
            return Vec::new();
        };
        variants
            .iter()
            .filter_map(|v| v.get("const").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }

    pub(super) fn out_of_range(&self, value: &Value, figment: &Figment) -> Option<String> {
        let number = value.as_f64()?;
        let (min, max) = self.range();
        if min.is_none_or(|min| number >= min) && max.is_none_or(|max| number <= max) {
            return None;
        }
        let source = super::origin(figment.find_metadata(&self.key));
        let shown = if self.secret() {
            "out of range".to_owned()
        } else {
            format!("{value}")
        };
        Some(format!(
            "{} is {shown}{source}; it must be {}",
            self.variable(),
            self.range_text().unwrap_or_default()
        ))
    }

    pub(super) fn default_text(&self, default: &Value) -> String {
        match default {
            Value::Null => "unset".to_owned(),
            // A secret URL's default (a database's) is shown with any password masked: where
            // a service keeps its data by default is worth reading in --help.
            Value::String(s) if self.secret() && is_url(s) => crate::storage::redact(s),
            _ if self.secret() => "(secret, not shown)".to_owned(),
            Value::String(s) if s.is_empty() => "empty".to_owned(),
            Value::String(s) => crate::storage::redact(s),
            other => other.to_string(),
        }
    }

    pub(super) fn description(&self) -> String {
        let parts: Vec<String> = ["title", "description"].iter().filter_map(|k| self.text(k)).collect();
        if parts.is_empty() {
            "(undocumented)".to_owned()
        } else {
            parts.join(" ").split_whitespace().collect::<Vec<_>>().join(" ")
        }
    }
}

/// The setting names of `T` that have no doc comment; services test that this is empty, so a new
/// setting cannot reach `--help` without a description.
pub fn undocumented<T: JsonSchema>() -> Vec<String> {
    settings::<T>()
        .into_iter()
        .filter(|s| s.text("title").is_none() && s.text("description").is_none())
        .map(|s| s.key)
        .collect()
}

/// `scheme:...`, as a URL starts (`sqlite:data/x.db`, `postgres://...`).
fn is_url(value: &str) -> bool {
    value
        .split_once(':')
        .is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+'))
}
