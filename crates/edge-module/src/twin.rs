//! The twin loop (feature `client`): the module twin's desired properties as the last settings
//! layer, applied live and reported back.
//!
//! A full twin (after every connect) is merged over the layered settings ([`Layered::value`]); a
//! desired patch over the settings in force. Both are edge-client's twin patches
//! ([`edge_client::twin::merge_with_defaults`]: `$` keys skipped; `null` removes a desired property,
//! so the setting falls back to its layered value, from the defaults, file, environment or flags,
//! the same value a full twin without that property gives after a reconnect). The result is deserialized and validated once; refused properties keep the previous
//! settings. Every desired document or patch is answered with one reported patch
//! `{settings: <in force>, error: <message or null>}` under the names the module's docs give
//! ([`Reported`]).

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};

use edge_client::{Event, Events, ModuleClient};

use crate::layers::{deserialize, Layer, Layered, ModuleSettings, SettingsError};

/// Where the settings and the error go in reported properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    /// A reported property that holds both (`{"mqttServer": {...}}`), or none: both at the top.
    pub under: Option<&'static str>,
    /// The name of the settings in force, e.g. `settings`.
    pub settings: &'static str,
    /// The name of the error (a string, or `null` when the last desired properties applied), e.g.
    /// `settingsError`.
    pub error: &'static str,
}

/// The settings in force and what the twin changes.
#[derive(Debug, Clone)]
pub struct TwinSettings<T> {
    /// The layered settings (defaults, file, environment, flags) as JSON: what a full twin goes
    /// over, and what a removed (`null`) desired property falls back to.
    base: Value,
    current: T,
}

impl<T: ModuleSettings + Clone> TwinSettings<T> {
    /// Starts from the layered settings (no twin yet).
    pub fn new(layered: &Layered<T>) -> Self {
        TwinSettings {
            base: layered.value().clone(),
            current: layered.settings().clone(),
        }
    }

    /// The settings in force.
    pub fn current(&self) -> &T {
        &self.current
    }

    /// The full twin's desired properties over the layered settings.
    pub fn apply_twin(&mut self, desired: &Value) -> Result<&T, SettingsError> {
        let base = self.base.clone();
        self.apply_over(base, desired)
    }

    /// A desired patch over the settings in force.
    pub fn apply_patch(&mut self, patch: &Value) -> Result<&T, SettingsError> {
        let base =
            serde_json::to_value(&self.current).map_err(|e| SettingsError::Type(e.to_string()))?;
        self.apply_over(base, patch)
    }

    fn apply_over(&mut self, base: Value, desired: &Value) -> Result<&T, SettingsError> {
        // a null falls back to the layered value, so a patch that removes a property gives the
        // settings a full twin without it gives (after a reconnect)
        self.current = over(base, desired, &self.base)?;
        Ok(&self.current)
    }

    /// Applies a [`Event::Twin`] or [`Event::DesiredPatch`]; `None` for other events.
    pub fn apply(&mut self, event: &Event) -> Option<Result<&T, SettingsError>> {
        match event {
            Event::Twin(twin) => Some(self.apply_twin(twin.get("desired").unwrap_or(&Value::Null))),
            Event::DesiredPatch(patch) => Some(self.apply_patch(patch)),
            _ => None,
        }
    }

    /// The reported patch for the settings in force and `error`.
    pub fn report(&self, names: &Reported, error: Option<&str>) -> Value
    where
        T: Serialize,
    {
        let mut m = Map::new();
        m.insert(
            names.settings.to_string(),
            serde_json::to_value(&self.current).unwrap_or(Value::Null),
        );
        m.insert(
            names.error.to_string(),
            error.map_or(Value::Null, |e| Value::String(e.to_string())),
        );
        match names.under {
            Some(key) => {
                let mut outer = Map::new();
                outer.insert(key.to_string(), Value::Object(m));
                Value::Object(outer)
            }
            None => Value::Object(m),
        }
    }
}

/// A desired patch over `current`, deserialized and validated: [`TwinSettings::apply_patch`] for one
/// value.
pub fn merged<T: ModuleSettings>(current: &T, patch: &Value) -> Result<T, SettingsError> {
    let type_err = |e: serde_json::Error| SettingsError::Type(e.to_string());
    let defaults = serde_json::to_value(T::default()).map_err(type_err)?;
    let base = serde_json::to_value(current).map_err(type_err)?;
    over(base, patch, &defaults)
}

fn over<T: ModuleSettings>(
    mut base: Value,
    desired: &Value,
    defaults: &Value,
) -> Result<T, SettingsError> {
    let empty = Value::Object(Map::new());
    let desired = if desired.is_null() { &empty } else { desired };
    if !desired.is_object() {
        return Err(SettingsError::NotAnObject {
            layer: Layer::Twin,
            found: crate::layers::kind(desired),
        });
    }
    edge_client::twin::merge_with_defaults(&mut base, desired, defaults);
    deserialize::<T>(&base, |_| Layer::Twin)
}

/// One answer of the twin loop to a desired document or patch.
#[derive(Debug, Clone, PartialEq)]
pub struct Update<T> {
    /// The settings in force (unchanged when `error` is set).
    pub settings: T,
    /// Why the last desired properties were refused.
    pub error: Option<String>,
    /// How many desired documents and patches the loop has handled; 0 before the first.
    pub seq: u64,
}

/// The running twin loop: the module watches `updates` and receives every other event (inputs,
/// methods, connection changes) on `events`. Both close when the client stops.
#[derive(Debug)]
pub struct TwinLoop<T> {
    pub updates: watch::Receiver<Update<T>>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the twin loop over `events`: it applies each desired document or patch, reports
/// `{settings, error}` with `client`, and publishes the settings in force on
/// [`TwinLoop::updates`].
pub fn spawn<T>(
    client: ModuleClient,
    mut events: Events,
    mut settings: TwinSettings<T>,
    names: Reported,
) -> TwinLoop<T>
where
    T: ModuleSettings + Clone + Send + Sync + 'static,
{
    let (tx, updates) = watch::channel(Update {
        settings: settings.current().clone(),
        error: None,
        seq: 0,
    });
    let (others_tx, others) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut seq = 0;
        while let Some(event) = events.recv().await {
            let Some(result) = settings.apply(&event) else {
                let _ = others_tx.send(event);
                continue;
            };
            let error = match result {
                Ok(_) => {
                    tracing::info!("settings from the module twin applied");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "module twin desired properties refused; the previous settings stay in force");
                    Some(e.to_string())
                }
            };
            let report = settings.report(&names, error.as_deref());
            if let Err(e) = client.update_reported(report).await {
                tracing::warn!(error = %e, "cannot report settings to the module twin");
            }
            seq += 1;
            let _ = tx.send(Update {
                settings: settings.current().clone(),
                error,
                seq,
            });
        }
        tracing::info!("edgeHub event stream ended; twin updates stop");
    });
    TwinLoop {
        updates,
        events: others,
        task,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::layers::{Builder, Layer};
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct S {
        /// Default 1.
        port: u16,
        /// Default "t".
        topic: String,
    }
    impl Default for S {
        fn default() -> Self {
            S {
                port: 1,
                topic: "t".into(),
            }
        }
    }
    impl ModuleSettings for S {
        fn validate(&self) -> Result<(), String> {
            if self.port == 0 {
                return Err("port 0: set 1 or more".into());
            }
            Ok(())
        }
    }

    fn twin() -> TwinSettings<S> {
        let mut b = Builder::<S>::new().unwrap();
        b.merge(&json!({"port": 7}), Layer::Env("T_PORT".into()))
            .unwrap();
        TwinSettings::new(&b.build().unwrap())
    }

    #[test]
    fn desired_goes_over_the_layers_and_patches_over_what_is_in_force() {
        let mut t = twin();
        t.apply_twin(&json!({"topic": "a", "$version": 2})).unwrap();
        assert_eq!(
            t.current(),
            &S {
                port: 7,
                topic: "a".into()
            }
        );
        t.apply_patch(&json!({"port": 9})).unwrap();
        assert_eq!(
            t.current(),
            &S {
                port: 9,
                topic: "a".into()
            }
        );
        // null falls back to the layers' value (here the default) ...
        t.apply_patch(&json!({"topic": null})).unwrap();
        assert_eq!(t.current().topic, "t");
        // ... also where the layers set one: the environment's, as after a reconnect's full twin
        t.apply_patch(&json!({"port": null})).unwrap();
        assert_eq!(t.current().port, 7);
        t.apply_patch(&json!({"port": 9})).unwrap();
        let after_patch = {
            t.apply_patch(&json!({"port": null})).unwrap();
            t.current().clone()
        };
        t.apply_twin(&json!({})).unwrap();
        assert_eq!(
            t.current(),
            &after_patch,
            "a patch's nulls and a full twin without those keys agree"
        );
        // a full twin starts again from the layers
        t.apply_twin(&json!({})).unwrap();
        assert_eq!(t.current().port, 7);
        // no desired properties at all
        t.apply(&Event::Twin(json!({"reported": {}})))
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_bad_patch_keeps_the_settings_and_reports_the_error() {
        let mut t = twin();
        t.apply_patch(&json!({"topic": "b"})).unwrap();
        for bad in [
            json!({"prot": 1}),
            json!({"port": "x"}),
            json!({"port": 0}),
            json!([1]),
        ] {
            let e = t.apply_patch(&bad).unwrap_err().to_string();
            assert_eq!(
                t.current(),
                &S {
                    port: 7,
                    topic: "b".into()
                },
                "{bad}"
            );
            let names = Reported {
                under: None,
                settings: "settings",
                error: "settingsError",
            };
            let r = t.report(&names, Some(&e));
            assert_eq!(r["settings"]["topic"], "b");
            assert!(r["settingsError"].is_string());
        }
        let e = t.apply_patch(&json!({"prot": 1})).unwrap_err().to_string();
        assert!(e.contains("twin") && e.contains("prot"), "{e}");
        let names = Reported {
            under: Some("mod"),
            settings: "s",
            error: "error",
        };
        assert_eq!(
            t.report(&names, None),
            json!({"mod": {"s": {"port": 7, "topic": "b"}, "error": null}})
        );
    }
}
