//! Operator-only endpoints.

pub mod quotas_reset;
