//! 2.2 `POST /api/payments/default-method.set`.

use crate::app::AppState;
use crate::auth::{Caller, OrgAdmin};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::limits::Group;
use crate::routes::ProblemDoc;
use crate::stripe::Intent;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tollgate_common::domain::OrgId;
use utoipa::ToSchema;

/// The JSON Schema pattern of a payment method id.
pub const PAYMENT_METHOD_PATTERN: &str = "^pm_[A-Za-z0-9_]{1,250}$";

/// The payment method to charge from now on.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultMethodRequest {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[schema(value_type = String, required = false, example = "org_2aBcDeF")]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
    /// A Stripe payment method (`pm_…`), e.g. from a confirmed SetupIntent.
    #[schema(example = "pm_1Q2x")]
    pub payment_method_id: String,
}

/// Done.
#[derive(Debug, Serialize, ToSchema)]
pub struct DefaultMethodResponse {
    pub ok: bool,
}

/// Attaches the payment method to the org's customer and makes it the default for invoices and renewals.
#[utoipa::path(
    post, path = "/api/payments/default-method.set", tag = "billing",
    request_body = DefaultMethodRequest,
    responses(
        (status = 200, description = "The payment method is the default", body = DefaultMethodResponse),
        (status = 403, description = "Another org, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The org has no Stripe customer yet; or another billing change of this org is in progress", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "Stripe's answer could not be used", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn set_default_method(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    intent: Intent,
    JsonBody(req): JsonBody<DefaultMethodRequest>,
) -> ApiResult<Json<DefaultMethodResponse>> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    app.limits.admit(&caller.principal, Group::Billing).await?;
    let pm = &req.payment_method_id;
    let well_formed = pm.strip_prefix("pm_").is_some_and(|rest| {
        (1..=250).contains(&rest.len())
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    if !well_formed {
        return Err(ApiError::invalid(
            "paymentMethodId",
            "must be a Stripe payment method id (pm_…)",
        ));
    }
    app.billing()?
        .set_default_payment_method(&org, pm, &intent)
        .await?;
    Ok(Json(DefaultMethodResponse { ok: true }))
}
