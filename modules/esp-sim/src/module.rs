//! Running as the IoT Edge module ESPSimModule (feature `module`). `edge_module::run_module` connects
//! and runs the twin loop: the module twin's desired properties are a partial [`Settings`] object
//! (same field names) merged over the settings from the file, environment and command line; refused
//! ones are reported as `settingsError` and the settings in force as `settings`. This part acts on
//! the settings in force: changes apply live where they can (interval, rate, QoS, topic, time format,
//! faults); changes that need new connections (host, port, mode, devices, seed, ...) stop the running
//! fleet and start a new one. The last run's summary is reported as `lastSummary`.

use edge_module::{Layered, Module, Reported, TwinLoop};
use serde_json::json;
use tokio::sync::{oneshot, watch};

use crate::{run_live, Settings, SimError, Summary};

/// Where the twin loop reports: `settings` and `settingsError` at the top of reported properties
/// (the names the README and the module-twin test give).
pub const REPORTED: Reported = Reported {
    under: None,
    settings: "settings",
    error: "settingsError",
};

struct Running {
    settings_tx: watch::Sender<Settings>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<Summary, SimError>>,
}

fn start(settings: Settings) -> Running {
    let (settings_tx, settings_rx) = watch::channel(settings);
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(run_live(settings_rx, async move {
        let _ = stop_rx.await;
    }));
    Running {
        settings_tx,
        stop,
        task,
    }
}

async fn finish(r: Running) -> Option<Summary> {
    let _ = r.stop.send(());
    match r.task.await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "simulation failed");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "simulation task failed");
            None
        }
    }
}

/// Run as a module until SIGTERM/SIGINT: connect to edgeHub, take settings from the twin, live.
pub async fn run_module(layered: Layered<Settings>) -> Result<Summary, SimError> {
    edge_module::run_module(
        &layered,
        REPORTED,
        edge_client::ClientOptions::default(),
        fleet,
    )
    .await
    .map_err(|e| SimError::Module(e.to_string()))?
}

/// Starts, changes and restarts the fleet as the settings in force change.
async fn fleet(module: Module<Settings>) -> Result<Summary, SimError> {
    let Module {
        client,
        twin,
        mut shutdown,
    } = module;
    let TwinLoop {
        mut updates,
        events: mut others,
        task: _twin_task,
    } = twin;
    let mut current = updates.borrow_and_update().settings.clone();
    let mut running: Option<Running> = None;
    let mut last: Option<Summary> = None;
    let mut twin_seen = false;
    let mut updates_open = true;
    let mut others_open = true;

    loop {
        // Start the fleet once the first twin is in (or at once if it never comes: see below).
        if running.is_none() && twin_seen {
            running = Some(start(current.clone()));
            report(&client, last.as_ref()).await;
        }
        let idle = running.is_none();
        let finished = async {
            match running.as_mut() {
                Some(r) => Some((&mut r.task).await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            done = finished => {
                // Ended by itself (duration or count): keep the summary, wait for new settings.
                running = None;
                if let Some(Ok(Ok(s))) = done {
                    tracing::info!(summary = %serde_json::to_string(&s).unwrap_or_default(), "run finished");
                    last = Some(s);
                }
                report(&client, last.as_ref()).await;
                // Do not restart until the twin changes.
                twin_seen = false;
            }
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)), if !twin_seen && idle && last.is_none() => {
                tracing::warn!("no module twin after 30 s; running with environment and flag settings");
                twin_seen = true;
            }
            // Inputs, methods and connection changes: this module has no use for them.
            ev = others.recv(), if others_open => others_open = ev.is_some(),
            changed = updates.changed(), if updates_open => {
                if changed.is_err() {
                    tracing::warn!("module client stopped; keeping the current settings");
                    updates_open = false;
                    twin_seen = true;
                    continue;
                }
                // A twin arrived: the settings in force, refused properties already reported.
                let next = updates.borrow_and_update().settings.clone();
                twin_seen = true;
                if next == current {
                    continue;
                }
                let restart = current.needs_restart(&next);
                current = next;
                match running.take() {
                    Some(r) if restart => {
                        tracing::info!("settings need new connections; restarting the fleet");
                        if let Some(s) = finish(r).await {
                            last = Some(s);
                        }
                    }
                    Some(r) => {
                        tracing::info!("applying settings live");
                        let _ = r.settings_tx.send(current.clone());
                        running = Some(r);
                    }
                    None => {}
                }
            }
        }
    }
    if let Some(r) = running.take() {
        if let Some(s) = finish(r).await {
            last = Some(s);
        }
    }
    report(&client, last.as_ref()).await;
    last.ok_or_else(|| SimError::Module("stopped before any simulation ran".into()))
}

/// Reports the last run's summary (the twin loop reports the settings).
async fn report(client: &edge_client::ModuleClient, last: Option<&Summary>) {
    if let Err(e) = client.update_reported(json!({ "lastSummary": last })).await {
        tracing::warn!(error = %e, "could not update reported properties");
    }
}
