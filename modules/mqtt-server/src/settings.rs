//! Settings: layered by edge-module (defaults -> `--settings`/`--config` JSON file -> `MQTT_*`
//! environment -> flags), then, at run time, the module twin's desired properties for the fields
//! that may change live ([`Routing`]). Each field's doc gives its default and its variable; the
//! flag is the field's name with dashes (`--max-payload`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Error;

/// One topic-to-output mapping: publishes whose topic matches `filter` go to `output`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicOutput {
    /// An MQTT topic filter (`+` and `#` allowed), e.g. `patients/+/temperature`.
    pub filter: String,
    /// The edgeHub output name, e.g. `temperature`.
    pub output: String,
}

/// All settings of the module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the plain MQTT listener binds. Default `0.0.0.0`. Env `MQTT_BIND_ADDRESS`.
    pub bind_address: String,
    /// Port of the plain MQTT listener. Default 1889. Env `MQTT_PORT`.
    pub port: u16,
    /// Port of the optional TLS listener; `None` (default) disables it. Env `MQTT_TLS_PORT`.
    pub tls_port: Option<u16>,
    /// PEM certificate chain for the TLS listener. Env `MQTT_TLS_CERT`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listener. Env `MQTT_TLS_KEY`.
    pub tls_key: Option<PathBuf>,
    /// Port of the Prometheus `/metrics` endpoint; 0 disables it. Default 9600. Env `MQTT_METRICS_PORT`.
    pub metrics_port: u16,
    /// edgeHub output for messages no topic mapping matches. Default `output1`. Env `MQTT_OUTPUT`.
    /// Twin: `output`.
    pub output: String,
    /// Topic-to-output mappings, first match wins. Default none. Env `MQTT_TOPIC_OUTPUTS` as
    /// `filter=output;filter=output` (that text is accepted in the file too).
    /// Twin: `topicOutputs` as `{"filter": "output"}`.
    #[serde(deserialize_with = "topic_outputs_from")]
    pub topic_outputs: Vec<TopicOutput>,
    /// Add `"deviceId": <client id>` to JSON-object bodies that lack it. Default false.
    /// Env `MQTT_ENRICH_DEVICE_ID`. Twin: `enrichDeviceId`.
    pub enrich_device_id: bool,
    /// Largest accepted publish payload, bytes (edgeHub's own limit). Default 262,144.
    /// Env `MQTT_MAX_PAYLOAD`. Twin: `maxPayload`.
    pub max_payload: usize,
    /// Most simultaneous client connections; more are closed at once. Default 1000.
    /// Env `MQTT_MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// Most unacknowledged QoS 1/2 publishes per client connection (MQTT 5 receive maximum);
    /// past it the server stops reading that socket. Default 32. Env `MQTT_MAX_INFLIGHT`.
    pub max_inflight: u16,
    /// Bound of the forwarding buffer, messages (queued plus in flight to edgeHub). Past it the
    /// server stops reading from device sockets (back-pressure). Default 10,000.
    /// Env `MQTT_BUFFER_MESSAGES`.
    pub buffer_messages: usize,
    /// Bound of the forwarding buffer, payload bytes. Default 16,777,216 (16 MiB).
    /// Env `MQTT_BUFFER_BYTES`.
    pub buffer_bytes: usize,
    /// Messages sent to edgeHub concurrently (pipelined, each awaits its PUBACK). Default 16.
    /// Env `MQTT_FORWARD_CONCURRENCY`.
    pub forward_concurrency: usize,
    /// First retry delay after edgeHub refused or failed a send, milliseconds (doubles up to
    /// 30 s). Default 500. Env `MQTT_FORWARD_RETRY_MS`.
    pub forward_retry_ms: u64,
    /// Seconds to wait for edgeHub's acknowledgement of one send before retrying it (a retry
    /// may duplicate; at-least-once). 0 (default): wait as long as it takes, because
    /// `edge_client` itself keeps and resends unacknowledged messages across reconnects.
    /// Env `MQTT_FORWARD_TIMEOUT`.
    pub forward_timeout_secs: u64,
    /// Seconds a new connection has to send CONNECT. Default 10. Env `MQTT_CONNECT_TIMEOUT`.
    pub connect_timeout_secs: u64,
    /// Seconds a write to a client may block (a client that never reads) before it is
    /// disconnected. Default 30. Env `MQTT_WRITE_TIMEOUT`.
    pub write_timeout_secs: u64,
    /// Messages queued per subscriber (online or offline persistent session) before QoS 0 ones
    /// are dropped and a connected slow subscriber is disconnected. Default 1000.
    /// Env `MQTT_SESSION_QUEUE`.
    pub session_queue: usize,
    /// Bytes (payload and topic) all sessions together may queue for subscribers that are away or
    /// slow; past it QoS 1/2 messages for them are dropped and counted. Default 67,108,864
    /// (64 MiB). Env `MQTT_OFFLINE_BYTES`.
    pub offline_bytes: usize,
    /// Most retained messages held (distinct topics); more are not stored (still forwarded).
    /// Default 10,000. Env `MQTT_MAX_RETAINED`.
    pub max_retained: usize,
    /// Seconds a persistent session survives after its client left. Default 86,400 (1 day).
    /// Env `MQTT_SESSION_EXPIRY`.
    pub session_expiry_secs: u64,
    /// Mosquitto's password file (`mosquitto_passwd` manages it: `user:$7$...` lines, or `$6$`),
    /// or `user:sha256:<hex>` lines; when set, every client must log in. Default none. Env
    /// `MQTT_AUTH_FILE`.
    pub auth_file: Option<PathBuf>,
    /// Accept plain-text passwords in the auth file. Default false: only hashed lines
    /// (`mosquitto_passwd`'s `$7$` and `$6$`, or `sha256:<hex>`). Env `MQTT_AUTH_ALLOW_PLAIN`.
    pub auth_allow_plain: bool,
    /// Mosquitto's ACL file (`user <name>`, `topic [read|write|readwrite|deny] <filter>` and
    /// `pattern ...` lines with `%c`/`%u`; the rules are in [`crate::acl`] and the README's
    /// "Access control"); when set, a client may publish and subscribe only where its lines allow,
    /// and a file that cannot be read stops the module at start naming the line. Default none
    /// (no access control: every client may publish and subscribe to every topic). Env
    /// `MQTT_ACL_FILE`.
    pub acl_file: Option<PathBuf>,
    /// File of the durable spool (redb). When set, a device's QoS 1/2 publish is acknowledged
    /// once committed there (not only after edgeHub acknowledged it), and what a crash left is
    /// forwarded at the next start. Default none (memory only). Env `MQTT_SPOOL_PATH`.
    pub spool_path: Option<PathBuf>,
    /// File (redb) that keeps persistent device sessions (subscriptions, queued messages) and
    /// retained messages across restarts of the module. Default none (memory only: they survive
    /// reconnects, not a restart). Env `MQTT_STATE_PATH`.
    pub state_path: Option<PathBuf>,
    /// Seconds to wait on shutdown for messages in flight to edgeHub (and to send their
    /// devices the acknowledgements, so they need not resend). Default 5.
    /// Env `MQTT_SHUTDOWN_GRACE`.
    pub shutdown_grace_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind_address: "0.0.0.0".into(),
            port: 1889,
            tls_port: None,
            tls_cert: None,
            tls_key: None,
            metrics_port: 9600,
            output: "output1".into(),
            topic_outputs: Vec::new(),
            enrich_device_id: false,
            max_payload: 262_144,
            max_connections: 1000,
            max_inflight: 32,
            buffer_messages: 10_000,
            buffer_bytes: 16 * 1024 * 1024,
            forward_concurrency: 16,
            forward_retry_ms: 500,
            forward_timeout_secs: 0,
            connect_timeout_secs: 10,
            write_timeout_secs: 30,
            session_queue: 1000,
            offline_bytes: 64 * 1024 * 1024,
            max_retained: 10_000,
            session_expiry_secs: 86_400,
            auth_file: None,
            auth_allow_plain: false,
            acl_file: None,
            spool_path: None,
            state_path: None,
            shutdown_grace_secs: 5,
        }
    }
}

/// How the settings are named outside JSON: the flag `--max-payload` and the variable
/// `MQTT_MAX_PAYLOAD` for `max_payload`, and so on for every field (edge-module derives them). The
/// aliases keep the variable names this module has always read for the settings measured in
/// seconds (`MQTT_CONNECT_TIMEOUT` for `connect_timeout_secs`). Every other `MQTT_*` variable is an
/// error that lists the valid ones, so a misspelt variable does not go unnoticed.
pub const NAMES: edge_module::Names = edge_module::Names {
    env_prefix: "MQTT_",
    aliases: &[
        ("forward_timeout", "forward_timeout_secs"),
        ("connect_timeout", "connect_timeout_secs"),
        ("write_timeout", "write_timeout_secs"),
        ("session_expiry", "session_expiry_secs"),
        ("shutdown_grace", "shutdown_grace_secs"),
    ],
    env: &[],
    file: true,
    help: &[
        ("bind_address", "Address the MQTT listeners bind."),
        ("port", "Port of the plain MQTT listener."),
        (
            "tls_port",
            "Port of the TLS listener (needs tls_cert and tls_key).",
        ),
        ("tls_cert", "PEM certificate chain of the TLS listener."),
        ("tls_key", "PEM private key of the TLS listener."),
        (
            "metrics_port",
            "Port of /metrics (Prometheus); 0 turns it off.",
        ),
        (
            "output",
            "edgeHub output of publishes no topic mapping matches.",
        ),
        (
            "topic_outputs",
            "Topic-to-output mappings, first match wins: `filter=output;filter=output`.",
        ),
        (
            "enrich_device_id",
            "Add \"deviceId\": <client id> to JSON bodies that lack it.",
        ),
        ("max_payload", "Largest accepted publish payload, bytes."),
        ("max_connections", "Most simultaneous client connections."),
        (
            "max_inflight",
            "Most unacknowledged QoS 1/2 publishes per connection.",
        ),
        ("buffer_messages", "Forwarding buffer bound, messages."),
        ("buffer_bytes", "Forwarding buffer bound, payload bytes."),
        (
            "forward_concurrency",
            "Messages in flight to edgeHub at once.",
        ),
        (
            "forward_retry_ms",
            "First retry delay after edgeHub failed a send, ms.",
        ),
        (
            "forward_timeout_secs",
            "Seconds to wait for edgeHub's acknowledgement of a send; 0 waits.",
        ),
        (
            "connect_timeout_secs",
            "Seconds a new connection has to send CONNECT.",
        ),
        (
            "write_timeout_secs",
            "Seconds a write to a client may block.",
        ),
        ("session_queue", "Messages queued per subscriber."),
        (
            "offline_bytes",
            "Bytes all sessions may queue for absent or slow subscribers.",
        ),
        ("max_retained", "Most retained messages held."),
        (
            "session_expiry_secs",
            "Seconds a persistent session outlives its client.",
        ),
        (
            "auth_file",
            "Password file (mosquitto_passwd); every client must log in.",
        ),
        (
            "auth_allow_plain",
            "Accept plain-text passwords in the auth file.",
        ),
        ("acl_file", "ACL file (mosquitto's format)."),
        (
            "spool_path",
            "Durable spool file (acknowledge once committed there).",
        ),
        (
            "state_path",
            "File of persistent sessions and retained messages.",
        ),
        (
            "shutdown_grace_secs",
            "Seconds to wait on shutdown for messages in flight.",
        ),
    ],
};

/// Parses `filter=output;filter=output` (the last `=` splits, so filters may contain `=`).
pub fn parse_topic_outputs(v: &str) -> Result<Vec<TopicOutput>, Error> {
    let mut out = Vec::new();
    for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((filter, output)) = part.rsplit_once('=') else {
            return Err(Error::Setting {
                name: "topic_outputs".into(),
                reason: format!("{part:?} is not filter=output"),
            });
        };
        out.push(TopicOutput {
            filter: filter.trim().to_string(),
            output: output.trim().to_string(),
        });
    }
    Ok(out)
}

/// `topic_outputs` is a list of `{"filter", "output"}` in JSON, or (as an environment variable or
/// flag has it) the text `filter=output;filter=output`.
fn topic_outputs_from<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<TopicOutput>, D::Error> {
    struct Form;
    impl<'de> serde::de::Visitor<'de> for Form {
        type Value = Vec<TopicOutput>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(
                "a list of {\"filter\", \"output\"} or the text filter=output;filter=output",
            )
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_topic_outputs(v).map_err(E::custom)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            // each element as a TopicOutput, so that a misspelt field is named in the error
            let mut out = Vec::new();
            while let Some(t) = seq.next_element::<TopicOutput>()? {
                out.push(t);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Form)
}

impl edge_module::ModuleSettings for Settings {
    fn validate(&self) -> Result<(), String> {
        self.check().map_err(|e| e.to_string())
    }
}

impl Settings {
    /// Checks every limit; returns the first problem found.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |name: &str, reason: &str| {
            Err(Error::Setting {
                name: name.to_string(),
                reason: reason.to_string(),
            })
        };
        if self.output.is_empty() || self.output.contains('/') {
            return bad(
                "output",
                "must be a non-empty edgeHub output name without '/'",
            );
        }
        for m in &self.topic_outputs {
            if !rumqttc::mqttbytes::valid_filter(&m.filter) {
                return bad(
                    "topic_outputs",
                    &format!("{:?} is not a valid MQTT topic filter", m.filter),
                );
            }
            if m.output.is_empty() || m.output.contains('/') {
                return bad(
                    "topic_outputs",
                    &format!("output {:?} must be a name without '/'", m.output),
                );
            }
        }
        if self.max_payload == 0 || self.max_payload > 268_435_455 - 65_541 {
            return bad("max_payload", "must be between 1 and 268,369,914 bytes");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.max_inflight == 0 {
            return bad("max_inflight", "must be between 1 and 65535");
        }
        if self.buffer_messages == 0 {
            return bad("buffer_messages", "must be at least 1");
        }
        if self.buffer_bytes < self.max_payload {
            return bad(
                "buffer_bytes",
                "must be at least max_payload, or no large message could ever pass",
            );
        }
        if self.buffer_bytes > u32::MAX as usize {
            return bad("buffer_bytes", "must be at most 4,294,967,295");
        }
        if self.forward_concurrency == 0 {
            return bad("forward_concurrency", "must be at least 1");
        }
        if self.session_queue == 0 {
            return bad("session_queue", "must be at least 1");
        }
        if self.tls_port.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return bad(
                "tls_port",
                "a TLS listener needs tls_cert and tls_key (PEM files)",
            );
        }
        Ok(())
    }

    /// The live part of the settings (what the twin may change).
    pub fn routing(&self) -> Routing {
        Routing {
            output: self.output.clone(),
            topic_outputs: self.topic_outputs.clone(),
            enrich_device_id: self.enrich_device_id,
            max_payload: self.max_payload,
        }
    }
}

/// Settings that may change while running (from the module twin's desired properties).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub output: String,
    pub topic_outputs: Vec<TopicOutput>,
    pub enrich_device_id: bool,
    pub max_payload: usize,
}

impl Routing {
    /// The output for a topic: first matching mapping, else the default output.
    pub fn output_for(&self, topic: &str) -> &str {
        for m in &self.topic_outputs {
            if rumqttc::mqttbytes::matches(topic, &m.filter) {
                return &m.output;
            }
        }
        &self.output
    }

    /// Applies desired properties from the module twin. Keys: `output` (string),
    /// `topicOutputs` (object filter -> output), `enrichDeviceId` (bool), `maxPayload` (number,
    /// bytes, at most `hard_max_payload`).
    ///
    /// `full` is the whole `desired` section (sent after every connect): keys it lacks fall back
    /// to `base` (defaults, file and environment). Otherwise `desired` is a patch with JSON merge
    /// semantics: a key set to null falls back to `base`, and inside `topicOutputs` a filter set
    /// to null is removed. Twin mappings are tried most specific first (no wildcard, then `+`,
    /// then `#`). Keys starting with `$` are ignored; unknown keys are ignored and listed in the
    /// returned warnings. On any invalid value nothing changes.
    pub fn apply_desired(
        &mut self,
        desired: &serde_json::Value,
        base: &Routing,
        full: bool,
        hard_max_payload: usize,
    ) -> Result<Vec<String>, Error> {
        let Some(obj) = desired.as_object() else {
            return Err(Error::Setting {
                name: "desired".into(),
                reason: "desired properties must be a JSON object".into(),
            });
        };
        let mut next = if full { base.clone() } else { self.clone() };
        let mut warnings = Vec::new();
        let bad = |name: &str, reason: &str| Error::Setting {
            name: format!("desired.{name}"),
            reason: reason.to_string(),
        };
        for (k, v) in obj {
            match k.as_str() {
                "output" if v.is_null() => next.output = base.output.clone(),
                "output" => {
                    let s = v.as_str().ok_or_else(|| bad(k, "must be a string"))?;
                    if s.is_empty() || s.contains('/') {
                        return Err(bad(k, "must be an output name without '/'"));
                    }
                    next.output = s.to_string();
                }
                "topicOutputs" if v.is_null() => next.topic_outputs = base.topic_outputs.clone(),
                "topicOutputs" => {
                    let m = v
                        .as_object()
                        .ok_or_else(|| bad(k, "must be an object {\"filter\": \"output\"}"))?;
                    let mut map: BTreeMap<String, String> = if full {
                        BTreeMap::new()
                    } else {
                        next.topic_outputs
                            .iter()
                            .map(|t| (t.filter.clone(), t.output.clone()))
                            .collect()
                    };
                    for (filter, out) in m {
                        if filter.starts_with('$') {
                            continue;
                        }
                        if out.is_null() {
                            map.remove(filter);
                            continue;
                        }
                        let out = out
                            .as_str()
                            .ok_or_else(|| bad(k, "outputs must be strings"))?;
                        if !rumqttc::mqttbytes::valid_filter(filter) {
                            return Err(bad(k, &format!("{filter:?} is not a valid topic filter")));
                        }
                        if out.is_empty() || out.contains('/') {
                            return Err(bad(
                                k,
                                &format!("output {out:?} must be a name without '/'"),
                            ));
                        }
                        map.insert(filter.clone(), out.to_string());
                    }
                    let mut list: Vec<TopicOutput> = map
                        .into_iter()
                        .map(|(filter, output)| TopicOutput { filter, output })
                        .collect();
                    list.sort_by_key(|t| {
                        (
                            t.filter.contains('#'),
                            t.filter.matches('+').count(),
                            t.filter.clone(),
                        )
                    });
                    next.topic_outputs = list;
                }
                "enrichDeviceId" if v.is_null() => next.enrich_device_id = base.enrich_device_id,
                "enrichDeviceId" => {
                    next.enrich_device_id =
                        v.as_bool().ok_or_else(|| bad(k, "must be true or false"))?;
                }
                "maxPayload" if v.is_null() => next.max_payload = base.max_payload,
                "maxPayload" => {
                    let n = v
                        .as_u64()
                        .ok_or_else(|| bad(k, "must be a positive number of bytes"))?;
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    if n == 0 || n > hard_max_payload {
                        return Err(bad(
                            k,
                            &format!("must be between 1 and {hard_max_payload} bytes"),
                        ));
                    }
                    next.max_payload = n;
                }
                other if other.starts_with('$') => {}
                other => warnings.push(format!("unknown desired property {other:?} ignored")),
            }
        }
        *self = next;
        Ok(warnings)
    }

    /// What the module reports back in its reported properties.
    pub fn reported(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .topic_outputs
            .iter()
            .map(|m| {
                (
                    m.filter.clone(),
                    serde_json::Value::String(m.output.clone()),
                )
            })
            .collect();
        serde_json::json!({
            "output": self.output,
            "topicOutputs": map,
            "enrichDeviceId": self.enrich_device_id,
            "maxPayload": self.max_payload,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use edge_module::{Builder, SettingsError};
    use std::ffi::OsString;

    /// The settings the layers give for `vars` as the process environment.
    fn from_env(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let mut b = Builder::<Settings>::new()?;
        b.env(
            &NAMES,
            vars.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )?;
        Ok(b.build()?.into_settings())
    }

    #[test]
    fn defaults_are_valid() {
        let s = Settings::default();
        assert!(s.check().is_ok());
        assert_eq!(s.port, 1889);
        assert_eq!(s.max_payload, 262_144);
        assert_eq!(s.output, "output1");
    }

    /// Every variable this module read before it used edge-module still sets what it set.
    #[test]
    fn every_env_var_is_applied() {
        let env: Vec<(&str, &str)> = vec![
            ("MQTT_BIND_ADDRESS", "127.0.0.1"),
            ("MQTT_PORT", "1999"),
            ("MQTT_TLS_PORT", "8883"),
            ("MQTT_TLS_CERT", "/c.pem"),
            ("MQTT_TLS_KEY", "/k.pem"),
            ("MQTT_METRICS_PORT", "0"),
            ("MQTT_OUTPUT", "out9"),
            (
                "MQTT_TOPIC_OUTPUTS",
                "patients/+/temperature=temperature; a/#=b",
            ),
            ("MQTT_ENRICH_DEVICE_ID", "true"),
            ("MQTT_MAX_PAYLOAD", "1000"),
            ("MQTT_MAX_CONNECTIONS", "7"),
            ("MQTT_MAX_INFLIGHT", "3"),
            ("MQTT_BUFFER_MESSAGES", "11"),
            ("MQTT_BUFFER_BYTES", "5000"),
            ("MQTT_FORWARD_CONCURRENCY", "2"),
            ("MQTT_FORWARD_RETRY_MS", "10"),
            ("MQTT_FORWARD_TIMEOUT", "9"),
            ("MQTT_CONNECT_TIMEOUT", "4"),
            ("MQTT_WRITE_TIMEOUT", "6"),
            ("MQTT_SESSION_QUEUE", "12"),
            ("MQTT_OFFLINE_BYTES", "14"),
            ("MQTT_MAX_RETAINED", "13"),
            ("MQTT_SESSION_EXPIRY", "60"),
            ("MQTT_AUTH_FILE", "/auth"),
            ("MQTT_AUTH_ALLOW_PLAIN", "true"),
            ("MQTT_ACL_FILE", "/acl"),
            ("MQTT_SPOOL_PATH", "/data/spool.redb"),
            ("MQTT_STATE_PATH", "/data/state.redb"),
            ("MQTT_SHUTDOWN_GRACE", "1"),
        ];
        let s = from_env(&env).unwrap();
        let expected = Settings {
            bind_address: "127.0.0.1".into(),
            port: 1999,
            tls_port: Some(8883),
            tls_cert: Some("/c.pem".into()),
            tls_key: Some("/k.pem".into()),
            metrics_port: 0,
            output: "out9".into(),
            topic_outputs: vec![
                TopicOutput {
                    filter: "patients/+/temperature".into(),
                    output: "temperature".into(),
                },
                TopicOutput {
                    filter: "a/#".into(),
                    output: "b".into(),
                },
            ],
            enrich_device_id: true,
            max_payload: 1000,
            max_connections: 7,
            max_inflight: 3,
            buffer_messages: 11,
            buffer_bytes: 5000,
            forward_concurrency: 2,
            forward_retry_ms: 10,
            forward_timeout_secs: 9,
            connect_timeout_secs: 4,
            write_timeout_secs: 6,
            session_queue: 12,
            offline_bytes: 14,
            max_retained: 13,
            session_expiry_secs: 60,
            auth_file: Some("/auth".into()),
            auth_allow_plain: true,
            acl_file: Some("/acl".into()),
            spool_path: Some("/data/spool.redb".into()),
            state_path: Some("/data/state.redb".into()),
            shutdown_grace_secs: 1,
        };
        assert_eq!(s, expected);
        assert!(s.check().is_ok());
        // the field names work as well, and the boolean words of environment files
        let s = from_env(&[
            ("MQTT_CONNECT_TIMEOUT_SECS", "3"),
            ("MQTT_ENRICH_DEVICE_ID", "yes"),
            ("MQTT_AUTH_ALLOW_PLAIN", "0"),
        ])
        .unwrap();
        assert_eq!(s.connect_timeout_secs, 3);
        assert!(s.enrich_device_id);
        assert!(!s.auth_allow_plain);
    }

    #[test]
    fn bad_env_values_are_errors_that_name_the_variable() {
        let m = from_env(&[("MQTT_PORT", "x")]).unwrap_err().to_string();
        assert!(m.contains("MQTT_PORT"), "{m}");
        let m = from_env(&[("MQTT_ENRICH_DEVICE_ID", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(m.contains("MQTT_ENRICH_DEVICE_ID"), "{m}");
        let m = from_env(&[("MQTT_TOPIC_OUTPUTS", "nooutput")])
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("MQTT_TOPIC_OUTPUTS") && m.contains("not filter=output"),
            "{m}"
        );
        // a limit that deserializes but makes no sense is refused with the setting's name
        let m = from_env(&[("MQTT_MAX_PAYLOAD", "0")])
            .unwrap_err()
            .to_string();
        assert!(m.contains("max_payload"), "{m}");
    }

    #[test]
    fn a_misspelt_variable_is_refused_with_the_valid_names() {
        let m = from_env(&[("MQTT_PROT", "1999")]).unwrap_err().to_string();
        assert!(
            m.contains("MQTT_PROT") && m.contains("MQTT_PORT") && m.contains("MQTT_SETTINGS"),
            "{m}"
        );
        // variables of other programs are not ours
        assert!(from_env(&[("PATH", "/bin"), ("IOTEDGE_MODULEID", "m")]).is_ok());
    }

    #[test]
    fn unknown_file_fields_are_refused() {
        assert!(serde_json::from_str::<Settings>(r#"{"prot": 1}"#).is_err());
        let s: Settings = serde_json::from_str(r#"{"port": 1, "output": "o"}"#).expect("valid");
        assert_eq!(s.port, 1);
        assert_eq!(s.max_payload, 262_144);
        // the mappings as a list, or as the variable's text
        let s: Settings =
            serde_json::from_str(r#"{"topic_outputs": [{"filter": "a/#", "output": "x"}]}"#)
                .unwrap();
        let t: Settings = serde_json::from_str(r#"{"topic_outputs": "a/#=x"}"#).unwrap();
        assert_eq!(s, t);
        assert_eq!(s.topic_outputs.len(), 1);
        let e = serde_json::from_str::<Settings>(
            r#"{"topic_outputs": [{"filtr": "a/#", "output": "x"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("filtr"), "{e}");
        assert!(serde_json::from_str::<Settings>(r#"{"topic_outputs": 5}"#).is_err());
    }

    #[test]
    fn validation_catches_bad_limits() {
        let mut s = Settings {
            max_payload: 0,
            ..Settings::default()
        };
        assert!(s.check().is_err());
        s = Settings {
            buffer_bytes: 10,
            ..Settings::default()
        };
        assert!(s.check().is_err());
        s = Settings {
            topic_outputs: vec![TopicOutput {
                filter: "a/#/b".into(),
                output: "o".into(),
            }],
            ..Settings::default()
        };
        assert!(s.check().is_err());
        s = Settings {
            tls_port: Some(8883),
            ..Settings::default()
        };
        assert!(s.check().is_err());
    }

    #[test]
    fn topic_mapping_first_match_then_default() {
        let r = Routing {
            topic_outputs: parse_topic_outputs(
                "patients/+/temperature=temperature;patients/#=other",
            )
            .expect("parses"),
            ..Settings::default().routing()
        };
        assert_eq!(r.output_for("patients/p1/temperature"), "temperature");
        assert_eq!(r.output_for("patients/p1/pulse"), "other");
        assert_eq!(r.output_for("MyTopic"), "output1");
    }

    #[test]
    fn desired_properties_apply_atomically() {
        let base = Settings::default().routing();
        let mut r = base.clone();
        let w = r
            .apply_desired(
                &serde_json::json!({"output": "o2", "enrichDeviceId": true,
                    "topicOutputs": {"patients/#": "all", "patients/+/temperature": "temperature"},
                    "maxPayload": 1000, "$version": 3, "foo": 1}),
                &base,
                true,
                262_144,
            )
            .expect("applies");
        assert_eq!(w.len(), 1);
        assert_eq!(r.output, "o2");
        assert!(r.enrich_device_id);
        assert_eq!(r.max_payload, 1000);
        // the more specific filter is tried first whatever the twin's key order
        assert_eq!(r.output_for("patients/x/temperature"), "temperature");
        assert_eq!(r.output_for("patients/x/pulse"), "all");
        let before = r.clone();
        assert!(r
            .apply_desired(
                &serde_json::json!({"output": "fine", "maxPayload": 10_000_000}),
                &base,
                false,
                262_144
            )
            .is_err());
        assert_eq!(r, before);
        assert_eq!(r.reported()["output"], "o2");
    }

    #[test]
    fn patches_merge_and_full_twins_replace() {
        let base = Routing {
            topic_outputs: parse_topic_outputs("env/#=envout").expect("parses"),
            ..Settings::default().routing()
        };
        let mut r = base.clone();
        r.apply_desired(
            &serde_json::json!({"topicOutputs": {"a/#": "x"}, "output": "o2"}),
            &base,
            false,
            262_144,
        )
        .expect("patch");
        assert_eq!(r.output_for("a/b"), "x");
        assert_eq!(
            r.output_for("env/1"),
            "envout",
            "a patch merges into the mappings"
        );
        r.apply_desired(
            &serde_json::json!({"topicOutputs": {"a/#": null}, "output": null}),
            &base,
            false,
            262_144,
        )
        .expect("patch");
        assert_eq!(r.output_for("a/b"), "output1", "null removes a mapping");
        assert_eq!(r.output, "output1", "null falls back to the base");
        r.apply_desired(
            &serde_json::json!({"topicOutputs": {"b/#": "y"}}),
            &base,
            true,
            262_144,
        )
        .expect("full");
        assert_eq!(
            r.output_for("env/1"),
            "output1",
            "a full twin replaces the mappings"
        );
        assert_eq!(r.output_for("b/1"), "y");
        r.apply_desired(&serde_json::json!({"$version": 5}), &base, true, 262_144)
            .expect("full");
        assert_eq!(r, base, "a full twin without keys means the base settings");
    }
}
