//! AggregatorModule: the edge replacement of an Azure Stream Analytics edge job.
//!
//! Parts:
//! - [`settings`]: process settings (`AGGREGATOR_*` variables derived from the fields and layered by
//!   `edge-module`; any other `AGGREGATOR_` variable is an error) and twin settings (`query`, `eventPolicy`,
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
    #[error("cannot write the module's state ({path}): {source}. Check that the state folder is writable (AGGREGATOR_STATE_DIR) and the disk is not full")]
    Checkpoint {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The process settings (environment) could not be layered; the message names the variable.
    #[error(transparent)]
    Layers(#[from] edge_module::SettingsError),
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
    let mut commits = Commits::default();
    // Inputs that arrived while no query was in force, in arrival order (not acknowledged).
    let mut held: VecDeque<InputMessage> = VecDeque::new();
    let mut held_warned = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(settings.tick_ms);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // One timer for the commits, moved only when the commit time changes (a new timer per turn of
    // the loop registered and woke the runtime's timer once per input).
    let commit_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(commit_timer);
    let mut armed: Option<tokio::time::Instant> = None;

    let result = loop {
        if commits.at != armed {
            armed = commits.at;
            if let Some(at) = armed {
                commit_timer.as_mut().reset(at);
            }
        }
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = &mut commit_timer, if armed.is_some() => {
                armed = None;
                commits.commit(&mut processor).await
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
                    if let Err(e) = on_input(&mut processor, &client, input, &mut commits).await { break Err(e) }
                }
                Some(Event::Twin(twin)) => {
                    desired = twin.get("desired").cloned().unwrap_or(Value::Object(Default::default()));
                    let (u, flushed) = apply_desired(&mut processor, &desired);
                    unknown = u;
                    if let Err(e) = send_rows(&client, &flushed).await { break Err(e) }
                    report(&client, &processor, &unknown).await;
                    if let Err(e) = release_held(&mut processor, &client, &mut held, &mut commits).await { break Err(e) }
                }
                Some(Event::DesiredPatch(patch)) => {
                    edge_client::twin::merge(&mut desired, &patch);
                    let (u, flushed) = apply_desired(&mut processor, &desired);
                    unknown = u;
                    if let Err(e) = send_rows(&client, &flushed).await { break Err(e) }
                    report(&client, &processor, &unknown).await;
                    if let Err(e) = release_held(&mut processor, &client, &mut held, &mut commits).await { break Err(e) }
                }
                Some(Event::Method(req)) => {
                    let body = serde_json::json!({
                        "state": processor.reported(&unknown),
                        "eventsIn": processor.events_in, "rowsOut": processor.rows_out, "deadLetters": processor.dead_letters,
                        "duplicatesSkipped": processor.duplicates_skipped + processor.redelivered_skipped,
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
                if !rows.is_empty() || !commits.pending.is_empty() {
                    commits.commit(&mut processor).await;
                }
            }
        }
    };
    // Keep what was processed: the checkpoint first, then the acknowledgements.
    let committed = commits.last(&mut processor).await;
    client.shutdown().await;
    result.and(committed)
}

/// Runs one input through the query, sends what it produced (rows, a dead letter) and queues its
/// acknowledgement for the next commit.
async fn on_input(
    processor: &mut Processor,
    client: &ModuleClient,
    input: InputMessage,
    commits: &mut Commits,
) -> Result<(), AggregatorError> {
    let outcome = processor.on_delivery(
        &input.input,
        input.message.message_id.as_deref(),
        &input.message.body,
        Utc::now(),
        input.redelivered(),
    );
    send_rows(client, &outcome.rows).await?;
    if let Some(dl) = outcome.dead_letter {
        let out = processor.dead_letter_output().to_string();
        client.send_output(&out, Message::json(&dl)).await?;
    }
    commits.push(processor, input).await;
    Ok(())
}

/// Once a query is in force, runs the inputs held until then, in the order they came.
async fn release_held(
    processor: &mut Processor,
    client: &ModuleClient,
    held: &mut VecDeque<InputMessage>,
    commits: &mut Commits,
) -> Result<(), AggregatorError> {
    if held.is_empty() || !processor.has_query() {
        return Ok(());
    }
    tracing::info!(
        inputs = held.len(),
        "a query is in force: processing the held inputs"
    );
    while let Some(input) = held.pop_front() {
        on_input(processor, client, input, commits).await?;
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

/// The inputs waiting for a commit, and when the next commit is due. A commit makes everything
/// processed durable (input log or snapshot), then acknowledges the inputs whose effect it holds.
///
/// A commit that fails (a full disk, a read-only folder) does not end the module: its inputs stay
/// unacknowledged, so edgeHub keeps them and, with its bounded window of unacknowledged deliveries,
/// stops sending more; the commit is tried again after a pause that doubles up to
/// [`MAX_RETRY_WAIT`]. One error line says so when it starts (and one a minute while it lasts), one
/// info line when commits succeed again.
#[derive(Default)]
struct Commits {
    pending: Vec<InputMessage>,
    /// When the pending inputs are committed, unless the batch fills first.
    at: Option<tokio::time::Instant>,
    /// Set from a failed commit until one succeeds.
    failing: Option<Failing>,
}

struct Failing {
    since: tokio::time::Instant,
    failures: u64,
    /// No commit is tried before this.
    retry_at: tokio::time::Instant,
    wait: Duration,
    logged: tokio::time::Instant,
}

/// The longest pause between two tries of a failing commit.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

impl Commits {
    /// Queues `input`'s acknowledgement for a commit: at once when the batch is full, else soon.
    async fn push(&mut self, processor: &mut Processor, input: InputMessage) {
        self.pending.push(input);
        if self.pending.len() >= MAX_PENDING_ACKS {
            self.commit(processor).await;
        } else if self.at.is_none() {
            self.at = Some(tokio::time::Instant::now() + COMMIT_DELAY);
        }
    }

    /// Commits now, unless a failing commit's pause has not ended (then the timer tries later).
    async fn commit(&mut self, processor: &mut Processor) {
        self.at = None;
        if let Some(f) = &self.failing {
            if tokio::time::Instant::now() < f.retry_at {
                self.at = Some(f.retry_at);
                return;
            }
        }
        if let Err(e) = self.write(processor).await {
            let now = tokio::time::Instant::now();
            let f = self.failing.get_or_insert(Failing {
                since: now,
                failures: 0,
                retry_at: now,
                wait: Duration::from_millis(250),
                logged: now,
            });
            f.failures += 1;
            if f.failures == 1 || f.logged.elapsed() >= Duration::from_secs(60) {
                f.logged = now;
                tracing::error!(error = %e, failed_commits = f.failures, since = ?f.since.elapsed(), unacknowledged = self.pending.len(),
                    "cannot make the processed inputs durable; they stay unacknowledged (edgeHub keeps them and holds back more) and the write is tried again, with pauses of up to 10 s. Free space on the state folder's disk");
            }
            f.retry_at = now + f.wait;
            f.wait = (f.wait * 2).min(MAX_RETRY_WAIT);
            self.at = Some(f.retry_at);
        }
    }

    /// The last commit, at shutdown: tried once more whatever the pause; an error is returned.
    async fn last(&mut self, processor: &mut Processor) -> Result<(), AggregatorError> {
        self.write(processor).await.inspect_err(|e| {
            tracing::error!(error = %e, unacknowledged = self.pending.len(),
                "stopping without making the last inputs durable; edgeHub delivers them again after the restart");
        })
    }

    /// Writes what the processor has to write, then acknowledges the pending inputs.
    async fn write(&mut self, processor: &mut Processor) -> Result<(), AggregatorError> {
        if self.pending.is_empty() && !processor.has_query() {
            return Ok(());
        }
        // serialising needs the engine (here); the writes and fsync go to a blocking thread, so a
        // slow SD card does not hold up the task that talks to edgeHub (keep-alives, deliveries)
        let done = match processor.commit_work() {
            Ok(Some(work)) => tokio::task::spawn_blocking(move || work.run())
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(|e| AggregatorError::Checkpoint {
                    path: processor.state_dir().to_path_buf(),
                    source: e,
                }),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            processor.commit_failed();
            return Err(e);
        }
        if let Some(f) = self.failing.take() {
            tracing::info!(failed_commits = f.failures, after = ?f.since.elapsed(), acknowledged = self.pending.len(),
                "the state folder takes writes again; the held inputs are acknowledged");
        }
        for input in self.pending.drain(..) {
            input.ack();
        }
        Ok(())
    }
}

fn started_at() -> &'static String {
    static STARTED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    STARTED.get_or_init(|| Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}
