//! edge-dev
