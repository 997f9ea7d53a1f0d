//! The lexer, a faithful copy of edgeHub's ANTLR lexer (`GrammarLexer.g4`).
//!
//! ANTLR picks, at each position, the longest match of any rule; a tie goes to the rule
//! defined first. That has consequences a hand-written lexer would not have, and routes
//! that work on edgeHub rely on them, so they are kept:
//! - identifiers may contain `-`, `.`, `*`, `+`, `!`, `'`, `$` and digits: `a-b` is one
//!   property name, `-x` is a property named `-x`, and `a!=b` is `a!` `=` `b`;
//! - `true`, `false`, `null`, `undefined` are lower case only (`TRUE` is a property);
//!   `SELECT FROM WHERE INTO AND OR NOT` are case-insensitive;
//! - `/* ... */` is a comment wherever it appears, also when it starts at the `/*` of a
//!   source such as `FROM /messages/*` and a later `*/` closes it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    LBrace,
    RBrace,
    Select,
    From,
    Where,
    Into,
    Str,
    UnterminatedStr,
    Integer,
    Hex,
    Real,
    True,
    False,
    Null,
    Undefined,
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    And,
    Or,
    Not,
    Eq,
    Ne1,
    Ne2,
    Le,
    Ge,
    Gt,
    Lt,
    Concat,
    Coalesce,
    SysProp,
    Id,
    QueryPath,
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub kind: Kind,
    pub text: String,
    /// Char offset of the first character in the route text.
    pub start: usize,
}

/// Characters that end an identifier (`ID_CHARS` excludes them).
fn is_id_char(c: char) -> bool {
    !matches!(
        c,
        '(' | ')'
            | '<'
            | '>'
            | '@'
            | ','
            | ';'
            | ':'
            | '\\'
            | '"'
            | '/'
            | '['
            | ']'
            | '?'
            | '='
            | '{'
            | '}'
            | ' '
            | '\t'
            | '\n'
            | '\r'
    )
}

/// `QUERY_PATH_CHARS`: like identifier characters, but `[` and `]` are allowed.
fn is_query_path_char(c: char) -> bool {
    c == '[' || c == ']' || is_id_char(c)
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Split `text` into tokens, dropping whitespace and comments. Never fails: characters no
/// rule accepts become `Unknown` tokens, which the parser reports.
pub(crate) fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut pos = 0;
    while pos < chars.len() {
        let rest = &chars[pos..];
        // Whitespace and comments are skipped (comments only if they are the longest match,
        // which they always are when they match at all: `/*...*/` is at least 4 characters
        // and no other rule matches more than 1 character starting with '/').
        let ws = run(rest, is_ws);
        if ws > 0 {
            pos += ws;
            continue;
        }
        if let Some(len) = comment(rest) {
            pos += len;
            continue;
        }
        let (kind, len) = longest(rest);
        let text: String = rest[..len].iter().collect();
        tokens.push(Token {
            kind,
            text,
            start: pos,
        });
        pos += len;
    }
    tokens
}

fn run(s: &[char], pred: impl Fn(char) -> bool) -> usize {
    s.iter().take_while(|c| pred(**c)).count()
}

fn comment(s: &[char]) -> Option<usize> {
    if s.len() >= 4 && s[0] == '/' && s[1] == '*' {
        let mut i = 2;
        while i + 1 < s.len() {
            if s[i] == '*' && s[i + 1] == '/' {
                return Some(i + 2);
            }
            i += 1;
        }
    }
    None
}

/// The longest match at the start of `s` (never empty), ties to the earliest rule.
fn longest(s: &[char]) -> (Kind, usize) {
    let candidates: [(Kind, usize); 38] = [
        (Kind::LBrace, lit(s, "{")),
        (Kind::RBrace, lit(s, "}")),
        (Kind::Select, keyword(s, "select")),
        (Kind::From, keyword(s, "from")),
        (Kind::Where, keyword(s, "where")),
        (Kind::Into, keyword(s, "into")),
        (Kind::Str, string(s).0),
        (Kind::UnterminatedStr, string(s).1),
        (Kind::Integer, integer(s)),
        (Kind::Hex, hex(s)),
        (Kind::Real, real(s)),
        (Kind::True, lit(s, "true")),
        (Kind::False, lit(s, "false")),
        (Kind::Null, lit(s, "null")),
        (Kind::Undefined, lit(s, "undefined")),
        (Kind::LParen, lit(s, "(")),
        (Kind::RParen, lit(s, ")")),
        (Kind::Comma, lit(s, ",")),
        (Kind::Plus, lit(s, "+")),
        (Kind::Minus, lit(s, "-")),
        (Kind::Star, lit(s, "*")),
        (Kind::Slash, lit(s, "/")),
        (Kind::Percent, lit(s, "%")),
        (Kind::And, keyword(s, "and")),
        (Kind::Or, keyword(s, "or")),
        (Kind::Not, keyword(s, "not")),
        (Kind::Eq, lit(s, "=")),
        (Kind::Ne1, lit(s, "!=")),
        (Kind::Ne2, lit(s, "<>")),
        (Kind::Le, lit(s, "<=")),
        (Kind::Ge, lit(s, ">=")),
        (Kind::Gt, lit(s, ">")),
        (Kind::Lt, lit(s, "<")),
        (Kind::Concat, lit(s, "||")),
        (Kind::Coalesce, lit(s, "??")),
        (Kind::SysProp, sys_prop(s)),
        (Kind::Id, run(s, is_id_char)),
        (Kind::QueryPath, run(s, is_query_path_char)),
    ];
    let mut best = (Kind::Unknown, 1);
    let mut best_len = 0;
    for (kind, len) in candidates {
        if len > best_len {
            best = (kind, len);
            best_len = len;
        }
    }
    best
}

fn lit(s: &[char], l: &str) -> usize {
    let n = l.chars().count();
    if s.len() >= n && s.iter().zip(l.chars()).all(|(a, b)| *a == b) {
        n
    } else {
        0
    }
}

fn keyword(s: &[char], k: &str) -> usize {
    let n = k.chars().count();
    if s.len() >= n
        && s.iter()
            .zip(k.chars())
            .all(|(a, b)| a.to_ascii_lowercase() == b)
    {
        n
    } else {
        0
    }
}

/// Lengths of the `STRING` and `UNTERMINATED_STRING` matches (0 = no match).
pub(crate) fn string(s: &[char]) -> (usize, usize) {
    let quote = match s.first() {
        Some(q @ ('"' | '\'')) => *q,
        _ => return (0, 0),
    };
    let mut i = 1;
    loop {
        match s.get(i) {
            None => return (0, i),
            Some(c) if *c == quote => return (i + 1, i),
            Some('\\') => match s.get(i + 1) {
                Some('"' | '\'' | '\\') => i += 2,
                Some('u')
                    if s.len() >= i + 6
                        && s[i + 2..i + 6].iter().all(|c| c.is_ascii_hexdigit()) =>
                {
                    i += 6
                }
                // A backslash that starts no valid escape ends both rules here.
                _ => return (0, i),
            },
            Some(_) => i += 1,
        }
    }
}

fn digits(s: &[char], from: usize) -> usize {
    s.get(from..)
        .map(|r| run(r, |c| c.is_ascii_digit()))
        .unwrap_or(0)
}

fn integer(s: &[char]) -> usize {
    let sign = usize::from(s.first() == Some(&'-'));
    let d = digits(s, sign);
    if d == 0 {
        0
    } else {
        sign + d
    }
}

fn hex(s: &[char]) -> usize {
    if s.len() >= 3 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
        let n = s[2..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if n > 0 {
            return 2 + n;
        }
    }
    0
}

fn exponent(s: &[char], from: usize) -> usize {
    match s.get(from) {
        Some('e' | 'E') => {
            let sign = usize::from(matches!(s.get(from + 1), Some('+' | '-')));
            let d = digits(s, from + 1 + sign);
            if d == 0 {
                0
            } else {
                1 + sign + d
            }
        }
        _ => 0,
    }
}

fn real(s: &[char]) -> usize {
    let sign = usize::from(s.first() == Some(&'-'));
    let int = digits(s, sign);
    let mut best = 0;
    // '-'? [0-9]* '.' [0-9]+ EXP?
    if s.get(sign + int) == Some(&'.') {
        let frac = digits(s, sign + int + 1);
        if frac > 0 {
            let end = sign + int + 1 + frac;
            best = end + exponent(s, end);
        }
    }
    // '-'? [0-9]* EXP
    let e = exponent(s, sign + int);
    if e > 0 {
        best = best.max(sign + int + e);
    }
    best
}

fn sys_prop(s: &[char]) -> usize {
    if s.first() == Some(&'$') {
        let n = run(&s[1..], is_query_path_char);
        if n > 0 {
            return 1 + n;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(t: &str) -> Vec<(Kind, String)> {
        tokenize(t).into_iter().map(|t| (t.kind, t.text)).collect()
    }

    #[test]
    fn keywords_case_insensitive_literals_not() {
        assert_eq!(kinds("FrOm")[0].0, Kind::From);
        assert_eq!(kinds("AnD")[0].0, Kind::And);
        assert_eq!(kinds("true")[0].0, Kind::True);
        assert_eq!(kinds("TRUE")[0].0, Kind::Id);
        assert_eq!(kinds("fromage")[0].0, Kind::Id);
    }

    #[test]
    fn identifiers_swallow_operators_without_spaces() {
        assert_eq!(kinds("a-b"), vec![(Kind::Id, "a-b".into())]);
        assert_eq!(kinds("-x")[0], (Kind::Id, "-x".into()));
        assert_eq!(
            kinds("a!=b"),
            vec![
                (Kind::Id, "a!".into()),
                (Kind::Eq, "=".into()),
                (Kind::Id, "b".into())
            ]
        );
        assert_eq!(kinds("a - b")[1].0, Kind::Minus);
    }

    #[test]
    fn numbers() {
        assert_eq!(kinds("-5")[0], (Kind::Integer, "-5".into()));
        assert_eq!(kinds("1.5e3")[0], (Kind::Real, "1.5e3".into()));
        assert_eq!(kinds("10e1000")[0].0, Kind::Real);
        assert_eq!(kinds(".5")[0].0, Kind::Real);
        assert_eq!(kinds("0x1F")[0], (Kind::Hex, "0x1F".into()));
        assert_eq!(kinds("1.5.6")[0].0, Kind::Id);
        assert_eq!(kinds("3-2")[0], (Kind::Id, "3-2".into()));
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(kinds("'a b'")[0], (Kind::Str, "'a b'".into()));
        assert_eq!(kinds(r#""it's""#)[0].0, Kind::Str);
        assert_eq!(kinds(r"'a\'b'")[0], (Kind::Str, r"'a\'b'".into()));
        assert_eq!(kinds("'abc")[0], (Kind::UnterminatedStr, "'abc".into()));
        assert_eq!(kinds(r"'a\nb'")[0], (Kind::UnterminatedStr, "'a".into()));
        assert_eq!(kinds("'abc'x")[0], (Kind::Id, "'abc'x".into()));
    }

    #[test]
    fn sys_props_and_paths() {
        assert_eq!(
            kinds("$body.a[0].b")[0],
            (Kind::SysProp, "$body.a[0].b".into())
        );
        assert_eq!(kinds("$upstream")[0].0, Kind::SysProp);
        assert_eq!(kinds("$ x")[0], (Kind::Id, "$".into()));
        assert_eq!(kinds("a[0]")[0], (Kind::QueryPath, "a[0]".into()));
    }

    #[test]
    fn comments_and_unknown() {
        assert_eq!(kinds("a /* c */ b").len(), 2);
        assert_eq!(kinds("/messages/*")[3].0, Kind::Star);
        assert_eq!(kinds("/*x")[0].0, Kind::Slash);
        assert_eq!(kinds("@")[0].0, Kind::Unknown);
        assert_eq!(kinds("{$a}")[0].0, Kind::LBrace);
    }

    #[test]
    fn positions_are_char_offsets() {
        let t = tokenize("é  x");
        assert_eq!(t[0].text, "é");
        assert_eq!(t[1].start, 3);
    }
}
