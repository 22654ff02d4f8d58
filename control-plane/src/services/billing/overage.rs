//! Overage prices and spend caps (CONTRACT §9).
//!
//! [`OveragePrices`] reads the metered prices PLANS_CONFIG names for overage from Stripe (cached like the plans'
//! prices) and checks each is what billing relies on: a recurring, metered, per-unit price on a Billing Meter. The
//! budget operations store an org's spend cap with the units it buys at each of those prices, so that every proxy
//! can turn the cap into a bound without Stripe; the write is announced like any billing change.

use super::{Billing, BillingError, PRICE_TTL};
use crate::stripe::{Op, StripeClient};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Instant;
use stripe_shared::{PriceBillingScheme, RecurringUsageType, TransformQuantityRound};
use tollgate_common::domain::overage::{Round, UnitPrice};
use tollgate_common::domain::{OrgId, PlanCatalog, PriceRef};
use utoipa::ToSchema;

/// A metered overage price, as Stripe states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteredPrice {
    /// `price_…`.
    pub id: String,
    /// ISO 4217, lower case.
    pub currency: String,
    /// What a unit costs, as Stripe invoices it.
    pub unit: UnitPrice,
    /// The Billing Meter the price is on (`mtr_…`).
    pub meter: String,
    /// The meter's event name, and the payload keys of the customer and the value.
    pub event_name: String,
    pub customer_key: String,
    pub value_key: String,
}

/// The overage prices of PLANS_CONFIG, by the lookup key or id it names them with.
pub type MeteredPrices = HashMap<String, MeteredPrice>;

/// Reads and caches the overage prices.
pub struct OveragePrices {
    stripe: Arc<StripeClient>,
    catalog: Arc<PlanCatalog>,
    cached: RwLock<Option<(Instant, Arc<MeteredPrices>)>>,
}

impl OveragePrices {
    /// Prices read through `stripe`.
    pub fn new(stripe: Arc<StripeClient>, catalog: Arc<PlanCatalog>) -> Self {
        Self {
            stripe,
            catalog,
            cached: RwLock::new(None),
        }
    }

    /// Every price PLANS_CONFIG bills overage at (none when no plan bills overage), each checked; cached for
    /// ten minutes, like the plans' prices.
    pub async fn all(&self) -> Result<Arc<MeteredPrices>, BillingError> {
        if let Some((at, prices)) = self
            .cached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            && at.elapsed() < PRICE_TTL
        {
            return Ok(Arc::clone(prices));
        }
        let refs: Vec<(String, PriceRef)> = self
            .catalog
            .plans()
            .flat_map(|plan| {
                plan.overage.iter().map(move |(metric, o)| {
                    (
                        format!("plans.{}.overage.{metric}.price", plan.code),
                        o.price.clone(),
                    )
                })
            })
            .collect();
        let mut resolved = MeteredPrices::new();
        let lookup_keys: Vec<String> = refs
            .iter()
            .filter_map(|(_, r)| match r {
                PriceRef::LookupKey(k) => Some(k.clone()),
                PriceRef::PriceId(_) => None,
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let by_key = active_prices_by_lookup_key(&self.stripe, lookup_keys).await?;
        for (key, price_ref) in refs {
            if resolved.contains_key(price_ref.as_str()) {
                continue;
            }
            let price = match &price_ref {
                PriceRef::LookupKey(k) => by_key.get(k).cloned(),
                PriceRef::PriceId(id) => {
                    let request = stripe_product::price::RetrievePrice::new(id.as_str());
                    self.stripe.retrieve(Op::PriceRetrieve, &request).await?
                }
            };
            let price = price.ok_or_else(|| {
                BillingError::Unmirrorable(format!(
                    "{key}: `{price_ref}` is not an active Stripe price"
                ))
            })?;
            let mut metered = metered(&price)
                .map_err(|why| BillingError::Unmirrorable(format!("{key}: `{price_ref}` {why}")))?;
            let meter = self
                .stripe
                .retrieve(
                    Op::MeterRetrieve,
                    &stripe_billing::billing_meter::RetrieveBillingMeter::new(
                        metered.meter.as_str(),
                    ),
                )
                .await?
                .ok_or_else(|| {
                    BillingError::Unmirrorable(format!(
                        "{key}: the meter `{}` of `{price_ref}` does not exist",
                        metered.meter
                    ))
                })?;
            metered.event_name = meter.event_name;
            metered.customer_key = meter.customer_mapping.event_payload_key;
            metered.value_key = meter.value_settings.event_payload_key;
            resolved.insert(price_ref.as_str().to_owned(), metered);
        }
        let resolved = Arc::new(resolved);
        *self
            .cached
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), Arc::clone(&resolved)));
        Ok(resolved)
    }
}

impl Billing {
    /// The `price_…` ids of the overage prices `plan` bills (one subscription item each, beside the plan's price),
    /// in PLANS_CONFIG's metric order; none for a plan without overage.
    pub(super) async fn overage_items(
        &self,
        plan: &tollgate_common::domain::PlanCode,
    ) -> Result<Vec<String>, BillingError> {
        let Some(plan) = self.catalog.plan(plan) else {
            return Ok(Vec::new());
        };
        if plan.overage.is_empty() {
            return Ok(Vec::new());
        }
        let prices = self.overage.all().await?;
        let mut ids: Vec<String> = Vec::new();
        for o in plan.overage.values() {
            let id = prices
                .get(o.price.as_str())
                .map(|p| p.id.clone())
                .ok_or_else(|| {
                    BillingError::Unmirrorable(format!("overage price `{}` unresolved", o.price))
                })?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

/// The active Stripe prices with `lookup_keys`, by lookup key (one list call; none when there are no keys).
pub(super) async fn active_prices_by_lookup_key(
    stripe: &StripeClient,
    lookup_keys: Vec<String>,
) -> Result<HashMap<String, stripe_shared::Price>, BillingError> {
    let mut by_key = HashMap::new();
    if lookup_keys.is_empty() {
        return Ok(by_key);
    }
    let list = stripe
        .send(
            Op::PriceList,
            &stripe_product::price::ListPrice::new()
                .lookup_keys(lookup_keys)
                .active(true)
                .limit(100),
            None,
        )
        .await?;
    for price in list.data {
        if let Some(key) = price.lookup_key.clone() {
            by_key.insert(key, price);
        }
    }
    Ok(by_key)
}

/// The price as a metered overage price, or why it is not one.
fn metered(price: &stripe_shared::Price) -> Result<MeteredPrice, String> {
    let recurring = price.recurring.as_ref().ok_or("is not a recurring price")?;
    if recurring.usage_type != RecurringUsageType::Metered {
        return Err("is not a metered price (recurring[usage_type] must be metered)".into());
    }
    let meter = recurring
        .meter
        .clone()
        .ok_or("is not on a Billing Meter (recurring[meter])")?;
    if price.billing_scheme != PriceBillingScheme::PerUnit {
        return Err("is tiered; overage needs a per-unit price".into());
    }
    let decimal = match (&price.unit_amount_decimal, price.unit_amount) {
        (Some(d), _) => d.clone(),
        (None, Some(amount)) => amount.to_string(),
        (None, None) => return Err("has no unit amount".into()),
    };
    let transform = price
        .transform_quantity
        .as_ref()
        .map(|t| {
            let round = match t.round {
                TransformQuantityRound::Down => Round::Down,
                _ => Round::Up,
            };
            u64::try_from(t.divide_by)
                .map(|d| (d, round))
                .map_err(|_| "has a negative transform_quantity[divide_by]".to_owned())
        })
        .transpose()?;
    let unit = UnitPrice::parse(&decimal, transform).map_err(|e| e.to_string())?;
    Ok(MeteredPrice {
        id: price.id.as_str().to_owned(),
        currency: price.currency.to_string().to_ascii_lowercase(),
        unit,
        meter,
        event_name: String::new(),
        customer_key: String::new(),
        value_key: String::new(),
    })
}

/// `budget.set`'s reply.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetSet {
    #[schema(value_type = String, example = "org_2aBcDeF")]
    pub org_id: OrgId,
    /// The cap, in the currency's minor units.
    #[schema(example = 5000)]
    pub amount: u64,
    #[schema(example = "usd")]
    pub currency: String,
    /// The overage units the cap buys at the overage price of the org's current plan (the first metric it bills
    /// overage of); 0 when that plan bills no overage.
    #[schema(example = 100_000)]
    pub units: u64,
}

impl Billing {
    /// Sets org `org`'s spend cap to `amount` minor units of `currency` and stores what it buys at every overage
    /// price; the change reaches every proxy like any billing change. 422 naming `currency` when no overage price
    /// is in that currency.
    pub async fn set_budget(
        &self,
        org: &OrgId,
        amount: u64,
        currency: &str,
    ) -> Result<BudgetSet, BillingError> {
        let currency = currency.to_ascii_lowercase();
        let org_id = tollgate_common::store::orgs::id_by_clerk(&self.pg, org)
            .await?
            .ok_or(BillingError::UnknownOrg)?;
        let prices = self.overage.all().await?;
        if !prices.is_empty() && !prices.values().any(|p| p.currency == currency) {
            let known: std::collections::BTreeSet<&str> =
                prices.values().map(|p| p.currency.as_str()).collect();
            return Err(BillingError::Invalid {
                field: "currency",
                detail: format!(
                    "the overage prices are in {}, not {currency}",
                    known.into_iter().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        let units: BTreeMap<String, u64> = prices
            .iter()
            .map(|(price, p)| {
                let units = if p.currency == currency {
                    p.unit.units_within(amount)
                } else {
                    0
                };
                (price.clone(), units)
            })
            .collect();
        let amount_i64 = i64::try_from(amount).map_err(|_| BillingError::Invalid {
            field: "amount",
            detail: "is too large".into(),
        })?;
        sqlx::query(
            "INSERT INTO org_budgets (org_id, amount, currency, units) VALUES ($1, $2, $3, $4)
             ON CONFLICT (org_id) DO UPDATE
                SET amount = EXCLUDED.amount, currency = EXCLUDED.currency, units = EXCLUDED.units,
                    updated_at = now()",
        )
        .bind(org_id)
        .bind(amount_i64)
        .bind(&currency)
        .bind(sqlx::types::Json(&units))
        .execute(&self.pg)
        .await?;
        self.committed(org_id).await;
        let state = tollgate_common::store::billing::load(&self.pg, org_id).await?;
        let now = self.now();
        let units_now = state
            .billing
            .terms(&self.catalog, now)
            .and_then(|t| t.plan.overage.values().next().map(|o| o.price.clone()))
            .and_then(|price| units.get(price.as_str()).copied())
            .unwrap_or(0);
        tracing::info!(org.id = %org, budget.amount = amount, budget.currency = %currency, "spend cap set");
        Ok(BudgetSet {
            org_id: org.clone(),
            amount,
            currency,
            units: units_now,
        })
    }

    /// Removes org `org`'s spend cap (nothing when it has none).
    pub async fn clear_budget(&self, org: &OrgId) -> Result<(), BillingError> {
        let org_id = tollgate_common::store::orgs::id_by_clerk(&self.pg, org)
            .await?
            .ok_or(BillingError::UnknownOrg)?;
        sqlx::query("DELETE FROM org_budgets WHERE org_id = $1")
            .bind(org_id)
            .execute(&self.pg)
            .await?;
        self.committed(org_id).await;
        tracing::info!(org.id = %org, "spend cap cleared");
        Ok(())
    }
}
