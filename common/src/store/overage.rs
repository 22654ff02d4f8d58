//! The overage a period owes Stripe (`overage_reports`), as the proxies' write-back sees it (CONTRACT §9).
//!
//! [`observe`] keeps each row's `used` and `target` (min(used, bound) − included) in step with the counters the
//! write-back just wrote, in one statement; the target only grows. A row that was reported (`done`) and owes more
//! is `pending` again, due when its coalescing interval (set by the reporter when it finished) has passed: the
//! number of reports grows with time, not with requests — except for a period Stripe has closed
//! ([`period_closed`]): usage written back after its renewal is the period's last, due at once so that it reaches
//! the draft invoice within its grace. The control plane's reporter owns the rest of the row.

use crate::domain::{Metric, Period};
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use std::sync::LazyLock;

/// What a period owes, as one writer saw it.
#[derive(Debug, Clone)]
pub struct Owed<'a> {
    pub org_id: i64,
    pub metric: &'a Metric,
    pub period: Period,
    /// The overage price, as PLANS_CONFIG names it.
    pub price: &'a str,
    pub included: u64,
    /// The bound in total units (`u64::MAX`: unbounded).
    pub bound: u64,
    pub used: u64,
}

impl Owed<'_> {
    /// The overage owed: min(used, bound) − included.
    pub fn target(&self) -> u64 {
        self.used.min(self.bound).saturating_sub(self.included)
    }
}

/// SQL: whether the period of the `overage_reports` row aliased `row` is over in Stripe's eyes, as mirrored: the
/// org's subscription has renewed past it, or ended with it.
pub fn period_closed(row: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM subscriptions s WHERE s.org_id = {row}.org_id
                   AND (s.current_period_start >= {row}.period_end
                        OR (s.status IN ('canceled', 'incomplete_expired')
                            AND s.current_period_end <= {row}.period_end)))"
    )
}

/// SQL: `next_attempt_at` made due now, unless the row is leased (its holder then decides, when it finishes).
pub fn due_now_unless_leased(row: &str) -> String {
    format!(
        "CASE WHEN {row}.lease_until IS NULL OR {row}.lease_until <= now()
              THEN LEAST({row}.next_attempt_at, now()) ELSE {row}.next_attempt_at END"
    )
}

/// [`observe`]'s statement.
static OBSERVE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO overage_reports AS r
                (org_id, metric, period_start, period_end, price, included, bound, used, target)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[],
                              $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])
         ON CONFLICT (org_id, metric, period_start) DO UPDATE
            SET price = EXCLUDED.price, included = EXCLUDED.included, bound = EXCLUDED.bound,
                used = GREATEST(r.used, EXCLUDED.used), target = GREATEST(r.target, EXCLUDED.target),
                status = CASE WHEN r.status = 'done' AND EXCLUDED.target > r.reported THEN 'pending'
                              ELSE r.status END,
                done_at = CASE WHEN r.status = 'done' AND EXCLUDED.target > r.reported THEN NULL
                               ELSE r.done_at END,
                next_attempt_at = CASE WHEN EXCLUDED.target > r.reported AND {closed} THEN {due}
                                       ELSE r.next_attempt_at END
          WHERE EXCLUDED.target > r.target OR EXCLUDED.used > r.used",
        closed = period_closed("r"),
        due = due_now_unless_leased("r"),
    )
});

/// Records `rows` (those that owe nothing yet are left out). Returns how many rows changed.
pub async fn observe<'e>(pg: impl PgExecutor<'e>, rows: &[Owed<'_>]) -> Result<u64, sqlx::Error> {
    let owing: Vec<&Owed<'_>> = rows.iter().filter(|r| r.target() > 0).collect();
    if owing.is_empty() {
        return Ok(0);
    }
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let org_id: Vec<i64> = owing.iter().map(|r| r.org_id).collect();
    let metric: Vec<&str> = owing.iter().map(|r| r.metric.as_str()).collect();
    let start: Vec<DateTime<Utc>> = owing.iter().map(|r| r.period.start).collect();
    let end: Vec<DateTime<Utc>> = owing.iter().map(|r| r.period.end).collect();
    let price: Vec<&str> = owing.iter().map(|r| r.price).collect();
    let included: Vec<i64> = owing.iter().map(|r| int(r.included)).collect();
    let bound: Vec<i64> = owing.iter().map(|r| int(r.bound)).collect();
    let used: Vec<i64> = owing.iter().map(|r| int(r.used)).collect();
    let target: Vec<i64> = owing.iter().map(|r| int(r.target())).collect();
    Ok(sqlx::query(&OBSERVE_SQL)
        .bind(&org_id)
        .bind(&metric)
        .bind(&start)
        .bind(&end)
        .bind(&price)
        .bind(&included)
        .bind(&bound)
        .bind(&used)
        .bind(&target)
        .execute(pg)
        .await?
        .rows_affected())
}
