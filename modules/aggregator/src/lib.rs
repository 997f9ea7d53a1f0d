//! AggregatorModule: the edge replacement of an Azure Stream Analytics edge job.
//!
//! Parts:
//! - [`settings`]: process settings (environment allow-list) and twin settings (`query`, `eventPolicy`,
//!   `deadLetterOutput`, `referenceData`, live from the module twin's desired properties).
//! - [`reference`]: reference data for JOINs without a time bound, from CSV or JSON lines files
//!   (reloaded when they change) or inline in the twin; a bad file keeps the previous rows.
//! - [`processor`]: the synchronous core around the [`stream_query`] engine: input bodies to events, the
//!   dead-letter decision, query reloads that keep the previous query on error, checkpoints.
//! - [`run`]: the thin async shell: one `select!` over edgeHub events, a timer and shutdown. Input messages
//!   are acknowledged to edgeHub only after a checkpoint holds their effect, so a crash loses nothing that
//!   edgeHub considers delivered.
//! - [`replay`]: the same engine over a file of JSON events (`aggregator replay`), ASA's "Test query".

pub mod processor;
pub mod reference;
pub mod replay;
pub mod settings;
pub mod wal;

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use edge_client::wire::Message;
use edge_client::{Event, Events, InputMessage, ModuleClient};
use serde_json::Value;

pub use processor::Processor;
pub use settings::{Settings, TwinSettings};

/// Errors of the module. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    #[error("setting {key}: {message}")]
    Settings { key: String, message: String },
    #[error("the query was rejected: {0}. Fix the desired property `query`; the previous query keeps running")]
    Query(stream_query::QueryError),
    #[error("cannot write the window checkpoint {path}: {source}. Check that the state folder is writable (AGGREGATOR_STATE_DIR) and the disk is not full")]
    Checkpoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("edgeHub client: {0}")]
    Client(#[from] edge_client::ClientError),
    #[error("replay: {0}")]
    Replay(String),
}

/// How many input messages may wait for a checkpoint before one is written at once. edgeHub (and
/// edge-dev's hub: 16) deliver only a bounded number of unacknowledged messages to a module, so this must
/// not exceed that window, or input would stall until the next tick.
const MAX_PENDING_ACKS: usize = 16;
/// How long the first unacknowledged input waits for more to share its checkpoint.
const COMMIT_DELAY: Duration = Duration::from_millis(10);

/// Runs the module until `shutdown` resolves or the edgeHub client ends.
pub async fn run(
    settings: Settings,
    client: ModuleClient,
    mut events: Events,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AggregatorError> {
    started_at();
    let mut processor = Processor::new(&settings.state_dir);
    if let Some(q) = &settings.query {
        let fallback = TwinSettings {
            query: Some(q.clone()),
            ..TwinSettings::default()
        };
        if let Err(e) = processor.apply(fallback).map(|_| ()) {
            tracing::error!(error = %e, "AGGREGATOR_QUERY is not a valid query; waiting for the twin's `query`");
        }
    }
    let mut desired = Value::Object(Default::default());
    let mut unknown: Vec<String> = Vec::new();
    let mut pending: Vec<InputMessage> = Vec::new();
    // Inputs that arrived while no query was in force, in arrival order (not acknowledged).
    let mut held: VecDeque<InputMessage> = VecDeque::new();
    let mut held_warned = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(settings.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);

    // When the pending inputs are committed (checkpoint, then acknowledgements) unless the batch fills first.
    let mut commit_at: Option<tokio::time::Instant> = None;
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = sleep_until_some(commit_at) => {
                commit_at = None;
                if let Err(e) = commit(&mut processor, &mut pending).await { break Err(e) }
            }
            ev = events.recv() => match ev {
                None => break Ok(()),
                Some(Event::Input(input)) => {
                    if !processor.has_query() {
                        // After a restart edgeHub redelivers unacknowledged inputs at once, often before
                        // the twin (and so the query) arrives: hold them, unacknowledged, until a query
                        // is in force. edgeHub sends only a bounded window of unacknowledged inputs.
                        if held.is_empty() {
                            tracing::info!("input arrived before a query is in force; holding inputs (unacknowledged) until the twin's `query` is applied");
                        }
                        held.push_back(input);
                        continue;
                    }
                    if let Err(e) = on_input(&mut processor, &client, input, &mut pending, &mut commit_at).await { break Err(e) }
                }
                Some(Event::Twin(twin)) => {
                    desired = twin.get("desired").cloned().unwrap_or(Value::Object(Default::default()));
                    let (u, flushed) = apply_desired(&mut processor, &desired);
                    unknown = u;
                    if let Err(e) = send_rows(&client, &flushed).await { break Err(e) }
                    report(&client, &processor, &unknown).await;
                    if let Err(e) = release_held(&mut processor, &client, &mut held, &mut pending, &mut commit_at).await { break Err(e) }
                }
                Some(Event::DesiredPatch(patch)) => {
                    merge_patch(&mut desired, &patch);
                    let (u, flushed) = apply_desired(&mut processor, &desired);
                    unknown = u;
                    if let Err(e) = send_rows(&client, &flushed).await { break Err(e) }
                    report(&client, &processor, &unknown).await;
                    if let Err(e) = release_held(&mut processor, &client, &mut held, &mut pending, &mut commit_at).await { break Err(e) }
                }
                Some(Event::Method(req)) => {
                    let body = serde_json::json!({
                        "state": processor.reported(&unknown),
                        "eventsIn": processor.events_in, "rowsOut": processor.rows_out, "deadLetters": processor.dead_letters,
                    });
                    req.respond(200, body);
                }
                Some(_) => {}
            },
            _ = tick.tick() => {
                if !held.is_empty() && held_warned.elapsed() >= Duration::from_secs(60) {
                    held_warned = tokio::time::Instant::now();
                    tracing::warn!(held = held.len(), status = ?processor.status(),
                        "inputs are held until a query is in force: set the desired property `query` of AggregatorModule (see its reported `query` status)");
                }
                if processor.refresh_references() {
                    report(&client, &processor, &unknown).await;
                }
                let rows = processor.on_tick(Utc::now());
                if let Err(e) = send_rows(&client, &rows).await { break Err(e) }
                // An idle tick that closed nothing leaves the windows as the last checkpoint has them.
                if !rows.is_empty() || !pending.is_empty() {
                    commit_at = None;
                    if let Err(e) = commit(&mut processor, &mut pending).await { break Err(e) }
                }
            }
        }
    };
    // Keep what was processed: the checkpoint first, then the acknowledgements.
    let committed = commit(&mut processor, &mut pending).await;
    client.shutdown().await;
    result.and(committed)
}

/// Runs one input through the query, sends what it produced (rows, a dead letter) and queues its
/// acknowledgement for the next commit.
async fn on_input(
    processor: &mut Processor,
    client: &ModuleClient,
    input: InputMessage,
    pending: &mut Vec<InputMessage>,
    commit_at: &mut Option<tokio::time::Instant>,
) -> Result<(), AggregatorError> {
    let outcome = processor.on_message(
        &input.input,
        input.message.message_id.as_deref(),
        &input.message.body,
        Utc::now(),
    );
    send_rows(client, &outcome.rows).await?;
    if let Some(dl) = outcome.dead_letter {
        let out = processor.dead_letter_output().to_string();
        client.send_output(&out, Message::json(&dl)).await?;
    }
    pending.push(input);
    if pending.len() >= MAX_PENDING_ACKS {
        *commit_at = None;
        commit(processor, pending).await?;
    } else if commit_at.is_none() {
        *commit_at = Some(tokio::time::Instant::now() + COMMIT_DELAY);
    }
    Ok(())
}

/// Once a query is in force, runs the inputs held until then, in the order they came.
async fn release_held(
    processor: &mut Processor,
    client: &ModuleClient,
    held: &mut VecDeque<InputMessage>,
    pending: &mut Vec<InputMessage>,
    commit_at: &mut Option<tokio::time::Instant>,
) -> Result<(), AggregatorError> {
    if held.is_empty() || !processor.has_query() {
        return Ok(());
    }
    tracing::info!(
        inputs = held.len(),
        "a query is in force: processing the held inputs"
    );
    while let Some(input) = held.pop_front() {
        on_input(processor, client, input, pending, commit_at).await?;
    }
    Ok(())
}

/// Applies the desired properties; returns the unknown keys and the rows of a replaced query's windows.
fn apply_desired(
    processor: &mut Processor,
    desired: &Value,
) -> (Vec<String>, Vec<stream_query::OutputRow>) {
    match TwinSettings::from_desired(desired) {
        Ok((settings, unknown)) => {
            for k in &unknown {
                tracing::warn!(key = %k, "desired property is not known to AggregatorModule and is ignored");
            }
            let flushed = match processor.apply(settings) {
                Ok(Some(rows)) => {
                    tracing::info!(status = ?processor.status(), closed = rows.len(), "query (re)loaded; the previous query's open windows were closed");
                    rows
                }
                Ok(None) => Vec::new(),
                Err(e) => {
                    tracing::error!(error = %e, "query rejected");
                    Vec::new()
                }
            };
            (unknown, flushed)
        }
        Err(e) => {
            tracing::error!(error = %e, "desired properties rejected; the previous settings stay in force");
            (Vec::new(), Vec::new())
        }
    }
}

/// Reports the module's state, with the time this process started (so a restart is visible in the twin).
async fn report(client: &ModuleClient, processor: &Processor, unknown: &[String]) {
    let mut reported = processor.reported(unknown);
    if let Some(obj) = reported.as_object_mut() {
        obj.insert("startedAt".into(), Value::String(started_at().clone()));
    }
    if let Err(e) = client.update_reported(reported).await {
        tracing::warn!(error = %e, "could not update reported properties; will try again on the next change");
    }
}

async fn send_rows(
    client: &ModuleClient,
    rows: &[stream_query::OutputRow],
) -> Result<(), AggregatorError> {
    for row in rows {
        let body = Value::Object(row.row.clone());
        tracing::info!(output = %row.output, row = %body, "window result");
        client
            .send_output(&row.output, processor::row_message(row))
            .await?;
    }
    Ok(())
}

/// Resolves at `at`, or never when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes the checkpoint, then acknowledges the inputs whose effect it holds.
async fn commit(
    processor: &mut Processor,
    pending: &mut Vec<InputMessage>,
) -> Result<(), AggregatorError> {
    if pending.is_empty() && !processor.has_query() {
        return Ok(());
    }
    // serialising needs the engine (here); the writes and fsync go to a blocking thread, so a
    // slow SD card does not hold up the task that talks to edgeHub (keep-alives, deliveries)
    if let Some(work) = processor.commit_work()? {
        tokio::task::spawn_blocking(move || work.run())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| AggregatorError::Checkpoint {
                path: PathBuf::from("the state folder (inputs.log, checkpoint.json)"),
                source: e,
            })?;
    }
    for input in pending.drain(..) {
        input.ack();
    }
    Ok(())
}

fn started_at() -> &'static String {
    static STARTED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    STARTED.get_or_init(|| Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// RFC 7396 JSON merge patch, as the twin's desired patches are applied.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut t, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }
}
