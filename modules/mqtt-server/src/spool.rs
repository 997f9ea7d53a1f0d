//! The optional durable spool: when `spool_path` is set, a device's QoS 1/2 publish is
//! acknowledged once its edgeHub message is committed to disk, and deleted from disk once edgeHub
//! acknowledged it. Messages left in the spool by a crash are forwarded at the next start.
//!
//! The spool is one queue (`spool`) of an [`edge_store::Store`], the durable-queue block the hub
//! keeps its own queues in: one writer thread commits every write waiting when a commit starts (so
//! 200 devices publishing at once cost a few fsyncs, not 200), a message is stored as edgeHub's
//! message record ([`edge_store::Record`]), and after an I/O error such as a full disk the file is
//! reopened by itself once there is room, so the spool takes writes again without a restart (while
//! it cannot, messages are acknowledged only after edgeHub has them).
//!
//! Spool files of earlier versions kept a table `spool` of `key -> JSON header line + body`; opening
//! one moves its messages into the queue, keys and order kept, in the commit that opens the store.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use edge_store::{Op, Options, QueueKey, Record, Store, StoreError};
use redb::{TableDefinition, TableHandle};
use serde::Deserialize;

use crate::Error;
use edge_client::wire::Message;

/// The spool's queue in the store.
const QUEUE: &str = "spool";

/// The words of the spool's log lines and errors.
const OPTIONS: Options = Options {
    name: "the MQTT spool",
    meanwhile: "device messages are acknowledged only after edgeHub has them",
    remedy: "free space on the spool file's disk",
    thread: "mqtt-spool",
    tables: &[],
};

/// The table earlier versions kept the spool in.
const LEGACY: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");

fn key(seq: u64) -> QueueKey {
    QueueKey {
        endpoint: QUEUE.to_string(),
        priority: 0,
        seq,
    }
}

/// Encodes `output` and `msg` as one spool record (edgeHub's message record; the message never
/// expires here: edgeHub applies its own time to live once it has it).
pub fn encode(output: &str, msg: &Message) -> Vec<u8> {
    edge_store::encode_record(&Record {
        enqueued_ms: chrono::Utc::now().timestamp_millis(),
        expiry_ms: i64::MAX,
        module: String::new(),
        output: output.to_string(),
        input: String::new(),
        message: msg.clone(),
    })
}

/// The message fields other than the body, as earlier versions stored them: a JSON line before the
/// body bytes.
#[derive(Deserialize)]
struct LegacyHeader {
    output: String,
    message_id: String,
    correlation_id: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    creation_time: String,
    properties: BTreeMap<String, String>,
}

/// Decodes a record of an earlier version's spool.
fn decode_legacy(record: &[u8]) -> Option<(String, Message)> {
    let nl = record.iter().position(|&b| b == b'\n')?;
    let header: LegacyHeader = serde_json::from_slice(&record[..nl]).ok()?;
    let mut msg = Message::new(Bytes::copy_from_slice(&record[nl + 1..]));
    msg.message_id = Some(header.message_id);
    msg.correlation_id = header.correlation_id;
    msg.content_type = header.content_type;
    msg.content_encoding = header.content_encoding;
    msg.creation_time = Some(header.creation_time);
    msg.properties = header.properties;
    Some((header.output, msg))
}

/// Moves an earlier version's spool table into the queue (in the opening commit), keys kept.
fn upgrade(txn: &redb::WriteTransaction) -> Result<Vec<(QueueKey, Vec<u8>)>, StoreError> {
    let store_err = |e: &dyn std::fmt::Display| {
        StoreError(format!("moving the spool of an earlier version: {e}"))
    };
    let tables = txn.list_tables().map_err(|e| store_err(&e))?;
    if !tables.into_iter().any(|t| t.name() == LEGACY.name()) {
        return Ok(Vec::new());
    }
    let mut moved = Vec::new();
    {
        let old = txn.open_table(LEGACY).map_err(|e| store_err(&e))?;
        for item in redb::ReadableTable::iter(&old).map_err(|e| store_err(&e))? {
            let (k, v) = item.map_err(|e| store_err(&e))?;
            match decode_legacy(v.value()) {
                Some((output, msg)) => moved.push((key(k.value()), encode(&output, &msg))),
                None => tracing::error!(
                    key = k.value(),
                    "an unreadable record of an earlier version's spool was dropped"
                ),
            }
        }
    }
    txn.delete_table(LEGACY).map_err(|e| store_err(&e))?;
    if !moved.is_empty() {
        tracing::info!(
            messages = moved.len(),
            "moved the messages of an earlier version's spool into the current format"
        );
    }
    Ok(moved)
}

/// A message a previous run left: `(key, output, message)`.
pub type Leftover = (u64, String, Message);

/// Why a record was not stored; the message it holds is then acknowledged only after edgeHub
/// has it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the spool could not store a message: {0}")]
pub struct SpoolError(#[from] StoreError);

/// Handle to the spool. Dropping it commits what is pending and closes the file.
pub struct Spool {
    store: Store,
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.store.close_blocking();
    }
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        reason: format!("spool: {e}"),
    }
}

impl Spool {
    /// Opens (or creates) the spool and returns it with the messages a previous run left, in
    /// arrival order: `(key, output, message)`.
    pub fn open(path: &Path) -> Result<(Spool, Vec<Leftover>), Error> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| db_err(path, e))?;
            }
        }
        let store = Store::open_with(path, OPTIONS, upgrade).map_err(|e| db_err(path, e))?;
        let mut left = Vec::new();
        for (k, r) in store
            .scan(QUEUE, usize::MAX, |_, _| true)
            .map_err(|e| db_err(path, e))?
        {
            left.push((k.seq, r.output, r.message));
        }
        Ok((Spool { store }, left))
    }

    /// Stores a record durably; resolves with its key once committed.
    pub async fn put(&self, record: Vec<u8>) -> Result<u64, SpoolError> {
        let seq = self.store.next_seq();
        self.store
            .write(vec![Op::Enqueue {
                key: key(seq),
                record,
            }])
            .await?;
        Ok(seq)
    }

    /// Removes a record (edgeHub has it); committed with the next group.
    pub fn delete(&self, seq: u64) {
        self.store.write_later(vec![Op::Delete { key: key(seq) }]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &[u8]) -> Message {
        let mut m = Message::new(Bytes::copy_from_slice(body));
        m.message_id = Some("m1".into());
        m.content_type = Some("application/json".into());
        m.content_encoding = Some("utf-8".into());
        m.creation_time = Some("2026-11-24T08:00:00.000Z".into());
        m.properties = [("mqtt-topic".to_string(), "t".to_string())]
            .into_iter()
            .collect();
        m
    }

    #[test]
    fn record_round_trip_keeps_binary_bodies() {
        let m = msg(b"\x00\n\xff{}");
        let back = edge_store::decode_record(&encode("output1", &m)).expect("decodes");
        assert_eq!(back.output, "output1");
        assert_eq!(back.message, m);
        assert!(edge_store::decode_record(b"not a record").is_err());
    }

    #[tokio::test]
    async fn survives_reopen_until_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool.redb");
        let k1;
        {
            let (s, left) = Spool::open(&path).expect("opens");
            assert!(left.is_empty());
            k1 = s.put(encode("o", &msg(b"one"))).await.expect("put");
            let k2 = s.put(encode("o", &msg(b"two"))).await.expect("put");
            assert!(k2 > k1);
            s.delete(k2);
            // the delete is committed with the next group: force one
            s.put(encode("o", &msg(b"three"))).await.expect("put");
        }
        // dropping the handle closed the database
        let (_s, left) = Spool::open(&path).expect("reopens");
        let bodies: Vec<&[u8]> = left.iter().map(|(_, _, m)| &m.body[..]).collect();
        assert_eq!(bodies, vec![&b"one"[..], &b"three"[..]]);
        assert_eq!(left[0].0, k1);
    }

    /// A spool file an earlier version wrote (table `spool`, JSON header line + body) is moved into
    /// the current format when opened: nothing left in it is lost, keys and order are kept, and new
    /// keys follow them.
    #[tokio::test]
    async fn an_earlier_versions_spool_is_moved_into_the_current_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool.redb");
        let legacy = |output: &str, m: &Message| {
            let header = serde_json::json!({
                "output": output,
                "message_id": m.message_id.clone().unwrap_or_default(),
                "correlation_id": m.correlation_id,
                "content_type": m.content_type,
                "content_encoding": m.content_encoding,
                "creation_time": m.creation_time.clone().unwrap_or_default(),
                "properties": m.properties,
            });
            let mut out = serde_json::to_vec(&header).expect("json");
            out.push(b'\n');
            out.extend_from_slice(&m.body);
            out
        };
        {
            let db = redb::Database::create(&path).expect("creates");
            let w = db.begin_write().expect("write");
            {
                let mut t = w.open_table(LEGACY).expect("table");
                t.insert(3u64, legacy("o1", &msg(b"\x00three")).as_slice())
                    .expect("insert");
                t.insert(7u64, legacy("o2", &msg(b"seven")).as_slice())
                    .expect("insert");
                t.insert(8u64, &b"garbage"[..]).expect("insert");
            }
            w.commit().expect("commit");
        }
        let (s, left) = Spool::open(&path).expect("opens");
        let got: Vec<(u64, &str, &[u8])> = left
            .iter()
            .map(|(k, o, m)| (*k, o.as_str(), &m.body[..]))
            .collect();
        assert_eq!(
            got,
            vec![(3, "o1", &b"\x00three"[..]), (7, "o2", &b"seven"[..])]
        );
        assert_eq!(left[1].2, msg(b"seven"), "every field kept");
        assert!(s.put(encode("o", &msg(b"new"))).await.expect("put") > 7);
        drop(s);
        // moved once: the old table is gone, the messages are in the queue
        let (_s, left) = Spool::open(&path).expect("reopens");
        assert_eq!(left.len(), 3);
    }

    /// The spool on a full disk: a put fails (the device is then acknowledged only after edgeHub has
    /// the message), and once there is room again the spool takes writes again by itself. (Before
    /// the spool shared the hub's store, redb refused every write after the first I/O error until a
    /// restart.)
    #[tokio::test]
    async fn after_a_full_disk_the_spool_takes_writes_again_without_a_restart() {
        let Some(disk) = edge_hub::test_util::SmallDisk::mount("2m") else {
            return;
        };
        let (s, _) = Spool::open(&disk.path().join("spool.redb")).expect("opens");
        let kept = s.put(encode("o", &msg(b"kept"))).await.expect("put");
        let filler = disk.fill();
        let big = msg(&vec![b'x'; 300_000]);
        let mut failed = false;
        for _ in 0..20 {
            if s.put(encode("o", &big)).await.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "a put on a full disk must fail");
        std::fs::remove_file(&filler).expect("frees the disk");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match s.put(encode("o", &msg(b"after"))).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the spool did not recover: {e}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        drop(s);
        let (_s, left) = Spool::open(&disk.path().join("spool.redb")).expect("reopens");
        assert!(left
            .iter()
            .any(|(k, _, m)| *k == kept && &m.body[..] == b"kept"));
        assert!(left.iter().any(|(_, _, m)| &m.body[..] == b"after"));
    }
}
