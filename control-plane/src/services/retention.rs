//! Retention: finished rows are deleted once they are older than their table's retention (`jobs::purge` runs
//! [`Purger::pass`] on every replica).
//!
//! | table | purged | never purged |
//! |---|---|---|
//! | `stripe_events` | `applied`, `ignored`, processed more than `TOLLGATE_RETENTION_STRIPE_EVENTS_DAYS` ago | `pending`, `processing`, `failed` |
//! | `stigg_outbox` | `done`, `skipped`, `superseded`, finished more than `TOLLGATE_RETENTION_STIGG_OUTBOX_DAYS` ago | `pending`, `failed` |
//! | `usage_events` | those of a period that ended more than `TOLLGATE_RETENTION_USAGE_RECORDS_DAYS` (+ [`USAGE_MARGIN`]) ago | the rest |
//! | `idempotency_keys` | taken more than 24 h ago (Stripe's window; `services::idempotency`) | the rest |
//! | `webhook_deliveries` | `done`, delivered more than [`DELIVERED_WEBHOOKS_DAYS`] days ago | `pending`, `failed`, `dead` |
//!
//! A usage event is `usage/record`'s idempotency row: while it exists, its `request_id` counts once. It is deleted
//! only after `usage/record` stopped accepting its period (see `services::usage::recordable`), so a retry of a
//! purged request id is refused (422) rather than counted again.
//!
//! Each statement deletes at most `TOLLGATE_RETENTION_PURGE_BATCH` rows, chosen `FOR UPDATE SKIP LOCKED` and
//! deleted by primary key, in its own short transaction; the pass pauses [`BATCH_PAUSE`] between statements. Replicas
//! purging at the same time skip each other's rows, and deleting what another replica deleted is a no-op, so the
//! purge is idempotent and needs no coordination.

use crate::config::RetentionSettings;
use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, Opts, Registry};
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;
use tollgate_common::clock::SharedClock;

/// The pause between two purge statements, so a large backlog is deleted without monopolising PostgreSQL.
pub const BATCH_PAUSE: Duration = Duration::from_millis(100);
/// How much later than `usage/record` stops accepting a period its events are purged: replicas' clocks may
/// disagree by this much without a purged request id ever being accepted again.
pub const USAGE_MARGIN: Duration = Duration::from_secs(86_400);

/// How long delivered outgoing webhooks are kept (for the operator's listing).
pub const DELIVERED_WEBHOOKS_DAYS: u64 = 7;

/// A table the purge deletes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    StripeEvents,
    StiggOutbox,
    UsageEvents,
    IdempotencyKeys,
    WebhookDeliveries,
}

impl Table {
    /// Every purged table.
    pub const ALL: [Self; 5] = [
        Self::StripeEvents,
        Self::StiggOutbox,
        Self::UsageEvents,
        Self::IdempotencyKeys,
        Self::WebhookDeliveries,
    ];

    /// Its name (also the metric's `table` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StripeEvents => "stripe_events",
            Self::StiggOutbox => "stigg_outbox",
            Self::UsageEvents => "usage_events",
            Self::IdempotencyKeys => "idempotency_keys",
            Self::WebhookDeliveries => "webhook_deliveries",
        }
    }

    /// One batch: deletes at most `$2` rows older than `$1` that are finished. Each predicate has its index
    /// (`migrations/20261207000003_retention.sql`).
    fn statement(self) -> &'static str {
        match self {
            Self::StripeEvents => {
                "DELETE FROM stripe_events WHERE event_id IN (
                    SELECT event_id FROM stripe_events
                     WHERE status IN ('applied', 'ignored') AND processed_at < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
            Self::StiggOutbox => {
                "DELETE FROM stigg_outbox WHERE id IN (
                    SELECT id FROM stigg_outbox
                     WHERE status IN ('done', 'skipped', 'superseded') AND done_at < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
            Self::UsageEvents => {
                "DELETE FROM usage_events WHERE id IN (
                    SELECT id FROM usage_events WHERE period_end < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
            Self::IdempotencyKeys => {
                "DELETE FROM idempotency_keys WHERE (scope, key) IN (
                    SELECT scope, key FROM idempotency_keys WHERE created_at < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
            Self::WebhookDeliveries => {
                "DELETE FROM webhook_deliveries WHERE id IN (
                    SELECT id FROM webhook_deliveries WHERE status = 'done' AND done_at < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
        }
    }

    /// What is older than the cutoff is purged: `now` minus the table's retention.
    pub fn cutoff(self, settings: &RetentionSettings, now: DateTime<Utc>) -> DateTime<Utc> {
        let keep = match self {
            Self::StripeEvents => settings.stripe_events,
            Self::StiggOutbox => settings.stigg_outbox,
            Self::UsageEvents => settings.usage_records + USAGE_MARGIN,
            Self::IdempotencyKeys => Duration::from_secs(
                3600 * crate::services::idempotency::RETENTION_HOURS.unsigned_abs(),
            ),
            Self::WebhookDeliveries => Duration::from_secs(86_400 * DELIVERED_WEBHOOKS_DAYS),
        };
        chrono::Duration::from_std(keep)
            .ok()
            .and_then(|keep| now.checked_sub_signed(keep))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// `tollgate_cp_purged_rows_total{table}`.
#[derive(Clone)]
pub struct PurgeMetrics {
    /// Rows deleted by the purge, by table.
    pub purged: IntCounterVec,
}

impl PurgeMetrics {
    /// Creates and registers the counter; every table's series exists from the start.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let purged = IntCounterVec::new(
            Opts::new(
                "tollgate_cp_purged_rows_total",
                "Rows deleted by the retention purge, by table.",
            ),
            &["table"],
        )?;
        for table in Table::ALL {
            purged.with_label_values(&[table.as_str()]);
        }
        registry.register(Box::new(purged.clone()))?;
        Ok(Self { purged })
    }
}

/// Deletes what has outlived its retention.
pub struct Purger {
    pg: PgPool,
    settings: RetentionSettings,
    clock: SharedClock,
    metrics: PurgeMetrics,
}

impl Purger {
    /// A purger with these settings.
    pub fn new(
        pg: PgPool,
        settings: RetentionSettings,
        clock: SharedClock,
        metrics: PurgeMetrics,
    ) -> Self {
        Self {
            pg,
            settings,
            clock,
            metrics,
        }
    }

    /// The settings it purges by.
    pub fn settings(&self) -> &RetentionSettings {
        &self.settings
    }

    /// One batch of `table`: deletes at most `limit` rows finished before `cutoff`; returns how many.
    pub async fn purge_batch(
        &self,
        table: Table,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, sqlx::Error> {
        let deleted = sqlx::query(table.statement())
            .bind(cutoff)
            .bind(i64::from(limit))
            .execute(&self.pg)
            .await?
            .rows_affected();
        self.metrics
            .purged
            .with_label_values(&[table.as_str()])
            .inc_by(deleted);
        Ok(deleted)
    }

    /// Purges `table` in batches until a batch comes back short, pausing between batches, or `stop` turns true.
    /// Returns each batch's count.
    pub async fn purge_table(
        &self,
        table: Table,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Vec<u64>, sqlx::Error> {
        let cutoff = table.cutoff(&self.settings, self.clock.now());
        let limit = self.settings.purge_batch;
        let mut batches = Vec::new();
        loop {
            let deleted = self.purge_batch(table, cutoff, limit).await?;
            batches.push(deleted);
            if deleted < u64::from(limit) || *stop.borrow() {
                return Ok(batches);
            }
            tokio::select! {
                () = tokio::time::sleep(BATCH_PAUSE) => {}
                _ = stop.changed() => return Ok(batches),
            }
        }
    }

    /// One pass over every table; returns the rows deleted. A table that fails is logged and the others go on.
    pub async fn pass(&self, stop: &mut watch::Receiver<bool>) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        let mut failure = None;
        for table in Table::ALL {
            match self.purge_table(table, stop).await {
                Ok(batches) => {
                    let deleted: u64 = batches.iter().sum();
                    if deleted > 0 {
                        tracing::info!(
                            retention.table = table.as_str(),
                            retention.deleted = deleted,
                            retention.batches = batches.len(),
                            "purged rows past their retention"
                        );
                    }
                    total += deleted;
                }
                Err(e) => failure = Some(e),
            }
            if *stop.borrow() {
                break;
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn each_table_is_cut_at_its_own_retention() {
        let now = Utc
            .with_ymd_and_hms(2026, 12, 7, 12, 0, 0)
            .single()
            .expect("instant");
        let s = RetentionSettings::default();
        let at = |t: Table| (now - t.cutoff(&s, now)).num_days();
        assert_eq!(at(Table::StripeEvents), 30);
        assert_eq!(at(Table::StiggOutbox), 7);
        assert_eq!(
            at(Table::UsageEvents),
            36,
            "a day later than records of the period are refused"
        );
        assert_eq!(
            (now - Table::IdempotencyKeys.cutoff(&s, now)).num_hours(),
            24
        );
        assert_eq!(at(Table::WebhookDeliveries), 7);
        let names: Vec<&str> = Table::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "stripe_events",
                "stigg_outbox",
                "usage_events",
                "idempotency_keys",
                "webhook_deliveries"
            ]
        );
    }
}
