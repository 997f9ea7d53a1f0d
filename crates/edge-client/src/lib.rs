//! edge-client: the module side of Azure IoT Edge.
//!
//! Parts:
//! - [`wire`]: the MQTT wire formats (messages and property bags, topics, SAS tokens, connection
//!   strings, usernames), pure and shared with the hub side (edge-dev).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod wire;
