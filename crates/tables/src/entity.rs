//! Entities and their typed properties, and how they travel as OData JSON.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value as Json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::Error;

/// Most properties one entity may have, besides PartitionKey, RowKey and Timestamp.
pub const MAX_PROPERTIES: usize = 252;
/// Largest string property Table Storage accepts (64 KiB, counted in UTF-16 units).
pub const MAX_STRING_UTF16: usize = 32 * 1024;
/// Largest binary property (64 KiB).
pub const MAX_BINARY_BYTES: usize = 64 * 1024;

/// One typed property value, covering every Edm type Table Storage stores.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Double(f64),
    DateTime(OffsetDateTime),
    Guid(Uuid),
    Binary(Vec<u8>),
}

impl Value {
    /// The `@odata.type` annotation this value needs on the wire, if any.
    fn edm_annotation(&self) -> Option<&'static str> {
        match self {
            Value::Int64(_) => Some("Edm.Int64"),
            Value::DateTime(_) => Some("Edm.DateTime"),
            Value::Guid(_) => Some("Edm.Guid"),
            Value::Binary(_) => Some("Edm.Binary"),
            Value::Double(d) if !d.is_finite() || d.fract() == 0.0 => Some("Edm.Double"),
            _ => None,
        }
    }

    fn to_json(&self) -> Json {
        match self {
            Value::String(s) => Json::String(s.clone()),
            Value::Bool(b) => Json::Bool(*b),
            Value::Int32(i) => Json::from(*i),
            Value::Int64(i) => Json::String(i.to_string()),
            Value::Double(d) if d.is_nan() => Json::String("NaN".into()),
            Value::Double(d) if d.is_infinite() => {
                Json::String(if *d > 0.0 { "Infinity" } else { "-Infinity" }.into())
            }
            Value::Double(d) => serde_json::Number::from_f64(*d)
                .map(Json::Number)
                .unwrap_or(Json::Null),
            Value::DateTime(t) => Json::String(format_datetime(*t)),
            Value::Guid(g) => Json::String(g.to_string()),
            Value::Binary(b) => Json::String(BASE64.encode(b)),
        }
    }

    /// Reads a wire value, using its `@odata.type` annotation when the service gave one.
    fn from_json(name: &str, json: &Json, edm: Option<&str>) -> Result<Value, Error> {
        let bad = || {
            Error::Protocol(format!(
                "property {name} is not a valid {}",
                edm.unwrap_or("value")
            ))
        };
        Ok(match (edm, json) {
            (Some("Edm.Int64"), Json::String(s)) => Value::Int64(s.parse().map_err(|_| bad())?),
            (Some("Edm.Int64"), Json::Number(n)) => Value::Int64(n.as_i64().ok_or_else(bad)?),
            (Some("Edm.Int32"), Json::Number(n)) => Value::Int32(
                n.as_i64()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(bad)?,
            ),
            (Some("Edm.DateTime"), Json::String(s)) => {
                Value::DateTime(parse_datetime(s).ok_or_else(bad)?)
            }
            (Some("Edm.Guid"), Json::String(s)) => Value::Guid(s.parse().map_err(|_| bad())?),
            (Some("Edm.Binary"), Json::String(s)) => {
                Value::Binary(BASE64.decode(s).map_err(|_| bad())?)
            }
            (Some("Edm.Double"), Json::String(s)) => Value::Double(match s.as_str() {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                other => other.parse().map_err(|_| bad())?,
            }),
            (Some("Edm.Double"), Json::Number(n)) => Value::Double(n.as_f64().ok_or_else(bad)?),
            (Some("Edm.String") | None, Json::String(s)) => Value::String(s.clone()),
            (Some("Edm.Boolean") | None, Json::Bool(b)) => Value::Bool(*b),
            (None, Json::Number(n)) => match n.as_i64().map(i32::try_from) {
                Some(Ok(i)) => Value::Int32(i),
                _ => Value::Double(n.as_f64().ok_or_else(bad)?),
            },
            _ => return Err(bad()),
        })
    }

    /// The literal for this value inside a `$filter` expression.
    pub fn filter_literal(&self) -> String {
        match self {
            Value::String(s) => format!("'{}'", s.replace('\'', "''")),
            Value::Bool(b) => b.to_string(),
            Value::Int32(i) => i.to_string(),
            Value::Int64(i) => format!("{i}L"),
            Value::Double(d) => {
                let s = d.to_string();
                if s.contains(['.', 'e', 'E', 'N', 'i']) {
                    s
                } else {
                    format!("{s}.0")
                }
            }
            Value::DateTime(t) => format!("datetime'{}'", format_datetime(*t)),
            Value::Guid(g) => format!("guid'{g}'"),
            Value::Binary(b) => {
                let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
                format!("X'{hex}'")
            }
        }
    }
}

/// Formats a timestamp as Table Storage stores it: UTC, RFC 3339, `Z`.
pub fn format_datetime(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .expect("an OffsetDateTime always formats as RFC 3339")
}

/// Parses the RFC 3339 timestamps Table Storage returns (any fraction length).
pub fn parse_datetime(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

macro_rules! value_from {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(v: $t) -> Value { Value::$variant(v.into()) }
        })*
    };
}
value_from!(String => String, &str => String, bool => Bool, i32 => Int32, i64 => Int64,
    f64 => Double, OffsetDateTime => DateTime, Uuid => Guid, Vec<u8> => Binary);

/// An ETag exactly as the service sent it; sent back verbatim in `If-Match`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag(pub String);

/// Which version of an entity an update or delete applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// Only if the entity is still at this ETag (optimistic concurrency).
    ETag(ETag),
    /// Whatever its current version (`If-Match: *`); the entity must exist.
    Any,
}

impl IfMatch {
    pub(crate) fn header_value(&self) -> &str {
        match self {
            IfMatch::ETag(e) => &e.0,
            IfMatch::Any => "*",
        }
    }
}

impl From<ETag> for IfMatch {
    fn from(e: ETag) -> IfMatch {
        IfMatch::ETag(e)
    }
}

/// One entity: its keys, its typed properties, and (when read) its ETag and Timestamp.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Entity {
    pub partition_key: String,
    pub row_key: String,
    pub properties: BTreeMap<String, Value>,
    pub etag: Option<ETag>,
    pub timestamp: Option<OffsetDateTime>,
}

impl Entity {
    /// A new entity with no properties.
    pub fn new(partition_key: impl Into<String>, row_key: impl Into<String>) -> Entity {
        Entity {
            partition_key: partition_key.into(),
            row_key: row_key.into(),
            ..Entity::default()
        }
    }

    /// Adds or replaces a property (builder style).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Entity {
        self.set(name, value);
        self
    }

    /// Adds or replaces a property.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Value>) {
        self.properties.insert(name.into(), value.into());
    }

    /// The raw typed value of a property.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.properties.get(name)
    }

    /// A string property.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An integer property, whether stored as Int32 or Int64.
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            Value::Int64(i) => Some(*i),
            Value::Int32(i) => Some(i64::from(*i)),
            _ => None,
        }
    }

    /// A boolean property.
    pub fn get_bool(&self, name: &str) -> Option<bool> {
        match self.get(name)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A DateTime property.
    pub fn get_datetime(&self, name: &str) -> Option<OffsetDateTime> {
        match self.get(name)? {
            Value::DateTime(t) => Some(*t),
            _ => None,
        }
    }

    /// Checks the limits Table Storage enforces, so a violation is a clear local error.
    pub fn validate(&self) -> Result<(), Error> {
        crate::key::validate("PartitionKey", &self.partition_key)?;
        crate::key::validate("RowKey", &self.row_key)?;
        if self.properties.len() > MAX_PROPERTIES {
            return Err(Error::TooLarge(format!(
                "{} properties; at most {MAX_PROPERTIES}",
                self.properties.len()
            )));
        }
        for (name, value) in &self.properties {
            if matches!(name.as_str(), "PartitionKey" | "RowKey" | "Timestamp")
                || name.contains('@')
            {
                return Err(Error::Invalid(format!(
                    "property name {name:?} is reserved"
                )));
            }
            match value {
                Value::String(s) if s.encode_utf16().count() > MAX_STRING_UTF16 => {
                    return Err(Error::TooLarge(format!(
                        "property {name} is longer than 64 KiB"
                    )));
                }
                Value::Binary(b) if b.len() > MAX_BINARY_BYTES => {
                    return Err(Error::TooLarge(format!(
                        "property {name} is larger than 64 KiB"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The JSON body sent for inserts and updates, with `@odata.type` where needed.
    pub fn to_json(&self) -> Json {
        let mut map = Map::with_capacity(self.properties.len() * 2 + 2);
        map.insert(
            "PartitionKey".into(),
            Json::String(self.partition_key.clone()),
        );
        map.insert("RowKey".into(), Json::String(self.row_key.clone()));
        for (name, value) in &self.properties {
            if let Some(edm) = value.edm_annotation() {
                map.insert(format!("{name}@odata.type"), Json::String(edm.into()));
            }
            map.insert(name.clone(), value.to_json());
        }
        Json::Object(map)
    }

    /// Reads an entity from a service answer (minimal or no metadata).
    pub fn from_json(json: &Json) -> Result<Entity, Error> {
        let map = json
            .as_object()
            .ok_or_else(|| Error::Protocol("an entity is not a JSON object".into()))?;
        let mut entity = Entity::default();
        for (name, value) in map {
            if name.contains('@') || name.starts_with("odata.") {
                if name == "odata.etag" {
                    entity.etag = value.as_str().map(|e| ETag(e.to_string()));
                }
                continue;
            }
            match name.as_str() {
                "PartitionKey" => {
                    entity.partition_key = value.as_str().unwrap_or_default().to_string()
                }
                "RowKey" => entity.row_key = value.as_str().unwrap_or_default().to_string(),
                "Timestamp" => entity.timestamp = value.as_str().and_then(parse_datetime),
                _ => {
                    if value.is_null() {
                        continue;
                    }
                    let edm = map
                        .get(&format!("{name}@odata.type"))
                        .and_then(Json::as_str);
                    entity
                        .properties
                        .insert(name.clone(), Value::from_json(name, value, edm)?);
                }
            }
        }
        Ok(entity)
    }
}

/// A JSON request body as sent to Table Storage: `serde_json`'s text with U+2028 and
/// U+2029 escaped. JSON allows both raw, but JavaScript reads them as line ends, and
/// Azurite fails (500) a request holding them; the escaped form means the same.
pub fn wire_json(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if !text.contains(['\u{2028}', '\u{2029}']) {
        return text;
    }
    // raw, they can only be inside strings, where `\u2028` is the same character
    text.replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

#[cfg(test)]
mod tests {
    #[test]
    fn wire_json_escapes_the_line_separators_and_means_the_same() {
        let value = serde_json::json!({"a": "x\u{2028}y\u{2029}z", "b": "plain"});
        let text = wire_json(&value);
        assert!(!text.contains('\u{2028}') && !text.contains('\u{2029}'));
        assert!(text.contains("\\u2028") && text.contains("\\u2029"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            value
        );
    }

    use super::*;
    use time::macros::datetime;

    fn every_type() -> Entity {
        Entity::new("p", "r")
            .with("s", "text")
            .with("b", true)
            .with("i32", 42)
            .with("i64", 9_007_199_254_740_993_i64)
            .with("d", 1.5)
            .with("whole", 2.0)
            .with("t", datetime!(2026-11-24 10:00:00.5 UTC))
            .with(
                "g",
                Uuid::parse_str("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap(),
            )
            .with("bin", vec![0u8, 1, 254, 255])
    }

    #[test]
    fn wire_json_tags_every_type_that_json_cannot_carry() {
        let json = every_type().to_json();
        assert_eq!(json["i64"], "9007199254740993");
        assert_eq!(json["i64@odata.type"], "Edm.Int64");
        assert_eq!(json["t"], "2026-11-24T10:00:00.5Z");
        assert_eq!(json["t@odata.type"], "Edm.DateTime");
        assert_eq!(json["g@odata.type"], "Edm.Guid");
        assert_eq!(json["bin"], "AAH+/w==");
        assert_eq!(json["bin@odata.type"], "Edm.Binary");
        assert_eq!(json["whole@odata.type"], "Edm.Double");
        assert!(json.get("i32@odata.type").is_none());
        assert!(json.get("s@odata.type").is_none());
    }

    #[test]
    fn wire_json_round_trips_all_types() {
        let entity = every_type();
        let back = Entity::from_json(&entity.to_json()).unwrap();
        assert_eq!(back.properties, entity.properties);
    }

    #[test]
    fn minimal_metadata_answer_is_read_with_etag_and_timestamp() {
        let json: Json = serde_json::from_str(
            r#"{"odata.etag":"W/\"datetime'2026-11-24T10%3A00%3A00.1Z'\"","PartitionKey":"p","RowKey":"r",
                "Timestamp":"2026-11-24T10:00:00.1234567Z","n":7,"big@odata.type":"Edm.Int64","big":"-5"}"#,
        )
        .unwrap();
        let e = Entity::from_json(&json).unwrap();
        assert_eq!(
            e.etag.as_ref().unwrap().0,
            "W/\"datetime'2026-11-24T10%3A00%3A00.1Z'\""
        );
        assert!(e.timestamp.is_some());
        assert_eq!(e.get("n"), Some(&Value::Int32(7)));
        assert_eq!(e.get_i64("big"), Some(-5));
    }

    #[test]
    fn a_mistyped_value_is_a_protocol_error() {
        let json: Json = serde_json::from_str(r#"{"x@odata.type":"Edm.Guid","x":"nope"}"#).unwrap();
        assert!(Entity::from_json(&json).is_err());
    }

    #[test]
    fn filter_literals_follow_odata() {
        assert_eq!(Value::from("O'Brien").filter_literal(), "'O''Brien'");
        assert_eq!(Value::Int64(5).filter_literal(), "5L");
        assert_eq!(Value::Int32(5).filter_literal(), "5");
        assert_eq!(Value::Double(5.0).filter_literal(), "5.0");
        assert_eq!(
            Value::DateTime(datetime!(2026-01-02 03:04:05 UTC)).filter_literal(),
            "datetime'2026-01-02T03:04:05Z'"
        );
        assert_eq!(
            Value::Guid(Uuid::nil()).filter_literal(),
            "guid'00000000-0000-0000-0000-000000000000'"
        );
        assert_eq!(Value::Binary(vec![0xab, 0x01]).filter_literal(), "X'ab01'");
    }

    #[test]
    fn validate_catches_what_the_service_would_refuse() {
        assert!(Entity::new("a/b", "r").validate().is_err());
        assert!(
            Entity::new("p", "r")
                .with("RowKey", "x")
                .validate()
                .is_err()
        );
        assert!(
            Entity::new("p", "r")
                .with("big", "x".repeat(40_000))
                .validate()
                .is_err()
        );
        let mut many = Entity::new("p", "r");
        for i in 0..=MAX_PROPERTIES {
            many.set(format!("p{i}"), 1);
        }
        assert!(many.validate().is_err());
        assert!(every_type().validate().is_ok());
    }
}
