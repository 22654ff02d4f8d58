//! `GET /api/usage/history`.

use crate::app::AppState;
use crate::auth::{AnyPrincipal, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::routes::ProblemDoc;
use crate::services::usage::{self, MAX_HISTORY_PERIODS, PeriodUsage};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use tollgate_common::domain::{Metric, OrgId};
use utoipa::IntoParams;

/// Which org, metric and how many periods.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[param(value_type = Option<String>)]
    pub org_id: Option<OrgId>,
    /// Defaults to `api_call`.
    pub metric: Option<String>,
    /// 1 to 24; defaults to 6.
    #[serde(default, deserialize_with = "crate::extract::integer")]
    pub periods: Option<u32>,
}

/// The org's usage per period, newest first, the current period included (live).
#[utoipa::path(
    get, path = "/api/usage/history", tag = "usage",
    params(HistoryQuery),
    responses(
        (status = 200, description = "Usage per period, newest first", body = Vec<PeriodUsage>),
        (status = 401, description = "No or bad credentials", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Another org", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is invalid", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = []), ("apiKey" = []), ("operator" = []))
)]
pub async fn usage_history(
    caller: Caller<AnyPrincipal>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> ApiResult<Json<Vec<PeriodUsage>>> {
    let org = caller.principal.org_scope(query.org_id.as_ref())?;
    let metric = app
        .usage
        .metric(query.metric.as_deref().unwrap_or(Metric::API_CALL))?;
    let periods = query.periods.unwrap_or(6);
    if !(1..=MAX_HISTORY_PERIODS).contains(&periods) {
        return Err(ApiError::invalid(
            "periods",
            format!("must be between 1 and {MAX_HISTORY_PERIODS}"),
        ));
    }
    let account = usage::account(&app, org).await?;
    Ok(Json(app.usage.history(&account, &metric, periods).await?))
}
