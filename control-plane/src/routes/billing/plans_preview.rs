//! 5.1 `POST /api/plans/preview`.

use super::PlanChangeRequest;
use crate::app::AppState;
use crate::auth::{Caller, UserOrOperator};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::limits::Group;
use crate::routes::ProblemDoc;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

/// What a plan change costs.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewResponse {
    /// Minor units: for an upgrade, what is invoiced now; for a downgrade, the first renewal at the new price.
    pub amount: i64,
    #[schema(example = "usd")]
    pub currency: String,
    /// `true` for an upgrade (prorated), `false` for a downgrade.
    pub proration: bool,
    /// The invoice's lines.
    pub items: Vec<PreviewLine>,
}

/// One line.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewLine {
    #[schema(example = "Remaining time on Growth after 1 Dec 2026")]
    pub description: String,
    /// Minor units; negative for a credit.
    pub amount: i64,
    pub proration: bool,
}

/// Previews a change to `newPlanCode`, from Stripe's invoice preview.
#[utoipa::path(
    post, path = "/api/plans/preview", tag = "billing",
    request_body = PlanChangeRequest,
    responses(
        (status = 200, description = "The preview", body = PreviewResponse),
        (status = 409, description = "No live subscription, or already on this plan", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "Stripe's answer could not be used", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = []), ("operator" = []))
)]
pub async fn preview_plan_change(
    caller: Caller<UserOrOperator>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<PlanChangeRequest>,
) -> ApiResult<Json<PreviewResponse>> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    app.limits.admit(&caller.principal, Group::Billing).await?;
    let preview = app.billing()?.preview(&org, &req.new_plan_code).await?;
    Ok(Json(PreviewResponse {
        amount: preview.amount,
        currency: preview.currency,
        proration: preview.proration,
        items: preview
            .items
            .into_iter()
            .map(|i| PreviewLine {
                description: i.description,
                amount: i.amount,
                proration: i.proration,
            })
            .collect(),
    }))
}
