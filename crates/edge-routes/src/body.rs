//! `$body.a.b[0]` queries, as edgeHub answers them.
//!
//! The body is queried only when the message's content type (`$.ct`) is
//! `application/json` and its content encoding (`$.ce`) is `utf-8`, `utf-16` or `utf-32`
//! (all case-insensitive; `utf-16`/`utf-32` are little-endian, .NET's `Encoding.Unicode`
//! and `Encoding.UTF32`), and the body is a JSON object; otherwise every body query is
//! undefined. Inside the body (Newtonsoft's `SelectTokens`):
//! - a path that leads nowhere is `null`, not undefined (edgeHub returns `QueryValue.Null`
//!   when no token matches), so `is_defined($body.missing)` is true;
//! - an object or array is undefined: only leaves can be compared;
//! - property names are case-sensitive;
//! - a string that Newtonsoft reads as a date (ISO 8601 `yyyy-MM-ddTHH:mm:ss[.f][Z|±hh:mm]`
//!   or `/Date(...)/`) is undefined, because edgeHub's parser turns it into a date token,
//!   which its query values do not support.

use std::collections::BTreeMap;

/// One step of a body path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathSegment {
    Field(String),
    Index(usize),
}

pub(crate) enum BodyValue {
    Missing,
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    /// Objects, arrays and dates: undefined in a condition.
    Other,
}

/// Parse the path after `$body.`, following edgeHub's JsonPath subset
/// (`name ('[' digits ']')? ('.' name ('[' digits ']')?)*`).
pub(crate) fn parse_path(path: &str) -> Result<Vec<PathSegment>, String> {
    if path.is_empty() {
        return Err("a $body query needs a path: write $body.<field>[.<field>...]".into());
    }
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() {
            return Err(format!(
                "the $body path {path:?} has an empty field name; write $body.a.b or $body.a[0].b"
            ));
        }
        if name.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "the $body path {path:?} uses {name:?} as a field name; field names cannot be all digits, index arrays with [{name}]"
            ));
        }
        if name.contains(']') {
            return Err(format!("the $body path {path:?} has an unmatched ']'"));
        }
        out.push(PathSegment::Field(name.to_string()));
        while !rest.is_empty() {
            let close = rest.find(']').ok_or_else(|| {
                format!("the $body path {path:?} has an unclosed '['; write [<index>]")
            })?;
            let index = &rest[1..close];
            let n: usize = if !index.is_empty() && index.chars().all(|c| c.is_ascii_digit()) {
                index.parse().map_err(|_| {
                    format!("the $body path {path:?} has an index too large: {index}")
                })?
            } else {
                return Err(format!(
                    "the $body path {path:?} has [{index}]; an index must be a non-negative integer"
                ));
            };
            out.push(PathSegment::Index(n));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(format!(
                    "the $body path {path:?} has {rest:?} after an index; separate fields with '.'"
                ));
            }
        }
    }
    Ok(out)
}

fn lookup<'a>(map: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    map.get(key).map(String::as_str).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    })
}

/// Decode and parse the body if the system properties allow body queries.
pub(crate) fn parse_body(
    system_properties: &BTreeMap<String, String>,
    body: &[u8],
) -> Option<serde_json::Value> {
    let content_type = lookup(system_properties, "$.ct")?;
    if !content_type.eq_ignore_ascii_case("application/json") {
        return None;
    }
    let encoding = lookup(system_properties, "$.ce")?;
    let text = if encoding.eq_ignore_ascii_case("utf-8") {
        String::from_utf8_lossy(body).into_owned()
    } else if encoding.eq_ignore_ascii_case("utf-16") {
        let units: Vec<u16> = body
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
            .collect();
        String::from_utf16_lossy(&units)
    } else if encoding.eq_ignore_ascii_case("utf-32") {
        body.chunks(4)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                char::from_u32(u32::from_le_bytes(b)).unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect()
    } else {
        return None;
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ serde_json::Value::Object(_)) => Some(v),
        _ => None,
    }
}

pub(crate) fn query(json: &serde_json::Value, path: &[PathSegment]) -> BodyValue {
    let mut cur = json;
    for seg in path {
        let next = match (seg, cur) {
            (PathSegment::Field(f), serde_json::Value::Object(m)) => m.get(f),
            (PathSegment::Index(i), serde_json::Value::Array(a)) => a.get(*i),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return BodyValue::Missing,
        }
    }
    match cur {
        serde_json::Value::Null => BodyValue::Null,
        serde_json::Value::Bool(b) => BodyValue::Bool(*b),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) => BodyValue::Number(f),
            None => BodyValue::Other,
        },
        serde_json::Value::String(s) if is_newtonsoft_date(s) => BodyValue::Other,
        serde_json::Value::String(s) => BodyValue::String(s.clone()),
        _ => BodyValue::Other,
    }
}

/// Would Newtonsoft.Json (DateParseHandling.DateTime) read this string as a date?
fn is_newtonsoft_date(s: &str) -> bool {
    if s.starts_with("/Date(") && s.ends_with(")/") {
        return true;
    }
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    let ok = (|| {
        let _year = num(0, 4)?;
        let month = num(5, 2)?;
        let day = num(8, 2)?;
        let hour = num(11, 2)?;
        let minute = num(14, 2)?;
        let second = num(17, 2)?;
        let shape = sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':');
        let ranges = (1..=12).contains(&month)
            && (1..=31).contains(&day)
            && hour <= 23
            && minute <= 59
            && second <= 59;
        Some(shape && ranges)
    })()
    .unwrap_or(false);
    if !ok {
        return false;
    }
    let mut i = 19;
    if sep(i, b'.') {
        let n = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 7 {
            return false;
        }
        i += 1 + n;
    }
    match b.get(i) {
        None => true,
        Some(b'Z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len()
                && num(i + 1, 2).is_some()
                && sep(i + 3, b':')
                && num(i + 4, 2).is_some()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("a.b[2].c").expect("valid path"),
            vec![
                PathSegment::Field("a".into()),
                PathSegment::Field("b".into()),
                PathSegment::Index(2),
                PathSegment::Field("c".into())
            ]
        );
        assert!(parse_path("").is_err());
        assert!(parse_path("a..b").is_err());
        assert!(parse_path("a[x]").is_err());
        assert!(parse_path("a[1").is_err());
        assert!(parse_path("0").is_err());
        assert!(parse_path("a[0]b").is_err());
    }

    #[test]
    fn dates_like_newtonsoft() {
        assert!(is_newtonsoft_date("2017-03-09T00:00:00.000Z"));
        assert!(is_newtonsoft_date("2017-03-09T10:11:12+01:00"));
        assert!(is_newtonsoft_date("2017-03-09T10:11:12"));
        assert!(is_newtonsoft_date("/Date(1234)/"));
        assert!(!is_newtonsoft_date("11/24/2026 8:13:15 AM"));
        assert!(!is_newtonsoft_date("2017-13-09T00:00:00"));
        assert!(!is_newtonsoft_date("2017-03-09"));
        assert!(!is_newtonsoft_date("hello"));
    }

    fn props(ct: &str, ce: &str) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("$.ct".into(), ct.into());
        m.insert("$.ce".into(), ce.into());
        m
    }

    #[test]
    fn encodings() {
        let json = r#"{"a":1}"#;
        assert!(parse_body(&props("application/json", "utf-8"), json.as_bytes()).is_some());
        assert!(parse_body(&props("Application/JSON", "UTF-8"), json.as_bytes()).is_some());
        let utf16: Vec<u8> = json.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        assert!(parse_body(&props("application/json", "utf-16"), &utf16).is_some());
        let utf32: Vec<u8> = json
            .chars()
            .flat_map(|c| (c as u32).to_le_bytes())
            .collect();
        assert!(parse_body(&props("application/json", "utf-32"), &utf32).is_some());
        assert!(parse_body(&props("application/json", "latin1"), json.as_bytes()).is_none());
        assert!(parse_body(&props("text/plain", "utf-8"), json.as_bytes()).is_none());
        assert!(parse_body(&props("application/json", "utf-8"), b"[1]").is_none());
        assert!(parse_body(&props("application/json", "utf-8"), b"{nope").is_none());
        assert!(parse_body(&BTreeMap::new(), json.as_bytes()).is_none());
    }
}
