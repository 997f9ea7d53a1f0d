//! Values: the engine's typed values ([`Val`]), conversion from and to JSON, comparison, and event
//! time parsing/formatting.
//!
//! Times are `i64` microseconds since the Unix epoch (ASA's finest unit is the microsecond).
//! Output rows carry times as ASA writes them: `2026-11-24T08:01:00.0000000Z` (UTC, 7 fraction digits).

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// Microseconds since the Unix epoch.
pub(crate) type Micros = i64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Time(Micros),
    Record(Map<String, Value>),
    Array(Vec<Value>),
}

impl Val {
    pub(crate) fn from_json(v: &Value) -> Val {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Val::Int(i),
                None => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Val::Str(s.clone()),
            Value::Array(a) => Val::Array(a.clone()),
            Value::Object(o) => Val::Record(o.clone()),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Int(i) => Value::from(*i),
            Val::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Val::Str(s) => Value::String(s.clone()),
            Val::Time(t) => Value::String(format_time(*t)),
            Val::Record(m) => Value::Object(m.clone()),
            Val::Array(a) => Value::Array(a.clone()),
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    pub(crate) fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Short description for error messages: type and value.
    pub(crate) fn describe(&self) -> String {
        match self {
            Val::Null => "null".into(),
            Val::Bool(b) => format!("the boolean {b}"),
            Val::Int(i) => format!("the number {i}"),
            Val::Float(f) => format!("the number {f}"),
            Val::Str(s) => format!("the string '{}'", truncate(s, 60)),
            Val::Time(t) => format!("the datetime {}", format_time(*t)),
            Val::Record(_) => "a record (JSON object)".into(),
            Val::Array(_) => "an array".into(),
        }
    }

    /// Canonical text used for grouping and DISTINCT: equal values give equal keys.
    pub(crate) fn key(&self) -> String {
        match self {
            Val::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", *f as i64),
            Val::Time(t) => format!("\"{}\"", format_time(*t)),
            // a date-time as text keys like the time itself (as comparison treats it)
            Val::Str(s) if looks_like_iso(s) => match parse_time_str(s) {
                Some(t) => format!("\"{}\"", format_time(t)),
                None => json_string(s),
            },
            Val::Str(s) => json_string(s),
            other => other.to_json().to_string(),
        }
    }
}

/// Appends the group key of a JSON value as it is in the event (what
/// `Val::from_json(v).key()` gives): a string that is not a date-time, the usual `GROUP BY
/// deviceId`, is written without copies.
pub(crate) fn push_key_of_json(out: &mut String, v: &Value) {
    match v {
        // a string with nothing to escape (the usual device id) is its text between quotes: no
        // escaping pass, and no check of the whole key as UTF-8 again
        Value::String(s)
            if !looks_like_iso(s) && !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') =>
        {
            out.reserve(s.len() + 2);
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        Value::String(s) if !looks_like_iso(s) => {
            let mut buf = std::mem::take(out).into_bytes();
            if serde_json::to_writer(&mut buf, s).is_err() {
                // writing to memory cannot fail; keep the key whole anyway
                buf.extend_from_slice(json_string(s).as_bytes());
            }
            *out = String::from_utf8(buf).unwrap_or_default();
        }
        other => out.push_str(&Val::from_json(other).key()),
    }
}

/// A string as a JSON string literal (what `Value::String(s).to_string()` gives, without the copy).
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push_str("...");
        t
    }
}

/// SQL comparison: `None` when either side is null or the types cannot be compared.
/// `yyyy-mm-ddT..`: cheap to test before trying to parse a time.
fn looks_like_iso(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 16
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't' || b[10] == b' ')
}

pub(crate) fn compare(a: &Val, b: &Val) -> Option<Ordering> {
    match (a, b) {
        (Val::Null, _) | (_, Val::Null) => None,
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        (Val::Int(_) | Val::Float(_), Val::Int(_) | Val::Float(_)) => {
            a.as_f64()?.partial_cmp(&b.as_f64()?)
        }
        (Val::Str(x), Val::Str(y)) => {
            // two ISO 8601 date-times compare as times ("..T16:05:00Z" = "..T16:05:00.0000000Z"):
            // a step's System.Timestamp() reaches its readers as text
            if x != y && looks_like_iso(x) && looks_like_iso(y) {
                if let (Some(a), Some(b)) = (parse_time_str(x), parse_time_str(y)) {
                    return Some(a.cmp(&b));
                }
            }
            Some(x.cmp(y))
        }
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        (Val::Time(x), Val::Time(y)) => Some(x.cmp(y)),
        (Val::Time(x), Val::Str(s)) => parse_time_str(s).map(|y| x.cmp(&y)),
        (Val::Str(s), Val::Time(y)) => parse_time_str(s).map(|x| x.cmp(y)),
        (Val::Record(x), Val::Record(y)) if x == y => Some(Ordering::Equal),
        (Val::Array(x), Val::Array(y)) if x == y => Some(Ordering::Equal),
        _ => None,
    }
}

/// Total order used by ORDER BY (TopOne, Percentile_Cont): nulls first, then by [`compare`],
/// falling back to the canonical key so that the order is always defined.
pub(crate) fn order(a: &Val, b: &Val) -> Ordering {
    match (a.is_null(), b.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => compare(a, b).unwrap_or_else(|| a.key().cmp(&b.key())),
    }
}

/// Format a time the way ASA writes it: `2026-11-24T08:01:00.0000000Z`. Every window row
/// carries one, so the digits are written straight into a buffer (a proptest holds this to
/// chrono's formatting); a time outside years 0-9999 is written as its number of microseconds.
pub(crate) fn format_time(t: Micros) -> String {
    // years 0 to 9999: four digits, as chrono writes them
    const LO: Micros = -62_167_219_200_000_000;
    const HI: Micros = 253_402_300_799_999_999;
    if !(LO..=HI).contains(&t) {
        return match DateTime::<Utc>::from_timestamp_micros(t) {
            Some(dt) => format!(
                "{}.{:07}Z",
                dt.format("%Y-%m-%dT%H:%M:%S"),
                t.rem_euclid(1_000_000) * 10
            ),
            None => t.to_string(),
        };
    }
    let secs = t.div_euclid(1_000_000);
    let micros = t.rem_euclid(1_000_000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // the proleptic Gregorian date of a day number (days from civil, inverted)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut b = *b"0000-00-00T00:00:00.0000000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, m);
    put(8, 2, d);
    put(11, 2, sod / 3600);
    put(14, 2, sod / 60 % 60);
    put(17, 2, sod % 60);
    put(20, 7, micros * 10);
    // only ASCII digits and separators were written
    String::from_utf8_lossy(&b).into_owned()
}

pub(crate) fn to_datetime(t: Micros) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_micros(t).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub(crate) fn from_datetime(t: DateTime<Utc>) -> Micros {
    t.timestamp_micros()
}

/// Event time from a JSON value: an ISO 8601 / RFC 3339 string (no zone = UTC), a .NET
/// `DateTime.ToString()` string (invariant `MM/dd/yyyy HH:mm:ss` or en-US `M/d/yyyy h:mm:ss AM`),
/// or a number of epoch milliseconds.
pub(crate) fn parse_time_val(v: &Val) -> Option<Micros> {
    parse_time_any(v).filter(|t| EVENT_TIMES.contains(t))
}

/// The event times taken: .NET's DateTime range (years 1 to 9999), which keeps window
/// arithmetic far from overflow.
const EVENT_TIMES: std::ops::RangeInclusive<Micros> =
    -62_135_596_800_000_000..=253_402_300_799_999_999;

/// [`parse_time_val`] of a JSON value as it is in the event: a string is read where it is
/// (what `TIMESTAMP BY field` reads for every event), anything else as [`Val::from_json`] gives it.
pub(crate) fn parse_time_json(v: &Value) -> Option<Micros> {
    match v {
        Value::String(s) => parse_time_val_str(s),
        other => parse_time_val(&Val::from_json(other)),
    }
}

/// [`parse_time_val`] of [`Val::Str`], without the value.
fn parse_time_val_str(s: &str) -> Option<Micros> {
    parse_time_str(s).filter(|t| EVENT_TIMES.contains(t))
}

fn parse_time_any(v: &Val) -> Option<Micros> {
    match v {
        Val::Time(t) => Some(*t),
        Val::Str(s) => parse_time_str(s),
        Val::Int(ms) => ms.checked_mul(1000),
        Val::Float(ms) if ms.is_finite() && ms.abs() < 9.0e15 => Some((ms * 1000.0).round() as i64),
        _ => None,
    }
}

/// The common form `YYYY-MM-DDTHH:MM:SS[.fraction][Z | ±HH:MM]` (no zone = UTC), read without
/// allocating or trying formats one after another. `None` for anything else, including
/// out-of-range fields and leap seconds, which the general parser below then decides on.
fn parse_iso_fast(b: &[u8]) -> Option<Micros> {
    fn num(b: &[u8]) -> Option<i64> {
        let mut n = 0i64;
        for &c in b {
            if !c.is_ascii_digit() {
                return None;
            }
            n = n * 10 + i64::from(c - b'0');
        }
        Some(n)
    }
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (h, mi, sec) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if y < 1 || d < 1 || d > month_days || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0i64;
    if let Some((b'.', r)) = rest.split_first() {
        let digits = r.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = num(&r[..digits])? * 10i64.pow(9 - digits as u32);
        rest = &r[digits..];
    }
    let offset = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (oh, om) = (num(&[*h1, *h2])?, num(&[*m1, *m2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = (oh * 60 + om) * 60;
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    // days since 1970-01-01 of a proleptic Gregorian date (the civil-from-days inverse)
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(secs * 1_000_000 + nanos / 1000)
}

pub(crate) fn parse_time_str(s: &str) -> Option<Micros> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    parse_iso_fast(s.as_bytes()).or_else(|| parse_time_general(s))
}

/// Every accepted form, one after another (through chrono).
fn parse_time_general(s: &str) -> Option<Micros> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.with_timezone(&Utc).timestamp_micros());
    }
    // ISO 8601 with a zone in other spellings (+0100, space separator, lowercase z)
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M%#z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(s, f) {
            return Some(dt.with_timezone(&Utc).timestamp_micros());
        }
    }
    let zless = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix('z'))
        .unwrap_or(s);
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
        // .NET DateTime.ToString(): invariant culture, then en-US
        "%m/%d/%Y %H:%M:%S",
        "%m/%d/%Y %I:%M:%S %p",
        "%m/%d/%Y %H:%M",
        "%m/%d/%Y %I:%M %p",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(zless, f) {
            return Some(dt.and_utc().timestamp_micros());
        }
    }
    for f in ["%Y-%m-%d", "%m/%d/%Y"] {
        if let Ok(d) = NaiveDate::parse_from_str(zless, f) {
            return d
                .and_hms_opt(0, 0, 0)
                .map(|dt| dt.and_utc().timestamp_micros());
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(s: &str) -> Micros {
        parse_time_str(s).unwrap_or_else(|| panic!("no parse: {s}"))
    }

    proptest::proptest! {
        /// The fast reader of the common form agrees with the general one wherever it answers,
        /// and answers for every valid time in that form.
        #[test]
        fn fast_time_parse_agrees(y in 1i64..=9999, mo in 1i64..=12, d in 1i64..=31, h in 0i64..=23,
                                  mi in 0i64..=59, s in 0i64..=59, frac in proptest::option::of("[0-9]{1,9}"),
                                  zone in proptest::sample::select(vec!["", "Z", "z", "+01:00", "-05:30", "+23:59", "-00:00"])) {
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}{zone}",
                               frac.map(|f| format!(".{f}")).unwrap_or_default());
            let general = parse_time_general(&text);
            let fast = parse_iso_fast(text.as_bytes());
            if fast.is_some() {
                proptest::prop_assert_eq!(fast, general, "{}", text);
            } else {
                // only impossible dates are left to the general reader, which refuses them too
                proptest::prop_assert_eq!(general, None, "{}", text);
            }
        }

        /// A time read from the JSON value where it is agrees with the time of the value as the
        /// evaluator gives it.
        #[test]
        fn parse_time_json_agrees_with_parse_time_val(s in "[0-9:TZ./ +-]{0,30}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?Z?",
                                                       n in proptest::prelude::any::<i64>()) {
            let v = Value::String(s.clone());
            proptest::prop_assert_eq!(parse_time_json(&v), parse_time_val(&Val::from_json(&v)), "{}", s);
            let v = Value::from(n);
            proptest::prop_assert_eq!(parse_time_json(&v), parse_time_val(&Val::from_json(&v)));
        }

        /// A key written from the JSON value is the key of the value as the evaluator gives it.
        #[test]
        fn push_key_of_json_agrees_with_key(s in "(\\PC|[\\x00-\\x1f]){0,12}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
                                            f in proptest::prelude::any::<f64>()) {
            for v in [Value::String(s.clone()), serde_json::json!(f), serde_json::json!(null), serde_json::json!([s.clone()])] {
                let mut out = String::from("k\u{1f}");
                push_key_of_json(&mut out, &v);
                proptest::prop_assert_eq!(out, format!("k\u{1f}{}", Val::from_json(&v).key()));
            }
        }

        /// The fast writer gives what chrono's formatting gives, for every time it writes.
        #[test]
        fn fast_time_format_agrees(t in -62_167_219_200_000_000i64..=253_402_300_799_999_999i64) {
            let dt = DateTime::<Utc>::from_timestamp_micros(t).unwrap();
            let chrono = format!("{}.{:07}Z", dt.format("%Y-%m-%dT%H:%M:%S"), t.rem_euclid(1_000_000) * 10);
            proptest::prop_assert_eq!(format_time(t), chrono);
        }

        #[test]
        fn fast_time_parse_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let _ = parse_iso_fast(&b);
        }
    }

    #[test]
    fn time_formats() {
        let base = t("2026-11-24T08:05:29Z");
        assert_eq!(format_time(base), "2026-11-24T08:05:29.0000000Z");
        // the fast writer's edges: years 0 and 9999, the epoch, a leap day, just before the epoch
        assert_eq!(
            format_time(-62_167_219_200_000_000),
            "0000-01-01T00:00:00.0000000Z"
        );
        assert_eq!(
            format_time(253_402_300_799_999_999),
            "9999-12-31T23:59:59.9999990Z"
        );
        assert_eq!(format_time(0), "1970-01-01T00:00:00.0000000Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.9999990Z");
        assert_eq!(
            format_time(t("2024-02-29T23:59:59.123456Z")),
            "2024-02-29T23:59:59.1234560Z"
        );
        assert_eq!(
            format_time(-62_167_219_200_000_001),
            "-0001-12-31T23:59:59.9999990Z"
        );
        assert_eq!(t("2026-11-24T08:05:29"), base);
        assert_eq!(t("2026-11-24 08:05:29"), base);
        assert_eq!(t("2026-11-24T09:05:29+01:00"), base);
        assert_eq!(t("2026-11-24T09:05:29+0100"), base);
        assert_eq!(t("2026-11-24T08:05:29.5Z"), base + 500_000);
        assert_eq!(t("2026-11-24T08:05:29.1234567Z"), base + 123_456);
        assert_eq!(t("2026-11-24T08:05:29.123"), base + 123_000);
        assert_eq!(t("11/24/2026 08:05:29"), base);
        assert_eq!(t("11/24/2026 8:05:29 AM"), base);
        assert_eq!(t("11/24/2026 8:05:29 PM"), base + 12 * 3_600_000_000);
        assert_eq!(t("1/2/2026 12:00:00 AM"), t("2026-01-02T00:00:00Z"));
        assert_eq!(t("2026-11-24"), t("2026-11-24T00:00:00Z"));
        assert_eq!(parse_time_val(&Val::Int(1_000)), Some(1_000_000));
        assert_eq!(parse_time_str("yesterday"), None);
        assert_eq!(parse_time_str("13/40/2026 8:05:29 AM"), None);
        assert_eq!(
            format_time(t("2026-11-24T08:05:29.1234567Z")),
            "2026-11-24T08:05:29.1234560Z"
        );
    }

    #[test]
    fn comparisons() {
        assert_eq!(
            compare(&Val::Int(1), &Val::Float(1.5)),
            Some(Ordering::Less)
        );
        assert_eq!(compare(&Val::Null, &Val::Int(1)), None);
        assert_eq!(compare(&Val::Str("a".into()), &Val::Int(1)), None);
        assert_eq!(Val::Float(3.0).key(), Val::Int(3).key());
    }
}
