//! `GET /api/usage/reconcile` (CONTRACT §9): Tollgate's overage of a period beside Stripe's meter.

use crate::app::AppState;
use crate::auth::{Caller, UserOrOperator};
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::routes::ProblemDoc;
use crate::services::billing::meter_reports::Reconciled;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use tollgate_common::domain::{Metric, OrgId, PeriodKey};
use utoipa::IntoParams;

/// Which org, period and metric.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReconcileQuery {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[param(value_type = Option<String>)]
    pub org_id: Option<OrgId>,
    /// The period (`YYYY-MM`, the month it starts in).
    #[param(value_type = String, example = "2026-11")]
    pub period_key: String,
    /// Defaults to `api_call`.
    pub metric: Option<String>,
}

/// The overage Tollgate counted for the period, what it reported, and Stripe's meter event summary for the
/// customer and the period.
#[utoipa::path(
    get, path = "/api/usage/reconcile", tag = "usage",
    params(ReconcileQuery),
    responses(
        (status = 200, description = "Tollgate's ledger beside Stripe's", body = Reconciled),
        (status = 403, description = "Another org, or an API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "Stripe's meter could not be read", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = []), ("operator" = []))
)]
pub async fn reconcile(
    caller: Caller<UserOrOperator>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<ReconcileQuery>,
) -> ApiResult<Json<Reconciled>> {
    let org = caller.principal.org_scope(query.org_id.as_ref())?;
    let key = PeriodKey::parse(&query.period_key)
        .map_err(|e| ApiError::invalid("periodKey", e.to_string()))?;
    let metric = app
        .usage
        .metric(query.metric.as_deref().unwrap_or(Metric::API_CALL))?;
    Ok(Json(app.billing()?.reconcile(&org, key, &metric).await?))
}
