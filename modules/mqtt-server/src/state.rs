//! Optional persistence of device sessions and retained messages (`state_path`, a redb file), so that
//! a restart of the module, even a `kill -9`, keeps them.
//!
//! What is kept: every persistent session (MQTT 3.1.1 clean session 0, MQTT 5 session expiry above 0)
//! with its subscriptions (shared ones and subscription identifiers included), its expiry, the time its
//! client left, its QoS 2 packet ids awaiting release, and the QoS 1/2 messages queued for it while its
//! client was away; and every retained message. Not kept: messages in flight to a connected client (on
//! SIGTERM they go back to the session's queue first and are kept; a `kill -9` loses those few, which
//! MQTT allows, as their publishers were acknowledged by edgeHub, not by the subscriber), pending wills
//! and sessions that end with their connection. A session whose expiry passed while the module was down
//! is dropped at the next start.
//!
//! The broker sends each change as a [`StateOp`] to one writer thread, which commits whatever is waiting
//! in one durable transaction (group commit): a queued message is on disk within milliseconds of being
//! queued, without the broker's lock or a device connection ever waiting for the disk. A failing disk
//! is logged (once a minute at most) and costs persistence only; the server goes on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use rumqttc::mqttbytes::QoS;
use serde::{Deserialize, Serialize};

use crate::codec::{Pub, PubProps, SubFilter};
use crate::Error;

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const QUEUED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queued");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The on-disk format; a file of another version is refused with a clear error.
const FORMAT_VERSION: u64 = 1;

/// One change to the persisted state.
#[derive(Debug)]
pub enum StateOp {
    /// A persistent session's metadata (subscriptions, expiry, ...), replacing the stored one.
    Session {
        client: String,
        meta: Vec<u8>,
    },
    /// The session ended: its metadata and queued messages go.
    DropSession {
        client: String,
    },
    /// A message queued for a client that is away.
    Queue {
        client: String,
        seq: u64,
        record: Vec<u8>,
    },
    /// The client's queued messages were handed to its new connection.
    Unqueue {
        client: String,
    },
    Retain {
        topic: String,
        record: Vec<u8>,
    },
    Unretain {
        topic: String,
    },
    /// Answered once everything sent before it is committed.
    Flush(std_mpsc::Sender<()>),
}

/// Where the broker sends its changes; cheap to clone.
#[derive(Clone, Debug)]
pub struct StateSink {
    tx: std_mpsc::Sender<StateOp>,
}

impl StateSink {
    /// Sends a change to the writer (never blocks).
    pub fn send(&self, op: StateOp) {
        let _ = self.tx.send(op);
    }

    /// Waits (at most `within`) until every change sent so far is on disk.
    pub fn flush(&self, within: Duration) -> bool {
        let (tx, rx) = std_mpsc::channel();
        if self.tx.send(StateOp::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(within).is_ok()
    }
}

/// A persistent session as loaded at start.
#[derive(Debug)]
pub struct LoadedSession {
    pub client: String,
    pub subs: Vec<SubFilter>,
    pub expiry: Duration,
    /// How long ago its client left (`None`: it was connected when the module stopped; its expiry
    /// counts from this start).
    pub left_ago: Option<Duration>,
    pub qos2: Vec<u16>,
    /// Messages queued for it, in order, with their sequence numbers.
    pub queued: Vec<(u64, Pub)>,
}

/// What a previous run left.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sessions: Vec<LoadedSession>,
    pub retained: Vec<Pub>,
}

#[derive(Serialize, Deserialize)]
struct SubRecord {
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    id: Option<usize>,
}

#[derive(Serialize, Deserialize)]
struct SessionRecord {
    subs: Vec<SubRecord>,
    expiry_secs: u64,
    /// Milliseconds since the Unix epoch when the client left; `None` while connected.
    left_at_ms: Option<u64>,
    qos2: Vec<u16>,
}

/// A message's fields other than the payload (stored as a JSON line before the payload bytes).
#[derive(Serialize, Deserialize)]
struct PubHeader {
    topic: String,
    qos: u8,
    retain: bool,
    payload_format_utf8: Option<bool>,
    /// Milliseconds since the Unix epoch when the message expires.
    expires_at_ms: Option<u64>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    user_properties: Vec<(String, String)>,
    subscription_ids: Vec<usize>,
    shared: Option<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn qos_from(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Encodes a session's metadata.
pub fn encode_session(
    subs: &BTreeMap<String, SubFilter>,
    expiry: Duration,
    left_ago: Option<Duration>,
    qos2: &[u16],
) -> Vec<u8> {
    let rec = SessionRecord {
        subs: subs
            .values()
            .map(|f| SubRecord {
                filter: f.filter.clone(),
                qos: f.qos as u8,
                no_local: f.no_local,
                retain_as_published: f.retain_as_published,
                retain_handling: f.retain_handling,
                id: f.id,
            })
            .collect(),
        expiry_secs: expiry.as_secs(),
        left_at_ms: left_ago.map(|a| now_ms().saturating_sub(a.as_millis() as u64)),
        qos2: qos2.to_vec(),
    };
    serde_json::to_vec(&rec).unwrap_or_default()
}

/// Encodes a message (JSON header, newline, payload).
pub fn encode_pub(p: &Pub) -> Vec<u8> {
    let now = std::time::Instant::now();
    let header = PubHeader {
        topic: p.topic.clone(),
        qos: p.qos as u8,
        retain: p.retain,
        payload_format_utf8: p.props.payload_format_utf8,
        expires_at_ms: p
            .props
            .expires_at
            .map(|at| now_ms() + at.saturating_duration_since(now).as_millis() as u64),
        content_type: p.props.content_type.clone(),
        response_topic: p.props.response_topic.clone(),
        correlation_data: p.props.correlation_data.as_ref().map(|c| c.to_vec()),
        user_properties: p.props.user_properties.clone(),
        subscription_ids: p.props.subscription_ids.clone(),
        shared: p.props.shared.clone(),
    };
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(&p.payload);
    out
}

/// Decodes a record written by [`encode_pub`]; `None` for a damaged one.
pub fn decode_pub(record: &[u8]) -> Option<Pub> {
    let nl = record.iter().position(|&b| b == b'\n')?;
    let h: PubHeader = serde_json::from_slice(&record[..nl]).ok()?;
    let now_wall = now_ms();
    let now = std::time::Instant::now();
    Some(Pub {
        topic: h.topic,
        payload: Bytes::copy_from_slice(&record[nl + 1..]),
        qos: qos_from(h.qos),
        retain: h.retain,
        dup: false,
        pkid: 0,
        props: PubProps {
            payload_format_utf8: h.payload_format_utf8,
            // an expiry that passed while the module was down makes the message expire at once
            expires_at: h
                .expires_at_ms
                .map(|at| now + Duration::from_millis(at.saturating_sub(now_wall))),
            message_expiry_secs: None,
            content_type: h.content_type,
            response_topic: h.response_topic,
            correlation_data: h.correlation_data.map(Bytes::from),
            user_properties: h.user_properties,
            topic_alias: None,
            subscription_ids: h.subscription_ids,
            shared: h.shared,
        },
    })
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        reason: format!("session state database: {e}"),
    }
}

/// Opens (or creates) the state file, reads what a previous run left, and starts the writer thread.
pub fn open(path: &Path) -> Result<(StateSink, Loaded), Error> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| db_err(path, e))?;
        }
    }
    let db = Database::create(path).map_err(|e| db_err(path, e))?;
    {
        let w = db.begin_write().map_err(|e| db_err(path, e))?;
        {
            let mut meta = w.open_table(META).map_err(|e| db_err(path, e))?;
            let version = meta
                .get("format")
                .map_err(|e| db_err(path, e))?
                .map(|v| v.value());
            match version {
                None => {
                    meta.insert("format", FORMAT_VERSION)
                        .map_err(|e| db_err(path, e))?;
                }
                Some(FORMAT_VERSION) => {}
                Some(v) => {
                    return Err(db_err(
                        path,
                        format!("format version {v}, this server reads {FORMAT_VERSION}; move the file away to start with no stored sessions"),
                    ))
                }
            }
            w.open_table(SESSIONS).map_err(|e| db_err(path, e))?;
            w.open_table(QUEUED).map_err(|e| db_err(path, e))?;
            w.open_table(RETAINED).map_err(|e| db_err(path, e))?;
        }
        w.commit().map_err(|e| db_err(path, e))?;
    }
    let loaded = load(&db).map_err(|e| db_err(path, e))?;
    let (tx, rx) = std_mpsc::channel();
    std::thread::Builder::new()
        .name("mqtt-state-writer".into())
        .spawn({
            let path = path.to_path_buf();
            move || writer(path, db, rx)
        })
        .map_err(|e| db_err(path, e))?;
    Ok((StateSink { tx }, loaded))
}

// redb's error is large, but these run once per start or per group commit, never per packet
#[allow(clippy::result_large_err)]
fn load(db: &Database) -> Result<Loaded, redb::Error> {
    let r = db.begin_read()?;
    let sessions_t = r.open_table(SESSIONS)?;
    let queued_t = r.open_table(QUEUED)?;
    let retained_t = r.open_table(RETAINED)?;
    let now = now_ms();
    let mut out = Loaded::default();
    for item in sessions_t.iter()? {
        let (k, v) = item?;
        let client = k.value().to_string();
        let Ok(rec) = serde_json::from_slice::<SessionRecord>(v.value()) else {
            tracing::warn!(client = %client, "ignoring a stored session that cannot be read");
            continue;
        };
        let mut queued = Vec::new();
        for q in queued_t.range((client.as_str(), 0u64)..=(client.as_str(), u64::MAX))? {
            let (k, v) = q?;
            match decode_pub(v.value()) {
                Some(p) => queued.push((k.value().1, p)),
                None => {
                    tracing::warn!(client = %client, "ignoring a stored message that cannot be read")
                }
            }
        }
        out.sessions.push(LoadedSession {
            client,
            subs: rec
                .subs
                .into_iter()
                .map(|s| SubFilter {
                    filter: s.filter,
                    qos: qos_from(s.qos),
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                    retain_handling: s.retain_handling,
                    id: s.id,
                })
                .collect(),
            expiry: Duration::from_secs(rec.expiry_secs),
            left_ago: rec
                .left_at_ms
                .map(|at| Duration::from_millis(now.saturating_sub(at))),
            qos2: rec.qos2,
            queued,
        });
    }
    for item in retained_t.iter()? {
        let (_, v) = item?;
        if let Some(p) = decode_pub(v.value()) {
            out.retained.push(p);
        }
    }
    Ok(out)
}

/// Commits the broker's changes in order, in groups. A failed commit keeps its changes and is tried
/// again (after an I/O error the file is closed and opened again, as redb requires) with a back-off of
/// 250 ms doubling to 10 s, so the file never skips a change; a flush is answered only once what came
/// before it is on disk.
fn writer(path: PathBuf, db: Database, rx: std_mpsc::Receiver<StateOp>) {
    let mut db = Some(db);
    let mut pending: Vec<StateOp> = Vec::new();
    let mut flushes: Vec<std_mpsc::Sender<()>> = Vec::new();
    let mut wait = Duration::from_millis(250);
    // set while commits fail: when to try again
    let mut retry_at: Option<std::time::Instant> = None;
    let mut last_error_log: Option<std::time::Instant> = None;
    let mut open = true;
    while open || !pending.is_empty() {
        let next = match retry_at {
            None => rx
                .recv()
                .map_err(|_| std_mpsc::RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(std::time::Instant::now())),
        };
        match next {
            Ok(StateOp::Flush(tx)) => flushes.push(tx),
            Ok(op) => pending.push(op),
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                open = false;
                if retry_at.is_some() {
                    // the server is gone and the disk still refuses: nothing more can be done
                    break;
                }
            }
        }
        while pending.len() < 4096 {
            match rx.try_recv() {
                Ok(StateOp::Flush(tx)) => flushes.push(tx),
                Ok(op) => pending.push(op),
                Err(_) => break,
            }
        }
        if retry_at.is_some_and(|at| std::time::Instant::now() < at) {
            continue;
        }
        if db.is_none() {
            db = Database::create(&path).ok();
        }
        let result = match &db {
            Some(d) => apply(d, &pending),
            None => Err(redb::Error::PreviousIo),
        };
        match result {
            Ok(()) => {
                pending.clear();
                for f in flushes.drain(..) {
                    let _ = f.send(());
                }
                if retry_at.take().is_some() {
                    tracing::info!("device sessions are saved again (state_path)");
                }
                wait = Duration::from_millis(250);
            }
            Err(e) => {
                if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
                    // redb refuses every write after an I/O error until the file is opened again
                    db = None;
                }
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::error!(error = %e, pending = pending.len(), "cannot save device sessions and retained messages (state_path); they live on in memory and are saved once the disk takes them. Check the disk");
                    last_error_log = Some(std::time::Instant::now());
                }
                retry_at = Some(std::time::Instant::now() + wait);
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[allow(clippy::result_large_err)]
fn apply(db: &Database, ops: &[StateOp]) -> Result<(), redb::Error> {
    let mut w = db.begin_write()?;
    w.set_durability(Durability::Immediate);
    {
        let mut sessions = w.open_table(SESSIONS)?;
        let mut queued = w.open_table(QUEUED)?;
        let mut retained = w.open_table(RETAINED)?;
        for op in ops {
            match op {
                StateOp::Session { client, meta } => {
                    sessions.insert(client.as_str(), meta.as_slice())?;
                }
                StateOp::DropSession { client } => {
                    sessions.remove(client.as_str())?;
                    queued.retain_in(
                        (client.as_str(), 0u64)..=(client.as_str(), u64::MAX),
                        |_, _| false,
                    )?;
                }
                StateOp::Queue {
                    client,
                    seq,
                    record,
                } => {
                    queued.insert((client.as_str(), *seq), record.as_slice())?;
                }
                StateOp::Unqueue { client } => {
                    queued.retain_in(
                        (client.as_str(), 0u64)..=(client.as_str(), u64::MAX),
                        |_, _| false,
                    )?;
                }
                StateOp::Retain { topic, record } => {
                    retained.insert(topic.as_str(), record.as_slice())?;
                }
                StateOp::Unretain { topic } => {
                    retained.remove(topic.as_str())?;
                }
                StateOp::Flush(_) => {}
            }
        }
    }
    w.commit()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_their_properties() {
        let p = Pub {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"\x00\xffbody"),
            qos: QoS::ExactlyOnce,
            retain: true,
            dup: true,
            pkid: 9,
            props: PubProps {
                content_type: Some("text/plain".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: vec![("k".into(), "v".into())],
                subscription_ids: vec![3],
                shared: Some("$share/g/a/#".into()),
                ..PubProps::default()
            },
        };
        let q = decode_pub(&encode_pub(&p)).unwrap();
        assert_eq!(
            (q.topic.as_str(), &q.payload[..]),
            ("a/b", &b"\x00\xffbody"[..])
        );
        assert_eq!(
            (q.qos, q.retain, q.dup, q.pkid),
            (QoS::ExactlyOnce, true, false, 0)
        );
        assert_eq!(q.props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(q.props.subscription_ids, vec![3]);
        assert_eq!(q.props.shared.as_deref(), Some("$share/g/a/#"));
        assert!(decode_pub(b"garbage").is_none());
    }

    #[test]
    fn a_file_of_another_format_version_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(META).unwrap().insert("format", 99).unwrap();
            w.commit().unwrap();
        }
        let e = open(&path).unwrap_err().to_string();
        assert!(e.contains("format version 99"), "{e}");
    }

    #[test]
    fn sessions_queues_and_retained_messages_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let mut subs = BTreeMap::new();
        subs.insert(
            "t/#".to_string(),
            SubFilter {
                filter: "t/#".into(),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
                id: Some(7),
            },
        );
        let msg = |t: &str| Pub {
            topic: t.into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: false,
            pkid: 0,
            props: PubProps::default(),
        };
        {
            let (sink, loaded) = open(&path).unwrap();
            assert!(loaded.sessions.is_empty());
            sink.send(StateOp::Session {
                client: "c1".into(),
                meta: encode_session(&subs, Duration::from_secs(3600), Some(Duration::ZERO), &[5]),
            });
            for (seq, t) in [(1, "t/1"), (2, "t/2")] {
                sink.send(StateOp::Queue {
                    client: "c1".into(),
                    seq,
                    record: encode_pub(&msg(t)),
                });
            }
            sink.send(StateOp::Session {
                client: "gone".into(),
                meta: encode_session(&subs, Duration::from_secs(1), None, &[]),
            });
            sink.send(StateOp::DropSession {
                client: "gone".into(),
            });
            sink.send(StateOp::Retain {
                topic: "r".into(),
                record: encode_pub(&msg("r")),
            });
            assert!(sink.flush(Duration::from_secs(10)));
        }
        // the writer thread ends with its last sender; open() may have to wait for the file
        let mut reopened = None;
        for _ in 0..100 {
            match open(&path) {
                Ok(r) => {
                    reopened = Some(r);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let (_sink, loaded) = reopened.unwrap();
        assert_eq!(loaded.sessions.len(), 1);
        let s = &loaded.sessions[0];
        assert_eq!(s.client, "c1");
        assert_eq!(s.subs[0].id, Some(7));
        assert_eq!(s.expiry, Duration::from_secs(3600));
        assert_eq!(s.qos2, vec![5]);
        assert!(s.left_ago.unwrap() < Duration::from_secs(60));
        let topics: Vec<&str> = s.queued.iter().map(|(_, p)| p.topic.as_str()).collect();
        assert_eq!(topics, vec!["t/1", "t/2"]);
        assert_eq!(loaded.retained.len(), 1);
    }

    /// A full disk: changes wait in memory (a flush says they are not on disk) and are written, none
    /// skipped, once space returns. Needs root for a small tmpfs (CI runs as root).
    #[test]
    fn changes_wait_out_a_full_disk_and_none_is_skipped() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: mounting a small tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("disk");
        std::fs::create_dir(&mnt).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.0)
                    .status();
            }
        }
        let _unmount = Unmount(mnt.clone());
        let path = mnt.join("state.redb");
        let big = |seq: u64| StateOp::Queue {
            client: "c".into(),
            seq,
            record: vec![b'x'; 400_000],
        };
        {
            let (sink, _) = open(&path).unwrap();
            let filler = mnt.join("filler");
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&filler).unwrap();
                let chunk = vec![0u8; 64 * 1024];
                while f.write_all(&chunk).is_ok() {}
                let _ = f.sync_all();
            }
            for seq in 1..=3 {
                sink.send(big(seq));
            }
            assert!(
                !sink.flush(Duration::from_secs(2)),
                "not on disk while it is full"
            );
            std::fs::remove_file(&filler).unwrap();
            assert!(
                sink.flush(Duration::from_secs(30)),
                "written once space returned"
            );
        }
        // the writer thread ends with its last sender; opening may have to wait for the file
        let mut db = None;
        for _ in 0..100 {
            match Database::create(&path) {
                Ok(d) => {
                    db = Some(d);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let db = db.unwrap();
        let r = db.begin_read().unwrap();
        let t = r.open_table(QUEUED).unwrap();
        let seqs: Vec<u64> = t
            .range(("c", 0u64)..=("c", u64::MAX))
            .unwrap()
            .map(|e| e.unwrap().0.value().1)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3], "every change written, none skipped");
    }
}
