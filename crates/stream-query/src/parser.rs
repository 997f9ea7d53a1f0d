//! Parser: tokens -> [`Ast`]. Recursive descent; keywords are case-insensitive and contextual
//! (a field may be called `timestamp` or `count`).

use crate::ast::*;
use crate::error::QueryError;
use crate::lexer::{lex, Tok, Token};
use crate::value::{Micros, Val};

/// Aggregate functions (upper case).
pub(crate) const AGGREGATES: [&str; 14] = [
    "AVG",
    "COUNT",
    "MIN",
    "MAX",
    "SUM",
    "STDEV",
    "STDEVP",
    "VAR",
    "VARP",
    "TOPONE",
    "PERCENTILE_CONT",
    "PERCENTILE_DISC",
    "COLLECT",
    "COLLECTTOP",
];

/// Analytic functions (upper case) with their (min, max) argument counts; each takes
/// `OVER (...)`.
pub(crate) const ANALYTICS: [(&str, usize, usize); 5] = [
    ("LAG", 1, 3),
    ("LAST", 1, 2),
    ("ISFIRST", 2, 2),
    ("ANOMALYDETECTION_SPIKEANDDIP", 4, 4),
    ("ANOMALYDETECTION_CHANGEPOINT", 3, 3),
];

/// Functions of the ASA reference this engine leaves out, with why (see the crate docs).
const LEFT_OUT: [(&str, &str); 11] = [
    ("GETMETADATAPROPERTYVALUE", "message properties do not reach the engine; have the module copy what you need into the body"),
    ("ST_DISTANCE", "geospatial functions are left out on this gateway"),
    ("ST_WITHIN", "geospatial functions are left out on this gateway"),
    ("ST_INTERSECTS", "geospatial functions are left out on this gateway"),
    ("ST_OVERLAPS", "geospatial functions are left out on this gateway"),
    ("CREATEPOINT", "geospatial functions are left out on this gateway"),
    ("CREATEPOLYGON", "geospatial functions are left out on this gateway"),
    ("CREATELINESTRING", "geospatial functions are left out on this gateway"),
    ("REGEXMATCH", "use LIKE or PATINDEX"),
    ("ANOMALYDETECTION", "it was retired by ASA; use AnomalyDetection_SpikeAndDip or AnomalyDetection_ChangePoint"),
    ("GETTYPE", "CAST or TRY_CAST to the type you expect"),
];

/// Scalar functions (upper case) with their (min, max) argument counts.
pub(crate) const SCALARS: [(&str, usize, usize); 35] = [
    ("ABS", 1, 1),
    ("CEILING", 1, 1),
    ("FLOOR", 1, 1),
    ("ROUND", 1, 2),
    ("POWER", 2, 2),
    ("SQRT", 1, 1),
    ("SQUARE", 1, 1),
    ("EXP", 1, 1),
    ("LOG", 1, 2),
    ("SIGN", 1, 1),
    ("LEN", 1, 1),
    ("LOWER", 1, 1),
    ("UPPER", 1, 1),
    ("SUBSTRING", 3, 3),
    ("CONCAT", 1, 64),
    ("CHARINDEX", 2, 3),
    ("REPLACE", 3, 3),
    ("LTRIM", 1, 1),
    ("RTRIM", 1, 1),
    ("TRIM", 1, 1),
    ("LEFT", 2, 2),
    ("RIGHT", 2, 2),
    ("REVERSE", 1, 1),
    ("PATINDEX", 2, 2),
    ("DATETIMEFROMPARTS", 7, 7),
    ("DATEADD", 3, 3),
    ("DATEDIFF", 3, 3),
    ("DATEPART", 2, 2),
    ("DAY", 1, 1),
    ("MONTH", 1, 1),
    ("YEAR", 1, 1),
    ("COALESCE", 1, 64),
    ("GETRECORDPROPERTYVALUE", 2, 2),
    ("GETARRAYELEMENT", 2, 2),
    ("GETARRAYLENGTH", 1, 1),
];

/// Words that end an expression or a select item (so they are never read as a field or alias).
const CLAUSE_WORDS: [&str; 24] = [
    "SELECT",
    "FROM",
    "INTO",
    "WHERE",
    "GROUP",
    "HAVING",
    "TIMESTAMP",
    "PARTITION",
    "WITH",
    "UNION",
    "JOIN",
    "ON",
    "ORDER",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IS",
    "LIKE",
    "BETWEEN",
    "IN",
    "WHEN",
    "THEN",
    "ELSE",
];
const EXPR_WORDS: [&str; 5] = ["END", "CASE", "NULL", "OVER", "BY"];

/// A time unit name or abbreviation (ASA: day dd d, hour hh, minute mi n, second ss s,
/// millisecond ms, microsecond mcs) -> microseconds.
pub(crate) fn unit_micros(unit: &str) -> Option<Micros> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "day" | "dd" | "d" => 86_400_000_000,
        "hour" | "hh" => 3_600_000_000,
        "minute" | "mi" | "n" => 60_000_000,
        "second" | "ss" | "s" => 1_000_000,
        "millisecond" | "ms" => 1_000,
        "microsecond" | "mcs" => 1,
        _ => return None,
    })
}

/// How deeply expressions may nest (parentheses, NOT, operators, function arguments). The
/// parser and every recursive walk over a query (planning, evaluation) stay within this, so a
/// hostile query gets an error instead of exhausting the stack. A debug build's parser needs
/// about 15 KB of stack per parenthesis level (nine frames); 64 levels stay well inside a 2 MB
/// thread stack, and no real query comes near.
pub(crate) const MAX_DEPTH: usize = 64;

const UNITS_HELP: &str = "use day (dd, d), hour (hh), minute (mi, n), second (ss, s), millisecond (ms) or microsecond (mcs)";
const MAX_WINDOW: Micros = 7 * 86_400_000_000;

pub(crate) fn parse(text: &str) -> Result<Ast, QueryError> {
    let tokens = lex(text)?;
    let mut p = Parser {
        t: tokens,
        i: 0,
        depth: 0,
    };
    p.query()
}

/// Parse a standalone expression (used by tests).
#[cfg(test)]
pub(crate) fn parse_expr(text: &str) -> Result<Expr, QueryError> {
    let tokens = lex(text)?;
    let mut p = Parser {
        t: tokens,
        i: 0,
        depth: 0,
    };
    let e = p.expr()?;
    p.expect_eof()?;
    Ok(e)
}

struct Parser {
    t: Vec<Token>,
    i: usize,
    /// Current recursion depth of expression parsing (see [`MAX_DEPTH`]).
    depth: usize,
}

/// The height of an expression tree, counting at most `MAX_DEPTH + 1` levels (so the walk
/// itself stays shallow).
pub(crate) fn height(e: &Expr) -> usize {
    fn go(e: &Expr, level: usize) -> usize {
        if level > MAX_DEPTH {
            return level;
        }
        let kids: Vec<&Expr> = match e {
            Expr::Call { args, order, .. } => {
                args.iter().chain(order.iter().map(|o| &o.expr)).collect()
            }
            Expr::Neg(x) | Expr::Not(x) | Expr::IsNull(x, _) | Expr::Cast(x, _, _) => vec![x],
            Expr::Bin(_, a, b) | Expr::Like(a, b, _) => vec![a, b],
            Expr::Between(a, b, c, _) => vec![a, b, c],
            Expr::In(a, l, _) => std::iter::once(&**a).chain(l.iter()).collect(),
            Expr::Case {
                operand,
                whens,
                otherwise,
            } => operand
                .iter()
                .map(|b| &**b)
                .chain(whens.iter().flat_map(|(a, b)| [a, b]))
                .chain(otherwise.iter().map(|b| &**b))
                .collect(),
            Expr::Analytic { args, over, .. } => args
                .iter()
                .chain(over.partition.iter())
                .chain(over.when.iter())
                .collect(),
            Expr::Lit(_) | Expr::Field(..) | Expr::Timestamp | Expr::Agg(_) | Expr::An(_) => {
                Vec::new()
            }
        };
        kids.into_iter()
            .map(|k| go(k, level + 1))
            .max()
            .unwrap_or(level)
    }
    go(e, 1)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("'{w}'"),
        Tok::Quoted(q) => format!("identifier \"{q}\""),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Num(n) => format!("number {n}"),
        Tok::Sym(s) => format!("'{s}'"),
        Tok::Eof => "the end of the query".into(),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.t[self.i.min(self.t.len() - 1)].tok
    }
    fn peek_at(&self, n: usize) -> &Tok {
        &self.t[(self.i + n).min(self.t.len() - 1)].tok
    }
    fn pos(&self) -> Pos {
        let t = &self.t[self.i.min(self.t.len() - 1)];
        Pos {
            line: t.line,
            col: t.col,
        }
    }
    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.i < self.t.len() - 1 {
            self.i += 1;
        }
        t
    }
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, QueryError> {
        let p = self.pos();
        Err(QueryError::new(p.line, p.col, msg))
    }
    fn err_at<T>(&self, p: Pos, msg: impl Into<String>) -> Result<T, QueryError> {
        Err(QueryError::new(p.line, p.col, msg))
    }
    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Tok::Word(x) if x.eq_ignore_ascii_case(w))
    }
    fn is_word_at(&self, n: usize, w: &str) -> bool {
        matches!(self.peek_at(n), Tok::Word(x) if x.eq_ignore_ascii_case(w))
    }
    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Sym(x) if *x == s)
    }
    fn eat_word(&mut self, w: &str) -> bool {
        if self.is_word(w) {
            self.next();
            true
        } else {
            false
        }
    }
    fn eat_sym(&mut self, s: &str) -> bool {
        if self.is_sym(s) {
            self.next();
            true
        } else {
            false
        }
    }
    fn expect_word(&mut self, w: &str, why: &str) -> Result<(), QueryError> {
        if self.eat_word(w) {
            Ok(())
        } else {
            self.err(format!(
                "expected {w} {why}, found {}",
                describe(self.peek())
            ))
        }
    }
    fn expect_sym(&mut self, s: &str, why: &str) -> Result<(), QueryError> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            self.err(format!(
                "expected '{s}' {why}, found {}",
                describe(self.peek())
            ))
        }
    }
    #[cfg(test)]
    fn expect_eof(&mut self) -> Result<(), QueryError> {
        if matches!(self.peek(), Tok::Eof) {
            Ok(())
        } else {
            self.err(format!("unexpected {}", describe(self.peek())))
        }
    }

    /// A name: a bare word that is not a clause keyword, or a quoted/bracketed identifier.
    fn is_name(&self, n: usize) -> bool {
        match self.peek_at(n) {
            Tok::Quoted(_) => true,
            Tok::Word(w) => !is_reserved(w),
            _ => false,
        }
    }
    fn name(&mut self, what: &str) -> Result<String, QueryError> {
        if self.is_name(0) {
            match self.next() {
                Tok::Quoted(s) | Tok::Word(s) => Ok(s),
                _ => self.err(format!("expected {what}")),
            }
        } else {
            self.err(format!(
                "expected {what}, found {}; quote a name that is a keyword as [name]",
                describe(self.peek())
            ))
        }
    }

    fn query(&mut self) -> Result<Ast, QueryError> {
        let mut steps = Vec::new();
        if self.eat_word("WITH") {
            loop {
                let pos = self.pos();
                let name = self.name("a step name after WITH")?;
                self.expect_word("AS", "after the step name (WITH name AS (SELECT ...))")?;
                self.expect_sym("(", "before the step's SELECT")?;
                let selects = self.union(true)?;
                self.expect_sym(")", "after the step's SELECT")?;
                steps.push(Step { name, pos, selects });
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        let mut selects = Vec::new();
        loop {
            while self.eat_sym(";") {}
            if matches!(self.peek(), Tok::Eof) {
                break;
            }
            if self.is_word("CREATE") {
                return self.err("CREATE TABLE is not supported: inputs are JSON without a declared schema; remove it and CAST fields where a type matters");
            }
            if !self.is_word("SELECT") {
                return self.err(format!(
                    "expected SELECT, found {}; every statement is SELECT ... INTO ... FROM ...",
                    describe(self.peek())
                ));
            }
            selects.push(self.union(false)?);
        }
        if selects.is_empty() {
            return self
                .err("the query has no SELECT statement; write SELECT ... INTO output FROM input");
        }
        Ok(Ast { steps, selects })
    }

    /// `SELECT .. [UNION SELECT ..]*`: later SELECTs of a UNION write where the first one does
    /// (they take no INTO of their own).
    fn union(&mut self, in_step: bool) -> Result<Vec<Select>, QueryError> {
        let mut v = vec![self.select(in_step)?];
        while self.is_word("UNION") {
            self.next();
            if self.is_word("ALL") {
                self.next();
            }
            let pos = self.pos();
            let sel = self.select(true).map_err(|e| {
                if e.message.contains("cannot have INTO") {
                    QueryError::new(
                        pos.line,
                        pos.col,
                        "only the first SELECT of a UNION has INTO; remove it from the later ones",
                    )
                } else {
                    e
                }
            })?;
            v.push(sel);
        }
        Ok(v)
    }

    /// `a.b.*` ahead: the number of names before `.*`.
    fn star_path_len(&self) -> Option<usize> {
        let mut n = 0;
        loop {
            if !self.is_name(2 * n) || !matches!(self.peek_at(2 * n + 1), Tok::Sym(".")) {
                return None;
            }
            n += 1;
            if matches!(self.peek_at(2 * n), Tok::Sym("*")) {
                return Some(n);
            }
        }
    }

    /// A word that starts a JOIN or APPLY after a FROM source (so it is not read as an alias).
    fn at_join_word(&self) -> bool {
        ["JOIN", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "OUTER"]
            .iter()
            .any(|w| self.is_word(w))
    }

    /// `[AS] alias` after a FROM or JOIN source.
    fn source_alias(&mut self) -> Result<Option<String>, QueryError> {
        if self.eat_word("AS") {
            Ok(Some(self.name("an alias after AS")?))
        } else if self.is_name(0) && !self.at_join_word() {
            Ok(Some(self.name("an alias")?))
        } else {
            Ok(None)
        }
    }

    /// `TIMESTAMP BY expr [OVER k, ..]` and `PARTITION BY ..` after a source.
    fn source_time(&mut self) -> Result<(Option<Expr>, Vec<Expr>), QueryError> {
        let mut timestamp_by = None;
        let mut over = Vec::new();
        if self.is_word("TIMESTAMP") && self.is_word_at(1, "BY") {
            self.next();
            self.next();
            timestamp_by = Some(self.expr()?);
            if self.eat_word("OVER") {
                loop {
                    over.push(self.expr()?);
                    if !self.eat_sym(",") {
                        break;
                    }
                }
            }
        }
        if self.is_word("PARTITION") && self.is_word_at(1, "BY") {
            // PARTITION BY PartitionId only matters for cloud scale-out; a single edge engine ignores it.
            self.next();
            self.next();
            self.expr()?;
        }
        Ok((timestamp_by, over))
    }

    /// `{INNER | LEFT [OUTER]} JOIN source [AS alias] [TIMESTAMP BY ..] ON condition`.
    fn join(&mut self) -> Result<Option<Join>, QueryError> {
        let pos = self.pos();
        let kind = if self.eat_word("INNER") {
            JoinKind::Inner
        } else if self.is_word("LEFT") {
            self.next();
            self.eat_word("OUTER");
            JoinKind::LeftOuter
        } else if self.is_word("RIGHT") || self.is_word("FULL") {
            return self.err(format!(
                "{} JOIN is not supported (ASA has INNER and LEFT OUTER JOIN); swap the sources and use LEFT OUTER JOIN",
                describe(self.peek()).trim_matches('\'')
            ));
        } else if self.is_word("JOIN") {
            JoinKind::Inner
        } else {
            return Ok(None);
        };
        self.expect_word("JOIN", "(INNER JOIN or LEFT OUTER JOIN)")?;
        let from_pos = self.pos();
        let from = self.name("an input or step name after JOIN")?;
        let alias = self.source_alias()?;
        let (timestamp_by, over) = self.source_time()?;
        self.expect_word("ON", "after the joined source (JOIN b ON condition)")?;
        let on = self.expr()?;
        Ok(Some(Join {
            kind,
            from,
            from_pos,
            alias,
            timestamp_by,
            over,
            on,
            pos,
        }))
    }

    /// `{CROSS | OUTER} APPLY {GetArrayElements | GetRecordProperties}(expr) AS name`.
    fn apply(&mut self) -> Result<Option<Apply>, QueryError> {
        let pos = self.pos();
        let outer = if self.is_word("CROSS") && self.is_word_at(1, "APPLY") {
            false
        } else if self.is_word("OUTER") && self.is_word_at(1, "APPLY") {
            true
        } else {
            return Ok(None);
        };
        self.next();
        self.next();
        let fpos = self.pos();
        let f = match self.next() {
            Tok::Word(w) => w.to_ascii_uppercase(),
            other => {
                return self.err_at(
                    fpos,
                    format!(
                        "expected GetArrayElements or GetRecordProperties after APPLY, found {}",
                        describe(&other)
                    ),
                )
            }
        };
        let array = match f.as_str() {
            "GETARRAYELEMENTS" => true,
            "GETRECORDPROPERTIES" => false,
            _ => {
                return self.err_at(
                    fpos,
                    format!("APPLY supports GetArrayElements and GetRecordProperties, not {f}"),
                )
            }
        };
        self.expect_sym("(", "after the function name")?;
        let arg = self.expr()?;
        self.expect_sym(")", "to close the APPLY function's argument")?;
        self.expect_word("AS", "in APPLY GetArrayElements(x) AS name")?;
        let name = self.name("a name for the applied elements")?;
        Ok(Some(Apply {
            outer,
            array,
            arg,
            name,
            pos,
        }))
    }

    fn select(&mut self, in_step: bool) -> Result<Select, QueryError> {
        let pos = self.pos();
        self.expect_word("SELECT", "to start a statement")?;
        if self.is_word("DISTINCT") || self.is_word("TOP") {
            return self
                .err("SELECT DISTINCT and TOP are not supported; use GROUP BY with a window");
        }
        let mut items = Vec::new();
        loop {
            if self.eat_sym("*") {
                items.push(SelectItem::Star(None));
            } else if let Some(n) = self.star_path_len() {
                let mut path = Vec::new();
                for _ in 0..n {
                    if let Tok::Word(w) | Tok::Quoted(w) = self.next() {
                        path.push(w);
                    }
                    self.next(); // '.'
                }
                self.next(); // '*'
                items.push(SelectItem::Star(Some(path)));
            } else {
                let expr = self.expr()?;
                let alias = if self.eat_word("AS") {
                    // AS 'name' is accepted too (ASA's examples use it)
                    match self.peek().clone() {
                        Tok::Str(n) => {
                            self.next();
                            Some(n)
                        }
                        _ => Some(self.name("a column name after AS")?),
                    }
                } else if self.is_name(0) {
                    Some(self.name("a column name")?)
                } else {
                    None
                };
                items.push(SelectItem::Expr { expr, alias });
            }
            if !self.eat_sym(",") {
                break;
            }
        }
        let mut into = None;
        if self.eat_word("INTO") {
            if in_step {
                return self.err(
                    "a WITH step cannot have INTO; put INTO in the SELECT that reads the step",
                );
            }
            into = Some(self.name("an output name after INTO")?);
        }
        self.expect_word("FROM", "after the select list")?;
        let from_pos = self.pos();
        let from = self.name("an input name after FROM")?;
        let alias = self.source_alias()?;
        let (timestamp_by, over) = self.source_time()?;
        let mut join = Vec::new();
        while let Some(j) = self.join()? {
            join.push(j);
        }
        let mut apply = Vec::new();
        while let Some(a) = self.apply()? {
            if !join.is_empty() {
                return self.err_at(
                    a.pos,
                    "APPLY cannot be combined with JOIN in one SELECT; apply in a WITH step first",
                );
            }
            apply.push(a);
        }
        if self.is_sym(",") {
            return self.err("FROM takes one source (a comma join is not supported); use JOIN ... ON with a DATEDIFF time bound");
        }
        if self.is_word("MATCH_RECOGNIZE") {
            return self.err("MATCH_RECOGNIZE is not supported by this engine; express the pattern with LAG/LAST or a JOIN of WITH steps");
        }
        let filter = if self.eat_word("WHERE") {
            Some(self.expr()?)
        } else {
            None
        };
        let mut group = Vec::new();
        let mut window = None;
        let mut session_partition = Vec::new();
        if self.is_word("GROUP") {
            self.next();
            self.expect_word("BY", "after GROUP")?;
            loop {
                let wpos = self.pos();
                if let Some(kind) = self.window_kind() {
                    if window.is_some() {
                        return self.err("GROUP BY has more than one window; keep one");
                    }
                    let (w, keys) = self.window(kind)?;
                    group.extend(keys.iter().cloned());
                    session_partition = keys;
                    window = Some((w, wpos));
                } else {
                    let e = self.expr()?;
                    if e == Expr::Timestamp {
                        if window.is_some() {
                            return self
                                .err_at(wpos, "GROUP BY has more than one window; keep one");
                        }
                        window = Some((Window::Snapshot, wpos));
                    } else {
                        group.push(e);
                    }
                }
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        let having = if self.eat_word("HAVING") {
            Some(self.expr()?)
        } else {
            None
        };
        Ok(Select {
            pos,
            items,
            into,
            from,
            from_pos,
            alias,
            timestamp_by,
            over,
            join,
            apply,
            filter,
            group,
            window,
            session_partition,
            having,
        })
    }

    fn window_kind(&self) -> Option<&'static str> {
        if !matches!(self.peek_at(1), Tok::Sym("(")) {
            return None;
        }
        let w = match self.peek() {
            Tok::Word(w) => w.to_ascii_uppercase(),
            _ => return None,
        };
        Some(match w.as_str() {
            "TUMBLINGWINDOW" | "TUMBLING" => "TUMBLING",
            "HOPPINGWINDOW" | "HOPPING" => "HOPPING",
            "SLIDINGWINDOW" | "SLIDING" => "SLIDING",
            "SESSIONWINDOW" | "SESSION" => "SESSION",
            _ => return None,
        })
    }

    /// One window argument: a unit, a number, or `Duration|Hop|Offset|Timeout|MaxDuration(unit, n)`.
    fn window_arg(&mut self) -> Result<WArg, QueryError> {
        let pos = self.pos();
        // a negative number is only meaningful as an offset; sizes are checked by the caller
        let negative =
            matches!(self.peek(), Tok::Sym("-")) && matches!(self.peek_at(1), Tok::Num(_));
        if negative {
            self.next();
        }
        match self.peek().clone() {
            Tok::Num(n) => {
                self.next();
                match n.parse::<i64>() {
                    Ok(v) => Ok(WArg::Num(if negative { -v } else { v }, pos)),
                    _ => self.err_at(pos, format!("window size {n} must be a whole number")),
                }
            }
            Tok::Word(w) => {
                let up = w.to_ascii_uppercase();
                if matches!(self.peek_at(1), Tok::Sym("("))
                    && matches!(
                        up.as_str(),
                        "DURATION" | "HOP" | "OFFSET" | "TIMEOUT" | "MAXDURATION"
                    )
                {
                    self.next();
                    self.next();
                    let u = self.window_unit()?;
                    self.expect_sym(
                        ",",
                        &format!("between the unit and the size of {w}(unit, size)"),
                    )?;
                    let n = match self.window_arg()? {
                        WArg::Num(n, _) => n,
                        _ => {
                            return self
                                .err_at(pos, format!("{w}(unit, size) needs a number as size"))
                        }
                    };
                    self.expect_sym(")", &format!("to close {w}(unit, size)"))?;
                    let v = n.checked_mul(u).filter(|v| v.abs() <= MAX_WINDOW);
                    match v {
                        Some(v) => Ok(WArg::Named(up, v, pos)),
                        None => self.err_at(pos, "a window may be at most 7 days"),
                    }
                } else {
                    let u = self.window_unit()?;
                    Ok(WArg::Unit(u, pos))
                }
            }
            other => self.err(format!(
                "expected a time unit or a number in the window, found {}",
                describe(&other)
            )),
        }
    }

    fn window_unit(&mut self) -> Result<Micros, QueryError> {
        let pos = self.pos();
        match self.next() {
            Tok::Word(w) => match unit_micros(&w) {
                Some(u) => Ok(u),
                None => self.err_at(pos, format!("unknown time unit '{w}'; {UNITS_HELP}")),
            },
            other => self.err_at(
                pos,
                format!(
                    "expected a time unit, found {}; {UNITS_HELP}",
                    describe(&other)
                ),
            ),
        }
    }

    fn window(&mut self, kind: &str) -> Result<(Window, Vec<Expr>), QueryError> {
        let pos = self.pos();
        let name = match self.next() {
            Tok::Word(w) => w,
            _ => String::new(),
        };
        self.expect_sym("(", "after the window name")?;
        let mut args = Vec::new();
        loop {
            args.push(self.window_arg()?);
            if !self.eat_sym(",") {
                break;
            }
        }
        self.expect_sym(")", &format!("to close {name}(...)"))?;
        // Resolve the short form (unit, n, n, ...) into durations, keeping named ones.
        let mut vals: Vec<(String, Micros, Pos)> = Vec::new();
        let mut unit: Option<Micros> = None;
        for a in args {
            match a {
                WArg::Unit(u, p) => {
                    if unit.is_some() || !vals.is_empty() {
                        return self.err_at(p, format!("unexpected time unit in {name}; the unit comes first: {name}(second, 60)"));
                    }
                    unit = Some(u);
                }
                WArg::Num(n, p) => match unit {
                    Some(u) => match n.checked_mul(u).filter(|v| v.abs() <= MAX_WINDOW) {
                        Some(v) => vals.push((String::new(), v, p)),
                        None => return self.err_at(p, "a window may be at most 7 days"),
                    },
                    None => {
                        return self.err_at(
                            p,
                            format!("{name} needs a time unit before the size: {name}(second, 60)"),
                        )
                    }
                },
                WArg::Named(k, v, p) => {
                    if unit.is_some() {
                        return self.err_at(
                            p,
                            format!("do not mix the short form and {k}(...) in {name}"),
                        );
                    }
                    vals.push((k, v, p));
                }
            }
        }
        let get = |i: usize, k: &str| -> Option<Micros> {
            vals.get(i).and_then(|(n, v, _)| {
                if n.is_empty() || n == k {
                    Some(*v)
                } else {
                    None
                }
            })
        };
        let usage = match kind {
            "TUMBLING" => "TumblingWindow(unit, size[, offset]) or TumblingWindow(Duration(unit, size)[, Offset(unit, n)])",
            "HOPPING" => "HoppingWindow(unit, size, hop[, offset]) or HoppingWindow(Duration(unit, size), Hop(unit, n)[, Offset(unit, n)])",
            "SLIDING" => "SlidingWindow(unit, size) or SlidingWindow(Duration(unit, size))",
            _ => "SessionWindow(unit, timeout, maxDuration) or SessionWindow(Timeout(unit, n), MaxDuration(unit, n))",
        };
        let bad = |p: &Parser| {
            p.err_at::<(Window, Vec<Expr>)>(
                pos,
                format!("wrong arguments for {name}; write {usage}"),
            )
        };
        let positive = |v: Micros| v > 0;
        let w = match kind {
            "TUMBLING" => {
                if !(1..=2).contains(&vals.len()) {
                    return bad(self);
                }
                let size = match get(0, "DURATION") {
                    Some(v) if positive(v) => v,
                    _ => return bad(self),
                };
                let offset = if vals.len() == 2 {
                    match get(1, "OFFSET") {
                        Some(v) => v,
                        None => return bad(self),
                    }
                } else {
                    0
                };
                if offset.abs() >= size {
                    return self.err_at(
                        pos,
                        format!("the offset of {name} must be smaller than its size"),
                    );
                }
                Window::Hopping {
                    size,
                    hop: size,
                    offset,
                }
            }
            "HOPPING" => {
                if !(2..=3).contains(&vals.len()) {
                    return bad(self);
                }
                let size = match get(0, "DURATION") {
                    Some(v) if positive(v) => v,
                    _ => return bad(self),
                };
                let hop = match get(1, "HOP") {
                    Some(v) if positive(v) => v,
                    _ => return bad(self),
                };
                let offset = if vals.len() == 3 {
                    match get(2, "OFFSET") {
                        Some(v) => v,
                        None => return bad(self),
                    }
                } else {
                    0
                };
                if offset.abs() >= hop {
                    return self.err_at(
                        pos,
                        format!("the offset of {name} must be smaller than its hop"),
                    );
                }
                Window::Hopping { size, hop, offset }
            }
            "SLIDING" => {
                if vals.len() != 1 {
                    return bad(self);
                }
                let size = match get(0, "DURATION") {
                    Some(v) if positive(v) => v,
                    _ => return bad(self),
                };
                Window::Sliding { size }
            }
            _ => {
                if vals.len() != 2 {
                    return bad(self);
                }
                let timeout = match get(0, "TIMEOUT") {
                    Some(v) if positive(v) => v,
                    _ => return bad(self),
                };
                let max_duration = match get(1, "MAXDURATION") {
                    Some(v) if positive(v) => v,
                    _ => return bad(self),
                };
                if timeout > max_duration {
                    return self.err_at(
                        pos,
                        format!("the timeout of {name} must not exceed its maximum duration"),
                    );
                }
                Window::Session {
                    timeout,
                    max_duration,
                }
            }
        };
        // SessionWindow(...) OVER (PARTITION BY k, ...): the keys split sessions and are group
        // keys too.
        let mut keys = Vec::new();
        if kind == "SESSION" && self.is_word("OVER") {
            self.next();
            self.expect_sym("(", "after OVER")?;
            self.expect_word("PARTITION", "in OVER (PARTITION BY key)")?;
            self.expect_word("BY", "after PARTITION")?;
            loop {
                keys.push(self.expr()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
            self.expect_sym(")", "to close OVER (...)")?;
        }
        Ok((w, keys))
    }

    // ---- expressions, lowest precedence first ----

    pub(crate) fn expr(&mut self) -> Result<Expr, QueryError> {
        let pos = self.pos();
        self.enter()?;
        let e = self.or();
        self.depth -= 1;
        let e = e?;
        self.check_height(&e, pos)?;
        Ok(e)
    }

    /// One more level of recursion; refused past [`MAX_DEPTH`].
    fn enter(&mut self) -> Result<(), QueryError> {
        if self.depth >= MAX_DEPTH {
            return self.err(format!(
                "the expression nests more than {MAX_DEPTH} levels deep (parentheses, NOT, signs or function calls); simplify it or split it into WITH steps"
            ));
        }
        self.depth += 1;
        Ok(())
    }

    fn check_height(&self, e: &Expr, pos: Pos) -> Result<(), QueryError> {
        if height(e) > MAX_DEPTH {
            return self.err_at(pos, format!(
                "the expression nests more than {MAX_DEPTH} levels deep (operators, parentheses or function calls); simplify it or split it into WITH steps"
            ));
        }
        Ok(())
    }

    /// Build `l op r` in a left-associative chain, refusing a tree deeper than [`MAX_DEPTH`]
    /// before it grows (a chain of 100,000 `+` must not become a 100,000-level tree).
    fn chain(&self, op: BinOp, l: Expr, r: Expr, pos: Pos) -> Result<Expr, QueryError> {
        let e = Expr::Bin(op, Box::new(l), Box::new(r));
        self.check_height(&e, pos)?;
        Ok(e)
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let pos = self.pos();
        let mut l = self.and()?;
        while self.eat_word("OR") {
            let r = self.and()?;
            l = self.chain(BinOp::Or, l, r, pos)?;
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let pos = self.pos();
        let mut l = self.not()?;
        while self.eat_word("AND") {
            let r = self.not()?;
            l = self.chain(BinOp::And, l, r, pos)?;
        }
        Ok(l)
    }

    fn not(&mut self) -> Result<Expr, QueryError> {
        if self.eat_word("NOT") {
            self.enter()?;
            let e = self.not();
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e?)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr, QueryError> {
        let l = self.additive()?;
        if self.eat_word("IS") {
            let neg = self.eat_word("NOT");
            self.expect_word("NULL", "after IS [NOT]")?;
            return Ok(Expr::IsNull(Box::new(l), neg));
        }
        let neg = if self.is_word("NOT")
            && (self.is_word_at(1, "LIKE")
                || self.is_word_at(1, "BETWEEN")
                || self.is_word_at(1, "IN"))
        {
            self.next();
            true
        } else {
            false
        };
        if self.eat_word("LIKE") {
            let r = self.additive()?;
            return Ok(Expr::Like(Box::new(l), Box::new(r), neg));
        }
        if self.eat_word("BETWEEN") {
            let lo = self.additive()?;
            self.expect_word("AND", "in BETWEEN low AND high")?;
            let hi = self.additive()?;
            return Ok(Expr::Between(Box::new(l), Box::new(lo), Box::new(hi), neg));
        }
        if self.eat_word("IN") {
            self.expect_sym("(", "after IN")?;
            let mut list = Vec::new();
            loop {
                list.push(self.expr()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
            self.expect_sym(")", "to close IN (...)")?;
            return Ok(Expr::In(Box::new(l), list, neg));
        }
        let op = match self.peek() {
            Tok::Sym("=") => BinOp::Eq,
            Tok::Sym("<>") | Tok::Sym("!=") => BinOp::Ne,
            Tok::Sym("<") => BinOp::Lt,
            Tok::Sym("<=") => BinOp::Le,
            Tok::Sym(">") => BinOp::Gt,
            Tok::Sym(">=") => BinOp::Ge,
            _ => return Ok(l),
        };
        self.next();
        let r = self.additive()?;
        Ok(Expr::Bin(op, Box::new(l), Box::new(r)))
    }

    fn additive(&mut self) -> Result<Expr, QueryError> {
        let pos = self.pos();
        let mut l = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Tok::Sym("+") => BinOp::Add,
                Tok::Sym("-") => BinOp::Sub,
                Tok::Sym("||") => BinOp::Concat,
                _ => return Ok(l),
            };
            self.next();
            let r = self.multiplicative()?;
            l = self.chain(op, l, r, pos)?;
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, QueryError> {
        let pos = self.pos();
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Sym("*") => BinOp::Mul,
                Tok::Sym("/") => BinOp::Div,
                Tok::Sym("%") => BinOp::Mod,
                _ => return Ok(l),
            };
            self.next();
            let r = self.unary()?;
            l = self.chain(op, l, r, pos)?;
        }
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        if self.eat_sym("-") {
            self.enter()?;
            let e = self.unary();
            self.depth -= 1;
            return Ok(match e? {
                Expr::Lit(Val::Int(i)) => Expr::Lit(Val::Int(-i)),
                Expr::Lit(Val::Float(f)) => Expr::Lit(Val::Float(-f)),
                e => Expr::Neg(Box::new(e)),
            });
        }
        if self.eat_sym("+") {
            self.enter()?;
            let e = self.unary();
            self.depth -= 1;
            return e;
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        let pos = self.pos();
        match self.peek().clone() {
            Tok::Num(n) => {
                self.next();
                if !n.contains(['.', 'e', 'E']) {
                    if let Ok(i) = n.parse::<i64>() {
                        return Ok(Expr::Lit(Val::Int(i)));
                    }
                }
                match n.parse::<f64>() {
                    Ok(f) => Ok(Expr::Lit(Val::Float(f))),
                    Err(_) => self.err_at(pos, format!("bad number {n}")),
                }
            }
            Tok::Str(s) => {
                self.next();
                Ok(Expr::Lit(Val::Str(s)))
            }
            Tok::Sym("(") => {
                self.next();
                let e = self.expr()?;
                self.expect_sym(")", "to close '('")?;
                Ok(e)
            }
            Tok::Word(w) => {
                let up = w.to_ascii_uppercase();
                match up.as_str() {
                    "TRUE" => {
                        self.next();
                        return Ok(Expr::Lit(Val::Bool(true)));
                    }
                    "FALSE" => {
                        self.next();
                        return Ok(Expr::Lit(Val::Bool(false)));
                    }
                    "NULL" => {
                        self.next();
                        return Ok(Expr::Lit(Val::Null));
                    }
                    "CASE" => {
                        self.next();
                        return self.case();
                    }
                    "CAST" | "TRY_CAST" if matches!(self.peek_at(1), Tok::Sym("(")) => {
                        self.next();
                        self.next();
                        let e = self.expr()?;
                        self.expect_word("AS", &format!("in {up}(expression AS type)"))?;
                        let ty = self.cast_type()?;
                        self.expect_sym(")", &format!("to close {up}(...)"))?;
                        return Ok(Expr::Cast(Box::new(e), ty, up == "TRY_CAST"));
                    }
                    _ => {}
                }
                if w.eq_ignore_ascii_case("System")
                    && matches!(self.peek_at(1), Tok::Sym("."))
                    && matches!(self.peek_at(2), Tok::Word(t) if t.eq_ignore_ascii_case("Timestamp"))
                {
                    // System.Timestamp() (or the older property form System.Timestamp)
                    self.next();
                    self.next();
                    self.next();
                    if self.eat_sym("(") {
                        self.expect_sym(")", "in System.Timestamp()")?;
                    }
                    return Ok(Expr::Timestamp);
                }
                if is_reserved(&w) {
                    return self.err(format!(
                        "expected an expression, found keyword {}; quote a field with this name as [{w}]",
                        describe(self.peek())
                    ));
                }
                if matches!(self.peek_at(1), Tok::Sym("(")) {
                    return self.call();
                }
                self.path()
            }
            Tok::Quoted(_) => self.path(),
            other => self.err(format!(
                "expected an expression, found {}",
                describe(&other)
            )),
        }
    }

    fn path(&mut self) -> Result<Expr, QueryError> {
        let pos = self.pos();
        let mut parts = vec![self.name("a field name")?];
        while matches!(self.peek(), Tok::Sym(".")) && self.is_name(1) {
            self.next();
            parts.push(self.name("a field name after '.'")?);
        }
        if self.is_sym("(") {
            let dotted = parts.join(".");
            if dotted.eq_ignore_ascii_case("System.Timestamp") {
                self.next();
                self.expect_sym(")", "in System.Timestamp()")?;
                return Ok(Expr::Timestamp);
            }
            return self.err_at(
                pos,
                format!("unknown function '{dotted}'; user-defined functions are not supported"),
            );
        }
        Ok(Expr::Field(parts, pos))
    }

    fn cast_type(&mut self) -> Result<CastType, QueryError> {
        let pos = self.pos();
        let w = match self.next() {
            Tok::Word(w) => w.to_ascii_uppercase(),
            other => {
                return self.err_at(pos, format!("expected a type, found {}", describe(&other)))
            }
        };
        let ty = match w.as_str() {
            "BIGINT" | "INT" | "INTEGER" => CastType::BigInt,
            "FLOAT" | "REAL" | "DOUBLE" => CastType::Float,
            "NVARCHAR" | "VARCHAR" | "STRING" => {
                if self.eat_sym("(") {
                    if !(self.eat_word("MAX") || matches!(self.next(), Tok::Num(_))) {
                        return self.err("expected MAX in nvarchar(max)");
                    }
                    self.expect_sym(")", "in nvarchar(max)")?;
                }
                CastType::NVarChar
            }
            "DATETIME" => CastType::DateTime,
            "BIT" | "BOOLEAN" => CastType::Bit,
            "RECORD" => CastType::Record,
            "ARRAY" => CastType::Array,
            _ => {
                return self.err_at(pos, format!(
                    "unknown type '{w}'; use bigint, float, nvarchar(max), datetime, bit, record or array"
                ))
            }
        };
        Ok(ty)
    }

    fn case(&mut self) -> Result<Expr, QueryError> {
        let operand = if self.is_word("WHEN") {
            None
        } else {
            Some(Box::new(self.expr()?))
        };
        let mut whens = Vec::new();
        while self.eat_word("WHEN") {
            let c = self.expr()?;
            self.expect_word("THEN", "after CASE ... WHEN condition")?;
            let v = self.expr()?;
            whens.push((c, v));
        }
        if whens.is_empty() {
            return self.err("CASE needs at least one WHEN ... THEN ...");
        }
        let otherwise = if self.eat_word("ELSE") {
            Some(Box::new(self.expr()?))
        } else {
            None
        };
        self.expect_word("END", "to close CASE")?;
        Ok(Expr::Case {
            operand,
            whens,
            otherwise,
        })
    }

    fn call(&mut self) -> Result<Expr, QueryError> {
        let pos = self.pos();
        let name = match self.next() {
            Tok::Word(w) => w,
            _ => String::new(),
        };
        let up = name.to_ascii_uppercase();
        if let Some(&(_, lo, hi)) = ANALYTICS.iter().find(|a| a.0 == up) {
            return self.analytic_call(pos, name, up, lo, hi);
        }
        if let Some((_, why)) = LEFT_OUT.iter().find(|f| f.0 == up) {
            return self.err_at(
                pos,
                format!("{name} is not supported by this engine: {why}"),
            );
        }
        let is_agg = AGGREGATES.contains(&up.as_str());
        let scalar = SCALARS.iter().find(|s| s.0 == up);
        if !is_agg && scalar.is_none() {
            return self.err_at(
                pos,
                format!(
                "unknown function '{name}'; supported: {}, {}, {}, System.Timestamp(), CAST, TRY_CAST",
                AGGREGATES.join(", "),
                ANALYTICS.iter().map(|s| s.0).collect::<Vec<_>>().join(", "),
                SCALARS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
            ),
            );
        }
        self.expect_sym("(", "after the function name")?;
        let mut args = Vec::new();
        let mut distinct = false;
        let mut star = false;
        if self.eat_sym("*") {
            if up != "COUNT" {
                return self.err_at(pos, format!("only COUNT takes '*', not {name}"));
            }
            star = true;
        } else if !self.is_sym(")") {
            if self.eat_word("DISTINCT") {
                if up != "COUNT" {
                    return self.err_at(
                        pos,
                        format!("DISTINCT is supported in COUNT(DISTINCT x) only, not in {name}"),
                    );
                }
                distinct = true;
            }
            loop {
                // date parts (DATEADD(minute, ...)) are bare words; keep them as strings
                let e = self.expr()?;
                let e = match (args.is_empty(), up.as_str(), e) {
                    (true, "DATEADD" | "DATEDIFF" | "DATEPART", Expr::Field(p, _))
                        if p.len() == 1 =>
                    {
                        Expr::Lit(Val::Str(p[0].clone()))
                    }
                    (_, _, e) => e,
                };
                args.push(e);
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        self.expect_sym(")", &format!("to close {name}(...)"))?;
        let mut order = Vec::new();
        if matches!(
            up.as_str(),
            "TOPONE" | "PERCENTILE_CONT" | "PERCENTILE_DISC" | "COLLECTTOP"
        ) {
            if self.eat_word("OVER") {
                self.expect_sym("(", "after OVER")?;
                order = self.order_by(&name)?;
                self.expect_sym(")", "to close OVER (ORDER BY ...)")?;
            } else if self.eat_word("WITHIN") {
                self.expect_word("GROUP", "after WITHIN")?;
                self.expect_sym("(", "after WITHIN GROUP")?;
                order = self.order_by(&name)?;
                self.expect_sym(")", "to close WITHIN GROUP (ORDER BY ...)")?;
            } else {
                return self.err(format!(
                    "{name}() needs OVER (ORDER BY expression [ASC|DESC])"
                ));
            }
        }
        // argument counts
        let (lo, hi) = match up.as_str() {
            "COUNT" if star => (0, 0),
            "TOPONE" => (0, 0),
            "PERCENTILE_CONT" | "PERCENTILE_DISC" => (1, 1),
            "COLLECT" => (0, 1),
            "COLLECTTOP" => (1, 2),
            _ if is_agg => (1, 1),
            _ => scalar.map(|s| (s.1, s.2)).unwrap_or((0, 64)),
        };
        if args.len() < lo || args.len() > hi {
            let want = if lo == hi {
                format!("{lo}")
            } else {
                format!("{lo} to {hi}")
            };
            return self.err_at(
                pos,
                format!("{name} takes {want} argument(s), not {}", args.len()),
            );
        }
        if up == "PERCENTILE_CONT" || up == "PERCENTILE_DISC" {
            if order.len() != 1 {
                return self.err_at(
                    pos,
                    format!("{name}(p) needs exactly one ORDER BY expression"),
                );
            }
            match &args[0] {
                Expr::Lit(v) if v.as_f64().is_some_and(|p| (0.0..=1.0).contains(&p)) => {}
                _ => {
                    return self.err_at(pos, format!("{name}(p) needs a number p between 0 and 1"))
                }
            }
        }
        if up == "COLLECTTOP"
            && !matches!(&args[0], Expr::Lit(Val::Int(n)) if (1..=10_000).contains(n))
        {
            return self.err_at(
                pos,
                "CollectTop(n, ...) needs a whole number n from 1 to 10000 (how many events to keep)",
            );
        }
        Ok(Expr::Call {
            name: up,
            args,
            distinct,
            star,
            order,
            pos,
        })
    }

    /// `LAG(x [, offset [, default]])`, `LAST(x)`, `ISFIRST(unit, n)`,
    /// `AnomalyDetection_SpikeAndDip(x, confidence, historySize, mode)` and
    /// `AnomalyDetection_ChangePoint(x, confidence, historySize)`, each with
    /// `OVER ([PARTITION BY ..] [LIMIT DURATION(unit, n)] [WHEN ..])`. Constant arguments are
    /// checked here, so a bad one is an error before any event arrives.
    fn analytic_call(
        &mut self,
        pos: Pos,
        name: String,
        up: String,
        lo: usize,
        hi: usize,
    ) -> Result<Expr, QueryError> {
        self.expect_sym("(", "after the function name")?;
        let mut args = Vec::new();
        if !self.is_sym(")") {
            loop {
                let e = self.expr()?;
                let e = match (args.is_empty(), up.as_str(), e) {
                    (true, "ISFIRST", Expr::Field(p, _)) if p.len() == 1 => {
                        Expr::Lit(Val::Str(p[0].clone()))
                    }
                    (_, _, e) => e,
                };
                args.push(e);
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        self.expect_sym(")", &format!("to close {name}(...)"))?;
        if args.len() < lo || args.len() > hi {
            let want = if lo == hi {
                format!("{lo}")
            } else {
                format!("{lo} to {hi}")
            };
            return self.err_at(
                pos,
                format!("{name} takes {want} argument(s), not {}", args.len()),
            );
        }
        let needs_limit = up != "ISFIRST";
        let over_help = if needs_limit {
            "OVER ([PARTITION BY key] LIMIT DURATION(unit, n) [WHEN condition])"
        } else {
            "OVER ([PARTITION BY key] [WHEN condition])"
        };
        if !self.eat_word("OVER") {
            if needs_limit {
                return self.err(format!("{name}(...) needs {over_help}"));
            }
            self.check_analytic_args(pos, &name, &up, &args)?;
            return Ok(Expr::Analytic {
                name: up,
                args,
                over: Box::new(Over {
                    partition: Vec::new(),
                    limit: None,
                    when: None,
                }),
                pos,
            });
        }
        self.expect_sym("(", &format!("after OVER in {over_help}"))?;
        // PARTITION BY and LIMIT DURATION in either order (ASA's pages show both)
        let mut partition = Vec::new();
        let mut limit = None;
        loop {
            if self.is_word("PARTITION") && partition.is_empty() {
                self.next();
                self.expect_word("BY", "after PARTITION")?;
                loop {
                    partition.push(self.expr()?);
                    if !self.eat_sym(",") {
                        break;
                    }
                }
            } else if self.is_word("LIMIT") && limit.is_none() {
                let lpos = self.pos();
                self.next();
                if !needs_limit {
                    return self.err_at(lpos, format!("{name} takes no LIMIT DURATION: its interval is its own argument; use {over_help}"));
                }
                limit = Some(self.limit_duration(lpos)?);
            } else {
                break;
            }
        }
        if needs_limit && limit.is_none() {
            return self.err(format!(
                "{name}(...) needs LIMIT DURATION(unit, n) in {over_help}"
            ));
        }
        let when = if self.eat_word("WHEN") {
            Some(self.expr()?)
        } else {
            None
        };
        self.expect_sym(")", &format!("to close {over_help}"))?;
        self.check_analytic_args(pos, &name, &up, &args)?;
        Ok(Expr::Analytic {
            name: up,
            args,
            over: Box::new(Over {
                partition,
                limit,
                when,
            }),
            pos,
        })
    }

    /// `DURATION(unit, n)` after LIMIT, in microseconds (at most 7 days).
    fn limit_duration(&mut self, lpos: Pos) -> Result<Micros, QueryError> {
        self.expect_word("DURATION", "after LIMIT")?;
        self.expect_sym("(", "after LIMIT DURATION")?;
        let unit = self.window_unit()?;
        self.expect_sym(",", "in LIMIT DURATION(unit, n)")?;
        let npos = self.pos();
        let n = match self.next() {
            Tok::Num(n) => n.parse::<i64>().ok().filter(|n| *n > 0),
            _ => None,
        };
        let n = match n {
            Some(n) => n,
            None => return self.err_at(npos, "LIMIT DURATION(unit, n) needs a whole number n > 0"),
        };
        self.expect_sym(")", "to close LIMIT DURATION(...)")?;
        match unit.checked_mul(n).filter(|d| *d <= MAX_WINDOW) {
            Some(d) => Ok(d),
            None => self.err_at(lpos, "LIMIT DURATION must not exceed 7 days"),
        }
    }

    fn check_analytic_args(
        &self,
        pos: Pos,
        name: &str,
        up: &str,
        args: &[Expr],
    ) -> Result<(), QueryError> {
        let whole = |e: &Expr| match e {
            Expr::Lit(Val::Int(i)) => Some(*i),
            _ => None,
        };
        match up {
            "LAG" => {
                if let Some(o) = args.get(1) {
                    if !whole(o).is_some_and(|o| (1..=10_000).contains(&o)) {
                        return self
                            .err_at(pos, "LAG's offset must be a whole number from 1 to 10000");
                    }
                }
            }
            "ISFIRST" => {
                let unit = match &args[0] {
                    Expr::Lit(Val::Str(u)) => unit_micros(u),
                    _ => None,
                };
                let n = whole(&args[1]).filter(|n| *n > 0);
                match (unit, n) {
                    (Some(u), Some(n)) if u.checked_mul(n).is_some_and(|d| d <= MAX_WINDOW) => {}
                    (None, _) => {
                        return self.err_at(pos, format!("ISFIRST(unit, n): {UNITS_HELP}"))
                    }
                    _ => {
                        return self.err_at(
                            pos,
                            "ISFIRST(unit, n) needs a whole number n > 0, at most 7 days",
                        )
                    }
                }
            }
            "LAST" => {}
            _ => {
                // anomaly detection: (x, confidence, historySize [, mode]); the caller checked
                // the argument count
                if args.len() < 3 {
                    return self.err_at(
                        pos,
                        format!("{name} takes (expression, confidence, historySize ...)"),
                    );
                }
                let conf = match &args[1] {
                    Expr::Lit(v) => v.as_f64(),
                    _ => None,
                };
                if !conf.is_some_and(|c| (1.0..=100.0).contains(&c)) {
                    return self.err_at(
                        pos,
                        format!("{name}'s confidence must be a number from 1 to 100, such as 95"),
                    );
                }
                if !whole(&args[2]).is_some_and(|h| (2..=10_000).contains(&h)) {
                    return self.err_at(
                        pos,
                        format!("{name}'s historySize must be a whole number from 2 to 10000"),
                    );
                }
                if let Some(m) = args.get(3) {
                    let ok = matches!(m, Expr::Lit(Val::Str(s)) if ["spikes", "dips", "spikesanddips"].iter().any(|k| k.eq_ignore_ascii_case(s)));
                    if !ok {
                        return self.err_at(
                            pos,
                            format!("{name}'s mode must be 'spikes', 'dips' or 'spikesanddips'"),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn order_by(&mut self, name: &str) -> Result<Vec<OrderItem>, QueryError> {
        self.expect_word("ORDER", &format!("in {name}(...) OVER (ORDER BY ...)"))?;
        self.expect_word("BY", "after ORDER")?;
        let mut items = Vec::new();
        loop {
            let expr = self.expr()?;
            let desc = if self.eat_word("DESC") {
                true
            } else {
                self.eat_word("ASC");
                false
            };
            items.push(OrderItem { expr, desc });
            if !self.eat_sym(",") {
                break;
            }
        }
        Ok(items)
    }
}

enum WArg {
    Unit(Micros, Pos),
    Num(i64, Pos),
    Named(String, Micros, Pos),
}

fn is_reserved(w: &str) -> bool {
    CLAUSE_WORDS
        .iter()
        .chain(EXPR_WORDS.iter())
        .any(|k| k.eq_ignore_ascii_case(w))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seed_query_parses() {
        let ast = parse("SELECT Avg(\"temp\") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,60)").unwrap();
        let s = &ast.selects[0][0];
        assert_eq!(s.into.as_deref(), Some("AvgTemp"));
        assert_eq!(s.from, "temperature");
        assert_eq!(
            s.window.map(|w| w.0),
            Some(Window::Hopping {
                size: 60_000_000,
                hop: 60_000_000,
                offset: 0
            })
        );
    }

    #[test]
    fn window_forms_are_equal() {
        let w = |q: &str| {
            parse(&format!("SELECT COUNT(*) INTO o FROM i GROUP BY {q}"))
                .unwrap()
                .selects[0][0]
                .window
                .unwrap()
                .0
        };
        assert_eq!(
            w("TumblingWindow(minute, 5)"),
            w("Tumbling(Duration(mi, 5))")
        );
        assert_eq!(
            w("TumblingWindow(n, 5, 3)"),
            w("TumblingWindow(Duration(minute, 5), Offset(second, 180))")
        );
        assert_eq!(
            w("HoppingWindow(second, 10, 5)"),
            w("HoppingWindow(Duration(ss, 10), Hop(s, 5))")
        );
        assert_eq!(
            w("SlidingWindow(ms, 5000)"),
            w("SlidingWindow(Duration(second, 5))")
        );
        assert_eq!(
            w("SessionWindow(second, 5, 10)"),
            w("SessionWindow(Timeout(s, 5), MaxDuration(s, 10))")
        );
        assert_eq!(
            w("TumblingWindow(d, 1)"),
            Window::Hopping {
                size: 86_400_000_000,
                hop: 86_400_000_000,
                offset: 0
            }
        );
        assert_eq!(
            w("TumblingWindow(mcs, 7)"),
            Window::Hopping {
                size: 7,
                hop: 7,
                offset: 0
            }
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let n = 100_000;
        let cases = [
            format!("SELECT {}a{} INTO o FROM i", "(".repeat(n), ")".repeat(n)),
            format!("SELECT a INTO o FROM i WHERE {}b", "NOT ".repeat(n)),
            format!("SELECT {}a INTO o FROM i", "- ".repeat(n)),
            format!("SELECT {}a INTO o FROM i", "+ ".repeat(n)),
            format!("SELECT a{} INTO o FROM i", " + a".repeat(n)),
            format!("SELECT a INTO o FROM i WHERE b{}", " AND b".repeat(n)),
            format!("SELECT a INTO o FROM i WHERE b{}", " OR b".repeat(n)),
            format!("SELECT a{} INTO o FROM i", " * a".repeat(n)),
            format!(
                "SELECT {}a{} INTO o FROM i",
                "ABS(".repeat(n),
                ")".repeat(n)
            ),
            format!(
                "SELECT {}1{} INTO o FROM i",
                "CASE WHEN a THEN ".repeat(n),
                " END".repeat(n)
            ),
            format!(
                "SELECT {}a{} INTO o FROM i",
                "CAST(".repeat(n),
                " AS float)".repeat(n)
            ),
        ];
        for q in &cases {
            let e = parse(q).unwrap_err();
            assert!(e.message.contains("levels deep"), "{}: {e}", &q[..40]);
        }
        // within the limit: parses, plans and evaluates
        let q = format!(
            "SELECT {}a{} AS x INTO o FROM i",
            "(".repeat(60),
            ")".repeat(60)
        );
        parse(&q).unwrap();
        let q = format!("SELECT a{} AS x INTO o FROM i", " + a".repeat(60));
        parse(&q).unwrap();
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("SELECT Avg(temp)\nINTO o FROM i GROUP BY TumblingWindow(fortnight, 1)")
            .unwrap_err();
        assert_eq!((e.line, e.column), (2, 39), "{e}");
        let e = parse("SELECT Foo(temp) INTO o FROM i").unwrap_err();
        assert_eq!((e.line, e.column), (1, 8));
        assert!(
            e.to_string()
                .starts_with("line 1, column 8: unknown function 'Foo'"),
            "{e}"
        );
        let e = parse("SELECT a INTO o i").unwrap_err();
        assert_eq!((e.line, e.column), (1, 17));
        let e = parse("").unwrap_err();
        assert_eq!((e.line, e.column), (1, 1));
    }

    #[test]
    fn expressions() {
        let e = parse_expr("a + 2 * 3 > 4 AND NOT b IS NULL OR c LIKE 'x%'").unwrap();
        assert!(matches!(e, Expr::Bin(BinOp::Or, _, _)));
        let e = parse_expr("CASE WHEN [Count] >= 3 THEN 'hot' ELSE 'cold' END").unwrap();
        assert!(matches!(e, Expr::Case { .. }));
        let e = parse_expr("TopOne() OVER (ORDER BY t DESC)").unwrap();
        assert!(matches!(e, Expr::Call { ref order, .. } if order.len() == 1 && order[0].desc));
        assert!(parse_expr("DATEADD(minute, -5, System.Timestamp())").is_ok());
        assert_eq!(parse_expr("System.TimeStamp"), Ok(Expr::Timestamp));
        assert!(parse_expr("a.b.\"c d\"").is_ok());
        assert!(parse_expr("CAST(x AS nvarchar(max))").is_ok());
        assert!(parse_expr("AVG(a, b)").is_err());
    }
}
