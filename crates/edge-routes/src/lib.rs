//! edge-routes
