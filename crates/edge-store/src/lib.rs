//! edge-store: the durable-queue building block that the hub and MqttServerModule share.
//!
//! - [`store`] ([`Store`]): queues keyed `(endpoint, priority, seq)` and small key-value tables in
//!   one redb file, written by one thread that commits in groups (a caller hears back once its write
//!   is on disk), reopens the file by itself after an I/O error such as a full disk, counts queue
//!   depths from what commits, and compacts the file after a backlog drains.
//! - [`record`] ([`Record`]): how a queued edgeHub message is stored, a small versioned binary
//!   format.
//! - `test_util` (feature `test-util`): `test_util::SmallDisk`, a small tmpfs a test fills up.
//!
//! The hub (`edge-hub`) keeps `$upstream`, every module input's queue, MQTT sessions and twins in
//! one store; MqttServerModule keeps its spool (device messages acknowledged before edgeHub had
//! them) in another, and its device sessions and retained messages (`state_path`) in a third,
//! written with [`Store::write_kept`] (a failed commit keeps the changes for the next one). None of
//! them writes redb itself.

pub mod record;
pub mod store;
#[cfg(feature = "test-util")]
pub mod test_util;

pub use record::{decode_record, encode_record, record_expiry, record_input, Record};
pub use store::{Op, Options, QueueKey, Store, COMPACT_CHECK_EVERY, COMPACT_FRAGMENTED_BYTES};

/// A storage failure, in words for the operator (what failed and what to do); cloneable, so that
/// one failed group commit can answer every caller in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);
