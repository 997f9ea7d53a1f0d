//! The Stream Analytics engine (`stream_query`): parser, planner and evaluator, on queries built
//! from a dictionary of the language (or the template's own query) and arbitrary JSON events.
//!
//! Input (`arbitrary`): a query (the template's, a generated one, or raw text), an event-ordering
//! policy, reference data, and steps: events (any JSON: odd types, deep nesting, times in every
//! accepted form and some that are not), clock ticks, checkpoints.
//!
//! Checks: no panic; events are read as AggregatorModule reads them (`parse_event` with the
//! fields the query reads) and an engine given the whole events gives exactly the same rows; at a
//! checkpoint step the state survives `to_string` -> `from_str` -> `restore` (as AggregatorModule's
//! snapshots do) and the restored engine gives exactly the rows of the original for every later
//! step, flush included.
#![no_main]

use arbitrary::Arbitrary;
use chrono::{DateTime, Duration, Utc};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;
use stream_query::{Engine, EventPolicy, OrderingAction, OutputRow, Query};

// ---- the dictionary -------------------------------------------------------------------------

const FIELDS: &[&str] = &[
    "temp",
    "deviceId",
    "timeCreated",
    "\"temp\"",
    "[deviceId]",
    "a.b",
    "a",
    "arr",
    "missing",
    "System.Timestamp()",
    "i.temp",
    "i.deviceId",
    "p.feverC",
    "p.deviceId",
    "EventProcessedUtcTime",
];
const STRINGS: &[&str] = &[
    "'fever'",
    "'%a%'",
    "'patient-00001'",
    "'2026-11-24T08:00:00Z'",
    "''",
    "'11/24/2026 8:05:29 AM'",
    "'x_y[z]'",
];
const FLOATS: &[&str] = &["38.0", "0.5", "-1.5e3", "1e308", "0.0", "99.9", "-0"];
const UNITS: &[&str] = &[
    "second",
    "ss",
    "s",
    "minute",
    "mi",
    "n",
    "hour",
    "hh",
    "day",
    "dd",
    "d",
    "millisecond",
    "ms",
    "microsecond",
    "mcs",
    "year",
    "month",
    "week",
];
const BINOPS: &[&str] = &[
    "+", "-", "*", "/", "%", "=", "<>", "!=", "<", "<=", ">", ">=", "AND", "OR", "LIKE",
];
/// (name, arity); a unit first where the function takes one.
const FUNCS: &[(&str, usize)] = &[
    ("ABS", 1),
    ("CEILING", 1),
    ("FLOOR", 1),
    ("ROUND", 2),
    ("POWER", 2),
    ("SQRT", 1),
    ("SQUARE", 1),
    ("EXP", 1),
    ("LOG", 1),
    ("SIGN", 1),
    ("LEN", 1),
    ("LOWER", 1),
    ("UPPER", 1),
    ("SUBSTRING", 3),
    ("CONCAT", 3),
    ("CHARINDEX", 2),
    ("REPLACE", 3),
    ("LTRIM", 1),
    ("TRIM", 1),
    ("LEFT", 2),
    ("RIGHT", 2),
    ("REVERSE", 1),
    ("PATINDEX", 2),
    ("DAY", 1),
    ("MONTH", 1),
    ("YEAR", 1),
    ("DATETIMEFROMPARTS", 7),
    ("COALESCE", 2),
    ("GetRecordPropertyValue", 2),
    ("GetArrayElement", 2),
    ("GetArrayLength", 1),
    ("ISFIRST", 0),
];
const UNIT_FUNCS: &[(&str, usize)] = &[("DATEADD", 2), ("DATEDIFF", 2), ("DATEPART", 1)];
const AGGS: &[&str] = &[
    "Avg", "Count", "Min", "Max", "Sum", "STDEV", "STDEVP", "VAR", "VARP", "Collect",
];
const TYPES: &[&str] = &[
    "bigint",
    "float",
    "nvarchar(max)",
    "datetime",
    "bit",
    "record",
    "array",
];
const INPUTS: &[&str] = &["temperature", "other"];
const TS_FIELDS: &[&str] = &["timeCreated", "a.b", "temp", "missing"];

// ---- generated queries ----------------------------------------------------------------------

#[derive(Arbitrary, Debug)]
enum Ex {
    Field(u8),
    Int(i16),
    Float(u8),
    Str(u8),
    Null,
    Bool(bool),
    Bin(u8, Box<Ex>, Box<Ex>),
    Not(Box<Ex>),
    Neg(Box<Ex>),
    IsNull(Box<Ex>, bool),
    Between(Box<Ex>, Box<Ex>, Box<Ex>),
    In(Box<Ex>, Vec<Ex>),
    Call(u8, Vec<Ex>),
    UnitCall(u8, u8, Vec<Ex>),
    Agg(u8, Box<Ex>),
    CountStar,
    CountDistinct(Box<Ex>),
    TopOne(Box<Ex>),
    Percentile(bool, u8, Box<Ex>),
    CollectTop(u8, Box<Ex>),
    Case(Box<Ex>, Box<Ex>, Box<Ex>),
    Cast(Box<Ex>, u8, bool),
    Lag(Box<Ex>, u8, u8, bool),
    Last(Box<Ex>, Box<Ex>),
    Anomaly(bool, u8),
    Paren(Box<Ex>),
}

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

fn render(e: &Ex, depth: usize, out: &mut String) {
    use std::fmt::Write as _;
    if depth > 10 {
        out.push_str("temp");
        return;
    }
    let d = depth + 1;
    match e {
        Ex::Field(i) => out.push_str(pick(FIELDS, *i)),
        Ex::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Ex::Float(i) => out.push_str(pick(FLOATS, *i)),
        Ex::Str(i) => out.push_str(pick(STRINGS, *i)),
        Ex::Null => out.push_str("NULL"),
        Ex::Bool(b) => out.push_str(if *b { "1" } else { "0" }),
        Ex::Bin(op, l, r) => {
            render(l, d, out);
            let _ = write!(out, " {} ", pick(BINOPS, *op));
            render(r, d, out);
        }
        Ex::Not(x) => {
            out.push_str("NOT ");
            render(x, d, out);
        }
        Ex::Neg(x) => {
            out.push('-');
            render(x, d, out);
        }
        Ex::IsNull(x, not) => {
            render(x, d, out);
            out.push_str(if *not { " IS NOT NULL" } else { " IS NULL" });
        }
        Ex::Between(x, a, b) => {
            render(x, d, out);
            out.push_str(" BETWEEN ");
            render(a, d, out);
            out.push_str(" AND ");
            render(b, d, out);
        }
        Ex::In(x, list) => {
            render(x, d, out);
            out.push_str(" IN (");
            for (i, v) in list.iter().take(4).enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(v, d, out);
            }
            if list.is_empty() {
                out.push('1');
            }
            out.push(')');
        }
        Ex::Call(f, args) => {
            let (name, n) = FUNCS[usize::from(*f) % FUNCS.len()];
            if name == "ISFIRST" {
                out.push_str("ISFIRST(minute, 1) OVER (PARTITION BY deviceId)");
                return;
            }
            let _ = write!(out, "{name}(");
            for i in 0..n {
                if i > 0 {
                    out.push_str(", ");
                }
                match args.get(i) {
                    Some(a) => render(a, d, out),
                    None => out.push_str("temp"),
                }
            }
            out.push(')');
        }
        Ex::UnitCall(f, u, args) => {
            let (name, n) = UNIT_FUNCS[usize::from(*f) % UNIT_FUNCS.len()];
            let _ = write!(out, "{name}({}", pick(UNITS, *u));
            for i in 0..n {
                out.push_str(", ");
                match args.get(i) {
                    Some(a) => render(a, d, out),
                    None => out.push_str("timeCreated"),
                }
            }
            out.push(')');
        }
        Ex::Agg(a, x) => {
            let _ = write!(out, "{}(", pick(AGGS, *a));
            render(x, d, out);
            out.push(')');
        }
        Ex::CountStar => out.push_str("Count(*)"),
        Ex::CountDistinct(x) => {
            out.push_str("Count(DISTINCT ");
            render(x, d, out);
            out.push(')');
        }
        Ex::TopOne(x) => {
            out.push_str("TopOne() OVER (ORDER BY ");
            render(x, d, out);
            out.push_str(" DESC)");
        }
        Ex::Percentile(cont, p, x) => {
            let _ = write!(
                out,
                "Percentile_{}(0.{}) OVER (ORDER BY ",
                if *cont { "Cont" } else { "Disc" },
                p % 10
            );
            render(x, d, out);
            out.push(')');
        }
        Ex::CollectTop(n, x) => {
            let _ = write!(out, "CollectTop({}) OVER (ORDER BY ", n % 4);
            render(x, d, out);
            out.push(')');
        }
        Ex::Case(c, a, b) => {
            out.push_str("CASE WHEN ");
            render(c, d, out);
            out.push_str(" THEN ");
            render(a, d, out);
            out.push_str(" ELSE ");
            render(b, d, out);
            out.push_str(" END");
        }
        Ex::Cast(x, t, try_) => {
            out.push_str(if *try_ { "TRY_CAST(" } else { "CAST(" });
            render(x, d, out);
            let _ = write!(out, " AS {})", pick(TYPES, *t));
        }
        Ex::Lag(x, n, u, when) => {
            out.push_str("LAG(");
            render(x, d, out);
            let _ = write!(
                out,
                ", {}) OVER (PARTITION BY deviceId LIMIT DURATION({}, {})",
                n % 4,
                pick(UNITS, *u),
                n % 7 + 1
            );
            if *when {
                out.push_str(" WHEN temp > 37");
            }
            out.push(')');
        }
        Ex::Last(x, w) => {
            out.push_str("LAST(");
            render(x, d, out);
            out.push_str(") OVER (LIMIT DURATION(minute, 5) WHEN ");
            render(w, d, out);
            out.push(')');
        }
        Ex::Anomaly(spike, n) => {
            if *spike {
                let _ = write!(out, "AnomalyDetection_SpikeAndDip(CAST(temp AS float), 95, {}, 'spikesanddips') OVER (PARTITION BY deviceId LIMIT DURATION(minute, 10))", n % 80 + 1);
            } else {
                let _ = write!(out, "AnomalyDetection_ChangePoint(CAST(temp AS float), 80, {}) OVER (LIMIT DURATION(minute, 20))", n % 80 + 20);
            }
        }
        Ex::Paren(x) => {
            out.push('(');
            render(x, d, out);
            out.push(')');
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Window {
    Tumbling(u8, u8),
    Hopping(u8, u8, u8),
    Sliding(u8, u8),
    Session(u8, u8, u8),
    Long(u8, u8, u8),
    Snapshot,
}

#[derive(Arbitrary, Debug)]
struct Stmt {
    select: Vec<(Ex, Option<u8>)>,
    star: bool,
    from: u8,
    timestamp_by: Option<(u8, bool)>,
    join: Option<(bool, u8, Ex)>,
    apply: Option<bool>,
    filter: Option<Ex>,
    window: Option<Window>,
    keys: Vec<u8>,
    having: Option<Ex>,
}

#[derive(Arbitrary, Debug)]
struct Generated {
    steps: Vec<Stmt>,
    stmts: Vec<(Stmt, bool)>,
}

fn render_stmt(s: &Stmt, into: Option<String>, steps: usize, out: &mut String) {
    use std::fmt::Write as _;
    out.push_str("SELECT ");
    if s.star || s.select.is_empty() {
        out.push('*');
    }
    for (i, (e, alias)) in s.select.iter().take(4).enumerate() {
        if i > 0 || s.star {
            out.push_str(", ");
        }
        render(e, 0, out);
        if let Some(a) = alias {
            let _ = write!(out, " AS c{}", a % 6);
        }
    }
    if let Some(into) = into {
        let _ = write!(out, " INTO {into}");
    }
    let n = INPUTS.len() + steps;
    let from = usize::from(s.from) % n;
    let from = if from < INPUTS.len() {
        INPUTS[from].to_string()
    } else {
        format!("step{}", from - INPUTS.len())
    };
    let _ = write!(out, " FROM {from} i");
    if let Some((f, over)) = s.timestamp_by {
        let _ = write!(out, " TIMESTAMP BY {}", pick(TS_FIELDS, f));
        if over {
            out.push_str(" OVER deviceId");
        }
    }
    if let Some((outer, kind, on)) = &s.join {
        out.push_str(if *outer {
            " LEFT OUTER JOIN "
        } else {
            " JOIN "
        });
        if kind % 2 == 0 {
            out.push_str("patients p ON i.deviceId = p.deviceId");
        } else {
            let _ = write!(
                out,
                "{from} p ON i.deviceId = p.deviceId AND DATEDIFF(second, i, p) BETWEEN 0 AND {}",
                kind % 90 + 1
            );
        }
        if matches!(on, Ex::Bin(..)) {
            out.push_str(" AND ");
            render(on, 6, out);
        }
    }
    if let Some(cross) = s.apply {
        out.push_str(if cross { " CROSS" } else { " OUTER" });
        out.push_str(" APPLY GetArrayElements(i.arr) AS e");
    }
    if let Some(w) = &s.filter {
        out.push_str(" WHERE ");
        render(w, 0, out);
    }
    if s.window.is_some() || !s.keys.is_empty() {
        out.push_str(" GROUP BY ");
        for k in s.keys.iter().take(2) {
            let _ = write!(out, "{}, ", pick(&["deviceId", "a.b", "temp"], *k));
        }
        match &s.window {
            None => out.push_str("TumblingWindow(second, 10)"),
            Some(Window::Tumbling(u, n)) => {
                let _ = write!(out, "TumblingWindow({}, {})", pick(UNITS, *u), n % 90 + 1);
            }
            Some(Window::Hopping(u, n, h)) => {
                let _ = write!(
                    out,
                    "HoppingWindow({}, {}, {})",
                    pick(UNITS, *u),
                    n % 90 + 1,
                    h % 30 + 1
                );
            }
            Some(Window::Sliding(u, n)) => {
                let _ = write!(out, "SlidingWindow({}, {})", pick(UNITS, *u), n % 90 + 1);
            }
            Some(Window::Session(u, t, m)) => {
                let _ = write!(
                    out,
                    "SessionWindow({}, {}, {})",
                    pick(UNITS, *u),
                    t % 30 + 1,
                    m % 120 + 1
                );
            }
            Some(Window::Long(u, n, o)) => {
                let _ = write!(
                    out,
                    "Tumbling(Duration({}, {}), Offset(second, {}))",
                    pick(UNITS, *u),
                    n % 90 + 1,
                    o % 10
                );
            }
            Some(Window::Snapshot) => out.push_str("System.Timestamp()"),
        }
    }
    if let Some(h) = &s.having {
        out.push_str(" HAVING ");
        render(h, 0, out);
    }
}

fn render_query(g: &Generated) -> String {
    let mut out = String::new();
    let steps = g.steps.len().min(3);
    if steps > 0 {
        out.push_str("WITH ");
        for (i, s) in g.steps.iter().take(steps).enumerate() {
            if i > 0 {
                out.push_str(",\n");
            }
            out.push_str(&format!("step{i} AS (\n"));
            render_stmt(s, None, i, &mut out);
            out.push_str("\n)");
        }
        out.push('\n');
    }
    for (i, (s, union)) in g.stmts.iter().take(3).enumerate() {
        if i > 0 {
            out.push_str(if *union { "\nUNION\n" } else { "\n" });
        }
        render_stmt(s, Some(format!("out{}", i % 2)), steps, &mut out);
    }
    if g.stmts.is_empty() {
        out.push_str("SELECT * INTO out0 FROM temperature");
    }
    out
}

// ---- events ---------------------------------------------------------------------------------

#[derive(Arbitrary, Debug)]
enum Val {
    Int(i64),
    Float(f64),
    Small(i8),
    Str(String),
    Pick(u8),
    Null,
    Bool(bool),
    Arr(Vec<Val>),
    Obj(Vec<(u8, Val)>),
}

const KEYS: &[&str] = &["temp", "deviceId", "a", "b", "arr", "Temp", "TEMP", "x"];

fn json_of(v: &Val, depth: usize) -> Value {
    if depth > 8 {
        return Value::Null;
    }
    match v {
        Val::Int(n) => json!(n),
        Val::Float(f) => json!(f), // not finite -> null
        Val::Small(n) => json!(36.0 + f64::from(*n) / 10.0),
        Val::Str(s) => json!(s),
        Val::Pick(i) => json!(pick(
            &["patient-00000", "patient-00001", "37.5", "", "NaN", "true"],
            *i
        )),
        Val::Null => Value::Null,
        Val::Bool(b) => json!(b),
        Val::Arr(items) => Value::Array(
            items
                .iter()
                .take(8)
                .map(|x| json_of(x, depth + 1))
                .collect(),
        ),
        Val::Obj(fields) => Value::Object(
            fields
                .iter()
                .take(8)
                .map(|(k, x)| (pick(KEYS, *k).to_string(), json_of(x, depth + 1)))
                .collect(),
        ),
    }
}

#[derive(Arbitrary, Debug)]
enum Time {
    /// ISO 8601 at arrival + offset (ms).
    Iso(i32, u8),
    /// .NET invariant / en-US forms at arrival + offset (s).
    Dotnet(i16, bool),
    /// Epoch milliseconds at arrival + offset (ms).
    Epoch(i32),
    Raw(String),
    Number(f64),
    Missing,
}

#[derive(Arbitrary, Debug)]
struct Event {
    input: u8,
    device: u8,
    temp: Val,
    time: Time,
    extra: Vec<(u8, Val)>,
    /// Wraps the event's `a` field in this many objects (deep documents; 128 is serde_json's
    /// limit for the whole event).
    nest: u8,
}

fn event_json(e: &Event, arrival: DateTime<Utc>) -> String {
    let mut m = Map::new();
    m.insert("temp".into(), json_of(&e.temp, 0));
    m.insert(
        "deviceId".into(),
        json!(format!("patient-{:05}", e.device % 6)),
    );
    let t = match &e.time {
        Time::Iso(off, form) => {
            let t = arrival + Duration::milliseconds(i64::from(*off) % 3_600_000);
            Some(json!(match form % 4 {
                0 => t.to_rfc3339(),
                1 => t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
                2 => t.format("%Y-%m-%dT%H:%M:%S%.9f+02:00").to_string(),
                _ => t.format("%Y-%m-%d %H:%M:%S").to_string(),
            }))
        }
        Time::Dotnet(off, us) => {
            let t = arrival + Duration::seconds(i64::from(*off));
            Some(json!(if *us {
                t.format("%-m/%-d/%Y %-I:%M:%S %p").to_string()
            } else {
                t.format("%m/%d/%Y %H:%M:%S").to_string()
            }))
        }
        Time::Epoch(off) => Some(json!(arrival.timestamp_millis() + i64::from(*off))),
        Time::Raw(s) => Some(json!(s)),
        Time::Number(f) => Some(json!(f)),
        Time::Missing => None,
    };
    if let Some(t) = t {
        m.insert("timeCreated".into(), t);
    }
    for (k, v) in e.extra.iter().take(6) {
        m.insert(pick(KEYS, *k).to_string(), json_of(v, 1));
    }
    let mut a = json!({"b": "x"});
    for _ in 0..e.nest {
        a = json!({ "b": a });
    }
    m.insert("a".into(), a);
    Value::Object(m).to_string()
}

// ---- the run --------------------------------------------------------------------------------

#[derive(Arbitrary, Debug)]
enum QueryText {
    Template,
    Generated(Generated),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Step {
    Event(Event, u16),
    Tick(u16),
    Jump(i32),
    Checkpoint,
    Reference(Vec<(u8, Val)>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    query: QueryText,
    policy: (u8, u8, bool, u16),
    steps: Vec<Step>,
}

fn template_query() -> &'static str {
    static Q: OnceLock<String> = OnceLock::new();
    Q.get_or_init(|| {
        let t: Value = serde_json::from_str(include_str!("../../deployment.template.json"))
            .expect("the template is JSON");
        t["modulesContent"]["AggregatorModule"]["properties.desired"]["query"]
            .as_str()
            .expect("the template has a query")
            .to_string()
    })
}

fn template_patients() -> Vec<Value> {
    let t: Value = serde_json::from_str(include_str!("../../deployment.template.json"))
        .expect("the template is JSON");
    t["modulesContent"]["AggregatorModule"]["properties.desired"]["referenceData"]["patients"]
        ["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn rows_text(rows: &[OutputRow]) -> Vec<String> {
    rows.iter()
        .map(|r| format!("{} {} {}", r.output, r.timestamp, r.to_json()))
        .collect()
}

type Outcome = Result<Vec<String>, String>;

fn outcome(r: Result<Vec<OutputRow>, stream_query::EventError>) -> Outcome {
    r.map(|r| rows_text(&r)).map_err(|e| e.to_string())
}

/// Runs the steps on the engine AggregatorModule runs (events read with `parse_event`, only the
/// fields the query reads), on one that is given whole events, and, after a checkpoint step, on
/// the engine restored from it; checks all three agree.
fn run(input: &Input, query: &Query, policy: &EventPolicy) {
    let mut engine = Engine::new(query.clone(), policy.clone());
    let mut whole: Option<Engine> = Some(Engine::new(query.clone(), policy.clone()));
    // reference data is not in checkpoints: the module gives the restored engine the rows again
    let mut reference = template_patients();
    for r in query.references() {
        let _ = engine.set_reference(&r, reference.clone());
        if let Some(w) = whole.as_mut() {
            let _ = w.set_reference(&r, reference.clone());
        }
    }
    let mut copy: Option<Engine> = None;
    let mut now = "2026-11-24T08:00:00Z"
        .parse::<DateTime<Utc>>()
        .expect("a time");
    for step in input.steps.iter().take(64) {
        // what the engine gave, then what the others gave
        let mut outs: Vec<(&str, Outcome)> = Vec::new();
        match step {
            Step::Event(e, gap) => {
                now += Duration::milliseconds(i64::from(*gap) * 10);
                let text = event_json(e, now);
                let input = pick(INPUTS, e.input);
                // as AggregatorModule reads a body
                let fields = query.fields_read(input);
                let Ok(v) = stream_query::parse_event(&text, fields.as_deref()) else {
                    continue;
                };
                let _ = query.event_time(input, &v);
                outs.push(("engine", outcome(engine.record(input, &v, now))));
                if let Some(c) = copy.as_mut() {
                    outs.push(("restored", outcome(c.record(input, &v, now))));
                }
                match serde_json::from_str::<Value>(&text) {
                    Ok(all) => {
                        if let Some(w) = whole.as_mut() {
                            match w.record(input, &all, now) {
                                // nested deeper than the engine keeps (64 levels) in a field the
                                // query does not read: the projected event is shallow and taken,
                                // the whole one refused; the engines part ways here too
                                Err(stream_query::EventError::TooDeep { .. })
                                    if !matches!(
                                        outs.last(),
                                        Some((_, Err(e))) if e.contains("levels deep")
                                    ) =>
                                {
                                    whole = None
                                }
                                r => outs.push(("whole-event", outcome(r))),
                            }
                        }
                    }
                    // too deep for serde_json in a field the query does not read: parse_event
                    // took it, a whole read cannot; the engines part ways here
                    Err(_) => whole = None,
                }
            }
            Step::Tick(ms) => {
                now += Duration::milliseconds(i64::from(*ms) * 100);
                outs.push(("engine", Ok(rows_text(&engine.advance(now)))));
                if let Some(c) = copy.as_mut() {
                    outs.push(("restored", Ok(rows_text(&c.advance(now)))));
                }
                if let Some(w) = whole.as_mut() {
                    outs.push(("whole-event", Ok(rows_text(&w.advance(now)))));
                }
            }
            Step::Jump(s) => {
                // a wall clock that jumps (NTP, a bad RTC), backwards too
                now += Duration::seconds(i64::from(*s) % 100_000);
            }
            Step::Reference(fields) => {
                reference.push(Value::Object(
                    fields
                        .iter()
                        .take(8)
                        .map(|(k, x)| (pick(KEYS, *k).to_string(), json_of(x, 1)))
                        .collect(),
                ));
                for r in query.references() {
                    let _ = engine.set_reference(&r, reference.clone());
                    for e in [copy.as_mut(), whole.as_mut()].into_iter().flatten() {
                        let _ = e.set_reference(&r, reference.clone());
                    }
                }
            }
            Step::Checkpoint => {
                if copy.is_some() {
                    continue;
                }
                let state = engine.checkpoint();
                let text = serde_json::to_string(&state).expect("a checkpoint serializes");
                let back: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("a checkpoint does not read back: {e}"));
                let mut c = Engine::restore(query.clone(), policy.clone(), &back)
                    .unwrap_or_else(|e| panic!("a checkpoint does not restore: {e}"));
                for r in query.references() {
                    let _ = c.set_reference(&r, reference.clone());
                }
                copy = Some(c);
            }
        }
        let _ = engine.stats();
        let _ = engine.next_deadline();
        for e in [Some(&mut engine), copy.as_mut(), whole.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = e.take_warnings();
        }
        if let Some(((_, first), rest)) = outs.split_first() {
            for (who, o) in rest {
                assert_eq!(o, first, "the {who} engine differs from the engine");
            }
        }
    }
    let a = rows_text(&engine.flush());
    if let Some(mut c) = copy {
        assert_eq!(
            a,
            rows_text(&c.flush()),
            "the restored engine flushes other rows"
        );
    }
    if let Some(mut w) = whole {
        assert_eq!(
            a,
            rows_text(&w.flush()),
            "the whole-event engine flushes other rows"
        );
    }
}

fuzz_target!(|input: Input| {
    let text = match &input.query {
        QueryText::Template => template_query().to_string(),
        QueryText::Generated(g) => render_query(g),
        QueryText::Raw(s) => s.clone(),
    };
    let Ok(query) = Query::parse(&text) else {
        return;
    };
    let _ = (query.inputs(), query.outputs(), query.text());
    let (ooo, late, drop, early) = input.policy;
    let policy = EventPolicy {
        out_of_order_tolerance: std::time::Duration::from_secs(u64::from(ooo % 30)),
        late_arrival_tolerance: std::time::Duration::from_secs(u64::from(late % 30)),
        action: if drop {
            OrderingAction::Drop
        } else {
            OrderingAction::Adjust
        },
        early_arrival_limit: std::time::Duration::from_secs(u64::from(early % 900)),
    };
    run(&input, &query, &policy);
});
