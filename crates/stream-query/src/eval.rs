//! Expression evaluation over one event (or one window group) and the scalar functions.

use crate::ast::{BinOp, CastType, Expr};
use crate::value::{compare, format_time, parse_time_val, Micros, Val};
use chrono::{Datelike, Months, Timelike};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// What an expression can see.
pub(crate) struct Ctx<'a> {
    /// The event (or the group's representative event).
    pub row: &'a Map<String, Value>,
    /// `System.Timestamp()`.
    pub time: Micros,
    /// Values of the statement's aggregates (empty outside aggregation).
    pub aggs: &'a [Val],
    /// Values of the statement's analytic functions for this event (empty when it has none).
    pub an: &'a [Val],
    /// Lower-case names that may qualify a field: the FROM name and its alias.
    pub quals: &'a [String],
}

/// Case-insensitive field lookup, as ASA does: an exact match wins, otherwise the first field
/// whose name matches ignoring case.
pub(crate) fn lookup<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    m.get(k).or_else(|| {
        m.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v)
    })
}

pub(crate) fn field<'a>(
    row: &'a Map<String, Value>,
    path: &[String],
    quals: &[String],
) -> Option<&'a Value> {
    let path = if path.len() > 1
        && quals.iter().any(|q| q.eq_ignore_ascii_case(&path[0]))
        && lookup(row, &path[0]).is_none()
    {
        &path[1..]
    } else {
        path
    };
    let (first, rest) = path.split_first()?;
    let mut v = lookup(row, first)?;
    for p in rest {
        v = match v {
            Value::Object(m) => lookup(m, p)?,
            _ => return None,
        };
    }
    Some(v)
}

/// SQL-ish text of an expression, for error messages.
pub(crate) fn show(e: &Expr) -> String {
    match e {
        Expr::Lit(v) => match v {
            Val::Str(s) => format!("'{s}'"),
            v => v.to_json().to_string(),
        },
        Expr::Field(p, _) => p.join("."),
        Expr::Timestamp => "System.Timestamp()".into(),
        Expr::Call {
            name,
            args,
            star,
            distinct,
            ..
        } => {
            if *star {
                format!("{name}(*)")
            } else {
                let a: Vec<String> = args.iter().map(show).collect();
                format!(
                    "{name}({}{})",
                    if *distinct { "DISTINCT " } else { "" },
                    a.join(", ")
                )
            }
        }
        Expr::Neg(e) => format!("-{}", show(e)),
        Expr::Not(e) => format!("NOT {}", show(e)),
        Expr::Bin(op, l, r) => format!("{} {} {}", show(l), op_text(*op), show(r)),
        Expr::IsNull(e, n) => format!("{} IS {}NULL", show(e), if *n { "NOT " } else { "" }),
        Expr::Like(a, b, n) => format!(
            "{} {}LIKE {}",
            show(a),
            if *n { "NOT " } else { "" },
            show(b)
        ),
        Expr::Between(a, b, c, n) => format!(
            "{} {}BETWEEN {} AND {}",
            show(a),
            if *n { "NOT " } else { "" },
            show(b),
            show(c)
        ),
        Expr::In(a, l, n) => format!(
            "{} {}IN ({})",
            show(a),
            if *n { "NOT " } else { "" },
            l.iter().map(show).collect::<Vec<_>>().join(", ")
        ),
        Expr::Case { .. } => "CASE ... END".into(),
        Expr::Cast(e, t, tr) => format!(
            "{}({} AS {})",
            if *tr { "TRY_CAST" } else { "CAST" },
            show(e),
            t.name()
        ),
        Expr::Agg(i) => format!("aggregate #{i}"),
        Expr::An(i) => format!("analytic function #{i}"),
        Expr::Analytic { name, args, .. } => format!(
            "{name}({}) OVER (...)",
            args.iter().map(show).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn op_text(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::Mod => "%",
        BinOp::Concat => "||",
        BinOp::Eq => "=",
        BinOp::Ne => "<>",
        BinOp::Lt => "<",
        BinOp::Le => "<=",
        BinOp::Gt => ">",
        BinOp::Ge => ">=",
        BinOp::And => "AND",
        BinOp::Or => "OR",
    }
}

pub(crate) type EvalResult = Result<Val, String>;

pub(crate) fn eval(e: &Expr, c: &Ctx) -> EvalResult {
    match e {
        Expr::Lit(v) => Ok(v.clone()),
        Expr::Field(p, _) => Ok(field(c.row, p, c.quals)
            .map(Val::from_json)
            .unwrap_or(Val::Null)),
        Expr::Timestamp => Ok(Val::Time(c.time)),
        Expr::Agg(i) => Ok(c.aggs.get(*i).cloned().unwrap_or(Val::Null)),
        Expr::An(i) => Ok(c.an.get(*i).cloned().unwrap_or(Val::Null)),
        Expr::Analytic { name, .. } => Err(format!(
            "{name}(...) OVER (...) cannot be used here; compute it in a WITH step and use its column"
        )),
        Expr::Neg(x) => match eval(x, c)? {
            Val::Null => Ok(Val::Null),
            Val::Int(i) => Ok(i
                .checked_neg()
                .map(Val::Int)
                .unwrap_or(Val::Float(-(i as f64)))),
            Val::Float(f) => Ok(Val::Float(-f)),
            v => Err(format!("cannot negate {}", v.describe())),
        },
        Expr::Not(x) => Ok(match truth(&eval(x, c)?, x)? {
            Some(b) => Val::Bool(!b),
            None => Val::Null,
        }),
        Expr::Bin(BinOp::And, l, r) => {
            let a = truth(&eval(l, c)?, l)?;
            if a == Some(false) {
                return Ok(Val::Bool(false));
            }
            let b = truth(&eval(r, c)?, r)?;
            Ok(match (a, b) {
                (_, Some(false)) => Val::Bool(false),
                (Some(true), Some(true)) => Val::Bool(true),
                _ => Val::Null,
            })
        }
        Expr::Bin(BinOp::Or, l, r) => {
            let a = truth(&eval(l, c)?, l)?;
            if a == Some(true) {
                return Ok(Val::Bool(true));
            }
            let b = truth(&eval(r, c)?, r)?;
            Ok(match (a, b) {
                (_, Some(true)) => Val::Bool(true),
                (Some(false), Some(false)) => Val::Bool(false),
                _ => Val::Null,
            })
        }
        Expr::Bin(op, l, r) => binary(*op, eval(l, c)?, eval(r, c)?),
        Expr::IsNull(x, neg) => Ok(Val::Bool(eval(x, c)?.is_null() != *neg)),
        Expr::Like(a, p, neg) => match (eval(a, c)?, eval(p, c)?) {
            (Val::Null, _) | (_, Val::Null) => Ok(Val::Null),
            (Val::Str(s), Val::Str(p)) => Ok(Val::Bool(like(&s, &p) != *neg)),
            (a, _) => Err(format!("LIKE needs strings, got {}", a.describe())),
        },
        Expr::Between(x, lo, hi, neg) => {
            let v = eval(x, c)?;
            let a = cmp_vals(&v, &eval(lo, c)?)?;
            let b = cmp_vals(&v, &eval(hi, c)?)?;
            Ok(match (a, b) {
                (Some(a), Some(b)) => {
                    Val::Bool((a != Ordering::Less && b != Ordering::Greater) != *neg)
                }
                _ => Val::Null,
            })
        }
        Expr::In(x, list, neg) => {
            let v = eval(x, c)?;
            if v.is_null() {
                return Ok(Val::Null);
            }
            let mut saw_null = false;
            for item in list {
                match cmp_vals(&v, &eval(item, c)?)? {
                    Some(Ordering::Equal) => return Ok(Val::Bool(!*neg)),
                    None => saw_null = true,
                    _ => {}
                }
            }
            Ok(if saw_null { Val::Null } else { Val::Bool(*neg) })
        }
        Expr::Case {
            operand,
            whens,
            otherwise,
        } => {
            let op = match operand {
                Some(o) => Some(eval(o, c)?),
                None => None,
            };
            for (w, then) in whens {
                let hit = match &op {
                    Some(o) => cmp_vals(o, &eval(w, c)?)? == Some(Ordering::Equal),
                    None => truth(&eval(w, c)?, w)? == Some(true),
                };
                if hit {
                    return eval(then, c);
                }
            }
            match otherwise {
                Some(o) => eval(o, c),
                None => Ok(Val::Null),
            }
        }
        Expr::Cast(x, ty, try_) => {
            let v = eval(x, c)?;
            match cast(v, *ty) {
                Ok(v) => Ok(v),
                Err(_) if *try_ => Ok(Val::Null),
                Err(m) => Err(m),
            }
        }
        Expr::Call { name, args, .. } => {
            let mut vals = Vec::with_capacity(args.len());
            for a in args {
                vals.push(eval(a, c)?);
            }
            scalar(name, vals)
        }
    }
}

/// Three-valued truth of a condition; non-booleans are an error.
pub(crate) fn truth(v: &Val, e: &Expr) -> Result<Option<bool>, String> {
    match v {
        Val::Bool(b) => Ok(Some(*b)),
        Val::Null => Ok(None),
        other => Err(format!(
            "the condition {} gives {}, not true or false",
            show(e),
            other.describe()
        )),
    }
}

fn cmp_vals(a: &Val, b: &Val) -> Result<Option<Ordering>, String> {
    if a.is_null() || b.is_null() {
        return Ok(None);
    }
    match compare(a, b) {
        Some(o) => Ok(Some(o)),
        None => Err(format!(
            "cannot compare {} with {}",
            a.describe(),
            b.describe()
        )),
    }
}

fn binary(op: BinOp, a: Val, b: Val) -> EvalResult {
    if a.is_null() || b.is_null() {
        return Ok(Val::Null);
    }
    let cmp = |f: fn(Ordering) -> bool| -> EvalResult {
        Ok(Val::Bool(f(cmp_vals(&a, &b)?.unwrap_or(Ordering::Equal))))
    };
    match op {
        BinOp::Eq => cmp(|o| o == Ordering::Equal),
        BinOp::Ne => cmp(|o| o != Ordering::Equal),
        BinOp::Lt => cmp(|o| o == Ordering::Less),
        BinOp::Le => cmp(|o| o != Ordering::Greater),
        BinOp::Gt => cmp(|o| o == Ordering::Greater),
        BinOp::Ge => cmp(|o| o != Ordering::Less),
        BinOp::Concat => Ok(Val::Str(format!("{}{}", text(&a), text(&b)))),
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => match (&a, &b) {
            (Val::Str(x), Val::Str(y)) if op == BinOp::Add => Ok(Val::Str(format!("{x}{y}"))),
            (Val::Int(x), Val::Int(y)) if op != BinOp::Div => {
                let r = match op {
                    BinOp::Add => x.checked_add(*y),
                    BinOp::Sub => x.checked_sub(*y),
                    BinOp::Mul => x.checked_mul(*y),
                    _ => {
                        if *y == 0 {
                            return Err("modulo by zero".into());
                        }
                        x.checked_rem(*y)
                    }
                };
                match r {
                    Some(r) => Ok(Val::Int(r)),
                    None => arith_f(op, *x as f64, *y as f64),
                }
            }
            _ => match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => arith_f(op, x, y),
                _ => Err(format!(
                    "cannot compute {} {} {}",
                    a.describe(),
                    op_text(op),
                    b.describe()
                )),
            },
        },
        BinOp::And | BinOp::Or => Err("internal: logical operator".into()),
    }
}

fn arith_f(op: BinOp, x: f64, y: f64) -> EvalResult {
    let r = match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div => {
            if y == 0.0 {
                return Err("division by zero".into());
            }
            x / y
        }
        _ => {
            if y == 0.0 {
                return Err("modulo by zero".into());
            }
            x % y
        }
    };
    // overflow gives null rather than an infinity that JSON cannot carry
    Ok(float_or_null(r))
}

/// Text form of a value (CAST AS nvarchar(max), CONCAT).
pub(crate) fn text(v: &Val) -> String {
    match v {
        Val::Null => String::new(),
        Val::Str(s) => s.clone(),
        Val::Time(t) => format_time(*t),
        other => other.to_json().to_string(),
    }
}

/// SQL LIKE with `%` (any run) and `_` (one character).
pub(crate) fn like(s: &str, p: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = p.chars().collect();
    like_chars(&s, &p)
}

fn like_chars(s: &[char], p: &[char]) -> bool {
    // iterative matcher with backtracking on the last '%'
    let (mut i, mut j) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if j < p.len() && (p[j] == '_' || p[j] == s[i]) {
            i += 1;
            j += 1;
        } else if j < p.len() && p[j] == '%' {
            star = Some((j, i));
            j += 1;
        } else if let Some((sj, si)) = star {
            j = sj + 1;
            i = si + 1;
            star = Some((sj, si + 1));
        } else {
            return false;
        }
    }
    while j < p.len() && p[j] == '%' {
        j += 1;
    }
    j == p.len()
}

pub(crate) fn cast(v: Val, ty: CastType) -> EvalResult {
    if v.is_null() {
        return Ok(Val::Null);
    }
    let fail = |v: &Val| Err(format!("cannot convert {} to {}", v.describe(), ty.name()));
    match ty {
        CastType::BigInt => match &v {
            Val::Int(_) => Ok(v),
            Val::Float(f) if f.is_finite() && f.abs() < 9.2e18 => Ok(Val::Int(f.trunc() as i64)),
            Val::Bool(b) => Ok(Val::Int(i64::from(*b))),
            Val::Str(s) => match s.trim().parse::<i64>() {
                Ok(i) => Ok(Val::Int(i)),
                Err(_) => match s.trim().parse::<f64>() {
                    Ok(f) if f.is_finite() && f.abs() < 9.2e18 => Ok(Val::Int(f.trunc() as i64)),
                    _ => fail(&v),
                },
            },
            _ => fail(&v),
        },
        CastType::Float => match &v {
            Val::Int(i) => Ok(Val::Float(*i as f64)),
            Val::Float(_) => Ok(v),
            Val::Bool(b) => Ok(Val::Float(if *b { 1.0 } else { 0.0 })),
            Val::Str(s) => match s.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Val::Float(f)),
                _ => fail(&v),
            },
            _ => fail(&v),
        },
        CastType::NVarChar => Ok(Val::Str(text(&v))),
        CastType::DateTime => match &v {
            Val::Time(_) => Ok(v),
            Val::Str(_) => parse_time_val(&v)
                .map(Val::Time)
                .map_or_else(|| fail(&v), Ok),
            _ => fail(&v),
        },
        CastType::Bit => match &v {
            Val::Bool(_) => Ok(v),
            Val::Int(i) => Ok(Val::Bool(*i != 0)),
            Val::Float(f) => Ok(Val::Bool(*f != 0.0)),
            Val::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Val::Bool(true)),
                "false" | "0" => Ok(Val::Bool(false)),
                _ => fail(&v),
            },
            _ => fail(&v),
        },
        CastType::Record => match &v {
            Val::Record(_) => Ok(v),
            _ => fail(&v),
        },
        CastType::Array => match &v {
            Val::Array(_) => Ok(v),
            _ => fail(&v),
        },
    }
}

fn num(name: &str, v: &Val) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("{name} needs a number, got {}", v.describe()))
}

fn int(name: &str, v: &Val) -> Result<i64, String> {
    match v {
        Val::Int(i) => Ok(*i),
        Val::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(*f as i64),
        _ => Err(format!("{name} needs a whole number, got {}", v.describe())),
    }
}

fn string<'a>(name: &str, v: &'a Val) -> Result<&'a str, String> {
    match v {
        Val::Str(s) => Ok(s),
        _ => Err(format!("{name} needs a string, got {}", v.describe())),
    }
}

fn time(name: &str, v: &Val) -> Result<Micros, String> {
    parse_time_val(match v {
        Val::Int(_) | Val::Float(_) => &Val::Null,
        other => other,
    })
    .ok_or_else(|| format!("{name} needs a datetime, got {}", v.describe()))
}

fn float_or_null(f: f64) -> Val {
    if f.is_finite() {
        Val::Float(f)
    } else {
        Val::Null
    }
}

pub(crate) fn scalar(name: &str, a: Vec<Val>) -> EvalResult {
    if name == "COALESCE" {
        return Ok(a.into_iter().find(|v| !v.is_null()).unwrap_or(Val::Null));
    }
    if name == "CONCAT" {
        return Ok(Val::Str(a.iter().map(text).collect()));
    }
    // every other function gives null for a null argument (the date part of DATEADD is a literal)
    if a.iter().any(Val::is_null) {
        return Ok(Val::Null);
    }
    let x = a.first().cloned().unwrap_or(Val::Null);
    match name {
        "ABS" => match x {
            Val::Int(i) => Ok(i
                .checked_abs()
                .map(Val::Int)
                .unwrap_or(Val::Float((i as f64).abs()))),
            v => Ok(Val::Float(num(name, &v)?.abs())),
        },
        "CEILING" | "FLOOR" | "SIGN" => match x {
            Val::Int(i) => Ok(Val::Int(if name == "SIGN" { i.signum() } else { i })),
            v => {
                let f = num(name, &v)?;
                Ok(Val::Float(match name {
                    "CEILING" => f.ceil(),
                    "FLOOR" => f.floor(),
                    _ => {
                        if f > 0.0 {
                            1.0
                        } else if f < 0.0 {
                            -1.0
                        } else {
                            0.0
                        }
                    }
                }))
            }
        },
        "ROUND" => {
            let digits = match a.get(1) {
                Some(d) => int(name, d)?.clamp(-15, 15) as i32,
                None => 0,
            };
            match x {
                Val::Int(i) if digits >= 0 => Ok(Val::Int(i)),
                v => {
                    let f = num(name, &v)?;
                    let m = 10f64.powi(digits);
                    Ok(float_or_null((f * m).round() / m))
                }
            }
        }
        "POWER" => Ok(float_or_null(num(name, &x)?.powf(num(name, &a[1])?))),
        "SQRT" => Ok(float_or_null(num(name, &x)?.sqrt())),
        "SQUARE" => {
            let f = num(name, &x)?;
            Ok(float_or_null(f * f))
        }
        "EXP" => Ok(float_or_null(num(name, &x)?.exp())),
        "LOG" => {
            let f = num(name, &x)?;
            match a.get(1) {
                Some(b) => Ok(float_or_null(f.ln() / num(name, b)?.ln())),
                None => Ok(float_or_null(f.ln())),
            }
        }
        "LEN" => Ok(Val::Int(text(&x).chars().count() as i64)),
        "LOWER" => Ok(Val::Str(string(name, &x)?.to_lowercase())),
        "UPPER" => Ok(Val::Str(string(name, &x)?.to_uppercase())),
        "LTRIM" => Ok(Val::Str(string(name, &x)?.trim_start().to_string())),
        "LEFT" | "RIGHT" => {
            let s = string(name, &x)?;
            let n = int(name, &a[1])?;
            if n < 0 {
                return Err(format!("{name}'s length must not be negative, got {n}"));
            }
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            let count = s.chars().count();
            Ok(Val::Str(if name == "LEFT" {
                s.chars().take(n).collect()
            } else {
                s.chars().skip(count.saturating_sub(n)).collect()
            }))
        }
        "REVERSE" => Ok(Val::Str(string(name, &x)?.chars().rev().collect())),
        "PATINDEX" => {
            // PATINDEX('%pattern%', s): 1-based start of the first match of a LIKE pattern (% and
            // _), 0 when there is none; without a leading % the match must start at 1
            let p = string(name, &x)?;
            let s = string(name, &a[1])?;
            let Some(core) = p.strip_prefix('%') else {
                return Ok(Val::Int(i64::from(like(s, p))));
            };
            let chars: Vec<char> = s.chars().collect();
            let core: Vec<char> = core.chars().collect();
            // the first literal character of the pattern, to skip positions that cannot match
            let first = core.first().copied().filter(|c| *c != '%' && *c != '_');
            for pos in 0..chars.len() {
                if first.is_some_and(|f| chars[pos] != f) {
                    continue;
                }
                if like_chars(&chars[pos..], &core) {
                    return Ok(Val::Int(pos as i64 + 1));
                }
            }
            Ok(Val::Int(i64::from(
                core.iter().all(|c| *c == '%') && chars.is_empty(),
            )))
        }
        "DATETIMEFROMPARTS" => {
            let mut p = [0i64; 7];
            for (slot, v) in p.iter_mut().zip(a.iter()) {
                *slot = int(name, v)?;
            }
            if !(1..=9999).contains(&p[0]) || !(0..=999).contains(&p[6]) {
                return Err(format!(
                    "DATETIMEFROMPARTS needs a year from 1 to 9999 and milliseconds from 0 to 999, got {} and {}",
                    p[0], p[6]
                ));
            }
            let date = u32::try_from(p[1])
                .ok()
                .zip(u32::try_from(p[2]).ok())
                .and_then(|(m, d)| {
                    chrono::NaiveDate::from_ymd_opt(i32::try_from(p[0]).ok()?, m, d)
                });
            let time = date.and_then(|d| {
                d.and_hms_milli_opt(
                    u32::try_from(p[3]).ok()?,
                    u32::try_from(p[4]).ok()?,
                    u32::try_from(p[5]).ok()?,
                    u32::try_from(p[6]).ok()?,
                )
            });
            match time {
                Some(t) => Ok(Val::Time(t.and_utc().timestamp_micros())),
                None => Err(format!(
                    "DATETIMEFROMPARTS({}, {}, {}, {}, {}, {}, {}) is not a valid date and time",
                    p[0], p[1], p[2], p[3], p[4], p[5], p[6]
                )),
            }
        }
        "RTRIM" => Ok(Val::Str(string(name, &x)?.trim_end().to_string())),
        "TRIM" => Ok(Val::Str(string(name, &x)?.trim().to_string())),
        "SUBSTRING" => {
            let s = string(name, &x)?;
            let start = int(name, &a[1])?;
            let len = int(name, &a[2])?;
            if len < 0 {
                return Err("SUBSTRING needs a length of at least 0".into());
            }
            // 1-based start; characters before position 1 count against the length (T-SQL rule)
            let end = start.saturating_add(len);
            let from = start.max(1);
            if end <= from {
                return Ok(Val::Str(String::new()));
            }
            Ok(Val::Str(
                s.chars()
                    .skip((from - 1) as usize)
                    .take((end - from) as usize)
                    .collect(),
            ))
        }
        "CHARINDEX" => {
            let find = string(name, &x)?;
            let s = string(name, &a[1])?;
            let start = match a.get(2) {
                Some(v) => int(name, v)?.max(1) as usize,
                None => 1,
            };
            let hay: Vec<char> = s.chars().collect();
            let needle: Vec<char> = find.chars().collect();
            if needle.is_empty() {
                return Ok(Val::Int(0));
            }
            for i in (start - 1)..hay.len() {
                if hay[i..].starts_with(&needle) {
                    return Ok(Val::Int(i as i64 + 1));
                }
            }
            Ok(Val::Int(0))
        }
        "REPLACE" => Ok(Val::Str(
            string(name, &x)?.replace(string(name, &a[1])?, string(name, &a[2])?),
        )),
        "DATEADD" => {
            let part = string(name, &x)?.to_ascii_lowercase();
            let n = int(name, &a[1])?;
            let t = time(name, &a[2])?;
            date_add(&part, n, t).map(Val::Time)
        }
        "DATEDIFF" => {
            let part = string(name, &x)?.to_ascii_lowercase();
            let t1 = time(name, &a[1])?;
            let t2 = time(name, &a[2])?;
            date_diff(&part, t1, t2).map(Val::Int)
        }
        "DATEPART" => {
            let part = string(name, &x)?.to_ascii_lowercase();
            date_part(&part, time(name, &a[1])?).map(Val::Int)
        }
        "DAY" => date_part("day", time(name, &x)?).map(Val::Int),
        "MONTH" => date_part("month", time(name, &x)?).map(Val::Int),
        "YEAR" => date_part("year", time(name, &x)?).map(Val::Int),
        "GETRECORDPROPERTYVALUE" => match (&x, &a[1]) {
            (Val::Record(m), Val::Str(k)) => Ok(crate::eval::lookup(m, k)
                .map(Val::from_json)
                .unwrap_or(Val::Null)),
            _ => Err(format!(
                "GetRecordPropertyValue needs a record and a string, got {} and {}",
                x.describe(),
                a[1].describe()
            )),
        },
        "GETARRAYELEMENT" => match &x {
            Val::Array(v) => {
                let i = int(name, &a[1])?;
                Ok(usize::try_from(i)
                    .ok()
                    .and_then(|i| v.get(i))
                    .map(Val::from_json)
                    .unwrap_or(Val::Null))
            }
            _ => Err(format!(
                "GetArrayElement needs an array, got {}",
                x.describe()
            )),
        },
        "GETARRAYLENGTH" => match &x {
            Val::Array(v) => Ok(Val::Int(v.len() as i64)),
            _ => Err(format!(
                "GetArrayLength needs an array, got {}",
                x.describe()
            )),
        },
        other => Err(format!("{other} is an aggregate and cannot be used here")),
    }
}

const DATE_PARTS: &str = "use year (yy, yyyy), quarter (qq, q), month (mm, m), dayofyear (dy, y), day (dd, d), week (wk, ww), weekday (dw, w), hour (hh), minute (mi, n), second (ss, s), millisecond (ms) or microsecond (mcs)";

fn canonical_part(p: &str) -> Result<&'static str, String> {
    Ok(match p {
        "year" | "yy" | "yyyy" => "year",
        "quarter" | "qq" | "q" => "quarter",
        "month" | "mm" | "m" => "month",
        "dayofyear" | "dy" | "y" => "dayofyear",
        "day" | "dd" | "d" => "day",
        "week" | "wk" | "ww" => "week",
        "weekday" | "dw" | "w" => "weekday",
        "hour" | "hh" => "hour",
        "minute" | "mi" | "n" => "minute",
        "second" | "ss" | "s" => "second",
        "millisecond" | "ms" => "millisecond",
        "microsecond" | "mcs" => "microsecond",
        _ => return Err(format!("unknown date part '{p}'; {DATE_PARTS}")),
    })
}

fn fixed_unit(p: &str) -> Option<i64> {
    Some(match p {
        "week" => 7 * 86_400_000_000,
        "day" | "dayofyear" | "weekday" => 86_400_000_000,
        "hour" => 3_600_000_000,
        "minute" => 60_000_000,
        "second" => 1_000_000,
        "millisecond" => 1_000,
        "microsecond" => 1,
        _ => return None,
    })
}

fn date_add(part: &str, n: i64, t: Micros) -> Result<Micros, String> {
    let p = canonical_part(part)?;
    let overflow = || "DATEADD result is out of range".to_string();
    if let Some(u) = fixed_unit(p) {
        return n
            .checked_mul(u)
            .and_then(|d| t.checked_add(d))
            .ok_or_else(overflow);
    }
    let months = match p {
        "year" => n.checked_mul(12),
        "quarter" => n.checked_mul(3),
        _ => Some(n),
    }
    .ok_or_else(overflow)?;
    let dt = crate::value::to_datetime(t);
    let m = u32::try_from(months.unsigned_abs()).map_err(|_| overflow())?;
    let r = if months >= 0 {
        dt.checked_add_months(Months::new(m))
    } else {
        dt.checked_sub_months(Months::new(m))
    };
    r.map(crate::value::from_datetime).ok_or_else(overflow)
}

fn date_diff(part: &str, a: Micros, b: Micros) -> Result<i64, String> {
    let p = canonical_part(part)?;
    if p == "week" {
        // weeks start on Sunday (T-SQL default); 1970-01-01 was a Thursday
        let shift = 4 * 86_400_000_000;
        let u = 7 * 86_400_000_000;
        return Ok((b + shift).div_euclid(u) - (a + shift).div_euclid(u));
    }
    if let Some(u) = fixed_unit(p) {
        return Ok(b.div_euclid(u) - a.div_euclid(u));
    }
    let (x, y) = (crate::value::to_datetime(a), crate::value::to_datetime(b));
    let months =
        |d: &chrono::DateTime<chrono::Utc>| i64::from(d.year()) * 12 + i64::from(d.month0());
    Ok(match p {
        "year" => i64::from(y.year()) - i64::from(x.year()),
        "quarter" => months(&y).div_euclid(3) - months(&x).div_euclid(3),
        _ => months(&y) - months(&x),
    })
}

fn date_part(part: &str, t: Micros) -> Result<i64, String> {
    let p = canonical_part(part)?;
    let d = crate::value::to_datetime(t);
    Ok(match p {
        "year" => i64::from(d.year()),
        "quarter" => i64::from(d.month0() / 3 + 1),
        "month" => i64::from(d.month()),
        "dayofyear" => i64::from(d.ordinal()),
        "day" => i64::from(d.day()),
        "week" => {
            // T-SQL: week 1 contains January 1st, weeks start on Sunday
            let jan1 = d.with_ordinal(1).unwrap_or(d);
            let offset = i64::from(jan1.weekday().num_days_from_sunday());
            (i64::from(d.ordinal0()) + offset) / 7 + 1
        }
        "weekday" => i64::from(d.weekday().num_days_from_sunday()) + 1,
        "hour" => i64::from(d.hour()),
        "minute" => i64::from(d.minute()),
        "second" => i64::from(d.second()),
        "millisecond" => t.rem_euclid(1_000_000) / 1000,
        _ => t.rem_euclid(1_000_000),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::parser::parse_expr;
    use crate::value::parse_time_str;
    use serde_json::json;

    fn ev(text: &str, row: Value) -> EvalResult {
        let e = parse_expr(text).map_err(|e| e.to_string())?;
        let m = row.as_object().cloned().unwrap_or_default();
        eval(
            &e,
            &Ctx {
                row: &m,
                time: 0,
                aggs: &[],
                an: &[],
                quals: &["input".into()],
            },
        )
    }

    #[test]
    fn fields_are_case_insensitive_and_nested() {
        let row = json!({"TimeCreated": "x", "a": {"B": 2}, "A": 9});
        assert_eq!(ev("timecreated", row.clone()), Ok(Val::Str("x".into())));
        assert_eq!(ev("a.b", row.clone()), Ok(Val::Int(2)));
        assert_eq!(ev("input.a.b", row.clone()), Ok(Val::Int(2)));
        assert_eq!(ev("[A]", row.clone()), Ok(Val::Int(9)));
        assert_eq!(ev("missing", row), Ok(Val::Null));
    }

    #[test]
    fn operators_and_nulls() {
        let r = json!({"x": 3, "s": "abc", "n": null});
        assert_eq!(ev("x * 2 + 1", r.clone()), Ok(Val::Int(7)));
        assert_eq!(ev("x / 2", r.clone()), Ok(Val::Float(1.5)));
        assert_eq!(ev("n + 1", r.clone()), Ok(Val::Null));
        assert_eq!(
            ev("n IS NULL AND x IS NOT NULL", r.clone()),
            Ok(Val::Bool(true))
        );
        assert_eq!(ev("n > 1 OR x = 3", r.clone()), Ok(Val::Bool(true)));
        assert_eq!(ev("n > 1 AND x = 3", r.clone()), Ok(Val::Null));
        assert_eq!(
            ev(
                "s LIKE 'a%c' AND s NOT LIKE 'b%' AND s LIKE '_b_'",
                r.clone()
            ),
            Ok(Val::Bool(true))
        );
        assert_eq!(
            ev("x BETWEEN 1 AND 3 AND x IN (1, 3)", r.clone()),
            Ok(Val::Bool(true))
        );
        assert_eq!(
            ev("CASE WHEN x > 2 THEN 'hot' ELSE 'cold' END", r.clone()),
            Ok(Val::Str("hot".into()))
        );
        assert_eq!(
            ev(
                "CASE x WHEN 1 THEN 'one' WHEN 3 THEN 'three' END",
                r.clone()
            ),
            Ok(Val::Str("three".into()))
        );
        assert!(ev("s > 1", r.clone()).is_err());
        assert!(ev("x / 0", r).is_err());
    }

    #[test]
    fn casts_and_functions() {
        let r = json!({"w": "1000", "t": "2026-11-24T08:05:29Z", "f": 2.5});
        assert_eq!(ev("CAST(w AS bigint) + 1", r.clone()), Ok(Val::Int(1001)));
        assert_eq!(ev("TRY_CAST('x' AS float)", r.clone()), Ok(Val::Null));
        assert!(ev("CAST('x' AS float)", r.clone()).is_err());
        assert_eq!(
            ev("CAST(f AS nvarchar(max))", r.clone()),
            Ok(Val::Str("2.5".into()))
        );
        assert_eq!(ev("ROUND(f * 3, 1)", r.clone()), Ok(Val::Float(7.5)));
        assert_eq!(
            ev("UPPER(SUBSTRING('hello', 2, 3))", r.clone()),
            Ok(Val::Str("ELL".into()))
        );
        assert_eq!(ev("LEN(CONCAT('a', 1, NULL))", r.clone()), Ok(Val::Int(2)));
        assert_eq!(ev("CHARINDEX('l', 'hello')", r.clone()), Ok(Val::Int(3)));
        assert_eq!(
            ev("DATEADD(minute, -5, CAST(t AS datetime))", r.clone()),
            Ok(Val::Time(parse_time_str("2026-11-24T08:00:29Z").unwrap()))
        );
        assert_eq!(
            ev("DATEADD(month, 1, t)", r.clone()),
            Ok(Val::Time(parse_time_str("2026-12-24T08:05:29Z").unwrap()))
        );
        assert_eq!(
            ev("DATEDIFF(second, '2026-11-24T08:05:29.9Z', t)", r.clone()),
            Ok(Val::Int(0))
        );
        assert_eq!(
            ev("DATEDIFF(day, '2026-11-23T23:59:59Z', t)", r.clone()),
            Ok(Val::Int(1))
        );
        assert_eq!(
            ev("DATEPART(hour, t) * 100 + DATEPART(mi, t)", r.clone()),
            Ok(Val::Int(805))
        );
        assert_eq!(ev("YEAR(t)", r.clone()), Ok(Val::Int(2026)));
        assert_eq!(ev("COALESCE(nothing, 7)", r), Ok(Val::Int(7)));
    }
}
