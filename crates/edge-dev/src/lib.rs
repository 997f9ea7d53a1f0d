//! `edge-dev`: a local Azure IoT Edge runtime for development and tests: the roles of edgeHub,
//! edgeAgent and IoT Hub on one machine, speaking edgeHub's own module protocol so that what passes here
//! runs unchanged on a device.
//!
//! The hub itself (MQTT 3.1.1 over TLS, SAS authentication, per-module authorization, routes, module
//! twins, direct methods, durable per-endpoint queues, and the development CA its certificate comes
//! from) is the crate `edge-hub`; this crate is the runtime around it.
//!
//! Parts:
//! - [`workload`]: the workload API on a unix socket (sign, trust bundle), as iotedged serves it.
//! - [`identities`]: the device's module keys and generation ids (`identities.json`).
//! - [`supervisor`]: edgeAgent's part: module processes in startup order, restart policies with back-off.
//! - [`upstream`]: what plays IoT Hub: the upstream log, the console, optional forwarding to a real hub.
//! - [`dashboard`]: the web page, JSON API, event stream and Prometheus metrics of the upstream data and
//!   the edge's health.
//! - [`docker`]: `up --docker`: the modules as containers from their images on a user-defined network.
//! - [`api`]: the control API of a running runtime (inject messages into inputs, patch desired
//!   properties, call methods, take the upstream link down and up, monitor messages) and its client,
//!   which the CLI commands `send`, `twin`, `invoke`, `upstream` and `monitor` use.
//! - [`up`]: `edge-dev up`, which wires all of the above from a deployment manifest (or, with
//!   `--single-module`, for one module run by hand).

pub mod api;
pub mod dashboard;
pub mod docker;
pub mod identities;
pub mod supervisor;
pub mod up;
pub mod upstream;
pub mod workload;

use std::path::PathBuf;

/// Errors of the runtime. Each message says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EdgeDevError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] edge_manifest::ManifestError),
    #[error(transparent)]
    Hub(#[from] edge_hub::HubError),
    #[error(transparent)]
    Pki(#[from] edge_hub::pki::PkiError),
    #[error("upstream: {0}")]
    Upstream(String),
    #[error(transparent)]
    Dashboard(#[from] dashboard::ExposureError),
}
