//! Layered settings: `T::default()` as JSON, then a JSON settings file, then the module's environment
//! variables, then command-line flags, each applied as a JSON merge patch (RFC 7396, the `json-patch`
//! crate), and one deserialization at the end. The module twin's desired properties are the last layer
//! (`crate::twin`, feature `client`).
//!
//! Names come from the settings type itself: every leaf of `T::default()` serialized (`faults.clock_skew`)
//! is a setting, with the flag `--faults-clock-skew` and the variable `{PREFIX}FAULTS_CLOCK_SKEW`
//! (camelCase JSON names are split at capitals: `stateDir` is `--state-dir`, `{PREFIX}STATE_DIR`). A
//! module adds [`Names::aliases`] for the flags and variables whose names differ from the field
//! (`--count` for `messages_per_device`) and [`Names::env`] for variables without its prefix
//! (`MQTT_HOST`). A value is taken as JSON when it parses as JSON and the setting is not a string
//! (`ESP_SIM_DEVICES=50` is the number 50), else as the string itself (`ESP_SIM_TOPIC=MyTopic`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// A module's settings: a struct that documents each default, refuses unknown fields
/// (`#[serde(deny_unknown_fields, default)]`) and checks its values in [`ModuleSettings::validate`].
pub trait ModuleSettings: Serialize + DeserializeOwned + Default {
    /// Checks values that deserialize but make no sense together; the message says what to set.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Where a value came from; errors name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layer {
    /// `T::default()`.
    Default,
    /// A JSON settings file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (its long name, without `--`).
    Flag(String),
    /// The module twin's desired properties.
    Twin,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::Default => f.write_str("the default settings"),
            Layer::File(p) => write!(f, "the settings file {}", p.display()),
            Layer::Env(n) => write!(f, "the environment variable {n}"),
            Layer::Flag(n) => write!(f, "the flag --{n}"),
            Layer::Twin => f.write_str("the module twin's desired properties"),
        }
    }
}

/// Settings that cannot be used, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the settings file {path}: {source}; check the path and that the file is readable")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the settings file {path} is not JSON: {source}; fix it there")]
    FileNotJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{layer} must be a JSON object of settings ({{\"name\": value, ...}}), not {found}")]
    NotAnObject { layer: Layer, found: &'static str },
    #[error("the environment variable {name} is not a setting of this module; unset it, or use one of: {}", valid.join(", "))]
    UnknownVariable { name: String, valid: Vec<String> },
    #[error("the environment variable {name} is not valid UTF-8; set it to text")]
    NotUnicode { name: String },
    #[error("{layer}, setting `{key}`: {message}; fix or remove it there")]
    Invalid {
        layer: Layer,
        key: String,
        message: String,
    },
    #[error("invalid settings: {0}")]
    Rejected(String),
    #[error("the settings type cannot be layered: {0} (a bug in the module)")]
    Type(String),
}

/// How a module names its settings outside JSON.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    /// Prefix of the module's environment variables, e.g. `ESP_SIM_`. Every variable with this prefix
    /// must name a setting (or be [`Names::file_env`]); an unknown one is an error, so a typo is not
    /// silently ignored.
    pub env_prefix: &'static str,
    /// `(name, path)`: extra names for a setting, in snake case; each gives a flag (`--fault-malformed`)
    /// and a prefixed variable (`ESP_SIM_FAULT_MALFORMED`) for the JSON path (`faults.malformed_json`).
    pub aliases: &'static [(&'static str, &'static str)],
    /// `(variable, path)`: variables without the prefix, e.g. `("MQTT_HOST", "host")`.
    pub env: &'static [(&'static str, &'static str)],
    /// Whether the module reads a JSON settings file (`--settings FILE` or [`Names::file_env`]).
    pub file: bool,
    /// `(path, text)`: what a setting means, for `--help` (optional; the JSON path, default and
    /// variables are always shown).
    pub help: &'static [(&'static str, &'static str)],
}

impl Names {
    /// The variable that names the settings file (`{PREFIX}SETTINGS`), when the module reads one; it is
    /// not a setting.
    pub fn file_env(&self) -> Option<String> {
        self.file.then(|| format!("{}SETTINGS", self.env_prefix))
    }
}

/// One settable name: a snake-case name and the JSON path it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Snake-case name: `faults_clock_skew`, or an alias.
    pub name: String,
    /// Dotted JSON path: `faults.clock_skew`.
    pub path: String,
    /// The default value at the path.
    pub default: Value,
    /// Whether this is one of [`Names::aliases`].
    pub alias: bool,
}

impl Setting {
    /// `--faults-clock-skew` without the dashes.
    pub fn flag(&self) -> String {
        self.name.replace('_', "-")
    }
    /// `ESP_SIM_FAULTS_CLOCK_SKEW`.
    pub fn env(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.name.to_ascii_uppercase())
    }
}

/// Every settable name of `T` with `names`' aliases, in field order, aliases last.
pub fn settings_of<T: ModuleSettings>(names: &Names) -> Result<Vec<Setting>, SettingsError> {
    let defaults = defaults_of::<T>()?;
    let mut out = Vec::new();
    leaves(&defaults, "", &mut out);
    for (name, path) in names.aliases {
        let default = lookup(&defaults, path).cloned().ok_or_else(|| {
            SettingsError::Type(format!("alias {name} names {path}, which is not a setting"))
        })?;
        out.push(Setting {
            name: (*name).to_string(),
            path: (*path).to_string(),
            default,
            alias: true,
        });
    }
    for (var, path) in names.env {
        if lookup(&defaults, path).is_none() {
            return Err(SettingsError::Type(format!(
                "variable {var} names {path}, which is not a setting"
            )));
        }
    }
    let mut seen = BTreeMap::new();
    for s in &out {
        if let Some(other) = seen.insert(s.name.clone(), s.path.clone()) {
            return Err(SettingsError::Type(format!(
                "the name {} is both {other} and {}",
                s.name, s.path
            )));
        }
    }
    Ok(out)
}

fn defaults_of<T: ModuleSettings>() -> Result<Value, SettingsError> {
    let v = serde_json::to_value(T::default()).map_err(|e| SettingsError::Type(e.to_string()))?;
    if !v.is_object() {
        return Err(SettingsError::Type(
            "the default settings are not a JSON object".into(),
        ));
    }
    Ok(v)
}

fn leaves(v: &Value, prefix: &str, out: &mut Vec<Setting>) {
    if let Value::Object(m) = v {
        if !m.is_empty() || prefix.is_empty() {
            for (k, child) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(child, &path, out);
            }
            return;
        }
    }
    out.push(Setting {
        name: snake_case(prefix),
        path: prefix.to_string(),
        default: v.clone(),
        alias: false,
    });
}

/// `faults.clock_skew` -> `faults_clock_skew`, `eventPolicy.tickMs` -> `event_policy_tick_ms`.
fn snake_case(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c == '.' || c == '-' {
            out.push('_');
        } else if c.is_ascii_uppercase() {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// The JSON value of a flag or variable: the text itself, without surrounding whitespace (an
/// environment file written on Windows ends its lines with `\r`), for a setting whose default is a
/// string; for a boolean setting also the words people write in environment files (`1`/`0`,
/// `yes`/`no`, `on`/`off`, any case); otherwise JSON when it parses as JSON, else the text.
pub fn parse_value(raw: &str, default: &Value) -> Value {
    if default.is_string() {
        return Value::String(raw.trim().to_string());
    }
    if default.is_boolean() {
        match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => return Value::Bool(true),
            "0" | "false" | "no" | "off" => return Value::Bool(false),
            _ => {}
        }
    }
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// A merge patch that sets `path` to `value`.
fn patch_at(path: &str, value: Value) -> Value {
    path.rsplit('.').fold(value, |v, k| {
        let mut m = Map::new();
        m.insert(k.to_string(), v);
        Value::Object(m)
    })
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Settings being layered: a JSON document and, for each path a layer set, which layer it was.
#[derive(Debug, Clone)]
pub struct Builder<T> {
    value: Value,
    defaults: Value,
    origin: BTreeMap<String, Layer>,
    _t: PhantomData<fn() -> T>,
}

impl<T: ModuleSettings> Builder<T> {
    /// Starts from `T::default()`.
    pub fn new() -> Result<Self, SettingsError> {
        let defaults = defaults_of::<T>()?;
        Ok(Builder {
            value: defaults.clone(),
            defaults,
            origin: BTreeMap::new(),
            _t: PhantomData,
        })
    }

    /// Merges a JSON object over what is there (RFC 7396: `null` removes a setting, so its default
    /// applies), remembering `layer` for every path it names.
    pub fn merge(&mut self, patch: &Value, layer: Layer) -> Result<(), SettingsError> {
        if !patch.is_object() {
            return Err(SettingsError::NotAnObject {
                layer,
                found: kind(patch),
            });
        }
        self.record(patch, "", &layer);
        json_patch::merge(&mut self.value, patch);
        Ok(())
    }

    fn record(&mut self, patch: &Value, prefix: &str, layer: &Layer) {
        if let Value::Object(m) = patch {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                self.origin.insert(path.clone(), layer.clone());
                self.record(v, &path, layer);
            }
        }
    }

    /// Merges the JSON settings file at `path`.
    pub fn file(&mut self, path: &Path) -> Result<(), SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        let v: Value =
            serde_json::from_str(&text).map_err(|source| SettingsError::FileNotJson {
                path: path.to_path_buf(),
                source,
            })?;
        self.merge(&v, Layer::File(path.to_path_buf()))
    }

    /// Sets one setting from text (a variable's or a flag's value).
    pub fn set(&mut self, setting: &Setting, raw: &str, layer: Layer) -> Result<(), SettingsError> {
        let v = parse_value(raw, &setting.default);
        self.merge(&patch_at(&setting.path, v), layer)
    }

    /// Applies the module's variables among `vars` (the process environment: [`std::env::vars_os`]).
    /// A variable with the prefix that names no setting is an error that lists the valid names;
    /// [`Names::file_env`] is skipped (the caller reads the file first).
    pub fn env(
        &mut self,
        names: &Names,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<(), SettingsError> {
        let settings = settings_of::<T>(names)?;
        let file_env = names.file_env();
        let mut by_var: BTreeMap<String, &Setting> = settings
            .iter()
            .map(|s| (s.env(names.env_prefix), s))
            .collect();
        let extra: Vec<Setting> = names
            .env
            .iter()
            .filter_map(|(var, path)| {
                let default = lookup(&self.defaults, path)?.clone();
                Some(Setting {
                    name: (*var).to_string(),
                    path: (*path).to_string(),
                    default,
                    alias: true,
                })
            })
            .collect();
        for s in &extra {
            by_var.insert(s.name.clone(), s);
        }
        // Sorted, so the result does not depend on the order of the environment.
        let mut found = BTreeMap::new();
        for (k, v) in vars {
            let Some(name) = k.to_str() else { continue };
            let ours = name.starts_with(names.env_prefix) || by_var.contains_key(name);
            if !ours || file_env.as_deref() == Some(name) {
                continue;
            }
            let Some(setting) = by_var.get(name) else {
                let mut valid: Vec<String> = by_var.keys().cloned().collect();
                valid.extend(file_env.clone());
                valid.sort();
                return Err(SettingsError::UnknownVariable {
                    name: name.to_string(),
                    valid,
                });
            };
            let value = v.into_string().map_err(|_| SettingsError::NotUnicode {
                name: name.to_string(),
            })?;
            found.insert(name.to_string(), (*setting, value));
        }
        // Unprefixed variables first, so that the module's own name for a setting wins.
        let (plain, prefixed): (Vec<_>, Vec<_>) = found
            .into_iter()
            .partition(|(n, _)| !n.starts_with(names.env_prefix));
        for (name, (setting, value)) in plain.into_iter().chain(prefixed) {
            self.set(setting, &value, Layer::Env(name))?;
        }
        Ok(())
    }

    /// The JSON document so far.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Deserializes the layers once and validates the result.
    pub fn build(self) -> Result<Layered<T>, SettingsError> {
        let settings = deserialize::<T>(&self.value, |key| self.layer_of(key))?;
        Ok(Layered {
            value: self.value,
            settings,
        })
    }

    /// The layer that set `key` (or the nearest path above or below it).
    fn layer_of(&self, key: &str) -> Layer {
        if let Some(l) = self.origin.get(key) {
            return l.clone();
        }
        let mut k = key;
        while let Some((parent, _)) = k.rsplit_once('.') {
            if let Some(l) = self.origin.get(parent) {
                return l.clone();
            }
            k = parent;
        }
        let below = format!("{key}.");
        self.origin
            .iter()
            .rev()
            .find(|(p, _)| key.is_empty() || p.starts_with(&below))
            .map(|(_, l)| l.clone())
            .unwrap_or(Layer::Default)
    }
}

/// Deserializes `value` as `T` and validates it; `layer_of(key)` names the layer of a wrong key.
pub(crate) fn deserialize<T: ModuleSettings>(
    value: &Value,
    layer_of: impl Fn(&str) -> Layer,
) -> Result<T, SettingsError> {
    let t: T = serde_path_to_error::deserialize(value).map_err(|e| {
        // The path names the field itself, an unknown one too; `.` is the whole document.
        let mut key = e.path().to_string();
        let message = e.inner().to_string();
        if key == "." {
            key.clear();
        }
        SettingsError::Invalid {
            layer: layer_of(&key),
            key,
            message,
        }
    })?;
    t.validate().map_err(SettingsError::Rejected)?;
    Ok(t)
}

/// Settings layered from defaults, file, environment and flags: the typed result and the JSON
/// document the module twin's desired properties go over.
#[derive(Debug, Clone)]
pub struct Layered<T> {
    value: Value,
    settings: T,
}

impl<T: ModuleSettings> Layered<T> {
    /// Defaults only.
    pub fn defaults() -> Result<Self, SettingsError> {
        Builder::new()?.build()
    }

    /// The settings in force.
    pub fn settings(&self) -> &T {
        &self.settings
    }

    /// The settings, taken.
    pub fn into_settings(self) -> T {
        self.settings
    }

    /// The layered JSON document (what the twin's desired properties go over).
    pub fn value(&self) -> &Value {
        &self.value
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct S {
        /// Default "h".
        host: String,
        /// Default 1.
        port: u16,
        /// Default none.
        seed: Option<u64>,
        /// Default none.
        log: Option<String>,
        /// Default {a: 0.0, b: 5}.
        inner: Inner,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        a: f64,
        b: u32,
    }
    impl Default for Inner {
        fn default() -> Self {
            Inner { a: 0.0, b: 5 }
        }
    }
    impl Default for S {
        fn default() -> Self {
            S {
                host: "h".into(),
                port: 1,
                seed: None,
                log: None,
                inner: Inner::default(),
            }
        }
    }
    impl ModuleSettings for S {
        fn validate(&self) -> Result<(), String> {
            if self.port == 0 {
                return Err("port 0 is not a server port: set port".into());
            }
            Ok(())
        }
    }

    const NAMES: Names = Names {
        env_prefix: "T_",
        aliases: &[("count", "inner.b")],
        env: &[("OTHER_HOST", "host")],
        file: true,
        help: &[],
    };

    fn vars(v: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        v.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn camel_case_names_become_snake_case() {
        assert_eq!(snake_case("stateDir"), "state_dir");
        assert_eq!(
            snake_case("eventPolicy.lateArrivalToleranceSecs"),
            "event_policy_late_arrival_tolerance_secs"
        );
        assert_eq!(snake_case("faults.clock_skew"), "faults_clock_skew");
    }

    #[test]
    fn names_come_from_the_fields() {
        let names: Vec<_> = settings_of::<S>(&NAMES)
            .unwrap()
            .into_iter()
            .map(|s| (s.flag(), s.env("T_"), s.path))
            .collect();
        assert!(names.contains(&("inner-a".into(), "T_INNER_A".into(), "inner.a".into())));
        assert!(names.contains(&("count".into(), "T_COUNT".into(), "inner.b".into())));
        assert!(names.contains(&("seed".into(), "T_SEED".into(), "seed".into())));
    }

    #[test]
    fn layers_apply_in_order_and_parse_values() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.json");
        std::fs::write(&f, r#"{"host": "file", "port": 7, "inner": {"a": 1.5}}"#).unwrap();
        let mut b = Builder::<S>::new().unwrap();
        b.file(&f).unwrap();
        b.env(
            &NAMES,
            vars(&[
                ("T_PORT", "8"),
                ("T_HOST", "123"),
                ("T_LOG", "/tmp/x"),
                ("T_COUNT", "9"),
                ("OTHER_HOST", "ignored-by-prefixed"),
                ("T_SETTINGS", "/elsewhere"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        let s = b.build().unwrap().into_settings();
        assert_eq!(s.host, "123", "a string setting takes the text");
        assert_eq!(s.port, 8);
        assert_eq!(s.log.as_deref(), Some("/tmp/x"));
        assert_eq!(s.inner, Inner { a: 1.5, b: 9 });
        // null removes a setting: its default applies
        let mut b = Builder::<S>::new().unwrap();
        b.merge(&json!({"port": 5}), Layer::Flag("port".into()))
            .unwrap();
        b.merge(&json!({"port": null}), Layer::Twin).unwrap();
        assert_eq!(b.build().unwrap().settings().port, 1);
    }

    #[test]
    fn booleans_take_the_words_of_environment_files() {
        for (raw, want) in [
            ("1", json!(true)),
            ("YES", json!(true)),
            (" on", json!(true)),
            ("True", json!(true)),
            ("0", json!(false)),
            ("no", json!(false)),
            ("Off", json!(false)),
            ("maybe", json!("maybe")),
        ] {
            assert_eq!(parse_value(raw, &json!(false)), want, "{raw}");
        }
        // only for a boolean setting: elsewhere `1` is the number and `yes` the text
        assert_eq!(parse_value("1", &json!(5)), json!(1));
        assert_eq!(parse_value("yes", &Value::Null), json!("yes"));
        assert_eq!(parse_value("on", &json!("h")), json!("on"));
        assert_eq!(parse_value("output1\r", &json!("h")), json!("output1"));
    }

    #[test]
    fn unknown_variable_names_the_valid_ones() {
        let mut b = Builder::<S>::new().unwrap();
        let e = b.env(&NAMES, vars(&[("T_PROT", "1")])).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("T_PROT") && m.contains("T_PORT") && m.contains("T_SETTINGS"),
            "{m}"
        );
        assert!(m.contains("OTHER_HOST") && m.contains("T_INNER_A"), "{m}");
    }

    #[test]
    fn errors_name_the_layer_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.json");
        std::fs::write(&f, r#"{"inner": {"c": 1}}"#).unwrap();
        let mut b = Builder::<S>::new().unwrap();
        b.file(&f).unwrap();
        let e = b.build().unwrap_err();
        match &e {
            SettingsError::Invalid { layer, key, .. } => {
                assert_eq!(layer, &Layer::File(f.clone()));
                assert_eq!(key, "inner.c");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("s.json"), "{e}");

        let mut b = Builder::<S>::new().unwrap();
        b.env(&NAMES, vars(&[("T_PORT", "port")])).unwrap();
        let e = b.build().unwrap_err();
        let m = e.to_string();
        assert!(m.contains("T_PORT") && m.contains("`port`"), "{m}");

        let mut b = Builder::<S>::new().unwrap();
        b.env(&NAMES, vars(&[("T_INNER_B", "-1")])).unwrap();
        let m = b.build().unwrap_err().to_string();
        assert!(m.contains("T_INNER_B") && m.contains("inner.b"), "{m}");

        let mut b = Builder::<S>::new().unwrap();
        b.env(&NAMES, vars(&[("T_PORT", "0")])).unwrap();
        let m = b.build().unwrap_err().to_string();
        assert!(m.contains("port 0 is not a server port"), "{m}");
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Builder::<S>::new().unwrap();
        let missing = dir.path().join("missing.json");
        let e = b.file(&missing).unwrap_err();
        assert!(matches!(e, SettingsError::ReadFile { .. }), "{e}");
        let f = dir.path().join("bad.json");
        std::fs::write(&f, "{host: 1").unwrap();
        let e = b.file(&f).unwrap_err();
        assert!(matches!(e, SettingsError::FileNotJson { .. }), "{e}");
        std::fs::write(&f, "[1]").unwrap();
        let e = b.file(&f).unwrap_err();
        assert!(e.to_string().contains("must be a JSON object"), "{e}");
    }

    #[test]
    fn a_bad_alias_is_caught() {
        const BAD: Names = Names {
            env_prefix: "T_",
            aliases: &[("x", "nope")],
            env: &[],
            file: false,
            help: &[],
        };
        assert!(matches!(
            settings_of::<S>(&BAD),
            Err(SettingsError::Type(_))
        ));
        const CLASH: Names = Names {
            env_prefix: "T_",
            aliases: &[("port", "inner.b")],
            env: &[],
            file: false,
            help: &[],
        };
        assert!(matches!(
            settings_of::<S>(&CLASH),
            Err(SettingsError::Type(_))
        ));
    }
}
