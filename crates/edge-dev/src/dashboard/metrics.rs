//! OpenMetrics text of the hub's counters, the supervisor's view of each module, the upstream link and
//! the dashboard's readings: a prometheus-client registry filled from one snapshot per scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Health, LinkState};

/// The content type of [`render`]'s text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of Prometheus text format 0.0.4 (a module's page that is not OpenMetrics).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value: backslash, double quote and newline (prometheus-client writes label values
/// as given).
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One label, its value escaped.
type Label = [(&'static str, String); 1];

fn label(key: &'static str, value: &str) -> Label {
    [(key, escape_label(value))]
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

/// Every gauge here counts or is 0/1, except the averages.
type UGauge = Gauge<u64, AtomicU64>;

fn gauge(v: u64) -> UGauge {
    let g = UGauge::default();
    g.set(v);
    g
}

/// Renders `health` and the reading counters as OpenMetrics text ([`OPENMETRICS`]).
pub fn render(
    health: &Health,
    readings_total: u64,
    alerts_total: u64,
    latest: &[(String, f64)],
) -> String {
    let connected = Family::<Label, UGauge>::default();
    let received = Family::<Label, Counter>::default();
    let sent = Family::<Label, Counter>::default();
    let queue_depth = Family::<Label, UGauge>::default();
    let running = Family::<Label, UGauge>::default();
    let restarts = Family::<Label, Counter>::default();
    let given_up = Family::<Label, UGauge>::default();
    for m in &health.modules {
        let l = label("module", &m.name);
        connected.get_or_create(&l).set(m.connected.into());
        received.get_or_create(&l).inc_by(m.received);
        sent.get_or_create(&l).inc_by(m.sent);
        queue_depth.get_or_create(&l).set(m.queue_depth);
        // only for modules the supervisor runs
        if m.supervised {
            running.get_or_create(&l).set(m.running.into());
            restarts.get_or_create(&l).inc_by(m.restarts.into());
            given_up.get_or_create(&l).set(m.given_up.is_some().into());
        }
    }
    let latest_average = Family::<Label, Gauge<f64, AtomicU64>>::default();
    for (device, v) in latest {
        latest_average
            .get_or_create(&label("device", device))
            .set(*v);
    }

    // Counters are named without `_total`, which the encoder appends to their samples; the registry
    // appends the period to each help text.
    let mut r = Registry::default();
    r.register(
        "edge_dev_module_connected",
        "Whether the module is connected to the hub (1) or not (0)",
        connected,
    );
    r.register(
        "edge_dev_module_messages_received",
        "Messages delivered to the module's inputs and acknowledged by it",
        received,
    );
    r.register(
        "edge_dev_module_messages_sent",
        "Messages the module sent to its outputs",
        sent,
    );
    r.register(
        "edge_dev_module_queue_depth",
        "Messages waiting in the module's input queue (store and forward), in flight included",
        queue_depth,
    );
    r.register(
        "edge_dev_module_running",
        "Whether the supervisor has the module's process running (1) or not (0); absent for modules it does not run",
        running,
    );
    r.register(
        "edge_dev_module_restarts",
        "Restarts of the module's process by the supervisor",
        restarts,
    );
    r.register(
        "edge_dev_module_given_up",
        "Whether the supervisor will not start the module again (1) or not (0)",
        given_up,
    );
    r.register(
        "edge_dev_upstream_queue_depth",
        "Messages waiting in the $upstream queue (store and forward)",
        gauge(health.link.upstream_depth),
    );
    r.register(
        "edge_dev_upstream_online",
        "Whether upstream messages are delivered (1), or kept because edge-dev runs --offline or deliveries fail (0)",
        gauge((health.link.state == LinkState::Online).into()),
    );
    r.register(
        "edge_dev_unrouted_messages",
        "Messages no route matched (dropped, as edgeHub does)",
        counter(health.unrouted),
    );
    r.register(
        "edge_dev_expired_messages",
        "Messages dropped because their time to live passed",
        counter(health.expired),
    );
    r.register(
        "edge_dev_dashboard_readings",
        "Window averages the dashboard took from upstream messages",
        counter(readings_total),
    );
    r.register(
        "edge_dev_dashboard_alerts",
        "Alert rows (an output named like *Alert*) the dashboard took from upstream messages",
        counter(alerts_total),
    );
    r.register(
        "edge_dev_device_latest_average",
        "The newest window average per device (the series `all` averages every sensor)",
        latest_average,
    );
    let mut out = String::new();
    // writing to a String cannot fail
    let _ = encode(&mut out, &r);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{LinkHealth, LinkState, ModuleHealth};
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let health = Health {
            link: LinkHealth {
                state: LinkState::Offline,
                upstream_depth: 7,
                error: None,
            },
            unrouted: 2,
            expired: 1,
            modules: vec![
                ModuleHealth {
                    name: "Agg".into(),
                    supervised: true,
                    running: true,
                    restarts: 3,
                    connected: true,
                    received: 4,
                    sent: 10,
                    queue_depth: 1,
                    ..ModuleHealth::default()
                },
                ModuleHealth {
                    name: "Ext".into(),
                    connected: false,
                    ..ModuleHealth::default()
                },
            ],
        };
        let text = render(&health, 5, 1, &[("bed \"1\"".into(), 38.25)]);
        for line in [
            "edge_dev_module_connected{module=\"Agg\"} 1",
            "edge_dev_module_connected{module=\"Ext\"} 0",
            "edge_dev_module_messages_received_total{module=\"Agg\"} 4",
            "edge_dev_module_messages_sent_total{module=\"Agg\"} 10",
            "edge_dev_module_queue_depth{module=\"Agg\"} 1",
            "edge_dev_module_running{module=\"Agg\"} 1",
            "edge_dev_module_restarts_total{module=\"Agg\"} 3",
            "edge_dev_module_given_up{module=\"Agg\"} 0",
            "edge_dev_upstream_queue_depth 7",
            "edge_dev_upstream_online 0",
            "edge_dev_unrouted_messages_total 2",
            "edge_dev_expired_messages_total 1",
            "edge_dev_dashboard_readings_total 5",
            "edge_dev_dashboard_alerts_total 1",
            "edge_dev_device_latest_average{device=\"bed \\\"1\\\"\"} 38.25",
            "# HELP edge_dev_upstream_queue_depth Messages waiting in the $upstream queue (store and forward).",
            "# TYPE edge_dev_module_restarts counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            !text.contains("edge_dev_module_running{module=\"Ext\"}"),
            "an external module has no process"
        );
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        // Every sample's family has HELP and TYPE (a counter's family is named without `_total`).
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            let family = name.strip_suffix("_total").unwrap_or(name);
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }
    }
}
