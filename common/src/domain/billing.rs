//! Which plan and which period apply to an org, from its subscription state (CONTRACT §4).
//!
//! * No live subscription: PLANS_CONFIG's `unsubscribed` plan over the calendar month (UTC); none configured
//!   means metered use is refused.
//! * `trialing`: the `trial` plan over the subscription's period.
//! * `active`, `past_due`: the subscribed plan over the subscription's period.
//! * `incomplete`, `unpaid`, `paused`: as if unsubscribed (no paid limits until Stripe says the money is there).
//!
//! A subscription's periods follow monthly from its stored period start (the anchor), so metering rolls over by
//! itself when a period ends, before (or without) the webhook that moves the stored period.

use super::{DomainError, Period, PeriodKey, Plan, PlanCatalog, PlanCode};
use chrono::{DateTime, Duration, TimeZone, Utc};

/// Stripe's subscription statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    Incomplete,
    IncompleteExpired,
    Trialing,
    Active,
    PastDue,
    Canceled,
    Unpaid,
    Paused,
}

impl SubscriptionStatus {
    /// Parses Stripe's spelling.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Ok(match s {
            "incomplete" => Self::Incomplete,
            "incomplete_expired" => Self::IncompleteExpired,
            "trialing" => Self::Trialing,
            "active" => Self::Active,
            "past_due" => Self::PastDue,
            "canceled" => Self::Canceled,
            "unpaid" => Self::Unpaid,
            "paused" => Self::Paused,
            _ => {
                return Err(DomainError::Invalid {
                    field: "status",
                    reason: "must be a Stripe subscription status",
                });
            }
        })
    }

    /// Stripe's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::IncompleteExpired => "incomplete_expired",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Unpaid => "unpaid",
            Self::Paused => "paused",
        }
    }
}

/// An org's billing state, as far as metering is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Billing {
    /// No live subscription.
    Unsubscribed,
    /// A Stripe subscription.
    Subscribed {
        /// Its status.
        status: SubscriptionStatus,
        /// The subscribed plan.
        plan: PlanCode,
        /// The stored current period's start; periods follow monthly from it.
        anchor: DateTime<Utc>,
    },
}

/// The plan and period in force at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms<'c> {
    /// The plan whose limits apply.
    pub plan: &'c Plan,
    /// The billing period containing the instant.
    pub period: Period,
}

impl Billing {
    /// The subscription anchor when the subscription's periods apply.
    fn anchor(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Subscribed {
                status:
                    SubscriptionStatus::Trialing
                    | SubscriptionStatus::Active
                    | SubscriptionStatus::PastDue,
                anchor,
                ..
            } => Some(*anchor),
            _ => None,
        }
    }

    /// The billing period containing `at`.
    pub fn period_at(&self, at: DateTime<Utc>) -> Period {
        match self.anchor() {
            Some(anchor) => Period::containing(anchor, at),
            None => Period::calendar_month(at),
        }
    }

    /// The period whose key is `key` (the one starting in that month).
    pub fn period_with_key(&self, key: PeriodKey) -> Period {
        let first = Utc
            .with_ymd_and_hms(i32::from(key.year()), u32::from(key.month()), 1, 0, 0, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut period = self.period_at(first);
        // A period containing the 1st may have started the month before; the next one then starts in `key`.
        while period.key() < key && period.end > period.start {
            period = self.period_at(period.end);
        }
        period
    }

    /// The period before `period`.
    pub fn previous(&self, period: &Period) -> Period {
        self.period_at(period.start - Duration::seconds(1))
    }

    /// The plan and period at `at`; `None` when the org may not use metered endpoints (no subscription and no
    /// `unsubscribed` plan, or a subscribed plan PLANS_CONFIG no longer defines).
    pub fn terms<'c>(&self, catalog: &'c PlanCatalog, at: DateTime<Utc>) -> Option<Terms<'c>> {
        let plan = match self {
            Self::Subscribed {
                status: SubscriptionStatus::Trialing,
                ..
            } => catalog.trial(),
            Self::Subscribed {
                status: SubscriptionStatus::Active | SubscriptionStatus::PastDue,
                plan,
                ..
            } => catalog.plan(plan)?,
            _ => catalog.unsubscribed()?,
        };
        Some(Terms {
            plan,
            period: self.period_at(at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PLANS: &str = r#"
trial_days = 14
unsubscribed = "trial"
[plans.trial]
included = { api_call = 1000 }
[plans.starter]
price = "plan_starter_m"
included = { api_call = 100000 }
"#;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
            .single()
            .expect("valid instant")
    }

    fn subscribed(status: SubscriptionStatus, anchor: DateTime<Utc>) -> Billing {
        Billing::Subscribed {
            status,
            plan: PlanCode::parse("starter").expect("code"),
            anchor,
        }
    }

    #[test]
    fn each_status_gets_its_plan_and_period() {
        let catalog = PlanCatalog::from_toml_str(PLANS).expect("plans");
        let anchor = at(2026, 1, 15, 12);
        let now = at(2026, 11, 20, 0);
        let t = Billing::Unsubscribed.terms(&catalog, now).expect("terms");
        assert_eq!(
            (t.plan.code.as_str(), t.period.key().to_string()),
            ("trial", "2026-11".to_owned())
        );
        assert_eq!(t.period.start, at(2026, 11, 1, 0));

        let t = subscribed(SubscriptionStatus::Active, anchor)
            .terms(&catalog, now)
            .expect("terms");
        assert_eq!(t.plan.code.as_str(), "starter");
        assert_eq!(
            (t.period.start, t.period.end),
            (at(2026, 11, 15, 12), at(2026, 12, 15, 12))
        );

        let t = subscribed(SubscriptionStatus::Trialing, anchor)
            .terms(&catalog, now)
            .expect("terms");
        assert_eq!(t.plan.code.as_str(), "trial");
        assert_eq!(t.period.start, at(2026, 11, 15, 12));

        for status in [
            SubscriptionStatus::Unpaid,
            SubscriptionStatus::Incomplete,
            SubscriptionStatus::Paused,
        ] {
            let t = subscribed(status, anchor)
                .terms(&catalog, now)
                .expect("terms");
            assert_eq!(t.plan.code.as_str(), "trial");
            assert_eq!(t.period.start, at(2026, 11, 1, 0));
        }
    }

    #[test]
    fn without_an_unsubscribed_plan_unsubscribed_orgs_get_no_terms() {
        let catalog = PlanCatalog::from_toml_str(&PLANS.replace("unsubscribed = \"trial\"", ""))
            .expect("plans");
        assert!(
            Billing::Unsubscribed
                .terms(&catalog, at(2026, 11, 20, 0))
                .is_none()
        );
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            "incomplete",
            "incomplete_expired",
            "trialing",
            "active",
            "past_due",
            "canceled",
            "unpaid",
            "paused",
        ] {
            assert_eq!(SubscriptionStatus::parse(s).expect("status").as_str(), s);
        }
        assert!(SubscriptionStatus::parse("ACTIVE").is_err());
    }

    #[test]
    fn the_period_with_a_key_starts_in_that_month() {
        let key = PeriodKey::parse("2026-11").expect("key");
        assert_eq!(
            Billing::Unsubscribed.period_with_key(key).start,
            at(2026, 11, 1, 0)
        );
        let anchored = subscribed(SubscriptionStatus::Active, at(2025, 1, 31, 12));
        let p = anchored.period_with_key(key);
        assert_eq!(
            (p.start, p.end),
            (at(2026, 11, 30, 12), at(2026, 12, 31, 12))
        );
        let early = subscribed(SubscriptionStatus::Active, at(2025, 1, 1, 12));
        assert_eq!(early.period_with_key(key).start, at(2026, 11, 1, 12));
    }

    proptest! {
        #[test]
        fn periods_roll_over_by_themselves_and_tile(anchor_s in 946_684_800i64..4_000_000_000, offset in 0i64..400_000_000) {
            let anchor = Utc.timestamp_opt(anchor_s, 0).single().expect("instant");
            let billing = subscribed(SubscriptionStatus::Active, anchor);
            let now = anchor + Duration::seconds(offset);
            let p = billing.period_at(now);
            prop_assert!(p.contains(now));
            let prev = billing.previous(&p);
            prop_assert_eq!(prev.end, p.start);
            prop_assert_eq!(billing.period_with_key(p.key()), p);
        }
    }
}
