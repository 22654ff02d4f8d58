//! The standard denial envelope: the problem+json body of every quota 429, from the proxy and the
//! control plane alike.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

use super::ids::Metric;
use super::period::{Period, PeriodKey};
use super::quota::remaining;

/// Media type of the envelope (RFC 9457).
pub const CONTENT_TYPE: &str = "application/problem+json";
/// The envelope's problem `type` when the plan's quota (its included units, or its overage ceiling) is reached.
pub const QUOTA_EXCEEDED_TYPE: &str = "/problems/quota-exceeded";
/// The envelope's problem `type` when the org's spend cap on overage is reached (CONTRACT §9).
pub const SPEND_CAP_REACHED_TYPE: &str = "/problems/spend-cap-reached";
const TITLE: &str = "Quota exceeded";
const SPEND_CAP_TITLE: &str = "Spend cap reached";
const STATUS: u16 = 429;

/// A quota denial: what was exceeded, for which period, and when it resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEnvelope {
    /// The metric whose quota is exhausted.
    pub metric: Metric,
    /// Where admission stops in the period: the included units, or with overage the bound.
    pub limit: u64,
    /// Units used in the period.
    pub used: u64,
    /// The period's key.
    pub period_key: PeriodKey,
    /// When the period ends and the quota resets.
    pub reset_at: DateTime<Utc>,
    /// Seconds until `reset_at`, rounded up and at least 1: the `Retry-After` header.
    pub retry_after: u64,
    /// Whether the org's spend cap set `limit` (rather than the plan).
    pub spend_cap: bool,
}

/// The wire form, with members in the contract's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    allow: bool,
    remaining: u64,
    metric: &'a Metric,
    limit: u64,
    used: u64,
    period_key: PeriodKey,
    reset_at: String,
}

// === impl DenyEnvelope ===

impl DenyEnvelope {
    /// The denial of `metric` in `period`, as seen at `now`.
    pub fn new(metric: Metric, limit: u64, used: u64, period: &Period, now: DateTime<Utc>) -> Self {
        Self {
            metric,
            limit,
            used,
            period_key: period.key(),
            reset_at: period.end,
            // A client told to retry after 0 seconds would retry at once; at `end` itself the quota
            // has already reset.
            retry_after: period.seconds_until_end(now).max(1),
            spend_cap: false,
        }
    }

    /// The same denial, at the org's spend cap (`/problems/spend-cap-reached`) when `spend_cap`.
    #[must_use]
    pub fn at_spend_cap(mut self, spend_cap: bool) -> Self {
        self.spend_cap = spend_cap;
        self
    }

    /// Units left: 0 once the quota is used up, or a few too few for the denied request's cost.
    pub fn remaining(&self) -> u64 {
        remaining(self.used, self.limit)
    }

    /// The envelope as its exact JSON body.
    pub fn to_json(&self) -> String {
        // Cannot fail: every member is a string, an integer or a boolean.
        serde_json::to_string(&self.wire()).unwrap_or_default()
    }

    fn wire(&self) -> Wire<'_> {
        let remaining = self.remaining();
        let detail = if self.spend_cap {
            format!(
                "{} usage for period {} reached the {} units the spend cap allows",
                self.metric, self.period_key, self.limit
            )
        } else if remaining == 0 {
            format!(
                "{} quota of {} for period {} is used up",
                self.metric, self.limit, self.period_key
            )
        } else {
            format!(
                "{} quota of {} for period {} has {remaining} left, too few for this request",
                self.metric, self.limit, self.period_key
            )
        };
        Wire {
            kind: if self.spend_cap {
                SPEND_CAP_REACHED_TYPE
            } else {
                QUOTA_EXCEEDED_TYPE
            },
            title: if self.spend_cap {
                SPEND_CAP_TITLE
            } else {
                TITLE
            },
            status: STATUS,
            detail,
            allow: false,
            remaining,
            metric: &self.metric,
            limit: self.limit,
            used: self.used,
            period_key: self.period_key,
            reset_at: rfc3339_seconds_ceil(self.reset_at),
        }
    }
}

impl Serialize for DenyEnvelope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.wire().serialize(serializer)
    }
}

/// RFC 3339 with `Z` and whole seconds, rounded up so that `resetAt` is never before the reset.
fn rfc3339_seconds_ceil(at: DateTime<Utc>) -> String {
    let whole = if at.timestamp_subsec_nanos() == 0 {
        Some(at)
    } else {
        DateTime::from_timestamp(at.timestamp().saturating_add(1), 0)
    };
    whole
        .unwrap_or(at)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeDelta};
    use proptest::prelude::*;

    use super::*;

    fn api_call() -> Metric {
        Metric::parse("api_call").expect("valid metric")
    }

    fn utc(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|date| date.and_hms_opt(0, 0, 0))
            .map(|dt| dt.and_utc())
            .expect("valid test date")
    }

    #[test]
    fn matches_the_contract_byte_for_byte() {
        let now = utc(2026, 11, 24);
        let period = Period::calendar_month(now);
        let envelope = DenyEnvelope::new(api_call(), 1000, 1000, &period, now);
        assert_eq!(
            envelope.to_json(),
            concat!(
                r#"{"type":"/problems/quota-exceeded","title":"Quota exceeded","status":429,"#,
                r#""detail":"api_call quota of 1000 for period 2026-11 is used up","#,
                r#""allow":false,"remaining":0,"metric":"api_call","limit":1000,"used":1000,"#,
                r#""periodKey":"2026-11","resetAt":"2026-12-01T00:00:00Z"}"#
            )
        );
        assert_eq!(envelope.retry_after, 604_800);
        assert_eq!(
            serde_json::to_string(&envelope).expect("serialize"),
            envelope.to_json()
        );
        let embedded = serde_json::json!({ "error": envelope });
        assert_eq!(embedded["error"]["periodKey"], "2026-11");
    }

    #[test]
    fn the_spend_cap_has_its_own_type() {
        let now = utc(2026, 11, 24);
        let period = Period::calendar_month(now);
        let envelope = DenyEnvelope::new(api_call(), 1200, 1200, &period, now).at_spend_cap(true);
        let json: serde_json::Value = serde_json::from_str(&envelope.to_json()).expect("json");
        assert_eq!(json["type"], SPEND_CAP_REACHED_TYPE);
        assert_eq!(json["title"], "Spend cap reached");
        assert_eq!(
            (json["limit"].as_u64(), json["remaining"].as_u64()),
            (Some(1200), Some(0))
        );
        assert_eq!(
            envelope.retry_after, 604_800,
            "Retry-After as for the quota"
        );
    }

    #[test]
    fn partial_remaining_is_reported_honestly() {
        let now = utc(2026, 11, 24);
        let period = Period::calendar_month(now);
        let envelope = DenyEnvelope::new(api_call(), 1000, 995, &period, now);
        let json: serde_json::Value = serde_json::from_str(&envelope.to_json()).expect("json");
        assert_eq!(json["remaining"], 5);
        assert_eq!(
            json["detail"],
            "api_call quota of 1000 for period 2026-11 has 5 left, too few for this request"
        );
    }

    #[test]
    fn reset_at_rounds_sub_seconds_up_and_retry_after_is_at_least_one() {
        let end = utc(2026, 12, 1) + TimeDelta::milliseconds(250);
        let period = Period {
            start: utc(2026, 11, 1),
            end,
        };
        let envelope = DenyEnvelope::new(api_call(), 1, 1, &period, end + TimeDelta::seconds(5));
        assert_eq!(envelope.retry_after, 1);
        let json: serde_json::Value = serde_json::from_str(&envelope.to_json()).expect("json");
        assert_eq!(json["resetAt"], "2026-12-01T00:00:01Z");
    }

    proptest! {
        #[test]
        fn retry_after_and_reset_at_follow_the_period(
            anchor in 946_684_800_i64..4_102_444_800,
            now in 946_684_800_i64..4_102_444_800,
            used in any::<u64>(),
            limit in any::<u64>(),
        ) {
            let anchor = DateTime::from_timestamp(anchor, 0).expect("in range");
            let now = DateTime::from_timestamp(now, 0).expect("in range");
            let period = Period::containing(anchor, now);
            let envelope = DenyEnvelope::new(api_call(), limit, used, &period, now);
            prop_assert!(envelope.retry_after >= 1);
            prop_assert_eq!(envelope.retry_after, period.seconds_until_end(now));
            prop_assert_eq!(envelope.reset_at, period.end);
            let json: serde_json::Value =
                serde_json::from_str(&envelope.to_json()).expect("valid json");
            let reset_at = json["resetAt"].as_str().expect("string");
            prop_assert_eq!(
                DateTime::parse_from_rfc3339(reset_at).expect("rfc3339"),
                period.end
            );
            prop_assert!(reset_at.ends_with('Z'));
            let key = period.key().to_string();
            prop_assert_eq!(json["periodKey"].as_str(), Some(key.as_str()));
            prop_assert_eq!(json["allow"].as_bool(), Some(false));
            if used >= limit {
                prop_assert_eq!(json["remaining"].as_u64(), Some(0));
                prop_assert_eq!(envelope.remaining(), 0);
            }
        }
    }
}
