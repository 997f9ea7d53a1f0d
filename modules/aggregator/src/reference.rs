//! Reference data for the query's JOINs without a time bound (per-patient thresholds, the list of
//! patients who should be reporting). Each name comes from the twin's `referenceData`:
//!
//! ```json
//! "referenceData": {
//!   "patients": { "path": "/data/patients.csv" },
//!   "thresholds": { "rows": [ { "deviceId": "p1", "feverC": 37.8 } ] }
//! }
//! ```
//!
//! A file is CSV when its name ends in `.csv` (a header row names the columns; every value is text,
//! as in ASA: `TRY_CAST(r.feverC AS float)` where a number is needed), otherwise JSON: one object
//! per line (JSON lines), or one array of objects. Files are checked for changes every
//! [`REFRESH_EVERY`] and reloaded when their size or modification time changes. A missing,
//! malformed or oversized file (more than [`MAX_FILE_BYTES`] or [`MAX_ROWS`] rows) does not
//! replace what was loaded before: the previous rows stay in use and the error is reported in
//! the twin (`referenceData.<name>.error`) and logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::AggregatorError;

/// Largest reference file read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Most rows one reference data set may have.
pub const MAX_ROWS: usize = 100_000;
/// How often files are checked for changes.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// One entry of the twin's `referenceData`: a file (`path`) or the rows themselves (`rows`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReferenceSetting {
    /// A CSV or JSON (lines) file inside the container, e.g. on a mounted volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The rows, inline in the twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<Value>>,
}

impl ReferenceSetting {
    /// Exactly one of `path` and `rows`.
    pub fn validate(&self, name: &str) -> Result<(), AggregatorError> {
        match (&self.path, &self.rows) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err(AggregatorError::Settings {
                key: format!("referenceData.{name}"),
                message: "give either \"path\" (a CSV or JSON lines file) or \"rows\" (an array of objects), not both or neither".into(),
            }),
        }
    }
}

/// Size and modification time: a file whose stamp changed is read again.
type Stamp = (u64, Option<SystemTime>);

#[derive(Debug, Default)]
struct Entry {
    setting: ReferenceSetting,
    rows: Option<Vec<Value>>,
    stamp: Option<Stamp>,
    loaded_at: Option<String>,
    error: Option<String>,
}

/// The reference data sets and their state.
#[derive(Debug, Default)]
pub struct References {
    entries: BTreeMap<String, Entry>,
    /// Names dropped from the twin since the last [`References::take_removed`].
    removed: Vec<String>,
}

impl References {
    /// Take the twin's `referenceData`; returns the names whose rows changed (to give to the
    /// engine). Entries no longer configured are dropped (see [`References::take_removed`]).
    pub fn configure(&mut self, settings: &BTreeMap<String, ReferenceSetting>) -> Vec<String> {
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|k| !settings.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            self.entries.remove(&k);
            self.removed.push(k);
        }
        let mut changed = Vec::new();
        for (name, setting) in settings {
            let e = self.entries.entry(name.clone()).or_default();
            if e.setting == *setting && (e.rows.is_some() || e.error.is_some()) {
                continue;
            }
            e.setting = setting.clone();
            e.stamp = None;
            if load(name, e) {
                changed.push(name.clone());
            }
        }
        changed
    }

    /// Read files whose size or modification time changed; returns the names whose rows changed.
    pub fn refresh(&mut self) -> Vec<String> {
        let mut changed = Vec::new();
        for (name, e) in self.entries.iter_mut() {
            let Some(path) = e.setting.path.clone() else {
                continue;
            };
            let now = stamp(&path);
            // unchanged (a file still missing was reported already)
            if now == e.stamp && (now.is_some() || e.error.is_some()) {
                continue;
            }
            if load(name, e) {
                changed.push(name.clone());
            }
        }
        changed
    }

    /// The names dropped from the twin since the last call (to take from the engine).
    pub fn take_removed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.removed)
    }

    /// The rows of `name`, once loaded.
    pub fn rows(&self, name: &str) -> Option<&Vec<Value>> {
        self.entries.get(name).and_then(|e| e.rows.as_ref())
    }

    /// The names configured.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Record an error for `name` found later (the engine refused the rows).
    pub fn set_error(&mut self, name: &str, error: String) {
        if let Some(e) = self.entries.get_mut(name) {
            tracing::error!(reference = name, %error, "reference data refused; the previous rows stay in use");
            e.error = Some(error);
        }
    }

    /// `{name: {source, rows, loadedAt, error}}` for the reported properties.
    pub fn reported(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (name, e) in &self.entries {
            let source = match (&e.setting.path, &e.setting.rows) {
                (Some(p), _) => p.display().to_string(),
                _ => "twin".to_string(),
            };
            m.insert(
                name.clone(),
                json!({
                    "source": source,
                    "rows": e.rows.as_ref().map(Vec::len),
                    "loadedAt": e.loaded_at,
                    "error": e.error,
                }),
            );
        }
        Value::Object(m)
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.len(), md.modified().ok()))
}

/// Load an entry's rows; true when they changed. On error the previous rows stay.
fn load(name: &str, e: &mut Entry) -> bool {
    let result = match (&e.setting.path, &e.setting.rows) {
        (Some(path), _) => {
            e.stamp = stamp(path);
            read_file(path)
        }
        (None, Some(rows)) => check_rows(rows.clone()),
        (None, None) => Err("no \"path\" or \"rows\"".into()),
    };
    match result {
        Ok(rows) => {
            tracing::info!(reference = name, rows = rows.len(), "reference data loaded");
            e.rows = Some(rows);
            e.error = None;
            e.loaded_at = Some(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true));
            true
        }
        Err(err) => {
            let kept = e.rows.as_ref().map_or(0, Vec::len);
            tracing::error!(reference = name, error = %err, kept,
                "reference data not loaded; the previous rows stay in use. Fix the file or the twin's referenceData");
            e.error = Some(err);
            false
        }
    }
}

fn check_rows(rows: Vec<Value>) -> Result<Vec<Value>, String> {
    if rows.len() > MAX_ROWS {
        return Err(format!(
            "{} rows is more than the {MAX_ROWS} allowed; keep reference data small or split it",
            rows.len()
        ));
    }
    if let Some(i) = rows.iter().position(|r| !r.is_object()) {
        return Err(format!("row {} is not a JSON object", i + 1));
    }
    Ok(rows)
}

/// Read a reference file: CSV (by extension) or JSON (lines or one array).
pub fn read_file(path: &Path) -> Result<Vec<Value>, String> {
    let md =
        std::fs::metadata(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    if md.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} is {} bytes; the limit is {MAX_FILE_BYTES} bytes",
            path.display(),
            md.len()
        ));
    }
    let bytes =
        std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let csv = path
        .extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("csv"));
    let rows = if csv {
        parse_csv(&bytes)
    } else {
        parse_json(&bytes)
    }
    .map_err(|err| format!("{}: {err}", path.display()))?;
    check_rows(rows)
}

/// JSON lines (one object per line; blank lines skipped) or one JSON array of objects.
pub fn parse_json(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 ({e})"))?;
    if text.trim_start().starts_with('[') {
        return match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(rows)) => Ok(rows),
            Ok(_) => Err("expected an array of objects".into()),
            Err(e) => Err(format!("not JSON: {e}")),
        };
    }
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
        rows.push(v);
        if rows.len() > MAX_ROWS {
            return Err(format!("more than {MAX_ROWS} rows"));
        }
    }
    Ok(rows)
}

/// CSV with a header row; every value is text, as in ASA's CSV reference data (CAST where a number
/// is needed: an id like `007` must stay `007`).
pub fn parse_csv(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let mut r = csv::ReaderBuilder::new().flexible(false).from_reader(bytes);
    let headers = r.headers().map_err(|e| format!("CSV header: {e}"))?.clone();
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| format!("CSV row {}: {e}", i + 2))?;
        let mut m = serde_json::Map::new();
        for (h, v) in headers.iter().zip(rec.iter()) {
            m.insert(h.to_string(), Value::String(v.to_string()));
        }
        rows.push(Value::Object(m));
        if rows.len() > MAX_ROWS {
            return Err(format!("more than {MAX_ROWS} rows"));
        }
    }
    Ok(rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_lines() {
        let rows = parse_csv(b"deviceId,feverC,name\n007,37.8,Ann\np2,38,\"Bo, Jr\"\n").unwrap();
        assert_eq!(
            rows,
            vec![
                json!({"deviceId": "007", "feverC": "37.8", "name": "Ann"}),
                json!({"deviceId": "p2", "feverC": "38", "name": "Bo, Jr"}),
            ]
        );
        assert!(parse_csv(b"a,b\n1\n").unwrap_err().contains("CSV row 2"));
        let rows = parse_json(b"{\"a\":1}\n\n{\"a\":2}\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(parse_json(b"[{\"a\":1}]").unwrap().len(), 1);
        assert!(parse_json(b"{\"a\":1}\n{oops\n")
            .unwrap_err()
            .contains("line 2"));
        assert!(parse_json(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn a_bad_file_keeps_the_previous_rows_and_a_fixed_one_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("patients.jsonl");
        std::fs::write(&path, "{\"deviceId\":\"p1\"}\n").unwrap();
        let mut refs = References::default();
        let mut set = BTreeMap::new();
        set.insert(
            "patients".to_string(),
            ReferenceSetting {
                path: Some(path.clone()),
                rows: None,
            },
        );
        assert_eq!(refs.configure(&set), vec!["patients"]);
        assert_eq!(refs.rows("patients").unwrap().len(), 1);
        // malformed: kept, error reported
        std::fs::write(&path, "{\"deviceId\":\"p1\"}\nnot json at all\n").unwrap();
        assert!(refs.refresh().is_empty());
        assert_eq!(refs.rows("patients").unwrap().len(), 1);
        let rep = refs.reported();
        assert!(
            rep["patients"]["error"]
                .as_str()
                .unwrap()
                .contains("line 2"),
            "{rep}"
        );
        // oversized: kept
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        assert!(refs.refresh().is_empty());
        assert!(refs.reported()["patients"]["error"]
            .as_str()
            .unwrap()
            .contains("limit"));
        // missing: kept
        std::fs::remove_file(&path).unwrap();
        assert!(refs.refresh().is_empty());
        assert_eq!(refs.rows("patients").unwrap().len(), 1);
        // fixed: reloaded
        std::fs::write(&path, "{\"deviceId\":\"p1\"}\n{\"deviceId\":\"p2\"}\n").unwrap();
        assert_eq!(refs.refresh(), vec!["patients"]);
        assert_eq!(refs.rows("patients").unwrap().len(), 2);
        assert!(refs.reported()["patients"]["error"].is_null());
        // inline rows; a non-object row is refused
        set.insert(
            "inline".to_string(),
            ReferenceSetting {
                path: None,
                rows: Some(vec![json!({"a": 1}), json!(2)]),
            },
        );
        assert_eq!(refs.configure(&set), Vec::<String>::new());
        assert!(refs.reported()["inline"]["error"]
            .as_str()
            .unwrap()
            .contains("row 2"));
    }
}
