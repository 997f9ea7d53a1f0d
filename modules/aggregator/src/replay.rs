//! `aggregator replay`: runs the module's engine over a file of JSON events as fast as it can, the way
//! ASA's portal runs "Test query" on sample data. Prints one JSON line per output row,
//! `{"output": "<INTO name>", "row": {...}}`, and closes every window at the end of the input.
//!
//! Arrival time: an event's `EventEnqueuedUtcTime` field when present (ASA's name for when the event
//! reached the input); otherwise the event arrives at its own event time, never earlier than the event
//! before it in the file (so the file's order is the arrival order).

use std::io::{BufRead, Write};

use chrono::{DateTime, Utc};
use serde_json::Value;
use stream_query::{Engine, EventPolicy, Query};

use crate::AggregatorError;

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplaySummary {
    pub events: u64,
    pub rows: u64,
    /// Events the engine refused (bad timestamp, dropped by the policy, ...), each reported on stderr.
    pub rejected: u64,
}

/// Replays `input` (JSON lines) through `query` into `out`; problems with single events go to `err`.
/// `from` names the query input the events belong to (default: the query's first `FROM` name);
/// `references` gives the reference data the query JOINs, by name.
pub fn replay(
    query: Query,
    policy: EventPolicy,
    from: Option<&str>,
    references: &[(String, Vec<Value>)],
    mut input: impl BufRead,
    mut out: impl Write,
    mut err: impl Write,
) -> Result<ReplaySummary, AggregatorError> {
    let inputs = query.inputs();
    let from = match from {
        Some(f) => f.to_string(),
        None => inputs
            .first()
            .cloned()
            .ok_or_else(|| AggregatorError::Replay("the query reads no input".into()))?,
    };
    if !inputs.iter().any(|i| i.eq_ignore_ascii_case(&from)) {
        return Err(AggregatorError::Replay(format!(
            "the query has no input {from:?}; its inputs are {inputs:?} (use --from NAME)"
        )));
    }
    let io = |e: std::io::Error| AggregatorError::Replay(format!("I/O: {e}"));
    let mut engine = Engine::new(query.clone(), policy);
    for (name, rows) in references {
        engine
            .set_reference(name, rows.clone())
            .map_err(|e| AggregatorError::Replay(format!("--reference {name}: {e}")))?;
    }
    for name in query.references() {
        if engine.reference_len(&name).is_none() {
            return Err(AggregatorError::Replay(format!(
                "the query joins reference data {name:?}: give it with --reference {name}=FILE (CSV or JSON lines)"
            )));
        }
    }
    // read only the fields the query reads (and the arrival time field replay itself reads)
    let fields = query.fields_read(&from).map(|mut f| {
        f.push("eventenqueuedutctime".to_string());
        f
    });
    let mut summary = ReplaySummary::default();
    let mut last_arrival: Option<DateTime<Utc>> = None;
    // one line buffer for the whole file
    let mut line = String::new();
    for n in 0u64.. {
        line.clear();
        if input.read_line(&mut line).map_err(io)? == 0 {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        summary.events += 1;
        let event: Value = match stream_query::parse_event(&line, fields.as_deref()) {
            Ok(v) => v,
            Err(e) => {
                summary.rejected += 1;
                writeln!(err, "line {}: not JSON ({e}); skipped", n + 1).map_err(io)?;
                continue;
            }
        };
        let enqueued = event
            .get("EventEnqueuedUtcTime")
            .and_then(stream_query::parse_timestamp);
        // the engine reads the event's own time once, for this and for its windows
        let arrive = |own: Option<DateTime<Utc>>| {
            let arrival = match (enqueued, own, last_arrival) {
                (Some(t), _, _) => t,
                (None, Some(t), Some(last)) => t.max(last),
                (None, Some(t), None) => t,
                (None, None, Some(last)) => last,
                (None, None, None) => Utc::now(),
            };
            last_arrival = Some(arrival);
            arrival
        };
        match engine.record_owned_with(&from, event, arrive) {
            Ok(rows) => summary.rows += write_rows(&mut out, rows)?,
            Err(e) => {
                summary.rejected += 1;
                writeln!(err, "line {}: {e}", n + 1).map_err(io)?;
            }
        }
    }
    summary.rows += write_rows(&mut out, engine.flush())?;
    out.flush().map_err(io)?;
    Ok(summary)
}

fn write_rows(
    out: &mut impl Write,
    rows: Vec<stream_query::OutputRow>,
) -> Result<u64, AggregatorError> {
    /// One output line, serialised straight from the row (no copy into a new JSON value).
    #[derive(serde::Serialize)]
    struct Line<'a> {
        output: &'a str,
        row: &'a serde_json::Map<String, Value>,
    }
    let n = rows.len() as u64;
    let io = |e: std::io::Error| AggregatorError::Replay(format!("I/O: {e}"));
    for row in &rows {
        let line = Line {
            output: &row.output,
            row: &row.row,
        };
        serde_json::to_writer(&mut *out, &line).map_err(|e| io(e.into()))?;
        out.write_all(b"\n").map_err(io)?;
    }
    Ok(n)
}
