//! Background services: write-back, billing refresh and revocation listening. Each runs in its own Pingora
//! runtime and stops on the server's shutdown watch.

use crate::core::Core;
use crate::meter::Batch;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use tokio::time::MissedTickBehavior;
use tollgate_common::store::counters::{self, ResetAnnouncement};
use tollgate_common::store::redis::{RedisConn, listen};

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

async fn write(
    core: &Core,
    conn: &mut Option<RedisConn>,
    batch: &Batch,
) -> Result<u64, counters::CounterError> {
    let conn = connection(core, conn).await?;
    counters::flush(
        conn,
        &core.pg,
        &core.config.common.redis.namespace,
        &batch.keys(),
    )
    .await
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
