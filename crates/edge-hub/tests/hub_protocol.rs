//! The hub over real sockets: authentication, routing to module inputs and `$upstream`, authorization,
//! malformed and oversize input, keep-alive, client-id takeover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use edge_hub::test_util::*;
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{Codec, Connect, Packet as RawPacket, Publish as RawPublish};
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const TO_B: (&str, &str) = (
    "toB",
    r#"FROM /messages/modules/A/outputs/out1 INTO BrokeredEndpoint("/modules/B/inputs/in1")"#,
);
const TO_CLOUD: (&str, &str) = (
    "toCloud",
    "FROM /messages/modules/A/outputs/up INTO $upstream",
);

fn events_topic(module: &str, bag: &str) -> String {
    format!("devices/{DEVICE}/modules/{module}/messages/events/{bag}")
}

#[tokio::test]
async fn modules_authenticate_with_sas_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), &[], BTreeMap::new()).await;

    // Good credentials, TLS 1.2 only with the Python SDK's suites, to the name "localhost".
    let mut ok = TestClient::spawn(module_options(
        &hub,
        "A",
        Some(client_config(&hub.pki, true)),
    ));
    assert_eq!(
        ok.connected().await,
        Ok(false),
        "first connection: no session present"
    );
    ok.stop().await;

    // Token signed with another key.
    let mut o = module_options(&hub, "A", Some(hub.client_config()));
    o.set_credentials(
        format!("{HUB}/{DEVICE}/A/?api-version=2018-06-30"),
        token("A", &key_b64("B"), now() + 3600),
    );
    let mut c = TestClient::spawn(o);
    let e = c.connected().await.unwrap_err();
    assert!(e.contains("BadUserNamePassword"), "{e}");

    // Expired token.
    let mut o = module_options(&hub, "A", Some(hub.client_config()));
    o.set_credentials(
        format!("{HUB}/{DEVICE}/A/?api-version=2018-06-30"),
        token("A", &key_b64("A"), now() - 10),
    );
    let mut c = TestClient::spawn(o);
    let e = c.connected().await.unwrap_err();
    assert!(e.contains("BadUserNamePassword"), "{e}");

    // A's valid credentials under B's client id.
    let mut o = module_options(&hub, "A", Some(hub.client_config()));
    o.set_client_id(format!("{DEVICE}/B"));
    let mut c = TestClient::spawn(o);
    let e = c.connected().await.unwrap_err();
    assert!(
        e.contains("BadUserNamePassword") || e.contains("NotAuthorized"),
        "{e}"
    );

    // Client id without module, and a module the deployment does not have.
    let mut o = module_options(&hub, "A", Some(hub.client_config()));
    o.set_client_id(DEVICE.to_string());
    let e = TestClient::spawn(o).connected().await.unwrap_err();
    assert!(e.contains("NotAuthorized"), "{e}");
    let mut o = module_options(&hub, "Z", Some(hub.client_config()));
    o.set_credentials(
        format!("{HUB}/{DEVICE}/Z/?api-version=2018-06-30"),
        token("Z", &key_b64("Z"), now() + 60),
    );
    let e = TestClient::spawn(o).connected().await.unwrap_err();
    assert!(e.contains("NotAuthorized"), "{e}");

    // No credentials at all.
    let mut o =
        rumqttc::MqttOptions::new(format!("{DEVICE}/A"), "127.0.0.1", hub.plain_addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    let e = TestClient::spawn(o).connected().await.unwrap_err();
    assert!(e.contains("BadUserNamePassword"), "{e}");

    // A TLS client that does not trust the dev CA does not get in.
    let other = tempfile::tempdir().unwrap();
    let other_pki = edge_hub::pki::DevPki::load_or_create(other.path(), &[]).unwrap();
    let mut c = TestClient::spawn(module_options(
        &hub,
        "A",
        Some(client_config(&other_pki, false)),
    ));
    assert!(c.connected().await.is_err());

    // The hub still serves after all that.
    let c = connect(&hub, "A").await;
    c.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn output_routed_to_another_modules_input_carries_cdid_cmid_and_properties() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), &[TO_B, TO_CLOUD], BTreeMap::new()).await;
    let mut b = connect(&hub, "B").await;
    assert_eq!(
        b.subscribe(&format!("devices/{DEVICE}/modules/B/inputs/#"))
            .await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let mut a = connect(&hub, "A").await;
    let body = br#"{"temp":38,"timeCreated":"2026-11-24T08:00:00Z"}"#.to_vec();
    a.client
        .publish(
            events_topic(
                "A",
                "%24.on=out1&%24.mid=m1&%24.ct=application%2Fjson&%24.ce=utf-8&k=v%2Fw",
            ),
            QoS::AtLeastOnce,
            false,
            body.clone(),
        )
        .await
        .unwrap();
    a.puback().await.unwrap();

    let p = b.next_publish().await.unwrap();
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let prefix = format!("devices/{DEVICE}/modules/B/inputs/in1/");
    assert!(p.topic.starts_with(&prefix), "{}", p.topic);
    let props = bag(&p.topic[prefix.len()..]);
    assert_eq!(props.get("$.cdid").map(String::as_str), Some(DEVICE));
    assert_eq!(props.get("$.cmid").map(String::as_str), Some("A"));
    assert_eq!(props.get("$.mid").map(String::as_str), Some("m1"));
    assert_eq!(
        props.get("$.ct").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(props.get("k").map(String::as_str), Some("v/w"));
    assert_eq!(&p.payload[..], &body[..]);

    // Acknowledged by B: gone from its queue.
    let h = hub.handle.clone();
    eventually("B's queue is empty", || {
        let s = h.stats();
        s.modules["B"].queue_depth == 0 && s.modules["B"].messages_out == 1
    })
    .await;
    let s = hub.handle.stats();
    assert_eq!(s.modules["A"].messages_in, 1);
    assert!(s.modules["A"].connected && s.modules["B"].connected && !s.modules["C"].connected);
    assert_eq!(s.upstream_depth, 0, "out1 is not routed upstream");

    // An output no route takes is acknowledged and counted as unrouted.
    a.client
        .publish(
            events_topic("A", "%24.on=nowhere"),
            QoS::AtLeastOnce,
            false,
            b"x".to_vec(),
        )
        .await
        .unwrap();
    a.puback().await.unwrap();
    assert_eq!(hub.handle.stats().unrouted, 1);
    a.stop().await;
    b.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn upstream_queue_gets_routed_messages() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), &[TO_CLOUD], BTreeMap::new()).await;
    let mut a = connect(&hub, "A").await;
    for i in 0..3 {
        a.client
            .publish(
                events_topic("A", &format!("%24.on=up&n={i}")),
                QoS::AtLeastOnce,
                false,
                format!("m{i}"),
            )
            .await
            .unwrap();
        a.puback().await.unwrap();
    }
    let q = hub.handle.upstream();
    assert_eq!(q.depth(), 3);
    for i in 0..3 {
        let m = tokio::time::timeout(WAIT, q.next()).await.unwrap();
        assert_eq!(m.module, "A");
        assert_eq!(m.output, "up");
        assert_eq!(m.priority, edge_routes::DEFAULT_PRIORITY);
        assert_eq!(m.message.properties.get("n"), Some(&i.to_string()));
        assert_eq!(m.message.connection_module_id.as_deref(), Some("A"));
        assert_eq!(m.message.connection_device_id.as_deref(), Some(DEVICE));
        assert_eq!(&m.message.body[..], format!("m{i}").as_bytes());
        q.ack(m.seq).await.unwrap();
        assert!(
            q.ack(m.seq).await.is_err(),
            "a second ack of the same message is an error"
        );
    }
    assert_eq!(q.depth(), 0);
    // Nothing more: next() waits.
    assert!(tokio::time::timeout(Duration::from_millis(200), q.next())
        .await
        .is_err());
    a.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn route_priority_orders_the_upstream_queue_and_ttl_drops_old_messages() {
    let dir = tempfile::tempdir().unwrap();
    let routes = vec![
        edge_routes::Route::parse(
            "slow",
            "FROM /messages/modules/A/outputs/slow INTO $upstream",
        )
        .unwrap()
        .with_options(Some(5), None)
        .unwrap(),
        edge_routes::Route::parse(
            "fast",
            "FROM /messages/modules/A/outputs/fast INTO $upstream",
        )
        .unwrap()
        .with_options(Some(0), None)
        .unwrap(),
        edge_routes::Route::parse(
            "brief",
            "FROM /messages/modules/A/outputs/brief INTO $upstream",
        )
        .unwrap()
        .with_options(Some(0), Some(1))
        .unwrap(),
    ];
    let hub = TestHub::start_with(dir.path(), routes, BTreeMap::new(), |_| {}).await;
    let mut a = connect(&hub, "A").await;
    for out in ["brief", "slow", "fast", "slow", "fast"] {
        a.client
            .publish(
                events_topic("A", &format!("%24.on={out}")),
                QoS::AtLeastOnce,
                false,
                out,
            )
            .await
            .unwrap();
        a.puback().await.unwrap();
    }
    // Let the 1-second message expire (the test asserts on the outcome, not on timing).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let q = hub.handle.upstream();
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = tokio::time::timeout(WAIT, q.next()).await.unwrap();
        got.push((m.output.clone(), m.priority));
        q.ack(m.seq).await.unwrap();
    }
    assert_eq!(
        got,
        vec![
            ("fast".to_string(), 0),
            ("fast".to_string(), 0),
            ("slow".to_string(), 5),
            ("slow".to_string(), 5)
        ]
    );
    assert_eq!(hub.handle.stats().expired, 1);
    assert_eq!(q.depth(), 0);
    a.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn modules_may_use_only_their_own_topics() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), &[TO_B], BTreeMap::new()).await;
    let mut a = connect(&hub, "A").await;
    // Another module's inputs, a wildcard over all modules, everything: refused; own and $iothub: granted.
    a.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new(
                format!("devices/{DEVICE}/modules/B/#"),
                QoS::AtLeastOnce,
            ),
            rumqttc::SubscribeFilter::new(
                format!("devices/{DEVICE}/modules/+/inputs/#"),
                QoS::AtLeastOnce,
            ),
            rumqttc::SubscribeFilter::new("#".to_string(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new(
                format!("devices/{DEVICE}/modules/A/#"),
                QoS::AtLeastOnce,
            ),
            rumqttc::SubscribeFilter::new("$iothub/twin/res/#".to_string(), QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    assert_eq!(
        a.suback().await.unwrap(),
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::AtMostOnce),
        ]
    );
    // Publishing as another module: the hub closes the connection and queues nothing.
    a.client
        .publish(
            events_topic("B", "%24.on=out1"),
            QoS::AtLeastOnce,
            false,
            b"spoof".to_vec(),
        )
        .await
        .unwrap();
    let e = a.disconnected().await;
    assert!(!e.is_empty());
    assert_eq!(hub.handle.stats().modules["B"].queue_depth, 0);
    // A topic that is not part of the protocol at all.
    let mut a = connect(&hub, "A").await;
    a.client
        .publish("some/topic", QoS::AtLeastOnce, false, b"x".to_vec())
        .await
        .unwrap();
    a.disconnected().await;
    hub.stop().await;
}

/// A raw MQTT connection over the plain port (for what rumqttc would not send).
async fn raw(hub: &TestHub, module: &str, keep_alive: u16) -> Framed<TcpStream, Codec> {
    let tcp = TcpStream::connect(hub.plain_addr).await.unwrap();
    let mut f = Framed::new(
        tcp,
        Codec {
            max_incoming_size: 1 << 20,
            max_outgoing_size: 1 << 20,
        },
    );
    let mut c = Connect::new(format!("{DEVICE}/{module}"));
    c.keep_alive = keep_alive;
    c.clean_session = true;
    c.set_login(
        format!("{HUB}/{DEVICE}/{module}/?api-version=2018-06-30"),
        token(module, &key_b64(module), now() + 600),
    );
    f.send(RawPacket::Connect(c)).await.unwrap();
    match tokio::time::timeout(WAIT, f.next()).await.unwrap() {
        Some(Ok(RawPacket::ConnAck(a))) => assert_eq!(a.code, ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    f
}

/// Reads until the server closes the connection (bounded); returns the packets seen before.
async fn until_closed(f: &mut Framed<TcpStream, Codec>) -> Vec<RawPacket> {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, f.next())
            .await
            .expect("the hub should close the connection")
        {
            Some(Ok(p)) => seen.push(p),
            Some(Err(_)) | None => return seen,
        }
    }
}

#[tokio::test]
async fn oversize_messages_close_the_connection_without_puback() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), &[TO_CLOUD], BTreeMap::new()).await;
    let mut f = raw(&hub, "A", 0).await;
    let mut p = RawPublish::new(
        events_topic("A", "%24.on=up"),
        QoS::AtLeastOnce,
        vec![b'x'; 300_000],
    );
    p.pkid = 1;
    f.send(RawPacket::Publish(p)).await.unwrap();
    let seen = until_closed(&mut f).await;
    assert!(
        !seen.iter().any(|p| matches!(p, RawPacket::PubAck(_))),
        "{seen:?}"
    );
    assert_eq!(hub.handle.stats().upstream_depth, 0);

    // Just under the packet limit but over the message limit once properties count: also refused.
    let mut f = raw(&hub, "A", 0).await;
    let mut p = RawPublish::new(
        events_topic("A", "%24.on=up&pad=yyyyyyyy"),
        QoS::AtLeastOnce,
        vec![b'x'; 262_140],
    );
    p.pkid = 1;
    f.send(RawPacket::Publish(p)).await.unwrap();
    let seen = until_closed(&mut f).await;
    assert!(
        !seen.iter().any(|p| matches!(p, RawPacket::PubAck(_))),
        "{seen:?}"
    );

    // A message of exactly the limit is fine.
    let mut f = raw(&hub, "A", 0).await;
    let props = "%24.on=up";
    let body = 262_144 - "$.on".len() - "up".len();
    let mut p = RawPublish::new(events_topic("A", props), QoS::AtLeastOnce, vec![b'x'; body]);
    p.pkid = 7;
    f.send(RawPacket::Publish(p)).await.unwrap();
    match tokio::time::timeout(WAIT, f.next()).await.unwrap() {
        Some(Ok(RawPacket::PubAck(a))) => assert_eq!(a.pkid, 7),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(hub.handle.stats().upstream_depth, 1);
    hub.stop().await;
}

#[tokio::test]
async fn garbage_bytes_qos2_and_silence_close_the_connection_and_the_hub_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), &[TO_CLOUD], BTreeMap::new()).await;

    // Garbage instead of CONNECT, on both ports.
    for addr in [hub.plain_addr, hub.tls_addr] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"\xff\xff\xff\xff\xffGET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert!(
            n == 0 || addr == hub.tls_addr,
            "plain port: closed without a reply"
        );
    }

    // Garbage after a good CONNECT.
    let mut f = raw(&hub, "A", 0).await;
    f.get_mut()
        .write_all(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3])
        .await
        .unwrap();
    until_closed(&mut f).await;

    // QoS 2 is not edgeHub's.
    let mut f = raw(&hub, "A", 0).await;
    let mut p = RawPublish::new(
        events_topic("A", "%24.on=up"),
        QoS::ExactlyOnce,
        b"x".to_vec(),
    );
    p.pkid = 3;
    f.send(RawPacket::Publish(p)).await.unwrap();
    let seen = until_closed(&mut f).await;
    assert!(seen.is_empty(), "{seen:?}");

    // Keep-alive 1 s and silence: closed (after 1.5 s).
    let mut f = raw(&hub, "A", 1).await;
    until_closed(&mut f).await;

    // A second CONNECT on one connection is a protocol violation.
    let mut f = raw(&hub, "A", 0).await;
    f.send(RawPacket::Connect(Connect::new(format!("{DEVICE}/A"))))
        .await
        .unwrap();
    until_closed(&mut f).await;

    // Still serving.
    let mut f = raw(&hub, "A", 0).await;
    f.send(RawPacket::PingReq).await.unwrap();
    match tokio::time::timeout(WAIT, f.next()).await.unwrap() {
        Some(Ok(RawPacket::PingResp)) => {}
        other => panic!("expected PINGRESP, got {other:?}"),
    }
    hub.stop().await;
}

#[tokio::test]
async fn a_second_connect_with_the_same_client_id_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), &[], BTreeMap::new()).await;
    let mut first = raw(&hub, "A", 0).await;
    let second = raw(&hub, "A", 0).await;
    until_closed(&mut first).await;
    let mut second = second;
    second.send(RawPacket::PingReq).await.unwrap();
    match tokio::time::timeout(WAIT, second.next()).await.unwrap() {
        Some(Ok(RawPacket::PingResp)) => {}
        other => panic!("expected PINGRESP on the new connection, got {other:?}"),
    }
    assert!(hub.handle.stats().modules["A"].connected);
    drop(second);
    let h = hub.handle.clone();
    eventually("A shows disconnected", || !h.stats().modules["A"].connected).await;
    hub.stop().await;
}

#[tokio::test]
async fn a_message_from_a_client_that_vanishes_at_once_is_still_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), &[TO_B], BTreeMap::new()).await;
    let mut b = connect(&hub, "B").await;
    b.subscribe(&format!("devices/{DEVICE}/modules/B/inputs/#"))
        .await;
    // QoS 0 publish, then the socket is gone before anything else happens.
    let mut f = raw(&hub, "A", 0).await;
    f.send(RawPacket::Publish(RawPublish::new(
        events_topic("A", "%24.on=out1"),
        QoS::AtMostOnce,
        b"fire and forget".to_vec(),
    )))
    .await
    .unwrap();
    drop(f);
    let p = b.next_publish().await.unwrap();
    assert_eq!(&p.payload[..], b"fire and forget");
    b.stop().await;
    hub.stop().await;
}
