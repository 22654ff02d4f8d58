//! A Stripe subscription as Tollgate keeps it, and plan changes between PLANS_CONFIG plans (CONTRACT §8).
//!
//! The control plane reads Stripe's objects and hands the facts that matter here as a [`StripeSubscription`];
//! [`resolve`] maps them onto PLANS_CONFIG. Nothing here talks to Stripe or the database.

use super::{DomainError, Period, PlanCatalog, PlanCode, SubscriptionStatus};
use chrono::{DateTime, Utc};

/// A Stripe price, as far as plans are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripePrice {
    /// `price_…`.
    pub id: String,
    /// The price's lookup key, if it has one.
    pub lookup_key: Option<String>,
}

/// The facts of a Stripe subscription that Tollgate mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeSubscription {
    /// `sub_…`.
    pub id: String,
    /// `cus_…`.
    pub customer: String,
    /// Stripe's status.
    pub status: SubscriptionStatus,
    /// The price of its (single) item.
    pub price: StripePrice,
    /// The item's current period.
    pub period: Period,
    /// `billing_cycle_anchor`.
    pub anchor: DateTime<Utc>,
    /// `trial_end`, if it has (had) a trial.
    pub trial_end: Option<DateTime<Utc>>,
    /// `cancel_at_period_end`.
    pub cancel_at_period_end: bool,
    /// `cancel_at`: when Stripe will cancel it.
    pub cancel_at: Option<DateTime<Utc>>,
    /// `canceled_at`.
    pub canceled_at: Option<DateTime<Utc>>,
    /// Its subscription schedule (`sub_sched_…`), if one is attached.
    pub schedule: Option<String>,
    /// The price a schedule moves it to later, and when.
    pub scheduled: Option<(StripePrice, DateTime<Utc>)>,
}

/// A scheduled change, resolved to a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The plan that takes over.
    pub plan: PlanCode,
    /// When.
    pub effective_at: DateTime<Utc>,
}

/// What the `subscriptions` table holds for one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    /// `sub_…`.
    pub id: String,
    /// `cus_…`.
    pub customer: String,
    /// Stripe's status.
    pub status: SubscriptionStatus,
    /// The plan of its price (while trialing, the plan it converts to; the `trial` limits apply meanwhile).
    pub plan: PlanCode,
    /// `price_…` it is billed at.
    pub price_id: String,
    /// The current period.
    pub period: Period,
    /// Stripe's billing cycle anchor.
    pub anchor: DateTime<Utc>,
    /// `trial_end`.
    pub trial_end: Option<DateTime<Utc>>,
    /// `cancel_at_period_end`.
    pub cancel_at_period_end: bool,
    /// When Stripe will cancel it: `cancel_at`, or the period's end with `cancel_at_period_end` (no longer
    /// stated once it is canceled).
    pub cancel_at: Option<DateTime<Utc>>,
    /// `canceled_at`.
    pub canceled_at: Option<DateTime<Utc>>,
    /// The attached schedule.
    pub schedule: Option<String>,
    /// A plan change scheduled for later (a different plan than the current one).
    pub pending: Option<Pending>,
}

/// Maps a Stripe subscription onto PLANS_CONFIG. A price that no plan names is an error naming `price`: the
/// subscription cannot be mirrored until PLANS_CONFIG knows it.
pub fn resolve(
    sub: &StripeSubscription,
    catalog: &PlanCatalog,
) -> Result<SubscriptionState, DomainError> {
    let plan_of = |price: &StripePrice| {
        catalog
            .plan_for_stripe_price(&price.id, price.lookup_key.as_deref())
            .map(|plan| plan.code.clone())
            .ok_or_else(|| DomainError::Unknown {
                field: "price",
                value: price.id.clone(),
            })
    };
    let plan = plan_of(&sub.price)?;
    let pending = match &sub.scheduled {
        Some((price, effective_at)) => {
            let next = plan_of(price)?;
            (next != plan).then_some(Pending {
                plan: next,
                effective_at: *effective_at,
            })
        }
        None => None,
    };
    Ok(SubscriptionState {
        id: sub.id.clone(),
        customer: sub.customer.clone(),
        status: sub.status,
        plan,
        price_id: sub.price.id.clone(),
        period: sub.period,
        anchor: sub.anchor,
        trial_end: sub.trial_end,
        cancel_at_period_end: sub.cancel_at_period_end,
        cancel_at: (sub.status.holds_the_slot())
            .then(|| {
                sub.cancel_at
                    .or(sub.cancel_at_period_end.then_some(sub.period.end))
            })
            .flatten(),
        canceled_at: sub.canceled_at,
        schedule: sub.schedule.clone(),
        pending,
    })
}

/// A change from one paid plan to another, decided by the plans' Stripe price amounts (CONTRACT §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanChange {
    /// A higher monthly amount: prorated and invoiced at once.
    Upgrade,
    /// Not higher (lower, or equal for a different plan): at the end of the period.
    Downgrade,
}

impl PlanChange {
    /// The change from `current` (billed `current_amount`) to `next` (`next_amount`), both in minor units per
    /// month; `None` when it is the same plan.
    pub fn between(
        current: &PlanCode,
        current_amount: i64,
        next: &PlanCode,
        next_amount: i64,
    ) -> Option<Self> {
        if current == next {
            None
        } else if next_amount > current_amount {
            Some(Self::Upgrade)
        } else {
            Some(Self::Downgrade)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const PLANS: &str = r#"
trial_days = 14
[plans.trial]
included = { api_call = 1000 }
[plans.starter]
price = "plan_starter_m"
included = { api_call = 100000 }
[plans.pro]
price = "price_pro123"
included = { api_call = 10000000 }
"#;

    fn at(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, d, 0, 0, 0)
            .single()
            .expect("instant")
    }

    fn sub(price: StripePrice) -> StripeSubscription {
        StripeSubscription {
            id: "sub_1".into(),
            customer: "cus_1".into(),
            status: SubscriptionStatus::Active,
            price,
            period: Period {
                start: at(1),
                end: at(31),
            },
            anchor: at(1),
            trial_end: None,
            cancel_at_period_end: false,
            cancel_at: None,
            canceled_at: None,
            schedule: None,
            scheduled: None,
        }
    }

    fn price(id: &str, key: Option<&str>) -> StripePrice {
        StripePrice {
            id: id.into(),
            lookup_key: key.map(str::to_owned),
        }
    }

    #[test]
    fn prices_resolve_by_lookup_key_or_id() {
        let catalog = PlanCatalog::from_toml_str(PLANS).expect("plans");
        let starter =
            resolve(&sub(price("price_abc", Some("plan_starter_m"))), &catalog).expect("resolves");
        assert_eq!(starter.plan.as_str(), "starter");
        let pro = resolve(&sub(price("price_pro123", None)), &catalog).expect("resolves");
        assert_eq!(pro.plan.as_str(), "pro");
        let unknown = resolve(&sub(price("price_zzz", Some("other"))), &catalog).unwrap_err();
        assert!(unknown.to_string().starts_with("price: "), "{unknown}");
    }

    #[test]
    fn a_schedule_to_another_plan_is_pending_and_to_the_same_is_not() {
        let catalog = PlanCatalog::from_toml_str(PLANS).expect("plans");
        let mut s = sub(price("price_pro123", None));
        s.scheduled = Some((price("price_abc", Some("plan_starter_m")), at(31)));
        let state = resolve(&s, &catalog).expect("resolves");
        assert_eq!(
            state.pending,
            Some(Pending {
                plan: PlanCode::parse("starter").expect("code"),
                effective_at: at(31)
            })
        );
        s.scheduled = Some((price("price_pro123", None), at(31)));
        assert_eq!(resolve(&s, &catalog).expect("resolves").pending, None);
    }

    #[test]
    fn a_higher_amount_is_an_upgrade() {
        let (a, b) = (
            PlanCode::parse("starter").expect("code"),
            PlanCode::parse("pro").expect("code"),
        );
        assert_eq!(
            PlanChange::between(&a, 900, &b, 4900),
            Some(PlanChange::Upgrade)
        );
        assert_eq!(
            PlanChange::between(&b, 4900, &a, 900),
            Some(PlanChange::Downgrade)
        );
        assert_eq!(
            PlanChange::between(&a, 900, &b, 900),
            Some(PlanChange::Downgrade),
            "not higher"
        );
        assert_eq!(PlanChange::between(&a, 900, &a, 900), None);
    }
}
