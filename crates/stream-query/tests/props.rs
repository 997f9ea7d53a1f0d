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
