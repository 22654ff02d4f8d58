//! `POST /api/keys.create`.

use crate::app::AppState;
use crate::auth::{Caller, OrgAdmin};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::routes::ProblemDoc;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tollgate_common::domain::OrgId;
use utoipa::ToSchema;
use uuid::Uuid;

/// A key to issue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// The org; defaults to the caller's own. Required when calling as the operator.
    #[schema(value_type = String, required = false, example = "org_2aBcDeF")]
    #[serde(default, deserialize_with = "crate::extract::non_null")]
    pub org_id: Option<OrgId>,
    /// A label for the key, 1–100 characters.
    #[schema(example = "production backend")]
    pub name: String,
}

/// The issued key. `key` is shown this once; only its hash is kept.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateKeyResponse {
    pub key_id: Uuid,
    #[schema(example = "tg_4fJk2…")]
    pub key: String,
    #[schema(example = "tg_4fJk2aB9")]
    pub prefix: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// Issues an API key for the org.
#[utoipa::path(
    post, path = "/api/keys.create", tag = "keys",
    request_body = CreateKeyRequest,
    responses(
        (status = 200, description = "The key, shown once", body = CreateKeyResponse),
        (status = 400, description = "Malformed JSON", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or bad credentials", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Another org, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn create_key(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<CreateKeyRequest>,
) -> ApiResult<axum::response::Response> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    app.limits
        .admit(&caller.principal, crate::limits::Group::Keys)
        .await?;
    let name = crate::validate::label("name", &req.name, 100)?;
    let issued = app.key_service.create(&org, name).await?;
    let mut response = axum::response::IntoResponse::into_response(Json(CreateKeyResponse {
        key_id: issued.key_id,
        key: issued.key.expose_secret().to_owned(),
        prefix: issued.prefix,
        name: name.to_owned(),
        created_at: issued.created_at,
    }));
    // The key is shown once and stored only hashed: never as an Idempotency-Key answer either.
    response
        .extensions_mut()
        .insert(crate::idempotency::ShownOnce);
    Ok(response)
}
