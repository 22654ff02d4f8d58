//! Usage alerts (CONTRACT §9): the one owner of `usage_alerts`, and of the webhook deliveries an alert queues.
//!
//! Whoever writes a counter's usage (the proxy's write-back) hands its observations here, in one statement:
//!
//! * every threshold the usage has reached gets its row, `ON CONFLICT DO NOTHING`: two writers that see the crossing
//!   at once, or one that repeats it after a restart, insert one row; only an inserted row queues deliveries, to
//!   each of the org's endpoints that subscribed to the event (`webhook_deliveries`, a kind of job on the control
//!   plane's queue), in the same statement, so an alert is delivered iff it is recorded;
//! * every threshold the usage is below again (a reset, a plan change that raised the included units or the bound)
//!   loses its row: re-armed, it is announced again when crossed again. A new period is a new key.
//!
//! What a threshold is at ([`marks`]) is pure: `domain::overage`.

use crate::domain::overage::{Bound, Threshold};
use crate::domain::{Metric, OrgId, Period};
use serde_json::json;
use sqlx::PgExecutor;

/// `usage.threshold.crossed`: a percentage of the included units was reached.
pub const THRESHOLD_CROSSED: &str = "usage.threshold.crossed";
/// `usage.bound.reached`: admission stops here for the rest of the period.
pub const BOUND_REACHED: &str = "usage.bound.reached";
/// Every event type an endpoint may subscribe to.
pub const EVENT_TYPES: [&str; 2] = [THRESHOLD_CROSSED, BOUND_REACHED];

/// What a writer of a counter saw.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The org's internal id.
    pub org_id: i64,
    /// Its Clerk id (the payload's `orgId`).
    pub org: &'a OrgId,
    pub metric: &'a Metric,
    /// The counter's period.
    pub period: Period,
    /// Units used in the period.
    pub used: u64,
    /// Units the plan includes.
    pub included: u64,
    /// Where admission stops.
    pub bound: Bound,
    /// The plan's thresholds, in percent of `included`.
    pub thresholds: &'a [u16],
}

/// One threshold of an observation: where it is, and whether the usage has reached it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// `usage_alerts.threshold`: the percentage (`"80"`) or `"bound"`.
    pub label: String,
    /// The event it announces.
    pub event: &'static str,
    /// The payload's `threshold`: the percentage of the included units (100 for the bound: 100 % of it).
    pub percent: u16,
    /// The usage at which it is reached.
    pub at: u64,
    /// Whether `used` has reached it.
    pub reached: bool,
}

/// The thresholds of `o` (a percentage of 0 included units, or the bound of an unbounded org, is never reached
/// and left out).
pub fn marks(o: &Observation<'_>) -> Vec<Mark> {
    let percents = o.thresholds.iter().map(|p| (Threshold::Included(*p), *p));
    percents
        .chain(std::iter::once((Threshold::Bound, 100)))
        .filter_map(|(t, percent)| {
            let at = t.at(o.included, o.bound)?;
            let (label, event) = match t {
                Threshold::Included(p) => (p.to_string(), THRESHOLD_CROSSED),
                Threshold::Bound => ("bound".to_owned(), BOUND_REACHED),
            };
            Some(Mark {
                label,
                event,
                percent,
                at,
                reached: o.used >= at,
            })
        })
        .collect()
}

/// A fingerprint of what [`record`] would write for `o`: a writer that remembers it need not repeat an
/// observation that changes nothing (the statement is idempotent either way). Never 0. Computed without
/// allocating: write-back takes it for every changed counter, every interval.
pub fn fingerprint(o: &Observation<'_>) -> u64 {
    // Which thresholds are reached, as bits (the plan's thresholds in order, then the bound).
    let mut reached = 0u64;
    for (i, t) in o
        .thresholds
        .iter()
        .map(|p| Threshold::Included(*p))
        .chain(std::iter::once(Threshold::Bound))
        .enumerate()
    {
        if t.at(o.included, o.bound).is_some_and(|at| o.used >= at) {
            reached |= 1 << (i % 64);
        }
    }
    // FNV-1a over the parts.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [
        u64::from_ne_bytes(o.period.start.timestamp().to_ne_bytes()),
        o.included,
        o.bound.units(),
        reached,
    ] {
        for byte in part.to_le_bytes() {
            h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h.max(1)
}

/// What [`record`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Alerts recorded now (first seen by this call), by event: threshold crossings, bounds reached.
    pub crossed: u64,
    pub bounds: u64,
    /// Alerts removed because usage is below them again.
    pub rearmed: u64,
    /// Webhook deliveries queued.
    pub deliveries: u64,
}

#[derive(Default)]
struct Rows {
    org_id: Vec<i64>,
    metric: Vec<String>,
    period_start: Vec<chrono::DateTime<chrono::Utc>>,
    label: Vec<String>,
    at: Vec<i64>,
    used: Vec<i64>,
    reached: Vec<bool>,
    payload: Vec<serde_json::Value>,
}

/// Records `observations` in one statement (see the module docs).
pub async fn record<'e>(
    pg: impl PgExecutor<'e>,
    observations: &[Observation<'_>],
) -> Result<Recorded, sqlx::Error> {
    let mut rows = Rows::default();
    for o in observations {
        let bound = (o.bound != Bound::Unbounded).then(|| o.bound.units());
        for m in marks(o) {
            rows.org_id.push(o.org_id);
            rows.metric.push(o.metric.as_str().to_owned());
            rows.period_start.push(o.period.start);
            rows.at.push(i64::try_from(m.at).unwrap_or(i64::MAX));
            rows.used.push(i64::try_from(o.used).unwrap_or(i64::MAX));
            rows.reached.push(m.reached);
            rows.payload.push(json!({
                "type": m.event,
                "orgId": o.org,
                "metric": o.metric,
                "periodKey": o.period.key().to_string(),
                "threshold": m.percent,
                "used": o.used,
                "included": o.included,
                "bound": bound,
            }));
            rows.label.push(m.label);
        }
    }
    if rows.org_id.is_empty() {
        return Ok(Recorded::default());
    }
    let (crossed, bounds, rearmed, deliveries): (i64, i64, i64, i64) = sqlx::query_as(
        "WITH o AS (
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::timestamptz[], $4::text[], $5::bigint[],
                                  $6::bigint[], $7::boolean[], $8::jsonb[])
                 AS o (org_id, metric, period_start, threshold, at_units, used, reached, payload)
         ),
         rearmed AS (
             DELETE FROM usage_alerts a USING o
              WHERE NOT o.reached AND a.org_id = o.org_id AND a.metric = o.metric
                AND a.period_start = o.period_start AND a.threshold = o.threshold
             RETURNING a.id
         ),
         crossed AS (
             INSERT INTO usage_alerts (org_id, metric, period_start, threshold, at_units, used)
             SELECT org_id, metric, period_start, threshold, at_units, used FROM o WHERE reached
             ON CONFLICT DO NOTHING
             RETURNING id, org_id, metric, period_start, threshold
         ),
         queued AS (
             INSERT INTO webhook_deliveries (endpoint_id, message_id, event_type, payload)
             SELECT e.id, 'msg_alert_' || c.id, o.payload->>'type', o.payload
               FROM crossed c
               JOIN o USING (org_id, metric, period_start, threshold)
               JOIN webhook_endpoints e ON e.org_id = c.org_id AND (o.payload->>'type') = ANY(e.events)
             ON CONFLICT (endpoint_id, message_id) DO NOTHING
             RETURNING 1
         )
         SELECT (SELECT count(*) FROM crossed WHERE threshold <> 'bound'),
                (SELECT count(*) FROM crossed WHERE threshold = 'bound'),
                (SELECT count(*) FROM rearmed),
                (SELECT count(*) FROM queued)",
    )
    .bind(&rows.org_id)
    .bind(&rows.metric)
    .bind(&rows.period_start)
    .bind(&rows.label)
    .bind(&rows.at)
    .bind(&rows.used)
    .bind(&rows.reached)
    .bind(&rows.payload)
    .fetch_one(pg)
    .await?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Recorded {
        crossed: n(crossed),
        bounds: n(bounds),
        rearmed: n(rearmed),
        deliveries: n(deliveries),
    })
}

/// Re-arms every alert of the counters named by the three parallel arrays (a reset: usage is 0 again).
pub async fn rearm<'e>(
    pg: impl PgExecutor<'e>,
    org_ids: &[i64],
    metrics: &[String],
    period_starts: &[chrono::DateTime<chrono::Utc>],
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM usage_alerts a
          USING UNNEST($1::bigint[], $2::text[], $3::timestamptz[]) AS k (org_id, metric, period_start)
          WHERE (a.org_id, a.metric, a.period_start) = (k.org_id, k.metric, k.period_start)",
    )
    .bind(org_ids)
    .bind(metrics)
    .bind(period_starts)
    .execute(pg)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn observe<'a>(
        org: &'a OrgId,
        metric: &'a Metric,
        used: u64,
        bound: Bound,
        thresholds: &'a [u16],
    ) -> Observation<'a> {
        let start = Utc
            .with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
            .single()
            .expect("start");
        Observation {
            org_id: 1,
            org,
            metric,
            period: Period::calendar_month(start),
            used,
            included: 1000,
            bound,
            thresholds,
        }
    }

    #[test]
    fn marks_are_the_plans_thresholds_and_the_bound() {
        let (org, metric) = (
            OrgId::parse("org_a").expect("org"),
            Metric::parse("api_call").expect("metric"),
        );
        let o = observe(&org, &metric, 800, Bound::Ceiling(1500), &[50, 80, 100]);
        let got: Vec<(String, u64, bool)> = marks(&o)
            .into_iter()
            .map(|m| (m.label, m.at, m.reached))
            .collect();
        assert_eq!(
            got,
            [
                ("50".into(), 500, true),
                ("80".into(), 800, true),
                ("100".into(), 1000, false),
                ("bound".into(), 1500, false),
            ]
        );
        let unbounded = observe(&org, &metric, 800, Bound::Unbounded, &[]);
        assert!(marks(&unbounded).is_empty(), "no bound, no thresholds");
    }

    #[test]
    fn the_fingerprint_moves_only_when_a_mark_does() {
        let (org, metric) = (
            OrgId::parse("org_a").expect("org"),
            Metric::parse("api_call").expect("metric"),
        );
        let t = [50, 80, 100];
        let at = |used| fingerprint(&observe(&org, &metric, used, Bound::Included(1000), &t));
        assert_eq!(at(510), at(790), "between 50 % and 80 % nothing changes");
        assert_ne!(at(790), at(800), "80 % reached");
        assert_ne!(
            fingerprint(&observe(&org, &metric, 800, Bound::Included(1000), &t)),
            fingerprint(&observe(&org, &metric, 800, Bound::Budget(1200), &t)),
            "a new bound is a new observation"
        );
    }
}
