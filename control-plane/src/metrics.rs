//! The control plane's Prometheus metrics, declared in one place and registered into an injected registry.
//!
//! No label ever carries an org id, key or user: cardinality stays bounded and nothing identifying leaks.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tollgate_common::billing_cache::BillingCacheMetrics;
use tollgate_common::keys::cache::KeyCacheMetrics;

/// The `dependency` label values of `tollgate_cp_dependency_errors_total`.
pub const DEPENDENCIES: [&str; 2] = ["postgres", "redis"];

/// Every metric the control plane exports.
#[derive(Clone)]
pub struct Metrics {
    /// `tollgate_cp_http_requests_total{route,method,status}`.
    pub http_requests: IntCounterVec,
    /// `tollgate_cp_http_request_duration_seconds{route,method}`.
    pub http_duration: HistogramVec,
    /// `tollgate_cp_auth_failures_total{reason}`.
    pub auth_failures: IntCounterVec,
    /// `tollgate_cp_dependency_errors_total{dependency}` (`postgres`, `redis`).
    pub dependency_errors: IntCounterVec,
    /// The key cache's: `tollgate_cp_key_resolutions_total{outcome}`, `tollgate_cp_key_cache_flushes_total{reason}`,
    /// `tollgate_cp_revocation_announcements_total`.
    pub keys: KeyCacheMetrics,
    /// The billing cache's: `tollgate_cp_billing_cache_…` (see `tollgate_common::billing_cache`).
    pub accounts: BillingCacheMetrics,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            http_requests: IntCounterVec::new(
                Opts::new(
                    "tollgate_cp_http_requests_total",
                    "HTTP requests by route template, method and status.",
                ),
                &["route", "method", "status"],
            )?,
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    "tollgate_cp_http_request_duration_seconds",
                    "HTTP request latency by route template and method.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["route", "method"],
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "tollgate_cp_auth_failures_total",
                    "Requests refused before authorization, by reason.",
                ),
                &["reason"],
            )?,
            dependency_errors: IntCounterVec::new(
                Opts::new(
                    "tollgate_cp_dependency_errors_total",
                    "Failed calls to PostgreSQL or Redis.",
                ),
                &["dependency"],
            )?,
            keys: KeyCacheMetrics::register(registry, "tollgate_cp")?,
            accounts: BillingCacheMetrics::register(registry, "tollgate_cp")?,
        };
        // Known label values exist from the start, so dashboards and alerts see the series before the first error.
        for dependency in DEPENDENCIES {
            m.dependency_errors.with_label_values(&[dependency]);
        }
        for reason in ["unauthenticated", "unavailable"] {
            m.auth_failures.with_label_values(&[reason]);
        }
        registry.register(Box::new(m.http_requests.clone()))?;
        registry.register(Box::new(m.http_duration.clone()))?;
        registry.register(Box::new(m.auth_failures.clone()))?;
        registry.register(Box::new(m.dependency_errors.clone()))?;
        Ok(m)
    }
}
