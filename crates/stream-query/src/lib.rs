//! stream-query: an Azure Stream Analytics (ASA) query subset for the edge, with no IO.
//!
//! Parts:
//! - `lexer`, `parser`: query text -> syntax tree; errors carry line and column ([`QueryError`]).
//!   Keywords are case-insensitive, identifiers bare, `"quoted"` or `[bracketed]`, comments
//!   `--` and `/* */`. Expressions may nest at most 64 levels deep (parentheses, NOT, signs,
//!   operator chains, calls): deeper is an error, never a stack overflow.
//! - `plan` ([`Query`]): `WITH` steps, several `SELECT .. INTO` statements, `UNION` (keeps
//!   duplicates, as ASA's does), `JOIN`, inputs, outputs and reference data, output column
//!   names, aggregates and analytic functions pulled out of the expressions, checks (a grouped
//!   SELECT may only use group keys outside aggregates, aggregates need a window, ...).
//! - `eval`: arithmetic, comparisons, AND/OR/NOT (three-valued), CASE, `IS [NOT] NULL`, LIKE,
//!   BETWEEN, IN, CAST/TRY_CAST (bigint, float, nvarchar(max), datetime, bit, record, array),
//!   math (ABS CEILING FLOOR ROUND POWER SQRT SQUARE EXP LOG SIGN), string (LEN LOWER UPPER
//!   SUBSTRING CONCAT CHARINDEX REPLACE LTRIM RTRIM TRIM LEFT RIGHT REVERSE PATINDEX), date
//!   (DATEADD DATEDIFF DATEPART DAY MONTH YEAR DATETIMEFROMPARTS), COALESCE,
//!   GetRecordPropertyValue, GetArrayElement, GetArrayLength, `System.Timestamp()`. Field lookup
//!   is case-insensitive (exact match first); `a.b` is nested; `a.b.*` selects a record's fields.
//!   Two ISO 8601 date-times written differently compare (and group) as the same time.
//! - `agg`: AVG, COUNT(*), COUNT(x), COUNT(DISTINCT x), MIN, MAX, SUM, STDEV, STDEVP, VAR,
//!   VARP, TopOne() OVER (ORDER BY ..), Percentile_Cont(p) and Percentile_Disc(p) OVER (ORDER BY
//!   ..) (or WITHIN GROUP), Collect([x]), CollectTop(n [, x]) OVER (ORDER BY ..) (an array of
//!   `{"rank", "value"}`, rank from 1, ties in arrival order).
//! - `analytic` and `anomaly`: LAG, LAST, ISFIRST, AnomalyDetection_SpikeAndDip and
//!   AnomalyDetection_ChangePoint with `OVER ([PARTITION BY ..] [LIMIT DURATION(unit, n)] [WHEN
//!   ..])`, evaluated per event in event-time order before WHERE (see those modules for the
//!   exact rules and the anomaly algorithms).
//! - `engine` ([`Engine`]): Tumbling/Hopping/Sliding/Session windows (short and
//!   `Duration`/`Hop`/`Offset`/`Timeout`/`MaxDuration` forms, units day dd d, hour hh,
//!   minute mi n, second ss s, millisecond ms, microsecond mcs), snapshot windows
//!   (`GROUP BY System.Timestamp()`), ASA's event-ordering policy ([`EventPolicy`]),
//!   `TIMESTAMP BY .. OVER`, watermarks, JOINs, `CROSS/OUTER APPLY`, reference data
//!   ([`Engine::set_reference`]), checkpoint/restore.
//!
//! Semantics (as ASA): windows are `(start, end]`, aligned to the epoch (plus the offset);
//! `System.Timestamp()` of a window row is the window end; empty windows give nothing; sliding
//! windows emit only when an event enters or leaves; a session ends `timeout` after its last
//! event or at a max-duration check point (multiples of the maximum duration), and without
//! `OVER (PARTITION BY ..)` one session timeline spans the whole input (GROUP BY keys only split
//! its rows). Aggregates ignore nulls except COUNT(*). An event whose time is more than the
//! early-arrival limit ahead of its arrival is dropped and moves no watermark.
//!
//! JOINs: `FROM a [x] [TIMESTAMP BY ..] {INNER | LEFT [OUTER]} JOIN b [y] [TIMESTAMP BY ..] ON
//! ..`, one or more in a chain. With a time bound in ON (`DATEDIFF(unit, x, y) BETWEEN lo AND
//! hi`, or compared with `<=`, `<`, `>=`, `>`, `=`; a lone upper bound means from 0) both sides
//! are streams, each with its own event time and watermark; the bound is elapsed time, `y`'s
//! time minus `x`'s, inclusive. A match is timestamped at the later of the two events; an
//! unmatched left event of a LEFT OUTER JOIN comes out with NULL for the right side at its time
//! plus the upper bound, once the right side's watermark has passed that. `x.k = y.k` parts of
//! ON are matched through an index. Without a time bound the right side is reference data
//! ([`Query::references`], [`Engine::set_reference`]), matched when the left event arrives. A
//! joined row holds each source under its name (`x.field`) and, for unqualified names, the
//! fields of both (the left wins a clash). In a chain (`a JOIN b .. JOIN c ..`) the left side of a
//! later JOIN is the earlier JOIN's rows, timestamped at the later of their sources: a DATEDIFF
//! that names `a` or `b` against `c` measures from that time. An ON that cannot be evaluated for
//! a pair (a type error) is no match for that pair, with a warning; no row is lost. A bound
//! outside 7 days, or a DATEDIFF of the two sides in another form, is a planning error. SELECT * is refused in a JOIN (as in ASA); `x.*` is
//! one side's fields.
//!
//! `CROSS APPLY GetArrayElements(a) AS e` gives a row per element with `e.ArrayIndex` (from 0)
//! and `e.ArrayValue`; `GetRecordProperties(r)` gives `e.PropertyName`/`e.PropertyValue`;
//! OUTER APPLY keeps an event without elements with `e` NULL. At most 100,000 rows per event.
//!
//! Choices where ASA is silent or we differ:
//! - Output rows: times are strings `2026-11-24T08:01:00.0000000Z` (UTC, 7 fraction digits, ASA's
//!   form); numbers stay JSON numbers (AVG is a float, COUNT and SUM of whole numbers whole).
//!   Columns come in name order (records keep their property names sorted).
//! - Column names: alias (`AS name` or `AS 'name'`); else a field's last segment; else an
//!   unaliased function or aggregate by its lower-case name (`Avg("temp")` -> `avg`, as the
//!   seed's cloud query expects); `System.Timestamp()` -> `timestamp`; CAST -> its operand's name;
//!   else `column{N}`. HAVING may name an aggregate column by its alias (`HAVING [Count] >= 3`).
//! - `INTO` may be left out: the output is then called `output`. In a UNION only the first
//!   SELECT has INTO.
//! - Event time: ISO 8601 / RFC 3339 with or without zone and fraction (no zone = UTC),
//!   .NET `DateTime.ToString()` for the invariant (`11/24/2026 08:05:29`) and en-US
//!   (`11/24/2026 8:05:29 AM`) cultures (read as UTC), or a number of epoch milliseconds; years
//!   1 to 9999. Without `TIMESTAMP BY` the event time is the arrival time. `EventProcessedUtcTime`
//!   and `EventEnqueuedUtcTime`, which ASA adds to every input event, are the arrival time when
//!   the event lacks them (only added for statements that name them).
//! - A window is emitted when the watermark is past its end, so an event exactly at the end
//!   still counts; the full late-arrival policy applies on the edge too (ASA on IoT Edge lacks it).
//! - Statements with analytic functions check an event's expressions when it leaves the
//!   reorder buffer: a failing one is skipped with a warning ([`Engine::take_warnings`]) rather
//!   than refused by [`Engine::record`].
//!
//! Left out, and why:
//! - user-defined functions and aggregates (JavaScript/C#): no runtime for them on this gateway;
//! - geospatial functions (`ST_*`, `CreatePoint`...) and `REGEXMATCH`: not needed for the
//!   clinical rules and each would pull in a large dependency; LIKE and PATINDEX cover text;
//! - `GetMetadataPropertyValue`: message properties do not reach the engine (the module puts what
//!   matters in the body);
//! - `CREATE TABLE` (typed inputs): inputs are JSON without a declared schema; CAST instead;
//! - `MATCH_RECOGNIZE`, `SELECT DISTINCT`/`TOP`, `RIGHT`/`FULL JOIN` (ASA has none), comma joins,
//!   `GROUP BY` without a window, `Collect`/`CollectTop` as analytic functions (with `OVER
//!   (PARTITION BY .. LIMIT DURATION ..)`), `LAG(*)`, LIKE character classes (`[a-z]`), and the
//!   retired `AnomalyDetection` function. Each is refused with an error that says so.

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
mod event;
mod lexer;
mod parser;
mod plan;
mod value;

pub use engine::{Engine, EngineStats, EventPolicy, OrderingAction, OutputRow, MAX_EVENT_NESTING};
pub use error::{EventError, QueryError, ReferenceError, RestoreError};
pub use plan::Query;

/// Read an event from JSON text keeping only `fields` of the top-level object (as
/// [`Query::fields_read`] gives them; `None` keeps everything). The fields left out are skipped by
/// the JSON reader, not built and dropped; the text is still checked as a whole (a syntax error
/// anywhere is an error): it accepts and refuses exactly the texts a whole read does (numbers in
/// range, nesting at most 128 levels deep, serde_json's limit, in every field).
pub fn parse_event(
    text: &str,
    fields: Option<&[String]>,
) -> Result<serde_json::Value, serde_json::Error> {
    event::parse(text, fields)
}

/// Format a time the way output rows carry it (`2026-11-24T08:01:00.0000000Z`).
pub fn format_timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    value::format_time(t.timestamp_micros())
}

/// Parse an event time as `TIMESTAMP BY` does: ISO 8601 / RFC 3339 (no zone = UTC), .NET
/// `DateTime.ToString()` for the invariant and en-US cultures, or epoch milliseconds.
pub fn parse_timestamp(v: &serde_json::Value) -> Option<chrono::DateTime<chrono::Utc>> {
    value::parse_time_val(&value::Val::from_json(v)).map(value::to_datetime)
}
