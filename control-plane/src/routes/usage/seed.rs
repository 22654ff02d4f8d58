//! 1.5 `POST /api/usage/seed`.

use crate::app::AppState;
use crate::auth::{AnyPrincipal, Caller};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::routes::ProblemDoc;
use crate::services::usage::{self, Seeded};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use tollgate_common::domain::{Metric, OrgId, PeriodKey};
use utoipa::ToSchema;

/// Which org (and optionally which period the caller believes is current).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedRequest {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[schema(value_type = String, required = false, example = "org_2aBcDeF")]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
    /// Derived by the server; a different value is a 409.
    #[schema(value_type = Option<String>, example = "2026-11")]
    pub period_key: Option<PeriodKey>,
    /// The metric to report on (defaults to `api_call`); every metric of the plan is seeded.
    pub metric: Option<String>,
}

/// Creates this period's counters if missing (never resets a used one) and reports one.
#[utoipa::path(
    post, path = "/api/usage/seed", tag = "usage",
    request_body = SeedRequest,
    responses(
        (status = 200, description = "The counter, created at 0 if it was missing", body = Seeded),
        (status = 400, description = "Malformed JSON", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or bad credentials", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Another org", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "periodKey is not the current period", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = []), ("apiKey" = []), ("operator" = []))
)]
pub async fn seed_usage(
    caller: Caller<AnyPrincipal>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<SeedRequest>,
) -> ApiResult<Json<Seeded>> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    let metric = app
        .usage
        .metric(req.metric.as_deref().unwrap_or(Metric::API_CALL))?;
    let account = usage::account(&app, org).await?;
    Ok(Json(
        app.usage.seed(&account, req.period_key, &metric).await?,
    ))
}
