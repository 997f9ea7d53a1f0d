//! JSON that keeps the order of object keys, written the way Python's `json` module writes it.
//!
//! serde_json's map sorts keys; iotedgedev (Python) keeps the template's order, both in the generated
//! file (`json.dump(indent=2)`) and inside the createOptions strings (`json.dumps(separators=(',', ':'))`).
//! Expansion and genconfig work on this tree so that their output is byte for byte what iotedgedev
//! writes; the typed model ([`crate::Manifest`]) keeps using serde_json.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::create_options::{chunk, chunk_key, python_float_repr};

/// A JSON value whose objects keep their key order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    /// Normalized as Python re-serializes a parsed number (`1.50` -> `1.5`, `1e2` -> `100.0`).
    Num(String),
    Str(String),
    Arr(Vec<Node>),
    Obj(Vec<(String, Node)>),
}

impl Node {
    /// Parses JSON text; the error is serde_json's message.
    pub(crate) fn parse(text: &str) -> Result<Node, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            text,
            i: 0,
            depth: 0,
        };
        p.ws();
        let node = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing characters at byte {}", p.i));
        }
        Ok(node)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Obj(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match self {
            Node::Obj(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows a path of keys.
    pub(crate) fn path_mut(&mut self, keys: &[&str]) -> Option<&mut Node> {
        let mut node = self;
        for k in keys {
            node = node.get_mut(k)?;
        }
        Some(node)
    }

    /// Sets `key`: in place when present (as a Python dict does), appended otherwise.
    pub(crate) fn set(&mut self, key: &str, value: Node) {
        if let Node::Obj(entries) = self {
            match entries.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => entries.push((key.to_owned(), value)),
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &str) {
        if let Node::Obj(entries) = self {
            entries.retain(|(k, _)| k != key);
        }
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (&String, &Node)> {
        let entries: &[(String, Node)] = match self {
            Node::Obj(entries) => entries,
            _ => &[],
        };
        entries.iter().map(|(k, v)| (k, v))
    }

    pub(crate) fn entries_mut(&mut self) -> impl Iterator<Item = (&String, &mut Node)> {
        let entries: &mut [(String, Node)] = match self {
            Node::Obj(entries) => entries,
            _ => &mut [],
        };
        entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    /// `json.dumps(self, separators=(',', ':'))`.
    pub(crate) fn to_compact(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, None, 0);
        out
    }

    /// `json.dump(self, f, indent=2)`.
    pub(crate) fn to_pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, Some(2), 0);
        out
    }

    fn write(&self, out: &mut String, indent: Option<usize>, level: usize) {
        let newline = |out: &mut String, level: usize| {
            if let Some(n) = indent {
                out.push('\n');
                out.push_str(&" ".repeat(n * level));
            }
        };
        match self {
            Node::Null => out.push_str("null"),
            Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Node::Num(n) => out.push_str(n),
            Node::Str(s) => write_python_string(s, out),
            Node::Arr(items) if items.is_empty() => out.push_str("[]"),
            Node::Obj(entries) if entries.is_empty() => out.push_str("{}"),
            Node::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, level + 1);
                    item.write(out, indent, level + 1);
                }
                newline(out, level);
                out.push(']');
            }
            Node::Obj(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, level + 1);
                    write_python_string(k, out);
                    out.push_str(if indent.is_some() { ": " } else { ":" });
                    v.write(out, indent, level + 1);
                }
                newline(out, level);
                out.push('}');
            }
        }
    }
}

/// A string as Python's `json` writes it with `ensure_ascii`: `\uXXXX` for everything outside `' '..='~'`
/// that has no short escape.
pub(crate) fn write_python_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// iotedgedev's `convert_create_options` on every module of `$edgeAgent` (user and system modules):
/// an object is minified, the text cut in pieces of 512 characters: `createOptions` takes the first (in
/// place), `createOptions01`.. the others. Returns the modules whose createOptions need more than 8 pieces.
pub(crate) fn convert_create_options(doc: &mut Node) -> Vec<(String, usize)> {
    let mut too_big = Vec::new();
    let content = if doc.get("modulesContent").is_some() {
        "modulesContent"
    } else {
        "moduleContent"
    };
    let Some(desired) = doc.path_mut(&[content, "$edgeAgent", "properties.desired"]) else {
        return too_big;
    };
    for group in ["modules", "systemModules"] {
        let Some(modules) = desired.get_mut(group) else {
            continue;
        };
        for (name, module) in modules.entries_mut() {
            let Some(settings) = module.get_mut("settings") else {
                continue;
            };
            let text = match settings.get("createOptions") {
                None => continue,
                Some(Node::Str(s)) => s.clone(),
                Some(other) => other.to_compact(),
            };
            let pieces = chunk(&text);
            if pieces.len() > crate::create_options::TWIN_VALUE_MAX_CHUNKS {
                too_big.push((name.clone(), text.chars().count()));
            }
            for (i, piece) in pieces.into_iter().enumerate() {
                settings.set(&chunk_key(i), Node::Str(piece));
            }
        }
    }
    too_big
}

/// The minified createOptions, in the document's key order, of every module whose createOptions is an
/// object, by (`modules` or `systemModules`, module name).
pub(crate) fn object_create_options(text: &str) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let Ok(doc) = Node::parse(text) else {
        return out;
    };
    let content = doc
        .get("modulesContent")
        .or_else(|| doc.get("moduleContent"));
    let Some(desired) = content
        .and_then(|c| c.get("$edgeAgent"))
        .and_then(|a| a.get("properties.desired"))
    else {
        return out;
    };
    for group in ["modules", "systemModules"] {
        let Some(modules) = desired.get(group) else {
            continue;
        };
        for (name, module) in modules.entries() {
            if let Some(opts @ Node::Obj(_)) =
                module.get("settings").and_then(|s| s.get("createOptions"))
            {
                out.insert((group.to_owned(), name.clone()), opts.to_compact());
            }
        }
    }
    out
}

/// A JSON number as Python reads and writes it back: integers exactly (any size, `-0` is `0`), floats
/// correctly rounded (std's parser) and written as `repr` does.
fn python_number(raw: &str) -> Result<String, String> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    let valid_int = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if valid_int {
        return Ok(if digits == "0" {
            "0".into()
        } else {
            raw.into()
        });
    }
    // Check the JSON grammar (serde_json), then parse with std, which rounds correctly.
    serde_json::from_str::<serde_json::Number>(raw)
        .map_err(|e| format!("bad number {raw}: {e}"))?;
    let x: f64 = raw.parse().map_err(|e| format!("bad number {raw}: {e}"))?;
    Ok(python_float_repr(x))
}

/// Most levels of objects and arrays [`Node::parse`] reads, as serde_json (deeper is an error, not
/// a stack overflow: the reader and the writers recurse once per level).
const MAX_DEPTH: usize = 128;

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
    /// Objects and arrays open at `i`.
    depth: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.i))
    }

    fn value(&mut self) -> Result<Node, String> {
        let nests = matches!(self.s.get(self.i), Some(b'{' | b'['));
        if !nests {
            return self.scalar_or_nested();
        }
        if self.depth >= MAX_DEPTH {
            return self.err(&format!(
                "objects and arrays nested more than {MAX_DEPTH} levels deep"
            ));
        }
        self.depth += 1;
        let v = self.scalar_or_nested();
        self.depth -= 1;
        v
    }

    fn scalar_or_nested(&mut self) -> Result<Node, String> {
        match self.s.get(self.i) {
            None => self.err("unexpected end"),
            Some(b'{') => {
                self.i += 1;
                let mut entries: Vec<(String, Node)> = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Node::Obj(entries));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.ws();
                    if self.s.get(self.i) != Some(&b':') {
                        return self.err("expected `:`");
                    }
                    self.i += 1;
                    self.ws();
                    let value = self.value()?;
                    // A repeated key keeps its first place and takes the last value, as in Python.
                    match entries.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => *v = value,
                        None => entries.push((key, value)),
                    }
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Node::Obj(entries));
                        }
                        _ => return self.err("expected `,` or `}`"),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Node::Arr(items));
                }
                loop {
                    self.ws();
                    items.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Node::Arr(items));
                        }
                        _ => return self.err("expected `,` or `]`"),
                    }
                }
            }
            Some(b'"') => Ok(Node::Str(self.string()?)),
            Some(b't') if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(Node::Bool(true))
            }
            Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(Node::Bool(false))
            }
            Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                self.i += 4;
                Ok(Node::Null)
            }
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let raw = &self.text[start..self.i];
                Ok(Node::Num(python_number(raw)?))
            }
            Some(_) => self.err("unexpected character"),
        }
    }

    /// A string token, decoded (serde_json does the unescaping).
    fn string(&mut self) -> Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return self.err("expected a string");
        }
        let start = self.i;
        self.i += 1;
        loop {
            match self.s.get(self.i) {
                None => return self.err("unterminated string"),
                Some(b'\\') => self.i += 2,
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(_) => self.i += 1,
            }
        }
        let raw = self.text.get(start..self.i).ok_or("bad string boundary")?;
        serde_json::from_str::<String>(raw).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_writes_like_python() {
        let text = r#"{"z": 1, "a": {"y": [1, 2.50, 1e2, -0.5], "b": {}, "c": []}, "é": "x\u00e9\"\/", "z": true, "n": null}"#;
        let node = Node::parse(text).unwrap();
        // python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(json.dumps(d, separators=(",",":"))); print(json.dumps(d, indent=2))' "$text"
        assert_eq!(
            node.to_compact(),
            r#"{"z":true,"a":{"y":[1,2.5,100.0,-0.5],"b":{},"c":[]},"\u00e9":"x\u00e9\"/","n":null}"#
        );
        assert_eq!(
            node.to_pretty(),
            "{\n  \"z\": true,\n  \"a\": {\n    \"y\": [\n      1,\n      2.5,\n      100.0,\n      -0.5\n    ],\n    \"b\": {},\n    \"c\": []\n  },\n  \"\\u00e9\": \"x\\u00e9\\\"/\",\n  \"n\": null\n}"
        );
        assert!(Node::parse("{\"a\": }").is_err());
        assert!(Node::parse("[1] x").is_err());
    }

    /// Every recursive reader has a depth limit: this one is only given text serde_json has read
    /// (at most 128 levels) today, but refuses deeper text itself rather than overflow the stack.
    #[test]
    fn nesting_past_128_levels_is_an_error() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(Node::parse(&nested(MAX_DEPTH)).is_ok());
        let e = Node::parse(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert!(e.contains("more than 128 levels"), "{e}");
        assert!(Node::parse(&nested(100_000)).is_err());
        let objects = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
        assert!(Node::parse(&objects).is_err());
    }

    #[test]
    fn create_options_are_converted_in_place_like_iotedgedev() {
        let mut doc = Node::parse(
            r#"{"modulesContent": {"$edgeAgent": {"properties.desired": {
                 "modules": {"m": {"settings": {"createOptions": {"b": 1, "a": [2]}, "image": "i"}}},
                 "systemModules": {"edgeAgent": {"settings": {"image": "a", "createOptions": "{}"}}}}}}}"#,
        )
        .unwrap();
        assert!(convert_create_options(&mut doc).is_empty());
        let m = doc
            .path_mut(&[
                "modulesContent",
                "$edgeAgent",
                "properties.desired",
                "modules",
                "m",
                "settings",
            ])
            .unwrap()
            .to_compact();
        assert_eq!(m, r#"{"createOptions":"{\"b\":1,\"a\":[2]}","image":"i"}"#);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                (-1.0e12f64..1.0e12).prop_map(Value::from),
                "[ -~é😀\\n\\t\"\\\\]{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map("[a-zA-Z0-9_/ é]{0,8}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            // serde_json writes keys sorted, so the ordered tree must give what the serde-based writer gives.
            #[test]
            fn ordered_tree_writes_what_serde_based_writer_writes(v in json()) {
                let text = serde_json::to_string_pretty(&v).unwrap();
                let node = Node::parse(&text).unwrap();
                prop_assert_eq!(node.to_compact(), crate::create_options::to_compact_ascii(&v));
                // Pretty and compact text read back to the same tree (serde_json's own float reading is
                // not exact without its float_roundtrip feature, so compare on our side).
                let again = Node::parse(&node.to_pretty()).unwrap();
                prop_assert_eq!(&again, &node);
            }

            #[test]
            fn chunks_join_back_and_fit(text in "[ -~é😀]{0,1600}") {
                let pieces = chunk(&text);
                prop_assert_eq!(pieces.concat(), text.clone());
                for (i, p) in pieces.iter().enumerate() {
                    let n = p.chars().count();
                    prop_assert!(n <= 512 && n > 0);
                    if i + 1 < pieces.len() {
                        prop_assert_eq!(n, 512);
                    }
                }
            }
        }
    }
}
