//! The condition syntax tree and its printer.
//!
//! Parentheses leave no node behind: `(a)` and `a` are the same tree. The printer wraps
//! every operator operand in parentheses, so what it prints parses back to the same tree.

use std::fmt;

/// A literal value in a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `true` or `false` (lower case only, as in edgeHub).
    Bool(bool),
    /// A finite number; integer, real and hex literals all become `f64`. A literal that
    /// overflows (`1e400`) is `Undefined`, as edgeHub's `double.TryParse` fails on it.
    Number(f64),
    /// `'text'` or `"text"` with escapes `\'` `\"` `\\` `\uXXXX` resolved.
    String(String),
    /// `null`.
    Null,
    /// `undefined`.
    Undefined,
}

/// A prefix operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `NOT x`
    Not,
}

/// An infix operator, from the tightest binding to the loosest: `* / %`, `+ - ||`,
/// `< <= > >=`, `= != <>`, `AND`, `OR`, `??` (all left-associative; the prefix operators
/// `-` and `NOT` bind tighter than all of them, so `NOT a = b` is `(NOT a) = b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Mul,
    Div,
    Mod,
    Add,
    Sub,
    Concat,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    /// `!=`
    Ne,
    /// `<>` (kept apart from `!=` so the tree prints back as written)
    NeAlt,
    And,
    Or,
    Coalesce,
}

impl BinaryOp {
    /// Binding strength: higher binds tighter.
    pub(crate) fn precedence(self) -> u8 {
        match self {
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => 7,
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Concat => 6,
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => 5,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::NeAlt => 4,
            BinaryOp::And => 3,
            BinaryOp::Or => 2,
            BinaryOp::Coalesce => 1,
        }
    }

    /// The operator as written in a route.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Concat => "||",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Eq => "=",
            BinaryOp::Ne => "!=",
            BinaryOp::NeAlt => "<>",
            BinaryOp::And => "AND",
            BinaryOp::Or => "OR",
            BinaryOp::Coalesce => "??",
        }
    }
}

/// A condition expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Literal),
    /// An application property by bare name (looked up case-insensitively).
    Property(String),
    /// `$name` (escaped = false) or `{$name}` (escaped = true); `name` is without the `$`.
    /// `$body.a.b` is a body query. Unescaped, an application property literally named
    /// `$name` wins over the system property, as in edgeHub.
    SysProperty {
        name: String,
        escaped: bool,
    },
    /// A built-in function call; `name` as written (functions match case-insensitively).
    Call {
        name: String,
        args: Vec<Expr>,
    },
    Unary {
        op: UnaryOp,
        expr: Box<Expr>,
    },
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Number(n) => write!(f, "{n}"),
            Literal::String(s) => {
                f.write_str("'")?;
                for c in s.chars() {
                    match c {
                        '\'' => f.write_str("\\'")?,
                        '\\' => f.write_str("\\\\")?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("'")
            }
            Literal::Null => f.write_str("null"),
            Literal::Undefined => f.write_str("undefined"),
        }
    }
}

/// Operands of operators are wrapped unless they are atoms.
struct Operand<'a>(&'a Expr);

impl fmt::Display for Operand<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Expr::Unary { .. } | Expr::Binary { .. } => write!(f, "({})", self.0),
            // A negative number printed after `-` or glued to nothing is still one token,
            // but wrapping keeps `- -1` readable and unambiguous.
            Expr::Literal(Literal::Number(n)) if *n < 0.0 || n.is_sign_negative() => {
                write!(f, "({})", self.0)
            }
            e => write!(f, "{e}"),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal(l) => write!(f, "{l}"),
            Expr::Property(p) => f.write_str(p),
            Expr::SysProperty { name, escaped } => {
                if *escaped {
                    write!(f, "{{${name}}}")
                } else {
                    write!(f, "${name}")
                }
            }
            Expr::Call { name, args } => {
                write!(f, "{name}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
            // `-x` would lex as one identifier, so the operand is always parenthesised.
            Expr::Unary {
                op: UnaryOp::Neg,
                expr,
            } => write!(f, "-({expr})"),
            Expr::Unary {
                op: UnaryOp::Not,
                expr,
            } => write!(f, "NOT {}", Operand(expr)),
            Expr::Binary { op, left, right } => {
                write!(f, "{} {} {}", Operand(left), op.symbol(), Operand(right))
            }
        }
    }
}
