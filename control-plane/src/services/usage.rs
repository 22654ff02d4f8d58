//! Metering from the control plane: entitlements, checks, recorded usage, seeding, history and resets, on the
//! same Redis counters the proxy meters (`tollgate_common::store::counters`).
//!
//! The [`Usage`] service holds its own dependencies (not the whole app) and returns [`UsageError`], which
//! `error.rs` maps to problem+json once (a used-up metric included: the 429 with the standard envelope).

pub use crate::services::accounts::account;
use crate::services::recorder::{Record, RecordError, Recorder};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::sync::Arc;
use tollgate_common::clock::SharedClock;
use tollgate_common::domain::{
    Billing, DenyEnvelope, Metric, OrgId, Period, PeriodKey, Plan, PlanCatalog, Terms, decide,
    remaining,
};
use tollgate_common::store::counters::{self, CounterError, CounterKey};
use tollgate_common::store::redis::RedisConn;
use tollgate_common::store::{billing, orgs as org_store};
use utoipa::ToSchema;

/// The largest `value` one `usage/record` call may add.
pub const MAX_RECORD_VALUE: u64 = 1_000_000_000;
/// How far in the future `occurredAt` may be (clock skew between callers and us).
pub const MAX_FUTURE_SKEW: Duration = Duration::minutes(5);
/// The earliest year of an accepted `occurredAt`: usage from before 2000 is a client bug (an unset timestamp
/// reads as 1970), refused rather than filed under some period.
pub const EARLIEST_OCCURRED_YEAR: i32 = 2000;
/// Most periods `usage/history` returns.
pub const MAX_HISTORY_PERIODS: u32 = 24;

/// Whether `period` still takes usage records at `now`: until `retention` after it ends. Past that its events
/// (the request ids' idempotency rows) may be purged, so a record then could count a request id a second time.
pub fn recordable(period: &Period, now: DateTime<Utc>, retention: std::time::Duration) -> bool {
    match Duration::from_std(retention) {
        Ok(retention) => period
            .end
            .checked_add_signed(retention)
            .is_none_or(|until| now <= until),
        Err(_) => true,
    }
}

/// Why a metering operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// No such org (404 naming `orgId`).
    #[error("orgId: no such organization")]
    UnknownOrg,
    /// The org has no plan that allows metered endpoints (402).
    #[error("this organization has no subscription; start one to use metered endpoints")]
    NoSubscription,
    /// A field is invalid (422 naming it).
    #[error("{field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    /// A field conflicts with the stored state or the clock (409 naming it).
    #[error("{field}: {detail}")]
    Conflict { field: &'static str, detail: String },
    /// The metric is used up (429, the standard denial envelope, byte-identical to the proxy's).
    #[error("quota exceeded")]
    Exceeded(DenyEnvelope),
    /// The batch writer could not record the usage (503; a retry counts once).
    #[error("usage could not be recorded right now; retry (a retry counts once)")]
    NotRecorded,
    /// A quota counter failed (Redis, PostgreSQL or a script's reply).
    #[error(transparent)]
    Counter(#[from] CounterError),
    /// PostgreSQL failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Anything else: a bug.
    #[error("internal error")]
    Internal(anyhow::Error),
}

/// Metering: what `quota/*`, `usage/*`, `me/entitlements` and the quota reset call.
pub struct Usage {
    pg: PgPool,
    redis: RedisConn,
    /// The Redis namespace of the counters.
    namespace: String,
    plans: Arc<PlanCatalog>,
    clock: SharedClock,
    /// `usage/record`'s batch writer.
    recorder: Recorder,
    /// How long after its end a period takes records (`TOLLGATE_RETENTION_USAGE_RECORDS_DAYS`).
    retention: std::time::Duration,
}

/// An org with its billing state.
#[derive(Debug)]
pub struct Account {
    pub org: OrgId,
    pub id: i64,
    pub billing: Billing,
}

impl Account {
    fn key(&self, metric: &Metric, period: Period) -> CounterKey {
        CounterKey {
            org_id: self.id,
            metric: metric.clone(),
            period,
        }
    }
}

impl Usage {
    /// A service over the stores, taking the namespace, the plans and the record retention from `config`.
    pub fn new(
        pg: PgPool,
        redis: RedisConn,
        config: &crate::config::Config,
        clock: SharedClock,
        recorder: Recorder,
    ) -> Self {
        Self {
            namespace: config.common.redis.namespace.clone(),
            plans: Arc::clone(&config.common.plans),
            retention: config.retention.usage_records,
            pg,
            redis,
            clock,
            recorder,
        }
    }

    /// Parses a metric and checks PLANS_CONFIG names it.
    pub fn metric(&self, raw: &str) -> Result<Metric, UsageError> {
        self.plans.metric(raw).map_err(|e| UsageError::Invalid {
            field: "metric",
            detail: e.to_string(),
        })
    }

    /// The plan and period of `account` at `at`, or 402 when the org may not use metered endpoints.
    fn terms(&self, account: &Account, at: DateTime<Utc>) -> Result<Terms<'_>, UsageError> {
        account
            .billing
            .terms(&self.plans, at)
            .ok_or(UsageError::NoSubscription)
    }

    fn redis(&self) -> RedisConn {
        self.redis.clone()
    }
}

// === entitlements ===

/// 3.1: what the org may use and has used this period.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Entitlements {
    #[schema(example = "starter")]
    pub plan_code: String,
    #[schema(example = "api_call")]
    pub metric: String,
    pub included: u64,
    pub used: u64,
    pub remaining: u64,
    #[schema(value_type = String, example = "2026-11")]
    pub period_key: PeriodKey,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// A downgrade scheduled for the end of the period, if any (its limits apply from then).
    #[schema(example = "starter")]
    pub pending_plan_code: Option<String>,
    /// When Stripe will cancel the subscription (`cancel_at`, or the period's end with `cancel_at_period_end`),
    /// if it is to be canceled; its limits apply until then.
    pub cancel_at: Option<DateTime<Utc>>,
}

impl Usage {
    /// The live entitlements of `account` for `metric`.
    pub async fn entitlements(
        &self,
        account: &Account,
        metric: &Metric,
    ) -> Result<Entitlements, UsageError> {
        let now = self.clock.now();
        let Terms { plan, period } = self.terms(account, now)?;
        let key = account.key(metric, period);
        let used = counters::current(&mut self.redis(), &self.pg, &self.namespace, &key).await?;
        let included = plan.limit(metric);
        Ok(Entitlements {
            plan_code: plan.code.as_str().to_owned(),
            metric: metric.as_str().to_owned(),
            included,
            used,
            remaining: remaining(used, included),
            period_key: period.key(),
            period_start: period.start,
            period_end: period.end,
            pending_plan_code: account
                .billing
                .pending()
                .map(|p| p.plan.as_str().to_owned()),
            cancel_at: account.billing.cancel_at(),
        })
    }
}

// === check ===

impl Usage {
    /// 4.1: whether one more unit would be admitted now, consuming nothing: what remains, or
    /// [`UsageError::Exceeded`] with the standard denial envelope.
    pub async fn check(&self, account: &Account, metric: &Metric) -> Result<u64, UsageError> {
        let now = self.clock.now();
        let Terms { plan, period } = self.terms(account, now)?;
        let (used, leased) = counters::live(
            &mut self.redis(),
            &self.pg,
            &self.namespace,
            &account.key(metric, period),
        )
        .await?;
        // Units leased to proxies are spoken for: they count as taken, exactly as a proxy's next round trip counts
        // them.
        let taken = used + leased;
        let limit = plan.limit(metric);
        if decide(taken, limit, 1).is_allowed() {
            Ok(remaining(taken, limit))
        } else {
            Err(UsageError::Exceeded(DenyEnvelope::new(
                metric.clone(),
                limit,
                taken,
                &period,
                now,
            )))
        }
    }

    /// The envelope 4.3 shows: the proxy's own builder, for a used-up metric (`api_call` where PLANS_CONFIG names
    /// it) of the `unsubscribed` (else `trial`) plan this calendar month.
    pub fn example_envelope(&self) -> Result<DenyEnvelope, UsageError> {
        let now = self.clock.now();
        let catalog = &self.plans;
        let plan: &Plan = catalog.unsubscribed().unwrap_or_else(|| catalog.trial());
        let metric = match catalog.metric(Metric::API_CALL) {
            Ok(m) => m,
            Err(_) => match catalog.metrics().next() {
                Some(m) => m.clone(),
                None => {
                    Metric::parse(Metric::API_CALL).map_err(|e| UsageError::Internal(e.into()))?
                }
            },
        };
        let limit = plan.limit(&metric);
        Ok(DenyEnvelope::new(
            metric,
            limit,
            limit,
            &Period::calendar_month(now),
            now,
        ))
    }
}

// === seed ===

/// 1.5's reply.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Seeded {
    pub used: u64,
    pub remaining: u64,
    #[schema(value_type = String, example = "2026-11")]
    pub period_key: PeriodKey,
}

impl Usage {
    /// 1.5: creates the current period's counters (every metric the plan includes) if missing; never resets one.
    pub async fn seed(
        &self,
        account: &Account,
        claimed: Option<PeriodKey>,
        metric: &Metric,
    ) -> Result<Seeded, UsageError> {
        let now = self.clock.now();
        let Terms { plan, period } = self.terms(account, now)?;
        if let Some(claimed) = claimed
            && claimed != period.key()
        {
            return Err(UsageError::Conflict {
                field: "periodKey",
                detail: format!("the current period is {}, not {claimed}", period.key()),
            });
        }
        let mut conn = self.redis();
        let mut used_of_metric = 0;
        for m in plan.included.keys().chain(std::iter::once(metric)) {
            let used = counters::ensure(
                &mut conn,
                &self.pg,
                &self.namespace,
                &account.key(m, period),
            )
            .await?;
            if m == metric {
                used_of_metric = used;
            }
        }
        Ok(Seeded {
            used: used_of_metric,
            remaining: remaining(used_of_metric, plan.limit(metric)),
            period_key: period.key(),
        })
    }
}

// === record ===

/// A validated usage record.
pub struct NewRecord {
    pub metric: Metric,
    pub value: u64,
    pub occurred_at: DateTime<Utc>,
    pub request_id: String,
}

pub use crate::services::recorder::RecordedUsage;

impl Usage {
    /// 4.2: adds `value` to the period containing `occurredAt`, exactly once per `request_id`, in a batch with the
    /// calls arriving meanwhile (see [`crate::services::recorder`]).
    #[tracing::instrument(skip_all, fields(org.id = %account.org, usage.metric = %record.metric))]
    pub async fn record(
        &self,
        account: &Account,
        record: &NewRecord,
    ) -> Result<String, UsageError> {
        let now = self.clock.now();
        if record.occurred_at > now + MAX_FUTURE_SKEW {
            // Well-formed, but the period it falls in has not begun by our clock: it conflicts with "now".
            return Err(UsageError::Conflict {
                field: "occurredAt",
                detail: "is more than 5 minutes ahead of the server's clock".to_owned(),
            });
        }
        if chrono::Datelike::year(&record.occurred_at) < EARLIEST_OCCURRED_YEAR {
            return Err(UsageError::Invalid {
                field: "occurredAt",
                detail: format!("must not be before {EARLIEST_OCCURRED_YEAR}-01-01T00:00:00Z"),
            });
        }
        let Terms { plan, .. } = self.terms(account, now)?;
        let period = match account.billing.current_period_for(record.occurred_at, now) {
            Some(current) => current,
            // Earlier than the current period: the period Stripe stated for that time, else (no subscription then)
            // the calendar month the org was unsubscribed in — never a period derived by arithmetic.
            None => {
                let at = account.billing.on_stripes_clock(record.occurred_at, now);
                billing::stated_period_at(&self.pg, account.id, at)
                    .await?
                    .unwrap_or_else(|| Period::calendar_month(at))
            }
        };
        let retention = self.retention;
        if !recordable(&period, now, retention) {
            return Err(UsageError::Invalid {
                field: "occurredAt",
                detail: format!(
                    "falls in the period {} that ended more than {} days ago; usage that old is no longer accepted",
                    period.key(),
                    retention.as_secs() / 86_400
                ),
            });
        }
        let body = self
            .recorder
            .record(Record {
                key: account.key(&record.metric, period),
                request_id: record.request_id.clone(),
                value: record.value,
                occurred_at: record.occurred_at,
                limit: plan.limit(&record.metric),
            })
            .await
            .map_err(|e| match e {
                RecordError::Conflict => UsageError::Conflict {
                    field: "request_id",
                    detail: "was already used for a different metric or value".to_owned(),
                },
                RecordError::Unavailable(_) => UsageError::NotRecorded,
            })?;
        tracing::info!(usage.value = record.value, usage.period = %period.key(), "usage recorded");
        Ok(body)
    }
}

// === history ===

/// One past or current period.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeriodUsage {
    #[schema(value_type = String, example = "2026-10")]
    pub period_key: PeriodKey,
    pub used: u64,
    /// What the org's current plan includes (plans of past periods are not kept).
    pub included: u64,
}

impl Usage {
    /// The org's usage of `metric` over the last `periods` periods, newest first. The current period is live; past
    /// ones are read from PostgreSQL (or Redis when a closed period's counter is still there).
    pub async fn history(
        &self,
        account: &Account,
        metric: &Metric,
        periods: u32,
    ) -> Result<Vec<PeriodUsage>, UsageError> {
        let now = self.clock.now();
        let Terms { plan, period } = self.terms(account, now)?;
        let included = plan.limit(metric);
        let mut conn = self.redis();
        let mut out = Vec::new();
        let mut p = period;
        for _ in 0..periods {
            let used = counters::current(
                &mut conn,
                &self.pg,
                &self.namespace,
                &account.key(metric, p),
            )
            .await?;
            out.push(PeriodUsage {
                period_key: p.key(),
                used,
                included,
            });
            p = account.billing.previous(&p);
        }
        Ok(out)
    }
}

// === reset ===

impl Usage {
    /// 7.1: sets the counters of `period_key` back to 0, for one org or for every org. Returns how many counters had
    /// usage.
    #[tracing::instrument(skip(self), fields(usage.period = %period_key))]
    pub async fn reset(
        &self,
        period_key: PeriodKey,
        org: Option<OrgId>,
    ) -> Result<u64, UsageError> {
        let ids: Vec<i64> = match &org {
            Some(org) => vec![
                org_store::id_by_clerk(&self.pg, org)
                    .await?
                    .ok_or(UsageError::UnknownOrg)?,
            ],
            None => org_store::all_ids(&self.pg).await?,
        };
        let metrics: Vec<Metric> = self.plans.metrics().cloned().collect();
        let mut updated = 0;
        for chunk in ids.chunks(500) {
            let billing = billing::load_many(&self.pg, chunk).await?;
            let mut keys: Vec<CounterKey> = chunk
                .iter()
                .flat_map(|id| {
                    let period = billing
                        .get(id)
                        .unwrap_or(&Billing::Unsubscribed)
                        .period_with_key(period_key);
                    metrics.iter().map(move |m| CounterKey {
                        org_id: *id,
                        metric: m.clone(),
                        period,
                    })
                })
                .collect();
            // Every other period with this key that has a counter (a trial and the period after it can share one).
            let stored: Vec<(i64, String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
                "SELECT org_id, metric, period_start, period_end FROM usage_counters
              WHERE org_id = ANY($1) AND period_key = $2",
            )
            .bind(chunk)
            .bind(period_key.to_string())
            .fetch_all(&self.pg)
            .await?;
            for (org_id, metric, start, end) in stored {
                let Ok(metric) = Metric::parse(&metric) else {
                    continue;
                };
                let key = CounterKey {
                    org_id,
                    metric,
                    period: Period { start, end },
                };
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            updated +=
                counters::reset_many(&mut self.redis(), &self.pg, &self.namespace, &keys).await?;
        }
        // Proxies drop the leases the reset voided now rather than at their next round trip; a lost announcement only
        // delays that (their next settle sees the new epoch), so it does not fail the call.
        let payload = counters::ResetAnnouncement {
            period: period_key,
            org_id: match ids.as_slice() {
                [id] if org.is_some() => Some(*id),
                _ => None,
            },
        }
        .payload();
        let announced: Result<(), redis::RedisError> = redis::cmd("PUBLISH")
            .arg(counters::resets_channel(&self.namespace))
            .arg(payload)
            .query_async(&mut self.redis())
            .await;
        if let Err(e) = announced {
            tracing::warn!(error = %e, "reset stored but not announced to proxies");
        }
        tracing::info!(usage.reset = updated, "counters reset");
        Ok(updated)
    }
}

#[cfg(test)]
mod tests {
    use super::recordable;
    use chrono::{Duration, TimeZone, Utc};
    use tollgate_common::domain::Period;

    #[test]
    fn a_period_takes_records_until_its_retention_after_it_ends() {
        let start = Utc
            .with_ymd_and_hms(2026, 10, 1, 0, 0, 0)
            .single()
            .expect("instant");
        let period = Period::calendar_month(start);
        let retention = std::time::Duration::from_secs(35 * 86_400);
        let end = period.end;
        assert!(recordable(&period, start, retention), "the period itself");
        assert!(recordable(&period, end, retention), "its end");
        assert!(
            recordable(&period, end + Duration::days(35), retention),
            "the last instant of the retention"
        );
        assert!(!recordable(
            &period,
            end + Duration::days(35) + Duration::seconds(1),
            retention
        ));
        assert!(
            recordable(
                &period,
                end + Duration::days(10_000),
                std::time::Duration::MAX
            ),
            "a retention past chrono's range never ends"
        );
    }
}
