//! Lexer: query text -> tokens with 1-based line and column. Handles `--` and `/* */` comments,
//! `'strings'` (with `''`), `"quoted"` and `[bracketed]` identifiers, numbers and operators.

use crate::error::QueryError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A bare word: identifier or keyword (keywords are recognised by the parser, case-insensitively).
    Word(String),
    /// `"name"` or `[name]`: always an identifier, never a keyword.
    Quoted(String),
    /// `'text'`
    Str(String),
    /// A number as written.
    Num(String),
    /// Punctuation and operators.
    Sym(&'static str),
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub line: usize,
    pub col: usize,
}

const SYMS: [&str; 18] = [
    "<>", "!=", "<=", ">=", "||", "(", ")", ",", ".", "*", "+", "-", "/", "%", ";", "=", "<", ">",
];

pub(crate) fn lex(text: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut col) = (0usize, 1usize, 1usize);
    // advance over n chars, tracking line/column
    fn bump(chars: &[char], i: &mut usize, line: &mut usize, col: &mut usize, n: usize) {
        for _ in 0..n {
            if *i < chars.len() {
                if chars[*i] == '\n' {
                    *line += 1;
                    *col = 1;
                } else {
                    *col += 1;
                }
                *i += 1;
            }
        }
    }
    while i < chars.len() {
        let c = chars[i];
        let (tl, tc) = (line, col);
        if c.is_whitespace() {
            bump(&chars, &mut i, &mut line, &mut col, 1);
            continue;
        }
        if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                bump(&chars, &mut i, &mut line, &mut col, 1);
            }
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'*') {
            bump(&chars, &mut i, &mut line, &mut col, 2);
            loop {
                if i >= chars.len() {
                    return Err(QueryError::new(
                        tl,
                        tc,
                        "comment '/*' is never closed; add '*/'",
                    ));
                }
                if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    bump(&chars, &mut i, &mut line, &mut col, 2);
                    break;
                }
                bump(&chars, &mut i, &mut line, &mut col, 1);
            }
            continue;
        }
        if c == '\'' || c == '"' || c == '[' {
            let close = if c == '[' { ']' } else { c };
            bump(&chars, &mut i, &mut line, &mut col, 1);
            let mut s = String::new();
            loop {
                if i >= chars.len() {
                    let what = match c {
                        '\'' => "string",
                        '"' => "quoted identifier",
                        _ => "bracketed identifier",
                    };
                    return Err(QueryError::new(
                        tl,
                        tc,
                        format!("{what} starting here is never closed; add the closing {close}"),
                    ));
                }
                let d = chars[i];
                if d == close {
                    if chars.get(i + 1) == Some(&close) {
                        s.push(close);
                        bump(&chars, &mut i, &mut line, &mut col, 2);
                        continue;
                    }
                    bump(&chars, &mut i, &mut line, &mut col, 1);
                    break;
                }
                s.push(d);
                bump(&chars, &mut i, &mut line, &mut col, 1);
            }
            let tok = if c == '\'' {
                Tok::Str(s)
            } else {
                if s.is_empty() {
                    return Err(QueryError::new(
                        tl,
                        tc,
                        "empty identifier; put a name between the quotes or brackets",
                    ));
                }
                Tok::Quoted(s)
            };
            out.push(Token {
                tok,
                line: tl,
                col: tc,
            });
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let mut s = String::new();
            let mut seen_dot = false;
            while i < chars.len() {
                let d = chars[i];
                if d.is_ascii_digit() {
                    s.push(d);
                } else if d == '.' && !seen_dot {
                    seen_dot = true;
                    s.push(d);
                } else if (d == 'e' || d == 'E')
                    && (chars.get(i + 1).is_some_and(|x| x.is_ascii_digit())
                        || (matches!(chars.get(i + 1), Some('+') | Some('-'))
                            && chars.get(i + 2).is_some_and(|x| x.is_ascii_digit())))
                {
                    s.push(d);
                    bump(&chars, &mut i, &mut line, &mut col, 1);
                    s.push(chars[i]);
                    seen_dot = true;
                } else {
                    break;
                }
                bump(&chars, &mut i, &mut line, &mut col, 1);
            }
            out.push(Token {
                tok: Tok::Num(s),
                line: tl,
                col: tc,
            });
            continue;
        }
        if c.is_alphabetic() || c == '_' || c == '@' || c == '$' {
            let mut s = String::new();
            while i < chars.len()
                && (chars[i].is_alphanumeric()
                    || chars[i] == '_'
                    || chars[i] == '@'
                    || chars[i] == '$')
            {
                s.push(chars[i]);
                bump(&chars, &mut i, &mut line, &mut col, 1);
            }
            out.push(Token {
                tok: Tok::Word(s),
                line: tl,
                col: tc,
            });
            continue;
        }
        let mut matched = None;
        for s in SYMS.iter() {
            let sc: Vec<char> = s.chars().collect();
            if chars[i..].starts_with(&sc) {
                matched = Some(*s);
                break;
            }
        }
        match matched {
            Some(s) => {
                bump(&chars, &mut i, &mut line, &mut col, s.chars().count());
                out.push(Token {
                    tok: Tok::Sym(s),
                    line: tl,
                    col: tc,
                });
            }
            None => {
                return Err(QueryError::new(
                    tl,
                    tc,
                    format!(
                        "unexpected character '{c}'; remove it or quote the name that contains it"
                    ),
                ))
            }
        }
    }
    out.push(Token {
        tok: Tok::Eof,
        line,
        col,
    });
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_positions() {
        let t = lex("SELECT Avg(\"temp\")\n  -- note\n  FROM [in put] /* c */ WHERE x <> 'it''s' AND y >= 1.5e3").unwrap();
        assert_eq!(t[0].tok, Tok::Word("SELECT".into()));
        assert_eq!(t[3].tok, Tok::Quoted("temp".into()));
        assert_eq!((t[3].line, t[3].col), (1, 12));
        assert_eq!(t[5].tok, Tok::Word("FROM".into()));
        assert_eq!((t[5].line, t[5].col), (3, 3));
        assert_eq!(t[6].tok, Tok::Quoted("in put".into()));
        assert_eq!(t[9].tok, Tok::Sym("<>"));
        assert_eq!(t[10].tok, Tok::Str("it's".into()));
        assert_eq!(t[13].tok, Tok::Sym(">="));
        assert_eq!(t[14].tok, Tok::Num("1.5e3".into()));
    }

    #[test]
    fn unclosed_things_are_errors_with_position() {
        let e = lex("SELECT 'abc").unwrap_err();
        assert_eq!((e.line, e.column), (1, 8));
        let e = lex("SELECT\n /* x").unwrap_err();
        assert_eq!((e.line, e.column), (2, 2));
        let e = lex("SELECT #").unwrap_err();
        assert_eq!((e.line, e.column), (1, 8));
    }
}
