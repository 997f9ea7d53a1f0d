//! esp-sim against our own MqttServerModule (in process, with a forwarder that records what would
//! go to edgeHub's `output1`): every acknowledged message reaches the output, byte for byte.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use esp_sim::{Mode, Settings};
use mqtt_server::{BoxFuture, ForwardError, Forwarder, Listeners, Message, Server};
use tokio::net::TcpListener;

#[derive(Default)]
struct Recorder {
    messages: Mutex<Vec<(String, Message)>>,
}

impl Forwarder for Recorder {
    fn forward(&self, output: String, message: Message) -> BoxFuture<'_, Result<(), ForwardError>> {
        Box::pin(async move {
            if let Ok(mut m) = self.messages.lock() {
                m.push((output, message));
            }
            Ok(())
        })
    }
}

async fn start_server() -> (u16, Arc<Recorder>, tokio::sync::oneshot::Sender<()>) {
    let mqtt = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = mqtt.local_addr().unwrap().port();
    let recorder = Arc::new(Recorder::default());
    let server = Server::new(mqtt_server::Settings::default(), recorder.clone()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let listeners = Listeners {
            mqtt,
            tls: None,
            metrics: None,
        };
        let _ = server
            .run(listeners, async move {
                let _ = stopped.await;
            })
            .await;
    });
    (port, recorder, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_and_fleet_reach_output1_unchanged() {
    let (port, recorder, stop) = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    let runs = [
        (
            "seed",
            Settings {
                mode: Mode::Seed,
                interval_ms: 20,
                messages_per_device: Some(5),
                ..Settings::default()
            },
        ),
        (
            "fleet",
            Settings {
                mode: Mode::Fleet,
                devices: 10,
                interval_ms: 20,
                messages_per_device: Some(10),
                qos: Some(2),
                seed: Some(1),
                ..Settings::default()
            },
        ),
    ];
    for (name, s) in runs {
        let log = dir.path().join(format!("{name}.jsonl"));
        let s = Settings {
            host: "127.0.0.1".into(),
            port,
            sent_log: Some(log.clone()),
            ..s
        };
        let summary = tokio::time::timeout(
            Duration::from_secs(60),
            esp_sim::run(s, std::future::pending()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(summary.acked, summary.published, "{name}: {summary:?}");
        assert_eq!(summary.unacked, 0);
        for line in std::fs::read_to_string(&log).unwrap().lines() {
            let r: esp_sim::SentRecord = serde_json::from_str(line).unwrap();
            assert_eq!(r.acked, Some(true));
            expected.push((r.topic, r.qos.to_string(), r.client_id, r.payload));
        }
    }
    assert_eq!(expected.len(), 105);
    // The server acknowledges only after the forwarder has the message, so all are there now.
    let mut got: Vec<(String, String, String, String)> = recorder
        .messages
        .lock()
        .unwrap()
        .iter()
        .map(|(output, m)| {
            assert_eq!(output, "output1");
            (
                m.properties.get("mqtt-topic").cloned().unwrap_or_default(),
                m.properties.get("mqtt-qos").cloned().unwrap_or_default(),
                m.properties
                    .get("mqtt-client-id")
                    .cloned()
                    .unwrap_or_default(),
                String::from_utf8_lossy(&m.body).to_string(),
            )
        })
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    let _ = stop.send(());
}
