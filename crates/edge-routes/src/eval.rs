//! The compiled condition and its evaluation, with edgeHub's three-valued logic.
//!
//! edgeHub compiles a condition to a statically typed .NET expression: every node has one
//! of the types bool, number, string, null, undefined, or "query value" (a `$body` value,
//! whose kind is only known at run time). Type errors are compile errors (see the parser);
//! at run time a number that is NaN, a string or bool that is missing, and a failed body
//! query are all *undefined*, which propagates: `undefined = x` is undefined, `false AND
//! undefined` is false, `true OR undefined` is true. A route matches only if its condition
//! is exactly `true`.

use std::cell::OnceCell;
use std::cmp::Ordering;

use crate::body::{self, BodyValue, PathSegment};
use crate::RouteMessage;

/// Static type of a node, as edgeHub's expression compiler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Bool,
    Number,
    String,
    Null,
    Undefined,
    /// A `$body` query value: any kind at run time.
    Dynamic,
}

impl Ty {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Ty::Bool => "bool",
            Ty::Number => "number",
            Ty::String => "string",
            Ty::Null => "null",
            Ty::Undefined => "undefined",
            Ty::Dynamic => "$body value",
        }
    }
}

/// A run-time value. NaN never appears: it is `Undefined`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Undefined,
    Null,
    Bool(bool),
    Number(f64),
    Str(String),
}

impl Val {
    fn num(n: f64) -> Val {
        if n.is_nan() {
            Val::Undefined
        } else {
            Val::Number(n)
        }
    }

    /// Kind order of edgeHub's `QueryValueType` (None, Bool, Double, String, Null), used
    /// when a `$body` value is compared with a value of another kind.
    fn kind_rank(&self) -> u8 {
        match self {
            Val::Undefined => 0,
            Val::Bool(_) => 1,
            Val::Number(_) => 2,
            Val::Str(_) => 3,
            Val::Null => 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Abs,
    Exp,
    Power,
    Square,
    Ceiling,
    Floor,
    Sign,
    Sqrt,
    AsNumber,
    IsBool,
    IsDefined,
    IsNull,
    IsNumber,
    IsString,
    Concat,
    Length,
    Lower,
    Upper,
    Substring,
    IndexOf,
    StartsWith,
    EndsWith,
    Contains,
}

/// A compiled node.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Const(Val),
    /// Application property (case-insensitive name).
    AppProp(String),
    /// `$name`: the application property `$name` if present, else the system property.
    SysOrApp {
        app_name: String,
        sys_name: String,
    },
    /// `{$name}`: the system property only.
    Sys(String),
    /// `$body.path`; `app_name` is `Some("$body.path")` when an application property of
    /// that name takes precedence (unescaped form without brackets).
    Body {
        path: Vec<PathSegment>,
        app_name: Option<String>,
    },
    Neg(Box<Node>),
    Not(Box<Node>, Ty),
    And(Box<Node>, Box<Node>, bool),
    Or(Box<Node>, Box<Node>, bool),
    Arith(Arith, Box<Node>, Box<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    Concat(Vec<Node>),
    Coalesce(Box<Node>, Box<Node>),
    Call(Builtin, Vec<Node>, Vec<Ty>),
}

/// Per-message evaluation state: the body is decoded and parsed at most once, however
/// many routes query it.
pub(crate) struct Ctx<'m, 'a> {
    pub msg: &'m RouteMessage<'a>,
    body: OnceCell<Option<serde_json::Value>>,
}

impl<'m, 'a> Ctx<'m, 'a> {
    pub(crate) fn new(msg: &'m RouteMessage<'a>) -> Self {
        Ctx {
            msg,
            body: OnceCell::new(),
        }
    }

    fn body(&self) -> Option<&serde_json::Value> {
        self.body
            .get_or_init(|| body::parse_body(self.msg.system_properties, self.msg.body))
            .as_ref()
    }

    fn app_prop(&self, name: &str) -> Option<&'a str> {
        lookup_ci(self.msg.properties, name)
    }

    fn sys_prop(&self, name: &str) -> Option<&'a str> {
        lookup_ci(self.msg.system_properties, system_property_key(name))
    }
}

/// Property bags are case-insensitive in edgeHub (`StringComparer.OrdinalIgnoreCase`).
fn lookup_ci<'a>(
    map: &'a std::collections::BTreeMap<String, String>,
    name: &str,
) -> Option<&'a str> {
    if let Some(v) = map.get(name) {
        return Some(v.as_str());
    }
    map.iter()
        .find(|(k, _)| eq_ignore_case(k, name))
        .map(|(_, v)| v.as_str())
}

pub(crate) fn eq_ignore_case(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        a.eq_ignore_ascii_case(b)
    } else {
        a.to_uppercase() == b.to_uppercase()
    }
}

/// The wire key (`$.ct`, ...) of a system property named in a route (`contentType`, ...).
/// Names are matched case-insensitively; an unknown name is looked up as given, so a hub
/// may add properties of its own (`enqueuedTime`).
pub fn system_property_key(name: &str) -> &str {
    const MAP: [(&str, &str); 15] = [
        ("messageId", "$.mid"),
        ("correlationId", "$.cid"),
        ("cid", "$.cid"),
        ("userId", "$.uid"),
        ("to", "$.to"),
        ("contentType", "$.ct"),
        ("contentEncoding", "$.ce"),
        ("outputName", "$.on"),
        ("connectionDeviceId", "$.cdid"),
        ("connectionModuleId", "$.cmid"),
        ("creationTime", "$.ctime"),
        ("messageSchema", "$.schema"),
        ("absolute-expiry-time", "$.exp"),
        ("expiryTimeUtc", "$.exp"),
        ("interfaceId", "$.ifid"),
    ];
    MAP.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, k)| *k)
        .unwrap_or(name)
}

fn string_val(v: Option<&str>) -> Val {
    match v {
        Some(s) => Val::Str(s.to_string()),
        None => Val::Undefined,
    }
}

/// `true` only for a condition that evaluates to exactly `true`.
pub(crate) fn matches(node: &Node, ctx: &Ctx<'_, '_>) -> bool {
    eval(node, ctx) == Val::Bool(true)
}

pub(crate) fn eval(node: &Node, ctx: &Ctx<'_, '_>) -> Val {
    match node {
        Node::Const(v) => v.clone(),
        Node::AppProp(name) => string_val(ctx.app_prop(name)),
        Node::SysOrApp { app_name, sys_name } => match ctx.app_prop(app_name) {
            Some(v) => Val::Str(v.to_string()),
            None => string_val(ctx.sys_prop(sys_name)),
        },
        Node::Sys(name) => string_val(ctx.sys_prop(name)),
        Node::Body { path, app_name } => {
            if let Some(app) = app_name {
                if let Some(v) = ctx.app_prop(app) {
                    return Val::Str(v.to_string());
                }
            }
            match ctx.body() {
                None => Val::Undefined,
                Some(json) => match body::query(json, path) {
                    BodyValue::Missing => Val::Null,
                    BodyValue::Null => Val::Null,
                    BodyValue::Bool(b) => Val::Bool(b),
                    BodyValue::Number(n) => Val::num(n),
                    BodyValue::String(s) => Val::Str(s),
                    BodyValue::Other => Val::Undefined,
                },
            }
        }
        Node::Neg(e) => match eval(e, ctx) {
            Val::Number(n) => Val::num(-n),
            _ => Val::Undefined,
        },
        Node::Not(e, ty) => match (eval(e, ctx), ty) {
            (Val::Bool(b), _) => Val::Bool(!b),
            (Val::Null, Ty::Null) => Val::Bool(true),
            _ => Val::Undefined,
        },
        Node::And(l, r, dynamic) => and(eval(l, ctx), eval(r, ctx), *dynamic),
        Node::Or(l, r, dynamic) => or(eval(l, ctx), eval(r, ctx), *dynamic),
        Node::Arith(op, l, r) => match (eval(l, ctx), eval(r, ctx)) {
            (Val::Number(a), Val::Number(b)) => Val::num(match op {
                Arith::Add => a + b,
                Arith::Sub => a - b,
                Arith::Mul => a * b,
                Arith::Div => a / b,
                Arith::Mod => a % b,
            }),
            _ => Val::Undefined,
        },
        Node::Cmp(op, l, r) => compare(*op, &eval(l, ctx), &eval(r, ctx)),
        Node::Concat(parts) => {
            let mut out = String::new();
            for p in parts {
                match eval(p, ctx) {
                    Val::Str(s) => out.push_str(&s),
                    _ => return Val::Undefined,
                }
            }
            Val::Str(out)
        }
        Node::Coalesce(l, r) => match eval(l, ctx) {
            Val::Undefined => eval(r, ctx),
            v => v,
        },
        Node::Call(f, args, tys) => {
            let vals: Vec<Val> = args.iter().map(|a| eval(a, ctx)).collect();
            call(*f, &vals, tys)
        }
    }
}

fn and(a: Val, b: Val, dynamic: bool) -> Val {
    if dynamic {
        return match (a, b) {
            (Val::Bool(x), Val::Bool(y)) => Val::Bool(x && y),
            _ => Val::Undefined,
        };
    }
    match (a, b) {
        (Val::Null, _) | (_, Val::Null) => Val::Null,
        (Val::Bool(false), _) | (_, Val::Bool(false)) => Val::Bool(false),
        (Val::Bool(true), Val::Bool(true)) => Val::Bool(true),
        _ => Val::Undefined,
    }
}

fn or(a: Val, b: Val, dynamic: bool) -> Val {
    if dynamic {
        return match (a, b) {
            (Val::Bool(x), Val::Bool(y)) => Val::Bool(x || y),
            _ => Val::Undefined,
        };
    }
    match (a, b) {
        (Val::Null, Val::Null) => Val::Null,
        (Val::Null, Val::Bool(y)) => Val::Bool(y),
        (Val::Bool(x), Val::Null) => Val::Bool(x),
        (Val::Bool(true), _) | (_, Val::Bool(true)) => Val::Bool(true),
        (Val::Bool(false), Val::Bool(false)) => Val::Bool(false),
        _ => Val::Undefined,
    }
}

fn compare(op: Cmp, a: &Val, b: &Val) -> Val {
    let ord = match (a, b) {
        (Val::Undefined, _) | (_, Val::Undefined) => return Val::Undefined,
        (Val::Null, Val::Null) => Ordering::Equal,
        (Val::Bool(x), Val::Bool(y)) => x.cmp(y),
        (Val::Number(x), Val::Number(y)) => match x.partial_cmp(y) {
            Some(o) => o,
            None => return Val::Undefined,
        },
        // Ordinal comparison, like .NET: by UTF-16 code units.
        (Val::Str(x), Val::Str(y)) => x.encode_utf16().cmp(y.encode_utf16()),
        // Only a `$body` value can meet a value of another kind.
        (x, y) => x.kind_rank().cmp(&y.kind_rank()),
    };
    Val::Bool(match op {
        Cmp::Eq => ord == Ordering::Equal,
        Cmp::Ne => ord != Ordering::Equal,
        Cmp::Lt => ord == Ordering::Less,
        Cmp::Le => ord != Ordering::Greater,
        Cmp::Gt => ord == Ordering::Greater,
        Cmp::Ge => ord != Ordering::Less,
    })
}

fn math(v: &Val, f: impl Fn(f64) -> f64) -> Val {
    match v {
        Val::Number(n) => Val::num(f(*n)),
        _ => Val::Undefined,
    }
}

fn strings(vals: &[Val]) -> Option<(&str, &str)> {
    match vals {
        [Val::Str(a), Val::Str(b)] => Some((a.as_str(), b.as_str())),
        _ => None,
    }
}

fn call(f: Builtin, vals: &[Val], tys: &[Ty]) -> Val {
    let first = vals.first().unwrap_or(&Val::Undefined);
    let first_ty = tys.first().copied().unwrap_or(Ty::Undefined);
    match f {
        Builtin::Abs => math(first, f64::abs),
        Builtin::Exp => math(first, f64::exp),
        Builtin::Square => math(first, |x| x * x),
        Builtin::Ceiling => math(first, f64::ceil),
        Builtin::Floor => math(first, f64::floor),
        Builtin::Sqrt => math(first, f64::sqrt),
        // Math.Sign: -1, 0 or 1 (0 for -0.0 too).
        Builtin::Sign => math(first, |x| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }),
        Builtin::Power => match vals {
            [Val::Number(a), Val::Number(b)] => Val::num(a.powf(*b)),
            _ => Val::Undefined,
        },
        Builtin::AsNumber => match first {
            Val::Number(n) => Val::Number(*n),
            Val::Str(s) => match crate::number::parse_dotnet_double(s) {
                Some(n) => Val::num(n),
                None => Val::Undefined,
            },
            _ => Val::Undefined,
        },
        Builtin::IsBool => match (first, first_ty) {
            (Val::Bool(_), _) => Val::Bool(true),
            // A bool or `$body` value that is undefined makes is_bool undefined in edgeHub.
            (Val::Undefined, Ty::Bool | Ty::Dynamic) => Val::Undefined,
            _ => Val::Bool(false),
        },
        Builtin::IsDefined => Val::Bool(*first != Val::Undefined),
        Builtin::IsNull => match (first, first_ty) {
            (Val::Null, _) => Val::Bool(true),
            (Val::Undefined, Ty::Dynamic) => Val::Undefined,
            _ => Val::Bool(false),
        },
        Builtin::IsNumber => Val::Bool(matches!(first, Val::Number(n) if n.is_finite())),
        Builtin::IsString => Val::Bool(matches!(first, Val::Str(_))),
        Builtin::Concat => {
            let mut out = String::new();
            for v in vals {
                match v {
                    Val::Str(s) => out.push_str(s),
                    _ => return Val::Undefined,
                }
            }
            Val::Str(out)
        }
        Builtin::Length => match first {
            Val::Str(s) => Val::Number(s.encode_utf16().count() as f64),
            _ => Val::Undefined,
        },
        Builtin::Lower => match first {
            Val::Str(s) => Val::Str(s.to_lowercase()),
            _ => Val::Undefined,
        },
        Builtin::Upper => match first {
            Val::Str(s) => Val::Str(s.to_uppercase()),
            _ => Val::Undefined,
        },
        Builtin::Substring => substring(vals),
        Builtin::IndexOf => match strings(vals) {
            Some((s, frag)) => match s.find(frag) {
                Some(byte) => Val::Number(s[..byte].encode_utf16().count() as f64),
                None => Val::Number(-1.0),
            },
            None => Val::Undefined,
        },
        Builtin::StartsWith => match strings(vals) {
            Some((s, frag)) => Val::Bool(s.starts_with(frag)),
            None => Val::Undefined,
        },
        Builtin::EndsWith => match strings(vals) {
            Some((s, frag)) => Val::Bool(s.ends_with(frag)),
            None => Val::Undefined,
        },
        Builtin::Contains => match strings(vals) {
            Some((s, frag)) => Val::Bool(s.contains(frag)),
            None => Val::Undefined,
        },
    }
}

/// edgeHub's `substring(s, start[, length])` over UTF-16 code units, with its bounds:
/// `0 <= start <= len` (one argument) or `0 <= start < len`, `0 <= length <= len - start`.
fn substring(vals: &[Val]) -> Val {
    let (s, start, length) = match vals {
        [Val::Str(s), Val::Number(start)] => (s, *start, None),
        [Val::Str(s), Val::Number(start), Val::Number(length)] => (s, *start, Some(*length)),
        _ => return Val::Undefined,
    };
    let units: Vec<u16> = s.encode_utf16().collect();
    let len = units.len() as f64;
    match length {
        None => {
            if start >= 0.0 && start <= len {
                Val::Str(String::from_utf16_lossy(&units[start as usize..]))
            } else {
                Val::Undefined
            }
        }
        Some(length) => {
            if start >= 0.0 && start < len && length >= 0.0 && length <= len - start {
                let from = start as usize;
                let to = (from + length as usize).min(units.len());
                Val::Str(String::from_utf16_lossy(&units[from..to]))
            } else {
                Val::Undefined
            }
        }
    }
}
