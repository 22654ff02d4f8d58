//! Usage past a plan's included units (issue 22, `docs/design/usage-billing.md`): what a unit of overage costs
//! as Stripe invoices it, how many units a spend cap buys, the bound admission stops at, and the usage thresholds
//! a change in usage crosses. Pure: no I/O, no clock.
//!
//! Money is in the currency's minor units (cents), as Stripe counts it. A metered price's `unit_amount_decimal`
//! (up to 12 decimal places of a minor unit) and its `transform_quantity` are kept exactly, so the cost computed
//! here is the amount of Stripe's invoice line to the unit.

use std::collections::BTreeMap;
use std::fmt;

use super::ids::Metric;
use super::plan::{Plan, PriceRef};

/// Stripe's limit on the decimal places of `unit_amount_decimal`.
const MAX_DECIMALS: u32 = 12;

/// How Stripe rounds a transformed quantity (`transform_quantity[round]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Bill a started package whole.
    Up,
    /// Bill only complete packages.
    Down,
}

/// The price of one unit of a metered price, exactly as Stripe states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitPrice {
    /// Minor units per billed quantity, as `numerator / 10^scale`.
    numerator: u128,
    scale: u32,
    /// `transform_quantity[divide_by]` (1 when the price has none) and its rounding.
    divide_by: u64,
    round: Round,
}

/// Why a unit price could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceError(String);

impl fmt::Display for PriceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PriceError {}

// === impl UnitPrice ===

impl UnitPrice {
    /// A price from Stripe's `unit_amount_decimal` (e.g. `"0.05"`: a twentieth of a cent per unit) and its
    /// `transform_quantity` (`None`: each unit is billed).
    pub fn parse(
        unit_amount_decimal: &str,
        transform: Option<(u64, Round)>,
    ) -> Result<Self, PriceError> {
        let (whole, fraction) = match unit_amount_decimal.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (unit_amount_decimal, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !fraction.is_none_or(digits) {
            return Err(PriceError(format!(
                "unit_amount_decimal `{unit_amount_decimal}` is not a non-negative decimal number"
            )));
        }
        let fraction = fraction.unwrap_or("");
        let scale = u32::try_from(fraction.len())
            .ok()
            .filter(|s| *s <= MAX_DECIMALS)
            .ok_or_else(|| {
                PriceError(format!(
                    "unit_amount_decimal has more than {MAX_DECIMALS} decimal places"
                ))
            })?;
        let numerator = format!("{whole}{fraction}")
            .parse::<u128>()
            .ok()
            .filter(|n| *n <= u128::from(u64::MAX))
            .ok_or_else(|| PriceError("unit_amount_decimal is too large".into()))?;
        let (divide_by, round) = transform.unwrap_or((1, Round::Up));
        if divide_by == 0 {
            return Err(PriceError(
                "transform_quantity[divide_by] must be positive".into(),
            ));
        }
        Ok(Self {
            numerator,
            scale,
            divide_by,
            round,
        })
    }

    /// What Stripe invoices for `units` of usage, in minor units: the transformed quantity times the unit amount,
    /// rounded half up to a whole minor unit (saturating at `u64::MAX`).
    pub fn cost(&self, units: u64) -> u64 {
        let quantity = match self.round {
            Round::Up => units.div_ceil(self.divide_by),
            Round::Down => units / self.divide_by,
        };
        let scale = 10u128.pow(self.scale);
        let exact = u128::from(quantity).saturating_mul(self.numerator);
        let rounded = exact / scale + u128::from(exact % scale * 2 >= scale);
        u64::try_from(rounded).unwrap_or(u64::MAX)
    }

    /// The most units whose cost stays within `budget` minor units (`u64::MAX` when units are free).
    pub fn units_within(&self, budget: u64) -> u64 {
        if self.cost(u64::MAX) <= budget {
            return u64::MAX;
        }
        // cost is non-decreasing in units: the largest n with cost(n) <= budget, by bisection.
        let (mut lo, mut hi) = (0u64, u64::MAX);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.cost(mid) <= budget {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }
}

/// Where admission stops for an org and metric in a period, in total units of the period (included and overage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// No overage: the plan's included units.
    Included(u64),
    /// The plan's hard `ceiling`.
    Ceiling(u64),
    /// The org's spend cap: included units plus what the cap buys.
    Budget(u64),
    /// Overage without a ceiling or a cap.
    Unbounded,
}

// === impl Bound ===

impl Bound {
    /// The lowest of the plan's `ceiling` and the included units plus `budget_units`; `overage` says whether the
    /// plan allows any. At a tie the ceiling is named: it is the plan's, and no cap raises it.
    pub fn of(
        included: u64,
        overage: bool,
        ceiling: Option<u64>,
        budget_units: Option<u64>,
    ) -> Self {
        if !overage {
            return Self::Included(included);
        }
        let budget = budget_units.map(|b| included.saturating_add(b));
        match (ceiling, budget) {
            (None, None) => Self::Unbounded,
            (Some(c), None) => Self::Ceiling(c.max(included)),
            (None, Some(b)) => Self::Budget(b),
            (Some(c), Some(b)) if c.max(included) <= b => Self::Ceiling(c.max(included)),
            (Some(_), Some(b)) => Self::Budget(b),
        }
    }

    /// The bound in units (`u64::MAX` when unbounded): the limit the lease machinery admits up to.
    pub fn units(self) -> u64 {
        match self {
            Self::Included(n) | Self::Ceiling(n) | Self::Budget(n) => n,
            Self::Unbounded => u64::MAX,
        }
    }

    /// Whether reaching it is the spend cap (`/problems/spend-cap-reached`) rather than the quota.
    pub fn is_budget(self) -> bool {
        matches!(self, Self::Budget(_))
    }
}

/// An org's spend cap on overage (`budget.set`), as the billing state carries it: the amount, and the whole
/// units it buys at each overage price of PLANS_CONFIG (computed by the control plane from Stripe's prices when the
/// cap is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendCap {
    /// Minor units of `currency`.
    pub amount: u64,
    /// ISO 4217, lower case, as Stripe writes it.
    pub currency: String,
    /// Units the amount buys, by overage price (its lookup key or id as PLANS_CONFIG writes it).
    pub units: BTreeMap<String, u64>,
}

// === impl SpendCap ===

impl SpendCap {
    /// The overage units the cap buys at `price`: none when the cap was set before the price was known (the cap
    /// stops overage rather than letting it run unpriced).
    pub fn units_at(&self, price: &PriceRef) -> u64 {
        self.units.get(price.as_str()).copied().unwrap_or(0)
    }
}

/// Where admission of `metric` stops under `plan`: the included units, or, when the plan bills overage of it and
/// the org is `billable` (a paid subscription: a trial or an org without a subscription is not invoiced), the
/// lowest of the plan's ceiling and the included units plus what the org's spend cap buys.
pub fn bound(plan: &Plan, metric: &Metric, billable: bool, cap: Option<&SpendCap>) -> Bound {
    let included = plan.limit(metric);
    match plan.overage(metric) {
        Some(overage) if billable => Bound::of(
            included,
            true,
            overage.ceiling,
            cap.map(|c| c.units_at(&overage.price)),
        ),
        _ => Bound::Included(included),
    }
}

/// A usage threshold: a percentage of the included units, or the bound itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Threshold {
    /// `percent` % of the included units.
    Included(u16),
    /// The bound (`usage.bound.reached`).
    Bound,
}

// === impl Threshold ===

impl Threshold {
    /// The usage at which it is crossed (`None`: never, e.g. the bound of an unbounded org, or a percentage of 0
    /// included units).
    pub fn at(self, included: u64, bound: Bound) -> Option<u64> {
        match self {
            Self::Included(percent) => {
                let at = u128::from(included) * u128::from(percent);
                // Reached once used * 100 >= included * percent.
                let units = u64::try_from(at.div_ceil(100)).ok()?;
                (included > 0).then_some(units)
            }
            Self::Bound => match bound {
                Bound::Unbounded => None,
                b => Some(b.units()),
            },
        }
    }
}

/// The thresholds among `thresholds` that a change of usage from `before` to `after` crosses upwards (reached at
/// `after`, not at `before`), in the order given.
pub fn crossed(
    before: u64,
    after: u64,
    included: u64,
    bound: Bound,
    thresholds: &[Threshold],
) -> Vec<Threshold> {
    thresholds
        .iter()
        .copied()
        .filter(|t| {
            t.at(included, bound)
                .is_some_and(|at| before < at && at <= after)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn price(decimal: &str) -> UnitPrice {
        UnitPrice::parse(decimal, None).expect("valid price")
    }

    #[test]
    fn a_decimal_unit_amount_is_billed_as_stripe_rounds_a_line() {
        // $0.50 per 1,000 calls as a decimal per-unit price: 0.05 cents each.
        let p = price("0.05");
        assert_eq!(p.cost(0), 0);
        assert_eq!(p.cost(1_000), 50);
        assert_eq!(p.cost(10), 1, "0.5 cent rounds half up");
        assert_eq!(p.cost(9), 0, "0.45 cent rounds down");
        assert_eq!(price("25").cost(3), 75);
        assert_eq!(price("0.000000000001").cost(u64::MAX), 18_446_744);
    }

    #[test]
    fn a_transformed_quantity_bills_packages() {
        // unit_amount 50 per package of 1,000, a started package billed whole.
        let up = UnitPrice::parse("50", Some((1_000, Round::Up))).expect("valid");
        assert_eq!(
            (up.cost(0), up.cost(1), up.cost(1_000), up.cost(1_001)),
            (0, 50, 50, 100)
        );
        let down = UnitPrice::parse("50", Some((1_000, Round::Down))).expect("valid");
        assert_eq!(
            (down.cost(999), down.cost(1_000), down.cost(1_999)),
            (0, 50, 50)
        );
        assert_eq!(up.units_within(120), 2_000);
        assert_eq!(down.units_within(120), 2_999);
    }

    #[test]
    fn unreadable_prices_are_refused() {
        for bad in [
            "",
            ".5",
            "5.",
            "-1",
            "1e3",
            "0.1234567890123",
            "1.2.3",
            " 1",
        ] {
            assert!(UnitPrice::parse(bad, None).is_err(), "{bad:?}");
        }
        assert!(UnitPrice::parse("1", Some((0, Round::Up))).is_err());
    }

    #[test]
    fn a_budget_buys_whole_units() {
        let p = price("0.05");
        assert_eq!(p.units_within(0), 9, "nine units still cost 0 cents");
        assert_eq!(p.units_within(100), 2_009);
        assert_eq!(
            price("0").units_within(0),
            u64::MAX,
            "free units are unbounded"
        );
    }

    #[test]
    fn only_a_billable_plan_with_overage_of_the_metric_goes_past_included() {
        let catalog = crate::domain::PlanCatalog::from_toml_str(
            r#"
trial_days = 14
[plans.trial]
included = { api_call = 10 }
[plans.payg]
price = "plan_payg"
included = { api_call = 100, tokens = 5 }
[plans.payg.overage.api_call]
price = "api_call_overage"
ceiling = 1000
"#,
        )
        .expect("plans");
        let plan = catalog
            .plan(&crate::domain::PlanCode::parse("payg").expect("code"))
            .expect("payg");
        let (api_call, tokens) = (
            Metric::parse("api_call").expect("metric"),
            Metric::parse("tokens").expect("metric"),
        );
        let cap = |units: Option<u64>| SpendCap {
            amount: 100,
            currency: "usd".into(),
            units: units
                .map(|u| [("api_call_overage".to_owned(), u)].into())
                .unwrap_or_default(),
        };
        assert_eq!(bound(plan, &api_call, true, None), Bound::Ceiling(1000));
        assert_eq!(
            bound(plan, &api_call, false, None),
            Bound::Included(100),
            "a trial"
        );
        assert_eq!(
            bound(plan, &tokens, true, None),
            Bound::Included(5),
            "no overage of tokens"
        );
        assert_eq!(
            bound(plan, &api_call, true, Some(&cap(Some(300)))),
            Bound::Budget(400)
        );
        assert_eq!(
            bound(plan, &api_call, true, Some(&cap(None))),
            Bound::Budget(100),
            "a cap that does not know the price buys nothing"
        );
    }

    #[test]
    fn the_bound_is_the_lowest_of_ceiling_and_budget() {
        assert_eq!(
            Bound::of(100, false, Some(500), Some(10)),
            Bound::Included(100)
        );
        assert_eq!(Bound::of(100, true, None, None), Bound::Unbounded);
        assert_eq!(Bound::of(100, true, Some(500), None), Bound::Ceiling(500));
        assert_eq!(Bound::of(100, true, None, Some(50)), Bound::Budget(150));
        assert_eq!(
            Bound::of(100, true, Some(500), Some(50)),
            Bound::Budget(150)
        );
        assert_eq!(
            Bound::of(100, true, Some(120), Some(50)),
            Bound::Ceiling(120)
        );
        assert_eq!(
            Bound::of(100, true, Some(150), Some(50)),
            Bound::Ceiling(150),
            "a tie names the ceiling"
        );
        assert_eq!(
            Bound::of(100, true, None, Some(0)),
            Bound::Budget(100),
            "a cap of 0 stops at included"
        );
        assert!(Bound::of(100, true, None, Some(0)).is_budget());
        assert_eq!(Bound::Unbounded.units(), u64::MAX);
    }

    #[test]
    fn thresholds_are_crossed_once_on_the_way_up() {
        let t = [
            Threshold::Included(50),
            Threshold::Included(80),
            Threshold::Included(100),
            Threshold::Bound,
        ];
        let bound = Bound::Ceiling(150);
        assert_eq!(crossed(0, 49, 100, bound, &t), []);
        assert_eq!(crossed(49, 50, 100, bound, &t), [Threshold::Included(50)]);
        assert_eq!(crossed(50, 51, 100, bound, &t), [], "already past 50 %");
        assert_eq!(
            crossed(10, 150, 100, bound, &t),
            [
                Threshold::Included(50),
                Threshold::Included(80),
                Threshold::Included(100),
                Threshold::Bound
            ]
        );
        assert_eq!(
            crossed(150, 10, 100, bound, &t),
            [],
            "going down crosses nothing"
        );
        assert_eq!(
            crossed(0, u64::MAX, 100, Bound::Unbounded, &[Threshold::Bound]),
            []
        );
        assert_eq!(
            crossed(0, 5, 0, bound, &[Threshold::Included(50)]),
            [],
            "0 included: no percentages"
        );
        assert_eq!(
            Threshold::Included(50).at(3, bound),
            Some(2),
            "1.5 units: reached at 2"
        );
    }

    proptest! {
        #[test]
        fn units_within_is_the_largest_affordable(
            cents in 0u64..1_000_000_000, decimals in 0u32..=6, budget in 0u64..10_000_000,
        ) {
            let p = UnitPrice::parse(&format_decimal(cents, decimals), None).expect("valid");
            let n = p.units_within(budget);
            prop_assert!(p.cost(n) <= budget);
            prop_assert!(n == u64::MAX || p.cost(n + 1) > budget);
        }

        #[test]
        fn cost_never_decreases(cents in 0u64..1_000_000, decimals in 0u32..=12, a in 0u64..u64::MAX / 2, d in 0u64..1_000_000) {
            let p = UnitPrice::parse(&format_decimal(cents, decimals), None).expect("valid");
            prop_assert!(p.cost(a) <= p.cost(a + d));
        }

        #[test]
        fn every_threshold_is_crossed_exactly_once_over_any_path(
            steps in prop::collection::vec(0u64..400, 1..40), included in 0u64..300, ceiling in 0u64..600,
        ) {
            // Usage only grows within a period; each threshold it reaches is crossed by exactly one step.
            let t = [Threshold::Included(50), Threshold::Included(80), Threshold::Included(100), Threshold::Bound];
            let bound = Bound::of(included, true, Some(ceiling), None);
            let mut used = 0u64;
            let mut seen = Vec::new();
            for s in steps {
                seen.extend(crossed(used, used + s, included, bound, &t));
                used += s;
            }
            let expected: Vec<_> = t.iter().copied().filter(|x| x.at(included, bound).is_some_and(|at| at > 0 && at <= used)).collect();
            let mut sorted = seen.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), seen.len(), "no threshold twice");
            let mut want = expected.clone();
            want.sort();
            prop_assert_eq!(sorted, want);
        }
    }

    fn format_decimal(n: u64, decimals: u32) -> String {
        let s = format!("{n:0>width$}", width = decimals as usize + 1);
        let (w, f) = s.split_at(s.len() - decimals as usize);
        if f.is_empty() {
            w.to_owned()
        } else {
            format!("{w}.{f}")
        }
    }
}
