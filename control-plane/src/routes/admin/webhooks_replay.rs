//! 8.1 `POST /api/admin/webhooks.replay`.

use crate::app::AppState;
use crate::auth::{Caller, OperatorOnly};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::services::billing::events::is_event_id;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most ids one call may replay.
pub const MAX_EVENT_IDS: usize = 100;

/// The events to reprocess.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayRequest {
    /// 1 to 100 Stripe event ids.
    pub event_ids: Vec<String>,
}

/// What was queued again.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayResponse {
    /// How many known events were queued again (reprocessing is idempotent).
    pub enqueued: usize,
    /// Ids never received: listed, not fatal.
    pub unknown: Vec<String>,
}

/// Queues stored events for processing again.
#[utoipa::path(
    post, path = "/api/admin/webhooks.replay", tag = "admin",
    request_body = ReplayRequest,
    responses((status = 200, description = "Queued", body = ReplayResponse)),
    security(("operator" = []))
)]
pub async fn replay_webhooks(
    _caller: Caller<OperatorOnly>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<ReplayRequest>,
) -> ApiResult<Json<ReplayResponse>> {
    if req.event_ids.is_empty() || req.event_ids.len() > MAX_EVENT_IDS {
        return Err(ApiError::invalid(
            "eventIds",
            format!("must hold 1 to {MAX_EVENT_IDS} ids"),
        ));
    }
    if let Some(i) = req.event_ids.iter().position(|id| !is_event_id(id)) {
        return Err(ApiError::invalid(
            format!("eventIds[{i}]"),
            "must be a Stripe event id (evt_…)",
        ));
    }
    let mut ids = req.event_ids;
    ids.sort();
    ids.dedup();
    let found = app.billing()?.replay(&ids).await?;
    let unknown = ids.into_iter().filter(|id| !found.contains(id)).collect();
    tracing::info!(enqueued = found.len(), "stripe events queued again");
    Ok(Json(ReplayResponse {
        enqueued: found.len(),
        unknown,
    }))
}
