//! Black-box tests against a real Mosquitto, with `mosquitto_sub` as the independent subscriber.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::{have_mosquitto, never, read_log, Broker, Subscriber};
use esp_sim::{Faults, Mode, Settings};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 8, 0, 0)
        .single()
        .unwrap()
}

fn fleet(port: u16, devices: u32, count: u64, interval_ms: u64) -> Settings {
    Settings {
        host: "127.0.0.1".into(),
        port,
        mode: Mode::Fleet,
        devices,
        interval_ms,
        messages_per_device: Some(count),
        seed: Some(42),
        start_time: Some(t0()),
        topic: "fleet/{device}".into(),
        client_id_prefix: format!("t{port}"),
        ..Settings::default()
    }
}

/// Is `s` the seed's payload: `{"temp":<35..41>, "timecreated":"MM/dd/yyyy HH:mm:ss"}`?
fn check_seed_payload(s: &str) {
    let rest = s
        .strip_prefix("{\"temp\":")
        .unwrap_or_else(|| panic!("bad start: {s}"));
    let (temp, rest) = rest
        .split_once(", \"timecreated\":\"")
        .unwrap_or_else(|| panic!("bad middle: {s}"));
    let temp: i64 = temp
        .parse()
        .unwrap_or_else(|_| panic!("temp not a whole number: {s}"));
    assert!((35..=41).contains(&temp), "{s}");
    let time = rest
        .strip_suffix("\"}")
        .unwrap_or_else(|| panic!("bad end: {s}"));
    assert_eq!(time.len(), 19, "{s}");
    let parsed = chrono::NaiveDateTime::parse_from_str(time, "%m/%d/%Y %H:%M:%S").unwrap();
    let now = chrono::Local::now().naive_local();
    assert!(
        (now - parsed).num_seconds().abs() < 120,
        "{time} is not local now"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_mode_payloads_match_the_seed() {
    if !have_mosquitto() {
        return;
    }
    let broker = Broker::start();
    let mut sub = Subscriber::start(broker.port, "MyTopic");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sent.jsonl");
    let s = Settings {
        host: "127.0.0.1".into(),
        port: broker.port,
        interval_ms: 50,
        messages_per_device: Some(5),
        sent_log: Some(log.clone()),
        ..Settings::default()
    };
    let summary = esp_sim::run(s, never()).await.unwrap();
    assert_eq!(summary.acked, 5);
    assert_eq!(summary.unacked, 0);
    let got = sub.collect(5, Duration::from_secs(10)).to_vec();
    assert_eq!(got.len(), 5);
    for r in &got {
        assert_eq!(r.topic, "MyTopic");
        assert_eq!(r.qos, 2);
        check_seed_payload(&r.payload);
    }
    let sent = read_log(&log);
    assert_eq!(sent.len(), 5);
    assert!(sent
        .iter()
        .all(|r| r.qos == 2 && r.retain && r.acked == Some(true) && r.client_id == "esp-sim"));
    // Retained: a new subscriber gets the last one with the retain flag.
    let mut late = Subscriber::start(broker.port, "MyTopic");
    let retained = late.collect(1, Duration::from_secs(5)).to_vec();
    assert_eq!(retained.len(), 1);
    assert!(retained[0].retain);
    assert_eq!(retained[0].payload, sent[4].payload);
}

/// Everything but the wall-clock fields, in a stable order.
fn replayable(path: &std::path::Path) -> Vec<String> {
    let mut v: Vec<(String, u64, String)> = read_log(&path.to_path_buf())
        .into_iter()
        .map(|r| {
            let key = serde_json::json!({"client_id": r.client_id, "seq": r.seq, "topic": r.topic, "qos": r.qos,
                "retain": r.retain, "payload": r.payload, "fault": r.fault, "acked": r.acked});
            (r.client_id, r.seq, key.to_string())
        })
        .collect();
    v.sort();
    v.into_iter().map(|x| x.2).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_fleet_is_reproducible_and_the_log_matches_the_subscriber() {
    if !have_mosquitto() {
        return;
    }
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults {
        clock_skew: 0.1,
        out_of_range: 0.05,
        malformed_json: 0.05,
        ..Settings::default().faults
    };
    let mut runs = Vec::new();
    let mut received = Vec::new();
    for (i, seed) in [42u64, 42, 43].into_iter().enumerate() {
        let log = dir.path().join(format!("run{i}.jsonl"));
        let mut sub = Subscriber::start(broker.port, "fleet/#");
        let s = Settings {
            seed: Some(seed),
            sent_log: Some(log.clone()),
            faults: faults.clone(),
            ..fleet(broker.port, 20, 15, 20)
        };
        let summary = esp_sim::run(s, never()).await.unwrap();
        assert_eq!(summary.seed, seed);
        assert_eq!(summary.acked, 300);
        let got = sub.collect(300, Duration::from_secs(20)).to_vec();
        runs.push(replayable(&log));
        received.push((read_log(&log), got));
    }
    assert_eq!(runs[0].len(), 300);
    assert_eq!(
        runs[0], runs[1],
        "same seed and start time must give the same bytes"
    );
    assert_ne!(
        runs[0], runs[2],
        "a different seed must give different payloads"
    );

    // The sent log is exactly what the subscriber received (as a multiset of topic + payload).
    let (sent, got) = &received[0];
    let mut a: Vec<(String, String)> = sent
        .iter()
        .map(|r| (r.topic.clone(), r.payload.clone()))
        .collect();
    let mut b: Vec<(String, String)> = got
        .iter()
        .map(|r| (r.topic.clone(), r.payload.clone()))
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert!(got
        .iter()
        .all(|r| r.qos == 1 && r.topic.starts_with("fleet/t")));
    // Fleet payloads carry deviceId = client id, one-decimal temp and RFC 3339 UTC time.
    for r in sent.iter().filter(|r| r.fault.is_none()) {
        let v: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
        assert_eq!(v["deviceId"], r.client_id.as_str());
        assert_eq!(r.topic, format!("fleet/{}", r.client_id));
        let t = v["timecreated"].as_str().unwrap();
        assert!(
            t.ends_with('Z') && DateTime::parse_from_rfc3339(t).is_ok(),
            "{t}"
        );
        assert!(
            v["temp"]
                .to_string()
                .split('.')
                .nth(1)
                .is_some_and(|d| d.len() == 1),
            "{}",
            v["temp"]
        );
    }
}

/// Classify a received payload without looking at the sent log. `seq`-th message of a device is
/// stamped at or after `t0 + seq * 20 ms` unless skewed (then at least 1 s earlier).
fn classify(payload: &str) -> &'static str {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
        return "malformed_json";
    };
    let (Some(temp), Some(time)) = (v.get("temp"), v.get("timecreated")) else {
        return "missing_field";
    };
    if temp.is_string() || time.is_number() {
        return "mistyped_field";
    }
    let t = temp.as_f64().unwrap();
    if !(25.0..=45.0).contains(&t) {
        return "out_of_range";
    }
    let seq = v["seq"].as_i64().unwrap();
    let at = DateTime::parse_from_rfc3339(time.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc);
    if at < t0() + chrono::Duration::milliseconds(seq * 20 - 900) {
        return "clock_skew";
    }
    "ok"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_rates_hold_within_tolerance() {
    if !have_mosquitto() {
        return;
    }
    let broker = Broker::start();
    let mut sub = Subscriber::start(broker.port, "fleet/#");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sent.jsonl");
    let rate = 0.05;
    let faults = Faults {
        malformed_json: rate,
        missing_field: rate,
        mistyped_field: rate,
        out_of_range: rate,
        clock_skew: rate,
        disconnect: rate,
        ..Settings::default().faults
    };
    let (devices, count) = (50u32, 40u64);
    let n = u64::from(devices) * count;
    let s = Settings {
        seed: Some(7),
        sent_log: Some(log.clone()),
        faults,
        ..fleet(broker.port, devices, count, 20)
    };
    let summary = esp_sim::run(s, never()).await.unwrap();
    assert_eq!(summary.published, n);
    assert_eq!(summary.acked, n, "{summary:?}");
    let got = sub.collect(n as usize, Duration::from_secs(30)).to_vec();

    // Expected count n*p, tolerance 4.5 standard deviations.
    let within = |count: u64, p: f64, trials: u64| {
        let mean = trials as f64 * p;
        let sd = (trials as f64 * p * (1.0 - p)).sqrt();
        (count as f64 - mean).abs() <= 4.5 * sd
    };
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    // Forced drops happen after the acknowledgement, so nothing is sent twice here.
    assert_eq!(got.len() as u64, n);
    for r in &got {
        *seen.entry(classify(&r.payload)).or_default() += 1;
    }
    for name in [
        "malformed_json",
        "missing_field",
        "mistyped_field",
        "out_of_range",
        "clock_skew",
    ] {
        let injected = summary.faults[name];
        assert!(within(injected, rate, n), "{name}: {injected} of {n}");
        assert_eq!(
            seen.get(name).copied().unwrap_or(0),
            injected,
            "{name}: subscriber saw {seen:?}"
        );
    }
    assert!(
        within(summary.forced_drops, rate, n),
        "forced drops {} of {n}",
        summary.forced_drops
    );
    assert!(summary.connects >= u64::from(devices) + summary.forced_drops);
    let logged = read_log(&log);
    assert_eq!(logged.len() as u64, n);
    assert!(logged.iter().all(|r| r.acked == Some(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_broker_restart_and_resends() {
    if !have_mosquitto() {
        return;
    }
    let mut broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sent.jsonl");
    let s = Settings {
        sent_log: Some(log.clone()),
        qos: Some(2),
        reconnect_min_ms: 50,
        reconnect_max_ms: 400,
        ..fleet(broker.port, 3, 60, 40)
    };
    let run = tokio::spawn(esp_sim::run(s, never()));
    let broker = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(700));
        broker.stop();
        std::thread::sleep(Duration::from_millis(1000));
        broker.restart();
        broker
    })
    .await
    .unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(broker);
    assert_eq!(summary.published, 180);
    assert_eq!(summary.acked, 180, "{summary:?}");
    assert_eq!(summary.unacked, 0);
    assert!(summary.disconnects >= 3, "{summary:?}");
    assert!(summary.connects >= 6, "{summary:?}");
    // Every device's messages 0..60 were each acknowledged once.
    let logged = read_log(&log);
    for d in 0..3 {
        let id = esp_sim::client_id(
            &format!(
                "t{}",
                logged[0]
                    .client_id
                    .trim_start_matches('t')
                    .split('-')
                    .next()
                    .unwrap()
            ),
            Mode::Fleet,
            d,
        );
        let mut seqs: Vec<u64> = logged
            .iter()
            .filter(|r| r.client_id == id)
            .map(|r| r.seq)
            .collect();
        seqs.sort();
        assert_eq!(seqs, (0..60).collect::<Vec<_>>(), "{id}");
    }
    assert!(logged.iter().all(|r| r.acked == Some(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_storms_lose_nothing() {
    if !have_mosquitto() {
        return;
    }
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sent.jsonl");
    let faults = Faults {
        storm_every_s: Some(0.4),
        storm_fraction: 0.5,
        ..Settings::default().faults
    };
    let s = Settings {
        sent_log: Some(log.clone()),
        faults,
        reconnect_min_ms: 20,
        ..fleet(broker.port, 20, 60, 20)
    };
    let summary = esp_sim::run(s, never()).await.unwrap();
    assert!(summary.forced_drops >= 1, "{summary:?}");
    assert_eq!(summary.acked, 1200, "{summary:?}");
    assert!(summary.connects >= 20 + summary.forced_drops, "{summary:?}");
    let logged = read_log(&log);
    assert_eq!(logged.len(), 1200);
    assert!(logged.iter().all(|r| r.acked == Some(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_change_live() {
    if !have_mosquitto() {
        return;
    }
    let broker = Broker::start();
    let mut sub = Subscriber::start(broker.port, "fleet/#");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sent.jsonl");
    let s = Settings {
        sent_log: Some(log.clone()),
        ..fleet(broker.port, 2, 150, 20)
    };
    let (tx, rx) = tokio::sync::watch::channel(s.clone());
    let run = tokio::spawn(esp_sim::run_live(rx, never()));
    // After the first messages arrive, switch every message to malformed and the topic to live/..
    let seen = tokio::task::spawn_blocking(move || {
        let n = sub.collect(10, Duration::from_secs(10)).len();
        (n, sub)
    })
    .await
    .unwrap();
    assert_eq!(seen.0, 10);
    let changed = Settings {
        topic: "fleet/live/{device}".into(),
        faults: esp_sim::settings::Faults {
            malformed_json: 1.0,
            ..s.faults.clone()
        },
        ..s.clone()
    };
    assert!(!s.needs_restart(&changed));
    tx.send(changed).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.acked, 300);
    let logged = read_log(&log);
    for d in ["00000", "00001"] {
        let mut mine: Vec<_> = logged.iter().filter(|r| r.client_id.ends_with(d)).collect();
        mine.sort_by_key(|r| r.seq);
        assert_eq!(mine.len(), 150);
        // One switch point per device: clean before, malformed on the new topic after.
        let k = mine.iter().position(|r| r.fault.is_some()).unwrap();
        assert!(k >= 1, "the change applied before any message was seen");
        assert!(mine[..k]
            .iter()
            .all(|r| r.fault.is_none() && !r.topic.contains("/live/")));
        assert!(mine[k..]
            .iter()
            .all(|r| r.fault == Some(esp_sim::Fault::MalformedJson) && r.topic.contains("/live/")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_works_too() {
    if !have_mosquitto() {
        return;
    }
    let broker = Broker::start();
    let mut sub = Subscriber::start(broker.port, "fleet/#");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sent.jsonl");
    for qos in [1u8, 2] {
        let s = Settings {
            mqtt5: true,
            qos: Some(qos),
            sent_log: Some(log.clone()),
            ..fleet(broker.port, 3, 5, 20)
        };
        let summary = esp_sim::run(s, never()).await.unwrap();
        assert_eq!(summary.acked, 15, "QoS {qos}: {summary:?}");
    }
    let got = sub.collect(30, Duration::from_secs(20)).to_vec();
    assert_eq!(got.len(), 30);
    let sent = read_log(&log);
    let mut a: Vec<_> = sent.iter().map(|r| r.payload.clone()).collect();
    let mut b: Vec<_> = got[15..].iter().map(|r| r.payload.clone()).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the last run's sent log is what arrived");
}
