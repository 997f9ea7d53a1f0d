//! Built-in functions with the examples of the Azure Stream Analytics function reference:
//! string functions, PERCENTILE_DISC / PERCENTILE_CONT, Collect and CollectTop.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use stream_query::{Engine, EventPolicy, Query};

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// Events one second apart from 2026-11-24T08:00:01Z, then flush; the output rows.
fn run(query: &str, rows: Vec<Value>) -> Vec<Value> {
    let mut e = Engine::new(Query::parse(query).unwrap(), EventPolicy::default());
    let t0 = at("2026-11-24T08:00:00Z");
    let mut out = Vec::new();
    for (i, r) in rows.into_iter().enumerate() {
        out.extend(
            e.record("Input", &r, t0 + Duration::seconds(i as i64 + 1))
                .unwrap(),
        );
    }
    out.extend(e.flush());
    let w = e.take_warnings();
    assert!(w.is_empty(), "{w:?}");
    out.into_iter().map(|r| Value::Object(r.row)).collect()
}

#[test]
fn string_functions_as_documented() {
    let out = run(
        "SELECT 'abcdefg' AS x, LEFT('abcdefg',2) AS leftX, RIGHT('abcdefg',2) AS rightX,
            REVERSE('abcdefg') AS reversedX, PATINDEX('%100%', LicensePlate) AS p,
            PATINDEX('AB%', LicensePlate) AS starts, PATINDEX('%_9', LicensePlate) AS ends,
            LEFT(LicensePlate, 100) AS whole, RIGHT(LicensePlate, 0) AS none
         FROM Input",
        vec![json!({"LicensePlate": "AB 1009"})],
    );
    assert_eq!(
        out,
        vec![json!({
            "x": "abcdefg", "leftX": "ab", "rightX": "fg", "reversedX": "gfedcba",
            "p": 4, "starts": 1, "ends": 6, "whole": "AB 1009", "none": ""
        })]
    );
    // a negative length is an error for the event, named
    let mut e = Engine::new(
        Query::parse("SELECT LEFT(s, n) AS l FROM Input").unwrap(),
        EventPolicy::default(),
    );
    let err = e
        .record("Input", &json!({"s": "abc", "n": -1}), Utc::now())
        .unwrap_err();
    assert!(err.to_string().contains("must not be negative"), "{err}");
}

#[test]
fn datetimefromparts_builds_a_time() {
    let out = run(
        "SELECT DATETIMEFROMPARTS(2026, 11, 24, 8, 1, 2, 500) AS t FROM Input",
        vec![json!({})],
    );
    assert_eq!(out, vec![json!({"t": "2026-11-24T08:01:02.5000000Z"})]);
}

#[test]
fn percentiles_of_service_availability() {
    // percentile-disc / percentile-cont reference: 0.99 and 0.988 for the same five regions
    let rows = [
        ("A", 0.98),
        ("B", 0.93),
        ("C", 0.78),
        ("D", 0.99),
        ("E", 0.89),
    ]
    .iter()
    .map(|(r, a)| json!({"Regions": r, "ServiceAvailability": a}))
    .collect();
    let out = run(
        "SELECT PERCENTILE_DISC(0.95) OVER (ORDER BY serviceAvailability) AS disc,
            PERCENTILE_CONT(0.95) OVER (ORDER BY serviceAvailability) AS cont,
            PERCENTILE_DISC(0.5) OVER (ORDER BY serviceAvailability) AS median
         FROM Input GROUP BY TumblingWindow(hour, 1)",
        rows,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["disc"], json!(0.99));
    assert!(
        (out[0]["cont"].as_f64().unwrap() - 0.988).abs() < 1e-9,
        "{}",
        out[0]
    );
    assert_eq!(out[0]["median"], json!(0.93));
}

#[test]
fn collect_and_collecttop() {
    let rows = [
        (1, 5, "a"),
        (1, 3, "b"),
        (2, 9, "c"),
        (1, 3, "d"),
        (1, 7, "e"),
    ]
    .iter()
    .map(|(g, v, n)| json!({"value1": g, "value2": v, "name": n}))
    .collect();
    let out = run(
        "SELECT value1, Collect(name) AS names, CollectTop(2, name) OVER (ORDER BY value2 DESC) AS top2,
            CollectTop(1) OVER (ORDER BY value2 ASC) AS low
         FROM Input GROUP BY value1, TumblingWindow(minute, 1)",
        rows,
    );
    assert_eq!(
        out,
        vec![
            json!({
                "value1": 1,
                "names": ["a", "b", "d", "e"],
                "top2": [{"rank": 1, "value": "e"}, {"rank": 2, "value": "a"}],
                "low": [{"rank": 1, "value": {"value1": 1, "value2": 3, "name": "b"}}]
            }),
            json!({
                "value1": 2,
                "names": ["c"],
                "top2": [{"rank": 1, "value": "c"}],
                "low": [{"rank": 1, "value": {"value1": 2, "value2": 9, "name": "c"}}]
            }),
        ]
    );
    let e =
        Query::parse("SELECT CollectTop(0) OVER (ORDER BY a) FROM i GROUP BY TumblingWindow(s, 1)")
            .unwrap_err();
    assert!(e.message.contains("CollectTop(n"), "{e}");
}

#[test]
fn datetimefromparts_refuses_what_tsql_refuses() {
    let mut e = Engine::new(
        Query::parse("SELECT DATETIMEFROMPARTS(y, 1, 1, 0, 0, 59, ms) AS t FROM Input").unwrap(),
        EventPolicy::default(),
    );
    for ev in [
        json!({"y": 2026, "ms": 1500}),
        json!({"y": 0, "ms": 0}),
        json!({"y": 10000, "ms": 0}),
    ] {
        let err = e.record("Input", &ev, Utc::now()).unwrap_err();
        assert!(err.to_string().contains("DATETIMEFROMPARTS"), "{err}");
    }
}

#[test]
fn patindex_on_a_long_text_is_not_quadratic_in_practice() {
    let text = format!("{}100", "ab".repeat(100_000));
    let out = run(
        "SELECT PATINDEX('%100%', s) AS p FROM Input",
        vec![json!({ "s": text })],
    );
    assert_eq!(out, vec![json!({"p": 200_001})]);
}
