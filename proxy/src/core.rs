//! State shared by the request path and the background services.

use crate::config::Config;
use crate::meter::Meter;
use crate::metrics::Metrics;
use crate::orgs::OrgCache;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use tollgate_common::clock::SharedClock;
use tollgate_common::domain::{PlanCatalog, RouteTable};
use tollgate_common::jwt::ClerkVerifier;
use tollgate_common::keys::cache::{KeyCache, OrgRef, SessionCache};

/// Everything the proxy shares across requests and background work.
pub struct Core {
    pub config: Config,
    /// This process's name in the counters' per-replica lease fields (random per start).
    pub replica: String,
    /// The plan catalogue, for the life of the process.
    pub catalog: &'static PlanCatalog,
    /// The routes table, for the life of the process.
    pub routes: &'static RouteTable,
    pub pg: PgPool,
    pub clerk: ClerkVerifier,
    pub keys: KeyCache,
    pub sessions: SessionCache<Arc<OrgRef>>,
    pub orgs: OrgCache,
    pub meter: Meter,
    pub metrics: Metrics,
    pub registry: prometheus::Registry,
    pub redis_health: RedisHealth,
    pub clock: SharedClock,
}

/// Tracks Redis outages as episodes: one log line when one starts and one when it ends, and while it lasts at
/// most one request per probe interval waits on Redis; the rest get the failure policy at once.
#[derive(Default)]
pub struct RedisHealth {
    down: AtomicBool,
    last_probe_ms: AtomicI64,
}

/// How often, during an outage, one request tries Redis again.
const PROBE_INTERVAL_MS: i64 = 200;

impl RedisHealth {
    /// Whether to skip Redis for this request (an outage is on and another request probed recently).
    pub fn skip(&self, now_ms: i64) -> bool {
        if !self.down.load(Ordering::Acquire) {
            return false;
        }
        let last = self.last_probe_ms.load(Ordering::Acquire);
        if now_ms - last < PROBE_INTERVAL_MS {
            return true;
        }
        // Exactly one request wins the right to probe.
        self.last_probe_ms
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    }

    /// Records a failed call.
    pub fn failed(&self, now_ms: i64, policy: &'static str, error: &dyn std::fmt::Display) {
        self.last_probe_ms.store(now_ms, Ordering::Release);
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %error, redis.failure_policy = policy, "redis unreachable: applying the failure policy until it returns");
        }
    }

    /// Whether an outage is on.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Records a successful call.
    pub fn succeeded(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("redis reachable again: metering resumed");
        }
    }
}
