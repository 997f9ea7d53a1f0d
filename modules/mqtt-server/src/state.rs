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
//! The file is an edge-store [`Store`] (the block the hub's store and the spool are made of): the
//! broker sends each change as a [`StateOp`], which becomes store writes that no failed commit drops
//! ([`Store::write_kept`]). The store's one writer thread commits whatever is waiting in one durable
//! transaction (group commit): a queued message is on disk within milliseconds of being queued,
//! without the broker's lock or a device connection ever waiting for the disk. On a full disk the
//! changes wait in memory, in order, and are committed once there is room (the store reopens the file
//! by itself); it is logged, and costs persistence only: the server goes on. After a drained backlog
//! the store gives the space back (compaction).
//!
//! Layout (format 2): key-value tables `sessions` (client id -> session record, JSON) and `retained`
//! (topic -> message), and one queue per client (`(client, 0, seq) -> message`), a message being a
//! JSON header line and the payload ([`encode_pub`]); table `meta` holds the format version. Format 1
//! (before edge-store) kept the queued messages in a table `queued` of their own: opening such a file
//! moves them into the queues in the commit that opens it. Another version is refused clearly.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edge_store::{Op, Options, QueueKey, Store, StoreError};
use redb::{ReadableTable, TableDefinition};
use rumqttc::mqttbytes::QoS;
use serde::{Deserialize, Serialize};

use crate::codec::{Pub, PubProps, SubFilter};
use crate::Error;

const SESSIONS: &str = "sessions";
const RETAINED: &str = "retained";
/// Format 1's queue table, read once to move its messages into the store's queues.
const QUEUED_V1: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queued");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The on-disk format; format 1 is moved to it when opened, another version is refused.
const FORMAT_VERSION: u64 = 2;

const OPTIONS: Options = Options {
    name: "the device session state (state_path)",
    meanwhile: "device sessions and retained messages live on in memory and are saved, in order, once the disk takes them",
    remedy: "free space on the disk that holds state_path",
    thread: "mqtt-state-writer",
    tables: &[SESSIONS, RETAINED],
};

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
}

impl StateOp {
    /// The store writes of this change.
    fn into_ops(self) -> Vec<Op> {
        match self {
            StateOp::Session { client, meta } => vec![Op::Put {
                table: SESSIONS,
                key: client,
                value: meta,
            }],
            StateOp::DropSession { client } => vec![
                Op::Remove {
                    table: SESSIONS,
                    key: client.clone(),
                },
                Op::Clear { endpoint: client },
            ],
            StateOp::Queue {
                client,
                seq,
                record,
            } => vec![Op::Enqueue {
                key: QueueKey {
                    endpoint: client,
                    priority: 0,
                    seq,
                },
                record,
            }],
            StateOp::Unqueue { client } => vec![Op::Clear { endpoint: client }],
            StateOp::Retain { topic, record } => vec![Op::Put {
                table: RETAINED,
                key: topic,
                value: record,
            }],
            StateOp::Unretain { topic } => vec![Op::Remove {
                table: RETAINED,
                key: topic,
            }],
        }
    }
}

/// Where the broker sends its changes; cheap to clone.
#[derive(Clone)]
pub struct StateSink {
    store: Store,
}

impl std::fmt::Debug for StateSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateSink")
    }
}

impl StateSink {
    /// Hands a change to the store's writer (never blocks; never dropped by a failed commit).
    pub fn send(&self, op: StateOp) {
        self.store.write_kept(op.into_ops());
    }

    /// Waits (at most `within`) until every change sent so far is on disk. Blocks the thread.
    pub fn flush(&self, within: Duration) -> bool {
        self.store.flush_blocking(within)
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

/// Opens (or creates) the state file, moves a format-1 file's queued messages into the store's
/// queues, reads what a previous run left, and starts the store's writer.
pub fn open(path: &Path) -> Result<(StateSink, Loaded), Error> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| db_err(path, e))?;
        }
    }
    let store = Store::open_with(path, OPTIONS, upgrade).map_err(|e| db_err(path, e))?;
    let loaded = load(&store).map_err(|e| db_err(path, e))?;
    Ok((StateSink { store }, loaded))
}

/// Runs in the transaction that opens the file: checks the format version, and moves a format-1
/// file's `queued` table (`(client, seq) -> message`) into the store's queues (`(client, 0, seq)`),
/// in the same commit.
fn upgrade(txn: &redb::WriteTransaction) -> Result<Vec<(QueueKey, Vec<u8>)>, StoreError> {
    let e =
        |what: &'static str| move |e: &dyn std::fmt::Display| StoreError(format!("{what}: {e}"));
    let mut meta = txn
        .open_table(META)
        .map_err(|x| e("open the format table")(&x))?;
    let version = meta
        .get("format")
        .map_err(|x| e("read the format version")(&x))?
        .map(|v| v.value());
    let mut moved = Vec::new();
    match version {
        Some(FORMAT_VERSION) => return Ok(moved),
        // a new file
        None => {}
        Some(1) => {
            let queued = txn
                .open_table(QUEUED_V1)
                .map_err(|x| e("open the format-1 queue")(&x))?;
            for item in queued
                .iter()
                .map_err(|x| e("read the format-1 queue")(&x))?
            {
                let (k, v) = item.map_err(|x| e("read the format-1 queue")(&x))?;
                let (client, seq) = k.value();
                moved.push((
                    QueueKey {
                        endpoint: client.to_string(),
                        priority: 0,
                        seq,
                    },
                    v.value().to_vec(),
                ));
            }
            drop(queued);
            txn.delete_table(QUEUED_V1)
                .map_err(|x| e("drop the format-1 queue")(&x))?;
            tracing::info!(
                messages = moved.len(),
                "the session state file was of format 1; its queued messages moved to format {FORMAT_VERSION}"
            );
        }
        Some(v) => {
            return Err(StoreError(format!(
                "format version {v}, this server reads 1 and {FORMAT_VERSION}; move the file away to start with no stored sessions"
            )))
        }
    }
    meta.insert("format", FORMAT_VERSION)
        .map_err(|x| e("write the format version")(&x))?;
    Ok(moved)
}

fn load(store: &Store) -> Result<Loaded, StoreError> {
    let now = now_ms();
    let mut out = Loaded::default();
    for (client, v) in store.entries(SESSIONS)? {
        let Ok(rec) = serde_json::from_slice::<SessionRecord>(&v) else {
            tracing::warn!(client = %client, "ignoring a stored session that cannot be read");
            continue;
        };
        let mut queued = Vec::new();
        for (k, v) in store.raw_entries(&client)? {
            match decode_pub(&v) {
                Some(p) => queued.push((k.seq, p)),
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
    for (_, v) in store.entries(RETAINED)? {
        if let Some(p) = decode_pub(&v) {
            out.retained.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A QoS 1 message on topic `t` with a payload of `size` bytes.
    fn message(t: &str, size: usize) -> Pub {
        Pub {
            topic: t.into(),
            payload: Bytes::from(vec![b'x'; size]),
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: false,
            pkid: 0,
            props: PubProps::default(),
        }
    }

    fn msg(t: &str) -> Pub {
        message(t, 1)
    }

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
            let db = redb::Database::create(&path).unwrap();
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
        let Some(disk) = edge_hub::test_util::SmallDisk::mount("8m") else {
            return;
        };
        let path = disk.path().join("state.redb");
        let big = |seq: u64| StateOp::Queue {
            client: "c".into(),
            seq,
            record: encode_pub(&message(&format!("t/{seq}"), 400_000)),
        };
        {
            let (sink, _) = open(&path).unwrap();
            sink.send(StateOp::Session {
                client: "c".into(),
                meta: encode_session(&BTreeMap::new(), Duration::from_secs(3600), None, &[]),
            });
            let filler = disk.fill();
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
        // the writer thread ends with its last sender; opening waits for the file
        let (_sink, loaded) = open(&path).unwrap();
        let seqs: Vec<u64> = loaded.sessions[0].queued.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 2, 3], "every change written, none skipped");
    }

    /// A file written before the state moved to edge-store (format 1: queued messages in a table of
    /// their own) opens with everything in it, and is format 2 afterwards.
    #[test]
    fn a_format_1_file_is_read_and_moved_to_format_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            // the tables and records as format 1 wrote them
            let db = redb::Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                w.open_table(META).unwrap().insert("format", 1).unwrap();
                let sessions: TableDefinition<&str, &[u8]> = TableDefinition::new(SESSIONS);
                let retained: TableDefinition<&str, &[u8]> = TableDefinition::new(RETAINED);
                let meta = encode_session(&BTreeMap::new(), Duration::from_secs(60), None, &[3]);
                let mut s = w.open_table(sessions).unwrap();
                s.insert("c1", meta.as_slice()).unwrap();
                s.insert("c2", meta.as_slice()).unwrap();
                let mut q = w.open_table(QUEUED_V1).unwrap();
                for (client, seq, t) in [("c1", 7, "a"), ("c1", 9, "b"), ("c2", 8, "c")] {
                    q.insert((client, seq), encode_pub(&msg(t)).as_slice())
                        .unwrap();
                }
                w.open_table(retained)
                    .unwrap()
                    .insert("r", encode_pub(&msg("r")).as_slice())
                    .unwrap();
            }
            w.commit().unwrap();
        }
        let check = |loaded: &Loaded| {
            let queued: Vec<(String, Vec<(u64, String)>)> = loaded
                .sessions
                .iter()
                .map(|s| {
                    let q = s
                        .queued
                        .iter()
                        .map(|(n, p)| (*n, p.topic.clone()))
                        .collect();
                    (s.client.clone(), q)
                })
                .collect();
            assert_eq!(
                queued,
                vec![
                    ("c1".into(), vec![(7, "a".into()), (9, "b".into())]),
                    ("c2".into(), vec![(8, "c".into())])
                ]
            );
            assert_eq!(loaded.sessions[0].qos2, vec![3]);
            assert_eq!(loaded.retained.len(), 1);
        };
        {
            let (sink, loaded) = open(&path).unwrap();
            check(&loaded);
            // a change after the move lands in the new layout
            sink.send(StateOp::Unqueue {
                client: "c2".into(),
            });
            assert!(sink.flush(Duration::from_secs(10)));
        }
        let (_sink, loaded) = open(&path).unwrap();
        assert!(loaded.sessions[1].queued.is_empty());
        assert_eq!(loaded.sessions[0].queued.len(), 2);
        drop(_sink);
        // format 2 now: the old table is gone (the writer thread may hold the file for a moment)
        let mut db = None;
        for _ in 0..100 {
            match redb::Database::create(&path) {
                Ok(d) => {
                    db = Some(d);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let db = db.unwrap();
        let r = db.begin_read().unwrap();
        assert_eq!(
            r.open_table(META)
                .unwrap()
                .get("format")
                .unwrap()
                .unwrap()
                .value(),
            FORMAT_VERSION
        );
        assert!(r.open_table(QUEUED_V1).is_err());
    }
}
