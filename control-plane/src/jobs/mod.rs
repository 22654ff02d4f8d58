//! Background work of the control plane, stopped by the same shutdown signal as the server.
//!
//! * [`stripe_events`] — processes received Stripe webhook events.
//! * [`stigg_outbox`] — delivers the Stigg mirror's outbox.

pub mod stigg_outbox;
pub mod stripe_events;
