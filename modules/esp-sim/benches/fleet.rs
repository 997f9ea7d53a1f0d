//! Fleet benchmark: one process simulating 10,000 devices (each its own MQTT connection) at a
//! steady aggregate rate against a local Mosquitto, in load mode.
//!
//! `cargo bench -p esp-sim --bench fleet` (release build). Knobs (environment):
//! `BENCH_DEVICES` (10000), `BENCH_RATE` messages/s (5000), `BENCH_SECS` (20), `BENCH_QOS` (1).
//! Prints the run summary (achieved rate, publish-to-ack latency percentiles) and the
//! per-second publish counts from the sent log, which show whether the rate is steady.
//! Skips with a message when Mosquitto is not installed.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful: run either way.
    let mosquitto = "/usr/sbin/mosquitto";
    if !std::path::Path::new(mosquitto).exists() {
        eprintln!("SKIP: {mosquitto} is not installed (apt-get install mosquitto)");
        return;
    }
    let devices: u32 = env_or("BENCH_DEVICES", 10_000);
    let rate: f64 = env_or("BENCH_RATE", 5000.0);
    let secs: f64 = env_or("BENCH_SECS", 20.0);
    let qos: u8 = env_or("BENCH_QOS", 1);

    // Mosquitto inherits our open-files limit: raise it for both of us.
    let want = u64::from(devices) + 1024;
    let got = rlimit::increase_nofile_limit(want).unwrap_or(0);
    eprintln!("open files limit: {got} (wanted {want})");

    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("mosquitto.conf");
    let mut f = std::fs::File::create(&conf).unwrap();
    writeln!(
        f,
        "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false"
    )
    .unwrap();
    let mut broker = Command::new(mosquitto)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < ready {
        std::thread::sleep(Duration::from_millis(20));
    }

    let log = dir.path().join("sent.jsonl");
    let settings = esp_sim::Settings {
        host: "127.0.0.1".into(),
        port,
        mode: esp_sim::Mode::Load,
        devices,
        rate,
        qos: Some(qos),
        seed: Some(1),
        duration_s: Some(secs),
        sent_log: Some(log.clone()),
        keep_alive_s: std::time::Duration::from_secs(60),
        ..esp_sim::Settings::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let summary = rt.block_on(esp_sim::run(settings, std::future::pending::<()>()));
    let _ = broker.kill();
    let _ = broker.wait();
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            eprintln!("run failed: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());

    // Per-second publish counts (by first-publish wall time) to show the rate is steady.
    let mut per_sec: BTreeMap<i64, u64> = BTreeMap::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let r: esp_sim::SentRecord = serde_json::from_str(line).unwrap();
        let t = chrono::DateTime::parse_from_rfc3339(&r.sent_at).unwrap();
        *per_sec.entry(t.timestamp()).or_default() += 1;
    }
    let counts: Vec<u64> = per_sec.values().copied().collect();
    // Drop the first and last (partial) seconds.
    let inner = if counts.len() > 2 {
        &counts[1..counts.len() - 1]
    } else {
        &counts[..]
    };
    if !inner.is_empty() {
        let mean = inner.iter().sum::<u64>() as f64 / inner.len() as f64;
        let min = inner.iter().min().copied().unwrap_or(0);
        let max = inner.iter().max().copied().unwrap_or(0);
        let sd = (inner
            .iter()
            .map(|c| (*c as f64 - mean).powi(2))
            .sum::<f64>()
            / inner.len() as f64)
            .sqrt();
        println!(
            "devices {devices}, target {rate}/s, QoS {qos}: achieved {:.0}/s; per-second publishes over {} full seconds: mean {mean:.0}, min {min}, max {max}, sd {sd:.1}; connects {}, ack latency p50 {} us, p99 {} us",
            summary.achieved_rate,
            inner.len(),
            summary.connects,
            summary.latency_us.as_ref().map(|l| l.p50).unwrap_or(0),
            summary.latency_us.as_ref().map(|l| l.p99).unwrap_or(0),
        );
        println!("per-second: {inner:?}");
    }
}
