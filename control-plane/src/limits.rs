//! Per-org rate limits of the endpoints that call Stripe or change keys, so that one tenant cannot spend the
//! control plane's Stripe budget, its database or another tenant's patience.
//!
//! A handler admits its call with one line — `app.limits.admit(&caller.principal, Group::Billing).await?` — after
//! authentication and before any work. The limit is counted per org (the caller's own: a user's active org, a
//! key's org) and endpoint [`Group`], exactly across replicas, by one Lua script in Redis
//! (`tollgate_common::store::ratelimit`). A refusal is 429 with [`RateLimitEnvelope`] and `Retry-After`.
//!
//! * **The operator is never limited** (it acts for every org and must be able to repair one).
//! * **Redis down fails open**: billing never waits for, or fails because of, the limiter. The call is admitted,
//!   `tollgate_cp_rate_limit_decisions_total{decision="failed_open"}` counts it and the outage is logged once.

use crate::auth::Principal;
use crate::config::RateLimits;
use crate::error::ApiError;
use prometheus::{IntCounterVec, Opts, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use tollgate_common::domain::{OrgId, RateLimit, RateLimitEnvelope};
use tollgate_common::store::ratelimit::{self, Admission};
use tollgate_common::store::redis::RedisConn;

/// A group of endpoints sharing one limit per org (see [`ROUTES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Everything that calls Stripe on a caller's behalf: setup-intent, portal, preview, upgrade.now,
    /// downgrade.schedule, subscription.create, customer.ensure.
    Billing,
    /// keys.create, keys.revoke.
    Keys,
    /// stigg/provision.
    Stigg,
}

impl Group {
    /// Every group, for registering metric series up front.
    pub const ALL: [Group; 3] = [Group::Billing, Group::Keys, Group::Stigg];

    /// Its name in keys, metrics and the envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Billing => "billing",
            Self::Keys => "keys",
            Self::Stigg => "stigg",
        }
    }
}

/// The limited endpoints and their groups; the OpenAPI document lists 429 for these (each handler calls
/// [`Limits::admit`] with its group).
pub const ROUTES: [(&str, Group); 12] = [
    ("/api/payments/setup-intent.create", Group::Billing),
    ("/api/payments/default-method.set", Group::Billing),
    ("/api/payments/portal.create", Group::Billing),
    ("/api/invoices.list", Group::Billing),
    ("/api/plans/preview", Group::Billing),
    ("/api/plans/upgrade.now", Group::Billing),
    ("/api/plans/downgrade.schedule", Group::Billing),
    ("/api/stripe/subscription.create", Group::Billing),
    ("/api/stripe/customer.ensure", Group::Billing),
    ("/api/keys.create", Group::Keys),
    ("/api/keys.revoke", Group::Keys),
    ("/api/stigg/provision", Group::Stigg),
];

/// The limiter's metrics.
#[derive(Clone)]
pub struct LimitMetrics {
    /// `tollgate_cp_rate_limit_decisions_total{group,decision}`: `admitted`, `limited`, `failed_open`.
    decisions: IntCounterVec,
}

impl LimitMetrics {
    /// The `decision` label values.
    pub const DECISIONS: [&'static str; 3] = ["admitted", "limited", "failed_open"];

    /// Creates and registers the metrics, every series at 0.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let decisions = IntCounterVec::new(
            Opts::new(
                "tollgate_cp_rate_limit_decisions_total",
                "Per-org rate-limit decisions by endpoint group: admitted, limited (429), failed_open (Redis \
                 unreachable: admitted unchecked).",
            ),
            &["group", "decision"],
        )?;
        for group in Group::ALL {
            for decision in Self::DECISIONS {
                decisions.with_label_values(&[group.as_str(), decision]);
            }
        }
        registry.register(Box::new(decisions.clone()))?;
        Ok(Self { decisions })
    }

    fn count(&self, group: Group, decision: &str) {
        self.decisions
            .with_label_values(&[group.as_str(), decision])
            .inc();
    }
}

/// The limiter.
pub struct Limits {
    redis: RedisConn,
    namespace: String,
    limits: RateLimits,
    metrics: LimitMetrics,
    /// Whether the last call found Redis down (so an outage is logged once, not per call).
    failing: AtomicBool,
}

impl Limits {
    /// Limits over `redis`, with keys in `namespace`.
    pub fn new(
        redis: RedisConn,
        namespace: String,
        limits: RateLimits,
        metrics: LimitMetrics,
    ) -> Self {
        Self {
            redis,
            namespace,
            limits,
            metrics,
            failing: AtomicBool::new(false),
        }
    }

    fn limit(&self, group: Group) -> Option<RateLimit> {
        match group {
            Group::Billing => self.limits.billing,
            Group::Keys => self.limits.keys,
            Group::Stigg => self.limits.stigg,
        }
    }

    /// Admits one call of `principal` to an endpoint of `group`, or refuses it with 429. Never fails otherwise.
    pub async fn admit(&self, principal: &Principal, group: Group) -> Result<(), ApiError> {
        let Some(limit) = self.limit(group) else {
            return Ok(());
        };
        // A user without an active org acts on none (the handler answers 403); the operator is not limited.
        let Some(org) = org_of(principal) else {
            return Ok(());
        };
        let key = ratelimit::redis_key(&self.namespace, org, group.as_str());
        match ratelimit::admit(&mut self.redis.clone(), &key, &limit).await {
            Ok(admission) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate limiter reaches redis again");
                }
                match admission {
                    Admission::Admitted { .. } => {
                        self.metrics.count(group, "admitted");
                        Ok(())
                    }
                    Admission::Refused { retry_after_ms } => {
                        self.metrics.count(group, "limited");
                        Err(ApiError::RateLimited(RateLimitEnvelope::new(
                            group.as_str(),
                            limit,
                            retry_after_ms,
                        )))
                    }
                }
            }
            Err(e) => {
                self.metrics.count(group, "failed_open");
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "rate limiter cannot reach redis; admitting calls unchecked");
                }
                Ok(())
            }
        }
    }
}

/// The org a principal's calls count against: its own.
fn org_of(principal: &Principal) -> Option<&OrgId> {
    match principal {
        Principal::Operator => None,
        Principal::User(session) => session.org.as_ref(),
        Principal::ApiKey(key) => Some(&key.org.org),
    }
}
