//! Prometheus metrics: atomics updated on the hot path, rendered as text on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// All counters and gauges of the server.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connected_clients: AtomicI64,
    pub connections_total: AtomicU64,
    pub messages_in: [AtomicU64; 3],
    pub bytes_in: AtomicU64,
    pub messages_forwarded: AtomicU64,
    pub bytes_forwarded: AtomicU64,
    pub forward_failures: AtomicU64,
    pub messages_out: AtomicU64,
    pub buffer_messages: AtomicI64,
    pub buffer_bytes: AtomicI64,
    pub backpressure_waits: AtomicU64,
    pub edgehub_connected: AtomicI64,
    pub retained_messages: AtomicI64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    dropped: Mutex<BTreeMap<&'static str, u64>>,
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, reason: &'static str) {
    if let Ok(mut m) = map.lock() {
        *m.entry(reason).or_insert(0) += 1;
    }
}

impl Metrics {
    /// Counts a refused or disconnected client or packet, by reason.
    pub fn refused(&self, reason: &'static str) {
        bump(&self.refused, reason);
    }

    /// Counts a message that was not delivered (only QoS 0 to slow subscribers), by reason.
    pub fn dropped(&self, reason: &'static str) {
        bump(&self.dropped, reason);
    }

    /// Current count of refusals for `reason` (for tests and logs).
    pub fn refused_count(&self, reason: &str) -> u64 {
        self.refused
            .lock()
            .map(|m| m.get(reason).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let g = |v: &AtomicI64| v.load(Ordering::Relaxed);
        let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut line = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(s, "{name}{labels} {value}");
            }
        };
        let one = |v: String| vec![(String::new(), v)];
        line(
            "mqtt_connected_clients",
            "gauge",
            "MQTT clients connected now.",
            one(g(&self.connected_clients).to_string()),
        );
        line(
            "mqtt_connections_total",
            "counter",
            "Accepted MQTT connections (CONNACK success).",
            one(c(&self.connections_total).to_string()),
        );
        line(
            "mqtt_messages_in_total",
            "counter",
            "Application messages received from clients, by QoS.",
            (0..3)
                .map(|q| {
                    (
                        format!("{{qos=\"{q}\"}}"),
                        c(&self.messages_in[q]).to_string(),
                    )
                })
                .collect(),
        );
        line(
            "mqtt_bytes_in_total",
            "counter",
            "Payload bytes received from clients.",
            one(c(&self.bytes_in).to_string()),
        );
        line(
            "mqtt_messages_forwarded_total",
            "counter",
            "Messages edgeHub acknowledged.",
            one(c(&self.messages_forwarded).to_string()),
        );
        line(
            "mqtt_bytes_forwarded_total",
            "counter",
            "Body bytes edgeHub acknowledged.",
            one(c(&self.bytes_forwarded).to_string()),
        );
        line(
            "mqtt_forward_failures_total",
            "counter",
            "Failed sends to edgeHub (each is retried).",
            one(c(&self.forward_failures).to_string()),
        );
        line(
            "mqtt_messages_out_total",
            "counter",
            "Messages delivered to MQTT subscribers.",
            one(c(&self.messages_out).to_string()),
        );
        line(
            "mqtt_buffer_messages",
            "gauge",
            "Messages waiting for or in flight to edgeHub.",
            one(g(&self.buffer_messages).to_string()),
        );
        line(
            "mqtt_buffer_bytes",
            "gauge",
            "Body bytes waiting for or in flight to edgeHub.",
            one(g(&self.buffer_bytes).to_string()),
        );
        line(
            "mqtt_backpressure_total",
            "counter",
            "Times a device socket stopped being read because the buffer was full.",
            one(c(&self.backpressure_waits).to_string()),
        );
        line(
            "mqtt_edgehub_connected",
            "gauge",
            "1 when the last send to edgeHub succeeded.",
            one(g(&self.edgehub_connected).to_string()),
        );
        line(
            "mqtt_retained_messages",
            "gauge",
            "Retained messages held.",
            one(g(&self.retained_messages).to_string()),
        );
        let refused: Vec<(String, String)> = self
            .refused
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        line(
            "mqtt_refused_total",
            "counter",
            "Clients or packets refused or disconnected, by reason.",
            refused,
        );
        let dropped: Vec<(String, String)> = self
            .dropped
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        line(
            "mqtt_dropped_total",
            "counter",
            "Messages not delivered, by reason.",
            dropped,
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_and_values() {
        let m = Metrics::default();
        m.messages_in[1].fetch_add(3, Ordering::Relaxed);
        m.refused("oversize");
        m.refused("oversize");
        let text = m.render();
        assert!(text.contains("mqtt_messages_in_total{qos=\"1\"} 3"));
        assert!(text.contains("mqtt_refused_total{reason=\"oversize\"} 2"));
        assert!(text.contains("# TYPE mqtt_connected_clients gauge"));
        assert_eq!(m.refused_count("oversize"), 2);
    }
}
