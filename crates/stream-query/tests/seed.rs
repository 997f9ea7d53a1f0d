//! The seed's query, byte for byte, and the first integration shapes.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use stream_query::{Engine, EventPolicy, OutputRow, Query};

const SEED: &str = "SELECT Avg(\"temp\") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,60)";

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn rows(out: &[OutputRow]) -> Vec<(String, Value, String)> {
    out.iter()
        .map(|r| {
            (
                r.output.clone(),
                Value::Object(r.row.clone()),
                stream_query::format_timestamp(r.timestamp),
            )
        })
        .collect()
}

#[test]
fn seed_query_averages_per_minute() {
    let q = Query::parse(SEED).unwrap();
    assert_eq!(q.inputs(), vec!["temperature"]);
    assert_eq!(q.outputs(), vec!["AvgTemp"]);
    let mut e = Engine::new(q, EventPolicy::default());
    // the seed's simulator: {"temp": 38, "timecreated": DateTime.Now.ToString()} every 2 s
    let mut out = Vec::new();
    for (i, temp) in [37, 38, 37, 38].iter().enumerate() {
        let secs = 10 + i * 10;
        let ev = json!({"temp": temp, "timecreated": format!("11/24/2026 8:00:{secs:02} AM")});
        out.extend(
            e.record(
                "temperature",
                &ev,
                at(&format!("2026-11-24T08:00:{secs:02}Z")),
            )
            .unwrap(),
        );
    }
    assert!(out.is_empty(), "window still open: {out:?}");
    let ev = json!({"temp": 40, "timecreated": "11/24/2026 08:01:02"});
    out.extend(
        e.record("temperature", &ev, at("2026-11-24T08:01:02Z"))
            .unwrap(),
    );
    assert_eq!(
        rows(&out),
        vec![(
            "AvgTemp".to_string(),
            json!({"avg": 37.5}),
            "2026-11-24T08:01:00.0000000Z".to_string()
        )]
    );
    // the idle watermark closes the last window: 08:02:00 + 5 s late-arrival tolerance
    assert!(e.advance(at("2026-11-24T08:02:05Z")).is_empty());
    let out = e.advance(at("2026-11-24T08:02:05.001Z"));
    assert_eq!(
        rows(&out),
        vec![(
            "AvgTemp".to_string(),
            json!({"avg": 40.0}),
            "2026-11-24T08:02:00.0000000Z".to_string()
        )]
    );
}

#[test]
fn group_by_key_having_and_several_statements() {
    let q = Query::parse(
        "SELECT deviceId, AVG(temp) AS avgTemp, COUNT(*), System.Timestamp() AS windowEnd
         INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated
         GROUP BY deviceId, TumblingWindow(minute, 1)
         SELECT deviceId, AVG(temp) AS avgTemp INTO FeverAlert FROM temperature TIMESTAMP BY timeCreated
         GROUP BY deviceId, TumblingWindow(minute, 1) HAVING AVG(temp) >= 38.0",
    )
    .unwrap();
    assert_eq!(q.outputs(), vec!["AvgTemp", "FeverAlert"]);
    let mut e = Engine::new(q, EventPolicy::default());
    let evs = [
        ("a", 37.0, "2026-11-24T08:00:05Z"),
        ("b", 38.5, "2026-11-24T08:00:06Z"),
        ("a", 37.4, "2026-11-24T08:00:15Z"),
        ("b", 38.1, "2026-11-24T08:00:16Z"),
    ];
    for (d, t, ts) in evs {
        assert!(e
            .record(
                "temperature",
                &json!({"deviceId": d, "temp": t, "timeCreated": ts}),
                at(ts)
            )
            .unwrap()
            .is_empty());
    }
    let out = e.flush();
    let got = rows(&out);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].0, "AvgTemp");
    assert_eq!(got[0].1["deviceId"], "a");
    assert!((got[0].1["avgTemp"].as_f64().unwrap() - 37.2).abs() < 1e-9);
    assert_eq!(got[0].1["count"], 2);
    assert_eq!(got[0].1["windowEnd"], "2026-11-24T08:01:00.0000000Z");
    assert_eq!(got[1].1["deviceId"], "b");
    assert_eq!(got[2].0, "FeverAlert");
    assert_eq!(got[2].1["deviceId"], "b");
    assert!((got[2].1["avgTemp"].as_f64().unwrap() - 38.3).abs() < 1e-9);
}
