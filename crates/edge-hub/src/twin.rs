//! Module twins (pure): desired and reported properties with their versions, JSON merge patches.
//!
//! A patch may nest objects and arrays at most [`MAX_NESTING`] levels below its top, as IoT Hub
//! allows in twin properties. Without that bound a module's patch nested close to serde_json's
//! 128-level limit was merged, stored and then unreadable: the twin document a module GETs and the
//! stored twin each wrap it in more levels, past what serde_json reads back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One module's twin as the hub keeps it (and stores it, as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwinState {
    pub desired: Map<String, Value>,
    pub desired_version: u64,
    pub reported: Map<String, Value>,
    pub reported_version: u64,
}

/// Levels of objects and arrays a patch may nest below its top: IoT Hub's limit for desired and
/// reported properties ("All JSON objects in tags, desired, and reported properties can have a
/// maximum depth of 10").
pub const MAX_NESTING: usize = 10;

/// Levels of objects and arrays below the top of `v` (0 for `{"a": 1}`), counting at most
/// `MAX_NESTING + 1`; a loop over a work list, so a deep value costs no stack.
fn nesting(v: &Value) -> usize {
    let nested = |c: &&Value| c.is_object() || c.is_array();
    let mut deepest = 0;
    let mut work: Vec<(&Value, usize)> = vec![(v, 0)];
    while let Some((v, level)) = work.pop() {
        deepest = deepest.max(level);
        if deepest > MAX_NESTING {
            break;
        }
        match v {
            Value::Object(m) => work.extend(m.values().filter(nested).map(|c| (c, level + 1))),
            Value::Array(a) => work.extend(a.iter().filter(nested).map(|c| (c, level + 1))),
            _ => {}
        }
    }
    deepest
}

/// Why a twin patch was refused (the twin is unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// `"reported"` or `"desired"`.
    #[error("a {0}-properties patch must be a JSON object")]
    NotAnObject(&'static str),
    #[error("the patch nests objects or arrays more than {MAX_NESTING} levels deep, more than IoT Hub allows in twin properties; flatten it")]
    TooDeep,
}

/// Refuses a patch that is not an object or is nested deeper than [`MAX_NESTING`].
fn check(patch: &Value, which: &'static str) -> Result<(), PatchError> {
    if !patch.is_object() {
        return Err(PatchError::NotAnObject(which));
    }
    if nesting(patch) > MAX_NESTING {
        return Err(PatchError::TooDeep);
    }
    Ok(())
}

impl TwinState {
    /// A new twin: the manifest's desired properties at version 1, empty reported properties at version 1.
    pub fn new(desired: &Value) -> TwinState {
        TwinState {
            desired: strip_meta(desired),
            desired_version: 1,
            reported: Map::new(),
            reported_version: 1,
        }
    }

    /// Takes the manifest's desired properties at start. If they differ from the stored ones they replace
    /// them with a new version (so a module never sees different content under the same version).
    /// Returns whether they changed.
    pub fn set_desired_from_manifest(&mut self, desired: &Value) -> bool {
        let d = strip_meta(desired);
        if d == self.desired {
            return false;
        }
        self.desired = d;
        self.desired_version += 1;
        true
    }

    /// The document a twin GET answers: `{"desired":{..,"$version":N},"reported":{..,"$version":M}}`.
    pub fn document(&self) -> Value {
        let mut desired = self.desired.clone();
        desired.insert("$version".into(), Value::from(self.desired_version));
        let mut reported = self.reported.clone();
        reported.insert("$version".into(), Value::from(self.reported_version));
        serde_json::json!({ "desired": desired, "reported": reported })
    }

    /// Merges a reported-properties patch; returns the new reported version.
    pub fn patch_reported(&mut self, patch: &Value) -> Result<u64, PatchError> {
        check(patch, "reported")?;
        merge(&mut self.reported, patch);
        self.reported_version += 1;
        Ok(self.reported_version)
    }

    /// Merges a desired-properties patch; returns the new desired version and the body to push to the
    /// module (the patch with `"$version"`, which the SDKs require).
    pub fn patch_desired(&mut self, patch: &Value) -> Result<(u64, Value), PatchError> {
        check(patch, "desired")?;
        merge(&mut self.desired, patch);
        self.desired_version += 1;
        let mut body = strip_meta(patch);
        body.insert("$version".into(), Value::from(self.desired_version));
        Ok((self.desired_version, Value::Object(body)))
    }
}

/// The object without its `$`-keys (`$version`, `$metadata`); a non-object gives an empty object.
fn strip_meta(v: &Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m
            .iter()
            .filter(|(k, _)| !k.starts_with('$'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        _ => Map::new(),
    }
}

/// Merges a twin patch (an object) into a properties map: [`edge_client::twin::merge`], the one
/// implementation the modules use too (`null` deletes, objects merge, `$` keys are skipped).
fn merge(target: &mut Map<String, Value>, patch: &Value) {
    let mut doc = Value::Object(std::mem::take(target));
    edge_client::twin::merge(&mut doc, patch);
    if let Value::Object(m) = doc {
        *target = m;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reported_patch_merges_and_deletes() {
        let mut t = TwinState::new(&json!({"query": "SELECT 1", "$version": 7}));
        assert_eq!(t.desired_version, 1);
        assert_eq!(
            t.document()["desired"],
            json!({"query": "SELECT 1", "$version": 1})
        );
        let v = t
            .patch_reported(&json!({"a": 1, "n": {"x": 1, "y": 2}}))
            .unwrap();
        assert_eq!(v, 2);
        let v = t
            .patch_reported(&json!({"a": null, "n": {"y": null, "z": 3}, "$version": 99}))
            .unwrap();
        assert_eq!(v, 3);
        assert_eq!(
            t.document()["reported"],
            json!({"n": {"x": 1, "z": 3}, "$version": 3})
        );
        assert!(t.patch_reported(&json!([1])).is_err());
        assert_eq!(
            t.reported_version, 3,
            "a refused patch does not bump the version"
        );
    }

    #[test]
    fn desired_patch_carries_its_version() {
        let mut t = TwinState::new(&json!({"a": 1}));
        let (v, body) = t.patch_desired(&json!({"b": {"c": 2}})).unwrap();
        assert_eq!(v, 2);
        assert_eq!(body, json!({"b": {"c": 2}, "$version": 2}));
        assert_eq!(
            t.document()["desired"],
            json!({"a": 1, "b": {"c": 2}, "$version": 2})
        );
    }

    /// Found by `fuzz/fuzz_targets/twin_patches.rs`: a reported patch nested 126 levels deep was
    /// merged, and then neither the twin document nor the stored twin read back (serde_json's
    /// 128-level limit), so the module could no longer GET its twin and the hub dropped the stored
    /// twin at its next start.
    #[test]
    fn patches_nested_deeper_than_iot_hub_allows_are_refused() {
        let nested = |levels: usize| {
            let mut v = json!(1);
            for _ in 0..levels {
                v = json!({ "a": v });
            }
            v
        };
        let mut t = TwinState::new(&json!({"a": 1}));
        // {"a": ...} with MAX_NESTING objects below the top is the deepest allowed
        assert!(t.patch_reported(&nested(MAX_NESTING + 1)).is_ok());
        assert!(t.patch_desired(&nested(MAX_NESTING + 1)).is_ok());
        for levels in [MAX_NESTING + 2, 126] {
            let before = t.clone();
            let e = t.patch_reported(&nested(levels)).unwrap_err();
            assert_eq!(e, PatchError::TooDeep);
            assert!(e.to_string().contains("more than 10 levels"), "{e}");
            assert!(t.patch_desired(&nested(levels)).is_err());
            assert_eq!(t, before, "a refused patch changes nothing");
        }
        // arrays count as levels too
        assert!(t
            .patch_reported(&json!({"a": [[[[[[[[[[[1]]]]]]]]]]]}))
            .is_err());
        let doc = t.document().to_string();
        assert!(serde_json::from_str::<Value>(&doc).is_ok());
        let stored = serde_json::to_vec(&t).unwrap();
        assert_eq!(serde_json::from_slice::<TwinState>(&stored).unwrap(), t);
    }

    #[test]
    fn manifest_change_bumps_version_only_when_different() {
        let mut t = TwinState::new(&json!({"a": 1}));
        assert!(!t.set_desired_from_manifest(&json!({"a": 1})));
        assert_eq!(t.desired_version, 1);
        assert!(t.set_desired_from_manifest(&json!({"a": 2})));
        assert_eq!(t.desired_version, 2);
    }
}
