//! The ACL file (`MQTT_ACL_FILE`) with real clients: Eclipse Mosquitto's `mosquitto_pub` and
//! `mosquitto_sub` (Debian `mosquitto-clients`) for what they can show, and raw MQTT 5 packets
//! (rumqttc's v5 codec) for will messages and deliveries to a subscriber.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{args, run_cmd, test_settings, wait_log, Harness};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);

async fn start(acl: &str) -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("acl");
    std::fs::write(&file, acl).expect("write acl");
    let h = Harness::start(mqtt_server::Settings {
        acl_file: Some(file),
        ..test_settings()
    })
    .await;
    (h, dir)
}

async fn pub_(h: &Harness, extra: &[&str]) -> (bool, String, String) {
    let mut a = args(&["-h", "127.0.0.1", "-p", &h.port.to_string()]);
    a.extend(args(extra));
    run_cmd("mosquitto_pub", &a, 20).await
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_clients_publish_and_subscribe_only_where_the_acl_allows() {
    let (h, _dir) = start(
        "# each sensor writes under its own client id\n\
         pattern write sensors/%c/#\n\
         topic deny sensors/+/secret\n\
         topic read public/#\n",
    )
    .await;
    let (ok, _, err) = pub_(
        &h,
        &[
            "-q",
            "1",
            "-i",
            "esp-1",
            "-t",
            "sensors/esp-1/t",
            "-m",
            "own",
        ],
    )
    .await;
    assert!(ok, "{err}");
    h.recorder.wait_for(1, T).await;

    // another sensor's topic: MQTT 5 QoS 1 and 2 get 0x87, which mosquitto_pub reports
    for qos in ["1", "2"] {
        let (_, _, err) = pub_(
            &h,
            &[
                "-V",
                "mqttv5",
                "-q",
                qos,
                "-i",
                "esp-1",
                "-t",
                "sensors/esp-2/t",
                "-m",
                "intruder",
            ],
        )
        .await;
        assert!(err.contains("Not authorized"), "QoS {qos}: {err}");
    }
    // MQTT 3.1.1 QoS 1/2: acknowledged (as Mosquitto does) and dropped; QoS 0: dropped
    for (version, qos) in [("mqttv311", "1"), ("mqttv311", "2"), ("mqttv5", "0")] {
        let (ok, _, err) = pub_(
            &h,
            &[
                "-V",
                version,
                "-q",
                qos,
                "-i",
                "esp-1",
                "-t",
                "sensors/esp-2/t",
                "-m",
                "intruder",
            ],
        )
        .await;
        assert!(ok, "{version} QoS {qos}: {err}");
        assert!(!err.contains("Not authorized"), "{err}");
    }
    // a deny line wins over the client's own pattern
    let (_, _, err) = pub_(
        &h,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-i",
            "esp-1",
            "-t",
            "sensors/esp-1/secret",
            "-m",
            "intruder",
        ],
    )
    .await;
    assert!(err.contains("Not authorized"), "{err}");
    // a client id with '/' does not reach into another client's topics (esp-2's `sensors/esp-2/#`)
    let (_, _, err) = pub_(
        &h,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-i",
            "esp-2/x",
            "-t",
            "sensors/esp-2/x/t",
            "-m",
            "intruder",
        ],
    )
    .await;
    assert!(err.contains("Not authorized"), "{err}");

    // subscriptions outside the ACL are refused (3.1.1: 0x80, 5: 0x87); inside, granted
    for version in ["mqttv311", "mqttv5"] {
        let (_, out, err) = run_cmd(
            "mosquitto_sub",
            &args(&[
                "-h",
                "127.0.0.1",
                "-p",
                &h.port.to_string(),
                "-V",
                version,
                "-i",
                "esp-1",
                "-t",
                "sensors/#",
                "-W",
                "3",
            ]),
            10,
        )
        .await;
        assert!(
            format!("{out}{err}").contains("All subscription requests were denied"),
            "{version}: {out} {err}"
        );
    }
    let (_, out, err) = run_cmd(
        "mosquitto_sub",
        &args(&[
            "-h",
            "127.0.0.1",
            "-p",
            &h.port.to_string(),
            "-i",
            "esp-1",
            "-t",
            "public/#",
            "-W",
            "1",
        ]),
        10,
    )
    .await;
    assert!(
        !format!("{out}{err}").contains("denied"),
        "public/# is readable: {out} {err}"
    );

    // after all that, one more good reading: only the two good ones were forwarded
    let (ok, _, err) = pub_(
        &h,
        &[
            "-q",
            "1",
            "-i",
            "esp-1",
            "-t",
            "sensors/esp-1/t",
            "-m",
            "marker",
        ],
    )
    .await;
    assert!(ok, "{err}");
    h.recorder.wait_for(2, T).await;
    assert_eq!(h.recorder.bodies(), vec!["own", "marker"]);

    let m = h.metrics_text().await;
    assert_eq!(
        metric(&m, "mqtt_refused_total{reason=\"not_authorized_publish\"}"),
        7,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "mqtt_refused_total{reason=\"not_authorized_subscribe\"}"
        ),
        2,
        "{m}"
    );
    let line = wait_log(&["refusing a publish", "esp-1", "sensors/esp-2/t"], T).await;
    assert!(line.contains("add a topic/pattern line"), "{line}");
    let line = wait_log(&["refusing a publish", "esp-2/x"], T).await;
    assert!(line.contains("contains '+', '#' or '/'"), "{line}");
    // esp-1 was refused many times but warned about once
    let warned = common::logs()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("client=esp-1 "))
        .count();
    assert_eq!(warned, 1, "{}", common::logs());
    h.stop().await;
}

/// A raw MQTT 5 client (rumqttc's v5 codec) with a username and an optional will.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(
        port: u16,
        id: &str,
        user: Option<&str>,
        will: Option<(&str, &str)>,
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
            properties: None,
        };
        let will = will.map(|(t, m)| p5::LastWill::new(t, m, Q5::AtLeastOnce, false, None));
        let login = user.map(|u| p5::Login::new(u, "x"));
        r.send(p5::Packet::Connect(c, will, login)).await;
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

    async fn subscribe(&mut self, pkid: u16, filter: &str) -> Vec<p5::SubscribeReasonCode> {
        self.send(p5::Packet::Subscribe(p5::Subscribe {
            pkid,
            filters: vec![p5::Filter::new(filter, Q5::AtLeastOnce)],
            properties: None,
        }))
        .await;
        loop {
            match self.recv(T).await {
                Some(p5::Packet::SubAck(a)) => return a.return_codes,
                Some(_) => {}
                None => panic!("no SUBACK"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_will_the_client_may_not_write_is_dropped_as_mosquitto_does() {
    let (h, _dir) = start("pattern write sensors/%c/#\n").await;
    // the connection is accepted (Mosquitto checks the will only when it would publish it)
    let (bad, ack) = Raw::connect(
        h.port,
        "esp-3",
        None,
        Some(("sensors/esp-2/status", "forged")),
    )
    .await;
    assert_eq!(ack.code, p5::ConnectReturnCode::Success);
    drop(bad); // abnormal end: a permitted will would be published now
    let (good, ack) = Raw::connect(
        h.port,
        "esp-2",
        None,
        Some(("sensors/esp-2/status", "offline")),
    )
    .await;
    assert_eq!(ack.code, p5::ConnectReturnCode::Success);
    drop(good);
    h.recorder.wait_for(1, T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.recorder.bodies(), vec!["offline"]);
    let m = h.metrics_text().await;
    assert_eq!(
        metric(&m, "mqtt_refused_total{reason=\"not_authorized_will\"}"),
        1,
        "{m}"
    );
    wait_log(&["dropping the client's will message", "esp-3"], T).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deny_line_narrower_than_a_subscription_filters_its_deliveries() {
    let (h, _dir) = start(
        "pattern write sensors/%c/#\n\
         user display\n\
         topic read sensors/#\n\
         topic deny sensors/+/secret\n",
    )
    .await;
    let (mut display, _) = Raw::connect(h.port, "bedside", Some("display"), None).await;
    assert_eq!(
        display.subscribe(1, "sensors/+/secret").await,
        vec![p5::SubscribeReasonCode::NotAuthorized]
    );
    assert_eq!(
        display.subscribe(2, "#").await,
        vec![p5::SubscribeReasonCode::NotAuthorized]
    );
    assert_eq!(
        display.subscribe(3, "sensors/#").await,
        vec![p5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]
    );
    // esp-1 may write its secret topic (the deny line is the display's), but the display may not
    // read it
    for (topic, body) in [("sensors/esp-1/secret", "s"), ("sensors/esp-1/t", "37.1")] {
        let (ok, _, err) = pub_(&h, &["-q", "1", "-i", "esp-1", "-t", topic, "-m", body]).await;
        assert!(ok, "{err}");
    }
    h.recorder.wait_for(2, T).await;
    let got = loop {
        match display.recv(T).await {
            Some(p5::Packet::Publish(p)) => break p,
            Some(_) => {}
            None => panic!("no delivery to the display"),
        }
    };
    assert_eq!(&got.topic[..], b"sensors/esp-1/t");
    assert_eq!(&got.payload[..], b"37.1");
    let m = h.metrics_text().await;
    assert_eq!(
        metric(&m, "mqtt_dropped_total{reason=\"not_authorized\"}"),
        1,
        "{m}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_acl_file_is_refused_at_start_naming_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("acl");
    std::fs::write(&file, "# ok\ntopic read a/#\npattern write sensors/%c#\n").expect("write");
    let e = mqtt_server::Server::new(
        mqtt_server::Settings {
            acl_file: Some(file.clone()),
            ..test_settings()
        },
        std::sync::Arc::new(common::Recorder::default()),
    )
    .err()
    .expect("a bad ACL file is refused");
    let e = e.to_string();
    assert!(e.contains(&file.display().to_string()), "{e}");
    assert!(e.contains("line 3"), "{e}");
    assert!(e.contains("whole level"), "{e}");
    assert!(e.contains("MQTT_ACL_FILE"), "{e}");
    // the binary checks it before it tries edgeHub
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-server"))
        .env("MQTT_ACL_FILE", &file)
        .env("MQTT_METRICS_PORT", "0")
        .env("MQTT_BIND_ADDRESS", "127.0.0.1")
        .env("MQTT_PORT", "0")
        .env_remove("IOTEDGE_MODULEID")
        .env_remove("EdgeHubConnectionString")
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && !err.contains("identity"), "{err}");
}
