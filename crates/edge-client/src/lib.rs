//! edge-client
