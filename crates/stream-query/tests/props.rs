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
