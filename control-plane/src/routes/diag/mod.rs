//! Diagnostics.

pub mod smoke;
