//! Syntax tree of a query: statements, expressions and window specifications.

use crate::value::{Micros, Val};

/// Where a construct starts in the query text (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Concat,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CastType {
    BigInt,
    Float,
    NVarChar,
    DateTime,
    Bit,
    Record,
    Array,
}

impl CastType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            CastType::BigInt => "bigint",
            CastType::Float => "float",
            CastType::NVarChar => "nvarchar(max)",
            CastType::DateTime => "datetime",
            CastType::Bit => "bit",
            CastType::Record => "record",
            CastType::Array => "array",
        }
    }
}

/// One `ORDER BY` item of `TopOne() OVER (ORDER BY ..)` or `Percentile_Cont(p) OVER (ORDER BY ..)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OrderItem {
    pub expr: Expr,
    pub desc: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Lit(Val),
    /// A field path `a.b.c` (the first segment may name the input or its alias).
    Field(Vec<String>, Pos),
    /// `System.Timestamp()`
    Timestamp,
    /// A function or aggregate call; `name` is upper case.
    Call {
        name: String,
        args: Vec<Expr>,
        distinct: bool,
        star: bool,
        order: Vec<OrderItem>,
        pos: Pos,
    },
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    IsNull(Box<Expr>, bool),
    Like(Box<Expr>, Box<Expr>, bool),
    Between(Box<Expr>, Box<Expr>, Box<Expr>, bool),
    In(Box<Expr>, Vec<Expr>, bool),
    Case {
        operand: Option<Box<Expr>>,
        whens: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Cast(Box<Expr>, CastType, bool),
    /// After planning: the value of the n-th aggregate of the statement.
    Agg(usize),
    /// An analytic function with its `OVER (...)`: LAG, LAST, ISFIRST and the anomaly
    /// detection functions; `name` is upper case.
    Analytic {
        name: String,
        args: Vec<Expr>,
        over: Box<Over>,
        pos: Pos,
    },
    /// After planning: the value of the n-th analytic function of the statement.
    An(usize),
}

/// `OVER ([PARTITION BY k, ...] [LIMIT DURATION(unit, n)] [WHEN condition])` of an analytic
/// function.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Over {
    pub partition: Vec<Expr>,
    /// LIMIT DURATION in microseconds.
    pub limit: Option<Micros>,
    pub when: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SelectItem {
    /// `*`, or `path.*` (`alias.*` for one side of a JOIN, `record.*` for a nested record's
    /// fields)
    Star(Option<Vec<String>>),
    Expr {
        expr: Expr,
        alias: Option<String>,
    },
}

/// A window of `GROUP BY`. All sizes in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    /// Windows `(k*hop + offset - size, k*hop + offset]`; tumbling is hop == size.
    Hopping {
        size: Micros,
        hop: Micros,
        offset: Micros,
    },
    Sliding {
        size: Micros,
    },
    Session {
        timeout: Micros,
        max_duration: Micros,
    },
    /// `GROUP BY System.Timestamp()`: events with the same timestamp form one window.
    Snapshot,
}

/// `INNER JOIN` (the default) or `LEFT [OUTER] JOIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinKind {
    Inner,
    LeftOuter,
}

/// The right side of `FROM a [AS x] [TIMESTAMP BY ..] {INNER | LEFT [OUTER]} JOIN b [AS y]
/// [TIMESTAMP BY ..] ON condition`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Join {
    pub kind: JoinKind,
    pub from: String,
    pub from_pos: Pos,
    pub alias: Option<String>,
    pub timestamp_by: Option<Expr>,
    pub over: Vec<Expr>,
    pub on: Expr,
    pub pos: Pos,
}

/// `CROSS APPLY GetArrayElements(x) AS name` (or `OUTER APPLY`, or `GetRecordProperties`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Apply {
    pub outer: bool,
    /// GetArrayElements (true) or GetRecordProperties (false).
    pub array: bool,
    pub arg: Expr,
    pub name: String,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Select {
    pub pos: Pos,
    pub items: Vec<SelectItem>,
    pub into: Option<String>,
    pub from: String,
    pub from_pos: Pos,
    pub alias: Option<String>,
    pub timestamp_by: Option<Expr>,
    pub over: Vec<Expr>,
    /// JOINs in order: `FROM a JOIN b ON .. JOIN c ON ..` joins c with the result of a and b.
    pub join: Vec<Join>,
    pub apply: Vec<Apply>,
    pub filter: Option<Expr>,
    pub group: Vec<Expr>,
    pub window: Option<(Window, Pos)>,
    /// `SessionWindow(..) OVER (PARTITION BY k, ..)`: the keys that split sessions (they are
    /// group keys too).
    pub session_partition: Vec<Expr>,
    pub having: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub name: String,
    pub pos: Pos,
    /// The step's SELECT and those it UNIONs.
    pub selects: Vec<Select>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ast {
    pub steps: Vec<Step>,
    /// Each statement with the SELECTs it UNIONs (at least one).
    pub selects: Vec<Vec<Select>>,
}
