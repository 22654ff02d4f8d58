//! Usage: seeding, recording, history, reconciling overage with Stripe.

pub mod history;
pub mod reconcile;
pub mod record;
pub mod seed;
