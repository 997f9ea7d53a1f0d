//! Settings of AggregatorModule: the process settings (environment / command line) and the twin settings
//! (the module twin's desired properties, live).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stream_query::{EventPolicy, OrderingAction};

use crate::AggregatorError;

/// Process settings, read once at start from the module's environment (layered by `edge-module`):
/// every field is the variable `AGGREGATOR_` + its name in capitals (`stateDir`:
/// `AGGREGATOR_STATE_DIR`); any other `AGGREGATOR_` variable is an error that lists these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// Query used until the twin provides one (`AGGREGATOR_QUERY`). Default: none (an empty or blank
    /// value is none too); the module then waits for the twin's `query`.
    #[serde(default)]
    pub query: Option<String>,
    /// Folder for the window-state checkpoint (`AGGREGATOR_STATE_DIR`). Default `./aggregator-state`; in a
    /// container mount a volume there so a redeploy keeps the open windows.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How often the watermark is advanced with the wall clock and the checkpoint written, in milliseconds
    /// (`AGGREGATOR_TICK_MS`). Default 1000.
    #[serde(default = "default_tick_ms", with = "edge_module::duration::millis")]
    pub tick_ms: Duration,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("aggregator-state")
}
fn default_tick_ms() -> Duration {
    Duration::from_millis(1000)
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            query: None,
            state_dir: default_state_dir(),
            tick_ms: default_tick_ms(),
        }
    }
}

/// The names of the process settings outside JSON: the prefix; every field's variable is derived.
pub const NAMES: edge_module::Names = edge_module::Names {
    env_prefix: "AGGREGATOR_",
    aliases: &[],
    env: &[],
    file: false,
    help: &[],
};

impl edge_module::ModuleSettings for Settings {
    fn validate(&self) -> Result<(), String> {
        Settings::validate(self).map_err(|e| e.to_string())
    }
}

impl Settings {
    /// The environment variables this module reads, and nothing else (derived from the fields; a test
    /// holds this list to them).
    pub const ENV_VARS: [&'static str; 3] = [
        "AGGREGATOR_QUERY",
        "AGGREGATOR_STATE_DIR",
        "AGGREGATOR_TICK_MS",
    ];

    /// Defaults, overridden by the module's variables among `vars` (given, so tests need not touch the
    /// process environment). Other variables are ignored; an `AGGREGATOR_` variable that is not a
    /// setting is an error.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Settings, AggregatorError> {
        let mut b = edge_module::Builder::<Settings>::new()?;
        b.env(&NAMES, vars)?;
        let mut s = b.build()?.into_settings();
        if s.query.as_deref().is_some_and(|q| q.trim().is_empty()) {
            s.query = None;
        }
        Ok(s)
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, AggregatorError> {
        Settings::from_vars(std::env::vars_os())
    }

    pub fn validate(&self) -> Result<(), AggregatorError> {
        if self.tick_ms.is_zero() || self.tick_ms > Duration::from_secs(60) {
            return Err(AggregatorError::Settings {
                key: "AGGREGATOR_TICK_MS".into(),
                message: format!(
                    "{} is out of range: use 1..=60000 milliseconds",
                    self.tick_ms.as_millis()
                ),
            });
        }
        Ok(())
    }
}

/// The module twin's desired properties that this module understands. `$version` and `$metadata` are
/// ignored; any other key is reported back as unknown (not fatal, so a newer manifest does not stop an
/// older module).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TwinSettings {
    /// The Stream Analytics query text. Several `SELECT ... INTO` statements may follow each other.
    #[serde(default)]
    pub query: Option<String>,
    /// Event-ordering policy, as in an ASA job's "Event ordering" settings.
    #[serde(default)]
    pub event_policy: PolicySettings,
    /// Output that receives input messages that cannot be used, with the reason. Default `deadletter`.
    #[serde(default = "default_dead_letter")]
    pub dead_letter_output: String,
    /// Reference data for the query's JOINs without a time bound, by the name the query joins:
    /// `{"patients": {"path": "/data/patients.csv"}}` or `{"patients": {"rows": [...]}}`. Default:
    /// none. See [`crate::reference`].
    #[serde(default)]
    pub reference_data: std::collections::BTreeMap<String, crate::reference::ReferenceSetting>,
}

fn default_dead_letter() -> String {
    "deadletter".to_string()
}

/// ASA's event-ordering settings in the units its portal shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySettings {
    /// Events may arrive this many seconds out of order and are reordered. Default 0 (ASA's default).
    #[serde(default)]
    pub out_of_order_tolerance_secs: u64,
    /// Events may arrive this many seconds after their event time. Default 5 (ASA's default).
    #[serde(default = "default_late")]
    pub late_arrival_tolerance_secs: u64,
    /// What happens to events outside the tolerances: `Adjust` (their timestamp is moved, default) or `Drop`.
    #[serde(default = "default_action")]
    pub action: String,
    /// Events more than this many seconds ahead of their arrival are dropped (always, as in ASA);
    /// they go to the dead-letter output with the reason. Default 300.
    #[serde(default = "default_early")]
    pub early_arrival_limit_secs: u64,
}

fn default_late() -> u64 {
    5
}
fn default_early() -> u64 {
    300
}
fn default_action() -> String {
    "Adjust".to_string()
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            out_of_order_tolerance_secs: 0,
            late_arrival_tolerance_secs: default_late(),
            action: default_action(),
            early_arrival_limit_secs: default_early(),
        }
    }
}

impl PolicySettings {
    pub fn to_policy(&self) -> Result<EventPolicy, AggregatorError> {
        let action = match self.action.to_ascii_lowercase().as_str() {
            "adjust" => OrderingAction::Adjust,
            "drop" => OrderingAction::Drop,
            other => {
                return Err(AggregatorError::Settings {
                    key: "eventPolicy.action".into(),
                    message: format!("{other:?} is not an action: use \"Adjust\" or \"Drop\""),
                })
            }
        };
        Ok(EventPolicy {
            out_of_order_tolerance: Duration::from_secs(self.out_of_order_tolerance_secs),
            late_arrival_tolerance: Duration::from_secs(self.late_arrival_tolerance_secs),
            action,
            early_arrival_limit: Duration::from_secs(self.early_arrival_limit_secs),
        })
    }
}

impl TwinSettings {
    /// Reads the desired properties (the whole `desired` object of the twin, or a merged patch).
    /// Returns the settings and the keys that were ignored because this module does not know them.
    pub fn from_desired(
        desired: &serde_json::Value,
    ) -> Result<(TwinSettings, Vec<String>), AggregatorError> {
        let mut known = serde_json::Map::new();
        let mut unknown = Vec::new();
        if let Some(obj) = desired.as_object() {
            for (k, v) in obj {
                match k.as_str() {
                    "query" | "eventPolicy" | "deadLetterOutput" | "referenceData" => {
                        if !v.is_null() {
                            known.insert(k.clone(), v.clone());
                        }
                    }
                    k if k.starts_with('$') => {}
                    _ => unknown.push(k.clone()),
                }
            }
        }
        let settings: TwinSettings = serde_json::from_value(serde_json::Value::Object(known))
            .map_err(|e| AggregatorError::Settings {
                key: "desired properties".into(),
                message: e.to_string(),
            })?;
        settings.event_policy.to_policy()?;
        for (name, r) in &settings.reference_data {
            r.validate(name)?;
        }
        if settings.dead_letter_output.is_empty() {
            return Err(AggregatorError::Settings {
                key: "deadLetterOutput".into(),
                message: "must not be empty: name an output, e.g. \"deadletter\"".into(),
            });
        }
        Ok((settings, unknown))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(v: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        v.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn env_allow_list_and_defaults() {
        let s = Settings::from_vars(vars(&[("PATH", "/bin"), ("AGGREGATOR_QUERY", " ")])).unwrap();
        assert_eq!(s, Settings::default(), "a blank query is none");
        assert_eq!(s.tick_ms, Duration::from_millis(1000));
        let s = Settings::from_vars(vars(&[
            ("AGGREGATOR_QUERY", "SELECT * INTO o FROM i"),
            ("AGGREGATOR_STATE_DIR", "/data"),
            ("AGGREGATOR_TICK_MS", "250"),
            ("MQTT_PORT", "ignored"),
        ]))
        .unwrap();
        assert_eq!(s.query.as_deref(), Some("SELECT * INTO o FROM i"));
        assert_eq!(s.state_dir, PathBuf::from("/data"));
        assert_eq!(s.tick_ms, Duration::from_millis(250));
        // the documented list is the derived one
        let derived: Vec<String> = edge_module::layers::settings_of::<Settings>(&NAMES)
            .unwrap()
            .iter()
            .map(|s| s.env(NAMES.env_prefix))
            .collect();
        let mut derived = derived;
        derived.sort();
        assert_eq!(derived, Settings::ENV_VARS);
    }

    #[test]
    fn bad_tick_is_an_error_that_names_the_variable() {
        let e = Settings::from_vars(vars(&[("AGGREGATOR_TICK_MS", "fast")])).unwrap_err();
        assert!(e.to_string().contains("AGGREGATOR_TICK_MS"), "{e}");
        let e = Settings::from_vars(vars(&[("AGGREGATOR_TICK_MS", "0")])).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        // a misspelt variable is not ignored
        let e = Settings::from_vars(vars(&[("AGGREGATOR_TICKMS", "5")])).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("AGGREGATOR_TICKMS") && m.contains("AGGREGATOR_TICK_MS"),
            "{m}"
        );
    }

    #[test]
    fn twin_settings_ignore_metadata_and_report_unknown_keys() {
        let (s, unknown) = TwinSettings::from_desired(&json!({
            "query": "SELECT 1 INTO o FROM i", "$version": 3, "colour": "red",
            "eventPolicy": {"lateArrivalToleranceSecs": 15, "outOfOrderToleranceSecs": 8}
        }))
        .unwrap();
        assert_eq!(s.query.as_deref(), Some("SELECT 1 INTO o FROM i"));
        assert_eq!(unknown, vec!["colour".to_string()]);
        let p = s.event_policy.to_policy().unwrap();
        assert_eq!(p.late_arrival_tolerance, Duration::from_secs(15));
        assert_eq!(p.out_of_order_tolerance, Duration::from_secs(8));
        assert_eq!(s.dead_letter_output, "deadletter");
    }

    #[test]
    fn twin_settings_reject_bad_policy() {
        let e =
            TwinSettings::from_desired(&json!({"eventPolicy": {"action": "Panic"}})).unwrap_err();
        assert!(e.to_string().contains("Adjust"), "{e}");
        let e = TwinSettings::from_desired(&json!({"eventPolicy": {"lateArrivalTolerance": 3}}))
            .unwrap_err();
        assert!(e.to_string().contains("lateArrivalTolerance"), "{e}");
    }
}
