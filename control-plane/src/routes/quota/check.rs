//! 4.1 `POST /api/quota/check`.

use crate::app::AppState;
use crate::auth::{AnyPrincipal, Caller};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::routes::{ProblemDoc, QuotaExceededDoc};
use crate::services::usage;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tollgate_common::domain::OrgId;
use utoipa::ToSchema;

/// What to check.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRequest {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[schema(value_type = String, required = false, example = "org_2aBcDeF")]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
    #[schema(example = "api_call")]
    pub metric: String,
}

/// Allowed, with what is left.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckAllowed {
    pub allow: bool,
    pub remaining: u64,
}

/// Whether one more unit would be admitted now. Reads only: consumes nothing.
#[utoipa::path(
    post, path = "/api/quota/check", tag = "usage",
    request_body = CheckRequest,
    responses(
        (status = 200, description = "Allowed", body = CheckAllowed),
        (status = 429, description = "The standard denial envelope, with Retry-After", body = QuotaExceededDoc, content_type = "application/problem+json"),
        (status = 400, description = "Malformed JSON", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or bad credentials", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Another org", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = []), ("apiKey" = []), ("operator" = []))
)]
pub async fn check_quota(
    caller: Caller<AnyPrincipal>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<CheckRequest>,
) -> ApiResult<Json<CheckAllowed>> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    let metric = app.usage.metric(&req.metric)?;
    let account = usage::account(&app, org).await?;
    let remaining = app.usage.check(&account, &metric).await?;
    Ok(Json(CheckAllowed {
        allow: true,
        remaining,
    }))
}
