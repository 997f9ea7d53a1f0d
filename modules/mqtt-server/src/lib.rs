//! mqtt-server
