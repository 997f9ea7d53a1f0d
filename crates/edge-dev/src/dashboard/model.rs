//! The dashboard's memory of what went upstream: per device, the window averages of the last hours, and the
//! latest alerts of every kind. Pure logic without IO, so it is tested beside itself.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use edge_hub::StoredMessage;

/// The series name of averages that carry no `deviceId` (the template's `AvgTemp` averages every sensor).
pub const ALL_DEVICES: &str = "all";

/// One window average taken from an upstream message.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// `deviceId` of the row, or [`ALL_DEVICES`].
    pub device: String,
    /// The window end in milliseconds since the Unix epoch (what the chart's x axis uses).
    pub t: i64,
    /// The window end, RFC 3339.
    pub window_end: String,
    /// The average, in the unit the query computed (°C for the seed's sensors).
    pub value: f64,
    /// Whether the row came from an alert output (`FeverAlert`), or an alert row for the same window did.
    pub alert: bool,
    /// The module and output that sent it.
    pub module: String,
    pub output: String,
}

/// Reads a window average from one upstream message: a JSON object body with a number in `avg` or
/// `avgTemp` (any case). The device is the body's `deviceId` (else the property `deviceId`, else
/// [`ALL_DEVICES`]); the time is the body's `windowEnd`, else the property `timestamp` (AggregatorModule's
/// window end), else when the hub enqueued it. An output whose name contains `alert` (any case) marks an
/// alert. Anything else is not a reading: `None`.
pub fn extract(
    module: &str,
    output: &str,
    properties: &BTreeMap<String, String>,
    body: &Value,
    enqueued: DateTime<Utc>,
) -> Option<Point> {
    let obj = body.as_object()?;
    let field = |names: &[&str]| {
        obj.iter()
            .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
            .map(|(_, v)| v)
    };
    let value = field(&["avgTemp", "avg"])?.as_f64()?;
    if !value.is_finite() {
        return None;
    }
    let (device, time) = device_and_time(obj, properties, enqueued);
    Some(Point {
        device,
        t: time.timestamp_millis(),
        window_end: time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        value,
        alert: output.to_ascii_lowercase().contains("alert"),
        module: module.to_string(),
        output: output.to_string(),
    })
}

/// One alert taken from an upstream message: a row of an output whose name contains `alert` (any
/// case), such as the template's `FeverAlert`, `SustainedFeverAlert`, `RapidRiseAlert`,
/// `SilentSensorAlert` and `SpikeAlert`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// The row's `alert` text if it has one (the template's rules name their kind there), else the
    /// output name.
    pub kind: String,
    /// `deviceId` of the row (or the property), else [`ALL_DEVICES`].
    pub device: String,
    /// When it happened, in milliseconds since the Unix epoch: the row's `windowEnd`, else the
    /// property `timestamp` (the row's `System.Timestamp()`), else when the hub enqueued it.
    pub t: i64,
    pub time: String,
    /// The row's other fields: the values that triggered it.
    pub values: serde_json::Map<String, Value>,
    pub module: String,
    pub output: String,
}

/// Reads an alert from one upstream message (see [`Alert`]); `None` for rows of other outputs.
pub fn extract_alert(
    module: &str,
    output: &str,
    properties: &BTreeMap<String, String>,
    body: &Value,
    enqueued: DateTime<Utc>,
) -> Option<Alert> {
    if !output.to_ascii_lowercase().contains("alert") {
        return None;
    }
    let obj = body.as_object()?;
    let kind = match obj.iter().find(|(k, _)| k.eq_ignore_ascii_case("alert")) {
        Some((_, Value::String(s))) if !s.is_empty() => s.clone(),
        _ => output.to_string(),
    };
    let (device, time) = device_and_time(obj, properties, enqueued);
    let values = obj
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("deviceId") && !k.eq_ignore_ascii_case("alert"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(Alert {
        kind,
        device,
        t: time.timestamp_millis(),
        time: time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        values,
        module: module.to_string(),
        output: output.to_string(),
    })
}

/// [`extract_alert`] for a message of the `$upstream` queue.
pub fn alert_from_message(m: &StoredMessage) -> Option<Alert> {
    let body: Value = serde_json::from_slice(&m.message.body).ok()?;
    extract_alert(
        &m.module,
        &m.output,
        &m.message.properties,
        &body,
        m.enqueued_time,
    )
}

/// [`extract`] and [`extract_alert`] for a line of the upstream log (`upstream::log_line`).
pub fn alert_from_log_line(line: &Value) -> Option<Alert> {
    let (module, output, properties, enqueued) = log_line_parts(line)?;
    extract_alert(module, output, &properties, line.get("body")?, enqueued)
}

type LogParts<'a> = (&'a str, &'a str, BTreeMap<String, String>, DateTime<Utc>);

fn log_line_parts(line: &Value) -> Option<LogParts<'_>> {
    let module = line.get("module")?.as_str()?;
    let output = line.get("output")?.as_str()?;
    let enqueued = line
        .get("enqueuedTime")
        .and_then(Value::as_str)
        .and_then(parse_time)?;
    let properties: BTreeMap<String, String> = line
        .get("properties")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Some((module, output, properties, enqueued))
}

/// The device and time of an upstream row, for a point and an alert alike: the body's `deviceId`
/// (else the property `deviceId`, else [`ALL_DEVICES`]) and its `windowEnd` (else the property
/// `timestamp`, else when the hub enqueued it); names match in any case.
fn device_and_time(
    obj: &serde_json::Map<String, Value>,
    properties: &BTreeMap<String, String>,
    enqueued: DateTime<Utc>,
) -> (String, DateTime<Utc>) {
    let field = |name: &str| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let prop = |name: &str| {
        properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let device = match field("deviceId") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => prop("deviceId")
            .filter(|s| !s.is_empty())
            .unwrap_or(ALL_DEVICES)
            .to_string(),
    };
    let time = field("windowEnd")
        .and_then(Value::as_str)
        .and_then(parse_time)
        .or_else(|| prop("timestamp").and_then(parse_time))
        .unwrap_or(enqueued);
    (device, time)
}

/// [`extract`] for a message of the `$upstream` queue.
pub fn from_message(m: &StoredMessage) -> Option<Point> {
    let body: Value = serde_json::from_slice(&m.message.body).ok()?;
    extract(
        &m.module,
        &m.output,
        &m.message.properties,
        &body,
        m.enqueued_time,
    )
}

/// [`extract`] for a line of the upstream log (`upstream::log_line`).
pub fn from_log_line(line: &Value) -> Option<Point> {
    let (module, output, properties, enqueued) = log_line_parts(line)?;
    extract(module, output, &properties, line.get("body")?, enqueued)
}

/// Stream Analytics writes times as RFC 3339, sometimes without a zone (then UTC).
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

/// Limits of [`History`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Points older than this (by window end, against the clock) are dropped. Milliseconds.
    pub retention_ms: i64,
    /// At most this many points per device (the oldest go first).
    pub max_points: usize,
    /// At most this many devices; points of further devices are not kept.
    pub max_devices: usize,
    /// At most this many alerts (the newest are kept).
    pub max_alerts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            retention_ms: 6 * 3600 * 1000,
            max_points: 2000,
            max_devices: 100,
            max_alerts: 200,
        }
    }
}

/// Per device, its points by window end; and the latest alerts, oldest first.
#[derive(Debug, Default)]
pub struct History {
    limits: Limits,
    devices: BTreeMap<String, BTreeMap<i64, Point>>,
    alerts: VecDeque<Alert>,
    /// (time, kind, device) of the kept alerts: the same alert again is not a new one.
    alert_keys: BTreeSet<(i64, String, String)>,
    /// Readings recorded and alerts recorded since start (for the metrics).
    pub readings_total: u64,
    pub alerts_total: u64,
}

impl History {
    pub fn new(limits: Limits) -> History {
        History {
            limits,
            ..History::default()
        }
    }

    /// Records `p` at wall-clock `now_ms`. A second row for the same device and window (an alert row
    /// beside the average row) is merged: the point stays an alert if either was. Returns the point as
    /// stored, or `None` when it is too old to keep or the device limit is reached.
    pub fn record(&mut self, p: Point, now_ms: i64) -> Option<Point> {
        self.prune(now_ms);
        if p.t < now_ms.saturating_sub(self.limits.retention_ms) {
            return None;
        }
        if !self.devices.contains_key(&p.device) && self.devices.len() >= self.limits.max_devices {
            return None;
        }
        self.readings_total += 1;
        let series = self.devices.entry(p.device.clone()).or_default();
        let stored = match series.get_mut(&p.t) {
            Some(old) => {
                let alert = old.alert || p.alert;
                // The plain average row is the one to show; an alert row only marks it.
                if !p.alert || old.alert {
                    *old = p;
                }
                old.alert = alert;
                old.clone()
            }
            None => {
                series.insert(p.t, p.clone());
                p
            }
        };
        while series.len() > self.limits.max_points {
            series.pop_first();
        }
        Some(stored)
    }

    /// Records an alert at wall-clock `now_ms`; `None` when it is too old or already known (a log
    /// refill, a redelivery after a crash).
    pub fn record_alert(&mut self, a: Alert, now_ms: i64) -> Option<Alert> {
        self.prune(now_ms);
        if a.t < now_ms.saturating_sub(self.limits.retention_ms) {
            return None;
        }
        if !self
            .alert_keys
            .insert((a.t, a.kind.clone(), a.device.clone()))
        {
            return None;
        }
        self.alerts_total += 1;
        self.alerts.push_back(a.clone());
        while self.alerts.len() > self.limits.max_alerts {
            if let Some(old) = self.alerts.pop_front() {
                self.alert_keys.remove(&(old.t, old.kind, old.device));
            }
        }
        Some(a)
    }

    /// Drops points and alerts older than the retention.
    pub fn prune(&mut self, now_ms: i64) {
        let cut = now_ms.saturating_sub(self.limits.retention_ms);
        for series in self.devices.values_mut() {
            while series.first_key_value().is_some_and(|(t, _)| *t < cut) {
                series.pop_first();
            }
        }
        self.devices.retain(|_, s| !s.is_empty());
        while self.alerts.front().is_some_and(|a| a.t < cut) {
            if let Some(old) = self.alerts.pop_front() {
                self.alert_keys.remove(&(old.t, old.kind, old.device));
            }
        }
    }

    /// The devices and their points, oldest first.
    pub fn devices(&self) -> impl Iterator<Item = (&String, impl Iterator<Item = &Point>)> {
        self.devices.iter().map(|(d, s)| (d, s.values()))
    }

    /// The newest point of each device.
    pub fn latest(&self) -> impl Iterator<Item = &Point> {
        self.devices
            .values()
            .filter_map(|s| s.last_key_value().map(|(_, p)| p))
    }

    /// The kept alerts, oldest first.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.iter()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap_or_default()
    }

    fn props(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn avg_temp_row_uses_the_timestamp_property() {
        let p = extract(
            "AggregatorModule",
            "AvgTemp",
            &props(&[("timestamp", "2026-11-24T09:00:02.000Z")]),
            &json!({"avg": 37.5}),
            at("2026-11-24T09:00:05Z"),
        )
        .unwrap();
        assert_eq!(p.device, ALL_DEVICES);
        assert_eq!(p.value, 37.5);
        assert_eq!(p.t, at("2026-11-24T09:00:02Z").timestamp_millis());
        assert_eq!(p.window_end, "2026-11-24T09:00:02.000Z");
        assert!(!p.alert);
    }

    #[test]
    fn fever_alert_row_has_device_and_window_end() {
        let p = extract(
            "AggregatorModule",
            "FeverAlert",
            &props(&[("timestamp", "2026-11-24T09:00:04Z")]),
            &json!({"deviceId": "bed-3", "avgTemp": 38.4, "windowEnd": "2026-11-24T09:00:02Z"}),
            at("2026-11-24T09:00:05Z"),
        )
        .unwrap();
        assert_eq!(p.device, "bed-3");
        assert!(p.alert);
        assert_eq!(p.value, 38.4);
        assert_eq!(
            p.t,
            at("2026-11-24T09:00:02Z").timestamp_millis(),
            "the body's windowEnd wins"
        );
    }

    #[test]
    fn zone_less_times_are_utc_and_enqueued_time_is_the_fallback() {
        let p = extract(
            "m",
            "o",
            &props(&[("timestamp", "2026-11-24T09:00:02.5")]),
            &json!({"AVG": 1}),
            at("2026-01-01T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(p.t, at("2026-11-24T09:00:02.5Z").timestamp_millis());
        let q = extract(
            "m",
            "o",
            &props(&[("timestamp", "not a time")]),
            &json!({"avg": 1}),
            at("2026-01-01T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(q.t, at("2026-01-01T00:00:00Z").timestamp_millis());
    }

    #[test]
    fn other_messages_are_not_readings() {
        let now = at("2026-01-01T00:00:00Z");
        for body in [
            json!({"temp": 36.6}),
            json!({"avg": "hot"}),
            json!([1, 2]),
            json!(null),
            json!({"avg": null}),
        ] {
            assert_eq!(
                extract("m", "o", &BTreeMap::new(), &body, now),
                None,
                "{body}"
            );
        }
    }

    #[test]
    fn log_lines_read_like_messages() {
        let line = json!({"enqueuedTime": "2026-11-24T09:00:05.000Z", "module": "AggregatorModule", "output": "AvgTemp",
            "properties": {"timestamp": "2026-11-24T09:00:04Z"}, "systemProperties": {}, "body": {"avg": 36.9}});
        let p = from_log_line(&line).unwrap();
        assert_eq!(
            (p.value, p.t),
            (36.9, at("2026-11-24T09:00:04Z").timestamp_millis())
        );
        assert_eq!(from_log_line(&json!({"module": "x"})), None);
        assert_eq!(
            from_log_line(
                &json!({"enqueuedTime": "2026-11-24T09:00:05Z", "module": "m", "output": "o", "bodyBase64": "AAE="})
            ),
            None
        );
    }

    fn point(device: &str, t: i64, value: f64, alert: bool) -> Point {
        Point {
            device: device.into(),
            t,
            window_end: String::new(),
            value,
            alert,
            module: "m".into(),
            output: if alert {
                "FeverAlert".into()
            } else {
                "AvgTemp".into()
            },
        }
    }

    #[test]
    fn alert_rows_mark_the_average_of_the_same_window() {
        let mut h = History::new(Limits::default());
        h.record(point("a", 1000, 38.5, false), 2000);
        let merged = h.record(point("a", 1000, 38.5, true), 2000).unwrap();
        assert!(merged.alert);
        assert_eq!(merged.output, "AvgTemp");
        // The other order gives the same point.
        h.record(point("b", 1000, 39.0, true), 2000);
        let merged = h.record(point("b", 1000, 39.0, false), 2000).unwrap();
        assert!(merged.alert);
        assert_eq!(h.devices().map(|(_, s)| s.count()).sum::<usize>(), 2);
        assert_eq!(h.readings_total, 4);
    }

    fn alert(kind: &str, device: &str, t: i64) -> Alert {
        Alert {
            kind: kind.into(),
            device: device.into(),
            t,
            time: String::new(),
            values: serde_json::Map::new(),
            module: "m".into(),
            output: "o".into(),
        }
    }

    #[test]
    fn alerts_of_every_kind_and_their_values() {
        let now = at("2026-11-24T09:00:05Z");
        let a = extract_alert(
            "AggregatorModule",
            "SilentSensorAlert",
            &props(&[("timestamp", "2026-11-24T09:00:04Z")]),
            &json!({"deviceId": "bed-3", "alert": "silentSensor", "lastSeen": "2026-11-24T08:55:04Z"}),
            now,
        )
        .unwrap();
        assert_eq!(
            (a.kind.as_str(), a.device.as_str()),
            ("silentSensor", "bed-3")
        );
        assert_eq!(a.t, at("2026-11-24T09:00:04Z").timestamp_millis());
        assert_eq!(a.values["lastSeen"], json!("2026-11-24T08:55:04Z"));
        assert!(!a.values.contains_key("alert"));
        // without an `alert` field the output names the kind; other outputs give none
        let a = extract_alert("m", "SpikeAlert", &props(&[]), &json!({"temp": 39.9}), now).unwrap();
        assert_eq!(
            (a.kind.as_str(), a.device.as_str()),
            ("SpikeAlert", ALL_DEVICES)
        );
        assert!(extract_alert("m", "AvgTemp", &props(&[]), &json!({"avg": 37.0}), now).is_none());
        let mut h = History::new(Limits::default());
        let t = now.timestamp_millis();
        assert!(h.record_alert(alert("fever", "a", t), t).is_some());
        assert!(h.record_alert(alert("sustainedFever", "a", t), t).is_some());
        assert!(
            h.record_alert(alert("fever", "a", t), t).is_none(),
            "the same alert again"
        );
        assert_eq!((h.alerts().count(), h.alerts_total), (2, 2));
    }

    #[test]
    fn limits_bound_memory() {
        let limits = Limits {
            retention_ms: 10_000,
            max_points: 3,
            max_devices: 2,
            max_alerts: 2,
        };
        let mut h = History::new(limits);
        let now = 100_000;
        assert_eq!(
            h.record(point("a", now - 20_000, 1.0, false), now),
            None,
            "older than the retention"
        );
        for i in 0..5 {
            h.record(point("a", now - 5 + i, i as f64, true), now);
            h.record_alert(alert("fever", "a", now - 5 + i), now);
        }
        let a: Vec<f64> = h
            .devices()
            .next()
            .map(|(_, s)| s.map(|p| p.value).collect())
            .unwrap_or_default();
        assert_eq!(a, vec![2.0, 3.0, 4.0]);
        assert_eq!(h.alerts().count(), 2);
        h.record(point("b", now, 1.0, false), now);
        assert_eq!(
            h.record(point("c", now, 1.0, false), now),
            None,
            "device limit"
        );
        assert_eq!(
            h.latest().map(|p| p.device.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        h.prune(now + 20_000);
        assert_eq!(h.devices().count(), 0);
        assert_eq!(h.alerts().count(), 0);
    }
}
