//! 6.2 `POST /api/payments/portal.create`.

use super::OrgRequest;
use crate::app::AppState;
use crate::auth::{Caller, OrgAdmin};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::limits::Group;
use crate::routes::ProblemDoc;
use crate::stripe::Intent;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

/// Where to send the user.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortalResponse {
    /// A short-lived Stripe customer portal URL; it returns to `TOLLGATE_BILLING_RETURN_URL`.
    #[schema(example = "https://billing.stripe.com/p/session/test_abc")]
    pub url: String,
}

/// A Stripe customer portal session for the org's customer.
#[utoipa::path(
    post, path = "/api/payments/portal.create", tag = "billing",
    request_body = OrgRequest,
    responses(
        (status = 200, description = "The portal session's URL", body = PortalResponse),
        (status = 403, description = "Another org, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The org has no Stripe customer yet", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "Stripe's answer could not be used", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn create_portal_session(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    intent: Intent,
    JsonBody(req): JsonBody<OrgRequest>,
) -> ApiResult<Json<PortalResponse>> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    app.limits.admit(&caller.principal, Group::Billing).await?;
    let url = app.billing()?.create_portal_session(&org, &intent).await?;
    Ok(Json(PortalResponse { url }))
}
