//! edge-dev
pub mod hub;
pub mod pki;
