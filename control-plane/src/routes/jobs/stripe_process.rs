//! 2.4 `POST /api/jobs/stripe.process`.

use crate::app::AppState;
use crate::auth::{Caller, OperatorOnly};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::routes::ProblemDoc;
use crate::services::billing::events::is_event_id;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which event.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessRequest {
    #[schema(example = "evt_1Q2x")]
    pub event_id: String,
}

/// The database mirrors Stripe for the event's object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessResponse {
    pub converged: bool,
    /// `applied`, or `ignored`: nothing Tollgate can mirror, for good (terminal; see `reason`).
    #[schema(example = "applied")]
    pub outcome: &'static str,
    /// Why it was ignored (`unhandled_type`, `foreign_customer`, `unknown_price`, `object_deleted`,
    /// `no_subscription`); absent when applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// Processes one received event now (reads its object back from Stripe and mirrors it); idempotent.
#[utoipa::path(
    post, path = "/api/jobs/stripe.process", tag = "billing",
    request_body = ProcessRequest,
    responses(
        (status = 200, description = "Converged", body = ProcessResponse),
        (status = 404, description = "No such event has been received", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "Stripe's state could not be mirrored (recorded on the event, retried)", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("operator" = []))
)]
pub async fn process_stripe_event(
    _caller: Caller<OperatorOnly>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<ProcessRequest>,
) -> ApiResult<Json<ProcessResponse>> {
    if !is_event_id(&req.event_id) {
        return Err(ApiError::invalid(
            "eventId",
            "must be a Stripe event id (evt_…)",
        ));
    }
    let processed = app.billing()?.process_event(&req.event_id).await?;
    Ok(Json(ProcessResponse {
        converged: true,
        outcome: processed.as_str(),
        reason: processed
            .reason()
            .map(tollgate_common::domain::IgnoreReason::as_str),
    }))
}
