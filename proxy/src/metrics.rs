//! The proxy's Prometheus metrics: one struct, registered into an injected registry. Hot-path series are resolved
//! to their label children once at start, so recording is an atomic add, not a label lookup.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use tollgate_common::billing_cache::BillingCacheMetrics;
use tollgate_common::domain::{Metric, PlanCatalog};
use tollgate_common::keys::cache::KeyCacheMetrics;

/// Sub-millisecond buckets: the quota round trip lives well below a millisecond.
const FAST_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Quota decision outcomes (envoy's split, plus the failure policies).
#[derive(Debug, Clone, Copy)]
pub enum Decision {
    /// Admitted with at least 10 % of the limit left.
    Within,
    /// Admitted with less than 10 % left.
    Near,
    /// Refused with 429.
    Over,
    /// Redis unreachable; admitted unmetered.
    FailedOpen,
    /// Redis unreachable; refused with 503.
    FailedClosed,
}

const DECISIONS: [(&str, Decision); 5] = [
    ("within", Decision::Within),
    ("near", Decision::Near),
    ("over", Decision::Over),
    ("failed_open", Decision::FailedOpen),
    ("failed_closed", Decision::FailedClosed),
];

/// Counters for one metric's decisions.
#[derive(Clone)]
pub struct DecisionCounters([IntCounter; 5]);

impl DecisionCounters {
    /// Counts one decision.
    pub fn inc(&self, d: Decision) {
        self.0[d as usize].inc();
    }
}

/// Every metric the proxy exports.
#[derive(Clone)]
pub struct Metrics {
    requests: IntCounterVec,
    /// `[metered?][status class 1..=5]`, resolved at start.
    request_children: [[IntCounter; 6]; 2],
    /// `tollgate_proxy_request_duration_seconds{class}`.
    pub duration: [Histogram; 2],
    /// By metric: a handful, so a scan beats hashing the name.
    decisions: Vec<(Metric, DecisionCounters)>,
    /// `tollgate_proxy_auth_failures_total{reason}`.
    pub auth_failures: IntCounterVec,
    /// `tollgate_proxy_redis_seconds`: quota round-trip latency.
    pub redis_latency: Histogram,
    /// `tollgate_proxy_redis_errors_total`.
    pub redis_errors: IntCounter,
    /// `tollgate_proxy_postgres_errors_total`.
    pub postgres_errors: IntCounter,
    /// `tollgate_proxy_writeback_lag_seconds`: age of the oldest change not yet in PostgreSQL.
    pub writeback_lag: prometheus::Gauge,
    /// `tollgate_proxy_writeback_batch_size`: counters per flush.
    pub writeback_batch: Histogram,
    /// `tollgate_proxy_writeback_failures_total`.
    pub writeback_failures: IntCounter,
    /// `tollgate_proxy_writeback_rows_total`: rows changed in PostgreSQL.
    pub writeback_rows: IntCounter,
    /// `tollgate_proxy_usage_alerts_total{event}`: usage alerts this proxy recorded first (each alert is recorded
    /// once across all proxies).
    pub usage_alerts: IntCounterVec,
    /// `tollgate_proxy_cached_orgs`.
    pub cached_orgs: IntGauge,
    /// `tollgate_proxy_lease_forfeits_total`: leases dropped because their counter was reset.
    pub lease_forfeits: IntCounter,
    /// `tollgate_proxy_reset_announcements_total`: counter resets this replica heard of.
    pub reset_announcements: IntCounter,
    /// `tollgate_proxy_refunds_total`: admitted requests whose units were given back because the upstream never
    /// answered.
    pub refunds: IntCounter,
    /// `tollgate_proxy_settle_passes_total{outcome}`: settle passes that had leases to report, by outcome (`ok`,
    /// `failed`: Redis unreachable, repeated next interval).
    pub settle_passes: [IntCounter; 2],
    /// `tollgate_proxy_settle_reports_total`: lease reports (consumption and returns) that settle passes sent.
    pub settle_reports: IntCounter,
    /// The key cache's: `tollgate_proxy_key_resolutions_total{outcome}`, `tollgate_proxy_key_cache_flushes_total{reason}`,
    /// `tollgate_proxy_revocation_announcements_total`.
    pub keys: KeyCacheMetrics,
    /// The billing cache's: `tollgate_proxy_billing_cache_…` (entries, hits, misses, announcements, reloads, full
    /// reloads, safety-net rows and corrections, queries by reason).
    pub orgs: BillingCacheMetrics,
}

impl Metrics {
    /// Creates and registers every metric; decision counters for each metric the catalogue names.
    pub fn register(registry: &Registry, catalog: &PlanCatalog) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "tollgate_proxy_requests_total",
                "Requests by route class and status class.",
            ),
            &["class", "status"],
        )?;
        let classes = ["unmetered", "metered"];
        let statuses = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];
        let request_children =
            classes.map(|c| statuses.map(|s| requests.with_label_values(&[c, s])));
        let duration_vec = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_proxy_request_duration_seconds",
                "Time from request arrival to the end of the response, by route class.",
            )
            .buckets(FAST_BUCKETS.to_vec()),
            &["class"],
        )?;
        let duration = classes.map(|c| duration_vec.with_label_values(&[c]));
        let decisions_vec = IntCounterVec::new(
            Opts::new(
                "tollgate_proxy_quota_decisions_total",
                "Quota decisions by metric and outcome.",
            ),
            &["metric", "decision"],
        )?;
        let decisions = catalog
            .metrics()
            .map(|m| {
                let counters = DECISIONS
                    .map(|(label, _)| decisions_vec.with_label_values(&[m.as_str(), label]));
                (m.clone(), DecisionCounters(counters))
            })
            .collect();
        let settle_vec = IntCounterVec::new(
            Opts::new(
                "tollgate_proxy_settle_passes_total",
                "Settle passes that had leases to report, by outcome (ok, failed: retried next interval).",
            ),
            &["outcome"],
        )?;
        let m = Self {
            requests,
            request_children,
            duration,
            decisions,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "tollgate_proxy_auth_failures_total",
                    "Requests refused before metering, by reason.",
                ),
                &["reason"],
            )?,
            redis_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "tollgate_proxy_redis_seconds",
                    "Quota check-and-consume round trips.",
                )
                .buckets(FAST_BUCKETS.to_vec()),
            )?,
            redis_errors: IntCounter::new(
                "tollgate_proxy_redis_errors_total",
                "Failed Redis calls.",
            )?,
            postgres_errors: IntCounter::new(
                "tollgate_proxy_postgres_errors_total",
                "Failed PostgreSQL calls.",
            )?,
            writeback_lag: prometheus::Gauge::new(
                "tollgate_proxy_writeback_lag_seconds",
                "Age of the oldest counter change not yet written to PostgreSQL.",
            )?,
            writeback_batch: Histogram::with_opts(
                HistogramOpts::new(
                    "tollgate_proxy_writeback_batch_size",
                    "Counters written per flush.",
                )
                .buckets(vec![
                    1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0,
                ]),
            )?,
            writeback_failures: IntCounter::new(
                "tollgate_proxy_writeback_failures_total",
                "Flushes that failed and will be retried.",
            )?,
            writeback_rows: IntCounter::new(
                "tollgate_proxy_writeback_rows_total",
                "Counter rows changed in PostgreSQL by write-back.",
            )?,
            usage_alerts: {
                let v = IntCounterVec::new(
                    prometheus::Opts::new(
                        "tollgate_proxy_usage_alerts_total",
                        "Usage alerts recorded by this proxy (first to see the crossing), by event: \
                         usage.threshold.crossed, usage.bound.reached, rearmed (usage fell back under one).",
                    ),
                    &["event"],
                )?;
                for event in ["usage.threshold.crossed", "usage.bound.reached", "rearmed"] {
                    v.with_label_values(&[event]);
                }
                v
            },
            cached_orgs: IntGauge::new(
                "tollgate_proxy_cached_orgs",
                "Orgs whose billing state is cached.",
            )?,
            lease_forfeits: IntCounter::new(
                "tollgate_proxy_lease_forfeits_total",
                "Leases dropped because their counter was reset.",
            )?,
            reset_announcements: IntCounter::new(
                "tollgate_proxy_reset_announcements_total",
                "Counter resets announced by the control plane and heard by this replica.",
            )?,
            refunds: IntCounter::new(
                "tollgate_proxy_refunds_total",
                "Admitted requests whose units were given back because the upstream never answered.",
            )?,
            settle_passes: ["ok", "failed"].map(|o| settle_vec.with_label_values(&[o])),
            settle_reports: IntCounter::new(
                "tollgate_proxy_settle_reports_total",
                "Lease reports (consumption and returned units) sent by settle passes.",
            )?,
            keys: KeyCacheMetrics::register(registry, "tollgate_proxy")?,
            orgs: BillingCacheMetrics::register(registry, "tollgate_proxy")?,
        };
        for reason in crate::auth::AuthFailure::LABELS {
            m.auth_failures.with_label_values(&[reason]);
        }
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(duration_vec))?;
        registry.register(Box::new(decisions_vec))?;
        registry.register(Box::new(m.auth_failures.clone()))?;
        registry.register(Box::new(m.redis_latency.clone()))?;
        registry.register(Box::new(m.redis_errors.clone()))?;
        registry.register(Box::new(m.postgres_errors.clone()))?;
        registry.register(Box::new(m.writeback_lag.clone()))?;
        registry.register(Box::new(m.writeback_batch.clone()))?;
        registry.register(Box::new(m.writeback_failures.clone()))?;
        registry.register(Box::new(m.writeback_rows.clone()))?;
        registry.register(Box::new(m.usage_alerts.clone()))?;
        registry.register(Box::new(m.cached_orgs.clone()))?;
        registry.register(Box::new(m.lease_forfeits.clone()))?;
        registry.register(Box::new(m.reset_announcements.clone()))?;
        registry.register(Box::new(m.refunds.clone()))?;
        registry.register(Box::new(settle_vec))?;
        registry.register(Box::new(m.settle_reports.clone()))?;
        Ok(m)
    }

    /// Counts one finished request.
    pub fn request(&self, metered: bool, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.request_children[usize::from(metered)][class].inc();
    }

    /// The decision counters of `metric` (every route metric is in the catalogue, checked at start).
    pub fn decisions(&self, metric: &Metric) -> Option<&DecisionCounters> {
        self.decisions
            .iter()
            .find_map(|(m, counters)| (m == metric).then_some(counters))
    }
}
