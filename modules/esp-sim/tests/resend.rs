//! The in-flight message is published again after the connection breaks: a scripted MQTT server
//! takes the first PUBLISH without acknowledging it and closes the connection, then acknowledges
//! everything on the second connection.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use esp_sim::{Mode, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Read one MQTT packet: (first byte, body).
async fn read_packet(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let first = s.read_u8().await?;
    let mut len: usize = 0;
    let mut mult = 1;
    loop {
        let b = s.read_u8().await?;
        len += usize::from(b & 0x7f) * mult;
        mult *= 128;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await?;
    Ok((first, body))
}

/// Topic, packet id and payload of a QoS 1 PUBLISH body.
fn parse_publish(body: &[u8]) -> (String, u16, Vec<u8>) {
    let tl = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = String::from_utf8(body[2..2 + tl].to_vec()).unwrap();
    let pkid = u16::from_be_bytes([body[2 + tl], body[3 + tl]]);
    (topic, pkid, body[4 + tl..].to_vec())
}

#[tokio::test]
async fn unacknowledged_publish_is_sent_again_after_reconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut payloads = Vec::new();
        // First connection: CONNACK, take one PUBLISH, drop the connection without PUBACK.
        let (mut s, _) = listener.accept().await.unwrap();
        let (t, _) = read_packet(&mut s).await.unwrap();
        assert_eq!(t >> 4, 1, "expected CONNECT");
        s.write_all(&[0x20, 2, 0, 0]).await.unwrap();
        let (t, body) = read_packet(&mut s).await.unwrap();
        assert_eq!(t >> 4, 3, "expected PUBLISH");
        assert_eq!((t >> 1) & 3, 1, "QoS 1");
        payloads.push(parse_publish(&body).2);
        drop(s);
        // Second connection: acknowledge every PUBLISH until DISCONNECT.
        let (mut s, _) = listener.accept().await.unwrap();
        let (t, _) = read_packet(&mut s).await.unwrap();
        assert_eq!(t >> 4, 1);
        s.write_all(&[0x20, 2, 0, 0]).await.unwrap();
        loop {
            let Ok((t, body)) = read_packet(&mut s).await else {
                break;
            };
            match t >> 4 {
                3 => {
                    let (_, pkid, payload) = parse_publish(&body);
                    payloads.push(payload);
                    let [hi, lo] = pkid.to_be_bytes();
                    s.write_all(&[0x40, 2, hi, lo]).await.unwrap();
                }
                12 => s.write_all(&[0xd0, 0]).await.unwrap(),
                14 => break,
                _ => {}
            }
        }
        payloads
    });

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sent.jsonl");
    let s = Settings {
        host: "127.0.0.1".into(),
        port,
        mode: Mode::Fleet,
        devices: 1,
        interval_ms: 20,
        messages_per_device: Some(3),
        seed: Some(3),
        reconnect_min_ms: 20,
        sent_log: Some(log.clone()),
        ..Settings::default()
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(30),
        esp_sim::run(s, std::future::pending()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(summary.published, 3);
    assert_eq!(summary.acked, 3);
    assert_eq!(summary.resent, 1);
    assert_eq!(summary.disconnects, 1);
    let payloads = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payloads.len(), 4, "first message twice, then the other two");
    assert_eq!(
        payloads[0], payloads[1],
        "the resent message is the same message"
    );
    let logged: Vec<esp_sim::SentRecord> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = logged.iter().find(|r| r.seq == 0).unwrap();
    assert_eq!(first.attempts, 2);
    assert_eq!(first.acked, Some(true));
    assert_eq!(first.payload.as_bytes(), &payloads[0][..]);
}
