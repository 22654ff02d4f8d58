//! End-to-end tests against a real PostgreSQL and Redis. Each test builds its own control plane with a fresh
//! database and Redis namespace (see `tollgate_e2e::app`).

mod alerts;
mod auth;
mod bad_input;
mod billing;
mod billing_cache;
mod billing_changes;
mod cors;
mod counters;
mod diag;
mod hardening;
mod integers;
mod keys;
mod ledger;
mod lifecycle;
mod ops;
mod orgs;
mod overage;
mod proxy_exactness;
mod proxy_failures;
mod proxy_http;
mod retention;
mod revocation;
mod roles;
mod starvation;
mod stigg;
mod stripe_events;
mod support_selftest;
mod targets;
mod typescript;
mod usage;
mod widgets;
