//! Tollgate's shared core: the pure domain and the adapters both binaries use.
//!
//! # Layout
//!
//! * [`domain`] — plans, periods, quota arithmetic, route pricing and the 429 envelope. Pure: no I/O, no clock;
//!   time is always a parameter.
//! * [`config`] — reading and validating settings from the environment (every key a named constant; every bad key
//!   reported at once).
//! * [`problem`] — RFC 9457 problem+json bodies, the one error shape on the wire.
//! * [`store`] — the PostgreSQL pool and the Redis connection (single node or cluster).
//! * [`credential`] — reading `Authorization` / `X-Api-Key`, the same way in both binaries.
//! * [`billing_cache`] — orgs' billing state, cached per process and pushed by change announcements (both binaries).
//! * [`keys`] — API key generation, hashing, resolution and revocation broadcast.
//! * [`jwt`] — Clerk session-token verification against a cached JWKS.
//! * [`telemetry`] — `tracing` subscriber and Sentry set-up.
//! * [`clock`] — the injectable source of "now" for code at the edges.

pub mod billing_cache;
pub mod cache;
pub mod clock;
pub mod config;
pub mod credential;
pub mod domain;
pub mod jwt;
pub mod keys;
pub mod problem;
pub mod store;
pub mod telemetry;
