//! 5.3 `POST /api/plans/downgrade.schedule`.

use super::PlanChangeRequest;
use crate::app::AppState;
use crate::auth::{Caller, OrgAdmin};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::limits::Group;
use crate::routes::ProblemDoc;
use crate::stripe::Intent;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

/// When the downgrade happens.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DowngradeResponse {
    /// The current period's end (RFC 3339, UTC).
    pub effective_at: DateTime<Utc>,
    #[schema(example = "starter")]
    pub pending_plan_code: String,
}

/// Schedules a downgrade for the end of the period, in Stripe; limits change when the renewal arrives.
#[utoipa::path(
    post, path = "/api/plans/downgrade.schedule", tag = "billing",
    request_body = PlanChangeRequest,
    responses(
        (status = 200, description = "Scheduled", body = DowngradeResponse),
        (status = 403, description = "Another org, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "No live subscription, or already on this plan; or another billing change of this org is in progress", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "Stripe's answer could not be used", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn schedule_downgrade(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    intent: Intent,
    JsonBody(req): JsonBody<PlanChangeRequest>,
) -> ApiResult<Json<DowngradeResponse>> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    app.limits.admit(&caller.principal, Group::Billing).await?;
    let scheduled = app
        .billing()?
        .schedule_downgrade(&org, &req.new_plan_code, &intent)
        .await?;
    Ok(Json(DowngradeResponse {
        effective_at: scheduled.effective_at,
        pending_plan_code: scheduled.pending_plan.as_str().to_owned(),
    }))
}
