//! Prometheus metrics: prometheus-client counters and gauges, updated on the hot path and encoded as
//! OpenMetrics text on `/metrics`.

use std::borrow::Cow;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `reason` label of refusals and drops.
type Reason = [(&'static str, Cow<'static, str>); 1];

/// All counters and gauges of the server. Each is a shared handle: the registry holds the same
/// metrics, so [`Metrics::render`] encodes what the hot path counted.
#[derive(Debug)]
pub struct Metrics {
    pub connected_clients: Gauge,
    pub connections_total: Counter,
    /// By QoS 0, 1 and 2.
    pub messages_in: [Counter; 3],
    pub bytes_in: Counter,
    pub messages_forwarded: Counter,
    pub bytes_forwarded: Counter,
    pub forward_failures: Counter,
    pub messages_out: Counter,
    pub buffer_messages: Gauge,
    pub buffer_bytes: Gauge,
    pub backpressure_waits: Counter,
    pub edgehub_connected: Gauge,
    pub retained_messages: Gauge,
    refused: Family<Reason, Counter>,
    dropped: Family<Reason, Counter>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let messages_in = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let mut m = Metrics {
            connected_clients: Gauge::default(),
            connections_total: Counter::default(),
            // every QoS has its series from the start
            messages_in: ["0", "1", "2"].map(|q| messages_in.get_or_create(&[("qos", q)]).clone()),
            bytes_in: Counter::default(),
            messages_forwarded: Counter::default(),
            bytes_forwarded: Counter::default(),
            forward_failures: Counter::default(),
            messages_out: Counter::default(),
            buffer_messages: Gauge::default(),
            buffer_bytes: Gauge::default(),
            backpressure_waits: Counter::default(),
            edgehub_connected: Gauge::default(),
            retained_messages: Gauge::default(),
            refused: Family::default(),
            dropped: Family::default(),
            registry: Registry::default(),
        };
        // Counters are named without `_total`, which the encoder appends to their samples; the
        // registry appends the period to each help text.
        let r = &mut m.registry;
        r.register(
            "mqtt_connected_clients",
            "MQTT clients connected now",
            m.connected_clients.clone(),
        );
        r.register(
            "mqtt_connections",
            "Accepted MQTT connections (CONNACK success)",
            m.connections_total.clone(),
        );
        r.register(
            "mqtt_messages_in",
            "Application messages received from clients, by QoS",
            messages_in,
        );
        r.register(
            "mqtt_bytes_in",
            "Payload bytes received from clients",
            m.bytes_in.clone(),
        );
        r.register(
            "mqtt_messages_forwarded",
            "Messages edgeHub acknowledged",
            m.messages_forwarded.clone(),
        );
        r.register(
            "mqtt_bytes_forwarded",
            "Body bytes edgeHub acknowledged",
            m.bytes_forwarded.clone(),
        );
        r.register(
            "mqtt_forward_failures",
            "Failed sends to edgeHub (each is retried)",
            m.forward_failures.clone(),
        );
        r.register(
            "mqtt_messages_out",
            "Messages delivered to MQTT subscribers",
            m.messages_out.clone(),
        );
        r.register(
            "mqtt_buffer_messages",
            "Messages waiting for or in flight to edgeHub",
            m.buffer_messages.clone(),
        );
        r.register(
            "mqtt_buffer_bytes",
            "Body bytes waiting for or in flight to edgeHub",
            m.buffer_bytes.clone(),
        );
        r.register(
            "mqtt_backpressure",
            "Times a device socket stopped being read because the buffer was full",
            m.backpressure_waits.clone(),
        );
        r.register(
            "mqtt_edgehub_connected",
            "1 when the last send to edgeHub succeeded",
            m.edgehub_connected.clone(),
        );
        r.register(
            "mqtt_retained_messages",
            "Retained messages held",
            m.retained_messages.clone(),
        );
        r.register(
            "mqtt_refused",
            "Clients or packets refused or disconnected, by reason",
            m.refused.clone(),
        );
        r.register(
            "mqtt_dropped",
            "Messages not delivered, by reason",
            m.dropped.clone(),
        );
        m
    }
}

impl Metrics {
    /// Counts a refused or disconnected client or packet, by reason.
    pub fn refused(&self, reason: &'static str) {
        self.refused
            .get_or_create(&[("reason", Cow::Borrowed(reason))])
            .inc();
    }

    /// Counts a message that was not delivered (only QoS 0 to slow subscribers), by reason.
    pub fn dropped(&self, reason: &'static str) {
        self.dropped
            .get_or_create(&[("reason", Cow::Borrowed(reason))])
            .inc();
    }

    /// Current count of refusals for `reason` (for tests and logs).
    pub fn refused_count(&self, reason: &str) -> u64 {
        self.refused
            .get(&[("reason", Cow::Owned(reason.to_owned()))])
            .map_or(0, |c| c.get())
    }

    /// Renders the OpenMetrics text exposition format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut s = String::new();
        // writing to a String cannot fail
        let _ = encode(&mut s, &self.registry);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_and_values() {
        let m = Metrics::default();
        m.messages_in[1].inc_by(3);
        m.refused("oversize");
        m.refused("oversize");
        m.connections_total.inc();
        let text = m.render();
        assert!(
            text.contains("mqtt_messages_in_total{qos=\"1\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("mqtt_messages_in_total{qos=\"2\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("mqtt_refused_total{reason=\"oversize\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mqtt_connected_clients gauge"),
            "{text}"
        );
        assert!(
            text.contains(
                "# HELP mqtt_connections Accepted MQTT connections (CONNACK success).\n\
                 # TYPE mqtt_connections counter\n\
                 mqtt_connections_total 1\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(m.refused_count("oversize"), 2);
        assert_eq!(m.refused_count("never"), 0);
    }
}
