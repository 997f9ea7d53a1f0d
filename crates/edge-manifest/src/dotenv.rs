//! `.env` files as python-dotenv (which iotedgedev uses) reads them:
//!
//! - `KEY=value`, optionally `export KEY=value`; blank lines and lines starting with `#` are skipped;
//!   a line with a key and no `=` sets nothing.
//! - unquoted values are trimmed and end at ` #` (an inline comment);
//! - `'single quoted'` values: only `\'` and `\\` are escapes;
//! - `"double quoted"` values understand `\n \r \t \" \' \\ \a \b \f \v`; both quoted forms may span lines;
//! - `${NAME}` and `${NAME:-default}` in every value (python-dotenv 1.x interpolates quoted values too)
//!   are replaced by the process environment's value, else by a value set earlier in the file, else by
//!   the default or nothing (python-dotenv's `load_dotenv`, `override=False`). `$NAME` without braces is
//!   kept as it is.
//!
//! One difference: python-dotenv skips a line it cannot parse with a warning; this fails and names the line.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::ManifestError;

/// Reads a `.env` file (see the module documentation).
pub fn load_dotenv(path: &Path) -> Result<BTreeMap<String, String>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_dotenv(&text, |name| std::env::var(name).ok()).map_err(|(line, problem)| {
        ManifestError::Dotenv {
            path: path.to_path_buf(),
            line,
            problem,
        }
    })
}

/// Parses `.env` text; `env` looks up the process environment for `${NAME}`. Errors are (line, problem).
pub fn parse_dotenv(
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, (usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut vars = BTreeMap::new();
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        // Start of a line: skip blanks.
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        if chars[i] == '\n' || chars[i] == '\r' || chars[i] == '#' {
            let (next, lines) = skip_line(&chars, i);
            i = next;
            line += lines;
            continue;
        }
        let start_line = line;
        let mut rest: String = chars[i..].iter().take_while(|c| **c != '\n').collect();
        if rest.starts_with("export ") || rest.starts_with("export\t") {
            i += 7;
            rest = rest[7..].to_owned();
            while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
                i += 1;
            }
        }
        // Key.
        let key: String = if i < chars.len() && chars[i] == '\'' {
            let q = chars[i];
            let mut k = String::new();
            i += 1;
            while i < chars.len() && chars[i] != q && chars[i] != '\n' {
                k.push(chars[i]);
                i += 1;
            }
            if i >= chars.len() || chars[i] != q {
                return Err((start_line, "unterminated quoted key".into()));
            }
            i += 1;
            k
        } else {
            let mut k = String::new();
            while i < chars.len() && !matches!(chars[i], '=' | '\n' | '\r' | ' ' | '\t' | '#') {
                k.push(chars[i]);
                i += 1;
            }
            k
        };
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            // `KEY` alone (no value): python-dotenv sets nothing. Anything else is an error.
            let (next, lines) = skip_line(&chars, i);
            let tail: String = chars[i..next].iter().collect();
            if !tail.trim().is_empty() && !tail.trim_start().starts_with('#') || key.is_empty() {
                return Err((
                    start_line,
                    format!("`{}` is not `KEY=value`", rest.trim_end()),
                ));
            }
            i = next;
            line += lines;
            continue;
        }
        i += 1; // '='
        let after_equals = i;
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        // `KEY= # comment`: with a space before it, a `#` starts a comment, not the value.
        let comment_only = i > after_equals && chars.get(i) == Some(&'#');
        let value = if comment_only {
            String::new()
        } else if i < chars.len() && chars[i] == '\'' {
            i += 1;
            let mut v = String::new();
            loop {
                match chars.get(i) {
                    None => return Err((start_line, "unterminated '...' value".into())),
                    Some('\\') if matches!(chars.get(i + 1), Some('\'') | Some('\\')) => {
                        v.push(chars[i + 1]);
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        if *c == '\n' {
                            line += 1;
                        }
                        v.push(*c);
                        i += 1;
                    }
                }
            }
            interpolate(&v, &vars, &env)
        } else if i < chars.len() && chars[i] == '"' {
            i += 1;
            let mut v = String::new();
            loop {
                match chars.get(i) {
                    None => return Err((start_line, "unterminated \"...\" value".into())),
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some('n') => v.push('\n'),
                            Some('r') => v.push('\r'),
                            Some('t') => v.push('\t'),
                            Some('"') => v.push('"'),
                            Some('\\') => v.push('\\'),
                            Some('\'') => v.push('\''),
                            Some('a') => v.push('\u{7}'),
                            Some('b') => v.push('\u{8}'),
                            Some('f') => v.push('\u{c}'),
                            Some('v') => v.push('\u{b}'),
                            Some(other) => {
                                v.push('\\');
                                v.push(*other);
                            }
                            None => return Err((start_line, "unterminated \"...\" value".into())),
                        }
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        if *c == '\n' {
                            line += 1;
                        }
                        v.push(*c);
                        i += 1;
                    }
                }
            }
            interpolate(&v, &vars, &env)
        } else {
            let mut v = String::new();
            while i < chars.len() && chars[i] != '\n' && chars[i] != '\r' {
                if chars[i] == '#' && v.ends_with([' ', '\t']) {
                    break;
                }
                v.push(chars[i]);
                i += 1;
            }
            interpolate(v.trim(), &vars, &env)
        };
        let (next, lines) = skip_line(&chars, i);
        i = next;
        line += lines;
        if key.is_empty() {
            return Err((
                start_line,
                "a line starts with `=`: the variable has no name".into(),
            ));
        }
        vars.insert(key, value);
    }
    Ok(vars)
}

/// Skips to the start of the next line; returns (index, lines skipped: 0 or 1).
fn skip_line(chars: &[char], mut i: usize) -> (usize, usize) {
    while i < chars.len() && chars[i] != '\n' {
        i += 1;
    }
    if i < chars.len() {
        (i + 1, 1)
    } else {
        (i, 0)
    }
}

fn interpolate(
    value: &str,
    earlier: &BTreeMap<String, String>,
    env: &impl Fn(&str) -> Option<String>,
) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start + 2..].find('}') else {
            break;
        };
        let inner = &rest[start + 2..start + 2 + len];
        // `${name}` or `${name:-default}`; a name never holds `:`.
        let (name, default) = match inner.split_once(':') {
            None => (inner, None),
            Some((n, d)) => match d.strip_prefix('-') {
                Some(d) => (n, Some(d)),
                None => {
                    out.push_str(&rest[..start + 2]);
                    rest = &rest[start + 2..];
                    continue;
                }
            },
        };
        out.push_str(&rest[..start]);
        let found = env(name).or_else(|| earlier.get(name).cloned());
        out.push_str(&found.unwrap_or_else(|| default.unwrap_or("").to_owned()));
        rest = &rest[start + 2 + len + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> BTreeMap<String, String> {
        parse_dotenv(text, |n| (n == "FROM_ENV").then(|| "env".to_string())).unwrap()
    }

    #[test]
    fn reads_what_python_dotenv_reads() {
        let v = parse(
            "# comment\n\nA=1\nexport B = two words \nC='lit ${A} \\' x'\nD=\"x\\ny ${A}\"\nE=val # comment\nF=a#b\n\
             G=${FROM_ENV}-${A}-${NOPE:-dflt}-$A\nH=\nLONE\nI=\"multi\nline\"\nJ=last",
        );
        assert_eq!(v["A"], "1");
        assert_eq!(v["B"], "two words");
        assert_eq!(v["C"], "lit 1 ' x");
        assert_eq!(v["D"], "x\ny 1");
        assert_eq!(v["E"], "val");
        assert_eq!(v["F"], "a#b");
        assert_eq!(v["G"], "env-1-dflt-$A");
        assert_eq!(v["H"], "");
        assert!(!v.contains_key("LONE"));
        assert_eq!(v["I"], "multi\nline");
        assert_eq!(v["J"], "last");
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_dotenv("A=1\nB=\"open\n", |_| None).unwrap_err();
        assert_eq!(e.0, 2);
        let e = parse_dotenv("A=1\n\n=x\n", |_| None).unwrap_err();
        assert_eq!(e.0, 3);
    }
}
