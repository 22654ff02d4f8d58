//! The Stigg mirror: 1.4 provisioning.

pub mod provision;
