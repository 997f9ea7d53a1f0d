//! The hub's durable store: one [`edge_store::Store`] in `<data>/hub.redb` holding
//! - the queues: `$upstream` ([`UPSTREAM`]) and one per module ([`module_endpoint`]), in delivery
//!   order, as [`Record`]s;
//! - table `sessions`: MQTT client id -> its subscriptions as JSON `[[filter, qos], ..]`
//!   (clean-session-0 clients only);
//! - table `twins`: module -> its [`TwinState`] as JSON.
//!
//! The writer thread, group commit, recovery from a full disk and compaction are edge-store's; what
//! is here is what the hub keeps in it and how.

use std::collections::HashMap;
use std::path::Path;

pub use edge_store::{encode_record, record_input, Op, QueueKey, Record, Store, StoreError};

use super::twin::TwinState;

/// The `$upstream` endpoint's queue name.
pub const UPSTREAM: &str = "$upstream";

const SESSIONS: &str = "sessions";
const TWINS: &str = "twins";

/// The words of the store's log lines and errors.
const OPTIONS: edge_store::Options = edge_store::Options {
    name: "the hub store",
    meanwhile: "publishes are refused (not acknowledged)",
    remedy: "free space on the data directory's disk",
    thread: "hub-store-writer",
    tables: &[SESSIONS, TWINS],
};

/// The queue name of a module's inputs.
pub fn module_endpoint(module: &str) -> String {
    format!("module/{module}")
}

/// Opens (or creates) the hub's store file and starts its writer.
pub fn open(path: &Path) -> Result<Store, StoreError> {
    Store::open(path, OPTIONS)
}

/// Keeps a client's subscriptions (a clean-session-0 client's session).
pub fn put_session(client_id: &str, subscriptions: &[(String, u8)]) -> Op {
    Op::Put {
        table: SESSIONS,
        key: client_id.to_string(),
        // a list of string and number pairs always serialises
        value: serde_json::to_vec(subscriptions).unwrap_or_default(),
    }
}

/// Forgets a client's session.
pub fn delete_session(client_id: &str) -> Op {
    Op::Remove {
        table: SESSIONS,
        key: client_id.to_string(),
    }
}

/// Keeps a module's twin (`twin`: a [`TwinState`] as JSON).
pub fn put_twin(module: &str, twin: Vec<u8>) -> Op {
    Op::Put {
        table: TWINS,
        key: module.to_string(),
        value: twin,
    }
}

/// All stored sessions: client id -> subscriptions (filter, QoS). One that cannot be read is left
/// out, with a log line.
pub fn sessions(store: &Store) -> Result<HashMap<String, Vec<(String, u8)>>, StoreError> {
    let mut out = HashMap::new();
    for (client, v) in store.entries(SESSIONS)? {
        match serde_json::from_slice::<Vec<(String, u8)>>(&v) {
            Ok(s) => {
                out.insert(client, s);
            }
            Err(e) => {
                tracing::error!(client, error = %e, "ignoring an unreadable stored session")
            }
        }
    }
    Ok(out)
}

/// All stored twins. One that cannot be read is left out, with a log line.
pub fn twins(store: &Store) -> Result<HashMap<String, TwinState>, StoreError> {
    let mut out = HashMap::new();
    for (module, v) in store.entries(TWINS)? {
        match serde_json::from_slice::<TwinState>(&v) {
            Ok(s) => {
                out.insert(module, s);
            }
            Err(e) => {
                tracing::error!(module, error = %e, "ignoring an unreadable stored twin")
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_and_twins_survive_reopen_and_a_bad_entry_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        {
            let s = open(&path).unwrap();
            s.write(vec![
                put_session("d/m", &[("a/#".into(), 1)]),
                put_session("d/gone", &[("b".into(), 0)]),
                delete_session("d/gone"),
                Op::Put {
                    table: SESSIONS,
                    key: "d/bad".into(),
                    value: b"not json".to_vec(),
                },
                put_twin(
                    "M",
                    serde_json::to_vec(&TwinState::new(&serde_json::json!({}))).unwrap(),
                ),
            ])
            .await
            .unwrap();
            s.close().await.unwrap();
        }
        let s = open(&path).unwrap();
        let sessions = sessions(&s).unwrap();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions["d/m"], vec![("a/#".to_string(), 1)]);
        assert!(twins(&s).unwrap().contains_key("M"));
    }
}
