//! edge-module: the module runtime, what every IoT Edge module here does the same way.
//!
//! Parts:
//! - [`layers`]: settings in layers over the module's settings type `T` (any `Serialize +
//!   DeserializeOwned + Default` struct that refuses unknown fields): `T::default()` -> a JSON file ->
//!   the module's prefixed environment variables -> command-line flags, each a JSON merge patch
//!   (RFC 7396, the `json-patch` crate), deserialized once at the end; errors ([`SettingsError`]) name
//!   the layer and the key and say what to do.
//! - [`duration`]: typed durations: `Duration` fields whose JSON stays a number in the unit their name
//!   gives (`tick_ms`, `grace_s`).
//! - [`cli`]: the command line derived from `T`'s fields: a flag and a variable per setting, plus
//!   the module's aliases; `--settings FILE`, `--print-settings`.
//! - `twin` (feature `client`): the twin loop: the module twin's desired properties as the last
//!   layer, live; refused properties keep the settings in force; every change is reported as
//!   `{settings, error}`.
//! - `run_module` (feature `client`): identity from the environment, the connection to edgeHub,
//!   the twin loop, the shutdown signal; [`init_tracing`] and [`shutdown_signal`] for every binary
//!   (edge-dev waits for the same signal).
//!
//! Why a crate of its own, and why `client` is a feature: esp-sim also builds as a plain command-line
//! tool without edge-client (`--no-default-features`), and it layers its settings the same way there.
//! The layering needs only serde, `json-patch` and clap; the twin loop needs edgeHub's client (MQTT,
//! TLS, the workload API). edge-client cannot hold the layering without taking clap and the command
//! line into every user of the client (the hub, edge-dev), and cannot depend on this crate (this crate
//! depends on it for the twin loop), so the twin patch itself stays in `edge_client::twin` and the
//! loop here uses it.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cli;
pub mod duration;
pub mod layers;
#[cfg(feature = "client")]
mod runtime;
#[cfg(feature = "client")]
pub mod twin;

pub use layers::{Builder, Layer, Layered, ModuleSettings, Names, SettingsError};
#[cfg(feature = "client")]
pub use runtime::{connect, run_module, Module, RuntimeError};
#[cfg(feature = "client")]
pub use twin::{Reported, TwinLoop, TwinSettings, Update};

/// Whether edgeAgent (or `edge-dev`) started this process as a module: `IOTEDGE_MODULEID` or
/// `EdgeHubConnectionString` is set.
pub fn under_iot_edge() -> bool {
    std::env::var_os("IOTEDGE_MODULEID").is_some()
        || std::env::var_os("EdgeHubConnectionString").is_some()
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Calling it again does nothing.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on SIGTERM (what `docker stop` and edgeAgent send) or SIGINT (Ctrl-C). If a handler cannot
/// be installed, it falls back to Ctrl-C alone.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process cleanly");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
