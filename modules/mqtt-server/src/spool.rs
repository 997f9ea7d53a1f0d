//! The optional durable spool (redb): when `spool_path` is set, a device's QoS 1/2 publish is
//! acknowledged once its edgeHub message is committed to disk, and deleted from disk once edgeHub
//! acknowledged it. Messages left in the spool by a crash are forwarded at the next start.
//!
//! One thread owns the database and commits in groups: every write waiting when a commit starts
//! shares it, so 200 devices publishing at once cost a few fsyncs, not 200.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::Error;
use edge_client::wire::Message;

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");

/// The message fields other than the body, stored as a JSON line before the body bytes.
#[derive(Serialize, Deserialize)]
struct Header {
    output: String,
    message_id: String,
    correlation_id: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    creation_time: String,
    properties: BTreeMap<String, String>,
}

/// Encodes `output` and `msg` as one record (JSON header, newline, body).
pub fn encode(output: &str, msg: &Message) -> Vec<u8> {
    let header = Header {
        output: output.to_string(),
        message_id: msg.message_id.clone().unwrap_or_default(),
        correlation_id: msg.correlation_id.clone(),
        content_type: msg.content_type.clone(),
        content_encoding: msg.content_encoding.clone(),
        creation_time: msg.creation_time.clone().unwrap_or_default(),
        properties: msg.properties.clone(),
    };
    // serializing a struct of strings cannot fail
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(&msg.body);
    out
}

/// Decodes a record written by [`encode`].
pub fn decode(record: &[u8]) -> Option<(String, Message)> {
    let nl = record.iter().position(|&b| b == b'\n')?;
    let header: Header = serde_json::from_slice(&record[..nl]).ok()?;
    let mut msg = Message::new(Bytes::copy_from_slice(&record[nl + 1..]));
    msg.message_id = Some(header.message_id);
    msg.correlation_id = header.correlation_id;
    msg.content_type = header.content_type;
    msg.content_encoding = header.content_encoding;
    msg.creation_time = Some(header.creation_time);
    msg.properties = header.properties;
    Some((header.output, msg))
}

/// A message a previous run left: `(key, output, message)`.
pub type Leftover = (u64, String, Message);

enum Cmd {
    Put(Vec<u8>, oneshot::Sender<Result<u64, SpoolError>>),
    Delete(u64),
}

/// Why a record was not stored; the message it holds is then acknowledged only after edgeHub
/// has it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool has stopped (the module is shutting down)")]
    Stopped,
    #[error("the spool could not commit: {0}; check that the disk is not full and the spool file is writable")]
    Write(Arc<redb::Error>),
}

/// Handle to the spool thread. Dropping it commits what is pending and closes the database.
pub struct Spool {
    tx: Option<std_mpsc::Sender<Cmd>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Spool {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        reason: format!("spool database: {e}"),
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
        let db = Database::create(path).map_err(|e| db_err(path, e))?;
        let w = db.begin_write().map_err(|e| db_err(path, e))?;
        w.open_table(TABLE).map_err(|e| db_err(path, e))?;
        w.commit().map_err(|e| db_err(path, e))?;
        let mut left = Vec::new();
        let mut next_key = 1u64;
        {
            let r = db.begin_read().map_err(|e| db_err(path, e))?;
            let t = r.open_table(TABLE).map_err(|e| db_err(path, e))?;
            for item in t.iter().map_err(|e| db_err(path, e))? {
                let (k, v) = item.map_err(|e| db_err(path, e))?;
                let key = k.value();
                next_key = next_key.max(key + 1);
                match decode(v.value()) {
                    Some((output, msg)) => left.push((key, output, msg)),
                    None => tracing::error!(key, "unreadable spool record skipped"),
                }
            }
        }
        let (tx, rx) = std_mpsc::channel();
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("mqtt-spool".into())
            .spawn(move || writer(db, rx, next_key, shown))
            .map_err(|e| db_err(path, e))?;
        Ok((
            Spool {
                tx: Some(tx),
                thread: Some(thread),
            },
            left,
        ))
    }

    /// Stores a record durably; resolves with its key once committed.
    pub async fn put(&self, record: Vec<u8>) -> Result<u64, SpoolError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or(SpoolError::Stopped)?
            .send(Cmd::Put(record, done))
            .map_err(|_| SpoolError::Stopped)?;
        rx.await.unwrap_or(Err(SpoolError::Stopped))
    }

    /// Removes a record (edgeHub has it); committed with the next group.
    pub fn delete(&self, key: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Cmd::Delete(key));
        }
    }
}

// one redb error per batch of commands, moved once: its size does not matter
#[allow(clippy::result_large_err)]
fn writer(db: Database, rx: std_mpsc::Receiver<Cmd>, mut next_key: u64, path: String) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut done = Vec::new();
        let result = (|| -> Result<(), redb::Error> {
            let w = db.begin_write()?;
            {
                let mut t = w.open_table(TABLE)?;
                for cmd in batch.drain(..) {
                    match cmd {
                        Cmd::Put(record, reply) => {
                            t.insert(next_key, record.as_slice())?;
                            done.push((next_key, reply));
                            next_key += 1;
                        }
                        Cmd::Delete(key) => {
                            t.remove(key)?;
                        }
                    }
                }
            }
            Ok(w.commit()?)
        })();
        match result {
            Ok(()) => {
                for (key, reply) in done {
                    let _ = reply.send(Ok(key));
                }
            }
            Err(e) => {
                tracing::error!(path = %path, error = %e, "spool write failed; affected messages are acknowledged only after edgeHub has them");
                let e = Arc::new(e);
                for (_, reply) in done {
                    let _ = reply.send(Err(SpoolError::Write(Arc::clone(&e))));
                }
            }
        }
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
        let (out, back) = decode(&encode("output1", &m)).expect("decodes");
        assert_eq!(out, "output1");
        assert_eq!(back, m);
        assert!(decode(b"not a record").is_none());
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
}
