//! Operator-only endpoints.

pub mod jobs;
pub mod quotas_reset;
pub mod stigg_outbox;
pub mod webhooks_list;
pub mod webhooks_replay;
