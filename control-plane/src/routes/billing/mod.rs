//! Billing: Stripe customers and trials, payment methods, plan changes, invoices, the portal (CONTRACT §6, §8).
//! Users and the operator; not API keys. Every route answers 503 naming `STRIPE_SECRET_KEY` when Stripe is not
//! configured.

pub mod budget;
pub mod customer_ensure;
pub mod default_method;
pub mod invoices;
pub mod plans_downgrade;
pub mod plans_preview;
pub mod plans_upgrade;
pub mod portal;
pub mod setup_intent;
pub mod subscription_create;

use serde::Deserialize;
use tollgate_common::domain::OrgId;
use utoipa::ToSchema;

/// Names the org (the caller's own when omitted).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrgRequest {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[schema(value_type = String, required = false, example = "org_2aBcDeF")]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
}

/// A plan change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanChangeRequest {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[schema(value_type = String, required = false, example = "org_2aBcDeF")]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
    /// A paid plan of PLANS_CONFIG.
    #[schema(example = "growth")]
    pub new_plan_code: String,
}
