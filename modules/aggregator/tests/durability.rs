//! Durable state that costs what changed: the input log plus snapshots (`aggregator::wal`).
//! A restart restores the snapshot and replays the log; whatever point the log was cut at (a torn
//! write), the restored engine is exactly the uninterrupted one after the last whole record.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use aggregator::{Processor, TwinSettings};
use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};

const QUERY: &str = "SELECT deviceId, Avg(temp) AS avgTemp, Count(*) AS n INTO PatientAvg FROM temperature TIMESTAMP BY timeCreated OVER deviceId GROUP BY deviceId, TumblingWindow(second, 10)
SELECT deviceId, temp - LAG(temp) OVER (PARTITION BY deviceId LIMIT DURATION(second, 30)) AS rise INTO Rise FROM temperature TIMESTAMP BY timeCreated";

fn t(ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 8, 0, 0)
        .single()
        .unwrap()
        + Duration::milliseconds(ms)
}

fn settings() -> TwinSettings {
    TwinSettings {
        query: Some(QUERY.to_string()),
        ..TwinSettings::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Input { dt_ms: i64, device: u8, temp: u8 },
    Tick { dt_ms: i64 },
    Commit,
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1i64..3_000, 0u8..4, 0u8..40).prop_map(|(dt_ms, device, temp)| Op::Input { dt_ms, device, temp }),
        2 => (1i64..8_000).prop_map(|dt_ms| Op::Tick { dt_ms }),
        3 => Just(Op::Commit),
        1 => Just(Op::Snapshot),
    ]
}

type Row = (String, Value, String);

/// Run `op` on `p`; the rows it produced.
fn step(p: &mut Processor, op: &Op, now: &mut i64) -> Vec<Row> {
    let rows = match op {
        Op::Input {
            dt_ms,
            device,
            temp,
        } => {
            *now += dt_ms;
            let body = json!({"deviceId": format!("p{device}"), "temp": 36.0 + *temp as f64 / 10.0,
                              "timeCreated": t(*now).to_rfc3339()})
            .to_string();
            p.on_input("temperature", body.as_bytes(), t(*now)).rows
        }
        Op::Tick { dt_ms } => {
            *now += dt_ms;
            p.on_tick(t(*now))
        }
        Op::Commit => {
            p.checkpoint().unwrap();
            Vec::new()
        }
        Op::Snapshot => {
            p.snapshot_next();
            p.checkpoint().unwrap();
            Vec::new()
        }
    };
    rows.into_iter()
        .map(|r| (r.output, Value::Object(r.row), r.timestamp.to_rfc3339()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// A run crashes after `k` operations with its log cut at any byte; the restarted module
    /// restores the snapshot and the whole log records, and the operations after the last
    /// record it restored come again (edgeHub redelivers what was not acknowledged; time goes
    /// on). From there its output rows are exactly the uninterrupted run's.
    #[test]
    fn restore_from_snapshot_and_a_log_cut_anywhere_gives_the_uninterrupted_rows(
        ops in prop::collection::vec(op(), 1..60),
        crash_fraction in 0.0f64..=1.0,
        cut_fraction in 0.0f64..=1.0,
    ) {
        // the uninterrupted run: rows per operation
        let udir = tempfile::tempdir().unwrap();
        let mut u = Processor::new(udir.path());
        u.apply(settings()).unwrap();
        let mut now = 0i64;
        let mut u_rows: Vec<Vec<Row>> = Vec::new();
        for op in &ops {
            u_rows.push(step(&mut u, op, &mut now));
        }
        // the run that crashes after k operations; which operation each log record holds
        let k = ((ops.len() as f64) * crash_fraction) as usize;
        let dir = tempfile::tempdir().unwrap();
        let mut a = Processor::new(dir.path());
        a.apply(settings()).unwrap();
        let mut op_of_seq: BTreeMap<u64, usize> = BTreeMap::new();
        let mut now_a = 0i64;
        for (i, op) in ops[..k].iter().enumerate() {
            let before = a.engine_state().unwrap().1;
            step(&mut a, op, &mut now_a);
            let after = a.engine_state().unwrap().1;
            if after > before {
                op_of_seq.insert(after, i);
            }
        }
        drop(a);
        let log = dir.path().join("inputs.log");
        if let Ok(bytes) = std::fs::read(&log) {
            let cut = ((bytes.len() as f64) * cut_fraction) as usize;
            std::fs::write(&log, &bytes[..cut.min(bytes.len())]).unwrap();
        }
        // restart: everything after the last restored record comes again
        let mut r = Processor::new(dir.path());
        r.apply(settings()).unwrap();
        let seq = r.engine_state().unwrap().1;
        let d = op_of_seq.get(&seq).map_or(0, |i| i + 1);
        // the clock of the replayed operations starts where operation d-1 left it
        let mut now_r = 0i64;
        for op in &ops[..d] {
            match op {
                Op::Input { dt_ms, .. } | Op::Tick { dt_ms } => now_r += dt_ms,
                _ => {}
            }
        }
        // (a snapshot taken after d-1 may hold ticks up to k; replaying them is idempotent, but
        // the durable state must not be ahead of operation d-1 in inputs)
        let mut r_rows: Vec<Vec<Row>> = Vec::new();
        for op in &ops[d..] {
            r_rows.push(step(&mut r, op, &mut now_r));
        }
        let expected: Vec<Row> = u_rows[d..].iter().flatten().cloned().collect();
        let got: Vec<Row> = r_rows.iter().flatten().cloned().collect();
        prop_assert_eq!(got, expected, "crash after {} operations, restored up to operation {}", k, d);
    }
}

#[test]
fn bytes_written_per_input_do_not_grow_with_open_groups() {
    // 10,000 patients with open windows: a commit of 16 inputs writes their records, not the state
    let dir = tempfile::tempdir().unwrap();
    let mut p = Processor::new(dir.path());
    p.apply(settings()).unwrap();
    let mut now = 0;
    for d in 0..10_000 {
        now += 1;
        let body =
            json!({"deviceId": format!("p{d}"), "temp": 37.0, "timeCreated": t(now).to_rfc3339()})
                .to_string();
        p.on_input("temperature", body.as_bytes(), t(now));
    }
    p.snapshot_next();
    p.checkpoint().unwrap();
    let snapshot_bytes = p.bytes_committed;
    let before = p.bytes_committed;
    let inputs = 1_600;
    for i in 0..inputs {
        now += 1;
        let body = json!({"deviceId": format!("p{}", i % 10_000), "temp": 37.1, "timeCreated": t(now).to_rfc3339()}).to_string();
        p.on_input("temperature", body.as_bytes(), t(now));
        if i % 16 == 15 {
            p.checkpoint().unwrap();
        }
    }
    let per_input = (p.bytes_committed - before) as f64 / inputs as f64;
    eprintln!("snapshot with 10,000 open groups: {snapshot_bytes} bytes; then {per_input:.0} bytes per input");
    // a restart (as after kill -9): the snapshot plus 1,600 log records, nothing lost
    let state = p.engine_state().unwrap();
    let started = std::time::Instant::now();
    let mut r = Processor::new(dir.path());
    r.apply(settings()).unwrap();
    eprintln!(
        "restore of 10,000 open groups and 1,600 log records: {:?} ({} build)",
        started.elapsed(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    assert_eq!(r.engine_state().unwrap(), state);
    assert!(per_input < 1024.0, "{per_input}");
    assert!(
        snapshot_bytes > 100 * 1024,
        "the snapshot holds the state: {snapshot_bytes}"
    );
}

/// A processor counting readings per 10-minute window.
fn counting(dir: &std::path::Path) -> Processor {
    let mut p = Processor::new(dir);
    p.apply(TwinSettings {
        query: Some("SELECT Count(*) AS n INTO C FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(minute, 10)".into()),
        ..TwinSettings::default()
    })
    .unwrap();
    p
}

/// Reading `i`: 37 degrees, `i` seconds (plus one) into the window.
fn reading(i: i64) -> String {
    json!({"temp": 37, "timeCreated": t(i * 1000 + 1000).to_rfc3339()}).to_string()
}

#[test]
fn inputs_delivered_again_without_a_restart_are_not_counted_twice() {
    // The hub sends again (DUP) what it did not see acknowledged before a connection closed. A
    // marked repeat of an input this process took is skipped (here without message ids: by input,
    // length and checksum); an unmarked delivery with the same body is a new reading and counts.
    let dir = tempfile::tempdir().unwrap();
    let mut p = counting(dir.path());
    let body = reading;
    for i in 0..10 {
        p.on_delivery("temperature", None, body(i).as_bytes(), t(i * 1000), false);
    }
    // the connection closed before the last 4 acknowledgements reached the hub: they come again
    for i in 6..10 {
        p.on_delivery(
            "temperature",
            None,
            body(i).as_bytes(),
            t(i * 1000 + 100),
            true,
        );
    }
    assert_eq!(p.redelivered_skipped, 4);
    // a marked repeat of something never taken counts (its first delivery was lost)
    p.on_delivery(
        "temperature",
        Some("mid-10"),
        body(10).as_bytes(),
        t(10_500),
        true,
    );
    // the same body again, not marked: a second reading, counted
    p.on_delivery("temperature", None, body(3).as_bytes(), t(11_000), false);
    assert_eq!(p.redelivered_skipped, 4);
    let rows = p.on_tick(t(30 * 60 * 1000));
    assert_eq!(rows[0].row["n"], json!(12));
}

#[test]
fn a_message_sent_twice_with_the_same_id_and_body_counts_once() {
    // MqttServerModule resends what edgeHub did not acknowledge (a connection closed by a full
    // disk), with the same message id; edgeHub stores each copy as a new message, not marked as a
    // repeat. Same id and same body: one reading. Same id, other body: two. No id: two.
    let dir = tempfile::tempdir().unwrap();
    let mut p = counting(dir.path());
    let body = reading;
    for round in 0..3 {
        for i in 0..300 {
            p.on_delivery(
                "temperature",
                Some(&format!("mid-{i}")),
                body(i).as_bytes(),
                t(i * 10 + round),
                false,
            );
        }
    }
    assert_eq!(p.duplicates_skipped, 600);
    // the same id on another input is another message
    let other = p.on_delivery("other", Some("mid-1"), body(1).as_bytes(), t(4000), false);
    assert!(
        other.dead_letter.is_some(),
        "no query reads `other`: dead-lettered, not skipped"
    );
    // the same id with other bytes is another message
    let other_body = json!({"temp": 38, "timeCreated": t(2000).to_rfc3339()}).to_string();
    p.on_delivery(
        "temperature",
        Some("mid-1"),
        other_body.as_bytes(),
        t(4000),
        false,
    );
    // no id: two deliveries of the same bytes are two readings
    p.on_delivery("temperature", None, body(1).as_bytes(), t(4001), false);
    p.on_delivery("temperature", None, body(1).as_bytes(), t(4002), false);
    assert_eq!(p.duplicates_skipped, 600);
    let rows = p.on_tick(t(30 * 60 * 1000));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].row["n"], json!(303));
}

/// After a crash edgeHub delivers again the inputs whose acknowledgement it never saw, and the
/// last of them are in the restored state already (durable, but killed before the ack): each is
/// recognised, by message id or without one by its bytes, and not counted twice.
#[test]
fn inputs_delivered_again_after_a_crash_are_not_counted_twice() {
    for with_ids in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let count = TwinSettings {
            query: Some("SELECT Count(*) AS n INTO C FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(minute, 10)".into()),
            ..TwinSettings::default()
        };
        let body = |i: i64| {
            json!({"temp": 37, "timeCreated": t(i * 1000 + 1000).to_rfc3339()}).to_string()
        };
        let id = |i: i64| with_ids.then(|| format!("mid-{i}"));
        let mut p = Processor::new(dir.path());
        p.apply(count.clone()).unwrap();
        for i in 0..30 {
            p.on_message(
                "temperature",
                id(i).as_deref(),
                body(i).as_bytes(),
                t(i * 1000),
            );
            if i == 9 {
                p.snapshot_next(); // some inputs in the snapshot, the rest in the log
            }
            if i == 9 || i == 29 {
                p.checkpoint().unwrap();
            }
        }
        drop(p); // killed before acknowledging inputs 14..29

        let mut r = Processor::new(dir.path());
        r.apply(count.clone()).unwrap();
        for i in 14..40 {
            let out = r.on_message(
                "temperature",
                id(i).as_deref(),
                body(i).as_bytes(),
                t(i * 1000 + 500),
            );
            assert!(out.dead_letter.is_none());
        }
        assert_eq!(r.redelivered_skipped, 16, "ids: {with_ids}");
        let rows = r.on_tick(t(30 * 60 * 1000));
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].row["n"], json!(40), "ids: {with_ids}");
    }
}
