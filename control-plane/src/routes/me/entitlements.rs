//! 3.1 `GET /api/me/entitlements.read`.

use crate::app::AppState;
use crate::auth::{Caller, OrgMember};
use crate::error::ApiResult;
use crate::extract::QueryParams;
use crate::routes::ProblemDoc;
use crate::services::usage::{self, Entitlements};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use tollgate_common::domain::Metric;
use utoipa::IntoParams;

/// Which metric.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EntitlementsQuery {
    /// Defaults to `api_call`.
    pub metric: Option<String>,
}

/// The caller's plan, what it includes, and the live usage of this period.
#[utoipa::path(
    get, path = "/api/me/entitlements.read", tag = "usage",
    params(EntitlementsQuery),
    responses(
        (status = 200, description = "Live entitlements", body = Entitlements),
        (status = 401, description = "No or bad credentials", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 402, description = "No subscription and no unsubscribed plan", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The operator, or a session without an org", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "Unknown metric", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = []), ("apiKey" = []))
)]
pub async fn read_entitlements(
    caller: Caller<OrgMember>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<EntitlementsQuery>,
) -> ApiResult<Json<Entitlements>> {
    let org = caller.principal.org_scope(None)?;
    let metric = app
        .usage
        .metric(query.metric.as_deref().unwrap_or(Metric::API_CALL))?;
    let account = usage::account(&app, org).await?;
    Ok(Json(app.usage.entitlements(&account, &metric).await?))
}
