//! `POST /api/keys.revoke`.

use crate::app::AppState;
use crate::auth::{Caller, OrgAdmin, Principal};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::routes::ProblemDoc;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tollgate_common::domain::OrgId;
use utoipa::ToSchema;
use uuid::Uuid;

/// The key to revoke.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokeKeyRequest {
    pub key_id: Uuid,
    /// The org the key belongs to; defaults to the caller's own. The operator may omit it.
    #[schema(value_type = String, required = false)]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
}

/// Revocation confirmed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokeKeyResponse {
    pub revoked: bool,
}

/// Revokes a key. Idempotent; every proxy stops accepting the key within seconds.
#[utoipa::path(
    post, path = "/api/keys.revoke", tag = "keys",
    request_body = RevokeKeyRequest,
    responses(
        (status = 200, description = "Revoked (or already was)", body = RevokeKeyResponse),
        (status = 400, description = "Malformed JSON", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or bad credentials", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Another org, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such key in this org", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "Revoked, but the announce to proxies failed: repeat the call", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn revoke_key(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<RevokeKeyRequest>,
) -> ApiResult<Json<RevokeKeyResponse>> {
    app.limits
        .admit(&caller.principal, crate::limits::Group::Keys)
        .await?;
    let scope = match (&caller.principal, &req.org_id) {
        (Principal::Operator, None) => None,
        (principal, requested) => Some(principal.org_scope(requested.as_ref())?),
    };
    app.key_service.revoke(scope.as_ref(), req.key_id).await?;
    Ok(Json(RevokeKeyResponse { revoked: true }))
}
