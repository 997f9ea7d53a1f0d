//! esp-sim
