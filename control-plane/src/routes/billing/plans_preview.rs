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
    /// Minor units: for an upgrade, what `upgrade.now` invoices now (the sum of Stripe's proration lines); for a
    /// downgrade, the first renewal at the new price.
    pub amount: i64,
    #[schema(example = "usd")]
    pub currency: String,
    /// `true` for an upgrade (prorated), `false` for a downgrade.
    pub proration: bool,
    /// The lines `amount` sums (for an upgrade, the proration lines).
    pub items: Vec<PreviewLine>,
    /// The next renewal invoice after the change, reported apart from `amount`.
    #[serde(rename = "nextInvoice")]
    pub next_invoice: NextInvoiceDoc,
}

/// The renewal invoice after the change.
#[derive(Debug, Serialize, ToSchema)]
pub struct NextInvoiceDoc {
    /// Minor units.
    pub amount: i64,
    #[schema(example = "usd")]
    pub currency: String,
    /// When it is invoiced (the current period's end), RFC 3339 UTC.
    pub at: chrono::DateTime<chrono::Utc>,
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
        next_invoice: NextInvoiceDoc {
            amount: preview.next_invoice.amount,
            currency: preview.next_invoice.currency,
            at: preview.next_invoice.at,
        },
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
