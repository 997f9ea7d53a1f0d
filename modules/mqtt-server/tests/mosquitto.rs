//! Black-box tests with Eclipse Mosquitto's command line clients (Debian `mosquitto-clients`).

mod common;

use std::time::Duration;

use common::{args, run_cmd, test_settings, Harness};

const T: Duration = Duration::from_secs(20);

async fn pub_(h: &Harness, extra: &[&str]) -> (bool, String, String) {
    let mut a = args(&["-h", "127.0.0.1", "-p", &h.port.to_string()]);
    a.extend(args(extra));
    run_cmd("mosquitto_pub", &a, 20).await
}

#[tokio::test(flavor = "multi_thread")]
async fn qos_0_1_2_over_311_and_5_are_forwarded_with_properties() {
    let h = Harness::start(test_settings()).await;
    let mut n = 0;
    for version in ["mqttv311", "mqttv5"] {
        for qos in ["0", "1", "2"] {
            let body = format!(r#"{{"temp": 38, "timecreated": "{version}-{qos}"}}"#);
            let (ok, _, err) = pub_(
                &h,
                &[
                    "-V", version, "-q", qos, "-i", "esp-1", "-t", "MyTopic", "-m", &body,
                ],
            )
            .await;
            assert!(ok, "mosquitto_pub {version} qos {qos} failed: {err}");
            n += 1;
            let got = h.recorder.wait_for(n, T).await;
            let (output, m) = &got[n - 1];
            assert_eq!(output, "output1");
            assert_eq!(String::from_utf8_lossy(&m.body), body, "body unchanged");
            assert_eq!(m.properties["mqtt-topic"], "MyTopic");
            assert_eq!(m.properties["mqtt-client-id"], "esp-1");
            assert_eq!(m.properties["mqtt-qos"], qos);
            assert_eq!(m.properties["mqtt-retain"], "false");
            assert_eq!(m.content_type.as_deref(), Some("application/json"));
            assert_eq!(m.content_encoding.as_deref(), Some("utf-8"));
            assert!(chrono::DateTime::parse_from_rfc3339(
                m.creation_time.as_deref().unwrap_or_default()
            )
            .is_ok());
            assert!(uuid::Uuid::parse_str(m.message_id.as_deref().unwrap_or_default()).is_ok());
        }
    }
    // non-JSON bodies carry no JSON content type
    let (ok, _, err) = pub_(&h, &["-q", "1", "-t", "raw", "-m", "38.5 C"]).await;
    assert!(ok, "{err}");
    let got = h.recorder.wait_for(n + 1, T).await;
    assert_eq!(got[n].1.content_type, None);
    // the seed's simulator: QoS 2, retained
    let (ok, _, err) = pub_(
        &h,
        &["-q", "2", "-r", "-t", "MyTopic", "-m", r#"{"temp":37}"#],
    )
    .await;
    assert!(ok, "{err}");
    let got = h.recorder.wait_for(n + 2, T).await;
    assert_eq!(got[n + 1].1.properties["mqtt-retain"], "true");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retained_message_reaches_a_later_subscriber_at_min_qos() {
    let h = Harness::start(test_settings()).await;
    let (ok, _, err) = pub_(
        &h,
        &["-q", "2", "-r", "-t", "patients/p1/temperature", "-m", "r1"],
    )
    .await;
    assert!(ok, "{err}");
    h.recorder.wait_for(1, T).await;
    for version in ["mqttv311", "mqttv5"] {
        let (ok, out, err) = run_cmd(
            "mosquitto_sub",
            &args(&[
                "-h",
                "127.0.0.1",
                "-p",
                &h.port.to_string(),
                "-V",
                version,
                "-q",
                "1",
                "-t",
                "patients/+/temperature",
                "-C",
                "1",
                "-W",
                "10",
                "-F",
                "%t %q %r %p",
            ]),
            20,
        )
        .await;
        assert!(ok, "mosquitto_sub {version}: {err}");
        assert_eq!(out.trim(), "patients/p1/temperature 1 1 r1");
    }
    // an empty retained publish deletes it
    let (ok, _, err) = pub_(&h, &["-r", "-t", "patients/p1/temperature", "-n"]).await;
    assert!(ok, "{err}");
    let (_, out, _) = run_cmd(
        "mosquitto_sub",
        &args(&[
            "-h",
            "127.0.0.1",
            "-p",
            &h.port.to_string(),
            "-t",
            "patients/#",
            "-C",
            "1",
            "-W",
            "2",
            "-F",
            "%p",
        ]),
        10,
    )
    .await;
    assert_eq!(out.trim(), "", "retained message was deleted");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn live_subscriber_gets_min_of_publish_and_subscription_qos() {
    let h = Harness::start(test_settings()).await;
    let port = h.port.to_string();
    let sub = {
        let port = port.clone();
        tokio::spawn(async move {
            run_cmd(
                "mosquitto_sub",
                &args(&[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-q",
                    "1",
                    "-t",
                    "live/#",
                    "-C",
                    "2",
                    "-W",
                    "15",
                    "-F",
                    "%t %q %p",
                ]),
                20,
            )
            .await
        })
    };
    // wait for the subscription to exist: publish until the subscriber has both messages
    let mut out = String::new();
    for i in 0..50 {
        let _ = pub_(&h, &["-q", "2", "-t", "live/a", "-m", &format!("m{i}")]).await;
        let _ = pub_(&h, &["-q", "0", "-t", "live/b", "-m", &format!("z{i}")]).await;
        if sub.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Ok((ok, o, err)) = sub.await {
        assert!(ok, "{err}");
        out = o;
    }
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    // publishes alternate a/b, so two consecutive deliveries hold one of each
    assert!(
        lines.iter().any(|l| l.starts_with("live/a 1 ")),
        "QoS 2 publish delivered at sub QoS 1: {out}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("live/b 0 ")),
        "QoS 0 publish stays QoS 0: {out}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_session_keeps_messages_while_away() {
    let h = Harness::start(test_settings()).await;
    let port = h.port.to_string();
    // subscribe with clean session 0 and leave
    // (it exits after -W 1 second with a timeout status; its session stays)
    let _ = run_cmd(
        "mosquitto_sub",
        &args(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-c",
            "-i",
            "nurse-1",
            "-q",
            "1",
            "-t",
            "alerts",
            "-W",
            "1",
        ]),
        10,
    )
    .await;
    let (ok, _, err) = pub_(&h, &["-q", "1", "-t", "alerts", "-m", "fever"]).await;
    assert!(ok, "{err}");
    let (ok, out, err) = run_cmd(
        "mosquitto_sub",
        &args(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-c",
            "-i",
            "nurse-1",
            "-q",
            "1",
            "-t",
            "alerts",
            "-C",
            "1",
            "-W",
            "10",
            "-F",
            "%p",
        ]),
        20,
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "fever");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_payload_is_refused_and_others_keep_flowing() {
    let settings = mqtt_server::Settings {
        max_payload: 1000,
        buffer_bytes: 100_000,
        ..test_settings()
    };
    let h = Harness::start(settings).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![b'x'; 5000]).expect("write");
    let big = big.display().to_string();
    let (ok, _, _) = pub_(&h, &["-q", "1", "-i", "too-big", "-t", "t", "-f", &big]).await;
    assert!(!ok, "oversize publish must not be acknowledged");
    let line = common::wait_log(&["too-big", "max_payload"], T).await;
    assert!(line.contains("WARN"), "{line}");
    let (ok, _, err) = pub_(&h, &["-q", "1", "-i", "fine", "-t", "t", "-m", "ok"]).await;
    assert!(ok, "{err}");
    let got = h.recorder.wait_for(1, T).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].1.body[..], b"ok");
    assert!(h
        .metrics_text()
        .await
        .contains("mqtt_refused_total{reason=\"oversize\"} 1"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn username_password_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("users");
    std::fs::write(&file, "esp:pw1\n").expect("write");
    let h = Harness::start(mqtt_server::Settings {
        auth_file: Some(file),
        auth_allow_plain: true,
        ..test_settings()
    })
    .await;
    let (ok, _, _) = pub_(
        &h,
        &[
            "-q", "1", "-i", "intruder", "-u", "esp", "-P", "wrong", "-t", "t", "-m", "x",
        ],
    )
    .await;
    assert!(!ok);
    let (ok, _, _) = pub_(&h, &["-q", "1", "-t", "t", "-m", "anonymous"]).await;
    assert!(!ok);
    let (ok, _, err) = pub_(
        &h,
        &["-q", "1", "-u", "esp", "-P", "pw1", "-t", "t", "-m", "good"],
    )
    .await;
    assert!(ok, "{err}");
    let got = h.recorder.wait_for(1, T).await;
    assert_eq!(h.recorder.bodies(), vec!["good".to_string()], "{got:?}");
    common::wait_log(&["intruder", "bad username or password"], T).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_listener_with_mosquitto() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write");
    let acceptor = mqtt_server::tls_acceptor(&cert_path, &key_path).expect("acceptor");
    let h = Harness::start_with(test_settings(), Default::default(), Some(acceptor)).await;
    let tls_port = h.tls_port.expect("tls port").to_string();
    let (ok, _, err) = run_cmd(
        "mosquitto_pub",
        &args(&[
            "-h",
            "localhost",
            "-p",
            &tls_port,
            "--cafile",
            &cert_path.display().to_string(),
            "-q",
            "1",
            "-t",
            "secure",
            "-m",
            "tls-ok",
        ]),
        20,
    )
    .await;
    assert!(ok, "{err}");
    h.recorder.wait_for(1, T).await;
    assert_eq!(h.recorder.bodies(), vec!["tls-ok".to_string()]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twin_topic_mapping_and_enrichment() {
    let h = Harness::start(test_settings()).await;
    let (routing, warnings) = h
        .handle
        .apply_desired(&serde_json::json!({"topicOutputs": {"patients/+/temperature": "temperature"}, "enrichDeviceId": true, "$version": 2}), true)
        .expect("applies");
    assert!(warnings.is_empty());
    assert!(routing.enrich_device_id);
    let (ok, _, err) = pub_(
        &h,
        &[
            "-q",
            "1",
            "-i",
            "esp-7",
            "-t",
            "patients/p1/temperature",
            "-m",
            r#"{"temp":39}"#,
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = pub_(
        &h,
        &[
            "-q",
            "1",
            "-i",
            "esp-7",
            "-t",
            "other",
            "-m",
            r#"{"temp":36,"deviceId":"d"}"#,
        ],
    )
    .await;
    assert!(ok, "{err}");
    let got = h.recorder.wait_for(2, T).await;
    assert_eq!(got[0].0, "temperature");
    let v: serde_json::Value = serde_json::from_slice(&got[0].1.body).expect("json");
    assert_eq!(v["deviceId"], "esp-7");
    assert_eq!(got[1].0, "output1");
    assert_eq!(&got[1].1.body[..], br#"{"temp":36,"deviceId":"d"}"#);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_file_made_by_mosquitto_passwd() {
    // Debian's mosquitto_passwd writes the file ($7$: salted PBKDF2-SHA512); a plain-text file
    // is refused at start unless allowed
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("passwords");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&file)
        .args(["bed-7", "correct horse"])
        .status()
        .expect("mosquitto_passwd runs (apt: mosquitto)");
    assert!(status.success());
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.starts_with("bed-7:$7$"), "{text}");
    let h = Harness::start(mqtt_server::Settings {
        auth_file: Some(file),
        ..test_settings()
    })
    .await;
    let (ok, _, _) = pub_(
        &h,
        &[
            "-q",
            "1",
            "-i",
            "guess",
            "-u",
            "bed-7",
            "-P",
            "correct-horse",
            "-t",
            "t",
            "-m",
            "x",
        ],
    )
    .await;
    assert!(!ok, "a wrong password is refused");
    let (ok, _, err) = pub_(
        &h,
        &[
            "-q",
            "1",
            "-u",
            "bed-7",
            "-P",
            "correct horse",
            "-t",
            "t",
            "-m",
            "37.2",
        ],
    )
    .await;
    assert!(ok, "{err}");
    h.recorder.wait_for(1, T).await;
    assert_eq!(h.recorder.bodies(), vec!["37.2".to_string()]);
    h.stop().await;

    let plain = dir.path().join("plain");
    std::fs::write(&plain, "bed-7:correct horse\n").expect("write");
    let e = mqtt_server::Server::new(
        mqtt_server::Settings {
            auth_file: Some(plain),
            ..test_settings()
        },
        std::sync::Arc::new(common::Recorder::default()),
    )
    .err()
    .expect("a plain-text file is refused");
    assert!(e.to_string().contains("mosquitto_passwd -U"), "{e}");
}
