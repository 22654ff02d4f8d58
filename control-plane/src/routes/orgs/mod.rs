//! Tenants.

pub mod create;
