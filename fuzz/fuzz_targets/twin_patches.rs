//! The module twins: the desired-property patches each module applies and the twin documents
//! the hub keeps.
//!
//! - AggregatorModule: `edge_client::twin::merge` into the desired document, `TwinSettings::from_desired`,
//!   `Processor::apply` (the query and reference data), input bodies through the running query
//!   (`Processor::on_input`, AggregatorModule's parsing of a message body) and the reported
//!   properties it sends back;
//! - MqttServerModule: `Routing::apply_desired` (full documents and patches);
//! - ESPSimModule: `Settings::merged`;
//! - the hub (`edge_hub::TwinState`): desired and reported patches, the twin document a
//!   module GETs and the twin as the store keeps it.
//!
//! Input (`arbitrary`): which module, patches as JSON built from a dictionary of the modules'
//! keys and values (or raw JSON text), optionally nested deep, and input bodies.
//!
//! Checks: no panic; a refused patch changes nothing; what a module reports, the twin document
//! and the stored twin are JSON that serde_json reads back as it was (so never deeper than its
//! 128-level limit); `Settings::merged({})` is the identity.
#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

const KEYS: &[&str] = &[
    // AggregatorModule
    "query",
    "eventPolicy",
    "out_of_order_tolerance_secs",
    "late_arrival_tolerance_secs",
    "action",
    "early_arrival_limit_secs",
    "deadLetterOutput",
    "referenceData",
    "patients",
    "rows",
    "path",
    "deviceId",
    "feverC",
    // MqttServerModule
    "output",
    "topicOutputs",
    "enrichDeviceId",
    "maxPayload",
    "MyTopic",
    "sensors/+/temp",
    "#",
    // ESPSimModule
    "host",
    "port",
    "mode",
    "devices",
    "interval_ms",
    "rate",
    "seed",
    "duration_s",
    "messages_per_device",
    "start_time",
    "time_format",
    "topic",
    "qos",
    "retain",
    "client_id_prefix",
    "mqtt5",
    "keep_alive_s",
    "reconnect_min_ms",
    "reconnect_max_ms",
    "drain_ms",
    "fever_per_day",
    "faults",
    "malformed_json",
    "missing_field",
    "mistyped_field",
    "out_of_range",
    "clock_skew",
    "max_skew_s",
    "disconnect",
    "storm_every_s",
    "storm_fraction",
    // twin metadata and strangers
    "$version",
    "$metadata",
    "unknown",
    "",
];

const STRINGS: &[&str] = &[
    "SELECT Avg(\"temp\") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,60)",
    "SELECT * INTO out FROM temperature WHERE temp > 38",
    "SELECT deviceId, Count(*) INTO c FROM temperature TIMESTAMP BY timeCreated OVER deviceId GROUP BY deviceId, HoppingWindow(second, 10, 5)",
    "SELECT i.deviceId, p.feverC INTO j FROM temperature i JOIN patients p ON i.deviceId = p.deviceId",
    "SELEC oops",
    "Adjust",
    "Drop",
    "adjust",
    "deadletter",
    "output1",
    "out/put",
    "fleet",
    "seed",
    "load",
    "rfc3339",
    "dotnet_invariant",
    "dotnet_en_us",
    "127.0.0.1",
    "patient-00001",
    "2026-11-24T08:00:00Z",
    "",
    "/nonexistent/patients.csv",
];

#[derive(Arbitrary, Debug)]
enum Val {
    Key(u8, Box<Val>),
    Obj(Vec<(u8, Val)>),
    Arr(Vec<Val>),
    Str(u8),
    AnyStr(String),
    UInt(u64),
    Small(u8),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

fn json_of(v: &Val, depth: usize) -> Value {
    if depth > 12 {
        return Value::Null;
    }
    match v {
        Val::Key(k, x) => json!({ pick(KEYS, *k): json_of(x, depth + 1) }),
        Val::Obj(fields) => Value::Object(
            fields
                .iter()
                .take(12)
                .map(|(k, x)| (pick(KEYS, *k).to_string(), json_of(x, depth + 1)))
                .collect(),
        ),
        Val::Arr(items) => Value::Array(
            items
                .iter()
                .take(8)
                .map(|x| json_of(x, depth + 1))
                .collect(),
        ),
        Val::Str(i) => json!(pick(STRINGS, *i)),
        Val::AnyStr(s) => json!(s),
        Val::UInt(n) => json!(n),
        Val::Small(n) => json!(n),
        Val::Int(n) => json!(n),
        Val::Float(f) => json!(f),
        Val::Bool(b) => json!(b),
        Val::Null => Value::Null,
    }
}

#[derive(Arbitrary, Debug)]
enum Patch {
    Built(Val),
    Text(String),
    /// A patch with one key nested this many objects deep (twin documents have a depth limit).
    Deep(u8, u8),
}

impl Patch {
    /// The patch as a module receives it: JSON text read by serde_json.
    fn value(&self) -> Option<Value> {
        serde_json::from_str(&self.text()).ok()
    }

    fn text(&self) -> String {
        match self {
            Patch::Built(v) => json_of(v, 0).to_string(),
            Patch::Text(t) => t.clone(),
            Patch::Deep(k, n) => {
                let mut v = json!(1);
                for _ in 0..*n {
                    v = json!({ pick(KEYS, *k): v });
                }
                v.to_string()
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    module: u8,
    patches: Vec<Patch>,
    bodies: Vec<(Vec<u8>, u16)>,
}

/// What travels as JSON text must read back as it was.
fn reads_back(what: &str, v: &Value) {
    let text = v.to_string();
    let back: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what} does not read back as JSON: {e}"));
    assert_eq!(&back, v, "{what} reads back differently");
}

/// Keeps reference data inline: a `path` would make the fuzzer read files.
fn no_paths(v: &mut Value) {
    if let Some(refs) = v.get_mut("referenceData").and_then(Value::as_object_mut) {
        for r in refs.values_mut() {
            if let Some(r) = r.as_object_mut() {
                r.remove("path");
            }
        }
    }
}

fn aggregator(input: &Input) {
    use aggregator::{Processor, TwinSettings};
    let mut processor = Processor::new(Path::new("/nonexistent/edge-fuzz-aggregator"));
    let mut desired = Value::Object(Map::new());
    let mut now = "2026-11-24T08:00:00Z"
        .parse::<chrono::DateTime<chrono::Utc>>()
        .expect("a time");
    for (i, p) in input.patches.iter().take(6).enumerate() {
        let Some(mut patch) = p.value() else { continue };
        no_paths(&mut patch);
        if i == 0 {
            desired = patch; // the whole desired section, after a connect
        } else {
            edge_client::twin::merge(&mut desired, &patch);
        }
        no_paths(&mut desired);
        let unknown = match TwinSettings::from_desired(&desired) {
            Ok((settings, unknown)) => {
                let _ = processor.apply(settings);
                unknown
            }
            Err(_) => Vec::new(),
        };
        reads_back(
            "AggregatorModule's reported properties",
            &processor.reported(&unknown),
        );
        for (body, gap) in input.bodies.iter().take(8) {
            now += chrono::Duration::milliseconds(i64::from(*gap) * 10);
            let out = processor.on_input("temperature", body, now);
            if let Some(dl) = &out.dead_letter {
                reads_back("a dead letter", dl);
            }
            for row in &out.rows {
                reads_back("an output row", &row.to_json());
            }
        }
        for row in processor.on_tick(now + chrono::Duration::seconds(120)) {
            reads_back("an output row", &row.to_json());
        }
    }
}

fn mqtt_server(input: &Input) {
    use mqtt_server::Settings;
    let settings = Settings::default();
    let base = settings.routing();
    let mut routing = base.clone();
    for (i, p) in input.patches.iter().take(8).enumerate() {
        let Some(patch) = p.value() else { continue };
        let before = routing.clone();
        match routing.apply_desired(&patch, &base, i == 0, settings.max_payload) {
            Ok(_) => {
                assert!(routing.max_payload >= 1 && routing.max_payload <= settings.max_payload);
                assert!(!routing.output.is_empty() && !routing.output.contains('/'));
            }
            Err(_) => assert_eq!(routing, before, "a refused patch changed the routing"),
        }
        reads_back(
            "MqttServerModule's reported properties",
            &routing.reported(),
        );
        for topic in ["MyTopic", "sensors/7/temp", "a/b/c", "", "$SYS/x"] {
            let _ = routing.output_for(topic);
        }
    }
}

fn esp_sim(input: &Input) {
    use esp_sim::Settings;
    let mut settings = Settings::default();
    for p in input.patches.iter().take(8) {
        let Some(patch) = p.value() else { continue };
        match settings.merged(&patch) {
            Ok(next) => {
                let _ = settings.needs_restart(&next);
                assert!(
                    next.validate().is_ok(),
                    "a merged patch gave invalid settings"
                );
                let same = next
                    .merged(&json!({}))
                    .unwrap_or_else(|e| panic!("settings do not survive their own JSON: {e}"));
                assert_eq!(same, next, "merging {{}} changed the settings");
                settings = next;
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

fn hub(input: &Input) {
    use edge_hub::TwinState;
    let mut patches = input.patches.iter().take(8);
    // the first is the desired properties of a deployment manifest, read with the manifest
    let Some(first) = patches.next().map(Patch::text) else {
        return;
    };
    let manifest = format!(
        r#"{{"modulesContent":{{"$edgeAgent":{{}},"M":{{"properties.desired":{first}}}}}}}"#
    );
    let Ok(manifest) = serde_json::from_str::<Value>(&manifest) else {
        return;
    };
    let mut twin = TwinState::new(&manifest["modulesContent"]["M"]["properties.desired"]);
    let patches = patches.filter_map(Patch::value);
    for (i, patch) in patches.enumerate() {
        let before = twin.clone();
        let result = if i % 2 == 0 {
            twin.patch_reported(&patch).map(|v| {
                assert_eq!(v, before.reported_version + 1);
            })
        } else {
            twin.patch_desired(&patch).map(|(v, pushed)| {
                assert_eq!(v, before.desired_version + 1);
                reads_back("a desired patch pushed to a module", &pushed);
            })
        };
        if result.is_err() {
            assert_eq!(twin, before, "a refused patch changed the twin");
        }
        // what a module GETs, and what the store keeps and reads at the next start
        reads_back("the twin document", &twin.document());
        let stored = serde_json::to_vec(&twin).expect("a twin serializes");
        let back: TwinState = serde_json::from_slice(&stored)
            .unwrap_or_else(|e| panic!("a stored twin does not read back: {e}"));
        assert_eq!(back, twin, "a stored twin reads back differently");
    }
}

fuzz_target!(|input: Input| {
    match input.module % 4 {
        0 => aggregator(&input),
        1 => mqtt_server(&input),
        2 => esp_sim(&input),
        _ => hub(&input),
    }
});
