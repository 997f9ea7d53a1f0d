//! Black-box tests of `ModuleClient` against a real MQTT broker over TLS: Mosquitto
//! (`/usr/sbin/mosquitto`, Debian package `mosquitto`) on free loopback ports with a CA made here.
//! A plain rumqttc client on a second (plain) listener plays the hub's part: it reads the module's
//! outputs, sends it inputs, and answers twin requests. Skipped, with the reason printed, when
//! Mosquitto is not installed.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edge_client::identity::Credentials;
use edge_client::{
    ClientError, ClientOptions, Event, Events, Identity, Message, ModuleClient, Trust,
};
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Mosquitto with a TLS listener (server certificate for `localhost` signed by `ca_pem`) and a plain
/// one; killed when dropped.
struct Broker {
    dir: tempfile::TempDir,
    conf: PathBuf,
    child: Option<Child>,
    tls_port: u16,
    plain_port: u16,
    ca_pem: String,
}

impl Broker {
    fn start() -> Option<Broker> {
        if !Path::new(MOSQUITTO).exists() {
            eprintln!("SKIPPED: {MOSQUITTO} is not installed (apt-get install mosquitto)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "edge-client test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("ca.pem"), ca.pem()).unwrap();
        std::fs::write(p("server.pem"), server.pem()).unwrap();
        std::fs::write(p("server.key"), key.serialize_pem()).unwrap();
        let tls_port = free_port();
        let plain_port = free_port();
        let conf = p("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nallow_anonymous true\npersistence true\npersistence_location {dir}/\n\
                 listener {tls_port} 127.0.0.1\ncafile {dir}/ca.pem\ncertfile {dir}/server.pem\nkeyfile {dir}/server.key\n\
                 listener {plain_port} 127.0.0.1\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let mut b = Broker {
            dir,
            conf,
            child: None,
            tls_port,
            plain_port,
            ca_pem: ca.pem(),
        };
        b.run();
        Some(b)
    }

    fn run(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.plain_port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.tls_port)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let log =
            std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default();
        panic!("mosquitto did not start listening; its log:\n{log}");
    }

    /// SIGTERM (Mosquitto saves its sessions), wait for the exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            for _ in 0..200 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn identity(&self, key: &str) -> Identity {
        Identity {
            hub_host: "hub.local".to_string(),
            device_id: "dev1".to_string(),
            module_id: Some("M".to_string()),
            gateway_host: Some("localhost".to_string()),
            port: self.tls_port,
            credentials: Credentials::SharedAccessKey(key.to_string()),
            trust: Trust::Pem {
                pem: self.ca_pem.clone(),
                source: "test CA".to_string(),
            },
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the fake hub saw.
#[derive(Debug)]
enum Seen {
    Publish { topic: String, payload: Vec<u8> },
}

/// A plain MQTT client that plays the hub: answers twin GETs with a fixed twin and reported patches
/// with `$version` 5, and reports every other publish it receives.
async fn fake_hub(port: u16) -> (AsyncClient, mpsc::UnboundedReceiver<Seen>) {
    // A persistent session: it keeps its subscriptions (and gets what was queued for it) when the
    // broker restarts, whichever of it and the module reconnects first.
    let mut o = MqttOptions::new("fake-hub", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false);
    let (client, mut el) = AsyncClient::new(o, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let c = client.clone();
    tokio::spawn(async move {
        let mut subacks = 0;
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(Packet::SubAck(_))) => {
                    subacks += 1;
                    if subacks == 4 {
                        let _ = ready_tx.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                    let topic = p.topic.clone();
                    if topic.starts_with("$iothub/twin/GET/") {
                        let rid =
                            edge_client::wire::topics::parse_query_param(&topic, "$rid").unwrap();
                        let twin = serde_json::json!({"desired": {"query": "q", "$version": 3}, "reported": {"$version": 4}});
                        let _ = c
                            .publish(
                                edge_client::wire::topics::twin_response(200, &rid, None),
                                QoS::AtLeastOnce,
                                false,
                                twin.to_string(),
                            )
                            .await;
                    } else if topic.starts_with("$iothub/twin/PATCH/properties/reported/") {
                        let rid =
                            edge_client::wire::topics::parse_query_param(&topic, "$rid").unwrap();
                        let _ = c
                            .publish(
                                edge_client::wire::topics::twin_response(204, &rid, Some(5)),
                                QoS::AtLeastOnce,
                                false,
                                "",
                            )
                            .await;
                        let _ = tx.send(Seen::Publish {
                            topic,
                            payload: p.payload.to_vec(),
                        });
                    } else {
                        let _ = tx.send(Seen::Publish {
                            topic,
                            payload: p.payload.to_vec(),
                        });
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    for f in [
        "$iothub/twin/GET/#",
        "$iothub/twin/PATCH/properties/reported/#",
        "$iothub/methods/res/#",
        "devices/dev1/modules/M/messages/events/#",
    ] {
        client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
    }
    timeout(WAIT, ready_rx.recv()).await.unwrap().unwrap();
    (client, rx)
}

fn fast_options() -> ClientOptions {
    ClientOptions {
        reconnect_initial_ms: 100,
        reconnect_max_ms: 500,
        ..ClientOptions::default()
    }
}

/// The next event that `pick` accepts; others are skipped.
async fn next_matching<T>(events: &mut Events, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    timeout(WAIT, async {
        loop {
            let ev = events.recv().await.expect("events ended");
            if let Some(t) = pick(ev) {
                return t;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>, prefix: &str) -> (String, Vec<u8>) {
    timeout(WAIT, async {
        loop {
            let Seen::Publish { topic, payload } = rx.recv().await.unwrap();
            if topic.starts_with(prefix) {
                return (topic, payload);
            }
        }
    })
    .await
    .expect("timed out waiting for the fake hub to see a publish")
}

const KEY: &str = "c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTI=";

#[tokio::test]
async fn outputs_inputs_twin_and_methods() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let (hub, mut seen) = fake_hub(broker.plain_port).await;
    let (client, mut events) = ModuleClient::connect(broker.identity(KEY), fast_options())
        .await
        .unwrap();
    next_matching(&mut events, |e| matches!(e, Event::Connected).then_some(())).await;
    let twin = next_matching(&mut events, |e| match e {
        Event::Twin(v) => Some(v),
        _ => None,
    })
    .await;
    assert_eq!(twin["desired"]["query"], "q");

    // send_output resolves once the broker acknowledged; the topic is the SDK's.
    let mut msg = Message::json(&serde_json::json!({"temp": 38})).with_property("k", "v");
    msg.message_id = Some("m1".to_string());
    timeout(WAIT, client.send_output("out1", msg))
        .await
        .unwrap()
        .unwrap();
    let (topic, payload) = next_seen(&mut seen, "devices/").await;
    assert_eq!(
        topic,
        "devices/dev1/modules/M/messages/events/%24.on=out1&%24.mid=m1&%24.ct=application%2Fjson&%24.ce=utf-8&k=v"
    );
    assert_eq!(payload, br#"{"temp":38}"#);

    // Inputs arrive with their properties.
    hub.publish(
        "devices/dev1/modules/M/inputs/temperature/k=v%2Fw&%24.ct=application%2Fjson&%24.cdid=dev1&%24.cmid=Other",
        QoS::AtLeastOnce,
        false,
        r#"{"temp":37}"#,
    )
    .await
    .unwrap();
    let input = next_matching(&mut events, |e| match e {
        Event::Input(i) => Some(i),
        _ => None,
    })
    .await;
    assert_eq!(input.input, "temperature");
    assert_eq!(&input.message.body[..], br#"{"temp":37}"#);
    assert_eq!(
        input.message.properties.get("k").map(String::as_str),
        Some("v/w")
    );
    assert_eq!(
        input.message.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(input.message.connection_module_id.as_deref(), Some("Other"));
    input.ack();

    // Twin requests.
    let t = timeout(WAIT, client.get_twin()).await.unwrap().unwrap();
    assert_eq!(t["reported"]["$version"], 4);
    let v = timeout(
        WAIT,
        client.update_reported(serde_json::json!({"status": "ok"})),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(v, 5);
    let (_, body) = next_seen(&mut seen, "$iothub/twin/PATCH/properties/reported/").await;
    assert_eq!(body, br#"{"status":"ok"}"#);

    // Desired patches and direct methods.
    hub.publish(
        edge_client::wire::topics::desired_patch(7),
        QoS::AtLeastOnce,
        false,
        r#"{"query":"q2","$version":7}"#,
    )
    .await
    .unwrap();
    let patch = next_matching(&mut events, |e| match e {
        Event::DesiredPatch(v) => Some(v),
        _ => None,
    })
    .await;
    assert_eq!(patch["query"], "q2");
    hub.publish(
        edge_client::wire::topics::method_request("ping", "42"),
        QoS::AtLeastOnce,
        false,
        r#"{"x":1}"#,
    )
    .await
    .unwrap();
    let call = next_matching(&mut events, |e| match e {
        Event::Method(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(
        (call.name.as_str(), call.rid.as_str(), &call.payload),
        ("ping", "42", &serde_json::json!({"x": 1}))
    );
    call.respond(200, serde_json::json!({"pong": true}));
    let (topic, body) = next_seen(&mut seen, "$iothub/methods/res/").await;
    assert_eq!(topic, "$iothub/methods/res/200/?$rid=42");
    assert_eq!(body, br#"{"pong":true}"#);

    // Bad requests are refused with a reason.
    let e = client.send_output("", Message::new("x")).await.unwrap_err();
    assert!(matches!(e, ClientError::Usage(_)), "{e}");
    let big = Message::new(vec![0u8; edge_client::wire::MAX_MESSAGE_SIZE + 1]);
    assert!(matches!(
        client.send_output("o", big).await,
        Err(ClientError::TooLarge { .. })
    ));

    // shutdown delivers what is queued before it disconnects.
    let deliveries: Vec<_> = (0..20)
        .map(|i| {
            client
                .try_send_output("bulk", Message::new(format!("b{i}")))
                .unwrap()
        })
        .collect();
    timeout(WAIT, client.clone().shutdown()).await.unwrap();
    for d in deliveries {
        timeout(WAIT, d.acked()).await.unwrap().unwrap();
    }
    for i in 0..20 {
        let (_, p) = next_seen(
            &mut seen,
            "devices/dev1/modules/M/messages/events/%24.on=bulk",
        )
        .await;
        assert_eq!(p, format!("b{i}").into_bytes());
    }
    assert!(matches!(
        client.send_output("o", Message::new("late")).await,
        Err(ClientError::Closed)
    ));
    // After shutdown the events end.
    assert!(
        timeout(WAIT, async { while events.recv().await.is_some() {} })
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn reconnects_resends_queued_messages_and_redelivers_unacked_inputs() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    let (hub, mut seen) = fake_hub(broker.plain_port).await;
    let opts = ClientOptions {
        queue_capacity: 2,
        ..fast_options()
    };
    let (client, mut events) = ModuleClient::connect(broker.identity(KEY), opts)
        .await
        .unwrap();
    next_matching(&mut events, |e| matches!(e, Event::Connected).then_some(())).await;

    // An input that is not acknowledged before the broker goes away ...
    hub.publish(
        "devices/dev1/modules/M/inputs/in1/n=1",
        QoS::AtLeastOnce,
        false,
        "first",
    )
    .await
    .unwrap();
    let unacked = next_matching(&mut events, |e| match e {
        Event::Input(i) => Some(i),
        _ => None,
    })
    .await;
    assert_eq!(&unacked.message.body[..], b"first");

    broker.stop();
    let reason = next_matching(&mut events, |e| match e {
        Event::Disconnected(r) => Some(r),
        _ => None,
    })
    .await;
    assert!(!reason.is_empty());
    drop(unacked);

    // While disconnected the bounded queue fills: two wait, the third is refused.
    let d1 = client.try_send_output("out", Message::new("q1")).unwrap();
    let d2 = client.try_send_output("out", Message::new("q2")).unwrap();
    match client.try_send_output("out", Message::new("q3")) {
        Err(ClientError::QueueFull { capacity: 2 }) => {}
        other => panic!("expected QueueFull, got {other:?}"),
    }

    // send_output waits for room (back-pressure); it cannot finish while the broker is down.
    let waiting = {
        let c = client.clone();
        tokio::spawn(async move { c.send_output("out", Message::new("q3")).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());

    broker.run();
    // Connected comes once the subscriptions are in place; the full twin is read again after the
    // reconnect, and the unacknowledged input comes again on the resumed session, possibly before
    // the SUBACKs (in any order); this time it is acknowledged.
    let (mut connected, mut twin, mut again) = (false, None, None);
    timeout(WAIT, async {
        while !connected || twin.is_none() || again.is_none() {
            match events.recv().await.expect("events ended") {
                Event::Connected => connected = true,
                Event::Twin(v) => twin = Some(v),
                Event::Input(i) => again = Some(i),
                _ => {}
            }
        }
    })
    .await
    .expect("no twin or no redelivered input after the reconnect");
    assert_eq!(twin.unwrap()["desired"]["$version"], 3);
    let again = again.unwrap();
    assert_eq!(&again.message.body[..], b"first");
    assert_eq!(again.input, "in1");
    again.ack();

    timeout(WAIT, d1.acked()).await.unwrap().unwrap();
    timeout(WAIT, d2.acked()).await.unwrap().unwrap();
    timeout(WAIT, waiting).await.unwrap().unwrap().unwrap();
    let (t1, p1) = next_seen(&mut seen, "devices/").await;
    let (_, p2) = next_seen(&mut seen, "devices/").await;
    let (_, p3) = next_seen(&mut seen, "devices/").await;
    assert_eq!(t1, "devices/dev1/modules/M/messages/events/%24.on=out");
    assert_eq!(
        (p1.as_slice(), p2.as_slice(), p3.as_slice()),
        (&b"q1"[..], &b"q2"[..], &b"q3"[..])
    );

    // Inputs keep flowing after the reconnect (subscriptions are in place).
    hub.publish(
        "devices/dev1/modules/M/inputs/in2/",
        QoS::AtLeastOnce,
        false,
        "second",
    )
    .await
    .unwrap();
    let second = next_matching(&mut events, |e| match e {
        Event::Input(i) if i.input == "in2" => Some(i),
        _ => None,
    })
    .await;
    assert_eq!(&second.message.body[..], b"second");
    second.ack();
    timeout(WAIT, client.send_output("out", Message::new("after")))
        .await
        .unwrap()
        .unwrap();
    timeout(WAIT, client.shutdown()).await.unwrap();
}

#[tokio::test]
async fn clear_errors_for_untrusted_ca_wrong_name_and_no_broker() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let opts = ClientOptions {
        first_connect_timeout_secs: 1,
        ..fast_options()
    };

    // A CA the broker's certificate does not chain to.
    let mut id = broker.identity(KEY);
    let other_ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    id.trust = Trust::Pem {
        pem: other_ca.cert.pem(),
        source: "/etc/other-ca.pem".to_string(),
    };
    let e = ModuleClient::connect(id, opts.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not chain to the CA at /etc/other-ca.pem"),
        "{e}"
    );

    // An address the certificate is not for.
    let mut id = broker.identity(KEY);
    id.gateway_host = Some("127.0.0.1".to_string());
    let e = ModuleClient::connect(id, opts.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid for the name \"127.0.0.1\""), "{e}");

    // A host name that does not resolve.
    let mut id = broker.identity(KEY);
    id.gateway_host = Some("no-such-host.invalid".to_string());
    let e = ModuleClient::connect(id, opts.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot reach the hub at no-such-host.invalid:"),
        "{e}"
    );

    // Nothing listening: retried for first_connect_timeout_secs, then the reason.
    let mut id = broker.identity(KEY);
    id.port = free_port();
    let e = ModuleClient::connect(id, opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot reach the hub at localhost:") && e.contains("is edge-dev"),
        "{e}"
    );
}

#[tokio::test]
async fn renews_the_token_by_reconnecting_and_keeps_sending() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let (_hub, mut seen) = fake_hub(broker.plain_port).await;
    let opts = ClientOptions {
        token_ttl_secs: 2,
        token_renew_percent: 50,
        ..fast_options()
    };
    let (client, mut events) = ModuleClient::connect(broker.identity(KEY), opts)
        .await
        .unwrap();
    next_matching(&mut events, |e| matches!(e, Event::Connected).then_some(())).await;
    let reason = next_matching(&mut events, |e| match e {
        Event::Disconnected(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(reason, "renewing the SAS token");
    next_matching(&mut events, |e| matches!(e, Event::Connected).then_some(())).await;
    timeout(WAIT, client.send_output("out", Message::new("renewed")))
        .await
        .unwrap()
        .unwrap();
    let (_, p) = next_seen(&mut seen, "devices/").await;
    assert_eq!(p, b"renewed");
    timeout(WAIT, client.shutdown()).await.unwrap();
}

#[tokio::test]
async fn device_identity_sends_telemetry_on_device_topics() {
    let Some(broker) = Broker::start() else {
        return;
    };
    let (hub, _) = fake_hub(broker.plain_port).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // A second observer for the device topic.
    let mut o = MqttOptions::new("observer", "127.0.0.1", broker.plain_port);
    o.set_keep_alive(Duration::from_secs(30));
    let (obs, mut el) = AsyncClient::new(o, 10);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(None);
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Some((p.topic.clone(), p.payload.to_vec())));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    obs.subscribe("devices/dev1/messages/events/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(timeout(WAIT, rx.recv()).await.unwrap().unwrap(), None);

    let mut id = broker.identity(KEY);
    id.module_id = None;
    let (client, _events) = ModuleClient::connect(id, fast_options()).await.unwrap();
    let e = client
        .send_output("out", Message::new("x"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("device"), "{e}");
    let msg = Message::new("t").with_property("a b", "c&d");
    timeout(WAIT, client.send_event(msg))
        .await
        .unwrap()
        .unwrap();
    let (topic, payload) = timeout(WAIT, rx.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(topic, "devices/dev1/messages/events/a%20b=c%26d");
    assert_eq!(payload, b"t");
    timeout(WAIT, client.shutdown()).await.unwrap();
    drop(hub);
}
