//! Bad routes: each error names the route, gives the exact 1-based column of the offending
//! token and says what was expected.

use edge_routes::{Route, RouteError};

fn err(text: &str) -> RouteError {
    match Route::parse("r", text) {
        Ok(r) => panic!("{text:?} should not parse, got {r:?}"),
        Err(e) => e,
    }
}

/// (route text, expected column, a piece of the message)
const CASES: &[(&str, usize, &str)] = &[
    ("", 1, "the route is empty"),
    ("INTO $upstream", 1, "expected FROM"),
    (
        "SELECT FROM /messages/* INTO $upstream",
        8,
        "expected * after SELECT",
    ),
    (
        "FROM INTO $upstream",
        6,
        "expected a source such as /messages/*",
    ),
    (
        "FROM /messages/ INTO $upstream",
        17,
        "expected a path segment",
    ),
    ("FROM /foo INTO $upstream", 6, "unknown source /foo"),
    (
        "FROM /messages/*/x INTO $upstream",
        6,
        "'*' may only end a source",
    ),
    (
        "FROM /messages/* $upstream",
        18,
        "expected INTO after the source, found \"$upstream\"",
    ),
    (
        "FROM /messages/* WHERE INTO $upstream",
        24,
        "expected a value, a property or a function call",
    ),
    (
        "FROM /messages/* WHERE a = 'b' c INTO $upstream",
        32,
        "expected INTO after the condition, found \"c\"",
    ),
    ("FROM /messages/* INTO", 22, "expected a sink after INTO"),
    (
        "FROM /messages/* INTO $downstream",
        23,
        "unknown sink \"$downstream\"",
    ),
    (
        "FROM /messages/* INTO Endpoint(\"/modules/A/inputs/i\")",
        23,
        "unknown sink function \"Endpoint\"",
    ),
    (
        "FROM /messages/* INTO BrokeredEndpoint(\"/modules/A/outputs/i\")",
        40,
        "BrokeredEndpoint needs an address of the form",
    ),
    (
        "FROM /messages/* INTO BrokeredEndpoint(\"/modules/A\")",
        40,
        "\"/modules/<module>/inputs/<input>\"",
    ),
    (
        "FROM /messages/* INTO BrokeredEndpoint(/modules/A/inputs/i)",
        40,
        "expected a quoted address",
    ),
    (
        "FROM /messages/* INTO BrokeredEndpoint(\"/modules/A/inputs/i\"",
        61,
        "expected ')' after the BrokeredEndpoint address",
    ),
    (
        "FROM /messages/* INTO $upstream extra",
        33,
        "unexpected \"extra\" after the sink",
    ),
    (
        "FROM /messages/* WHERE temp > 30 INTO $upstream",
        29,
        "invalid operands to '>': have string and number",
    ),
    (
        "FROM /messages/* WHERE foo(1) INTO $upstream",
        24,
        "unknown function \"foo\"",
    ),
    (
        "FROM /messages/* WHERE twin_change_includes(a) INTO $upstream",
        24,
        "not supported",
    ),
    (
        "FROM /messages/* WHERE upper('a', 'b') = 'A' INTO $upstream",
        24,
        "upper takes (string) but was given 2 arguments",
    ),
    (
        "FROM /messages/* WHERE substring('abc', 'x') = 'a' INTO $upstream",
        24,
        "argument 2 of substring",
    ),
    (
        "FROM /messages/* WHERE a = 'x INTO $upstream",
        28,
        "unterminated string",
    ),
    (
        "FROM /messages/* WHERE (a = 'b' INTO $upstream",
        33,
        "missing ')' to close the '(' at column 24",
    ),
    (
        "FROM /messages/* WHERE a = 'b') INTO $upstream",
        31,
        "expected INTO after the condition, found \")\"",
    ),
    (
        "FROM /messages/* WHERE a = @ INTO $upstream",
        28,
        "invalid symbol \"@\"",
    ),
    (
        "FROM /messages/* WHERE a[0] = 'x' INTO $upstream",
        24,
        "may only index a $body query",
    ),
    (
        "FROM /messages/* WHERE $body.a..b = 1 INTO $upstream",
        24,
        "invalid $body query",
    ),
    (
        "FROM /messages/* WHERE NOT a = 'b' INTO $upstream",
        24,
        "NOT needs a bool",
    ),
    (
        "FROM /messages/* WHERE a AND true INTO $upstream",
        26,
        "invalid operands to 'AND'",
    ),
    (
        "FROM /messages/* WHERE 'a' || 1 = 'a1' INTO $upstream",
        28,
        "invalid operands to '||'",
    ),
    (
        "FROM /messages/* WHERE undefined = $body.a INTO $upstream",
        34,
        "invalid operands to '='",
    ),
];

#[test]
fn bad_routes_report_exact_columns() {
    let mut failures = Vec::new();
    for (text, column, piece) in CASES {
        let e = err(text);
        let shown = e.to_string();
        if e.column != Some(*column) || !shown.contains(piece) || e.name != "r" || e.text != *text {
            failures.push(format!(
                "{text:?}: expected column {column} and {piece:?}, got {:?}: {shown}",
                e.column
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn display_names_route_column_and_grammar() {
    let e = Route::parse(
        "aggregatorToCloud",
        "FROM /messages/modules/AggregatorModule/* INT $upstream",
    )
    .expect_err("INT is not INTO");
    assert_eq!(
        e.to_string(),
        "route \"aggregatorToCloud\": column 43: expected INTO after the source, found \"INT\" — a route reads FROM <source> [WHERE <condition>] INTO <sink>"
    );
}

#[test]
fn multi_line_routes_report_line_and_column() {
    let e = err("FROM /messages/*\n  WHERE temp > 1\n  INTO $upstream");
    assert_eq!((e.line, e.column), (2, Some(14)));
    assert!(
        e.to_string()
            .starts_with("route \"r\": line 2, column 14: "),
        "{e}"
    );
}

#[test]
fn a_comment_opened_by_the_source_star_swallows_the_route_as_in_edgehub() {
    // `/*` of the source opens a comment that the `*/` inside the string closes; edgeHub's
    // lexer does the same, so the route reads `FROM /messages' INTO $upstream`.
    let e = err("FROM /messages/* WHERE a = '*/' INTO $upstream");
    assert_eq!(e.column, Some(31));
    // any later `*/` closes it, also a comment's; comments after other sources are fine
    assert!(Route::parse(
        "ok",
        "FROM /messages/* WHERE /* hot only */ a = 'hot' INTO $upstream"
    )
    .is_err());
    assert!(Route::parse(
        "ok",
        "FROM /messages/modules/A WHERE /* hot */ a = 'hot' INTO $upstream"
    )
    .is_ok());
}
