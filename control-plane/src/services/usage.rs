//! Metering from the control plane: entitlements, checks, recorded usage, seeding, history and resets, on the
//! same Redis counters the proxy meters (`tollgate_common::store::counters`).
//!
//! The [`Usage`] service holds its own dependencies (not the whole app) and returns [`UsageError`], which
//! `error.rs` maps to problem+json once (a used-up metric included: the 429 with the standard envelope).

pub use crate::services::accounts::account;
use crate::services::billing::overage::OveragePrices;
use crate::services::recorder::{Record, RecordError, RecordTerms, Recorder};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::sync::Arc;
use tollgate_common::clock::SharedClock;
use tollgate_common::domain::{
    Billing, Bound, DenyEnvelope, Metric, OrgId, Period, PeriodKey, Plan, PlanCatalog, PriceRef,
    SpendCap, Terms, decide, overage, remaining,
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
    /// The overage prices (entitlements' `overageCost`), when Stripe is configured.
    overage: Option<Arc<OveragePrices>>,
}

/// An org with its billing state.
#[derive(Debug)]
pub struct Account {
    pub org: OrgId,
    pub id: i64,
    pub billing: Billing,
    /// The org's spend cap on overage, if it set one.
    pub cap: Option<Arc<SpendCap>>,
}

impl Account {
    /// Where admission of `metric` stops under `terms` (see [`overage::bound`]).
    pub fn bound(&self, terms: &Terms<'_>, metric: &Metric) -> Bound {
        overage::bound(terms.plan, metric, terms.billable, self.cap.as_deref())
    }

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
        overage: Option<Arc<OveragePrices>>,
    ) -> Self {
        Self {
            overage,
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
    /// Units used past `included` this period: max(0, used − included).
    pub overage_used: u64,
    /// Where admission stops this period, in total units (included and overage); `null` when the plan bills
    /// overage with neither a ceiling nor a spend cap.
    pub bound: Option<u64>,
    /// What set `bound`: the plan's included units, its overage ceiling, or the org's spend cap.
    pub bound_by: Option<BoundBy>,
    /// The overage so far as Stripe will invoice it; `null` when the plan bills no overage of the metric, or
    /// its price cannot be read from Stripe right now.
    pub overage_cost: Option<Money>,
}

/// What set an org's bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BoundBy {
    /// The plan's included units (no overage).
    Included,
    /// The plan's overage ceiling.
    Ceiling,
    /// The org's spend cap.
    Budget,
}

/// An amount of money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Money {
    /// In the currency's minor units (cents).
    #[schema(example = 1250)]
    pub amount: u64,
    /// ISO 4217, lower case.
    #[schema(example = "usd")]
    pub currency: String,
}

impl BoundBy {
    fn of(bound: Bound) -> Option<Self> {
        match bound {
            Bound::Included(_) => Some(Self::Included),
            Bound::Ceiling(_) => Some(Self::Ceiling),
            Bound::Budget(_) => Some(Self::Budget),
            Bound::Unbounded => None,
        }
    }
}

impl Usage {
    /// The live entitlements of `account` for `metric`.
    pub async fn entitlements(
        &self,
        account: &Account,
        metric: &Metric,
    ) -> Result<Entitlements, UsageError> {
        let now = self.clock.now();
        let terms = self.terms(account, now)?;
        let Terms { plan, period, .. } = terms;
        let key = account.key(metric, period);
        let used = counters::current(&mut self.redis(), &self.pg, &self.namespace, &key).await?;
        let included = plan.limit(metric);
        let bound = account.bound(&terms, metric);
        let overage_used = used.saturating_sub(included);
        let overage_cost = match (plan.overage(metric), terms.billable) {
            (Some(o), true) => self.overage_cost(&o.price, overage_used).await,
            _ => None,
        };
        Ok(Entitlements {
            overage_used,
            bound: (bound != Bound::Unbounded).then(|| bound.units()),
            bound_by: BoundBy::of(bound),
            overage_cost,
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

impl Usage {
    /// What `units` of overage at `price` cost as Stripe will invoice them; `None` when the price cannot be read.
    async fn overage_cost(&self, price: &PriceRef, units: u64) -> Option<Money> {
        let prices = match self.overage.as_ref()?.all().await {
            Ok(prices) => prices,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the overage prices; overageCost is left out");
                return None;
            }
        };
        let p = prices.get(price.as_str())?;
        Some(Money {
            amount: p.unit.cost(units),
            currency: p.currency.clone(),
        })
    }
}

// === check ===

impl Usage {
    /// 4.1: whether one more unit would be admitted now, consuming nothing: what remains, or
    /// [`UsageError::Exceeded`] with the standard denial envelope.
    pub async fn check(&self, account: &Account, metric: &Metric) -> Result<u64, UsageError> {
        let now = self.clock.now();
        let terms = self.terms(account, now)?;
        let period = terms.period;
        let bound = account.bound(&terms, metric);
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
        let limit = bound.units();
        if decide(taken, limit, 1).is_allowed() {
            Ok(remaining(taken, limit))
        } else {
            Err(UsageError::Exceeded(
                DenyEnvelope::new(metric.clone(), limit, taken, &period, now)
                    .at_spend_cap(bound.is_budget()),
            ))
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
        let Terms { plan, period, .. } = self.terms(account, now)?;
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
        let terms = self.terms(account, now)?;
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
                limit: account.bound(&terms, &record.metric).units(),
                terms: (period == terms.period).then(|| {
                    let bound = account.bound(&terms, &record.metric);
                    std::sync::Arc::new(RecordTerms {
                        org: account.org.clone(),
                        included: terms.plan.limit(&record.metric),
                        bound,
                        thresholds: terms.plan.thresholds.clone(),
                        overage_price: terms
                            .plan
                            .overage(&record.metric)
                            .filter(|_| terms.billable)
                            .map(|o| o.price.as_str().to_owned()),
                    })
                }),
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
        let Terms { plan, period, .. } = self.terms(account, now)?;
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
                        .map_or(&Billing::Unsubscribed, |b| &b.billing)
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
