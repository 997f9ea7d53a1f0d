//! stream-query: an Azure Stream Analytics (ASA) query subset for the edge, with no IO.
//!
//! Parts:
//! - `lexer`, `parser`: query text -> syntax tree; errors carry line and column ([`QueryError`]).
//!   Keywords are case-insensitive, identifiers bare, `"quoted"` or `[bracketed]`, comments
//!   `--` and `/* */`.
//! - `plan` ([`Query`]): `WITH` steps, several `SELECT .. INTO` statements, inputs and outputs,
//!   output column names, aggregates pulled out of SELECT/HAVING, checks (a grouped SELECT may
//!   only use group keys outside aggregates, aggregates need a window, ...).
//! - `eval`: arithmetic, comparisons, AND/OR/NOT (three-valued), CASE, `IS [NOT] NULL`, LIKE,
//!   BETWEEN, IN, CAST/TRY_CAST (bigint, float, nvarchar(max), datetime, bit, record, array),
//!   math (ABS CEILING FLOOR ROUND POWER SQRT SQUARE EXP LOG SIGN), string (LEN LOWER UPPER
//!   SUBSTRING CONCAT CHARINDEX REPLACE LTRIM RTRIM TRIM), date (DATEADD DATEDIFF DATEPART DAY
//!   MONTH YEAR), COALESCE, GetRecordPropertyValue, GetArrayElement, GetArrayLength,
//!   `System.Timestamp()`. Field lookup is case-insensitive (exact match first); `a.b` is nested.
//! - `agg`: AVG, COUNT(*), COUNT(x), COUNT(DISTINCT x), MIN, MAX, SUM, STDEV, STDEVP, VAR,
//!   VARP, TopOne() OVER (ORDER BY ..), Percentile_Cont(p) OVER (ORDER BY ..) (or WITHIN GROUP).
//! - `engine` ([`Engine`]): Tumbling/Hopping/Sliding/Session windows (short and
//!   `Duration`/`Hop`/`Offset`/`Timeout`/`MaxDuration` forms, units day dd d, hour hh,
//!   minute mi n, second ss s, millisecond ms, microsecond mcs), snapshot windows
//!   (`GROUP BY System.Timestamp()`), ASA's event-ordering policy ([`EventPolicy`]),
//!   `TIMESTAMP BY .. OVER`, watermarks, checkpoint/restore. Window state is a `BTreeMap` keyed
//!   by window start, then group key.
//!
//! Semantics (as ASA): windows are `(start, end]`, aligned to the epoch (plus the offset);
//! `System.Timestamp()` of a window row is the window end; empty windows give nothing; sliding
//! windows emit only when an event enters or leaves; a session ends `timeout` after its last
//! event or at a max-duration check point (multiples of the maximum duration). Aggregates ignore
//! nulls except COUNT(*).
//!
//! Choices where ASA is silent or we differ:
//! - Output rows: times are strings `2026-11-24T08:01:00.0000000Z` (UTC, 7 fraction digits, ASA's
//!   form); numbers stay JSON numbers (AVG is a float, COUNT and SUM of whole numbers whole).
//! - Column names: alias; else a field's last segment; else an unaliased function or aggregate
//!   by its lower-case name (`Avg("temp")` -> `avg`, as the seed's cloud query expects);
//!   `System.Timestamp()` -> `timestamp`; CAST -> its operand's name; else `column{N}`. HAVING may
//!   name an aggregate column by its alias (`HAVING [Count] >= 3`).
//! - `INTO` may be left out: the output is then called `output`.
//! - Event time: ISO 8601 / RFC 3339 with or without zone and fraction (no zone = UTC),
//!   .NET `DateTime.ToString()` for the invariant (`11/24/2026 08:05:29`) and en-US
//!   (`11/24/2026 8:05:29 AM`) cultures (read as UTC), or a number of epoch milliseconds; years
//!   1 to 9999. Without `TIMESTAMP BY` the event time is the arrival time. `EventProcessedUtcTime`
//!   and `EventEnqueuedUtcTime`, which ASA adds to every input event, are the arrival time when
//!   the event lacks them (only added for statements that name them).
//! - A window is emitted when the watermark is past its end, so an event exactly at the end
//!   still counts; the full late-arrival policy applies on the edge too (ASA on IoT Edge lacks it).
//! - Not supported: JOIN, UNION, reference data, user-defined functions, SELECT DISTINCT/TOP,
//!   LIKE character classes (`[a-z]`), LAG/ISFIRST/LAST and other analytic functions, GROUP BY
//!   without a window.
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
mod analytic;
mod anomaly;
mod ast;
mod engine;
mod error;
mod eval;
mod lexer;
mod parser;
mod plan;
mod value;

pub use engine::{Engine, EngineStats, EventPolicy, OrderingAction, OutputRow};
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
