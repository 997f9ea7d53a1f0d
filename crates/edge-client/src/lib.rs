//! edge-client: the module side of Azure IoT Edge, on rumqttc + rustls (ring), with hyper over a
//! unix socket for the workload API.
//!
//! Parts:
//! - [`wire`]: the MQTT wire formats (messages and property bags, topics, SAS tokens, connection
//!   strings, usernames), pure and shared with the hub side (edge-dev).
//! - [`identity`]: who the client is ([`Identity`]) and how it gets tokens ([`Credentials`]): the
//!   `IOTEDGE_*` environment, `EdgeHubConnectionString`, or a device connection string.
//! - [`workload`]: the workload API client (sign, trust bundle).
//! - [`tls`]: rustls configuration and explanations of TLS failures.
//! - [`client`]: [`ModuleClient`] (outputs, inputs, twin, methods, reconnect, token renewal) and its
//!   [`Events`].
//! - [`error`]: the error type, [`ClientError`], whose messages say what to check.
//! - [`topic`]: MQTT topic filters (matching, syntax, covering), shared by edge-dev's hub and
//!   MqttServerModule's device ACL.
//! - [`twin`]: twin patches (JSON merge patch without `$` keys), shared by the hub and the modules.
//!
//! A module's main loop:
//!
//! ```no_run
//! use edge_client::{ClientOptions, Event, Message, ModuleClient};
//!
//! # async fn run() -> Result<(), edge_client::ClientError> {
//! let (client, mut events) = ModuleClient::from_environment(ClientOptions::default()).await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Input(input) => {
//!             // Forward, then acknowledge: the hub keeps the message until `ack`.
//!             client.send_output("output1", Message::new(input.message.body.clone())).await?;
//!             input.ack();
//!         }
//!         Event::Twin(twin) => println!("desired: {}", twin["desired"]),
//!         Event::DesiredPatch(patch) => {
//!             client.update_reported(serde_json::json!({ "applied": patch["$version"] })).await?;
//!         }
//!         Event::Method(call) => call.respond(200, serde_json::json!({ "ok": true })),
//!         Event::Connected | Event::Disconnected(_) => {}
//!     }
//! }
//! client.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod client;
pub mod error;
pub mod identity;
pub mod tls;
pub mod topic;
pub mod twin;
pub mod wire;
pub mod workload;

pub use client::{
    ClientOptions, Delivery, Event, Events, InputMessage, MethodRequest, ModuleClient,
};
pub use error::ClientError;
pub use identity::{Credentials, Identity};
pub use tls::Trust;
pub use wire::{ConnectionString, Message, WireError};
pub use workload::WorkloadClient;
