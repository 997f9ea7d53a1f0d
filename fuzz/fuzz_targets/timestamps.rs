//! Event times as `TIMESTAMP BY` reads them (`stream_query::parse_timestamp`): ISO 8601 / RFC
//! 3339, .NET `DateTime.ToString()` forms, epoch milliseconds, from any text or number a device
//! puts in `timeCreated`.
//!
//! Checks: no panic (no overflow on huge years, offsets or numbers); a time that parses is within
//! years 1 to 9999, and the form the engine writes in its rows (`format_timestamp`) and RFC 3339
//! both parse back to the same instant.
#![no_main]

use chrono::{Datelike, SecondsFormat};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use stream_query::{format_timestamp, parse_timestamp};

fn check(v: &Value) {
    let Some(t) = parse_timestamp(v) else { return };
    assert!(
        (1..=9999).contains(&t.year()),
        "{v} parsed to year {}",
        t.year()
    );
    let written = format_timestamp(t);
    assert_eq!(
        parse_timestamp(&Value::String(written.clone())),
        Some(t),
        "{v} -> {t} is written as {written:?}, which reads back differently"
    );
    let rfc = t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    assert_eq!(
        parse_timestamp(&Value::String(rfc.clone())),
        Some(t),
        "{rfc}"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&Value::String(text.to_string()));
    // the text as a JSON number, when it is one (epoch milliseconds)
    if let Ok(n @ Value::Number(_)) = serde_json::from_str::<Value>(&text) {
        check(&n);
    }
    if data.len() == 8 {
        let bits = u64::from_le_bytes(data.try_into().unwrap_or_default());
        check(&serde_json::json!(bits as i64));
        check(&serde_json::json!(f64::from_bits(bits)));
    }
});
