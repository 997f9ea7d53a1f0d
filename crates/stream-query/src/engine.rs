//! The synchronous windowing engine: [`Engine::record`] one event, [`Engine::advance`] the wall
//! clock, [`Engine::flush`] at the end of a stream, [`Engine::checkpoint`]/[`Engine::restore`].
//!
//! Time handling (ASA's event-ordering policy, per statement that has `TIMESTAMP BY`):
//! 1. early arrival: event time more than `early_arrival_limit` after the arrival time -> dropped
//!    (whatever the action, as ASA does), so it moves no watermark;
//! 2. late arrival: event time before arrival - `late_arrival_tolerance` -> adjusted to that
//!    bound or dropped;
//! 3. out of order: event time before the watermark -> adjusted to the watermark or dropped.
//!
//! The watermark of a timeline is `max(largest event time - out_of_order_tolerance,
//! latest arrival - late_arrival_tolerance)`, never decreasing: no later event can be placed
//! before it, so with no input at all it still advances with the wall clock (via `advance`) and
//! a silent device's last window closes. Events wait in a reorder buffer until the watermark
//! passes them and are then applied in time order; a window `(start, end]` is emitted once the
//! watermark is past its end (`end < watermark`), so an event exactly at `end` still counts.
//! Without `TIMESTAMP BY` the event time is the arrival time. `TIMESTAMP BY .. OVER key` gives
//! each key its own out-of-order timeline (late arrival stays global, as in ASA).
//!
//! Statements that read a `WITH` step take the step's rows with their `System.Timestamp()` as
//! event time and the step's watermark as their own.

use crate::agg::{prepare, Acc, AggIn};
use crate::analytic::{self, AnState};
use crate::ast::JoinKind;
use crate::ast::{Expr, Window};
use crate::error::{EventError, ReferenceError, RestoreError};
use crate::eval::{eval, show, truth, Ctx};
use crate::plan::{timestamp_of, JoinSpec, OutItem, Query, Sink, Source, Stmt, ARRIVAL_FIELDS};
use crate::value::{format_time, from_datetime, push_key_of_json, to_datetime, Micros, Val};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// An event or row, shared (not copied) between the reorder buffer, the groups that keep it as
/// their representative row, and the statements that read it.
type Row = Arc<Map<String, Value>>;

/// What to do with an event outside the tolerances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum OrderingAction {
    /// Move the event's time (System.Timestamp(), not its payload) to the nearest allowed time.
    #[default]
    Adjust,
    /// Do not process the event; `record` returns [`EventError::Dropped`] with the reason.
    Drop,
}

/// ASA's event-ordering policy. JSON form (every field optional, defaults shown):
/// `{"out_of_order_tolerance_secs": 0, "late_arrival_tolerance_secs": 5, "action": "Adjust",
///   "early_arrival_limit_secs": 300}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventPolicy {
    /// Events up to this much older than the newest event time are reordered; older ones are
    /// adjusted or dropped. Seconds in JSON (`out_of_order_tolerance_secs`); default 0 s.
    #[serde(rename = "out_of_order_tolerance_secs", with = "secs")]
    pub out_of_order_tolerance: Duration,
    /// Events whose time is more than this before their arrival time are adjusted or dropped.
    /// Seconds in JSON (`late_arrival_tolerance_secs`); default 5 s.
    #[serde(rename = "late_arrival_tolerance_secs", with = "secs")]
    pub late_arrival_tolerance: Duration,
    /// Adjust (default) or Drop.
    pub action: OrderingAction,
    /// Events whose time is more than this after their arrival time are dropped (always, as
    /// ASA does). Seconds in JSON (`early_arrival_limit_secs`); default 300 s (5 min).
    #[serde(rename = "early_arrival_limit_secs", with = "secs")]
    pub early_arrival_limit: Duration,
}

impl Default for EventPolicy {
    fn default() -> Self {
        EventPolicy {
            out_of_order_tolerance: Duration::from_secs(0),
            late_arrival_tolerance: Duration::from_secs(5),
            action: OrderingAction::Adjust,
            early_arrival_limit: Duration::from_secs(300),
        }
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_nanos() == 0 {
            s.serialize_u64(d.as_secs())
        } else {
            s.serialize_f64(d.as_secs_f64())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let f = f64::deserialize(d)?;
        if !(0.0..=31_536_000.0).contains(&f) {
            return Err(serde::de::Error::custom(
                "a tolerance must be between 0 and 31536000 seconds (one year)",
            ));
        }
        Ok(Duration::from_secs_f64(f))
    }
}

fn micros(d: Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

/// What the engine holds (see [`Engine::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct EngineStats {
    /// Open (window, group) pairs: tumbling/hopping/snapshot groups, sliding groups, sessions.
    pub open_groups: usize,
    /// Events waiting in reorder buffers for the watermark.
    pub buffered_events: usize,
    /// The lowest watermark over the statements that read inputs (None before any event).
    pub watermark: Option<DateTime<Utc>>,
}

/// One output row: `output` is the statement's INTO name, `timestamp` its `System.Timestamp()`
/// (the window end for aggregates). In `row`, times are strings like `2026-11-24T08:01:00.0000000Z`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRow {
    pub output: String,
    pub row: Map<String, Value>,
    pub timestamp: DateTime<Utc>,
}

impl OutputRow {
    /// `{"output": .., "row": {..}}`, the `aggregator replay` line format.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"output": self.output, "row": self.row})
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pending {
    t: Micros,
    seq: u64,
    key: String,
    row: Row,
    ins: Vec<AggIn>,
    /// The statement has analytic functions: `row` is the event as it came, to be evaluated
    /// when it leaves the buffer, in event-time order.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    raw: bool,
    /// Session windows: the partition key (empty without `OVER (PARTITION BY ..)`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    part: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Group {
    rep: Row,
    accs: Vec<Acc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
struct Slide {
    events: VecDeque<(Micros, Vec<AggIn>, Row)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session {
    start: Micros,
    last: Micros,
    end_max: Micros,
    /// The session's groups by group key.
    #[serde(default)]
    groups: BTreeMap<String, Group>,
    /// Checkpoints before sessions were split by partition key only held one group per
    /// session (keyed by group key); such a session is read as a session with that group.
    #[serde(default, skip_serializing)]
    group: Option<Group>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Timeline {
    max_event: Option<Micros>,
    watermark: Micros,
    /// Reorder buffer, sorted by (t, seq).
    pending: Vec<Pending>,
    /// Tumbling/hopping windows by window start, then group key.
    /// (Hashed: a group is found in one probe; closed windows' rows are sorted by key.)
    fixed: BTreeMap<Micros, HashMap<String, Group>>,
    sliding: BTreeMap<String, Slide>,
    /// Sliding windows: the times at which a group's content changes, with those groups.
    slide_points: BTreeMap<Micros, BTreeSet<String>>,
    sessions: BTreeMap<String, Session>,
    /// This timeline's entry in its statement's `due` index.
    due: Option<Micros>,
    /// State of the statement's analytic functions (LAG, LAST, ISFIRST, anomaly detection).
    #[serde(default, skip_serializing_if = "AnState::is_empty")]
    an: AnState,
}

impl Timeline {
    fn new(watermark: Micros) -> Timeline {
        Timeline {
            max_event: None,
            watermark,
            pending: Vec::new(),
            fixed: BTreeMap::new(),
            sliding: BTreeMap::new(),
            slide_points: BTreeMap::new(),
            sessions: BTreeMap::new(),
            due: None,
            an: AnState::default(),
        }
    }

    /// The watermark value this timeline has work at: something is due once its watermark is
    /// above the returned time.
    fn due_at(&self, s: &Stmt) -> Option<Micros> {
        let pending = self
            .pending
            .first()
            .map(|p| if s.window.is_none() { p.t - 1 } else { p.t });
        let window = match s.window {
            None => None,
            Some(Window::Hopping { size, .. }) => self.fixed.keys().next().map(|st| st + size),
            Some(Window::Snapshot) => self.fixed.keys().next().copied(),
            Some(Window::Sliding { .. }) => self.slide_points.keys().next().copied(),
            Some(Window::Session { timeout, .. }) => self
                .sessions
                .values()
                .map(|se| se.last.saturating_add(timeout).min(se.end_max))
                .min(),
        };
        match (pending, window) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One buffered row of a JOIN side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct JoinRow {
    t: Micros,
    seq: u64,
    row: Map<String, Value>,
    matched: bool,
}

/// The rows of a JOIN's two sides that may still match, by equality key, with an index by the
/// time each stops being able to match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
struct JoinState {
    left: BTreeMap<String, Vec<JoinRow>>,
    right: BTreeMap<String, Vec<JoinRow>>,
    /// (last time a row can match, seq, key)
    left_expiry: BTreeSet<(Micros, u64, String)>,
    right_expiry: BTreeSet<(Micros, u64, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
struct StmtState {
    timelines: BTreeMap<String, Timeline>,
    /// For statements that read other statements (a step, UNION members, JOIN sides): each
    /// producer's watermark.
    #[serde(default)]
    upstream: BTreeMap<usize, Micros>,
    /// Checkpoints before UNION and JOIN kept one upstream watermark.
    #[serde(default, skip_serializing)]
    upstream_watermark: Option<Micros>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    join: Option<JoinState>,
    /// (time, timeline key): the timeline has work once its watermark is above that time. With
    /// `OVER deviceId` there is a timeline per device, and this index keeps an event's cost
    /// independent of the number of devices.
    due: BTreeSet<(Micros, String)>,
    /// Timelines that received events since they were last stepped.
    /// (A list, not a set, so that its allocation is kept from one event to the next; read as
    /// a set: sorted and without repeats before use. Checkpoints hold it as a JSON array either way.)
    dirty: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    query: String,
    max_arrival: Option<Micros>,
    seq: u64,
    stmts: Vec<StmtState>,
}

/// Reference data of one name: its rows, and for each JOIN that reads it an index by the JOIN's
/// equality keys.
#[derive(Debug, Default)]
struct Reference {
    rows: Vec<Map<String, Value>>,
    /// statement index -> key -> row indices
    index: BTreeMap<usize, BTreeMap<String, Vec<usize>>>,
}

/// The synchronous engine. No IO, no clock: the caller passes arrival and wall-clock times.
#[derive(Debug)]
pub struct Engine {
    query: Query,
    policy: EventPolicy,
    state: State,
    warnings: Vec<String>,
    warnings_lost: u64,
    /// Reference data by lower-case name ([`Engine::set_reference`]); not in checkpoints.
    references: BTreeMap<String, Reference>,
    /// Each input name with the statements that read it.
    readers: Vec<(String, Arc<[usize]>)>,
    /// Buffers of [`Engine::record_row`], kept so that an event allocates none.
    plans: Vec<Plan>,
    pending: Vec<Pending>,
}

/// One statement's part in an event: its timeline, the event time, its rows in the buffer.
#[derive(Debug)]
struct Plan {
    si: usize,
    sub: String,
    t: Micros,
    rows: std::ops::Range<usize>,
}

/// Each input name with the statements that read it, in statement order.
fn readers_by_input(query: &Query) -> Vec<(String, Arc<[usize]>)> {
    let mut by: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, s) in query.stmts.iter().enumerate() {
        if s.source != Source::Input {
            continue;
        }
        match by.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(&s.from)) {
            Some((_, v)) => v.push(i),
            None => by.push((s.from.clone(), vec![i])),
        }
    }
    by.into_iter().map(|(n, v)| (n, v.into())).collect()
}

/// At most this many rows come out of one event's APPLYs.
const MAX_APPLY_ROWS: usize = 100_000;
/// At most this many bytes (the event's JSON size times the rows) come out of one event's APPLYs:
/// each row is a copy of the event, so a large array must not multiply a large event.
const MAX_APPLY_BYTES: usize = 64 * 1024 * 1024;

/// A closed window of one group, before SELECT/HAVING.
struct WinOut {
    end: Micros,
    key: String,
    rep: Row,
    aggs: Vec<Val>,
}

/// Deepest nesting of objects and arrays in an event the engine takes ([`EventError::TooDeep`]).
/// The engine keeps events (reorder buffers, windows, analytic functions) about ten levels down in
/// its checkpoint, which must stay within serde_json's 128 levels to be read back: an event nested
/// 120 levels deep made AggregatorModule's snapshot unreadable (found by the query_engine fuzz
/// target's probe). 64 leaves room for every place an event is kept.
pub const MAX_EVENT_NESTING: usize = 64;

/// Whether the objects and arrays of `obj` (itself the first level) nest at most
/// [`MAX_EVENT_NESTING`] levels; a loop over a work list, so a deep event costs no stack.
fn nesting_within_limit(obj: &Map<String, Value>) -> bool {
    // the common flat event needs no work list
    if !obj
        .values()
        .any(|v| matches!(v, Value::Object(_) | Value::Array(_)))
    {
        return true;
    }
    let mut work: Vec<(&Value, usize)> = obj.values().map(|v| (v, 2)).collect();
    while let Some((v, level)) = work.pop() {
        let nested = matches!(v, Value::Object(_) | Value::Array(_));
        if nested && level > MAX_EVENT_NESTING {
            return false;
        }
        match v {
            Value::Object(m) => work.extend(m.values().map(|c| (c, level + 1))),
            Value::Array(a) => work.extend(a.iter().map(|c| (c, level + 1))),
            _ => {}
        }
    }
    true
}

const MIN_T: Micros = i64::MIN / 4;
/// Warnings kept between calls of [`Engine::take_warnings`].
pub(crate) const MAX_WARNINGS: usize = 1000;
/// The watermark of a flushed stream: 10000-01-01, after every valid event time.
const END_OF_TIME: Micros = 253_402_300_800_000_000;

impl Engine {
    pub fn new(query: Query, policy: EventPolicy) -> Engine {
        let n = query.stmts.len();
        let state = State {
            query: query.text.clone(),
            max_arrival: None,
            seq: 0,
            stmts: vec![StmtState::default(); n],
        };
        Engine {
            readers: readers_by_input(&query),
            query,
            policy,
            state,
            warnings: Vec::new(),
            warnings_lost: 0,
            references: BTreeMap::new(),
            plans: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Replace the rows of reference data `name` (a JOIN without a time bound reads it). Rows
    /// that are not JSON objects are refused with their position. The JOIN's equality keys are
    /// indexed here, so a lookup costs what the matches cost. Reference data does not move time:
    /// the new rows apply to events recorded from now on.
    pub fn set_reference(&mut self, name: &str, rows: Vec<Value>) -> Result<(), ReferenceError> {
        let mut objs = Vec::with_capacity(rows.len());
        for (i, r) in rows.into_iter().enumerate() {
            match r {
                Value::Object(m) => objs.push(m),
                other => {
                    return Err(ReferenceError::NotAnObject {
                        name: name.to_string(),
                        row: i + 1,
                        found: Val::from_json(&other).describe(),
                    })
                }
            }
        }
        let mut r = Reference {
            rows: objs,
            index: BTreeMap::new(),
        };
        for (si, s) in self.query.stmts.iter().enumerate() {
            let Some(j) = &s.join else { continue };
            if !j
                .reference
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
            {
                continue;
            }
            let quals = vec![j.right_name.to_ascii_lowercase(), name.to_ascii_lowercase()];
            let mut idx: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (ri, row) in r.rows.iter().enumerate() {
                // a row whose key cannot be computed matches nothing
                if let Ok(k) = join_key(&j.right_keys, row, &quals) {
                    idx.entry(k).or_default().push(ri);
                }
            }
            r.index.insert(si, idx);
        }
        self.references.insert(name.to_ascii_lowercase(), r);
        Ok(())
    }

    /// Forget reference data `name`: its JOINs match nothing until it is set again.
    pub fn remove_reference(&mut self, name: &str) {
        self.references.remove(&name.to_ascii_lowercase());
    }

    /// How many rows reference data `name` holds (None before [`Engine::set_reference`]).
    pub fn reference_len(&self, name: &str) -> Option<usize> {
        self.references
            .get(&name.to_ascii_lowercase())
            .map(|r| r.rows.len())
    }

    pub fn query(&self) -> &Query {
        &self.query
    }

    pub fn policy(&self) -> &EventPolicy {
        &self.policy
    }

    /// The earliest wall-clock time at which [`Engine::advance`] has work if no event arrives
    /// before it (a buffered event to apply, a window to close; rows may or may not come out), or
    /// `None` when nothing is open. A module can sleep until then instead of ticking.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        let late = micros(self.policy.late_arrival_tolerance);
        self.query
            .stmts
            .iter()
            .zip(self.state.stmts.iter())
            .filter_map(|(s, st)| {
                // a LEFT OUTER row waiting for the right side's watermark is due too
                let join_due = st
                    .join
                    .as_ref()
                    .and_then(|js| js.left_expiry.first().map(|e| e.0));
                let due = match (st.due.iter().next().map(|d| d.0), join_due) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b)?,
                };
                // statements that read a step move with the input-reading statement at the root
                let mut root = s;
                let mut hops = 0;
                while let Source::Step(i) = root.source {
                    root = self.query.stmts.get(i)?;
                    hops += 1;
                    if hops > self.query.stmts.len() {
                        return None;
                    }
                }
                // the floor is arrival - late (with TIMESTAMP BY) and must pass `due`
                let lag = if root.timestamp_by.is_some() { late } else { 0 };
                Some(due.saturating_add(lag).saturating_add(1))
            })
            .min()
            .map(to_datetime)
    }

    /// Counters for a dashboard or reported properties.
    pub fn stats(&self) -> EngineStats {
        let mut st = EngineStats::default();
        let mut wm: Option<Micros> = None;
        for (s, state) in self.query.stmts.iter().zip(self.state.stmts.iter()) {
            let floor = match s.source {
                Source::Input => self.floor_now(s),
                Source::Step(_) => upstream_wm(s, state),
            };
            for tl in state.timelines.values() {
                st.buffered_events += tl.pending.len();
                st.open_groups += tl.fixed.values().map(|g| g.len()).sum::<usize>()
                    + tl.sliding.len()
                    + tl.sessions
                        .values()
                        .map(|se| se.groups.len())
                        .sum::<usize>();
                if s.source == Source::Input {
                    let w = tl.watermark.max(floor);
                    wm = Some(wm.map_or(w, |x| x.min(w)));
                }
            }
        }
        st.watermark = wm.filter(|w| *w > MIN_T).map(to_datetime);
        st
    }

    fn floor_now(&self, s: &Stmt) -> Micros {
        match self.state.max_arrival {
            None => MIN_T,
            Some(a) if s.timestamp_by.is_some() => {
                a.saturating_sub(micros(self.policy.late_arrival_tolerance))
            }
            Some(a) => a,
        }
    }

    /// Problems met while computing rows that no single input event is to blame for (for
    /// example a CAST in SELECT that fails on an aggregate, or a bad row from a WITH step);
    /// such rows are skipped. Taking them clears the list.
    pub fn take_warnings(&mut self) -> Vec<String> {
        let mut w = std::mem::take(&mut self.warnings);
        if self.warnings_lost > 0 {
            w.push(format!(
                "{} more warnings were not kept (at most {MAX_WARNINGS} wait between calls of take_warnings)",
                self.warnings_lost
            ));
            self.warnings_lost = 0;
        }
        w
    }

    /// Record one event of input `input` (a FROM name, case-insensitive) that arrived at
    /// `arrival` (wall clock). Returns the rows this made due. On error nothing changed.
    pub fn record(
        &mut self,
        input: &str,
        event: &Value,
        arrival: DateTime<Utc>,
    ) -> Result<Vec<OutputRow>, EventError> {
        let readers = self.readers(input)?;
        let obj = match event {
            Value::Object(m) => Arc::new(m.clone()),
            _ => return Err(EventError::NotAnObject),
        };
        self.record_row(&readers, obj, from_datetime(arrival), None)
    }

    /// [`Engine::record`] for an event the caller no longer needs: it is kept without a copy.
    pub fn record_owned(
        &mut self,
        input: &str,
        event: Value,
        arrival: DateTime<Utc>,
    ) -> Result<Vec<OutputRow>, EventError> {
        let readers = self.readers(input)?;
        let obj = match event {
            Value::Object(m) => Arc::new(m),
            _ => return Err(EventError::NotAnObject),
        };
        self.record_row(&readers, obj, from_datetime(arrival), None)
    }

    /// [`Engine::record_owned`] for a caller whose arrival time depends on the event's own time,
    /// as when a file is replayed and each event arrives at its own time: `arrival` gets the
    /// event time (the `TIMESTAMP BY` of the first statement reading `input` that has one; `None`
    /// without one, or when it cannot be read, which the engine then reports as usual) and
    /// answers the arrival time. The event time is read once for both.
    pub fn record_owned_with(
        &mut self,
        input: &str,
        event: Value,
        arrival: impl FnOnce(Option<DateTime<Utc>>) -> DateTime<Utc>,
    ) -> Result<Vec<OutputRow>, EventError> {
        let readers = self.readers(input)?;
        let obj = match event {
            Value::Object(m) => Arc::new(m),
            _ => return Err(EventError::NotAnObject),
        };
        let timed = readers.iter().find_map(|&si| {
            let s = &self.query.stmts[si];
            s.timestamp_by.as_ref().map(|e| (si, s, e))
        });
        let known = timed.and_then(|(si, s, e)| {
            let ctx = Ctx {
                row: &obj,
                time: 0,
                aggs: &[],
                an: &[],
                quals: &s.quals,
            };
            timestamp_of(e, &ctx).ok().map(|t| (si, t))
        });
        let a = from_datetime(arrival(known.map(|(_, t)| to_datetime(t))));
        self.record_row(&readers, obj, a, known)
    }

    /// The statements that read input `input` (computed once per input name).
    fn readers(&self, input: &str) -> Result<Arc<[usize]>, EventError> {
        if let Some((_, r)) = self
            .readers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(input))
        {
            return Ok(Arc::clone(r));
        }
        Err(EventError::UnknownInput {
            input: input.to_string(),
            known: self.query.inputs().join(", "),
        })
    }

    /// `known`: the event time statement `.0` reads from the event, read already.
    fn record_row(
        &mut self,
        readers: &[usize],
        obj: Row,
        a: Micros,
        known: Option<(usize, Micros)>,
    ) -> Result<Vec<OutputRow>, EventError> {
        if !nesting_within_limit(&obj) {
            return Err(EventError::TooDeep {
                max: MAX_EVENT_NESTING,
            });
        }
        let max_arrival = Some(self.state.max_arrival.map_or(a, |m| m.max(a)));
        // 1. validate and evaluate everything first, so a bad event changes nothing (the plans'
        // buffers are kept between events, so an event allocates none)
        let mut plans = std::mem::take(&mut self.plans);
        let mut pending = std::mem::take(&mut self.pending);
        plans.clear();
        pending.clear();
        let mut dropped = Vec::new();
        for &si in readers {
            let known_t = known.and_then(|(k, t)| (k == si).then_some(t));
            let from = pending.len();
            match self.prepare_input(si, &obj, a, max_arrival, known_t, &mut pending) {
                Ok(Ok((sub, t))) => plans.push(Plan {
                    si,
                    sub,
                    t,
                    rows: from..pending.len(),
                }),
                Ok(Err(reason)) => {
                    pending.truncate(from);
                    dropped.push(reason);
                }
                Err(e) => {
                    self.keep_buffers(plans, pending);
                    return Err(e);
                }
            }
        }
        if plans.is_empty() {
            self.keep_buffers(plans, pending);
            return Err(EventError::Dropped {
                reason: dropped.join("; "),
            });
        }
        for d in dropped {
            self.warn(format!("an event was dropped by one statement: {d}"));
        }
        // 2. apply (each plan takes its rows from the front of what is left)
        self.state.max_arrival = max_arrival;
        let mut rows = pending.drain(..);
        for p in plans.drain(..) {
            let n = p.rows.len();
            self.apply_input(p.si, p.sub, p.t, rows.by_ref().take(n));
        }
        drop(rows);
        self.keep_buffers(plans, pending);
        let mut out = Vec::new();
        self.settle_roots(None, &mut out);
        Ok(out)
    }

    /// Advance the wall clock with no input: watermarks move to `now - late_arrival_tolerance`
    /// and windows that are due close.
    pub fn advance(&mut self, now: DateTime<Utc>) -> Vec<OutputRow> {
        let n = from_datetime(now);
        self.state.max_arrival = Some(self.state.max_arrival.map_or(n, |m| m.max(n)));
        let mut out = Vec::new();
        self.settle_roots(None, &mut out);
        out
    }

    /// Close every open window and release every buffered event (end of a replay). The stream is
    /// over afterwards: later events would all be behind the watermark.
    pub fn flush(&mut self) -> Vec<OutputRow> {
        let mut out = Vec::new();
        self.settle_roots(Some(END_OF_TIME), &mut out);
        out
    }

    /// The engine's state (open windows, buffered events, watermarks) as JSON.
    pub fn checkpoint(&self) -> Value {
        serde_json::to_value(&self.state).unwrap_or(Value::Null)
    }

    /// Keeps [`Engine::record_row`]'s buffers for the next event, unless one event's APPLY made
    /// them large (up to [`MAX_APPLY_ROWS`] rows): that much is not held for ever.
    fn keep_buffers(&mut self, mut plans: Vec<Plan>, mut pending: Vec<Pending>) {
        const KEEP: usize = 1024;
        plans.clear();
        pending.clear();
        if plans.capacity() > KEEP {
            plans = Vec::new();
        }
        if pending.capacity() > KEEP {
            pending = Vec::new();
        }
        self.plans = plans;
        self.pending = pending;
    }

    /// [`Engine::checkpoint`] as JSON text, for a caller that writes it out: serialised once,
    /// without building a [`Value`] first (with 10,000 open groups, that value was most of
    /// AggregatorModule's highest memory use).
    pub fn checkpoint_raw(&self) -> Box<serde_json::value::RawValue> {
        serde_json::value::to_raw_value(&self.state).unwrap_or_else(|_| {
            // the state is maps, numbers and strings: serialising it to memory cannot fail
            serde_json::value::RawValue::from_string("null".into()).unwrap_or_default()
        })
    }

    /// Rebuild an engine from [`Engine::checkpoint`] output. The query text must be the same.
    pub fn restore(
        query: Query,
        policy: EventPolicy,
        state: &Value,
    ) -> Result<Engine, RestoreError> {
        let mut st: State = serde_json::from_value(state.clone())
            .map_err(|e| RestoreError::Malformed(e.to_string()))?;
        for (stmt, q) in st.stmts.iter_mut().zip(query.stmts.iter()) {
            for tl in stmt.timelines.values_mut() {
                for (key, se) in tl.sessions.iter_mut() {
                    if let Some(g) = se.group.take() {
                        se.groups.insert(key.clone(), g);
                    }
                }
                // sessions were kept per group key; without OVER (PARTITION BY) they are one
                // timeline now: merge them into one session
                if let (Some(Window::Session { max_duration, .. }), true) =
                    (q.window, q.session_partition.is_empty())
                {
                    if tl.sessions.keys().any(|k| !k.is_empty()) {
                        let old = std::mem::take(&mut tl.sessions);
                        let mut merged: Option<Session> = None;
                        for (_, se) in old {
                            merged = Some(match merged {
                                None => se,
                                Some(mut m) => {
                                    m.start = m.start.min(se.start);
                                    m.last = m.last.max(se.last);
                                    m.groups.extend(se.groups);
                                    m
                                }
                            });
                        }
                        if let Some(mut m) = merged {
                            m.end_max = session_end_max(m.start, max_duration);
                            tl.sessions.insert(String::new(), m);
                        }
                    }
                }
            }
        }
        if st.query != query.text {
            return Err(RestoreError::QueryChanged);
        }
        if st.stmts.len() != query.stmts.len() {
            return Err(RestoreError::Malformed("statement count differs".into()));
        }
        for (i, stmt) in st.stmts.iter_mut().enumerate() {
            if let (Some(w), Some(s)) = (stmt.upstream_watermark.take(), query.stmts.get(i)) {
                for &p in &s.producers {
                    stmt.upstream.insert(p, w);
                }
            }
        }
        Ok(Engine {
            readers: readers_by_input(&query),
            query,
            policy,
            state: st,
            warnings: Vec::new(),
            warnings_lost: 0,
            references: BTreeMap::new(),
            plans: Vec::new(),
            pending: Vec::new(),
        })
    }

    fn floor(&self, si: usize, max_arrival: Option<Micros>) -> Micros {
        let s = &self.query.stmts[si];
        match max_arrival {
            None => MIN_T,
            Some(a) if s.timestamp_by.is_some() => {
                a.saturating_sub(micros(self.policy.late_arrival_tolerance))
            }
            Some(a) => a,
        }
    }

    /// Evaluate one input event for statement `si`, pushing its buffered rows to `out`. Outer
    /// error: unusable event. Inner error: dropped by the policy (reason). `known`: the event
    /// time this statement's `TIMESTAMP BY` gives, read already.
    fn prepare_input(
        &self,
        si: usize,
        obj: &Row,
        arrival: Micros,
        max_arrival: Option<Micros>,
        known: Option<Micros>,
        out: &mut Vec<Pending>,
    ) -> Result<Result<(String, Micros), String>, EventError> {
        let s = &self.query.stmts[si];
        let with_arrival;
        let obj = if s.arrival_fields {
            let mut m = Map::clone(obj);
            for f in ARRIVAL_FIELDS {
                if crate::eval::lookup(&m, f).is_none() {
                    m.insert(f.to_string(), Value::String(format_time(arrival)));
                }
            }
            with_arrival = Arc::new(m);
            &with_arrival
        } else {
            obj
        };
        let ctx0 = Ctx {
            row: obj,
            time: arrival,
            aggs: &[],
            an: &[],
            quals: &s.quals,
        };
        // substream key (TIMESTAMP BY .. OVER)
        let mut sub = String::new();
        for o in &s.over {
            let v = eval(o, &ctx0).map_err(|m| wrong(o, m))?;
            sub.push_str(&v.key());
            sub.push('\u{1f}');
        }
        let floor = self.floor(si, max_arrival);
        let wm = self.state.stmts[si]
            .timelines
            .get(&sub)
            .map_or(floor, |t| t.watermark.max(floor));
        let t = match &s.timestamp_by {
            None => arrival.max(wm),
            Some(e) => {
                // arrival fields were added to this statement's copy of the event: read again
                let mut t = match known {
                    Some(t) if !s.arrival_fields => t,
                    _ => timestamp_of(e, &ctx0)?,
                };
                let drop = self.policy.action == OrderingAction::Drop;
                // early arrival: always dropped, whatever the action (ASA); it changes nothing,
                // so one sensor with a clock far ahead cannot move any watermark
                let early = arrival.saturating_add(micros(self.policy.early_arrival_limit));
                if t > early {
                    return Ok(Err(format!(
                        "event time {} is more than {} s after its arrival time {} (early arrival; check the sender's clock)",
                        format_time(t),
                        self.policy.early_arrival_limit.as_secs_f64(),
                        format_time(arrival)
                    )));
                }
                let late = arrival.saturating_sub(micros(self.policy.late_arrival_tolerance));
                if t < late {
                    if drop {
                        return Ok(Err(format!(
                            "event time {} is more than {} s before its arrival time {} (late arrival)",
                            format_time(t),
                            self.policy.late_arrival_tolerance.as_secs_f64(),
                            format_time(arrival)
                        )));
                    }
                    t = late;
                }
                if t < wm {
                    if drop {
                        return Ok(Err(format!(
                            "event time {} is behind the watermark {} (out of order by more than {} s)",
                            format_time(t),
                            format_time(wm),
                            self.policy.out_of_order_tolerance.as_secs_f64()
                        )));
                    }
                    t = wm;
                }
                t
            }
        };
        self.evaluate(si, obj, t, out)?;
        Ok(Ok((sub, t)))
    }

    /// WHERE, then either the projected row (no aggregation) or the group key and aggregate
    /// inputs. `None` when WHERE filters the event out. A statement with analytic functions
    /// keeps the event as it is until it leaves the reorder buffer (see [`resolve`]).
    fn evaluate(
        &self,
        si: usize,
        obj: &Row,
        t: Micros,
        out: &mut Vec<Pending>,
    ) -> Result<(), EventError> {
        let s = &self.query.stmts[si];
        let applied: Vec<Row>;
        let rows: &[Row] = if s.apply.is_empty() {
            std::slice::from_ref(obj)
        } else {
            applied = expand(s, obj)?.into_iter().map(Arc::new).collect();
            &applied
        };
        for row in rows {
            if !s.analytics.is_empty() {
                out.push(Pending {
                    t,
                    seq: 0,
                    key: String::new(),
                    row: Arc::clone(row),
                    ins: Vec::new(),
                    raw: true,
                    part: String::new(),
                });
                continue;
            }
            let ctx = Ctx {
                row,
                time: t,
                aggs: &[],
                an: &[],
                quals: &s.quals,
            };
            if let Some(p) = shape(s, &ctx, row, t)? {
                out.push(p);
            }
        }
        Ok(())
    }

    fn apply_input(
        &mut self,
        si: usize,
        sub: String,
        t: Micros,
        pending: impl Iterator<Item = Pending>,
    ) {
        let floor = self.floor(si, self.state.max_arrival);
        let st = &mut self.state.stmts[si];
        if !st.dirty.contains(&sub) {
            st.dirty.push(sub.clone());
        }
        let tl = st
            .timelines
            .entry(sub)
            .or_insert_with(|| Timeline::new(floor));
        tl.max_event = Some(tl.max_event.map_or(t, |m| m.max(t)));
        for mut p in pending {
            self.state.seq += 1;
            p.seq = self.state.seq;
            insert_sorted(&mut tl.pending, p);
        }
    }

    fn settle_roots(&mut self, floor: Option<Micros>, out: &mut Vec<OutputRow>) {
        for si in 0..self.query.stmts.len() {
            if self.query.stmts[si].source != Source::Input {
                continue;
            }
            let f = floor.unwrap_or_else(|| self.floor(si, self.state.max_arrival));
            self.settle(si, f, out);
        }
    }

    /// Release and close what the watermarks allow in statement `si` (whose timelines are all at
    /// least at `floor`), deliver the rows, then move the statements that read it.
    fn settle(&mut self, si: usize, floor: Micros, out: &mut Vec<OutputRow>) {
        let stmts = Arc::clone(&self.query.stmts);
        let stmt = &stmts[si];
        let mut floor = floor;
        if let Some(j) = &stmt.join {
            self.join_expire(si, j);
            // a LEFT OUTER row still waiting for its NULL row holds the watermark back, so that row
            // comes out at its own time (left time plus the bound), not behind the watermark
            if j.kind == JoinKind::LeftOuter {
                if let Some(e) = self.state.stmts[si]
                    .join
                    .as_ref()
                    .and_then(|js| js.left_expiry.first())
                {
                    floor = floor.min(e.0);
                }
            }
        }
        let ooo = micros(self.policy.out_of_order_tolerance);
        let mut rows: Vec<(Micros, Map<String, Value>)> = Vec::new();
        let mut warnings = Vec::new();
        let StmtState {
            timelines,
            due,
            dirty,
            ..
        } = &mut self.state.stmts[si];
        let mut keys = std::mem::take(dirty);
        for (_, k) in due.range(..(floor, String::new())) {
            keys.push(k.clone());
        }
        keys.sort_unstable();
        keys.dedup();
        for k in keys.drain(..) {
            let tl = match timelines.get_mut(&k) {
                Some(tl) => tl,
                None => continue,
            };
            let own = match (
                stmt.source == Source::Input,
                stmt.timestamp_by.is_some(),
                tl.max_event,
            ) {
                (true, true, Some(m)) => m.saturating_sub(ooo),
                (true, false, Some(m)) => m,
                _ => MIN_T,
            };
            tl.watermark = tl.watermark.max(floor).max(own);
            let was_due = tl.due;
            let wins = step_timeline(tl, stmt, &mut rows, &mut warnings);
            for w in wins {
                match finish(stmt, w) {
                    Ok(Some(r)) => rows.push(r),
                    Ok(None) => {}
                    Err(m) => warnings.push(m),
                }
            }
            // the index changes only when this timeline's next due time does
            let now_due = tl.due_at(stmt);
            if now_due != was_due {
                if let Some(d) = was_due {
                    due.remove(&(d, k.clone()));
                }
                if let Some(d) = now_due {
                    due.insert((d, k));
                }
                tl.due = now_due;
            }
        }
        // empty again, its allocation kept for the next event
        *dirty = keys;
        let stmt_wm = if stmt.consumers.is_empty() {
            floor
        } else {
            timelines
                .values()
                .map(|tl| tl.watermark.max(floor))
                .min()
                .unwrap_or(floor)
        };
        for w in warnings {
            self.warn(w);
        }
        rows.sort_by_key(|r| r.0);
        match &stmt.sink {
            Sink::Output(name) => {
                for (t, row) in rows {
                    out.push(OutputRow {
                        output: name.clone(),
                        row,
                        timestamp: to_datetime(t),
                    });
                }
            }
            Sink::Step(_) => {
                for &c in &stmt.consumers {
                    for (t, row) in &rows {
                        self.feed(c, si, row, *t);
                    }
                }
            }
        }
        for &c in &stmt.consumers {
            let st = &mut self.state.stmts[c];
            let w = st.upstream.get(&si).map_or(stmt_wm, |w| (*w).max(stmt_wm));
            st.upstream.insert(si, w);
            let wm = upstream_wm(&stmts[c], st);
            self.settle(c, wm, out);
        }
    }

    /// Keep a warning for [`Engine::take_warnings`]; at most [`MAX_WARNINGS`] wait, so a caller
    /// that never takes them does not grow the engine without bound.
    fn warn(&mut self, w: String) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(w);
        } else {
            self.warnings_lost += 1;
        }
    }

    /// A row of statement `from` (a WITH step, a UNION member or a JOIN side) reaches
    /// statement `ci`.
    fn feed(&mut self, ci: usize, from: usize, row: &Map<String, Value>, t: Micros) {
        let stmts = Arc::clone(&self.query.stmts);
        let s = &stmts[ci];
        let wm = upstream_wm(s, &self.state.stmts[ci]);
        let t = t.max(wm);
        let joined = match &s.join {
            None => vec![(t, row.clone())],
            Some(j) => match self.join_rows(ci, j, from, row, t) {
                Ok(v) => v,
                Err(m) => {
                    self.warn(format!(
                        "a row of the JOIN in statement {} was skipped: {m}",
                        ci + 1
                    ));
                    return;
                }
            },
        };
        for (t, row) in joined {
            self.push_row(ci, &row, t.max(wm));
        }
    }

    /// Evaluate a row for statement `ci` and buffer what it gives (never behind the watermark of
    /// the statement's timeline).
    fn push_row(&mut self, ci: usize, row: &Map<String, Value>, t: Micros) {
        let t = t.max(
            self.state.stmts[ci]
                .timelines
                .get("")
                .map_or(MIN_T, |tl| tl.watermark),
        );
        let mut ps = Vec::new();
        match self.evaluate(ci, &Arc::new(row.clone()), t, &mut ps) {
            Ok(()) => {
                let wm = upstream_wm(&self.query.stmts[ci], &self.state.stmts[ci]);
                for mut p in ps {
                    self.state.seq += 1;
                    p.seq = self.state.seq;
                    let st = &mut self.state.stmts[ci];
                    if !st.dirty.contains(&String::new()) {
                        st.dirty.push(String::new());
                    }
                    let tl = st
                        .timelines
                        .entry(String::new())
                        .or_insert_with(|| Timeline::new(wm));
                    tl.max_event = Some(tl.max_event.map_or(t, |m| m.max(t)));
                    insert_sorted(&mut tl.pending, p);
                }
            }
            Err(e) => {
                let w = format!("a row of '{}' was skipped: {e}", self.query.stmts[ci].from);
                self.warn(w);
            }
        }
    }

    /// A row of one side of JOIN statement `ci`: buffer it and return the joined rows it makes
    /// with the other side (with their times).
    fn join_rows(
        &mut self,
        ci: usize,
        j: &JoinSpec,
        from: usize,
        row: &Map<String, Value>,
        t: Micros,
    ) -> Result<Vec<TimedRow>, String> {
        let stmts = Arc::clone(&self.query.stmts);
        let side_quals = |si: usize| stmts.get(si).map(|s| s.quals.clone()).unwrap_or_default();
        let mut out = Vec::new();
        if let Some(refname) = &j.reference {
            // reference data: match now, nothing is buffered
            let key = join_key(&j.left_keys, row, &side_quals(j.left))?;
            let reference = self.references.get(&refname.to_ascii_lowercase());
            let hits: Vec<&Map<String, Value>> = match reference {
                Some(r) => r
                    .index
                    .get(&ci)
                    .and_then(|ix| ix.get(&key))
                    .map(|v| v.iter().filter_map(|&i| r.rows.get(i)).collect())
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            let combined: Vec<Map<String, Value>> =
                hits.into_iter().map(|r| combine(j, row, Some(r))).collect();
            let mut matched = false;
            for c in combined {
                if self.on_holds_or_warn(j, &c) {
                    matched = true;
                    out.push((t, c));
                }
            }
            if !matched && j.kind == JoinKind::LeftOuter {
                out.push((t, combine(j, row, None)));
            }
            return Ok(out);
        }
        let (lo, hi) = j.bound.unwrap_or((0, 0));
        let is_left = from == j.left;
        let keys = if is_left { &j.left_keys } else { &j.right_keys };
        let key = join_key(keys, row, &side_quals(from))?;
        self.state.seq += 1;
        let seq = self.state.seq;
        let js = self.state.stmts[ci]
            .join
            .get_or_insert_with(JoinState::default);
        let mut entry = JoinRow {
            t,
            seq,
            row: row.clone(),
            matched: false,
        };
        let others = if is_left { &mut js.right } else { &mut js.left };
        // an ON that cannot be evaluated for a pair is no match for that pair (with a warning);
        // both rows stay, so nothing is lost
        let mut failures = Vec::new();
        if let Some(bucket) = others.get_mut(&key) {
            for o in bucket.iter_mut() {
                let (lt, rt) = if is_left { (t, o.t) } else { (o.t, t) };
                let d = rt.saturating_sub(lt);
                if d < lo || d > hi {
                    continue;
                }
                let c = if is_left {
                    combine(j, row, Some(&o.row))
                } else {
                    combine(j, &o.row, Some(row))
                };
                match on_holds(j, &c) {
                    Ok(true) => {
                        o.matched = true;
                        entry.matched = true;
                        out.push((lt.max(rt), c));
                    }
                    Ok(false) => {}
                    Err(m) => failures.push(m),
                }
            }
        }
        if is_left {
            js.left_expiry
                .insert((t.saturating_add(hi), seq, key.clone()));
            js.left.entry(key).or_default().push(entry);
        } else {
            js.right_expiry
                .insert((t.saturating_sub(lo), seq, key.clone()));
            js.right.entry(key).or_default().push(entry);
        }
        for m in failures {
            self.warn(format!("a pair of JOIN rows did not match because {m}"));
        }
        Ok(out)
    }

    fn on_holds_or_warn(&mut self, j: &JoinSpec, row: &Map<String, Value>) -> bool {
        match on_holds(j, row) {
            Ok(b) => b,
            Err(m) => {
                self.warn(format!("a pair of JOIN rows did not match because {m}"));
                false
            }
        }
    }

    /// Drop JOIN rows that can no longer match (the other side's watermark passed them); an
    /// unmatched left row of a LEFT OUTER JOIN comes out then, with NULL for the right side, at
    /// its time plus the bound's upper end (the last time a match could have had).
    fn join_expire(&mut self, ci: usize, j: &JoinSpec) {
        let Some(right) = j.right else { return };
        let st = &self.state.stmts[ci];
        let wm_right = st.upstream.get(&right).copied().unwrap_or(MIN_T);
        let wm_left = st.upstream.get(&j.left).copied().unwrap_or(MIN_T);
        let Some(js) = self.state.stmts[ci].join.as_mut() else {
            return;
        };
        let mut unmatched = Vec::new();
        while let Some(first) = js.left_expiry.first().cloned() {
            if first.0 >= wm_right {
                break;
            }
            js.left_expiry.remove(&first);
            let (expiry, seq, key) = first;
            if let Some(bucket) = js.left.get_mut(&key) {
                if let Some(i) = bucket.iter().position(|r| r.seq == seq) {
                    let r = bucket.remove(i);
                    if !r.matched && j.kind == JoinKind::LeftOuter {
                        // never before the left event itself (a bound may end before it)
                        unmatched.push((expiry.max(r.t), r.row));
                    }
                }
                if bucket.is_empty() {
                    js.left.remove(&key);
                }
            }
        }
        while let Some(first) = js.right_expiry.first().cloned() {
            if first.0 >= wm_left {
                break;
            }
            js.right_expiry.remove(&first);
            let (_, seq, key) = first;
            if let Some(bucket) = js.right.get_mut(&key) {
                bucket.retain(|r| r.seq != seq);
                if bucket.is_empty() {
                    js.right.remove(&key);
                }
            }
        }
        for (t, row) in unmatched {
            let c = combine(j, &row, None);
            self.push_row(ci, &c, t);
        }
    }
}

/// The watermark of a statement that reads other statements: the lowest of its producers'
/// (MIN_T until each has one).
fn upstream_wm(s: &Stmt, st: &StmtState) -> Micros {
    s.producers
        .iter()
        .map(|p| st.upstream.get(p).copied().unwrap_or(MIN_T))
        .min()
        .unwrap_or(MIN_T)
}

/// The equality key of a JOIN row.
fn join_key(keys: &[Expr], row: &Map<String, Value>, quals: &[String]) -> Result<String, String> {
    let ctx = Ctx {
        row,
        time: 0,
        aggs: &[],
        an: &[],
        quals,
    };
    let mut k = String::new();
    for e in keys {
        let v = eval(e, &ctx).map_err(|m| format!("{}: {m}", show(e)))?;
        k.push_str(&v.key());
        k.push('\u{1f}');
    }
    Ok(k)
}

/// A joined row: each source under its name (`I1.x`), and the fields of both at the top level
/// for unqualified names (the left side wins a clash). A missing right side is NULL. The left
/// row of a chained JOIN already carries its sources under their names.
fn combine(
    j: &JoinSpec,
    left: &Map<String, Value>,
    right: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(r) = right {
        for (k, v) in r {
            m.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in left {
        m.insert(k.clone(), v.clone());
    }
    if j.nest_left {
        m.insert(j.left_name.clone(), Value::Object(left.clone()));
    }
    m.insert(
        j.right_name.clone(),
        right.map_or(Value::Null, |r| Value::Object(r.clone())),
    );
    m
}

/// The rest of a JOIN's ON (beyond its time bound and equality keys) on a joined row.
fn on_holds(j: &JoinSpec, row: &Map<String, Value>) -> Result<bool, String> {
    let Some(on) = &j.on else { return Ok(true) };
    let ctx = Ctx {
        row,
        time: 0,
        aggs: &[],
        an: &[],
        quals: &[],
    };
    let v = eval(on, &ctx).map_err(|m| format!("ON {}: {m}", show(on)))?;
    Ok(truth(&v, on)? == Some(true))
}

/// The rows of `CROSS/OUTER APPLY GetArrayElements(x) AS e` (and GetRecordProperties): the event
/// with `e` set to `{ArrayIndex, ArrayValue}` (`{PropertyName, PropertyValue}`) for each element.
/// CROSS APPLY of an empty or null value gives no row, OUTER APPLY one row with `e` NULL.
fn expand(s: &Stmt, obj: &Map<String, Value>) -> Result<Vec<Map<String, Value>>, EventError> {
    let event_bytes = serde_json::to_vec(obj).map_or(1, |v| v.len().max(1));
    let max_rows = MAX_APPLY_ROWS.min(MAX_APPLY_BYTES / event_bytes).max(1);
    let mut rows = vec![obj.clone()];
    for a in &s.apply {
        let mut next = Vec::new();
        for row in rows {
            let ctx = Ctx {
                row: &row,
                time: 0,
                aggs: &[],
                an: &[],
                quals: &s.quals,
            };
            let v = eval(&a.arg, &ctx).map_err(|m| wrong(&a.arg, m))?;
            let elems: Vec<Value> = match (a.array, v) {
                (_, Val::Null) => Vec::new(),
                (true, Val::Array(items)) => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| serde_json::json!({"ArrayIndex": i, "ArrayValue": v}))
                    .collect(),
                (false, Val::Record(m)) => m
                    .into_iter()
                    .map(|(k, v)| serde_json::json!({"PropertyName": k, "PropertyValue": v}))
                    .collect(),
                (array, other) => {
                    return Err(wrong(
                        &a.arg,
                        format!(
                            "{} needs {}, got {}",
                            if array {
                                "GetArrayElements"
                            } else {
                                "GetRecordProperties"
                            },
                            if array { "an array" } else { "a record" },
                            other.describe()
                        ),
                    ))
                }
            };
            if elems.is_empty() {
                if a.outer {
                    let mut r = row.clone();
                    r.insert(a.name.clone(), Value::Null);
                    next.push(r);
                }
                continue;
            }
            if next.len() + elems.len() > max_rows {
                return Err(EventError::WrongType {
                    expression: format!("APPLY ... AS {}", a.name),
                    message: format!(
                        "the event ({event_bytes} bytes) expands to more than {max_rows} rows (at most {MAX_APPLY_ROWS} rows and {MAX_APPLY_BYTES} bytes of rows per event); split the array upstream"
                    ),
                });
            }
            for e in elems {
                let mut r = row.clone();
                r.insert(a.name.clone(), e);
                next.push(r);
            }
        }
        rows = next;
    }
    Ok(rows)
}

/// WHERE, then the projected row (no aggregation) or the group key and aggregate inputs.
fn shape(s: &Stmt, ctx: &Ctx, row: &Row, t: Micros) -> Result<Option<Pending>, EventError> {
    if let Some(f) = &s.filter {
        let v = eval(f, ctx).map_err(|m| wrong(f, m))?;
        if truth(&v, f).map_err(|m| wrong(f, m))? != Some(true) {
            return Ok(None);
        }
    }
    if s.window.is_none() {
        let row = project(&s.items, ctx).map_err(|(e, m)| wrong(e, m))?;
        return Ok(Some(Pending {
            t,
            seq: 0,
            key: String::new(),
            row: Arc::new(row),
            ins: Vec::new(),
            raw: false,
            part: String::new(),
        }));
    }
    let mut key = String::new();
    for k in &s.keys {
        if let Expr::Field(path, _) = k {
            // a field is keyed where it is in the event (no copy of its value)
            match crate::eval::field(ctx.row, path, ctx.quals) {
                Some(v) => push_key_of_json(&mut key, v),
                None => key.push_str(&Val::Null.key()),
            }
        } else {
            let v = eval(k, ctx).map_err(|m| wrong(k, m))?;
            key.push_str(&v.key());
        }
        key.push('\u{1f}');
    }
    let mut part = String::new();
    for k in &s.session_partition {
        let v = eval(k, ctx).map_err(|m| wrong(k, m))?;
        part.push_str(&v.key());
        part.push('\u{1f}');
    }
    let ins = prepare(&s.aggs, ctx)?;
    Ok(Some(Pending {
        t,
        seq: 0,
        key,
        row: Arc::clone(row),
        ins,
        raw: false,
        part,
    }))
}

/// A buffered event of a statement with analytic functions, now in event-time order: compute
/// the analytic values (updating their state), then WHERE and the rest. `None` when WHERE
/// filters it out or it fails (a warning says why).
fn resolve(an: &mut AnState, s: &Stmt, p: Pending, warnings: &mut Vec<String>) -> Option<Pending> {
    if !p.raw {
        return Some(p);
    }
    let skipped = |m: String| format!("the event at {} was skipped: {m}", format_time(p.t));
    let vals = match analytic::compute(&s.analytics, an, &p.row, p.t, &s.quals) {
        Ok(v) => v,
        Err(m) => {
            warnings.push(skipped(m));
            return None;
        }
    };
    let ctx = Ctx {
        row: &p.row,
        time: p.t,
        aggs: &[],
        an: &vals,
        quals: &s.quals,
    };
    match shape(s, &ctx, &p.row, p.t) {
        Ok(Some(mut q)) => {
            q.seq = p.seq;
            Some(q)
        }
        Ok(None) => None,
        Err(e) => {
            warnings.push(skipped(e.to_string()));
            None
        }
    }
}

fn wrong(e: &Expr, m: String) -> EventError {
    EventError::WrongType {
        expression: show(e),
        message: m,
    }
}

fn insert_sorted(v: &mut Vec<Pending>, p: Pending) {
    let i = v.partition_point(|x| (x.t, x.seq) <= (p.t, p.seq));
    v.insert(i, p);
}

/// SELECT list -> row. Left columns win over later ones with the same name (ASA's rule for `*`).
fn project<'e>(items: &'e [OutItem], c: &Ctx) -> Result<Map<String, Value>, (&'e Expr, String)> {
    let mut m = Map::new();
    for it in items {
        match it {
            OutItem::Star(path) => {
                let fields = match path.as_deref() {
                    None => c.row,
                    // the FROM name or alias alone: the whole row
                    Some([q])
                        if c.quals.iter().any(|x| x.eq_ignore_ascii_case(q))
                            && crate::eval::lookup(c.row, q).is_none() =>
                    {
                        c.row
                    }
                    Some(p) => match crate::eval::field(c.row, p, c.quals) {
                        Some(Value::Object(m)) => m,
                        _ => continue,
                    },
                };
                for (k, v) in fields {
                    if !m.contains_key(k) {
                        m.insert(k.clone(), v.clone());
                    }
                }
            }
            OutItem::Col(name, e) => {
                let v = eval(e, c).map_err(|msg| (e, msg))?;
                if !m.contains_key(name) {
                    m.insert(name.clone(), v.to_json());
                }
            }
        }
    }
    Ok(m)
}

/// Closed window -> output row (None when HAVING rejects it). Errors are reported as warnings.
type TimedRow = (Micros, Map<String, Value>);

fn finish(s: &Stmt, w: WinOut) -> Result<Option<TimedRow>, String> {
    let ctx = Ctx {
        row: &w.rep,
        time: w.end,
        aggs: &w.aggs,
        an: &[],
        quals: &s.quals,
    };
    if let Some(h) = &s.having {
        let v = eval(h, &ctx).map_err(|m| {
            format!(
                "HAVING {}: {m}; the window ending {} was skipped",
                show(h),
                format_time(w.end)
            )
        })?;
        if truth(&v, h).map_err(|m| format!("HAVING: {m}"))? != Some(true) {
            return Ok(None);
        }
    }
    let _ = &w.key;
    let row = project(&s.items, &ctx).map_err(|(e, m)| {
        format!(
            "{}: {m}; the window ending {} was skipped",
            show(e),
            format_time(w.end)
        )
    })?;
    Ok(Some((w.end, row)))
}

fn new_group(s: &Stmt, rep: &Row) -> Group {
    Group {
        rep: Arc::clone(rep),
        accs: s.aggs.iter().map(|a| Acc::new(a.func)).collect(),
    }
}

/// Add a buffered event to its group of a window (a new group keeps the event as its
/// representative row); the key is copied only for a new group.
fn add_to(groups: &mut HashMap<String, Group>, s: &Stmt, p: &Pending) {
    if let Some(g) = groups.get_mut(&p.key) {
        add(g, s, &p.ins);
    } else {
        let mut g = new_group(s, &p.row);
        add(&mut g, s, &p.ins);
        groups.insert(p.key.clone(), g);
    }
}

fn add(g: &mut Group, s: &Stmt, ins: &[AggIn]) {
    for ((acc, spec), x) in g.accs.iter_mut().zip(s.aggs.iter()).zip(ins.iter()) {
        acc.add(x, spec);
    }
}

fn results(g: &Group, s: &Stmt) -> Vec<Val> {
    g.accs
        .iter()
        .zip(s.aggs.iter())
        .map(|(a, spec)| a.result(spec))
        .collect()
}

/// First end of a max-duration cut after a session that starts at `start`: ASA checks the
/// maximum duration at multiples of it (aligned to the epoch).
fn session_end_max(start: Micros, max: Micros) -> Micros {
    let first = start.div_euclid(max) * max + max;
    if first - start >= max {
        first
    } else {
        first + max
    }
}

/// Release buffered events up to the watermark and close due windows. Pass-through rows go to
/// `rows`; closed windows are returned.
fn step_timeline(
    tl: &mut Timeline,
    s: &Stmt,
    rows: &mut Vec<(Micros, Map<String, Value>)>,
    warnings: &mut Vec<String>,
) -> Vec<WinOut> {
    let wm = tl.watermark;
    // pass-through: an event at the watermark itself is final already; a window at the
    // watermark may still get events at that time
    let n = if s.window.is_none() {
        tl.pending.partition_point(|p| p.t <= wm)
    } else {
        tl.pending.partition_point(|p| p.t < wm)
    };
    // the buffer is taken out for the step (and put back, its allocation kept), so that the
    // released events are moved out of it without a copy of their own
    let mut buffer = std::mem::take(&mut tl.pending);
    let mut an = std::mem::take(&mut tl.an);
    let analytics = !s.analytics.is_empty();
    let released = buffer.drain(..n).filter_map(|p| {
        if analytics {
            resolve(&mut an, s, p, warnings)
        } else {
            Some(p)
        }
    });
    let outs = step_windows(tl, s, released, rows);
    tl.pending = buffer;
    tl.an = an;
    outs
}

/// [`step_timeline`] past the reorder buffer: `released` events go into their windows (or out,
/// without a window), and the windows the watermark passed close.
fn step_windows(
    tl: &mut Timeline,
    s: &Stmt,
    released: impl Iterator<Item = Pending>,
    rows: &mut Vec<(Micros, Map<String, Value>)>,
) -> Vec<WinOut> {
    let wm = tl.watermark;
    let window = match s.window {
        None => {
            for p in released {
                rows.push((p.t, Arc::unwrap_or_clone(p.row)));
            }
            return Vec::new();
        }
        Some(w) => w,
    };
    let mut outs = Vec::new();
    match window {
        Window::Hopping { size, hop, offset } => {
            for p in released {
                let mut e = p.t + (offset - p.t).rem_euclid(hop);
                while e < p.t.saturating_add(size) {
                    add_to(tl.fixed.entry(e - size).or_default(), s, &p);
                    e += hop;
                }
            }
            while let Some((&start, _)) = tl.fixed.iter().next() {
                if start.saturating_add(size) >= wm {
                    break;
                }
                if let Some(groups) = tl.fixed.remove(&start) {
                    close_fixed(groups, start + size, s, &mut outs);
                }
            }
        }
        Window::Snapshot => {
            for p in released {
                add_to(tl.fixed.entry(p.t).or_default(), s, &p);
            }
            while let Some((&t, _)) = tl.fixed.iter().next() {
                if t >= wm {
                    break;
                }
                if let Some(groups) = tl.fixed.remove(&t) {
                    close_fixed(groups, t, s, &mut outs);
                }
            }
        }
        Window::Sliding { size } => {
            for p in released {
                // content changes when an event enters (t) and when it leaves (t + size)
                tl.slide_points
                    .entry(p.t)
                    .or_default()
                    .insert(p.key.clone());
                tl.slide_points
                    .entry(p.t.saturating_add(size))
                    .or_default()
                    .insert(p.key.clone());
                tl.sliding
                    .entry(p.key.clone())
                    .or_default()
                    .events
                    .push_back((p.t, p.ins, p.row));
            }
            while let Some((&point, _)) = tl.slide_points.iter().next() {
                if point >= wm {
                    break;
                }
                let keys = tl.slide_points.remove(&point).unwrap_or_default();
                for key in keys {
                    let sl = match tl.sliding.get_mut(&key) {
                        Some(sl) => sl,
                        None => continue,
                    };
                    let mut g: Option<Group> = None;
                    for (t, ins, row) in sl.events.iter() {
                        if *t > point.saturating_sub(size) && *t <= point {
                            let g = g.get_or_insert_with(|| new_group(s, row));
                            g.rep = Arc::clone(row);
                            add(g, s, ins);
                        }
                    }
                    if let Some(g) = g {
                        outs.push(WinOut {
                            end: point,
                            aggs: results(&g, s),
                            key: key.clone(),
                            rep: g.rep,
                        });
                    }
                    while sl
                        .events
                        .front()
                        .is_some_and(|e| e.0 <= point.saturating_sub(size))
                    {
                        sl.events.pop_front();
                    }
                    if sl.events.is_empty() {
                        tl.sliding.remove(&key);
                    }
                }
            }
        }
        Window::Session {
            timeout,
            max_duration,
        } => {
            // sessions are per partition key (one timeline for the whole input without
            // OVER (PARTITION BY ..)); each session holds one group per group key
            let close = |se: Session, outs: &mut Vec<WinOut>| {
                let end = se.last.saturating_add(timeout).min(se.end_max);
                for (key, g) in se.groups {
                    outs.push(WinOut {
                        end,
                        aggs: results(&g, s),
                        key,
                        rep: g.rep,
                    });
                }
            };
            for p in released {
                // a session ends at its timeout, or at a max-duration check point; in the latter
                // case the next session opens at that same point (ASA)
                let mut start = p.t;
                if let Some(se) = tl.sessions.get(&p.part) {
                    let timed_out = p.t > se.last.saturating_add(timeout);
                    if timed_out || p.t > se.end_max {
                        if !timed_out {
                            start = se.end_max;
                        }
                        if let Some(se) = tl.sessions.remove(&p.part) {
                            close(se, &mut outs);
                        }
                    }
                }
                let se = tl
                    .sessions
                    .entry(p.part.clone())
                    .or_insert_with(|| Session {
                        start,
                        last: p.t,
                        end_max: session_end_max(start, max_duration),
                        groups: BTreeMap::new(),
                        group: None,
                    });
                se.last = se.last.max(p.t);
                let g = se
                    .groups
                    .entry(p.key.clone())
                    .or_insert_with(|| new_group(s, &p.row));
                add(g, s, &p.ins);
            }
            let due: Vec<String> = tl
                .sessions
                .iter()
                .filter(|(_, se)| se.last.saturating_add(timeout).min(se.end_max) < wm)
                .map(|(k, _)| k.clone())
                .collect();
            for k in due {
                if let Some(se) = tl.sessions.remove(&k) {
                    close(se, &mut outs);
                }
            }
        }
    }
    // Rows come out by window end, then group key. Fixed windows close in the order of their
    // ends, each sorted by key (close_fixed), and sliding points in time order with their keys
    // sorted: only sessions, which close in the order of their partitions, need the sort.
    // (end, key) is unique among one timeline's closed windows: no order to keep between equals.
    if matches!(window, Window::Session { .. }) {
        outs.sort_unstable_by(|a, b| (a.end, &a.key).cmp(&(b.end, &b.key)));
    }
    debug_assert!(outs
        .windows(2)
        .all(|w| (w[0].end, &w[0].key) < (w[1].end, &w[1].key)));
    outs
}

/// The rows of a closed tumbling, hopping or snapshot window ending at `end`, by group key.
fn close_fixed(groups: HashMap<String, Group>, end: Micros, s: &Stmt, outs: &mut Vec<WinOut>) {
    let mut groups: Vec<(String, Group)> = groups.into_iter().collect();
    groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    outs.reserve(groups.len());
    for (key, g) in groups {
        outs.push(WinOut {
            end,
            aggs: results(&g, s),
            key,
            rep: g.rep,
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn session_max_duration_check_points() {
        // checks at multiples of the maximum duration; a session runs at least that long
        assert_eq!(session_end_max(0, 10), 10);
        assert_eq!(session_end_max(1, 10), 20);
        assert_eq!(session_end_max(9, 10), 20);
        assert_eq!(session_end_max(10, 10), 20);
        assert_eq!(session_end_max(-5, 10), 10);
    }

    #[test]
    fn reorder_buffer_keeps_time_then_arrival_order() {
        let p = |t, seq| Pending {
            t,
            seq,
            key: String::new(),
            row: Arc::new(Map::new()),
            ins: Vec::new(),
            raw: false,
            part: String::new(),
        };
        let mut v = Vec::new();
        for (t, seq) in [(5, 1), (3, 2), (5, 3), (1, 4), (3, 5)] {
            insert_sorted(&mut v, p(t, seq));
        }
        let got: Vec<(i64, u64)> = v.iter().map(|x| (x.t, x.seq)).collect();
        assert_eq!(got, vec![(1, 4), (3, 2), (3, 5), (5, 1), (5, 3)]);
    }

    #[test]
    fn next_deadline_tracks_the_open_window() {
        let q = Query::parse(
            "SELECT COUNT(*) AS n INTO o FROM i TIMESTAMP BY t GROUP BY TumblingWindow(second, 60)",
        )
        .unwrap();
        let mut e = Engine::new(q, EventPolicy::default());
        assert_eq!(e.next_deadline(), None);
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        e.record(
            "i",
            &serde_json::json!({"t": "2026-11-24T08:00:10Z"}),
            at("2026-11-24T08:00:10Z"),
        )
        .unwrap();
        // first the buffered event is applied once arrival - 5 s is past its time ...
        let d = e.next_deadline().unwrap();
        assert_eq!(d, at("2026-11-24T08:00:15.000001Z"));
        assert!(e.advance(d).is_empty());
        // ... then the window (08:00, 08:01] closes once arrival - 5 s is past 08:01:00
        let d = e.next_deadline().unwrap();
        assert_eq!(d, at("2026-11-24T08:01:05.000001Z"));
        assert!(e.advance(at("2026-11-24T08:01:05Z")).is_empty());
        assert_eq!(e.advance(d).len(), 1);
        assert_eq!(e.next_deadline(), None);
    }

    #[test]
    fn next_deadline_sees_windows_behind_a_step() {
        let q = Query::parse(
            "WITH s AS (SELECT v FROM i TIMESTAMP BY t)
             SELECT COUNT(*) AS n INTO o FROM s GROUP BY TumblingWindow(second, 10)",
        )
        .unwrap();
        let mut e = Engine::new(q, EventPolicy::default());
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        e.record(
            "i",
            &serde_json::json!({"v": 1, "t": "2026-11-24T08:00:01Z"}),
            at("2026-11-24T08:00:01Z"),
        )
        .unwrap();
        let mut rows = Vec::new();
        for _ in 0..5 {
            match e.next_deadline() {
                Some(d) => rows.extend(e.advance(d)),
                None => break,
            }
        }
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].timestamp, at("2026-11-24T08:00:10Z"));
        assert_eq!(e.next_deadline(), None);
    }

    #[test]
    fn warnings_are_kept_up_to_a_limit() {
        let q = Query::parse(
            "SELECT COUNT(*) AS n INTO o FROM i TIMESTAMP BY t GROUP BY TumblingWindow(second, 1) HAVING CAST(MIN(s) AS bigint) > 0",
        )
        .unwrap();
        let mut e = Engine::new(q, EventPolicy::default());
        let base = "2026-11-24T08:00:00Z".parse::<DateTime<Utc>>().unwrap();
        for i in 0..(MAX_WARNINGS as i64 + 5) {
            let t = base + chrono::Duration::seconds(i);
            let rows = e
                .record("i", &serde_json::json!({"s": "x", "t": t.to_rfc3339()}), t)
                .unwrap();
            assert!(rows.is_empty());
        }
        e.flush();
        let w = e.take_warnings();
        assert_eq!(w.len(), MAX_WARNINGS + 1);
        assert!(w[0].contains("HAVING"), "{}", w[0]);
        assert!(
            w[MAX_WARNINGS].starts_with("5 more warnings"),
            "{}",
            w[MAX_WARNINGS]
        );
        assert!(e.take_warnings().is_empty());
    }

    #[test]
    fn arrival_from_the_event_time_reads_it_once_and_agrees_with_record() {
        // two statements read the input; the second one's TIMESTAMP BY is the one the caller sees
        let text = "SELECT COUNT(*) AS n INTO a FROM i GROUP BY TumblingWindow(second, 10) \
                    SELECT k, AVG(v) AS v INTO b FROM i TIMESTAMP BY t GROUP BY k, TumblingWindow(second, 10)";
        let mut with = Engine::new(Query::parse(text).unwrap(), EventPolicy::default());
        let mut plain = Engine::new(Query::parse(text).unwrap(), EventPolicy::default());
        let events = [
            serde_json::json!({"k": "x", "v": 1, "t": "2026-11-24T08:00:01Z"}),
            serde_json::json!({"k": "y", "v": 2, "t": "2026-11-24T08:00:04.5Z"}),
            serde_json::json!({"k": "x", "v": 3, "t": "2026-11-24T08:00:12Z"}),
            serde_json::json!({"k": "x", "v": 4}),
            serde_json::json!({"k": "x", "v": 5, "t": "2026-11-24T08:00:31Z"}),
        ];
        let mut seen = Vec::new();
        let (mut rows_with, mut rows_plain) = (Vec::new(), Vec::new());
        for ev in events {
            let own = plain.query().event_time("i", &ev).ok().flatten();
            let arrival = own.unwrap_or_else(|| "2026-11-24T08:00:20Z".parse().unwrap());
            rows_plain.push(plain.record("i", &ev, arrival).map_err(|e| e.to_string()));
            rows_with.push(
                with.record_owned_with("i", ev, |t| {
                    seen.push(t);
                    t.unwrap_or(arrival)
                })
                .map_err(|e| e.to_string()),
            );
        }
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[1], "2026-11-24T08:00:04.5Z".parse().ok());
        assert_eq!(seen[3], None, "no time: the caller decides");
        assert!(rows_with[3].is_err(), "the event without a time is refused");
        assert_eq!(rows_with, rows_plain);
        assert_eq!(with.flush(), plain.flush());
        assert!(rows_with.iter().flatten().any(|r| !r.is_empty()));
    }

    #[test]
    fn stats_count_what_is_open() {
        let q = Query::parse(
            "SELECT k, COUNT(*) AS n INTO o FROM i TIMESTAMP BY t GROUP BY k, TumblingWindow(second, 60)",
        )
        .unwrap();
        let mut e = Engine::new(q, EventPolicy::default());
        assert_eq!(e.stats(), EngineStats::default());
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        for (k, t) in [("a", "08:00:10"), ("b", "08:00:20"), ("a", "08:00:30")] {
            let ts = format!("2026-11-24T{t}Z");
            e.record("i", &serde_json::json!({"k": k, "t": ts}), at(&ts))
                .unwrap();
        }
        let st = e.stats();
        assert_eq!((st.open_groups, st.buffered_events), (2, 1));
        assert_eq!(st.watermark, Some(at("2026-11-24T08:00:30Z")));
        e.flush();
        assert_eq!(e.stats().open_groups, 0);
    }

    #[test]
    fn engine_is_send() {
        fn is_send<T: Send + 'static>() {}
        is_send::<Engine>();
        is_send::<Query>();
    }
}
