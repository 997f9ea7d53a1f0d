//! edge-manifest
