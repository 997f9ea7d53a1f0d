//! [`Store`]: durable queues (and small key-value tables) in one redb file.
//!
//! - `queues`: `(endpoint, priority, seq) -> record`; the key order is the delivery order (priority
//!   0 first, then arrival). What an endpoint is belongs to the user: the hub has `$upstream` and one
//!   queue per module input, MqttServerModule's spool one queue. Records are usually
//!   [`crate::Record`]s ([`crate::encode_record`]).
//! - key-value tables named by the user at open ([`Options::tables`]): the hub keeps MQTT sessions
//!   and twins there.
//!
//! Every write goes through one writer thread that commits whatever is pending in one durable
//! (fsync'd) transaction: concurrent writers share a commit (group commit), and a caller learns
//! only after the commit that its write is on disk, which is when it may acknowledge. Nothing else
//! commits: after an I/O error redb must not see another commit before it is reopened (it asserts,
//! and a second committer racing the writer's reopen once took the hub's `$upstream` task down with
//! a panic when the disk filled).
//!
//! Queue depths are counted by the commits themselves: a transaction reports which of its inserts
//! were new and which of its deletes removed an entry, and only a committed transaction changes the
//! counts. So the gauges always equal what the file holds, whatever order deliveries, redeliveries
//! and acknowledgements come in.
//!
//! After an I/O error (a full disk, say) redb refuses every further write until the database is
//! closed and opened again. The writer does that by itself: it closes the file, and reopens it
//! (redb repairs it) before the next commit, retrying with a back-off while the disk still refuses.
//! Writes in between fail at once, so the caller acknowledges nothing that was not stored.
//!
//! redb reuses freed pages but only gives space back to the disk from the end of the file, so after a
//! backlog drains (an upstream outage) the file stays as large as the backlog made it. The writer
//! therefore compacts it ([`COMPACT_CHECK_EVERY`], [`COMPACT_FRAGMENTED_BYTES`]): once a minute at most,
//! when more than 4 MiB of the file are free pages and they outweigh what it holds, it rewrites the
//! file in place (redb's crash-safe `compact`), holding the readers off for that moment.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::{decode_record, record_expiry, Record, StoreError};

const QUEUES: TableDefinition<(&str, u8, u64), &[u8]> = TableDefinition::new("queues");

fn kv(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

fn err(context: &str) -> impl Fn(&dyn std::fmt::Display) -> StoreError + '_ {
    move |e| StoreError(format!("{context}: {e}"))
}

/// What a store is called and what its user does when it cannot write: the words of its log lines
/// and errors, so that each tells the reader which file is in trouble and what to do.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// What the store is called in log lines and errors, e.g. "the hub store".
    pub name: &'static str,
    /// What the user does while commits fail, e.g. "publishes are refused (not acknowledged)".
    pub meanwhile: &'static str,
    /// What the operator should do, e.g. "free space on the data directory's disk".
    pub remedy: &'static str,
    /// The writer thread's name.
    pub thread: &'static str,
    /// Key-value tables besides the queues (`&str -> bytes`), created at open.
    pub tables: &'static [&'static str],
}

/// Key of a queue entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey {
    pub endpoint: String,
    pub priority: u8,
    pub seq: u64,
}

/// One change to the store.
#[derive(Debug)]
pub enum Op {
    Enqueue {
        key: QueueKey,
        record: Vec<u8>,
    },
    Delete {
        key: QueueKey,
    },
    /// Deletes every entry of queue `endpoint` (all priorities).
    Clear {
        endpoint: String,
    },
    /// Sets `key` in key-value table `table` (one of [`Options::tables`]).
    Put {
        table: &'static str,
        key: String,
        value: Vec<u8>,
    },
    /// Removes `key` from key-value table `table`.
    Remove {
        table: &'static str,
        key: String,
    },
}

/// Jobs in one commit at most.
const GROUP_MAX: usize = 4096;

/// How often, at most, the writer looks at how much of the file is free pages.
pub const COMPACT_CHECK_EVERY: Duration = Duration::from_secs(60);
/// Free pages past this (and more than the file holds) make the writer compact the file.
pub const COMPACT_FRAGMENTED_BYTES: u64 = 4 * 1024 * 1024;

struct Job {
    ops: Vec<Op>,
    then: Then,
    reply: Option<oneshot::Sender<Result<(), StoreError>>>,
    /// Written by [`Store::write_kept`]: a failed commit keeps it for the next one instead of
    /// answering it with the error.
    kept: bool,
}

/// What the writer does after a job's commit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    Nothing,
    /// Compact the file, whatever the thresholds ([`Store::compact`]).
    Compact,
    /// The last job: the writer ends, releasing the database file.
    Close,
}

fn writer_stopped() -> StoreError {
    StoreError("the store writer has stopped".into())
}

/// The writer's answer to a job handed to it ([`Store::hand`]).
async fn answer(rx: oneshot::Receiver<Result<(), StoreError>>) -> Result<(), StoreError> {
    rx.await.map_err(|_| writer_stopped())?
}

/// Entries per queue endpoint, as committed.
type Depths = Arc<Mutex<HashMap<String, u64>>>;

/// The open database, shared by the writer thread and the readers; `None` once closed, or while the
/// writer reopens it after an I/O error.
type Slot = Arc<RwLock<Option<Arc<Database>>>>;

/// Handle to the store; cheap to clone. The writer thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct Store {
    db: Slot,
    writer: std::sync::mpsc::Sender<Job>,
    next_seq: Arc<AtomicU64>,
    depths: Depths,
    /// Set by [`Store::close`]: the store is closed for good (not just reopening).
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// False from an I/O error until the writer reopened the file.
    writable: Arc<std::sync::atomic::AtomicBool>,
    /// The writer thread, joined by [`Store::close_blocking`].
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    opts: Options,
}

/// What the writer thread owns.
struct Writer {
    path: PathBuf,
    slot: Slot,
    depths: Depths,
    writable: Arc<std::sync::atomic::AtomicBool>,
    opts: Options,
}

impl Store {
    /// Opens (or creates) `path` and starts the writer thread.
    pub fn open(path: &Path, opts: Options) -> Result<Store, StoreError> {
        Store::open_with(path, opts, |_| Ok(Vec::new()))
    }

    /// [`Store::open`], running `upgrade` in the transaction that creates the tables: a user whose
    /// earlier versions kept their data another way reads it there (and drops the old tables), and
    /// returns the queue entries it becomes, which are stored in the same commit, before the
    /// queues are counted. MqttServerModule's spool moves an earlier version's table this way.
    pub fn open_with(
        path: &Path,
        opts: Options,
        upgrade: impl FnOnce(&redb::WriteTransaction) -> Result<Vec<(QueueKey, Vec<u8>)>, StoreError>,
    ) -> Result<Store, StoreError> {
        let db = Arc::new(open_db(path, opts)?);
        // Create the tables so that read transactions find them, and count the queues.
        let txn = db.begin_write().map_err(|e| err("begin")(&e))?;
        let moved = upgrade(&txn)?;
        let (depths, max_seq) = {
            let mut q = txn.open_table(QUEUES).map_err(|e| err("open queues")(&e))?;
            for (key, record) in &moved {
                q.insert(
                    (key.endpoint.as_str(), key.priority, key.seq),
                    record.as_slice(),
                )
                .map_err(|e| err("store what an upgrade moved")(&e))?;
            }
            let counted = count_queues(&q)?;
            for name in opts.tables {
                txn.open_table(kv(name))
                    .map_err(|e| err("open a table")(&e))?;
            }
            counted
        };
        txn.commit().map_err(|e| err("commit")(&e))?;

        let slot: Slot = Arc::new(RwLock::new(Some(db)));
        let depths: Depths = Arc::new(Mutex::new(depths));
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let writable = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writer = Writer {
            path: path.to_path_buf(),
            slot: slot.clone(),
            depths: depths.clone(),
            writable: writable.clone(),
            opts,
        };
        let thread = std::thread::Builder::new()
            .name(opts.thread.into())
            .spawn(move || writer.run(rx))
            .map_err(|e| err("start the store writer thread")(&e))?;
        Ok(Store {
            db: slot,
            writer: tx,
            next_seq: Arc::new(AtomicU64::new(max_seq + 1)),
            depths,
            closed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            writable,
            thread: Arc::new(Mutex::new(Some(thread))),
            opts,
        })
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        match self.db.read() {
            Ok(g) => g.clone().ok_or_else(|| {
                if self.is_closed() {
                    closed(self.opts)
                } else {
                    reopening(self.opts)
                }
            }),
            Err(_) => Err(StoreError(format!("{}'s lock is poisoned", self.opts.name))),
        }
    }

    /// Commits what is pending and closes the database file (for every handle): later reads and writes
    /// fail, and the file can be opened again (a restart in the same process).
    pub async fn close(&self) -> Result<(), StoreError> {
        let flushed = match self.hand(Vec::new(), Then::Close) {
            Some(rx) => answer(rx).await,
            // stopped already: nothing is pending
            None => Ok(()),
        };
        self.closed.store(true, Ordering::SeqCst);
        if let Ok(mut g) = self.db.write() {
            *g = None;
        }
        flushed
    }

    /// [`Store::close`] for a caller that cannot wait on a future (a `Drop`): commits what is pending,
    /// then waits for the writer thread to release the file. Blocks the calling thread for that
    /// long (one commit).
    pub fn close_blocking(&self) {
        // the answer is not awaited: the join below waits for the same commit (the file stays
        // open until then, so that what is pending commits)
        let _ = self.hand(Vec::new(), Then::Close);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
        self.closed.store(true, Ordering::SeqCst);
        if let Ok(mut g) = self.db.write() {
            *g = None;
        }
    }

    /// Whether [`Store::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// False after an I/O error until the file was reopened (the hub, for one, then refuses new connections
    /// with "server unavailable", so clients back off instead of failing publish after publish).
    pub fn is_writable(&self) -> bool {
        self.writable.load(Ordering::SeqCst)
    }

    /// Committed entries of one queue endpoint (`$upstream`, `module/{name}`), in flight included.
    pub fn depth(&self, endpoint: &str) -> u64 {
        self.depths
            .lock()
            .map(|d| d.get(endpoint).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Committed entries per queue endpoint (kept by the commits; no scan).
    pub fn depth_map(&self) -> HashMap<String, u64> {
        self.depths.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// A new sequence number (unique across all queues, increasing).
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands `ops` to the writer now (so writes submitted in order commit in order) and returns a
    /// future that resolves once they are committed, in one durable transaction possibly shared with
    /// other callers' ops.
    pub fn submit(
        &self,
        ops: Vec<Op>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let handed = self.hand(ops, Then::Nothing);
        async move { answer(handed.ok_or_else(writer_stopped)?).await }
    }

    /// Hands a job to the writer; the receiver gets its answer (`None`: the writer has stopped).
    fn hand(&self, ops: Vec<Op>, then: Then) -> Option<oneshot::Receiver<Result<(), StoreError>>> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            ops,
            then,
            reply: Some(tx),
            kept: false,
        };
        self.writer.send(job).ok().map(|_| rx)
    }

    /// Compacts the file now (after whatever is pending commits), whatever the thresholds. The
    /// writer also does this by itself (see the module docs); tests call it to not wait a minute.
    pub async fn compact(&self) -> Result<(), StoreError> {
        answer(
            self.hand(Vec::new(), Then::Compact)
                .ok_or_else(writer_stopped)?,
        )
        .await
    }

    /// [`Store::submit`] and wait.
    pub async fn write(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.submit(ops).await
    }

    /// Queues `ops` without waiting for the commit (used for deletes whose loss only causes a resend).
    pub fn write_later(&self, ops: Vec<Op>) {
        self.send_unanswered(ops, false);
    }

    /// Queues `ops` without waiting, and never lets a failed commit drop them: while commits fail
    /// (a full disk) they wait in memory, in order, ahead of later writes, and are committed with
    /// the first group that commits. For state whose every change must reach the file in order
    /// (MqttServerModule's sessions); [`Store::flush_blocking`] tells when they have.
    pub fn write_kept(&self, ops: Vec<Op>) {
        self.send_unanswered(ops, true);
    }

    fn send_unanswered(&self, ops: Vec<Op>, kept: bool) {
        let job = Job {
            ops,
            then: Then::Nothing,
            reply: None,
            kept,
        };
        if self.writer.send(job).is_err() {
            tracing::warn!(
                store = self.opts.name,
                "the store's writer has stopped; a change was not saved"
            );
        }
    }

    /// Waits, blocking this thread (not for async tasks), at most `within` until everything handed
    /// to the store before the call is committed; false when that did not happen in time (the disk
    /// still refuses) or the writer has stopped.
    pub fn flush_blocking(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let Some(mut rx) = self.hand(Vec::new(), Then::Nothing) else {
                return false;
            };
            // an empty job commits with the group it joins, which starts with every kept write
            // still waiting, so Ok means all of them are on disk
            let answer = loop {
                match rx.try_recv() {
                    Ok(a) => break Some(a),
                    Err(oneshot::error::TryRecvError::Empty) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(oneshot::error::TryRecvError::Empty) => break None,
                    Err(oneshot::error::TryRecvError::Closed) => return false,
                }
            };
            match answer {
                Some(Ok(())) => return true,
                // the commit failed: try again until the deadline (the writer backs off meanwhile)
                Some(Err(_)) => std::thread::sleep(Duration::from_millis(50)),
                None => return false,
            }
        }
        false
    }

    /// Every entry of queue `endpoint` in delivery order, as stored (for queues whose records are
    /// not [`Record`]s).
    pub fn raw_entries(&self, endpoint: &str) -> Result<Vec<(QueueKey, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        self.each_entry(endpoint, |key, raw| {
            out.push((key, raw.to_vec()));
            true
        })?;
        Ok(out)
    }

    /// Up to `limit` entries of `endpoint` in delivery order for which `want(key, raw record)` is true
    /// (only those are decoded).
    pub fn scan(
        &self,
        endpoint: &str,
        limit: usize,
        mut want: impl FnMut(&QueueKey, &[u8]) -> bool,
    ) -> Result<Vec<(QueueKey, Record)>, StoreError> {
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        self.each_entry(endpoint, |key, raw| {
            if out.len() >= limit {
                return false;
            }
            if want(&key, raw) {
                match decode_record(raw) {
                    Ok(r) => out.push((key, r)),
                    Err(e) => {
                        tracing::error!(endpoint, seq = key.seq, error = %e, "dropping an unreadable queued message");
                        unreadable.push(Op::Delete { key });
                    }
                }
            }
            true
        })?;
        if !unreadable.is_empty() {
            self.write_later(unreadable);
        }
        Ok(out)
    }

    /// Calls `each(key, raw record)` for the entries of `endpoint` in delivery order, until it
    /// answers false.
    fn each_entry(
        &self,
        endpoint: &str,
        mut each: impl FnMut(QueueKey, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let txn = self.db()?.begin_read().map_err(|e| err("read")(&e))?;
        let q = txn.open_table(QUEUES).map_err(|e| err("open queues")(&e))?;
        let range = q
            .range((endpoint, 0u8, 0u64)..=(endpoint, u8::MAX, u64::MAX))
            .map_err(|e| err("scan queue")(&e))?;
        for item in range {
            let (k, v) = item.map_err(|e| err("scan queue")(&e))?;
            let (ep, priority, seq) = k.value();
            let key = QueueKey {
                endpoint: ep.to_string(),
                priority,
                seq,
            };
            if !each(key, v.value()) {
                break;
            }
        }
        Ok(())
    }

    /// Keys of entries whose time to live passed at `now_ms` (reads only the record headers), at most
    /// `limit`.
    pub fn expired(&self, now_ms: i64, limit: usize) -> Result<Vec<QueueKey>, StoreError> {
        let txn = self.db()?.begin_read().map_err(|e| err("read")(&e))?;
        let q = txn.open_table(QUEUES).map_err(|e| err("open queues")(&e))?;
        let mut out = Vec::new();
        for item in q.iter().map_err(|e| err("scan queues")(&e))? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| err("scan queues")(&e))?;
            // A record that cannot be read is dropped by the reader that meets it, with a log line.
            if let Some(expiry) = record_expiry(v.value()) {
                if expiry <= now_ms {
                    let (endpoint, priority, seq) = k.value();
                    out.push(QueueKey {
                        endpoint: endpoint.to_string(),
                        priority,
                        seq,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Every entry of key-value table `table` (one of [`Options::tables`]), in key order.
    pub fn entries(&self, table: &'static str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db()?.begin_read().map_err(|e| err("read")(&e))?;
        let t = txn
            .open_table(kv(table))
            .map_err(|e| err("open a table")(&e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| err("scan a table")(&e))? {
            let (k, v) = item.map_err(|e| err("scan a table")(&e))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

/// What [`Store::db`] says while the writer reopens the file after an I/O error.
fn reopening(o: Options) -> StoreError {
    StoreError(format!(
        "{} had an I/O error (is the disk full?) and is being reopened; {} until a commit succeeds again: {}",
        o.name, o.meanwhile, o.remedy
    ))
}

/// What a closed store answers.
fn closed(o: Options) -> StoreError {
    StoreError(format!("{} is closed (its user has stopped)", o.name))
}

/// Opens (or creates) the database file. A user that just stopped in this process (a hub restarted
/// in a test, say) may still be closing the file: retry for a while.
fn open_db(path: &Path, o: Options) -> Result<Database, StoreError> {
    let mut attempts = 0;
    loop {
        match Database::create(path) {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if attempts < 100 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(StoreError(format!(
                    "cannot open {} {} ({e}); is another process using the file, and is there space on its disk?",
                    o.name,
                    path.display()
                )))
            }
        }
    }
}

/// Entries per endpoint, and the highest sequence number, as the queues table holds them.
fn count_queues(
    q: &impl ReadableTable<(&'static str, u8, u64), &'static [u8]>,
) -> Result<(HashMap<String, u64>, u64), StoreError> {
    let mut depths = HashMap::new();
    let mut max_seq = 0;
    for item in q.iter().map_err(|e| err("scan queues")(&e))? {
        let (k, _) = item.map_err(|e| err("scan queues")(&e))?;
        let (endpoint, _, seq) = k.value();
        max_seq = max_seq.max(seq);
        *depths.entry(endpoint.to_string()).or_insert(0) += 1;
    }
    Ok((depths, max_seq))
}

/// Entries added (+1) or removed (-1) per endpoint by one committed transaction.
type Deltas = HashMap<String, i64>;

fn add_deltas(depths: &Depths, deltas: Deltas) {
    if deltas.is_empty() {
        return;
    }
    if let Ok(mut d) = depths.lock() {
        for (endpoint, delta) in deltas {
            let e = d.entry(endpoint).or_insert(0);
            *e = e.saturating_add_signed(delta);
        }
    }
}

/// A failed transaction: the error for the callers, and whether the database must be reopened.
struct Failed {
    error: StoreError,
    reopen: bool,
}

/// Maps a redb error: I/O errors (and redb's "previous I/O error") need the file reopened.
fn failed(context: &'static str) -> impl Fn(redb::Error) -> Failed {
    move |e| {
        let reopen = matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo);
        Failed {
            error: StoreError(format!("{context}: {e}")),
            reopen,
        }
    }
}

/// The writer's state from a failed commit until one succeeds again.
struct Trouble {
    since: Instant,
    failures: u64,
    /// When the error was last logged.
    logged: Option<Instant>,
    /// Set while the file is closed after an I/O error: when to reopen it.
    reopen_at: Option<Instant>,
    /// The wait before the next reopen; doubles (to 10 s) while commits keep failing.
    wait: Duration,
}

impl Trouble {
    fn new() -> Trouble {
        Trouble {
            since: Instant::now(),
            failures: 0,
            logged: None,
            reopen_at: None,
            wait: Duration::from_millis(250),
        }
    }

    fn next_wait(&mut self) -> Duration {
        let w = self.wait;
        self.wait = (self.wait * 2).min(Duration::from_secs(10));
        w
    }
}

impl Writer {
    fn run(self, rx: std::sync::mpsc::Receiver<Job>) {
        let mut closing = false;
        let mut compact_checked = Instant::now();
        // Set from the first failed commit until a commit succeeds again.
        let mut trouble: Option<Trouble> = None;
        // Jobs not yet answered, oldest first: what came in since the last commit, and kept writes
        // ([`Store::write_kept`]) whose commit failed, which stay at the front.
        let mut backlog: VecDeque<Job> = VecDeque::new();
        while !closing {
            // While the file is closed after an I/O error, wake up to reopen it even when nobody
            // writes; kept writes held after a failure are tried again every second.
            let reopen_at = trouble.as_ref().and_then(|t| t.reopen_at);
            let wake_at = reopen_at
                .or_else(|| (!backlog.is_empty()).then(|| Instant::now() + Duration::from_secs(1)));
            let first = match wake_at {
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(j) => Some(j),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(j) => Some(j),
                    Err(_) => break,
                },
            };
            // what arrives in this round starts here; older jobs were seen before
            let fresh_from = backlog.len();
            backlog.extend(first);
            // Group commit: take whatever else is already waiting.
            while backlog.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(j) => backlog.push_back(j),
                    Err(_) => break,
                }
            }
            // Reopen when it is time, or at once for a close (one last try to save what waits). A
            // close can only be among this round's jobs (held ones are kept writes).
            let close_waiting = backlog.range(fresh_from..).any(|j| j.then == Then::Close);
            if let Some(t) = trouble.as_mut() {
                if t.reopen_at
                    .is_some_and(|at| close_waiting || Instant::now() >= at)
                {
                    match self.reopen() {
                        Ok(()) => {
                            // writable as far as anyone can tell: the next commit says for sure
                            t.reopen_at = None;
                            self.writable.store(true, Ordering::SeqCst);
                            tracing::debug!("{} was reopened after an I/O error", self.opts.name);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "{} cannot be reopened yet", self.opts.name);
                            t.reopen_at = Some(Instant::now() + t.next_wait());
                        }
                    }
                }
            }
            if backlog.is_empty() {
                continue;
            }
            let Some(db) = self.slot.read().ok().and_then(|g| g.clone()) else {
                // The file is closed until the reopen (or for good): nothing can commit. Answer
                // what arrived in this round and waits for an answer at once; kept writes wait for
                // the reopen, where they are (only this round's jobs are looked at, so a long
                // outage's held writes cost nothing per new write).
                let e = if trouble.as_ref().is_some_and(|t| t.reopen_at.is_some()) {
                    reopening(self.opts)
                } else {
                    closed(self.opts)
                };
                let fresh: Vec<Job> = backlog.drain(fresh_from..).collect();
                closing = fresh.iter().any(|j| j.then == Then::Close);
                self.note_failure(&mut trouble, &e);
                // (on a close, the kept writes left are counted in the writer's last log line)
                for j in fresh {
                    if j.kept {
                        backlog.push_back(j);
                    } else if let Some(reply) = j.reply {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                continue;
            };
            // The oldest jobs, up to a close.
            let n = backlog
                .iter()
                .take(GROUP_MAX)
                .position(|j| j.then == Then::Close)
                .map_or(backlog.len().min(GROUP_MAX), |i| i + 1);
            let jobs: Vec<Job> = backlog.drain(..n).collect();
            closing = jobs.last().is_some_and(|j| j.then == Then::Close);
            let compact_asked = jobs.iter().any(|j| j.then == Then::Compact);
            let ops: Vec<&Op> = jobs.iter().flat_map(|j| j.ops.iter()).collect();
            let result = guarded_apply(&db, &ops, self.opts.tables);
            drop(ops);
            match result {
                Ok(deltas) => {
                    // compaction needs the only handle to the database
                    drop(db);
                    add_deltas(&self.depths, deltas);
                    if let Some(t) = trouble.take() {
                        tracing::info!(
                            failed_commits = t.failures,
                            after = ?t.since.elapsed(),
                            "{} commits again; writes are acknowledged again",
                            self.opts.name
                        );
                    }
                    // Compaction comes after the commit's callers heard back, except for whoever
                    // asked for it, who hears once it is done.
                    let mut asked = Vec::new();
                    for j in jobs {
                        match j.reply {
                            Some(reply) if j.then == Then::Compact => asked.push(reply),
                            Some(reply) => {
                                let _ = reply.send(Ok(()));
                            }
                            None => {}
                        }
                    }
                    if !closing
                        && (compact_asked || compact_checked.elapsed() >= COMPACT_CHECK_EVERY)
                    {
                        compact_checked = Instant::now();
                        self.maybe_compact(compact_asked);
                    }
                    for reply in asked {
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(f) if f.reopen => {
                    self.close_for_reopen(&mut trouble);
                    self.note_failure(&mut trouble, &f.error);
                    self.answer_failed(jobs, &f.error, &mut backlog);
                }
                Err(f) => {
                    // Refused for what it holds (not the disk): one job's ops may be at fault, so
                    // each job is tried alone and only the refused ones fail.
                    self.note_failure(&mut trouble, &f.error);
                    self.one_by_one(&db, jobs, &mut backlog, &mut trouble);
                }
            }
        }
        if closing {
            // the last commit is done: the file is released for whoever opens it next
            if let Ok(mut g) = self.slot.write() {
                *g = None;
            }
        }
        let lost: usize = backlog.iter().filter(|j| j.kept).map(|j| j.ops.len()).sum();
        if lost > 0 {
            tracing::error!(
                changes = lost,
                "{} stopped while commits failed; those changes are not saved: {}",
                self.opts.name,
                self.opts.remedy
            );
        }
    }

    /// After an I/O error: redb refuses every write until the file is reopened, so close it now
    /// (readers see `reopening`) and reopen it after a wait that doubles while commits keep failing
    /// (the disk is still full).
    fn close_for_reopen(&self, trouble: &mut Option<Trouble>) {
        if let Ok(mut g) = self.slot.write() {
            *g = None;
        }
        self.writable.store(false, Ordering::SeqCst);
        let t = trouble.get_or_insert_with(Trouble::new);
        t.reopen_at = Some(Instant::now() + t.next_wait());
    }

    /// Counts a failed commit and logs it: one line when the trouble starts, then one every 30 s
    /// while it lasts.
    fn note_failure(&self, trouble: &mut Option<Trouble>, e: &StoreError) {
        let t = trouble.get_or_insert_with(Trouble::new);
        t.failures += 1;
        if t.logged
            .is_none_or(|l| l.elapsed() >= Duration::from_secs(30))
        {
            tracing::error!(error = %e, failed_commits = t.failures, since = ?t.since.elapsed(),
                "{} could not commit; {} until it can: {}", self.opts.name, self.opts.meanwhile, self.opts.remedy);
            t.logged = Some(Instant::now());
        }
    }

    /// The answer to jobs whose commit failed with `e`: kept writes go back to the front of the
    /// backlog, in order (when the store is closing, the writer's last log line counts them as not
    /// saved); every other job hears `e`.
    fn answer_failed(&self, jobs: Vec<Job>, e: &StoreError, backlog: &mut VecDeque<Job>) {
        let mut kept = Vec::new();
        for j in jobs {
            if j.kept {
                kept.push(j);
            } else if let Some(reply) = j.reply {
                let _ = reply.send(Err(e.clone()));
            }
        }
        for j in kept.into_iter().rev() {
            backlog.push_front(j);
        }
    }

    /// After a group was refused for what it holds: commits each job alone, in order. A job refused
    /// alone hears why (a kept one is dropped, with an error line: retrying cannot change the
    /// answer); an I/O error on the way sends the rest to [`Writer::answer_failed`].
    fn one_by_one(
        &self,
        db: &Database,
        jobs: Vec<Job>,
        backlog: &mut VecDeque<Job>,
        trouble: &mut Option<Trouble>,
    ) {
        let mut jobs = jobs.into_iter();
        while let Some(j) = jobs.next() {
            let ops: Vec<&Op> = j.ops.iter().collect();
            let result = guarded_apply(db, &ops, self.opts.tables);
            drop(ops);
            match result {
                Ok(deltas) => {
                    add_deltas(&self.depths, deltas);
                    if let Some(reply) = j.reply {
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(f) if f.reopen => {
                    self.close_for_reopen(trouble);
                    let rest: Vec<Job> = std::iter::once(j).chain(jobs).collect();
                    self.answer_failed(rest, &f.error, backlog);
                    return;
                }
                Err(f) => {
                    if j.kept {
                        tracing::error!(error = %f.error, changes = j.ops.len(),
                            "{} refuses a change for what it holds (not for lack of disk); it is dropped", self.opts.name);
                    }
                    if let Some(reply) = j.reply {
                        let _ = reply.send(Err(f.error));
                    }
                }
            }
        }
    }

    /// Compacts the file when its free pages pass [`COMPACT_FRAGMENTED_BYTES`] and outweigh what it
    /// holds (or when `force`). Readers wait on the slot's lock meanwhile; a reader still holding
    /// the database from before gets a moment to finish, else compaction waits for the next check.
    fn maybe_compact(&self, force: bool) {
        let Ok(mut slot) = self.slot.write() else {
            return;
        };
        let Some(db) = slot.as_mut() else { return };
        if !force {
            let stats = match db.begin_write() {
                Ok(t) => {
                    let s = t.stats().ok();
                    let _ = t.abort();
                    s
                }
                Err(_) => None,
            };
            let Some(stats) = stats else { return };
            let held = stats.stored_bytes() + stats.metadata_bytes();
            if stats.fragmented_bytes() < COMPACT_FRAGMENTED_BYTES
                || stats.fragmented_bytes() < held
            {
                return;
            }
        }
        // readers clone the handle for the length of one read; wait briefly for the last ones
        let deadline = Instant::now() + Duration::from_millis(500);
        let db = loop {
            if let Some(db) = Arc::get_mut(db) {
                break db;
            }
            if Instant::now() >= deadline {
                tracing::debug!(
                    "{} is being read; compaction waits for the next check",
                    self.opts.name
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let before = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let started = Instant::now();
        match db.compact() {
            Ok(_) => {
                let after = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
                tracing::info!(
                    before_bytes = before,
                    after_bytes = after,
                    took = ?started.elapsed(),
                    "{} was compacted (space of delivered messages given back to the disk)",
                    self.opts.name
                );
            }
            // a read that began before the lock was taken: the next check tries again
            Err(redb::CompactionError::TransactionInProgress) => {
                tracing::debug!(
                    "{} is being read; compaction waits for the next check",
                    self.opts.name
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "{} could not be compacted; it is tried again later", self.opts.name)
            }
        }
    }

    /// Closes and opens the database file again (redb repairs it if the last commit was cut short),
    /// then recounts the queues from it.
    fn reopen(&self) -> Result<(), StoreError> {
        if let Ok(mut g) = self.slot.write() {
            *g = None;
        }
        // readers may still hold the old handle for a moment: open_db waits for them
        let db = Arc::new(open_db(&self.path, self.opts)?);
        let (depths, _) = {
            let txn = db.begin_read().map_err(|e| err("read")(&e))?;
            let q = txn.open_table(QUEUES).map_err(|e| err("open queues")(&e))?;
            count_queues(&q)?
        };
        if let Ok(mut d) = self.depths.lock() {
            *d = depths;
        }
        if let Ok(mut g) = self.slot.write() {
            *g = Some(db);
        }
        Ok(())
    }
}

/// [`apply_refs`], with a panic inside redb (it asserts on states an I/O error leaves behind) turned
/// into a failure that reopens the file: the writer thread must outlive any one commit, or every
/// later write would fail with "the store writer has stopped" until a restart.
fn guarded_apply(db: &Database, ops: &[&Op], tables: &[&str]) -> Result<Deltas, Failed> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply_refs(db, ops, tables))) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Err(Failed {
                error: StoreError(format!(
                    "the database library failed inside a commit ({what}); the file is reopened"
                )),
                reopen: true,
            })
        }
    }
}

type KvTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;

/// The open key-value table `name` of a transaction.
fn table<'a, 't>(
    kvs: &'a mut [(&str, KvTable<'t>)],
    name: &str,
) -> Result<&'a mut KvTable<'t>, Failed> {
    match kvs.iter_mut().find(|(n, _)| *n == name) {
        Some((_, t)) => Ok(t),
        None => Err(Failed {
            error: StoreError(format!(
                "no table {name:?} in this store (a program error: name it in Options::tables)"
            )),
            reopen: false,
        }),
    }
}

/// Applies `ops` in one durable transaction; returns how the queue depths changed.
fn apply_refs(db: &Database, ops: &[&Op], tables: &[&str]) -> Result<Deltas, Failed> {
    let mut deltas: Deltas = HashMap::new();
    let mut txn = db
        .begin_write()
        .map_err(|e| failed("begin write")(e.into()))?;
    txn.set_durability(Durability::Immediate);
    {
        let mut q = txn
            .open_table(QUEUES)
            .map_err(|e| failed("open queues")(e.into()))?;
        let mut kvs = Vec::with_capacity(tables.len());
        for &name in tables {
            let t = txn
                .open_table(kv(name))
                .map_err(|e| failed("open a table")(e.into()))?;
            kvs.push((name, t));
        }
        for op in ops {
            match op {
                Op::Enqueue { key, record } => {
                    let old = q
                        .insert(
                            (key.endpoint.as_str(), key.priority, key.seq),
                            record.as_slice(),
                        )
                        .map_err(|e| failed("enqueue")(e.into()))?;
                    if old.is_none() {
                        *deltas.entry(key.endpoint.clone()).or_insert(0) += 1;
                    }
                }
                Op::Delete { key } => {
                    let old = q
                        .remove((key.endpoint.as_str(), key.priority, key.seq))
                        .map_err(|e| failed("delete")(e.into()))?;
                    if old.is_some() {
                        *deltas.entry(key.endpoint.clone()).or_insert(0) -= 1;
                    }
                }
                Op::Clear { endpoint } => {
                    let range =
                        (endpoint.as_str(), 0u8, 0u64)..=(endpoint.as_str(), u8::MAX, u64::MAX);
                    let n = q
                        .range(range.clone())
                        .map_err(|e| failed("clear")(e.into()))?
                        .count() as u64;
                    if n > 0 {
                        q.retain_in(range, |_, _| false)
                            .map_err(|e| failed("clear")(e.into()))?;
                        *deltas.entry(endpoint.clone()).or_insert(0) -= n as i64;
                    }
                }
                Op::Put {
                    table: name,
                    key,
                    value,
                } => {
                    table(&mut kvs, name)?
                        .insert(key.as_str(), value.as_slice())
                        .map_err(|e| failed("put")(e.into()))?;
                }
                Op::Remove { table: name, key } => {
                    table(&mut kvs, name)?
                        .remove(key.as_str())
                        .map_err(|e| failed("remove")(e.into()))?;
                }
            }
        }
    }
    txn.commit().map_err(|e| failed("commit")(e.into()))?;
    deltas.retain(|_, d| *d != 0);
    Ok(deltas)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::encode_record;
    use crate::record::tests::record;

    const UPSTREAM: &str = "$upstream";

    const OPTS: Options = Options {
        name: "the test store",
        meanwhile: "nothing is acknowledged",
        remedy: "free space on the test's disk",
        thread: "test-store-writer",
        tables: &["sessions"],
    };

    #[tokio::test]
    async fn queue_order_is_priority_then_seq_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        {
            let s = Store::open(&path, OPTS).unwrap();
            let mut ops = Vec::new();
            for (prio, seq) in [(5u8, s.next_seq()), (0, s.next_seq()), (5, s.next_seq())] {
                ops.push(Op::Enqueue {
                    key: QueueKey {
                        endpoint: UPSTREAM.into(),
                        priority: prio,
                        seq,
                    },
                    record: encode_record(&record()),
                });
            }
            s.write(ops).await.unwrap();
            s.write(vec![Op::Put {
                table: "sessions",
                key: "d/m".into(),
                value: b"[1]".to_vec(),
            }])
            .await
            .unwrap();
        }
        // The writer thread may still hold the file for a moment: open() waits for it.
        let s = Store::open(&path, OPTS).unwrap();
        let got: Vec<(u8, u64)> = s
            .scan(UPSTREAM, 10, |_, _| true)
            .unwrap()
            .into_iter()
            .map(|(k, _)| (k.priority, k.seq))
            .collect();
        assert_eq!(got, vec![(0, 2), (5, 1), (5, 3)]);
        assert_eq!(s.next_seq(), 4);
        assert_eq!(
            s.entries("sessions").unwrap(),
            vec![("d/m".to_string(), b"[1]".to_vec())]
        );
        assert_eq!(s.depth(UPSTREAM), 3);
    }

    fn enqueue(s: &Store, size: usize) -> Op {
        let mut r = record();
        r.message.body = bytes::Bytes::from(vec![b'x'; size]);
        Op::Enqueue {
            key: QueueKey {
                endpoint: UPSTREAM.into(),
                priority: 0,
                seq: s.next_seq(),
            },
            record: encode_record(&r),
        }
    }

    #[tokio::test]
    async fn depths_count_only_committed_changes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("hub.redb"), OPTS).unwrap();
        let (a, b) = (enqueue(&s, 10), enqueue(&s, 10));
        let Op::Enqueue { key: ka, .. } = &a else {
            unreachable!()
        };
        let ka = ka.clone();
        s.write(vec![a, b]).await.unwrap();
        assert_eq!(s.depth(UPSTREAM), 2);
        // a delete that races a redelivery: the same key deleted twice counts once
        s.write(vec![Op::Delete { key: ka.clone() }]).await.unwrap();
        s.write(vec![Op::Delete { key: ka }]).await.unwrap();
        assert_eq!(s.depth(UPSTREAM), 1);
        assert_eq!(s.depth("module/X"), 0);
    }

    #[tokio::test]
    async fn clear_empties_one_queue_and_its_count() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb"), OPTS).unwrap();
        let key = |endpoint: &str, priority: u8, seq: u64| QueueKey {
            endpoint: endpoint.into(),
            priority,
            seq,
        };
        let mut ops = Vec::new();
        for (e, p, q) in [("a", 0, 1), ("a", 5, 2), ("b", 0, 3), ("ab", 0, 4)] {
            ops.push(Op::Enqueue {
                key: key(e, p, q),
                record: vec![q as u8],
            });
        }
        s.write(ops).await.unwrap();
        assert_eq!(
            s.raw_entries("a").unwrap(),
            vec![(key("a", 0, 1), vec![1]), (key("a", 5, 2), vec![2])]
        );
        s.write(vec![
            Op::Clear {
                endpoint: "a".into(),
            },
            Op::Clear {
                endpoint: "none".into(),
            },
        ])
        .await
        .unwrap();
        assert!(s.raw_entries("a").unwrap().is_empty());
        assert_eq!((s.depth("a"), s.depth("b"), s.depth("ab")), (0, 1, 1));
        assert_eq!(
            s.raw_entries("ab").unwrap(),
            vec![(key("ab", 0, 4), vec![4])]
        );
        s.close().await.unwrap();
    }

    /// A kept write that the database refuses for what it holds (here a table the store does not
    /// have) cannot succeed by waiting: it is dropped with an error line, and neither blocks nor
    /// fails the writes around it, which commit.
    #[test]
    fn a_refused_kept_write_does_not_block_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let s = Store::open(&path, OPTS).unwrap();
        let put = |table: &'static str, key: &str| Op::Put {
            table,
            key: key.into(),
            value: b"v".to_vec(),
        };
        s.write_kept(vec![put("sessions", "before")]);
        s.write_kept(vec![put("no such table", "x")]);
        s.write_kept(vec![put("sessions", "after")]);
        assert!(s.flush_blocking(Duration::from_secs(10)));
        let keys: Vec<String> = s
            .entries("sessions")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["after", "before"]);
        // and later writes are not held behind it
        s.write_kept(vec![put("sessions", "later")]);
        assert!(s.flush_blocking(Duration::from_secs(10)));
        assert_eq!(s.entries("sessions").unwrap().len(), 3);
        s.close_blocking();
    }

    /// `close_blocking` (the spool's `Drop`) commits what was handed over before it, then releases
    /// the file.
    #[test]
    fn close_blocking_commits_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        for round in 0..20u64 {
            let s = Store::open(&path, OPTS).unwrap();
            s.write_later(vec![Op::Enqueue {
                key: QueueKey {
                    endpoint: "q".into(),
                    priority: 0,
                    seq: round,
                },
                record: vec![1],
            }]);
            s.close_blocking();
        }
        let s = Store::open(&path, OPTS).unwrap();
        assert_eq!(
            s.raw_entries("q").unwrap().len(),
            20,
            "no pending write lost"
        );
        s.close_blocking();
    }

    use crate::test_util::SmallDisk;

    /// Kept writes on a full disk: none fails, none is skipped; they wait in memory (a flush says
    /// they are not on disk yet) and are committed in order once there is room, without a restart.
    #[test]
    fn kept_writes_wait_out_a_full_disk_in_order() {
        let Some(disk) = SmallDisk::mount("3m") else {
            return;
        };
        let path = disk.path().join("state.redb");
        let s = Store::open(&path, OPTS).unwrap();
        let big = |seq: u64| Op::Enqueue {
            key: QueueKey {
                endpoint: "c".into(),
                priority: 0,
                seq,
            },
            record: vec![b'x'; 400_000],
        };
        s.write_kept(vec![big(1)]);
        assert!(s.flush_blocking(Duration::from_secs(10)));
        let filler = disk.fill();
        for seq in 2..=4 {
            s.write_kept(vec![big(seq)]);
        }
        s.write_kept(vec![Op::Put {
            table: "sessions",
            key: "c".into(),
            value: b"after".to_vec(),
        }]);
        assert!(
            !s.flush_blocking(Duration::from_secs(2)),
            "not on disk while it is full"
        );
        std::fs::remove_file(&filler).unwrap();
        assert!(
            s.flush_blocking(Duration::from_secs(30)),
            "written once space returned"
        );
        let seqs: Vec<u64> = s
            .raw_entries("c")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4], "every change written, none skipped");
        assert_eq!(s.depth("c"), 4);
        assert_eq!(
            s.entries("sessions").unwrap(),
            vec![("c".to_string(), b"after".to_vec())]
        );
        s.close_blocking();
    }

    /// Writes until one succeeds (the store reopened itself), for at most 20 s.
    async fn write_until_it_succeeds(s: &Store) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match s.write(vec![enqueue(s, 10)]).await {
                Ok(()) => return,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the store did not recover: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// A full disk: commits fail (nothing is acknowledged), the store refuses further writes until
    /// the space comes back, then it reopens itself and takes writes again, with nothing lost.
    #[tokio::test]
    async fn a_full_disk_fails_commits_and_the_store_recovers_when_space_returns() {
        let Some(disk) = SmallDisk::mount("3m") else {
            return;
        };
        let mnt = disk.path().to_path_buf();
        let s = Store::open(&mnt.join("hub.redb"), OPTS).unwrap();
        s.write(vec![enqueue(&s, 1000)]).await.unwrap();
        let filler = disk.fill();
        // commits that need room fail, and are reported as failures
        let mut failed = false;
        for _ in 0..20 {
            if s.write(vec![enqueue(&s, 200_000)]).await.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "a commit on a full disk must fail");
        assert!(!s.is_writable());
        let before = s.depth(UPSTREAM);
        assert!(s.write(vec![enqueue(&s, 10)]).await.is_err());
        assert_eq!(
            s.depth(UPSTREAM),
            before,
            "a failed commit changes no count"
        );
        // space comes back: the store reopens itself and takes writes again, without a restart
        std::fs::remove_file(&filler).unwrap();
        write_until_it_succeeds(&s).await;
        assert!(s.is_writable());
        assert_eq!(s.depth(UPSTREAM), before + 1);
        let n = s.scan(UPSTREAM, 1000, |_, _| true).unwrap().len() as u64;
        assert_eq!(n, before + 1, "the count is what the file holds");
        s.close().await.unwrap();
    }

    /// The chaos harness's disk-full failure: publishes, deliveries and `$upstream` removals write
    /// at once while the disk fills. The hub had a second committer (the `$upstream` removal
    /// committed from its own thread); when it committed between the writer's failed commit and its
    /// reopen, redb panicked on its own assertion and the `$upstream` task died, so nothing more went
    /// upstream after the disk had room again. Now every write goes through the one writer: under the
    /// same storm every write either commits or fails with an error, the store reopens itself once
    /// there is room, and every entry whose write was acknowledged is in the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writers_racing_a_full_disk_never_break_the_store() {
        let Some(disk) = SmallDisk::mount("4m") else {
            return;
        };
        let s = Store::open(&disk.path().join("hub.redb"), OPTS).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let (s, stop) = (s.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                // keys this writer knows are in the file (acknowledged and not deleted)
                let mut held: Vec<QueueKey> = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let op = enqueue(&s, 10_000);
                    let Op::Enqueue { key, .. } = &op else {
                        unreachable!()
                    };
                    let key = key.clone();
                    if s.write(vec![op]).await.is_ok() {
                        held.push(key);
                    }
                    // every other round, remove one (the `$upstream` sink's acknowledgement), and
                    // always past 10 held, so what is held stays well below the disk's size; a
                    // failed removal may or may not be in the file, so the key is not checked
                    if ((i + w) % 2 == 0 || held.len() > 10) && !held.is_empty() {
                        let k = held.remove(0);
                        let _ = s.write(vec![Op::Delete { key: k }]).await;
                    }
                    tokio::task::yield_now().await;
                }
                held
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let filler = disk.fill();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        std::fs::remove_file(&filler).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        let mut held = Vec::new();
        for t in tasks {
            held.extend(t.await.expect("a writer task panicked"));
        }
        write_until_it_succeeds(&s).await;
        let in_file: std::collections::HashSet<u64> = s
            .scan(UPSTREAM, usize::MAX, |_, _| true)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k.seq)
            .collect();
        for k in &held {
            assert!(
                in_file.contains(&k.seq),
                "acknowledged entry {} was lost",
                k.seq
            );
        }
        s.close().await.unwrap();
    }

    /// The soak's finding: after an upstream outage drained, the file kept the backlog's size
    /// (redb only gives back space at the end of the file). Compaction gives it back; the data
    /// left in it is intact.
    #[tokio::test]
    async fn compaction_gives_back_the_space_of_a_drained_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let s = Store::open(&path, OPTS).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let mut keys = Vec::new();
        for _ in 0..40 {
            let batch: Vec<Op> = (0..50).map(|_| enqueue(&s, 4000)).collect();
            for op in &batch {
                if let Op::Enqueue { key, .. } = op {
                    keys.push(key.clone());
                }
            }
            s.write(batch).await.unwrap();
        }
        let keep = keys.pop().unwrap();
        let full = size();
        assert!(full > 8_000_000, "the backlog takes room: {full}");
        // drained, in the order a sink removes messages (oldest first)
        for chunk in keys.chunks(100) {
            let ops = chunk
                .iter()
                .map(|k| Op::Delete { key: k.clone() })
                .collect();
            s.write(ops).await.unwrap();
        }
        let drained = size();
        s.compact().await.unwrap();
        let compacted = size();
        eprintln!(
            "2,000 messages of 4 KB: {full} bytes; drained: {drained}; compacted: {compacted}"
        );
        assert!(
            compacted < full / 4,
            "compaction gave back the space: {full} -> {compacted}"
        );
        assert_eq!(s.depth(UPSTREAM), 1);
        let left = s.scan(UPSTREAM, 10, |_, _| true).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, keep);
        s.write(vec![enqueue(&s, 10)]).await.unwrap();
        s.close().await.unwrap();
        // and it opens again
        let s = Store::open(&path, OPTS).unwrap();
        assert_eq!(s.depth(UPSTREAM), 2);
    }
}
