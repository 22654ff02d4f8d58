//! Background work of the control plane, stopped by the same shutdown signal as the server.
//!
//! * [`stripe_events`] — processes received Stripe webhook events.

pub mod stripe_events;
