//! Prometheus text exposition (format 0.0.4) of the hub's counters, the supervisor's view of each module,
//! the upstream link and the dashboard's readings.

use std::fmt::Write as _;

use super::Health;

/// Escapes a label value: backslash, double quote and newline.
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

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn b(v: bool) -> f64 {
    if v {
        1.0
    } else {
        0.0
    }
}

/// Renders `health` and the reading counters as Prometheus text.
pub fn render(
    health: &Health,
    readings_total: u64,
    alerts_total: u64,
    latest: &[(String, f64)],
) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    type Get = fn(&super::ModuleHealth) -> Option<f64>;
    let per_module: [(&str, &str, &str, Get); 7] = [
        ("edge_dev_module_connected", "gauge", "Whether the module is connected to the hub (1) or not (0).", |m| Some(b(m.connected))),
        ("edge_dev_module_messages_received_total", "counter", "Messages delivered to the module's inputs and acknowledged by it.", |m| Some(m.received as f64)),
        ("edge_dev_module_messages_sent_total", "counter", "Messages the module sent to its outputs.", |m| Some(m.sent as f64)),
        ("edge_dev_module_queue_depth", "gauge", "Messages waiting in the module's input queue (store and forward), in flight included.", |m| Some(m.queue_depth as f64)),
        ("edge_dev_module_running", "gauge", "Whether the supervisor has the module's process running (1) or not (0); absent for modules it does not run.", |m| m.supervised.then(|| b(m.running))),
        ("edge_dev_module_restarts_total", "counter", "Restarts of the module's process by the supervisor.", |m| m.supervised.then_some(m.restarts as f64)),
        ("edge_dev_module_given_up", "gauge", "Whether the supervisor will not start the module again (1) or not (0).", |m| m.supervised.then(|| b(m.given_up.is_some()))),
    ];
    for (name, kind, help, get) in per_module {
        f.head(name, kind, help);
        for m in &health.modules {
            if let Some(v) = get(m) {
                f.sample(name, &[("module", &m.name)], v);
            }
        }
    }
    f.head(
        "edge_dev_upstream_queue_depth",
        "gauge",
        "Messages waiting in the $upstream queue (store and forward).",
    );
    f.sample(
        "edge_dev_upstream_queue_depth",
        &[],
        health.link.upstream_depth as f64,
    );
    f.head(
        "edge_dev_upstream_online",
        "gauge",
        "Whether upstream messages are delivered (1), or kept because edge-dev runs --offline or deliveries fail (0).",
    );
    f.sample(
        "edge_dev_upstream_online",
        &[],
        b(health.link.state == super::LinkState::Online),
    );
    f.head(
        "edge_dev_unrouted_messages_total",
        "counter",
        "Messages no route matched (dropped, as edgeHub does).",
    );
    f.sample(
        "edge_dev_unrouted_messages_total",
        &[],
        health.unrouted as f64,
    );
    f.head(
        "edge_dev_expired_messages_total",
        "counter",
        "Messages dropped because their time to live passed.",
    );
    f.sample(
        "edge_dev_expired_messages_total",
        &[],
        health.expired as f64,
    );
    f.head(
        "edge_dev_dashboard_readings_total",
        "counter",
        "Window averages the dashboard took from upstream messages.",
    );
    f.sample(
        "edge_dev_dashboard_readings_total",
        &[],
        readings_total as f64,
    );
    f.head(
        "edge_dev_dashboard_alerts_total",
        "counter",
        "Alert rows (an output named like *Alert*) the dashboard took from upstream messages.",
    );
    f.sample("edge_dev_dashboard_alerts_total", &[], alerts_total as f64);
    f.head(
        "edge_dev_device_latest_average",
        "gauge",
        "The newest window average per device (the series `all` averages every sensor).",
    );
    for (device, v) in latest {
        f.sample("edge_dev_device_latest_average", &[("device", device)], *v);
    }
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
            "edge_dev_upstream_queue_depth 7",
            "edge_dev_upstream_online 0",
            "edge_dev_unrouted_messages_total 2",
            "edge_dev_expired_messages_total 1",
            "edge_dev_dashboard_readings_total 5",
            "edge_dev_dashboard_alerts_total 1",
            "edge_dev_device_latest_average{device=\"bed \\\"1\\\"\"} 38.25",
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
        // Every sample's family has HELP and TYPE before it.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
