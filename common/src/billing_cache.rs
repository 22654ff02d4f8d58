//! Orgs' billing state, cached per process and pushed in O(changes): the one cache of it that the proxy and the
//! control plane share.
//!
//! * **Entries.** [`BillingCache`] maps an org's internal id to an [`Entry`]: its Clerk id, its [`Billing`] state and
//!   the [`Terms`] last derived from it (kept until their period ends or the state changes: a period that ends by
//!   itself needs no query, the cached state computes the next one), plus a per-entry extension `E` (the proxy hangs
//!   its counter slots there, the control plane uses `()`). A Clerk id → internal id index sits beside it (that
//!   mapping never changes once written). Both are bounded by `TOLLGATE_ORG_CACHE_CAPACITY` (`quick_cache`): at the
//!   bound an org is evicted, and its next request loads it cold (one query). A warm look-up is one probe.
//! * **Announcements.** Every write to `subscriptions` is announced on [`CHANGES_CHANNEL`] by the writing transaction
//!   when it commits (a trigger, whoever wrote the row), with the org's internal id. [`BillingCache::follow`] listens;
//!   an announcement naming a cached org reloads that org alone (a burst is coalesced into one query); one naming an
//!   org not cached is ignored; one that cannot be read reloads every cached org. After the listener (re)connects,
//!   every cached org is reloaded (in chunks of [`RELOAD_CHUNK`]): announcements made meanwhile were lost.
//! * **Safety net.** A full check spread over `TOLLGATE_BILLING_RECHECK_MS`: each second, the next
//!   ceil(n / interval in s) cached orgs (round robin) are re-read with one query. A state that differs from the
//!   cache is a *correction*: an announcement was missed (counted, and applied).
//! * **Read-your-writes.** The code that commits a subscription change calls [`BillingCache::reload`] right after
//!   its commit, so the same replica answers with the new state; the other replicas hear the announcement.
//!
//! # Races
//!
//! A load whose query started before a change committed may answer after the change's announcement was applied:
//! it must not overwrite the newer state. Each entry counts the reloads it was asked for (`asked`); a result is
//! applied only if no reload was asked for since its query started (the later one applies its own, fresher,
//! result). A cold load has no entry yet to count on, so every announcement also moves a cache-wide counter; a cold
//! load that sees it moved while it ran reloads the org once more after inserting it.

use crate::domain::{Billing, Bound, Metric, OrgId, PlanCatalog, SpendCap, Terms};
use crate::store::billing::{self, CHANGES_CHANNEL, OrgBilling};
use chrono::{DateTime, Utc};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use quick_cache::sync::Cache;
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

/// Orgs reloaded per query after a reconnect (and per query of a coalesced burst).
pub const RELOAD_CHUNK: usize = 10_000;
/// How long a burst of announcements is collected before one query reloads them all.
pub const COALESCE_WINDOW: Duration = Duration::from_millis(5);
/// The `application_name` of the listener's PostgreSQL connection (so operators and tests can find it).
pub const LISTENER_APPLICATION_NAME: &str = "tollgate_billing_follower";

// === Loading ===

/// Where billing state comes from: PostgreSQL in production ([`PgPool`]), a fake in unit tests.
pub trait Loader: Sync {
    /// The billing state of each of `ids` (see [`billing::load_many`]).
    fn load_many(
        &self,
        ids: &[i64],
    ) -> impl Future<Output = Result<HashMap<i64, OrgBilling>, sqlx::Error>> + Send;
}

impl Loader for PgPool {
    fn load_many(
        &self,
        ids: &[i64],
    ) -> impl Future<Output = Result<HashMap<i64, OrgBilling>, sqlx::Error>> + Send {
        billing::load_many(self, ids)
    }
}

// === Entry ===

/// Generations of billing states, unique in the process (see `Entry::generation`).
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1
}

/// The billing state and the terms last derived from it.
struct State {
    billing: OrgBilling,
    terms: Option<Terms<'static>>,
}

/// One cached org.
pub struct Entry<E> {
    /// Internal id.
    pub id: i64,
    /// Clerk id.
    pub org: OrgId,
    state: RwLock<State>,
    /// Reloads asked for this entry; a result is applied only if none was asked for since its query started.
    asked: AtomicU64,
    /// Whether the state holds a spend cap (kept with the state, so [`Self::bound`] reads the lock only then).
    capped: std::sync::atomic::AtomicBool,
    /// A process-wide unique number, new for every entry and every changed state applied to it: what was derived
    /// from another generation (a proxy's lease limit) is derived again, also across an eviction and a cold load.
    generation: AtomicU64,
    /// What the caller hangs on the entry (the proxy: its counter slots).
    pub ext: E,
}

impl<E: Default> Entry<E> {
    fn new(id: i64, org: OrgId, billing: OrgBilling) -> Self {
        Self {
            capped: std::sync::atomic::AtomicBool::new(billing.cap.is_some()),
            generation: AtomicU64::new(next_generation()),
            id,
            org,
            state: RwLock::new(State {
                billing,
                terms: None,
            }),
            asked: AtomicU64::new(0),
            ext: E::default(),
        }
    }
}

impl<E> Entry<E> {
    /// The billing state (a clone).
    pub fn billing(&self) -> Billing {
        self.read().billing.billing.clone()
    }

    /// The generation of the billing state: unique in the process, new whenever a changed state is applied (and
    /// for every entry, so an org evicted and loaded again never reuses one).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The org's spend cap, if it set one.
    pub fn cap(&self) -> Option<Arc<SpendCap>> {
        self.read().billing.cap.clone()
    }

    /// Where admission of `metric` stops under `terms` (from [`Self::terms`]): [`crate::domain::overage::bound`]
    /// with the entry's spend cap, computed on the request path with one look-up per map and the state's lock taken
    /// only when the org has a cap.
    pub fn bound(&self, terms: &Terms<'_>, metric: &Metric) -> Bound {
        let included = terms.plan.limit(metric);
        let Some(o) = terms.plan.overage(metric).filter(|_| terms.billable) else {
            return Bound::Included(included);
        };
        // Most orgs set no cap: then the state's lock is not taken.
        let budget = if self.capped.load(Ordering::Acquire) {
            self.read()
                .billing
                .cap
                .as_ref()
                .map(|c| c.units_at(&o.price))
        } else {
            None
        };
        Bound::of(included, true, o.ceiling, budget)
    }

    /// The plan and period in force at `now` (see [`Billing::terms`]), without cloning the state: the terms last
    /// derived are reused while `now` is inside their period.
    pub fn terms(
        &self,
        catalog: &'static PlanCatalog,
        now: DateTime<Utc>,
    ) -> Option<Terms<'static>> {
        let within = |t: &Terms<'_>| t.period.start <= now && now < t.period.end;
        if let Some(terms) = self.read().terms.filter(within) {
            return Some(terms);
        }
        let mut state = self.write();
        let terms = state.billing.billing.terms(catalog, now);
        state.terms = terms;
        terms
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a loaded state if no reload was asked for since `asked` was read. True when the state changed.
    fn apply(&self, billing: OrgBilling, asked: u64) -> bool {
        let mut state = self.write();
        if self.asked.load(Ordering::SeqCst) != asked || state.billing == billing {
            return false;
        }
        self.capped.store(billing.cap.is_some(), Ordering::Release);
        *state = State {
            billing,
            terms: None,
        };
        self.generation.store(next_generation(), Ordering::Release);
        true
    }
}

// === Metrics ===

/// Why the cache queried PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// A cold look-up (a miss).
    Cold,
    /// Announcements (or a local write) named cached orgs.
    Announced,
    /// The listener (re)connected, or an announcement could not be read: every cached org.
    Full,
    /// The safety net's round robin.
    SafetyNet,
}

impl Query {
    const LABELS: [&'static str; 4] = ["cold", "announced", "full", "safety_net"];
}

/// The cache's counters, registered under the caller's prefix (`{prefix}_billing_cache_…`).
#[derive(Clone)]
pub struct BillingCacheMetrics {
    /// Orgs cached (set by the follower every second).
    pub entries: IntGauge,
    /// Look-ups answered from the cache.
    pub hits: IntCounter,
    /// Look-ups that loaded the org cold.
    pub misses: IntCounter,
    /// Announcements heard (each names one org, or is unreadable).
    pub announcements: IntCounter,
    /// Orgs reloaded because an announcement or a local write named them.
    pub reloads: IntCounter,
    /// Reloads of every cached org (after the listener reconnected, or an unreadable announcement).
    pub full_reloads: IntCounter,
    /// Rows the safety net re-read.
    pub rechecked: IntCounter,
    /// States the safety net found different from the cache: missed announcements.
    pub corrections: IntCounter,
    /// Queries sent to PostgreSQL, by [`Query`].
    pub queries: [IntCounter; 4],
}

impl BillingCacheMetrics {
    /// Creates the series (every one exists from the start) and registers them into `registry`.
    pub fn register(registry: &Registry, prefix: &str) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(format!("{prefix}_billing_cache_{name}"), help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let entries = IntGauge::new(
            format!("{prefix}_billing_cache_entries"),
            "Orgs whose billing state is cached.",
        )?;
        registry.register(Box::new(entries.clone()))?;
        let queries = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_billing_cache_queries_total"),
                "PostgreSQL queries of billing state sent by the cache, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(queries.clone()))?;
        Ok(Self {
            entries,
            hits: counter(
                "hits_total",
                "Billing-state look-ups answered from the cache.",
            )?,
            misses: counter(
                "misses_total",
                "Billing-state look-ups that loaded the org cold.",
            )?,
            announcements: counter("announcements_total", "Billing change announcements heard.")?,
            reloads: counter(
                "reloads_total",
                "Cached orgs reloaded because an announcement or a local write named them.",
            )?,
            full_reloads: counter(
                "full_reloads_total",
                "Reloads of every cached org (after the listener reconnected, or an unreadable announcement).",
            )?,
            rechecked: counter(
                "safety_net_rows_total",
                "Cached orgs the safety net re-read.",
            )?,
            corrections: counter(
                "safety_net_corrections_total",
                "Billing states the safety net found different from the cache (missed announcements).",
            )?,
            queries: Query::LABELS.map(|l| queries.with_label_values(&[l])),
        })
    }

    fn query(&self, why: Query) {
        self.queries[why as usize].inc();
    }
}

// === Announcements ===

/// What a burst of announcements asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// The orgs named.
    pub ids: BTreeSet<i64>,
    /// Whether one could not be read (then every cached org is reloaded).
    pub all: bool,
}

impl Pending {
    /// Adds one announcement's payload (the org's internal id).
    pub fn add(&mut self, payload: &str) {
        match payload.trim().parse::<i64>() {
            Ok(id) => {
                self.ids.insert(id);
            }
            Err(_) => self.all = true,
        }
    }

    /// Whether nothing was asked for.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && !self.all
    }
}

/// A source of announcements' payloads.
pub trait Announcements {
    /// The next payload; `None` when the source is gone (announcements may have been lost).
    fn next_payload(&mut self) -> impl Future<Output = Option<String>> + Send;
}

impl Announcements for sqlx::postgres::PgListener {
    async fn next_payload(&mut self) -> Option<String> {
        match self.try_recv().await {
            Ok(Some(n)) => Some(n.payload().to_owned()),
            _ => None,
        }
    }
}

impl Announcements for tokio::sync::mpsc::UnboundedReceiver<String> {
    fn next_payload(&mut self) -> impl Future<Output = Option<String>> + Send {
        self.recv()
    }
}

/// Collects a burst: `first`, then whatever `source` yields within `window` (at most [`RELOAD_CHUNK`] orgs). When
/// the source is gone, the burst collected so far is returned with `false` (not alive).
pub async fn coalesce(
    first: &str,
    source: &mut impl Announcements,
    window: Duration,
) -> (Pending, bool) {
    let mut pending = Pending::default();
    pending.add(first);
    let deadline = tokio::time::Instant::now() + window;
    while pending.ids.len() < RELOAD_CHUNK && !pending.all {
        match tokio::time::timeout_at(deadline, source.next_payload()).await {
            Ok(Some(payload)) => pending.add(&payload),
            Ok(None) => return (pending, false),
            Err(_) => break,
        }
    }
    (pending, true)
}

// === BillingCache ===

/// The safety net's round: the orgs cached when it started, re-read a share per step.
#[derive(Default)]
struct Round {
    /// The ids still to re-read this round.
    ids: Vec<i64>,
    /// How many to re-read per step (fixed for the round).
    per_step: usize,
    /// Steps since the round started; a new round starts once this reaches the steps per round.
    steps: u64,
    /// Whether a round (of at least one org) has started.
    started: bool,
}

/// Orgs' billing state by internal id, with a Clerk id index; see the module documentation.
pub struct BillingCache<E> {
    by_id: Cache<i64, Arc<Entry<E>>>,
    by_clerk: Cache<OrgId, i64>,
    /// Moved by every announcement, before it looks for the org (see "Races").
    announced: AtomicU64,
    /// The safety net's round.
    round: Mutex<Round>,
    metrics: BillingCacheMetrics,
    /// Cold loads of one org take turns: a burst of first requests makes one query.
    cold: crate::cache::ColdTurns,
}

impl<E: Default + Send + Sync + 'static> BillingCache<E> {
    /// An empty cache of at most `capacity` orgs (and as many Clerk ids), counting into `metrics`.
    pub fn new(capacity: usize, metrics: BillingCacheMetrics) -> Self {
        let capacity = capacity.max(1);
        Self {
            by_id: Cache::new(capacity),
            by_clerk: Cache::new(capacity),
            announced: AtomicU64::new(0),
            round: Mutex::new(Round::default()),
            metrics,
            cold: crate::cache::ColdTurns::new(),
        }
    }

    /// The cache's metrics.
    pub fn metrics(&self) -> &BillingCacheMetrics {
        &self.metrics
    }

    /// The entry of org `id` (Clerk id `org`): one probe when cached; else its state is loaded (one query).
    pub async fn get(
        &self,
        pg: &impl Loader,
        id: i64,
        org: &OrgId,
    ) -> Result<Arc<Entry<E>>, sqlx::Error> {
        if let Some(entry) = self.by_id.get(&id) {
            self.metrics.hits.inc();
            return Ok(entry);
        }
        self.load_cold(pg, id, org).await
    }

    /// What is cached for org `id`, without loading it.
    pub fn cached(&self, id: i64) -> Option<Arc<Entry<E>>> {
        self.by_id.get(&id)
    }

    async fn load_cold(
        &self,
        pg: &impl Loader,
        id: i64,
        org: &OrgId,
    ) -> Result<Arc<Entry<E>>, sqlx::Error> {
        let _turn = self.cold.take(id.unsigned_abs()).await;
        // The request before this one may have just loaded the same org.
        if let Some(entry) = self.by_id.get(&id) {
            self.metrics.hits.inc();
            return Ok(entry);
        }
        self.metrics.misses.inc();
        let before = self.announced.load(Ordering::SeqCst);
        self.metrics.query(Query::Cold);
        let billing = pg
            .load_many(&[id])
            .await?
            .remove(&id)
            .unwrap_or_else(|| Billing::Unsubscribed.into());
        let fresh = Arc::new(Entry::new(id, org.clone(), billing));
        // Two first look-ups may race: keep whichever entry landed first (so the extension is not split).
        let Ok(entry) = self
            .by_id
            .get_or_insert_with(&id, || Ok::<_, Infallible>(fresh));
        // Inserted, then checked: an announcement moves the counter before it looks for the org, so either it
        // found the entry (and reloads it) or the counter moved here.
        if self.announced.load(Ordering::SeqCst) != before {
            self.reload_entries(pg, &[Arc::clone(&entry)], Query::Cold)
                .await?;
        }
        Ok(entry)
    }

    /// The internal id of the org Clerk names `org` (`None` when Tollgate does not know it); cached, since the
    /// mapping never changes once written.
    pub async fn id_of(&self, pg: &PgPool, org: &OrgId) -> Result<Option<i64>, sqlx::Error> {
        if let Some(id) = self.by_clerk.get(org) {
            return Ok(Some(id));
        }
        let id = crate::store::orgs::id_by_clerk(pg, org).await?;
        if let Some(id) = id {
            self.by_clerk.insert(org.clone(), id);
        }
        Ok(id)
    }

    /// Reloads the orgs of `ids` that are cached (one query per [`RELOAD_CHUNK`]); those not cached are ignored.
    /// Called for announcements, and by the code that commits a subscription change, right after its commit.
    pub async fn reload(&self, pg: &impl Loader, ids: &[i64]) -> Result<usize, sqlx::Error> {
        self.announced.fetch_add(1, Ordering::SeqCst);
        let entries: Vec<_> = ids.iter().filter_map(|id| self.by_id.get(id)).collect();
        for chunk in entries.chunks(RELOAD_CHUNK) {
            self.reload_entries(pg, chunk, Query::Announced).await?;
        }
        self.metrics.reloads.inc_by(entries.len() as u64);
        Ok(entries.len())
    }

    /// Reloads every cached org, in chunks of [`RELOAD_CHUNK`] (announcements may have been missed).
    pub async fn reload_all(&self, pg: &impl Loader) -> Result<usize, sqlx::Error> {
        self.announced.fetch_add(1, Ordering::SeqCst);
        self.metrics.full_reloads.inc();
        let entries: Vec<_> = self.by_id.iter().map(|(_, e)| e).collect();
        for chunk in entries.chunks(RELOAD_CHUNK) {
            self.reload_entries(pg, chunk, Query::Full).await?;
        }
        Ok(entries.len())
    }

    /// Asks for a reload of each entry, then applies one query's answer.
    async fn reload_entries(
        &self,
        pg: &impl Loader,
        entries: &[Arc<Entry<E>>],
        why: Query,
    ) -> Result<(), sqlx::Error> {
        let asked: Vec<u64> = entries
            .iter()
            .map(|e| e.asked.fetch_add(1, Ordering::SeqCst) + 1)
            .collect();
        let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
        self.metrics.query(why);
        let mut loaded = pg.load_many(&ids).await?;
        for (entry, asked) in entries.iter().zip(asked) {
            let billing = loaded
                .remove(&entry.id)
                .unwrap_or_else(|| Billing::Unsubscribed.into());
            if entry.apply(billing, asked) {
                tracing::info!(org.id = %entry.org, "billing state changed");
            }
        }
        Ok(())
    }

    /// One safety-net step of a round of `steps`: re-reads the round's next share of orgs, ceil(n / `steps`) (a
    /// round starts with the orgs cached then, at most once per `steps` steps), with one query, and applies (and
    /// counts) the states that differ from the cache. Returns the corrections.
    pub async fn recheck(&self, pg: &impl Loader, steps: u64) -> Result<u64, sqlx::Error> {
        let steps = steps.max(1);
        let batch: Vec<Arc<Entry<E>>> = {
            let mut round = self.round.lock().unwrap_or_else(PoisonError::into_inner);
            if round.ids.is_empty() && (!round.started || round.steps >= steps) {
                round.ids = self.by_id.iter().map(|(id, _)| id).collect();
                round.per_step = usize::try_from((round.ids.len() as u64).div_ceil(steps))
                    .unwrap_or(usize::MAX)
                    .clamp(1, RELOAD_CHUNK);
                round.steps = 0;
                // A round of nothing does not count: the first orgs cached start one at the next step.
                round.started = !round.ids.is_empty();
            }
            round.steps += 1;
            let at = round.ids.len().saturating_sub(round.per_step);
            round
                .ids
                .drain(at..)
                .filter_map(|id| self.by_id.get(&id))
                .collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let asked: Vec<u64> = batch
            .iter()
            .map(|e| e.asked.load(Ordering::SeqCst))
            .collect();
        let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
        self.metrics.query(Query::SafetyNet);
        let mut loaded = pg.load_many(&ids).await?;
        self.metrics.rechecked.inc_by(ids.len() as u64);
        let mut corrections = 0;
        for (entry, asked) in batch.iter().zip(asked) {
            let billing = loaded
                .remove(&entry.id)
                .unwrap_or_else(|| Billing::Unsubscribed.into());
            if entry.apply(billing, asked) {
                corrections += 1;
                tracing::warn!(org.id = %entry.org, "safety net corrected a billing state: an announcement was missed");
            }
        }
        self.metrics.corrections.inc_by(corrections);
        Ok(corrections)
    }

    /// Applies a burst of announcements.
    pub async fn announced(&self, pg: &impl Loader, pending: &Pending) -> Result<(), sqlx::Error> {
        self.metrics
            .announcements
            .inc_by((pending.ids.len() + usize::from(pending.all)) as u64);
        if pending.all {
            tracing::warn!("unreadable billing change announcement; reloading every cached org");
            self.reload_all(pg).await?;
        } else {
            let ids: Vec<i64> = pending.ids.iter().copied().collect();
            self.reload(pg, &ids).await?;
        }
        Ok(())
    }

    /// How many orgs are cached.
    pub fn len(&self) -> u64 {
        self.by_id.len() as u64
    }

    /// Whether no org is cached.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Keeps the cache in step with billing changes until `shutdown` resolves: follows announcements on
    /// [`CHANGES_CHANNEL`] (reloading every cached org after each (re)connect) and runs the safety net, one step a
    /// second, a full round per `recheck_every`.
    pub async fn follow(
        &self,
        pg: &PgPool,
        recheck_every: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let steps = recheck_every.as_secs().max(1);
        let listen = async {
            let options = (*pg.connect_options())
                .clone()
                .application_name(LISTENER_APPLICATION_NAME);
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .max_lifetime(None)
                .idle_timeout(None)
                .connect_lazy_with(options);
            let mut failing = false;
            loop {
                let result = self.listen_once(pg, &pool).await;
                if let Err(e) = result {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "billing change listener lost; reconnecting");
                    }
                } else {
                    failing = false;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let safety_net = async {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                self.metrics
                    .entries
                    .set(i64::try_from(self.len()).unwrap_or(i64::MAX));
                if let Err(e) = self.recheck(pg, steps).await {
                    tracing::debug!(error = %e, "billing safety net failed; retrying next second");
                }
            }
        };
        tokio::select! {
            () = listen => {}
            () = safety_net => {}
            () = shutdown => {}
        }
    }

    /// One life of the listener: connect, LISTEN, reload everything (what was announced while not listening is
    /// lost), then apply announcements until the connection drops.
    async fn listen_once(&self, pg: &PgPool, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        self.reload_all(pg).await?;
        loop {
            let Some(first) = listener.try_recv().await? else {
                // The connection dropped: announcements may be lost. Start over.
                return Ok(());
            };
            let first = first.payload().to_owned();
            let (pending, alive) = coalesce(&first, &mut listener, COALESCE_WINDOW).await;
            self.announced(pg, &pending).await?;
            if !alive {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PlanCode, SubscriptionStatus};
    use futures_util::FutureExt;

    fn metrics() -> BillingCacheMetrics {
        BillingCacheMetrics::register(&Registry::new(), "test").expect("metrics")
    }

    fn subscribed(plan: &str) -> Billing {
        let start = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        Billing::Subscribed {
            status: SubscriptionStatus::Active,
            plan: PlanCode::parse(plan).expect("plan"),
            period: crate::domain::Period {
                start,
                end: start + chrono::Duration::days(30),
            },
            anchor: start,
            observed_at: start,
            pending: None,
            cancel_at: None,
        }
    }

    /// A database in memory: the state of each org, and the queries asked.
    #[derive(Default)]
    struct Fake {
        states: Mutex<HashMap<i64, Billing>>,
        queries: AtomicU64,
    }

    impl Fake {
        fn set(&self, id: i64, billing: Billing) {
            self.states
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, billing);
        }
    }

    impl Loader for Fake {
        fn load_many(
            &self,
            ids: &[i64],
        ) -> impl Future<Output = Result<HashMap<i64, OrgBilling>, sqlx::Error>> + Send {
            self.queries.fetch_add(1, Ordering::SeqCst);
            let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
            let out: HashMap<i64, OrgBilling> = ids
                .iter()
                .map(|id| {
                    (
                        *id,
                        states
                            .get(id)
                            .cloned()
                            .unwrap_or(Billing::Unsubscribed)
                            .into(),
                    )
                })
                .collect();
            std::future::ready(Ok(out))
        }
    }

    /// A loader whose answer was read before a change committed: it answers `stale` once, then reads `fake`.
    struct StaleOnce<'a> {
        fake: &'a Fake,
        stale: Mutex<Option<HashMap<i64, OrgBilling>>>,
        /// Runs between the stale read and its answer (the change commits and is announced there).
        meanwhile: Box<dyn Fn() + Sync + 'a>,
    }

    impl Loader for StaleOnce<'_> {
        fn load_many(
            &self,
            ids: &[i64],
        ) -> impl Future<Output = Result<HashMap<i64, OrgBilling>, sqlx::Error>> + Send {
            let stale = self
                .stale
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let answer = match stale {
                Some(stale) => {
                    (self.meanwhile)();
                    Ok(stale)
                }
                None => self.fake.load_many(ids).now_or_never().expect("ready"),
            };
            std::future::ready(answer)
        }
    }

    fn org(n: i64) -> OrgId {
        OrgId::parse(&format!("org_{n}")).expect("org")
    }

    fn now<T>(f: impl Future<Output = T>) -> T {
        f.now_or_never().expect("no I/O")
    }

    #[test]
    fn a_warm_lookup_asks_nothing_and_a_cold_one_asks_once() {
        let fake = Fake::default();
        fake.set(1, subscribed("pro"));
        let cache = BillingCache::<()>::new(10, metrics());
        let entry = now(cache.get(&fake, 1, &org(1))).expect("load");
        assert_eq!(entry.billing(), subscribed("pro"));
        now(cache.get(&fake, 1, &org(1))).expect("hit");
        assert_eq!(fake.queries.load(Ordering::SeqCst), 1);
        assert_eq!(cache.metrics.misses.get(), 1);
        assert_eq!(cache.metrics.hits.get(), 1);
    }

    /// A cold load whose query read the state before a change, and answered after the change was announced (the
    /// announcement found nothing cached), does not leave the stale state: it reloads.
    #[test]
    fn a_cold_load_racing_an_announcement_does_not_keep_the_stale_state() {
        let fake = Fake::default();
        fake.set(1, subscribed("starter"));
        let cache = BillingCache::<()>::new(10, metrics());
        let stale = now(fake.load_many(&[1])).expect("read");
        let racing = StaleOnce {
            fake: &fake,
            stale: Mutex::new(Some(stale)),
            meanwhile: Box::new(|| {
                fake.set(1, subscribed("pro"));
                let mut pending = Pending::default();
                pending.add("1");
                now(cache.announced(&fake, &pending)).expect("announce");
            }),
        };
        let entry = now(cache.get(&racing, 1, &org(1))).expect("load");
        assert_eq!(entry.billing(), subscribed("pro"), "the change is not lost");
        assert_eq!(
            cache.cached(1).map(|e| e.billing()),
            Some(subscribed("pro"))
        );
    }

    /// A reload (or safety-net read) whose query started before a later reload must not overwrite that reload's
    /// fresher state.
    #[test]
    fn an_older_reload_does_not_overwrite_a_newer_one() {
        let fake = Fake::default();
        fake.set(1, subscribed("starter"));
        let cache = BillingCache::<()>::new(10, metrics());
        now(cache.get(&fake, 1, &org(1))).expect("load");
        // The safety net reads "starter"; meanwhile the org moves to pro and the announcement is applied.
        let stale = now(fake.load_many(&[1])).expect("read");
        let racing = StaleOnce {
            fake: &fake,
            stale: Mutex::new(Some(stale)),
            meanwhile: Box::new(|| {
                fake.set(1, subscribed("pro"));
                now(cache.reload(&fake, &[1])).expect("reload");
            }),
        };
        // Put the cache on "growth" first so a stale "starter" would count as a correction.
        fake.set(1, subscribed("growth"));
        now(cache.reload(&fake, &[1])).expect("reload");
        assert_eq!(now(cache.recheck(&racing, 1)).expect("recheck"), 0);
        assert_eq!(
            cache.cached(1).map(|e| e.billing()),
            Some(subscribed("pro"))
        );
    }

    /// A loader that answers after yielding, so concurrent callers overlap.
    struct Yielding<'a>(&'a Fake);

    impl Loader for Yielding<'_> {
        fn load_many(
            &self,
            ids: &[i64],
        ) -> impl Future<Output = Result<HashMap<i64, OrgBilling>, sqlx::Error>> + Send {
            let answer = self.0.load_many(ids).now_or_never().expect("ready");
            async move {
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                answer
            }
        }
    }

    #[tokio::test]
    async fn a_burst_of_first_look_ups_of_one_org_makes_one_query() {
        let fake = Fake::default();
        fake.set(1, subscribed("pro"));
        let cache: BillingCache<()> = BillingCache::new(10, metrics());
        let org = org(1);
        let loader = Yielding(&fake);
        let burst = (0..16).map(|_| cache.get(&loader, 1, &org));
        for entry in futures_util::future::join_all(burst).await {
            assert_eq!(entry.expect("loaded").billing(), subscribed("pro"));
        }
        assert_eq!(
            fake.queries.load(Ordering::SeqCst),
            1,
            "one query for the burst"
        );
    }

    #[test]
    fn an_announcement_reloads_only_a_cached_org() {
        let fake = Fake::default();
        let cache = BillingCache::<()>::new(10, metrics());
        now(cache.get(&fake, 1, &org(1))).expect("load");
        fake.set(1, subscribed("pro"));
        fake.set(2, subscribed("pro"));
        let before = fake.queries.load(Ordering::SeqCst);
        let mut pending = Pending::default();
        pending.add("2");
        now(cache.announced(&fake, &pending)).expect("announce");
        assert_eq!(
            fake.queries.load(Ordering::SeqCst),
            before,
            "2 is not cached: no query"
        );
        assert!(cache.cached(2).is_none());
        pending.add("1");
        now(cache.announced(&fake, &pending)).expect("announce");
        assert_eq!(fake.queries.load(Ordering::SeqCst), before + 1, "one query");
        assert_eq!(
            cache.cached(1).map(|e| e.billing()),
            Some(subscribed("pro"))
        );
        assert_eq!(cache.metrics.reloads.get(), 1);
    }

    #[test]
    fn an_unreadable_announcement_reloads_every_cached_org() {
        let fake = Fake::default();
        let cache = BillingCache::<()>::new(10, metrics());
        for id in 1..=3 {
            now(cache.get(&fake, id, &org(id))).expect("load");
            fake.set(id, subscribed("pro"));
        }
        let mut pending = Pending::default();
        pending.add("not an id");
        now(cache.announced(&fake, &pending)).expect("announce");
        for id in 1..=3 {
            assert_eq!(
                cache.cached(id).map(|e| e.billing()),
                Some(subscribed("pro"))
            );
        }
        assert_eq!(cache.metrics.full_reloads.get(), 1);
    }

    #[test]
    fn the_safety_net_checks_a_share_per_step_and_counts_corrections() {
        let fake = Fake::default();
        let cache = BillingCache::<()>::new(100, metrics());
        for id in 1..=10 {
            now(cache.get(&fake, id, &org(id))).expect("load");
        }
        // Changed without an announcement.
        fake.set(7, subscribed("pro"));
        let before = fake.queries.load(Ordering::SeqCst);
        let mut corrections = 0;
        for _ in 0..4 {
            corrections += now(cache.recheck(&fake, 4)).expect("recheck");
        }
        assert_eq!(
            fake.queries.load(Ordering::SeqCst),
            before + 4,
            "one query per step"
        );
        assert_eq!(
            cache.metrics.rechecked.get(),
            10,
            "3 + 3 + 3 + 1: every org once"
        );
        // The next round starts after the round's steps: 10 orgs per 4 steps, whatever the calls.
        for _ in 0..4 {
            now(cache.recheck(&fake, 4)).expect("recheck");
        }
        assert_eq!(cache.metrics.rechecked.get(), 20);
        assert_eq!(corrections, 1);
        assert_eq!(cache.metrics.corrections.get(), 1);
        assert_eq!(
            cache.cached(7).map(|e| e.billing()),
            Some(subscribed("pro"))
        );
    }

    #[test]
    fn an_evicted_org_loads_cold_again() {
        let fake = Fake::default();
        let cache = BillingCache::<()>::new(2, metrics());
        for id in 1..=50 {
            now(cache.get(&fake, id, &org(id))).expect("load");
        }
        assert!(cache.len() <= 2, "bounded: {}", cache.len());
        now(cache.get(&fake, 1, &org(1))).expect("cold again");
    }

    #[tokio::test]
    async fn a_burst_is_coalesced_into_one_pending_set() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for p in ["2", "3", "2", " 4 "] {
            tx.send(p.to_owned()).expect("send");
        }
        let (pending, alive) = coalesce("1", &mut rx, Duration::from_millis(50)).await;
        assert!(alive);
        assert_eq!(pending.ids, BTreeSet::from([1, 2, 3, 4]));
        assert!(!pending.all);
        // Nothing more arrives: the window ends the burst; a closed source ends it too.
        drop(tx);
        let (pending, alive) = coalesce("9", &mut rx, Duration::from_millis(50)).await;
        assert_eq!(pending.ids, BTreeSet::from([9]));
        assert!(!alive);
    }

    #[tokio::test]
    async fn an_unreadable_payload_in_a_burst_asks_for_everything() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        tx.send("garbage".to_owned()).expect("send");
        let (pending, _) = coalesce("1", &mut rx, Duration::from_millis(50)).await;
        assert!(pending.all);
    }
}

#[cfg(test)]
mod bounds {
    use super::*;
    use crate::domain::overage;
    use std::collections::BTreeMap;

    /// The request path's bound is the domain's, with and without a cap, billable or not.
    #[test]
    fn the_entry_computes_the_domains_bound() {
        let catalog: &'static PlanCatalog = Box::leak(Box::new(
            PlanCatalog::from_toml_str(
                r#"
trial_days = 14
[plans.trial]
included = { api_call = 10 }
[plans.payg]
price = "plan_payg"
included = { api_call = 100 }
[plans.payg.overage.api_call]
price = "api_call_overage"
ceiling = 1000
"#,
            )
            .expect("plans"),
        ));
        let plan = catalog
            .plan(&crate::domain::PlanCode::parse("payg").expect("code"))
            .expect("payg");
        let metric = Metric::parse("api_call").expect("metric");
        let start = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let period = crate::domain::Period {
            start,
            end: start + chrono::Duration::days(30),
        };
        for cap in [
            None,
            Some(SpendCap {
                amount: 1,
                currency: "usd".into(),
                units: BTreeMap::from([("api_call_overage".to_owned(), 300)]),
            }),
        ] {
            let entry: Entry<()> = Entry::new(
                1,
                OrgId::parse("org_1").expect("org"),
                OrgBilling {
                    billing: Billing::Unsubscribed,
                    cap: cap.clone().map(Arc::new),
                },
            );
            for billable in [true, false] {
                let terms = Terms {
                    plan,
                    period,
                    billable,
                };
                assert_eq!(
                    entry.bound(&terms, &metric),
                    overage::bound(plan, &metric, billable, cap.as_ref()),
                    "cap {cap:?}, billable {billable}"
                );
            }
        }
    }
}

#[cfg(test)]
mod sizes {
    use std::mem::size_of;

    /// The README's memory estimates are built on these sizes (x86-64); a change here must update them.
    #[test]
    fn the_inline_sizes_behind_the_readme_estimates() {
        assert!(size_of::<super::Entry<()>>() <= 248);
        assert!(size_of::<crate::domain::Billing>() <= 128);
        assert!(size_of::<crate::keys::cache::CachedKey>() <= 32);
        assert!(size_of::<crate::keys::cache::OrgRef>() <= 72);
    }
}
