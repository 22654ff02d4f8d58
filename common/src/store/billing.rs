//! Loading orgs' billing state from the `subscriptions` table.
//!
//! Every change to that table is announced on [`CHANGES_CHANNEL`] when its transaction commits (a trigger,
//! whoever wrote the row), with the org's internal id as the payload.

use crate::domain::{Billing, PendingPlan, Period, PlanCode, SpendCap, SubscriptionStatus};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The PostgreSQL `NOTIFY` channel on which billing changes are announced.
pub const CHANGES_CHANNEL: &str = "tollgate_billing_changes";

/// What metering needs to know of an org's billing: its subscription's state and its spend cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgBilling {
    /// The subscription that holds the org's slot, if any.
    pub billing: Billing,
    /// The org's spend cap on overage, if it set one (shared: most orgs have none, and the cache entry stays
    /// small).
    pub cap: Option<Arc<SpendCap>>,
}

impl From<Billing> for OrgBilling {
    fn from(billing: Billing) -> Self {
        Self { billing, cap: None }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    org_id: i64,
    status: Option<String>,
    plan_code: Option<String>,
    current_period_start: Option<DateTime<Utc>>,
    current_period_end: Option<DateTime<Utc>>,
    billing_cycle_anchor: Option<DateTime<Utc>>,
    pending_plan_code: Option<String>,
    pending_effective_at: Option<DateTime<Utc>>,
    period_observed_at: Option<DateTime<Utc>>,
    cancel_at: Option<DateTime<Utc>>,
    cap_amount: Option<i64>,
    cap_currency: Option<String>,
    cap_units: Option<sqlx::types::Json<BTreeMap<String, u64>>>,
}

/// The billing state of each of `org_ids` (orgs without a subscription holding the slot are
/// [`Billing::Unsubscribed`]), in one query.
pub async fn load_many(
    pg: &PgPool,
    org_ids: &[i64],
) -> Result<HashMap<i64, OrgBilling>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT o.id AS org_id, s.status, s.plan_code, s.current_period_start, s.current_period_end,
                s.billing_cycle_anchor, s.pending_plan_code, s.pending_effective_at, s.period_observed_at,
                s.cancel_at, b.amount AS cap_amount, b.currency AS cap_currency, b.units AS cap_units
           FROM unnest($1::bigint[]) AS o (id)
           LEFT JOIN subscriptions s
                  ON s.org_id = o.id AND s.status NOT IN ('canceled', 'incomplete_expired')
           LEFT JOIN org_budgets b ON b.org_id = o.id
          WHERE s.org_id IS NOT NULL OR b.org_id IS NOT NULL",
    )
    .bind(org_ids)
    .fetch_all(pg)
    .await?;
    let mut out: HashMap<i64, OrgBilling> = org_ids
        .iter()
        .map(|id| (*id, Billing::Unsubscribed.into()))
        .collect();
    for row in rows {
        let cap = match (row.cap_amount, row.cap_currency, row.cap_units) {
            (Some(amount), Some(currency), Some(units)) => Some(Arc::new(SpendCap {
                amount: u64::try_from(amount).unwrap_or(0),
                currency,
                units: units.0,
            })),
            _ => None,
        };
        let entry = out
            .entry(row.org_id)
            .or_insert_with(|| Billing::Unsubscribed.into());
        entry.cap = cap;
        let (
            Some(status),
            Some(plan_code),
            Some(start),
            Some(end),
            Some(anchor),
            Some(observed_at),
        ) = (
            row.status,
            row.plan_code,
            row.current_period_start,
            row.current_period_end,
            row.billing_cycle_anchor,
            row.period_observed_at,
        )
        else {
            continue;
        };
        let (Ok(status), Ok(plan)) = (
            SubscriptionStatus::parse(&status),
            PlanCode::parse(&plan_code),
        ) else {
            tracing::warn!(
                org.internal_id = row.org_id,
                "subscription row with an unknown status or plan code"
            );
            continue;
        };
        let pending = match (row.pending_plan_code, row.pending_effective_at) {
            (Some(code), Some(effective_at)) => PlanCode::parse(&code)
                .ok()
                .map(|plan| PendingPlan { plan, effective_at }),
            _ => None,
        };
        entry.billing = Billing::Subscribed {
            status,
            plan,
            period: Period { start, end },
            anchor,
            observed_at,
            pending,
            cancel_at: row.cancel_at,
        };
    }
    Ok(out)
}

/// The billing state of one org.
pub async fn load(pg: &PgPool, org_id: i64) -> Result<OrgBilling, sqlx::Error> {
    Ok(load_many(pg, &[org_id])
        .await?
        .remove(&org_id)
        .unwrap_or_else(|| Billing::Unsubscribed.into()))
}

/// The period Stripe stated for the org's live subscription that contains `at` (the history mirrored in
/// `subscription_periods`), if any.
pub async fn stated_period_at(
    pg: &PgPool,
    org_id: i64,
    at: DateTime<Utc>,
) -> Result<Option<Period>, sqlx::Error> {
    let row: Option<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT period_start, period_end FROM subscription_periods
          WHERE org_id = $1 AND period_start <= $2 AND period_end > $2
          ORDER BY period_start DESC LIMIT 1",
    )
    .bind(org_id)
    .bind(at)
    .fetch_optional(pg)
    .await?;
    Ok(row.map(|(start, end)| Period { start, end }))
}
