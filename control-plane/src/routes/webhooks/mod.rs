//! Webhooks: Stripe's intake (no `Caller`: the signature is the credential) and the orgs' own endpoints for
//! usage alerts.

pub mod endpoints_set;
pub mod stripe_receive;
