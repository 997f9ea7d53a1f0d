//! The `mqtt-server` binary: layered settings (file, environment, flags), `--sink stdout`, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_hub::test_util::{free_port, ModuleProcess};

#[test]
fn binary_forwards_to_stdout_with_env_settings_and_stops_on_sigterm() {
    let port = free_port();
    // killed when the test fails before it stops by itself
    let mut child = ModuleProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_mqtt-server"))
            .args(["--sink", "stdout"])
            .env("MQTT_BIND_ADDRESS", "127.0.0.1")
            .env("MQTT_PORT", port.to_string())
            .env("MQTT_METRICS_PORT", "0")
            .env("MQTT_OUTPUT", "readings")
            .env("MQTT_ENRICH_DEVICE_ID", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    // publish until the server is up (bounded)
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut published = false;
    while Instant::now() < deadline {
        let st = Command::new("timeout")
            .args([
                "10",
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-i",
                "esp-bin",
                "-t",
                "MyTopic",
                "-m",
                r#"{"temp":38}"#,
            ])
            .stderr(Stdio::null())
            .status()
            .expect("mosquitto_pub runs");
        if st.success() {
            published = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(published, "server did not accept the publish");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("a line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
    assert_eq!(v["output"], "readings");
    assert_eq!(v["properties"]["mqtt-client-id"], "esp-bin");
    let body: serde_json::Value =
        serde_json::from_str(v["body"].as_str().expect("body")).expect("json body");
    assert_eq!(body["deviceId"], "esp-bin");
    assert_eq!(v["contentType"], "application/json");

    let st = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            assert!(status.success(), "clean exit on SIGTERM: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "binary did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn binary_refuses_bad_settings_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-server"))
        .args(["--sink", "stdout"])
        .env("MQTT_MAX_PAYLOAD", "lots")
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MQTT_MAX_PAYLOAD"), "{err}");

    // a misspelt variable stops the module and lists the valid names
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-server"))
        .args(["--sink", "stdout"])
        .env("MQTT_PROT", "1999")
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MQTT_PROT") && err.contains("MQTT_PORT") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn settings_layer_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("settings.json");
    std::fs::write(
        &file,
        r#"{"port": 1901, "output": "fromfile", "max_inflight": 7, "topic_outputs": "a/#=x"}"#,
    )
    .expect("write");
    // --config is the earlier name of --settings
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-server"))
        .args(["--config"])
        .arg(&file)
        .args(["--max-inflight", "9", "--print-settings"])
        .env("MQTT_OUTPUT", "fromenv")
        .env("MQTT_ENRICH_DEVICE_ID", "yes")
        .env("MQTT_SESSION_EXPIRY", "60")
        .output()
        .expect("binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON settings");
    assert_eq!(s["port"], 1901);
    assert_eq!(s["output"], "fromenv");
    assert_eq!(s["max_inflight"], 9);
    assert_eq!(s["enrich_device_id"], true);
    assert_eq!(s["session_expiry_secs"], 60);
    assert_eq!(
        s["topic_outputs"],
        serde_json::json!([{"filter": "a/#", "output": "x"}])
    );
}
