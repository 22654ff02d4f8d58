//! 7.1 `POST /api/admin/quotas.reset`.

use crate::app::AppState;
use crate::auth::{Caller, OperatorOnly};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::routes::ProblemDoc;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tollgate_common::domain::{OrgId, PeriodKey};
use utoipa::ToSchema;

/// The period to reset, for one org or all.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResetRequest {
    #[schema(value_type = String, example = "2026-11")]
    pub period_key: PeriodKey,
    /// Only this org; every org when omitted.
    #[schema(value_type = String, required = false)]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
}

/// How many counters had usage.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResetResponse {
    pub updated: u64,
    #[schema(value_type = String, example = "2026-11")]
    pub period_key: PeriodKey,
}

/// Sets the period's counters back to 0. Idempotent; never undone by a proxy's late write-back.
#[utoipa::path(
    post, path = "/api/admin/quotas.reset", tag = "admin",
    request_body = ResetRequest,
    responses(
        (status = 200, description = "Reset; `updated` counts counters that had usage", body = ResetResponse),
        (status = 400, description = "Malformed JSON", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or bad credentials", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Not the operator", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("operator" = []))
)]
pub async fn reset_quotas(
    _caller: Caller<OperatorOnly>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<ResetRequest>,
) -> ApiResult<Json<ResetResponse>> {
    let updated = app.usage.reset(req.period_key, req.org_id).await?;
    Ok(Json(ResetResponse {
        updated,
        period_key: req.period_key,
    }))
}
