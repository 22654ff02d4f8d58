//! 2.1 `POST /api/payments/setup-intent.create`.

use super::OrgRequest;
use crate::app::AppState;
use crate::auth::{Caller, OrgAdmin};
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::limits::Group;
use crate::routes::ProblemDoc;
use crate::stripe::Intent;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

/// What the browser confirms the card with.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetupIntentResponse {
    /// The SetupIntent's client secret, for Stripe.js.
    #[schema(example = "seti_1Q2x_secret_abc")]
    pub client_secret: String,
}

/// A SetupIntent for collecting a card to be charged later (`usage: off_session`).
#[utoipa::path(
    post, path = "/api/payments/setup-intent.create", tag = "billing",
    request_body = OrgRequest,
    responses(
        (status = 200, description = "The SetupIntent's client secret", body = SetupIntentResponse),
        (status = 403, description = "Another org, an API key, or a session whose organization role is none of TOLLGATE_ADMIN_ROLES (`requiredRoles` lists the roles that may)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The org has no Stripe customer yet", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "Stripe's answer could not be used", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("clerk" = ["TOLLGATE_ADMIN_ROLES"]), ("operator" = []))
)]
pub async fn create_setup_intent(
    caller: Caller<OrgAdmin>,
    State(app): State<AppState>,
    intent: Intent,
    JsonBody(req): JsonBody<OrgRequest>,
) -> ApiResult<Json<SetupIntentResponse>> {
    let org = caller.principal.org_scope(req.org_id.as_ref())?;
    app.limits.admit(&caller.principal, Group::Billing).await?;
    let client_secret = app.billing()?.create_setup_intent(&org, &intent).await?;
    Ok(Json(SetupIntentResponse { client_secret }))
}
