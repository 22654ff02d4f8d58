//! Reporting overage to Stripe's Billing Meters exactly once (CONTRACT §9), and reconciling it.
//!
//! Each (org, metric, period) that owes overage has an `overage_reports` row, kept in step by the proxies'
//! write-back (`tollgate_common::store::overage`). The row is a job on the one queue (`meter_report`, ordered per
//! org and metric: at most one call in flight for a customer and meter):
//!
//! 1. Claimed (leased), it fixes what it will report, if nothing is pending yet: `pending = target` and a
//!    deterministic `pending_identifier` (`tg_<org>_<metric>_<period start>_<pending>`), committed before Stripe is
//!    called.
//! 2. It sends one meter event: value `pending − reported`, that identifier, a timestamp inside the period (the
//!    period's last second once it has ended), within the global rate (`TOLLGATE_STRIPE_METER_RATE`, counted in
//!    Redis across replicas).
//! 3. Stripe's 200 — or its 400 "An event already exists with identifier …", which says an earlier attempt
//!    landed — moves `reported` to `pending`. The row is done, or due again after the report interval
//!    (`TOLLGATE_METER_REPORT_INTERVAL_MS`) if the target grew meanwhile: calls grow with time, not requests.
//!
//! A crash or a 5xx between 1 and 3 repeats the same call with the same identifier, which Stripe deduplicates (its
//! window is at least 24 hours; the queue's retries end long before). Nothing is reported twice, and a period's
//! usage is only ever reported with a timestamp inside that period, so it lands on that period's invoice.

use super::{Billing, BillingError};
use crate::queue::{self, Queue};
use crate::stripe::{Op, StripeError};
use chrono::{DateTime, Duration as TimeDelta, DurationRound, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Notify;
use tollgate_common::domain::{Metric, OrgId, PeriodKey, RateLimit};
use tollgate_common::store::ratelimit::{self, Admission};
use tollgate_common::store::redis::RedisConn;
use utoipa::ToSchema;

/// Overage reports as a kind of job on the queue: ordered per org and metric, oldest period first.
pub static METER_REPORTS: queue::Spec = queue::Spec {
    kind: "meter_report",
    table: "overage_reports",
    id: "id",
    key: "{a}.org_id::text || '/' || {a}.metric",
    same_key: "{h}.org_id = {j}.org_id AND {h}.metric = {j}.metric",
    seq: "({a}.period_start, {a}.id)",
    created: "{a}.created_at",
    returning: "id, org_id, metric, period_start, period_end, price, target, reported, pending, \
                pending_identifier, attempts, lease_token",
};

/// What a report may take beyond its two bounded waits (the rate's admission and the Stripe call, each at most
/// `TOLLGATE_STRIPE_BUDGET_MS`): its few short statements.
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// The longest wait between two attempts of a report.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

#[derive(sqlx::FromRow)]
struct Report {
    id: i64,
    org_id: i64,
    metric: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    price: String,
    target: i64,
    reported: i64,
    pending: Option<i64>,
    pending_identifier: Option<String>,
    attempts: i32,
    lease_token: uuid::Uuid,
}

/// The deterministic identifier of the report that brings a period's reported overage to `total`; one longer than
/// Stripe's 100 characters (a long metric name) is replaced by its SHA-256, as deterministic.
pub fn identifier(org_id: i64, metric: &str, period_start: DateTime<Utc>, total: i64) -> String {
    use sha2::Digest;
    let plain = format!("tg_{org_id}_{metric}_{}_{total}", period_start.timestamp());
    if plain.len() <= MAX_IDENTIFIER {
        plain
    } else {
        format!("tg_{:x}", sha2::Sha256::digest(plain.as_bytes()))
    }
}

/// Stripe's limit on a meter event's identifier.
const MAX_IDENTIFIER: usize = 100;

/// The meter event's timestamp: `now` (on Stripe's clock) within the period, its last second once it ended.
///
/// Within the period's whole minutes when it has any: Stripe's event summaries take minute-aligned bounds, so the
/// summary over the minutes covering a period (what reconcile shows) then holds this period's events and none of
/// its neighbours', whose start or end shares a minute with it.
pub fn timestamp_within(
    now: DateTime<Utc>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> DateTime<Utc> {
    let minute = TimeDelta::minutes(1);
    let (first, last) = match (start.duration_round_up(minute), end.duration_trunc(minute)) {
        (Ok(first), Ok(whole_end)) if whole_end > first => (first, whole_end),
        _ => (start, end),
    };
    let last = last - TimeDelta::seconds(1);
    now.clamp(first, last.max(first))
}

/// A report's outcome; more owed for a period Stripe has closed (written back while the report was in flight) is due
/// at once.
static FINISH_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE overage_reports
            SET reported = $3, pending = NULL, pending_identifier = NULL, attempts = 0, last_error = NULL,
                status = CASE WHEN target > $3 THEN 'pending' ELSE 'done' END,
                done_at = CASE WHEN target > $3 THEN NULL ELSE now() END,
                next_attempt_at = CASE WHEN target > $3 AND {closed} THEN now()
                                       ELSE now() + make_interval(secs => $4) END,
                lease_token = NULL, lease_until = NULL
          WHERE id = $1 AND lease_token = $2",
        closed = tollgate_common::store::overage::period_closed("overage_reports"),
    )
});

/// [`due_now`]'s statement. A leased report is left to its holder (never two calls in flight): it finishes, and what
/// is still owed for the closed period is due at once then.
static DUE_NOW_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE overage_reports SET next_attempt_at = {due}
          WHERE org_id = $1 AND status = 'pending'",
        due = tollgate_common::store::overage::due_now_unless_leased("overage_reports"),
    )
});

/// The reporter: billing's Stripe client and prices, the queue, and the global rate in Redis.
pub struct MeterReporter {
    billing: Arc<Billing>,
    redis: RedisConn,
    rate_key: String,
    rate: Option<RateLimit>,
    interval: Duration,
    queue: Queue,
    /// Woken when a report is due on this replica (nothing wakes it yet: it polls).
    pub wake: Notify,
}

impl MeterReporter {
    /// The reporter over `billing`.
    pub fn new(
        billing: Arc<Billing>,
        redis: RedisConn,
        namespace: &str,
        settings: &crate::config::MeterSettings,
        queue: Queue,
    ) -> Arc<Self> {
        Arc::new(Self {
            billing,
            redis,
            rate_key: format!("{namespace}:stripe:rl:meter_events"),
            rate: settings.rate,
            interval: settings.interval,
            queue,
            wake: Notify::new(),
        })
    }

    /// The worker's step: claims the next due report and makes it. `Ok(None)` when none is due.
    pub async fn report_next(&self) -> Result<Option<bool>, BillingError> {
        let pg = &self.billing.pg;
        let job: Option<Report> = sqlx::query_as(&queue::claim_sql(&METER_REPORTS))
            .bind(uuid::Uuid::new_v4())
            .bind(self.lease().as_secs_f64())
            .bind(None::<String>)
            .fetch_optional(pg)
            .await?;
        let Some(mut job) = job else {
            return Ok(None);
        };
        let (pending, identifier) = match (job.pending, job.pending_identifier.clone()) {
            (Some(p), Some(id)) => (p, id),
            _ if job.target <= job.reported => {
                self.finish(&job, job.reported).await?;
                return Ok(Some(true));
            }
            _ => {
                let id = identifier(job.org_id, &job.metric, job.period_start, job.target);
                sqlx::query(
                    "UPDATE overage_reports SET pending = $3, pending_identifier = $4
                      WHERE id = $1 AND lease_token = $2",
                )
                .bind(job.id)
                .bind(job.lease_token)
                .bind(job.target)
                .bind(&id)
                .execute(pg)
                .await?;
                job.pending = Some(job.target);
                (job.target, id)
            }
        };
        match self.send(&job, pending - job.reported, &identifier).await {
            Ok(()) => {
                self.finish(&job, pending).await?;
                Ok(Some(true))
            }
            Err(error) => {
                self.fail(&job, &error).await?;
                Ok(Some(false))
            }
        }
    }

    /// One meter event for `value` units under `identifier`.
    async fn send(&self, job: &Report, value: i64, identifier: &str) -> Result<(), String> {
        let billing = &self.billing;
        let prices = billing.overage.all().await.map_err(|e| e.to_string())?;
        let price = prices.get(&job.price).ok_or_else(|| {
            format!(
                "`{}` is no longer an overage price of PLANS_CONFIG",
                job.price
            )
        })?;
        let customer: Option<String> =
            sqlx::query_scalar("SELECT stripe_customer_id FROM orgs WHERE id = $1")
                .bind(job.org_id)
                .fetch_optional(&billing.pg)
                .await
                .map_err(|e| e.to_string())?
                .flatten();
        let customer = customer.ok_or("the org has no Stripe customer")?;
        let now = self.stripes_now(job.org_id).await;
        let at = timestamp_within(now, job.period_start, job.period_end);
        self.admit().await?;
        let payload = HashMap::from([
            (price.customer_key.clone(), customer),
            (price.value_key.clone(), value.to_string()),
        ]);
        let request = stripe_billing::billing_meter_event::CreateBillingMeterEvent::new(
            price.event_name.as_str(),
            payload,
        )
        .identifier(identifier)
        .timestamp(at.timestamp());
        match billing
            .stripe
            .send(Op::MeterEventCreate, &request, None)
            .await
        {
            Ok(_) => Ok(()),
            // An earlier attempt landed: Stripe refuses a repeated identifier (and says not to retry).
            Err(StripeError::Refused {
                status: 400,
                message,
                ..
            }) if message.contains("already exists with identifier") => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// "Now" on the org's Stripe clock (a test clock may run ahead).
    async fn stripes_now(&self, org_id: i64) -> DateTime<Utc> {
        let now = self.billing.now();
        match tollgate_common::store::billing::load(&self.billing.pg, org_id).await {
            Ok(state) => state.billing.on_stripes_clock(now, now),
            Err(_) => now,
        }
    }

    /// How long a claimed report stays invisible to other workers: longer than any report (two waits bounded by
    /// the Stripe budget, and a margin), so that a replica that dies mid-report holds its reports only that long.
    fn lease(&self) -> Duration {
        self.billing.settings().api.budget * 2 + LEASE_MARGIN
    }

    /// Waits until the global meter-event rate admits one more call, at most the Stripe budget (then the attempt
    /// fails and is retried later). Redis down: goes on, counted as a warning.
    async fn admit(&self) -> Result<(), String> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + self.billing.settings().api.budget;
        loop {
            let mut conn = self.redis.clone();
            match ratelimit::admit(&mut conn, &self.rate_key, rate).await {
                Ok(Admission::Admitted { .. }) => return Ok(()),
                Ok(Admission::Refused { retry_after_ms }) => {
                    let wait = Duration::from_millis(retry_after_ms.clamp(1, 1000));
                    if tokio::time::Instant::now() + wait > deadline {
                        return Err(
                            "TOLLGATE_STRIPE_METER_RATE admitted no call within the Stripe budget"
                                .to_owned(),
                        );
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "meter-event rate limit unavailable; reporting without it");
                    return Ok(());
                }
            }
        }
    }

    /// Stripe has `reported` units: the row is done, or due again after the interval if the target grew.
    async fn finish(&self, job: &Report, reported: i64) -> Result<(), sqlx::Error> {
        sqlx::query(&FINISH_SQL)
            .bind(job.id)
            .bind(job.lease_token)
            .bind(reported)
            .bind(self.interval.as_secs_f64())
            .execute(&self.billing.pg)
            .await?;
        self.queue.metrics.attempt(&METER_REPORTS, None);
        Ok(())
    }

    async fn fail(&self, job: &Report, error: &str) -> Result<(), sqlx::Error> {
        let failure = self
            .queue
            .fail(
                &self.billing.pg,
                &METER_REPORTS,
                (job.id, job.lease_token),
                job.attempts,
                error,
                MAX_RETRY_DELAY,
            )
            .await?;
        tracing::warn!(
            overage.report = job.id,
            attempts = job.attempts + 1,
            status = failure.status,
            error,
            "overage report failed"
        );
        Ok(())
    }
}

impl queue::Worker for MeterReporter {
    fn spec(&self) -> &'static queue::Spec {
        &METER_REPORTS
    }

    async fn step(&self) -> Result<bool, String> {
        match self.report_next().await {
            Ok(Some(_)) => Ok(true),
            Ok(None) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    fn wake(&self) -> &Notify {
        &self.wake
    }

    fn gauges(&self) -> (&PgPool, &queue::QueueMetrics) {
        (&self.billing.pg, &self.queue.metrics)
    }
}

/// Makes org `org_id`'s waiting overage reports due now (a renewal invoice was drafted).
pub async fn due_now(conn: &mut sqlx::PgConnection, org_id: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(&DUE_NOW_SQL)
        .bind(org_id)
        .execute(conn)
        .await?
        .rows_affected())
}

// === reconcile ===

/// `usage/reconcile`'s answer: Tollgate's ledger beside Stripe's.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reconciled {
    #[schema(value_type = String, example = "2026-11")]
    pub period_key: PeriodKey,
    #[schema(example = "api_call")]
    pub metric: String,
    /// The overage Tollgate counted for the period (units past the included ones, up to the bound).
    pub overage: u64,
    /// What Tollgate has reported to Stripe (acknowledged).
    pub reported: u64,
    /// Stripe's meter event summary for the customer and the period: its aggregated value.
    pub stripe: f64,
}

/// A period's ledger row, with the org's customer.
#[derive(sqlx::FromRow)]
struct LedgerRow {
    target: i64,
    reported: i64,
    price: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    customer: Option<String>,
}

impl Billing {
    /// Tollgate's overage of `metric` in the period `key` of org `org` beside Stripe's meter event summary.
    pub async fn reconcile(
        &self,
        org: &OrgId,
        key: PeriodKey,
        metric: &Metric,
    ) -> Result<Reconciled, BillingError> {
        let row: Option<LedgerRow> = sqlx::query_as(
            "SELECT r.target, r.reported, r.price, r.period_start, r.period_end,
                    o.stripe_customer_id AS customer
               FROM overage_reports r JOIN orgs o ON o.id = r.org_id
              WHERE o.clerk_org_id = $1 AND r.metric = $2
                AND to_char(r.period_start AT TIME ZONE 'UTC', 'YYYY-MM') = $3
              ORDER BY r.period_start LIMIT 1",
        )
        .bind(org.as_str())
        .bind(metric.as_str())
        .bind(key.to_string())
        .fetch_optional(&self.pg)
        .await?;
        let Some(LedgerRow {
            target,
            reported,
            price,
            period_start: start,
            period_end: end,
            customer,
        }) = row
        else {
            tollgate_common::store::orgs::id_by_clerk(&self.pg, org)
                .await?
                .ok_or(BillingError::UnknownOrg)?;
            return Ok(Reconciled {
                period_key: key,
                metric: metric.as_str().to_owned(),
                overage: 0,
                reported: 0,
                stripe: 0.0,
            });
        };
        let prices = self.overage.all().await?;
        let stripe = match (prices.get(&price), customer) {
            (Some(price), Some(customer)) => {
                // Summaries take minute-aligned bounds: the minutes that cover the period.
                let minute = TimeDelta::minutes(1);
                let from = start.duration_trunc(minute).unwrap_or(start);
                let to = end.duration_round_up(minute).unwrap_or(end);
                let request = stripe_billing::billing_meter_event_summary::ListIdBillingMeterEventSummary::new(
                    price.meter.as_str(),
                    customer,
                    to.timestamp(),
                    from.timestamp(),
                );
                let list = self
                    .stripe
                    .send(Op::MeterEventSummaries, &request, None)
                    .await?;
                list.data.iter().map(|s| s.aggregated_value).sum()
            }
            _ => 0.0,
        };
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Reconciled {
            period_key: key,
            metric: metric.as_str().to_owned(),
            overage: n(target),
            reported: n(reported),
            stripe,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_report_is_timestamped_inside_its_period() {
        let at = |h| {
            Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0)
                .single()
                .expect("time")
        };
        let (start, end) = (at(1), at(5));
        assert_eq!(timestamp_within(at(3), start, end), at(3));
        // Boundaries inside a minute: only the period's whole minutes are used.
        let s = |secs| start + TimeDelta::seconds(secs);
        assert_eq!(timestamp_within(s(10), s(30), s(3630)), s(60));
        assert_eq!(timestamp_within(s(4000), s(30), s(3630)), s(3599));
        assert_eq!(timestamp_within(s(100), s(30), s(3630)), s(100));
        // A period shorter than a whole minute keeps its own bounds.
        assert_eq!(timestamp_within(s(0), s(10), s(50)), s(10));
        assert_eq!(timestamp_within(s(90), s(10), s(50)), s(49));
        assert_eq!(
            timestamp_within(at(0), start, end),
            start,
            "before: the start"
        );
        assert_eq!(
            timestamp_within(at(9), start, end),
            end - TimeDelta::seconds(1),
            "after the period ended: its last second, so it lands on its invoice"
        );
    }

    #[test]
    fn identifiers_name_the_total_reported() {
        let start = Utc
            .with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
            .single()
            .expect("time");
        assert_eq!(
            identifier(7, "api_call", start, 250),
            "tg_7_api_call_1796083200_250"
        );
        assert_ne!(
            identifier(7, "api_call", start, 250),
            identifier(7, "api_call", start, 251)
        );
        assert!(identifier(i64::MAX, &"m".repeat(64), start, i64::MAX).len() <= 100);
    }
}
