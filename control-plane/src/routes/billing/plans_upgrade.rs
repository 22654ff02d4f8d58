//! 5.2 `POST /api/plans/upgrade.now`.

use super::PlanChangeRequest;
use crate::app::AppState;
use crate::auth::{Caller, OrgAdmin};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::limits::Group;
use crate::routes::ProblemDoc;
use crate::services::billing::plans::Upgraded;
use crate::stripe::Intent;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The plan now in force.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeResponse {
    #[schema(example = "growth")]
    pub plan_code: String,
    /// Always `immediate`.
    #[schema(example = "immediate")]
    pub effective: &'static str,
}

/// The payment needs the customer (3-D Secure, or another card): nothing changed yet.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeActionResponse {
    /// Always `requires_action`.
    #[schema(example = "requires_action")]
    pub status: &'static str,
    /// Confirm the invoice's payment with Stripe.js (`stripe.confirmCardPayment(clientSecret)`); once paid, the
    /// upgrade applies and a pending downgrade is dropped. Unpaid, nothing changes (Stripe drops the pending
    /// update after 23 h).
    #[schema(example = "pi_3Q2x_secret_9Ab")]
    pub client_secret: String,
}

/// Upgrades now: prorated and invoiced at once; the new limits apply at once and usage so far is kept. When the
/// payment needs the customer (3-D Secure), 202 with `{status:"requires_action", clientSecret}` and nothing
/// changes until it is paid (a pending downgrade stays until then).
#[utoipa::path(
    post, path = "/api/plans/upgrade.now", tag = "billing",
    request_body = PlanChangeRequest,
    responses(
        (status = 200, description = "Upgraded", body = UpgradeResponse),
        (status = 202, description = "The payment needs the customer's action (3-D Secure): confirm it with Stripe.js", body = UpgradeActionResponse),
        (status = 402, description = "Stripe refused the payment outright (a card error on the request itself); nothing changed. A declined card or one needing 3-D Secure is a 202", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Another org, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "No live subscription, or already on this plan; or another billing change of this org is in progress", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "Stripe's answer could not be used", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn upgrade_now(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    intent: Intent,
    JsonBody(req): JsonBody<PlanChangeRequest>,
) -> ApiResult<Response> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    app.limits.admit(&caller.principal, Group::Billing).await?;
    let upgraded = app
        .billing()?
        .upgrade_now(&org, &req.new_plan_code, &intent)
        .await?;
    Ok(match upgraded {
        Upgraded::Immediate(plan) => Json(UpgradeResponse {
            plan_code: plan.as_str().to_owned(),
            effective: "immediate",
        })
        .into_response(),
        Upgraded::RequiresAction { client_secret } => (
            StatusCode::ACCEPTED,
            Json(UpgradeActionResponse {
                status: "requires_action",
                client_secret,
            }),
        )
            .into_response(),
    })
}
