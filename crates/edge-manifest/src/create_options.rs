//! `createOptions`: a JSON object in a template, a JSON string in a deployment, and past 512 characters
//! a string split over `createOptions`, `createOptions01`, `createOptions02`, .. (a twin value holds at
//! most 512 characters; edgeAgent joins the chunks in order).
//!
//! The conversion is iotedgedev's `convert_create_options`: `json.dumps(obj, separators=(',', ':'))`
//! (compact, non-ASCII escaped as `\uXXXX`) cut into pieces of 512 characters, at most 8 pieces, keys in
//! the document's order. (A [`crate::Manifest`] built with `from_value` no longer knows that order: its
//! objects come out in key-name order; Docker reads both the same.)

use serde_json::{Map, Value};

/// Most characters of one twin value (and so of one createOptions chunk).
pub const TWIN_VALUE_MAX_SIZE: usize = 512;
/// Most chunks iotedgedev writes (`createOptions` + `createOptions01`..`createOptions07`): 4 KiB in all.
pub const TWIN_VALUE_MAX_CHUNKS: usize = 8;

/// What `settings` holds for createOptions.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Joined {
    /// No createOptions, or an empty string: Docker's defaults.
    Absent,
    /// A JSON object (template form).
    Object(Value),
    /// The joined string of `createOptions` and its chunks, not yet parsed.
    Text(String),
    /// Neither; the text says what it is.
    Invalid(String),
}

/// The key of chunk `i` (0 is `createOptions`).
pub(crate) fn chunk_key(i: usize) -> String {
    if i == 0 {
        "createOptions".to_owned()
    } else {
        format!("createOptions{i:02}")
    }
}

/// `n` of a `createOptionsNN` key (NN one or more digits).
pub(crate) fn chunk_number(key: &str) -> Option<usize> {
    let digits = key.strip_prefix("createOptions")?;
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Reads `createOptions` and its chunks `createOptions01`.. (consecutive, in order) from `settings`.
pub(crate) fn join(settings: &Map<String, Value>) -> Joined {
    match settings.get("createOptions") {
        None | Some(Value::Null) => Joined::Absent,
        Some(v @ Value::Object(_)) => Joined::Object(v.clone()),
        Some(Value::String(first)) => {
            let mut text = first.clone();
            let mut next = 1;
            while next < 100 {
                match settings.get(&chunk_key(next)) {
                    Some(Value::String(s)) => text.push_str(s),
                    Some(_) => {
                        return Joined::Invalid(format!("{} is not a string", chunk_key(next)));
                    }
                    None => break,
                }
                next += 1;
            }
            // edgeAgent rejects chunks after a gap; say so rather than report broken JSON.
            if let Some(stray) = settings
                .keys()
                .find(|k| chunk_number(k).is_some_and(|n| n > next))
            {
                return Joined::Invalid(format!(
                    "{stray} follows a gap: {} is missing; number the chunks 01, 02, .. without gaps",
                    chunk_key(next)
                ));
            }
            if text.trim().is_empty() {
                Joined::Absent
            } else {
                Joined::Text(text)
            }
        }
        Some(other) => Joined::Invalid(format!(
            "it is `{other}`; write an object in a template or a JSON string in a deployment"
        )),
    }
}

/// The createOptions text a deployment carries: the object minified, or the joined string as it is.
/// None when there are none.
pub(crate) fn text_of(settings: &Map<String, Value>) -> Option<String> {
    match join(settings) {
        Joined::Absent => settings
            .get("createOptions")
            .and_then(Value::as_str)
            .map(str::to_owned),
        Joined::Object(v) => Some(to_compact_ascii(&v)),
        Joined::Text(t) => Some(t),
        Joined::Invalid(_) => None,
    }
}

/// Cuts `text` into pieces of at most [`TWIN_VALUE_MAX_SIZE`] characters (Unicode scalar values, as
/// Python counts). An empty text gives no pieces.
pub fn chunk(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut n = 0;
    for c in text.chars() {
        current.push(c);
        n += 1;
        if n == TWIN_VALUE_MAX_SIZE {
            out.push(std::mem::take(&mut current));
            n = 0;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `json.dumps(value, separators=(',', ':'))` as Python writes it: compact, every non-ASCII character
/// escaped as `\uXXXX` (surrogate pairs above U+FFFF).
pub fn to_compact_ascii(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.is_f64(), n.as_f64()) {
            (true, Some(f)) => out.push_str(&python_float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_value(v, out);
            }
            out.push('}');
        }
    }
}

/// A float as Python's `repr` (and so `json.dumps`) writes it: the shortest digits that read back the
/// same, fixed notation with at least one decimal when the exponent is from -4 to 15, else `1e+16` style.
pub(crate) fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. `-1.9678474362323402e10`.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let body = if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        }
    } else {
        let m = if digits.len() == 1 {
            digits.clone()
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    };
    format!("{sign}{body}")
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compact_ascii_matches_python_json_dumps() {
        // python3 -c 'import json; print(json.dumps({"a":[1,2.5,None,True],"b":"é😀\n\"\x7f"}, separators=(",",":")))'
        let v = json!({"a": [1, 2.5, null, true], "b": "é😀\n\"\u{7f}"});
        assert_eq!(
            to_compact_ascii(&v),
            r#"{"a":[1,2.5,null,true],"b":"\u00e9\ud83d\ude00\n\"\u007f"}"#
        );
    }

    #[test]
    fn floats_are_written_as_python_repr() {
        // python3 -c 'for x in [...]: print(repr(x))'
        let cases = [
            (-19678474362.323402, "-19678474362.323402"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (2.5, "2.5"),
            (100.0, "100.0"),
            (-0.0, "-0.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (1e22, "1e+22"),
            (12345.678, "12345.678"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x:?}");
        }
    }

    #[test]
    fn chunks_are_512_characters() {
        let text: String = "x".repeat(1100);
        let c = chunk(&text);
        assert_eq!(
            c.iter().map(|s| s.len()).collect::<Vec<_>>(),
            vec![512, 512, 76]
        );
        assert_eq!(c.concat(), text);
        assert!(chunk("").is_empty());
        let wide: String = "é".repeat(513);
        assert_eq!(chunk(&wide)[0].chars().count(), 512);
    }

    #[test]
    fn join_reads_chunks_in_order_and_rejects_gaps() {
        let settings =
            json!({"createOptions02": "}", "createOptions": "{\"a\":", "createOptions01": "1"});
        let Value::Object(map) = settings else {
            unreachable!()
        };
        assert_eq!(join(&map), Joined::Text("{\"a\":1}".into()));
        let Value::Object(gap) =
            json!({"createOptions": "{", "createOptions01": "}", "createOptions03": "x"})
        else {
            unreachable!()
        };
        match join(&gap) {
            Joined::Invalid(msg) => assert!(
                msg.contains("createOptions03 follows a gap: createOptions02 is missing"),
                "{msg}"
            ),
            other => panic!("{other:?}"),
        }
        let Value::Object(empty) = json!({"createOptions": ""}) else {
            unreachable!()
        };
        assert_eq!(join(&empty), Joined::Absent);
        let Value::Object(num) = json!({"createOptions": 5}) else {
            unreachable!()
        };
        assert!(matches!(join(&num), Joined::Invalid(_)));
    }
}
