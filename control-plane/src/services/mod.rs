//! Service functions: the SQL and Redis work behind the handlers. Handlers extract and authorize; services act.

pub mod accounts;
pub mod batch;
pub mod billing;
pub mod diag;
pub mod idempotency;
pub mod keys;
pub mod orgs;
pub mod outbound;
pub mod recorder;
pub mod retention;
pub mod stigg;
pub mod usage;
