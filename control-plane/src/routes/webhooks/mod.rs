//! Webhook intake. No `Caller`: the signature is the credential.

pub mod stripe_receive;
