//! Planner: [`Ast`] -> [`Query`]. Resolves which statement reads which input or step, names the
//! output columns, pulls aggregates out of SELECT and HAVING, and checks that the query makes
//! sense before any event arrives.
//!
//! Column names: an alias as written; a field's last segment as written; an unaliased function or
//! aggregate by its lower-case name (`Avg("temp")` -> `avg`, `COUNT(*)` -> `count`, as ASA
//! does); `System.Timestamp()` -> `timestamp`; a CAST by its inner expression's name; anything
//! else `column{N}` (N = 1-based position in the select list).

use crate::analytic::{AnFunc, AnSpec};
use crate::anomaly::Mode;
use crate::ast::*;
use crate::error::EventError;
use crate::error::QueryError;
use crate::eval::{eval, show, Ctx};
use crate::parser::{parse, unit_micros, AGGREGATES};
use crate::value::{parse_time_json, parse_time_val, to_datetime, Micros, Val};
use std::sync::Arc;

/// Fields ASA adds to every input event; both are the arrival time here.
pub(crate) const ARRIVAL_FIELDS: [&str; 2] = ["EventProcessedUtcTime", "EventEnqueuedUtcTime"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggFunc {
    Avg,
    Count,
    CountStar,
    CountDistinct,
    Min,
    Max,
    Sum,
    Stdev,
    Stdevp,
    Var,
    Varp,
    TopOne,
    PercentileCont,
    PercentileDisc,
    Collect,
    CollectTop,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AggSpec {
    pub func: AggFunc,
    /// The argument (None for COUNT(*) and TopOne()).
    pub arg: Option<Expr>,
    pub order: Vec<OrderItem>,
    /// Percentile_Cont's and Percentile_Disc's fraction.
    pub fraction: f64,
    /// CollectTop's number of events.
    pub top: usize,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OutItem {
    /// `*`, or `path.*`: the fields of the record at `path` (an alias alone: the whole row, or
    /// in a JOIN that side's fields).
    Star(Option<Vec<String>>),
    Col(String, Expr),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Source {
    Input,
    /// Reads the rows of the statement with this index (a WITH step).
    Step(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Sink {
    Output(String),
    Step(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stmt {
    pub sink: Sink,
    pub from: String,
    pub source: Source,
    pub quals: Vec<String>,
    pub timestamp_by: Option<Expr>,
    pub over: Vec<Expr>,
    pub filter: Option<Expr>,
    pub items: Vec<OutItem>,
    /// Some when the statement aggregates.
    pub window: Option<Window>,
    pub keys: Vec<Expr>,
    /// Session windows: the partition keys (without them one session timeline spans the input).
    pub session_partition: Vec<Expr>,
    pub aggs: Vec<AggSpec>,
    /// Analytic functions (LAG, LAST, ISFIRST, anomaly detection), evaluated per event in
    /// event-time order before WHERE.
    pub analytics: Vec<AnSpec>,
    pub having: Option<Expr>,
    /// Indices of statements that read this one.
    pub consumers: Vec<usize>,
    /// Indices of the statements this one reads (a WITH step, its UNION members, or the two
    /// sides of a JOIN); empty for a statement that reads an input.
    pub producers: Vec<usize>,
    /// A JOIN (its sides are statements of their own, in `producers`).
    pub join: Option<JoinSpec>,
    /// `CROSS/OUTER APPLY`, applied in order to each input row.
    pub apply: Vec<Apply>,
    /// The statement reads `EventProcessedUtcTime` or `EventEnqueuedUtcTime`, which ASA adds to
    /// every input event; the engine fills in the arrival time when the event lacks them.
    pub arrival_fields: bool,
}

/// A planned JOIN: the time bound is on `right time - left time`, inclusive, in microseconds
/// (elapsed time, as DATEDIFF in ON measures it); None for a reference data JOIN.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JoinSpec {
    pub kind: JoinKind,
    pub left: usize,
    pub right: Option<usize>,
    /// The reference data input of a JOIN without a time bound.
    pub reference: Option<String>,
    /// The left side is a source of its own (its row goes under `left_name`); false when it
    /// is an earlier JOIN of a chain, whose rows already carry each source under its name.
    pub nest_left: bool,
    pub left_name: String,
    pub right_name: String,
    pub bound: Option<(Micros, Micros)>,
    /// `left expression = right expression` parts of ON: matched through an index.
    pub left_keys: Vec<Expr>,
    pub right_keys: Vec<Expr>,
    /// The rest of ON, on the joined row.
    pub on: Option<Expr>,
}

/// A parsed and planned query, ready for [`crate::Engine::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub(crate) text: String,
    /// Shared so the engine can hold a statement while it mutates its own state.
    pub(crate) stmts: Arc<Vec<Stmt>>,
}

impl Query {
    /// Parse and plan a query. Errors carry the line and column of the offending text.
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        let ast = parse(text)?;
        plan(text, ast)
    }

    /// The input names the query reads (FROM names that are not WITH steps), in order of first use.
    pub fn inputs(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for s in self.stmts.iter() {
            if s.source == Source::Input && !v.iter().any(|x| x.eq_ignore_ascii_case(&s.from)) {
                v.push(s.from.clone());
            }
        }
        v
    }

    /// The output names the query writes (INTO names), in order of first use.
    pub fn outputs(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for s in self.stmts.iter() {
            if let Sink::Output(o) = &s.sink {
                if !v.contains(o) {
                    v.push(o.clone());
                }
            }
        }
        v
    }

    /// The reference data the query JOINs without a time bound (load them with
    /// [`crate::Engine::set_reference`]), in order of first use.
    pub fn references(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for s in self.stmts.iter() {
            if let Some(r) = s.join.as_ref().and_then(|j| j.reference.as_ref()) {
                if !v.iter().any(|x| x.eq_ignore_ascii_case(r)) {
                    v.push(r.clone());
                }
            }
        }
        v
    }

    /// The top-level fields of an `input` event that the query can read (lower case), or `None`
    /// when it may read the whole event (`SELECT *`, `x.*`, `TopOne()`, `Collect()`, the input
    /// named alone, ...). A caller may leave every other field out of the events it passes to
    /// [`crate::Engine::record`] without changing any output: see [`crate::parse_event`].
    pub fn fields_read(&self, input: &str) -> Option<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for s in self.stmts.iter() {
            if s.source == Source::Input && s.from.eq_ignore_ascii_case(input) {
                stmt_fields(s, &mut out)?;
            }
        }
        out.sort();
        out.dedup();
        Some(out)
    }

    /// The query text as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The event time `TIMESTAMP BY` gives `event` of `input` (the first statement reading
    /// `input` that has one), without any event-ordering adjustment; `Ok(None)` when no statement
    /// reading `input` has `TIMESTAMP BY` (the arrival time is then the event time). A replay
    /// tool uses this to derive arrival times for recorded events.
    pub fn event_time(
        &self,
        input: &str,
        event: &serde_json::Value,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, EventError> {
        let readers: Vec<&Stmt> = self
            .stmts
            .iter()
            .filter(|s| s.source == Source::Input && s.from.eq_ignore_ascii_case(input))
            .collect();
        if readers.is_empty() {
            return Err(EventError::UnknownInput {
                input: input.to_string(),
                known: self.inputs().join(", "),
            });
        }
        let obj = match event {
            serde_json::Value::Object(m) => m,
            _ => return Err(EventError::NotAnObject),
        };
        let (s, e) = match readers
            .iter()
            .find_map(|s| s.timestamp_by.as_ref().map(|e| (*s, e)))
        {
            Some(x) => x,
            None => return Ok(None),
        };
        let ctx = Ctx {
            row: obj,
            time: 0,
            aggs: &[],
            an: &[],
            quals: &s.quals,
        };
        timestamp_of(e, &ctx).map(|t| Some(to_datetime(t)))
    }
}

/// The time an event gives itself through a statement's `TIMESTAMP BY e`, before the ordering
/// policy (the engine's and [`Query::event_time`]'s one reading of it).
pub(crate) fn timestamp_of(e: &Expr, ctx: &Ctx) -> Result<Micros, EventError> {
    // the usual `TIMESTAMP BY field`: read where it is in the event, without a copy
    if let Expr::Field(path, _) = e {
        return match crate::eval::field(ctx.row, path, ctx.quals) {
            None | Some(serde_json::Value::Null) => {
                Err(EventError::MissingTimestamp { field: show(e) })
            }
            Some(v) => parse_time_json(v).ok_or_else(|| EventError::BadTimestamp {
                field: show(e),
                value: Val::from_json(v).to_json().to_string(),
            }),
        };
    }
    let v = eval(e, ctx).map_err(|m| EventError::WrongType {
        expression: show(e),
        message: m,
    })?;
    if v.is_null() {
        return Err(EventError::MissingTimestamp { field: show(e) });
    }
    parse_time_val(&v).ok_or_else(|| EventError::BadTimestamp {
        field: show(e),
        value: v.to_json().to_string(),
    })
}

fn err<T>(p: Pos, msg: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError::new(p.line.max(1), p.col.max(1), msg))
}

/// Where the rows of a statement come from.
fn resolve_source(
    name: &str,
    pos: Pos,
    steps: &[(String, Vec<usize>)],
    all_steps: &[String],
) -> Result<(Source, Vec<usize>), QueryError> {
    if let Some((_, idx)) = steps.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Ok((Source::Step(idx[0]), idx.clone()));
    }
    if all_steps.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        return err(
            pos,
            format!("step '{name}' is read before it is defined; a WITH step can only read inputs and earlier steps"),
        );
    }
    Ok((Source::Input, Vec::new()))
}

fn plan(text: &str, ast: Ast) -> Result<Query, QueryError> {
    let mut stmts: Vec<Stmt> = Vec::new();
    // step name -> the statements that write it (more than one with UNION)
    let mut steps: Vec<(String, Vec<usize>)> = Vec::new();
    type Named = (Option<(String, Pos)>, Vec<Select>);
    let all: Vec<Named> = ast
        .steps
        .into_iter()
        .map(|s| (Some((s.name, s.pos)), s.selects))
        .chain(ast.selects.into_iter().map(|s| (None, s)))
        .collect();
    let all_steps: Vec<String> = all
        .iter()
        .filter_map(|(s, _)| s.as_ref().map(|s| s.0.clone()))
        .collect();
    for (step, selects) in all {
        if let Some((name, pos)) = &step {
            if steps.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                return err(
                    *pos,
                    format!("step '{name}' is defined twice; give each WITH step its own name"),
                );
            }
        }
        let sink = match &step {
            Some((n, _)) => Sink::Step(n.clone()),
            None => Sink::Output(
                selects
                    .first()
                    .and_then(|s| s.into.clone())
                    .unwrap_or_else(|| "output".to_string()),
            ),
        };
        let mut written = Vec::new();
        for sel in selects {
            let idx = plan_statement(sel, sink.clone(), &steps, &all_steps, &mut stmts)?;
            written.push(idx);
        }
        if let Some((name, _)) = step {
            steps.push((name, written));
        }
    }
    Ok(Query {
        text: text.to_string(),
        stmts: Arc::new(stmts),
    })
}

/// Push a statement that reads `name` (an input or a step) and register it with its producers.
fn push_stmt(stmts: &mut Vec<Stmt>, mut stmt: Stmt, producers: Vec<usize>) -> usize {
    let idx = stmts.len();
    for &p in &producers {
        stmts[p].consumers.push(idx);
    }
    stmt.producers = producers;
    stmts.push(stmt);
    idx
}

/// A pass-through side of a JOIN: `SELECT * FROM source [TIMESTAMP BY ..]`, so each side keeps
/// its own event time, reorder buffer and watermark.
fn side_select(
    from: String,
    from_pos: Pos,
    alias: Option<String>,
    timestamp_by: Option<Expr>,
    over: Vec<Expr>,
    pos: Pos,
) -> Select {
    Select {
        pos,
        items: vec![SelectItem::Star(None)],
        into: None,
        from,
        from_pos,
        alias,
        timestamp_by,
        over,
        join: Vec::new(),
        apply: Vec::new(),
        filter: None,
        group: Vec::new(),
        window: None,
        session_partition: Vec::new(),
        having: None,
    }
}

/// Plan one SELECT (with its JOIN sides, if any); returns the index of the statement whose rows
/// go to `sink`.
fn plan_statement(
    mut sel: Select,
    sink: Sink,
    steps: &[(String, Vec<usize>)],
    all_steps: &[String],
    stmts: &mut Vec<Stmt>,
) -> Result<usize, QueryError> {
    let (source, producers) = resolve_source(&sel.from, sel.from_pos, steps, all_steps)?;
    if source != Source::Input && sel.timestamp_by.is_some() {
        return err(
            sel.from_pos,
            format!(
            "'{}' is a WITH step, whose rows already carry System.Timestamp(); remove TIMESTAMP BY",
            sel.from
        ),
        );
    }
    let joins = std::mem::take(&mut sel.join);
    if joins.is_empty() {
        let stmt = plan_select(sel, source, sink)?;
        return Ok(push_stmt(stmts, stmt, producers));
    }
    if sel.items.contains(&SelectItem::Star(None)) {
        return err(
            sel.pos,
            "SELECT * cannot be used with JOIN; list the columns, or use alias.* for one side",
        );
    }
    let left_name = sel.alias.clone().unwrap_or_else(|| sel.from.clone());
    let left_side = side_select(
        sel.from.clone(),
        sel.from_pos,
        sel.alias.clone(),
        sel.timestamp_by.take(),
        std::mem::take(&mut sel.over),
        sel.pos,
    );
    let left_stmt = plan_select(
        left_side,
        source,
        Sink::Step(format!("{left_name} (JOIN left side)")),
    )?;
    let mut left = push_stmt(stmts, left_stmt, producers);
    let mut left_names = vec![left_name];
    let n = joins.len();
    let mut sel = Some(sel);
    for (k, join) in joins.into_iter().enumerate() {
        let right_name = join.alias.clone().unwrap_or_else(|| join.from.clone());
        if left_names
            .iter()
            .any(|l| l.eq_ignore_ascii_case(&right_name))
        {
            return err(join.from_pos, format!(
                "two sources of the JOIN are called '{right_name}'; give them different aliases (FROM s a JOIN s b)"
            ));
        }
        let spec = split_join_condition(&join, &left_names, &right_name)?;
        let (right_src, right_producers) =
            resolve_source(&join.from, join.from_pos, steps, all_steps)?;
        let (right, reference) = match spec.bound {
            Some(_) => {
                if right_src != Source::Input && join.timestamp_by.is_some() {
                    return err(join.from_pos, format!(
                        "'{}' is a WITH step, whose rows already carry System.Timestamp(); remove TIMESTAMP BY",
                        join.from
                    ));
                }
                let right_side = side_select(
                    join.from.clone(),
                    join.from_pos,
                    join.alias.clone(),
                    join.timestamp_by.clone(),
                    join.over.clone(),
                    join.pos,
                );
                let right_stmt = plan_select(
                    right_side,
                    right_src,
                    Sink::Step(format!("{right_name} (JOIN right side)")),
                )?;
                (Some(push_stmt(stmts, right_stmt, right_producers)), None)
            }
            None => {
                // no time bound: reference data, which must not be a stream of this query
                if right_src != Source::Input {
                    return err(join.from_pos, format!(
                        "'{}' is a WITH step (a stream); a JOIN of two streams needs a time bound: add AND DATEDIFF(second, {}, {right_name}) BETWEEN 0 AND 60 to ON",
                        join.from, left_names[0]
                    ));
                }
                if join.timestamp_by.is_some() {
                    return err(join.from_pos, format!(
                        "'{}' is joined without a DATEDIFF time bound, so it is reference data, which has no TIMESTAMP BY; add a DATEDIFF bound to ON if it is a stream",
                        join.from
                    ));
                }
                (None, Some(join.from.clone()))
            }
        };
        let last = k + 1 == n;
        let mut stmt = if last {
            match sel.take() {
                Some(sel) => plan_select(sel, Source::Step(left), sink.clone())?,
                None => return err(join.pos, "internal: the JOIN's SELECT was planned twice"),
            }
        } else {
            // an inner JOIN of a chain: its joined rows feed the next JOIN
            let pass = side_select(
                left_names[0].clone(),
                join.pos,
                None,
                None,
                Vec::new(),
                join.pos,
            );
            plan_select(
                pass,
                Source::Step(left),
                Sink::Step(format!("{right_name} (JOIN)")),
            )?
        };
        stmt.quals = Vec::new();
        stmt.join = Some(JoinSpec {
            kind: join.kind,
            left,
            right,
            reference,
            nest_left: k == 0,
            left_name: left_names[0].clone(),
            right_name: right_name.clone(),
            bound: spec.bound,
            left_keys: spec.left_keys,
            right_keys: spec.right_keys,
            on: spec.on,
        });
        let producers = std::iter::once(left).chain(right).collect();
        left = push_stmt(stmts, stmt, producers);
        left_names.push(right_name);
    }
    Ok(left)
}

struct JoinCondition {
    bound: Option<(Micros, Micros)>,
    left_keys: Vec<Expr>,
    right_keys: Vec<Expr>,
    on: Option<Expr>,
}

fn conjuncts(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::Bin(BinOp::And, a, b) => {
            conjuncts(*a, out);
            conjuncts(*b, out);
        }
        other => out.push(other),
    }
}

/// Which sides an expression's fields name: (left, right, other).
fn sides(e: &Expr, left: &[String], right: &str) -> (bool, bool, bool) {
    let (mut l, mut r, mut o) = (false, false, false);
    let _ = visit(e, &mut |x| {
        match x {
            Expr::Field(p, _)
                if p.len() > 1 && left.iter().any(|n| p[0].eq_ignore_ascii_case(n)) =>
            {
                l = true
            }
            Expr::Field(p, _) if p.len() > 1 && p[0].eq_ignore_ascii_case(right) => r = true,
            Expr::Field(..) => o = true,
            Expr::Timestamp | Expr::Analytic { .. } => o = true,
            Expr::Call { .. } if is_agg_call(x) => o = true,
            _ => {}
        }
        Ok(())
    });
    (l, r, o)
}

/// `DATEDIFF(unit, a, b)` where a and b name the two sides: the unit in microseconds and whether
/// it measures right minus left (false: left minus right).
fn datediff_of_sides(e: &Expr, left: &[String], right: &str) -> Option<(Micros, bool)> {
    if let Expr::Call { name, args, .. } = e {
        if name == "DATEDIFF" && args.len() == 3 {
            let unit = match &args[0] {
                Expr::Lit(Val::Str(u)) => unit_micros(u)?,
                _ => return None,
            };
            let side = |x: &Expr| match x {
                Expr::Field(p, _) if p.len() == 1 => Some(p[0].to_ascii_lowercase()),
                _ => None,
            };
            let (a, b) = (side(&args[1])?, side(&args[2])?);
            let is_left = |x: &str| left.iter().any(|n| n.eq_ignore_ascii_case(x));
            let r = right.to_ascii_lowercase();
            if is_left(&a) && b == r {
                return Some((unit, true));
            }
            if a == r && is_left(&b) {
                return Some((unit, false));
            }
        }
    }
    None
}

fn lit_int(e: &Expr) -> Option<i64> {
    match e {
        Expr::Lit(Val::Int(i)) => Some(*i),
        Expr::Lit(Val::Float(f)) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

/// Split a JOIN's ON into its time bound (on right time minus left time), equality keys
/// (left expression = right expression) and the rest.
fn split_join_condition(
    join: &Join,
    left: &[String],
    right: &str,
) -> Result<JoinCondition, QueryError> {
    const WEEK: Micros = 7 * 86_400_000_000;
    let mut parts = Vec::new();
    conjuncts(join.on.clone(), &mut parts);
    let (mut lo, mut hi): (Option<Micros>, Option<Micros>) = (None, None);
    let mut tighten = |l: Option<Micros>, h: Option<Micros>| {
        if let Some(l) = l {
            lo = Some(lo.map_or(l, |x| x.max(l)));
        }
        if let Some(h) = h {
            hi = Some(hi.map_or(h, |x| x.min(h)));
        }
    };
    let (mut left_keys, mut right_keys, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    for c in parts {
        // DATEDIFF(unit, a, b) BETWEEN x AND y, or compared with a whole number
        let bound = match &c {
            Expr::Between(d, x, y, false) => datediff_of_sides(d, left, right)
                .and_then(|(u, fwd)| Some((u, fwd, lit_int(x)?, lit_int(y)?))),
            _ => None,
        };
        if let Some((u, fwd, x, y)) = bound {
            if x.unsigned_abs() > (WEEK / u) as u64 || y.unsigned_abs() > (WEEK / u) as u64 {
                return err(
                    join.pos,
                    "the JOIN's DATEDIFF bound must stay within 7 days",
                );
            }
            let (x, y) = (x * u, y * u);
            if fwd {
                tighten(Some(x), Some(y));
            } else {
                tighten(Some(y.saturating_neg()), Some(x.saturating_neg()));
            }
            continue;
        }
        if let Expr::Bin(op, a, b) = &c {
            let cmp = match (
                datediff_of_sides(a, left, right),
                lit_int(b),
                datediff_of_sides(b, left, right),
                lit_int(a),
            ) {
                (Some((u, fwd)), Some(n), _, _) => Some((u, fwd, *op, n)),
                (_, _, Some((u, fwd)), Some(n)) => {
                    // n op DATEDIFF -> DATEDIFF op' n
                    let flipped = match op {
                        BinOp::Lt => BinOp::Gt,
                        BinOp::Le => BinOp::Ge,
                        BinOp::Gt => BinOp::Lt,
                        BinOp::Ge => BinOp::Le,
                        o => *o,
                    };
                    Some((u, fwd, flipped, n))
                }
                _ => None,
            };
            if let Some((u, fwd, op, n)) = cmp {
                if n.unsigned_abs() > (WEEK / u) as u64 {
                    return err(
                        join.pos,
                        "the JOIN's DATEDIFF bound must stay within 7 days",
                    );
                }
                // the bound on DATEDIFF, in microseconds (elapsed time)
                let v = n * u;
                let (l, h) = match op {
                    BinOp::Le => (None, Some(v)),
                    BinOp::Lt => (None, Some(v - 1)),
                    BinOp::Ge => (Some(v), None),
                    BinOp::Gt => (Some(v + 1), None),
                    BinOp::Eq => (Some(v), Some(v)),
                    _ => {
                        return err(
                            join.pos,
                            "DATEDIFF in ON can be compared with =, <, <=, >, >= or BETWEEN",
                        )
                    }
                };
                if fwd {
                    tighten(l, h);
                } else {
                    tighten(h.map(|h| -h), l.map(|l| -l));
                }
                continue;
            }
            if *op == BinOp::Eq {
                let (al, ar, ao) = sides(a, left, right);
                let (bl, br, bo) = sides(b, left, right);
                if !ao && !bo {
                    if al && !ar && br && !bl {
                        left_keys.push((**a).clone());
                        right_keys.push((**b).clone());
                        continue;
                    }
                    if ar && !al && bl && !br {
                        left_keys.push((**b).clone());
                        right_keys.push((**a).clone());
                        continue;
                    }
                }
            }
        }
        // a DATEDIFF of the two sides that is not one of the forms above would be taken for
        // "no time bound" (reference data): refuse it instead
        let mut odd = false;
        let _ = visit(&c, &mut |x| {
            odd |= datediff_of_sides(x, left, right).is_some();
            Ok(())
        });
        if odd {
            return err(join.pos, format!(
                "the JOIN's time bound is not understood; write it as its own AND term: DATEDIFF(unit, {}, {right}) BETWEEN low AND high, with whole numbers (or compared with one: <=, <, >=, >, =)",
                left[left.len() - 1]
            ));
        }
        rest.push(c);
    }
    let bound = match (lo, hi) {
        (None, None) => None,
        // an upper bound alone: the right event at or after the left one
        (None, Some(h)) if h >= 0 => Some((0, h)),
        (None, Some(_)) => {
            return err(join.pos, "the JOIN's DATEDIFF bound has only a negative upper bound; give both ends: DATEDIFF(unit, a, b) BETWEEN low AND high")
        }
        (Some(_), None) => {
            return err(join.pos, "the JOIN's DATEDIFF bound has no upper end; give both ends: DATEDIFF(unit, a, b) BETWEEN low AND high")
        }
        (Some(l), Some(h)) => Some((l, h)),
    };
    if let Some((l, h)) = bound {
        if l > h {
            return err(
                join.pos,
                "the JOIN's DATEDIFF bound is empty (its low end is above its high end)",
            );
        }
        if l < -WEEK || h > WEEK {
            return err(
                join.pos,
                "the JOIN's DATEDIFF bound must stay within 7 days",
            );
        }
    }
    let on = rest
        .into_iter()
        .reduce(|a, b| Expr::Bin(BinOp::And, Box::new(a), Box::new(b)));
    if let Some(o) = &on {
        check_no_agg(o)?;
        check_no_analytic(o, "a JOIN's ON")?;
    }
    for k in &left_keys {
        check_no_analytic(k, "a JOIN's ON")?;
    }
    Ok(JoinCondition {
        bound,
        left_keys,
        right_keys,
        on,
    })
}

fn is_agg_call(e: &Expr) -> bool {
    matches!(e, Expr::Call { name, .. } if AGGREGATES.contains(&name.as_str()))
}

/// Replace aggregate calls by `Agg(i)`, collecting their specs.
fn extract(e: Expr, aggs: &mut Vec<AggSpec>, inside: bool) -> Result<Expr, QueryError> {
    Ok(match e {
        Expr::Call {
            name,
            args,
            distinct,
            star,
            order,
            pos,
        } if AGGREGATES.contains(&name.as_str()) => {
            if inside {
                return err(
                    pos,
                    format!("{name} is inside another aggregate; aggregates cannot be nested"),
                );
            }
            for a in args.iter().chain(order.iter().map(|o| &o.expr)) {
                visit(a, &mut |x| match x {
                    Expr::Call {
                        name: inner, pos, ..
                    } if is_agg_call(x) => err(
                        *pos,
                        format!("{inner} is inside {name}; aggregates cannot be nested"),
                    ),
                    _ => Ok(()),
                })?;
            }
            let text = show(&Expr::Call {
                name: name.clone(),
                args: args.clone(),
                distinct,
                star,
                order: order.clone(),
                pos,
            });
            let func = match name.as_str() {
                "AVG" => AggFunc::Avg,
                "COUNT" if star => AggFunc::CountStar,
                "COUNT" if distinct => AggFunc::CountDistinct,
                "COUNT" => AggFunc::Count,
                "MIN" => AggFunc::Min,
                "MAX" => AggFunc::Max,
                "SUM" => AggFunc::Sum,
                "STDEV" => AggFunc::Stdev,
                "STDEVP" => AggFunc::Stdevp,
                "VAR" => AggFunc::Var,
                "VARP" => AggFunc::Varp,
                "TOPONE" => AggFunc::TopOne,
                "PERCENTILE_DISC" => AggFunc::PercentileDisc,
                "COLLECT" => AggFunc::Collect,
                "COLLECTTOP" => AggFunc::CollectTop,
                _ => AggFunc::PercentileCont,
            };
            let mut top = 0;
            let (arg, fraction) = match func {
                AggFunc::PercentileCont | AggFunc::PercentileDisc => {
                    let f = match args.first() {
                        Some(Expr::Lit(v)) => v.as_f64().unwrap_or(0.5),
                        _ => 0.5,
                    };
                    (None, f)
                }
                AggFunc::CollectTop => {
                    let mut it = args.into_iter();
                    if let Some(Expr::Lit(v)) = it.next() {
                        top = v.as_f64().unwrap_or(1.0).max(1.0) as usize;
                    }
                    (it.next(), 0.0)
                }
                _ => (args.into_iter().next(), 0.0),
            };
            let spec = AggSpec {
                func,
                arg,
                order,
                fraction,
                top,
                text,
            };
            let i = match aggs.iter().position(|a| *a == spec) {
                Some(i) => i,
                None => {
                    aggs.push(spec);
                    aggs.len() - 1
                }
            };
            Expr::Agg(i)
        }
        Expr::Call {
            name,
            args,
            distinct,
            star,
            order,
            pos,
        } => {
            let mut a = Vec::new();
            for x in args {
                a.push(extract(x, aggs, inside)?);
            }
            Expr::Call {
                name,
                args: a,
                distinct,
                star,
                order,
                pos,
            }
        }
        Expr::Neg(x) => Expr::Neg(Box::new(extract(*x, aggs, inside)?)),
        Expr::Not(x) => Expr::Not(Box::new(extract(*x, aggs, inside)?)),
        Expr::Bin(op, l, r) => Expr::Bin(
            op,
            Box::new(extract(*l, aggs, inside)?),
            Box::new(extract(*r, aggs, inside)?),
        ),
        Expr::IsNull(x, n) => Expr::IsNull(Box::new(extract(*x, aggs, inside)?), n),
        Expr::Like(a, b, n) => Expr::Like(
            Box::new(extract(*a, aggs, inside)?),
            Box::new(extract(*b, aggs, inside)?),
            n,
        ),
        Expr::Between(a, b, c, n) => Expr::Between(
            Box::new(extract(*a, aggs, inside)?),
            Box::new(extract(*b, aggs, inside)?),
            Box::new(extract(*c, aggs, inside)?),
            n,
        ),
        Expr::In(a, l, n) => {
            let mut v = Vec::new();
            for x in l {
                v.push(extract(x, aggs, inside)?);
            }
            Expr::In(Box::new(extract(*a, aggs, inside)?), v, n)
        }
        Expr::Case {
            operand,
            whens,
            otherwise,
        } => {
            let operand = match operand {
                Some(o) => Some(Box::new(extract(*o, aggs, inside)?)),
                None => None,
            };
            let mut w = Vec::new();
            for (a, b) in whens {
                w.push((extract(a, aggs, inside)?, extract(b, aggs, inside)?));
            }
            let otherwise = match otherwise {
                Some(o) => Some(Box::new(extract(*o, aggs, inside)?)),
                None => None,
            };
            Expr::Case {
                operand,
                whens: w,
                otherwise,
            }
        }
        Expr::Cast(x, t, tr) => Expr::Cast(Box::new(extract(*x, aggs, inside)?), t, tr),
        other => other,
    })
}

/// The event fields statement `s` (which reads an input) can read, added to `out` in lower
/// case; `None` when it may read the whole event. Conservative: a name that is both a field and
/// an alias counts as both.
fn stmt_fields(s: &Stmt, out: &mut Vec<String>) -> Option<()> {
    let is_qual = |n: &str| s.quals.iter().any(|q| q.eq_ignore_ascii_case(n));
    if s.arrival_fields {
        out.extend(ARRIVAL_FIELDS.iter().map(|f| f.to_ascii_lowercase()));
    }
    let mut exprs: Vec<&Expr> = Vec::new();
    exprs.extend(s.timestamp_by.iter());
    exprs.extend(s.over.iter());
    exprs.extend(s.filter.iter());
    exprs.extend(s.having.iter());
    exprs.extend(s.keys.iter());
    exprs.extend(s.session_partition.iter());
    exprs.extend(s.apply.iter().map(|a| &a.arg));
    for it in &s.items {
        match it {
            OutItem::Col(_, e) => exprs.push(e),
            OutItem::Star(None) => return None,
            OutItem::Star(Some(p)) => match p.as_slice() {
                [] => return None,
                [q] if is_qual(q) => return None,
                [q, f, ..] if is_qual(q) => {
                    out.push(q.to_ascii_lowercase());
                    out.push(f.to_ascii_lowercase());
                }
                [f, ..] => out.push(f.to_ascii_lowercase()),
            },
        }
    }
    for a in &s.aggs {
        if a.arg.is_none()
            && matches!(
                a.func,
                AggFunc::TopOne | AggFunc::Collect | AggFunc::CollectTop
            )
        {
            return None;
        }
        exprs.extend(a.arg.iter());
        exprs.extend(a.order.iter().map(|o| &o.expr));
    }
    for a in &s.analytics {
        exprs.extend(a.arg.iter());
        exprs.extend(a.default.iter());
        exprs.extend(a.partition.iter());
        exprs.extend(a.when.iter());
    }
    let mut whole = false;
    for e in exprs {
        let _ = visit(e, &mut |x| {
            if let Expr::Field(p, _) = x {
                match p.as_slice() {
                    [] => whole = true,
                    [q] if is_qual(q) => whole = true,
                    [q, f, ..] if is_qual(q) => {
                        out.push(q.to_ascii_lowercase());
                        out.push(f.to_ascii_lowercase());
                    }
                    [f, ..] => out.push(f.to_ascii_lowercase()),
                }
            }
            Ok(())
        });
    }
    (!whole).then_some(())
}

fn visit<'a>(
    e: &'a Expr,
    f: &mut dyn FnMut(&'a Expr) -> Result<(), QueryError>,
) -> Result<(), QueryError> {
    f(e)?;
    match e {
        Expr::Call { args, order, .. } => {
            for a in args {
                visit(a, f)?;
            }
            for o in order {
                visit(&o.expr, f)?;
            }
        }
        Expr::Neg(x) | Expr::Not(x) | Expr::IsNull(x, _) | Expr::Cast(x, _, _) => visit(x, f)?,
        Expr::Bin(_, a, b) | Expr::Like(a, b, _) => {
            visit(a, f)?;
            visit(b, f)?;
        }
        Expr::Analytic { args, over, .. } => {
            for a in args
                .iter()
                .chain(over.partition.iter())
                .chain(over.when.iter())
            {
                visit(a, f)?;
            }
        }
        Expr::Between(a, b, c, _) => {
            visit(a, f)?;
            visit(b, f)?;
            visit(c, f)?;
        }
        Expr::In(a, l, _) => {
            visit(a, f)?;
            for x in l {
                visit(x, f)?;
            }
        }
        Expr::Case {
            operand,
            whens,
            otherwise,
        } => {
            if let Some(o) = operand {
                visit(o, f)?;
            }
            for (a, b) in whens {
                visit(a, f)?;
                visit(b, f)?;
            }
            if let Some(o) = otherwise {
                visit(o, f)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Rebuild `e` with `f` applied to each direct child.
fn map_children(
    e: Expr,
    f: &mut dyn FnMut(Expr) -> Result<Expr, QueryError>,
) -> Result<Expr, QueryError> {
    let boxed =
        |b: Box<Expr>, f: &mut dyn FnMut(Expr) -> Result<Expr, QueryError>| f(*b).map(Box::new);
    Ok(match e {
        Expr::Call {
            name,
            args,
            distinct,
            star,
            order,
            pos,
        } => Expr::Call {
            name,
            args: args.into_iter().map(&mut *f).collect::<Result<_, _>>()?,
            distinct,
            star,
            order: order
                .into_iter()
                .map(|o| {
                    Ok(OrderItem {
                        expr: f(o.expr)?,
                        desc: o.desc,
                    })
                })
                .collect::<Result<_, QueryError>>()?,
            pos,
        },
        Expr::Neg(x) => Expr::Neg(boxed(x, f)?),
        Expr::Not(x) => Expr::Not(boxed(x, f)?),
        Expr::Bin(op, l, r) => Expr::Bin(op, boxed(l, f)?, boxed(r, f)?),
        Expr::IsNull(x, n) => Expr::IsNull(boxed(x, f)?, n),
        Expr::Like(a, b, n) => Expr::Like(boxed(a, f)?, boxed(b, f)?, n),
        Expr::Between(a, b, c, n) => Expr::Between(boxed(a, f)?, boxed(b, f)?, boxed(c, f)?, n),
        Expr::In(a, l, n) => Expr::In(
            boxed(a, f)?,
            l.into_iter().map(&mut *f).collect::<Result<_, _>>()?,
            n,
        ),
        Expr::Case {
            operand,
            whens,
            otherwise,
        } => Expr::Case {
            operand: match operand {
                Some(o) => Some(boxed(o, f)?),
                None => None,
            },
            whens: whens
                .into_iter()
                .map(|(a, b)| Ok((f(a)?, f(b)?)))
                .collect::<Result<_, QueryError>>()?,
            otherwise: match otherwise {
                Some(o) => Some(boxed(o, f)?),
                None => None,
            },
        },
        Expr::Cast(x, t, tr) => Expr::Cast(boxed(x, f)?, t, tr),
        other => other,
    })
}

/// Replace analytic function calls by `An(i)`, collecting their specs.
fn extract_analytics(e: Expr, specs: &mut Vec<AnSpec>) -> Result<Expr, QueryError> {
    match e {
        Expr::Analytic {
            name,
            args,
            over,
            pos,
        } => {
            let text = show(&Expr::Analytic {
                name: name.clone(),
                args: args.clone(),
                over: over.clone(),
                pos,
            });
            for a in args
                .iter()
                .chain(over.partition.iter())
                .chain(over.when.iter())
            {
                visit(a, &mut |x| {
                    match x {
                    Expr::Analytic { name: inner, pos, .. } => err(
                        *pos,
                        format!("{inner} is inside {name}; analytic functions cannot be nested (compute the inner one in a WITH step)"),
                    ),
                    Expr::Call { name: inner, pos, .. } if is_agg_call(x) => err(
                        *pos,
                        format!("{inner} is an aggregate and cannot be used inside {name}"),
                    ),
                    _ => Ok(()),
                }
                })?;
            }
            let int = |i: usize| match args.get(i) {
                Some(Expr::Lit(v)) => v.as_f64().map(|f| f as i64),
                _ => None,
            };
            let float = |i: usize| match args.get(i) {
                Some(Expr::Lit(v)) => v.as_f64(),
                _ => None,
            };
            // the parser checked the constant arguments
            let func = match name.as_str() {
                "LAG" => AnFunc::Lag {
                    offset: int(1).unwrap_or(1).max(1) as usize,
                },
                "LAST" => AnFunc::Last,
                "ISFIRST" => {
                    let unit = match args.first() {
                        Some(Expr::Lit(Val::Str(u))) => unit_micros(u).unwrap_or(60_000_000),
                        _ => 60_000_000,
                    };
                    AnFunc::IsFirst {
                        interval: unit * int(1).unwrap_or(1).max(1),
                    }
                }
                "ANOMALYDETECTION_SPIKEANDDIP" => AnFunc::SpikeAndDip {
                    confidence: float(1).unwrap_or(95.0),
                    history: int(2).unwrap_or(120).max(2) as usize,
                    mode: match args.get(3) {
                        Some(Expr::Lit(Val::Str(m))) => Mode::parse(m).unwrap_or(Mode::Both),
                        _ => Mode::Both,
                    },
                },
                _ => AnFunc::ChangePoint {
                    confidence: float(1).unwrap_or(95.0),
                    history: int(2).unwrap_or(120).max(2) as usize,
                },
            };
            let mut it = args.into_iter();
            let (arg, default) = match name.as_str() {
                "LAG" => {
                    let a = it.next();
                    (a, it.nth(1))
                }
                "LAST" => {
                    let a = it.next();
                    (a, it.next())
                }
                "ISFIRST" => (None, None),
                _ => (it.next(), None),
            };
            let over = *over;
            specs.push(AnSpec {
                func,
                arg,
                default,
                partition: over.partition,
                limit: over.limit,
                when: over.when,
                text,
            });
            Ok(Expr::An(specs.len() - 1))
        }
        other => map_children(other, &mut |c| extract_analytics(c, specs)),
    }
}

/// Refuse analytic functions where they cannot be evaluated per event.
fn check_no_analytic(e: &Expr, place: &str) -> Result<(), QueryError> {
    visit(e, &mut |x| {
        match x {
        Expr::Analytic { name, pos, .. } => err(
            *pos,
            format!("{name}(...) OVER (...) cannot be used in {place}; compute it in a WITH step and use its column"),
        ),
        _ => Ok(()),
    }
    })
}

fn check_no_agg(e: &Expr) -> Result<(), QueryError> {
    visit(e, &mut |x| {
        match x {
        Expr::Call { name, pos, .. } if is_agg_call(x) => err(*pos, format!(
            "{name} is an aggregate and cannot be used here; aggregates belong in SELECT or HAVING of a GROUP BY with a window"
        )),
        _ => Ok(()),
    }
    })
}

fn column_name(e: &Expr, i: usize) -> String {
    match e {
        Expr::Field(p, _) => p.last().cloned().unwrap_or_default(),
        Expr::Call { name, .. } => name.to_ascii_lowercase(),
        Expr::Timestamp => "timestamp".into(),
        Expr::Cast(x, _, _) => column_name(x, i),
        _ => format!("column{}", i + 1),
    }
}

fn first_pos(e: &Expr, dflt: Pos) -> Pos {
    let mut p = None;
    let _ = visit(e, &mut |x| {
        if p.is_none() {
            match x {
                Expr::Field(_, pos) | Expr::Call { pos, .. } => p = Some(*pos),
                _ => {}
            }
        }
        Ok(())
    });
    p.unwrap_or(dflt)
}

fn plan_select(sel: Select, source: Source, sink: Sink) -> Result<Stmt, QueryError> {
    let mut quals = vec![sel.from.to_ascii_lowercase()];
    if let Some(a) = &sel.alias {
        quals.push(a.to_ascii_lowercase());
    }
    if let Some(t) = &sel.timestamp_by {
        check_no_agg(t)?;
        check_no_analytic(t, "TIMESTAMP BY")?;
    }
    for o in &sel.over {
        check_no_analytic(o, "TIMESTAMP BY ... OVER")?;
    }
    for a in &sel.apply {
        check_no_agg(&a.arg)?;
        check_no_analytic(&a.arg, "APPLY")?;
    }
    let apply = sel.apply;
    for k in sel.group.iter().chain(sel.session_partition.iter()) {
        check_no_analytic(k, "GROUP BY")?;
    }
    if let Some(h) = &sel.having {
        check_no_analytic(h, "HAVING")?;
    }
    for o in &sel.over {
        check_no_agg(o)?;
    }
    if let Some(f) = &sel.filter {
        check_no_agg(f)?;
    }
    for k in &sel.group {
        check_no_agg(k)?;
    }
    let has_agg = sel.items.iter().any(|i| match i {
        SelectItem::Expr { expr, .. } => {
            let mut found = false;
            let _ = visit(expr, &mut |x| {
                found |= is_agg_call(x);
                Ok(())
            });
            found
        }
        SelectItem::Star(_) => false,
    }) || sel.having.is_some()
        || !sel.group.is_empty()
        || sel.window.is_some();
    if has_agg && sel.window.is_none() {
        return err(sel.pos, "aggregates, GROUP BY and HAVING need a window: add GROUP BY TumblingWindow(second, 60) (or Hopping/Sliding/Session)");
    }
    let mut aggs = Vec::new();
    let mut analytics = Vec::new();
    let filter = match sel.filter {
        Some(f) => Some(extract_analytics(f, &mut analytics)?),
        None => None,
    };
    let mut items = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, it) in sel.items.into_iter().enumerate() {
        match it {
            SelectItem::Star(q) => {
                if has_agg {
                    return err(
                        sel.pos,
                        "SELECT * cannot be used with GROUP BY; list the group keys and aggregates",
                    );
                }
                items.push(OutItem::Star(q));
            }
            SelectItem::Expr { expr, alias } => {
                let name = alias.unwrap_or_else(|| column_name(&expr, i));
                let pos = first_pos(&expr, sel.pos);
                if names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
                    return err(pos, format!("the output column '{name}' appears twice; give one of them another name with AS"));
                }
                names.push(name.clone());
                let expr = extract_analytics(expr, &mut analytics)?;
                let e = if has_agg {
                    extract(expr, &mut aggs, false)?
                } else {
                    expr
                };
                if has_agg {
                    check_grouped(&e, &sel.group, pos)?;
                }
                items.push(OutItem::Col(name, e));
            }
        }
    }
    let having = match sel.having {
        Some(h) => {
            // ASA lets HAVING name an aggregate column by its alias (HAVING [Count] >= 3)
            let h = substitute_aliases(h, &items);
            let h = extract(h, &mut aggs, false)?;
            check_grouped(&h, &sel.group, sel.pos)?;
            Some(h)
        }
        None => None,
    };
    let mut arrival_fields = false;
    {
        let mut check = |e: &Expr| {
            let _ = visit(e, &mut |x| {
                if let Expr::Field(p, _) = x {
                    arrival_fields |= p
                        .iter()
                        .take(2)
                        .any(|seg| ARRIVAL_FIELDS.iter().any(|a| a.eq_ignore_ascii_case(seg)));
                }
                Ok(())
            });
        };
        for it in &items {
            if let OutItem::Col(_, e) = it {
                check(e);
            }
        }
        for e in sel
            .timestamp_by
            .iter()
            .chain(sel.over.iter())
            .chain(filter.iter())
            .chain(sel.group.iter())
            .chain(having.iter())
        {
            check(e);
        }
        for a in &aggs {
            for e in a.arg.iter().chain(a.order.iter().map(|o| &o.expr)) {
                check(e);
            }
        }
        for a in &analytics {
            for e in a
                .arg
                .iter()
                .chain(a.default.iter())
                .chain(a.partition.iter())
                .chain(a.when.iter())
            {
                check(e);
            }
        }
    }
    Ok(Stmt {
        sink,
        from: sel.from,
        source,
        quals,
        timestamp_by: sel.timestamp_by,
        over: sel.over,
        filter,
        items,
        window: sel.window.map(|w| w.0),
        keys: sel.group,
        session_partition: sel.session_partition,
        aggs,
        analytics,
        having,
        consumers: Vec::new(),
        producers: Vec::new(),
        join: None,
        apply,
        arrival_fields,
    })
}

fn has_agg_ref(e: &Expr) -> bool {
    let mut found = false;
    let _ = visit(e, &mut |x| {
        found |= matches!(x, Expr::Agg(_)) || is_agg_call(x);
        Ok(())
    });
    found
}

fn substitute_aliases(e: Expr, items: &[OutItem]) -> Expr {
    let find = |name: &str| -> Option<Expr> {
        items.iter().find_map(|i| match i {
            OutItem::Col(n, x) if n.eq_ignore_ascii_case(name) && has_agg_ref(x) => Some(x.clone()),
            _ => None,
        })
    };
    match e {
        Expr::Field(ref p, _) if p.len() == 1 => find(&p[0]).unwrap_or(e),
        Expr::Bin(op, l, r) => Expr::Bin(
            op,
            Box::new(substitute_aliases(*l, items)),
            Box::new(substitute_aliases(*r, items)),
        ),
        Expr::Not(x) => Expr::Not(Box::new(substitute_aliases(*x, items))),
        Expr::Neg(x) => Expr::Neg(Box::new(substitute_aliases(*x, items))),
        Expr::IsNull(x, n) => Expr::IsNull(Box::new(substitute_aliases(*x, items)), n),
        Expr::Between(a, b, c, n) => Expr::Between(
            Box::new(substitute_aliases(*a, items)),
            Box::new(substitute_aliases(*b, items)),
            Box::new(substitute_aliases(*c, items)),
            n,
        ),
        other => other,
    }
}

/// Outside aggregates, a grouped SELECT may only use group keys (and System.Timestamp()).
#[allow(clippy::only_used_in_recursion)]
fn check_grouped(e: &Expr, keys: &[Expr], pos: Pos) -> Result<(), QueryError> {
    if keys.iter().any(|k| k == e) {
        return Ok(());
    }
    match e {
        Expr::Field(p, fpos) => {
            let ok = keys.iter().any(|k| {
                let mut hit = false;
                let _ = visit(k, &mut |x| {
                    if let Expr::Field(kp, _) = x {
                        hit |= kp.len() == p.len()
                            && kp
                                .iter()
                                .zip(p.iter())
                                .all(|(a, b)| a.eq_ignore_ascii_case(b));
                    }
                    Ok(())
                });
                hit
            });
            if ok {
                Ok(())
            } else {
                err(*fpos, format!(
                    "'{}' is neither in GROUP BY nor inside an aggregate; add it to GROUP BY or wrap it in an aggregate such as TopOne() or MAX()",
                    p.join(".")
                ))
            }
        }
        Expr::An(_) => err(pos, "an analytic function (LAG, LAST, ISFIRST, anomaly detection) in a grouped SELECT must be inside an aggregate; or compute it in a WITH step and group that step's rows"),
        Expr::Call { args, .. } => args.iter().try_for_each(|a| check_grouped(a, keys, pos)),
        Expr::Neg(x) | Expr::Not(x) | Expr::IsNull(x, _) | Expr::Cast(x, _, _) => {
            check_grouped(x, keys, pos)
        }
        Expr::Bin(_, a, b) | Expr::Like(a, b, _) => {
            check_grouped(a, keys, pos)?;
            check_grouped(b, keys, pos)
        }
        Expr::Between(a, b, c, _) => {
            check_grouped(a, keys, pos)?;
            check_grouped(b, keys, pos)?;
            check_grouped(c, keys, pos)
        }
        Expr::In(a, l, _) => {
            check_grouped(a, keys, pos)?;
            l.iter().try_for_each(|x| check_grouped(x, keys, pos))
        }
        Expr::Case {
            operand,
            whens,
            otherwise,
        } => {
            if let Some(o) = operand {
                check_grouped(o, keys, pos)?;
            }
            for (a, b) in whens {
                check_grouped(a, keys, pos)?;
                check_grouped(b, keys, pos)?;
            }
            match otherwise {
                Some(o) => check_grouped(o, keys, pos),
                None => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_inputs_outputs() {
        let q = Query::parse("SELECT Avg(\"temp\") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,60)").unwrap();
        assert_eq!(q.inputs(), vec!["temperature"]);
        assert_eq!(q.outputs(), vec!["AvgTemp"]);
        assert!(matches!(&q.stmts[0].items[0], OutItem::Col(n, Expr::Agg(0)) if n == "avg"));
        let q = Query::parse(
            "WITH s AS (SELECT deviceId, temp FROM input WHERE temp > 0)
             SELECT deviceId, COUNT(*), System.Timestamp() AS t INTO a FROM s GROUP BY deviceId, TumblingWindow(minute, 1);
             SELECT * INTO b FROM s",
        )
        .unwrap();
        assert_eq!(q.inputs(), vec!["input"]);
        assert_eq!(q.outputs(), vec!["a", "b"]);
        assert_eq!(q.stmts[0].consumers, vec![1, 2]);
        assert!(matches!(&q.stmts[1].items[1], OutItem::Col(n, _) if n == "count"));
    }

    #[test]
    fn event_time_for_replay() {
        let q =
            Query::parse("SELECT * INTO o FROM i TIMESTAMP BY t; SELECT * INTO p FROM j").unwrap();
        let t = q
            .event_time("I", &serde_json::json!({"T": "11/24/2026 8:05:29 AM"}))
            .unwrap();
        assert_eq!(
            t.map(|t| t.to_rfc3339()),
            Some("2026-11-24T08:05:29+00:00".to_string())
        );
        assert_eq!(q.event_time("j", &serde_json::json!({})), Ok(None));
        assert!(matches!(
            q.event_time("i", &serde_json::json!({})),
            Err(EventError::MissingTimestamp { .. })
        ));
        assert!(matches!(
            q.event_time("k", &serde_json::json!({})),
            Err(EventError::UnknownInput { .. })
        ));
    }

    #[test]
    fn planning_errors() {
        let e = Query::parse(
            "SELECT deviceId, AVG(temp) INTO o FROM i GROUP BY TumblingWindow(second, 5)",
        )
        .unwrap_err();
        assert_eq!((e.line, e.column), (1, 8), "{e}");
        let e = Query::parse("SELECT AVG(temp) INTO o FROM i").unwrap_err();
        assert!(e.message.contains("need a window"), "{e}");
        let e = Query::parse("SELECT a, b AS a INTO o FROM i").unwrap_err();
        assert!(e.message.contains("appears twice"), "{e}");
        let e = Query::parse("SELECT a INTO o FROM i WHERE AVG(a) > 1").unwrap_err();
        assert_eq!((e.line, e.column), (1, 30), "{e}");
        let e = Query::parse("SELECT MAX(AVG(a)) INTO o FROM i GROUP BY TumblingWindow(s, 1)")
            .unwrap_err();
        assert!(e.message.contains("nested"), "{e}");
    }
}
