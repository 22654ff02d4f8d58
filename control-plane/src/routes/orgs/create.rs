//! 1.1 `POST /api/orgs.create`.

use crate::app::AppState;
use crate::auth::{Caller, OrgAdmin, Principal};
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::routes::ProblemDoc;
use crate::services::orgs::{self, NewOrg};
use crate::validate;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tollgate_common::domain::OrgId;
use utoipa::ToSchema;

/// A tenant to create, anchored to its Clerk organization.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrgRequest {
    /// Clerk organization id.
    #[schema(value_type = String, example = "org_2aBcDeF")]
    pub org_id: OrgId,
    /// Display name, 1–200 characters.
    #[schema(example = "Acme Inc.")]
    pub name: String,
    /// Clerk user id of the owner.
    #[schema(example = "user_2xYz")]
    pub owner_user_id: String,
}

/// The org's handle.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateOrgResponse {
    #[schema(value_type = String, example = "org_2aBcDeF")]
    pub org_id: OrgId,
}

impl CreateOrgRequest {
    fn validate(self) -> ApiResult<NewOrg> {
        let name = validate::label("name", &self.name, 200)?.to_owned();
        validate::user_id("ownerUserId", &self.owner_user_id)?;
        Ok(NewOrg {
            org: self.org_id,
            name,
            owner_user_id: self.owner_user_id,
        })
    }
}

/// A user may create only the org of their own session, owned by themselves.
fn authorize(principal: &Principal, new: &NewOrg) -> ApiResult<()> {
    if let Principal::User(session) = principal {
        if session.org.as_ref() != Some(&new.org) {
            return Err(ApiError::Forbidden(
                "orgId: a session may only create its own active organization".to_owned(),
            ));
        }
        if session.user_id != new.owner_user_id {
            return Err(ApiError::Forbidden(
                "ownerUserId: must be the calling user".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Creates the org; calling again with the same body returns the same `orgId`.
#[utoipa::path(
    post, path = "/api/orgs.create", tag = "orgs",
    request_body = CreateOrgRequest,
    responses(
        (status = 200, description = "Created, or already existed with this body", body = CreateOrgResponse),
        (status = 400, description = "Malformed JSON", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or bad credentials", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Another org, another owner, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The orgId exists with another owner or name", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or invalid", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn create_org(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    JsonBody(req): JsonBody<CreateOrgRequest>,
) -> ApiResult<Json<CreateOrgResponse>> {
    let new = req.validate()?;
    authorize(&caller.principal, &new)?;
    orgs::create(&app.pg, &new).await?;
    Ok(Json(CreateOrgResponse { org_id: new.org }))
}
