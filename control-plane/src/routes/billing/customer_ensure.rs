//! 1.2 `POST /api/stripe/customer.ensure`.

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

/// The org and the billing email of its customer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnsureCustomerRequest {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[schema(value_type = String, required = false, example = "org_2aBcDeF")]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
    /// Where Stripe sends invoices (used when the customer is created).
    #[schema(example = "billing@acme.test")]
    pub email: String,
}

/// The org's Stripe customer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnsureCustomerResponse {
    #[schema(example = "cus_Q2x9")]
    pub stripe_customer_id: String,
}

/// The JSON Schema pattern of an email address as accepted here.
pub const EMAIL_PATTERN: &str = r"^[^\s@\x00-\x1f\x7f-\x9f]{1,64}@[^\s@\x00-\x1f\x7f-\x9f]{1,189}$";

fn email(value: &str) -> ApiResult<&str> {
    let ok = value.split_once('@').is_some_and(|(local, domain)| {
        (1..=64).contains(&local.chars().count())
            && (1..=189).contains(&domain.chars().count())
            && !domain.contains('@')
            && value.chars().all(|c| !c.is_whitespace() && !c.is_control())
    });
    if ok {
        Ok(value)
    } else {
        Err(ApiError::invalid(
            "email",
            "must be an email address such as billing@acme.test",
        ))
    }
}

/// Returns the org's Stripe customer, creating it once (also under concurrent calls).
#[utoipa::path(
    post, path = "/api/stripe/customer.ensure", tag = "billing",
    request_body = EnsureCustomerRequest,
    responses(
        (status = 200, description = "The customer (created now or before)", body = EnsureCustomerResponse),
        (status = 403, description = "Another org, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Another billing change of this org is in progress", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "Stripe's answer could not be used", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn ensure_customer(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    intent: Intent,
    JsonBody(req): JsonBody<EnsureCustomerRequest>,
) -> ApiResult<Json<EnsureCustomerResponse>> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    app.limits.admit(&caller.principal, Group::Billing).await?;
    let email = email(&req.email)?;
    let customer = app.billing()?.ensure_customer(&org, email, &intent).await?;
    Ok(Json(EnsureCustomerResponse {
        stripe_customer_id: customer,
    }))
}
