//! Support for Tollgate's end-to-end tests: every test gets its own PostgreSQL database and Redis namespace, a
//! control plane served on port 0, and a locally served JWKS with test-only keys to mint Clerk session tokens.
//!
//! # Layout
//!
//! * [`app`] — [`app::TestApp`], a running control plane plus an HTTP client.
//! * [`control_plane`] — the `tollgate-control-plane` binary as a child process (killed outright by a test).
//! * [`clerk`] — [`clerk::Jwks`], the JWKS server, and token minting (including the malicious shapes).
//! * [`db`] — per-test databases.
//! * [`redis_server`] — a private `redis-server` process a test may stop and start.
//! * [`redis_cluster`] — a private 3-master Redis Cluster on loopback.
//! * [`forwarder`] — a TCP hop a test can cut and restore (PostgreSQL outages).
//! * [`stripe`] — the Stripe emulator (localstripe extended by `tests/stripe/`).
//! * [`stigg`] — a fake Stigg GraphQL API (the mirror's four operations, their state and their failures).
//! * [`upstream`] — the customer API behind the proxy, recording what reaches it.
//! * [`proxy`] — the `tollgate-proxy` binary as a child process.
//! * [`metering`] — a control plane, an upstream and proxies wired to one database and Redis.
//! * [`page`] — a web page on an origin of its own (the widgets' and CORS's browser tests).
//! * [`nginx`] — a real nginx as the upstream, answering with the path it resolved.
//! * [`wait`] — waiting on a condition instead of sleeping.

pub mod app;
pub mod clerk;
pub mod control_plane;
pub mod db;
pub mod forwarder;
pub mod metering;
pub mod nginx;
pub mod page;
pub mod proxy;
pub mod raw;
pub mod redis_cluster;
pub mod redis_server;
pub mod stigg;
pub mod stripe;
pub mod upstream;
pub mod wait;

/// The workspace root.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

/// A free loopback port (bound and released; fine for test processes started right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// The value of `series` (name with labels, exactly as exported) in a Prometheus text exposition; 0 when absent.
pub fn metric_value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
