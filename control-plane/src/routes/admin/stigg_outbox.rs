//! `GET /api/admin/stigg.outbox` and `POST /api/admin/stigg.requeue`: the operator's view of the Stigg outbox.

use crate::app::AppState;
use crate::auth::{Caller, OperatorOnly};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, QueryParams};
use crate::services::stigg::StuckItem;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Most ids one requeue takes.
pub const MAX_ITEMS: usize = 500;

/// How many.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OutboxQuery {
    /// 1 to 100 (default 100).
    #[serde(default, deserialize_with = "crate::extract::integer")]
    pub limit: Option<u8>,
}

/// Operations waiting or failing, most attempted first.
#[utoipa::path(
    get, path = "/api/admin/stigg.outbox", tag = "admin",
    params(OutboxQuery),
    responses((status = 200, description = "Waiting and failing operations, most attempted first", body = [StuckItem])),
    security(("operator" = []))
)]
pub async fn list_outbox(
    _caller: Caller<OperatorOnly>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<OutboxQuery>,
) -> ApiResult<Json<Vec<StuckItem>>> {
    let limit = crate::validate::page_limit(query.limit, crate::validate::MAX_PAGE)?;
    Ok(Json(app.stigg.stuck(i64::from(limit)).await?))
}

/// Which operations to retry now.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequeueRequest {
    /// 1 to 500 outbox ids.
    #[serde(deserialize_with = "crate::extract::integer")]
    pub ids: Vec<i64>,
}

/// What was requeued.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequeueResponse {
    /// Operations made due now (each org's order is kept).
    pub requeued: usize,
    /// Ids that are not waiting (delivered, superseded, skipped, or unknown).
    pub unknown: Vec<i64>,
}

/// Makes waiting or failing operations due now.
#[utoipa::path(
    post, path = "/api/admin/stigg.requeue", tag = "admin",
    request_body = RequeueRequest,
    responses((status = 200, description = "Requeued", body = RequeueResponse)),
    security(("operator" = []))
)]
pub async fn requeue_outbox(
    _caller: Caller<OperatorOnly>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<RequeueRequest>,
) -> ApiResult<Json<RequeueResponse>> {
    if req.ids.is_empty() || req.ids.len() > MAX_ITEMS {
        return Err(ApiError::invalid(
            "ids",
            format!("must hold 1 to {MAX_ITEMS} ids"),
        ));
    }
    let found = app.stigg.requeue(&req.ids).await?;
    let unknown = req
        .ids
        .iter()
        .copied()
        .filter(|id| !found.contains(id))
        .collect();
    tracing::info!(requeued = found.len(), "stigg operations requeued");
    Ok(Json(RequeueResponse {
        requeued: found.len(),
        unknown,
    }))
}
