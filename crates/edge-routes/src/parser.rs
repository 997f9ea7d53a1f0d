//! The route parser and condition compiler.
//!
//! Grammar (edgeHub's `Route.g4` and `Condition.g4`):
//! ```text
//! route     : [SELECT '*'] FROM source [WHERE condition] INTO sink
//! source    : ('/' ('*' | ID))+
//! sink      : '$upstream' | BrokeredEndpoint '(' STRING ')'
//! condition : primary | '-' cond | NOT cond | cond op cond
//! primary   : '(' cond ')' | literal | ID | $name | '{' $name '}' | ID '(' [cond (',' cond)*] ')'
//! ```
//! The condition is type-checked while it is parsed, as edgeHub compiles it: operands of
//! the wrong type are errors, not run-time surprises. In particular application
//! properties are strings, and a string compared with a number is a compile error in
//! edgeHub (`temp > 30` is rejected; write `as_number(temp) > 30`).

use crate::ast::{BinaryOp, Expr, Literal, UnaryOp};
use crate::body;
use crate::error::RouteError;
use crate::eval::{Arith, Builtin, Cmp, Node, Ty, Val};
use crate::lexer::{tokenize, Kind, Token};
use crate::source::{Sink, Source};
use crate::Condition;

const GRAMMAR: &str = "a route reads FROM <source> [WHERE <condition>] INTO <sink>";
/// Deepest operator tree accepted: keeps evaluation and drop far from the stack's limit.
const MAX_DEPTH: usize = 128;
/// Prefix operators bind tighter than every binary operator.
const PREFIX_PRECEDENCE: u8 = 8;

pub(crate) struct Parsed {
    pub source: Source,
    pub condition: Option<Condition>,
    pub sink: Sink,
}

struct Typed {
    expr: Expr,
    node: Node,
    ty: Ty,
    depth: usize,
}

struct Parser<'a> {
    name: &'a str,
    text: &'a str,
    tokens: Vec<Token>,
    pos: usize,
    /// Char length of the text: the column of "the end of the route".
    end: usize,
    nesting: usize,
}

pub(crate) fn parse_route(name: &str, text: &str) -> Result<Parsed, RouteError> {
    let mut p = Parser::new(name, text);
    if p.tokens.is_empty() {
        return Err(RouteError::at(
            name,
            text,
            0,
            format!("the route is empty — {GRAMMAR}"),
        ));
    }
    if p.peek_kind() == Some(Kind::Select) {
        p.pos += 1;
        if p.peek_kind() != Some(Kind::Star) {
            return Err(p.error_here(format!(
                "expected * after SELECT, found {} — a route reads SELECT * FROM <source> ...",
                p.found()
            )));
        }
        p.pos += 1;
    }
    if p.peek_kind() != Some(Kind::From) {
        return Err(p.error_here(format!("expected FROM, found {} — {GRAMMAR}", p.found())));
    }
    p.pos += 1;
    let source = p.source()?;
    let mut condition = None;
    if p.peek_kind() == Some(Kind::Where) {
        p.pos += 1;
        let typed = p.expr(0)?;
        condition = Some(Condition {
            expr: typed.expr,
            node: typed.node,
        });
    }
    if p.peek_kind() != Some(Kind::Into) {
        let hint = if condition.is_none() {
            "expected INTO after the source"
        } else {
            "expected INTO after the condition"
        };
        return Err(p.error_here(format!("{hint}, found {} — {GRAMMAR}", p.found())));
    }
    p.pos += 1;
    let sink = p.sink()?;
    if p.peek().is_some() {
        return Err(p.error_here(format!(
            "unexpected {} after the sink; a route ends with its sink",
            p.found()
        )));
    }
    Ok(Parsed {
        source,
        condition,
        sink,
    })
}

/// Parse a condition on its own (what follows WHERE).
pub(crate) fn parse_condition(name: &str, text: &str) -> Result<Condition, RouteError> {
    let mut p = Parser::new(name, text);
    if p.tokens.is_empty() {
        return Err(RouteError::at(name, text, 0, "the condition is empty"));
    }
    let typed = p.expr(0)?;
    if p.peek().is_some() {
        return Err(p.error_here(format!(
            "unexpected {} after the condition; join conditions with AND or OR",
            p.found()
        )));
    }
    Ok(Condition {
        expr: typed.expr,
        node: typed.node,
    })
}

impl<'a> Parser<'a> {
    fn new(name: &'a str, text: &'a str) -> Self {
        Parser {
            name,
            text,
            tokens: tokenize(text),
            pos: 0,
            end: text.chars().count(),
            nesting: 0,
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_kind(&self) -> Option<Kind> {
        self.peek().map(|t| t.kind)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn found(&self) -> String {
        match self.peek() {
            Some(t) => format!("{:?}", t.text),
            None => "the end of the route".to_string(),
        }
    }

    fn error_at(&self, offset: usize, message: impl Into<String>) -> RouteError {
        RouteError::at(self.name, self.text, offset, message)
    }

    fn error_here(&self, message: impl Into<String>) -> RouteError {
        let offset = self.peek().map(|t| t.start).unwrap_or(self.end);
        self.error_at(offset, message)
    }

    fn source(&mut self) -> Result<Source, RouteError> {
        let start = self.peek().map(|t| t.start).unwrap_or(self.end);
        let mut path = String::new();
        while self.peek_kind() == Some(Kind::Slash) {
            self.pos += 1;
            path.push('/');
            match self.peek_kind() {
                Some(Kind::Star) | Some(Kind::Id) => {
                    if let Some(t) = self.next() {
                        path.push_str(&t.text);
                    }
                }
                _ => {
                    return Err(self.error_here(format!(
                        "expected a path segment or * after '/', found {}",
                        self.found()
                    )))
                }
            }
        }
        if path.is_empty() {
            return Err(self.error_here(format!(
                "expected a source such as /messages/* after FROM, found {} — {GRAMMAR}",
                self.found()
            )));
        }
        Source::from_path(&path).map_err(|e| self.error_at(start, e.to_string()))
    }

    fn sink(&mut self) -> Result<Sink, RouteError> {
        const SINKS: &str =
            "a sink is $upstream or BrokeredEndpoint(\"/modules/<module>/inputs/<input>\")";
        let Some(tok) = self.next() else {
            return Err(self.error_here(format!("expected a sink after INTO — {SINKS}")));
        };
        match tok.kind {
            Kind::SysProp if tok.text.eq_ignore_ascii_case("$upstream") => Ok(Sink::Upstream),
            Kind::SysProp => {
                Err(self.error_at(tok.start, format!("unknown sink {:?}; {SINKS}", tok.text)))
            }
            Kind::Id if self.peek_kind() == Some(Kind::LParen) => {
                if !tok.text.eq_ignore_ascii_case("BrokeredEndpoint") {
                    return Err(self.error_at(
                        tok.start,
                        format!("unknown sink function {:?}; {SINKS}", tok.text),
                    ));
                }
                self.pos += 1;
                let addr = match self.next() {
                    Some(t) if t.kind == Kind::Str => t,
                    _ => {
                        self.pos = self.pos.saturating_sub(1);
                        return Err(self.error_here(format!(
                            "expected a quoted address in BrokeredEndpoint(...), found {} — {SINKS}",
                            self.found()
                        )));
                    }
                };
                if self.peek_kind() != Some(Kind::RParen) {
                    return Err(self.error_here(format!(
                        "expected ')' after the BrokeredEndpoint address, found {}",
                        self.found()
                    )));
                }
                self.pos += 1;
                // edgeHub strips the quotes and does not unescape the address.
                let inner: String = {
                    let chars: Vec<char> = addr.text.chars().collect();
                    chars[1..chars.len() - 1].iter().collect()
                };
                Sink::from_brokered_address(&inner)
                    .map_err(|e| self.error_at(addr.start, e.to_string()))
            }
            _ => Err(self.error_at(
                tok.start,
                format!("expected a sink after INTO, found {:?} — {SINKS}", tok.text),
            )),
        }
    }

    fn binary_op(&self) -> Option<(BinaryOp, usize)> {
        let t = self.peek()?;
        let op = match t.kind {
            Kind::Star => BinaryOp::Mul,
            Kind::Slash => BinaryOp::Div,
            Kind::Percent => BinaryOp::Mod,
            Kind::Plus => BinaryOp::Add,
            Kind::Minus => BinaryOp::Sub,
            Kind::Concat => BinaryOp::Concat,
            Kind::Lt => BinaryOp::Lt,
            Kind::Le => BinaryOp::Le,
            Kind::Gt => BinaryOp::Gt,
            Kind::Ge => BinaryOp::Ge,
            Kind::Eq => BinaryOp::Eq,
            Kind::Ne1 => BinaryOp::Ne,
            Kind::Ne2 => BinaryOp::NeAlt,
            Kind::And => BinaryOp::And,
            Kind::Or => BinaryOp::Or,
            Kind::Coalesce => BinaryOp::Coalesce,
            _ => return None,
        };
        Some((op, t.start))
    }

    fn expr(&mut self, min_precedence: u8) -> Result<Typed, RouteError> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH {
            return Err(self.error_here(format!(
                "the condition is nested more than {MAX_DEPTH} levels deep; simplify it"
            )));
        }
        let mut left = self.prefix()?;
        while let Some((op, at)) = self.binary_op() {
            if op.precedence() < min_precedence {
                break;
            }
            self.pos += 1;
            let right = self.expr(op.precedence() + 1)?;
            left = self.binary(op, at, left, right)?;
        }
        self.nesting -= 1;
        Ok(left)
    }

    fn prefix(&mut self) -> Result<Typed, RouteError> {
        let Some(tok) = self.next() else {
            return Err(self.error_here("expected an expression, found the end of the route"));
        };
        let lit = |l: Literal, v: Val, ty: Ty| Typed {
            expr: Expr::Literal(l),
            node: Node::Const(v),
            ty,
            depth: 1,
        };
        match tok.kind {
            Kind::Minus | Kind::Not => {
                let operand = self.expr(PREFIX_PRECEDENCE)?;
                self.unary(&tok, operand)
            }
            Kind::LParen => {
                let inner = self.expr(0)?;
                if self.peek_kind() != Some(Kind::RParen) {
                    return Err(self.error_here(format!(
                        "missing ')' to close the '(' at column {}, found {}",
                        tok.start + 1,
                        self.found()
                    )));
                }
                self.pos += 1;
                Ok(inner)
            }
            Kind::Str => {
                let s = unescape(&tok.text);
                Ok(lit(Literal::String(s.clone()), Val::Str(s), Ty::String))
            }
            Kind::UnterminatedStr => Err(self.error_at(
                tok.start,
                "unterminated string: close it with the quote it opens with (inside, write \\' \\\" \\\\ or \\uXXXX)",
            )),
            Kind::Integer | Kind::Real => Ok(match tok.text.parse::<f64>() {
                Ok(n) if n.is_finite() => lit(Literal::Number(n), Val::Number(n), Ty::Number),
                _ => lit(Literal::Undefined, Val::Undefined, Ty::Undefined),
            }),
            Kind::Hex => {
                let digits = tok.text[2..].trim_start_matches('0');
                Ok(match u64::from_str_radix(if digits.is_empty() { "0" } else { digits }, 16) {
                    Ok(n) => {
                        // long.Parse with HexNumber: 16 hex digits are a two's-complement i64.
                        let v = n as i64 as f64;
                        lit(Literal::Number(v), Val::Number(v), Ty::Number)
                    }
                    Err(_) => lit(Literal::Undefined, Val::Undefined, Ty::Undefined),
                })
            }
            Kind::True => Ok(lit(Literal::Bool(true), Val::Bool(true), Ty::Bool)),
            Kind::False => Ok(lit(Literal::Bool(false), Val::Bool(false), Ty::Bool)),
            Kind::Null => Ok(lit(Literal::Null, Val::Null, Ty::Null)),
            Kind::Undefined => Ok(lit(Literal::Undefined, Val::Undefined, Ty::Undefined)),
            Kind::SysProp => self.sys_property(&tok, false),
            Kind::LBrace => {
                let prop = match self.next() {
                    Some(t) if t.kind == Kind::SysProp => t,
                    _ => {
                        self.pos = self.pos.saturating_sub(1);
                        return Err(self.error_here(format!(
                            "expected a system property such as $contentType after '{{', found {}",
                            self.found()
                        )));
                    }
                };
                if self.peek_kind() != Some(Kind::RBrace) {
                    return Err(self.error_here(format!(
                        "expected '}}' after {{{}, found {}",
                        prop.text,
                        self.found()
                    )));
                }
                self.pos += 1;
                self.sys_property(&prop, true)
            }
            Kind::Id if self.peek_kind() == Some(Kind::LParen) => self.call(&tok),
            Kind::Id => Ok(Typed {
                expr: Expr::Property(tok.text.clone()),
                node: Node::AppProp(tok.text),
                ty: Ty::String,
                depth: 1,
            }),
            Kind::QueryPath => Err(self.error_at(
                tok.start,
                format!(
                    "{:?} is not a property name: [ ] may only index a $body query such as $body.a[0]",
                    tok.text
                ),
            )),
            Kind::RParen => Err(self.error_at(tok.start, "unmatched closing ')'")),
            Kind::Unknown => Err(self.error_at(
                tok.start,
                format!("invalid symbol {:?}", tok.text),
            )),
            _ => Err(self.error_at(
                tok.start,
                format!(
                    "expected a value, a property or a function call, found {:?}",
                    tok.text
                ),
            )),
        }
    }

    fn sys_property(&self, tok: &Token, escaped: bool) -> Result<Typed, RouteError> {
        let name = tok.text[1..].to_string();
        let expr = Expr::SysProperty {
            name: name.clone(),
            escaped,
        };
        let is_body =
            name.len() >= 5 && name.is_char_boundary(5) && name[..5].eq_ignore_ascii_case("body.");
        let bracketed = name.contains('[') || name.contains(']');
        if is_body {
            let path = body::parse_path(&name[5..])
                .map_err(|m| self.error_at(tok.start, format!("invalid $body query: {m}")))?;
            let app_name = if escaped || bracketed {
                None
            } else {
                Some(tok.text.clone())
            };
            return Ok(Typed {
                expr,
                node: Node::Body { path, app_name },
                ty: Ty::Dynamic,
                depth: 1,
            });
        }
        if bracketed {
            return Err(self.error_at(
                tok.start,
                format!(
                    "{:?} is not a system property: [ ] may only index a $body query such as $body.a[0]",
                    tok.text
                ),
            ));
        }
        let node = if escaped {
            Node::Sys(name)
        } else {
            Node::SysOrApp {
                app_name: tok.text.clone(),
                sys_name: name,
            }
        };
        Ok(Typed {
            expr,
            node,
            ty: Ty::String,
            depth: 1,
        })
    }

    fn call(&mut self, name: &Token) -> Result<Typed, RouteError> {
        self.pos += 1; // '('
        let mut args: Vec<Typed> = Vec::new();
        if self.peek_kind() == Some(Kind::RParen) {
            self.pos += 1;
        } else {
            loop {
                args.push(self.expr(0)?);
                match self.peek_kind() {
                    Some(Kind::Comma) => self.pos += 1,
                    Some(Kind::RParen) => {
                        self.pos += 1;
                        break;
                    }
                    _ => {
                        return Err(self.error_here(format!(
                            "expected ',' or ')' in the arguments of {}(...), found {}",
                            name.text,
                            self.found()
                        )))
                    }
                }
            }
        }
        let builtin = lookup_builtin(&name.text).ok_or_else(|| {
            let extra = if name.text.eq_ignore_ascii_case("twin_change_includes") {
                " (twin_change_includes is not supported by this hub)"
            } else {
                ""
            };
            self.error_at(
                name.start,
                format!(
                    "unknown function {:?}{extra}; the functions are {}",
                    name.text,
                    BUILTINS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let tys: Vec<Ty> = args.iter().map(|a| a.ty).collect();
        let ty = check_call(builtin, &name.text, &tys).map_err(|m| self.error_at(name.start, m))?;
        let depth = 1 + args.iter().map(|a| a.depth).max().unwrap_or(0);
        self.check_depth(depth, name.start)?;
        let mut exprs = Vec::with_capacity(args.len());
        let mut nodes = Vec::with_capacity(args.len());
        for a in args {
            exprs.push(a.expr);
            nodes.push(a.node);
        }
        Ok(Typed {
            expr: Expr::Call {
                name: name.text.clone(),
                args: exprs,
            },
            node: Node::Call(builtin, nodes, tys),
            ty,
            depth,
        })
    }

    fn check_depth(&self, depth: usize, at: usize) -> Result<(), RouteError> {
        if depth > MAX_DEPTH {
            Err(self.error_at(
                at,
                format!("the condition is nested more than {MAX_DEPTH} levels deep; simplify it"),
            ))
        } else {
            Ok(())
        }
    }

    fn unary(&self, tok: &Token, operand: Typed) -> Result<Typed, RouteError> {
        let depth = operand.depth + 1;
        self.check_depth(depth, tok.start)?;
        let (op, node, ty) = if tok.kind == Kind::Minus {
            if !matches!(operand.ty, Ty::Number | Ty::Dynamic) {
                return Err(self.error_at(
                    tok.start,
                    format!(
                        "'-' negates numbers, but its operand is a {}{}",
                        operand.ty.name(),
                        string_hint(&[operand.ty])
                    ),
                ));
            }
            (UnaryOp::Neg, Node::Neg(Box::new(operand.node)), operand.ty)
        } else {
            if !matches!(operand.ty, Ty::Bool | Ty::Null | Ty::Dynamic) {
                return Err(self.error_at(
                    tok.start,
                    format!(
                        "NOT needs a bool, but its operand is a {}; note that NOT binds tighter than comparisons: write NOT (a = b)",
                        operand.ty.name()
                    ),
                ));
            }
            let ty = operand.ty;
            (
                UnaryOp::Not,
                Node::Not(Box::new(operand.node), ty),
                Ty::Bool,
            )
        };
        Ok(Typed {
            expr: Expr::Unary {
                op,
                expr: Box::new(operand.expr),
            },
            node,
            ty,
            depth,
        })
    }

    fn binary(&self, op: BinaryOp, at: usize, l: Typed, r: Typed) -> Result<Typed, RouteError> {
        let depth = 1 + l.depth.max(r.depth);
        self.check_depth(depth, at)?;
        let (lt, rt) = (l.ty, r.ty);
        let dynamic = lt == Ty::Dynamic || rt == Ty::Dynamic;
        let mismatch = |expected: &str| {
            self.error_at(
                at,
                format!(
                    "invalid operands to '{}': have {} and {}, expected {expected}{}",
                    op.symbol(),
                    lt.name(),
                    rt.name(),
                    string_hint(&[lt, rt])
                ),
            )
        };
        let (lb, rb) = (Box::new(l.node), Box::new(r.node));
        let (node, ty) = match op {
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod | BinaryOp::Add | BinaryOp::Sub => {
                let ok = |t: Ty| matches!(t, Ty::Number | Ty::Dynamic);
                if !ok(lt) || !ok(rt) {
                    return Err(mismatch("numbers"));
                }
                let a = match op {
                    BinaryOp::Mul => Arith::Mul,
                    BinaryOp::Div => Arith::Div,
                    BinaryOp::Mod => Arith::Mod,
                    BinaryOp::Add => Arith::Add,
                    _ => Arith::Sub,
                };
                (
                    Node::Arith(a, lb, rb),
                    if dynamic { Ty::Dynamic } else { Ty::Number },
                )
            }
            BinaryOp::Concat => {
                let ok = |t: Ty| matches!(t, Ty::String | Ty::Dynamic);
                if !ok(lt) || !ok(rt) {
                    return Err(mismatch("strings"));
                }
                (Node::Concat(vec![*lb, *rb]), Ty::String)
            }
            BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge
            | BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::NeAlt => {
                if !comparable(lt, rt) {
                    return Err(mismatch("two values of the same type"));
                }
                let c = match op {
                    BinaryOp::Lt => Cmp::Lt,
                    BinaryOp::Le => Cmp::Le,
                    BinaryOp::Gt => Cmp::Gt,
                    BinaryOp::Ge => Cmp::Ge,
                    BinaryOp::Eq => Cmp::Eq,
                    _ => Cmp::Ne,
                };
                (Node::Cmp(c, lb, rb), Ty::Bool)
            }
            BinaryOp::And | BinaryOp::Or => {
                let ok = |t: Ty| matches!(t, Ty::Bool | Ty::Null | Ty::Undefined | Ty::Dynamic);
                if !ok(lt) || !ok(rt) {
                    return Err(mismatch("bools (conditions)"));
                }
                if op == BinaryOp::And {
                    let ty = if !dynamic && (lt == Ty::Null || rt == Ty::Null) {
                        Ty::Null
                    } else {
                        Ty::Bool
                    };
                    (Node::And(lb, rb, dynamic), ty)
                } else {
                    let ty = if lt == Ty::Null && rt == Ty::Null {
                        Ty::Null
                    } else {
                        Ty::Bool
                    };
                    (Node::Or(lb, rb, dynamic), ty)
                }
            }
            BinaryOp::Coalesce => {
                if !comparable(lt, rt) {
                    return Err(mismatch("two values of the same type"));
                }
                (
                    Node::Coalesce(lb, rb),
                    if dynamic { Ty::Dynamic } else { lt },
                )
            }
        };
        Ok(Typed {
            expr: Expr::Binary {
                op,
                left: Box::new(l.expr),
                right: Box::new(r.expr),
            },
            node,
            ty,
            depth,
        })
    }
}

/// edgeHub accepts two operands of the same static type, or a `$body` value with any
/// value except `undefined`.
fn comparable(l: Ty, r: Ty) -> bool {
    l == r || (l == Ty::Dynamic && r != Ty::Undefined) || (r == Ty::Dynamic && l != Ty::Undefined)
}

fn string_hint(tys: &[Ty]) -> &'static str {
    if tys.contains(&Ty::String) && (tys.contains(&Ty::Number) || tys.len() == 1) {
        " (properties are strings: convert with as_number(...) to compare or compute with numbers)"
    } else {
        ""
    }
}

const BUILTINS: [(&str, Builtin); 23] = [
    ("abs", Builtin::Abs),
    ("exp", Builtin::Exp),
    ("power", Builtin::Power),
    ("square", Builtin::Square),
    ("ceiling", Builtin::Ceiling),
    ("floor", Builtin::Floor),
    ("sign", Builtin::Sign),
    ("sqrt", Builtin::Sqrt),
    ("as_number", Builtin::AsNumber),
    ("is_bool", Builtin::IsBool),
    ("is_defined", Builtin::IsDefined),
    ("is_null", Builtin::IsNull),
    ("is_number", Builtin::IsNumber),
    ("is_string", Builtin::IsString),
    ("concat", Builtin::Concat),
    ("length", Builtin::Length),
    ("lower", Builtin::Lower),
    ("upper", Builtin::Upper),
    ("substring", Builtin::Substring),
    ("index_of", Builtin::IndexOf),
    ("starts_with", Builtin::StartsWith),
    ("ends_with", Builtin::EndsWith),
    ("contains", Builtin::Contains),
];

fn lookup_builtin(name: &str) -> Option<Builtin> {
    BUILTINS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, b)| *b)
}

/// Check a call's arity and argument types; return its result type.
fn check_call(b: Builtin, name: &str, tys: &[Ty]) -> Result<Ty, String> {
    use Builtin::*;
    const NUM: &[Ty] = &[Ty::Number];
    const STR: &[Ty] = &[Ty::String];
    const STR_OR_NUM: &[Ty] = &[Ty::String, Ty::Number];
    const ANY: &[Ty] = &[];
    let (params, variadic, result, usage): (&[&[Ty]], bool, Ty, &str) = match b {
        Abs | Exp | Square | Ceiling | Floor | Sign | Sqrt => {
            (&[NUM], false, Ty::Number, "(number)")
        }
        Power => (&[NUM, NUM], false, Ty::Number, "(number, number)"),
        AsNumber => (&[STR_OR_NUM], false, Ty::Number, "(string or number)"),
        IsBool | IsDefined | IsNull | IsNumber | IsString => (&[ANY], false, Ty::Bool, "(value)"),
        Concat => (&[STR, STR], true, Ty::String, "(string, string, ...)"),
        Length => (&[STR], false, Ty::Number, "(string)"),
        Lower | Upper => (&[STR], false, Ty::String, "(string)"),
        Substring => (
            &[STR, NUM, NUM],
            false,
            Ty::String,
            "(string, start[, length])",
        ),
        IndexOf => (&[STR, STR], false, Ty::Number, "(string, string)"),
        StartsWith | EndsWith | Contains => (&[STR, STR], false, Ty::Bool, "(string, string)"),
    };
    let arity_ok = match b {
        Substring => tys.len() == 2 || tys.len() == 3,
        _ if variadic => tys.len() >= params.len(),
        _ => tys.len() == params.len(),
    };
    if !arity_ok {
        return Err(format!(
            "{name} takes {usage} but was given {} argument{}",
            tys.len(),
            if tys.len() == 1 { "" } else { "s" }
        ));
    }
    for (i, t) in tys.iter().enumerate() {
        let allowed = params.get(i).or(params.last()).copied().unwrap_or(ANY);
        if allowed.is_empty() || *t == Ty::Dynamic || allowed.contains(t) {
            continue;
        }
        let expected: Vec<&str> = allowed.iter().map(|t| t.name()).collect();
        return Err(format!(
            "argument {} of {name}{usage} is a {}, expected a {}{}",
            i + 1,
            t.name(),
            expected.join(" or "),
            string_hint(&[*t, allowed[0]])
        ));
    }
    Ok(result)
}

/// Resolve `\uXXXX` (with surrogate pairs), `\"`, `\'`, `\\` inside a quoted string token.
fn unescape(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    let inner = &chars[1..chars.len().saturating_sub(1).max(1)];
    let mut out = String::with_capacity(inner.len());
    let mut i = 0;
    let hex4 = |at: usize| -> Option<u32> {
        let s: String = inner.get(at..at + 4)?.iter().collect();
        u32::from_str_radix(&s, 16).ok()
    };
    while i < inner.len() {
        let c = inner[i];
        if c == '\\' && i + 1 < inner.len() {
            let n = inner[i + 1];
            if n == 'u' {
                if let Some(u) = hex4(i + 2) {
                    i += 6;
                    if (0xD800..0xDC00).contains(&u)
                        && inner.get(i) == Some(&'\\')
                        && inner.get(i + 1) == Some(&'u')
                    {
                        if let Some(low) = hex4(i + 2).filter(|l| (0xDC00..0xE000).contains(l)) {
                            let cp = 0x10000 + ((u - 0xD800) << 10) + (low - 0xDC00);
                            out.push(char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER));
                            i += 6;
                            continue;
                        }
                    }
                    out.push(char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER));
                    continue;
                }
            }
            out.push(n);
            i += 2;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn unescapes() {
        assert_eq!(unescape(r"'a\'b'"), "a'b");
        assert_eq!(unescape(r#""a\"b""#), "a\"b");
        assert_eq!(unescape(r"'a\\b'"), "a\\b");
        assert_eq!(unescape(r"'\u0041\u00e9'"), "Aé");
        assert_eq!(unescape(r"'\uD83D\uDE00'"), "😀");
        assert_eq!(unescape("''"), "");
    }
}
