//! Events per second through the engine: the seed's query, and a 1,000-device GROUP BY.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::{json, Value};
use stream_query::{Engine, EventPolicy, Query};

const SEED: &str = "SELECT Avg(\"temp\") INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY TumblingWindow(second,60)";
const FLEET: &str = "SELECT deviceId, AVG(temp) AS avgTemp, MAX(temp) AS maxTemp, COUNT(*) AS n INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated GROUP BY deviceId, TumblingWindow(minute, 1)";
const FLEET_OVER: &str = "SELECT deviceId, AVG(temp) AS avgTemp INTO AvgTemp FROM temperature TIMESTAMP BY timeCreated OVER deviceId GROUP BY deviceId, TumblingWindow(minute, 1)";
const FEVER_SLIDING: &str = "SELECT deviceId, AVG(temp) AS avgTemp INTO FeverAlert FROM temperature TIMESTAMP BY timeCreated GROUP BY deviceId, SlidingWindow(minute, 1) HAVING AVG(temp) >= 38.0";
const EVENTS: usize = 10_000;

fn events(devices: usize) -> Vec<(Value, DateTime<Utc>)> {
    let base: DateTime<Utc> = DateTime::from_timestamp(1_795_507_200, 0).unwrap_or_default();
    (0..EVENTS)
        .map(|i| {
            // 1,000 devices every 2 s is 500 events per second of event time
            let t = base + Duration::milliseconds((i as i64) * 2000 / devices as i64);
            let ev = json!({"deviceId": format!("dev{}", i % devices), "temp": 36.0 + (i % 30) as f64 / 10.0,
                            "timeCreated": t.format("%m/%d/%Y %H:%M:%S").to_string()});
            (ev, t)
        })
        .collect()
}

fn run(c: &mut Criterion, name: &str, query: &str, devices: usize) {
    let q = Query::parse(query).expect("benchmark query parses");
    let evs = events(devices);
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("record+flush", |b| {
        b.iter_batched(
            || Engine::new(q.clone(), EventPolicy::default()),
            |mut e| {
                let mut rows = 0usize;
                for (ev, t) in &evs {
                    rows += e
                        .record("temperature", ev, *t)
                        .map(|r| r.len())
                        .unwrap_or(0);
                }
                rows + e.flush().len()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    run(c, "seed_query", SEED, 1);
    run(c, "group_by_1000_devices", FLEET, 1000);
    run(c, "over_1000_devices", FLEET_OVER, 1000);
    run(c, "sliding_1000_devices", FEVER_SLIDING, 1000);
}

criterion_group!(engine, benches);
criterion_main!(engine);
