//! The Stream Analytics query parser and planner (`stream_query::Query::parse`) on arbitrary
//! text (AggregatorModule's twin property `query`, `aggregator replay --query`).
//!
//! Checks: no panic, no stack overflow (expressions nest at most 64 levels; deeper is an error
//! with line and column), and an error's line and column point into the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match stream_query::Query::parse(text) {
        Ok(q) => {
            let _ = (q.inputs(), q.outputs(), q.references());
            assert_eq!(q.text(), text);
        }
        Err(e) => {
            let lines = text.split('\n').count();
            assert!(
                e.line >= 1 && e.line <= lines.max(1),
                "error at line {} of a {lines}-line text: {e}",
                e.line
            );
            assert!(e.column >= 1, "error at column {}: {e}", e.column);
            let _ = e.to_string();
        }
    }
});
