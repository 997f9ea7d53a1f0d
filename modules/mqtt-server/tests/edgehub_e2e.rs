//! End to end through a real hub: the `mqtt-server` binary, connected with a module identity over
//! TLS to edge-dev's hub (which speaks edgeHub's protocol and keeps a durable store), devices
//! publishing with paho-mqtt and mosquitto_pub, and the hub's `$upstream` queue read back.
//! The hub is stopped for 30 s while a device keeps publishing QoS 1.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_hub::test_util::{free_port, ModuleProcess, TestHub};
use edge_hub::HubHandle;

const MODULE: &str = "MqttServerModule";

/// The hub with the module and its route to `$upstream`, on `hub_port` (the same port across
/// restarts: the module reconnects to where the hub was).
async fn start_hub(dir: &Path, hub_port: u16, desired: serde_json::Value) -> TestHub {
    TestHub::builder(dir)
        .modules(&[MODULE])
        .route(
            "toCloud",
            &format!("FROM /messages/modules/{MODULE}/outputs/output1 INTO $upstream"),
        )
        .desired(MODULE, desired)
        .ports(hub_port, 0)
        .start()
        .await
}

/// The module's command for `hub`.
fn module_command(hub: &TestHub, mqtt_port: u16) -> Command {
    let mut cmd = ModuleProcess::command(env!("CARGO_BIN_EXE_mqtt-server"), hub, MODULE);
    cmd.env("MQTT_BIND_ADDRESS", "127.0.0.1")
        .env("MQTT_PORT", mqtt_port.to_string())
        .env("MQTT_METRICS_PORT", "0")
        .env("RUST_LOG", "mqtt_server=info,edge_client=info");
    cmd
}

fn start_module(hub: &TestHub, mqtt_port: u16, extra_env: &[(&str, String)]) -> ModuleProcess {
    let mut cmd = module_command(hub, mqtt_port);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    ModuleProcess::spawn(&mut cmd)
}

fn mosquitto_pub(port: u16, id: &str, topic: &str, body: &str) -> bool {
    Command::new("timeout")
        .args([
            "60",
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-i",
            id,
            "-t",
            topic,
            "-m",
            body,
        ])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Takes `n` messages from `$upstream` (acknowledging each), bounded by `within`.
async fn take_upstream(
    hub: &HubHandle,
    n: usize,
    within: Duration,
) -> Vec<edge_client::wire::Message> {
    let q = hub.upstream();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, q.next()).await {
            Ok(m) => {
                let _ = q.ack(m.seq).await;
                out.push(m.message);
            }
            Err(_) => break,
        }
    }
    out
}

/// One paho device publishing `count` QoS 1 messages, one every `gap` seconds; prints "ok" once all
/// were acknowledged.
const DEVICE_SCRIPT: &str = r#"
import sys, json, time, paho.mqtt.client as mqtt
port, count, gap = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
c = mqtt.Client(client_id="esp-outage", protocol=mqtt.MQTTv311)
c.max_inflight_messages_set(100)
c.connect("127.0.0.1", port, keepalive=60)
c.loop_start()
infos = []
for i in range(count):
    infos.append(c.publish("MyTopic", json.dumps({"temp": 37.0, "seq": i}), qos=1))
    time.sleep(gap)
for info in infos:
    info.wait_for_publish(timeout=120)
    assert info.is_published(), "not acknowledged"
c.disconnect(); c.loop_stop()
print("ok")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn through_the_hub_with_a_30_second_outage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub_port = free_port();
    let hub = start_hub(
        dir.path(),
        hub_port,
        serde_json::json!({"enrichDeviceId": true}),
    )
    .await;

    let mqtt_port = free_port();
    let module = start_module(&hub, mqtt_port, &[]);

    // 1. a reading goes through: body, properties, JSON content type, enrichment from the twin
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        let port = mqtt_port;
        let ok = tokio::task::spawn_blocking(move || {
            mosquitto_pub(
                port,
                "esp-1",
                "MyTopic",
                r#"{"temp":38,"timecreated":"t0"}"#,
            )
        })
        .await
        .expect("join");
        if ok {
            got = take_upstream(&hub.handle, 1, Duration::from_secs(30)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(got.len(), 1, "a reading reached $upstream");
    let m = &got[0];
    let v: serde_json::Value = serde_json::from_slice(&m.body).expect("json body");
    assert_eq!(v["temp"], 38);
    assert_eq!(
        v["deviceId"], "esp-1",
        "enrichDeviceId from the module twin"
    );
    assert_eq!(m.properties["mqtt-topic"], "MyTopic");
    assert_eq!(m.properties["mqtt-client-id"], "esp-1");
    assert_eq!(m.properties["mqtt-qos"], "1");
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.content_encoding.as_deref(), Some("utf-8"));
    assert!(m.message_id.is_some() && m.creation_time.is_some());
    // the module reported the settings in force
    let mut reported = serde_json::Value::Null;
    for _ in 0..100 {
        reported = hub
            .handle
            .twin(MODULE)
            .map(|t| t["reported"]["mqttServer"].clone())
            .unwrap_or_default();
        if !reported.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reported["enrichDeviceId"], true, "{reported}");
    assert_eq!(reported["output"], "output1");

    // 2. the hub goes away for 30 s while a device keeps publishing QoS 1
    hub.stop().await;
    let outage_started = Instant::now();
    let count = 40;
    let device = tokio::spawn(async move {
        tokio::task::spawn_blocking(move || {
            Command::new("timeout")
                .args([
                    "180",
                    "python3",
                    "-c",
                    DEVICE_SCRIPT,
                    &mqtt_port.to_string(),
                    &count.to_string(),
                    "0.5",
                ])
                .output()
        })
        .await
    });
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage_started.elapsed())).await;
    let hub = start_hub(
        dir.path(),
        hub_port,
        serde_json::json!({"enrichDeviceId": true}),
    )
    .await;
    let got = take_upstream(&hub.handle, count, Duration::from_secs(120)).await;
    let out = device
        .await
        .expect("join")
        .expect("join")
        .expect("python runs");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok"),
        "device: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seqs: Vec<u64> = got
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.body).expect("json")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..count as u64).collect::<Vec<_>>(),
        "every message after the outage, each once"
    );
    // nothing more is on its way
    let extra = take_upstream(&hub.handle, 1, Duration::from_secs(2)).await;
    assert!(extra.is_empty(), "no duplicates: {extra:?}");
    drop(module);
    hub.stop().await;
}

/// Publishes with mosquitto_pub until the server takes it (it may still be starting).
async fn publish_when_up(port: u16, id: &str, body: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (id, body) = (id.to_string(), body.to_string());
        if tokio::task::spawn_blocking(move || mosquitto_pub(port, &id, "MyTopic", &body))
            .await
            .unwrap_or(false)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_spool_acknowledged_readings_survive_kill_9_while_the_hub_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub_port = free_port();
    let hub = start_hub(dir.path(), hub_port, serde_json::json!({})).await;
    let mqtt_port = free_port();
    let spool = [(
        "MQTT_SPOOL_PATH",
        dir.path().join("spool.redb").display().to_string(),
    )];
    let mut module = start_module(&hub, mqtt_port, &spool);
    assert!(publish_when_up(mqtt_port, "esp-k", r#"{"seq":0}"#).await);
    assert_eq!(
        take_upstream(&hub.handle, 1, Duration::from_secs(30))
            .await
            .len(),
        1
    );

    // the hub goes away; readings are acknowledged from the spool
    hub.stop().await;
    for i in 1..=5 {
        assert!(
            publish_when_up(mqtt_port, "esp-k", &format!(r#"{{"seq":{i}}}"#)).await,
            "acknowledged while the hub is down"
        );
    }
    // the module dies without any chance to clean up
    let _ = module.0.kill();
    let _ = module.0.wait();

    // hub and module come back: the acknowledged readings go upstream
    let hub = start_hub(dir.path(), hub_port, serde_json::json!({})).await;
    let module = start_module(&hub, mqtt_port, &spool);
    // Reading 0 was forwarded before the kill; if the kill came between edgeHub's PUBACK and the spool's
    // delete of it, it is forwarded once more (at least once allows exactly that duplicate).
    let mut seqs: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(1..=5).all(|s| seqs.contains(&s)) && Instant::now() < deadline {
        for m in take_upstream(&hub.handle, 1, Duration::from_secs(5)).await {
            seqs.push(
                serde_json::from_slice::<serde_json::Value>(&m.body).expect("json")["seq"]
                    .as_u64()
                    .expect("seq"),
            );
        }
    }
    seqs.sort_unstable();
    let replayed_first = seqs.first() == Some(&0);
    if replayed_first {
        seqs.remove(0);
    }
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5],
        "every acknowledged reading once (plus at most reading 0 again)"
    );
    assert!(
        take_upstream(&hub.handle, 1, Duration::from_secs(2))
            .await
            .is_empty(),
        "no duplicates"
    );
    drop(module);
    hub.stop().await;
}

/// 200 clients (half MQTT 5, half 3.1.1), each publishing 5 messages at QoS 1 and 2; prints "ok".
const CONCURRENT: &str = r#"
import sys, json, paho.mqtt.client as mqtt
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
    info.wait_for_publish(timeout=120)
    assert info.is_published()
for c in clients:
    c.disconnect()
    c.loop_stop()
print("ok")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_devices_through_the_hub_every_message_once_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub_port = free_port();
    let hub = start_hub(dir.path(), hub_port, serde_json::json!({})).await;
    let mqtt_port = free_port();
    let module = start_module(&hub, mqtt_port, &[]);
    assert!(publish_when_up(mqtt_port, "probe", r#"{"probe":true}"#).await);
    assert_eq!(
        take_upstream(&hub.handle, 1, Duration::from_secs(30))
            .await
            .len(),
        1
    );

    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args([
                "300",
                "python3",
                "-c",
                CONCURRENT,
                &mqtt_port.to_string(),
                "200",
                "5",
            ])
            .output()
    })
    .await
    .expect("join")
    .expect("python runs");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok"),
        "devices: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = take_upstream(&hub.handle, 1000, Duration::from_secs(120)).await;
    assert_eq!(got.len(), 1000);
    let mut seen = std::collections::HashSet::new();
    for m in &got {
        let v: serde_json::Value = serde_json::from_slice(&m.body).expect("json body intact");
        let (i, k) = (v["i"].as_u64().expect("i"), v["k"].as_u64().expect("k"));
        assert_eq!(m.properties["mqtt-client-id"], format!("esp-{i:03}"));
        assert_eq!(
            m.properties["mqtt-topic"],
            format!("patients/esp-{i:03}/temperature")
        );
        assert_eq!(m.properties["mqtt-qos"], (1 + k % 2).to_string());
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert!(seen.insert((i, k)), "duplicate {v}");
    }
    assert!(
        take_upstream(&hub.handle, 1, Duration::from_secs(2))
            .await
            .is_empty(),
        "no duplicates"
    );
    drop(module);
    hub.stop().await;
}

/// Runs a command line (with `timeout 60`) and says whether it exited 0.
fn run_ok(args: &[&str]) -> bool {
    Command::new("timeout")
        .arg("60")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// An MQTT 5 publish (QoS 1) with rumqttc's v5 client; the PUBACK's reason code, or the reason of a
/// DISCONNECT, as text.
async fn v5_publish(port: u16, id: &str, topic: String, payload: Vec<u8>) -> String {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_max_packet_size(Some(1 << 20));
    let (c, mut el) = AsyncClient::new(o, 10);
    c.publish(
        topic,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        payload,
    )
    .await
    .expect("queued");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => return format!("{:?}", a.reason),
            Ok(Ok(Event::Incoming(Packet::Disconnect(d)))) => {
                return format!("disconnect {:?}", d.reason_code)
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("error {e}"),
            Err(_) => return "no answer".into(),
        }
    }
}

/// Hostile device input (issue: one packet stalled every device). A 65,535-byte topic, a
/// 65,535-byte client id and a message too large for edgeHub once its properties are added are refused
/// at the device (MQTT 5: PUBACK 0x90 / 0x97; MQTT 3.1.1: connection closed or CONNACK refused), never
/// acknowledged and then dropped; meanwhile a steady device is acknowledged without a hitch, its
/// readings reach `$upstream` each exactly once, and the module's link to edgeHub never drops.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_topics_client_ids_and_sizes_are_refused_at_the_device_and_the_rest_flows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub_port = free_port();
    let hub = start_hub(dir.path(), hub_port, serde_json::json!({})).await;
    let mqtt_port = free_port();
    let log = dir.path().join("module.log");
    // the module, with its log kept for the checks at the end
    let module = ModuleProcess::spawn(
        module_command(&hub, mqtt_port).stderr(std::fs::File::create(&log).expect("log file")),
    );
    assert!(
        publish_when_up(mqtt_port, "esp-first", r#"{"temp":37}"#).await,
        "the server takes a reading"
    );
    assert_eq!(
        take_upstream(&hub.handle, 1, Duration::from_secs(30))
            .await
            .len(),
        1
    );

    // a steady device, 200 QoS 1 readings, while the hostile ones come
    let count = 200;
    let steady = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args([
                "120",
                "python3",
                "-c",
                DEVICE_SCRIPT,
                &mqtt_port.to_string(),
                &count.to_string(),
                "0.02",
            ])
            .output()
    });

    let port = mqtt_port.to_string();
    let huge_topic = "t".repeat(65_535);
    let huge_id = "c".repeat(65_535);
    // edgeHub takes 262,144 bytes of body plus properties: a body just under it passes the server's
    // own max_payload (262,144) but not edgeHub once the mqtt-* and system properties are added
    let big_body = format!(r#"{{"temp":37,"pad":"{}"}}"#, "x".repeat(262_144 - 100));
    let big_file = dir.path().join("big.json");
    std::fs::write(&big_file, &big_body).expect("write");
    let big_path = big_file.to_string_lossy().to_string();
    let (p, t, i) = (port.clone(), huge_topic.clone(), huge_id.clone());
    let v311 = tokio::task::spawn_blocking(move || {
        [
            // the issue's reproduction, verbatim in effect
            run_ok(&[
                "mosquitto_pub",
                "-p",
                &p,
                "-q",
                "1",
                "-t",
                &t,
                "-m",
                r#"{"temp":37}"#,
            ]),
            run_ok(&[
                "mosquitto_pub",
                "-p",
                &p,
                "-q",
                "1",
                "-i",
                &i,
                "-t",
                "MyTopic",
                "-m",
                r#"{"temp":37}"#,
            ]),
            run_ok(&[
                "mosquitto_pub",
                "-p",
                &p,
                "-q",
                "1",
                "-i",
                "esp-big",
                "-t",
                "MyTopic",
                "-f",
                &big_path,
            ]),
        ]
    })
    .await
    .expect("join");
    assert_eq!(
        v311,
        [false, false, false],
        "MQTT 3.1.1: topic, client id and size refused (no PUBACK, no CONNACK 0)"
    );
    assert_eq!(
        v5_publish(
            mqtt_port,
            "esp-v5-topic",
            huge_topic.clone(),
            b"{}".to_vec()
        )
        .await,
        "TopicNameInvalid"
    );
    assert_eq!(
        v5_publish(
            mqtt_port,
            "esp-v5-big",
            "MyTopic".into(),
            big_body.clone().into_bytes()
        )
        .await,
        "QuotaExceeded"
    );
    // a message that fits is still taken on the same kind of connection
    assert_eq!(
        v5_publish(
            mqtt_port,
            "esp-v5-ok",
            "MyTopic".into(),
            br#"{"temp":36.6}"#.to_vec()
        )
        .await,
        "Success"
    );

    let out = steady.await.expect("join").expect("python runs");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok"),
        "the steady device was acknowledged throughout: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = take_upstream(&hub.handle, count + 1, Duration::from_secs(60)).await;
    let extra = take_upstream(&hub.handle, 1, Duration::from_secs(2)).await;
    assert!(extra.is_empty(), "nothing else upstream: {extra:?}");
    let mut seqs = Vec::new();
    let mut others = Vec::new();
    for m in &got {
        assert!(m.properties["mqtt-topic"].len() < 100);
        assert!(m.body.len() < 1000, "no oversized message was forwarded");
        match m.properties["mqtt-client-id"].as_str() {
            "esp-outage" => seqs.push(
                serde_json::from_slice::<serde_json::Value>(&m.body).expect("json")["seq"]
                    .as_u64()
                    .expect("seq"),
            ),
            other => others.push(other.to_string()),
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..count as u64).collect::<Vec<_>>(), "each once");
    assert_eq!(others, vec!["esp-v5-ok".to_string()]);

    drop(module);
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(
        !log.contains("disconnected from edgeHub") && !log.contains("unsolicited"),
        "the link to edgeHub never dropped:\n{}",
        &log[log.len().saturating_sub(3000)..]
    );
    for what in [
        "refusing connection: over a limit",
        "disconnecting client: a publish over a limit",
        "refusing a publish (MQTT 5 reason code 0x90)",
        "refusing a publish (MQTT 5 reason code 0x97)",
    ] {
        assert!(log.contains(what), "log says {what:?}");
    }
    hub.stop().await;
}
