//! Background services: write-back, billing refresh and revocation listening. Each runs in its own Pingora
//! runtime and stops on the server's shutdown watch.

use crate::core::Core;
use crate::meter::Batch;
use crate::meter::OverageSeen;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use tokio::time::MissedTickBehavior;
use tollgate_common::store::counters::{self, ResetAnnouncement};
use tollgate_common::store::redis::{RedisConn, listen};
use tollgate_common::store::{alerts, overage};

// === WriteBack ===

/// A lease unused this long is handed back, so other replicas and readers of the counter see the units again.
const IDLE_LEASE_MS: i64 = 1000;

/// Settles leases every `TOLLGATE_SETTLE_INTERVAL_MS` (consumption moves into Redis, idle leases go back) and
/// writes changed counters from Redis to PostgreSQL every `TOLLGATE_WRITEBACK_INTERVAL_MS`.
///
/// On shutdown it settles and returns every lease and flushes at once, then keeps doing so each interval while
/// in-flight requests drain, until the runtime stops; every flush writes absolute values, so a flush cut short is
/// simply repeated by the next one.
pub struct WriteBack {
    pub core: Arc<Core>,
}

#[async_trait]
impl BackgroundService for WriteBack {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let core = &self.core;
        let mut ticker = tokio::time::interval(core.config.settle_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut conn = None;
        let mut episodes = Episodes::default();
        let mut stopping = false;
        let mut last_flush = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed(), if !stopping => {
                    stopping = true;
                    tracing::info!("shutting down: returning leases and flushing usage to PostgreSQL");
                }
            }
            settle(core, &mut conn, &mut episodes, stopping).await;
            if stopping || last_flush.elapsed() >= core.config.writeback_interval {
                last_flush = tokio::time::Instant::now();
                flush(core, &mut conn, &mut episodes).await;
            }
        }
    }
}

/// Failure episodes, so each is logged when it starts and when it ends rather than every interval.
#[derive(Default)]
pub struct Episodes {
    settling: bool,
    writing: bool,
}

/// One settle pass: a report for every slot whose consumption Redis has not seen or whose lease sat idle. Slots
/// with a round trip in flight are skipped (that round trip reports for them). Only the meter's settle list is
/// visited (slots that owe nothing leave it first), except at shutdown, when every lease is handed back.
pub async fn settle(
    core: &Core,
    conn: &mut Option<RedisConn>,
    episodes: &mut Episodes,
    release_all: bool,
) {
    let now_ms = core.clock.now().timestamp_millis();
    let slots = if release_all {
        core.meter.slots()
    } else {
        core.meter.prune_settled();
        core.meter.to_settle()
    };
    let mut work = Vec::new();
    for slot in &slots {
        let Ok(turn) = slot.in_flight.try_lock() else {
            continue;
        };
        if let Some(report) = slot.begin_settle(now_ms, IDLE_LEASE_MS, release_all) {
            work.push((slot, report, turn));
        }
    }
    if work.is_empty() {
        return;
    }
    let entries: Vec<_> = work
        .iter()
        .map(|(slot, report, _)| (&slot.counter, *report))
        .collect();
    let result = match connection(core, conn).await {
        Ok(c) => counters::settle(c, &core.pg, &core.replica, &entries).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(replies) => {
            core.metrics.settle_passes[0].inc();
            core.metrics.settle_reports.inc_by(work.len() as u64);
            let now = core.clock.now();
            for ((slot, report, _), (applied, epoch)) in work.iter().zip(replies) {
                slot.finish_settle(applied, epoch, *report);
                if applied && report.consumed > report.acknowledged {
                    // The counter in Redis moved: the next flush must write it, even if a flush since the
                    // admission already cleared the flag.
                    core.meter.mark_dirty(slot, now);
                }
            }
            if std::mem::take(&mut episodes.settling) {
                tracing::info!("lease settling recovered");
            }
        }
        Err(e) => {
            core.metrics.settle_passes[1].inc();
            // Reports are absolute: the next pass repeats them, whether or not Redis applied this one.
            if !std::mem::replace(&mut episodes.settling, true) {
                tracing::warn!(error = %e, "settling leases failed; retrying every interval");
            }
        }
    }
}

async fn connection<'c>(
    core: &Core,
    conn: &'c mut Option<RedisConn>,
) -> Result<&'c mut RedisConn, counters::CounterError> {
    Ok(match conn {
        Some(c) => c,
        None => conn.insert(RedisConn::connect(&core.config.common.redis).await?),
    })
}

/// One write-back pass.
pub async fn flush(core: &Core, conn: &mut Option<RedisConn>, episodes: &mut Episodes) {
    let now = core.clock.now();
    core.metrics.writeback_lag.set(core.meter.lag_seconds(now));
    let batch = core.meter.take_dirty(now - chrono::Duration::minutes(5));
    if batch.is_empty() {
        return;
    }
    match write(core, conn, &batch).await {
        Ok(rows) => {
            core.metrics
                .writeback_batch
                .observe(batch.slots.len() as f64);
            core.metrics.writeback_rows.inc_by(rows);
            core.metrics
                .writeback_lag
                .set(core.meter.lag_seconds(core.clock.now()));
            if std::mem::take(&mut episodes.writing) {
                tracing::info!("write-back caught up");
            }
        }
        Err(e) => {
            core.metrics.writeback_failures.inc();
            if !std::mem::replace(&mut episodes.writing, true) {
                tracing::warn!(error = %e, counters = batch.slots.len(), "write-back failed; retrying every interval");
            }
            core.meter.requeue(batch);
        }
    }
}

/// Writes the batch's counters, then the usage alerts whose state changed (`store::alerts`): within the
/// write-back interval of the crossing. A failure of either requeues the whole batch (both writes are idempotent).
async fn write(
    core: &Core,
    conn: &mut Option<RedisConn>,
    batch: &Batch,
) -> Result<u64, counters::CounterError> {
    let conn = connection(core, conn).await?;
    let snapshots =
        counters::snapshot(conn, &core.config.common.redis.namespace, &batch.keys()).await?;
    let rows = counters::write(&core.pg, &snapshots).await?;
    observe(core, batch, &snapshots).await?;
    Ok(rows)
}

/// What the batch's counters mean beyond their usage, recorded where it changed since this proxy last recorded it
/// (all of it after a restart: recording is idempotent): the usage alerts (`store::alerts`), and the overage each
/// period owes Stripe (`store::overage`; after a period ended, against the terms seen while it was current).
async fn observe(
    core: &Core,
    batch: &Batch,
    snapshots: &[counters::Snapshot],
) -> Result<(), sqlx::Error> {
    let now = core.clock.now();
    let used: std::collections::HashMap<&counters::CounterKey, u64> =
        snapshots.iter().map(|s| (&s.key, s.used)).collect();
    // The cached entries the observations borrow from, and the slots whose memory moves once recorded.
    let mut seen = Vec::new();
    let mut owed: Vec<(&std::sync::Arc<crate::meter::Slot>, OverageSeen, u64)> = Vec::new();
    for slot in &batch.slots {
        let key = slot.counter.key();
        let Some(used) = used.get(key).copied() else {
            continue;
        };
        // Only the current period's plan is known; a counter of another period keeps its alerts as they are, and
        // its overage is reported against the terms remembered from when it was current.
        let current = core.orgs.cached(key.org_id).and_then(|entry| {
            let terms = entry
                .terms(core.catalog, now)
                .filter(|t| t.period == key.period)?;
            Some((entry, terms))
        });
        let Some((entry, terms)) = current else {
            if remember_overage(slot, None, used, now.timestamp_millis(), &mut owed) {
                core.meter.owe_overage(slot);
            }
            continue;
        };
        let bound = entry.bound(&terms, &key.metric);
        let overage = terms
            .plan
            .overage(&key.metric)
            .filter(|_| terms.billable)
            .map(|o| OverageSeen {
                included: terms.plan.limit(&key.metric),
                bound: bound.units(),
                price: o.price.as_str().to_owned(),
                recorded: 0,
                recorded_at_ms: 0,
            });
        if remember_overage(slot, overage, used, now.timestamp_millis(), &mut owed) {
            core.meter.owe_overage(slot);
        }
        seen.push((slot, entry, terms.plan, used, bound));
    }
    let mut observed = Vec::new();
    let mut moved = Vec::new();
    for (slot, entry, plan, used, bound) in &seen {
        let key = slot.counter.key();
        let o = alerts::Observation {
            org_id: key.org_id,
            org: &entry.org,
            metric: &key.metric,
            period: key.period,
            used: *used,
            included: plan.limit(&key.metric),
            bound: *bound,
            thresholds: &plan.thresholds,
        };
        let print = alerts::fingerprint(&o);
        if slot.alerted.load(std::sync::atomic::Ordering::Relaxed) != print {
            observed.push(o);
            moved.push((slot, print));
        }
    }
    if !owed.is_empty() {
        let rows: Vec<overage::Owed<'_>> = owed
            .iter()
            .map(|(slot, seen, used)| {
                let key = slot.counter.key();
                overage::Owed {
                    org_id: key.org_id,
                    metric: &key.metric,
                    period: key.period,
                    price: &seen.price,
                    included: seen.included,
                    bound: seen.bound,
                    used: *used,
                }
            })
            .collect();
        overage::observe(&core.pg, &rows).await?;
        let at = now.timestamp_millis();
        for (slot, _, used) in &owed {
            if let Some(seen) = locked(&slot.overage).as_mut() {
                seen.recorded = seen.recorded.max(*used);
                seen.recorded_at_ms = at;
            }
        }
    }
    if observed.is_empty() {
        return Ok(());
    }
    let recorded = alerts::record(&core.pg, &observed).await?;
    for (slot, print) in moved {
        slot.alerted
            .store(print, std::sync::atomic::Ordering::Relaxed);
    }
    let counter = |event| core.metrics.usage_alerts.with_label_values(&[event]);
    counter(alerts::THRESHOLD_CROSSED).inc_by(recorded.crossed);
    counter(alerts::BOUND_REACHED).inc_by(recorded.bounds);
    counter("rearmed").inc_by(recorded.rearmed);
    Ok(())
}

// === Refresher ===

/// Keeps cached orgs' billing state in step with PostgreSQL: follows change announcements and runs the slow safety
/// net (`BillingCache::follow`); no per-interval reload. Updates `tollgate_proxy_cached_orgs` every second.
pub struct Refresher {
    pub core: Arc<Core>,
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let core = &self.core;
        let follow = core.orgs.follow(
            &core.pg,
            core.config.common.caches.billing_recheck,
            std::future::pending(),
        );
        let gauge = async {
            let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                core.metrics
                    .cached_orgs
                    .set(i64::try_from(core.orgs.len()).unwrap_or(i64::MAX));
            }
        };
        tokio::select! {
            () = follow => {}
            () = gauge => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// A reset was announced: drop the leases it voided. An announcement that cannot be read drops every lease (a
/// lease dropped needlessly costs one round trip; one kept past a reset would be void at its next report anyway).
fn forfeit(core: &Core, payload: &str) {
    let n = match ResetAnnouncement::parse(payload) {
        Some(reset) => core.meter.forfeit(Some(reset.period), reset.org_id),
        None => {
            tracing::warn!("unreadable reset announcement; dropping every lease");
            core.meter.forfeit(None, None)
        }
    };
    core.metrics.lease_forfeits.inc_by(n as u64);
    core.metrics.reset_announcements.inc();
}

// === Revocations ===

/// Follows key revocations (see `KeyCache::follow`) and counter resets; evicts revoked keys and voided leases at
/// once.
pub struct Revocations {
    pub core: Arc<Core>,
}

#[async_trait]
impl BackgroundService for Revocations {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let core = &self.core;
        let settings = &core.config.common.redis;
        let resets = [counters::resets_channel(&settings.namespace)];
        let keys = core.keys.follow(
            settings,
            core.config.refresh_interval,
            std::future::pending(),
        );
        let leases = listen(
            settings,
            &resets,
            || {},
            |_, payload| forfeit(core, payload),
        );
        tokio::select! {
            () = keys => {}
            () = leases => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// While a period is current, its overage row is refreshed at most this often: the reporter reads it every
/// `TOLLGATE_METER_REPORT_INTERVAL_MS` (minutes), so a fresher row buys nothing. The first overage, a change of
/// terms, and the period's last usage (after it ended) are recorded at once.
const OVERAGE_REFRESH_MS: i64 = 10_000;

/// Updates `slot`'s remembered overage terms (`Some`: seen now, while its period is current) and, when its usage
/// owes overage that was not recorded yet, adds it to `owed` — or, within the refresh interval, returns true: the
/// caller has a later flush visit the slot again, so the last usage of a burst is recorded without a new request.
fn remember_overage<'s>(
    slot: &'s std::sync::Arc<crate::meter::Slot>,
    current: Option<OverageSeen>,
    used: u64,
    now_ms: i64,
    owed: &mut Vec<(&'s std::sync::Arc<crate::meter::Slot>, OverageSeen, u64)>,
) -> bool {
    let mut memory = locked(&slot.overage);
    let ended = current.is_none();
    if let Some(mut seen) = current {
        let same = memory.as_ref().is_some_and(|m| {
            (m.included, m.bound, &m.price) == (seen.included, seen.bound, &seen.price)
        });
        if same && let Some(m) = memory.as_ref() {
            (seen.recorded, seen.recorded_at_ms) = (m.recorded, m.recorded_at_ms);
        }
        *memory = Some(seen);
    }
    let Some(seen) = memory.as_ref() else {
        return false;
    };
    if used <= seen.recorded || used.min(seen.bound) <= seen.included {
        return false;
    }
    if ended || seen.recorded == 0 || now_ms - seen.recorded_at_ms >= OVERAGE_REFRESH_MS {
        owed.push((slot, seen.clone(), used));
        return false;
    }
    true
}

/// Every lock here guards plain data no holder leaves half-changed, so a poisoned one is taken as it is.
fn locked<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
