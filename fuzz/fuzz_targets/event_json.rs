//! How AggregatorModule reads an input message's body: `stream_query::parse_event`, which keeps
//! only the top-level fields the query reads (`Query::fields_read`) and steps over the others
//! inside the JSON reader.
//!
//! Input: a first line naming the fields kept (comma-separated; `*` keeps everything), then the
//! JSON text.
//!
//! Checks, against serde_json reading the whole text: no panic; with every field kept the result
//! is serde_json's, error for error; with some fields kept, a text serde_json reads gives exactly
//! its object less the other fields (names compared without case), and a text serde_json refuses
//! is refused too (the whole text is still checked, skipped fields included: numbers in range,
//! the nesting limit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(data) = std::str::from_utf8(data) else {
        return;
    };
    let (head, text) = data.split_once('\n').unwrap_or(("*", data));
    let fields: Option<Vec<String>> = (head.trim() != "*").then(|| {
        head.split(',')
            .map(|f| f.trim().to_ascii_lowercase())
            .collect()
    });
    let got = stream_query::parse_event(text, fields.as_deref());
    let full = serde_json::from_str::<Value>(text);
    match (&fields, &full) {
        (None, _) => assert_eq!(
            got.as_ref().map_err(|e| e.to_string()),
            full.as_ref().map_err(|e| e.to_string()),
            "with every field kept"
        ),
        (Some(fields), Ok(Value::Object(all))) => {
            let mut want = all.clone();
            want.retain(|k, _| fields.iter().any(|f| f.eq_ignore_ascii_case(k)));
            let got = got.unwrap_or_else(|e| panic!("serde_json reads it, parse_event: {e}"));
            assert_eq!(got, Value::Object(want), "fields {fields:?}");
        }
        (Some(_), Ok(whole)) => {
            // not an object: read whole
            assert_eq!(got.ok().as_ref(), Some(whole));
        }
        (Some(_), Err(e)) => {
            assert!(
                got.is_err(),
                "serde_json refuses it ({e}), parse_event reads it"
            );
        }
    }
});
