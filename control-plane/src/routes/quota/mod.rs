//! Quota checks and the denial envelope.
//!
//! A used-up metric is answered by `ApiError::QuotaExceeded` (`error.rs`): the standard envelope, built by `common`
//! and byte-identical to the proxy's, with `Retry-After`.

pub mod check;
pub mod deny_envelope;
