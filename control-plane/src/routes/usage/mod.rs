//! Usage: seeding, recording, history.

pub mod history;
pub mod record;
pub mod seed;
