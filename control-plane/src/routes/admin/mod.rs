//! Operator-only endpoints.

pub mod quotas_reset;
pub mod webhooks_replay;
