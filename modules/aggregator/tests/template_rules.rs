//! The clinical rules of `deployment.template.json`, run through the engine as AggregatorModule
//! runs them (with the template's inline reference data): each alert kind comes out exactly once
//! per episode, for the right patient, and nothing else alerts.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use stream_query::{Engine, EventPolicy, OutputRow, Query};

fn template_settings() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deployment.template.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["modulesContent"]["AggregatorModule"]["properties.desired"].clone()
}

/// Deterministic noise in [-0.05, 0.05].
fn noise(i: u64) -> f64 {
    let x = i
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 33;
    (x % 1001) as f64 / 10_000.0 - 0.05
}

#[test]
fn each_template_rule_alerts_once_per_episode() {
    let settings = template_settings();
    let query = Query::parse(settings["query"].as_str().unwrap()).unwrap();
    assert_eq!(query.references(), vec!["patients"]);
    let mut e = Engine::new(query, EventPolicy::default());
    let rows = settings["referenceData"]["patients"]["rows"]
        .as_array()
        .unwrap()
        .clone();
    e.set_reference("patients", rows).unwrap();

    // patient-00001 (threshold 37.8): 37.0, a fever of 38.2 in minutes 3..=7, then 37.0 again
    // patient-00002 (38.3): steady 37.2 with one reading of 41.0 at minute 6
    // patient-00003 (38.0): steady 36.9, silent from minute 4 on
    // stranger (not on the list): steady 37.0, silent from minute 4 on
    let t0: DateTime<Utc> = "2026-11-24T08:00:00Z".parse().unwrap();
    let mut out: Vec<OutputRow> = Vec::new();
    let mut i = 0u64;
    for k in 0..360 {
        let s = 1 + 2 * k; // odd seconds: no reading on a window boundary
        let t = t0 + Duration::seconds(s);
        let minute = s / 60;
        let mut send = |device: &str, temp: f64| {
            i += 1;
            let ev =
                json!({"deviceId": device, "temp": temp + noise(i), "timeCreated": t.to_rfc3339()});
            out.extend(e.record("temperature", &ev, t).unwrap());
        };
        send(
            "patient-00001",
            if (3..=7).contains(&minute) {
                38.2
            } else {
                37.0
            },
        );
        send("patient-00002", if k == 180 { 41.0 } else { 37.2 });
        if minute < 4 {
            send("patient-00003", 36.9);
            send("stranger", 37.0);
        }
    }
    // the clock runs on (no flush: a flush would end every patient's stream)
    out.extend(e.advance(t0 + Duration::seconds(725)));
    assert!(e.take_warnings().is_empty());

    let mut alerts: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for r in &out {
        if let Some(kind) = r.row.get("alert").and_then(Value::as_str) {
            let device = r.row["deviceId"].as_str().unwrap().to_string();
            alerts
                .entry((kind.to_string(), device))
                .or_default()
                .push(Value::Object(r.row.clone()));
        }
    }
    let count = |k: &str, d: &str| {
        alerts
            .get(&(k.to_string(), d.to_string()))
            .map_or(0, Vec::len)
    };
    let summary: Vec<(String, String, usize)> = alerts
        .iter()
        .map(|((k, d), v)| (k.clone(), d.clone(), v.len()))
        .collect();
    // fever: each of the 5 feverish minutes; sustained: once, at the third
    assert_eq!(count("fever", "patient-00001"), 5, "{summary:?}");
    assert_eq!(count("sustainedFever", "patient-00001"), 1, "{summary:?}");
    let sustained = &alerts[&("sustainedFever".into(), "patient-00001".into())][0];
    assert_eq!(
        sustained["windowEnd"],
        json!("2026-11-24T08:06:00.0000000Z")
    );
    assert_eq!(sustained["feverC"], json!(37.8));
    // rapid rise: the first feverish minute against the one before
    assert_eq!(count("rapidRise", "patient-00001"), 1, "{summary:?}");
    // spikes: the 41.0 reading, and the sudden start of the fever
    assert_eq!(count("spike", "patient-00002"), 1, "{summary:?}");
    assert_eq!(
        alerts[&("spike".into(), "patient-00002".into())][0]["temp"]
            .as_f64()
            .unwrap()
            .round(),
        41.0
    );
    assert_eq!(count("spike", "patient-00001"), 1, "{summary:?}");
    // silent: the listed patient once, five minutes after the last window; the stranger never
    assert_eq!(count("silentSensor", "patient-00003"), 1, "{summary:?}");
    let silent = &alerts[&("silentSensor".into(), "patient-00003".into())][0];
    assert_eq!(silent["lastWindow"], json!("2026-11-24T08:04:00.0000000Z"));
    assert_eq!(silent["silentSince"], json!("2026-11-24T08:09:00.0000000Z"));
    assert_eq!(count("silentSensor", "stranger"), 0);
    // and nothing else
    let total: usize = alerts.values().map(Vec::len).sum();
    assert_eq!(total, 5 + 1 + 1 + 2 + 1, "{summary:?}");
    // every patient has a chart; the seed's average covers everyone
    let charted: std::collections::BTreeSet<&str> = out
        .iter()
        .filter(|r| r.output == "PatientAvg")
        .map(|r| r.row["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(charted.len(), 4);
    assert!(out.iter().any(|r| r.output == "AvgTemp"));
}
