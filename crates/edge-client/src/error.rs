//! The client's error type: every message says what is wrong and what to check.

use crate::wire::WireError;

/// Errors of identity setup, connection and requests.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// A connection string, token, topic or username problem.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The module environment is incomplete or wrong.
    #[error("module environment: {0}")]
    Environment(String),
    /// The CA certificate file cannot be used.
    #[error("CA certificate {path}: {reason}")]
    CaCertificate { path: String, reason: String },
    /// The workload API failed.
    #[error("workload API {uri}: {reason}")]
    Workload { uri: String, reason: String },
    /// The TLS handshake with the hub failed.
    #[error("TLS with the hub at {host}:{port}: {reason}")]
    Tls {
        host: String,
        port: u16,
        reason: String,
    },
    /// The hub refused the MQTT connection (CONNACK code).
    #[error("the hub at {host}:{port} refused the connection: {reason}")]
    Refused {
        host: String,
        port: u16,
        reason: String,
    },
    /// The hub cannot be reached.
    #[error("cannot reach the hub at {host}:{port}: {reason}; is edge-dev (or edgeHub) running and listening there?")]
    Unreachable {
        host: String,
        port: u16,
        reason: String,
    },
    /// The connection broke or the protocol went wrong.
    #[error("connection to the hub at {host}:{port}: {reason}")]
    Connection {
        host: String,
        port: u16,
        reason: String,
    },
    /// `try_send_output`: the bounded outgoing queue is full.
    #[error("the outgoing queue is full ({capacity} messages); use send_output to wait, or raise ClientOptions::queue_capacity")]
    QueueFull { capacity: usize },
    /// The topic, with the message's property bag, is longer than an MQTT topic can be.
    #[error("the topic with the message's properties would be {len} bytes, more than MQTT's limit of {limit}; send fewer or shorter properties")]
    TopicTooLong { len: usize, limit: usize },
    /// The message is larger than the hub accepts.
    #[error("the message is {size} bytes (body and properties), more than the hub's limit of {limit} bytes; split it")]
    TooLarge { size: usize, limit: usize },
    /// A twin request was answered with an error status.
    #[error("twin request answered with status {status}: {body}")]
    TwinStatus { status: u16, body: String },
    /// The hub's answer could not be understood.
    #[error("unexpected answer from the hub: {0}")]
    Protocol(String),
    /// An operation that this identity cannot do (e.g. `send_output` with a device identity).
    #[error("{0}")]
    Usage(String),
    /// The client has shut down (or its background task ended).
    #[error("the module client has shut down; create a new one with ModuleClient::connect")]
    Closed,
}

impl ClientError {
    /// Whether retrying the same connection later can help (network trouble), as opposed to a
    /// configuration error (auth refused, TLS trust, bad identity) that needs a fix first.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Connection { .. }
        ) || matches!(self, ClientError::Refused { reason, .. } if reason.starts_with("server unavailable"))
    }
}
