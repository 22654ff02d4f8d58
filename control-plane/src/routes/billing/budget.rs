//! `POST /api/billing/budget.set` and `POST /api/billing/budget.clear` (CONTRACT §9): the org's spend cap on
//! overage.

use crate::app::AppState;
use crate::auth::{Caller, OrgAdmin};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::limits::Group;
use crate::routes::ProblemDoc;
use crate::routes::billing::OrgRequest;
use crate::services::billing::overage::BudgetSet;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tollgate_common::domain::OrgId;
use utoipa::ToSchema;

/// The largest cap accepted, in minor units (ten billion in a two-decimal currency).
pub const MAX_BUDGET: u64 = 1_000_000_000_000;
/// The JSON Schema pattern of a currency (ISO 4217, either case).
pub const CURRENCY_PATTERN: &str = "^[A-Za-z]{3}$";

/// A spend cap.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetRequest {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[schema(value_type = String, required = false, example = "org_2aBcDeF")]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
    /// The most the org's overage may cost this period, in the currency's minor units (cents).
    #[schema(example = 5000)]
    #[serde(deserialize_with = "crate::extract::integer")]
    pub amount: u64,
    /// The currency of the overage prices (ISO 4217).
    #[schema(example = "usd")]
    pub currency: String,
}

/// The cap is gone.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetCleared {
    #[schema(value_type = String, example = "org_2aBcDeF")]
    pub org_id: OrgId,
    pub cleared: bool,
}

/// Sets the org's spend cap: admission past the plan's included units stops where the overage would cost more.
/// A cap below what was already spent stops admission at once; the change reaches every proxy like any billing
/// change.
#[utoipa::path(
    post, path = "/api/billing/budget.set", tag = "billing",
    request_body = BudgetRequest,
    responses(
        (status = 200, description = "The cap is set; `units` is the overage it buys", body = BudgetSet),
        (status = 403, description = "Another org, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "Stripe's prices could not be read or are not metered prices", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn set_budget(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<BudgetRequest>,
) -> ApiResult<Json<BudgetSet>> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    app.limits.admit(&caller.principal, Group::Billing).await?;
    if req.amount > MAX_BUDGET {
        return Err(ApiError::invalid(
            "amount",
            format!("must be at most {MAX_BUDGET} minor units"),
        ));
    }
    if !(req.currency.len() == 3 && req.currency.bytes().all(|b| b.is_ascii_alphabetic())) {
        return Err(ApiError::invalid(
            "currency",
            "must be a three-letter ISO 4217 code",
        ));
    }
    let set = app
        .billing()?
        .set_budget(&org, req.amount, &req.currency)
        .await?;
    Ok(Json(set))
}

/// Removes the org's spend cap: overage runs to the plan's ceiling, if any.
#[utoipa::path(
    post, path = "/api/billing/budget.clear", tag = "billing",
    request_body = OrgRequest,
    responses(
        (status = 200, description = "The cap is removed (or there was none)", body = BudgetCleared),
        (status = 403, description = "Another org, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn clear_budget(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<OrgRequest>,
) -> ApiResult<Json<BudgetCleared>> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    app.limits.admit(&caller.principal, Group::Billing).await?;
    app.billing()?.clear_budget(&org).await?;
    Ok(Json(BudgetCleared {
        org_id: org,
        cleared: true,
    }))
}
