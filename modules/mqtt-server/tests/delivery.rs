//! Acknowledgement timing, back-pressure and protocol edge cases, over raw sockets with packets
//! written by rumqttc's own MQTT 3.1.1 packet code.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::{test_settings, wait_log, Harness, Recorder};
use rumqttc::mqttbytes::v4::{self, Packet};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);

struct Client {
    s: TcpStream,
    buf: BytesMut,
}

impl Client {
    async fn connect(h: &Harness, id: &str, keep_alive: u16, clean: bool) -> Client {
        let mut c = Client {
            s: TcpStream::connect(h.addr).await.expect("connect"),
            buf: BytesMut::new(),
        };
        let mut connect = v4::Connect::new(id);
        connect.keep_alive = keep_alive;
        connect.clean_session = clean;
        c.send(Packet::Connect(connect)).await;
        match c.recv(T).await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.code, v4::ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c
    }

    async fn send(&mut self, p: Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).expect("encode");
        self.s.write_all(&b).await.expect("write");
    }

    async fn publish(&mut self, topic: &str, qos: QoS, pkid: u16, body: &str, dup: bool) {
        let mut p = v4::Publish::new(topic, qos, body.as_bytes().to_vec());
        p.pkid = pkid;
        p.dup = dup;
        self.send(Packet::Publish(p)).await;
    }

    /// Next packet, or None on close or when `within` passes.
    async fn recv(&mut self, within: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match Packet::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("bad packet from server: {e}"),
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// True once the server closed the connection (bounded wait).
    async fn closed(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn puback_and_pubrec_wait_for_edgehub() {
    let rec = Arc::new(Recorder::default());
    rec.hold.store(true, Ordering::SeqCst);
    let h = Harness::start_with(test_settings(), rec.clone(), None).await;
    let mut c = Client::connect(&h, "dev-hold", 0, true).await;
    c.publish("t", QoS::AtLeastOnce, 1, "one", false).await;
    c.publish("t", QoS::ExactlyOnce, 2, "two", false).await;
    // edgeHub holds both: the forward was called, but no acknowledgement may reach the device
    for _ in 0..2000 {
        if rec.calls.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        rec.calls.load(Ordering::SeqCst),
        2,
        "both messages are with edgeHub"
    );
    assert!(
        c.recv(Duration::from_millis(300)).await.is_none(),
        "no PUBACK/PUBREC before edgeHub acknowledged"
    );
    assert_eq!(rec.count(), 0);
    rec.release();
    match c.recv(T).await {
        Some(Packet::PubAck(a)) => assert_eq!(a.pkid, 1),
        other => panic!("expected PUBACK 1, got {other:?}"),
    }
    match c.recv(T).await {
        Some(Packet::PubRec(a)) => assert_eq!(a.pkid, 2),
        other => panic!("expected PUBREC 2, got {other:?}"),
    }
    assert_eq!(
        rec.count(),
        2,
        "acknowledged only after edgeHub recorded both"
    );
    c.send(Packet::PubRel(v4::PubRel::new(2))).await;
    match c.recv(T).await {
        Some(Packet::PubComp(a)) => assert_eq!(a.pkid, 2),
        other => panic!("expected PUBCOMP 2, got {other:?}"),
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn qos2_resend_is_not_forwarded_twice() {
    let h = Harness::start(test_settings()).await;
    let mut c = Client::connect(&h, "dev-q2", 0, false).await;
    c.publish("t", QoS::ExactlyOnce, 9, "once", false).await;
    assert!(matches!(c.recv(T).await, Some(Packet::PubRec(_))));
    // the device did not see our PUBREC (say) and resends after reconnecting
    drop(c);
    let mut c = Client::connect(&h, "dev-q2", 0, false).await;
    c.publish("t", QoS::ExactlyOnce, 9, "once", true).await;
    assert!(matches!(c.recv(T).await, Some(Packet::PubRec(_))));
    c.send(Packet::PubRel(v4::PubRel::new(9))).await;
    assert!(matches!(c.recv(T).await, Some(Packet::PubComp(_))));
    // after the release, the same packet id is a new message
    c.publish("t", QoS::ExactlyOnce, 9, "again", false).await;
    assert!(matches!(c.recv(T).await, Some(Packet::PubRec(_))));
    h.recorder.wait_for(2, T).await;
    assert_eq!(
        h.recorder.bodies(),
        vec!["once".to_string(), "again".to_string()]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn edgehub_down_buffers_then_backpressure_then_everything_arrives() {
    let rec = Arc::new(Recorder::default());
    rec.fail.store(true, Ordering::SeqCst);
    let settings = mqtt_server::Settings {
        buffer_messages: 5,
        forward_concurrency: 2,
        max_inflight: 100,
        ..test_settings()
    };
    let h = Harness::start_with(settings, rec.clone(), None).await;
    let mut c = Client::connect(&h, "dev-bp", 0, true).await;
    for i in 1..=20u16 {
        c.publish("t", QoS::AtLeastOnce, i, &format!("m{i}"), false)
            .await;
    }
    // edgeHub refuses: the buffer fills to its bound and the server stops reading the socket
    wait_log(&["forwarding buffer full", "dev-bp"], T).await;
    let text = h.metrics_text().await;
    assert!(text.contains("mqtt_buffer_messages 5"), "{text}");
    assert!(text.contains("mqtt_edgehub_connected 0"), "{text}");
    assert!(!text.contains("mqtt_backpressure_total 0"), "{text}");
    assert!(
        c.recv(Duration::from_millis(200)).await.is_none(),
        "nothing acknowledged while edgeHub is down"
    );
    assert_eq!(rec.count(), 0);
    // edgeHub is back: every message arrives, each acknowledged
    rec.fail.store(false, Ordering::SeqCst);
    let mut acked = Vec::new();
    while acked.len() < 20 {
        match c.recv(T).await {
            Some(Packet::PubAck(a)) => acked.push(a.pkid),
            other => panic!("expected PUBACK, got {other:?} after {acked:?}"),
        }
    }
    assert_eq!(
        acked,
        (1..=20).collect::<Vec<u16>>(),
        "PUBACKs in publish order"
    );
    let mut bodies = rec.bodies();
    bodies.sort();
    let mut expected: Vec<String> = (1..=20).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(bodies, expected, "every message exactly once");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_zero_is_accepted_and_ping_answered() {
    let h = Harness::start(test_settings()).await;
    let mut c = Client::connect(&h, "dev-ka0", 0, true).await;
    c.send(Packet::PingReq).await;
    assert!(matches!(c.recv(T).await, Some(Packet::PingResp)));
    c.publish("t", QoS::AtLeastOnce, 1, "x", false).await;
    assert!(matches!(c.recv(T).await, Some(Packet::PubAck(_))));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_id_takeover_closes_the_old_connection() {
    let h = Harness::start(test_settings()).await;
    let mut old = Client::connect(&h, "dev-same", 0, true).await;
    let mut new = Client::connect(&h, "dev-same", 0, true).await;
    assert!(old.closed(T).await, "old connection closed on takeover");
    new.publish("t", QoS::AtLeastOnce, 1, "new", false).await;
    assert!(matches!(new.recv(T).await, Some(Packet::PubAck(_))));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn will_is_forwarded_on_abnormal_close_only() {
    let h = Harness::start(test_settings()).await;
    for (id, clean_disconnect) in [("dev-will-a", false), ("dev-will-b", true)] {
        let mut s = TcpStream::connect(h.addr).await.expect("connect");
        let mut connect = v4::Connect::new(id);
        connect.keep_alive = 0;
        connect.last_will = Some(v4::LastWill::new(
            "status",
            format!("{id} offline"),
            QoS::AtLeastOnce,
            false,
        ));
        let mut b = BytesMut::new();
        Packet::Connect(connect)
            .write(&mut b, usize::MAX)
            .expect("encode");
        if clean_disconnect {
            Packet::Disconnect
                .write(&mut b, usize::MAX)
                .expect("encode");
        }
        s.write_all(&b).await.expect("write");
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await.expect("connack");
        drop(s);
    }
    let got = h.recorder.wait_for(1, T).await;
    assert_eq!(&got[0].1.body[..], b"dev-will-a offline");
    assert_eq!(got[0].1.properties["mqtt-client-id"], "dev-will-a");
    // the clean one's will is never sent: stop the server (which drains the buffer) and look
    let rec = h.recorder.clone();
    h.stop().await;
    assert_eq!(rec.bodies(), vec!["dev-will-a offline".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_invalid_utf8_and_never_connecting_clients_are_refused() {
    let settings = mqtt_server::Settings {
        connect_timeout_secs: 1,
        ..test_settings()
    };
    let h = Harness::start(settings).await;
    let mut good = Client::connect(&h, "dev-good", 0, true).await;

    // garbage instead of CONNECT
    let mut g = TcpStream::connect(h.addr).await.expect("connect");
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut gc = Client {
        s: g,
        buf: BytesMut::new(),
    };
    assert!(gc.closed(T).await);
    wait_log(&["refusing connection", "first packet is not CONNECT"], T).await;

    // garbage after CONNECT
    let mut c = Client::connect(&h, "dev-garbage", 0, true).await;
    c.s.write_all(&[0xF0, 0x03, 1, 2, 3]).await.expect("write");
    assert!(c.closed(T).await);
    wait_log(&["dev-garbage", "bad packet"], T).await;

    // invalid UTF-8 topic
    let mut c = Client::connect(&h, "dev-utf8", 0, true).await;
    c.s.write_all(&[0x32, 7, 0, 3, b'a', 0xff, 0xfe, 0, 1])
        .await
        .expect("write");
    assert!(c.closed(T).await);
    wait_log(&["dev-utf8", "invalid UTF-8"], T).await;

    // wildcard in a publish topic
    let mut c = Client::connect(&h, "dev-wild", 0, true).await;
    c.publish("a/#", QoS::AtLeastOnce, 1, "x", false).await;
    assert!(c.closed(T).await);
    wait_log(&["dev-wild", "invalid topic name"], T).await;

    // a socket that never sends CONNECT
    let s = TcpStream::connect(h.addr).await.expect("connect");
    let mut silent = Client {
        s,
        buf: BytesMut::new(),
    };
    assert!(silent.closed(T).await);
    wait_log(&["no CONNECT within connect_timeout"], T).await;

    // the good client still works
    good.publish("t", QoS::AtLeastOnce, 1, "still flowing", false)
        .await;
    assert!(matches!(good.recv(T).await, Some(Packet::PubAck(_))));
    h.recorder.wait_for(1, T).await;
    assert_eq!(h.recorder.bodies(), vec!["still flowing".to_string()]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_flood_past_max_connections_is_refused() {
    let settings = mqtt_server::Settings {
        max_connections: 10,
        connect_timeout_secs: 2,
        ..test_settings()
    };
    let h = Harness::start(settings).await;
    let mut good = Client::connect(&h, "dev-first", 0, true).await;
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(TcpStream::connect(h.addr).await.expect("connect"));
    }
    wait_log(&["refusing connection: max_connections reached"], T).await;
    assert!(h.handle.metrics().refused_count("max_connections") >= 30);
    good.publish("t", QoS::AtLeastOnce, 1, "ok", false).await;
    assert!(matches!(good.recv(T).await, Some(Packet::PubAck(_))));
    // once the flood's sockets are closed (connect timeout), new clients get in again
    drop(flood);
    let mut later = None;
    for _ in 0..100 {
        let s = TcpStream::connect(h.addr).await.expect("connect");
        let mut c = Client {
            s,
            buf: BytesMut::new(),
        };
        let mut connect = v4::Connect::new("dev-later");
        connect.keep_alive = 0;
        c.send(Packet::Connect(connect)).await;
        if let Some(Packet::ConnAck(_)) = c.recv(Duration::from_secs(1)).await {
            later = Some(c);
            break;
        }
    }
    assert!(later.is_some(), "a client connects after the flood");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriber_that_never_reads_is_disconnected_and_others_flow() {
    let settings = mqtt_server::Settings {
        write_timeout_secs: 1,
        session_queue: 50,
        ..test_settings()
    };
    let h = Harness::start(settings).await;
    let mut lazy = Client::connect(&h, "dev-lazy", 0, true).await;
    lazy.send(Packet::Subscribe(v4::Subscribe::new(
        "flood/#",
        QoS::AtLeastOnce,
    )))
    .await;
    assert!(matches!(lazy.recv(T).await, Some(Packet::SubAck(_))));
    // from here on `lazy` never reads
    let mut p = Client::connect(&h, "dev-pub", 0, true).await;
    let body = "x".repeat(16 * 1024);
    let mut acked = 0u16;
    for i in 1..=400u16 {
        p.publish("flood/a", QoS::AtLeastOnce, i, &body, false)
            .await;
        if let Some(Packet::PubAck(_)) = p.recv(T).await {
            acked += 1;
        }
    }
    assert_eq!(
        acked, 400,
        "the publisher is never held up by the lazy subscriber"
    );
    wait_log(&["dev-lazy", "does not"], T).await;
    h.recorder.wait_for(400, T).await;
    drop(lazy);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_send_edgehub_never_acknowledges_is_retried() {
    let rec = Arc::new(Recorder::default());
    rec.hold.store(true, Ordering::SeqCst);
    let settings = mqtt_server::Settings {
        forward_timeout_secs: 1,
        ..test_settings()
    };
    let h = Harness::start_with(settings, rec.clone(), None).await;
    let mut c = Client::connect(&h, "dev-retry", 0, true).await;
    c.publish("t", QoS::AtLeastOnce, 1, "lost ack", false).await;
    let mut tries = 0;
    while rec.calls.load(Ordering::SeqCst) < 2 && tries < 600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tries += 1;
    }
    assert!(
        rec.calls.load(Ordering::SeqCst) >= 2,
        "the unacknowledged send was attempted again"
    );
    rec.release();
    assert!(matches!(c.recv(T).await, Some(Packet::PubAck(_))));
    assert!(rec.bodies().contains(&"lost ack".to_string()));
    h.stop().await;
}

/// A message edgeHub refuses for good (after the size and topic checks passed) is tried once, logged
/// and counted, and never acknowledged to the device: its connection closes without a PUBACK.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_edgehub_refuses_for_good_is_not_acknowledged_and_not_retried_forever() {
    let rec = Arc::new(Recorder::default());
    rec.refuse.store(true, Ordering::SeqCst);
    let h = Harness::start_with(test_settings(), rec.clone(), None).await;
    let mut c = Client::connect(&h, "dev-poison", 0, true).await;
    c.publish("poison", QoS::AtLeastOnce, 1, "never fits", false)
        .await;
    assert!(
        c.recv(T).await.is_none(),
        "no PUBACK: the connection closes"
    );
    wait_log(&["refused the message for good", "dev-poison"], T).await;
    rec.refuse.store(false, Ordering::SeqCst);
    let mut c = Client::connect(&h, "dev-poison", 0, true).await;
    c.publish("fine", QoS::AtLeastOnce, 2, "fits", false).await;
    assert!(matches!(c.recv(T).await, Some(Packet::PubAck(_))));
    assert_eq!(rec.bodies(), vec!["fits".to_string()]);
    assert_eq!(
        rec.calls.load(Ordering::SeqCst),
        2,
        "the refused one was tried once"
    );
    assert!(h
        .metrics_text()
        .await
        .contains("mqtt_dropped_total{reason=\"refused_by_edgehub\"} 1"));
    h.stop().await;
}

/// A body under `max_payload` that edgeHub would not take once the properties are added (its limit is
/// 262,144 bytes of body plus properties) is refused before it is acknowledged or forwarded: MQTT 3.1.1
/// gets its connection closed, and nothing reaches the forwarder.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_too_large_for_edgehub_is_refused_at_the_device_not_acknowledged() {
    let rec = Arc::new(Recorder::default());
    let settings = mqtt_server::Settings {
        max_payload: 262_144,
        buffer_bytes: 1 << 20,
        ..test_settings()
    };
    let h = Harness::start_with(settings, rec.clone(), None).await;
    let mut c = Client::connect(&h, "dev-big", 0, true).await;
    let big = "x".repeat(262_144 - 10);
    c.publish("MyTopic", QoS::AtLeastOnce, 1, &big, false).await;
    assert!(
        c.recv(T).await.is_none(),
        "no PUBACK: the connection closes"
    );
    wait_log(&["a publish over a limit", "dev-big"], T).await;
    let mut c = Client::connect(&h, "dev-big", 0, true).await;
    c.publish("MyTopic", QoS::AtLeastOnce, 2, "small", false)
        .await;
    assert!(matches!(c.recv(T).await, Some(Packet::PubAck(_))));
    assert_eq!(
        rec.bodies(),
        vec!["small".to_string()],
        "only what fits was forwarded"
    );
    assert_eq!(h.handle.metrics().refused_count("too_large_for_edgehub"), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_spool_acknowledged_messages_survive_a_restart_while_edgehub_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = mqtt_server::Settings {
        spool_path: Some(dir.path().join("spool.redb")),
        ..test_settings()
    };
    // first life: edgeHub is down; the device is acknowledged once each message is on disk
    let down = Arc::new(Recorder::default());
    down.fail.store(true, Ordering::SeqCst);
    let h = Harness::start_with(settings.clone(), down.clone(), None).await;
    let mut c = Client::connect(&h, "dev-spool", 0, true).await;
    for i in 1..=5u16 {
        c.publish("t", QoS::AtLeastOnce, i, &format!("s{i}"), false)
            .await;
    }
    for i in 1..=5u16 {
        match c.recv(T).await {
            Some(Packet::PubAck(a)) => assert_eq!(a.pkid, i),
            other => panic!("expected PUBACK {i}, got {other:?}"),
        }
    }
    assert_eq!(
        down.count(),
        0,
        "acknowledged from the spool, not by edgeHub"
    );
    drop(c);
    h.stop().await;
    // second life on the same spool: edgeHub is back, the five go out
    let up = Arc::new(Recorder::default());
    let h = Harness::start_with(settings, up.clone(), None).await;
    up.wait_for(5, T).await;
    let mut bodies = up.bodies();
    bodies.sort();
    assert_eq!(bodies, (1..=5).map(|i| format!("s{i}")).collect::<Vec<_>>());
    let rec = up.clone();
    h.stop().await;
    assert_eq!(rec.count(), 5, "each once");
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_in_client_id_or_topic_are_refused() {
    let h = Harness::start(test_settings()).await;
    let mut c = Client {
        s: TcpStream::connect(h.addr).await.expect("connect"),
        buf: BytesMut::new(),
    };
    let mut connect = v4::Connect::new("evil\nINFO fake log line");
    connect.keep_alive = 0;
    c.send(Packet::Connect(connect)).await;
    match c.recv(T).await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, v4::ConnectReturnCode::BadClientId),
        other => panic!("expected a refusing CONNACK, got {other:?}"),
    }
    wait_log(&["control characters in the client id", "evil\\nINFO"], T).await;
    let mut c = Client::connect(&h, "dev-ctl", 0, true).await;
    c.publish("a\u{7}b", QoS::AtLeastOnce, 1, "x", false).await;
    assert!(c.closed(T).await);
    wait_log(&["dev-ctl", "invalid topic name"], T).await;
    assert_eq!(h.recorder.count(), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_still_sends_acknowledgements_that_arrive_within_the_grace_period() {
    let rec = Arc::new(Recorder::default());
    rec.hold.store(true, Ordering::SeqCst);
    let settings = mqtt_server::Settings {
        shutdown_grace_secs: 15,
        ..test_settings()
    };
    let h = Harness::start_with(settings, rec.clone(), None).await;
    let mut c = Client::connect(&h, "dev-stop", 0, true).await;
    c.publish("t", QoS::AtLeastOnce, 1, "in flight at shutdown", false)
        .await;
    let mut tries = 0;
    while rec.calls.load(Ordering::SeqCst) < 1 && tries < 600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tries += 1;
    }
    let mut h = h;
    h.signal_stop();
    // the server is now shutting down (closing connections once their acknowledgements are out)
    tokio::time::sleep(Duration::from_millis(300)).await;
    rec.release();
    match c.recv(T).await {
        Some(Packet::PubAck(a)) => assert_eq!(a.pkid, 1),
        other => panic!("expected the PUBACK before the close, got {other:?}"),
    }
    assert!(c.closed(T).await);
    h.stop().await;
    assert_eq!(rec.bodies(), vec!["in flight at shutdown".to_string()]);
}
