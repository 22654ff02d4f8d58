//! The `subscriptions` table: Tollgate's mirror of Stripe subscriptions. This module is the only writer.
//!
//! Rows are written from what Stripe says ([`SubscriptionState`], resolved from a subscription read back from
//! Stripe), in the caller's short transaction, under the caller's per-customer lock (`lock_customer`). No lock or
//! connection is held while Stripe is read: instead every read is ordered by a ticket ([`read_ticket`], taken
//! before the read) and written only if it is newer than the last read written ([`newer_read`]), so a stale read
//! never overwrites a newer one.

use crate::domain::subscription::{Pending, SubscriptionState};
use crate::domain::{Period, PlanCode, SubscriptionStatus};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

/// A stored subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Internal org id.
    pub org_id: i64,
    /// What Stripe said last.
    pub state: SubscriptionState,
}

#[derive(sqlx::FromRow)]
struct Row {
    org_id: i64,
    stripe_subscription_id: String,
    stripe_customer_id: String,
    status: String,
    plan_code: String,
    stripe_price_id: String,
    current_period_start: DateTime<Utc>,
    current_period_end: DateTime<Utc>,
    billing_cycle_anchor: DateTime<Utc>,
    trial_end: Option<DateTime<Utc>>,
    cancel_at_period_end: bool,
    canceled_at: Option<DateTime<Utc>>,
    stripe_schedule_id: Option<String>,
    pending_plan_code: Option<String>,
    pending_effective_at: Option<DateTime<Utc>>,
    cancel_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "org_id, stripe_subscription_id, stripe_customer_id, status, plan_code, stripe_price_id,
    current_period_start, current_period_end, billing_cycle_anchor, trial_end, cancel_at_period_end, canceled_at,
    stripe_schedule_id, pending_plan_code, pending_effective_at, cancel_at";

impl Row {
    fn into_stored(self) -> Result<Stored, sqlx::Error> {
        let bad = |what: &str| {
            sqlx::Error::Decode(format!("subscriptions.{what}: unexpected value").into())
        };
        let pending = match (self.pending_plan_code, self.pending_effective_at) {
            (Some(code), Some(effective_at)) => Some(Pending {
                plan: PlanCode::parse(&code).map_err(|_| bad("pending_plan_code"))?,
                effective_at,
            }),
            _ => None,
        };
        Ok(Stored {
            org_id: self.org_id,
            state: SubscriptionState {
                id: self.stripe_subscription_id,
                customer: self.stripe_customer_id,
                status: SubscriptionStatus::parse(&self.status).map_err(|_| bad("status"))?,
                plan: PlanCode::parse(&self.plan_code).map_err(|_| bad("plan_code"))?,
                price_id: self.stripe_price_id,
                period: Period {
                    start: self.current_period_start,
                    end: self.current_period_end,
                },
                anchor: self.billing_cycle_anchor,
                trial_end: self.trial_end,
                cancel_at_period_end: self.cancel_at_period_end,
                cancel_at: self.cancel_at,
                canceled_at: self.canceled_at,
                schedule: self.stripe_schedule_id,
                pending,
            },
        })
    }
}

/// A ticket to take *before* reading an object back from Stripe: tickets only grow, across every replica.
pub async fn read_ticket(pg: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT nextval('stripe_read_seq')")
        .fetch_one(pg)
        .await
}

/// Records that what was read of `object_id` (a Stripe id) with `ticket` is being written, iff no read with a later
/// ticket has been written already; `false` means this read is stale and must not be written. Call it in the
/// transaction that writes the read: the row stays locked until that transaction ends, so two writers of one
/// object are ordered by their tickets.
///
/// Why this order is right: a read that started after another read *finished* has the later ticket and sees at
/// least what the earlier one saw, so a stale read can never replace it. Two reads that overlap may be written in
/// either order — each is what Stripe said during the overlap — and a change Stripe made during it sends a webhook
/// whose processing reads again, with a later ticket, so the mirror converges on Stripe.
pub async fn newer_read(
    conn: &mut PgConnection,
    object_id: &str,
    ticket: i64,
) -> Result<bool, sqlx::Error> {
    let written: Option<i32> = sqlx::query_scalar(
        "INSERT INTO stripe_reads (object_id, read_seq) VALUES ($1, $2)
         ON CONFLICT (object_id) DO UPDATE SET read_seq = EXCLUDED.read_seq, written_at = now()
          WHERE stripe_reads.read_seq < EXCLUDED.read_seq
         RETURNING 1",
    )
    .bind(object_id)
    .bind(ticket)
    .fetch_optional(conn)
    .await?;
    Ok(written.is_some())
}

/// Serialises the short transactions that write one customer's billing state (the subscription rows of its org,
/// their Stigg operations) until the transaction ends. Never held across a Stripe call: the reads happen before,
/// and [`newer_read`] orders them.
pub async fn lock_customer(conn: &mut PgConnection, customer: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('tollgate.stripe.customer:' || $1, 0))",
    )
    .bind(customer)
    .execute(conn)
    .await?;
    Ok(())
}

/// The org's subscription that holds its slot (live, or incomplete/unpaid/paused), if any.
pub async fn current(conn: &mut PgConnection, org_id: i64) -> Result<Option<Stored>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM subscriptions
          WHERE org_id = $1 AND status NOT IN ('canceled', 'incomplete_expired')"
    ))
    .bind(org_id)
    .fetch_optional(conn)
    .await?;
    row.map(Row::into_stored).transpose()
}

/// One subscription by its Stripe id.
pub async fn by_id(conn: &mut PgConnection, id: &str) -> Result<Option<Stored>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE stripe_subscription_id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(Row::into_stored).transpose()
}

/// Other subscriptions of the org that still hold its slot in our mirror (stale ones, if Stripe moved on).
pub async fn others_holding_the_slot(
    conn: &mut PgConnection,
    org_id: i64,
    except: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT stripe_subscription_id FROM subscriptions
          WHERE org_id = $1 AND stripe_subscription_id <> $2 AND status NOT IN ('canceled', 'incomplete_expired')",
    )
    .bind(org_id)
    .bind(except)
    .fetch_all(conn)
    .await
}

/// Whether [`upsert`] changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// A new row.
    Inserted,
    /// An existing row now says something else.
    Updated,
    /// The row already said exactly this.
    Unchanged,
}

/// Writes what Stripe says of a subscription. Writing the same state again changes nothing (and says so). Returns
/// what the row said before, if it existed.
pub async fn upsert(
    conn: &mut PgConnection,
    org_id: i64,
    s: &SubscriptionState,
) -> Result<(Upserted, Option<SubscriptionState>), sqlx::Error> {
    let before = by_id(&mut *conn, &s.id).await?;
    if before
        .as_ref()
        .is_some_and(|b| b.org_id == org_id && b.state == *s)
    {
        return Ok((Upserted::Unchanged, before.map(|b| b.state)));
    }
    sqlx::query(
        "INSERT INTO subscriptions (org_id, stripe_subscription_id, stripe_customer_id, status, plan_code,
             stripe_price_id, current_period_start, current_period_end, billing_cycle_anchor, trial_end,
             cancel_at_period_end, canceled_at, stripe_schedule_id, pending_plan_code, pending_effective_at,
             cancel_at, stripe_updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, now())
         ON CONFLICT (stripe_subscription_id) DO UPDATE SET
             status = EXCLUDED.status, plan_code = EXCLUDED.plan_code, stripe_price_id = EXCLUDED.stripe_price_id,
             current_period_start = EXCLUDED.current_period_start,
             current_period_end = EXCLUDED.current_period_end,
             billing_cycle_anchor = EXCLUDED.billing_cycle_anchor, trial_end = EXCLUDED.trial_end,
             cancel_at_period_end = EXCLUDED.cancel_at_period_end, canceled_at = EXCLUDED.canceled_at,
             stripe_schedule_id = EXCLUDED.stripe_schedule_id, pending_plan_code = EXCLUDED.pending_plan_code,
             pending_effective_at = EXCLUDED.pending_effective_at, cancel_at = EXCLUDED.cancel_at,
             stripe_updated_at = now(), updated_at = now(),
             period_observed_at = CASE WHEN subscriptions.current_period_start = EXCLUDED.current_period_start
                                       THEN subscriptions.period_observed_at ELSE now() END",
    )
    .bind(org_id)
    .bind(&s.id)
    .bind(&s.customer)
    .bind(s.status.as_str())
    .bind(s.plan.as_str())
    .bind(&s.price_id)
    .bind(s.period.start)
    .bind(s.period.end)
    .bind(s.anchor)
    .bind(s.trial_end)
    .bind(s.cancel_at_period_end)
    .bind(s.canceled_at)
    .bind(s.schedule.as_deref())
    .bind(s.pending.as_ref().map(|p| p.plan.as_str()))
    .bind(s.pending.as_ref().map(|p| p.effective_at))
    .bind(s.cancel_at)
    .execute(&mut *conn)
    .await?;
    if s.status.is_live() {
        // The history of the periods Stripe stated (a usage record's period, CONTRACT §8).
        sqlx::query(
            "INSERT INTO subscription_periods (org_id, stripe_subscription_id, period_start, period_end)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (stripe_subscription_id, period_start) DO UPDATE SET
                 period_end = EXCLUDED.period_end, stated_at = now()
              WHERE subscription_periods.period_end <> EXCLUDED.period_end",
        )
        .bind(org_id)
        .bind(&s.id)
        .bind(s.period.start)
        .bind(s.period.end)
        .execute(conn)
        .await?;
    }
    let outcome = if before.is_some() {
        Upserted::Updated
    } else {
        Upserted::Inserted
    };
    Ok((outcome, before.map(|b| b.state)))
}
