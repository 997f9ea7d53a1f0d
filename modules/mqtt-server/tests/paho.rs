//! Black-box tests with Eclipse Paho's Python client (PyPI `paho-mqtt`).

mod common;

use std::time::Duration;

use common::{python, test_settings, Harness};

const T: Duration = Duration::from_secs(60);

/// Publishes `count` messages per QoS in 0, 1, 2 with the given protocol and prints "ok".
const PUBLISH: &str = r#"
import sys, json, paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, proto = int(sys.argv[1]), sys.argv[2]
v5 = proto == "5"
c = mqtt.Client(client_id="paho-" + proto, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
infos = []
for qos in (0, 1, 2):
    props = None
    if v5:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("site", "home")]
        props.CorrelationData = b"corr-%d" % qos
    body = json.dumps({"temp": 37 + qos, "proto": proto})
    infos.append(c.publish("patients/p1/temperature", body, qos=qos, properties=props))
for i in infos:
    i.wait_for_publish(timeout=20)
    assert i.is_published(), "not acknowledged"
c.disconnect()
c.loop_stop()
print("ok")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn paho_v311_and_v5_publish_all_qos() {
    let h = Harness::start(test_settings()).await;
    for (i, proto) in ["3", "5"].iter().enumerate() {
        let (ok, out, err) = python(PUBLISH, &[h.port.to_string(), proto.to_string()], 60).await;
        assert!(ok && out.contains("ok"), "paho {proto}: {out} {err}");
        let got = h.recorder.wait_for(3 * (i + 1), T).await;
        for (qos, (output, m)) in got[3 * i..].iter().enumerate() {
            assert_eq!(output, "output1");
            assert_eq!(m.properties["mqtt-client-id"], format!("paho-{proto}"));
            assert_eq!(m.properties["mqtt-qos"], qos.to_string());
            let v: serde_json::Value = serde_json::from_slice(&m.body).expect("json body");
            assert_eq!(v["temp"], 37 + qos);
            assert_eq!(m.content_type.as_deref(), Some("application/json"));
            if *proto == "5" {
                assert_eq!(m.properties["site"], "home", "MQTT 5 user property carried");
                assert_eq!(
                    m.correlation_id.as_deref(),
                    Some(format!("corr-{qos}").as_str())
                );
            }
        }
    }
    h.stop().await;
}

/// 200 clients, each connected at once and publishing 5 QoS 1 messages; prints "ok".
const CONCURRENT: &str = r#"
import sys, json, threading, paho.mqtt.client as mqtt
port, n, per = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
clients = []
for i in range(n):
    c = mqtt.Client(client_id="esp-%03d" % i, protocol=mqtt.MQTTv5 if i % 2 else mqtt.MQTTv311)
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    clients.append(c)
infos = []
for k in range(per):
    for i, c in enumerate(clients):
        infos.append(c.publish("patients/esp-%03d/temperature" % i, json.dumps({"temp": 36.6, "i": i, "k": k}), qos=1 + (k % 2)))
for info in infos:
    info.wait_for_publish(timeout=60)
    assert info.is_published()
for c in clients:
    c.disconnect()
    c.loop_stop()
print("ok")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_paho_clients_every_message_once() {
    let h = Harness::start(test_settings()).await;
    let (ok, out, err) = python(
        CONCURRENT,
        &[h.port.to_string(), "200".into(), "5".into()],
        120,
    )
    .await;
    assert!(ok && out.contains("ok"), "{out} {err}");
    let got = h.recorder.wait_for(1000, T).await;
    assert_eq!(
        got.len(),
        1000,
        "every acknowledged message arrived, none twice"
    );
    let mut seen = std::collections::HashSet::new();
    for (_, m) in &got {
        let v: serde_json::Value = serde_json::from_slice(&m.body).expect("json");
        let i = v["i"].as_u64().expect("i");
        assert_eq!(m.properties["mqtt-client-id"], format!("esp-{i:03}"));
        assert_eq!(
            m.properties["mqtt-topic"],
            format!("patients/esp-{i:03}/temperature")
        );
        assert!(
            seen.insert((i, v["k"].as_u64().expect("k"))),
            "duplicate {v}"
        );
    }
    assert_eq!(seen.len(), 1000);
    let text = h.metrics_text().await;
    assert!(
        text.contains("mqtt_messages_forwarded_total 1000"),
        "{text}"
    );
    h.stop().await;
}

/// An MQTT 5 client with a will, killed without DISCONNECT; and a v5 subscriber.
const WILL_AND_SUB: &str = r#"
import sys, time, socket, paho.mqtt.client as mqtt
port = int(sys.argv[1])
got = []
def on_message(c, u, m):
    got.append((m.topic, m.qos, m.payload.decode()))
s = mqtt.Client(client_id="nurse", protocol=mqtt.MQTTv5)
s.on_message = on_message
s.connect("127.0.0.1", port)
s.loop_start()
r = s.subscribe("status/#", qos=2)
time.sleep(0.5)
d = mqtt.Client(client_id="esp-will", protocol=mqtt.MQTTv5)
d.will_set("status/esp-will", "offline", qos=1)
d.connect("127.0.0.1", port)
d.loop_start()
time.sleep(0.3)
d.loop_stop()
d.socket().close()  # abrupt: no DISCONNECT
for _ in range(100):
    if got: break
    time.sleep(0.1)
s.disconnect(); s.loop_stop()
print(got)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn paho_v5_will_reaches_subscriber_and_edgehub() {
    let h = Harness::start(test_settings()).await;
    let (ok, out, err) = python(WILL_AND_SUB, &[h.port.to_string()], 60).await;
    assert!(ok, "{out} {err}");
    assert!(
        out.contains("('status/esp-will', 1, 'offline')"),
        "{out} {err}"
    );
    let got = h.recorder.wait_for(1, T).await;
    assert_eq!(&got[0].1.body[..], b"offline");
    assert_eq!(got[0].1.properties["mqtt-client-id"], "esp-will");
    h.stop().await;
}

/// MQTT 5 message expiry on retained messages: the expired one is not delivered, the live one
/// carries its remaining lifetime.
const EXPIRY: &str = r#"
import sys, time, paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port = int(sys.argv[1])
p = mqtt.Client(client_id="pub-exp", protocol=mqtt.MQTTv5)
p.connect("127.0.0.1", port); p.loop_start()
for topic, secs in (("exp/short", 1), ("exp/long", 600)):
    props = Properties(PacketTypes.PUBLISH); props.MessageExpiryInterval = secs
    p.publish(topic, topic, qos=1, retain=True, properties=props).wait_for_publish(timeout=10)
p.disconnect(); p.loop_stop()
time.sleep(2.5)
got = []
def on_message(c, u, m):
    got.append((m.topic, getattr(m.properties, "MessageExpiryInterval", None)))
s = mqtt.Client(client_id="sub-exp", protocol=mqtt.MQTTv5)
s.on_message = on_message
s.connect("127.0.0.1", port); s.loop_start()
s.subscribe("exp/#", qos=1)
time.sleep(1.5)
s.disconnect(); s.loop_stop()
print(got)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn paho_v5_message_expiry_on_retained_messages() {
    let h = Harness::start(test_settings()).await;
    let (ok, out, err) = python(EXPIRY, &[h.port.to_string()], 60).await;
    assert!(ok, "{out} {err}");
    assert!(
        !out.contains("exp/short"),
        "expired retained message delivered: {out}"
    );
    let line = out.trim();
    assert!(line.starts_with("[('exp/long', "), "{out}");
    let secs: u32 = line
        .trim_start_matches("[('exp/long', ")
        .trim_end_matches(")]")
        .parse()
        .expect("remaining lifetime");
    assert!(secs > 0 && secs <= 600, "{out}");
    h.stop().await;
}
