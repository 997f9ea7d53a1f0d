//! As an IoT Edge module: the `esp-sim` binary with a module identity (EdgeHubConnectionString)
//! against edge-dev's local hub, which speaks edgeHub's protocol. Settings come from the twin's
//! desired properties, change live, bad ones are refused and reported; devices publish to a real
//! Mosquitto watched by `mosquitto_sub`.
#![cfg(feature = "module")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::{have_mosquitto, Broker, Subscriber};
use edge_dev::hub::{Hub, HubConfig, HubListeners, ModuleIdentity};
use edge_dev::pki::DevPki;
use tokio::net::TcpListener;

const HUB: &str = "edge-dev.local";
const DEVICE: &str = "dev1";
const MODULE: &str = "ESPSimModule";
const KEY: [u8; 32] = [7; 32];

struct Module(Child);

impl Drop for Module {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_the_twin_live() {
    if !have_mosquitto() {
        return;
    }
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::load_or_create(&dir.path().join("pki"), &[HUB]).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_cert_pem).unwrap();
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hub_addr: SocketAddr = tls.local_addr().unwrap();
    let config = HubConfig {
        iothub_hostname: HUB.into(),
        device_id: DEVICE.into(),
        data_dir: dir.path().join("data"),
        ..HubConfig::default()
    };
    let table = edge_routes::RouteTable::new(Vec::new()).unwrap();
    let mut twins = BTreeMap::new();
    twins.insert(
        MODULE.to_string(),
        serde_json::json!({"mode": "fleet", "devices": 2, "interval_ms": 50, "topic": "twin/{device}", "seed": 5}),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let hub = Hub::start(
        config,
        vec![ModuleIdentity {
            module_id: MODULE.into(),
            primary_key: KEY.to_vec(),
        }],
        table,
        twins,
        HubListeners {
            tls: Some((tls, pki.server_config())),
            plain: None,
        },
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .unwrap();

    let key = base64::engine::general_purpose::STANDARD.encode(KEY);
    let mut first = Subscriber::start(broker.port, "twin/#");
    let module = Module(
        Command::new(env!("CARGO_BIN_EXE_esp-sim"))
            .env(
                "EdgeHubConnectionString",
                format!("HostName={HUB};GatewayHostName=localhost;DeviceId={DEVICE};ModuleId={MODULE};SharedAccessKey={key}"),
            )
            .env("EdgeModuleCACertificateFile", &ca)
            .env("IOTEDGE_GATEWAYPORT", hub_addr.port().to_string())
            .env("MQTT_HOST", "127.0.0.1")
            .env("MQTT_PORT", broker.port.to_string())
            .env("RUST_LOG", "esp_sim=info,edge_client=info")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // 1. The twin's desired properties are in force: fleet of 2 on twin/{device}.
    let got =
        tokio::task::spawn_blocking(move || first.collect(6, Duration::from_secs(60)).to_vec())
            .await
            .unwrap();
    assert_eq!(got.len(), 6, "messages on the twin's topic");
    for r in &got {
        assert!(
            r.topic == "twin/esp-sim-00000" || r.topic == "twin/esp-sim-00001",
            "{}",
            r.topic
        );
        let v: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
        assert_eq!(format!("twin/{}", v["deviceId"].as_str().unwrap()), r.topic);
        assert_eq!(r.qos, 1);
    }

    // 2. A desired patch applies live.
    let mut live = Subscriber::start(broker.port, "live/#");
    hub.update_desired(MODULE, serde_json::json!({"topic": "live/{device}"}))
        .await
        .unwrap();
    let got =
        tokio::task::spawn_blocking(move || live.collect(4, Duration::from_secs(30)).to_vec())
            .await
            .unwrap();
    assert_eq!(got.len(), 4, "messages on the new topic");
    let reported = wait_reported(&hub, |r| r["settings"]["topic"] == "live/{device}").await;
    assert_eq!(reported["settings"]["mode"], "fleet");
    assert_eq!(
        reported["settings"]["port"], broker.port,
        "environment settings stay under the twin's"
    );

    // 3. Unknown fields are refused, reported, and the old settings stay.
    hub.update_desired(MODULE, serde_json::json!({"devcies": 3}))
        .await
        .unwrap();
    let reported = wait_reported(&hub, |r| r["settingsError"].is_string()).await;
    assert!(reported["settingsError"]
        .as_str()
        .unwrap()
        .contains("devcies"));
    assert_eq!(reported["settings"]["topic"], "live/{device}");

    drop(module);
    let _ = stop.send(());
}

async fn wait_reported(
    hub: &edge_dev::hub::HubHandle,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..300 {
        if let Some(t) = hub.twin(MODULE) {
            last = t["reported"].clone();
            if ok(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("reported properties never matched: {last}");
}
