//! Events per second through the analytic functions, anomaly detection and JOINs, on one core.
//! The anomaly benchmarks start from a warm state (every history full), so they measure the
//! steady cost: ASA publishes 1,650 events/s for history 600 and 550 events/s with 100 partitions,
//! on 6 streaming units.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::{json, Value};
use stream_query::{Engine, EventPolicy, Query};

const MEASURED: usize = 10_000;

/// `n` readings round-robin over `devices`, one per device every second.
fn readings(devices: usize, n: usize, from: usize) -> Vec<(Value, DateTime<Utc>)> {
    let base: DateTime<Utc> = DateTime::from_timestamp(1_795_507_200, 0).unwrap_or_default();
    (from..from + n)
        .map(|i| {
            let t = base + Duration::microseconds((i as i64) * 1_000_000 / devices as i64);
            let temp = 37.0 + ((i * 7919) % 41) as f64 / 100.0 - 0.2;
            let ev =
                json!({"deviceId": format!("p{}", i % devices), "temp": temp, "t": t.to_rfc3339()});
            (ev, t)
        })
        .collect()
}

/// Measure `MEASURED` events after `warm` events (the warm-up is not timed).
fn run(c: &mut Criterion, name: &str, query: &str, devices: usize, warm: usize, reference: bool) {
    let q = Query::parse(query).unwrap();
    let mut e = Engine::new(q.clone(), EventPolicy::default());
    let patients: Vec<Value> = (0..devices)
        .map(|d| json!({"deviceId": format!("p{d}"), "feverC": 37.5 + (d % 10) as f64 / 10.0}))
        .collect();
    if reference {
        e.set_reference("patients", patients.clone()).unwrap();
    }
    for (ev, t) in readings(devices, warm, 0) {
        e.record("temperature", &ev, t).unwrap();
    }
    let state = e.checkpoint();
    let measured = readings(devices, MEASURED, warm);
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(MEASURED as u64));
    g.sample_size(10);
    g.bench_function("record", |b| {
        b.iter_batched(
            || {
                let mut e = Engine::restore(q.clone(), EventPolicy::default(), &state).unwrap();
                if reference {
                    e.set_reference("patients", patients.clone()).unwrap();
                }
                e
            },
            |mut e| {
                let mut rows = 0usize;
                for (ev, t) in &measured {
                    rows += e
                        .record("temperature", ev, *t)
                        .map(|r| r.len())
                        .unwrap_or(0);
                }
                rows
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    run(
        c,
        "spike_and_dip_history_600",
        "SELECT AnomalyDetection_SpikeAndDip(temp, 99, 600, 'spikesanddips') OVER (LIMIT DURATION(hour, 1)) AS s
         INTO o FROM temperature TIMESTAMP BY t",
        1,
        600,
        false,
    );
    run(
        c,
        "change_point_history_600",
        "SELECT AnomalyDetection_ChangePoint(temp, 99, 600) OVER (LIMIT DURATION(hour, 1)) AS s
         INTO o FROM temperature TIMESTAMP BY t",
        1,
        600,
        false,
    );
    run(
        c,
        "spike_and_dip_history_600_1000_patients",
        "SELECT AnomalyDetection_SpikeAndDip(temp, 99, 600, 'spikesanddips')
            OVER (PARTITION BY deviceId LIMIT DURATION(hour, 1)) AS s
         INTO o FROM temperature TIMESTAMP BY t OVER deviceId",
        1000,
        600_000,
        false,
    );
    run(
        c,
        "lag_1000_patients",
        "SELECT deviceId, temp - LAG(temp) OVER (PARTITION BY deviceId LIMIT DURATION(minute, 1)) AS rise
         INTO o FROM temperature TIMESTAMP BY t OVER deviceId",
        1000,
        10_000,
        false,
    );
    run(
        c,
        "reference_join_1000_patients",
        "SELECT s.deviceId, s.temp, r.feverC INTO o FROM temperature s TIMESTAMP BY t
         JOIN patients r ON s.deviceId = r.deviceId WHERE s.temp >= r.feverC",
        1000,
        10_000,
        true,
    );
    run(
        c,
        "stream_self_join_1000_patients",
        "WITH r AS (SELECT deviceId, temp FROM temperature TIMESTAMP BY t)
         SELECT a.deviceId, a.temp INTO o FROM r a LEFT OUTER JOIN r b
         ON a.deviceId = b.deviceId AND DATEDIFF(second, a, b) BETWEEN 1 AND 5
         WHERE b.deviceId IS NULL",
        1000,
        10_000,
        false,
    );
}

criterion_group!(analytics, benches);
criterion_main!(analytics);
