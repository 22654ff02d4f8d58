//! Orgs' billing state, cached so a warm org costs no PostgreSQL query, and refreshed in the background so plan
//! changes and new periods apply within one refresh interval.

use crate::meter::{Meter, Slot};
use chrono::{DateTime, Utc};
use moka::sync::Cache;
use sqlx::PgPool;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tollgate_common::domain::{Metric, OrgId, Period, Plan, PlanCatalog, PlanCode};
use tollgate_common::store::counters::CounterKey;

/// What decides an org's limits and period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Billing {
    /// No live subscription: the catalogue's `unsubscribed` plan over the calendar month.
    Unsubscribed,
    /// A live Stripe subscription.
    Subscribed {
        /// Stripe status.
        status: String,
        /// Plan code (PLANS_CONFIG).
        plan: PlanCode,
        /// Start of the stored current period; later periods follow monthly from it until Stripe says otherwise.
        anchor: DateTime<Utc>,
    },
}

impl Billing {
    /// The plan and period in force at `now`, or `None` when the org may not use metered routes.
    pub fn effective<'c>(
        &self,
        catalog: &'c PlanCatalog,
        now: DateTime<Utc>,
    ) -> Option<(&'c Plan, Period)> {
        match self {
            Self::Unsubscribed => Some((catalog.unsubscribed()?, Period::calendar_month(now))),
            Self::Subscribed {
                status,
                plan,
                anchor,
            } => {
                let period = Period::containing(*anchor, now);
                let plan = match status.as_str() {
                    "trialing" => Some(catalog.trial()),
                    "active" | "past_due" => catalog.plan(plan),
                    _ => None,
                };
                match plan {
                    Some(plan) => Some((plan, period)),
                    // Incomplete, unpaid or paused: no paid limits, as if unsubscribed.
                    None => Some((catalog.unsubscribed()?, Period::calendar_month(now))),
                }
            }
        }
    }
}

/// One cached org.
pub struct OrgEntry {
    /// Internal id.
    pub id: i64,
    /// Clerk id.
    pub org: OrgId,
    billing: RwLock<Billing>,
    slots: RwLock<Vec<Arc<Slot>>>,
}

impl OrgEntry {
    /// The plan and period in force at `now` (see [`Billing::effective`]), without cloning the state.
    pub fn effective<'c>(
        &self,
        catalog: &'c PlanCatalog,
        now: DateTime<Utc>,
    ) -> Option<(&'c Plan, Period)> {
        self.billing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .effective(catalog, now)
    }

    /// The slot of `metric` in `period`, created (and registered with `meter`) on first use.
    pub fn slot(&self, meter: &Meter, metric: &Metric, period: &Period) -> Arc<Slot> {
        let find = |slots: &[Arc<Slot>]| {
            slots
                .iter()
                .find(|s| s.key.period.start == period.start && s.key.metric == *metric)
                .cloned()
        };
        if let Some(slot) = find(
            &self
                .slots
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ) {
            return slot;
        }
        let mut slots = self
            .slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = find(&slots) {
            return slot;
        }
        // A new period for this org: the previous periods' slots stay registered with the meter until flushed.
        slots.retain(|s| s.key.period.end > period.start);
        let slot = meter.slot(CounterKey {
            org_id: self.id,
            metric: metric.clone(),
            period: *period,
        });
        slots.push(Arc::clone(&slot));
        slot
    }
}

#[derive(sqlx::FromRow)]
struct SubscriptionRow {
    org_id: i64,
    status: String,
    plan_code: String,
    current_period_start: DateTime<Utc>,
}

const LIVE_SUBSCRIPTIONS: &str =
    "SELECT org_id, status, plan_code, current_period_start FROM subscriptions
     WHERE org_id = ANY($1) AND status NOT IN ('canceled', 'incomplete_expired')";

fn billing_of(row: SubscriptionRow) -> Billing {
    match PlanCode::parse(&row.plan_code) {
        Ok(plan) => Billing::Subscribed {
            status: row.status,
            plan,
            anchor: row.current_period_start,
        },
        Err(_) => Billing::Unsubscribed,
    }
}

/// The cache of orgs by internal id, plus Clerk id → internal id for session tokens.
pub struct OrgCache {
    by_id: Cache<i64, Arc<OrgEntry>>,
    by_clerk: Cache<OrgId, i64>,
}

impl Default for OrgCache {
    fn default() -> Self {
        Self {
            by_id: Cache::builder().max_capacity(100_000).build(),
            by_clerk: Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }
}

impl OrgCache {
    /// The entry of an org, loading its billing state on first use.
    pub async fn get(
        &self,
        pg: &PgPool,
        id: i64,
        org: &OrgId,
    ) -> Result<Arc<OrgEntry>, sqlx::Error> {
        if let Some(entry) = self.by_id.get(&id) {
            return Ok(entry);
        }
        let row: Option<SubscriptionRow> = sqlx::query_as(LIVE_SUBSCRIPTIONS)
            .bind(vec![id])
            .fetch_optional(pg)
            .await?;
        let entry = Arc::new(OrgEntry {
            id,
            org: org.clone(),
            billing: RwLock::new(row.map_or(Billing::Unsubscribed, billing_of)),
            slots: RwLock::new(Vec::new()),
        });
        // Two first requests may race: keep whichever entry landed first so slots are not split.
        Ok(self.by_id.get_with(id, || entry))
    }

    /// The internal id of a Clerk org, `None` when Tollgate does not know it.
    pub async fn id_of(&self, pg: &PgPool, org: &OrgId) -> Result<Option<i64>, sqlx::Error> {
        if let Some(id) = self.by_clerk.get(org) {
            return Ok(Some(id));
        }
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM orgs WHERE clerk_org_id = $1")
            .bind(org.as_str())
            .fetch_optional(pg)
            .await?;
        if let Some(id) = id {
            self.by_clerk.insert(org.clone(), id);
        }
        Ok(id)
    }

    /// Reloads the billing state of every cached org in one query.
    pub async fn refresh(&self, pg: &PgPool) -> Result<usize, sqlx::Error> {
        let ids: Vec<i64> = self.by_id.iter().map(|(id, _)| *id).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let rows: Vec<SubscriptionRow> = sqlx::query_as(LIVE_SUBSCRIPTIONS)
            .bind(&ids)
            .fetch_all(pg)
            .await?;
        let mut fresh: std::collections::HashMap<i64, Billing> =
            ids.iter().map(|id| (*id, Billing::Unsubscribed)).collect();
        for row in rows {
            fresh.insert(row.org_id, billing_of(row));
        }
        for (id, billing) in fresh {
            if let Some(entry) = self.by_id.get(&id) {
                let mut current = entry
                    .billing
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *current != billing {
                    tracing::info!(org.id = %entry.org, "billing state changed");
                    *current = billing;
                }
            }
        }
        Ok(ids.len())
    }

    /// How many orgs are cached.
    pub fn len(&self) -> u64 {
        self.by_id.entry_count()
    }
}
