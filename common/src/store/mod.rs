//! Connections to the two stores both binaries use.

pub mod pg;
pub mod redis;
