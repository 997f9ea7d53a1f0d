//! stream-query
