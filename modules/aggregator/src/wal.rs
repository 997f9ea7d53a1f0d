//! The input log: what makes an acknowledgement durable without rewriting the whole window state.
//!
//! Every input the engine accepted, and every clock tick, is appended to `inputs.log` in the state
//! folder; a commit appends what came since the last one and fsyncs once (group commit), then the
//! inputs are acknowledged. Now and then (see [`SNAPSHOT_EVERY`], [`SNAPSHOT_BYTES`]) the whole
//! engine state is written as a snapshot (`checkpoint.json`, which records the last log sequence it
//! holds) and the log starts again. A restart restores the snapshot and replays the log records
//! after it through the engine, which is deterministic: the same records in the same order give the
//! same state. The bytes written per input are the record (about the body plus 60 bytes), not the
//! state.
//!
//! File format (version 1): the 8-byte header `AGGLOG1\n`, then records
//! `[u32 LE payload length][u32 LE CRC-32 of the payload][payload]`; the payload is JSON:
//! `{"s": seq, "i": "<input>", "a": <arrival, microseconds since the epoch>, "b": <the body>}` for
//! an input, `{"s": seq, "t": <microseconds>}` for a tick. A torn or corrupt tail (a crash in the
//! middle of a write, a bad sector) ends the log: the records before it are used, the rest is cut
//! off with a warning. A file with another header is refused with a warning (it was written by
//! another version; the snapshot alone is used).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The log file's first bytes.
pub const HEADER: &[u8; 8] = b"AGGLOG1\n";
/// A snapshot is written at least this often (while inputs come).
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(60);
/// ... or once the log holds this many bytes.
pub const SNAPSHOT_BYTES: u64 = 8 * 1024 * 1024;
/// A record larger than this is corruption (an input is at most 256 KiB).
const MAX_RECORD: usize = 4 * 1024 * 1024;

/// One record of the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Input {
        seq: u64,
        input: String,
        arrival_us: i64,
        body: String,
        /// Who the input is, to recognise it if edgeHub delivers it again after a crash
        /// (see [`crate::processor::input_identity`]); absent in logs of earlier versions.
        ident: Option<String>,
    },
    Tick {
        seq: u64,
        now_us: i64,
    },
}

impl Record {
    pub fn seq(&self) -> u64 {
        match self {
            Record::Input { seq, .. } | Record::Tick { seq, .. } => *seq,
        }
    }
}

/// Frame an input record. `body` must be JSON text (the engine accepted it).
pub fn encode_input(
    out: &mut Vec<u8>,
    seq: u64,
    input: &str,
    arrival_us: i64,
    body: &str,
    ident: &str,
) {
    frame(out, |out| {
        let _ = write!(out, "{{\"s\":{seq},\"i\":");
        json_string(out, input);
        let _ = write!(out, ",\"a\":{arrival_us},\"m\":");
        json_string(out, ident);
        out.extend_from_slice(b",\"b\":");
        out.extend_from_slice(body.as_bytes());
        out.push(b'}');
    });
}

/// `s` as a JSON string.
fn json_string(out: &mut Vec<u8>, s: &str) {
    if serde_json::to_writer(&mut *out, s).is_err() {
        // writing a string to memory cannot fail; an empty string keeps the record whole
        out.extend_from_slice(b"\"\"");
    }
}

/// Frame a tick record.
pub fn encode_tick(out: &mut Vec<u8>, seq: u64, now_us: i64) {
    frame(out, |out| {
        let _ = write!(out, "{{\"s\":{seq},\"t\":{now_us}}}");
    });
}

/// Appends one record: `payload` writes the payload in place, then its length and CRC go before it.
fn frame(out: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    payload(out);
    let written = &out[start + 8..];
    let (len, crc) = (written.len() as u32, crc32fast::hash(written));
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

#[derive(Deserialize)]
struct Payload<'a> {
    s: u64,
    #[serde(default)]
    i: Option<String>,
    #[serde(default)]
    a: Option<i64>,
    #[serde(default, borrow)]
    b: Option<&'a RawValue>,
    #[serde(default)]
    t: Option<i64>,
    #[serde(default)]
    m: Option<String>,
}

/// What reading a log found.
#[derive(Debug, Default)]
pub struct ReadLog {
    pub records: Vec<Record>,
    /// Bytes of whole, valid records (with the header): where the next record goes.
    pub valid_len: u64,
    /// Why the log ended before the end of the file, if it did.
    pub torn: Option<String>,
}

/// Why the input log cannot be used at all (a torn tail is not an error: [`ReadLog::torn`]).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the input log does not start with {:?}: it was written by another version", String::from_utf8_lossy(HEADER).trim())]
    OtherVersion,
    #[error("cannot read {path}: {source}; check the state folder's permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot cut the torn tail off {path}: {source}; check that the state folder is writable and the disk is not full")]
    Repair {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Decode a whole log file's bytes.
pub fn decode(bytes: &[u8]) -> Result<ReadLog, LogError> {
    if bytes.len() < HEADER.len() || &bytes[..HEADER.len()] != HEADER {
        return Err(LogError::OtherVersion);
    }
    let mut log = ReadLog {
        valid_len: HEADER.len() as u64,
        ..ReadLog::default()
    };
    let mut at = HEADER.len();
    while at < bytes.len() {
        let torn = |why: &str| Some(format!("{why} at byte {at} of {}", bytes.len()));
        if bytes.len() - at < 8 {
            log.torn = torn("a record header is cut short");
            break;
        }
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        if len > MAX_RECORD || bytes.len() - at - 8 < len {
            log.torn = torn("a record is cut short");
            break;
        }
        let payload = &bytes[at + 8..at + 8 + len];
        if crc32fast::hash(payload) != crc {
            log.torn = torn("a record's checksum does not match");
            break;
        }
        let rec = match serde_json::from_slice::<Payload>(payload) {
            Ok(Payload {
                s,
                i: Some(input),
                a: Some(arrival_us),
                b: Some(body),
                m,
                ..
            }) => Record::Input {
                seq: s,
                input,
                arrival_us,
                body: body.get().to_string(),
                ident: m,
            },
            Ok(Payload {
                s, t: Some(now_us), ..
            }) => Record::Tick { seq: s, now_us },
            _ => {
                log.torn = torn("a record is not one this version writes");
                break;
            }
        };
        log.records.push(rec);
        at += 8 + len;
        log.valid_len = at as u64;
    }
    Ok(log)
}

/// Read the log at `path` (missing: empty) and cut a torn tail off the file, so that later
/// appends follow the last whole record.
pub fn read_and_repair(path: &Path) -> Result<ReadLog, LogError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReadLog::default()),
        Err(source) => {
            return Err(LogError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let log = decode(&bytes)?;
    if log.torn.is_some() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| {
                f.set_len(log.valid_len)?;
                f.sync_all()
            })
            .map_err(|source| LogError::Repair {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(log)
}

/// The input log, kept open for appending between commits: a commit is one `write` and one
/// `fdatasync` on a file descriptor opened once, not also an open, a `mkdir`, three `stat`s and a
/// close around them every time (8 system calls a commit before, 2 now). Cloning shares the
/// descriptor; one commit's work runs at a time.
#[derive(Debug, Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<Option<Open>>>,
}

/// The open log and its length (what this process wrote; the file is replaced or cut only through
/// [`LogFile::forget`]).
#[derive(Debug)]
struct Open {
    file: File,
    len: u64,
}

impl LogFile {
    /// The log at `path`; nothing is opened until the first append.
    pub fn new(path: PathBuf) -> LogFile {
        LogFile {
            path,
            file: Arc::new(Mutex::new(None)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the descriptor, so that the next append opens the file at `path` again: after the
    /// log was replaced (a snapshot starts a new one) or cut (a torn tail repaired).
    pub fn forget(&self) {
        if let Ok(mut f) = self.file.lock() {
            *f = None;
        }
    }

    /// Appends `bytes` and syncs the data. On an error the part that reached the file is cut off
    /// (it frees the space too) and the descriptor is closed; if even the cut fails, the torn tail
    /// is cut when the log is next read. Either way the caller writes a snapshot next, which starts
    /// a new log.
    fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut slot = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("the input log's lock is poisoned"))?;
        if slot.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            let mut len = file.metadata()?.len();
            if len == 0 {
                file.write_all(HEADER)?;
                len = HEADER.len() as u64;
            }
            *slot = Some(Open { file, len });
        }
        let Some(open) = slot.as_mut() else {
            return Err(std::io::Error::other("the input log is not open"));
        };
        let written = open
            .file
            .write_all(bytes)
            .and_then(|()| open.file.sync_data());
        match written {
            Ok(()) => open.len += bytes.len() as u64,
            Err(_) => {
                let _ = open.file.set_len(open.len);
                *slot = None;
            }
        }
        written
    }
}

/// Disk work of one commit, done on a blocking thread.
#[derive(Debug)]
pub enum Work {
    /// Append records to the log and fsync.
    Append { log: LogFile, bytes: Vec<u8> },
    /// Write a snapshot (temporary file, fsync, rename), then start the log again.
    Snapshot {
        checkpoint: PathBuf,
        snapshot: Vec<u8>,
        log: LogFile,
    },
}

impl Work {
    /// Bytes it writes.
    pub fn bytes(&self) -> usize {
        match self {
            Work::Append { bytes, .. } => bytes.len(),
            Work::Snapshot { snapshot, .. } => snapshot.len() + HEADER.len(),
        }
    }

    /// Do it (blocking IO).
    pub fn run(&self) -> std::io::Result<()> {
        match self {
            Work::Append { log, bytes } => {
                if bytes.is_empty() {
                    return Ok(());
                }
                log.append(bytes)
            }
            Work::Snapshot {
                checkpoint,
                snapshot,
                log,
            } => {
                if let Some(dir) = checkpoint.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                atomic_write(checkpoint, snapshot)?;
                // the new log replaces the file the descriptor points to
                log.forget();
                atomic_write(log.path(), HEADER)
            }
        }
    }
}

fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        // a half-written temporary file only takes space (from a disk that may be full)
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // the rename itself is durable once the folder is synced
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut v = HEADER.to_vec();
        encode_input(
            &mut v,
            1,
            "temperature",
            10,
            r#"{"temp": 37.5, "deviceId": "p\"1"}"#,
            "m:id-1",
        );
        encode_tick(&mut v, 2, 20);
        encode_input(&mut v, 3, "temperature", 30, "{}", "b:2:1");
        v
    }

    #[test]
    fn records_round_trip() {
        let log = decode(&sample()).unwrap();
        assert!(log.torn.is_none());
        assert_eq!(log.records.len(), 3);
        assert_eq!(
            log.records[0],
            Record::Input {
                seq: 1,
                input: "temperature".into(),
                arrival_us: 10,
                body: r#"{"temp": 37.5, "deviceId": "p\"1"}"#.into(),
                ident: Some("m:id-1".into()),
            }
        );
        assert_eq!(log.records[1], Record::Tick { seq: 2, now_us: 20 });
    }

    #[test]
    fn a_log_cut_anywhere_keeps_every_whole_record_before_the_cut() {
        let full = sample();
        let whole = decode(&full).unwrap();
        for cut in HEADER.len()..full.len() {
            let log = decode(&full[..cut]).unwrap();
            let n = log.records.len();
            assert_eq!(log.records[..], whole.records[..n], "cut at {cut}");
            assert!(log.valid_len as usize <= cut);
            if (log.valid_len as usize) < cut {
                assert!(log.torn.is_some(), "cut at {cut}");
            }
        }
        // a flipped bit ends the log at that record
        let mut bad = full.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0x40;
        let log = decode(&bad).unwrap();
        assert_eq!(log.records.len(), 2);
        assert!(log.torn.unwrap().contains("checksum"));
        // another version's file is refused
        assert!(decode(b"AGGLOG9\nxxxx")
            .unwrap_err()
            .to_string()
            .contains("another version"));
    }

    #[test]
    fn repair_cuts_the_torn_tail_so_appends_follow_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inputs.log");
        let full = sample();
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        let log = read_and_repair(&path).unwrap();
        assert_eq!(log.records.len(), 2);
        let mut more = Vec::new();
        encode_tick(&mut more, 4, 40);
        Work::Append {
            log: LogFile::new(path.clone()),
            bytes: more,
        }
        .run()
        .unwrap();
        let log = read_and_repair(&path).unwrap();
        assert!(log.torn.is_none());
        assert_eq!(
            log.records.iter().map(Record::seq).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
    }

    /// The log stays open between commits; a snapshot replaces the file, and the next append goes
    /// to the new log, not to the replaced file the old descriptor still points to.
    #[test]
    fn appends_share_one_descriptor_and_follow_the_log_a_snapshot_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("inputs.log");
        let log = LogFile::new(path.clone());
        let tick = |seq| {
            let mut b = Vec::new();
            encode_tick(&mut b, seq, seq as i64 * 10);
            b
        };
        for seq in 1..=3 {
            Work::Append {
                log: log.clone(),
                bytes: tick(seq),
            }
            .run()
            .unwrap();
        }
        let seqs = |p: &Path| {
            read_and_repair(p)
                .unwrap()
                .records
                .iter()
                .map(Record::seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(&path), vec![1, 2, 3], "a new log gets its header once");
        Work::Snapshot {
            checkpoint: dir.path().join("state").join("checkpoint.json"),
            snapshot: b"{}".to_vec(),
            log: log.clone(),
        }
        .run()
        .unwrap();
        Work::Append {
            log: log.clone(),
            bytes: tick(4),
        }
        .run()
        .unwrap();
        assert_eq!(seqs(&path), vec![4]);
    }
}
