//! Jobs the operator can run on demand.

pub mod stripe_process;
