//! 1.4 `POST /api/stigg/provision`.

use crate::app::AppState;
use crate::auth::{Caller, OrgAdmin};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::routes::ProblemDoc;
use crate::services::stigg::Provisioned;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tollgate_common::domain::OrgId;
use utoipa::ToSchema;

/// The JSON Schema pattern of a Stripe customer id.
pub const STRIPE_CUSTOMER_PATTERN: &str = "^cus_[A-Za-z0-9]{1,250}$";
/// The JSON Schema pattern of a Stripe subscription id.
pub const STRIPE_SUBSCRIPTION_PATTERN: &str = "^sub_[A-Za-z0-9]{1,250}$";

/// What to mirror into Stigg.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProvisionRequest {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[schema(value_type = String, required = false, example = "org_2aBcDeF")]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
    /// The org's Stripe customer.
    #[schema(example = "cus_Q2x9")]
    pub stripe_customer_id: String,
    /// A subscription of that customer.
    #[schema(example = "sub_1Q2x")]
    pub stripe_subscription_id: String,
    /// The subscription's plan.
    #[schema(example = "starter")]
    pub plan_code: String,
}

/// Whether Stigg has it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProvisionResponse {
    /// Stigg accepted the customer and the subscription.
    pub provisioned: bool,
    /// Stigg could not be reached (or refused): the operations are queued and delivered later.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub queued: bool,
    /// Stigg is not configured (`STIGG_API_KEY` unset): recorded as skipped.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// Mirrors the org's Stripe customer and subscription into Stigg, through the outbox, and delivers at once.
#[utoipa::path(
    post, path = "/api/stigg/provision", tag = "billing",
    request_body = ProvisionRequest,
    responses(
        (status = 200, description = "Stigg accepted it (or Stigg is not configured: `skipped`)", body = ProvisionResponse),
        (status = 202, description = "Stigg is unreachable: queued, delivered later", body = ProvisionResponse),
        (status = 403, description = "Another org, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn provision(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<ProvisionRequest>,
) -> ApiResult<(StatusCode, Json<ProvisionResponse>)> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    app.limits
        .admit(&caller.principal, crate::limits::Group::Stigg)
        .await?;
    let outcome = app
        .stigg
        .provision(
            &org,
            &req.stripe_customer_id,
            &req.stripe_subscription_id,
            &req.plan_code,
        )
        .await?;
    let (status, provisioned, queued, skipped) = match outcome {
        Provisioned::Done => (StatusCode::OK, true, false, false),
        Provisioned::Queued => (StatusCode::ACCEPTED, false, true, false),
        Provisioned::Skipped => (StatusCode::OK, false, false, true),
    };
    tracing::info!(provisioned, queued, skipped, "stigg provisioning");
    Ok((
        status,
        Json(ProvisionResponse {
            provisioned,
            queued,
            skipped,
        }),
    ))
}
