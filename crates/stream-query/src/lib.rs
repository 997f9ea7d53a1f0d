//! stream-query: an Azure Stream Analytics (ASA) query subset for the edge, with no IO.
//!
//! Parts:
//! - [`lexer`](crate) / parser: query text -> syntax tree, errors with line and column ([`QueryError`]).
//! - planner ([`Query`]): inputs, outputs, WITH steps, column names, aggregates, checks.
//! - evaluator: scalar expressions, CASE, CAST/TRY_CAST, math/string/date functions.
//! - aggregates: AVG, COUNT(*), COUNT(x), COUNT(DISTINCT x), MIN, MAX, SUM, STDEV, STDEVP, VAR,
//!   VARP, TopOne() OVER (ORDER BY ..), Percentile_Cont(p) OVER (ORDER BY ..).
//! - engine ([`Engine`]): tumbling, hopping, sliding and session windows with ASA's semantics,
//!   the event-ordering policy ([`EventPolicy`]), watermarks, checkpoint/restore.
//!
//! ```
//! use stream_query::{Engine, EventPolicy, Query};
//! let q = Query::parse(r#"SELECT Avg("temp") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,60)"#).unwrap();
//! let mut e = Engine::new(q, EventPolicy::default());
//! let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
//! e.record("temperature", &serde_json::json!({"temp": 37, "timecreated": "11/24/2026 08:00:10"}), at("2026-11-24T08:00:10Z")).unwrap();
//! e.record("temperature", &serde_json::json!({"temp": 38, "timecreated": "11/24/2026 08:00:30"}), at("2026-11-24T08:00:30Z")).unwrap();
//! let rows = e.advance(at("2026-11-24T08:01:06Z"));
//! assert_eq!(rows[0].row["avg"], 37.5);
//! assert_eq!(rows[0].timestamp, at("2026-11-24T08:01:00Z"));
//! ```

mod agg;
mod ast;
mod engine;
mod error;
mod eval;
mod lexer;
mod parser;
mod plan;
mod value;

pub use engine::{Engine, EventPolicy, OrderingAction, OutputRow};
pub use error::{EventError, QueryError, RestoreError};
pub use plan::Query;

/// Format a time the way output rows carry it (`2026-11-24T08:01:00.0000000Z`).
pub fn format_timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    value::format_time(t.timestamp_micros())
}

/// Parse an event time as `TIMESTAMP BY` does: ISO 8601 / RFC 3339 (no zone = UTC), .NET
/// `DateTime.ToString()` for the invariant and en-US cultures, or epoch milliseconds.
pub fn parse_timestamp(v: &serde_json::Value) -> Option<chrono::DateTime<chrono::Utc>> {
    value::parse_time_val(&value::Val::from_json(v)).map(value::to_datetime)
}
