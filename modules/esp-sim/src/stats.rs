//! Counters shared by all device tasks, the acknowledgement-latency histogram, and the `Summary`
//! printed when a run stops.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::model::Fault;
use crate::settings::Mode;

const FAULTS: [Fault; 5] = [
    Fault::MalformedJson,
    Fault::MissingField,
    Fault::MistypedField,
    Fault::OutOfRange,
    Fault::ClockSkew,
];

fn fault_index(f: Fault) -> usize {
    FAULTS.iter().position(|x| *x == f).unwrap_or(0)
}

fn fault_name(f: Fault) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[derive(Debug)]
pub(crate) struct Stats {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub unacked: AtomicU64,
    pub resent: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub forced_drops: AtomicU64,
    /// Microseconds since the run started at which the last message was first published.
    pub last_publish_us: AtomicU64,
    faults: [AtomicU64; 5],
    hist: Mutex<Option<Histogram<u64>>>,
}

impl Stats {
    pub fn new() -> Stats {
        // 1 us .. 1 hour, 3 significant digits (valid bounds, so this is always Some).
        let hist = Histogram::new_with_bounds(1, 3_600_000_000, 3).ok();
        Stats {
            published: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            unacked: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            forced_drops: AtomicU64::new(0),
            last_publish_us: AtomicU64::new(0),
            faults: Default::default(),
            hist: Mutex::new(hist),
        }
    }

    pub fn fault(&self, f: Fault) {
        self.faults[fault_index(f)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn latency(&self, us: u64) {
        if let Ok(mut h) = self.hist.lock() {
            if let Some(h) = h.as_mut() {
                h.saturating_record(us.max(1));
            }
        }
    }

    pub fn summary(
        &self,
        mode: Mode,
        seed: u64,
        devices: u32,
        target_rate: Option<f64>,
        elapsed_s: f64,
    ) -> Summary {
        let published = self.published.load(Ordering::Relaxed);
        let send_window_s = self.last_publish_us.load(Ordering::Relaxed) as f64 / 1e6;
        let latency_us = self.hist.lock().ok().and_then(|h| {
            let h = h.as_ref()?;
            if h.is_empty() {
                None
            } else {
                Some(Latency {
                    count: h.len(),
                    mean: h.mean(),
                    p50: h.value_at_quantile(0.5),
                    p90: h.value_at_quantile(0.9),
                    p99: h.value_at_quantile(0.99),
                    p999: h.value_at_quantile(0.999),
                    max: h.max(),
                })
            }
        });
        Summary {
            mode,
            seed,
            devices,
            elapsed_s,
            published,
            acked: self.acked.load(Ordering::Relaxed),
            unacked: self.unacked.load(Ordering::Relaxed),
            resent: self.resent.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
            forced_drops: self.forced_drops.load(Ordering::Relaxed),
            faults: FAULTS
                .iter()
                .map(|f| {
                    (
                        fault_name(*f),
                        self.faults[fault_index(*f)].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            target_rate,
            achieved_rate: if send_window_s > 0.0 {
                published as f64 / send_window_s
            } else {
                0.0
            },
            latency_us,
        }
    }
}

/// Publish-to-acknowledgement latency percentiles, microseconds (PUBACK for QoS 1, PUBCOMP for
/// QoS 2), measured from the first time a message was handed to the MQTT client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mode: Mode,
    /// The seed used (give it back with `--seed` to reproduce the payloads).
    pub seed: u64,
    pub devices: u32,
    /// Wall-clock seconds from start to the end of the run (including the drain).
    pub elapsed_s: f64,
    /// Messages handed to the MQTT client (first attempts).
    pub published: u64,
    /// Messages acknowledged by the server (QoS 1 and 2).
    pub acked: u64,
    /// QoS 1/2 messages still unacknowledged when the run stopped.
    pub unacked: u64,
    /// Messages published again after a reconnect.
    pub resent: u64,
    /// Successful connections (CONNACK), first ones included.
    pub connects: u64,
    /// Connections lost (server gone, network error, or a forced drop).
    pub disconnects: u64,
    /// Connections dropped on purpose (disconnect fault and storms).
    pub forced_drops: u64,
    /// Payload faults injected, by name.
    pub faults: BTreeMap<String, u64>,
    /// Load mode's target, messages per second.
    pub target_rate: Option<f64>,
    /// Published messages per second between the start and the last first-publish.
    pub achieved_rate: f64,
    pub latency_us: Option<Latency>,
}
