//! Twin patches: a desired or reported patch is a JSON merge patch (RFC 7396, applied by the
//! `json-patch` crate) in which keys starting with `$` (`$version`, `$metadata`) are the twin's
//! metadata, not properties, and are not merged, at any depth. One implementation for the hub
//! (edge-dev keeps each module's twin) and for every module that layers desired properties over
//! its settings.

use serde_json::{Map, Value};

/// Applies `patch` to `target`: `null` removes a property, objects merge recursively, anything
/// else replaces; `$` keys of the patch are skipped.
pub fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, &without_metadata(patch));
}

/// [`merge`], except that a `null` resets a property to its value in `defaults` when `defaults` has
/// one at that path (a module's settings: removing a desired property brings back the value the
/// module has without it; edge-module passes its layered settings).
/// The default replaces the property whole, as if the property were removed and then set.
pub fn merge_with_defaults(target: &mut Value, patch: &Value, defaults: &Value) {
    let patch = without_metadata(patch);
    json_patch::merge(target, &patch);
    if let Some(restore) = defaults_for_nulls(&patch, defaults) {
        json_patch::merge(target, &restore);
    }
}

/// `v` without `$` keys in any object.
fn without_metadata(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_metadata(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A patch that sets, for each `null` of `patch`, the value `defaults` has at that path; `None`
/// when there is none.
fn defaults_for_nulls(patch: &Value, defaults: &Value) -> Option<Value> {
    let (Value::Object(p), Value::Object(d)) = (patch, defaults) else {
        return None;
    };
    let mut out = Map::new();
    for (k, v) in p {
        let Some(dv) = d.get(k) else { continue };
        if v.is_null() {
            out.insert(k.clone(), dv.clone());
        } else if let Some(inner) = defaults_for_nulls(v, dv) {
            out.insert(k.clone(), inner);
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_follows_rfc7396_and_skips_metadata() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(
            &mut t,
            &json!({"a": null, "b": {"c": 5, "$x": 1}, "e": [1], "$version": 4}),
        );
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
        // a non-object patch replaces; an object patch over a non-object starts from {}
        let mut t = json!({"a": 1});
        merge(&mut t, &json!([1, 2]));
        assert_eq!(t, json!([1, 2]));
        let mut t = json!({"a": 1});
        merge(&mut t, &json!({"a": {"b": null, "c": 1}}));
        assert_eq!(t, json!({"a": {"c": 1}}));
    }

    #[test]
    fn null_resets_to_the_default_whole() {
        let defaults = json!({"interval": 2000, "faults": {"skew": 0.0}, "name": "x"});
        let mut t = json!({"interval": 500, "faults": {"skew": 0.2, "drop": 0.1}, "extra": 1});
        merge_with_defaults(
            &mut t,
            &json!({"interval": null, "faults": null, "extra": null, "$version": 2}),
            &defaults,
        );
        assert_eq!(t, json!({"interval": 2000, "faults": {"skew": 0.0}}));
        // nested nulls find nested defaults
        let mut t = json!({"faults": {"skew": 0.2, "drop": 0.1}});
        merge_with_defaults(
            &mut t,
            &json!({"faults": {"skew": null, "drop": null}}),
            &defaults,
        );
        assert_eq!(t, json!({"faults": {"skew": 0.0}}));
    }
}
