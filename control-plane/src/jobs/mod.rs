//! Background work of the control plane, stopped by the same shutdown signal as the server.
//!
//! * [`caches`] — keeps cached keys and billing state in step with revocations and billing changes.
//! * [`stripe_events`] — processes received Stripe webhook events.
//! * [`stigg_outbox`] — delivers the Stigg mirror's outbox.
//! * [`purge`] — deletes finished rows past their retention.

pub mod caches;
pub mod purge;
pub mod stigg_outbox;
pub mod stripe_events;
