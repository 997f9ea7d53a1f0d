//! `.env` files as python-dotenv reads them (`edge_manifest::dotenv::parse_dotenv`) and
//! `$VAR` / `${VAR}` expansion as Python's `os.path.expandvars` does it
//! (`edge_manifest::expand_vars`).
//!
//! Input: the `.env` text, then optionally `\0` and a text to expand with its variables.
//!
//! Checks: no panic (the parser indexes characters; errors name a line that exists); expanding
//! a text without `$` changes nothing; expansion with no variables changes nothing.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0);
    let dotenv = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let text = String::from_utf8_lossy(
        parts
            .next()
            .unwrap_or(b"${CONTAINER_REGISTRY_ADDRESS}/x:$TAG-${MODULES.mqtt-server}$"),
    );
    let env = |name: &str| match name {
        "HOME" => Some("/root".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let vars = match edge_manifest::dotenv::parse_dotenv(&dotenv, env) {
        Ok(vars) => vars,
        Err((line, problem)) => {
            let lines = dotenv.split('\n').count();
            assert!(
                line >= 1 && line <= lines,
                "error on line {line} of {lines}: {problem}"
            );
            BTreeMap::new()
        }
    };
    let expanded = edge_manifest::expand_vars(&text, &vars);
    if !text.contains('$') {
        assert_eq!(expanded, text);
    }
    assert_eq!(edge_manifest::expand_vars(&text, &BTreeMap::new()), text);
});
