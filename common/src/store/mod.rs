//! Connections to the two stores both binaries use.

pub mod counters;
pub mod pg;
pub mod redis;
