//! Connections to the two stores both binaries use.

pub mod billing;
pub mod counters;
pub mod pg;
pub mod redis;
