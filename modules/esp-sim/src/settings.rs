//! Settings: one `Settings` struct, layered by `edge-module`: defaults -> JSON file -> environment ->
//! command line -> twin desired properties. Every field documents its unit and default; every field is
//! also a flag and an `ESP_SIM_` variable of its name, and [`NAMES`] adds the older short names.
//! `validate` runs before anything starts and returns errors instead of panicking.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::SimError;

/// The names of the settings outside JSON, besides each field's own (`--interval-ms`,
/// `ESP_SIM_INTERVAL_MS`, `--faults-clock-skew`, `ESP_SIM_FAULTS_CLOCK_SKEW`): the short flags and
/// variables the README documents, and the deployment's `MQTT_HOST`/`MQTT_PORT`.
pub const NAMES: edge_module::Names = edge_module::Names {
    env_prefix: "ESP_SIM_",
    aliases: &[
        ("duration", "duration_s"),
        ("count", "messages_per_device"),
        ("client_id", "client_id_prefix"),
        ("fault_malformed", "faults.malformed_json"),
        ("fault_missing", "faults.missing_field"),
        ("fault_mistyped", "faults.mistyped_field"),
        ("fault_out_of_range", "faults.out_of_range"),
        ("fault_clock_skew", "faults.clock_skew"),
        ("max_skew", "faults.max_skew_s"),
        ("fault_disconnect", "faults.disconnect"),
        ("storm_every", "faults.storm_every_s"),
        ("storm_fraction", "faults.storm_fraction"),
    ],
    env: &[("MQTT_HOST", "host"), ("MQTT_PORT", "port")],
    file: true,
    help: &[
        ("host", "MQTT server host."),
        ("port", "MQTT server port."),
        ("mode", "seed | fleet | load."),
        ("devices", "Number of devices (fleet, load)."),
        ("interval_ms", "Milliseconds between two messages of one device (seed, fleet)."),
        ("rate", "Load mode: aggregate target rate, messages per second."),
        ("seed", "Random seed (reported in the summary when not given)."),
        ("sent_log", "Write every published message to this file as JSON lines."),
        ("duration_s", "Stop after this many seconds and print a summary."),
        ("messages_per_device", "Stop each device after this many messages."),
        ("start_time", "Simulated clock start (RFC 3339), for reproducible timestamps."),
        ("time_format", "rfc3339 | dotnet-invariant | dotnet-en-us (default: dotnet-invariant in seed mode, else rfc3339)."),
        ("topic", "Topic; `{device}` becomes the device id."),
        ("qos", "QoS 0, 1 or 2 (default: 2 in seed mode, else 1)."),
        ("retain", "Retain flag, true or false (default: true in seed mode, else false)."),
        ("client_id_prefix", "Client id prefix (also the fleet's deviceId prefix)."),
        ("mqtt5", "Speak MQTT 5 instead of 3.1.1 (true or false)."),
        ("keep_alive_s", "MQTT keep-alive, seconds."),
        ("reconnect_min_ms", "First reconnect delay, milliseconds (doubles, with jitter)."),
        ("reconnect_max_ms", "Largest reconnect delay, milliseconds."),
        ("drain_ms", "At shutdown, how long to wait for acknowledgements, milliseconds."),
        ("fever_per_day", "Fever episodes per patient per simulated day."),
        ("faults.malformed_json", "Fault rate: payload cut short (invalid JSON)."),
        ("faults.missing_field", "Fault rate: temp or timecreated missing."),
        ("faults.mistyped_field", "Fault rate: temp as a string or timecreated as a number."),
        ("faults.out_of_range", "Fault rate: temp outside 25..45 C."),
        ("faults.clock_skew", "Fault rate: timecreated late (and so out of order) by up to max_skew_s."),
        ("faults.max_skew_s", "Largest clock skew, seconds."),
        ("faults.disconnect", "Fault rate: abrupt disconnect after a message."),
        ("faults.storm_every_s", "Disconnect storm every this many seconds."),
        ("faults.storm_fraction", "Share of devices that drop in a storm."),
    ],
};

/// What the simulator does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The seed's simulated ESP8266: one client, `{"temp":<35..41>, "timecreated":"<DateTime.Now>"}`.
    #[default]
    Seed,
    /// `devices` patients, each its own MQTT connection, with a body-temperature model.
    Fleet,
    /// Like fleet, but the per-device interval is derived from `rate` (aggregate messages per second).
    Load,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "seed" => Ok(Mode::Seed),
            "fleet" => Ok(Mode::Fleet),
            "load" => Ok(Mode::Load),
            other => Err(format!("unknown mode `{other}`: use seed, fleet or load")),
        }
    }
}

/// How `timecreated` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeFormat {
    /// RFC 3339 UTC with milliseconds: `2026-11-24T08:05:03.123Z`.
    Rfc3339,
    /// .NET `DateTime.Now.ToString()` under the invariant culture: `MM/dd/yyyy HH:mm:ss` in local
    /// time (no zone). This is what the seed's container printed: the `microsoft/dotnet:2.0-runtime`
    /// images set no `LANG`/`LC_ALL`, and .NET Core on Linux then uses the invariant culture; the
    /// container's local time zone is UTC. Also accepted as `dotnet`.
    #[serde(alias = "dotnet")]
    DotnetInvariant,
    /// .NET `DateTime.Now.ToString()` under en-US: `M/d/yyyy h:mm:ss AM|PM` in local time.
    DotnetEnUs,
}

impl std::str::FromStr for TimeFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rfc3339" => Ok(TimeFormat::Rfc3339),
            "dotnet-invariant" | "dotnet" => Ok(TimeFormat::DotnetInvariant),
            "dotnet-en-us" => Ok(TimeFormat::DotnetEnUs),
            other => Err(format!(
                "unknown time format `{other}`: use rfc3339, dotnet-invariant or dotnet-en-us"
            )),
        }
    }
}

/// Faults injected on purpose. Payload faults (`malformed_json` .. `clock_skew`) are mutually
/// exclusive per message, so each rate is exactly that fault's probability; their sum must be <= 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Probability per message (0..=1) that the payload is cut short (not valid JSON). Default 0.
    pub malformed_json: f64,
    /// Probability per message that `temp` or `timecreated` is left out. Default 0.
    pub missing_field: f64,
    /// Probability per message that `temp` is a string or `timecreated` a number. Default 0.
    pub mistyped_field: f64,
    /// Probability per message that `temp` is outside the physiological range (< 25 or > 45 C). Default 0.
    pub out_of_range: f64,
    /// Probability per message that `timecreated` is late by 1 s..=`max_skew_s`, which also makes it
    /// out of order with the messages before it. Default 0.
    pub clock_skew: f64,
    /// Largest clock skew, seconds. Default 120.
    #[serde(default = "default_max_skew")]
    pub max_skew_s: f64,
    /// Probability per message that the device drops its TCP connection abruptly (no DISCONNECT)
    /// after the message is acknowledged, then reconnects with backoff. Default 0.
    pub disconnect: f64,
    /// Disconnect storms: every this many seconds (wall clock) each device drops its connection
    /// with probability `storm_fraction`. Default none (no storms).
    pub storm_every_s: Option<f64>,
    /// Share of the fleet (0..=1) that drops in a storm. Default 0.5.
    #[serde(default = "default_storm_fraction")]
    pub storm_fraction: f64,
}

fn default_max_skew() -> f64 {
    120.0
}
fn default_storm_fraction() -> f64 {
    0.5
}

/// All settings. JSON field names are the Rust names (snake_case); unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// MQTT server host name or address. Default `localhost` (env `MQTT_HOST`; under IoT Edge
    /// `MqttServerModule`).
    pub host: String,
    /// MQTT server TCP port. Default 1889 (env `MQTT_PORT`).
    pub port: u16,
    /// seed | fleet | load. Default seed.
    pub mode: Mode,
    /// Number of simulated devices (fleet and load; seed mode always runs one). Default 10.
    pub devices: u32,
    /// Milliseconds between two messages of one device (seed and fleet). Default 2000.
    pub interval_ms: u64,
    /// Load mode: target aggregate rate over the fleet, messages per second. Default 1000.
    pub rate: f64,
    /// Random seed; the same seed, settings and `start_time` give the same payloads byte for byte.
    /// Default none: a random seed is drawn and reported in the summary.
    pub seed: Option<u64>,
    /// File to write every published message to, one JSON object per line. Default none.
    pub sent_log: Option<PathBuf>,
    /// Stop by itself after this many seconds. Default none (run until shut down).
    pub duration_s: Option<f64>,
    /// Stop each device after it has published this many messages. Default none.
    pub messages_per_device: Option<u64>,
    /// Simulated clock: when set, message `k` of device `i` is stamped `start_time + phase(i) +
    /// k * interval` instead of the wall clock, so runs are reproducible. Default none (wall clock).
    pub start_time: Option<DateTime<Utc>>,
    /// Format of `timecreated`. Default: `dotnet-invariant` in seed mode, `rfc3339` otherwise.
    pub time_format: Option<TimeFormat>,
    /// Topic; `{device}` is replaced by the device id. Default `MyTopic` (the seed's).
    pub topic: String,
    /// Publish QoS 0, 1 or 2. Default: 2 in seed mode (the seed's), 1 otherwise (what edgeHub uses).
    pub qos: Option<u8>,
    /// Retain flag. Default: true in seed mode (the seed's), false otherwise.
    pub retain: Option<bool>,
    /// Client ids are `{prefix}` in seed mode and `{prefix}-{index:05}` otherwise; the fleet's
    /// `deviceId` is the client id. Default `esp-sim`.
    pub client_id_prefix: String,
    /// Speak MQTT 5 instead of 3.1.1 (clean start, no properties). Default false.
    pub mqtt5: bool,
    /// MQTT keep-alive, whole seconds. Default 30.
    #[serde(with = "edge_module::duration::secs")]
    pub keep_alive_s: Duration,
    /// First reconnect delay, milliseconds; doubles up to `reconnect_max_ms`, with jitter. Default 100.
    pub reconnect_min_ms: u64,
    /// Largest reconnect delay, milliseconds. Default 10000.
    pub reconnect_max_ms: u64,
    /// At shutdown, how long to wait for outstanding acknowledgements, milliseconds. Default 3000.
    #[serde(with = "edge_module::duration::millis")]
    pub drain_ms: Duration,
    /// Fleet temperature model: fever episodes per patient per simulated day. Default 0.2.
    pub fever_per_day: f64,
    /// Faults on purpose. Default none.
    pub faults: Faults,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host: "localhost".into(),
            port: 1889,
            mode: Mode::Seed,
            devices: 10,
            interval_ms: 2000,
            rate: 1000.0,
            seed: None,
            sent_log: None,
            duration_s: None,
            messages_per_device: None,
            start_time: None,
            time_format: None,
            topic: "MyTopic".into(),
            qos: None,
            retain: None,
            client_id_prefix: "esp-sim".into(),
            mqtt5: false,
            keep_alive_s: Duration::from_secs(30),
            reconnect_min_ms: 100,
            reconnect_max_ms: 10_000,
            drain_ms: Duration::from_millis(3000),
            fever_per_day: 0.2,
            faults: Faults {
                max_skew_s: default_max_skew(),
                storm_fraction: default_storm_fraction(),
                ..Faults::default()
            },
        }
    }
}

impl Settings {
    /// Number of devices actually simulated (1 in seed mode).
    pub fn device_count(&self) -> u32 {
        match self.mode {
            Mode::Seed => 1,
            _ => self.devices,
        }
    }

    /// Per-device interval in milliseconds (load mode derives it from `rate`).
    pub fn effective_interval_ms(&self) -> f64 {
        match self.mode {
            Mode::Load => f64::from(self.devices) * 1000.0 / self.rate,
            _ => self.interval_ms as f64,
        }
    }

    /// The QoS used, after mode defaults.
    pub fn effective_qos(&self) -> u8 {
        self.qos.unwrap_or(match self.mode {
            Mode::Seed => 2,
            _ => 1,
        })
    }

    /// The retain flag used, after mode defaults.
    pub fn effective_retain(&self) -> bool {
        self.retain.unwrap_or(self.mode == Mode::Seed)
    }

    /// The time format used, after mode defaults.
    pub fn effective_time_format(&self) -> TimeFormat {
        self.time_format.unwrap_or(match self.mode {
            Mode::Seed => TimeFormat::DotnetInvariant,
            _ => TimeFormat::Rfc3339,
        })
    }

    /// Parse a JSON settings document (a file, or twin desired properties without `$` keys).
    pub fn from_json(value: serde_json::Value) -> Result<Settings, SimError> {
        let s: Settings =
            serde_json::from_value(value).map_err(|e| SimError::Settings(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Apply a JSON merge patch (RFC 7396; twin desired properties work this way: `null` resets a
    /// field to its default). Keys starting with `$` (`$version`, `$metadata`) are ignored. Module
    /// builds only (the `module` feature): it is the twin loop's patch (`edge_module::twin`).
    #[cfg(feature = "module")]
    pub fn merged(&self, patch: &serde_json::Value) -> Result<Settings, SimError> {
        Ok(edge_module::twin::merged(self, patch)?)
    }

    /// Check every value before anything starts.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Settings(m));
        if self.host.trim().is_empty() {
            return bad("host is empty: set --host or MQTT_HOST".into());
        }
        if self.port == 0 {
            return bad("port 0 is not a server port: set --port or MQTT_PORT".into());
        }
        if self.mode != Mode::Seed && self.devices == 0 {
            return bad("devices is 0: set --devices to 1 or more".into());
        }
        if self.interval_ms == 0 && self.mode != Mode::Load {
            return bad("interval_ms is 0: set --interval-ms to 1 or more".into());
        }
        if self.mode == Mode::Load && !(self.rate.is_finite() && self.rate > 0.0) {
            return bad(format!(
                "rate {} is not a positive number: set --rate",
                self.rate
            ));
        }
        if let Some(q) = self.qos {
            if q > 2 {
                return bad(format!("qos {q} does not exist: use 0, 1 or 2"));
            }
        }
        if let Some(d) = self.duration_s {
            if !(d.is_finite() && d > 0.0) {
                return bad(format!(
                    "duration_s {d} must be a positive number of seconds"
                ));
            }
        }
        if self.topic.is_empty() || self.topic.contains('#') || self.topic.contains('+') {
            return bad(format!(
                "topic `{}` cannot be published to: give a non-empty name without + or #",
                self.topic
            ));
        }
        if self.client_id_prefix.is_empty() {
            return bad("client_id_prefix is empty: give a short name".into());
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return bad("reconnect_min_ms must be >= 1 and <= reconnect_max_ms".into());
        }
        if !(self.fever_per_day.is_finite() && self.fever_per_day >= 0.0) {
            return bad("fever_per_day must be a number >= 0".into());
        }
        let f = &self.faults;
        let rates = [
            ("malformed_json", f.malformed_json),
            ("missing_field", f.missing_field),
            ("mistyped_field", f.mistyped_field),
            ("out_of_range", f.out_of_range),
            ("clock_skew", f.clock_skew),
            ("disconnect", f.disconnect),
            ("storm_fraction", f.storm_fraction),
        ];
        for (name, r) in rates {
            if !(r.is_finite() && (0.0..=1.0).contains(&r)) {
                return bad(format!("fault rate {name} = {r} must be between 0 and 1"));
            }
        }
        let sum =
            f.malformed_json + f.missing_field + f.mistyped_field + f.out_of_range + f.clock_skew;
        if sum > 1.0 + 1e-9 {
            return bad(format!(
                "payload fault rates add up to {sum} > 1: they are exclusive per message, lower them"
            ));
        }
        if !(f.max_skew_s.is_finite() && f.max_skew_s >= 1.0) {
            return bad("max_skew_s must be at least 1 second".into());
        }
        if let Some(s) = f.storm_every_s {
            if !(s.is_finite() && s > 0.0) {
                return bad("storm_every_s must be a positive number of seconds".into());
            }
        }
        Ok(())
    }

    /// Whether going from `self` to `next` needs the devices to reconnect (a restart of the run);
    /// everything else is applied live.
    pub fn needs_restart(&self, next: &Settings) -> bool {
        self.host != next.host
            || self.port != next.port
            || self.mode != next.mode
            || self.devices != next.devices
            || self.seed != next.seed
            || self.sent_log != next.sent_log
            || self.client_id_prefix != next.client_id_prefix
            || self.keep_alive_s != next.keep_alive_s
            || self.mqtt5 != next.mqtt5
            || self.start_time != next.start_time
            || self.duration_s != next.duration_s
            || self.messages_per_device != next.messages_per_device
            || self.faults.storm_every_s != next.faults.storm_every_s
    }
}

impl edge_module::ModuleSettings for Settings {
    fn validate(&self) -> Result<(), String> {
        Settings::validate(self).map_err(|e| match e {
            SimError::Settings(m) => m,
            other => other.to_string(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_follow_the_seed() {
        let s = Settings::default();
        assert_eq!(s.mode, Mode::Seed);
        assert_eq!(s.port, 1889);
        assert_eq!(s.topic, "MyTopic");
        assert_eq!(s.effective_qos(), 2);
        assert!(s.effective_retain());
        assert_eq!(s.interval_ms, 2000);
        assert_eq!(s.effective_time_format(), TimeFormat::DotnetInvariant);
        assert!(s.validate().is_ok());
        let f = Settings {
            mode: Mode::Fleet,
            ..Settings::default()
        };
        assert_eq!(f.effective_qos(), 1);
        assert!(!f.effective_retain());
        assert_eq!(f.effective_time_format(), TimeFormat::Rfc3339);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = Settings::from_json(json!({"hots": "x"}));
        assert!(matches!(e, Err(SimError::Settings(m)) if m.contains("hots")));
        let e = Settings::from_json(json!({"faults": {"malformed": 0.1}}));
        assert!(e.is_err());
    }

    #[cfg(feature = "module")]
    #[test]
    fn merge_patch_applies_and_resets() {
        let s = Settings::default();
        let s2 = s
            .merged(&json!({"$version": 3, "interval_ms": 500, "faults": {"clock_skew": 0.2}}))
            .unwrap();
        assert_eq!(s2.interval_ms, 500);
        assert_eq!(s2.faults.clock_skew, 0.2);
        assert_eq!(s2.faults.max_skew_s, 120.0);
        let s3 = s2.merged(&json!({"interval_ms": null})).unwrap();
        assert_eq!(s3.interval_ms, 2000);
        assert!(!s.needs_restart(&s2));
        assert!(s.needs_restart(&s.merged(&json!({"port": 1883})).unwrap()));
    }

    #[test]
    fn validation_catches_bad_values() {
        let cases = [
            json!({"qos": 3}),
            json!({"port": 0}),
            json!({"mode": "fleet", "devices": 0}),
            json!({"mode": "load", "rate": 0.0}),
            json!({"faults": {"malformed_json": 0.6, "missing_field": 0.6}}),
            json!({"faults": {"disconnect": 1.5}}),
            json!({"topic": "a/#"}),
            json!({"duration_s": -1.0}),
        ];
        for c in cases {
            assert!(
                Settings::from_json(c.clone()).is_err(),
                "{c} should be refused"
            );
        }
    }

    #[test]
    fn load_interval_comes_from_rate() {
        let s = Settings {
            mode: Mode::Load,
            devices: 10_000,
            rate: 5000.0,
            ..Settings::default()
        };
        assert_eq!(s.effective_interval_ms(), 2000.0);
    }
}
