//! Property tests: the parser never panics, and tumbling windows account for every accepted event.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::json;
use stream_query::{Engine, EventPolicy, Query};

proptest! {
    #[test]
    fn parser_never_panics(text in "\\PC{0,200}") {
        let _ = Query::parse(&text);
    }

    #[test]
    fn parser_never_panics_on_query_like_text(
        words in proptest::collection::vec(
            prop_oneof![
                Just("SELECT"), Just("FROM"), Just("INTO"), Just("WHERE"), Just("GROUP"), Just("BY"), Just("HAVING"),
                Just("WITH"), Just("AS"), Just("("), Just(")"), Just(","), Just("*"), Just("'x'"), Just("\"q\""), Just("[b]"),
                Just("TumblingWindow"), Just("SlidingWindow"), Just("Duration"), Just("second"), Just("60"), Just("-1"),
                Just("COUNT"), Just("AVG"), Just("TopOne"), Just("OVER"), Just("ORDER"), Just("CASE"), Just("WHEN"),
                Just("THEN"), Just("END"), Just("CAST"), Just("System.Timestamp()"), Just("TIMESTAMP"), Just("a.b"),
                Just("/*"), Just("--"), Just("\n"), Just("IS"), Just("NOT"), Just("NULL"), Just(">="), Just("AND"),
            ],
            0..40,
        )
    ) {
        let _ = Query::parse(&words.join(" "));
    }

    #[test]
    fn tumbling_counts_add_up_to_accepted_events(
        offsets in proptest::collection::vec((0i64..600_000, 0i64..20_000, 0usize..5), 1..200),
        size_s in 1i64..90,
        ooo_s in 0u64..10,
    ) {
        let q = format!(
            "SELECT dev, COUNT(*) AS n INTO o FROM events TIMESTAMP BY t GROUP BY dev, TumblingWindow(second, {size_s})"
        );
        let policy = EventPolicy { out_of_order_tolerance: std::time::Duration::from_secs(ooo_s), ..EventPolicy::default() };
        let mut e = Engine::new(Query::parse(&q).unwrap(), policy);
        let base: DateTime<Utc> = "2026-11-24T08:00:00Z".parse().unwrap();
        let mut rows = Vec::new();
        let mut accepted = 0i64;
        let mut last_arrival = base;
        for (event_ms, delay_ms, dev) in &offsets {
            let t = base + chrono::Duration::milliseconds(*event_ms);
            let arrival = (t + chrono::Duration::milliseconds(*delay_ms)).max(last_arrival);
            last_arrival = arrival;
            let ev = json!({"dev": dev, "t": t.to_rfc3339()});
            if let Ok(r) = e.record("events", &ev, arrival) {
                accepted += 1;
                rows.extend(r);
            }
        }
        rows.extend(e.flush());
        let total: i64 = rows.iter().map(|r| r.row["n"].as_i64().unwrap_or(0)).sum();
        prop_assert_eq!(total, accepted);
        prop_assert_eq!(accepted, offsets.len() as i64, "Adjust accepts everything");
        // windows are aligned and a window's rows are emitted in order of window end
        for w in rows.windows(2) {
            prop_assert!(w[0].timestamp <= w[1].timestamp);
        }
        for r in &rows {
            prop_assert_eq!(r.timestamp.timestamp() % size_s, 0);
        }
    }
}

fn base() -> DateTime<Utc> {
    "2026-11-24T08:00:00Z".parse().unwrap()
}

/// Sorted event times in whole seconds after `base()`, each with a device number.
fn sorted(mut v: Vec<(i64, usize)>) -> Vec<(i64, usize)> {
    v.sort();
    v
}

proptest! {
    #[test]
    fn sliding_matches_brute_force(
        evs in proptest::collection::vec((0i64..300, 0usize..3), 1..60).prop_map(sorted),
        size in 1i64..40,
    ) {
        let q = format!("SELECT dev, COUNT(*) AS n INTO o FROM events TIMESTAMP BY t GROUP BY dev, SlidingWindow(second, {size})");
        let mut e = Engine::new(Query::parse(&q).unwrap(), EventPolicy::default());
        let mut rows = Vec::new();
        for (s, dev) in &evs {
            let t = base() + chrono::Duration::seconds(*s);
            rows.extend(e.record("events", &json!({"dev": dev, "t": t.to_rfc3339()}), t).unwrap());
        }
        rows.extend(e.flush());
        let got: Vec<(i64, i64, i64)> = rows
            .iter()
            .map(|r| ((r.timestamp - base()).num_seconds(), r.row["dev"].as_i64().unwrap(), r.row["n"].as_i64().unwrap()))
            .collect();
        // brute force: content changes at every t and t + size; output where content is non-empty
        let mut want = Vec::new();
        let mut points: Vec<(i64, usize)> = evs.iter().flat_map(|(t, d)| [(*t, *d), (*t + size, *d)]).collect();
        points.sort_by_key(|(t, d)| (*t, *d));
        points.dedup();
        for (p, d) in points {
            let n = evs.iter().filter(|(t, dev)| *dev == d && *t > p - size && *t <= p).count() as i64;
            if n > 0 {
                want.push((p, d as i64, n));
            }
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn hopping_matches_brute_force(
        evs in proptest::collection::vec((0i64..300, 0usize..1), 1..60).prop_map(sorted),
        hop in 1i64..20,
        mult in 1i64..4,
    ) {
        let size = hop * mult;
        let q = format!("SELECT SUM(v) AS s INTO o FROM events TIMESTAMP BY t GROUP BY HoppingWindow(second, {size}, {hop})");
        let mut e = Engine::new(Query::parse(&q).unwrap(), EventPolicy::default());
        let mut rows = Vec::new();
        for (s, _) in &evs {
            let t = base() + chrono::Duration::seconds(*s);
            rows.extend(e.record("events", &json!({"v": s, "t": t.to_rfc3339()}), t).unwrap());
        }
        rows.extend(e.flush());
        let got: Vec<(i64, i64)> = rows.iter().map(|r| ((r.timestamp - base()).num_seconds(), r.row["s"].as_i64().unwrap())).collect();
        let mut want = Vec::new();
        let last = evs.iter().map(|e| e.0).max().unwrap_or(0) + size + hop;
        // windows align to the epoch, not to base()
        let mut end = -base().timestamp().rem_euclid(hop);
        while end <= last {
            let s: Vec<i64> = evs.iter().map(|e| e.0).filter(|t| *t > end - size && *t <= end).collect();
            if !s.is_empty() {
                want.push((end, s.iter().sum()));
            }
            end += hop;
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn checkpoint_anywhere_gives_the_same_rows(
        evs in proptest::collection::vec((0i64..400_000, 0i64..9_000, 0usize..4), 1..80),
        split in 0usize..80,
        window in 0usize..4,
    ) {
        let w = ["TumblingWindow(second, 30)", "HoppingWindow(second, 30, 10)", "SlidingWindow(second, 20)", "SessionWindow(second, 15, 60)"][window];
        let q = format!("SELECT dev, COUNT(*) AS n, AVG(v) AS a INTO o FROM events TIMESTAMP BY t OVER dev GROUP BY dev, {w}");
        let policy = EventPolicy { out_of_order_tolerance: std::time::Duration::from_secs(3), ..EventPolicy::default() };
        let items: Vec<(serde_json::Value, DateTime<Utc>)> = evs
            .iter()
            .scan(base(), |last, (ms, delay, dev)| {
                let t = base() + chrono::Duration::milliseconds(*ms);
                let arrival = (t + chrono::Duration::milliseconds(*delay)).max(*last);
                *last = arrival;
                Some((json!({"dev": dev, "v": ms % 100, "t": t.to_rfc3339()}), arrival))
            })
            .collect();
        let run = |split: usize| {
            let mut e = Engine::new(Query::parse(&q).unwrap(), policy);
            let mut rows = Vec::new();
            for (i, (ev, a)) in items.iter().enumerate() {
                if i == split {
                    let cp = serde_json::to_string(&e.checkpoint()).unwrap();
                    let cp: serde_json::Value = serde_json::from_str(&cp).unwrap();
                    e = Engine::restore(Query::parse(&q).unwrap(), policy, &cp).unwrap();
                }
                rows.extend(e.record("events", ev, *a).unwrap());
            }
            rows.extend(e.flush());
            rows
        };
        prop_assert_eq!(run(usize::MAX), run(split));
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
        Just(json!("2026-11-24T08:00:01Z")),
        Just(json!("11/24/2026 8:00:02 AM")),
        Just(json!(1_795_507_203_000i64)),
        Just(json!(i64::MAX)),
        Just(json!(-1e300)),
        Just(json!(1.7e308)),
        Just(json!(-1.7e308)),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-c]", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const FUZZ_QUERIES: [&str; 6] = [
    "SELECT a, b.c, CAST(a AS bigint) AS i, TRY_CAST(b AS datetime) AS d, SUBSTRING(CAST(c AS nvarchar(max)), a, 2) AS s,
            CASE WHEN a > 1 THEN 'x' WHEN a IS NULL THEN NULL ELSE a END AS k, DATEADD(day, a, t) AS da,
            DATEDIFF(ms, t, b) AS dd, a LIKE '%a_' AS l, ABS(a) + ROUND(b, a) - POWER(a, b) AS m, a / b AS q, a % b AS r,
            GetArrayElement(c, a) AS g, GetRecordPropertyValue(b, c) AS rp, CONCAT(a, b, c) AS cc, LEN(c) AS ln
     INTO o FROM events TIMESTAMP BY t WHERE a BETWEEN b AND c OR a IN (1, 'x', b)",
    "SELECT a, AVG(b) AS av, SUM(b) AS s, STDEV(b) AS sd, VARP(b) AS vp, MIN(c) AS mn, MAX(c) AS mx, COUNT(DISTINCT c) AS dc,
            TopOne() OVER (ORDER BY c DESC, b) AS top, Percentile_Cont(0.9) OVER (ORDER BY b) AS p
     INTO o FROM events TIMESTAMP BY t GROUP BY a, HoppingWindow(second, 10, 3) HAVING COUNT(*) > 0",
    "SELECT a, COUNT(*) AS n INTO o FROM events TIMESTAMP BY t OVER a GROUP BY a, SlidingWindow(ms, 1500)",
    "SELECT b, COUNT(c) AS n INTO o FROM events TIMESTAMP BY t GROUP BY b, SessionWindow(second, 2, 7)",
    "WITH s AS (SELECT a, b FROM events TIMESTAMP BY t GROUP BY a, b, System.Timestamp())
     SELECT a, AVG(b) AS av INTO o FROM s GROUP BY a, TumblingWindow(second, 5)",
    "SELECT * INTO o FROM events TIMESTAMP BY t",
];

proptest! {
    #[test]
    fn engine_never_panics_on_any_event(
        events in proptest::collection::vec((json_value(), 0i64..100_000, 0usize..6), 1..30),
        q in 0usize..FUZZ_QUERIES.len(),
        drop in any::<bool>(),
    ) {
        let policy = EventPolicy {
            action: if drop { stream_query::OrderingAction::Drop } else { stream_query::OrderingAction::Adjust },
            out_of_order_tolerance: std::time::Duration::from_secs(2),
            ..EventPolicy::default()
        };
        let mut e = Engine::new(Query::parse(FUZZ_QUERIES[q]).unwrap(), policy);
        for (i, (v, ms, shape)) in events.into_iter().enumerate() {
            let arrival = base() + chrono::Duration::milliseconds(ms);
            // mostly objects with the fields the queries use, sometimes anything at all
            let ev = match shape {
                0 => v,
                _ => json!({"a": if shape > 2 { json!(i % 3) } else { v.clone() }, "b": v.clone(), "c": v,
                            "t": (base() + chrono::Duration::milliseconds(ms - 500 * shape as i64)).to_rfc3339()}),
            };
            let _ = e.record("events", &ev, arrival);
            let _ = e.advance(arrival);
            let _ = e.next_deadline();
        }
        let cp = e.checkpoint();
        let _ = e.flush();
        let _ = e.take_warnings();
        let _ = e.stats();
        prop_assert!(Engine::restore(Query::parse(FUZZ_QUERIES[q]).unwrap(), EventPolicy::default(), &cp).is_ok());
    }
}
