//! What a commit costs with 10 and with 100,000 open groups (issue 13's target: no more with 100,000).
//!
//! `cargo bench -p aggregator --bench commit`. Each group is a patient's open window (`GROUP BY
//! deviceId, TumblingWindow(day, 1)`: none closes during the run), opened before the measurement. Measured:
//! - `append`: one commit as the module makes them: 16 new inputs through the query, then the disk
//!   work ([`Processor::commit_work`]: the input-log records appended and `fdatasync`ed in a
//!   temporary folder). The snapshot a commit writes now and then (every 60 s or 8 MiB of log) is
//!   left out here and measured on its own;
//! - `snapshot`: that snapshot, the whole state written and synced, whose cost does grow with the
//!   groups; spread over the inputs of the log it replaces (8 MiB of records) it is a cost per input.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use aggregator::{wal::Work, Processor, TwinSettings};
use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const QUERY: &str = "SELECT deviceId, Avg(temp) AS avgTemp, Count(*) AS n INTO PatientAvg FROM temperature TIMESTAMP BY timeCreated GROUP BY deviceId, TumblingWindow(day, 1)";

/// A processor with `groups` open windows, and the next event time (ms after the start).
fn processor(dir: &std::path::Path, groups: usize) -> (Processor, i64) {
    let mut p = Processor::new(dir);
    p.apply(TwinSettings {
        query: Some(QUERY.to_string()),
        ..TwinSettings::default()
    })
    .unwrap();
    let mut now = 0;
    for d in 0..groups {
        now += 1;
        p.on_input("temperature", &input(d, now), at(now));
    }
    p.snapshot_next();
    p.checkpoint().unwrap();
    (p, now)
}

fn at(ms: i64) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 8, 0, 0)
        .single()
        .unwrap()
        + chrono::Duration::milliseconds(ms)
}

/// A reading of patient `d` at `ms`.
fn input(d: usize, ms: i64) -> Vec<u8> {
    let t = at(ms).to_rfc3339();
    format!(r#"{{"deviceId":"patient-{d:06}","temp":37.2,"timeCreated":"{t}"}}"#).into_bytes()
}

fn commits(c: &mut Criterion) {
    let mut g = c.benchmark_group("commit");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    for groups in [10usize, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, mut now) = processor(dir.path(), groups);
        g.bench_with_input(BenchmarkId::new("append", groups), &groups, |b, &groups| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let started = Instant::now();
                    for i in 0..16 {
                        now += 1;
                        p.on_input("temperature", &input(i * 7919 % groups, now), at(now));
                    }
                    match p.commit_work().unwrap() {
                        Some(w @ Work::Append { .. }) => {
                            w.run().unwrap();
                            spent += started.elapsed();
                            done += 1;
                        }
                        // now and then a snapshot (measured below), not an append: not counted
                        Some(w) => w.run().unwrap(),
                        None => {}
                    }
                }
                spent
            })
        });
        g.bench_with_input(BenchmarkId::new("snapshot", groups), &groups, |b, _| {
            b.iter(|| {
                p.snapshot_next();
                p.commit_work().unwrap().unwrap().run().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, commits);
criterion_main!(benches);
