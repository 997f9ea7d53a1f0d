//! The one error type of this crate.

use std::fmt;

/// Why a route could not be parsed, type-checked or added to a table.
///
/// Every error names the route; errors tied to a place in the route text carry the 1-based
/// line and column (counted in characters) of the offending token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct RouteError {
    /// The route's name (its key under `$edgeHub.properties.desired.routes`).
    pub name: String,
    /// 1-based line of the offending token; 1 for single-line routes.
    pub line: usize,
    /// 1-based column (in characters) of the offending token; `None` when the error is
    /// about the route as a whole (a duplicate name, a priority out of range).
    pub column: Option<usize>,
    /// What is wrong and what to do about it.
    pub message: String,
    /// The route text as given.
    pub text: String,
}

impl RouteError {
    pub(crate) fn at(name: &str, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_col(text, offset);
        RouteError {
            name: name.to_string(),
            line,
            column: Some(column),
            message: message.into(),
            text: text.to_string(),
        }
    }

    pub(crate) fn whole(name: &str, text: &str, message: impl Into<String>) -> Self {
        RouteError {
            name: name.to_string(),
            line: 1,
            column: None,
            message: message.into(),
            text: text.to_string(),
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let _ = fmt::Write::write_fmt(&mut out, format_args!("route {:?}: ", self.name));
        if let Some(column) = self.column {
            if self.line > 1 {
                let _ = fmt::Write::write_fmt(
                    &mut out,
                    format_args!("line {}, column {}: ", self.line, column),
                );
            } else {
                let _ = fmt::Write::write_fmt(&mut out, format_args!("column {}: ", column));
            }
        }
        out.push_str(&self.message);
        out
    }
}

/// 1-based line and column of the character at `offset` (a char index).
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in text.chars().enumerate() {
        if i == offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_route_and_column() {
        let e = RouteError::at("r", "FROM /x INT", 8, "expected INTO");
        assert_eq!(e.to_string(), "route \"r\": column 9: expected INTO");
        assert_eq!(e.column, Some(9));
    }

    #[test]
    fn display_multiline_and_whole() {
        let e = RouteError::at("r", "FROM /x\nWHERE ?", 14, "bad");
        assert_eq!(e.to_string(), "route \"r\": line 2, column 7: bad");
        let w = RouteError::whole("r", "t", "defined twice");
        assert_eq!(w.to_string(), "route \"r\": defined twice");
    }
}
