//! PLANS_CONFIG: plan codes, their Stripe prices and the units each includes per metric.
//!
//! The file is the single source of truth for plan codes and metrics; [`PlanCatalog::from_toml_str`]
//! checks every key so that nothing downstream has to.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::DomainError;
use super::ids::{Metric, PlanCode};
use super::toml_table::{self, Fields};

const ROOT_KEYS: &[&str] = &["trial_days", "unsubscribed", "plans"];
const PLAN_KEYS: &[&str] = &["price", "included", "overage", "thresholds"];
/// The usage alerts of a plan without `thresholds`: percentages of its included units.
pub const DEFAULT_THRESHOLDS: [u16; 3] = [50, 80, 100];
const MAX_THRESHOLDS: usize = 10;
const THRESHOLD_PERCENT: std::ops::RangeInclusive<i64> = 1..=1000;
const OVERAGE_KEYS: &[&str] = &["price", "ceiling"];
const TRIAL_DAYS: std::ops::RangeInclusive<i64> = 1..=730;
/// Stripe's limit on a lookup key's length.
const MAX_PRICE_LEN: usize = 200;
const PRICE_ID_PREFIX: &str = "price_";

/// How a plan names its Stripe price.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PriceRef {
    /// A price lookup key, e.g. `plan_starter_m`.
    LookupKey(String),
    /// A price id, `price_…`.
    PriceId(String),
}

// === impl PriceRef ===

impl PriceRef {
    /// The lookup key or price id as written in PLANS_CONFIG.
    pub fn as_str(&self) -> &str {
        match self {
            Self::LookupKey(s) | Self::PriceId(s) => s,
        }
    }

    /// `price_…` is a price id; anything else is a lookup key.
    fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > MAX_PRICE_LEN {
            return Err(format!("must be at most {MAX_PRICE_LEN} characters"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain whitespace".into());
        }
        match s.strip_prefix(PRICE_ID_PREFIX) {
            Some("") => Err("a price id needs characters after price_".into()),
            Some(_) => Ok(Self::PriceId(s.to_owned())),
            None => Ok(Self::LookupKey(s.to_owned())),
        }
    }
}

impl fmt::Display for PriceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One plan of PLANS_CONFIG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The plan's code, its `[plans.<code>]` key.
    pub code: PlanCode,
    /// The Stripe price; present for every plan except `trial`.
    pub price: Option<PriceRef>,
    /// Units included per period, by metric; a metric not listed has a limit of 0.
    pub included: BTreeMap<Metric, u64>,
    /// Usage billed past `included`, by metric (`[plans.<code>.overage.<metric>]`); a metric not listed stops at
    /// `included`.
    pub overage: BTreeMap<Metric, Overage>,
    /// The usage alerts (`usage.threshold.crossed`), in percent of the included units, ascending
    /// ([`DEFAULT_THRESHOLDS`] unless `thresholds` says otherwise; `[]` turns them off). Reaching the bound is
    /// always announced (`usage.bound.reached`).
    pub thresholds: Vec<u16>,
}

/// Usage of one metric billed past a plan's included units (CONTRACT §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overage {
    /// The metered Stripe price (on a Billing Meter) the overage is billed at.
    pub price: PriceRef,
    /// A hard stop, in total units of the period (≥ the included units); `None`: only a spend cap stops it.
    pub ceiling: Option<u64>,
}

// === impl Plan ===

impl Plan {
    /// Units of `metric` included per period: 0 when the plan does not include it.
    pub fn limit(&self, metric: &Metric) -> u64 {
        self.included.get(metric).copied().unwrap_or(0)
    }

    /// The overage of `metric`, if the plan bills usage past its included units.
    pub fn overage(&self, metric: &Metric) -> Option<&Overage> {
        if self.overage.is_empty() {
            return None;
        }
        self.overage.get(metric)
    }
}

/// The validated PLANS_CONFIG.
///
/// Invariants: a `trial` plan exists; every other plan has a price; prices are unique; `unsubscribed`,
/// when set, names a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanCatalog {
    trial_days: u32,
    unsubscribed: Option<PlanCode>,
    // Kept apart from the other plans so that `trial()` needs no lookup that could fail.
    trial: Plan,
    paid: BTreeMap<PlanCode, Plan>,
    metrics: BTreeSet<Metric>,
    /// How long a `past_due` subscription keeps its paid plan (`TOLLGATE_PAST_DUE_GRACE`); `None`: as long as
    /// Stripe keeps retrying. Not part of PLANS_CONFIG: set from the environment.
    past_due_grace: Option<chrono::Duration>,
}

// === impl PlanCatalog ===

impl PlanCatalog {
    /// Parses and validates PLANS_CONFIG; the error names the offending key path, e.g.
    /// `plans.starter.price: required for a paid plan`.
    pub fn from_toml_str(text: &str) -> Result<Self, DomainError> {
        let doc = toml_table::parse(text)?;
        let root = Fields::new(String::new(), &doc, ROOT_KEYS)?;

        let trial_days = match root.integer("trial_days")? {
            None => return Err(toml_table::error(root.key("trial_days"), "required")),
            Some(days) if TRIAL_DAYS.contains(&days) => u32::try_from(days).ok(),
            Some(_) => None,
        }
        .ok_or_else(|| {
            let reason = format!(
                "must be between {} and {}",
                TRIAL_DAYS.start(),
                TRIAL_DAYS.end()
            );
            toml_table::error(root.key("trial_days"), reason)
        })?;

        let plans_key = root.key("plans");
        let plans_table = root.table("plans")?.ok_or_else(|| {
            toml_table::error(plans_key.clone(), "required: at least [plans.trial]")
        })?;
        let mut trial = None;
        let mut paid = BTreeMap::new();
        // Price → the plan that first named it, to report duplicates.
        let mut prices: BTreeMap<String, String> = BTreeMap::new();
        for (code, value) in plans_table {
            let path = toml_table::join(&plans_key, code);
            let price_key = toml_table::join(&path, "price");
            let code = PlanCode::parse(code).map_err(|e| e.at(path.clone()))?;
            let plan = parse_plan(code, path.clone(), value)?;
            match &plan.price {
                None if plan.code.as_str() != PlanCode::TRIAL => {
                    return Err(toml_table::error(price_key, "required for a paid plan"));
                }
                None => {}
                Some(price) => {
                    if let Some(first) = prices.insert(price.to_string(), path) {
                        let reason = format!("`{price}` is already the price of {first}");
                        return Err(toml_table::error(price_key, reason));
                    }
                }
            }
            if plan.code.as_str() == PlanCode::TRIAL
                && let Some(metric) = plan.overage.keys().next()
            {
                let key = toml_table::join(
                    &toml_table::join(&path_of(&plan), "overage"),
                    metric.as_str(),
                );
                return Err(toml_table::error(
                    key,
                    "the trial plan cannot bill overage: a trial is not invoiced",
                ));
            }
            if plan.code.as_str() == PlanCode::TRIAL {
                trial = Some(plan);
            } else {
                paid.insert(plan.code.clone(), plan);
            }
        }
        // An overage price is a metered price, never a plan's flat price.
        for plan in paid.values() {
            for (metric, overage) in &plan.overage {
                if let Some(first) = prices.get(overage.price.as_str()) {
                    let key = toml_table::join(
                        &toml_table::join(
                            &toml_table::join(&path_of(plan), "overage"),
                            metric.as_str(),
                        ),
                        "price",
                    );
                    let reason = format!(
                        "`{}` is the flat price of {first}; overage needs a metered price",
                        overage.price
                    );
                    return Err(toml_table::error(key, reason));
                }
            }
        }
        let trial = trial.ok_or_else(|| {
            toml_table::error(
                toml_table::join(&plans_key, PlanCode::TRIAL),
                "required: its limits apply while a subscription is trialing",
            )
        })?;

        let unsubscribed = match root.string("unsubscribed")? {
            None => None,
            Some(code) => {
                let key = root.key("unsubscribed");
                let code = PlanCode::parse(code).map_err(|e| e.at(key.clone()))?;
                if code.as_str() != PlanCode::TRIAL && !paid.contains_key(&code) {
                    let reason = format!("`{code}` is not a plan in [plans]");
                    return Err(toml_table::error(key, reason));
                }
                Some(code)
            }
        };

        let metrics = std::iter::once(&trial)
            .chain(paid.values())
            .flat_map(|plan| plan.included.keys().chain(plan.overage.keys()).cloned())
            .collect();
        Ok(Self {
            trial_days,
            unsubscribed,
            trial,
            paid,
            metrics,
            past_due_grace: None,
        })
    }

    /// Length of the free trial that `subscription.create` asks Stripe for, in days (1..=730).
    pub fn trial_days(&self) -> u32 {
        self.trial_days
    }

    /// The catalogue with `grace` as the past-due grace (`TOLLGATE_PAST_DUE_GRACE`).
    #[must_use]
    pub fn with_past_due_grace(mut self, grace: Option<chrono::Duration>) -> Self {
        self.past_due_grace = grace;
        self
    }

    /// How long a `past_due` subscription keeps its paid plan after its period began; `None`: as long as Stripe
    /// keeps retrying (until Stripe moves it to `unpaid`, `canceled` or `paused`).
    pub fn past_due_grace(&self) -> Option<chrono::Duration> {
        self.past_due_grace
    }

    /// The plan whose limits apply while a subscription is trialing.
    pub fn trial(&self) -> &Plan {
        &self.trial
    }

    /// The plan an org without a subscription is held to over the calendar month; `None` means
    /// such orgs' metered calls are refused.
    pub fn unsubscribed(&self) -> Option<&Plan> {
        self.unsubscribed.as_ref().and_then(|code| self.plan(code))
    }

    /// The plan with this code, if PLANS_CONFIG defines it.
    pub fn plan(&self, code: &PlanCode) -> Option<&Plan> {
        if code.as_str() == PlanCode::TRIAL {
            Some(&self.trial)
        } else {
            self.paid.get(code)
        }
    }

    /// Every plan: `trial` first, then the others by code.
    pub fn plans(&self) -> impl Iterator<Item = &Plan> {
        std::iter::once(&self.trial).chain(self.paid.values())
    }

    /// Every metric that some plan names, in order.
    pub fn metrics(&self) -> impl Iterator<Item = &Metric> {
        self.metrics.iter()
    }

    /// Whether some plan names `metric`; a metric no plan names is unknown.
    pub fn is_known_metric(&self, metric: &Metric) -> bool {
        self.metrics.contains(metric)
    }

    /// Parses a request's `metric` and checks that some plan names it.
    pub fn metric(&self, s: &str) -> Result<Metric, DomainError> {
        let metric = Metric::parse(s)?;
        if self.is_known_metric(&metric) {
            Ok(metric)
        } else {
            Err(DomainError::Unknown {
                field: Metric::FIELD,
                value: metric.into(),
            })
        }
    }

    /// Parses a request's `planCode` and checks that PLANS_CONFIG defines it.
    pub fn plan_code(&self, s: &str) -> Result<PlanCode, DomainError> {
        let code = PlanCode::parse(s)?;
        if self.plan(&code).is_some() {
            Ok(code)
        } else {
            Err(DomainError::Unknown {
                field: PlanCode::FIELD,
                value: code.into(),
            })
        }
    }

    /// The plan billed at a Stripe price: a plan naming a price id matches `id`, one naming a lookup key matches
    /// the price's `lookup_key`.
    pub fn plan_for_stripe_price(&self, id: &str, lookup_key: Option<&str>) -> Option<&Plan> {
        self.plans().find(|plan| match &plan.price {
            Some(PriceRef::PriceId(price_id)) => price_id == id,
            Some(PriceRef::LookupKey(key)) => lookup_key == Some(key.as_str()),
            None => false,
        })
    }

    /// The plan whose price is `price`, matched against lookup keys and price ids alike.
    pub fn plan_for_price(&self, price: &str) -> Option<&Plan> {
        self.plans()
            .find(|plan| plan.price.as_ref().is_some_and(|p| p.as_str() == price))
    }
}

/// One `[plans.<code>]` table at `path`.
fn parse_plan(code: PlanCode, path: String, value: &toml::Value) -> Result<Plan, DomainError> {
    let fields = Fields::of_value(path, value, PLAN_KEYS)?;
    let price = fields
        .string("price")?
        .map(|s| {
            PriceRef::parse(s).map_err(|reason| toml_table::error(fields.key("price"), reason))
        })
        .transpose()?;
    let mut included = BTreeMap::new();
    if let Some(table) = fields.table("included")? {
        let included_key = fields.key("included");
        for (name, units) in table {
            let key = toml_table::join(&included_key, name);
            let metric = Metric::parse(name).map_err(|e| e.at(key.clone()))?;
            let units = units
                .as_integer()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| toml_table::error(key, "must be a non-negative integer"))?;
            included.insert(metric, units);
        }
    }
    let mut overage = BTreeMap::new();
    if let Some(table) = fields.table("overage")? {
        let overage_key = fields.key("overage");
        for (name, value) in table {
            let key = toml_table::join(&overage_key, name);
            let metric = Metric::parse(name).map_err(|e| e.at(key.clone()))?;
            let entry = parse_overage(key, value, included.get(&metric).copied().unwrap_or(0))?;
            overage.insert(metric, entry);
        }
    }
    let thresholds = match fields.array("thresholds")? {
        None => DEFAULT_THRESHOLDS.to_vec(),
        Some(values) => parse_thresholds(fields.key("thresholds"), values)?,
    };
    Ok(Plan {
        code,
        price,
        included,
        overage,
        thresholds,
    })
}

/// `thresholds = [50, 80, 100]`: distinct percentages of the included units, ascending.
fn parse_thresholds(key: String, values: &[toml::Value]) -> Result<Vec<u16>, DomainError> {
    if values.len() > MAX_THRESHOLDS {
        return Err(toml_table::error(
            key,
            format!("at most {MAX_THRESHOLDS} thresholds"),
        ));
    }
    let mut out = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let percent = value
            .as_integer()
            .filter(|p| THRESHOLD_PERCENT.contains(p))
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| {
                toml_table::error(
                    at.clone(),
                    format!(
                        "must be a percentage of the included units from {} to {}",
                        THRESHOLD_PERCENT.start(),
                        THRESHOLD_PERCENT.end()
                    ),
                )
            })?;
        if out.contains(&percent) {
            return Err(toml_table::error(at, format!("{percent} is listed twice")));
        }
        out.push(percent);
    }
    out.sort_unstable();
    Ok(out)
}

/// One `[plans.<code>.overage.<metric>]` table at `path`, for a metric with `included` units.
fn parse_overage(path: String, value: &toml::Value, included: u64) -> Result<Overage, DomainError> {
    let fields = Fields::of_value(path, value, OVERAGE_KEYS)?;
    let price = fields.string("price")?.ok_or_else(|| {
        toml_table::error(fields.key("price"), "required: the metered Stripe price")
    })?;
    let price =
        PriceRef::parse(price).map_err(|reason| toml_table::error(fields.key("price"), reason))?;
    let ceiling = match fields.integer("ceiling")? {
        None => None,
        Some(n) => {
            let ceiling = u64::try_from(n)
                .ok()
                .filter(|c| *c >= included)
                .ok_or_else(|| {
                    toml_table::error(
                        fields.key("ceiling"),
                        format!("must be an integer of at least the included units ({included})"),
                    )
                })?;
            Some(ceiling)
        }
    };
    Ok(Overage { price, ceiling })
}

/// The `[plans.<code>]` key path of `plan`.
fn path_of(plan: &Plan) -> String {
    toml_table::join("plans", plan.code.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
trial_days = 14
unsubscribed = "trial"

[plans.trial]
included = { api_call = 1000 }

[plans.starter]
price = "plan_starter_m"
included = { api_call = 100000 }

[plans.pro]
price = "price_1PqXyZ"
included = { api_call = 10000000, tokens = 50000000 }
"#;

    fn catalog() -> PlanCatalog {
        PlanCatalog::from_toml_str(EXAMPLE).expect("example is valid")
    }

    fn metric(s: &str) -> Metric {
        Metric::parse(s).expect("valid metric")
    }

    #[test]
    fn parses_the_example() {
        let catalog = catalog();
        assert_eq!(catalog.trial_days(), 14);
        assert_eq!(catalog.trial().code.as_str(), "trial");
        assert_eq!(
            catalog.unsubscribed().map(|p| p.code.as_str()),
            Some("trial")
        );
        let codes: Vec<_> = catalog.plans().map(|p| p.code.as_str()).collect();
        assert_eq!(codes, ["trial", "pro", "starter"]);
        let metrics: Vec<_> = catalog.metrics().map(Metric::as_str).collect();
        assert_eq!(metrics, ["api_call", "tokens"]);

        let starter = catalog.plan_code("starter").expect("known");
        let starter = catalog.plan(&starter).expect("present");
        assert_eq!(
            starter.price,
            Some(PriceRef::LookupKey("plan_starter_m".into()))
        );
        assert_eq!(starter.limit(&metric("api_call")), 100_000);
        assert_eq!(starter.limit(&metric("tokens")), 0);

        let pro = catalog.plan_for_price("price_1PqXyZ").expect("by price id");
        assert_eq!(pro.price, Some(PriceRef::PriceId("price_1PqXyZ".into())));
        assert_eq!(pro.limit(&metric("tokens")), 50_000_000);
        assert_eq!(
            catalog
                .plan_for_price("plan_starter_m")
                .map(|p| p.code.as_str()),
            Some("starter")
        );
        assert!(catalog.plan_for_price("plan_nope").is_none());
    }

    #[test]
    fn request_values_are_checked_against_the_catalog() {
        let catalog = catalog();
        assert_eq!(catalog.metric("tokens"), Ok(metric("tokens")));
        assert!(catalog.is_known_metric(&metric("api_call")));
        assert!(!catalog.is_known_metric(&metric("images")));

        let err = catalog.metric("images").expect_err("unknown");
        assert_eq!(err.to_string(), "metric: unknown value `images`");
        assert_eq!(err.key(), Some("metric"));
        let err = catalog.metric("Images").expect_err("malformed");
        assert!(err.to_string().starts_with("metric: must be"), "{err}");

        let err = catalog.plan_code("growth").expect_err("unknown");
        assert_eq!(err.to_string(), "planCode: unknown value `growth`");
        assert!(catalog.plan_code("trial").is_ok());
    }

    #[test]
    fn unsubscribed_is_optional() {
        let text = EXAMPLE.replace("unsubscribed = \"trial\"\n", "");
        let catalog = PlanCatalog::from_toml_str(&text).expect("valid");
        assert!(catalog.unsubscribed().is_none());
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = PlanCatalog::from_toml_str("trial_days = \"14\"\n[plans.trial]\n")
            .expect_err("string trial_days");
        assert_eq!(
            err.to_string(),
            "trial_days: must be an integer, not string"
        );
        let err = PlanCatalog::from_toml_str("trial_days = 14\nplans = 3\n").expect_err("plans");
        assert_eq!(err.to_string(), "plans: must be a table, not integer");
        let err = PlanCatalog::from_toml_str("trial_days = 14\n[plans]\ntrial = 1\n")
            .expect_err("plan not a table");
        assert_eq!(err.to_string(), "plans.trial: must be a table, not integer");
        let err =
            PlanCatalog::from_toml_str("trial_days = 14\n[plans.\"a b\"]\n").expect_err("bad code");
        assert!(
            err.to_string().starts_with(r#"plans."a b": must be"#),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err =
            PlanCatalog::from_toml_str("trial_days = 14\n[plans.trial\n").expect_err("syntax");
        assert!(
            matches!(err, DomainError::Syntax { line: 2, .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    const OVERAGE: &str = r#"
trial_days = 14

[plans.trial]
included = { api_call = 1000 }

[plans.starter]
price = "plan_starter_m"
included = { api_call = 100000 }

[plans.starter.overage.api_call]
price = "api_call_overage"
ceiling = 500000

[plans.pro]
price = "plan_pro_m"
included = { api_call = 1000000 }

[plans.pro.overage.tokens]
price = "price_1Tok"
"#;

    #[test]
    fn overage_is_parsed_per_plan_and_metric() {
        let catalog = PlanCatalog::from_toml_str(OVERAGE).expect("valid");
        let starter = catalog
            .plan(&PlanCode::parse("starter").expect("code"))
            .expect("starter");
        let api_call = Metric::parse("api_call").expect("metric");
        assert_eq!(
            starter.overage(&api_call),
            Some(&Overage {
                price: PriceRef::LookupKey("api_call_overage".into()),
                ceiling: Some(500_000),
            })
        );
        let pro = catalog
            .plan(&PlanCode::parse("pro").expect("code"))
            .expect("pro");
        let tokens = Metric::parse("tokens").expect("metric");
        assert_eq!(pro.overage(&api_call), None, "stops at included");
        assert_eq!(
            pro.overage(&tokens).map(|o| (&o.price, o.ceiling)),
            Some((&PriceRef::PriceId("price_1Tok".into()), None))
        );
        assert!(
            catalog.is_known_metric(&tokens),
            "a metric billed only as overage is known"
        );
    }

    #[test]
    fn overage_keys_are_checked() {
        let cases = [
            (
                OVERAGE.replace("ceiling = 500000", "ceiling = 99999"),
                "plans.starter.overage.api_call.ceiling: must be an integer of at least the included units (100000)",
            ),
            (
                OVERAGE.replace("ceiling = 500000", "ceiling = -1"),
                "plans.starter.overage.api_call.ceiling: must be an integer of at least the included units (100000)",
            ),
            (
                OVERAGE.replace("price = \"api_call_overage\"\n", ""),
                "plans.starter.overage.api_call.price: required: the metered Stripe price",
            ),
            (
                OVERAGE.replace("price = \"api_call_overage\"", "price = \"plan_pro_m\""),
                "plans.starter.overage.api_call.price: `plan_pro_m` is the flat price of plans.pro; overage needs a metered price",
            ),
            (
                OVERAGE.replace("ceiling = 500000", "cieling = 500000"),
                "plans.starter.overage.api_call.cieling: unknown key",
            ),
            (
                format!("{OVERAGE}\n[plans.trial.overage.api_call]\nprice = \"x\"\n"),
                "plans.trial.overage.api_call: the trial plan cannot bill overage: a trial is not invoiced",
            ),
        ];
        for (text, expected) in cases {
            let err = PlanCatalog::from_toml_str(&text).expect_err(expected);
            assert!(err.to_string().starts_with(expected), "{err}");
        }
    }
}
