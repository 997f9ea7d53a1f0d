//! The `esp-sim` binary: help, environment allow-list, flag precedence, errors, a load run with a
//! summary, and SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{have_mosquitto, Broker, Subscriber};

const BIN: &str = env!("CARGO_BIN_EXE_esp-sim");

/// A command with none of our variables inherited from the developer's shell.
fn cmd() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("ESP_SIM_")
            || k.starts_with("MQTT_")
            || k.starts_with("IOTEDGE_")
            || k == "EdgeHubConnectionString"
        {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "warn");
    c
}

#[test]
fn help_lists_the_flags() {
    let out = cmd().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--host",
        "--port",
        "--mode",
        "--devices",
        "--interval-ms",
        "--rate",
        "--seed",
        "--sent-log",
        "--duration",
        "--fault-malformed",
        "--fault-missing",
        "--fault-mistyped",
        "--fault-out-of-range",
        "--fault-clock-skew",
        "--fault-disconnect",
        "--storm-every",
        "--start-time",
        "--time-format",
    ] {
        assert!(text.contains(flag), "--help does not mention {flag}");
    }
}

fn print_settings(c: &mut Command) -> serde_json::Value {
    let out = c.arg("--print-settings").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn defaults_environment_and_flags_layer() {
    let v = print_settings(&mut cmd());
    assert_eq!(v["host"], "localhost");
    assert_eq!(v["port"], 1889);
    assert_eq!(v["mode"], "seed");
    assert_eq!(v["topic"], "MyTopic");

    // Under IoT Edge the deployment sets these.
    let v = print_settings(
        cmd()
            .env("MQTT_HOST", "MqttServerModule")
            .env("MQTT_PORT", "1889"),
    );
    assert_eq!(v["host"], "MqttServerModule");
    assert_eq!(v["port"], 1889);

    let env = [
        ("ESP_SIM_MODE", "fleet"),
        ("ESP_SIM_DEVICES", "7"),
        ("ESP_SIM_INTERVAL_MS", "250"),
        ("ESP_SIM_RATE", "99"),
        ("ESP_SIM_SEED", "5"),
        ("ESP_SIM_DURATION", "3"),
        ("ESP_SIM_COUNT", "4"),
        ("ESP_SIM_START_TIME", "2026-01-02T03:04:05Z"),
        ("ESP_SIM_TIME_FORMAT", "dotnet-en-us"),
        ("ESP_SIM_TOPIC", "t/{device}"),
        ("ESP_SIM_QOS", "0"),
        ("ESP_SIM_RETAIN", "true"),
        ("ESP_SIM_CLIENT_ID", "pfx"),
        ("ESP_SIM_FEVER_PER_DAY", "1.5"),
        ("ESP_SIM_MQTT5", "true"),
        ("ESP_SIM_FAULT_MALFORMED", "0.01"),
        ("ESP_SIM_FAULT_MISSING", "0.02"),
        ("ESP_SIM_FAULT_MISTYPED", "0.03"),
        ("ESP_SIM_FAULT_OUT_OF_RANGE", "0.04"),
        ("ESP_SIM_FAULT_CLOCK_SKEW", "0.05"),
        ("ESP_SIM_MAX_SKEW", "30"),
        ("ESP_SIM_FAULT_DISCONNECT", "0.06"),
        ("ESP_SIM_STORM_EVERY", "10"),
        ("ESP_SIM_STORM_FRACTION", "0.25"),
    ];
    let mut c = cmd();
    c.envs(env);
    let v = print_settings(&mut c);
    let want = serde_json::json!({
        "mode": "fleet", "devices": 7, "interval_ms": 250, "rate": 99.0, "seed": 5, "duration_s": 3.0,
        "messages_per_device": 4, "start_time": "2026-01-02T03:04:05Z", "time_format": "dotnet-en-us",
        "topic": "t/{device}", "qos": 0, "retain": true, "client_id_prefix": "pfx", "fever_per_day": 1.5, "mqtt5": true,
    });
    for (k, w) in want.as_object().unwrap() {
        assert_eq!(&v[k], w, "{k}");
    }
    let f = &v["faults"];
    assert_eq!(f["malformed_json"], 0.01);
    assert_eq!(f["missing_field"], 0.02);
    assert_eq!(f["mistyped_field"], 0.03);
    assert_eq!(f["out_of_range"], 0.04);
    assert_eq!(f["clock_skew"], 0.05);
    assert_eq!(f["max_skew_s"], 30.0);
    assert_eq!(f["disconnect"], 0.06);
    assert_eq!(f["storm_every_s"], 10.0);
    assert_eq!(f["storm_fraction"], 0.25);

    // Flags win over the environment; the environment wins over a settings file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.json");
    std::fs::write(
        &file,
        r#"{"devices": 3, "port": 1000, "topic": "fromfile"}"#,
    )
    .unwrap();
    let mut c = cmd();
    c.env("ESP_SIM_DEVICES", "8")
        .env("ESP_SIM_SETTINGS", &file)
        .args(["--devices", "9"]);
    let v = print_settings(&mut c);
    assert_eq!(v["devices"], 9);
    assert_eq!(v["port"], 1000);
    assert_eq!(v["topic"], "fromfile");
}

#[test]
fn bad_settings_fail_with_a_reason() {
    let out = cmd()
        .args(["--qos", "3", "--print-settings"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use 0, 1 or 2"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.json");
    std::fs::write(&file, r#"{"devcies": 3}"#).unwrap();
    let out = cmd()
        .arg("--settings")
        .arg(&file)
        .arg("--print-settings")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("devcies"));
}

#[test]
fn every_field_is_a_flag_and_a_variable() {
    // Fields without a short name of their own: the field's name, dashes for underscores and dots.
    let v = print_settings(cmd().env("ESP_SIM_KEEP_ALIVE_S", "5").args([
        "--faults-clock-skew",
        "0.25",
        "--reconnect-max-ms",
        "500",
        "--duration-s",
        "7",
        "--time-format",
        "dotnet",
    ]));
    assert_eq!(v["keep_alive_s"], 5);
    assert_eq!(v["faults"]["clock_skew"], 0.25);
    assert_eq!(v["reconnect_max_ms"], 500);
    assert_eq!(v["duration_s"], 7.0);
    assert_eq!(v["time_format"], "dotnet-invariant");
    // A text setting keeps text that looks like JSON; null resets to the default.
    let v = print_settings(
        cmd()
            .env("ESP_SIM_TOPIC", "123")
            .env("ESP_SIM_CLIENT_ID", "true")
            .args(["--seed", "null"]),
    );
    assert_eq!(v["topic"], "123");
    assert_eq!(v["client_id_prefix"], "true");
    assert!(v["seed"].is_null());
}

fn fails(c: &mut Command) -> String {
    let out = c.arg("--print-settings").output().unwrap();
    assert!(!out.status.success(), "should fail");
    assert!(out.stdout.is_empty());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn errors_name_the_variable_flag_or_file() {
    // An unknown variable with our prefix is a typo: refused, with the valid names.
    let e = fails(cmd().env("ESP_SIM_DEVCIES", "3"));
    assert!(
        e.contains("ESP_SIM_DEVCIES") && e.contains("ESP_SIM_DEVICES") && e.contains("MQTT_HOST"),
        "{e}"
    );
    // A value of the wrong type names the variable and the setting.
    let e = fails(cmd().env("ESP_SIM_DEVICES", "many"));
    assert!(
        e.contains("ESP_SIM_DEVICES") && e.contains("`devices`"),
        "{e}"
    );
    let e = fails(cmd().env("MQTT_PORT", "70000"));
    assert!(e.contains("MQTT_PORT") && e.contains("`port`"), "{e}");
    let e = fails(cmd().args(["--count", "-1"]));
    assert!(e.contains("--messages-per-device/--count"), "{e}");
    let e = fails(cmd().args(["--mode", "swarm"]));
    assert!(e.contains("--mode") && e.contains("seed"), "{e}");
    // A file that is not JSON, or has a bad value deep inside, names the file and the key.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.json");
    std::fs::write(&file, "{devices: 3").unwrap();
    let e = fails(cmd().arg("--settings").arg(&file));
    assert!(e.contains("s.json") && e.contains("not JSON"), "{e}");
    std::fs::write(&file, r#"{"faults": {"clock_skew": "often"}}"#).unwrap();
    let e = fails(cmd().arg("--settings").arg(&file));
    assert!(
        e.contains("s.json") && e.contains("faults.clock_skew"),
        "{e}"
    );
    let e = fails(cmd().arg("--settings").arg(dir.path().join("missing.json")));
    assert!(
        e.contains("missing.json") && e.contains("cannot read"),
        "{e}"
    );
}

#[test]
fn load_run_prints_a_summary() {
    if !have_mosquitto() {
        return;
    }
    let broker = Broker::start();
    let out = cmd()
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &broker.port.to_string(),
            "--mode",
            "load",
            "--devices",
            "20",
        ])
        .args(["--rate", "200", "--duration", "2", "--seed", "9"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mode"], "load");
    assert_eq!(v["seed"], 9);
    assert_eq!(v["devices"], 20);
    assert_eq!(v["target_rate"], 200.0);
    assert!(v["published"].as_u64().unwrap() > 0);
    assert_eq!(v["published"], v["acked"]);
    assert!(v["achieved_rate"].as_f64().unwrap() > 0.0);
    assert!(v["latency_us"]["p99"].as_u64().unwrap() >= v["latency_us"]["p50"].as_u64().unwrap());
}

#[test]
fn sigterm_stops_and_flushes_the_sent_log() {
    if !have_mosquitto() {
        return;
    }
    let broker = Broker::start();
    let mut sub = Subscriber::start(broker.port, "MyTopic");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sent.jsonl");
    let child = cmd()
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &broker.port.to_string(),
            "--interval-ms",
            "50",
        ])
        .arg("--sent-log")
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) until it has published a few messages.
    assert_eq!(
        sub.collect(3, Duration::from_secs(15)).len(),
        3,
        "esp-sim did not publish"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let out = loop {
        // wait_with_output blocks; poll the pid first so a hang fails the test instead.
        if Instant::now() > deadline {
            panic!("esp-sim did not stop on SIGTERM");
        }
        if std::path::Path::new(&format!("/proc/{}/status", child.id())).exists() {
            let s =
                std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
            if !s.contains("State:\tZ") {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        break child.wait_with_output().unwrap();
    };
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let published = v["published"].as_u64().unwrap();
    assert!(published > 0);
    let lines = std::fs::read_to_string(&log).unwrap().lines().count() as u64;
    assert_eq!(
        lines, published,
        "every published message is in the sent log"
    );
}
