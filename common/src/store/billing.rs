//! Loading orgs' billing state from the `subscriptions` table.
//!
//! Every change to that table is announced on [`CHANGES_CHANNEL`] when its transaction commits (a trigger,
//! whoever wrote the row), with the org's internal id as the payload.

use crate::domain::{Billing, PendingPlan, Period, PlanCode, SubscriptionStatus};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;

/// The PostgreSQL `NOTIFY` channel on which billing changes are announced.
pub const CHANGES_CHANNEL: &str = "tollgate_billing_changes";

#[derive(sqlx::FromRow)]
struct Row {
    org_id: i64,
    status: String,
    plan_code: String,
    current_period_start: DateTime<Utc>,
    current_period_end: DateTime<Utc>,
    billing_cycle_anchor: DateTime<Utc>,
    pending_plan_code: Option<String>,
    pending_effective_at: Option<DateTime<Utc>>,
    period_observed_at: DateTime<Utc>,
    cancel_at: Option<DateTime<Utc>>,
}

/// The billing state of each of `org_ids` (orgs without a subscription holding the slot are
/// [`Billing::Unsubscribed`]).
pub async fn load_many(pg: &PgPool, org_ids: &[i64]) -> Result<HashMap<i64, Billing>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT org_id, status, plan_code, current_period_start, current_period_end, billing_cycle_anchor,
                pending_plan_code, pending_effective_at, period_observed_at, cancel_at
           FROM subscriptions
          WHERE org_id = ANY($1) AND status NOT IN ('canceled', 'incomplete_expired')",
    )
    .bind(org_ids)
    .fetch_all(pg)
    .await?;
    let mut out: HashMap<i64, Billing> = org_ids
        .iter()
        .map(|id| (*id, Billing::Unsubscribed))
        .collect();
    for row in rows {
        let (Ok(status), Ok(plan)) = (
            SubscriptionStatus::parse(&row.status),
            PlanCode::parse(&row.plan_code),
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
        out.insert(
            row.org_id,
            Billing::Subscribed {
                status,
                plan,
                period: Period {
                    start: row.current_period_start,
                    end: row.current_period_end,
                },
                anchor: row.billing_cycle_anchor,
                observed_at: row.period_observed_at,
                pending,
                cancel_at: row.cancel_at,
            },
        );
    }
    Ok(out)
}

/// The billing state of one org.
pub async fn load(pg: &PgPool, org_id: i64) -> Result<Billing, sqlx::Error> {
    Ok(load_many(pg, &[org_id])
        .await?
        .remove(&org_id)
        .unwrap_or(Billing::Unsubscribed))
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
