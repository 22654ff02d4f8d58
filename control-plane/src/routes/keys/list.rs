//! `GET /api/keys.list`.

use crate::app::AppState;
use crate::auth::{Caller, UserOrOperator};
use crate::error::ApiResult;
use crate::extract::QueryParams;
use crate::routes::ProblemDoc;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tollgate_common::domain::OrgId;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Which org's keys.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListKeysQuery {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[param(value_type = Option<String>)]
    pub org_id: Option<OrgId>,
}

/// One active key; never the key itself.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub key_id: Uuid,
    pub name: String,
    #[schema(example = "tg_4fJk2aB9")]
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Lists the org's active keys, newest first.
#[utoipa::path(
    get, path = "/api/keys.list", tag = "keys",
    params(ListKeysQuery),
    responses(
        (status = 200, description = "Active keys", body = Vec<KeyView>),
        (status = 401, description = "No or bad credentials", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Another org, or an API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "Bad query parameter", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = []), ("operator" = []))
)]
pub async fn list_keys(
    caller: Caller<UserOrOperator>,
    State(app): State<AppState>,
    QueryParams(query): QueryParams<ListKeysQuery>,
) -> ApiResult<Json<Vec<KeyView>>> {
    let org = caller.principal.org_scope(query.org_id.as_ref())?;
    let keys = app.key_service.list(&org).await?;
    Ok(Json(
        keys.into_iter()
            .map(|k| KeyView {
                key_id: k.key_id,
                name: k.name,
                prefix: k.prefix,
                created_at: k.created_at,
                last_used_at: k.last_used_at,
            })
            .collect(),
    ))
}
