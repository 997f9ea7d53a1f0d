//! As an IoT Edge module: the `esp-sim` binary with a module identity (EdgeHubConnectionString)
//! against edge-dev's local hub, which speaks edgeHub's protocol. Settings come from the twin's
//! desired properties, change live, bad ones are refused and reported; devices publish to a real
//! Mosquitto watched by `mosquitto_sub`.
#![cfg(feature = "module")]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{have_mosquitto, Broker, Subscriber};
use edge_hub::test_util::{ModuleProcess, TestHub};

const MODULE: &str = "ESPSimModule";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_the_twin_live() {
    if !have_mosquitto() {
        return;
    }
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::builder(dir.path())
        .modules(&[MODULE])
        .desired(
            MODULE,
            serde_json::json!({"mode": "fleet", "devices": 2, "interval_ms": 50, "topic": "twin/{device}", "seed": 5}),
        )
        .start()
        .await;

    let mut first = Subscriber::start(broker.port, "twin/#");
    let module = ModuleProcess::spawn(
        ModuleProcess::command(env!("CARGO_BIN_EXE_esp-sim"), &hub, MODULE)
            .env("MQTT_HOST", "127.0.0.1")
            .env("MQTT_PORT", broker.port.to_string())
            .env("RUST_LOG", "esp_sim=info,edge_client=info"),
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
    hub.handle
        .update_desired(MODULE, serde_json::json!({"topic": "live/{device}"}))
        .await
        .unwrap();
    let got =
        tokio::task::spawn_blocking(move || live.collect(4, Duration::from_secs(30)).to_vec())
            .await
            .unwrap();
    assert_eq!(got.len(), 4, "messages on the new topic");
    let reported = hub
        .wait_reported(MODULE, |r| r["settings"]["topic"] == "live/{device}")
        .await;
    assert_eq!(reported["settings"]["mode"], "fleet");
    assert_eq!(
        reported["settings"]["port"], broker.port,
        "environment settings stay under the twin's"
    );

    // 3. Unknown fields are refused, reported, and the old settings stay.
    hub.handle
        .update_desired(MODULE, serde_json::json!({"devcies": 3}))
        .await
        .unwrap();
    let reported = hub
        .wait_reported(MODULE, |r| r["settingsError"].is_string())
        .await;
    assert!(reported["settingsError"]
        .as_str()
        .unwrap()
        .contains("devcies"));
    assert_eq!(reported["settings"]["topic"], "live/{device}");

    // 4. A value of the wrong type is refused the same way, naming the setting.
    hub.handle
        .update_desired(
            MODULE,
            serde_json::json!({"devcies": null, "interval_ms": "fast"}),
        )
        .await
        .unwrap();
    let reported = hub
        .wait_reported(MODULE, |r| {
            r["settingsError"]
                .as_str()
                .is_some_and(|e| e.contains("interval_ms"))
        })
        .await;
    assert_eq!(reported["settings"]["interval_ms"], 50);

    // 5. The next good patch applies and clears the error.
    hub.handle
        .update_desired(MODULE, serde_json::json!({"interval_ms": 60}))
        .await
        .unwrap();
    let reported = hub
        .wait_reported(MODULE, |r| r["settings"]["interval_ms"] == 60)
        .await;
    assert!(reported["settingsError"].is_null(), "{reported}");
    assert_eq!(reported["settings"]["topic"], "live/{device}");

    drop(module);
    hub.stop().await;
}
