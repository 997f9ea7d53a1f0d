//! Microsoft's Python module SDK (azure-iot-device 2.x) against the hub over TLS: connect with a
//! connection string and the dev CA, twin GET, reported patch, output to `$upstream`, an input routed to
//! it, a desired patch and a direct method. Skipped (with a message) when python3 or the SDK is missing,
//! unless EDGE_DEV_REQUIRE_PYTHON_SDK=1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use edge_hub::test_util::*;
use edge_hub::HubError;
use rumqttc::QoS;
use serde_json::{json, Value};
use tokio::sync::mpsc;

fn sdk_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import azure.iot.device, paho.mqtt.client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok && std::env::var("EDGE_DEV_REQUIRE_PYTHON_SDK").as_deref() == Ok("1") {
        panic!(
            "python3 with azure-iot-device is required (EDGE_DEV_REQUIRE_PYTHON_SDK=1): pip install azure-iot-device"
        );
    }
    ok
}

async fn line(rx: &mut mpsc::UnboundedReceiver<String>, prefix: &str) -> String {
    loop {
        let l = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for the Python module to say {prefix}"))
            .unwrap_or_else(|| panic!("the Python module ended before saying {prefix}"));
        if let Some(rest) = l.strip_prefix(prefix) {
            return rest.trim().to_string();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsofts_python_module_client_works_with_the_hub() {
    if !sdk_available() {
        eprintln!("SKIPPED: python3 with azure-iot-device is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let routes = [
        (
            "pyUp",
            "FROM /messages/modules/A/outputs/out1 INTO $upstream",
        ),
        (
            "toPy",
            r#"FROM /messages/modules/B/outputs/toA INTO BrokeredEndpoint("/modules/A/inputs/in1")"#,
        ),
    ];
    let mut desired = BTreeMap::new();
    desired.insert("A".to_string(), json!({"threshold": 5}));
    let hub = TestHub::start(dir.path(), &routes, desired).await;

    let cs = format!(
        "HostName={HUB};DeviceId={DEVICE};ModuleId=A;SharedAccessKey={};GatewayHostName=localhost",
        key_b64("A")
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python_module.py");
    let mut child = Command::new("python3")
        .arg(script)
        .env("HUB_PORT", hub.tls_addr.port().to_string())
        .env("EdgeHubConnectionString", cs)
        .env("EdgeModuleCACertificateFile", &hub.pki.ca_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });

    // Twin: desired from the manifest; reported patch accepted.
    let twin: Value = serde_json::from_str(&line(&mut rx, "TWIN").await).unwrap();
    assert_eq!(twin["desired"]["threshold"], 5);
    assert_eq!(twin["desired"]["$version"], 1);
    line(&mut rx, "REPORTED").await;
    assert_eq!(hub.handle.twin("A").unwrap()["reported"]["python"], true);

    // Output -> $upstream, with its properties.
    line(&mut rx, "SENT").await;
    let q = hub.handle.upstream();
    let m = tokio::time::timeout(WAIT, q.next()).await.unwrap();
    assert_eq!((m.module.as_str(), m.output.as_str()), ("A", "out1"));
    assert_eq!(
        serde_json::from_slice::<Value>(&m.message.body).unwrap(),
        json!({"temp": 38})
    );
    assert_eq!(m.message.message_id.as_deref(), Some("py-1"));
    assert_eq!(m.message.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        m.message.properties.get("k").map(String::as_str),
        Some("v/w")
    );
    q.ack(m.seq).await.unwrap();

    // An input routed to it from module B.
    line(&mut rx, "HANDLERS").await;
    let mut b = connect(&hub, "B").await;
    b.client
        .publish(
            format!("devices/{DEVICE}/modules/B/messages/events/%24.on=toA&x=1"),
            QoS::AtLeastOnce,
            false,
            "hello python",
        )
        .await
        .unwrap();
    b.puback().await.unwrap();
    let input = line(&mut rx, "INPUT").await;
    assert!(input.starts_with("in1 hello python "), "{input}");
    let props: Value = serde_json::from_str(input.trim_start_matches("in1 hello python ")).unwrap();
    assert_eq!(props["x"], "1");

    // Direct method (retried until the SDK's method subscription is in place), then a desired patch.
    let mut answer = None;
    for _ in 0..100 {
        match hub
            .handle
            .invoke_method("A", "hello", json!({"n": 1}), WAIT)
            .await
        {
            Err(HubError::NotConnected { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => {
                answer = Some(other.unwrap());
                break;
            }
        }
    }
    assert_eq!(
        answer,
        Some((200, json!({"echo": {"n": 1}, "name": "hello"})))
    );
    hub.handle
        .update_desired("A", json!({"threshold": 6}))
        .await
        .unwrap();
    let patch: Value = serde_json::from_str(&line(&mut rx, "PATCH").await).unwrap();
    assert_eq!(patch, json!({"threshold": 6, "$version": 2}));

    // The hub restarts; the SDK reconnects by itself and never subscribes again: its session (inputs,
    // methods) must have survived in the hub's store.
    b.stop().await;
    let ports = (hub.tls_addr.port(), hub.plain_addr.port());
    hub.stop().await;
    let mut desired = BTreeMap::new();
    desired.insert("A".to_string(), json!({"threshold": 5}));
    let hub = TestHub::start_at(dir.path(), parse_routes(&routes), desired, |_| {}, ports).await;
    let h = hub.handle.clone();
    eventually("the Python module reconnects", || {
        h.stats().modules["A"].connected
    })
    .await;
    drop(h);
    let mut b = connect(&hub, "B").await;
    b.client
        .publish(
            format!("devices/{DEVICE}/modules/B/messages/events/%24.on=toA&x=2"),
            QoS::AtLeastOnce,
            false,
            "after restart",
        )
        .await
        .unwrap();
    b.puback().await.unwrap();
    let input = line(&mut rx, "INPUT").await;
    assert!(input.starts_with("in1 after restart "), "{input}");
    let answer = hub
        .handle
        .invoke_method("A", "again", json!(2), WAIT)
        .await
        .unwrap();
    assert_eq!(answer, (200, json!({"echo": 2, "name": "again"})));

    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    line(&mut rx, "BYE").await;
    let _ = child.wait();
    b.stop().await;
    hub.stop().await;
}
