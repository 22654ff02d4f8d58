//! Which plan and which period apply to an org, from its subscription state (CONTRACT §4, §8).
//!
//! Which limits a subscription's status gives is one table, [`SubscriptionStatus::access`] (the README's state
//! table):
//!
//! * No subscription holding the slot: PLANS_CONFIG's `unsubscribed` plan over the calendar month (UTC); none
//!   configured means metered use is refused.
//! * `trialing`: the `trial` plan over the subscription's period.
//! * `active`: the subscribed plan over the subscription's period.
//! * `past_due`: the subscribed plan while Stripe retries the payment, or, with a grace
//!   (`TOLLGATE_PAST_DUE_GRACE`), until that long after the start of the period whose invoice failed; then as if
//!   unsubscribed.
//! * `incomplete`, `incomplete_expired`, `unpaid`, `paused`, `canceled`: as if unsubscribed (no paid limits until
//!   Stripe says the money is there).
//! * A `cancel_at` in the future changes nothing until Stripe cancels (the status then says `canceled`); it is
//!   shown as `cancelAt`.
//!
//! # Periods
//!
//! The stored period is the one Stripe last stated, `[start, end)` (a trial's is as long as the trial). Other
//! periods follow Stripe's billing cycle anchor monthly (with Stripe's month-end clamping), so metering rolls over by
//! itself when a period ends, before (or without) the webhook that moves the stored period.
//!
//! Stripe may run ahead of our clock (a test clock, or a renewal a moment early): when the stored period starts
//! after "now", Stripe's clock is at least that far ahead. The stored period is then the current one, and usage
//! that happened since Tollgate learned of it counts toward it; earlier instants are read on Stripe's clock,
//! shifted by that lead.

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

    /// Whether a subscription in this status is the org's live one (CONTRACT §8: trialing, active, past_due).
    /// At most one per org.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Trialing | Self::Active | Self::PastDue)
    }

    /// Whether the subscription still occupies the org's one subscription slot (it can become live again or is
    /// live): everything but `canceled` and `incomplete_expired`, which are final.
    pub fn holds_the_slot(self) -> bool {
        !matches!(self, Self::Canceled | Self::IncompleteExpired)
    }

    /// The state table: the limits a subscription in this status gives, `past_due_for` after the start of its
    /// period (only `past_due` reads it), with the configured grace (`None`: as long as Stripe keeps retrying,
    /// i.e. until Stripe moves the subscription on to `unpaid`, `canceled` or `paused`).
    pub fn access(self, past_due_for: Duration, grace: Option<Duration>) -> Access {
        match self {
            Self::Trialing => Access::Trial,
            Self::Active => Access::Paid,
            Self::PastDue => match grace {
                Some(grace) if past_due_for >= grace => Access::Unsubscribed,
                _ => Access::Paid,
            },
            Self::Incomplete
            | Self::IncompleteExpired
            | Self::Unpaid
            | Self::Paused
            | Self::Canceled => Access::Unsubscribed,
        }
    }
}

/// What a subscription gives an org (a row of the README's state table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The `trial` plan's limits.
    Trial,
    /// The subscribed plan's limits.
    Paid,
    /// The `unsubscribed` plan's (none configured: metered use is refused).
    Unsubscribed,
}

/// A plan change Stripe has scheduled for a later date (a downgrade at period end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPlan {
    /// The plan that takes over.
    pub plan: PlanCode,
    /// When.
    pub effective_at: DateTime<Utc>,
}

/// An org's billing state, as far as metering is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Billing {
    /// No subscription that holds the slot.
    Unsubscribed,
    /// A Stripe subscription.
    Subscribed {
        /// Its status.
        status: SubscriptionStatus,
        /// The subscribed plan.
        plan: PlanCode,
        /// The current period as Stripe last stated it.
        period: Period,
        /// Stripe's billing cycle anchor: periods start on it, monthly (after a trial, it is the trial's end).
        anchor: DateTime<Utc>,
        /// When Tollgate first saw the stated period (our clock).
        observed_at: DateTime<Utc>,
        /// A scheduled change, if any.
        pending: Option<PendingPlan>,
        /// When Stripe will cancel it (`cancel_at`, or the period's end with `cancel_at_period_end`).
        cancel_at: Option<DateTime<Utc>>,
    },
}

/// The plan and period in force at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms<'c> {
    /// The plan whose limits apply.
    pub plan: &'c Plan,
    /// The billing period containing the instant.
    pub period: Period,
    /// Whether usage past the included units can be invoiced: a paid subscription (not a trial, not an org held
    /// to the `unsubscribed` plan).
    pub billable: bool,
}

impl Billing {
    /// The stored period and the anchor, when the subscription's periods apply.
    fn stated(&self) -> Option<(Period, DateTime<Utc>)> {
        match self {
            Self::Subscribed {
                status,
                period,
                anchor,
                ..
            } if status.is_live() => Some((*period, *anchor)),
            _ => None,
        }
    }

    /// How far Stripe's clock is at least ahead of `now` (zero unless the stated period starts after `now`).
    fn lead(&self, now: DateTime<Utc>) -> Duration {
        self.stated().map_or(Duration::zero(), |(p, _)| {
            (p.start - now).max(Duration::zero())
        })
    }

    /// The current period if `at` counts toward it (CONTRACT §8: at or after its start, on Stripe's clock — when
    /// Stripe runs ahead, everything since Tollgate learned of its period counts toward it); `None` for an earlier
    /// `at`, which belongs to the period Stripe stated for that time (the caller looks it up in the stated periods'
    /// history; never a period derived by arithmetic).
    pub fn current_period_for(&self, at: DateTime<Utc>, now: DateTime<Utc>) -> Option<Period> {
        let current = self.current(now);
        let lead = self.lead(now);
        let seen_since = lead > Duration::zero()
            && matches!(self, Self::Subscribed { observed_at, .. } if at >= *observed_at);
        (seen_since || at + lead >= current.start).then_some(current)
    }

    /// `at` on Stripe's clock as seen at `now`: shifted by how far Stripe is ahead (see the module docs).
    pub fn on_stripes_clock(&self, at: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        at + self.lead(now)
    }

    /// The period containing `at`, read on Stripe's clock as seen at `now` (see the module docs).
    fn period_at(&self, at: DateTime<Utc>, now: DateTime<Utc>) -> Period {
        let lead = self.lead(now);
        if lead > Duration::zero()
            && let Self::Subscribed {
                period,
                observed_at,
                ..
            } = self
            && at >= *observed_at
        {
            return *period;
        }
        self.period_on_stripes_clock(at + lead)
    }

    /// The period in force at `now`.
    pub fn current(&self, now: DateTime<Utc>) -> Period {
        self.period_at(now, now)
    }

    /// The period containing `t`, `t` already on Stripe's clock.
    fn period_on_stripes_clock(&self, t: DateTime<Utc>) -> Period {
        let Some((stated, anchor)) = self.stated() else {
            return Period::calendar_month(t);
        };
        if stated.contains(t) {
            return stated;
        }
        // Clipped to the stated period, so that periods tile even if Stripe's anchor and period disagree.
        let p = Period::containing(anchor, t);
        if t >= stated.end {
            Period {
                start: p.start.max(stated.end),
                end: p.end,
            }
        } else {
            Period {
                start: p.start,
                end: p.end.min(stated.start),
            }
        }
    }

    /// The period whose key is `key` (the first one starting in that month).
    pub fn period_with_key(&self, key: PeriodKey) -> Period {
        let first = Utc
            .with_ymd_and_hms(i32::from(key.year()), u32::from(key.month()), 1, 0, 0, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut period = self.period_on_stripes_clock(first);
        // A period containing the 1st may have started the month before; the next one then starts in `key`.
        while period.key() < key && period.end > period.start {
            period = self.period_on_stripes_clock(period.end);
        }
        period
    }

    /// The period before `period`.
    pub fn previous(&self, period: &Period) -> Period {
        self.period_on_stripes_clock(period.start - Duration::seconds(1))
    }

    /// A downgrade scheduled for a later period, if any.
    pub fn pending(&self) -> Option<&PendingPlan> {
        match self {
            Self::Subscribed { pending, .. } => pending.as_ref(),
            Self::Unsubscribed => None,
        }
    }

    /// When Stripe will cancel the subscription, if it is to be canceled.
    pub fn cancel_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Subscribed { cancel_at, .. } => *cancel_at,
            Self::Unsubscribed => None,
        }
    }

    /// The row of the state table that applies at `now` (see [`SubscriptionStatus::access`]).
    pub fn access(&self, catalog: &PlanCatalog, now: DateTime<Utc>) -> Access {
        match self {
            Self::Subscribed { status, period, .. } => {
                // On Stripe's clock when it is ahead (a test clock): then the period has only just begun.
                let past_due_for = now + self.lead(now) - period.start;
                status.access(past_due_for, catalog.past_due_grace())
            }
            Self::Unsubscribed => Access::Unsubscribed,
        }
    }

    /// The plan and period at `now`; `None` when the org may not use metered endpoints (no subscription and no
    /// `unsubscribed` plan, or a subscribed plan PLANS_CONFIG no longer defines).
    pub fn terms<'c>(&self, catalog: &'c PlanCatalog, now: DateTime<Utc>) -> Option<Terms<'c>> {
        let (plan, billable) = match (self.access(catalog, now), self) {
            (Access::Trial, _) => (catalog.trial(), false),
            (Access::Paid, Self::Subscribed { plan, .. }) => (catalog.plan(plan)?, true),
            _ => (catalog.unsubscribed()?, false),
        };
        Some(Terms {
            plan,
            period: self.current(now),
            billable,
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
            period: Period::containing(anchor, anchor),
            anchor,
            observed_at: anchor,
            pending: None,
            cancel_at: None,
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

    /// The README's state table, row by row.
    #[test]
    fn the_state_table() {
        use SubscriptionStatus as S;
        let day = Duration::days(1);
        let rows: [(S, Duration, Option<Duration>, Access); 12] = [
            (S::Trialing, day, None, Access::Trial),
            (S::Active, day, None, Access::Paid),
            (S::PastDue, Duration::days(40), None, Access::Paid),
            (S::PastDue, day * 2, Some(day * 3), Access::Paid),
            (S::PastDue, day * 3, Some(day * 3), Access::Unsubscribed),
            (S::Unpaid, day, None, Access::Unsubscribed),
            (S::Paused, day, None, Access::Unsubscribed),
            (S::Incomplete, day, None, Access::Unsubscribed),
            (S::IncompleteExpired, day, None, Access::Unsubscribed),
            (S::Canceled, day, None, Access::Unsubscribed),
            (S::Active, day, Some(day), Access::Paid),
            (S::Trialing, Duration::days(40), Some(day), Access::Trial),
        ];
        for (status, since, grace, access) in rows {
            assert_eq!(
                status.access(since, grace),
                access,
                "{status:?} after {since} with grace {grace:?}"
            );
        }
    }

    #[test]
    fn a_grace_ends_the_paid_plan_of_a_past_due_subscription_and_cancel_at_changes_nothing() {
        let catalog = PlanCatalog::from_toml_str(PLANS).expect("plans");
        let start = at(2026, 11, 1, 0);
        let past_due = Billing::Subscribed {
            status: SubscriptionStatus::PastDue,
            plan: PlanCode::parse("starter").expect("code"),
            period: Period::containing(start, start),
            anchor: start,
            observed_at: start,
            pending: None,
            cancel_at: Some(at(2026, 12, 1, 0)),
        };
        let plan = |c: &PlanCatalog, now| {
            past_due
                .terms(c, now)
                .expect("terms")
                .plan
                .code
                .as_str()
                .to_owned()
        };
        assert_eq!(plan(&catalog, at(2026, 11, 25, 0)), "starter");
        let graced = catalog.with_past_due_grace(Some(Duration::days(3)));
        assert_eq!(plan(&graced, at(2026, 11, 3, 23)), "starter");
        assert_eq!(plan(&graced, at(2026, 11, 4, 0)), "trial", "unsubscribed");
        assert_eq!(past_due.cancel_at(), Some(at(2026, 12, 1, 0)));
        let active = Billing::Subscribed {
            status: SubscriptionStatus::Active,
            plan: PlanCode::parse("starter").expect("code"),
            period: Period::containing(start, start),
            anchor: start,
            observed_at: start,
            pending: None,
            cancel_at: Some(at(2026, 12, 1, 0)),
        };
        assert_eq!(
            active
                .terms(&graced, at(2026, 11, 30, 0))
                .expect("terms")
                .plan
                .code
                .as_str(),
            "starter",
            "a cancel_at in the future keeps the plan until Stripe cancels"
        );
    }

    #[test]
    fn only_records_from_the_current_period_start_on_count_toward_it() {
        // A trial from the 6th, renewed on the 20th (stated by Stripe, seen at once).
        let renewed = Billing::Subscribed {
            status: SubscriptionStatus::Active,
            plan: PlanCode::parse("starter").expect("code"),
            period: Period {
                start: at(2026, 11, 20, 0),
                end: at(2026, 12, 20, 0),
            },
            anchor: at(2026, 11, 20, 0),
            observed_at: at(2026, 11, 20, 0),
            pending: None,
            cancel_at: None,
        };
        let now = at(2026, 11, 21, 0);
        assert_eq!(
            renewed.current_period_for(at(2026, 11, 20, 0), now),
            Some(renewed.current(now))
        );
        assert_eq!(
            renewed.current_period_for(at(2026, 11, 19, 23), now),
            None,
            "an earlier record belongs to the period Stripe stated for its time"
        );
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

    #[test]
    fn a_trial_period_is_as_stated_and_the_next_one_follows_from_its_end() {
        let catalog = PlanCatalog::from_toml_str(PLANS).expect("plans");
        let trial = Billing::Subscribed {
            status: SubscriptionStatus::Trialing,
            plan: PlanCode::parse("starter").expect("code"),
            period: Period {
                start: at(2026, 12, 1, 10),
                end: at(2026, 12, 15, 10),
            },
            anchor: at(2026, 12, 15, 10),
            observed_at: at(2026, 12, 1, 10),
            pending: None,
            cancel_at: None,
        };
        let t = trial.terms(&catalog, at(2026, 12, 3, 0)).expect("terms");
        assert_eq!(
            (t.plan.code.as_str(), t.period.start, t.period.end),
            ("trial", at(2026, 12, 1, 10), at(2026, 12, 15, 10))
        );
        // The webhook is late: the period after the trial still starts at its end, with the same key.
        let next = trial.current(at(2026, 12, 20, 0));
        assert_eq!(
            (next.start, next.end),
            (at(2026, 12, 15, 10), at(2027, 1, 15, 10))
        );
        assert_eq!(
            next.key(),
            t.period.key(),
            "same periodKey, a different period"
        );
        assert_ne!(next, t.period);
    }

    #[test]
    fn when_stripe_is_ahead_its_period_is_the_current_one() {
        let now = at(2026, 12, 1, 0);
        // A test clock ran the subscription to February.
        let ahead = Billing::Subscribed {
            status: SubscriptionStatus::Active,
            plan: PlanCode::parse("starter").expect("code"),
            period: Period {
                start: at(2027, 2, 1, 0),
                end: at(2027, 3, 1, 0),
            },
            anchor: at(2026, 11, 1, 0),
            observed_at: at(2026, 11, 30, 0),
            pending: None,
            cancel_at: None,
        };
        assert_eq!(ahead.current(now).start, at(2027, 2, 1, 0));
        assert_eq!(
            ahead.period_at(now, now).start,
            at(2027, 2, 1, 0),
            "usage recorded now counts toward Stripe's current period"
        );
        assert_eq!(
            ahead.period_at(now - Duration::minutes(5), now).start,
            at(2027, 2, 1, 0),
            "usage since Tollgate learned of the period counts toward it"
        );
        assert_eq!(
            ahead.period_at(now - Duration::days(2), now).end,
            at(2027, 2, 1, 0),
            "what happened before falls before it, on Stripe's clock too"
        );
        assert_eq!(ahead.previous(&ahead.current(now)).end, at(2027, 2, 1, 0));
    }

    proptest! {
        #[test]
        fn periods_roll_over_by_themselves_and_tile(anchor_s in 946_684_800i64..4_000_000_000, offset in 0i64..400_000_000) {
            let anchor = Utc.timestamp_opt(anchor_s, 0).single().expect("instant");
            let billing = subscribed(SubscriptionStatus::Active, anchor);
            let now = anchor + Duration::seconds(offset);
            let p = billing.current(now);
            prop_assert!(p.contains(now));
            let prev = billing.previous(&p);
            prop_assert_eq!(prev.end, p.start);
            prop_assert_eq!(billing.period_with_key(p.key()), p);
        }
    }
}
