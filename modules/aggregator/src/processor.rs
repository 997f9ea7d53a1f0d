//! The synchronous core of the module: it owns the query engine, turns input bodies into events, decides
//! what goes to the dead-letter output, reloads queries, and makes checkpoints. No IO happens here; the
//! async shell in [`crate::run`] feeds it and sends what it returns.

use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stream_query::{Engine, OutputRow, Query};

use crate::reference::References;
use crate::settings::TwinSettings;
use crate::wal;
use crate::AggregatorError;

/// What one input message produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Rows of windows that this event closed (or, for queries without a window, rows it produced).
    pub rows: Vec<OutputRow>,
    /// Set when the message could not be used: the body to send to the dead-letter output.
    pub dead_letter: Option<Value>,
}

/// A query that was accepted, with the policy it runs under.
#[derive(Debug)]
struct Active {
    text: String,
    settings: TwinSettings,
    engine: Engine,
    /// Per input name: the fields the query reads (None: all), so a message is read only that far.
    fields: FieldsRead,
}

/// The fields the query reads, per input, worked out on first use.
#[derive(Debug, Default)]
struct FieldsRead(std::collections::HashMap<String, Option<Vec<String>>>);

impl FieldsRead {
    fn parse(
        &mut self,
        query: &stream_query::Query,
        input: &str,
        text: &str,
    ) -> serde_json::Result<Value> {
        let f = self
            .0
            .entry(input.to_string())
            .or_insert_with(|| query.fields_read(input));
        stream_query::parse_event(text, f.as_deref())
    }
}

/// How many of the last inputs are remembered to recognise them if edgeHub delivers them again
/// after a crash: more than the module ever leaves unacknowledged (`MAX_PENDING_ACKS`, 16).
pub const RECENT_INPUTS: usize = 64;

/// How many messages with an id the module remembers (as fingerprints) to recognise one sent to
/// it twice; a few hundred readings of store-and-forward resends fit many times over.
pub const SEEN_IDS: usize = 4096;

/// The fingerprint of a message with an id: CRC-32 of input and id, and CRC-32 of the body. The
/// same id with the same bytes is the same message sent again (an upstream module's buffer resent
/// after a lost acknowledgement); the same id with other bytes is not treated as a repeat.
fn id_fingerprint(input: &str, id: &str, body: &[u8]) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(input.as_bytes());
    h.update(b"|");
    h.update(id.as_bytes());
    (u64::from(h.finalize()) << 32) | u64::from(crc32fast::hash(body))
}

/// Who an input is, for recognising it when edgeHub delivers it again: its input name and
/// message id, or without an id its input name, length and CRC-32.
pub fn input_identity(input: &str, message_id: Option<&str>, body: &[u8]) -> String {
    match message_id.filter(|m| !m.is_empty()) {
        Some(id) => format!("{input}|m:{id}"),
        None => format!("{input}|b:{}:{:08x}", body.len(), crc32fast::hash(body)),
    }
}

/// The checkpoint (snapshot) format this module writes. Formats 1 (before the field existed) and
/// 2 are read too (they have no input log: `walSeq` 0); a later format is refused with a warning
/// (start with empty windows rather than misread a newer module's state).
pub const CHECKPOINT_FORMAT: u32 = 3;

fn format_1() -> u32 {
    1
}

/// The state written to disk so that a restart or redeploy keeps the open windows. `E` is the
/// engine's state: read as a JSON value, written as the text the engine serialised itself
/// ([`stream_query::Engine::checkpoint_raw`], no JSON value built on the way).
#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint<E> {
    #[serde(default = "format_1")]
    format: u32,
    /// The last input-log record this snapshot holds (see [`crate::wal`]).
    #[serde(default)]
    wal_seq: u64,
    /// Identities of the last inputs the snapshot holds (see [`Processor::on_message`]).
    #[serde(default)]
    recent: Vec<String>,
    query: String,
    settings: TwinSettings,
    engine: E,
    written: DateTime<Utc>,
}

/// Error of a query that was rejected, in the form reported in the twin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryStatus {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

/// The module's core.
#[derive(Debug)]
pub struct Processor {
    active: Option<Active>,
    dead_letter_output: String,
    checkpoint_path: PathBuf,
    last_status: QueryStatus,
    references: References,
    last_refresh: Option<std::time::Instant>,
    wal: wal::LogFile,
    /// The last input-log sequence number given out.
    wal_seq: u64,
    /// Records not yet handed to a commit.
    unsynced: Vec<u8>,
    /// Bytes in the log since the last snapshot.
    log_bytes: u64,
    /// The next commit writes a snapshot (a new query, a log of another version).
    snapshot_due: bool,
    last_snapshot: std::time::Instant,
    /// Identities of the last [`RECENT_INPUTS`] inputs the engine took, newest last: their
    /// acknowledgements may not have reached edgeHub before a crash, so it may deliver them again.
    recent: std::collections::VecDeque<String>,
    /// After a restore: the inputs that may come again; each is recognised once.
    redelivery: Vec<String>,
    /// How many more inputs are checked against `redelivery` (edgeHub delivers the
    /// unacknowledged ones first).
    redelivery_window: usize,
    /// Inputs recognised as delivered again after a restart and acknowledged without running
    /// them twice.
    pub redelivered_skipped: u64,
    /// Fingerprints of the last [`SEEN_IDS`] inputs with a message id, oldest first, and as a set.
    seen: std::collections::VecDeque<u64>,
    seen_set: std::collections::HashSet<u64>,
    /// Inputs with an id and body seen before (sent twice by the module upstream), not run again.
    pub duplicates_skipped: u64,
    duplicates_logged: Option<std::time::Instant>,
    /// Bytes handed to the disk by commits (input log and snapshots), for the metrics.
    pub bytes_committed: u64,
    pub events_in: u64,
    pub rows_out: u64,
    pub dead_letters: u64,
}

impl Processor {
    /// A processor with no query yet, checkpointing into `state_dir`.
    pub fn new(state_dir: &Path) -> Processor {
        Processor {
            active: None,
            dead_letter_output: "deadletter".into(),
            checkpoint_path: state_dir.join("checkpoint.json"),
            last_status: QueryStatus {
                status: "waiting for a query",
                error: None,
                line: None,
                column: None,
            },
            references: References::default(),
            last_refresh: None,
            wal: wal::LogFile::new(state_dir.join("inputs.log")),
            wal_seq: 0,
            unsynced: Vec::new(),
            log_bytes: 0,
            snapshot_due: true,
            last_snapshot: std::time::Instant::now(),
            recent: std::collections::VecDeque::new(),
            redelivery: Vec::new(),
            redelivery_window: 0,
            redelivered_skipped: 0,
            seen: std::collections::VecDeque::new(),
            seen_set: std::collections::HashSet::new(),
            duplicates_skipped: 0,
            duplicates_logged: None,
            bytes_committed: 0,
            events_in: 0,
            rows_out: 0,
            dead_letters: 0,
        }
    }

    pub fn has_query(&self) -> bool {
        self.active.is_some()
    }

    pub fn dead_letter_output(&self) -> &str {
        &self.dead_letter_output
    }

    pub fn status(&self) -> &QueryStatus {
        &self.last_status
    }

    /// Applies new settings. A query that does not parse is rejected: the previous query keeps running and
    /// the error (with line and column) is returned for the reported properties. The same query text and
    /// policy keeps its windows (`Ok(None)`). A changed one replaces the running query: the old query's open
    /// windows are closed first and their rows returned (`Ok(Some(rows))`), so no acknowledged reading goes
    /// unaccounted; the new query starts with empty windows, as a restarted ASA job does. If a checkpoint
    /// for exactly the new query exists on disk, its windows are restored instead.
    pub fn apply(
        &mut self,
        settings: TwinSettings,
    ) -> Result<Option<Vec<OutputRow>>, AggregatorError> {
        self.dead_letter_output = settings.dead_letter_output.clone();
        let changed = self.references.configure(&settings.reference_data);
        self.give_references(&changed);
        let Some(text) = settings.query.clone() else {
            return Ok(None);
        };
        if let Some(a) = &self.active {
            if a.text == text && a.settings.event_policy == settings.event_policy {
                return Ok(None);
            }
        }
        let policy = settings.event_policy.to_policy()?;
        let query = match Query::parse(&text) {
            Ok(q) => q,
            Err(e) => {
                self.last_status = QueryStatus {
                    status: if self.active.is_some() {
                        "rejected; previous query still running"
                    } else {
                        "rejected"
                    },
                    error: Some(e.to_string()),
                    line: Some(e.line),
                    column: Some(e.column),
                };
                return Err(AggregatorError::Query(e));
            }
        };
        let restored = self.load_checkpoint(&text, &settings);
        // a new query starts a new snapshot and log; a restored one continues its log
        self.snapshot_due = true;
        self.unsynced.clear();
        self.recent.clear();
        self.redelivery.clear();
        self.redelivery_window = 0;
        let engine = match restored {
            Some((state, wal_seq, recent)) => {
                match Engine::restore(query.clone(), policy, &state) {
                    Ok(mut engine) => {
                        // the log's JOINs need their reference data as they run again
                        for name in self.references.names() {
                            if let Some(rows) = self.references.rows(&name) {
                                let _ = engine.set_reference(&name, rows.clone());
                            }
                        }
                        self.recent = recent.into();
                        let replayed = self.replay_log(&mut engine, wal_seq);
                        // what edgeHub may deliver again: the inputs whose acknowledgement may have
                        // been lost with the process
                        self.redelivery = self.recent.iter().cloned().collect();
                        self.redelivery_window = 4 * RECENT_INPUTS;
                        tracing::info!(path = %self.checkpoint_path.display(), replayed,
                        "restored open windows from the snapshot and the input log");
                        engine
                    }
                    Err(e) => {
                        tracing::warn!(path = %self.checkpoint_path.display(), error = %e,
                        "checkpoint does not fit this query; starting with empty windows");
                        Engine::new(query, policy)
                    }
                }
            }
            None => Engine::new(query, policy),
        };
        let flushed = match self.active.take() {
            Some(mut old) => {
                let rows = old.engine.flush();
                self.rows_out += rows.len() as u64;
                rows
            }
            None => Vec::new(),
        };
        self.active = Some(Active {
            text,
            settings,
            engine,
            fields: FieldsRead::default(),
        });
        let all = self.references.names();
        self.give_references(&all);
        self.last_status = QueryStatus {
            status: "running",
            error: None,
            line: None,
            column: None,
        };
        Ok(Some(flushed))
    }

    /// Apply the input-log records after snapshot `wal_seq` to `engine` (their rows were sent
    /// before the restart). Returns how many were applied.
    fn replay_log(&mut self, engine: &mut Engine, wal_seq: u64) -> usize {
        self.wal_seq = wal_seq;
        // a repair may cut the file: appends open it again
        self.wal.forget();
        let log = match wal::read_and_repair(self.wal.path()) {
            Ok(log) => log,
            Err(e) => {
                tracing::warn!(path = %self.wal.path().display(), error = %e,
                    "the input log cannot be used; the snapshot alone is restored (inputs acknowledged after it are lost)");
                return 0;
            }
        };
        if let Some(why) = &log.torn {
            tracing::warn!(path = %self.wal.path().display(), why, kept = log.records.len(),
                "the input log ends in a torn or corrupt record (a crash during a write?); using the records before it");
        }
        let mut applied = 0;
        let mut fields = FieldsRead::default();
        let query = engine.query().clone();
        for rec in log.records {
            if rec.seq() <= wal_seq {
                continue;
            }
            self.wal_seq = rec.seq();
            applied += 1;
            match rec {
                wal::Record::Input {
                    input,
                    arrival_us,
                    body,
                    ident,
                    ..
                } => {
                    let ident =
                        ident.unwrap_or_else(|| input_identity(&input, None, body.as_bytes()));
                    self.remember(ident);
                    let arrival =
                        DateTime::<Utc>::from_timestamp_micros(arrival_us).unwrap_or_default();
                    if let Ok(v) = fields.parse(&query, &input, &body) {
                        let _ = engine.record_owned(&input, v, arrival);
                    }
                }
                wal::Record::Tick { now_us, .. } => {
                    let now = DateTime::<Utc>::from_timestamp_micros(now_us).unwrap_or_default();
                    let _ = engine.advance(now);
                }
            }
        }
        let _ = engine.take_warnings();
        // the log goes on where the valid records end
        self.snapshot_due = false;
        self.log_bytes = log.valid_len;
        self.last_snapshot = std::time::Instant::now();
        applied
    }

    fn load_checkpoint(
        &self,
        text: &str,
        settings: &TwinSettings,
    ) -> Option<(Value, u64, Vec<String>)> {
        let bytes = std::fs::read(&self.checkpoint_path).ok()?;
        match serde_json::from_slice::<Checkpoint<Value>>(&bytes) {
            Ok(cp) if cp.format > CHECKPOINT_FORMAT => {
                tracing::warn!(path = %self.checkpoint_path.display(), format = cp.format,
                    "the checkpoint was written by a newer AggregatorModule (format {}; this one reads up to {CHECKPOINT_FORMAT}); starting with empty windows. Roll the module forward again, or delete the file to silence this", cp.format);
                None
            }
            Ok(cp) if cp.query == text && cp.settings.event_policy == settings.event_policy => {
                Some((cp.engine, cp.wal_seq, cp.recent))
            }
            Ok(_) => {
                tracing::info!("checkpoint belongs to another query or policy; not restored");
                None
            }
            Err(e) => {
                tracing::warn!(path = %self.checkpoint_path.display(), error = %e,
                    "checkpoint is unreadable; starting with empty windows (delete the file to silence this)");
                None
            }
        }
    }

    /// Hand the named reference data sets to the running query's engine (and take away those the
    /// twin no longer names).
    fn give_references(&mut self, names: &[String]) {
        let removed = self.references.take_removed();
        let Some(a) = self.active.as_mut() else {
            return;
        };
        for name in removed {
            a.engine.remove_reference(&name);
        }
        for name in names {
            let Some(rows) = self.references.rows(name) else {
                continue;
            };
            if let Err(e) = a.engine.set_reference(name, rows.clone()) {
                self.references.set_error(name, e.to_string());
            }
        }
    }

    /// Reload reference files that changed (at most every [`crate::reference::REFRESH_EVERY`]).
    /// True when what the twin reports about them changed (rows loaded or an error).
    pub fn refresh_references(&mut self) -> bool {
        let due = self
            .last_refresh
            .is_none_or(|t| t.elapsed() >= crate::reference::REFRESH_EVERY);
        if !due {
            return false;
        }
        self.last_refresh = Some(std::time::Instant::now());
        let before = self.references.reported();
        let changed = self.references.refresh();
        self.give_references(&changed);
        self.references.reported() != before
    }

    /// Reference data the running query joins that the twin does not provide.
    fn missing_references(&self) -> Vec<String> {
        let Some(a) = &self.active else {
            return Vec::new();
        };
        a.engine
            .query()
            .references()
            .into_iter()
            .filter(|r| a.engine.reference_len(r).is_none())
            .collect()
    }

    /// One input message without a message id (see [`Processor::on_message`]).
    pub fn on_input(&mut self, input: &str, body: &[u8], arrival: DateTime<Utc>) -> Outcome {
        self.on_message(input, None, body, arrival)
    }

    /// Remembers the fingerprint of an input with an id (see [`SEEN_IDS`]).
    fn see(&mut self, fp: Option<u64>) {
        let Some(fp) = fp else { return };
        if self.seen_set.insert(fp) {
            self.seen.push_back(fp);
            if self.seen.len() > SEEN_IDS {
                if let Some(old) = self.seen.pop_front() {
                    self.seen_set.remove(&old);
                }
            }
        }
    }

    fn remember(&mut self, ident: String) {
        if self.recent.len() == RECENT_INPUTS {
            self.recent.pop_front();
        }
        self.recent.push_back(ident);
    }

    /// One input message. `input` is the edgeHub input name, which is the query's `FROM` name;
    /// `message_id` its `$.mid` (MqttServerModule sets one on every message).
    ///
    /// After a restart edgeHub delivers again the inputs it had not seen acknowledged, and the
    /// last of them may be in the restored state already (the process died between making them
    /// durable and acknowledging them). Such an input, recognised by its message id (or, without
    /// one, by its input name, length and checksum) among the last [`RECENT_INPUTS`] the state
    /// holds, is acknowledged without running it again, so no window counts a reading twice.
    pub fn on_message(
        &mut self,
        input: &str,
        message_id: Option<&str>,
        body: &[u8],
        arrival: DateTime<Utc>,
    ) -> Outcome {
        self.on_delivery(input, message_id, body, arrival, false)
    }

    /// [`Processor::on_message`] for a delivery the hub marked as a repeat (`redelivered`, MQTT
    /// DUP). Without a restart, too, edgeHub sends a message again when the connection it went on
    /// closed before the acknowledgement arrived (edge-dev's hub closes a module's connection when
    /// its store cannot write, for one); if this process took it already (it is among the last
    /// [`RECENT_INPUTS`] it took), it is acknowledged without running it twice. Only marked repeats
    /// are checked: two different readings with the same body stay two readings.
    ///
    /// A message with an id (`$.mid`) whose id and body match one of the last [`SEEN_IDS`] such
    /// inputs is a copy sent twice by the module upstream (MqttServerModule resends what the hub
    /// did not acknowledge, with the same id, and the hub stores each copy as a new message); it is
    /// acknowledged without running it, so a window does not count one reading twice.
    pub fn on_delivery(
        &mut self,
        input: &str,
        message_id: Option<&str>,
        body: &[u8],
        arrival: DateTime<Utc>,
        redelivered: bool,
    ) -> Outcome {
        let ident = input_identity(input, message_id, body);
        let fp = message_id
            .filter(|m| !m.is_empty())
            .map(|id| id_fingerprint(input, id, body));
        if fp.is_some_and(|fp| self.seen_set.contains(&fp)) {
            self.duplicates_skipped += 1;
            // one line every 10 s while copies come, with the count so far
            if self
                .duplicates_logged
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10))
            {
                self.duplicates_logged = Some(std::time::Instant::now());
                tracing::info!(input, message_id, duplicates_skipped = self.duplicates_skipped,
                    "an input with the id and body of one taken before was sent again (a resend by the module upstream); acknowledged without running it twice");
            }
            return Outcome::default();
        }
        if redelivered && self.recent.contains(&ident) {
            self.redelivered_skipped += 1;
            tracing::info!(input, message_id, "an input delivered again (its acknowledgement was lost with a connection) was taken already; acknowledged without running it twice");
            return Outcome::default();
        }
        if self.redelivery_window > 0 {
            self.redelivery_window -= 1;
            if let Some(i) = self.redelivery.iter().position(|x| *x == ident) {
                self.redelivery.swap_remove(i);
                self.redelivered_skipped += 1;
                self.see(fp);
                tracing::info!(input, message_id, "an input delivered again after the restart is in the restored state already; acknowledged without running it twice");
                return Outcome::default();
            }
        }
        self.events_in += 1;
        let Some(active) = self.active.as_mut() else {
            return self.dead(
                input,
                body,
                arrival,
                "no query is running: set the desired property `query` of AggregatorModule".into(),
            );
        };
        let value: Value = match std::str::from_utf8(body) {
            Err(e) => {
                return self.dead(
                    input,
                    body,
                    arrival,
                    format!("body is not UTF-8 ({e}); send JSON in UTF-8"),
                )
            }
            Ok(text) => match active.fields.parse(active.engine.query(), input, text) {
                Ok(v) => v,
                Err(e) => return self.dead(input, body, arrival, format!("body is not JSON: {e}")),
            },
        };
        let result = active.engine.record_owned(input, value, arrival);
        for w in active.engine.take_warnings() {
            tracing::warn!(input, "query: {w}");
        }
        match result {
            Ok(rows) => {
                // the engine took it: log it (a refused input changed nothing)
                self.wal_seq += 1;
                let text = std::str::from_utf8(body).unwrap_or("null");
                wal::encode_input(
                    &mut self.unsynced,
                    self.wal_seq,
                    input,
                    arrival.timestamp_micros(),
                    text,
                    &ident,
                );
                self.remember(ident);
                self.see(fp);
                self.rows_out += rows.len() as u64;
                Outcome {
                    rows,
                    dead_letter: None,
                }
            }
            Err(e) => self.dead(input, body, arrival, e.to_string()),
        }
    }

    fn dead(
        &mut self,
        input: &str,
        body: &[u8],
        arrival: DateTime<Utc>,
        reason: String,
    ) -> Outcome {
        self.dead_letters += 1;
        tracing::warn!(input, %reason, "input message sent to the dead-letter output `{}`", self.dead_letter_output);
        let body = match std::str::from_utf8(body) {
            Ok(text) => match serde_json::from_str::<Value>(text) {
                Ok(v) => json!({ "body": v }),
                Err(_) => json!({ "bodyText": text }),
            },
            Err(_) => {
                use base64::Engine as _;
                json!({ "bodyBase64": base64::engine::general_purpose::STANDARD.encode(body) })
            }
        };
        let mut dl = json!({
            "reason": reason,
            "input": input,
            "arrivalTime": arrival.to_rfc3339_opts(SecondsFormat::Millis, true),
        });
        if let (Some(dl), Some(b)) = (dl.as_object_mut(), body.as_object()) {
            dl.extend(b.clone());
        }
        Outcome {
            rows: Vec::new(),
            dead_letter: Some(dl),
        }
    }

    /// Advances the watermark with the wall clock, closing the windows that are due.
    /// A tick that closed windows is logged (its rows are sent before the next commit); one that
    /// closed nothing is not: the next input or tick catches up on it, so replay gives the same
    /// state.
    pub fn on_tick(&mut self, now: DateTime<Utc>) -> Vec<OutputRow> {
        match self.active.as_mut() {
            Some(a) => {
                let rows = a.engine.advance(now);
                if !rows.is_empty() {
                    self.wal_seq += 1;
                    wal::encode_tick(&mut self.unsynced, self.wal_seq, now.timestamp_micros());
                }
                self.rows_out += rows.len() as u64;
                rows
            }
            None => Vec::new(),
        }
    }

    /// Commits now, on this thread: what [`Processor::commit_work`] gives, done.
    pub fn checkpoint(&mut self) -> Result<(), AggregatorError> {
        match self.commit_work()? {
            Some(w) => w.run().map_err(|e| {
                self.commit_failed();
                AggregatorError::Checkpoint {
                    path: self.wal.path().to_path_buf(),
                    source: e,
                }
            }),
            None => Ok(()),
        }
    }

    /// The folder it keeps its state in.
    pub fn state_dir(&self) -> &Path {
        self.wal.path().parent().unwrap_or(Path::new("."))
    }

    /// The work of the last [`Processor::commit_work`] failed (a full disk, say). Its inputs stay
    /// unacknowledged; the next commit writes a whole snapshot, which holds their effect and starts
    /// a new log, so nothing is appended after a record the failed write may have torn.
    pub fn commit_failed(&mut self) {
        self.snapshot_due = true;
    }

    /// The running engine's state as JSON (tests compare restored and uninterrupted runs) and
    /// the last input-log sequence number it holds.
    pub fn engine_state(&self) -> Option<(Value, u64)> {
        self.active
            .as_ref()
            .map(|a| (a.engine.checkpoint(), self.wal_seq))
    }

    /// Forces the next commit to write a snapshot (tests, benchmarks).
    pub fn snapshot_next(&mut self) {
        self.snapshot_due = true;
    }

    /// The disk work that makes everything processed so far durable: usually the input-log
    /// records since the last commit (group commit, O(what changed)); every
    /// [`wal::SNAPSHOT_EVERY`] or [`wal::SNAPSHOT_BYTES`] of log, or after a query change, a
    /// snapshot of the engine state that starts the log again. Serialising happens here; the
    /// returned work (writes, fsync) may run on another thread, so the disk does not hold up the
    /// task that talks to edgeHub.
    pub fn commit_work(&mut self) -> Result<Option<wal::Work>, AggregatorError> {
        let Some(a) = &self.active else {
            return Ok(None);
        };
        let snapshot = self.snapshot_due
            || self.log_bytes + self.unsynced.len() as u64 >= wal::SNAPSHOT_BYTES
            || (self.last_snapshot.elapsed() >= wal::SNAPSHOT_EVERY && !self.unsynced.is_empty());
        if !snapshot {
            if self.unsynced.is_empty() {
                return Ok(None);
            }
            let bytes = std::mem::take(&mut self.unsynced);
            self.log_bytes += bytes.len() as u64;
            let work = wal::Work::Append {
                log: self.wal.clone(),
                bytes,
            };
            self.bytes_committed += work.bytes() as u64;
            return Ok(Some(work));
        }
        let cp = Checkpoint {
            format: CHECKPOINT_FORMAT,
            wal_seq: self.wal_seq,
            recent: self.recent.iter().cloned().collect(),
            query: a.text.clone(),
            settings: a.settings.clone(),
            engine: a.engine.checkpoint_raw(),
            written: Utc::now(),
        };
        let snapshot = serde_json::to_vec(&cp).map_err(|e| AggregatorError::Checkpoint {
            path: self.checkpoint_path.clone(),
            source: std::io::Error::other(e),
        })?;
        self.unsynced.clear();
        self.log_bytes = wal::HEADER.len() as u64;
        self.snapshot_due = false;
        self.last_snapshot = std::time::Instant::now();
        let work = wal::Work::Snapshot {
            checkpoint: self.checkpoint_path.clone(),
            snapshot,
            log: self.wal.clone(),
        };
        self.bytes_committed += work.bytes() as u64;
        Ok(Some(work))
    }

    /// The reported properties that describe this module's state.
    pub fn reported(&self, unknown_keys: &[String]) -> Value {
        let outputs = self
            .active
            .as_ref()
            .map(|a| a.engine_outputs())
            .unwrap_or_default();
        json!({
            "query": self.last_status,
            "runningQuery": self.active.as_ref().map(|a| a.text.clone()),
            "outputs": outputs,
            "deadLetterOutput": self.dead_letter_output,
            "ignoredDesiredProperties": unknown_keys,
            "referenceData": self.references.reported(),
            "missingReferenceData": self.missing_references(),
        })
    }
}

impl Active {
    fn engine_outputs(&self) -> Vec<String> {
        self.engine.query().outputs()
    }
}

/// The message sent for one output row: the row's columns as a JSON object (content type
/// application/json, UTF-8), with the row's `System.Timestamp()` (for a window, its end) as the
/// application property `timestamp` so that routes and consumers can use it without selecting it.
pub fn row_message(row: &OutputRow) -> edge_client::wire::Message {
    let mut m = edge_client::wire::Message::json(&Value::Object(row.row.clone()));
    m.properties.insert(
        "timestamp".into(),
        row.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    m.creation_time = Some(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true));
    m
}
