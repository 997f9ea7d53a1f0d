//! Analytic functions: `LAG`, `LAST`, `ISFIRST` and the anomaly detection functions, each with
//! `OVER ([PARTITION BY ..] [LIMIT DURATION(unit, n)] [WHEN condition])`.
//!
//! They look at earlier events of the same statement, so the engine evaluates them when an event
//! leaves the reorder buffer, in event-time order, and before WHERE, GROUP BY and the select
//! list (as ASA does: WHERE does not hide events from LAG). Each keeps a small state per
//! partition in the event's timeline, which checkpoints with the rest.
//!
//! - `LAG(x, offset = 1, default = NULL)`: `x` of the `offset`-th earlier event of the partition
//!   whose WHEN held, if that event is at most LIMIT DURATION older; else `default`.
//! - `LAST(x, default = NULL)`: the most recent non-null `x` among the partition's events whose
//!   WHEN held, the current event included (ASA: LAST is "LAG with offset 0"), at most LIMIT
//!   DURATION old; else `default`.
//! - `ISFIRST(unit, n)`: 1 when the event is the first of its partition (whose WHEN held) in
//!   the current tumbling interval of `n` units (aligned as tumbling windows, `(start, end]`),
//!   else 0; an event whose WHEN does not hold gives 0.
//! - `AnomalyDetection_SpikeAndDip(x, confidence, historySize, mode)` and
//!   `AnomalyDetection_ChangePoint(x, confidence, historySize)`: a record
//!   `{"Score": .., "IsAnomaly": 0|1}` for `x` against the partition's history (the last
//!   `historySize` values whose WHEN held, at most LIMIT DURATION old); see [`crate::anomaly`].
//!   A null `x` gives null and leaves the history alone; a non-number is an error.

use crate::anomaly::{History, Mode};
use crate::ast::Expr;
use crate::eval::{eval, truth, Ctx};
use crate::value::{Micros, Val};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AnFunc {
    Lag {
        offset: usize,
    },
    Last,
    IsFirst {
        interval: Micros,
    },
    SpikeAndDip {
        confidence: f64,
        history: usize,
        mode: Mode,
    },
    ChangePoint {
        confidence: f64,
        history: usize,
    },
}

/// One analytic function of a statement, after planning.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AnSpec {
    pub func: AnFunc,
    /// `x` (None for ISFIRST).
    pub arg: Option<Expr>,
    /// LAG's and LAST's default.
    pub default: Option<Expr>,
    pub partition: Vec<Expr>,
    /// LIMIT DURATION (None: no limit, ISFIRST).
    pub limit: Option<Micros>,
    pub when: Option<Expr>,
    pub text: String,
}

/// A partition's state for one analytic function.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(crate) struct Part {
    /// LAG and LAST: (time, value) of earlier events, oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    values: VecDeque<(Micros, Val)>,
    /// ISFIRST: the interval (its end) of the last counted event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<Micros>,
    /// Anomaly detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    history: Option<History>,
}

/// The analytic state of one timeline: per function, per partition key.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(crate) struct AnState {
    parts: Vec<BTreeMap<String, Part>>,
    /// Event time of the last sweep of partitions that hold nothing any more.
    #[serde(default)]
    swept: Micros,
}

impl AnState {
    pub(crate) fn is_empty(&self) -> bool {
        self.parts.iter().all(BTreeMap::is_empty)
    }
}

/// Partitions whose state has expired are dropped at most this often (event time), so a
/// high-cardinality PARTITION BY does not keep every key it ever saw.
const SWEEP_EVERY: Micros = 60_000_000;

/// Whether a partition still holds anything that can affect a later event at `t`.
fn alive(spec: &AnSpec, part: &Part, t: Micros) -> bool {
    let oldest = spec.limit.map_or(Micros::MIN, |l| t.saturating_sub(l));
    match &spec.func {
        AnFunc::Lag { .. } | AnFunc::Last => {
            part.values.back().is_some_and(|(pt, _)| *pt >= oldest)
        }
        // a later event is in a later interval: it is first anyway
        AnFunc::IsFirst { .. } => part.interval.is_some_and(|end| end >= t),
        AnFunc::SpikeAndDip { .. } | AnFunc::ChangePoint { .. } => part
            .history
            .as_ref()
            .and_then(|h| h.points.back())
            .is_some_and(|p| p.t >= oldest),
    }
}

/// Compute the statement's analytic values for one event at time `t` (in event-time order),
/// updating `state`. `Err` names the failing expression.
pub(crate) fn compute(
    specs: &[AnSpec],
    state: &mut AnState,
    row: &Map<String, Value>,
    t: Micros,
    quals: &[String],
) -> Result<Vec<Val>, String> {
    if state.parts.len() != specs.len() {
        state.parts.resize_with(specs.len(), BTreeMap::new);
    }
    if t.saturating_sub(state.swept) >= SWEEP_EVERY {
        state.swept = t;
        for (spec, parts) in specs.iter().zip(state.parts.iter_mut()) {
            parts.retain(|_, p| alive(spec, p, t));
        }
    }
    let ctx = Ctx {
        row,
        time: t,
        aggs: &[],
        an: &[],
        quals,
    };
    let mut out = Vec::with_capacity(specs.len());
    for (spec, parts) in specs.iter().zip(state.parts.iter_mut()) {
        out.push(step(spec, parts, &ctx, t).map_err(|m| format!("{}: {m}", spec.text))?);
    }
    Ok(out)
}

fn step(
    spec: &AnSpec,
    parts: &mut BTreeMap<String, Part>,
    ctx: &Ctx,
    t: Micros,
) -> Result<Val, String> {
    let mut key = String::new();
    for p in &spec.partition {
        key.push_str(&eval(p, ctx)?.key());
        key.push('\u{1f}');
    }
    let counted = match &spec.when {
        Some(w) => truth(&eval(w, ctx)?, w)? == Some(true),
        None => true,
    };
    let x = match &spec.arg {
        Some(a) => eval(a, ctx)?,
        None => Val::Null,
    };
    let oldest = spec.limit.map_or(Micros::MIN, |l| t.saturating_sub(l));
    if !parts.contains_key(&key) && !counted {
        // nothing to remember; answer without creating a partition
        return Ok(match &spec.func {
            AnFunc::Lag { .. } => match &spec.default {
                Some(d) => eval(d, ctx)?,
                None => Val::Null,
            },
            AnFunc::IsFirst { .. } => Val::Int(0),
            AnFunc::Last => match &spec.default {
                Some(d) => eval(d, ctx)?,
                None => Val::Null,
            },
            AnFunc::SpikeAndDip { .. } | AnFunc::ChangePoint { .. } => anomaly_record(1.0, false),
        });
    }
    let part = parts.entry(key).or_default();
    let v = match &spec.func {
        AnFunc::Lag { offset } => {
            while part.values.front().is_some_and(|(pt, _)| *pt < oldest) {
                part.values.pop_front();
            }
            let n = part.values.len();
            let v = if n >= *offset {
                part.values[n - offset].1.clone()
            } else {
                match &spec.default {
                    Some(d) => eval(d, ctx)?,
                    None => Val::Null,
                }
            };
            if counted {
                part.values.push_back((t, x));
                while part.values.len() > *offset {
                    part.values.pop_front();
                }
            }
            v
        }
        AnFunc::Last => {
            if counted && !x.is_null() {
                part.values.clear();
                part.values.push_back((t, x));
            }
            while part.values.front().is_some_and(|(pt, _)| *pt < oldest) {
                part.values.pop_front();
            }
            match (part.values.back(), &spec.default) {
                (Some(v), _) => v.1.clone(),
                (None, Some(d)) => eval(d, ctx)?,
                (None, None) => Val::Null,
            }
        }
        AnFunc::IsFirst { interval } => {
            if !counted {
                Val::Int(0)
            } else {
                // the tumbling interval (end - interval, end] that holds t
                let end = t + (-t).rem_euclid(*interval);
                let first = part.interval != Some(end);
                part.interval = Some(end);
                Val::Int(i64::from(first))
            }
        }
        AnFunc::SpikeAndDip {
            confidence,
            history,
            mode,
        } => {
            let h = part.history.get_or_insert_with(History::default);
            h.expire(oldest);
            if x.is_null() {
                return Ok(Val::Null);
            }
            let f = finite(&x)?;
            let (score, hit) = h.spike_and_dip(f, *confidence, *mode);
            // only an event whose WHEN holds joins the history
            if counted {
                h.push(t, f, *history);
            }
            anomaly_record(score, hit)
        }
        AnFunc::ChangePoint {
            confidence,
            history,
        } => {
            let h = part.history.get_or_insert_with(History::default);
            h.expire(oldest);
            if x.is_null() {
                return Ok(Val::Null);
            }
            let f = finite(&x)?;
            if !counted {
                return Ok(anomaly_record(1.0, false));
            }
            let (score, hit) = h.change_point(f, *confidence);
            if hit {
                h.restart();
            }
            h.push(t, f, *history);
            anomaly_record(score, hit)
        }
    };
    Ok(v)
}

/// A number the anomaly models can square and sum over a history without overflowing.
fn finite(x: &Val) -> Result<f64, String> {
    match x.as_f64() {
        Some(f) if f.is_finite() && f.abs() <= 1e100 => Ok(f),
        Some(f) => Err(format!("needs a number within +-1e100, got {f}")),
        None => Err(format!("needs a number, got {}", x.describe())),
    }
}

fn anomaly_record(score: f64, hit: bool) -> Val {
    let mut m = Map::new();
    m.insert(
        "Score".into(),
        serde_json::Number::from_f64(score)
            .map(Value::Number)
            .unwrap_or(Value::Null),
    );
    m.insert("IsAnomaly".into(), Value::from(i64::from(hit)));
    Val::Record(m)
}
