//! Property tests: (a) generated routes — random sources, sinks and well-typed condition
//! trees — printed to text parse back to the same tree; (b) arbitrary text never panics
//! the parser, and whatever parses evaluates without panicking.

use std::collections::BTreeMap;

use edge_routes::{
    BinaryOp, Expr, Literal, MessageSource, Route, RouteMessage, RouteTable, Sink, Source, UnaryOp,
};
use proptest::prelude::*;

const RESERVED: [&str; 11] = [
    "and",
    "or",
    "not",
    "from",
    "where",
    "into",
    "select",
    "true",
    "false",
    "null",
    "undefined",
];

/// Identifiers that lex as one ID token (not a keyword, not `e5`, which is a number).
fn ident() -> impl Strategy<Value = String> {
    "[a-df-zA-DF-Z_][a-zA-Z0-9_]{0,8}".prop_filter("not a keyword", |s| {
        !RESERVED.iter().any(|k| k.eq_ignore_ascii_case(s))
    })
}

fn name_case(name: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![Just(name.to_string()), Just(name.to_uppercase())]
}

fn call(name: &'static str, args: Vec<BoxedStrategy<Expr>>) -> BoxedStrategy<Expr> {
    (name_case(name), args)
        .prop_map(|(name, args)| Expr::Call { name, args })
        .boxed()
}

fn bin(op: BinaryOp, l: BoxedStrategy<Expr>, r: BoxedStrategy<Expr>) -> BoxedStrategy<Expr> {
    (l, r)
        .prop_map(move |(l, r)| Expr::Binary {
            op,
            left: Box::new(l),
            right: Box::new(r),
        })
        .boxed()
}

fn bin_any(
    ops: &'static [BinaryOp],
    l: BoxedStrategy<Expr>,
    r: BoxedStrategy<Expr>,
) -> BoxedStrategy<Expr> {
    (proptest::sample::select(ops), l, r)
        .prop_map(|(op, l, r)| Expr::Binary {
            op,
            left: Box::new(l),
            right: Box::new(r),
        })
        .boxed()
}

const ARITH: &[BinaryOp] = &[
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Mod,
];
const CMP: &[BinaryOp] = &[
    BinaryOp::Eq,
    BinaryOp::Ne,
    BinaryOp::NeAlt,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Gt,
    BinaryOp::Ge,
];

fn num_leaf() -> BoxedStrategy<Expr> {
    prop_oneof![
        (-1000i32..1000).prop_map(|n| Expr::Literal(Literal::Number(f64::from(n)))),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|n| Expr::Literal(Literal::Number(n))),
    ]
    .boxed()
}

fn str_leaf() -> BoxedStrategy<Expr> {
    prop_oneof![
        // any text except '*', which could close the `/*` of a source such as /messages/*
        "[^*]{0,8}".prop_map(|s| Expr::Literal(Literal::String(s))),
        ident().prop_map(Expr::Property),
        (ident(), any::<bool>()).prop_map(|(name, escaped)| Expr::SysProperty { name, escaped }),
    ]
    .boxed()
}

fn dyn_leaf() -> BoxedStrategy<Expr> {
    let segment = (
        "[a-zA-Z][a-zA-Z0-9_]{0,5}",
        proptest::option::of(0usize..20),
    )
        .prop_map(|(f, i)| match i {
            Some(i) => format!("{f}[{i}]"),
            None => f,
        });
    (prop::collection::vec(segment, 1..4), any::<bool>())
        .prop_map(|(segs, escaped)| Expr::SysProperty {
            name: format!("body.{}", segs.join(".")),
            escaped,
        })
        .boxed()
}

fn bool_leaf() -> BoxedStrategy<Expr> {
    any::<bool>()
        .prop_map(|b| Expr::Literal(Literal::Bool(b)))
        .boxed()
}

fn any_leaf() -> BoxedStrategy<Expr> {
    prop_oneof![
        num_leaf(),
        str_leaf(),
        bool_leaf(),
        dyn_leaf(),
        Just(Expr::Literal(Literal::Null)),
        Just(Expr::Literal(Literal::Undefined)),
    ]
    .boxed()
}

fn num(depth: u32) -> BoxedStrategy<Expr> {
    if depth == 0 {
        return num_leaf();
    }
    let n = || num(depth - 1);
    let s = || string(depth - 1);
    prop_oneof![
        3 => num_leaf(),
        2 => bin_any(ARITH, n(), n()),
        1 => n().prop_map(|e| Expr::Unary { op: UnaryOp::Neg, expr: Box::new(e) }),
        1 => (proptest::sample::select(&["abs", "exp", "square", "ceiling", "floor", "sign", "sqrt"][..]), n())
            .prop_map(|(f, a)| Expr::Call { name: f.to_string(), args: vec![a] }),
        1 => call("power", vec![n(), n()]),
        1 => call("as_number", vec![s()]),
        1 => call("length", vec![s()]),
        1 => call("index_of", vec![s(), s()]),
    ]
    .boxed()
}

fn string(depth: u32) -> BoxedStrategy<Expr> {
    if depth == 0 {
        return str_leaf();
    }
    let n = || num(depth - 1);
    let s = || string(depth - 1);
    prop_oneof![
        3 => str_leaf(),
        1 => bin(BinaryOp::Concat, s(), s()),
        1 => bin(BinaryOp::Coalesce, s(), s()),
        1 => call("lower", vec![s()]),
        1 => call("upper", vec![s()]),
        1 => call("concat", vec![s(), s(), s()]),
        1 => call("substring", vec![s(), n()]),
        1 => call("substring", vec![s(), n(), n()]),
    ]
    .boxed()
}

fn dynamic(depth: u32) -> BoxedStrategy<Expr> {
    if depth == 0 {
        return dyn_leaf();
    }
    prop_oneof![
        3 => dyn_leaf(),
        1 => bin_any(ARITH, dynamic(depth - 1), num(depth - 1)),
    ]
    .boxed()
}

fn boolean(depth: u32) -> BoxedStrategy<Expr> {
    if depth == 0 {
        return bool_leaf();
    }
    let b = || boolean(depth - 1);
    let n = || num(depth - 1);
    let s = || string(depth - 1);
    let d = || dynamic(depth - 1);
    prop_oneof![
        2 => bool_leaf(),
        2 => bin_any(CMP, n(), n()),
        2 => bin_any(CMP, s(), s()),
        1 => bin_any(CMP, d(), prop_oneof![n(), s(), d()].boxed()),
        1 => bin_any(CMP, b(), b()),
        2 => bin_any(&[BinaryOp::And, BinaryOp::Or], b(), b()),
        1 => bin(BinaryOp::Coalesce, b(), b()),
        1 => b().prop_map(|e| Expr::Unary { op: UnaryOp::Not, expr: Box::new(e) }),
        1 => (proptest::sample::select(&["is_bool", "is_defined", "is_null", "is_number", "is_string"][..]),
              prop_oneof![any_leaf(), n(), s()])
            .prop_map(|(f, a)| Expr::Call { name: f.to_string(), args: vec![a] }),
        1 => (proptest::sample::select(&["starts_with", "ends_with", "contains"][..]), s(), s())
            .prop_map(|(f, a, c)| Expr::Call { name: f.to_uppercase(), args: vec![a, c] }),
    ]
    .boxed()
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        Just(Source::All),
        Just(Source::TwinChangeNotifications),
        Just(Source::Messages),
        Just(Source::AllModules),
        ident().prop_map(|module| Source::Module { module }),
        ident().prop_map(|module| Source::ModuleOutputs { module }),
        (ident(), ident()).prop_map(|(module, output)| Source::ModuleOutput { module, output }),
    ]
}

fn sink() -> impl Strategy<Value = Sink> {
    prop_oneof![
        Just(Sink::Upstream),
        (ident(), ident()).prop_map(|(module, input)| Sink::ModuleInput { module, input }),
    ]
}

fn message_parts(
) -> impl Strategy<Value = (BTreeMap<String, String>, BTreeMap<String, String>, Vec<u8>)> {
    let props = prop::collection::btree_map(ident(), "[0-9a-z.]{0,4}", 0..4);
    let sys = prop::collection::btree_map(
        proptest::sample::select(&["$.ct", "$.ce", "$.mid", "$.cmid", "$.cdid", "$.on"][..])
            .prop_map(str::to_string),
        prop_oneof![
            Just("application/json".to_string()),
            Just("utf-8".to_string()),
            "[a-z]{0,3}"
        ],
        0..6,
    );
    let body = prop_oneof![
        Just(br#"{"a":{"b":[1,"x",true,null]},"c":2.5}"#.to_vec()),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    (props, sys, body)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn printed_routes_parse_back_to_the_same_tree(
        src in source(),
        cond in proptest::option::of(boolean(3)),
        snk in sink(),
        (props, sys, body) in message_parts(),
    ) {
        let text = match &cond {
            Some(c) => format!("FROM {src} WHERE {c} INTO {snk}"),
            None => format!("FROM {src} INTO {snk}"),
        };
        let route = Route::parse("gen", &text).map_err(|e| TestCaseError::fail(format!("{text}\n{e}")))?;
        prop_assert_eq!(&route.source, &src);
        prop_assert_eq!(&route.sink, &snk);
        prop_assert_eq!(route.condition.as_ref().map(|c| c.expr().clone()), cond, "{}", text);
        // printing the parsed route gives the same route again
        let again = Route::parse("gen", &route.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&again, &route);
        // and it evaluates without panicking
        let msg = RouteMessage {
            source: MessageSource::Module { module: "m", output: "o" },
            system_properties: &sys,
            properties: &props,
            body: &body,
        };
        let _ = route.matches(&msg);
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = Route::parse("fuzz", &text);
        let _ = edge_routes::Condition::parse("fuzz", &text);
    }

    #[test]
    fn route_like_text_never_panics(
        text in "(FROM |WHERE |INTO |SELECT |\\* |/|/\\*|\\*/|\\$body\\.a|\\$body\\.a\\[0\\]|\\$upstream|\\$ct|BrokeredEndpoint|\\(|\\)|'|\"|\\\\|[a-z]{1,3}|[0-9]{1,3}|0x1|1e5|\\.5|=|<|>|<=|!=|<>|\\?\\?|\\|\\||AND |OR |NOT |-|\\+|%|,|\\{|\\}|\\[|\\]|\\.| |\n|true|null|undefined|as_number|substring|concat|is_defined)*",
        (props, sys, body) in message_parts(),
    ) {
        let full = format!("FROM /messages/* WHERE {text} INTO $upstream");
        for candidate in [text.as_str(), full.as_str()] {
            if let Ok(route) = Route::parse("fuzz", candidate) {
                let msg = RouteMessage {
                    source: MessageSource::Device,
                    system_properties: &sys,
                    properties: &props,
                    body: &body,
                };
                let _ = route.matches(&msg);
                let table = RouteTable::new(vec![route]).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let _ = table.evaluate(&msg);
            }
            if let Err(e) = Route::parse("fuzz", candidate) {
                // every error has a column within the text (or just past its end)
                let col = e.column.unwrap_or(1);
                prop_assert!(col >= 1);
                prop_assert!(e.line >= 1 && e.line <= candidate.lines().count().max(1) + 1);
            }
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep_parens = format!(
        "FROM /* WHERE {}true{} INTO $upstream",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    let deep_not = format!("FROM /* WHERE {}true INTO $upstream", "NOT ".repeat(5000));
    let deep_calls = format!(
        "FROM /* WHERE {}1{} = 1 INTO $upstream",
        "abs(".repeat(5000),
        ")".repeat(5000)
    );
    let long_chain = format!(
        "FROM /* WHERE {}true INTO $upstream",
        "true AND ".repeat(5000)
    );
    for text in [deep_parens, deep_not, deep_calls, long_chain] {
        let e = Route::parse("deep", &text).expect_err("too deep");
        assert!(e.message.contains("nested more than"), "{e}");
    }
    // moderately deep conditions are fine
    let ok = format!(
        "FROM /* WHERE {}true{} INTO $upstream",
        "(".repeat(100),
        ")".repeat(100)
    );
    assert!(Route::parse("ok", &ok).is_ok());
}
