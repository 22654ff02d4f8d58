//! Orgs' billing state, cached so a warm org costs no PostgreSQL query, and refreshed in the background so plan
//! changes and new periods apply within one refresh interval.

use crate::meter::{Meter, Slot};
use chrono::{DateTime, Utc};
use quick_cache::sync::Cache;
use sqlx::PgPool;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tollgate_common::cache::ExpiringCache;
use tollgate_common::domain::{Billing, Metric, OrgId, Period, PlanCatalog, Terms};
use tollgate_common::store::billing;
use tollgate_common::store::counters::CounterKey;

/// One cached org.
pub struct OrgEntry {
    /// Internal id.
    pub id: i64,
    /// Clerk id.
    pub org: OrgId,
    billing: RwLock<State>,
    slots: RwLock<Vec<Arc<Slot>>>,
}

/// The billing state and the terms last derived from it, kept until their period ends or the state changes (the
/// period is calendar arithmetic; most requests of a period need not redo it).
struct State {
    billing: Billing,
    terms: Option<Terms<'static>>,
}

impl State {
    fn new(billing: Billing) -> Self {
        Self {
            billing,
            terms: None,
        }
    }
}

impl OrgEntry {
    /// The plan and period in force at `now` (see [`Billing::terms`]), without cloning the state.
    pub fn terms(
        &self,
        catalog: &'static PlanCatalog,
        now: DateTime<Utc>,
    ) -> Option<Terms<'static>> {
        let within = |t: &Terms<'_>| t.period.start <= now && now < t.period.end;
        if let Some(terms) = self
            .billing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .terms
            .filter(within)
        {
            return Some(terms);
        }
        let mut state = self
            .billing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let terms = state.billing.terms(catalog, now);
        state.terms = terms;
        terms
    }

    /// The slot of `metric` in `period`, created (and registered with `meter`) on first use.
    pub fn slot(&self, meter: &Meter, metric: &Metric, period: &Period) -> Arc<Slot> {
        let find = |slots: &[Arc<Slot>]| {
            slots
                .iter()
                .find(|s| {
                    s.counter.key().period.start == period.start
                        && s.counter.key().metric == *metric
                })
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
        slots.retain(|s| s.counter.key().period.end > period.start);
        let slot = meter.slot(CounterKey {
            org_id: self.id,
            metric: metric.clone(),
            period: *period,
        });
        slots.push(Arc::clone(&slot));
        slot
    }
}

/// How long a Clerk org id → internal id mapping is used before it is read again.
const CLERK_ID_FOR: Duration = Duration::from_secs(3600);

/// The cache of orgs by internal id, plus Clerk id → internal id for session tokens.
pub struct OrgCache {
    by_id: Cache<i64, Arc<OrgEntry>>,
    by_clerk: ExpiringCache<OrgId, i64>,
}

impl Default for OrgCache {
    fn default() -> Self {
        Self {
            by_id: Cache::new(100_000),
            by_clerk: ExpiringCache::new(100_000, CLERK_ID_FOR),
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
        let entry = Arc::new(OrgEntry {
            id,
            org: org.clone(),
            billing: RwLock::new(State::new(billing::load(pg, id).await?)),
            slots: RwLock::new(Vec::new()),
        });
        // Two first requests may race: keep whichever entry landed first so slots are not split.
        let Ok(entry) = self
            .by_id
            .get_or_insert_with(&id, || Ok::<_, Infallible>(entry));
        Ok(entry)
    }

    /// The internal id of a Clerk org, `None` when Tollgate does not know it.
    pub async fn id_of(&self, pg: &PgPool, org: &OrgId) -> Result<Option<i64>, sqlx::Error> {
        let now = Instant::now();
        if let Some(id) = self.by_clerk.get(org, now) {
            return Ok(Some(id));
        }
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM orgs WHERE clerk_org_id = $1")
            .bind(org.as_str())
            .fetch_optional(pg)
            .await?;
        if let Some(id) = id {
            self.by_clerk.insert(org.clone(), id, now);
        }
        Ok(id)
    }

    /// Reloads the billing state of every cached org in one query.
    pub async fn refresh(&self, pg: &PgPool) -> Result<usize, sqlx::Error> {
        let ids: Vec<i64> = self.by_id.iter().map(|(id, _)| id).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        for (id, billing) in billing::load_many(pg, &ids).await? {
            if let Some(entry) = self.by_id.get(&id) {
                let mut current = entry
                    .billing
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if current.billing != billing {
                    tracing::info!(org.id = %entry.org, "billing state changed");
                    *current = State::new(billing);
                }
            }
        }
        Ok(ids.len())
    }

    /// How many orgs are cached.
    pub fn len(&self) -> u64 {
        self.by_id.len() as u64
    }
}
