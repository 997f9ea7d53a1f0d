//! Aggregates, event errors, timestamps, WITH steps, checkpoint/restore and policy settings.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use stream_query::{Engine, EventError, EventPolicy, OutputRow, Query, RestoreError};

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn engine(q: &str) -> Engine {
    Engine::new(Query::parse(q).unwrap(), EventPolicy::default())
}

fn feed(e: &mut Engine, evs: &[Value]) -> Vec<OutputRow> {
    let mut out = Vec::new();
    for ev in evs {
        let t =
            stream_query::parse_timestamp(&ev["t"]).unwrap_or_else(|| at("2026-11-24T08:00:00Z"));
        out.extend(e.record("events", ev, t).unwrap());
    }
    out.extend(e.flush());
    out
}

#[test]
fn all_aggregates() {
    let mut e = engine(
        "SELECT AVG(x) AS avg, COUNT(*) AS n, COUNT(x) AS nx, COUNT(DISTINCT x) AS dx, MIN(x) AS mn, MAX(x) AS mx,
                SUM(x) AS s, STDEV(x) AS sd, STDEVP(x) AS sdp, VAR(x) AS v, VARP(x) AS vp,
                TopOne() OVER (ORDER BY x DESC, t ASC) AS top,
                Percentile_Cont(0.5) OVER (ORDER BY x) AS median,
                PERCENTILE_CONT(0.25) WITHIN GROUP (ORDER BY x) AS p25,
                MIN(name) AS firstName
         INTO o FROM events TIMESTAMP BY t GROUP BY TumblingWindow(minute, 1)",
    );
    let xs = [2, 4, 4, 4, 5, 5, 7, 9];
    let mut evs: Vec<Value> = xs
        .iter()
        .enumerate()
        .map(|(i, x)| json!({"x": x, "t": format!("2026-11-24T08:00:{:02}Z", i + 1), "name": format!("n{i}")}))
        .collect();
    evs.push(json!({"x": null, "t": "2026-11-24T08:00:30Z"}));
    let out = feed(&mut e, &evs);
    assert_eq!(out.len(), 1);
    let r = &out[0].row;
    assert_eq!(r["avg"], 5.0);
    assert_eq!(r["n"], 9);
    assert_eq!(r["nx"], 8);
    assert_eq!(r["dx"], 5);
    assert_eq!(r["mn"], 2);
    assert_eq!(r["mx"], 9);
    assert_eq!(r["s"], 40);
    assert!((r["sd"].as_f64().unwrap() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
    assert_eq!(r["sdp"], 2.0);
    assert!((r["v"].as_f64().unwrap() - 32.0 / 7.0).abs() < 1e-12);
    assert_eq!(r["vp"], 4.0);
    assert_eq!(r["top"]["x"], 9);
    assert_eq!(r["median"], 4.5);
    assert_eq!(r["p25"], 4.0);
    assert_eq!(r["firstName"], "n0");
}

#[test]
fn aggregates_of_nothing_are_null_and_counts_zero() {
    let mut e = engine("SELECT COUNT(x) AS nx, AVG(x) AS a, SUM(x) AS s, STDEV(x) AS sd INTO o FROM events TIMESTAMP BY t GROUP BY TumblingWindow(second, 10)");
    let out = feed(&mut e, &[json!({"t": "2026-11-24T08:00:01Z"})]);
    assert_eq!(
        Value::Object(out[0].row.clone()),
        json!({"nx": 0, "a": null, "s": null, "sd": null})
    );
}

#[test]
fn event_errors_say_what_and_change_nothing() {
    let mut e = engine("SELECT AVG(temp) AS a INTO o FROM events TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second, 10)");
    let now = at("2026-11-24T08:00:00Z");
    assert_eq!(
        e.record("events", &json!([1]), now),
        Err(EventError::NotAnObject)
    );
    assert_eq!(
        e.record("events", &json!({"temp": 1}), now),
        Err(EventError::MissingTimestamp {
            field: "timeCreated".into()
        })
    );
    let bad = e
        .record(
            "events",
            &json!({"temp": 1, "timecreated": "tomorrow"}),
            now,
        )
        .unwrap_err();
    assert!(matches!(bad, EventError::BadTimestamp { .. }));
    assert!(bad.to_string().contains("\"tomorrow\""), "{bad}");
    let wrong = e
        .record(
            "events",
            &json!({"temp": "hot", "timecreated": "2026-11-24T08:00:01Z"}),
            now,
        )
        .unwrap_err();
    assert!(matches!(wrong, EventError::WrongType { .. }));
    assert!(wrong.to_string().contains("'hot'"), "{wrong}");
    let unknown = e.record("other", &json!({}), now).unwrap_err();
    assert!(unknown.to_string().contains("reads: events"), "{unknown}");
    // nothing of the above counted
    e.record(
        "events",
        &json!({"temp": 3, "timecreated": "2026-11-24T08:00:02Z"}),
        now,
    )
    .unwrap();
    let out = e.flush();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].row["a"], 3.0);
}

#[test]
fn timestamp_forms() {
    let mut e = engine("SELECT COUNT(*) AS n INTO o FROM events TIMESTAMP BY ts GROUP BY TumblingWindow(minute, 1)");
    let arrival = at("2026-11-24T08:05:30Z");
    for ts in [
        json!("2026-11-24T08:05:29Z"),
        json!("2026-11-24T08:05:29.1234567Z"),
        json!("2026-11-24T09:05:29+01:00"),
        json!("2026-11-24T08:05:29"),
        json!("2026-11-24 08:05:29.5"),
        json!("11/24/2026 08:05:29"),
        json!("11/24/2026 8:05:29 AM"),
        json!(1_795_507_529_000i64),
    ] {
        e.record("events", &json!({"ts": ts}), arrival).unwrap();
    }
    let out = e.flush();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].row["n"], 8);
    assert_eq!(
        stream_query::format_timestamp(out[0].timestamp),
        "2026-11-24T08:06:00.0000000Z"
    );
}

#[test]
fn where_case_cast_and_nested_fields() {
    let mut e = engine(
        "-- classify readings
         SELECT [device id] AS device, body.reading.temp AS temp,
                CASE WHEN CAST(body.reading.temp AS float) >= 38.0 THEN 'fever' ELSE 'normal' END AS state,
                TRY_CAST(body.note AS bigint) AS note
         INTO o FROM events /* every reading */ WHERE body.reading.temp IS NOT NULL AND [device id] LIKE 'esp%'",
    );
    let now = at("2026-11-24T08:00:00Z");
    let mut out = Vec::new();
    for ev in [
        json!({"device id": "esp1", "Body": {"Reading": {"Temp": "38.5"}, "note": "x"}}),
        json!({"device id": "esp2", "body": {"reading": {"temp": 36.6}, "note": "7"}}),
        json!({"device id": "esp3", "body": {}}),
        json!({"device id": "pc1", "body": {"reading": {"temp": 40}}}),
    ] {
        out.extend(e.record("events", &ev, now).unwrap());
    }
    let rows: Vec<Value> = out.into_iter().map(|r| Value::Object(r.row)).collect();
    assert_eq!(
        rows,
        vec![
            json!({"device": "esp1", "temp": "38.5", "state": "fever", "note": null}),
            json!({"device": "esp2", "temp": 36.6, "state": "normal", "note": 7}),
        ]
    );
}

#[test]
fn steps_feed_statements() {
    let mut e = engine(
        "WITH readings AS (SELECT deviceId, temp FROM temperature TIMESTAMP BY t WHERE temp > 0),
              perMinute AS (SELECT deviceId, AVG(temp) AS avgTemp FROM readings GROUP BY deviceId, TumblingWindow(minute, 1))
         SELECT deviceId, avgTemp INTO AvgTemp FROM perMinute;
         SELECT deviceId, avgTemp, System.Timestamp() AS at INTO FeverAlert FROM perMinute WHERE avgTemp >= 38.0",
    );
    let mut out = Vec::new();
    for (d, temp, t) in [
        ("a", 37.0, "08:00:10"),
        ("b", 39.0, "08:00:20"),
        ("a", -1.0, "08:00:30"),
        ("b", 38.0, "08:00:40"),
        ("a", 36.0, "08:01:10"),
    ] {
        let ts = format!("2026-11-24T{t}Z");
        out.extend(
            e.record(
                "temperature",
                &json!({"deviceId": d, "temp": temp, "t": ts}),
                at(&ts),
            )
            .unwrap(),
        );
    }
    // the 08:01 window is still open; the 08:00 window closed when 08:01:10 arrived
    let got: Vec<(String, Value)> = out
        .iter()
        .map(|r| (r.output.clone(), Value::Object(r.row.clone())))
        .collect();
    assert_eq!(
        got,
        vec![
            ("AvgTemp".into(), json!({"deviceId": "a", "avgTemp": 37.0})),
            ("AvgTemp".into(), json!({"deviceId": "b", "avgTemp": 38.5})),
            (
                "FeverAlert".into(),
                json!({"deviceId": "b", "avgTemp": 38.5, "at": "2026-11-24T08:01:00.0000000Z"})
            ),
        ]
    );
    let rest = e.flush();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].row["avgTemp"], 36.0);
}

#[test]
fn over_gives_each_device_its_own_timeline() {
    // device b's clock is 30 s behind; with OVER its events are not out of order
    let q = "SELECT deviceId, COUNT(*) AS n INTO o FROM events TIMESTAMP BY t OVER deviceId GROUP BY deviceId, TumblingWindow(minute, 1)";
    let mut e = Engine::new(
        Query::parse(q).unwrap(),
        EventPolicy {
            late_arrival_tolerance: std::time::Duration::from_secs(60),
            ..EventPolicy::default()
        },
    );
    let arrival = at("2026-11-24T08:00:50Z");
    for (d, t) in [
        ("a", "08:00:40"),
        ("b", "08:00:10"),
        ("a", "08:00:45"),
        ("b", "08:00:15"),
    ] {
        e.record(
            "events",
            &json!({"deviceId": d, "t": format!("2026-11-24T{t}Z")}),
            arrival,
        )
        .unwrap();
    }
    let out = e.flush();
    let got: Vec<(Value, String)> = out
        .iter()
        .map(|r| {
            (
                Value::Object(r.row.clone()),
                stream_query::format_timestamp(r.timestamp),
            )
        })
        .collect();
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|g| g.0["n"] == 2 && g.1 == "2026-11-24T08:01:00.0000000Z"),
        "{got:?}"
    );
}

#[test]
fn checkpoint_restore_continues_exactly() {
    let q = "SELECT deviceId, AVG(temp) AS a, COUNT(DISTINCT temp) AS d INTO o FROM events TIMESTAMP BY t GROUP BY deviceId, HoppingWindow(second, 20, 10)";
    let evs: Vec<(Value, DateTime<Utc>)> = (0..40)
        .map(|i| {
            let t = at("2026-11-24T08:00:00Z") + chrono::Duration::seconds(i * 2);
            (
                json!({"deviceId": format!("d{}", i % 3), "temp": 36 + i % 4, "t": t.to_rfc3339()}),
                t,
            )
        })
        .collect();
    let mut whole = engine(q);
    let mut expected = Vec::new();
    for (ev, t) in &evs {
        expected.extend(whole.record("events", ev, *t).unwrap());
    }
    expected.extend(whole.flush());

    let mut first = engine(q);
    let mut got = Vec::new();
    for (ev, t) in &evs[..17] {
        got.extend(first.record("events", ev, *t).unwrap());
    }
    let cp = first.checkpoint();
    let text = serde_json::to_string(&cp).unwrap();
    let cp: Value = serde_json::from_str(&text).unwrap();
    let mut second =
        Engine::restore(Query::parse(q).unwrap(), EventPolicy::default(), &cp).unwrap();
    for (ev, t) in &evs[17..] {
        got.extend(second.record("events", ev, *t).unwrap());
    }
    got.extend(second.flush());
    assert_eq!(got, expected);
    assert!(expected.len() > 10);

    let other =
        Query::parse("SELECT COUNT(*) INTO o FROM events GROUP BY TumblingWindow(second, 1)")
            .unwrap();
    assert_eq!(
        Engine::restore(other, EventPolicy::default(), &cp).unwrap_err(),
        RestoreError::QueryChanged
    );
    let q2 = Query::parse(q).unwrap();
    assert!(matches!(
        Engine::restore(q2, EventPolicy::default(), &json!({"x": 1})),
        Err(RestoreError::Malformed(_))
    ));
}

#[test]
fn policy_json_has_documented_defaults_and_rejects_unknown_fields() {
    let p: EventPolicy = serde_json::from_value(json!({})).unwrap();
    assert_eq!(p, EventPolicy::default());
    assert_eq!(
        serde_json::to_value(p).unwrap(),
        json!({"out_of_order_tolerance_secs": 0, "late_arrival_tolerance_secs": 5, "action": "Adjust", "early_arrival_limit_secs": 300})
    );
    let p: EventPolicy =
        serde_json::from_value(json!({"out_of_order_tolerance_secs": 2.5, "action": "Drop"}))
            .unwrap();
    assert_eq!(
        p.out_of_order_tolerance,
        std::time::Duration::from_millis(2500)
    );
    assert!(serde_json::from_value::<EventPolicy>(json!({"lateArrival": 3})).is_err());
    assert!(
        serde_json::from_value::<EventPolicy>(json!({"late_arrival_tolerance_secs": -1})).is_err()
    );
}

#[test]
fn bad_queries_report_line_and_column() {
    let cases = [
        ("SELECT Avg(temp INTO o FROM i", 1, 17),
        (
            "SELECT a\nINTO o\nFROM i\nGROUP BY TumblingWindow(second)",
            4,
            10,
        ),
        ("SELECT a INTO o FROM i WHERE", 1, 29),
        ("SELECT a INTO o FROM i TIMESTAMP BY t GROUP BY a", 1, 1),
        (
            "WITH s AS (SELECT a FROM i)\nSELECT a INTO o FROM s TIMESTAMP BY t",
            2,
            22,
        ),
        ("SELECT CAST(a AS money) INTO o FROM i", 1, 18),
        (
            "SELECT a INTO o FROM i GROUP BY SlidingWindow(day, 8), TumblingWindow(second, 1)",
            1,
            52,
        ),
    ];
    for (q, line, col) in cases {
        let e = Query::parse(q).unwrap_err();
        assert_eq!((e.line, e.column), (line, col), "{q:?}: {e}");
        assert!(e
            .to_string()
            .starts_with(&format!("line {line}, column {col}: ")));
    }
}

/// Found with the query_engine fuzz target's checkpoint check: an event nested 120 levels deep was
/// kept in the engine's state, and its checkpoint was then deeper than serde_json reads back
/// (128 levels), so AggregatorModule could not restore its snapshot after a restart.
#[test]
fn events_nested_deeper_than_a_checkpoint_can_hold_are_refused() {
    let nested = |levels: usize| {
        let mut a = json!(1);
        for _ in 0..levels {
            a = json!({ "b": a });
        }
        a
    };
    let query = "SELECT * INTO o FROM events TIMESTAMP BY t";
    let policy = EventPolicy {
        out_of_order_tolerance: std::time::Duration::from_secs(10),
        ..EventPolicy::default()
    };
    let mut e = Engine::new(Query::parse(query).unwrap(), policy);
    let now = at("2026-11-24T08:00:10Z");
    // the event is the first level, `a` and its objects the rest
    let deepest =
        json!({"t": "2026-11-24T08:00:10Z", "a": nested(stream_query::MAX_EVENT_NESTING - 1)});
    assert!(e.record("events", &deepest, now).is_ok());
    for levels in [stream_query::MAX_EVENT_NESTING, 120] {
        let deep = json!({"t": "2026-11-24T08:00:10Z", "a": nested(levels)});
        let err = e.record("events", &deep, now).unwrap_err();
        assert_eq!(err, EventError::TooDeep { max: 64 });
        assert!(err.to_string().contains("more than 64 levels"), "{err}");
    }
    let mut arrays = json!(1);
    for _ in 0..stream_query::MAX_EVENT_NESTING {
        arrays = json!([arrays]);
    }
    let arrays = json!({"t": "2026-11-24T08:00:10Z", "a": arrays});
    assert!(e.record("events", &arrays, now).is_err());
    // what was kept still makes a checkpoint that reads back and restores
    let text = serde_json::to_string(&e.checkpoint()).unwrap();
    let back: Value = serde_json::from_str(&text).unwrap();
    assert!(Engine::restore(Query::parse(query).unwrap(), policy, &back).is_ok());
}
