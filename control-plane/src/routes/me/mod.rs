//! The caller's own view.

pub mod entitlements;
