//! Helpers for the tests of every crate that runs against the hub (feature `test-util`; the crate's
//! own tests have them too). One harness, so that the hub's own tests, edge-dev's and each module's
//! start a hub, connect to it and run a module process the same way.
//!
//! - [`TestHub`] ([`TestHub::builder`]): a hub on 127.0.0.1 over a test's folder (TLS, and plain
//!   TCP), its module identities with fixed keys ([`key_of`]), the development CA the modules trust
//!   ([`TestHub::ca_file`]) and each module's connection string ([`connection_string`]).
//! - [`ModuleProcess`]: a module binary started with the environment IoT Edge gives a module,
//!   killed when dropped; [`free_port`].
//! - [`TestClient`]: a rumqttc client that speaks the module protocol, its events on a channel.
//! - [`SmallDisk`]: a small tmpfs that a test fills up.
//!
//! Test helpers panic when the test cannot be set up (the test then fails, saying why).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hub;

pub use self::hub::*;
pub use edge_store::test_util::SmallDisk;
