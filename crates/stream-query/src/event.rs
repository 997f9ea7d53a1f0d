//! Reading an event from JSON text with only the fields a query reads ([`crate::parse_event`]).
//!
//! The fields a query does not read are skipped by the JSON reader itself: nothing is built for
//! them (no strings, no maps), so a large message with a few relevant fields costs little more than
//! a small one. The result is the same `serde_json::Value` the engine always takes, with fewer
//! fields; anything that is not a JSON object is read whole (the engine then refuses it with its
//! usual error).

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

/// See [`crate::parse_event`].
pub(crate) fn parse(text: &str, fields: Option<&[String]>) -> Result<Value, serde_json::Error> {
    match fields {
        Some(fields) if text.trim_start().starts_with('{') => {
            let mut de = serde_json::Deserializer::from_str(text);
            let v = Projection { fields }.deserialize(&mut de)?;
            de.end()?;
            Ok(v)
        }
        _ => serde_json::from_str(text),
    }
}

struct Projection<'f> {
    /// Lower-case names; a key matches case-insensitively (field lookup is case-insensitive).
    fields: &'f [String],
}

impl<'de> DeserializeSeed<'de> for Projection<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Projection<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(Key(k)) = map.next_key()? {
            if self.fields.iter().any(|f| f.eq_ignore_ascii_case(&k)) {
                // a repeated key: the last one wins, as when the whole event is read
                out.insert(k.into_owned(), map.next_value::<Value>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Value::Object(out))
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keeps_only_the_fields_read() {
        let f = vec!["temp".to_string(), "timecreated".to_string()];
        let v = parse(
            r#"{"deviceId":"d\"1","Temp":37.5,"big":{"a":[1,2,{"b":null}]},"timeCreated":"2026-11-24T08:00:00Z","temp":38}"#,
            Some(&f),
        )
        .unwrap();
        // case-insensitive; a repeated key keeps the last value, as serde_json does
        assert_eq!(
            v,
            serde_json::json!({"Temp": 37.5, "temp": 38, "timeCreated": "2026-11-24T08:00:00Z"})
        );
    }

    #[test]
    fn errors_and_non_objects_are_as_before() {
        let f = vec!["a".to_string()];
        assert_eq!(parse("[1,2]", Some(&f)).unwrap(), serde_json::json!([1, 2]));
        assert!(parse(r#"{"a":1"#, Some(&f)).is_err());
        assert!(
            parse(r#"{"b":[1,}"#, Some(&f)).is_err(),
            "a skipped field is still checked"
        );
        assert!(parse(r#"{"a":1} x"#, Some(&f)).is_err());
        // a field the query reads is held to serde_json's nesting limit (128); a skipped one is
        // stepped over without recursion, so any depth is safe there and costs no memory
        let deep_a = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(parse(&deep_a, Some(&f)).is_err());
        assert!(parse(&deep_a, None).is_err());
        let deep_b = format!(
            "{{\"b\":{}{},\"a\":1}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            parse(&deep_b, Some(&f)).unwrap(),
            serde_json::json!({"a": 1})
        );
        let torn = format!("{{\"b\":{}", "[".repeat(100_000));
        assert!(parse(&torn, Some(&f)).is_err());
    }

    proptest! {
        /// The projected event is the whole event with only the chosen fields.
        #[test]
        fn same_as_reading_all_then_dropping(keys in proptest::collection::vec("[a-cA-C]{1,2}", 0..8),
                                             vals in proptest::collection::vec(any::<i32>(), 8),
                                             chosen in proptest::collection::vec("[a-c]{1,2}", 0..4)) {
            let body: Vec<String> = keys.iter().zip(vals.iter()).map(|(k, v)| format!("{k:?}:{v}")).collect();
            let text = format!("{{{}}}", body.join(","));
            let all: Value = serde_json::from_str(&text).unwrap();
            let mut want = Map::new();
            for (k, v) in all.as_object().unwrap() {
                if chosen.iter().any(|c| c.eq_ignore_ascii_case(k)) {
                    want.insert(k.clone(), v.clone());
                }
            }
            prop_assert_eq!(parse(&text, Some(&chosen)).unwrap(), Value::Object(want));
        }
    }
}
