//! The module's synchronous core with the real engine: the seed query, live reloads, dead letters,
//! checkpoints, and `aggregator replay`.

#![allow(clippy::unwrap_used)]

use aggregator::replay::replay;
use aggregator::settings::PolicySettings;
use aggregator::{Processor, TwinSettings};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;

const SEED: &str = r#"SELECT Avg("temp") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,60)"#;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 8, 0, 0)
        .single()
        .expect("valid")
        + Duration::seconds(secs)
}

fn settings(query: &str) -> TwinSettings {
    TwinSettings {
        query: Some(query.to_string()),
        ..TwinSettings::default()
    }
}

fn reading(temp: f64, at: DateTime<Utc>) -> Vec<u8> {
    json!({"temp": temp, "timecreated": at.to_rfc3339()})
        .to_string()
        .into_bytes()
}

#[test]
fn seed_query_averages_a_minute_and_names_the_column_avg() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Processor::new(dir.path());
    assert_eq!(
        p.apply(settings(SEED)).unwrap().map(|rows| rows.len()),
        Some(0)
    );
    assert!(
        p.apply(settings(SEED)).unwrap().is_none(),
        "same query: unchanged"
    );
    for (i, temp) in [36.0, 37.0, 38.0, 41.0].iter().enumerate() {
        let at = t(10 + i as i64 * 10);
        let out = p.on_input("temperature", &reading(*temp, at), at);
        assert!(out.dead_letter.is_none(), "{:?}", out.dead_letter);
        assert!(out.rows.is_empty());
    }
    // The window (08:00:00, 08:01:00] closes when the watermark passes its end: wall clock minus the 5 s
    // late-arrival tolerance.
    assert!(p.on_tick(t(62)).is_empty());
    let rows = p.on_tick(t(70));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].output, "AvgTemp");
    assert_eq!(
        serde_json::Value::Object(rows[0].row.clone()),
        json!({"avg": 38.0})
    );
    assert_eq!(rows[0].timestamp, t(60));
    let m = aggregator::processor::row_message(&rows[0]);
    assert_eq!(
        m.properties.get("timestamp").map(String::as_str),
        Some("2026-11-24T08:01:00.000Z")
    );
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
}

#[test]
fn an_invalid_query_is_reported_and_the_previous_one_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Processor::new(dir.path());
    p.apply(settings(SEED)).unwrap();
    let err = p
        .apply(settings("SELECT Avg(temp INTO x FROM temperature"))
        .unwrap_err();
    assert!(
        err.to_string().contains("previous query keeps running"),
        "{err}"
    );
    let st = p.status().clone();
    assert_eq!(st.line, Some(1));
    assert!(st.column.unwrap_or(0) > 1, "{st:?}");
    assert!(st.status.contains("previous query still running"), "{st:?}");
    let reported = p.reported(&[]);
    assert_eq!(reported["runningQuery"], json!(SEED));
    assert_eq!(reported["query"]["line"], json!(1));
    // Still aggregating with the seed query.
    p.on_input("temperature", &reading(37.0, t(1)), t(1));
    assert_eq!(p.on_tick(t(70)).len(), 1);
}

#[test]
fn unusable_messages_go_to_the_dead_letter_output_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Processor::new(dir.path());
    // No query yet: even a good message is dead-lettered, with what to do.
    let out = p.on_input("temperature", &reading(37.0, t(1)), t(1));
    assert!(out.dead_letter.unwrap()["reason"]
        .as_str()
        .unwrap()
        .contains("query"));
    p.apply(settings(SEED)).unwrap();
    let cases: Vec<(&[u8], &str)> = vec![
        (b"{not json", "not JSON"),
        (&[0xff, 0xfe, 0x00], "UTF-8"),
        (br#"{"temp": 37.0}"#, "timecreated"),
        (
            br#"{"temp": 37.0, "timecreated": "yesterday-ish"}"#,
            "yesterday-ish",
        ),
    ];
    for (body, needle) in cases {
        let out = p.on_input("temperature", body, t(1));
        let dl = out
            .dead_letter
            .unwrap_or_else(|| panic!("{:?} was not dead-lettered", String::from_utf8_lossy(body)));
        let reason = dl["reason"].as_str().unwrap().to_string();
        assert!(
            reason.to_lowercase().contains(&needle.to_lowercase()),
            "reason {reason:?} should mention {needle:?}"
        );
        assert_eq!(dl["input"], json!("temperature"));
        assert!(
            dl.get("body").is_some()
                || dl.get("bodyText").is_some()
                || dl.get("bodyBase64").is_some(),
            "{dl}"
        );
    }
    assert_eq!(p.dead_letters, 5);
}

#[test]
fn a_checkpoint_keeps_open_windows_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut p = Processor::new(dir.path());
        p.apply(settings(SEED)).unwrap();
        p.on_input("temperature", &reading(36.0, t(5)), t(5));
        p.on_input("temperature", &reading(40.0, t(6)), t(6));
        p.checkpoint().unwrap();
    }
    let mut p = Processor::new(dir.path());
    p.apply(settings(SEED)).unwrap();
    p.on_input("temperature", &reading(38.0, t(7)), t(7));
    let rows = p.on_tick(t(70));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].row["avg"], json!(38.0));

    // A different query does not take another query's windows.
    let mut q = Processor::new(dir.path());
    q.apply(settings(&SEED.replace("60)", "30)"))).unwrap();
    assert!(q.on_tick(t(70)).is_empty());
}

#[test]
fn checkpoint_formats_old_is_read_newer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut p = Processor::new(dir.path());
        p.apply(settings(SEED)).unwrap();
        p.on_input("temperature", &reading(36.0, t(5)), t(5));
        p.checkpoint().unwrap();
    }
    let path = dir.path().join("checkpoint.json");
    let mut cp: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        cp["format"],
        json!(aggregator::processor::CHECKPOINT_FORMAT)
    );
    // format 1 had no "format" field: read
    cp.as_object_mut().unwrap().remove("format");
    std::fs::write(&path, serde_json::to_vec(&cp).unwrap()).unwrap();
    let mut p = Processor::new(dir.path());
    p.apply(settings(SEED)).unwrap();
    assert_eq!(
        p.on_tick(t(70)).len(),
        1,
        "the format-1 window was restored"
    );
    // a newer format: refused (empty windows), not misread
    cp["format"] = json!(99);
    std::fs::write(&path, serde_json::to_vec(&cp).unwrap()).unwrap();
    let mut p = Processor::new(dir.path());
    p.apply(settings(SEED)).unwrap();
    assert!(p.on_tick(t(70)).is_empty());
}

#[test]
fn replay_prints_rows_and_closes_every_window_at_the_end() {
    let input = [
        json!({"temp": 36, "timeCreated": "2026-11-24T08:00:10Z"}),
        json!({"temp": 38, "timeCreated": "2026-11-24T08:00:50Z"}),
        json!({"temp": 40, "timeCreated": "2026-11-24T08:01:00Z"}),
        json!({"temp": 41, "timeCreated": "2026-11-24T08:01:30Z"}),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect::<Vec<_>>()
    .join("\n")
        + "\nthis line is not json\n";
    let q = stream_query::Query::parse(SEED).unwrap();
    let policy = PolicySettings::default().to_policy().unwrap();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let summary = replay(q, policy, None, &[], input.as_bytes(), &mut out, &mut err).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"output": "AvgTemp", "row": {"avg": 38.0}}),
            json!({"output": "AvgTemp", "row": {"avg": 41.0}}),
        ]
    );
    assert_eq!(summary.events, 5);
    assert_eq!(summary.rejected, 1);
    assert!(String::from_utf8(err).unwrap().contains("line 5"));
}

#[test]
fn replay_joins_reference_data_and_asks_for_it_when_missing() {
    let q = "SELECT s.deviceId, r.feverC INTO Fever FROM temperature s TIMESTAMP BY timeCreated
        JOIN patients r ON s.deviceId = r.deviceId WHERE s.temp >= CAST(r.feverC AS float)";
    let input = [
        json!({"deviceId": "p1", "temp": 37.9, "timeCreated": "2026-11-24T08:00:10Z"}),
        json!({"deviceId": "p2", "temp": 37.9, "timeCreated": "2026-11-24T08:00:11Z"}),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect::<Vec<_>>()
    .join("\n");
    let policy = PolicySettings::default().to_policy().unwrap();
    let refs = vec![(
        "patients".to_string(),
        aggregator::reference::parse_csv(b"deviceId,feverC\np1,37.8\np2,38.5\n").unwrap(),
    )];
    let mut out = Vec::new();
    replay(
        stream_query::Query::parse(q).unwrap(),
        policy,
        None,
        &refs,
        input.as_bytes(),
        &mut out,
        Vec::new(),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap().trim(),
        json!({"output": "Fever", "row": {"deviceId": "p1", "feverC": "37.8"}}).to_string()
    );
    let e = replay(
        stream_query::Query::parse(q).unwrap(),
        policy,
        None,
        &[],
        input.as_bytes(),
        Vec::new(),
        Vec::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("--reference patients=FILE"), "{e}");
}

#[test]
fn replacing_the_query_closes_the_old_query_s_windows() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Processor::new(dir.path());
    p.apply(settings(SEED)).unwrap();
    p.on_input("temperature", &reading(37.0, t(5)), t(5));
    p.on_input("temperature", &reading(39.0, t(6)), t(6));
    let flushed = p
        .apply(settings(&SEED.replace("AvgTemp", "AvgTemp2")))
        .unwrap()
        .expect("query replaced");
    assert_eq!(flushed.len(), 1);
    assert_eq!(flushed[0].output, "AvgTemp");
    assert_eq!(flushed[0].row["avg"], json!(38.0));
    assert_eq!(p.reported(&[])["outputs"], json!(["AvgTemp2"]));
}
