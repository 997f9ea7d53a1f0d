//! esp-sim: ESPSimModule, a device fleet simulator for the health check-up edge pipeline.
//!
//! It reproduces the seed's simulated ESP8266 (mode `seed`: `{"temp":38, "timecreated":"..."}` to
//! `MyTopic`, QoS 2, retained, every 2 s), simulates a fleet of patients with a body-temperature
//! model (mode `fleet`), and drives load tests at a target aggregate rate (mode `load`).
//!
//! Parts:
//! - [`settings`]: the `Settings` struct (defaults, validation, the names of its flags and
//!   variables); `edge-module` layers it (file, environment, flags, twin).
//! - [`model`]: payloads without IO: the seed's format, the patient temperature model, time
//!   formats, and payload faults, all from seeded per-device ChaCha streams.
//! - `device`: one device task (rumqttc client, MQTT 3.1.1 or 5, schedule, reconnect with
//!   backoff, resend).
//! - [`stats`]: counters, publish-to-ack latency histogram, and the run's [`Summary`].
//! - [`run`] / [`run_live`]: start the fleet, write the sent log, stop on shutdown / duration.
//! - `module` (feature `module`): run as the IoT Edge module: `edge_module::run_module` and its twin
//!   loop give the settings, live; this part starts, changes and restarts the fleet.
//!
//! Reproducibility: with the same `seed`, settings and a fixed `start_time`, every device sends
//! the same payload bytes in the same per-device order; network events never touch the payload
//! random streams. Only the wall-clock fields of the sent log (`sent_at`, `latency_us`,
//! `attempts`) and the interleaving of devices differ between runs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

mod device;
pub mod model;
#[cfg(feature = "module")]
pub mod module;
pub mod settings;
pub mod stats;

pub use device::{client_id, SentRecord};
pub use model::Fault;
pub use settings::{Faults, Mode, Settings, TimeFormat};
pub use stats::{Latency, Summary};

/// What can go wrong, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid settings: {0}")]
    Settings(String),
    /// Layering the settings failed (a file, a variable, a flag or the twin); the message names it.
    #[error(transparent)]
    Layers(#[from] edge_module::SettingsError),
    #[error(
        "cannot write the sent log {path}: {source}; check the directory exists and is writable"
    )]
    SentLog {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{devices} devices need about {needed} open files but the limit is {limit}; raise it \
         (ulimit -n, or docker --ulimit nofile=) or simulate fewer devices"
    )]
    TooManyDevices {
        devices: u32,
        needed: u64,
        limit: u64,
    },
    #[error("IoT Edge module client failed: {0}; check the IOTEDGE_* environment and that edgeHub is running")]
    Module(String),
}

/// Run with fixed settings until `shutdown` completes, `duration_s` passes, or every device has
/// sent `messages_per_device`. Returns what happened.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, SimError> {
    let (_tx, rx) = watch::channel(settings);
    run_live(rx, shutdown).await
}

/// Like [`run`], but settings can change while it runs: new values of the interval, rate, QoS,
/// retain, topic, time format, fever rate and fault rates apply from each device's next message.
/// Changes that need new connections (see [`Settings::needs_restart`]) are ignored here: the
/// caller stops this run and starts another.
pub async fn run_live(
    settings: watch::Receiver<Settings>,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, SimError> {
    let s = settings.borrow().clone();
    s.validate()?;
    let devices = s.device_count();
    ensure_open_files(devices)?;
    let seed = s.seed.unwrap_or_else(rand::random);
    tracing::info!(mode = ?s.mode, devices, seed, host = %s.host, port = s.port, "starting");

    // The sent log: one writer task, so devices never contend on the file.
    let (log_tx, writer) = match &s.sent_log {
        Some(path) => {
            let file = tokio::fs::File::create(path)
                .await
                .map_err(|source| SimError::SentLog {
                    path: path.display().to_string(),
                    source,
                })?;
            let (tx, mut rx) = mpsc::channel::<SentRecord>(8192);
            let path_s = path.display().to_string();
            let writer = tokio::spawn(async move {
                let mut w = tokio::io::BufWriter::new(file);
                while let Some(rec) = rx.recv().await {
                    let mut line = serde_json::to_vec(&rec).unwrap_or_default();
                    line.push(b'\n');
                    w.write_all(&line).await?;
                }
                w.flush().await?;
                Ok::<(), std::io::Error>(())
            });
            (Some(tx), Some((writer, path_s)))
        }
        None => (None, None),
    };

    let stats = Arc::new(stats::Stats::new());
    let start = Instant::now();
    let shared = Arc::new(device::Shared {
        settings: settings.clone(),
        stats: stats.clone(),
        log: log_tx,
        seed,
        devices,
        start,
        start_time: s.start_time,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (storm_tx, storm_rx) = watch::channel(0u64);

    let mut set = tokio::task::JoinSet::new();
    for i in 0..devices {
        set.spawn(device::run_device(
            i,
            shared.clone(),
            stop_rx.clone(),
            storm_rx.clone(),
        ));
    }
    drop(shared);

    let storms = s.faults.storm_every_s.map(|every| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                start + Duration::from_secs_f64(every),
                Duration::from_secs_f64(every),
            );
            loop {
                tick.tick().await;
                tracing::info!("disconnect storm");
                storm_tx.send_modify(|n| *n += 1);
            }
        })
    });

    let deadline = s.duration_s.map(|d| start + Duration::from_secs_f64(d));
    tokio::pin!(shutdown);
    let mut stopped = false;
    loop {
        tokio::select! {
            r = set.join_next() => {
                match r {
                    None => break,
                    Some(Err(e)) => tracing::error!(error = %e, "device task failed"),
                    Some(Ok(())) => {}
                }
            }
            _ = &mut shutdown, if !stopped => {
                tracing::info!("shutdown requested; draining");
                stopped = true;
                let _ = stop_tx.send(true);
            }
            _ = sleep_until_opt(deadline), if !stopped && deadline.is_some() => {
                tracing::info!("duration reached; draining");
                stopped = true;
                let _ = stop_tx.send(true);
            }
        }
    }
    if let Some(h) = storms {
        h.abort();
    }
    if let Some((writer, path)) = writer {
        match writer.await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(SimError::SentLog { path, source }),
            Err(e) => {
                return Err(SimError::SentLog {
                    path,
                    source: std::io::Error::other(e.to_string()),
                })
            }
        }
    }
    let target = if s.mode == Mode::Load {
        Some(s.rate)
    } else {
        None
    };
    Ok(stats.summary(s.mode, seed, devices, target, start.elapsed().as_secs_f64()))
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Each device is one socket; raise the soft open-files limit up to the hard one if needed.
fn ensure_open_files(devices: u32) -> Result<(), SimError> {
    let needed = u64::from(devices) + 64;
    #[cfg(unix)]
    {
        let limit = rlimit::increase_nofile_limit(needed).unwrap_or(0);
        if limit != 0 && limit < needed {
            return Err(SimError::TooManyDevices {
                devices,
                needed,
                limit,
            });
        }
    }
    let _ = needed;
    Ok(())
}
