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
use crate::value::{parse_time_val, to_datetime, Val};
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
    Star,
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
    /// The statement reads `EventProcessedUtcTime` or `EventEnqueuedUtcTime`, which ASA adds to
    /// every input event; the engine fills in the arrival time when the event lacks them.
    pub arrival_fields: bool,
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
        let v = eval(e, &ctx).map_err(|m| EventError::WrongType {
            expression: show(e),
            message: m,
        })?;
        if v.is_null() {
            return Err(EventError::MissingTimestamp { field: show(e) });
        }
        match parse_time_val(&v) {
            Some(t) => Ok(Some(to_datetime(t))),
            None => Err(EventError::BadTimestamp {
                field: show(e),
                value: v.to_json().to_string(),
            }),
        }
    }
}

fn err<T>(p: Pos, msg: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError::new(p.line.max(1), p.col.max(1), msg))
}

fn plan(text: &str, ast: Ast) -> Result<Query, QueryError> {
    let mut stmts: Vec<Stmt> = Vec::new();
    let mut step_names: Vec<String> = Vec::new();
    let all: Vec<(Option<(String, Pos)>, Select)> = ast
        .steps
        .into_iter()
        .map(|s| (Some((s.name, s.pos)), s.select))
        .chain(ast.selects.into_iter().map(|s| (None, s)))
        .collect();
    let all_steps: Vec<String> = all
        .iter()
        .filter_map(|(s, _)| s.as_ref().map(|s| s.0.clone()))
        .collect();
    for (idx, (step, sel)) in all.into_iter().enumerate() {
        if let Some((name, pos)) = &step {
            if step_names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                return err(
                    *pos,
                    format!("step '{name}' is defined twice; give each WITH step its own name"),
                );
            }
        }
        let source = match step_names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(&sel.from))
        {
            Some(i) => Source::Step(i),
            None => {
                if all_steps.iter().any(|n| n.eq_ignore_ascii_case(&sel.from)) {
                    return err(
                        sel.from_pos,
                        format!(
                            "step '{}' is read before it is defined; a WITH step can only read inputs and earlier steps",
                            sel.from
                        ),
                    );
                }
                Source::Input
            }
        };
        if let Source::Step(_) = source {
            if sel.timestamp_by.is_some() {
                return err(sel.from_pos, format!(
                    "'{}' is a WITH step, whose rows already carry System.Timestamp(); remove TIMESTAMP BY",
                    sel.from
                ));
            }
        }
        let sink = match &step {
            Some((n, _)) => Sink::Step(n.clone()),
            None => Sink::Output(sel.into.clone().unwrap_or_else(|| "output".to_string())),
        };
        let stmt = plan_select(sel, source.clone(), sink)?;
        if let Source::Step(i) = source {
            stmts[i].consumers.push(idx);
        }
        stmts.push(stmt);
        if let Some((name, _)) = step {
            step_names.push(name);
        }
    }
    Ok(Query {
        text: text.to_string(),
        stmts: Arc::new(stmts),
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
    for k in &sel.group {
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
        SelectItem::Star => false,
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
            SelectItem::Star => {
                if has_agg {
                    return err(
                        sel.pos,
                        "SELECT * cannot be used with GROUP BY; list the group keys and aggregates",
                    );
                }
                items.push(OutItem::Star);
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
