//! Condition semantics, case by case. The first two tables are edgeHub's own
//! `ConditionCompilerTest` cases (those that do not need a C# null string as a property
//! value), run against the same message: the results must be the same as edgeHub's.

use std::collections::BTreeMap;

use crate::eval::{eval, Ctx, Val};
use crate::{Condition, MessageSource, RouteMessage};

const T: Option<bool> = Some(true);
const F: Option<bool> = Some(false);
const U: Option<bool> = None;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The message of edgeHub's ConditionCompilerTest.
fn edgehub_props() -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    (
        map(&[
            ("key1", "value1"),
            ("key2", "3"),
            ("key3", "VALUE3"),
            ("$sys4", "value4"),
        ]),
        map(&[
            ("sys1", "sysvalue1"),
            ("sys2", "4"),
            ("sys3", "SYSVALUE3"),
            ("sys4", "sysvalue4"),
        ]),
    )
}

/// The condition's value converted to edgeHub's Bool: null is false, non-bools undefined.
fn outcome_with(cond: &str, msg: &RouteMessage<'_>) -> Option<bool> {
    let c = match Condition::parse("t", cond) {
        Ok(c) => c,
        Err(e) => panic!("{cond:?} should compile: {e}"),
    };
    let v = eval(&c.node, &Ctx::new(msg));
    // matches() must agree with the value
    assert_eq!(c.matches(msg), v == Val::Bool(true), "{cond}");
    match v {
        Val::Bool(b) => Some(b),
        Val::Null => Some(false),
        _ => None,
    }
}

fn outcome(cond: &str) -> Option<bool> {
    let (props, sys) = edgehub_props();
    let msg = RouteMessage {
        source: MessageSource::Device,
        system_properties: &sys,
        properties: &props,
        body: b"",
    };
    outcome_with(cond, &msg)
}

fn check_all(cases: &[(&str, Option<bool>)]) {
    let mut failures = Vec::new();
    for (cond, expected) in cases {
        let got = outcome(cond);
        if got != *expected {
            failures.push(format!("{cond:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn edgehub_success_cases_literals_logic_arithmetic() {
    check_all(&[
        ("3", U),
        ("\"a string\"", U),
        ("'a string'", U),
        ("3 = 3", T),
        ("3 = 4", F),
        ("\"3\" = \"3\"", T),
        ("'3' = '4'", F),
        ("true = true", T),
        ("true = false", F),
        ("false = false", T),
        ("key2 = \"3\"", T),
        ("key2 = '3'", T),
        ("as_number(key2) = 3", T),
        ("as_number(key2) = 4", F),
        ("is_defined(none = \"4\")", F),
        ("as_number(none) = 3", U),
        ("$sys2 = \"4\"", T),
        ("as_number($sys2) = 4", T),
        ("is_defined($none)", F),
        ("as_number($none) = 3", U),
        ("3 != 3", F),
        ("3 != 4", T),
        ("'3' != '4'", T),
        ("true != false", T),
        ("key2 != '3'", F),
        ("none != \"4\"", U),
        ("3 <> 3", F),
        ("3 <> 4", T),
        ("'3' <> '3'", F),
        ("key2 <> '3'", F),
        ("none <> \"4\"", U),
        ("true", T),
        ("false", F),
        ("not true", F),
        ("not false", T),
        ("not (true and false)", T),
        ("true AND true", T),
        ("true AND not true", F),
        ("true and false", F),
        ("false and false", F),
        ("true OR true", T),
        ("true or false", T),
        ("false or true", T),
        ("false or false", F),
        ("undefined", U),
        ("undefined or false", U),
        ("undefined or true", T),
        ("true or undefined", T),
        ("false or undefined", U),
        ("undefined or undefined", U),
        ("true and undefined", U),
        ("false and undefined", F),
        ("undefined and false", F),
        ("undefined and undefined", U),
        ("undefined < undefined", U),
        ("true or none = 'true'", T),
        ("false or none = 'true'", U),
        ("none = 'true' or true", T),
        ("none = 'true' or false", U),
        ("true and none = 'true'", U),
        ("false and none = 'true'", F),
        ("none = 'true' and false", F),
        ("not (none = 'true')", U),
        ("undefined ?? undefined", U),
        ("(key1 ?? \"hello\") = \"value1\"", T),
        ("(none ?? \"hello\") = \"hello\"", T),
        ("(none ?? none ?? \"hello\") = \"hello\"", T),
        ("(as_number(key2) ?? 12.34) = 3", T),
        ("(as_number(key1) ?? 12.34) = 12.34", T),
        ("(3 % 0 ?? 12.34) = 12.34", T),
        ("(none ?? none) = \"value\"", U),
        ("null and null", F),
        ("(null and null) = null", T),
        ("(null and false) = null", T),
        ("(null and true) = null", T),
        ("null or true", T),
        ("null or false", F),
        ("(null or null) = null", T),
        ("null", F),
        ("not null", T),
        ("3 + 4 = 7", T),
        ("(3 + as_number(key2)) = 6", T),
        ("is_defined(3 + as_number(none))", F),
        ("is_defined(3 + as_number(key1))", F),
        ("3 - 4 = -1", T),
        ("(3 - as_number(key2)) = 0", T),
        ("3 * 4 = 12", T),
        ("(3 * as_number(key2)) = 9", T),
        ("3 / 4 = 0.75", T),
        ("(3 / as_number(key2)) = 1", T),
        ("is_defined(3 / as_number(none))", F),
        ("4 % 3 = 1", T),
        ("(3 % as_number(key2)) = 0", T),
        ("is_defined(3 % 0)", F),
        ("-1 < 0", T),
        ("-(3 + 4) = -7", T),
        ("is_defined(-undefined)", F),
        ("4 < 7", T),
        ("7 < 7", F),
        ("3 + 4 < 7", F),
        ("3 < as_number(none)", U),
        ("'a' < 'b'", T),
        ("'b' < 'a'", F),
        ("'a' < none", U),
        ("7 <= 7", T),
        ("8 <= 7", F),
        ("3 + 4 <= 7", T),
        ("'a' <= 'a'", T),
        ("8 > 7", T),
        ("7 > 7", F),
        ("'b' > 'a'", T),
        ("'a' > none", U),
        ("7 >= 7", T),
        ("4 >= 7", F),
        ("'a' >= 'b'", F),
        ("3 >= as_number(none)", U),
        ("key1 = \"value1\"", T),
        ("KEY1 = \"value1\"", T),
        ("key1 = \"value1\" and key1 = \"value1\"", T),
        ("key1 = \"value2\" or key1 = \"value1\"", T),
        ("key1 = \"value2\"", F),
        ("none = \"value1\"", U),
        ("$sys4 = \"value4\"", T),
        ("{$sys4} = \"sysvalue4\"", T),
        ("$sys1 = \"sysvalue1\"", T),
        ("{$sys1} = \"sysvalue1\"", T),
        ("{ $sys1 } = \"sysvalue1\"", T),
    ]);
}

#[test]
fn edgehub_success_cases_functions() {
    check_all(&[
        ("as_number(\"3\") = 3", T),
        ("AS_NUMBER(\"3\") = 3", T),
        ("AS_NUMBER('10e10') = 10e10", T),
        ("AS_NUMBER('10e1000') = 1/0", U),
        ("AS_NUMBER('10000000000000000000000000') = 1e25", T),
        ("as_number(key1) = 3", U),
        ("as_number(key3) = 3", U),
        ("as_number(key2) * 3 = 9", T),
        ("as_number(none) * 3 = 9", U),
        ("as_number(as_number(4)) * 3 = 12", T),
        ("is_bool(12.34)", F),
        ("is_bool('not a number')", F),
        ("is_bool(true)", T),
        ("IS_BOOL(true)", T),
        ("is_bool(false)", T),
        ("is_bool(none)", F),
        ("is_bool(key1)", F),
        ("is_defined(undefined)", F),
        ("IS_DEFINED(undefined)", F),
        ("is_defined(key1)", T),
        ("is_defined(key4)", F),
        ("is_defined(3 * as_number(key4))", F),
        ("is_defined(undefined and true)", F),
        ("is_defined(as_number(\"3\"))", T),
        ("is_defined(as_number(\"apple\"))", F),
        ("is_defined(null)", T),
        ("is_defined(10e1000)", F),
        ("is_null(12.34)", F),
        ("is_null('not a number')", F),
        ("is_null(true)", F),
        ("is_null(3 / 0)", F),
        ("is_null(as_number(key2))", F),
        ("is_null(as_number(key1))", F),
        ("is_null(null)", T),
        ("IS_NULL(null)", T),
        ("is_null(none)", F),
        ("is_number(12.34)", T),
        ("is_number('not a number')", F),
        ("is_number(true)", F),
        ("is_number(3 / 0)", F),
        ("is_number(as_number(key2))", T),
        ("is_number(as_number(key1))", F),
        ("is_string(12.34)", F),
        ("is_string('not a number')", T),
        ("is_string(true)", F),
        ("is_string(none)", F),
        ("is_string(key1)", T),
        ("is_string('a' || 'b')", T),
        ("concat('a', 'b', 'c', 'd') = 'abcd'", T),
        ("CONCAT('a', 'b', 'c', 'd') = 'abcd'", T),
        ("concat('a', 'b') = concat('a', 'b')", T),
        ("concat('a', key1, 'd') = 'avalue1d'", T),
        ("is_defined(concat('a', none, 'd'))", F),
        ("'a' || 'b' || 'c' || 'd' = 'abcd'", T),
        ("'a' || key1 || 'd' = 'avalue1d'", T),
        ("is_defined('a' || none || 'd')", F),
        ("length('HELLO') = 5", T),
        ("LENGTH('') = 0", T),
        ("length(key3) = 6", T),
        ("is_defined(length(none))", F),
        ("lower('HELLO') = 'hello'", T),
        ("lower(key3) = 'value3'", T),
        ("is_defined(lower(none))", F),
        ("upper('hello') = 'HELLO'", T),
        ("upper(key1) = 'VALUE1'", T),
        ("is_defined(upper(none))", F),
        ("substring('abc', 1) = 'bc'", T),
        ("substring('abc', 2) = 'c'", T),
        ("SUBSTRING('abc', 3) = 'c'", F),
        ("SUBSTRING('abc', 4) = 'c'", U),
        ("substring(key1, 1) = 'alue1'", T),
        ("substring('abc', -1) = ''", U),
        ("substring('abc', 1 % 0) = ''", U),
        ("substring(none, 1) = 'a'", U),
        ("substring('abc', 1, 1) = 'b'", T),
        ("substring('abc', 1, 0) = ''", T),
        ("SUBSTRING(key1, 1, 1) = 'a'", T),
        ("substring('abc', -1, 0) = ''", U),
        ("substring('abc', 1, -2) = ''", U),
        ("substring('abc', 1 % 0, 1) = ''", U),
        ("substring('abc', 1, 1 % 0) = ''", U),
        ("substring(none, 1, 1) = 'a'", U),
        ("substring('hello', 0, 5) = 'hello'", T),
        ("substring('start', 0, 4) = 'star'", T),
        ("substring('hello', 1, 4) = 'ello'", T),
        ("substring('hello', 4, 1) = 'o'", T),
        ("substring('hello', 4, 0) = ''", T),
        ("index_of('abcdef', 'cd') = 2", T),
        ("index_of('abc', 'xz') = -1", T),
        ("INDEX_OF(key1, 'val') = 0", T),
        ("index_of('lue1value1', key1) = 4", T),
        ("index_of('abc', key1) = -1", T),
        ("index_of(none, '1') = 0", U),
        ("starts_with('abc', 'ab')", T),
        ("starts_with('abc', 'xz')", F),
        ("STARTS_WITH(key1, 'val')", T),
        ("starts_with('value1value1', key1)", T),
        ("starts_with(none, '1')", U),
        ("ends_with('abc', 'bc')", T),
        ("ends_with('abc', 'xz')", F),
        ("ENDS_WITH(key1, 'e1')", T),
        ("ends_with(none, '1')", U),
        ("contains('abc', 'ab')", T),
        ("contains('abc', 'xz')", F),
        ("CONTAINS(key1, 'val')", T),
        ("contains('value1value1', key1)", T),
        ("contains(none, '1')", U),
        ("abs(-12) = 12", T),
        ("abs(12) = 12", T),
        ("ABS(as_number(key2)) = 3", T),
        ("is_defined(abs(as_number(key1)))", F),
        ("is_defined(abs(3 / 0))", T),
        ("is_defined(abs(3 % 0))", F),
        ("exp(0) = 1", T),
        ("abs(exp(1) - 2.718281) < 1e-6", T),
        ("abs(EXP(as_number(key2)) - 20.085536) < 1e-6", T),
        ("exp(4000) = 3/0", T),
        ("is_defined(exp(3 % 0))", F),
        ("power(2, 3) = 8", T),
        ("POWER(3, 2) = 9", T),
        ("POWER(10, 4000) = 3/0", T),
        ("power(as_number(key2), as_number(key2)) = 27", T),
        ("is_defined(power(3 / 0, 2))", T),
        ("is_defined(power(2, 3 % 0))", F),
        ("square(2) = 4", T),
        ("SQUARE(3) = 9", T),
        ("is_defined(square(3 % 0))", F),
        ("ceiling(2) = 2", T),
        ("ceiling(2.1) = 3", T),
        ("ceiling(-2.1) = -2", T),
        ("is_defined(ceiling(3 / 0))", T),
        ("floor(2.1) = 2", T),
        ("floor(-2.1) = -3", T),
        ("FLOOR(-2) = -2", T),
        ("sign(0) = 0", T),
        ("sign(2.1) = 1", T),
        ("sign(-2.1) = -1", T),
        ("sign(3 / 0) = 1", T),
        ("sign(-3 / 0) = -1", T),
        ("is_defined(sign(3 % 0))", F),
        ("sqrt(4) = 2", T),
        ("SQRT(-4) = -2", U),
        ("abs(sqrt(as_number(key2)) - 1.732050) < 1e-6", T),
        ("is_defined(sqrt(3 / 0))", T),
    ]);
}

#[test]
fn edgehub_compilation_failures() {
    let cases = [
        "is_defined(3 + none)",
        "is_defined(true + 3)",
        "is_defined(3 + undefined)",
        "is_defined('a' + 'b')",
        "is_defined(undefined - 3)",
        "is_defined(3 * true)",
        "is_defined('a' / 'b')",
        "is_defined(undefined % undefined)",
        "is_defined(3 = none)",
        "is_defined(3 != none)",
        "is_defined(3 <> none)",
        "is_defined(3 > none)",
        "is_defined(3 <= none.key1)",
        "key1 ?? \"hello\" = \"value1\"",
        "(key1 ?? 12.34)",
        "(12.34 ?? key1)",
        "(as_number(key2) ?? key1)",
        "(key1 ?? null)",
        "(null && key1)",
        "(key1 ?? true)",
        "(true && key1)",
        "concat() = 'avalue1d'",
        "concat('a') = 'avalue1d'",
        "concat(3) = 'avalue1d'",
        "concat('a', null) = 'avalue1d'",
        "concat('a', undefined) = 'avalue1d'",
        "concat('a', true) = 'avalue1d'",
        "'a' || null = 'avalue1d'",
        "'a' || undefined = 'avalue1d'",
        "'a' || true = 'avalue1d'",
        "length(12.34) = 'hello'",
        "length(null) = 'hello'",
        "length(undefined) = 'value1'",
        "lower(true) = 'value1'",
        "upper(false) = 'value1'",
        "substring() = 'hello'",
        "substring('hello') = 'hello'",
        "substring('hello', 'a') = 'hello'",
        "substring('hello', 'a', 'b') = 'hello'",
        "substring(12.34) = 'hello'",
        "index_of()",
        "index_of('hello')",
        "index_of('hello', 'a', 'b')",
        "index_of('hello', 12.34)",
        "index_of(null, null)",
        "starts_with('hello', undefined)",
        "ends_with(true, 'hello')",
        "contains('hello', true)",
        "is_defined(abs(null))",
        "is_defined(abs(true))",
        "is_defined(abs(key1))",
        "is_defined(abs(3, 4))",
        "is_defined(exp(undefined))",
        "is_defined(power(null, 2))",
        "is_defined(power(2, key1))",
        "is_defined(power(2, 3, 4))",
        "is_defined(square(3, 3))",
        "is_defined(ceiling(false))",
        "is_defined(floor(key1))",
        "is_defined(sign(undefined))",
        "is_defined(sqrt(true))",
        "test == true",
        "true == test",
        "none = \"",
        "none and true",
        "undefined and \"hello\"",
        "none or true",
        "- (key1)",
        "is_defined(not key1)",
    ];
    for c in cases {
        assert!(
            Condition::parse("t", c).is_err(),
            "{c:?} must not compile, as in edgeHub"
        );
    }
}

/// A message with a JSON body and the given content type / encoding.
fn body_outcome(cond: &str, ct: Option<&str>, ce: Option<&str>, body: &[u8]) -> Option<bool> {
    let mut sys = BTreeMap::new();
    if let Some(ct) = ct {
        sys.insert("$.ct".to_string(), ct.to_string());
    }
    if let Some(ce) = ce {
        sys.insert("$.ce".to_string(), ce.to_string());
    }
    let props = map(&[
        ("processingPath", "hot"),
        ("$body.Weather.Temperature", "app"),
    ]);
    let msg = RouteMessage {
        source: MessageSource::Device,
        system_properties: &sys,
        properties: &props,
        body,
    };
    outcome_with(cond, &msg)
}

const WEATHER: &str = r#"{"Weather":{"Temperature":50,"Time":"2017-03-09T00:00:00.000Z","PrevTemperatures":[20,30,40],"IsEnabled":true,"Nothing":null,"Location":{"Street":"One Microsoft Way","City":"Redmond","State":"WA"},"HistoricalData":[{"Month":"Feb","Temperature":40},{"Month":"Jan","Temperature":30}]}}"#;

fn json(cond: &str) -> Option<bool> {
    body_outcome(
        cond,
        Some("application/json"),
        Some("utf-8"),
        WEATHER.as_bytes(),
    )
}

#[test]
fn body_queries_on_json() {
    assert_eq!(json("{$body.Weather.Temperature} = 50"), T);
    assert_eq!(json("{$body.Weather.Temperature} > 49.5"), T);
    assert_eq!(json("$body.Weather.HistoricalData[0].Month = 'Feb'"), T);
    assert_eq!(json("$body.Weather.PrevTemperatures[2] = 40"), T);
    assert_eq!(json("$body.Weather.IsEnabled"), T);
    assert_eq!(json("NOT $body.Weather.IsEnabled"), F);
    assert_eq!(json("length($body.Weather.Location.State) = 2"), T);
    assert_eq!(
        json("$body.Weather.Location.City = 'Redmond' AND processingPath = 'hot'"),
        T
    );
    // property names are case-sensitive; a path to nothing is null, not undefined
    assert_eq!(json("is_defined($body.weather.location.city)"), T);
    assert_eq!(json("is_null($body.weather.location.city)"), T);
    assert_eq!(json("$body.weather.location.city = null"), T);
    assert_eq!(json("is_null($body.Weather.Nothing)"), T);
    assert_eq!(json("is_null($body.Weather.Temperature)"), F);
    assert_eq!(json("$body.Weather.PrevTemperatures[7] = null"), T);
    // objects, arrays and ISO dates are undefined
    assert_eq!(json("is_defined($body.Weather.Location)"), F);
    assert_eq!(json("is_defined($body.Weather.PrevTemperatures)"), F);
    assert_eq!(json("is_defined($body.Weather.Time)"), F);
    assert_eq!(json("is_null($body.Weather.Location)"), U);
    // a value of another kind compares by kind order: bool < number < string < null
    assert_eq!(json("{$body.Weather.Temperature} = '50'"), F);
    assert_eq!(json("{$body.Weather.Temperature} < '50'"), T);
    assert_eq!(json("$body.Weather.IsEnabled < 1"), T);
    // arithmetic and functions on body values
    assert_eq!(json("{$body.Weather.Temperature} * 2 = 100"), T);
    assert_eq!(json("{$body.Weather.Temperature} % 7 = 1"), T);
    assert_eq!(json("-{$body.Weather.Temperature} = -50"), T);
    assert_eq!(json("abs({$body.Weather.Temperature} - 60) = 10"), T);
    assert_eq!(json("is_defined($body.Weather.Location.City + 1)"), F);
    assert_eq!(json("is_number({$body.Weather.Temperature})"), T);
    assert_eq!(json("is_string($body.Weather.Location.City)"), T);
    assert_eq!(json("is_bool($body.Weather.IsEnabled)"), T);
    assert_eq!(json("is_bool($body.Weather.Location.City)"), F);
    assert_eq!(
        json("upper($body.Weather.Location.State) || '!' = 'WA!'"),
        T
    );
    assert_eq!(json("($body.Weather.Nope ?? 'x') = null"), T);
    assert_eq!(json("(undefined-body ?? 'x') = 'x'"), T);
    // AND/OR with body values: both must be bools, otherwise undefined
    assert_eq!(json("$body.Weather.IsEnabled AND true"), T);
    assert_eq!(json("true AND $body.Weather.IsEnabled"), T);
    assert_eq!(json("$body.Weather.Nothing AND false"), U);
    assert_eq!(json("$body.Weather.Nothing OR true"), U);
}

#[test]
fn body_app_property_precedence() {
    // `$body.x` is the application property `$body.x` if there is one...
    assert_eq!(json("$body.Weather.Temperature = 'app'"), T);
    // ...`{$body.x}` is always the body
    assert_eq!(json("{$body.Weather.Temperature} = 50"), T);
}

#[test]
fn body_needs_json_content_type_and_utf_encoding() {
    let q = "$body.a = 1";
    let b = br#"{"a":1}"#;
    assert_eq!(
        body_outcome(q, Some("application/json"), Some("utf-8"), b),
        T
    );
    assert_eq!(
        body_outcome(q, Some("APPLICATION/JSON"), Some("UTF-8"), b),
        T
    );
    assert_eq!(
        body_outcome(q, Some("application/json"), Some("Utf-8"), b),
        T
    );
    let utf16: Vec<u8> = r#"{"a":1}"#.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    assert_eq!(
        body_outcome(q, Some("application/json"), Some("utf-16"), &utf16),
        T
    );
    let utf32: Vec<u8> = r#"{"a":1}"#.chars().flat_map(|c| (c as u32).to_le_bytes()).collect();
    assert_eq!(
        body_outcome(q, Some("application/json"), Some("UTF-32"), &utf32),
        T
    );
    // utf-8 bytes declared utf-16 do not parse
    assert_eq!(
        body_outcome(q, Some("application/json"), Some("utf-16"), b),
        U
    );
    assert_eq!(
        body_outcome(q, Some("application/json"), Some("ascii"), b),
        U
    );
    assert_eq!(body_outcome(q, Some("application/json"), None, b), U);
    assert_eq!(body_outcome(q, Some("text/plain"), Some("utf-8"), b), U);
    assert_eq!(
        body_outcome(q, Some("application/json; charset=utf-8"), Some("utf-8"), b),
        U
    );
    assert_eq!(body_outcome(q, None, Some("utf-8"), b), U);
    assert_eq!(
        body_outcome(q, Some("application/json"), Some("utf-8"), b"not json"),
        U
    );
    assert_eq!(
        body_outcome(q, Some("application/json"), Some("utf-8"), b"[1,2]"),
        U
    );
    assert_eq!(body_outcome("is_defined($body.a)", None, None, b), F);
}

#[test]
fn bad_body_paths_do_not_compile() {
    for c in [
        "$body. = 1",
        "$body.a..b = 1",
        "$body.a[x] = 1",
        "$body.a[1 = 1",
        "$body.0 = 1",
    ] {
        assert!(Condition::parse("t", c).is_err(), "{c}");
    }
}

#[test]
fn system_properties_map_to_wire_keys() {
    let sys = map(&[
        ("$.ct", "application/json"),
        ("$.ce", "utf-8"),
        ("$.mid", "m1"),
        ("$.cid", "c1"),
        ("$.cdid", "dev1"),
        ("$.cmid", "ModA"),
        ("$.on", "out1"),
        ("$.uid", "u1"),
        ("$.ctime", "2020"),
        ("enqueuedTime", "now"),
    ]);
    let props = map(&[("$messageId", "shadow")]);
    let msg = RouteMessage {
        source: MessageSource::Module {
            module: "ModA",
            output: "out1",
        },
        system_properties: &sys,
        properties: &props,
        body: b"{}",
    };
    for (cond, expected) in [
        ("$contentType = 'application/json'", T),
        ("$CONTENTTYPE = 'application/json'", T),
        ("$contentEncoding = 'utf-8'", T),
        ("$correlationId = 'c1'", T),
        ("$connectionDeviceId = 'dev1'", T),
        ("$connectionModuleId = 'ModA'", T),
        ("{$connectionModuleId} = 'ModA'", T),
        ("$outputName = 'out1'", T),
        ("$userId = 'u1'", T),
        ("$creationTime = '2020'", T),
        ("$enqueuedTime = 'now'", T),
        // an application property named `$messageId` shadows the system property...
        ("$messageId = 'shadow'", T),
        // ...but not in the escaped form
        ("{$messageId} = 'm1'", T),
        ("is_defined($to)", F),
        ("NOT is_defined($connectionModuleId)", F),
    ] {
        assert_eq!(outcome_with(cond, &msg), expected, "{cond}");
    }
}

#[test]
fn precedence_and_associativity() {
    // NOT binds tighter than comparison: NOT 'a' = 'a' would be NOT applied to a string
    assert!(Condition::parse("t", "NOT key1 = 'x'").is_err());
    assert_eq!(outcome("NOT (key1 = 'x')"), T);
    assert_eq!(outcome("2 + 3 * 4 = 14"), T);
    assert_eq!(outcome("(2 + 3) * 4 = 20"), T);
    assert_eq!(outcome("10 - 4 - 3 = 3"), T);
    assert_eq!(outcome("24 / 4 / 2 = 3"), T);
    assert_eq!(outcome("true OR false AND false"), T);
    assert_eq!(outcome("(true OR false) AND false"), F);
    assert_eq!(outcome("-2 * 3 = -6"), T);
    assert_eq!(outcome("- 2 * 3 = -6"), T);
    assert_eq!(outcome("0x10 = 16"), T);
    assert_eq!(outcome("0xFFFFFFFFFFFFFFFF = -1"), T);
    assert_eq!(outcome("1.5e1 = 15"), T);
    assert_eq!(outcome(".5 = 0.5"), T);
    assert_eq!(outcome("'it''s' = 'x'"), U); // 'it''s' lexes as one identifier-ish token run
}

#[test]
fn literals_and_escapes() {
    assert_eq!(outcome(r#"'a\'b' = "a'b""#), T);
    assert_eq!(outcome(r#""\u0041" = 'A'"#), T);
    assert_eq!(outcome(r"'\\' = '\\'"), T);
    assert_eq!(outcome("'é' < 'z'"), F);
    assert_eq!(outcome("null = null"), T);
    assert_eq!(outcome("null <> null"), F);
    assert_eq!(outcome("null < null"), F);
    assert_eq!(outcome("null >= null"), T);
    assert_eq!(outcome("true > false"), T);
    assert_eq!(outcome("is_defined(1e400)"), F);
    // lower-case keywords only for literals: TRUE is a property (undefined here)
    assert_eq!(outcome("is_defined(TRUE)"), F);
    assert_eq!(outcome("/* comment */ true /* another */"), T);
}

#[test]
fn undefined_propagates() {
    assert_eq!(outcome("is_defined(as_number(none) + 1)"), F);
    // `-as_number` is one identifier, so this calls an unknown function...
    assert!(Condition::parse("t", "is_defined(-as_number(none))").is_err());
    assert_eq!(outcome("is_defined(- as_number(none))"), F); // ...with a space it negates
    assert_eq!(outcome("is_defined(upper(none) || 'x')"), F);
    assert_eq!(outcome("is_defined(length(none) * 2)"), F);
    assert_eq!(outcome("is_defined(none = none)"), F);
    assert_eq!(outcome("is_defined(none < 'a')"), F);
    assert_eq!(outcome("is_defined(NOT (none = 'a'))"), F);
    assert_eq!(outcome("is_bool(none = 'x')"), U);
    assert_eq!(outcome("is_bool(key1 = 'x')"), T);
}

#[test]
fn unicode_strings_use_utf16_units_like_dotnet() {
    assert_eq!(outcome("length('😀') = 2"), T);
    assert_eq!(outcome("index_of('a😀b', 'b') = 3"), T);
    assert_eq!(outcome("substring('a😀b', 3) = 'b'"), T);
    assert_eq!(outcome("lower('ÀB') = 'àb'"), T);
}
