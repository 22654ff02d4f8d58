//! Background work of the control plane, stopped by the same shutdown signal as the server.
//!
//! * [`caches`] — keeps cached keys and billing state in step with revocations and billing changes.
//! * [`purge`] — deletes finished rows past their retention.
//!
//! Received Stripe events and the Stigg outbox are kinds of job on the one queue (`crate::queue`): its runner
//! works them, `TOLLGATE_STRIPE_WORKERS` and [`STIGG_TASKS`] tasks per replica.

pub mod caches;
pub mod purge;

/// Stigg delivery tasks per replica.
pub const STIGG_TASKS: usize = 2;
/// Outgoing webhook delivery tasks per replica (deliveries of one endpoint go one at a time).
pub const WEBHOOK_TASKS: usize = 4;
/// Overage report tasks per replica (one call at a time per org and metric).
pub const METER_TASKS: usize = 2;
