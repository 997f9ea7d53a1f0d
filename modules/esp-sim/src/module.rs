//! Running as the IoT Edge module ESPSimModule (feature `module`): the module twin's desired
//! properties are a partial [`Settings`] object (same field names) merged over the settings from
//! the environment and command line. Changes apply live where they can (interval, rate, QoS,
//! topic, time format, faults); changes that need new connections (host, port, mode, devices,
//! seed, ...) stop the running fleet and start a new one. The effective settings, any settings
//! error and the last run's summary are written to reported properties.

use std::future::Future;

use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use crate::{run_live, Settings, SimError, Summary};

fn module_err(e: impl std::fmt::Display) -> SimError {
    SimError::Module(e.to_string())
}

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

/// Run as a module until `shutdown`: connect to edgeHub, take settings from the twin, live.
pub async fn run_module(
    base: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, SimError> {
    let identity = edge_client::Identity::from_environment()
        .await
        .map_err(module_err)?;
    let (client, mut events) =
        edge_client::ModuleClient::connect(identity, edge_client::ClientOptions::default())
            .await
            .map_err(module_err)?;
    tracing::info!("connected to edgeHub; settings come from the module twin");

    let mut current = base.clone();
    let mut running: Option<Running> = None;
    let mut last: Option<Summary> = None;
    let mut twin_seen = false;
    let mut events_open = true;
    tokio::pin!(shutdown);

    loop {
        // Start the fleet once the first twin is in (or at once if it never comes: see below).
        if running.is_none() && twin_seen {
            running = Some(start(current.clone()));
            report(&client, &current, None, last.as_ref()).await;
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
                report(&client, &current, None, last.as_ref()).await;
                // Do not restart until the twin changes.
                twin_seen = false;
            }
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)), if !twin_seen && idle && last.is_none() => {
                tracing::warn!("no module twin after 30 s; running with environment and flag settings");
                twin_seen = true;
            }
            ev = events.recv(), if events_open => {
                let Some(ev) = ev else {
                    tracing::warn!("module client stopped; keeping the current settings");
                    events_open = false;
                    twin_seen = true;
                    continue;
                };
                let next = match ev {
                    edge_client::Event::Twin(t) => Some(base.merged(t.get("desired").unwrap_or(&Value::Null))),
                    edge_client::Event::DesiredPatch(p) => Some(current.merged(&p)),
                    _ => None,
                };
                let Some(next) = next else { continue };
                twin_seen = true;
                match next {
                    Err(e) => {
                        tracing::warn!(error = %e, "refusing desired properties; keeping the current settings");
                        report(&client, &current, Some(&e.to_string()), last.as_ref()).await;
                    }
                    Ok(next) => {
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
                                report(&client, &current, None, last.as_ref()).await;
                            }
                            None => {}
                        }
                    }
                }
            }
        }
    }
    if let Some(r) = running.take() {
        if let Some(s) = finish(r).await {
            last = Some(s);
        }
    }
    report(&client, &current, None, last.as_ref()).await;
    last.ok_or_else(|| SimError::Module("stopped before any simulation ran".into()))
}

async fn report(
    client: &edge_client::ModuleClient,
    s: &Settings,
    error: Option<&str>,
    last: Option<&Summary>,
) {
    let patch = json!({
        "settings": s,
        "settingsError": error,
        "lastSummary": last,
    });
    if let Err(e) = client.update_reported(patch).await {
        tracing::warn!(error = %e, "could not update reported properties");
    }
}
