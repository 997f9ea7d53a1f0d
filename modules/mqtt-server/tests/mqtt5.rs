//! MQTT 5 session and will rules, flow control, shared subscriptions and subscription identifiers,
//! with Eclipse Paho's Python client where it can express the case and raw packets (rumqttc's v5 codec
//! and client) where it cannot; and sessions and retained messages kept across a restart of the binary
//! (SIGTERM and SIGKILL) with `MQTT_STATE_PATH`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{python, test_settings, Harness};
use edge_hub::test_util::{free_port, ModuleProcess};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw MQTT 5 client: writes packets with rumqttc's v5 codec and reads what the server sends.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(
        port: u16,
        id: &str,
        props: Option<p5::ConnectProperties>,
    ) -> (Raw, p5::ConnAck) {
        let mut r = Raw {
            s: TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
            buf: BytesMut::new(),
        };
        let c = p5::Connect {
            keep_alive: 30,
            client_id: id.into(),
            clean_start: true,
            properties: props,
        };
        r.send(p5::Packet::Connect(c, None, None)).await;
        match r.recv(Duration::from_secs(10)).await {
            Some(p5::Packet::ConnAck(a)) => (r, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, p: p5::Packet) {
        let mut out = BytesMut::new();
        p.write(&mut out, Some(1 << 20)).expect("encode");
        self.s.write_all(&out).await.expect("write");
    }

    async fn recv(&mut self, within: Duration) -> Option<p5::Packet> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match p5::Packet::read(&mut self.buf, Some(1 << 20)) {
                Ok(p) => return Some(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("bad packet from server: {e}"),
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn subscribe(
        &mut self,
        pkid: u16,
        filters: &[&str],
        id: Option<usize>,
    ) -> Vec<p5::SubscribeReasonCode> {
        let filters = filters
            .iter()
            .map(|f| p5::Filter::new(*f, Q5::AtLeastOnce))
            .collect();
        let properties = id.map(|id| p5::SubscribeProperties {
            id: Some(id),
            user_properties: Vec::new(),
        });
        self.send(p5::Packet::Subscribe(p5::Subscribe {
            pkid,
            filters,
            properties,
        }))
        .await;
        loop {
            match self.recv(Duration::from_secs(10)).await {
                Some(p5::Packet::SubAck(a)) => return a.return_codes,
                Some(_) => {}
                None => panic!("no SUBACK"),
            }
        }
    }

    async fn publish(&mut self, pkid: u16, topic: &str, body: &str) {
        let mut p = p5::Publish::new(topic, Q5::AtLeastOnce, body.as_bytes().to_vec(), None);
        p.pkid = pkid;
        self.send(p5::Packet::Publish(p)).await;
    }
}

/// MQTT 5 (issue: an expired session was resumed). A session with expiry 5 s, its client away for
/// 7 s: reconnecting without clean start finds no session (session present 0) and nothing queued,
/// although the periodic sweep (every 60 s) has not run. With expiry 60 s the same steps resume it.
const EXPIRY: &str = r#"
import sys, time, paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, expiry, away = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
got, present = [], []
def on_connect(c, u, flags, rc, props=None):
    present.append(flags.get("session present"))
def on_message(c, u, m):
    got.append(m.payload)
def connect(clean):
    c = mqtt.Client(client_id="sleepy", protocol=mqtt.MQTTv5)
    c.on_connect, c.on_message = on_connect, on_message
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = expiry
    c.connect("127.0.0.1", port, keepalive=30, clean_start=clean, properties=p)
    c.loop_start()
    t = time.time()
    while not present and time.time() - t < 10:
        time.sleep(0.02)
    return c
a = connect(True)
a.subscribe("x", qos=1)
time.sleep(0.5)
a.disconnect(); a.loop_stop()
time.sleep(away)
b = mqtt.Client(client_id="sender", protocol=mqtt.MQTTv5)
b.connect("127.0.0.1", port); b.loop_start()
b.publish("x", b"hello", qos=1).wait_for_publish(10)
b.disconnect(); b.loop_stop()
present.clear()
a = connect(False)
time.sleep(1.5)
a.disconnect(); a.loop_stop()
print("present=%d got=%d" % (int(bool(present[0])), len(got)))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_session_is_not_resumed_and_a_live_one_is() {
    let h = Harness::start(test_settings()).await;
    let (ok, out, err) = python(EXPIRY, &[h.port.to_string(), "5".into(), "7".into()], 60).await;
    assert!(
        ok && out.contains("present=0 got=0"),
        "expired: {out} {err}"
    );
    let (ok, out, err) = python(EXPIRY, &[h.port.to_string(), "60".into(), "1".into()], 60).await;
    assert!(ok && out.contains("present=1 got=1"), "live: {out} {err}");
    h.stop().await;
}

/// Connects with a will (delay `will_delay`) and session expiry `expiry`, then drops the TCP
/// connection without DISCONNECT; returns how long the will took to reach edgeHub (the recorder).
async fn will_after_drop(h: &Harness, id: &str, will_delay: u32, expiry: u32) -> Duration {
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new(id, "127.0.0.1", h.port);
    o.set_session_expiry_interval(Some(expiry));
    o.set_last_will(p5::LastWill::new(
        format!("wills/{id}"),
        "gone",
        Q5::AtLeastOnce,
        false,
        Some(p5::LastWillProperties {
            delay_interval: Some(will_delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    ));
    let (client, mut el) = AsyncClient::new(o, 10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(p5::Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("connect: {other:?}"),
        }
    }
    let before = h.recorder.count();
    // the socket closes with the event loop: no DISCONNECT
    drop(el);
    drop(client);
    let dropped = Instant::now();
    let topic = format!("wills/{id}");
    loop {
        let snapshot = h.recorder.snapshot();
        if snapshot[before.min(snapshot.len())..]
            .iter()
            .any(|(_, m)| m.properties["mqtt-topic"] == topic)
        {
            return dropped.elapsed();
        }
        assert!(
            dropped.elapsed() < Duration::from_secs(20),
            "no will for {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// MQTT 5 3.1.3.2.2: the will is published when the will delay passes or the session ends,
/// whichever is first (issue: it always waited for the delay).
#[tokio::test(flavor = "multi_thread")]
async fn the_will_goes_when_the_session_ends_if_that_is_before_the_delay() {
    let h = Harness::start(test_settings()).await;
    let at_once = will_after_drop(&h, "w-expiry-0", 5, 0).await;
    assert!(
        at_once < Duration::from_millis(1500),
        "delay 5 s, expiry 0: {at_once:?}"
    );
    let at_expiry = will_after_drop(&h, "w-expiry-2", 5, 2).await;
    assert!(
        at_expiry >= Duration::from_millis(1800) && at_expiry < Duration::from_millis(3500),
        "delay 5 s, expiry 2 s: {at_expiry:?}"
    );
    let at_delay = will_after_drop(&h, "w-delay-2", 2, 60).await;
    assert!(
        at_delay >= Duration::from_millis(1800) && at_delay < Duration::from_millis(3500),
        "delay 2 s, expiry 60 s: {at_delay:?}"
    );
    h.stop().await;
}

/// MQTT 5 4.9: a client that sends more unacknowledged QoS 1/2 publishes than the Receive Maximum
/// announced in CONNACK is disconnected with 0x93 (issue: it was not enforced).
#[tokio::test(flavor = "multi_thread")]
async fn receive_maximum_is_enforced_with_reason_0x93() {
    let settings = mqtt_server::Settings {
        max_inflight: 3,
        ..test_settings()
    };
    let h = Harness::start(settings).await;
    // edgeHub holds every message: no PUBACK can go out
    h.recorder
        .hold
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut c, ack) = Raw::connect(h.port, "flooder", None).await;
    assert_eq!(ack.properties.and_then(|p| p.receive_max), Some(3));
    for pkid in 1..=4 {
        c.publish(pkid, "t", "x").await;
    }
    match c.recv(Duration::from_secs(10)).await {
        Some(p5::Packet::Disconnect(d)) => assert_eq!(
            d.reason_code,
            p5::DisconnectReasonCode::ReceiveMaximumExceeded
        ),
        other => panic!("expected DISCONNECT 0x93, got {other:?}"),
    }
    h.recorder.release();
    // within the limit, a client is served
    let (mut ok, _) = Raw::connect(h.port, "polite", None).await;
    for pkid in 1..=3 {
        ok.publish(pkid, "t", "y").await;
    }
    let mut acks = 0;
    while acks < 3 {
        match ok.recv(Duration::from_secs(10)).await {
            Some(p5::Packet::PubAck(_)) => acks += 1,
            Some(_) => {}
            None => panic!("only {acks} PUBACKs"),
        }
    }
    h.stop().await;
}

/// CONNACK announces shared subscriptions and subscription identifiers; a malformed share name is a
/// bad topic filter (0x8F), a good one is granted.
#[tokio::test(flavor = "multi_thread")]
async fn connack_announces_both_features_and_bad_share_names_are_refused() {
    let h = Harness::start(test_settings()).await;
    let (mut c, ack) = Raw::connect(h.port, "announce", None).await;
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.shared_subscription_available, Some(1));
    assert_eq!(props.subscription_identifiers_available, Some(1));
    let codes = c
        .subscribe(
            1,
            &["$share/g/t/#", "$share/g", "$share//t", "$share/g+/t"],
            None,
        )
        .await;
    assert_eq!(codes[0], p5::SubscribeReasonCode::Success(Q5::AtLeastOnce));
    for code in &codes[1..] {
        assert_eq!(*code, p5::SubscribeReasonCode::TopicFilterInvalid);
    }
    h.stop().await;
}

/// Three paho consumers in one shared group split 3,000 QoS 1 messages: each gets some, none is
/// lost or duplicated. Subscription identifiers come back with each delivery, all of those that
/// matched.
const SHARED: &str = r#"
import sys, time, threading, paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, n = int(sys.argv[1]), int(sys.argv[2])
lock = threading.Lock()
got = {0: [], 1: [], 2: []}
ids = []
def make(i):
    def on_message(c, u, m):
        with lock:
            got[i].append(m.payload.decode())
            ids.append(sorted(getattr(m.properties, "SubscriptionIdentifier", [])))
    c = mqtt.Client(client_id="worker-%d" % i, protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    p = Properties(PacketTypes.SUBSCRIBE)
    p.SubscriptionIdentifier = 40 + i
    r, _ = c.subscribe("$share/workers/jobs/#", qos=1, properties=p)
    assert r == 0
    return c
consumers = [make(i) for i in range(3)]
time.sleep(1)
pub = mqtt.Client(client_id="producer", protocol=mqtt.MQTTv5)
pub.max_inflight_messages_set(20)
pub.connect("127.0.0.1", port); pub.loop_start()
infos = [pub.publish("jobs/%d" % (k % 7), str(k), qos=1) for k in range(n)]
for i in infos:
    i.wait_for_publish(60)
t = time.time()
while sum(len(v) for v in got.values()) < n and time.time() - t < 60:
    time.sleep(0.1)
time.sleep(1)
allgot = [x for v in got.values() for x in v]
print("counts=%s union=%d dups=%d ids_ok=%s" % (
    ",".join(str(len(got[i])) for i in range(3)), len(set(allgot)), len(allgot) - len(set(allgot)),
    all(len(x) == 1 and 40 <= x[0] <= 42 for x in ids)))
for c in consumers + [pub]:
    c.disconnect(); c.loop_stop()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_group_of_three_splits_3000_messages_none_lost_or_duplicated() {
    let h = Harness::start(test_settings()).await;
    let (ok, out, err) = python(SHARED, &[h.port.to_string(), "3000".into()], 180).await;
    assert!(ok, "{out} {err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("counts="))
        .expect("result line");
    assert!(line.contains("union=3000 dups=0 ids_ok=True"), "{line}");
    let counts: Vec<usize> = line["counts=".len()..]
        .split_whitespace()
        .next()
        .expect("counts")
        .split(',')
        .map(|c| c.parse().expect("count"))
        .collect();
    assert!(
        counts.iter().all(|&c| c >= 500),
        "each member takes a share: {counts:?}"
    );
    h.stop().await;
}

const SUB_IDS: &str = r#"
import sys, time, paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port = int(sys.argv[1])
got = []
c = mqtt.Client(client_id="ids", protocol=mqtt.MQTTv5)
c.on_message = lambda c, u, m: got.append((m.topic, sorted(getattr(m.properties, "SubscriptionIdentifier", []))))
c.connect("127.0.0.1", port); c.loop_start()
for filt, sid in (("ward/+/temp", 42), ("ward/#", 7)):
    p = Properties(PacketTypes.SUBSCRIBE); p.SubscriptionIdentifier = sid
    c.subscribe(filt, qos=1, properties=p)
c.subscribe("other/#", qos=1)
time.sleep(0.5)
c.publish("ward/3/temp", b"38", qos=1).wait_for_publish(10)
c.publish("ward/3/spo2", b"97", qos=1).wait_for_publish(10)
c.publish("other/x", b"1", qos=1).wait_for_publish(10)
t = time.time()
while len(got) < 3 and time.time() - t < 10:
    time.sleep(0.05)
c.disconnect(); c.loop_stop()
print(sorted(got))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn subscription_identifiers_come_back_on_delivery() {
    let h = Harness::start(test_settings()).await;
    let (ok, out, err) = python(SUB_IDS, &[h.port.to_string()], 60).await;
    assert!(ok, "{out} {err}");
    assert!(
        out.contains("[('other/x', []), ('ward/3/spo2', [7]), ('ward/3/temp', [7, 42])]"),
        "{out}"
    );
    h.stop().await;
}

/// A shared-group member that leaves without acknowledging hands its messages to the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_leaves_hands_its_unacknowledged_messages_to_the_group() {
    let h = Harness::start(test_settings()).await;
    let (mut lazy, _) = Raw::connect(h.port, "lazy", None).await;
    let (mut busy, _) = Raw::connect(h.port, "busy", None).await;
    lazy.subscribe(1, &["$share/g/q"], None).await;
    busy.subscribe(1, &["$share/g/q"], None).await;
    let (mut producer, _) = Raw::connect(h.port, "producer", None).await;
    for k in 1..=10u16 {
        producer.publish(k, "q", &format!("m{k}")).await;
    }
    // `lazy` reads its share and acknowledges nothing; `busy` acknowledges what it gets
    let mut lazy_got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lazy_got.len() < 5 && Instant::now() < deadline {
        if let Some(p5::Packet::Publish(p)) = lazy.recv(Duration::from_millis(300)).await {
            lazy_got.push(String::from_utf8_lossy(&p.payload).to_string());
        }
    }
    assert!(
        !lazy_got.is_empty(),
        "round-robin gave the lazy member some"
    );
    drop(lazy);
    let mut busy_got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while busy_got.len() < 10 && Instant::now() < deadline {
        if let Some(p5::Packet::Publish(p)) = busy.recv(Duration::from_millis(500)).await {
            busy_got.push(String::from_utf8_lossy(&p.payload).to_string());
            busy.send(p5::Packet::PubAck(p5::PubAck::new(p.pkid, None)))
                .await;
        }
    }
    busy_got.sort();
    busy_got.dedup();
    assert_eq!(
        busy_got.len(),
        10,
        "every message reached the remaining member: {busy_got:?}"
    );
    h.stop().await;
}

fn start_bin(port: u16, state: &std::path::Path) -> ModuleProcess {
    ModuleProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_mqtt-server"))
            .args(["--sink", "stdout"])
            .env("MQTT_BIND_ADDRESS", "127.0.0.1")
            .env("MQTT_PORT", port.to_string())
            .env("MQTT_METRICS_PORT", "0")
            .env("MQTT_STATE_PATH", state)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// step "subscribe": a persistent paho client (3.1.1, clean session 0) subscribes and leaves;
/// step "collect": it comes back and prints what its session held.
const PERSISTENT: &str = r#"
import sys, time, paho.mqtt.client as mqtt
port, step = int(sys.argv[1]), sys.argv[2]
got, present = [], []
c = mqtt.Client(client_id="bedside-7", clean_session=False, protocol=mqtt.MQTTv311)
c.on_connect = lambda c, u, flags, rc: present.append(flags.get("session present"))
c.on_message = lambda c, u, m: got.append(m.payload.decode())
c.connect("127.0.0.1", port, keepalive=30); c.loop_start()
if step == "subscribe":
    r, _ = c.subscribe("alerts/#", qos=1); time.sleep(0.5)
else:
    t = time.time()
    while len(got) < 5 and time.time() - t < 10:
        time.sleep(0.05)
    time.sleep(0.5)
c.disconnect(); c.loop_stop()
print("present=%s got=%s" % (int(bool(present and present[0])), ",".join(got)))
"#;

fn run_python(script: &str, args: &[String]) -> String {
    let out = Command::new("timeout")
        .args(["60", "python3", "-c", script])
        .args(args)
        .output()
        .expect("python runs");
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn pub_alerts(port: u16, retained: &str) {
    for k in 1..=5 {
        let st = Command::new("timeout")
            .args([
                "20",
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
            ])
            .args([
                "-i",
                "nurse-station",
                "-t",
                "alerts/bed-7",
                "-m",
                &format!("a{k}"),
            ])
            .status()
            .expect("mosquitto_pub");
        assert!(st.success());
    }
    let st = Command::new("timeout")
        .args([
            "20",
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-r",
        ])
        .args(["-t", "status/bed-7", "-m", retained])
        .status()
        .expect("mosquitto_pub");
    assert!(st.success());
}

fn retained_now(port: u16) -> String {
    let out = Command::new("timeout")
        .args([
            "20",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-C",
            "1",
        ])
        .args(["-W", "10", "-t", "status/#"])
        .output()
        .expect("mosquitto_sub");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// With `MQTT_STATE_PATH`, a persistent client's session and the messages queued for it while it was
/// away survive a restart of the server (SIGTERM), and separately a `kill -9`; so do retained
/// messages.
#[test]
fn sessions_and_retained_messages_survive_sigterm_and_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.redb");
    for (round, signal) in ["TERM", "KILL"].iter().enumerate() {
        let port = free_port();
        let server = start_bin(port, &state);
        wait_listening(port);
        let out = run_python(PERSISTENT, &[port.to_string(), "subscribe".into()]);
        assert!(out.contains("present="), "{out}");
        let retained = format!("ok-{round}");
        pub_alerts(port, &retained);
        if *signal == "KILL" {
            // queued messages reach the state file within milliseconds (group commit)
            std::thread::sleep(Duration::from_millis(500));
        }
        let st = Command::new("kill")
            .args([&format!("-{signal}"), &server.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
        drop(server);

        let port = free_port();
        let _server = start_bin(port, &state);
        wait_listening(port);
        let out = run_python(PERSISTENT, &[port.to_string(), "collect".into()]);
        assert!(
            out.contains("present=1 got=a1,a2,a3,a4,a5"),
            "after SIG{signal}: {out}"
        );
        assert_eq!(
            retained_now(port),
            retained,
            "retained message after SIG{signal}"
        );
    }
}
