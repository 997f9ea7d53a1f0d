//! The dashboard over a real socket: the page and its files, the JSON API, the event stream and `/metrics`,
//! fed with upstream messages as `edge-dev up` feeds it; and it stops (event streams too) on shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use edge_dev::dashboard::{self, Dashboard, DashboardOptions};
use edge_dev::supervisor::{ModuleStatus, StatusMap};
use edge_hub::{HubStats, ModuleStats, StoredMessage};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot};

const WAIT: Duration = Duration::from_secs(10);

fn message(output: &str, body: Value, props: &[(&str, &str)]) -> StoredMessage {
    let message = edge_client::Message {
        body: serde_json::to_vec(&body).unwrap().into(),
        properties: props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    StoredMessage {
        seq: 1,
        enqueued_time: Utc::now(),
        module: "AggregatorModule".into(),
        output: output.into(),
        message,
        priority: 10,
    }
}

struct Server {
    addr: SocketAddr,
    dash: Dashboard,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(offline: bool) -> Server {
    let stats = Arc::new(|| {
        let mut modules = BTreeMap::new();
        modules.insert(
            "AggregatorModule".to_string(),
            ModuleStats {
                connected: true,
                messages_in: 12,
                messages_out: 30,
                queue_depth: 2,
            },
        );
        modules.insert("Outside".to_string(), ModuleStats::default());
        HubStats {
            modules,
            upstream_depth: 5,
            unrouted: 1,
            expired: 0,
        }
    });
    let status: StatusMap = Arc::new(Mutex::new(BTreeMap::new()));
    status.lock().unwrap().insert(
        "AggregatorModule".into(),
        ModuleStatus {
            running: true,
            pid: Some(4242),
            restarts: 3,
            last_exit: Some("exit status: 1".into()),
            given_up: None,
        },
    );
    let opts = DashboardOptions {
        device_id: "edge-1".into(),
        offline,
        health_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let dash = Dashboard::new(opts, stats, status);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(dashboard::serve(listener, dash.clone(), async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        dash,
        stop: Some(tx),
        task,
    }
}

impl Server {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the dashboard did not stop")
            .unwrap()
            .unwrap();
    }
}

/// One HTTP/1.1 request; returns (status, headers lowercased, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, head, body) = get(addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn page_and_assets_come_from_the_binary() {
    let s = start(false).await;
    let (status, head, body) = get(s.addr, "/").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(
        body.contains("<html lang=\"en\">")
            && body.contains("/assets/app.js")
            && body.contains("/assets/app.css")
    );
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "the page loads nothing from elsewhere"
    );
    let (status, head, js) = get(s.addr, "/assets/app.js").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(js.contains("EventSource(\"/api/events\")"));
    let (status, head, _) = get(s.addr, "/assets/app.css").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/css"), "{head}");
    assert_eq!(get(s.addr, "/nothing").await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn snapshot_has_series_alerts_and_module_health() {
    let s = start(false).await;
    let end = Utc::now() - chrono::Duration::seconds(4);
    let end_s = end.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert!(s
        .dash
        .record(&message(
            "AvgTemp",
            json!({"avg": 37.25}),
            &[("timestamp", &end_s)]
        ))
        .is_some());
    assert!(s
        .dash
        .record(&message(
            "FeverAlert",
            json!({"deviceId": "bed-3", "avgTemp": 38.5, "windowEnd": end_s}),
            &[("timestamp", &end_s)]
        ))
        .is_some());
    assert!(
        s.dash
            .record(&message("Other", json!({"temp": 36.0}), &[]))
            .is_none(),
        "not a window average"
    );

    let snap = get_json(s.addr, "/api/snapshot").await;
    assert_eq!(snap["deviceId"], "edge-1");
    assert_eq!(snap["threshold"], 38.0);
    let devices = snap["devices"].as_array().unwrap();
    let names: Vec<&str> = devices
        .iter()
        .map(|d| d["device"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["all", "bed-3"]);
    assert_eq!(devices[0]["latest"]["value"], 37.25);
    assert_eq!(devices[0]["points"][0]["t"], end.timestamp_millis());
    assert_eq!(devices[1]["latest"]["alert"], true);
    assert_eq!(snap["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(snap["alerts"][0]["device"], "bed-3");

    let health = &snap["health"];
    assert_eq!(
        health["link"],
        json!({"state": "online", "upstreamDepth": 5, "error": null})
    );
    assert_eq!(health["unrouted"], 1);
    let agg = &health["modules"][0];
    assert_eq!(agg["name"], "AggregatorModule");
    assert_eq!(
        (
            agg["supervised"].clone(),
            agg["running"].clone(),
            agg["restarts"].clone(),
            agg["pid"].clone()
        ),
        (json!(true), json!(true), json!(3), json!(4242))
    );
    assert_eq!(
        (
            agg["received"].clone(),
            agg["sent"].clone(),
            agg["queueDepth"].clone()
        ),
        // the hub took 12 messages in from the module (it sent them) and gave it 30
        (json!(30), json!(12), json!(2))
    );
    assert_eq!(health["modules"][1]["name"], "Outside");
    assert_eq!(health["modules"][1]["supervised"], false);

    assert_eq!(get_json(s.addr, "/api/health").await, *health);
    assert_eq!(get_json(s.addr, "/api/alerts").await, snap["alerts"]);
    assert_eq!(get_json(s.addr, "/api/devices/bed-3").await, devices[1]);
    assert_eq!(get(s.addr, "/api/devices/nobody").await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn offline_link_and_metrics() {
    let s = start(true).await;
    let end = (Utc::now() - chrono::Duration::seconds(2)).to_rfc3339();
    s.dash.record(&message(
        "AvgTemp",
        json!({"deviceId": "bed-1", "avg": 36.5}),
        &[("timestamp", &end)],
    ));
    assert_eq!(
        get_json(s.addr, "/api/health").await["link"]["state"],
        "offline"
    );
    let (status, head, text) = get(s.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(text.ends_with("\n# EOF\n"), "{text}");
    for line in [
        "edge_dev_module_running{module=\"AggregatorModule\"} 1",
        "edge_dev_module_restarts_total{module=\"AggregatorModule\"} 3",
        "edge_dev_module_messages_sent_total{module=\"AggregatorModule\"} 12",
        "edge_dev_module_messages_received_total{module=\"AggregatorModule\"} 30",
        "edge_dev_module_queue_depth{module=\"AggregatorModule\"} 2",
        "edge_dev_module_connected{module=\"Outside\"} 0",
        "edge_dev_upstream_queue_depth 5",
        "edge_dev_upstream_online 0",
        "edge_dev_dashboard_readings_total 1",
        "edge_dev_device_latest_average{device=\"bed-1\"} 36.5",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    s.stop().await;
}

/// Reads the event stream until `want` appears in it.
async fn read_until(stream: &mut TcpStream, seen: &mut String, want: &str) {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains(want) {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in {seen}"))
            .unwrap();
        assert!(n > 0, "stream ended before {want:?}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn event_stream_sends_readings_and_health_and_ends_on_shutdown() {
    let s = start(false).await;
    let (tap, _) = broadcast::channel(16);
    let (follow_stop_tx, follow_stop_rx) = oneshot::channel::<()>();
    let follower = tokio::spawn(s.dash.clone().follow(tap.subscribe(), async move {
        let _ = follow_stop_rx.await;
    }));

    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "event: health").await;
    assert!(
        seen.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{seen}"
    );

    let end = (Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    tap.send(message(
        "FeverAlert",
        json!({"deviceId": "bed-9", "avgTemp": 39.0}),
        &[("timestamp", &end)],
    ))
    .unwrap();
    read_until(&mut stream, &mut seen, "event: reading").await;
    let data = seen
        .split("event: reading\ndata: ")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap();
    let point: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        (
            point["device"].clone(),
            point["value"].clone(),
            point["alert"].clone()
        ),
        (json!("bed-9"), json!(39.0), json!(true))
    );

    // Shutdown ends the open stream and the server.
    let _ = follow_stop_tx.send(());
    tokio::time::timeout(WAIT, follower).await.unwrap().unwrap();
    s.stop().await;
    let mut rest = Vec::new();
    // The server only returns once its connections closed; the client sees the end of the stream.
    let _closed_or_reset = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("the stream did not end");
}

#[tokio::test]
async fn the_upstream_log_refills_the_charts() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("upstream.jsonl");
    let recent = (Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let old = (Utc::now() - chrono::Duration::hours(30)).to_rfc3339();
    let lines = [
        json!({"enqueuedTime": recent, "module": "AggregatorModule", "output": "AvgTemp", "properties": {"timestamp": recent}, "body": {"avg": 36.8}}),
        json!({"enqueuedTime": old, "module": "AggregatorModule", "output": "AvgTemp", "properties": {"timestamp": old}, "body": {"avg": 36.1}}),
        json!({"enqueuedTime": recent, "module": "M", "output": "o", "properties": {}, "bodyBase64": "AA=="}),
    ];
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    text.push_str("{not json\n");
    std::fs::write(&log, text).unwrap();
    let s = start(false).await;
    assert_eq!(
        s.dash.load_log(&log).unwrap(),
        1,
        "only the recent average is kept"
    );
    assert_eq!(
        s.dash.load_log(&dir.path().join("missing.jsonl")).unwrap(),
        0
    );
    let snap = get_json(s.addr, "/api/snapshot").await;
    assert_eq!(snap["devices"][0]["latest"]["value"], 36.8);
    s.stop().await;
}

#[tokio::test]
async fn module_metrics_are_passed_on() {
    // A module's metrics endpoint: answers one request with Prometheus text.
    let module = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let module_addr = module.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = module.accept().await {
            let mut req = vec![0u8; 1024];
            let n = c.read(&mut req).await.unwrap_or(0);
            let path_ok = String::from_utf8_lossy(&req[..n]).starts_with("GET /metrics HTTP/1.");
            let answer = if path_ok {
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nmqtt_connected_clients 2\n"
            } else {
                "HTTP/1.0 404 Not Found\r\n\r\n"
            };
            let _ = c.write_all(answer.as_bytes()).await;
        }
    });
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();

    let stats = Arc::new(HubStats::default);
    let opts = DashboardOptions {
        module_metrics: [
            ("Mqtt".to_string(), format!("http://{module_addr}/metrics")),
            ("Gone".to_string(), format!("http://{closed}/metrics")),
        ]
        .into(),
        ..Default::default()
    };
    let status: StatusMap = Arc::new(Mutex::new(
        [("Mqtt".to_string(), ModuleStatus::default())].into(),
    ));
    let dash = Dashboard::new(opts, stats, status);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(dashboard::serve(listener, dash.clone(), async move {
        let _ = rx.await;
    }));
    let s = Server {
        addr,
        dash,
        stop: Some(tx),
        task,
    };

    let (status, head, body) = get(s.addr, "/metrics/modules/Mqtt").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(body, "mqtt_connected_clients 2\n");
    let (status, _, body) = get(s.addr, "/metrics/modules/Gone").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(get(s.addr, "/metrics/modules/Other").await.0, 404);
    let health = get_json(s.addr, "/api/health").await;
    assert_eq!(health["modules"][0]["name"], "Mqtt");
    assert_eq!(health["modules"][0]["metrics"], "/metrics/modules/Mqtt");
    s.stop().await;
}

#[tokio::test]
async fn failing_deliveries_show_as_retrying() {
    let s = start(false).await;
    let (tx, rx) = tokio::sync::watch::channel(None);
    s.dash.watch_link(rx);
    assert_eq!(
        get_json(s.addr, "/api/health").await["link"]["state"],
        "online"
    );
    tx.send_replace(Some("cannot connect to IoT Hub: timed out".to_string()));
    let link = get_json(s.addr, "/api/health").await["link"].clone();
    assert_eq!(
        link,
        json!({"state": "retrying", "upstreamDepth": 5, "error": "cannot connect to IoT Hub: timed out"})
    );
    let (_, _, text) = get(s.addr, "/metrics").await;
    assert!(
        text.lines().any(|l| l == "edge_dev_upstream_online 0"),
        "{text}"
    );
    tx.send_replace(None);
    assert_eq!(
        get_json(s.addr, "/api/health").await["link"]["state"],
        "online"
    );
    s.stop().await;
}

/// One HTTP/1.1 request with extra header lines; returns (status, headers lowercased, body).
async fn get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn beyond_loopback_the_dashboard_needs_a_token() {
    let stats: dashboard::StatsSource = Arc::new(HubStats::default);
    let status: StatusMap = Arc::new(Mutex::new(BTreeMap::new()));
    // no token on an address beyond loopback: refused (tests listen on loopback only, so the check
    // is asked directly; `edge-dev up --dashboard 0.0.0.0:...` runs it before binding, see
    // tests/test_errors.py, and `dashboard::serve` runs it on its listener's address)
    let e = dashboard::check_exposure("0.0.0.0:8080".parse().unwrap(), None).unwrap_err();
    assert!(e.to_string().contains("give it a token"), "{e}");
    assert!(dashboard::check_exposure("[::]:8080".parse().unwrap(), None).is_err());
    assert!(dashboard::check_exposure("127.0.0.1:8080".parse().unwrap(), None).is_ok());
    assert!(dashboard::check_exposure("0.0.0.0:8080".parse().unwrap(), Some("short")).is_err());

    // with a token: 401 without it, the page and the API with it
    let token = "0123456789abcdef0123";
    let dash = Dashboard::new(
        DashboardOptions {
            token: Some(token.into()),
            ..Default::default()
        },
        stats,
        status,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(dashboard::serve(listener, dash, async move {
        let _ = rx.await;
    }));
    for path in ["/", "/api/snapshot", "/metrics", "/api/events"] {
        let (status, head, body) = get_with(addr, path, "").await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(body.contains("needs its token"), "{body}");
    }
    let (status, _, _) = get_with(
        addr,
        "/api/snapshot",
        "Authorization: Bearer wrong-token-000000\r\n",
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, body) = get_with(
        addr,
        "/api/snapshot",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // ?token= once: the page, and a cookie for the page's own requests
    let (status, head, body) = get_with(addr, &format!("/?token={token}"), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        head.contains(&format!(
            "set-cookie: edge_dev_token={token}; path=/; httponly; samesite=strict"
        )),
        "{head}"
    );
    let (status, _, _) = get_with(
        addr,
        "/api/health",
        &format!("Cookie: edge_dev_token={token}\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let _ = tx.send(());
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
