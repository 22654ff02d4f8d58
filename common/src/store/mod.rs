//! Connections to the two stores both binaries use, and the tables and keys they share.

pub mod alerts;
pub mod billing;
pub mod counters;
pub mod orgs;
pub mod overage;
pub mod pg;
pub mod ratelimit;
pub mod redis;
pub mod subscriptions;
